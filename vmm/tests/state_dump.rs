//! SIGUSR1 state dumps, in a process of their own: the signal is process-wide and would
//! wake the devices of the library's unit tests.

use husk_vmm::devices::state_dump::{generation, install, listener, register_vcpu_thread};

#[test]
fn signal_reaches_every_listener() {
    install().unwrap();
    install().unwrap();
    let a = listener().unwrap();
    let b = listener().unwrap();
    // SAFETY: raising a signal whose handler we just installed.
    unsafe { libc::raise(libc::SIGUSR1) };
    assert!(a.read().unwrap() >= 1);
    assert!(b.read().unwrap() >= 1);
}

#[test]
fn a_registered_thread_is_kicked_out_of_a_blocking_call() {
    install().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let _reg = register_vcpu_thread(7);
        let before = generation();
        tx.send(()).unwrap();
        // A blocking call the kick interrupts (as it does KVM_RUN): EINTR.
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a 2-element array; read(2) into a 1-byte buffer.
        let r = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let mut b = 0u8;
            libc::read(fds[0], std::ptr::addr_of_mut!(b).cast(), 1)
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        // SAFETY: closing the two pipe ends we own.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        (r, errno, generation() != before)
    });
    rx.recv().unwrap();
    // Give the thread time to block in read(2); a kick before that is retried.
    let mut result = None;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: raising a signal whose handler we installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        if t.is_finished() {
            result = Some(t.join().unwrap());
            break;
        }
    }
    let (r, errno, bumped) = result.expect("the registered thread was never kicked");
    assert_eq!(r, -1);
    assert_eq!(errno, Some(libc::EINTR));
    assert!(bumped);
}
