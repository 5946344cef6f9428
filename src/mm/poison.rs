//! Poisoning and device loss: data that cannot be brought back.
//!
//! - A page whose only copy cannot be brought back becomes `Poisoned`
//!   ([`poison_isolated`]): its device page is freed, its staged system page
//!   dropped, and `UFFDIO_POISON` put in the managed VA, so a CPU access gets
//!   SIGBUS (the kernel's `VM_FAULT_SIGBUS` on a failed `migrate_to_ram`) and
//!   a device access an error; every other page lives on.
//! - The loss of a device ([`Shared::device_lost`]) is handled once per loss
//!   by the first operation that finds it, with no block lock held: every
//!   page whose data was on that device is poisoned and the device's page
//!   table cleared.

use parking_lot::Mutex;
use std::sync::atomic::AtomicU64;

use super::ctx::Shared;
use super::space::RegionInner;
use super::staging::{page_runs, Stuck};
use super::state::{PageState, MAX_DEVICES};
use crate::addr::{DeviceId, PAGE_SIZE};
use crate::device::FreeBatch;
use crate::error::{Error, Result};
use crate::observe::events::UnmapTrigger;
use crate::sync::Ordering;

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
        r.states[idx].commit_isolated(PageState::Poisoned, &sh.counters);
    }
    freed.flush();
    for (s, n) in super::staging::runs(staged.into_iter()) {
        sh.drop_staged(r, s, n);
    }
    // Counted before the markers wake anyone: a woken thread sees it.
    let n = pages.len() as u64;
    sh.counters.add(&sh.counters.poisoned_pages, n);
    for (s, n) in super::staging::runs(pages.iter().map(|p| p.0)) {
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

/// Which device losses have been handled, and what each cost.
#[derive(Debug, Default)]
pub(crate) struct LossState {
    /// Bit `d`: the current loss of device `d` has been handled. Held while
    /// a loss is handled, so a second finder waits for the first.
    pub(crate) handled: Mutex<u8>,
    /// Per device: pages poisoned when its latest loss was handled.
    pub(crate) poisoned_at_loss: [AtomicU64; MAX_DEVICES],
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
        let mut handled = self.losses.handled.lock();
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
        self.losses.poisoned_at_loss[d.0 as usize].store(poisoned, Ordering::Relaxed);
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
