//! The CPU side: one userfaultfd reader thread per `Svm`. It reads fault
//! messages and events in batches, handles `REMOVE` (the data is discarded),
//! `UNMAP` (the pages become holes) and `REMAP` (see `mm::remap`) before
//! faults of the same batch, and resolves each fault window itself (no hand-off to
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
use crate::mm::ctx::Shared;
use crate::mm::migrate::FAULT_AHEAD;
use crate::mm::migrate::{self, Trigger};
use crate::mm::poison::poison_cpu_view;
use crate::mm::populate::populate;
use crate::mm::space::RegionInner;
use crate::mm::staging;
use crate::mm::state::PageState;
use crate::observe::events::UnmapTrigger;
use crate::sync::Ordering;
use crate::sys::uffd::{self, UffdMsg};
use crate::sys::EventFd;

/// Resolves a CPU fault on page `idx` of `r`.
///
/// When the window starts where the previous one resolved in this region
/// ended (a sequential sweep), the next [`FAULT_AHEAD`] windows are migrated
/// back too, pipelined like any migration, after the faulting thread has been
/// woken: it consumes one window while this thread brings the next, instead of
/// paying a fault round trip per window.
pub(crate) fn resolve(sh: &Shared, r: &RegionInner, idx: usize, write: bool) {
    let (lo, hi) = r.fault_window(idx);
    let needs_work = r.window_needs_work(lo, hi);
    if r.states[idx].load() == PageState::Poisoned {
        // Its data is lost: make sure the poison marker is there (SIGBUS),
        // and let the thread take it.
        poison_cpu_view(sh, r, idx, 1);
        let _ = sh.uffd.wake(r.addr_of(idx).0, PAGE_SIZE as u64);
        return;
    }
    if !needs_work {
        // Resolved meanwhile (fetched ahead, or a racing commit): mostly a
        // stale message, the page is present and the zero-fill below fails
        // with EEXIST. A `System` page can also be a hole because the
        // application discarded it (madvise) after its REMOVE event was
        // handled: then zeros are its content, and only then may a zero page
        // go in. The state seen above is only a hint: without the block lock
        // a migration may isolate the page right after it (`System →
        // Migrating`, the page moved into staging, a hole now), a zero page
        // would fill that hole, and the commit (`Migrating → Device`) would
        // leave the CPU reading zeros for ever (the migration back cannot
        // move its page over ours). Every transition out of `System` holds
        // the block lock and a `System` page is present in the CPU view
        // except for that discard, so under the lock `System` means "ours to
        // zero-fill if it is a hole". Any other state (isolated, on a device,
        // discarded to `Unpopulated`): install nothing; the thread wakes,
        // faults again if it must, and that fault takes the full path.
        // (`RegionInner::fill_stale_hole`; `mm/loom_models.rs` checks it
        // against a migration, and shows the unlocked fill losing.)
        let at = r.addr_of(idx).0;
        r.fill_stale_hole(idx, || {
            let _ = sh.uffd.zeropage(at, PAGE_SIZE as u64, true);
        });
        let _ = sh.uffd.wake(at, PAGE_SIZE as u64);
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

/// `madvise(DONTNEED/FREE/REMOVE)` by the application: the data in
/// `[start, end)` is gone but the range stays mapped (and registered). Device
/// pages are freed, staged pages dropped, device PTEs cleared, states become
/// `Unpopulated` (a hole stays a hole): the next touch reads zeros, from the
/// CPU and from devices.
fn discard(sh: &Shared, start: u64, end: u64) {
    for r in sh.regions_overlapping(start, end) {
        let lo = r.page_of(start.max(r.base()));
        let hi = r.page_of(end.min(r.base() + r.len()) + PAGE_SIZE as u64 - 1);
        r.invalidate_range(lo..hi, UnmapTrigger::UnmapFromCpu, |_, pages| {
            let mut freed = crate::device::FreeBatch::new(&sh.devices);
            let mut staged_pages = Vec::new();
            let mut system_pages = Vec::new();
            for k in pages {
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
            for (s, n) in staging::runs(system_pages.into_iter()) {
                for (j, t) in staging::take_cpu_pages(sh, &r, s, n)
                    .into_iter()
                    .enumerate()
                {
                    if t == staging::Taken::Moved {
                        staged_pages.push(s + j);
                    }
                }
            }
            staged_pages.sort_unstable();
            for (s, n) in staging::runs(staged_pages.into_iter()) {
                sh.drop_staged(&r, s, n);
            }
        });
    }
}

/// `munmap` of `[start, end)` by the application (or an `mmap`/`mremap`
/// over it): the pages become holes (`PageState::Hole`). Device copies are
/// freed, staged pages dropped and device PTEs cleared, as for a discard,
/// but the CPU view is never touched again: the address is the program's
/// now, and it may already have mapped memory of its own there (its munmap
/// returned when this event was read). The managed mapping forgets the
/// range, so the region's free neither unmaps nor unregisters it.
fn unmap(sh: &Shared, start: u64, end: u64) {
    for r in sh.regions_overlapping(start, end) {
        let (s, e) = (start.max(r.base()), end.min(r.base() + r.len()));
        let lo = r.page_of(s);
        let hi = r.page_of(e + PAGE_SIZE as u64 - 1);
        r.managed
            .forget_range((s - r.base()) as usize, (e - s) as usize);
        r.invalidate_range(lo..hi, UnmapTrigger::UnmapFromCpu, |_, pages| {
            let mut freed = crate::device::FreeBatch::new(&sh.devices);
            let mut staged_pages = Vec::new();
            for k in pages {
                // Under the block lock no page is `Migrating`: a migration
                // racing this event committed or rolled back first.
                match r.states[k].unmap() {
                    Ok(PageState::Device { dev, page, staged }) => {
                        freed.push(dev, page);
                        if staged {
                            staged_pages.push(k);
                        }
                    }
                    Ok(_) => {}
                    Err(refused) => {
                        sh.counters.add(&sh.counters.protocol_errors, 1);
                        eprintln!(
                            "svmem: page-state protocol error: unmap of page {k} of region \
                             {:#x} refused, the page is {:?} (please report this)",
                            r.base(),
                            refused.actual
                        );
                    }
                }
            }
            for (s, n) in staging::runs(staged_pages.into_iter()) {
                sh.drop_staged(&r, s, n);
            }
        });
    }
}

/// The reader thread's body; returns when `shutdown` is signalled.
pub(crate) fn reader_loop(sh: Arc<Shared>, shutdown: Arc<EventFd>) {
    staging::mark_reader_thread();
    let mut msgs = [UffdMsg::default(); 64];
    loop {
        // Messages absorbed while an ioctl waited out an unread event come first.
        // Every read of the userfaultfd, here or by another thread into
        // `pending`, happens under the `pending` lock, and this thread reads
        // directly only when `pending` is empty: messages are handled in the
        // order the kernel sent them (a REMAP before a fault at its new
        // address).
        let mut n = 0;
        {
            let mut pending = sh.pending.lock();
            while n < msgs.len() {
                let Some(m) = pending.pop_front() else { break };
                msgs[n] = m;
                n += 1;
            }
            if n == 0 {
                sh.events.reading();
                n = match sh.uffd.read_msgs(&mut msgs) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!(
                            "svmem: reading the userfaultfd failed: {e}; CPU faults are no longer served"
                        );
                        sh.events.handled();
                        return;
                    }
                };
            }
        }
        if n == 0 {
            {
                // Under the `pending` lock: another thread that read
                // messages for us (`staging::copy_out_protected`) put them
                // there under it, so they are handled before the gate opens.
                let pending = sh.pending.lock();
                if !pending.is_empty() {
                    continue;
                }
                sh.events.handled();
            }
            use std::os::fd::AsFd;
            match sh.uffd.poll_with([shutdown.as_fd(), sh.kick.as_fd()], -1) {
                Ok((_, [true, _])) => return,
                Ok((_, [_, kicked])) => {
                    if kicked {
                        sh.kick.drain();
                    }
                    continue;
                }
                Err(e) => {
                    eprintln!("svmem: poll on the userfaultfd failed: {e}");
                    return;
                }
            }
        }
        let batch = &msgs[..n];
        for m in batch {
            if m.event == uffd::EVENT_REMOVE {
                sh.counters.add(&sh.counters.uffd_events, 1);
                let mut own = sh.own_removes.lock();
                if let Some(k) = own.iter().position(|x| *x == (m.arg0, m.arg1)) {
                    // svmem's own: a protected page it copied out.
                    own.swap_remove(k);
                    continue;
                }
                drop(own);
                discard(&sh, m.arg0, m.arg1);
            } else if m.event == uffd::EVENT_UNMAP {
                sh.counters.add(&sh.counters.uffd_events, 1);
                unmap(&sh, m.arg0, m.arg1);
            } else if m.event == uffd::EVENT_REMAP {
                sh.counters.add(&sh.counters.uffd_events, 1);
                crate::mm::remap::remap(&sh, m.arg0, m.arg1, m.arg2);
            }
        }
        // Every event read is handled, unless handling them read more (a
        // `Backoff` fills `pending`): those come first in the next round.
        {
            let pending = sh.pending.lock();
            if pending.is_empty() {
                sh.events.handled();
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
                    // A registered range no live region holds: one being freed
                    // (unregistered next, then the fault is an ordinary one),
                    // one being created (found once inserted), a staging
                    // area, or the tail of a managed mapping the program grew
                    // in place with mremap (released to the kernel here, see
                    // `mm::remap`). Install nothing: no block lock guards such
                    // a page, and by now the address may belong to a new
                    // region (or its staging area) whose page-state words
                    // would not know of a page put there. Wake; the thread
                    // faults again.
                    if sh.installing.load(Ordering::Acquire) == 0 && sh.region_at(addr).is_none() {
                        crate::mm::remap::release_stray(&sh, addr);
                    }
                    let _ = sh.uffd.wake(addr, PAGE_SIZE as u64);
                }
            }
        }
    }
}
