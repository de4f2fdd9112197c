//! containerd's entry points around the Task service: `start` (spawn the pod's shim, or
//! return the address of the one already serving the pod), `delete` (clean up after a
//! shim that died) and the serving process's lifetime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config as ShimConfig, DeleteResponse, ExitSignal, Flags, StartOpts};
use tracing::{info, warn};

use crate::config::Config;
use crate::mounts::RealHost;
use crate::persist::{self, BundleState, Persisted};
use crate::sandbox::cleanup_dead_pod;
use crate::service::Service;
use crate::spec;

/// The shim of one pod.
pub struct HuskShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

fn shim_err(msg: String) -> containerd_shim::Error {
    containerd_shim::Error::Other(msg)
}

/// The pod of the container whose bundle is `bundle` (its config.json's annotations).
fn bundle_pod(id: &str, bundle: &Path) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map_or_else(|| id.to_owned(), |s| spec::pod_id(id, &s))
}

impl containerd_shim::Shim for HuskShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // One shim per pod: every container of a pod maps to the same socket, and a
        // second start finds the pod's shim serving there and returns its address.
        let grouping = bundle_pod(&opts.id, &self.bundle);
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // containerd runs this when the shim is gone (killed, crashed, or never
        // started): stop what it left running and remove its mounts and state.
        let state = persist::read::<BundleState>(&self.bundle).unwrap_or_else(|e| {
            warn!(
                "delete: {}; looking for the pod where the config puts it",
                husk_errors::chain(&e)
            );
            None
        });
        let (config, _) = Config::load(None).unwrap_or_else(|e| {
            warn!("delete: {e}; using defaults");
            (Config::default(), None)
        });
        let pod_dir = state
            .as_ref()
            .map(|s| s.pod_dir.clone())
            .unwrap_or_else(|| {
                crate::sandbox::pod_dir(
                    &config,
                    &self.namespace,
                    &bundle_pod(&self.id, &self.bundle),
                )
            });
        let mut config = config;
        if let Some(s) = state {
            config.vmm = s.vmm;
            config.virtiofsd = s.virtiofsd;
        }
        info!("delete {}: cleaning {}", self.id, pod_dir.display());
        cleanup_dead_pod(&RealHost, &pod_dir, &config)
            .map_err(|e| shim_err(husk_errors::chain(&e)))?;
        let _ = std::fs::remove_file(self.bundle.join(BundleState::FILE));
        let mut resp = api::DeleteResponse::new();
        // SIGKILL's status: whatever ran there did not end on its own.
        resp.exit_status = 128 + 9;
        resp.exited_at = Some(containerd_shim::util::timestamp()?).into();
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service::new(&self.namespace, publisher, Arc::clone(&self.exit))
    }
}
