//! A blocking client of the Kubernetes CRI v1 API (the `k8s-cri` crate's
//! protos, gRPC over containerd's Unix socket), doing what a kubelet does
//! to a node's runtime: pods, containers, exec, images. There is no
//! crictl or kubelet on our machines; husk's CRI tests and `husk-crictl`
//! use this.
//!
//! Each call runs on a private current-thread tokio runtime under a
//! deadline; its error names the call and keeps gRPC's status code and
//! message (containerd's, with the shim's cause in it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1 as api;

pub mod stream;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("Cannot start the CRI client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("Cannot connect to the CRI socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call}: {code:?}: {message}")]
    Status {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("CRI {call}: no answer within {timeout:?}")]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    #[error("CRI {call}: the answer has no {field}")]
    Missing {
        call: &'static str,
        field: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, CriError>;

/// A connection to one CRI endpoint (containerd's gRPC socket).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
    /// The deadline of each call (ExecSync adds its own timeout to it).
    pub timeout: Duration,
}

impl Cri {
    /// Connects to the CRI service on the Unix socket `socket`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let path = socket.to_owned();
        let channel = rt
            .block_on(async {
                // The URI is a placeholder: the connector dials the socket.
                Endpoint::from_static("http://[::]:0")
                    .connect_timeout(timeout)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|source| CriError::Connect {
                path: socket.to_owned(),
                source,
            })?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
            timeout,
        })
    }

    fn call<T>(
        &self,
        call: &'static str,
        timeout: Duration,
        fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.rt.block_on(async {
            match tokio::time::timeout(timeout, fut).await {
                Err(_) => Err(CriError::Timeout { call, timeout }),
                Ok(Err(s)) => Err(CriError::Status {
                    call,
                    code: s.code(),
                    message: s.message().to_owned(),
                }),
                Ok(Ok(r)) => Ok(r.into_inner()),
            }
        })
    }

    /// Version: the runtime's name and version (containerd's).
    pub fn version(&self) -> Result<api::VersionResponse> {
        let mut c = self.runtime.clone();
        self.call("Version", self.timeout, async move {
            c.version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// RunPodSandbox with RuntimeClass handler `handler`; the pod's id.
    pub fn run_pod_sandbox(&self, config: &api::PodSandboxConfig, handler: &str) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.call("RunPodSandbox", self.timeout, async move {
            c.run_pod_sandbox(req).await
        })
        .map(|r| r.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.call("PodSandboxStatus", self.timeout, async move {
            c.pod_sandbox_status(req).await
        })?
        .status
        .ok_or(CriError::Missing {
            call: "PodSandboxStatus",
            field: "status",
        })
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("StopPodSandbox", self.timeout, async move {
            c.stop_pod_sandbox(req).await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", self.timeout, async move {
            c.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    pub fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>> {
        let mut c = self.runtime.clone();
        self.call("ListPodSandbox", self.timeout, async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items)
    }

    /// CreateContainer in pod `pod_id` (made from `sandbox_config`); its id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        self.call("CreateContainer", self.timeout, async move {
            c.create_container(req).await
        })
        .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", self.timeout, async move {
            c.start_container(req).await
        })
        .map(drop)
    }

    /// StopContainer: SIGTERM, then SIGKILL after `grace_secs`.
    pub fn stop_container(&self, id: &str, grace_secs: i64) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout: grace_secs,
        };
        let deadline = self.timeout + Duration::from_secs(grace_secs.max(0) as u64);
        self.call("StopContainer", deadline, async move {
            c.stop_container(req).await
        })
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", self.timeout, async move {
            c.remove_container(req).await
        })
        .map(drop)
    }

    /// UpdateContainerResources: the container's new Linux resources.
    pub fn update_container_resources(
        &self,
        id: &str,
        linux: api::LinuxContainerResources,
    ) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(linux),
            ..Default::default()
        };
        self.call("UpdateContainerResources", self.timeout, async move {
            c.update_container_resources(req).await
        })
        .map(drop)
    }

    /// ContainerStats: the container's CPU and memory figures.
    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call("ContainerStats", self.timeout, async move {
            c.container_stats(req).await
        })?
        .stats
        .ok_or(CriError::Missing {
            call: "ContainerStats",
            field: "stats",
        })
    }

    /// PodSandboxStats: the pod's CPU, memory, network and process figures, and its
    /// containers'.
    pub fn pod_sandbox_stats(&self, pod_id: &str) -> Result<api::PodSandboxStats> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call("PodSandboxStats", self.timeout, async move {
            c.pod_sandbox_stats(req).await
        })?
        .stats
        .ok_or(CriError::Missing {
            call: "PodSandboxStats",
            field: "stats",
        })
    }

    /// Exec (streaming): the URL of a session running `cmd` in the container, for
    /// [`stream::session`].
    pub fn exec(&self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        self.call("Exec", self.timeout, async move { c.exec(req).await })
            .map(|r| r.url)
    }

    /// Attach: the URL of a session on the container's own stdio.
    pub fn attach(&self, id: &str, tty: bool, stdin: bool) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::AttachRequest {
            container_id: id.into(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        };
        self.call("Attach", self.timeout, async move { c.attach(req).await })
            .map(|r| r.url)
    }

    /// PortForward: the URL of a session forwarding `port` of the pod, for
    /// [`stream::port_forward`].
    pub fn port_forward(&self, pod_id: &str, port: u16) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: vec![i32::from(port)],
        };
        self.call("PortForward", self.timeout, async move {
            c.port_forward(req).await
        })
        .map(|r| r.url)
    }

    /// ReopenContainerLog: the runtime closes the container's log file and opens it
    /// again at its path (after a log rotation moved it).
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::ReopenContainerLogRequest {
            container_id: id.into(),
        };
        self.call("ReopenContainerLog", self.timeout, async move {
            c.reopen_container_log(req).await
        })
        .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", self.timeout, async move {
            c.container_status(req).await
        })?
        .status
        .ok_or(CriError::Missing {
            call: "ContainerStatus",
            field: "status",
        })
    }

    /// ExecSync: runs `cmd` in the container and returns its output and
    /// exit code; `timeout_secs` (0: none) is the runtime's own limit.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<api::ExecSyncResponse> {
        let mut c = self.runtime.clone();
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let deadline = self.timeout + Duration::from_secs(timeout_secs.max(0) as u64);
        self.call("ExecSync", deadline, async move { c.exec_sync(req).await })
    }

    /// ImageStatus: whether `image` is present (in containerd's k8s.io
    /// namespace).
    pub fn image_present(&self, image: &str) -> Result<bool> {
        let mut c = self.image.clone();
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.call("ImageStatus", self.timeout, async move {
            c.image_status(req).await
        })
        .map(|r| r.image.is_some())
    }
}

/// A pod config as a kubelet sends it: metadata, a log directory, Linux
/// options with the pod's own namespaces (PID per container, network per
/// pod). Callers change what they test.
pub fn pod_config(name: &str, uid: &str, log_dir: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config: `image` running `args` (the image's entrypoint
/// replaced), its log at `<pod log dir>/<name>.log`.
pub fn container_config(name: &str, image: &str, args: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_is_a_connect_error_naming_it() {
        let e = Cri::connect(Path::new("/nonexistent/c.sock"), Duration::from_secs(2))
            .err()
            .expect("no socket there");
        assert!(matches!(e, CriError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/c.sock"), "{e}");
    }

    #[test]
    fn configs_carry_what_a_kubelet_sends() {
        let p = pod_config("web", "uid-1", Path::new("/var/log/pods/x"));
        assert_eq!(p.hostname, "web");
        assert_eq!(p.metadata.as_ref().unwrap().namespace, "default");
        let ns = p
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, api::NamespaceMode::Container as i32);
        let c = container_config("app", "docker.io/library/busybox:latest", &["sleep", "9"]);
        assert_eq!(c.command, ["sleep", "9"]);
        assert_eq!(c.log_path, "app.log");
    }
}
