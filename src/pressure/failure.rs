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

use parking_lot::Mutex;

use crate::addr::{DeviceId, PAGE_SIZE};
use crate::cpu::{page_runs, Stuck};
use crate::device::FreeBatch;
use crate::error::{Error, Result};
use crate::events::{MigrateTrigger, UnmapTrigger};
use crate::migrate::{self, MigrateReport};
use crate::space::RegionInner;
use crate::state::{PageState, MAX_DEVICES};
use crate::svm::Shared;
use crate::sync::Ordering;
use std::sync::atomic::AtomicU64;

/// Per-`Svm` failure bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct FailureState {
    /// Bit `d`: the current loss of device `d` has been handled. Held while
    /// a loss is handled, so a second finder waits for the first.
    handled: Mutex<u8>,
    /// Per device: pages poisoned when its latest loss was handled.
    poisoned_at_loss: [AtomicU64; MAX_DEVICES],
}

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

/// Most eviction passes a reset makes before it gives up.
const RESET_PASSES: u32 = 4;

/// Poisons isolated pages (`Migrating`, the caller holds their block's lock,
/// device PTEs already cleared) whose data was on a device: see the module
/// docs. `pages` holds (index, state before isolation), ascending. Wakes the
/// CPU threads waiting on them (they take SIGBUS). Returns how many.
pub(crate) fn poison_isolated(sh: &Shared, r: &RegionInner, pages: &[(usize, PageState)]) -> u64 {
    let mut freed = FreeBatch::new(&sh.devices);
    let mut staged = Vec::new();
    for &(idx, prev) in pages {
        if let PageState::Device {
            dev,
            page,
            staged: s,
        } = prev
        {
            freed.push(dev, page);
            if s {
                staged.push(idx);
            }
        }
        let _ = r.states[idx].commit(PageState::Poisoned);
    }
    freed.flush();
    for (s, n) in migrate::runs(staged.into_iter()) {
        sh.drop_staged(r, s, n);
    }
    // Counted before the markers wake anyone: a woken thread sees it.
    let n = pages.len() as u64;
    sh.counters.add(&sh.counters.poisoned_pages, n);
    for (s, n) in migrate::runs(pages.iter().map(|p| p.0)) {
        poison_cpu_view(sh, r, s, n);
    }
    n
}

/// Puts poison markers on pages `[s, s+n)` of the managed view (absent
/// there), waking whoever waits on them. Pages already present or marked
/// are left alone.
pub(crate) fn poison_cpu_view(sh: &Shared, r: &RegionInner, s: usize, n: usize) {
    page_runs(
        sh,
        s..s + n,
        |i, len| sh.uffd.poison(r.addr_of(i).0, len),
        |i, _| {
            // EEXIST: a marker (or a page) is there already. Anything else:
            // the state says Poisoned; the CPU-fault path puts the marker in
            // when the page is touched.
            let _ = sh.uffd.wake(r.addr_of(i).0, PAGE_SIZE as u64);
            Stuck::Skip
        },
    );
}

impl Shared {
    /// Handles the loss of every device found lost and not handled yet.
    /// Call with no block lock held. Returns whether any device is lost.
    pub(crate) fn check_lost(&self) -> bool {
        let mut any = false;
        for (i, dev) in self.devices.iter().enumerate() {
            if dev.is_lost() {
                any = true;
                self.device_lost(DeviceId(i as u8));
            }
        }
        any
    }

    /// The loss of device `d`, handled once per loss (see the module docs).
    /// Call with no block lock held. Returns `Error::DeviceLost` for callers
    /// to pass on.
    pub(crate) fn device_lost(&self, d: DeviceId) -> Error {
        let bit = 1u8 << d.0;
        let mut handled = self.failure.handled.lock();
        if *handled & bit != 0 {
            return Error::DeviceLost { dev: d };
        }
        // Counted first: threads woken by the walk below see it.
        self.counters.add(&self.counters.devices_lost, 1);
        let regions: Vec<_> = self.regions.read().values().cloned().collect();
        let mut poisoned = 0;
        for r in &regions {
            for b in 0..r.blocks.len() {
                let blk = &r.blocks[b];
                let _g = blk.migrate.lock();
                let pages: Vec<(usize, PageState)> = r
                    .block_pages(b)
                    .filter_map(|i| match r.states[i].load() {
                        s @ PageState::Device { dev, .. } if dev == d => Some((i, s)),
                        _ => None,
                    })
                    .collect();
                if !pages.is_empty() {
                    r.invalidate(b, pages.iter().map(|p| p.0), UnmapTrigger::MmuNotifyMigrate);
                    let isolated: Vec<_> = pages
                        .into_iter()
                        .filter(|&(i, s)| r.states[i].isolate(s).is_ok())
                        .collect();
                    poisoned += poison_isolated(self, r, &isolated);
                }
                clear_device_table(r, b, d);
            }
        }
        self.failure.poisoned_at_loss[d.0 as usize].store(poisoned, Ordering::Relaxed);
        *handled |= bit;
        Error::DeviceLost { dev: d }
    }

    /// `Err(DeviceLost)` (the loss handled) if device `d` is lost.
    pub(crate) fn check_device_alive(&self, d: DeviceId) -> Result<()> {
        if self.device(d)?.is_lost() {
            return Err(self.device_lost(d));
        }
        Ok(())
    }
}

/// Clears device `d`'s translations in block `b` (the caller holds the
/// block lock) and drains its accesses in flight.
fn clear_device_table(r: &RegionInner, b: usize, d: DeviceId) {
    let blk = &r.blocks[b];
    let bit = 1u8 << d.0;
    if blk.mapped.load(Ordering::Acquire) & bit == 0 {
        return;
    }
    let table = &r.ptes[d.0 as usize];
    for i in r.block_pages(b) {
        table[i].store(0, Ordering::Release);
    }
    blk.mapped.fetch_and(!bit, Ordering::AcqRel);
    blk.seq.fetch_add(1, Ordering::AcqRel);
    drop(blk.access.write());
}

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

/// A graceful reset of device `d`; see [`crate::Svm::reset_device`].
pub(crate) fn reset_device(sh: &Shared, d: DeviceId) -> Result<ResetReport> {
    let dev = sh.device(d)?.clone();
    let rt = &sh.runtime[d.0 as usize];
    let _idle = rt.idle_guard().map_err(|running| Error::Busy {
        what: "resetting the device",
        dev: d,
        running,
    })?;
    let mut out = ResetReport::default();
    if dev.is_lost() {
        let _ = sh.device_lost(d);
        out.was_lost = true;
        out.poisoned_at_loss = sh.failure.poisoned_at_loss[d.0 as usize].load(Ordering::Relaxed);
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
                    sh.failure.poisoned_at_loss[d.0 as usize].load(Ordering::Relaxed);
                break;
            }
        }
    }
    let left = crate::account::usage(sh).devices[d.0 as usize].resident_bytes / PAGE_SIZE as u64;
    if left > 0 {
        return Err(Error::Device {
            dev: d,
            reason: format!(
                "reset refused: {left} page(s) could not be evicted after {} passes \
                 (their data stays on the device; clear fault injection and retry)",
                out.passes
            ),
        });
    }
    dev.reset()?;
    *sh.failure.handled.lock() &= !(1u8 << d.0);
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
