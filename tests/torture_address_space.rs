//! Issue 11: the address-space torture tests. Threads hammer one region with
//! CPU reads and writes, device reads and writes, kernels and migrations
//! while the program moves the whole region with `mremap` (back and forth
//! between two reserved areas), flips pages read-only and back with
//! `mprotect`, or forks children, behind svmem's back. Each child checks
//! its copy of every word against what was committed before the fork and
//! reports it to the parent, then scribbles over its copy and exits. Every value read is checked against a
//! shadow, as in `tests/torture.rs`; at the end every word must equal its
//! shadow from the CPU and from the device, and no protocol error may be
//! counted.
//!
//! Rules of the game (what a correct program may do): CPU threads touch the
//! region only through the address current when they took the address-space
//! lock (shared), which the mover and the protector take exclusively; device
//! operations and kernels use whatever address they last saw, so they race
//! moves and protection changes, and must then get a typed error (outside
//! managed memory, unmapped, protected), never wrong data or a signal.
//!
//! ```text
//! SVMEM_TORTURE_SECS=60 cargo test --release --test torture_address_space -- --nocapture
//! ```
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::{FirstError, Rng};
use svmem::{DeviceId, Error, FaultReason, Location, Svm, VirtAddr, PAGE_SIZE};

const D0: DeviceId = DeviceId(0);
const PAGES: usize = 32;
const LEN: usize = PAGES * PAGE_SIZE;
/// Words used per page: 0 the CPU writer's, 1 the device writer's, 2 the
/// kernel's, 3 constant.
const K: usize = 4;
const WORDS: usize = PAGES * K;

fn base(w: usize) -> u64 {
    (w as u64 + 1) << 32
}

fn off(w: usize) -> u64 {
    ((w / K) * PAGE_SIZE + (w % K) * 8) as u64
}

struct World<'a> {
    svm: &'a Svm,
    /// The region's address now (changed under `space` held exclusively).
    at: AtomicU64,
    /// CPU accesses hold it shared; moves and protection changes exclusively.
    space: RwLock<()>,
    /// Pages read-only now.
    ro: Vec<AtomicBool>,
    intent: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
    stop: AtomicBool,
    err: FirstError,
    moves: AtomicU64,
    protects: AtomicU64,
    forks: AtomicU64,
    typed_errors: AtomicU64,
}

impl World<'_> {
    fn fail(&self, who: &str, msg: String) {
        self.err.set(&self.stop, format!("{who}: {msg}"));
    }

    /// Checks a value of word `w` read between the two shadow loads.
    fn check(&self, who: &str, w: usize, lo: u64, got: u64, hi: u64) {
        if got < base(w) + lo || got > base(w) + hi {
            self.fail(
                who,
                format!(
                    "word {w} read {got:#x}, shadow says {:#x}..={:#x}",
                    base(w) + lo,
                    base(w) + hi
                ),
            );
        }
    }

    /// Whether `e` is an error a racing device operation may get.
    fn expected(&self, who: &str, e: &Error) -> bool {
        let ok = match e {
            Error::OutsideManaged { .. } | Error::Unmapped { .. } | Error::Protected { .. } => true,
            Error::DeviceFault(f) => matches!(
                f.reason,
                FaultReason::Unmanaged
                    | FaultReason::Unmapped
                    | FaultReason::Protection { .. }
                    | FaultReason::Aborted
            ),
            _ => false,
        };
        if ok {
            self.typed_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.fail(who, format!("unexpected error: {e}"));
        }
        ok
    }
}

fn cpu_thread(w: &World<'_>, seed: u64, writer: bool) {
    let mut rng = Rng::new(seed);
    while !w.stop.load(Ordering::Acquire) {
        let _g = w.space.read().unwrap();
        let at = w.at.load(Ordering::Acquire);
        let p = rng.below(PAGES);
        if writer {
            if w.ro[p].load(Ordering::Acquire) {
                continue;
            }
            let word = p * K;
            let n = w.committed[word].load(Ordering::Acquire) + 1;
            w.intent[word].store(n, Ordering::Release);
            // SAFETY: the region is mapped at `at` while `space` is held and
            // the page is writable; words are shared with devices only
            // through svmem's atomic accesses.
            unsafe { ((at + off(word)) as *mut u64).write_volatile(base(word) + n) };
            w.committed[word].store(n, Ordering::Release);
        } else {
            let word = p * K + rng.below(K);
            let lo = w.committed[word].load(Ordering::Acquire);
            // SAFETY: as above, a read.
            let got = unsafe { ((at + off(word)) as *const u64).read_volatile() };
            let hi = w.intent[word].load(Ordering::Acquire);
            w.check("cpu reader", word, lo, got, hi);
        }
    }
}

/// `writer`: this thread is the one writer of the device words (class 1);
/// any other device thread only reads.
fn device_thread(w: &World<'_>, seed: u64, writer: bool) {
    let mut rng = Rng::new(seed);
    let dev = w.svm.device(D0).unwrap();
    while !w.stop.load(Ordering::Acquire) {
        let at = w.at.load(Ordering::Acquire);
        let p = rng.below(PAGES);
        if writer && rng.below(2) == 0 {
            let word = p * K + 1;
            let n = w.intent[word]
                .load(Ordering::Acquire)
                .max(w.committed[word].load(Ordering::Acquire) + 1);
            w.intent[word].store(n, Ordering::Release);
            match dev.write(VirtAddr(at + off(word)), &(base(word) + n).to_ne_bytes()) {
                Ok(_) => w.committed[word].store(n, Ordering::Release),
                Err(e) => {
                    w.expected("device writer", &e);
                }
            }
        } else {
            let word = p * K + rng.below(K);
            let lo = w.committed[word].load(Ordering::Acquire);
            let mut b = [0u8; 8];
            match dev.read(VirtAddr(at + off(word)), &mut b) {
                Ok(_) => {
                    let hi = w.intent[word].load(Ordering::Acquire);
                    w.check("device reader", word, lo, u64::from_ne_bytes(b), hi);
                }
                Err(e) => {
                    w.expected("device reader", &e);
                }
            }
        }
    }
}

fn kernel_thread(w: &World<'_>, seed: u64) {
    let mut rng = Rng::new(seed);
    let dev = w.svm.device(D0).unwrap();
    while !w.stop.load(Ordering::Acquire) {
        let at = w.at.load(Ordering::Acquire);
        let first = rng.below(PAGES - 4);
        let r = dev.launch(4, |lane, item| {
            let p = first + item as usize;
            // Read every word of the page, then bump the kernel's own word.
            for k in 0..K {
                let word = p * K + k;
                let lo = w.committed[word].load(Ordering::Acquire);
                let got: u64 = lane.load(VirtAddr(at + off(word)))?;
                let hi = w.intent[word].load(Ordering::Acquire);
                w.check("kernel", word, lo, got, hi);
            }
            let word = p * K + 2;
            let n = w.intent[word]
                .load(Ordering::Acquire)
                .max(w.committed[word].load(Ordering::Acquire) + 1);
            w.intent[word].store(n, Ordering::Release);
            lane.store(VirtAddr(at + off(word)), base(word) + n)?;
            w.committed[word].store(n, Ordering::Release);
            Ok(())
        });
        match r.map(|r| r.check()) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => {
                w.expected("kernel", &e);
            }
        }
    }
}

fn migrator(w: &World<'_>, seed: u64) {
    let mut rng = Rng::new(seed);
    while !w.stop.load(Ordering::Acquire) {
        let at = w.at.load(Ordering::Acquire);
        let p = rng.below(PAGES);
        let n = 1 + rng.below(PAGES - p);
        let to = if rng.below(2) == 0 {
            Location::Device(D0)
        } else {
            Location::System
        };
        if let Err(e) = w.svm.migrate(
            VirtAddr(at + (p * PAGE_SIZE) as u64),
            (n * PAGE_SIZE) as u64,
            to,
        ) {
            w.expected("migrator", &e);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `mprotect` flips only.
    Protect,
    /// Flips and whole-region `mremap` moves.
    Move,
    /// Flips and forks.
    Fork,
}

/// What one forked child saw: `seen[w]` its copy of word `w`, `status`
/// 1 once it wrote them all. Lives in a `MAP_SHARED` page the child writes
/// without allocating (the parent has threads: the child may only do
/// async-signal-safe things).
#[repr(C)]
struct ChildReport {
    status: AtomicU64,
    seen: [AtomicU64; WORDS],
}

/// Forks a child that copies every word of the region at `at` into the
/// shared report, overwrites its own copy of the region, and exits; checks
/// what it saw against `before` (committed before the fork: the child must
/// see at least that) and the intents read after the fork returned (it may
/// not see more).
fn fork_and_check(w: &World<'_>, at: u64, report: &ChildReport) {
    let before: Vec<u64> = w
        .committed
        .iter()
        .map(|c| c.load(Ordering::Acquire))
        .collect();
    report.status.store(0, Ordering::Release);
    // SAFETY: the child runs only the loop below (volatile reads of the
    // region it inherited, atomic stores into the shared report, volatile
    // writes to its own copy) and `_exit`: async-signal-safe, no locks, no
    // allocation.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for word in 0..WORDS {
            // SAFETY: the child's own copy of the region, mapped at `at`.
            let v = unsafe { ((at + off(word)) as *const u64).read_volatile() };
            report.seen[word].store(v, Ordering::Relaxed);
        }
        report.status.store(1, Ordering::Release);
        for word in 0..WORDS {
            if w.ro[word / K].load(Ordering::Relaxed) {
                continue;
            }
            // SAFETY: as above; the child's copy is ordinary private memory,
            // and this page is writable (`ro` is changed only under `space`,
            // which the forking thread held).
            unsafe { ((at + off(word)) as *mut u64).write_volatile(!0) };
        }
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        w.fail(
            "forker",
            format!("fork: {}", std::io::Error::last_os_error()),
        );
        return;
    }
    let after: Vec<u64> = w.intent.iter().map(|c| c.load(Ordering::Acquire)).collect();
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        w.fail(
            "forker",
            format!("child {pid} ended with status {status:#x}"),
        );
        return;
    }
    if report.status.load(Ordering::Acquire) != 1 {
        w.fail("forker", "the child did not report".into());
        return;
    }
    for word in 0..WORDS {
        let got = report.seen[word].load(Ordering::Relaxed);
        let hi = after[word].max(before[word]);
        if got < base(word) + before[word] || got > base(word) + hi {
            w.fail(
                "forked child",
                format!(
                    "word {word} read {got:#x}, committed before the fork {:#x}, \
                     intended by its return {:#x}",
                    base(word) + before[word],
                    base(word) + hi
                ),
            );
        }
    }
    w.forks.fetch_add(1, Ordering::Relaxed);
}

/// Moves the region between two halves of a reserved area, or forks, and
/// flips pages read-only and back.
fn address_space_thread(w: &World<'_>, area: u64, seed: u64, mode: Mode) {
    let mut rng = Rng::new(seed);
    let mut slot = 0u64;
    let mut ro_page: Option<usize> = None;
    let mut moving = mode == Mode::Move;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh shared anonymous mapping for the children's reports.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<ChildReport>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(shared, libc::MAP_FAILED);
    // SAFETY: zero-filled memory is a valid `ChildReport` (atomics), the
    // mapping lives until the munmap at the end of this function, and it is
    // only accessed through atomics.
    let report = unsafe { &*(shared as *const ChildReport) };
    while !w.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_micros(500 + rng.below(1500) as u64));
        let _g = w.space.write().unwrap();
        let at = w.at.load(Ordering::Acquire);
        if mode == Mode::Fork && rng.below(4) == 0 {
            fork_and_check(w, at, report);
            continue;
        }
        if let Some(p) = ro_page.take() {
            // SAFETY: the test's own managed page, no reference into it.
            let rc =
                unsafe { libc::mprotect((at + (p * PAGE_SIZE) as u64) as *mut _, PAGE_SIZE, rw) };
            assert_eq!(rc, 0);
            w.ro[p].store(false, Ordering::Release);
        } else if rng.below(3) == 0 {
            let p = rng.below(PAGES);
            w.ro[p].store(true, Ordering::Release);
            // SAFETY: as above.
            let rc = unsafe {
                libc::mprotect(
                    (at + (p * PAGE_SIZE) as u64) as *mut _,
                    PAGE_SIZE,
                    libc::PROT_READ,
                )
            };
            assert_eq!(rc, 0);
            ro_page = Some(p);
            w.protects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !moving {
            continue;
        }
        // One mapping again (the protection is uniform): move it.
        slot ^= 1;
        let to = area + slot * LEN as u64;
        // SAFETY: moves the test's own region over its own placeholder.
        let p = unsafe {
            libc::mremap(
                at as *mut _,
                LEN,
                LEN,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        if p as u64 != to {
            w.fail(
                "mover",
                format!("mremap: {}", std::io::Error::last_os_error()),
            );
            break;
        }
        w.at.store(to, Ordering::Release);
        w.moves.fetch_add(1, Ordering::Relaxed);
        // Keep the vacated half reserved, so nothing else lands there (a
        // move onto it would unmap what did). If something (a new thread's
        // stack) took it first, moving stops here.
        // SAFETY: maps a placeholder only where nothing is mapped.
        let q = unsafe {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
            libc::mmap(at as *mut _, LEN, libc::PROT_NONE, flags, -1, 0)
        };
        if q as u64 != at {
            moving = false;
        }
    }
    // SAFETY: the reports' mapping, no child alive any more.
    unsafe { libc::munmap(shared, std::mem::size_of::<ChildReport>()) };
}

fn secs() -> u64 {
    std::env::var("SVMEM_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// Everything races `mprotect` flips behind svmem's back.
#[test]
fn torture_mprotect_behind_svmems_back() {
    torture(Mode::Protect);
}

/// Everything races `mprotect` flips and forks: each child sees every word
/// as committed before its fork (device-resident ones included), its writes
/// never reach the parent, and pages stay migratable after it exits.
#[test]
fn torture_fork_behind_svmems_back() {
    torture(Mode::Fork);
}

/// Everything races `mprotect` flips and whole-region `mremap` moves.
/// **Fails today** (known, open): a kernel lane reading a system page
/// through a translation of the old address, after the kernel moved the
/// region but before svmem read the REMAP event, can read whatever was
/// mapped there meanwhile (a new lane thread's stack: zeros). `DeviceHandle`
/// reads and writes no longer do (they probe the userfaultfd after each
/// copy; before that, this test also failed with `device reader: word 104
/// read 0x0`). Sequential moves are right (`tests/mremap.rs`). Run it with
/// `--ignored`.
#[test]
#[ignore = "known failure: device operations racing whole-region mremap (see doc)"]
fn torture_mremap_racing_device_operations() {
    torture(Mode::Move);
}

fn torture(mode: Mode) {
    let svm = Svm::builder()
        .emulated(common::emulated("gpu0", 8 << 20))
        .unwrap()
        .granularity(0)
        .build()
        .unwrap();
    let mut r = svm.alloc(LEN).unwrap();
    {
        let mut s = r.as_mut_slice::<u64>();
        for word in 0..WORDS {
            s[off(word) as usize / 8] = base(word);
        }
    }
    // SAFETY: a fresh reservation at a kernel-chosen address.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * LEN,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    let w = World {
        svm: &svm,
        at: AtomicU64::new(r.addr().0),
        space: RwLock::new(()),
        ro: (0..PAGES).map(|_| AtomicBool::new(false)).collect(),
        intent: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        committed: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        err: FirstError::default(),
        moves: AtomicU64::new(0),
        protects: AtomicU64::new(0),
        forks: AtomicU64::new(0),
        typed_errors: AtomicU64::new(0),
    };
    // The region starts elsewhere: its first move goes into the area, and
    // its old range is reserved like the halves.
    let until = Instant::now() + Duration::from_secs(secs());
    std::thread::scope(|s| {
        let w = &w;
        s.spawn(move || cpu_thread(w, 1, true));
        s.spawn(move || cpu_thread(w, 2, false));
        s.spawn(move || cpu_thread(w, 3, false));
        s.spawn(move || device_thread(w, 4, true));
        s.spawn(move || device_thread(w, 5, false));
        s.spawn(move || kernel_thread(w, 6));
        s.spawn(move || migrator(w, 7));
        s.spawn(move || address_space_thread(w, area, 8, mode));
        while Instant::now() < until && !w.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
        w.stop.store(true, Ordering::Release);
    });
    if let Some(e) = w.err.take() {
        panic!("{e}");
    }
    // Everything writable again, then the final check from both sides.
    let at = w.at.load(Ordering::Acquire);
    // SAFETY: the test's own region, no reference into it.
    let rc = unsafe { libc::mprotect(at as *mut _, LEN, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(rc, 0);
    assert_eq!(r.addr().0, at, "the Region follows the moves");
    let dev = svm.device(D0).unwrap();
    let s = r.as_slice::<u64>();
    for word in 0..WORDS {
        let want = base(word) + w.committed[word].load(Ordering::Acquire);
        assert_eq!(s[off(word) as usize / 8], want, "word {word} on the CPU");
    }
    drop(s);
    // Every page migrates at the end. Busy is transient (a fork in a test
    // running beside this one closes the migration gates for its duration):
    // retry, but not for ever.
    let mut rep = svm
        .migrate(r.addr(), LEN as u64, Location::Device(D0))
        .unwrap();
    for _ in 0..200 {
        if rep.already_there + rep.migrated == PAGES as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        let again = svm
            .migrate(r.addr(), LEN as u64, Location::Device(D0))
            .unwrap();
        rep = again;
    }
    assert_eq!(
        rep.already_there + rep.migrated,
        PAGES as u64,
        "every page migrates at the end: {rep:?}"
    );
    for word in 0..WORDS {
        let want = base(word) + w.committed[word].load(Ordering::Acquire);
        let mut b = [0u8; 8];
        dev.read(VirtAddr(at + off(word)), &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), want, "word {word} on the device");
    }
    let st = svm.stats();
    assert_eq!(st.protocol_errors, 0);
    assert_eq!(st.poisoned_pages, 0);
    let moves_done = w.moves.load(Ordering::Relaxed);
    let forks = w.forks.load(Ordering::Relaxed);
    eprintln!(
        "{moves_done} moves, {forks} forks, {} protection flips, {} typed errors from racing device operations",
        w.protects.load(Ordering::Relaxed),
        w.typed_errors.load(Ordering::Relaxed)
    );
    assert_eq!(st.remaps_followed, moves_done, "every move followed");
    assert!(mode != Mode::Move || moves_done > 0, "no move happened");
    assert!(mode != Mode::Fork || forks > 0, "no fork happened");
    drop(r);
    // SAFETY: the reserved area's placeholder halves are ours.
    unsafe { libc::munmap(area as *mut _, 2 * LEN) };
}
