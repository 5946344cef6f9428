//! System-memory accounting: one limit per `Svm`, and what is charged against it.
//!
//! **The limit.** By default it is derived from the machine's RAM the way
//! amdgpu's KFD derives its system-memory limit: `MemTotal` (from
//! `/proc/meminfo`, or `sysinfo(2)`), minus 1/64 of it, minus 1.5 GiB,
//! saturating at 0 ([`default_limit`]). [`crate::SvmBuilder::memory_limit`]
//! and [`crate::Svm::set_memory_limit`] replace it; a limit below what is in
//! use is refused ([`crate::Error::LimitBelowUsage`]) and changes nothing.
//!
//! **What is charged** (`in use` = the sum of these):
//! - *managed memory*: each region's page-rounded length, charged by
//!   [`crate::Svm::alloc`] before anything is created (an allocation that
//!   would pass the limit fails with [`crate::Error::MemoryLimit`] and changes
//!   nothing) and un-charged when the region is freed. The charge covers the
//!   region's staging mirror too: a managed page owns at most one system page
//!   at any time — in the managed view (`System`) or, while its data is on a
//!   device, as the staged page it left behind in the staging mirror
//!   (`Device { staged }`) — because a migration *moves* the page (zero-copy
//!   `UFFDIO_MOVE`) rather than duplicating it. So the managed and staging
//!   areas together never hold more than the region's length in system pages;
//! - *metadata*: every byte svmem keeps about managed memory — per region the
//!   page-state words, each device's page table, the per-2 MiB block records
//!   and the pin table (when one was needed); the range-attribute map; each
//!   device's allocator state. It is computed from the structures themselves
//!   whenever it is needed (the same figure `Svm::stats` reports), so it is
//!   exact, including growth the limit does not refuse (new attribute
//!   ranges, allocator splits). A region's metadata is part of the charge its
//!   allocation asks for; a pin table is charged when the first pin of its
//!   region allocates it;
//! - *bounce buffers*: a device page that was never backed by a system page
//!   (it was zero-filled on the device) has no staged page to come back to;
//!   migrating it to system memory copies through a transient buffer,
//!   charged while it lives. If the charge does not fit, those pages stay on
//!   their device and are reported busy. The one exception is a CPU fault:
//!   the faulting thread cannot be handed an error and would only fault
//!   again, so the window it needs is charged even past the limit
//!   (`past_limit`); `in use` then exceeds the limit by at most that
//!   window's bounce buffer, for the duration of its copy.
//!
//! Device memory (the emulated device's arena) is the device's own and is not
//! charged here.
//!
//! For comparison: the kernel spends a 64-byte `struct page` per 4 KiB of
//! device memory it manages (1.56 %). svmem spends, per managed 4 KiB page,
//! a 4-byte state word, a 4-byte PTE per device, 1/512 of a block record
//! and, in regions ever pinned, a 2-byte pin count (about 8.2 bytes, 0.2 %,
//! with one device); fixed costs come on top: a region record per region,
//! the attribute map, and each device's allocator (about a byte per device
//! page). [`MemoryUsage::metadata_bytes_per_page`] reports the total divided
//! by the managed pages, so it approaches the per-page figure as managed
//! memory grows.
//!
//! Lock order: a block's migration lock, then the accounting lock, then the
//! region map, attribute map and device-allocator locks (read to compute the
//! metadata). Nothing holding one of the latter charges.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::PressureState;
use crate::addr::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::mm::ctx::Shared;
use crate::mm::state::PageState;
use crate::sync::{AtomicU64, Ordering};

/// What amdgpu reserves for the kernel on top of 1/64 of RAM: 1.5 GiB.
const RESERVED: u64 = 3 << 29;

/// The default system-memory limit for `mem_total` bytes of RAM: minus 1/64,
/// minus 1.5 GiB, saturating at 0.
pub fn default_limit_for(mem_total: u64) -> u64 {
    (mem_total - mem_total / 64).saturating_sub(RESERVED)
}

/// The default system-memory limit of this machine (see the module docs);
/// no limit (`u64::MAX`) if its RAM cannot be read.
pub fn default_limit() -> u64 {
    crate::sys::meminfo::mem_total().map_or(u64::MAX, default_limit_for)
}

/// The live accounting state of one `Svm`.
#[derive(Debug)]
pub(crate) struct Accountant {
    limit: AtomicU64,
    /// Configured pin limit (the effective one is at most the memory limit).
    pin_limit: AtomicU64,
    /// Page-rounded bytes of live regions.
    managed: AtomicU64,
    /// Bytes of live bounce buffers.
    bounce: AtomicU64,
    /// Pages with a pin count above zero, over all live regions.
    pub(crate) pinned_pages: AtomicU64,
    /// Makes a check and its charge one step.
    lock: Mutex<()>,
    /// Serialises pin and unpin calls and a freed region's pin release.
    pub(crate) pin_lock: Mutex<()>,
}

impl Accountant {
    pub fn new(limit: u64, pin_limit: Option<u64>) -> Accountant {
        Accountant {
            limit: AtomicU64::new(limit),
            pin_limit: AtomicU64::new(pin_limit.unwrap_or(u64::MAX)),
            managed: AtomicU64::new(0),
            bounce: AtomicU64::new(0),
            pinned_pages: AtomicU64::new(0),
            lock: Mutex::new(()),
            pin_lock: Mutex::new(()),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// The pin limit in force: the configured one, at most the memory limit.
    pub fn pin_limit(&self) -> u64 {
        self.pin_limit.load(Ordering::Acquire).min(self.limit())
    }

    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_pages.load(Ordering::Acquire) * PAGE_SIZE as u64
    }

    /// Bytes charged now: managed memory, metadata, bounce buffers.
    pub fn in_use(&self, sh: &Shared) -> u64 {
        self.managed.load(Ordering::Acquire)
            + self.bounce.load(Ordering::Acquire)
            + sh.metadata_bytes()
    }

    /// Takes the accounting lock and checks that `requested` more bytes fit;
    /// the caller charges them before it lets the guard go.
    fn admit(&self, sh: &Shared, requested: u64) -> Result<MutexGuard<'_, ()>> {
        let g = self.lock.lock();
        let (in_use, limit) = (self.in_use(sh), self.limit());
        if in_use.saturating_add(requested) > limit {
            return Err(Error::MemoryLimit {
                requested,
                in_use,
                limit,
            });
        }
        Ok(g)
    }

    /// Admits a new region of `bytes` (page-rounded) whose metadata will be
    /// `metadata` bytes: the accounting lock stays held until the caller
    /// [`RegionCharge::commit`]s (after inserting the region into the map,
    /// which makes its metadata visible) or drops the charge (nothing
    /// charged).
    pub fn admit_region(&self, sh: &Shared, bytes: u64, metadata: u64) -> Result<RegionCharge<'_>> {
        let guard = self.admit(sh, bytes.saturating_add(metadata))?;
        Ok(RegionCharge {
            acct: self,
            bytes,
            _guard: guard,
        })
    }

    /// Un-charges a freed region of `bytes`.
    pub fn uncharge_region(&self, bytes: u64) {
        self.managed.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Checks that `metadata` more bytes fit, then runs `create` (which makes
    /// them visible) under the accounting lock.
    pub fn charge_metadata<T>(
        &self,
        sh: &Shared,
        metadata: u64,
        create: impl FnOnce() -> T,
    ) -> Result<T> {
        let _g = self.admit(sh, metadata)?;
        Ok(create())
    }

    /// Charges a bounce buffer of `bytes`; `None` if it does not fit. The
    /// charge lasts as long as the returned value.
    pub fn charge_bounce(self: &Arc<Self>, sh: &Shared, bytes: u64) -> Option<BounceCharge> {
        let _g = match crate::mm::ctx::is_past_limit() {
            true => self.lock.lock(),
            false => self.admit(sh, bytes).ok()?,
        };
        self.bounce.fetch_add(bytes, Ordering::AcqRel);
        Some(BounceCharge {
            acct: self.clone(),
            bytes,
        })
    }

    /// Replaces the limit, unless it is below what is in use.
    pub fn set_limit(&self, sh: &Shared, limit: u64) -> Result<()> {
        let _g = self.lock.lock();
        let in_use = self.in_use(sh);
        if limit < in_use {
            return Err(Error::LimitBelowUsage { limit, in_use });
        }
        self.limit.store(limit, Ordering::Release);
        Ok(())
    }

    fn bounce_bytes(&self) -> u64 {
        self.bounce.load(Ordering::Acquire)
    }

    fn managed_bytes(&self) -> u64 {
        self.managed.load(Ordering::Acquire)
    }
}

/// An admitted region not charged yet (see [`Accountant::admit_region`]).
pub(crate) struct RegionCharge<'a> {
    acct: &'a Accountant,
    bytes: u64,
    _guard: MutexGuard<'a, ()>,
}

impl RegionCharge<'_> {
    /// The region exists: charge it.
    pub fn commit(self) {
        self.acct.managed.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// A bounce buffer's charge; dropping it un-charges.
#[derive(Debug)]
pub(crate) struct BounceCharge {
    acct: Arc<Accountant>,
    bytes: u64,
}

impl Drop for BounceCharge {
    fn drop(&mut self) {
        self.acct.bounce.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// One device's share of [`MemoryUsage`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceUsage {
    /// The device's index ([`crate::DeviceId`]`.0`).
    pub id: u8,
    /// Managed data resident in this device's memory.
    pub resident_bytes: u64,
    /// Its memory in bytes.
    pub capacity_bytes: u64,
    /// Bytes of it free.
    pub free_bytes: u64,
}

/// Where memory is and what is charged, from [`crate::Svm::memory_usage`].
///
/// The page categories partition managed memory:
/// `unpopulated + system + device + migrating + poisoned = managed`.
/// `in_use = managed + metadata + bounce` (staging pages are covered by the
/// managed charge).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryUsage {
    /// The system-memory limit.
    pub limit_bytes: u64,
    /// Bytes charged against it.
    pub in_use_bytes: u64,
    /// Page-rounded length of every live region.
    pub managed_bytes: u64,
    /// Managed pages never touched (or discarded): no memory anywhere.
    pub unpopulated_bytes: u64,
    /// Managed pages resident in the managed view (system memory).
    pub system_bytes: u64,
    /// Managed pages resident on some device (sum over `devices`).
    pub device_bytes: u64,
    /// Of the device-resident pages, those whose former system page waits in
    /// the staging mirror (system memory held for data that is on a device).
    pub staging_bytes: u64,
    /// Pages isolated by a migration in progress.
    pub migrating_bytes: u64,
    /// Pages whose data was lost.
    pub poisoned_bytes: u64,
    /// Per device: resident managed data, capacity, free memory.
    pub devices: Vec<DeviceUsage>,
    /// Every byte of svmem metadata (region tables, pin tables, attribute
    /// map, device allocators); the same figure as `Stats::metadata_bytes`.
    pub metadata_bytes: u64,
    /// `metadata_bytes` per managed 4 KiB page (0 with nothing managed); the
    /// kernel's `struct page` costs 64.
    pub metadata_bytes_per_page: f64,
    /// Pages pinned to system memory.
    pub pinned_bytes: u64,
    /// The pin limit in force.
    pub pin_limit_bytes: u64,
    /// Live bounce buffers of migrations back to system memory.
    pub bounce_bytes: u64,
}

/// Scans every region's page-state table (one atomic load per page).
pub(crate) fn usage(sh: &Shared, p: &PressureState) -> MemoryUsage {
    let acct = &p.account;
    let regions: Vec<_> = sh.regions.read().values().cloned().collect();
    let ndev = sh.devices.len();
    let mut per_dev = vec![0u64; ndev];
    let (mut unpop, mut system, mut staged, mut migrating, mut poisoned) = (0, 0, 0, 0, 0);
    for r in &regions {
        for s in r.states.iter() {
            match s.load() {
                // A hole holds no memory (and is the program's address now).
                PageState::Unpopulated | PageState::Hole => unpop += 1,
                PageState::System => system += 1,
                PageState::Device {
                    dev, staged: st, ..
                } => {
                    if let Some(n) = per_dev.get_mut(dev.0 as usize) {
                        *n += 1;
                    }
                    staged += st as u64;
                }
                PageState::Migrating => migrating += 1,
                PageState::Poisoned => poisoned += 1,
            }
        }
    }
    let page = PAGE_SIZE as u64;
    let metadata = sh.metadata_bytes();
    let managed = acct.managed_bytes();
    let bounce = acct.bounce_bytes();
    let devices = sh
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| DeviceUsage {
            id: i as u8,
            resident_bytes: per_dev[i] * page,
            capacity_bytes: d.capacity_pages() * page,
            free_bytes: d.free_pages() * page,
        })
        .collect();
    let managed_pages = managed / page;
    MemoryUsage {
        limit_bytes: acct.limit(),
        in_use_bytes: managed + bounce + metadata,
        managed_bytes: managed,
        unpopulated_bytes: unpop * page,
        system_bytes: system * page,
        device_bytes: per_dev.iter().sum::<u64>() * page,
        staging_bytes: staged * page,
        migrating_bytes: migrating * page,
        poisoned_bytes: poisoned * page,
        devices,
        metadata_bytes: metadata,
        metadata_bytes_per_page: if managed_pages == 0 {
            0.0
        } else {
            metadata as f64 / managed_pages as f64
        },
        pinned_bytes: acct.pinned_bytes(),
        pin_limit_bytes: acct.pin_limit(),
        bounce_bytes: bounce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limit_follows_amdgpu() {
        let gib = 1u64 << 30;
        // 64 GiB: 63 GiB left after 1/64, minus 1.5 GiB.
        assert_eq!(default_limit_for(64 * gib), 63 * gib - 3 * (gib / 2));
        // Less than 1.5 GiB after 1/64: saturates at zero.
        assert_eq!(default_limit_for(gib), 0);
        assert_eq!(default_limit_for(0), 0);
    }
}
