//! Surviving device failures.
//!
//! - **Poisoning** ([`poison_isolated`]): a page whose only copy cannot be
//!   brought back becomes `Poisoned`: its device page is freed, its staged
//!   system page dropped, and `UFFDIO_POISON` put in the managed VA, so a CPU
//!   access gets SIGBUS (the kernel's `VM_FAULT_SIGBUS` on a failed
//!   `migrate_to_ram`) and a device access an error; every other page lives
//!   on.
//! - **Device loss** ([`Shared::device_lost`]): handled once per loss by the
//!   first operation that finds the device lost, with no block lock held:
//!   every page whose data was on that device is poisoned, and the device's
//!   page table is cleared. Afterwards migrations to the device, launches
//!   and device reads/writes are refused with `Error::DeviceLost`.
//! - **Graceful reset** ([`reset_device`]): evict every page to system
//!   memory (retrying), then reset the device and check its allocator is
//!   empty.

use super::PressureState;
use crate::addr::{DeviceId, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::mm::ctx::Shared;
use crate::mm::migrate::{self, MigrateReport};
use crate::observe::events::MigrateTrigger;
use crate::sync::Ordering;

/// What a graceful device reset did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResetReport {
    /// Pages evicted from the device to system memory before the reset.
    pub evicted_pages: u64,
    /// Eviction passes needed (failed pages are retried in the next pass).
    pub passes: u32,
    /// Pages that failed an eviction pass and moved in a later one.
    pub retried_pages: u64,
    /// Whether the device had been lost.
    pub was_lost: bool,
    /// Pages poisoned when the loss was handled (their data was on the
    /// lost device); 0 if the device was not lost.
    pub poisoned_at_loss: u64,
}

/// How long a reset waits for migrations to the device to finish.
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Most eviction passes a reset makes before it gives up.
const RESET_PASSES: u32 = 4;

/// One eviction pass of every page on device `d` to system memory.
fn evict_pass(sh: &Shared, d: DeviceId, rep: &mut MigrateReport) {
    let regions: Vec<_> = sh.regions.read().values().cloned().collect();
    for r in regions {
        for b in 0..r.blocks.len() {
            let _g = r.blocks[b].migrate.lock();
            let brep = migrate::pull_from(sh, &r, r.block_pages(b), d, MigrateTrigger::Eviction);
            rep.requested += brep.requested;
            rep.migrated += brep.migrated;
        }
    }
}

/// A graceful reset of device `d`; see [`crate::Svm::reset_device`]. The
/// caller makes sure no kernel runs on the device meanwhile.
pub(crate) fn reset_device(sh: &Shared, p: &PressureState, d: DeviceId) -> Result<ResetReport> {
    let dev = sh.device(d)?.clone();
    // No migration to the device may start or be in flight meanwhile: one
    // that allocated after the eviction passes would look like a leak.
    if !sh.reset_gate.close(d, GATE_WAIT) {
        return Err(Error::MigrationsInFlight {
            dev: d,
            waited_ms: GATE_WAIT.as_millis() as u64,
        });
    }
    struct Reopen<'a>(&'a Shared, DeviceId);
    impl Drop for Reopen<'_> {
        fn drop(&mut self) {
            self.0.reset_gate.open(self.1);
        }
    }
    let _reopen = Reopen(sh, d);
    let mut out = ResetReport::default();
    if dev.is_lost() {
        let _ = sh.device_lost(d);
        out.was_lost = true;
        out.poisoned_at_loss = sh.losses.poisoned_at_loss[d.0 as usize].load(Ordering::Relaxed);
    } else {
        while out.passes < RESET_PASSES {
            out.passes += 1;
            let mut rep = MigrateReport::default();
            evict_pass(sh, d, &mut rep);
            out.evicted_pages += rep.migrated;
            if out.passes > 1 {
                out.retried_pages += rep.migrated;
            }
            if rep.requested == rep.migrated {
                break;
            }
            if dev.is_lost() {
                // Lost during the eviction: what is left is lost with it.
                let _ = sh.device_lost(d);
                out.was_lost = true;
                out.poisoned_at_loss =
                    sh.losses.poisoned_at_loss[d.0 as usize].load(Ordering::Relaxed);
                break;
            }
        }
    }
    let left = crate::pressure::account::usage(sh, p).devices[d.0 as usize].resident_bytes
        / PAGE_SIZE as u64;
    if left > 0 {
        let fix = match dev.injection() {
            Some(i) if i != crate::device::Injection::default() => {
                "clear fault injection and retry"
            }
            _ => "their copies back failed; retry",
        };
        return Err(Error::Device {
            dev: d,
            reason: format!(
                "reset refused: {left} page(s) could not be evicted after {} passes \
                 (their data stays on the device; {fix})",
                out.passes
            ),
        });
    }
    dev.reset()?;
    *sh.losses.handled.lock() &= !(1u8 << d.0);
    let (free, cap) = (dev.free_pages(), dev.capacity_pages());
    if free != cap {
        return Err(Error::Device {
            dev: d,
            reason: format!("after reset {free} of {cap} device pages are free: memory leaked"),
        });
    }
    sh.counters.add(&sh.counters.device_resets, 1);
    Ok(out)
}

/// After a device read or write: a device found lost meanwhile (its own, or
/// another one holding pages the access pulled) is handled now, with no lock
/// held, and the access reports `DeviceLost` if it was its own device, or
/// the poisoned page it could not converge on.
pub(crate) fn after_access<T>(sh: &Shared, d: DeviceId, res: Result<T>) -> Result<T> {
    if res.is_ok() || !sh.check_lost() {
        return res;
    }
    sh.check_device_alive(d)?;
    res
}
