//! Running code in a fresh network namespace, for tests (and tools) that
//! must not touch the machine's own network.

use std::io;

/// Runs `f` on a new thread that first moves into a new, empty network
/// namespace (only a down `lo` in it). Netlink sockets `f` opens act there;
/// the namespace goes away when the thread and its sockets are done. Needs
/// CAP_SYS_ADMIN (root): the error is `unshare`'s otherwise.
pub fn run_in_new<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // SAFETY: unshare takes a flag word; CLONE_NEWNET only changes this
            // thread's network namespace, nothing in our memory.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })?;
    match thread.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether this process can make network namespaces: effective uid 0. Tests
/// that need one print why they skip otherwise.
pub fn can_unshare() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
