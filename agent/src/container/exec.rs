//! The last step in a container process before its program runs.

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

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        self.seccomp.validate(spec)
    }
}
