//! Managed regions: the managed mapping (registered MISSING + WP with the main
//! userfaultfd), its staging mirror (registered with the staging userfaultfd),
//! the page-state table, one device page table per device, and per-2 MiB-block
//! locks.
//!
//! Invariants this module's data encodes (the protocol in `migrate` keeps them):
//! - staging page `i` is populated iff page `i` is `Device { staged: true }`;
//! - a valid PTE of device `d` for page `i` points where the page's data is now:
//!   the managed page itself (`System`) or `d`'s own memory (`Device{dev: d}`);
//! - PTEs are cleared, and in-flight device accesses drained through the block's
//!   `access` lock, before any transition changes where a page's data lives.

use std::sync::Arc;

use crate::addr::{DevPage, VirtAddr, BLOCK_PAGES, PAGE_SIZE};
use crate::mm::state::{PageState, StateCell};
use crate::observe::events::UnmapTrigger;
use crate::observe::notify::Notifier;
use crate::sync::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Mutex, Ordering, RwLock};
use crate::sys::Mapping;

/// Most pages one region may hold (a device PTE can name any of them): 1 TiB.
pub const MAX_REGION_PAGES: usize = 1 << 28;

/// Per 2 MiB block: the migration lock, the device-access guard, which devices
/// may hold valid PTEs here, and the fault granularity (log2 pages).
#[derive(Debug, Default)]
pub(crate) struct Block {
    /// Serialises every state transition of the block's pages.
    pub migrate: Mutex<()>,
    /// Device accesses hold it shared while they use a translation; an
    /// invalidation takes it exclusively once to drain them.
    pub access: RwLock<()>,
    /// Bit `d`: device `d` may have valid PTEs in this block.
    pub mapped: AtomicU8,
    pub granularity: AtomicU8,
    /// Bumped by every invalidation: the device-fault path re-checks it under
    /// the block lock before it writes PTEs, and lane TLB entries are tagged
    /// with it.
    pub seq: AtomicU32,
    /// Bit `d`: device `d` must stay mapped here (XNACK off with access
    /// granted, or the always-mapped flag): an invalidation evicts `d`'s
    /// queues until the restore worker maps the block again.
    pub keep_mapped: AtomicU8,
    /// When a device fault or a restore last mapped this block (ns on the
    /// notifier's clock); faults within 2 ms of it count as duplicates.
    pub mapped_at: AtomicU64,
    /// Bit `d`: device `d` used a translation here since the eviction clock
    /// last looked (see [`crate::pressure::evict`]).
    pub accessed: AtomicU8,
    /// Bit `d`: the block is on device `d`'s eviction ring.
    pub listed: AtomicU8,
    /// Bit `d`: device `d` evicted pages of this block, last at `evicted_at`
    /// (ns on the notifier's clock); faults soon after count as thrashing.
    pub evicted_from: AtomicU8,
    /// The last eviction's time (ns, low 62 bits) and the streak of
    /// evictions in a row (top 2 bits); see `pressure::evict`.
    pub evicted_at: AtomicU64,
}

/// A device PTE: one `AtomicU32` per managed page per device.
/// Bit 0 valid, bit 1 writable, bit 2 target is device memory, bits 3.. device page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pte {
    System { write: bool },
    Device { page: DevPage, write: bool },
}

impl Pte {
    pub fn encode(self) -> u32 {
        match self {
            Pte::System { write } => 1 | (write as u32) << 1,
            Pte::Device { page, write } => 1 | (write as u32) << 1 | 4 | page.0 << 3,
        }
    }
    pub fn decode(w: u32) -> Option<Pte> {
        if w & 1 == 0 {
            None
        } else if w & 4 == 0 {
            Some(Pte::System { write: w & 2 != 0 })
        } else {
            Some(Pte::Device {
                page: DevPage(w >> 3),
                write: w & 2 != 0,
            })
        }
    }
    /// Whether this translation is good for an access of `kind`.
    pub fn allows(self, kind: crate::addr::AccessKind) -> bool {
        kind == crate::addr::AccessKind::Read || self.writable()
    }
    pub fn writable(self) -> bool {
        matches!(
            self,
            Pte::System { write: true } | Pte::Device { write: true, .. }
        )
    }
}

#[derive(Debug)]
pub(crate) struct RegionInner {
    pub managed: Arc<Mapping>,
    pub staging: Arc<Mapping>,
    pub npages: usize,
    pub writable: std::sync::atomic::AtomicBool,
    pub states: Box<[StateCell]>,
    /// `ptes[d][i]`: device `d`'s translation of page `i`.
    pub ptes: Box<[Box<[AtomicU32]>]>,
    pub blocks: Box<[Block]>,
    /// End of the last CPU fault window resolved (sequential-sweep detection).
    pub cpu_sweep_end: AtomicUsize,
    /// Per device: end of the last device-fault window (sequential detection).
    pub dev_sweep_end: Box<[AtomicUsize]>,
    /// Queue control and event stream, told about every invalidation.
    pub notifier: Arc<Notifier>,
    /// Pin counts (see [`super::pins`]).
    pub pins: super::pins::Pins,
    /// Set by `free_region` before it takes any block lock: a migration
    /// that finds it set under a block lock must not give the block device
    /// pages (nobody would free them).
    pub freed: std::sync::atomic::AtomicBool,
    /// What plain CPU views of the region bar devices from (see [`CpuBar`]);
    /// read by every device path, changed only under `views`.
    pub bar: AtomicU8,
    /// Plain shared CPU views alive; taking the first or dropping the last
    /// changes `bar` under this lock.
    pub views: Mutex<u32>,
    /// The region that took over these pages when the program moved them
    /// with `mremap` (this one is all holes then); its `Region` follows.
    pub moved_to: std::sync::OnceLock<Arc<RegionInner>>,
}

/// What live plain CPU views (`Region::as_slice` / `as_mut_slice`) bar
/// devices from: Rust's `&[T]` promises the bytes do not change while it
/// lives, and `&mut [T]` that nobody else touches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CpuBar {
    None = 0,
    /// A shared view: devices may read, not write.
    Writes = 1,
    /// An exclusive view: devices may not touch the region.
    All = 2,
}

impl RegionInner {
    /// What devices are barred from now.
    pub fn cpu_bar(&self) -> CpuBar {
        match self.bar.load(Ordering::SeqCst) {
            0 => CpuBar::None,
            1 => CpuBar::Writes,
            _ => CpuBar::All,
        }
    }

    /// Whether a device access of `kind` is barred by a CPU view.
    pub fn barred(&self, kind: crate::addr::AccessKind) -> bool {
        match self.cpu_bar() {
            CpuBar::None => false,
            CpuBar::Writes => kind != crate::addr::AccessKind::Read,
            CpuBar::All => true,
        }
    }

    /// Raises the bar to `bar` and waits out every device access already in
    /// flight: device accesses check the bar under their block's `access`
    /// read guard, so once each block's write side has been taken once, no
    /// access that missed the bar is still running. Translations stay (a
    /// barred access fails, the others go on warm). The caller serialises
    /// bar changes (`views`, or `&mut Region`).
    pub fn raise_bar(&self, bar: CpuBar) {
        self.bar.store(bar as u8, Ordering::SeqCst);
        for blk in self.blocks.iter() {
            drop(blk.access.write());
        }
    }

    /// Lifts the bar (the last view went).
    pub fn lift_bar(&self) {
        self.bar.store(CpuBar::None as u8, Ordering::SeqCst);
    }

    pub fn new(
        managed: Mapping,
        staging: Mapping,
        ndevices: usize,
        granularity: u8,
        notifier: Arc<Notifier>,
    ) -> RegionInner {
        let npages = managed.len() / PAGE_SIZE;
        let nblocks = npages.div_ceil(BLOCK_PAGES);
        RegionInner {
            managed: Arc::new(managed),
            staging: Arc::new(staging),
            npages,
            writable: std::sync::atomic::AtomicBool::new(true),
            states: (0..npages).map(|_| StateCell::new()).collect(),
            ptes: (0..ndevices)
                .map(|_| (0..npages).map(|_| AtomicU32::new(0)).collect())
                .collect(),
            blocks: (0..nblocks)
                .map(|_| Block {
                    granularity: AtomicU8::new(granularity),
                    ..Default::default()
                })
                .collect(),
            cpu_sweep_end: AtomicUsize::new(usize::MAX),
            dev_sweep_end: (0..ndevices)
                .map(|_| AtomicUsize::new(usize::MAX))
                .collect(),
            notifier,
            pins: Default::default(),
            freed: Default::default(),
            bar: AtomicU8::new(CpuBar::None as u8),
            views: Default::default(),
            moved_to: Default::default(),
        }
    }

    /// A region for the same pages at the address `managed` now starts at
    /// (the program moved them with `mremap`): same states, staging, block
    /// settings and pins; no device translations. The caller holds every
    /// block lock of `self` and has invalidated every block.
    pub fn relocated(&self, managed: Mapping) -> RegionInner {
        let ndevices = self.ptes.len();
        let new = RegionInner {
            managed: Arc::new(managed),
            staging: self.staging.clone(),
            npages: self.npages,
            writable: std::sync::atomic::AtomicBool::new(self.is_writable()),
            states: self
                .states
                .iter()
                .map(|s| StateCell::with_state(s.load()))
                .collect(),
            ptes: (0..ndevices)
                .map(|_| (0..self.npages).map(|_| AtomicU32::new(0)).collect())
                .collect(),
            blocks: self
                .blocks
                .iter()
                .map(|b| Block {
                    granularity: AtomicU8::new(b.granularity.load(Ordering::Relaxed)),
                    keep_mapped: AtomicU8::new(b.keep_mapped.load(Ordering::Acquire)),
                    ..Default::default()
                })
                .collect(),
            cpu_sweep_end: AtomicUsize::new(usize::MAX),
            dev_sweep_end: (0..ndevices)
                .map(|_| AtomicUsize::new(usize::MAX))
                .collect(),
            notifier: self.notifier.clone(),
            pins: Default::default(),
            freed: Default::default(),
            bar: AtomicU8::new(self.bar.load(Ordering::Acquire)),
            views: Mutex::new(*self.views.lock()),
            moved_to: Default::default(),
        };
        new.pins.copy_from(&self.pins);
        new
    }

    /// The region these pages live in now: this one, or the one they moved
    /// to (following every `mremap`).
    pub fn current(self: &Arc<Self>) -> &Arc<RegionInner> {
        let mut r = self;
        while let Some(n) = r.moved_to.get() {
            r = n;
        }
        r
    }

    pub fn base(&self) -> u64 {
        self.managed.addr()
    }
    pub fn len(&self) -> u64 {
        self.managed.len() as u64
    }
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base()
            && addr
                .checked_add(len)
                .is_some_and(|e| e <= self.base() + self.len())
    }
    pub fn page_of(&self, addr: u64) -> usize {
        ((addr - self.base()) / PAGE_SIZE as u64) as usize
    }
    /// Where page `idx`'s data lives for placement decisions: its device, or
    /// system memory (unpopulated, migrating and poisoned pages included).
    pub fn location(&self, idx: usize) -> crate::addr::Location {
        match self.states[idx].load() {
            crate::mm::state::PageState::Device { dev, .. } => crate::addr::Location::Device(dev),
            _ => crate::addr::Location::System,
        }
    }

    pub fn addr_of(&self, idx: usize) -> VirtAddr {
        VirtAddr(self.base() + (idx * PAGE_SIZE) as u64)
    }
    pub fn staging_addr(&self, idx: usize) -> u64 {
        self.staging.addr() + (idx * PAGE_SIZE) as u64
    }
    pub fn block_pages(&self, b: usize) -> std::ops::Range<usize> {
        b * BLOCK_PAGES..((b + 1) * BLOCK_PAGES).min(self.npages)
    }
    /// Pages in the fault window of page `k` (its block's granularity).
    pub fn window_len(&self, k: usize) -> usize {
        1usize
            << self.blocks[k / BLOCK_PAGES]
                .granularity
                .load(Ordering::Relaxed)
                .min(9)
    }

    /// The granularity-aligned fault window `[lo, hi)` around page `k`.
    pub fn fault_window(&self, k: usize) -> (usize, usize) {
        let w = self.window_len(k);
        let lo = k & !(w - 1);
        (lo, (lo + w).min(self.npages))
    }

    /// Whether a CPU fault on the window `[lo, hi)` has work to do: a page
    /// unpopulated, on a device or migrating. Read without the block lock, so
    /// only a hint: `false` sends the fault to [`Self::fill_stale_hole`].
    pub fn window_needs_work(&self, lo: usize, hi: usize) -> bool {
        (lo..hi).any(|i| {
            matches!(
                self.states[i].load(),
                PageState::Unpopulated | PageState::Device { .. } | PageState::Migrating
            )
        })
    }

    /// A CPU fault whose window needed no work (a stale message, or a
    /// `System` page discarded to a hole after its REMOVE was handled): runs
    /// `zero_fill` (a one-page ZEROPAGE; EEXIST is the common outcome) under
    /// the block lock, and only if the page is `System` there (race 1: an
    /// unlocked fill could land in the hole a migration to a device just
    /// moved the page out of). Returns whether it ran.
    pub fn fill_stale_hole(&self, idx: usize, zero_fill: impl FnOnce()) -> bool {
        let _guard = self.blocks[idx / BLOCK_PAGES].migrate.lock();
        let system = self.states[idx].load() == PageState::System;
        if system {
            zero_fill();
        }
        system
    }

    pub fn is_writable(&self) -> bool {
        self.writable.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Clears every device's PTEs for `pages` (all inside block `b`), then waits
    /// for device accesses that may still use the old translations. Devices
    /// that must stay mapped here have their queues evicted first (so their
    /// lanes pause instead of taking a fatal fault). The caller holds
    /// `blocks[b].migrate`.
    pub fn invalidate(
        &self,
        b: usize,
        pages: impl Iterator<Item = usize> + Clone,
        why: UnmapTrigger,
    ) {
        let blk = &self.blocks[b];
        let mapped = blk.mapped.load(Ordering::Acquire);
        if mapped == 0 {
            blk.seq.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let keep = mapped & blk.keep_mapped.load(Ordering::Acquire);
        for d in 0..self.ptes.len() {
            if keep & (1 << d) != 0 {
                self.notifier.evict(d);
            }
        }
        for (d, table) in self.ptes.iter().enumerate() {
            if mapped & (1 << d) != 0 {
                let mut cleared = 0u64;
                let mut first = None;
                for i in pages.clone() {
                    if table[i].swap(0, Ordering::AcqRel) != 0 {
                        cleared += 1;
                        first.get_or_insert(i);
                    }
                }
                if let Some(f) = first {
                    self.notifier.unmapped(d, self.addr_of(f), cleared, why);
                }
            }
        }
        // After the PTEs are cleared: a lane that sees the new value cannot
        // cache an old translation under it.
        blk.seq.fetch_add(1, Ordering::AcqRel);
        drop(blk.access.write());
    }

    /// Walks the blocks of pages `pages`: for each, takes the block's
    /// migration lock, invalidates every device's translations of its pages
    /// in the range (`why` goes to the unmap events), then runs
    /// `f(block, pages of the range in it)` under the lock. The one place
    /// that changes a range's CPU view, attributes or protection reaches
    /// devices first (invariant 2).
    pub fn invalidate_range(
        &self,
        pages: std::ops::Range<usize>,
        why: UnmapTrigger,
        mut f: impl FnMut(usize, std::ops::Range<usize>),
    ) {
        let mut i = pages.start;
        while i < pages.end {
            let b = i / BLOCK_PAGES;
            let hi = pages.end.min((b + 1) * BLOCK_PAGES);
            let _g = self.blocks[b].migrate.lock();
            self.invalidate(b, i..hi, why);
            f(b, i..hi);
            i = hi;
        }
    }

    /// Host bytes of metadata this region keeps.
    pub fn metadata_bytes(&self) -> u64 {
        Self::metadata_bytes_for(self.npages, self.ptes.len()) + self.pins.metadata_bytes()
    }

    /// Host bytes of metadata a region of `npages` pages with `ndevices`
    /// devices keeps before its first pin: state words, device page tables,
    /// block records, per-device sweep positions, the region record.
    pub fn metadata_bytes_for(npages: usize, ndevices: usize) -> u64 {
        (npages * std::mem::size_of::<StateCell>()
            + ndevices * npages * std::mem::size_of::<AtomicU32>()
            + ndevices * std::mem::size_of::<Box<[AtomicU32]>>()
            + ndevices * std::mem::size_of::<AtomicUsize>()
            + npages.div_ceil(BLOCK_PAGES) * std::mem::size_of::<Block>()
            + std::mem::size_of::<Self>()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pte_round_trips() {
        for p in [
            Pte::System { write: false },
            Pte::System { write: true },
            Pte::Device {
                page: DevPage((1 << 25) - 1),
                write: true,
            },
        ] {
            assert_eq!(Pte::decode(p.encode()), Some(p));
        }
        assert_eq!(Pte::decode(0), None);
    }
}
