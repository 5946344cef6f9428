//! Issue 10: a torture test on few pages. Many threads hammer a 16-page
//! region (and an 8-page device-only one) with CPU reads and writes, device
//! reads and writes, device kernels, migrations both ways, evictions and
//! injected copy failures, at granularity 0 and 9, with huge pages on and
//! off, and check every value any of them reads against a shadow model.
//!
//! The default run takes about 6 s per configuration (four of them, one at a
//! time). A longer run, `SECS` seconds per configuration:
//!
//! ```text
//! SVMEM_TORTURE_SECS=120 cargo test --release --test torture -- --nocapture
//! ```
//!
//! **Shadow model.** Every word has exactly one writer (a CPU thread, a
//! device-write thread, or the lanes of one kernel thread's launches) or is
//! constant. Word `w` holds `base(w) + n`, `n` the writer's count, starting at
//! 0 (so no word is ever 0, and a word read from the wrong page or a zero
//! page is wrong). A writer raises `intent[w]` to `n + 1` before it writes and
//! `committed[w]` after its write returned. A reader loads `committed[w]`
//! before its read and `intent[w]` after it: the value must lie between them
//! (counts only grow, so this is exact); a writer reading its own word must
//! find exactly `committed[w]`. Every value read is checked, by every thread;
//! at the end every word must equal its shadow on the CPU and on a device.
//!
//! **Copy failures.** Injected on device 1 only, and device 1 only ever
//! holds pages of the *cold* region (and of the ballast), which no CPU thread
//! touches until the end, after the injection is cleared. A failed copy on a
//! CPU fault poisons the page by design (SIGBUS on the CPU access,
//! `pull_for_cpu_fault`), which no shadow could check; every other failed
//! copy (to a device, evictions, pulls for another device) must roll back
//! with the data intact, and the shadow checks that. The cold region is its
//! own region, so that its pages never share a fault window (2 MiB at
//! granularity 9) with a page the CPU faults. The test fails if any page is
//! poisoned.
//!
//! **Race phases.** Every other 100 ms only the CPU readers and the hot
//! migrator run, on the hot page alone: a stale fault message answered
//! while a migration isolates the page (issue 10, race 1) shows as a read
//! of 0. With the old reader code every configuration at granularity 0
//! failed this way within about 1-5 s.
//!
//! **Peer moves.** The cold region's migrations between device 0 and device
//! 1 go device to device (the peer path); with failures injected on device
//! 1's copy engine, a move to device 1 rolls back to device 0, data intact.
//!
//! **Evictions.** Both devices have 4 MiB; a 6 MiB ballast region (constant
//! content) keeps being migrated onto them, so migrations evict other blocks,
//! and device 0 is released now and then.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{watchdog, FirstError, Rng, SharedRegion};
use svmem::{
    CopyFailure, DeviceId, Injection, Location, Region, Svm, VirtAddr, BLOCK_SIZE, PAGE_SIZE,
};

const WPP: usize = PAGE_SIZE / 8;
/// Device 0: no injected failures; holds pages of every region.
const D0: DeviceId = DeviceId(0);
/// Device 1: copy failures injected; never holds a page of the hot region.
const D1: DeviceId = DeviceId(1);
const HOT_PAGES: usize = 16;
const COLD_PAGES: usize = 8;
const BALLAST_BLOCKS: usize = 3;
const DEVICE_BYTES: u64 = 2 * BLOCK_SIZE as u64;
/// CPU threads that only read (besides the two CPU writers).
const CPU_READERS: usize = 6;
/// Every other 100 ms, a race phase of this many ms: everything but the CPU
/// readers and the hot migrator sleeps, the readers read only the hot page
/// and the migrator only sends it to device 0. On a 2-CPU machine this is
/// what lets the fault thread and the migrator run side by side often
/// enough to hit issue 10's race 1 within a second or two.
const RACE_MS: u64 = 100;

/// Hot region word classes (`w % 8`): who writes the word.
const H_CPU0: usize = 0;
const H_CPU1: usize = 1;
const H_DEV0: usize = 2;
const H_KERN0: usize = 3;
const H_CLASSES: usize = 8; // 4..8: constant
/// Cold region word classes (`w % 4`).
const C_DEV1: usize = 0;
const C_KERN1: usize = 1;
const C_DEV0: usize = 2;
const C_CLASSES: usize = 4; // 3: constant

/// The value word `w` of the region tagged `tag` holds before its first
/// write: unique, never zero.
fn base(tag: u64, w: usize) -> u64 {
    (tag << 56) | ((w as u64 + 1) << 28)
}

/// One region and its shadow.
struct Shadowed<'s> {
    name: &'static str,
    tag: u64,
    region: SharedRegion<'s>,
    intent: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
}

impl<'s> Shadowed<'s> {
    fn new(name: &'static str, tag: u64, region: &'s mut Region<'_>) -> Shadowed<'s> {
        for (w, v) in region.as_mut_slice::<u64>().iter_mut().enumerate() {
            *v = base(tag, w);
        }
        let n = region.npages() * WPP;
        Shadowed {
            name,
            tag,
            region: SharedRegion::new(region),
            intent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            committed: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn base(&self, w: usize) -> u64 {
        base(self.tag, w)
    }
    fn words(&self) -> usize {
        self.intent.len()
    }
    fn addr(&self, w: usize) -> VirtAddr {
        self.region.at((w * 8) as u64)
    }
    /// `committed[w]`, loaded before a read of `w`.
    fn lo(&self, w: usize) -> u64 {
        self.committed[w].load(Ordering::SeqCst)
    }
    /// Checks value `got` of word `w`, read after `lo` was loaded; `None` if right.
    fn check(&self, w: usize, lo: u64, got: u64) -> Option<String> {
        let hi = self.intent[w].load(Ordering::SeqCst);
        let (b, lo_v, hi_v) = (self.base(w), self.base(w) + lo, self.base(w) + hi);
        (got < lo_v || got > hi_v).then(|| {
            format!(
                "{} word {w} (page {}) read {got:#x} = base {}, expected base + {lo}..={hi}",
                self.name,
                w / WPP,
                if got >= b {
                    format!("+ {}", got - b)
                } else {
                    format!("- {}", b - got)
                }
            )
        })
    }
    /// Checks a value the word's own writer read: exactly its count.
    fn check_own(&self, w: usize, got: u64) -> Option<String> {
        let want = self.lo(w);
        (got != self.base(w) + want).then(|| {
            format!(
                "{} word {w} (page {}) read {got:#x} by its writer, expected base + {want} = {:#x}",
                self.name,
                w / WPP,
                self.base(w) + want
            )
        })
    }
    /// Word `k` (of `WPP / classes`) of `class` in `page`.
    fn word(page: usize, class: usize, classes: usize, k: usize) -> usize {
        page * WPP + k * classes + class
    }
}

/// What the threads share.
struct World<'s> {
    svm: &'s Svm,
    hot: Shadowed<'s>,
    cold: Shadowed<'s>,
    ballast: SharedRegion<'s>,
    hot_page: AtomicUsize,
    /// The race phase: only the CPU readers and the hot migrator run.
    quiet: AtomicBool,
    stop: AtomicBool,
    err: FirstError,
    progress: AtomicU64,
    t0: Instant,
    /// Operations by kind, for the summary.
    ops: [AtomicU64; 10],
}

const OP_NAMES: [&str; 10] = [
    "cpu reads",
    "cpu writes",
    "dev reads",
    "dev writes",
    "launches",
    "hot migrations",
    "cold migrations",
    "ballast migrations",
    "releases",
    "injections",
];

impl World<'_> {
    fn fail(&self, who: &str, msg: String) {
        let msg = format!("{who} after {:?}: {msg}", self.t0.elapsed());
        self.err.set(&self.stop, msg);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn count(&self, op: usize, n: u64) {
        self.ops[op].fetch_add(n, Ordering::Relaxed);
        self.progress.fetch_add(n, Ordering::Relaxed);
    }
    /// Sleeps while a race phase runs (see [`RACE_MS`]).
    fn pause_while_quiet(&self) {
        while self.quiet.load(Ordering::Relaxed) && !self.stopped() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    /// A page of the hot region: the hot one 7 times in 8.
    fn pick_hot(&self, rng: &mut Rng) -> usize {
        if !self.quiet.load(Ordering::Relaxed) && rng.chance(8) {
            rng.below(HOT_PAGES)
        } else {
            self.hot_page.load(Ordering::Relaxed)
        }
    }
    /// Where the page holding `a` lives, for failure messages.
    fn whereis(&self, a: VirtAddr) -> String {
        format!("{:?}", self.svm.location(a))
    }
}

/// CPU thread `t`: writes its own hot words (class `H_CPU0 + t`), checking
/// each against its count first, and reads any hot word.
fn cpu_thread(w: &World<'_>, t: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let words = w.hot.region.as_atomic_u64();
    let mut n = 0u64;
    while !w.stopped() {
        w.pause_while_quiet();
        n += 1;
        if n % 128 == 0 {
            std::thread::yield_now();
        }
        let page = w.pick_hot(&mut rng);
        if rng.chance(3) {
            let i = Shadowed::word(
                page,
                [H_CPU0, H_CPU1][t],
                H_CLASSES,
                rng.below(WPP / H_CLASSES),
            );
            let got = words[i].load(Ordering::SeqCst);
            if let Some(m) = w.hot.check_own(i, got) {
                return w.fail(&format!("cpu writer {t}"), m + &w.whereis(w.hot.addr(i)));
            }
            let c = w.hot.intent[i].fetch_add(1, Ordering::SeqCst) + 1;
            words[i].store(w.hot.base(i) + c, Ordering::SeqCst);
            w.hot.committed[i].store(c, Ordering::SeqCst);
            w.count(1, 1);
        } else {
            let i = page * WPP + rng.below(WPP);
            let lo = w.hot.lo(i);
            let got = words[i].load(Ordering::SeqCst);
            if let Some(m) = w.hot.check(i, lo, got) {
                let at = w.whereis(w.hot.addr(i));
                return w.fail(&format!("cpu reader {t}"), format!("{m}; location {at}"));
            }
            w.count(0, 1);
        }
    }
}

/// A CPU thread that only reads hot words (the readers race 1 is about).
fn cpu_reader(w: &World<'_>, t: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let words = w.hot.region.as_atomic_u64();
    let mut n = 0u64;
    while !w.stopped() {
        n += 1;
        if n % 256 == 0 {
            std::thread::yield_now();
            w.count(0, 256);
        }
        let i = w.pick_hot(&mut rng) * WPP + rng.below(WPP);
        let lo = w.hot.lo(i);
        let got = words[i].load(Ordering::SeqCst);
        if let Some(m) = w.hot.check(i, lo, got) {
            let at = w.whereis(w.hot.addr(i));
            return w.fail(&format!("cpu reader {t}"), format!("{m}; location {at}"));
        }
    }
}

/// Device `d` writes its own words of `s` (class `class` of `classes`) with
/// `DeviceHandle::write` after reading them with `read`, and reads spans of
/// any words.
fn device_thread(w: &World<'_>, d: DeviceId, mine: &[(&Shadowed<'_>, usize, usize)], seed: u64) {
    let mut rng = Rng::new(seed);
    let dev = w.svm.device(d).unwrap();
    let who = format!("device {} thread", d.0);
    let mut buf = vec![0u8; PAGE_SIZE];
    while !w.stopped() {
        w.pause_while_quiet();
        let (s, class, classes) = mine[rng.below(mine.len())];
        let page = if std::ptr::eq(s, &w.hot) {
            w.pick_hot(&mut rng)
        } else {
            rng.below(s.words() / WPP)
        };
        if rng.chance(2) {
            let i = Shadowed::word(page, class, classes, rng.below(WPP / classes));
            let mut b = [0u8; 8];
            if let Err(e) = dev.read(s.addr(i), &mut b) {
                return w.fail(&who, format!("read of own {} word {i}: {e}", s.name));
            }
            if let Some(m) = s.check_own(i, u64::from_ne_bytes(b)) {
                return w.fail(&who, m);
            }
            let c = s.intent[i].fetch_add(1, Ordering::SeqCst) + 1;
            let v = s.base(i) + c;
            if let Err(e) = dev.write(s.addr(i), &v.to_ne_bytes()) {
                return w.fail(&who, format!("write of {} word {i}: {e}", s.name));
            }
            s.committed[i].store(c, Ordering::SeqCst);
            w.count(3, 1);
        } else {
            // A span of 1..=512 words inside the page.
            let n = 1 + rng.below(WPP);
            let first = page * WPP + rng.below(WPP - n + 1);
            let lo: Vec<u64> = (first..first + n).map(|i| s.lo(i)).collect();
            if let Err(e) = dev.read(s.addr(first), &mut buf[..n * 8]) {
                return w.fail(&who, format!("read of {} words {first}+{n}: {e}", s.name));
            }
            for (k, c) in buf[..n * 8].chunks_exact(8).enumerate() {
                let got = u64::from_ne_bytes(c.try_into().unwrap());
                if let Some(m) = s.check(first + k, lo[k], got) {
                    return w.fail(&who, m);
                }
            }
            w.count(2, 1);
        }
    }
}

/// Launches kernels on device `d` over region `s`: each launch counts up 32
/// distinct words of class `class` (load and check, then `atomic_add_u64`
/// or `store`), and each work item also reads one word of any class and
/// checks it.
fn kernel_thread(
    w: &World<'_>,
    d: DeviceId,
    s: &Shadowed<'_>,
    class: usize,
    classes: usize,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let dev = w.svm.device(d).unwrap();
    let who = format!("kernel thread on device {} ({})", d.0, s.name);
    let pages = s.words() / WPP;
    let per_page = WPP / classes;
    while !w.stopped() {
        w.pause_while_quiet();
        // 32 distinct own words, on up to 4 pages (hot-biased for the hot region).
        let mut own: Vec<usize> = Vec::with_capacity(32);
        while own.len() < 32 {
            let page = if std::ptr::eq(s, &w.hot) {
                w.pick_hot(&mut rng)
            } else {
                rng.below(pages)
            };
            let i = Shadowed::word(page, class, classes, rng.below(per_page));
            if !own.contains(&i) {
                own.push(i);
            }
        }
        let other: Vec<usize> = (0..own.len()).map(|_| rng.below(s.words())).collect();
        let expect: Vec<u64> = own.iter().map(|&i| s.lo(i)).collect();
        for &i in &own {
            s.intent[i].fetch_add(1, Ordering::SeqCst);
        }
        let rep = dev.launch(own.len() as u64, |lane, item| {
            let k = item as usize;
            let (i, want) = (own[k], s.base(own[k]) + expect[k]);
            let got: u64 = lane.load(s.addr(i))?;
            if got != want {
                w.fail(
                    &who,
                    format!(
                        "lane load of own {} word {i}: {got:#x}, expected {want:#x}",
                        s.name
                    ),
                );
            }
            if k % 2 == 0 {
                let old = lane.atomic_add_u64(s.addr(i), 1)?;
                if old != want {
                    w.fail(
                        &who,
                        format!(
                            "atomic_add on {} word {i} found {old:#x}, expected {want:#x}",
                            s.name
                        ),
                    );
                }
            } else {
                lane.store(s.addr(i), want + 1)?;
            }
            let j = other[k];
            let lo = s.lo(j);
            let got: u64 = lane.load(s.addr(j))?;
            if let Some(m) = s.check(j, lo, got) {
                w.fail(&who, format!("lane load: {m}"));
            }
            Ok(())
        });
        match rep.and_then(|r| r.check()) {
            Ok(_) => {
                for (k, &i) in own.iter().enumerate() {
                    s.committed[i].store(expect[k] + 1, Ordering::SeqCst);
                }
            }
            Err(e) => return w.fail(&who, format!("launch: {e}")),
        }
        w.count(4, 1);
    }
}

/// Migrates the hot page of the hot region to device 0 over and over (the
/// CPU threads' faults bring it back, their fault messages racing the next
/// migration: issue 10's race 1), the whole region both ways now and then,
/// and releases device 0 now and then.
fn hot_migrator(w: &World<'_>, seed: u64) {
    let mut rng = Rng::new(seed);
    let r = &w.hot.region;
    let mut round = 0u64;
    while !w.stopped() {
        round += 1;
        if round % 64 == 0 {
            w.hot_page.store(rng.below(HOT_PAGES), Ordering::Relaxed);
        }
        let quiet = w.quiet.load(Ordering::Relaxed);
        let res = if round % 97 == 0 && !quiet {
            w.count(8, 1);
            w.svm.device(D0).unwrap().release();
            Ok(Default::default())
        } else if round % 16 == 0 && !quiet {
            let to = if rng.chance(2) {
                Location::System
            } else {
                Location::Device(D0)
            };
            w.svm.migrate(r.addr(), r.len(), to)
        } else {
            let p = w.hot_page.load(Ordering::Relaxed);
            w.svm.migrate(
                r.at((p * PAGE_SIZE) as u64),
                PAGE_SIZE as u64,
                Location::Device(D0),
            )
        };
        if let Err(e) = res {
            return w.fail("hot migrator", format!("migrate: {e}"));
        }
        w.count(5, 1);
    }
}

/// Migrates pages of the cold region anywhere, and the ballast onto the
/// devices (evicting whatever they hold).
fn cold_migrator(w: &World<'_>, seed: u64) {
    let mut rng = Rng::new(seed);
    let r = &w.cold.region;
    let locs = [Location::System, Location::Device(D0), Location::Device(D1)];
    while !w.stopped() {
        w.pause_while_quiet();
        let to = locs[rng.below(3)];
        let res = if rng.chance(4) {
            w.svm.migrate(r.addr(), r.len(), to)
        } else {
            let p = rng.below(COLD_PAGES);
            let n = 1 + rng.below(COLD_PAGES - p);
            w.svm
                .migrate(r.at((p * PAGE_SIZE) as u64), (n * PAGE_SIZE) as u64, to)
        };
        if let Err(e) = res {
            return w.fail("cold migrator", format!("migrate: {e}"));
        }
        w.count(6, 1);
        if rng.chance(4) {
            let b = w
                .ballast
                .at((rng.below(BALLAST_BLOCKS) * BLOCK_SIZE) as u64);
            let to = [Location::Device(D0), Location::Device(D1), Location::System][rng.below(3)];
            if let Err(e) = w.svm.migrate(b, BLOCK_SIZE as u64, to) {
                return w.fail("ballast migrator", format!("migrate: {e}"));
            }
            // The ballast is constant: check one word of it through device 0.
            let words = w.ballast.len() as usize / 8;
            let i = rng.below(words);
            let mut v = [0u8; 8];
            if let Err(e) = w
                .svm
                .device(D0)
                .unwrap()
                .read(w.ballast.at((i * 8) as u64), &mut v)
            {
                return w.fail("ballast migrator", format!("device read: {e}"));
            }
            if u64::from_ne_bytes(v) != ballast_value(i) {
                return w.fail(
                    "ballast migrator",
                    format!("ballast word {i} read {:#x}", u64::from_ne_bytes(v)),
                );
            }
            w.count(7, 1);
        }
    }
}

/// Turns copy failures on device 1 on (every 2nd to 5th job) and off.
fn injector(w: &World<'_>, seed: u64) {
    let mut rng = Rng::new(seed);
    let d1 = w.svm.device(D1).unwrap();
    while !w.stopped() {
        let copy = match rng.below(5) {
            0 => CopyFailure::Never,
            n => CopyFailure::EveryNth(n as u64 + 1),
        };
        d1.inject(Injection {
            copy,
            alloc_fails: false,
        })
        .unwrap();
        w.count(9, 1);
        std::thread::sleep(Duration::from_millis(1 + rng.below_u64(5)));
    }
    d1.clear_injection().unwrap();
}

fn ballast_value(i: usize) -> u64 {
    0xBA11_A570_0000_0000 | i as u64
}

/// Seconds per configuration (`SVMEM_TORTURE_SECS`, default 6).
fn secs() -> u64 {
    std::env::var("SVMEM_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

fn torture(granularity: u8, huge: bool, seed: u64) {
    let duration = Duration::from_secs(secs());
    let mut b = Svm::builder();
    for name in ["torture0", "torture1-faulty"] {
        b = b.emulated(common::emulated(name, DEVICE_BYTES)).unwrap();
    }
    let svm = b.granularity(granularity).huge_pages(huge).build().unwrap();
    let mut ballast = svm.alloc(BALLAST_BLOCKS * BLOCK_SIZE).unwrap();
    for (i, v) in ballast.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = ballast_value(i);
    }
    let mut hot = svm.alloc(HOT_PAGES * PAGE_SIZE).unwrap();
    let mut cold = svm.alloc(COLD_PAGES * PAGE_SIZE).unwrap();
    let w = World {
        svm: &svm,
        hot: Shadowed::new("hot", 0x11, &mut hot),
        cold: Shadowed::new("cold", 0xC0, &mut cold),
        ballast: SharedRegion::new(&mut ballast),
        hot_page: AtomicUsize::new(0),
        quiet: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        err: FirstError::default(),
        progress: AtomicU64::new(0),
        t0: Instant::now(),
        ops: Default::default(),
    };
    let done = AtomicBool::new(false);
    let w = &w;
    std::thread::scope(|s| {
        watchdog(
            s,
            &done,
            duration + Duration::from_secs(30),
            &w.progress,
            "torture",
        );
        let mut hs = Vec::new();
        for t in 0..2 {
            hs.push(s.spawn(move || cpu_thread(w, t, seed ^ (0x100 + t as u64))));
        }
        for t in 2..2 + CPU_READERS {
            hs.push(s.spawn(move || cpu_reader(w, t, seed ^ (0x100 + t as u64))));
        }
        hs.push(s.spawn(move || {
            let mine = [(&w.hot, H_DEV0, H_CLASSES), (&w.cold, C_DEV0, C_CLASSES)];
            device_thread(w, D0, &mine, seed ^ 0x200)
        }));
        hs.push(
            s.spawn(move || device_thread(w, D1, &[(&w.cold, C_DEV1, C_CLASSES)], seed ^ 0x201)),
        );
        hs.push(s.spawn(move || kernel_thread(w, D0, &w.hot, H_KERN0, H_CLASSES, seed ^ 0x300)));
        hs.push(s.spawn(move || kernel_thread(w, D1, &w.cold, C_KERN1, C_CLASSES, seed ^ 0x301)));
        hs.push(s.spawn(move || hot_migrator(w, seed ^ 0x400)));
        hs.push(s.spawn(move || cold_migrator(w, seed ^ 0x401)));
        hs.push(s.spawn(move || injector(w, seed ^ 0x500)));
        let until = Instant::now() + duration;
        let mut phase = 0u64;
        while Instant::now() < until && !w.stopped() {
            phase += 1;
            let q = phase % 2 == 0;
            w.quiet.store(q, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(if q { RACE_MS } else { 100 }));
        }
        w.quiet.store(false, Ordering::Relaxed);
        w.stop.store(true, Ordering::Release);
        for h in hs {
            h.join().unwrap();
        }
        svm.device(D1).unwrap().clear_injection().unwrap();
        final_check(w);
        done.store(true, Ordering::Release);
    });
    let elapsed = w.t0.elapsed();
    let ops: Vec<String> = OP_NAMES
        .iter()
        .zip(&w.ops)
        .map(|(n, c)| format!("{} {n}", c.load(Ordering::Relaxed)))
        .collect();
    let st = svm.stats();
    eprintln!(
        "torture (granularity {granularity}, huge pages {huge}) in {elapsed:?}: {}; \
         {} CPU faults ({} windows), {} evictions, {} rolled back pages, {} huge fills, \
         {} pages moved device to device",
        ops.join(", "),
        st.cpu_faults,
        st.cpu_fault_windows,
        st.evictions,
        st.rolled_back_pages,
        st.huge_fills,
        st.peer_pages,
    );
    if let Some(m) = w.err.take() {
        panic!("(granularity {granularity}, huge pages {huge}) {m}");
    }
    assert!(
        st.peer_pages > 0,
        "the cold migrator's moves between the devices never took the peer path"
    );
}

/// Every word equals its shadow, on the CPU and through device 0; nothing
/// was poisoned; the ballast kept its content.
fn final_check(w: &World<'_>) {
    if w.err.is_set() {
        return;
    }
    let st = w.svm.stats();
    if st.poisoned_pages != 0 || st.protocol_errors != 0 {
        let (p, e) = (st.poisoned_pages, st.protocol_errors);
        return w.fail(
            "final check",
            format!("{p} pages poisoned, {e} protocol errors"),
        );
    }
    for s in [&w.hot, &w.cold] {
        let mut buf = vec![0u8; s.words() * 8];
        if let Err(e) = w.svm.device(D0).unwrap().read(s.region.addr(), &mut buf) {
            return w.fail("final check", format!("device read of {}: {e}", s.name));
        }
        let words = s.region.as_atomic_u64();
        for i in 0..s.words() {
            let want = s.base(i) + s.lo(i);
            if s.intent[i].load(Ordering::SeqCst) != s.lo(i) {
                return w.fail(
                    "final check",
                    format!("{} word {i}: write in flight", s.name),
                );
            }
            let dev = u64::from_ne_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
            let cpu = words[i].load(Ordering::SeqCst);
            if cpu != want || dev != want {
                return w.fail(
                    "final check",
                    format!(
                        "{} word {i}: CPU {cpu:#x}, device 0 {dev:#x}, expected {want:#x}",
                        s.name
                    ),
                );
            }
        }
    }
    for (i, v) in w.ballast.as_atomic_u64().iter().enumerate() {
        let got = v.load(Ordering::SeqCst);
        if got != ballast_value(i) {
            return w.fail("final check", format!("ballast word {i}: {got:#x}"));
        }
    }
}

/// One configuration at a time: on a small machine they would mostly
/// compete for CPUs instead of racing each other's migrations.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn torture_granularity_0_small_pages() {
    let _one = one_at_a_time();
    torture(0, false, 0x70_0001);
}

#[test]
fn torture_granularity_0_huge_pages() {
    let _one = one_at_a_time();
    torture(0, true, 0x70_0002);
}

#[test]
fn torture_granularity_9_small_pages() {
    let _one = one_at_a_time();
    torture(9, false, 0x70_0003);
}

#[test]
fn torture_granularity_9_huge_pages() {
    let _one = one_at_a_time();
    torture(9, true, 0x70_0004);
}
