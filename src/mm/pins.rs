//! Per-region pin counts: the table the core reads to leave pinned pages
//! where they are (the pin and unpin operations live in the pressure layer).

use std::sync::atomic::{AtomicU16, Ordering as O};
use std::sync::OnceLock;

use crate::addr::BLOCK_PAGES;

/// A region's pins; the table exists once the region was first pinned.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    pub(crate) table: OnceLock<PinTable>,
}

#[derive(Debug)]
pub(crate) struct PinTable {
    /// Pin count per page.
    pub(crate) counts: Box<[AtomicU16]>,
    /// Pages with a non-zero count, per 2 MiB block.
    per_block: Box<[AtomicU16]>,
}

impl PinTable {
    pub(crate) fn new(npages: usize) -> PinTable {
        PinTable {
            counts: (0..npages).map(|_| AtomicU16::new(0)).collect(),
            per_block: (0..npages.div_ceil(BLOCK_PAGES))
                .map(|_| AtomicU16::new(0))
                .collect(),
        }
    }

    pub(crate) fn bytes_for(npages: usize) -> u64 {
        ((npages + npages.div_ceil(BLOCK_PAGES)) * std::mem::size_of::<AtomicU16>()) as u64
    }

    /// One more pin of page `i` (block `b`); the caller checked for overflow.
    /// Returns whether the page became pinned.
    pub(crate) fn inc(&self, b: usize, i: usize) -> bool {
        let first = self.counts[i].fetch_add(1, O::AcqRel) == 0;
        if first {
            self.per_block[b].fetch_add(1, O::AcqRel);
        }
        first
    }

    /// One pin less; the caller checked the page is pinned. Returns whether
    /// the page became unpinned.
    pub(crate) fn dec(&self, b: usize, i: usize) -> bool {
        let last = self.counts[i].fetch_sub(1, O::AcqRel) == 1;
        if last {
            self.per_block[b].fetch_sub(1, O::AcqRel);
        }
        last
    }

    pub(crate) fn pinned_pages(&self) -> u64 {
        self.per_block
            .iter()
            .map(|c| c.load(O::Acquire) as u64)
            .sum()
    }
}

impl Pins {
    /// Whether page `i` (in block `b`) is pinned. Stable while the caller
    /// holds the block's migration lock.
    pub fn pinned(&self, b: usize, i: usize) -> bool {
        self.table.get().is_some_and(|t| {
            t.per_block[b].load(O::Acquire) != 0 && t.counts[i].load(O::Acquire) != 0
        })
    }

    /// Bytes of the pin table (0 before the region's first pin).
    pub fn metadata_bytes(&self) -> u64 {
        self.table
            .get()
            .map_or(0, |t| PinTable::bytes_for(t.counts.len()))
    }

    /// The pin count of page `i`.
    pub fn count(&self, i: usize) -> u16 {
        self.table.get().map_or(0, |t| t.counts[i].load(O::Acquire))
    }

    /// Takes `other`'s pin counts (a region taking over another's pages; the
    /// caller holds every block lock of `other`, and nobody sees `self` yet).
    pub fn copy_from(&self, other: &Pins) {
        let Some(src) = other.table.get() else { return };
        let t = self.table.get_or_init(|| PinTable::new(src.counts.len()));
        for (i, c) in src.counts.iter().enumerate() {
            let n = c.load(O::Acquire);
            if n != 0 {
                t.counts[i].store(n, O::Release);
                t.per_block[i / BLOCK_PAGES].fetch_add(1, O::AcqRel);
            }
        }
    }
}
