//! Terminals for container processes, through libcontainer's console
//! socket (runc's model).
//!
//! The agent binds a Unix socket and names it to libcontainer; the
//! container's init (or exec'd process), already inside the container,
//! opens a pseudo-terminal on the container's own devpts, bind-mounts the
//! slave on /dev/console (init only), makes it its controlling terminal and
//! stdio, and sends the master side back over the socket (SCM_RIGHTS). The
//! agent keeps the master: it reads the terminal's output, writes the
//! process's input, and sets the window size on it.
//!
//! Why not `openpty` in the agent and the slave as the process's stdio:
//! libcontainer puts every container process in a new session (setsid)
//! and only makes a terminal controlling through the console socket, so
//! such a slave would be stdio but not the controlling terminal (no ^C,
//! no job control), and it would live on the agent's devpts, invisible in
//! the container's /dev/pts (`tty` answers "not a tty").

use std::fs::File;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys;

/// How long a container process may take to send its terminal once
/// libcontainer reported it created.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening console socket; removed when dropped.
#[derive(Debug)]
pub(super) struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub(super) fn bind(path: PathBuf) -> io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        Ok(Self { path, listener })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the process's connection and receives the terminal master.
    pub(super) fn receive_master(self) -> io::Result<File> {
        let timeout_ms = RECEIVE_TIMEOUT.as_millis() as i32;
        if !sys::poll_readable(&self.listener, timeout_ms)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the container process did not connect to the console socket",
            ));
        }
        let (conn, _) = self.listener.accept()?;
        conn.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        let master = sys::recv_fd(&conn)?;
        Ok(File::from(master))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
