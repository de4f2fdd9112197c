//! How a container's init ended, in the form containerd expects.

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a `waitpid` status word; `None` for stop/continue reports.
    pub fn from_wait_status(status: i32) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(Self::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Self::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The shell's convention that containerd reports: the exit code, or
    /// 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(signal) => 128 + signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exit_and_signal() {
        // Exit code lives in bits 8..16; a signal in the low 7 bits.
        assert_eq!(
            ExitStatus::from_wait_status(42 << 8),
            Some(ExitStatus::Exited(42))
        );
        assert_eq!(
            ExitStatus::from_wait_status(9),
            Some(ExitStatus::Signaled(9))
        );
        // 0x7f in the low byte is a stopped child, not an end.
        assert_eq!(ExitStatus::from_wait_status(0x137f), None);
    }

    #[test]
    fn code_follows_128_plus_n() {
        assert_eq!(ExitStatus::Exited(42).code(), 42);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
    }
}
