//! The last step in a container process before its program runs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

use super::seccomp::SeccompExecutor;
use crate::sys;

/// Undoes the agent's own signal set-up, then runs the seccomp executor
/// (which installs the container's filter and execs like libcontainer's
/// default executor). Container processes are forked from the agent
/// without an exec in between, so they would otherwise inherit its blocked
/// signals (SIGCHLD, SIGTERM, SIGINT, SIGPWR for PID 1's signalfd: a
/// container's init would never see SIGTERM) and its ignored SIGPIPE.
#[derive(Debug, Clone)]
pub(super) struct AgentExecutor {
    seccomp: SeccompExecutor,
}

impl AgentExecutor {
    pub(super) fn new(seccomp: SeccompExecutor) -> Self {
        Self { seccomp }
    }
}

impl Executor for AgentExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // Before the filter, which may not allow rt_sigaction.
        sys::reset_signals_for_exec()
            .map_err(|e| ExecutorError::Other(format!("Cannot reset the signal mask: {e}")))?;
        self.seccomp.exec(spec)
    }

    /// A program named by a path (with a `/`) is checked where it is, as
    /// runc and execvp do: only a bare name needs PATH. libcontainer's
    /// default check wants PATH in the environment either way, and images
    /// built from scratch (the CRI's pause image) often have no `Env`.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let program = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .and_then(|a| a.first());
        match program {
            Some(program) if program.contains('/') => check_executable(Path::new(program)),
            _ => self.seccomp.validate(spec),
        }
    }
}

/// The program at `path` (relative to the process's cwd, where the
/// container's init runs this) exists, is a file and has an execute bit.
fn check_executable(path: &Path) -> Result<(), ExecutorValidationError> {
    let invalid = |why: String| {
        ExecutorValidationError::ArgValidationError(format!(
            "executable '{}': {why}",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| invalid(e.to_string()))?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid(format!(
            "no execute permission (mode {:o})",
            meta.permissions().mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spec_running(args: &[&str], env: Option<&[&str]>) -> Spec {
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_env(env.map(|e| e.iter().map(|s| s.to_string()).collect()));
        spec.set_process(Some(process));
        spec
    }

    #[test]
    fn a_path_needs_no_path_variable() {
        let dir = std::env::temp_dir().join(format!("husk-exec-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("pause");
        std::fs::write(&prog, b"#!/bin/sh\n").unwrap();
        let exec = AgentExecutor::new(SeccompExecutor::default());
        let p = prog.to_str().unwrap();

        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = exec.validate(&spec_running(&[p], None)).unwrap_err();
        assert!(
            e.to_string().contains("no execute permission (mode 644)"),
            "{e}"
        );

        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        exec.validate(&spec_running(&[p], None)).unwrap();
        exec.validate(&spec_running(&[p], Some(&[]))).unwrap();

        let missing = dir.join("missing");
        let e = exec
            .validate(&spec_running(&[missing.to_str().unwrap()], None))
            .unwrap_err();
        assert!(e.to_string().contains("No such file or directory"), "{e}");
        let e = exec
            .validate(&spec_running(&[dir.to_str().unwrap()], None))
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bare_name_is_looked_up_in_path() {
        let exec = AgentExecutor::new(SeccompExecutor::default());
        let e = exec.validate(&spec_running(&["sh"], None)).unwrap_err();
        assert!(e.to_string().contains("PATH"), "{e}");
        exec.validate(&spec_running(&["sh"], Some(&["PATH=/bin:/usr/bin"])))
            .unwrap();
    }
}
