//! Pinning managed pages to system memory: [`crate::Svm::pin`] and
//! [`crate::Svm::unpin`].
//!
//! A pin is a long-term pin in the kernel's sense (`FOLL_LONGTERM`): the
//! kernel refuses to leave such pages in device memory — it migrates a
//! long-term pin's pages out of coherent device memory first — and never
//! migrates them while pinned. svmem's pin does the same for every memory
//! type: it migrates the range's device-resident pages back to system memory
//! (each block under its migration lock) and keeps them there until the last
//! unpin. Migrations to a device (explicit, prefetch, device faults, fault-
//! ahead) skip pinned pages (`MigrateReport::skipped_pinned`); a device
//! fault on a pinned page is served by mapping the system page in place, as
//! for any page a migration left behind. CPU accesses are unaffected. Pinned
//! pages that were never touched stay unpopulated (their first touch
//! populates them in system memory, where they stay).
//!
//! Storage: per region, a pin table allocated on the region's first pin —
//! a `u16` count per page (pins nest, up to 65535) and a per-2 MiB-block
//! count of pinned pages, so the migration path's check is one load for
//! blocks with nothing pinned. The table is metadata (2 bytes per page plus
//! 2 per block), charged against the memory limit when allocated and kept
//! until the region is freed; freeing a region drops its pins.
//!
//! The pin limit ([`crate::SvmBuilder::pin_limit`], by default the memory
//! limit, and never above it) bounds the bytes of pages pinned at least once.
//!
//! Errors leave every pin count as it was: a failed pin may still have
//! migrated pages back to system memory (best effort, as any migration) and
//! allocated the region's pin table.

use std::sync::atomic::Ordering as O;
use std::sync::Arc;

use super::PressureState;
use crate::addr::{BLOCK_PAGES, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::mm::ctx::Shared;
use crate::mm::migrate::{self, Trigger};
use crate::mm::pins::PinTable;
use crate::mm::space::RegionInner;
use crate::mm::state::PageState;

/// Whether `r` is still one of the `Svm`'s regions (not freed).
fn is_live(sh: &Shared, r: &Arc<RegionInner>) -> bool {
    sh.regions
        .read()
        .get(&r.base())
        .is_some_and(|x| Arc::ptr_eq(x, r))
}

fn freed(r: &RegionInner, first: usize, n: usize) -> Error {
    Error::OutsideManaged {
        start: r.addr_of(first),
        len: (n * PAGE_SIZE) as u64,
    }
}

/// Calls `f(b, lo..hi)` for each block-sized piece of `[first, first+n)`
/// with the block's migration lock held.
fn per_block(
    r: &RegionInner,
    first: usize,
    n: usize,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    let (mut i, end) = (first, first + n);
    while i < end {
        let b = i / BLOCK_PAGES;
        let hi = end.min((b + 1) * BLOCK_PAGES);
        let _g = r.blocks[b].migrate.lock();
        f(b, i..hi);
        i = hi;
    }
}

/// Pins pages `[first, first+n)` of `r` (see the module docs).
pub(crate) fn pin(
    sh: &Shared,
    p: &PressureState,
    r: &Arc<RegionInner>,
    first: usize,
    n: usize,
) -> Result<()> {
    let acct = &p.account;
    let _p = acct.pin_lock.lock();
    if !is_live(sh, r) {
        return Err(freed(r, first, n));
    }
    let page = PAGE_SIZE as u64;
    // Validate everything before anything changes.
    let mut new = 0u64;
    for i in first..first + n {
        let c = r.pins.count(i);
        if c == u16::MAX {
            return Err(Error::PinOverflow {
                addr: r.addr_of(i),
                count: c as u32,
            });
        }
        new += (c == 0) as u64;
    }
    let (pinned, limit) = (acct.pinned_bytes(), acct.pin_limit());
    if pinned.saturating_add(new * page) > limit {
        return Err(Error::PinLimit {
            requested: new * page,
            pinned,
            limit,
        });
    }
    let t = match r.pins.table.get() {
        Some(t) => t,
        None => acct.charge_metadata(sh, PinTable::bytes_for(r.npages), || {
            r.pins.table.get_or_init(|| PinTable::new(r.npages))
        })?,
    };
    // Pin first, then pull, under each block's lock: from the moment the
    // lock is released no migration can take the pages to a device.
    let mut busy = 0u64;
    per_block(r, first, n, |b, pages| {
        for k in pages.clone() {
            t.inc(b, k);
        }
        migrate::pull_to_system(sh, r, pages.clone(), None, Trigger::Explicit);
        busy += pages
            .filter(|&k| {
                matches!(
                    r.states[k].load(),
                    PageState::Device { .. } | PageState::Migrating
                )
            })
            .count() as u64;
    });
    if busy > 0 {
        per_block(r, first, n, |b, pages| {
            for k in pages {
                t.dec(b, k);
            }
        });
        return Err(Error::PinBusy {
            addr: r.addr_of(first),
            len: n as u64 * page,
            busy,
        });
    }
    acct.pinned_pages.fetch_add(new, O::AcqRel);
    Ok(())
}

/// Drops one pin of each page of `[first, first+n)`; every page must be pinned.
pub(crate) fn unpin(
    sh: &Shared,
    p: &PressureState,
    r: &Arc<RegionInner>,
    first: usize,
    n: usize,
) -> Result<()> {
    let acct = &p.account;
    let _p = acct.pin_lock.lock();
    if !is_live(sh, r) {
        return Err(freed(r, first, n));
    }
    if let Some(k) = (first..first + n).find(|&k| r.pins.count(k) == 0) {
        return Err(Error::NotPinned { addr: r.addr_of(k) });
    }
    let Some(t) = r.pins.table.get() else {
        return Err(Error::NotPinned {
            addr: r.addr_of(first),
        });
    };
    let mut unpinned = 0u64;
    per_block(r, first, n, |b, pages| {
        for k in pages {
            unpinned += t.dec(b, k) as u64;
        }
    });
    acct.pinned_pages.fetch_sub(unpinned, O::AcqRel);
    Ok(())
}

/// A region is being freed (already out of the region map): its pins no
/// longer count.
pub(crate) fn release_region(_sh: &Shared, p: &PressureState, r: &RegionInner) {
    let _p = p.account.pin_lock.lock();
    if let Some(t) = r.pins.table.get() {
        p.account
            .pinned_pages
            .fetch_sub(t.pinned_pages(), O::AcqRel);
    }
}
