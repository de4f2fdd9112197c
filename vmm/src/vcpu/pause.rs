//! Stopping every vCPU at a clean point for a snapshot, and letting them go again.
//!
//! The main thread asks ([`PauseControl::pause_all`]) and kicks each vCPU thread out of
//! KVM_RUN with the real-time signal of `state_dump` (again every few milliseconds: a kick
//! that lands just before a thread enters KVM_RUN is only answered at its next exit). A
//! vCPU thread sees the request before it re-enters the guest, first completes the port
//! or MMIO access it last exited for (KVM finishes that instruction only inside KVM_RUN;
//! with `immediate_exit` set it does so and returns at once), saves its state, hands it
//! over and waits. A failed snapshot resumes them ([`PauseControl::resume`]); after a
//! written one the VMM ends with the vCPUs still stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::arch::x86_64::vcpu_state::{VcpuState, VcpuStateError};

/// How often an unanswered vCPU is kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(10);

/// Why the vCPUs could not all be stopped and saved.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("Only {paused} of {count} vCPUs stopped within {timeout:?}")]
    Timeout {
        paused: usize,
        count: usize,
        timeout: Duration,
    },
    #[error(transparent)]
    Save(#[from] VcpuStateError),
    #[error("vCPU {0} answered twice or does not exist")]
    BadAnswer(u8),
}

struct State {
    requested: bool,
    /// Bumped by every resume: a paused vCPU waits until it changes.
    epoch: u64,
    report: Option<Sender<(u8, Result<VcpuState, VcpuStateError>)>>,
}

/// Shared by the main thread and every vCPU thread.
pub struct PauseControl {
    /// The vCPUs' fast check before each KVM_RUN; the truth is in `state`.
    requested: AtomicBool,
    state: Mutex<State>,
    resumed: Condvar,
    /// KVM_GET_MSR_INDEX_LIST: the MSRs each vCPU saves.
    msr_list: Vec<u32>,
}

impl PauseControl {
    pub fn new(msr_list: Vec<u32>) -> Self {
        Self {
            requested: AtomicBool::new(false),
            state: Mutex::new(State {
                requested: false,
                epoch: 0,
                report: None,
            }),
            resumed: Condvar::new(),
            msr_list,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the main thread: stops `count` vCPUs, calling `kick` until all have answered,
    /// and returns their states in vCPU order. On an error some vCPUs may be stopped:
    /// call [`PauseControl::resume`].
    pub fn pause_all(
        &self,
        count: usize,
        timeout: Duration,
        kick: impl Fn(),
    ) -> Result<Vec<VcpuState>, PauseError> {
        let (tx, rx) = channel();
        {
            let mut s = self.lock();
            s.requested = true;
            s.report = Some(tx);
        }
        self.requested.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut states: Vec<Option<VcpuState>> = (0..count).map(|_| None).collect();
        let mut paused = 0;
        while paused < count {
            kick();
            match rx.recv_timeout(KICK_INTERVAL) {
                Ok((id, result)) => {
                    let slot = states
                        .get_mut(usize::from(id))
                        .filter(|s| s.is_none())
                        .ok_or(PauseError::BadAnswer(id))?;
                    *slot = Some(result?);
                    paused += 1;
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => {
                    return Err(PauseError::Timeout {
                        paused,
                        count,
                        timeout,
                    })
                }
            }
        }
        self.lock().report = None;
        Ok(states.into_iter().flatten().collect())
    }

    /// On the main thread: lets every stopped vCPU run again.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.requested = false;
        s.report = None;
        s.epoch += 1;
        self.requested.store(false, Ordering::SeqCst);
        self.resumed.notify_all();
    }

    /// On a vCPU thread, before each KVM_RUN: whether a pause is asked for.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// On a vCPU thread whose last exit has been completed: saves with `save`, reports,
    /// and waits for a resume (forever, after a snapshot that was written).
    pub fn park(&self, id: u8, save: impl FnOnce(&[u32]) -> Result<VcpuState, VcpuStateError>) {
        let (epoch, report) = {
            let s = self.lock();
            if !s.requested {
                return;
            }
            (s.epoch, s.report.clone())
        };
        let result = save(&self.msr_list);
        if let Some(report) = report {
            // The main thread may have given up already; it resumes us then.
            let _ = report.send((id, result));
        }
        let mut s = self.lock();
        while s.epoch == epoch {
            s = self.resumed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use kvm_bindings::{
        kvm_debugregs, kvm_lapic_state, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    };

    use super::*;
    use crate::snapshot::raw::Raw;

    fn fake_state(id: u8) -> VcpuState {
        VcpuState {
            cpuid: vec![],
            msrs: vec![],
            regs: Raw(kvm_regs {
                rax: u64::from(id),
                ..Default::default()
            }),
            sregs: Raw(kvm_sregs::default()),
            xsave: Raw(kvm_xsave::default()),
            xcrs: Raw(kvm_xcrs::default()),
            debug_regs: Raw(kvm_debugregs::default()),
            lapic: Raw(kvm_lapic_state::default()),
            mp_state: 0,
            events: Raw(kvm_vcpu_events::default()),
            tsc_khz: None,
        }
    }

    /// Threads standing in for vCPUs: they run a loop that checks for a pause between
    /// "guest runs" and count how often they ran.
    fn spawn(control: &Arc<PauseControl>, n: u8) -> Vec<Arc<AtomicUsize>> {
        (0..n)
            .map(|id| {
                let c = control.clone();
                let runs = Arc::new(AtomicUsize::new(0));
                let r = runs.clone();
                std::thread::spawn(move || loop {
                    if c.is_requested() {
                        c.park(id, |msrs| {
                            assert_eq!(msrs, [0x10, 0x6e0]);
                            Ok(fake_state(id))
                        });
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                });
                runs
            })
            .collect()
    }

    #[test]
    fn all_stop_then_all_go_on() {
        let control = Arc::new(PauseControl::new(vec![0x10, 0x6e0]));
        let runs = spawn(&control, 3);
        let states = control
            .pause_all(3, Duration::from_secs(10), || {})
            .unwrap();
        assert_eq!(
            states.iter().map(|s| s.regs.0.rax).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // Stopped: nobody runs.
        let before: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        std::thread::sleep(Duration::from_millis(50));
        let after: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        assert_eq!(before, after);
        control.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(runs
            .iter()
            .zip(&after)
            .all(|(r, a)| r.load(Ordering::SeqCst) > *a));
        // And a second pause works the same.
        assert_eq!(
            control
                .pause_all(3, Duration::from_secs(10), || {})
                .unwrap()
                .len(),
            3
        );
        control.resume();
    }

    #[test]
    fn a_vcpu_that_never_answers_times_out_and_the_others_resume() {
        let control = Arc::new(PauseControl::new(vec![0x10, 0x6e0]));
        let runs = spawn(&control, 2);
        let kicks = AtomicUsize::new(0);
        let e = control
            .pause_all(3, Duration::from_millis(100), || {
                kicks.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap_err();
        assert!(
            matches!(
                e,
                PauseError::Timeout {
                    paused: 2,
                    count: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(kicks.load(Ordering::SeqCst) >= 2, "kicked again and again");
        control.resume();
        let now = runs[0].load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert!(runs[0].load(Ordering::SeqCst) > now);
    }

    #[test]
    fn a_resume_racing_a_late_vcpu_does_not_strand_it() {
        let control = Arc::new(PauseControl::new(vec![]));
        {
            let mut s = control.lock();
            s.requested = true;
        }
        control.resume();
        // A vCPU that saw the old request flag parks and returns at once.
        control.park(0, |_| Ok(fake_state(0)));
    }
}
