//! Seccomp filters for husk-vmm's threads, one allow-list per thread class, declared as
//! data in `x86_64.json` (seccompiler's JSON format, the model being Firecracker's
//! `resources/seccomp/`): the main thread (`main`: set-up, then it waits for the VM's end),
//! the device event loop (`vmm-events`) and every vCPU (`vcpu`).
//!
//! A call outside its thread's list kills the whole VMM with SIGSYS
//! (`SECCOMP_RET_KILL_PROCESS`): nothing of a compromised thread runs on, and the kernel's
//! audit line (`dmesg`: `type=1326 ... syscall=N`) names the call. Each thread installs its
//! own filter when it starts, before it waits at the [`StartGate`]; no vCPU enters the
//! guest before every thread (the main thread last) is filtered. All threads are created
//! before any filter goes on, so no list allows `clone`/`clone3`, `execve` or opening files.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Barrier};

use seccompiler::{BpfProgram, TargetArch};

#[cfg(test)]
mod tests;

/// The allow-lists, as reviewed data.
pub const FILTERS_JSON: &str = include_str!("x86_64.json");

/// Errors compiling or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot compile the seccomp filters")]
    Compile(#[source] seccompiler::Error),
    #[error("The seccomp filters have no list for thread class {0:?}")]
    MissingClass(&'static str),
    #[error("The seccomp filters have a list for an unknown thread class {0:?}")]
    UnknownClass(String),
    #[error("Cannot install the seccomp filter of thread class {class:?}")]
    Install {
        class: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("A thread ended before it installed its seccomp filter")]
    ThreadGone,
}

/// The kinds of thread husk-vmm has, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadClass {
    /// The process's first thread: builds the VM, starts the others, waits for the end.
    Main,
    /// `vmm-events`: the device event loop (queues, vsock sockets, block I/O).
    Events,
    /// `vcpuN`: KVM_RUN and the port and MMIO exits it returns with.
    Vcpu,
}

impl ThreadClass {
    pub const ALL: [ThreadClass; 3] = [ThreadClass::Main, ThreadClass::Events, ThreadClass::Vcpu];

    /// The key of this class in `x86_64.json`.
    pub fn key(self) -> &'static str {
        match self {
            ThreadClass::Main => "main",
            ThreadClass::Events => "vmm-events",
            ThreadClass::Vcpu => "vcpu",
        }
    }
}

/// The compiled filters, one BPF program per thread class.
#[derive(Debug)]
pub struct Filters {
    main: BpfProgram,
    events: BpfProgram,
    vcpu: BpfProgram,
}

impl Filters {
    /// Compiles [`FILTERS_JSON`] for x86_64.
    pub fn compile() -> Result<Self, SeccompError> {
        Self::from_json(FILTERS_JSON)
    }

    fn from_json(json: &str) -> Result<Self, SeccompError> {
        let mut map = seccompiler::compile_from_json(json.as_bytes(), TargetArch::x86_64)
            .map_err(SeccompError::Compile)?;
        let mut take = |class: ThreadClass| {
            map.remove(class.key())
                .ok_or(SeccompError::MissingClass(class.key()))
        };
        let filters = Self {
            main: take(ThreadClass::Main)?,
            events: take(ThreadClass::Events)?,
            vcpu: take(ThreadClass::Vcpu)?,
        };
        if let Some(extra) = map.into_keys().next() {
            return Err(SeccompError::UnknownClass(extra));
        }
        Ok(filters)
    }

    pub fn program(&self, class: ThreadClass) -> &BpfProgram {
        match class {
            ThreadClass::Main => &self.main,
            ThreadClass::Events => &self.events,
            ThreadClass::Vcpu => &self.vcpu,
        }
    }

    /// Installs `class`'s filter on the calling thread (and sets no_new_privs, which
    /// seccomp needs without CAP_SYS_ADMIN). It stays for the thread's life.
    pub fn apply(&self, class: ThreadClass) -> Result<(), SeccompError> {
        seccompiler::apply_filter(self.program(class)).map_err(|source| SeccompError::Install {
            class: class.key(),
            source,
        })
    }
}

/// Whether husk-vmm's threads run filtered.
#[derive(Clone, Debug)]
pub enum Seccomp {
    /// Every thread installs its class's filter before the guest runs (the default).
    On(Arc<Filters>),
    /// No filters (`--no-seccomp`, for debugging only).
    Off,
}

/// How threads start under seccomp: each installs its filter, reports, and waits until the
/// main thread has heard from all of them and filtered itself; only then does any thread
/// go on (so no vCPU runs a guest instruction on a half-filtered VMM). The main thread
/// makes one gate and gives every thread it spawns a [`ThreadStart`].
pub struct StartGate {
    seccomp: Seccomp,
    ready_tx: Sender<Result<(), SeccompError>>,
    ready_rx: Receiver<Result<(), SeccompError>>,
    barrier: Arc<Barrier>,
    threads: usize,
}

/// One spawned thread's part of the [`StartGate`].
pub struct ThreadStart {
    seccomp: Seccomp,
    ready: Sender<Result<(), SeccompError>>,
    barrier: Arc<Barrier>,
}

impl StartGate {
    /// A gate for `threads` spawned threads plus the main thread.
    pub fn new(seccomp: Seccomp, threads: usize) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        Self {
            seccomp,
            ready_tx,
            ready_rx,
            barrier: Arc::new(Barrier::new(threads + 1)),
            threads,
        }
    }

    /// The part to hand one spawned thread (call it exactly `threads` times).
    pub fn thread(&self) -> ThreadStart {
        ThreadStart {
            seccomp: self.seccomp.clone(),
            ready: self.ready_tx.clone(),
            barrier: Arc::clone(&self.barrier),
        }
    }

    /// On the main thread, after spawning: waits for every thread's filter, installs the
    /// main thread's own and lets them all go. On an error nobody is let go: the caller
    /// returns it and the process ends.
    pub fn open(self) -> Result<(), SeccompError> {
        let StartGate {
            seccomp,
            ready_tx,
            ready_rx,
            barrier,
            threads,
        } = self;
        drop(ready_tx);
        for _ in 0..threads {
            ready_rx.recv().map_err(|_| SeccompError::ThreadGone)??;
        }
        if let Seccomp::On(filters) = &seccomp {
            filters.apply(ThreadClass::Main)?;
        }
        barrier.wait();
        Ok(())
    }
}

impl ThreadStart {
    /// First thing on a spawned thread: installs `class`'s filter and waits at the gate.
    /// False if the filter could not be installed (the thread must end; the main thread
    /// reports why).
    pub fn enter(self, class: ThreadClass) -> bool {
        let result = match &self.seccomp {
            Seccomp::On(filters) => filters.apply(class),
            Seccomp::Off => Ok(()),
        };
        let ok = result.is_ok();
        let _ = self.ready.send(result);
        if ok {
            self.barrier.wait();
        }
        ok
    }
}

/// `--seccomp-selftest`: a call no thread class allows, made on purpose after the filters
/// are on, so that a test can see a violation end the VMM (by SIGSYS) and the shim report
/// it. `getppid` is harmless where it is not stopped (`--no-seccomp`).
pub fn forbidden_call() -> libc::pid_t {
    // SAFETY: getppid(2) has no arguments and cannot fail.
    unsafe { libc::getppid() }
}
