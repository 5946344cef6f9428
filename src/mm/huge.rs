//! Huge pages for managed memory.
//!
//! Moving a 2 MiB block of 4 KiB pages with `UFFDIO_MOVE` costs 40–180 µs
//! here (one PTE and one TLB flush at a time); moving one PMD-mapped
//! transparent huge page costs about 1 µs. The kernel takes the PMD path by
//! itself when the source block is one huge page and the destination has no
//! page table yet, so svmem only has to get huge pages into managed memory in
//! the first place, and keep blocks whole after that:
//!
//! - managed and staging mappings start on a 2 MiB boundary, so block `b` of
//!   a region is one PMD in both (see `Svm::alloc`);
//! - the managed mapping is `MADV_HUGEPAGE`: a CPU fault on a block with no
//!   page table then takes the kernel's huge-page path, which hands the
//!   fault to userfaultfd without building a page table (the 4 KiB path
//!   builds one first, and a page table at the destination makes every later
//!   move of the block split). The price: a *write* fault there makes the
//!   kernel allocate and zero a huge page it drops again before the fault
//!   reaches svmem; and khugepaged may collapse a block whose 512 pages are
//!   all present (content-preserving, and good for later moves);
//! - the staging mirror stays `MADV_NOHUGEPAGE`: nothing but a move ever
//!   puts a huge page there;
//! - the first write to a whole, untouched block (a CPU write fault, or a
//!   device write mapping system memory) takes a huge page from a *slot*: an
//!   unregistered, `MADV_HUGEPAGE` 2 MiB mapping whose first touch makes the
//!   kernel allocate and zero one huge page. If it did (PAGEMAP_SCAN says the
//!   page is huge), one `UFFDIO_MOVE` puts it into the managed block; the
//!   slot is empty again and is reused.
//!
//! From then on, migrations of the whole block move one PMD each way
//! (managed → staging → managed), whichever path moves them. A block that was
//! ever handled in pieces (a fault window below 2 MiB, a partial migration, a
//! pinned page, `madvise(DONTNEED)` of part of it) keeps a page table in one
//! of the two mappings and moves page by page from then on: slower, never
//! wrong. Read faults keep using the shared zero page (no memory for data
//! nobody wrote).
//!
//! When the kernel has no huge page to give, the slot holds one 4 KiB page
//! and a page table; it is unmapped (it can never hold a huge page again) and
//! the block is filled page by page as before.

use parking_lot::Mutex;

use crate::addr::{BLOCK_PAGES, BLOCK_SIZE, PAGE_SIZE};
use crate::mm::ctx::Shared;
use crate::mm::space::RegionInner;
use crate::mm::state::PageState;
use crate::sys::{Advice, Mapping, Prot};

/// Slots kept for reuse: one per thread that fills blocks at the same time
/// (the uffd reader, fault services, device accesses) is plenty.
const KEEP_SLOTS: usize = 4;

/// Empty huge-page slots, and whether huge first touch is on.
#[derive(Debug)]
pub(crate) struct HugePool {
    enabled: bool,
    slots: Mutex<Vec<Mapping>>,
}

impl HugePool {
    pub fn new(enabled: bool) -> HugePool {
        HugePool {
            enabled,
            slots: Mutex::new(Vec::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn take(&self) -> Option<Mapping> {
        if let Some(m) = self.slots.lock().pop() {
            return Some(m);
        }
        let m = Mapping::anonymous_aligned(BLOCK_SIZE, BLOCK_SIZE, Prot::ReadWrite).ok()?;
        m.madvise(0, BLOCK_SIZE, Advice::HugePage).ok()?;
        Some(m)
    }

    fn give_back(&self, m: Mapping) {
        let mut slots = self.slots.lock();
        if slots.len() < KEEP_SLOTS {
            slots.push(m);
        }
    }
}

/// If pages `[lo, hi)` of `r` are one whole block, all unpopulated, of a
/// writable region, tries to populate the block with one zeroed huge page.
/// Returns how many pages from `lo` on are now populated (their states
/// updated): the whole block, 0 when no huge page was available, or a prefix
/// when the move stopped part way. Waiters are not woken. The caller holds
/// the block lock.
pub(crate) fn fill_block(sh: &Shared, r: &RegionInner, lo: usize, hi: usize) -> usize {
    let pool = &sh.huge;
    if !pool.enabled
        || lo % BLOCK_PAGES != 0
        || hi - lo != BLOCK_PAGES
        || !r.is_writable()
        || r.states[lo..hi]
            .iter()
            .any(|s| s.load() != PageState::Unpopulated)
    {
        return 0;
    }
    let c = &sh.counters;
    let Some(slot) = pool.take() else {
        return 0;
    };
    // Touching one page of an empty, huge-page-advised 2 MiB range makes the
    // kernel map a whole zeroed huge page there if it can get one.
    let huge = slot.madvise(0, PAGE_SIZE, Advice::PopulateWrite).is_ok()
        && crate::sys::huge_mapped(slot.addr()).unwrap_or(false);
    if !huge {
        // A 4 KiB page and a page table: this slot is spent.
        c.add(&c.huge_fill_fallbacks, 1);
        return 0;
    }
    let moved =
        match sh
            .uffd
            .move_pages(r.addr_of(lo).0, slot.addr(), BLOCK_SIZE as u64, false, true)
        {
            Ok(_) => {
                pool.give_back(slot);
                BLOCK_PAGES
            }
            // Stopped part way (the block was not empty after all, or the move
            // had to split): what moved stays; the rest of the slot is unmapped.
            Err(p) => p.done as usize / PAGE_SIZE,
        };
    for s in &r.states[lo..lo + moved] {
        let _ = s.populate();
    }
    if moved == BLOCK_PAGES {
        c.add(&c.huge_fills, 1);
    } else {
        c.add(&c.huge_fill_fallbacks, 1);
    }
    c.add(&c.cpu_zero_fill_pages, moved as u64);
    moved
}
