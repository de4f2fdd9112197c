//! The Task API v2 methods as containerd calls them: each logs, delegates to the pod's
//! [`Inner`](super::Inner) and publishes its event.

use super::*;

impl Task for Service {
    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        info!("Create {} (bundle {})", req.id, req.bundle);
        let pid = self
            .inner
            .create(&req)
            .inspect_err(|e| error!("Create {}: {e:?}", req.id))?;
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        ev.io = Some(io).into();
        ev.pid = pid;
        self.inner.publish(Box::new(ev));
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        info!("Start {} {}", req.id, req.exec_id);
        let pid = self.inner.start(&req.id, &req.exec_id)?;
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        self.inner.process_info(&req.id, &req.exec_id, |c, p| {
            let mut r = api::StateResponse::new();
            r.id = if p.exec_id.is_empty() {
                req.id.clone()
            } else {
                p.exec_id.clone()
            };
            r.bundle = c.bundle.clone();
            r.pid = p.pid;
            r.status = p.status().into();
            r.stdin = p.stdio.stdin.clone();
            r.stdout = p.stdio.stdout.clone();
            r.stderr = p.stdio.stderr.clone();
            r.terminal = p.stdio.terminal;
            if let Some(e) = p.exit.get() {
                r.exit_status = e.status;
                r.exited_at = Some(e.at).into();
            }
            r.exec_id = p.exec_id.clone();
            r
        })
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let cell = self
            .inner
            .process_info(&req.id, &req.exec_id, |_, p| Arc::clone(&p.exit))?;
        let exit = cell.wait();
        let mut r = api::WaitResponse::new();
        r.exit_status = exit.status;
        r.exited_at = Some(exit.at).into();
        Ok(r)
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        info!("Kill {} {} signal {}", req.id, req.exec_id, req.signal);
        let exited = self
            .inner
            .process_info(&req.id, &req.exec_id, |_, p| p.exit.get().is_some())?;
        // A kill of every process of a finished container still reaches the guest (it may
        // have left children), unless the VM is gone or its agent cut off (a framing
        // violation closes the connection for good): then nothing is left to signal, and
        // NOT_FOUND is what lets `ctr task rm -f` (kill all, then delete) go on, as runc.
        let vm_gone = || {
            self.inner.sandbox().map_or(true, |sb| {
                sb.vmm_exit().is_some() || sb.agent().closed().is_some()
            })
        };
        if exited && (!req.all || vm_gone()) {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        let sb = self.inner.sandbox()?;
        let mut r = agent::SignalProcessRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.signal = req.signal;
        r.all = req.all;
        sb.agent()
            .signal_process(sb.ctx(), &r)
            .map_err(|e| agent_err("SignalProcess", e))?;
        Ok(Empty::new())
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        info!("Delete {} {}", req.id, req.exec_id);
        self.inner.delete(&req.id, &req.exec_id)
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        info!("Exec {} {}", req.id, req.exec_id);
        if !spec::valid_id(&req.exec_id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("bad exec id {:?}", req.exec_id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let terminal = serde_json::from_slice::<serde_json::Value>(&spec)
            .ok()
            .and_then(|v| v.get("terminal").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        {
            let mut cs = self.inner.containers();
            let c = cs.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            if c.init.status() != Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            let mut p = Process::new(
                &req.exec_id,
                StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal || terminal,
                },
            );
            p.spec = spec;
            c.execs.insert(req.exec_id.clone(), p);
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.inner.publish(Box::new(ev));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.inner.process_info(&req.id, &req.exec_id, |_, _| ())?;
        let sb = self.inner.sandbox()?;
        let mut r = agent::TtyWinResizeRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.rows = req.height;
        r.columns = req.width;
        sb.agent()
            .tty_win_resize(sb.ctx(), &r)
            .map_err(|e| agent_err("TtyWinResize", e))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        if !req.stdin {
            return Ok(Empty::new());
        }
        let io = self
            .inner
            .process_info(&req.id, &req.exec_id, |_, p| Arc::clone(&p.io))?;
        if io.has_stdin() {
            io.close_stdin(Duration::from_secs(2));
            return Ok(Empty::new());
        }
        let sb = self.inner.sandbox()?;
        let mut r = agent::CloseStdinRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        sb.agent()
            .close_stdin(sb.ctx(), &r)
            .map_err(|e| agent_err("CloseStdin", e))?;
        Ok(Empty::new())
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.inner.process_info(&req.id, "", |_, _| ())?;
        let sb = self.inner.sandbox()?;
        let mut r = agent::ListProcessesRequest::new();
        r.container_id = req.id.clone();
        let l = sb
            .agent()
            .list_processes(sb.ctx(), &r)
            .map_err(|e| agent_err("ListProcesses", e))?;
        let mut resp = api::PidsResponse::new();
        for pid in l.pids {
            let mut info = containerd_shim::protos::api::ProcessInfo::new();
            info.pid = pid;
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.inner.set_frozen(&req.id, true)?;
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.inner.set_frozen(&req.id, false)?;
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, req: api::CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!("husk: Checkpoint of {} is not implemented (a VM-isolated container cannot be checkpointed yet)", req.id),
        ))
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.inner.process_info(&req.id, "", |_, _| ())?;
        let sb = self.inner.sandbox()?;
        let mut r = agent::UpdateContainerRequest::new();
        r.container_id = req.id.clone();
        r.resources_json = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        sb.agent()
            .update_container(sb.ctx(), &r)
            .map_err(|e| agent_err("UpdateContainer", e))?;
        Ok(Empty::new())
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        self.inner.process_info(&req.id, "", |_, _| ())?;
        let sb = self.inner.sandbox()?;
        let mut r = agent::StatsContainerRequest::new();
        r.container_id = req.id.clone();
        let s = sb
            .agent()
            .stats_container(sb.ctx(), &r)
            .map_err(|e| agent_err("StatsContainer", e))?;
        let any: Any = metrics::to_any(&s).map_err(|e| status(Code::INTERNAL, e.to_string()))?;
        let mut resp = api::StatsResponse::new();
        resp.stats = Some(any).into();
        Ok(resp)
    }

    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self
            .inner
            .containers()
            .get(&req.id)
            .map_or(0, |c| c.init.pid);
        r.version = env!("CARGO_PKG_VERSION").to_owned();
        Ok(r)
    }

    fn shutdown(&self, _: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        if self.inner.stop_sandbox_if_unused() {
            info!("Shutdown: no container left; the shim exits");
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }
}
