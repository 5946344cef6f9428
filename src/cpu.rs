//! The CPU side: one userfaultfd reader thread per `Svm`. It reads fault
//! messages and events in batches, handles `REMOVE`/`UNMAP` before faults of
//! the same batch, and resolves each fault window itself (no hand-off to
//! another thread: on this kind of machine a cross-CPU wake-up costs as much as
//! copying 100 KiB). It never calls `madvise`/`munmap` on managed memory, which
//! would block on its own event.
//!
//! Resolving a window (the block's granularity, default 2 MiB, aligned):
//! device-resident pages migrate back (`migrate_to_ram`), unpopulated pages are
//! zero-filled in runs (`UFFDIO_ZEROPAGE`, or `UFFDIO_COPY` from zeros for a
//! write fault so the write does not take a second, copy-on-write fault), and
//! the faulting page is woken explicitly in case it raced with a commit.

use std::sync::Arc;

use crate::addr::{BLOCK_PAGES, PAGE_SIZE};
use crate::migrate::{self, MigrateReport, Trigger};
use crate::space::RegionInner;
use crate::state::PageState;
use crate::svm::Shared;
use crate::sync::Ordering;
use crate::sys::uffd::{self, UffdMsg};
use crate::sys::{Advice, EventFd};
use crossbeam_channel::Receiver;

/// Zero-fills the unpopulated pages among `[lo, hi)` (caller holds the block lock).
pub(crate) fn populate(sh: &Shared, r: &RegionInner, lo: usize, hi: usize, write: bool) {
    let mut i = lo;
    let mut filled = 0u64;
    while i < hi {
        if r.states[i].load() != PageState::Unpopulated {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < hi && r.states[j].load() == PageState::Unpopulated {
            j += 1;
        }
        let mut k = i;
        while k < j {
            let len = ((j - k) * PAGE_SIZE) as u64;
            let dst = r.addr_of(k).0;
            let res = if write {
                sh.uffd
                    .copy(dst, sh.zeros.addr(), len.min(sh.zeros.len() as u64), false)
            } else {
                sh.uffd.zeropage(dst, len, false)
            };
            let done = match res {
                Ok(n) => n as usize / PAGE_SIZE,
                Err(p) if p.errno == libc::EAGAIN => p.done as usize / PAGE_SIZE,
                // EEXIST: a page is already there (it can only be zeros we
                // cannot see yet); count it populated and go on.
                Err(p) => p.done as usize / PAGE_SIZE + 1,
            };
            for s in &r.states[k..k + done] {
                let _ = s.populate();
            }
            filled += done as u64;
            k += done;
        }
        i = j;
    }
    sh.counters.add(&sh.counters.cpu_zero_fill_pages, filled);
}

/// Resolves a CPU fault on page `idx` of `r`.
pub(crate) fn resolve(sh: &Shared, r: &RegionInner, idx: usize, write: bool) {
    let b = idx / BLOCK_PAGES;
    let g = r.blocks[b].granularity.load(Ordering::Relaxed).min(9);
    let w = 1usize << g;
    let lo = idx & !(w - 1);
    let hi = (lo + w).min(r.npages);
    let guard = r.blocks[b].migrate.lock();
    let on_device: Vec<usize> = (lo..hi)
        .filter(|&i| matches!(r.states[i].load(), PageState::Device { .. }))
        .collect();
    let mut rep = MigrateReport::default();
    if let Some(plan) = migrate::isolate_to_system(sh, r, b, &on_device, true, None, &mut rep) {
        migrate::finish_to_system(sh, r, plan, Trigger::CpuFault, &mut rep);
    }
    populate(sh, r, lo, hi, write);
    drop(guard);
    sh.counters.add(&sh.counters.cpu_fault_windows, 1);
    // The fault may have raced with a commit that already woke everyone.
    let _ = sh.uffd.wake(r.addr_of(idx).0, PAGE_SIZE as u64);
}

/// `madvise(DONTNEED)` or `munmap` by the application: the data in
/// `[start, end)` is gone. Device pages are freed, staged pages dropped,
/// device PTEs cleared, states become `Unpopulated`.
fn discard(sh: &Shared, start: u64, end: u64) {
    for r in sh.regions_overlapping(start, end) {
        let lo = r.page_of(start.max(r.base()));
        let hi = r.page_of(end.min(r.base() + r.len()) + PAGE_SIZE as u64 - 1);
        let mut i = lo;
        while i < hi {
            let b = i / BLOCK_PAGES;
            let bhi = hi.min((b + 1) * BLOCK_PAGES);
            let _g = r.blocks[b].migrate.lock();
            r.invalidate(b, i..bhi);
            for k in i..bhi {
                if let Ok(PageState::Device { dev, page, staged }) = r.states[k].discard() {
                    sh.devices[dev.0 as usize].free(crate::device::DevRun {
                        start: page,
                        npages: 1,
                    });
                    if staged {
                        // madvise here would wait for this very thread to read its event.
                        let _ = sh.trim.send(Some((r.staging.clone(), k)));
                    }
                }
            }
            i = bhi;
        }
    }
}

/// The reader thread's body; returns when `shutdown` is signalled.
pub(crate) fn reader_loop(sh: Arc<Shared>, shutdown: Arc<EventFd>) {
    let mut msgs = [UffdMsg::default(); 64];
    loop {
        let n = match sh.uffd.read_msgs(&mut msgs) {
            Ok(n) => n,
            Err(e) => {
                eprintln!(
                    "svmem: reading the userfaultfd failed: {e}; CPU faults are no longer served"
                );
                return;
            }
        };
        if n == 0 {
            match sh.uffd.poll_with(std::os::fd::AsFd::as_fd(&*shutdown), -1) {
                Ok((_, true)) => return,
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("svmem: poll on the userfaultfd failed: {e}");
                    return;
                }
            }
        }
        let batch = &msgs[..n];
        for m in batch {
            if m.event == uffd::EVENT_REMOVE || m.event == uffd::EVENT_UNMAP {
                sh.counters.add(&sh.counters.uffd_events, 1);
                discard(&sh, m.arg0, m.arg1);
            }
        }
        let mut last: Option<(usize, usize, usize)> = None; // (region base, window lo, hi)
        for m in batch.iter().filter(|m| m.event == uffd::EVENT_PAGEFAULT) {
            sh.counters.add(&sh.counters.cpu_faults, 1);
            let addr = m.arg1 & !(PAGE_SIZE as u64 - 1);
            let write = m.arg0 & uffd::PAGEFAULT_FLAG_WRITE != 0;
            match sh.region_at(addr) {
                Some(r) => {
                    let idx = r.page_of(addr);
                    if let Some((base, lo, hi)) = last {
                        if base as u64 == r.base()
                            && (lo..hi).contains(&idx)
                            && r.states[idx].load() == PageState::System
                        {
                            let _ = sh.uffd.wake(addr, PAGE_SIZE as u64);
                            continue;
                        }
                    }
                    resolve(&sh, &r, idx, write);
                    let w = 1usize
                        << r.blocks[idx / BLOCK_PAGES]
                            .granularity
                            .load(Ordering::Relaxed)
                            .min(9);
                    last = Some((r.base() as usize, idx & !(w - 1), (idx & !(w - 1)) + w));
                }
                None => {
                    // A registered range we no longer track (freed concurrently):
                    // give the toucher zeros rather than a hang.
                    let _ = sh.uffd.zeropage(addr, PAGE_SIZE as u64, false);
                    let _ = sh.uffd.wake(addr, PAGE_SIZE as u64);
                }
            }
        }
    }
}

/// The trim thread: drops staging pages whose data was discarded. Its
/// `madvise` raises a REMOVE event on the staging range, which the reader reads
/// (releasing it) and ignores. Holds no lock while it waits.
pub(crate) fn trim_loop(rx: Receiver<Option<(Arc<crate::sys::Mapping>, usize)>>) {
    while let Ok(Some((staging, k))) = rx.recv() {
        if let Err(e) = staging.madvise(k * PAGE_SIZE, PAGE_SIZE, Advice::DontNeed) {
            eprintln!(
                "svmem: dropping staging page {k} at {:#x} failed: {e}",
                staging.addr()
            );
        }
    }
}
