//! The pause process of husk's pause image (the CRI's pod sandbox
//! container), as Kubernetes' pause.c: it holds the pod's namespaces,
//! exits 0 on SIGTERM or SIGINT, and, as PID 1 of a pod-shared PID
//! namespace, reaps every child that exits. Built static (musl) so the
//! image needs nothing else: no shell, no libc, no `Env`.

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn on_child(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status is allowed.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn handle(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // The handlers only call async-signal-safe functions.
    // SAFETY: a zeroed sigaction with a plain handler and SA_RESTART is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal, &sa, std::ptr::null_mut()) != 0 {
            eprintln!(
                "husk-pause: sigaction({signal}): {}",
                std::io::Error::last_os_error()
            );
            libc::_exit(1);
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("husk-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    handle(libc::SIGINT, on_term);
    handle(libc::SIGTERM, on_term);
    handle(libc::SIGCHLD, on_child);
    loop {
        // SAFETY: pause() only waits for a signal.
        unsafe { libc::pause() };
    }
}
