//! Staging: taking pages out of the CPU view into a region's staging mirror
//! and putting them back (`UFFDIO_MOVE`), the ranged-ioctl retry loop that
//! every such walk uses, and the bounded wait for unread uffd events.

use super::ctx::Shared;
use super::space::RegionInner;
use crate::addr::PAGE_SIZE;
use crate::sys::uffd::Stop;

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
            // What it reads is handled later: device accesses wait till then.
            self.sh.read_for_reader();
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
    // (page, mirror steps taken).
    let mut mirrored = (usize::MAX, 0);
    // Pages shared with a forked child are busy until unshared: once per call.
    let mut unshared = false;
    let reader = IS_READER.with(|c| c.get());
    let stale = std::cell::Cell::new(false);
    page_runs(
        sh,
        start..start + n,
        |i, len| {
            // Events read but not handled may have moved or unmapped these
            // addresses (the program's mremap/munmap returned): what is
            // there now may not be this region's page, and a hole may not
            // mean zeros. Leave the pages (busy) rather than wait: the
            // reader may need this block's lock to handle those events.
            // (The reader handles events in order: it need not check.)
            if !reader && (stale.get() || !settled_soon(sh)) {
                // Once unsettled, the rest of the run is left at once.
                stale.set(true);
                return Err(crate::sys::uffd::Partial {
                    done: 0,
                    errno: libc::ESTALE,
                });
            }
            sh.uffd
                .move_pages(r.staging_addr(i), r.addr_of(i).0, len, false, true)
        },
        |i, why| match why {
            Stop::Hole => {
                out[i - start] = Taken::Hole;
                Stuck::Skip
            }
            // A page refused for its mapping's flags: `UFFDIO_MOVE` moves
            // only between writable mappings with equal mlock state, and the
            // program may have changed either behind svmem's back (no event
            // says so). A read-only or `PROT_NONE` page (the kernel migrates
            // those too) is copied out instead ([`copy_out_protected`]),
            // leaving its protection alone; then the mlock flag is mirrored
            // onto staging; then svmem gives up.
            Stop::Invalid if mirrored.0 != i || mirrored.1 < 2 => {
                let step = if mirrored.0 == i { mirrored.1 } else { 0 };
                mirrored = (i, step + 1);
                let off = i * PAGE_SIZE;
                if step == 0 {
                    if copy_out_protected(sh, r, i) {
                        out[i - start] = Taken::Moved;
                        return Stuck::Skip;
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
    out
}

/// Whether every event read is handled, giving the reader up to about 2 ms
/// (a wake-up across CPUs costs tens of microseconds; the gate is odd for
/// every read, and after svmem's own REMOVE until the reader has seen it).
/// Bounded, because the reader may be waiting for a lock the caller holds.
fn settled_soon(sh: &Shared) -> bool {
    for k in 0..104 {
        if !sh.events.unsettled() {
            return true;
        }
        if k < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
    false
}

/// `UFFDIO_COPY` of one page (`page`) into `dst`, waiting out events not
/// read yet (the kernel refuses to fill pages while one is pending, as the
/// `UNMAP` after every `REMAP` is). False if the kernel refused.
pub(crate) fn copy_page(sh: &Shared, dst: u64, page: &[u8], dontwake: bool) -> bool {
    let mut backoff = Backoff::new(sh);
    loop {
        match sh
            .uffd
            .copy(dst, page.as_ptr() as u64, PAGE_SIZE as u64, dontwake)
        {
            Ok(_) => return true,
            Err(p) if p.stop() == Stop::WouldBlock && backoff.wait() => {}
            Err(_) => return false,
        }
    }
}

/// Takes page `i` of `r` out of the CPU view when its mapping is private
/// anonymous memory the program made read-only or `PROT_NONE`, which
/// `UFFDIO_MOVE` refuses: its bytes are read with the kernel's forced
/// access (as a debugger reads, whatever the protection), put into its
/// staging page with `UFFDIO_COPY`, and the managed page is dropped with
/// `MADV_DONTNEED`, whose REMOVE event the reader recognises as svmem's own
/// (`Shared::own_removes`) and ignores. The protection is never touched.
/// Not on the reader thread (its own event would block it). The caller
/// holds the block lock and has isolated the page. Returns whether the page
/// is in staging now.
fn copy_out_protected(sh: &Shared, r: &RegionInner, i: usize) -> bool {
    if IS_READER.with(|c| c.get()) || !settled_soon(sh) {
        return false;
    }
    let at = r.addr_of(i).0;
    match crate::sys::vma::query(at) {
        Ok(Some(v)) if !(v.shared || v.file || v.read && v.write) => {}
        _ => return false,
    }
    // Write-protect the page first (userfaultfd WP, which the program's
    // mprotect does not lift): a CPU write after the program makes the page
    // writable again waits in a fault until this migration is done, then
    // lands on the migrated data, instead of being zapped with the page.
    if sh.uffd.writeprotect(at, PAGE_SIZE as u64, true).is_err() {
        return false;
    }
    let undo = |staged: bool| {
        if staged {
            sh.drop_staged(r, i, 1);
        }
        let _ = sh.uffd.writeprotect(at, PAGE_SIZE as u64, false);
        false
    };
    let mut buf = vec![0u8; PAGE_SIZE];
    if r.managed.read_forced(i * PAGE_SIZE, &mut buf).is_err() {
        return undo(false);
    }
    if !copy_page(sh, r.staging_addr(i), &buf, true) {
        return undo(false);
    }
    // The COPY succeeded, so no event was unread then; none read and not
    // handled now (a relocation or unmap of this region would need this
    // block's lock) means the bytes read came from this region's page.
    if sh.events.unsettled() {
        return undo(true);
    }
    let range = (at, at + PAGE_SIZE as u64);
    sh.own_removes.lock().push(range);
    if drop_own_page(sh, r, i).is_err() {
        sh.own_removes.lock().retain(|x| *x != range);
        return undo(true);
    }
    sh.counters.add(&sh.counters.protected_pages_copied_out, 1);
    true
}

/// `MADV_DONTNEED` on managed page `i` of `r`, from a helper thread: the
/// call returns only once its REMOVE event is read, and the reader may be
/// waiting for the block lock this thread holds. So this thread reads the
/// messages itself meanwhile, into `pending` (held across the read, so the
/// reader opens the event gate only after handling them), and kicks the
/// reader when done.
fn drop_own_page(sh: &Shared, r: &RegionInner, i: usize) -> std::io::Result<()> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let res = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let res = r
                .managed
                .madvise(i * PAGE_SIZE, PAGE_SIZE, crate::sys::Advice::DontNeed);
            done.store(true, std::sync::atomic::Ordering::Release);
            res
        });
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            sh.read_for_reader();
            std::thread::yield_now();
        }
        h.join()
            .unwrap_or_else(|_| Err(std::io::Error::other("madvise thread panicked")))
    });
    let _ = sh.kick.signal();
    res
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
