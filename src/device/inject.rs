//! Fault injection for devices that support it (the emulated device): copy
//! jobs that fail (every Nth, with a probability, or from a given job on),
//! device-memory allocations that fail, and the loss of the whole device.
//!
//! Settings are validated as a whole before any applies: a refused
//! [`Injection`] leaves the device's injection state as it was. Counting
//! starts when the settings are applied: job 1 is the first copy job after
//! [`Injector::set`].

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::DeviceError;
use crate::error::{Error, Result};

/// Which copy-engine jobs fail.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum CopyFailure {
    /// No copy job fails.
    #[default]
    Never,
    /// Every `n`th job fails (jobs `n`, `2n`, …); `n` ≥ 1.
    EveryNth(u64),
    /// Each job fails with probability `p` (0 ≤ p ≤ 1), drawn from a
    /// deterministic generator seeded with `seed`.
    Probability {
        /// The probability of failure, 0.0 to 1.0.
        p: f64,
        /// The generator's seed (the same seed fails the same jobs).
        seed: u64,
    },
    /// The next `after` jobs succeed, every later one fails (`after: 0`:
    /// from now on).
    After(u64),
}

/// Fault-injection settings of one device.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Injection {
    /// Which copy jobs fail.
    pub copy: CopyFailure,
    /// Every device-memory allocation gets no memory.
    pub alloc_fails: bool,
}

impl Injection {
    /// Copy jobs fail from now on.
    pub fn copy_fails() -> Injection {
        Injection {
            copy: CopyFailure::After(0),
            alloc_fails: false,
        }
    }

    /// Checks every value; the first one out of range is the error.
    pub fn validate(&self) -> Result<()> {
        match self.copy {
            CopyFailure::EveryNth(0) => Err(Error::Injection {
                what: "copy failure period N",
                value: "0".into(),
                allowed: "at least 1; 1 fails every job",
            }),
            CopyFailure::Probability { p, .. } if !(0.0..=1.0).contains(&p) => {
                Err(Error::Injection {
                    what: "copy failure probability",
                    value: format!("{p}"),
                    allowed: "a number between 0 and 1",
                })
            }
            _ => Ok(()),
        }
    }
}

/// One step of SplitMix64 (advances `state`, returns the next value): the
/// generator fault injection draws failures from, reproducibly; workloads
/// and benchmarks use it for their patterns.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Default)]
struct State {
    settings: Injection,
    /// Copy jobs seen since the settings were applied.
    jobs: u64,
    rng: u64,
    /// Copy jobs failed by injection since the settings were applied.
    failed: u64,
}

/// A device's injection state, shared with its copy-engine threads.
#[derive(Debug, Default)]
pub struct Injector {
    state: Mutex<State>,
    /// Fast path: whether any copy or allocation failure is set.
    active: AtomicBool,
    lost: AtomicBool,
}

impl Injector {
    /// No injection, not lost.
    pub fn new() -> Injector {
        Injector::default()
    }

    /// Applies `inj` (validated first; refused settings change nothing).
    pub fn set(&self, inj: Injection) -> Result<()> {
        inj.validate()?;
        let mut s = self.state.lock();
        *s = State {
            settings: inj,
            jobs: 0,
            rng: match inj.copy {
                CopyFailure::Probability { seed, .. } => seed,
                _ => 0,
            },
            failed: 0,
        };
        self.active
            .store(inj != Injection::default(), Ordering::Release);
        Ok(())
    }

    /// The settings in force.
    pub fn settings(&self) -> Injection {
        self.state.lock().settings
    }

    /// Copy jobs failed by injection since the settings were applied.
    pub fn failed_jobs(&self) -> u64 {
        self.state.lock().failed
    }

    /// Clears copy and allocation failures (not the loss).
    pub fn clear(&self) {
        *self.state.lock() = State::default();
        self.active.store(false, Ordering::Release);
    }

    /// The device is lost: every operation fails from now on.
    pub fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Whether [`Injector::lose`] was called since the last restore.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// After a reset: no injection, not lost.
    pub fn restore(&self) {
        self.clear();
        self.lost.store(false, Ordering::Release);
    }

    /// An error if the device is lost.
    pub fn check_lost(&self, what: &str) -> std::result::Result<(), DeviceError> {
        if self.is_lost() {
            Err(DeviceError::lost(format!("{what}: the device is lost")))
        } else {
            Ok(())
        }
    }

    /// Called once per copy job before it runs: whether it must fail.
    pub fn copy_job(&self) -> std::result::Result<(), DeviceError> {
        self.check_lost("copy engine")?;
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut s = self.state.lock();
        s.jobs += 1;
        let fail = match s.settings.copy {
            CopyFailure::Never => false,
            CopyFailure::EveryNth(n) => s.jobs % n.max(1) == 0,
            CopyFailure::Probability { p, .. } => {
                // 53 random bits as a number in [0, 1).
                let x = (splitmix64(&mut s.rng) >> 11) as f64 / (1u64 << 53) as f64;
                x < p
            }
            CopyFailure::After(k) => s.jobs > k,
        };
        if fail {
            s.failed += 1;
            return Err(DeviceError::new(format!(
                "copy engine: injected failure of copy job {}",
                s.jobs
            )));
        }
        Ok(())
    }

    /// Whether allocations must fail (injected, or the device is lost).
    pub fn alloc_fails(&self) -> bool {
        self.is_lost()
            || (self.active.load(Ordering::Acquire) && self.state.lock().settings.alloc_fails)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_fails_jobs_n_2n() {
        let i = Injector::new();
        i.set(Injection {
            copy: CopyFailure::EveryNth(3),
            alloc_fails: false,
        })
        .expect("valid");
        let fails: Vec<bool> = (0..9).map(|_| i.copy_job().is_err()).collect();
        assert_eq!(
            fails,
            [false, false, true, false, false, true, false, false, true]
        );
        assert_eq!(i.failed_jobs(), 3);
    }

    #[test]
    fn after_k_fails_from_job_k_plus_one() {
        let i = Injector::new();
        i.set(Injection {
            copy: CopyFailure::After(2),
            alloc_fails: false,
        })
        .expect("valid");
        let fails: Vec<bool> = (0..5).map(|_| i.copy_job().is_err()).collect();
        assert_eq!(fails, [false, false, true, true, true]);
        i.clear();
        assert!(i.copy_job().is_ok());
    }

    #[test]
    fn probability_is_seeded_and_roughly_right() {
        let run = |seed| {
            let i = Injector::new();
            i.set(Injection {
                copy: CopyFailure::Probability { p: 0.25, seed },
                alloc_fails: false,
            })
            .expect("valid");
            (0..4000).map(|_| i.copy_job().is_err()).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same failures");
        assert_ne!(a, run(8), "another seed, other failures");
        let n = a.iter().filter(|f| **f).count();
        assert!((800..1200).contains(&n), "{n} of 4000 failed at p = 0.25");
    }

    #[test]
    fn bad_settings_are_refused_and_change_nothing() {
        let i = Injector::new();
        let good = Injection {
            copy: CopyFailure::EveryNth(2),
            alloc_fails: true,
        };
        i.set(good).expect("valid");
        for bad in [
            CopyFailure::EveryNth(0),
            CopyFailure::Probability { p: -0.1, seed: 1 },
            CopyFailure::Probability { p: 1.5, seed: 1 },
            CopyFailure::Probability {
                p: f64::NAN,
                seed: 1,
            },
        ] {
            let e = i
                .set(Injection {
                    copy: bad,
                    alloc_fails: false,
                })
                .expect_err("out of range");
            assert!(matches!(e, Error::Injection { .. }), "{e}");
            assert_eq!(i.settings(), good);
        }
    }

    #[test]
    fn lost_fails_everything_until_restored() {
        let i = Injector::new();
        i.lose();
        let e = i.copy_job().expect_err("lost");
        assert!(e.lost);
        assert!(i.alloc_fails());
        i.restore();
        assert!(i.copy_job().is_ok());
        assert!(!i.alloc_fails());
    }
}
