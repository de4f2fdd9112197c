//! The last step in a container process before its program runs.

use libcontainer::workload::default::get_executor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

use crate::sys;

/// libcontainer's default executor, after undoing the agent's own signal
/// set-up: container processes are forked from the agent without an exec
/// in between, so they would otherwise inherit its blocked signals (SIGCHLD,
/// SIGTERM, SIGINT, SIGPWR for PID 1's signalfd: a container's init would
/// never see SIGTERM) and its ignored SIGPIPE.
#[derive(Debug, Clone, Copy)]
pub(super) struct AgentExecutor;

impl Executor for AgentExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        sys::reset_signals_for_exec()
            .map_err(|e| ExecutorError::Other(format!("Cannot reset the signal mask: {e}")))?;
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }
}
