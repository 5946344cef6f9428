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

use crate::addr::Location;
use crate::addr::{BLOCK_PAGES, PAGE_SIZE};
use crate::migrate::{self, Trigger};
use crate::space::RegionInner;
use crate::state::PageState;
use crate::svm::Shared;
use crate::sync::Ordering;
use crate::sys::uffd::{self, UffdMsg};
use crate::sys::EventFd;

/// Zero-fills the unpopulated pages among `[lo, hi)` (caller holds the block
/// lock). A write to a whole untouched block gets one huge page
/// ([`crate::huge`]).
pub(crate) fn populate(sh: &Shared, r: &RegionInner, lo: usize, hi: usize, write: bool) {
    let huge = if write {
        crate::huge::fill_block(sh, r, lo, hi)
    } else {
        0
    };
    let mut i = lo + huge;
    let mut filled = 0u64;
    let mut woken = vec![(lo, i)];
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
        let mut backoff = Backoff::new(sh);
        while k < j {
            let len = ((j - k) * PAGE_SIZE) as u64;
            let dst = r.addr_of(k).0;
            // DONTWAKE: waiters are woken below, once the counters are current.
            let res = if write {
                let len = len.min(sh.zeros.len() as u64);
                sh.uffd.copy(dst, sh.zeros.addr(), len, true)
            } else {
                sh.uffd.zeropage(dst, len, true)
            };
            let done = match res {
                Ok(n) => n as usize / PAGE_SIZE,
                Err(p) if p.errno == libc::EAGAIN => {
                    if !backoff.wait() {
                        // Leave the rest unpopulated: a later fault retries.
                        break;
                    }
                    p.done as usize / PAGE_SIZE
                }
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
        woken.push((i, k));
        i = j;
    }
    sh.counters.add(&sh.counters.cpu_zero_fill_pages, filled);
    for (a, b) in woken {
        if b > a {
            let _ = sh.uffd.wake(r.addr_of(a).0, ((b - a) * PAGE_SIZE) as u64);
        }
    }
}

/// Windows migrated back ahead of a sequential CPU sweep.
const FAULT_AHEAD: usize = 16;

/// Resolves a CPU fault on page `idx` of `r`.
///
/// When the window starts where the previous one resolved in this region
/// ended (a sequential sweep), the next [`FAULT_AHEAD`] windows are migrated
/// back too, pipelined like any migration, after the faulting thread has been
/// woken: it consumes one window while this thread brings the next, instead of
/// paying a fault round trip per window.
pub(crate) fn resolve(sh: &Shared, r: &RegionInner, idx: usize, write: bool) {
    let (lo, hi) = r.fault_window(idx);
    let needs_work = (lo..hi).any(|i| {
        matches!(
            r.states[i].load(),
            PageState::Unpopulated | PageState::Device { .. } | PageState::Migrating
        )
    });
    if r.states[idx].load() == PageState::Poisoned {
        // Its data is lost: make sure the poison marker is there (SIGBUS),
        // and let the thread take it.
        crate::failure::poison_cpu_view(sh, r, idx, 1);
        let _ = sh.uffd.wake(r.addr_of(idx).0, PAGE_SIZE as u64);
        return;
    }
    if !needs_work {
        // Resolved meanwhile (fetched ahead, or a racing commit): only wake.
        // A `System` page can also be a hole if the application discarded it
        // (madvise) under us: then zeros are its content. EEXIST (present) is
        // the common, spurious case.
        let _ = sh.uffd.zeropage(r.addr_of(idx).0, PAGE_SIZE as u64, true);
        let _ = sh.uffd.wake(r.addr_of(idx).0, PAGE_SIZE as u64);
        return;
    }
    sh.counters.add(&sh.counters.cpu_fault_windows, 1);
    // A lost device's pages are poisoned before anything waits on them.
    sh.check_lost();
    {
        let _guard = r.blocks[lo / BLOCK_PAGES].migrate.lock();
        migrate::pull_for_cpu_fault(sh, r, lo..hi);
        populate(sh, r, lo, hi, write);
    }
    // A device found lost meanwhile: poison what it held (no lock held here).
    sh.check_lost();
    // The fault may have raced with a commit that already woke everyone.
    let _ = sh.uffd.wake(r.addr_of(idx).0, PAGE_SIZE as u64);
    let sequential = r.cpu_sweep_end.swap(hi, Ordering::Relaxed) == lo;
    if sequential && hi < r.npages {
        let ahead = ((hi - lo) * FAULT_AHEAD).min(r.npages - hi);
        r.cpu_sweep_end.store(hi + ahead, Ordering::Relaxed);
        let rep = migrate::migrate_range(sh, r, hi, ahead, Location::System, Trigger::CpuFault);
        sh.counters
            .add(&sh.counters.cpu_fault_ahead_pages, rep.migrated);
    }
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
            r.invalidate(b, i..bhi, crate::events::UnmapTrigger::UnmapFromCpu);
            let mut freed = crate::device::FreeBatch::new(&sh.devices);
            let mut staged_pages = Vec::new();
            let mut system_pages = Vec::new();
            for k in i..bhi {
                match r.states[k].discard() {
                    Ok(PageState::Device { dev, page, staged }) => {
                        freed.push(dev, page);
                        if staged {
                            staged_pages.push(k);
                        }
                    }
                    Ok(PageState::System) => system_pages.push(k),
                    _ => {}
                }
            }
            // Take discarded pages out of the CPU view ourselves, event-free: a
            // migration that raced with this event may have put a page back
            // after the kernel's zap.
            for (s, n) in migrate::runs(system_pages.into_iter()) {
                for (j, t) in migrate::take_cpu_pages(sh, &r, s, n)
                    .into_iter()
                    .enumerate()
                {
                    if t == migrate::Taken::Moved {
                        staged_pages.push(s + j);
                    }
                }
            }
            staged_pages.sort_unstable();
            for (s, n) in migrate::runs(staged_pages.into_iter()) {
                sh.drop_staged(&r, s, n);
            }
            i = bhi;
        }
    }
}

/// The reader thread's body; returns when `shutdown` is signalled.
pub(crate) fn reader_loop(sh: Arc<Shared>, shutdown: Arc<EventFd>) {
    IS_READER.with(|r| r.set(true));
    let mut msgs = [UffdMsg::default(); 64];
    loop {
        // Messages absorbed while an ioctl waited out an unread event come first.
        let mut n = 0;
        {
            let mut pending = sh.pending.lock();
            while n < msgs.len() {
                let Some(m) = pending.pop_front() else { break };
                msgs[n] = m;
                n += 1;
            }
        }
        if n == 0 {
            n = match sh.uffd.read_msgs(&mut msgs) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!(
                        "svmem: reading the userfaultfd failed: {e}; CPU faults are no longer served"
                    );
                    return;
                }
            };
        }
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
        for m in batch.iter().filter(|m| m.event == uffd::EVENT_PAGEFAULT) {
            sh.counters.add(&sh.counters.cpu_faults, 1);
            let addr = m.arg1 & !(PAGE_SIZE as u64 - 1);
            let write = m.arg0 & uffd::PAGEFAULT_FLAG_WRITE != 0;
            match sh.region_at(addr) {
                // Faults on a window already resolved cost one cheap check.
                Some(r) => resolve(&sh, &r, r.page_of(addr), write),
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

thread_local! {
    static IS_READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What [`page_runs`] does with the page a ranged ioctl stopped at.
pub(crate) enum Stuck {
    /// Try the ioctl again from this page.
    Retry,
    /// Go on after this page.
    Skip,
}

/// Runs a ranged uffd ioctl `op(first_page, len)` over the pages of `pages`,
/// resuming after partial progress. A stop on an unread event (`EAGAIN`) is
/// waited out with a [`Backoff`]; any other stop, or `EAGAIN` once the
/// backoff gives up, goes to `stuck(page, errno)`.
pub(crate) fn page_runs(
    sh: &Shared,
    pages: std::ops::Range<usize>,
    mut op: impl FnMut(usize, u64) -> Result<u64, crate::sys::uffd::Partial>,
    mut stuck: impl FnMut(usize, i32) -> Stuck,
) {
    let (mut i, end) = (pages.start, pages.end);
    let mut backoff = Backoff::new(sh);
    while i < end {
        match op(i, ((end - i) * PAGE_SIZE) as u64) {
            Ok(_) => break,
            Err(p) => {
                i += p.done as usize / PAGE_SIZE;
                if i >= end {
                    break;
                }
                if p.errno == libc::EAGAIN && backoff.wait() {
                    continue;
                }
                if let Stuck::Skip = stuck(i, p.errno) {
                    i += 1;
                }
            }
        }
    }
}

/// Bounded waiting for an ioctl that returned `EAGAIN` because a
/// non-cooperative event (REMOVE, UNMAP) is not read yet. On the reader thread
/// it reads the pending messages into `Shared::pending` (which releases the
/// thread that raised the event; the reader handles them next); elsewhere it
/// yields, then sleeps, giving the reader time. Gives up after about 100 ms so
/// that no caller can wait forever on a reader that waits for the caller's
/// block lock.
pub(crate) struct Backoff<'a> {
    sh: &'a Shared,
    tries: u32,
}

impl<'a> Backoff<'a> {
    pub fn new(sh: &'a Shared) -> Self {
        Backoff { sh, tries: 0 }
    }

    /// Waits a little; false once the budget is spent.
    pub fn wait(&mut self) -> bool {
        self.tries += 1;
        if self.tries > 1100 {
            return false;
        }
        if IS_READER.with(|r| r.get()) {
            let mut buf = [UffdMsg::default(); 16];
            if let Ok(n) = self.sh.uffd.read_msgs(&mut buf) {
                self.sh.pending.lock().extend(buf[..n].iter().copied());
            }
        }
        if self.tries < 100 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        true
    }
}
