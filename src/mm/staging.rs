//! Staging: taking pages out of the CPU view into a region's staging mirror
//! and putting them back (`UFFDIO_MOVE`), the ranged-ioctl retry loop that
//! every such walk uses, and the bounded wait for unread uffd events.

use super::ctx::Shared;
use super::space::RegionInner;
use crate::addr::PAGE_SIZE;
use crate::sys::uffd::{Stop, UffdMsg};

thread_local! {
    static IS_READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as the uffd reader: a [`Backoff`] on it reads unread
/// events itself (nobody else would).
pub(crate) fn mark_reader_thread() {
    IS_READER.with(|r| r.set(true));
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
/// waited out with a [`Backoff`]. A run the kernel refuses as a whole
/// (`EINVAL`/`ENOENT`: it crosses a mapping boundary, as `madvise` or
/// `mlock` on part of a region leaves) is retried one page at a time, so
/// only a page the kernel refuses on its own reaches `stuck(page, why)`, as
/// does `EAGAIN` once the backoff gives up.
pub(crate) fn page_runs(
    sh: &Shared,
    pages: std::ops::Range<usize>,
    mut op: impl FnMut(usize, u64) -> Result<u64, crate::sys::uffd::Partial>,
    mut stuck: impl FnMut(usize, Stop) -> Stuck,
) {
    let (mut i, end) = (pages.start, pages.end);
    let mut backoff = Backoff::new(sh);
    // Most pages per ioctl: halved while the kernel refuses runs as a whole
    // (a mapping boundary inside), doubled again after each success.
    let mut limit = end - i;
    while i < end {
        let n = limit.min(end - i);
        match op(i, (n * PAGE_SIZE) as u64) {
            Ok(_) => {
                i += n;
                limit = limit.saturating_mul(2);
            }
            Err(p) => {
                let done = p.done as usize / PAGE_SIZE;
                i += done;
                if i >= end {
                    break;
                }
                let why = p.stop();
                if why == Stop::WouldBlock && backoff.wait() {
                    continue;
                }
                if matches!(why, Stop::Invalid | Stop::Hole) && n - done > 1 {
                    limit = (n - done) / 2;
                    continue;
                }
                if let Stuck::Skip = stuck(i, why) {
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
            // What it reads is handled later: device accesses wait till then.
            self.sh.events.reading();
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

/// Runs of consecutive values in ascending indices, as (first, count).
pub(crate) fn runs(idx: impl Iterator<Item = usize>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for i in idx {
        match out.last_mut() {
            Some((s, n)) if *s + *n == i => *n += 1,
            _ => out.push((i, 1)),
        }
    }
    out
}

/// The outcome of moving one page out of the CPU view.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Taken {
    Moved,
    /// No page was there (discarded under us): its content is zeros.
    Hole,
    Busy,
    /// The kernel refuses to move it (its mapping's protection or flags
    /// differ from staging's, e.g. `mprotect` behind svmem's back).
    Refused,
}

/// Moves `[start, start+n)` of the managed view into staging. At the first
/// busy page the rest of the run is unshared (pages copy-on-write shared
/// with a forked child are busy for `UFFDIO_MOVE`; see [`Shared::unshare`]);
/// busy pages are then retried up to 3 times.
pub(crate) fn take_cpu_pages(sh: &Shared, r: &RegionInner, start: usize, n: usize) -> Vec<Taken> {
    let mut out = vec![Taken::Moved; n];
    // (page, tries): busy retries belong to the page that is busy.
    let mut busy = (usize::MAX, 0);
    // (page, mirror steps taken) and the managed ranges made writable for
    // the move, with the protection to give them back.
    let mut mirrored = (usize::MAX, 0);
    let mut protected: Vec<(usize, usize, i32)> = Vec::new();
    // Pages shared with a forked child are busy until unshared: once per call.
    let mut unshared = false;
    page_runs(
        sh,
        start..start + n,
        |i, len| {
            sh.uffd
                .move_pages(r.staging_addr(i), r.addr_of(i).0, len, false, true)
        },
        |i, why| match why {
            Stop::Hole => {
                out[i - start] = Taken::Hole;
                Stuck::Skip
            }
            // A page refused for its mapping's flags: `UFFDIO_MOVE` moves
            // only between writable mappings with equal protection and equal
            // mlock state, and the program may have changed either behind
            // svmem's back (no event says so). A read-only or `PROT_NONE`
            // page (the kernel migrates those too) is made writable for the
            // one ioctl that moves it out (the rest of the run inside that
            // mapping with it), and its protection is restored right after:
            // it is a hole then, so no CPU access sees the difference. Then
            // the mlock flag is mirrored onto staging; then svmem gives up.
            Stop::Invalid if mirrored.0 != i || mirrored.1 < 2 => {
                let step = if mirrored.0 == i { mirrored.1 } else { 0 };
                mirrored = (i, step + 1);
                let off = i * PAGE_SIZE;
                if step == 0 {
                    let at = r.addr_of(i).0;
                    if let Ok(Some(v)) = crate::sys::vma::query(at) {
                        let writable = v.read && v.write;
                        if !writable && !v.shared && !v.file {
                            let last = r.page_of(v.end.min(r.base() + r.len()) - 1);
                            let len = ((start + n).min(last + 1) - i) * PAGE_SIZE;
                            let rw = libc::PROT_READ | libc::PROT_WRITE;
                            if r.managed.protect_range(off, len, rw).is_ok() {
                                protected.push((off, len, v.prot_bits()));
                            }
                        }
                    }
                    return Stuck::Retry;
                }
                match r.staging.set_locked(off, PAGE_SIZE, true) {
                    Ok(()) => Stuck::Retry,
                    Err(_) => {
                        out[i - start] = Taken::Refused;
                        Stuck::Skip
                    }
                }
            }
            Stop::Invalid => {
                // Still refused: undo the mlock mirror, the page stays.
                let _ = r.staging.set_locked(i * PAGE_SIZE, PAGE_SIZE, false);
                out[i - start] = Taken::Refused;
                Stuck::Skip
            }
            Stop::Busy if !unshared => {
                // Most likely copy-on-write shared after a fork: make the
                // rest of the run exclusive again (see `Shared::unshare`).
                unshared = true;
                sh.unshare(r, i, start + n - i);
                Stuck::Retry
            }
            Stop::Busy if busy.0 != i || busy.1 < 2 => {
                busy = (i, if busy.0 == i { busy.1 + 1 } else { 1 });
                std::thread::yield_now();
                Stuck::Retry
            }
            _ => {
                out[i - start] = Taken::Busy;
                Stuck::Skip
            }
        },
    );
    for (off, len, prot) in protected {
        // The program's protection, back on the (now empty) pages.
        let _ = r.managed.protect_range(off, len, prot);
    }
    out
}

/// Puts staged pages back into the CPU view (rollback, or the end of a
/// migration to system memory). Returns the pages that could not be put back.
/// Waiters are not woken: callers wake the pages once states and counters
/// are committed.
pub(crate) fn return_cpu_pages(sh: &Shared, r: &RegionInner, start: usize, n: usize) -> Vec<usize> {
    let mut failed = Vec::new();
    page_runs(
        sh,
        start..start + n,
        |i, len| {
            sh.uffd
                .move_pages(r.addr_of(i).0, r.staging_addr(i), len, false, true)
        },
        |i, _| {
            // MOVE refused this page: copy it instead, then drop the staged page.
            let src = r.staging_addr(i);
            match sh.uffd.copy(r.addr_of(i).0, src, PAGE_SIZE as u64, true) {
                Ok(_) => sh.drop_staged(r, i, 1),
                Err(_) => failed.push(i),
            }
            Stuck::Skip
        },
    );
    failed
}
