//! Eviction under device-memory pressure: when a migration (explicit,
//! prefetch, device fault or fault-ahead) needs device pages and the device
//! has none free, whole 2 MiB blocks are evicted synchronously to system
//! memory, chosen by use, and the allocation is retried.
//!
//! ## Data
//! - Per device, a CLOCK ring of the managed blocks that may hold pages on it
//!   (`Residency`): a queue whose front is the clock hand. Entries name the
//!   region weakly, so a freed region's entries die on their own (and
//!   `forget_region` drops them at once).
//! - Per block, `Block::listed` (bit `d`: the block is on device `d`'s ring)
//!   and `Block::accessed` (bit `d`: device `d` used a translation in this
//!   block since the hand last passed; set by kernel lanes, device reads and
//!   writes and the fault service, the way an MMU sets a page table's
//!   accessed bit).
//!
//! ## Who does what
//! - A migration that commits pages to device `d` puts the block on `d`'s
//!   ring if its `listed` bit was clear (under the block lock).
//! - The hand (`evict_one`) pops the front entry, with the ring lock held
//!   only for the pop and the push. It then *try*-locks the block (a block
//!   being migrated, or the caller's own block, is skipped: no lock order
//!   between blocks exists, so eviction never waits for one); under the
//!   lock: no page on `d` → the entry leaves the ring and `listed` clears;
//!   `accessed` set → clear it, second chance (back of the ring); an
//!   in-flight device access holds the block's access lock → skipped; else
//!   the block is the victim: its pages on `d` go back to system memory
//!   (into their staged system pages, the same pages they left: no second
//!   system allocation), trigger `Eviction`.
//! - `listed` only changes under the block lock, so a block holding pages on
//!   `d` is always on `d`'s ring.
//!
//! Pinned pages are in system memory by definition, so they are never on a
//! ring. Victims are never chosen by allocation order: a block whose
//! accessed bit is set survives one full turn of the hand.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::PressureState;
use crate::addr::{DeviceId, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::mm::ctx::Shared;
use crate::mm::migrate::{self, Trigger};
use crate::mm::space::RegionInner;
use crate::mm::state::PageState;
use crate::sync::Ordering;

struct Entry {
    region: Weak<RegionInner>,
    block: usize,
}

/// One device's CLOCK ring; see the module docs.
#[derive(Default)]
pub(crate) struct Residency {
    ring: Mutex<VecDeque<Entry>>,
}

impl Residency {
    /// Host bytes the ring uses.
    pub fn metadata_bytes(&self) -> u64 {
        (self.ring.lock().capacity() * std::mem::size_of::<Entry>() + std::mem::size_of::<Self>())
            as u64
    }

    /// Blocks on the ring now (live or not yet found dead).
    pub fn len(&self) -> usize {
        self.ring.lock().len()
    }
}

/// Marks device `d`'s use of block `b` (what an MMU's accessed bit records).
#[inline]
pub(crate) fn touch(r: &RegionInner, b: usize, d: DeviceId) {
    let bit = 1u8 << d.0;
    let a = &r.blocks[b].accessed;
    if a.load(Ordering::Relaxed) & bit == 0 {
        a.fetch_or(bit, Ordering::Relaxed);
    }
}

/// Records that block `b` of `r` now holds pages on `d`. The caller holds
/// the block lock.
pub(crate) fn note_resident(
    sh: &Shared,
    p: &PressureState,
    r: &RegionInner,
    b: usize,
    d: DeviceId,
) {
    let bit = 1u8 << d.0;
    let blk = &r.blocks[b];
    // New entries go to the back of the ring, the furthest from the hand:
    // that protects them until the device had a chance to use them, without
    // an accessed bit it did not earn.
    if blk.listed.load(Ordering::Acquire) & bit != 0 {
        return;
    }
    // A region being freed is no longer in the map: its pages are about to
    // be discarded, nothing to list.
    let Some(arc) = sh
        .region_at(r.base())
        .filter(|a| std::ptr::eq(Arc::as_ptr(a), r))
    else {
        return;
    };
    blk.listed.fetch_or(bit, Ordering::AcqRel);
    p.residency[d.0 as usize].ring.lock().push_back(Entry {
        region: Arc::downgrade(&arc),
        block: b,
    });
}

/// Drops a freed region's entries from every ring.
pub(crate) fn forget_region(_sh: &Shared, p: &PressureState, r: &RegionInner) {
    for res in p.residency.iter() {
        let mut ring = res.ring.lock();
        ring.retain(|e| e.region.strong_count() > 0 && !std::ptr::eq(e.region.as_ptr(), r));
        if ring.len() <= ring.capacity() / 4 {
            ring.shrink_to_fit(); // metadata returns to idle once regions go
        }
    }
}

/// Evicts one block from device `d`, by CLOCK. Returns the pages freed, or
/// `None` when a full turn (twice round the ring) found no block it could
/// evict.
pub(crate) fn evict_one(sh: &Shared, p: &PressureState, d: DeviceId) -> Option<u64> {
    let res = &p.residency[d.0 as usize];
    let turn = 2 * res.len() + 1;
    for _ in 0..turn {
        let e = res.ring.lock().pop_front()?;
        let Some(r) = e.region.upgrade() else {
            continue;
        };
        let (evicted, keep) = step(sh, p, &r, e.block, d);
        if keep {
            res.ring.lock().push_back(e);
        }
        if evicted.is_some() {
            return evicted;
        }
    }
    None
}

/// Looks at block `b` for the hand: returns the pages evicted (`None`: not a
/// victim: second chance, busy, or nothing left to evict) and whether the
/// entry stays on the ring.
fn step(
    sh: &Shared,
    _p: &PressureState,
    r: &RegionInner,
    b: usize,
    d: DeviceId,
) -> (Option<u64>, bool) {
    let bit = 1u8 << d.0;
    let blk = &r.blocks[b];
    let Some(guard) = blk.migrate.try_lock() else {
        return (None, true); // being migrated (or the caller's own block)
    };
    let holds = r
        .block_pages(b)
        .any(|i| matches!(r.states[i].load(), PageState::Device { dev, .. } if dev == d));
    if !holds {
        blk.listed.fetch_and(!bit, Ordering::AcqRel);
        return (None, false);
    }
    if blk.accessed.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
        return (None, true); // second chance
    }
    if blk.access.try_write().is_none() {
        return (None, true); // a device access is using it right now
    }
    let rep = migrate::pull_from(sh, r, r.block_pages(b), d, Trigger::Eviction);
    // Still under the block lock: a block left with no page on `d` leaves
    // the ring now, so its next migration in lists it again.
    let left = rep.migrated < rep.requested;
    if !left {
        blk.listed.fetch_and(!bit, Ordering::AcqRel);
    }
    drop(guard);
    if rep.migrated == 0 {
        return (None, true); // could not move (copy failed): stays listed
    }
    blk.evicted_from.fetch_or(bit, Ordering::AcqRel);
    blk.evicted_at.store(r.notifier.now_ns(), Ordering::Relaxed);
    let c = &sh.counters;
    c.add(&c.evictions, 1);
    c.add(&c.evicted_pages, rep.migrated);
    (Some(rep.migrated), left)
}

/// Makes room on device `d` for `need` more pages: evicts blocks until the
/// device has that many free, or nothing more can be evicted. Returns
/// whether it freed anything. Eviction only runs under real pressure: when
/// the device already has `need` pages free (an allocation that failed for
/// another reason), nothing is evicted.
pub(crate) fn make_room(sh: &Shared, p: &PressureState, d: DeviceId, need: u64) -> bool {
    let dev = &sh.devices[d.0 as usize];
    let mut freed = false;
    while dev.free_pages() < need {
        match evict_one(sh, p, d) {
            Some(_) => freed = true,
            None => break,
        }
    }
    freed
}

/// Admission check before a migration of pages `[first, first + n)` of `r`
/// to device `d` starts: the pages not already there must fit in the
/// device's memory, counting what eviction could free. A range that can
/// never fit is refused up front rather than thrashing against itself.
pub(crate) fn admit(
    sh: &Shared,
    r: &RegionInner,
    first: usize,
    n: usize,
    d: DeviceId,
) -> Result<()> {
    let dev = &sh.devices[d.0 as usize];
    let capacity = dev.capacity_pages();
    if (n as u64) <= capacity {
        return Ok(());
    }
    let here = (first..first + n)
        .filter(|&i| matches!(r.states[i].load(), PageState::Device { dev, .. } if dev == d))
        .count() as u64;
    let requested = n as u64 - here;
    if requested <= capacity {
        return Ok(());
    }
    let page = PAGE_SIZE as u64;
    Err(Error::DeviceMemory {
        dev: d,
        requested: requested * page,
        capacity: capacity * page,
        evictable: (capacity - dev.free_pages()) * page,
    })
}

/// Whether device `d` evicted block `b` recently enough that faulting it in
/// again counts as thrashing (policy rule 9).
pub(crate) fn thrashing(p: &PressureState, r: &RegionInner, b: usize, d: DeviceId) -> bool {
    let blk = &r.blocks[b];
    blk.evicted_from.load(Ordering::Acquire) & (1 << d.0) != 0
        && r.notifier
            .now_ns()
            .saturating_sub(blk.evicted_at.load(Ordering::Relaxed))
            < p.thrash_window_ns
}
