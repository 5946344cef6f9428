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
//! ring.
//!
//! ## Policies ([`Eviction`], chosen by `SvmBuilder::eviction`)
//! The ring, its entries and the locking above are shared; the policies
//! differ only in which listed block the hand takes.
//! - [`Eviction::Clock`] (default): the use-aware CLOCK above. A block
//!   whose accessed bit is set survives one full turn of the hand.
//! - [`Eviction::Lru`]: least recently used first. Each eviction first
//!   samples every listed block's accessed bit (clearing it): a block used
//!   since the last eviction is stamped with a new tick; the ring is then
//!   ordered by stamp (oldest use at the hand, ties keeping ring order)
//!   and the hand takes the first block it can lock. Recency is known to
//!   the resolution of one eviction, as an MMU's accessed bits allow; the
//!   sample costs one pass over the ring per eviction.
//! - [`Eviction::AllocOrder`]: NVIDIA UVM's order: the block that entered
//!   device memory first (least recently migrated in) goes first, whatever
//!   its use. Accessed bits are ignored; a busy block is skipped and moves
//!   to the back.

use crate::sync::{AtomicU64, AtomicU8};
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

/// Which block eviction takes first; see the module docs of
/// `pressure::evict` (set with `SvmBuilder::eviction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Eviction {
    /// Use-aware CLOCK: a block used since the hand last passed gets a
    /// second chance (the default).
    #[default]
    Clock,
    /// Least recently used first (use sampled at each eviction).
    Lru,
    /// Allocation order, as NVIDIA UVM: the block least recently migrated
    /// in goes first, used or not.
    AllocOrder,
}

impl Eviction {
    /// Every policy, in the order of [`Eviction::NAMES`].
    pub const ALL: [Eviction; 3] = [Eviction::Clock, Eviction::Lru, Eviction::AllocOrder];
    /// Names [`Eviction::by_name`] knows (`alloc-order` and `fifo` are also
    /// accepted for `alloc`).
    pub const NAMES: [&'static str; 3] = ["clock", "lru", "alloc"];

    /// The policy's short name.
    pub fn name(self) -> &'static str {
        match self {
            Eviction::Clock => "clock",
            Eviction::Lru => "lru",
            Eviction::AllocOrder => "alloc",
        }
    }

    /// The policy called `name` (any case); an unknown name is an error that
    /// lists the known ones.
    pub fn by_name(name: &str) -> Result<Eviction> {
        match name.trim().to_ascii_lowercase().as_str() {
            "clock" => Ok(Eviction::Clock),
            "lru" => Ok(Eviction::Lru),
            "alloc" | "alloc-order" | "alloc_order" | "fifo" => Ok(Eviction::AllocOrder),
            _ => Err(Error::Config(format!(
                "unknown eviction policy `{name}`: use one of {}",
                Eviction::NAMES.join(", ")
            ))),
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> Eviction {
        match v {
            1 => Eviction::Lru,
            2 => Eviction::AllocOrder,
            _ => Eviction::Clock,
        }
    }
}

impl std::fmt::Display for Eviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Eviction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Eviction> {
        Eviction::by_name(s)
    }
}

/// The policy in force, one per `Svm` (held by [`PressureState`]).
#[derive(Debug, Default)]
pub(crate) struct EvictionCell(AtomicU8);

impl EvictionCell {
    pub fn get(&self) -> Eviction {
        Eviction::from_u8(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, e: Eviction) {
        self.0.store(e.to_u8(), Ordering::Relaxed);
    }
}

struct Entry {
    region: Weak<RegionInner>,
    block: usize,
    /// LRU: the eviction tick at which the block was last seen used (0:
    /// not since it was listed).
    stamp: u64,
}

/// One device's CLOCK ring; see the module docs.
#[derive(Default)]
pub(crate) struct Residency {
    ring: Mutex<VecDeque<Entry>>,
    /// LRU: evictions so far (the stamps' clock).
    tick: AtomicU64,
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
    let res = &p.residency[d.0 as usize];
    // LRU: migrating in is a use (the tick is the current one).
    let stamp = res.tick.load(Ordering::Relaxed);
    res.ring.lock().push_back(Entry {
        region: Arc::downgrade(&arc),
        block: b,
        stamp,
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

/// Evicts one block from device `d`, by the policy in force. Returns the
/// pages freed, or `None` when a full turn (twice round the ring) found no
/// block it could evict.
pub(crate) fn evict_one(sh: &Shared, p: &PressureState, d: DeviceId) -> Option<u64> {
    let res = &p.residency[d.0 as usize];
    let policy = p.eviction.get();
    if policy == Eviction::Lru {
        sample_use(res, d);
    }
    let turn = 2 * res.len() + 1;
    for _ in 0..turn {
        let e = res.ring.lock().pop_front()?;
        let Some(r) = e.region.upgrade() else {
            continue;
        };
        let (evicted, keep) = step(sh, p, &r, e.block, d, policy);
        if keep {
            res.ring.lock().push_back(e);
        }
        if evicted.is_some() {
            return evicted;
        }
    }
    None
}

/// LRU: stamps every listed block that device `d` used since the last
/// eviction with a new tick (consuming its accessed bit), then orders the
/// ring by stamp, least recently used at the hand. The ring lock is held
/// for the pass; the regions it upgrades are dropped after it, so a last
/// reference never frees a region under the ring lock.
fn sample_use(res: &Residency, d: DeviceId) {
    let bit = 1u8 << d.0;
    let tick = res.tick.fetch_add(1, Ordering::Relaxed) + 1;
    let mut alive = Vec::new();
    {
        let mut ring = res.ring.lock();
        for e in ring.iter_mut() {
            let Some(r) = e.region.upgrade() else {
                continue;
            };
            if r.blocks[e.block].accessed.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                e.stamp = tick;
            }
            alive.push(r);
        }
        // Stable: blocks of equal stamp keep their order (migrated in first,
        // evicted first).
        ring.make_contiguous().sort_by_key(|e| e.stamp);
    }
    drop(alive);
}

/// Looks at block `b` for the hand: returns the pages evicted (`None`: not a
/// victim: second chance, busy, or nothing left to evict) and whether the
/// entry stays on the ring.
fn step(
    sh: &Shared,
    p: &PressureState,
    r: &RegionInner,
    b: usize,
    d: DeviceId,
    policy: Eviction,
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
    // CLOCK: a used block gets a second chance. LRU consumed the bits when
    // it ordered the ring; allocation order ignores use.
    if policy == Eviction::Clock && blk.accessed.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
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
    note_evicted(p, r, b, bit);
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

/// `Block::evicted_at` holds the time of the last eviction (ns, low 62
/// bits) and, in its top two bits, how many evictions in a row came within
/// the thrash window of the one before (1 to 3).
const STREAK_SHIFT: u32 = 62;
const AT_MASK: u64 = (1 << STREAK_SHIFT) - 1;

/// The most evictions in a row a streak counts (`SvmBuilder::thrash_streak`
/// accepts 1 to this).
pub const MAX_THRASH_STREAK: u8 = 3;

/// Records an eviction of block `b` (bit `bit` of its device) now. The
/// caller holds the block lock.
fn note_evicted(p: &PressureState, r: &RegionInner, b: usize, bit: u8) {
    let blk = &r.blocks[b];
    let now = r.notifier.now_ns() & AT_MASK;
    let prev = blk.evicted_at.load(Ordering::Relaxed);
    let again = blk.evicted_from.load(Ordering::Acquire) & bit != 0
        && now.saturating_sub(prev & AT_MASK) < p.thrash_window_ns;
    let streak = if again {
        ((prev >> STREAK_SHIFT) + 1).min(MAX_THRASH_STREAK as u64)
    } else {
        1
    };
    blk.evicted_from.fetch_or(bit, Ordering::AcqRel);
    blk.evicted_at
        .store((streak << STREAK_SHIFT) | now, Ordering::Relaxed);
}

/// Whether device `d` evicted block `b` often and recently enough that
/// faulting it in again counts as thrashing (policy rule 9): the last
/// eviction within the thrash window, after a streak of at least
/// `PressureState::thrash_streak` evictions each within the window of the
/// one before (default 1: one recent eviction is enough).
///
/// A streak of 2 waits for a repeat, as NVIDIA UVM's detector does (its
/// default threshold is 3 within its lapse): a block evicted once under a
/// burst of pressure (a hot block the hand met just after clearing its
/// accessed bit) comes back to device memory instead of being served over
/// the link for the rest of the window. Which is better depends on the
/// workload (docs/suite.md has the figures), so it is a setting.
pub(crate) fn thrashing(p: &PressureState, r: &RegionInner, b: usize, d: DeviceId) -> bool {
    let blk = &r.blocks[b];
    let at = blk.evicted_at.load(Ordering::Relaxed);
    blk.evicted_from.load(Ordering::Acquire) & (1 << d.0) != 0
        && at >> STREAK_SHIFT >= p.thrash_streak.load(Ordering::Relaxed) as u64
        && r.notifier.now_ns().saturating_sub(at & AT_MASK) < p.thrash_window_ns
}
