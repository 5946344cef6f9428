//! Issue 10, item 1: CPU threads racing migrations of their pages to a device
//! and back must never read a value other than the one last written.
//!
//! The bug it pins down: a stale fault message on a window that looked all
//! `System` was answered with `UFFDIO_ZEROPAGE` without the block lock; a
//! migration that isolated the page in between (moved it into staging) then
//! committed it as device-resident while the CPU mapped a zero page, and no
//! later migration could move the data back over it: the page read 0 for
//! ever while `location` said `Device(0)`.
//!
//! Every value read is checked, not only the final state. Each test stops at
//! the first wrong value, and a watchdog turns a hang into a failure.

#![allow(clippy::unwrap_used)]

mod common;

use common::{watchdog, FirstError, Rng, SharedRegion};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use svmem::{DeviceId, Location, MigrateReport, Svm, PAGE_SIZE};

const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;
const DEV: DeviceId = DeviceId(0);

fn svm(granularity: u8) -> Svm {
    Svm::builder()
        .emulated(common::emulated("race", 8 << 20))
        .unwrap()
        .granularity(granularity)
        .build()
        .unwrap()
}

/// The value the reader test keeps in word `w`: never zero.
fn word_value(w: usize) -> u64 {
    0xA5A5_0000_0000_0000 | (w as u64 + 1)
}

/// Describes word `w` of `region` after a wrong read: what the CPU and the
/// device see there now, and where the page lives.
fn describe(svm: &Svm, region: &SharedRegion<'_>, w: usize) -> String {
    let words = region.as_atomic_u64();
    let addr = region.at((w * 8) as u64);
    let mut buf = [0u8; 8];
    let dev = svm
        .device(DEV)
        .unwrap()
        .read(addr, &mut buf)
        .map(|_| format!("{:#x}", u64::from_ne_bytes(buf)))
        .unwrap_or_else(|e| format!("error {e}"));
    let page = w / WORDS_PER_PAGE;
    let zeros = (0..WORDS_PER_PAGE)
        .filter(|k| words[page * WORDS_PER_PAGE + k].load(Ordering::Relaxed) == 0)
        .count();
    format!(
        "now: CPU reads {:#x} ({zeros} of the page's {WORDS_PER_PAGE} words read 0 on the CPU), \
         device reads {dev}, location {:?}",
        words[w].load(Ordering::Relaxed),
        svm.location(addr)
    )
}

/// Rounds the migrator keeps the same hot page.
const HOT_ROUNDS: u64 = 128;

/// How often the migrator also moves the whole region to the device and
/// back explicitly (the rest of its time it sends one page to the device).
const WHOLE_EVERY: u64 = 1024;

/// The migrator, until `stop`: it picks a *hot* page (the CPU threads touch it
/// mostly) and migrates it to the device; the CPU threads' faults bring it
/// back, and their queued fault messages for it are being answered while the
/// next migration isolates it again (the race this file is about). Every
/// [`WHOLE_EVERY`] rounds the whole region goes to the device and back.
/// A rollback (nothing injects copy failures here) is an error: it is how a
/// migration back meets a page the CPU view should not hold.
fn migrate_loop(
    svm: &Svm,
    region: &SharedRegion<'_>,
    stop: &AtomicBool,
    count: &AtomicU64,
    err: &FirstError,
    hot: &AtomicUsize,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let npages = region.npages();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        if round % HOT_ROUNDS == 0 {
            hot.store(rng.below(npages), Ordering::Relaxed);
        }
        let p = hot.load(Ordering::Relaxed);
        let (addr, len) = if round % WHOLE_EVERY == 0 {
            (region.addr(), region.len())
        } else {
            (region.at((p * PAGE_SIZE) as u64), PAGE_SIZE as u64)
        };
        let to_dev = svm.migrate(addr, len, Location::Device(DEV)).unwrap();
        let back = if round % WHOLE_EVERY == 0 {
            svm.migrate(addr, len, Location::System).unwrap()
        } else {
            MigrateReport::default()
        };
        count.fetch_add(1, Ordering::Relaxed);
        if to_dev.rolled_back + back.rolled_back != 0 {
            let first = (0..npages)
                .find(|&p| {
                    svm.location(region.at((p * PAGE_SIZE) as u64)) != Some(Location::System)
                })
                .unwrap_or(0);
            let msg = format!(
                "migrator in round {round}: rolled back (to the device {to_dev:?}, back {back:?}); \
                 page {first}: {}",
                describe(svm, region, first * WORDS_PER_PAGE),
            );
            err.set(stop, msg);
        }
    }
}

/// A random page for a CPU thread: the hot one 63 times in 64.
fn pick_page(rng: &mut Rng, hot: &AtomicUsize, npages: usize) -> usize {
    if rng.chance(64) {
        rng.below(npages)
    } else {
        hot.load(Ordering::Relaxed)
    }
}

/// CPU threads yield now and then, so that 16 of them on a 2-CPU machine do
/// not starve the migrator and the fault thread.
const YIELD_EVERY: u64 = 256;

/// 16 threads read random words of a 16-page region (each word holds a fixed,
/// non-zero value) while one thread migrates it to the device and back.
fn readers(granularity: u8, duration: Duration, seed: u64) {
    const READERS: usize = 16;
    const PAGES: usize = 16;
    let svm = svm(granularity);
    let mut region = svm.alloc(PAGES * PAGE_SIZE).unwrap();
    for (w, v) in region.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = word_value(w);
    }
    let region = SharedRegion::new(&mut region);
    let nwords = PAGES * WORDS_PER_PAGE;
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let migrations = AtomicU64::new(0);
    let err = FirstError::default();
    let hot = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        watchdog(
            s,
            &done,
            duration + Duration::from_secs(20),
            &migrations,
            "readers",
        );
        let readers: Vec<_> = (0..READERS)
            .map(|t| {
                let (svm, region, stop, reads, err, hot) =
                    (&svm, &region, &stop, &reads, &err, &hot);
                s.spawn(move || {
                    let words = region.as_atomic_u64();
                    let mut rng = Rng::new(seed ^ (0x100 + t as u64));
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let w = pick_page(&mut rng, hot, PAGES) * WORDS_PER_PAGE
                            + rng.below(WORDS_PER_PAGE);
                        let got = words[w].load(Ordering::Relaxed);
                        n += 1;
                        if n % YIELD_EVERY == 0 {
                            std::thread::yield_now();
                        }
                        if got != word_value(w) {
                            let msg = format!(
                                "reader {t} after {:?}: word {w} (page {}) read {got:#x}, \
                                 expected {:#x}; {}",
                                t0.elapsed(),
                                w / WORDS_PER_PAGE,
                                word_value(w),
                                describe(svm, region, w)
                            );
                            err.set(stop, msg);
                        }
                    }
                    reads.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        let migrator = {
            let (svm, region, stop, migrations, err) = (&svm, &region, &stop, &migrations, &err);
            let hot = &hot;
            s.spawn(move || migrate_loop(svm, region, stop, migrations, err, hot, seed))
        };
        let until = Instant::now() + duration;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Release);
        for h in readers {
            h.join().unwrap();
        }
        migrator.join().unwrap();
        done.store(true, Ordering::Release);
    });
    if let Some(msg) = err.take() {
        panic!("{msg}");
    }
    // Every word, on the CPU and through the device.
    let words = region.as_atomic_u64();
    for (w, word) in words.iter().enumerate().take(nwords) {
        assert_eq!(
            word.load(Ordering::Relaxed),
            word_value(w),
            "word {w} at the end; {}",
            describe(&svm, &region, w)
        );
    }
    let mut buf = vec![0u8; PAGES * PAGE_SIZE];
    svm.device(DEV)
        .unwrap()
        .read(region.addr(), &mut buf)
        .unwrap();
    for (w, c) in buf.chunks_exact(8).enumerate() {
        assert_eq!(
            u64::from_ne_bytes(c.try_into().unwrap()),
            word_value(w),
            "word {w} read through the device at the end"
        );
    }
    eprintln!(
        "readers (granularity {granularity}): {} reads, {} migrate calls, {} CPU \
         faults in {:?}",
        reads.load(Ordering::Relaxed),
        migrations.load(Ordering::Relaxed),
        svm.stats().cpu_faults,
        t0.elapsed()
    );
}

/// `WRITERS` threads each own one word per page and count it up (load, check
/// it holds the last value stored, store + 1) while one thread migrates the
/// region to the device and back; at the end each word holds its count.
fn writers(granularity: u8, duration: Duration, seed: u64) {
    const WRITERS: usize = 8;
    const PAGES: usize = 16;
    let svm = svm(granularity);
    let mut region = svm.alloc(PAGES * PAGE_SIZE).unwrap();
    // Start from a known pattern (not zero, so a zero page shows at once).
    let base = |t: usize, p: usize| ((t as u64 + 1) << 40) | ((p as u64) << 24);
    let word_of = |t: usize, p: usize| p * WORDS_PER_PAGE + t * 37 + 3;
    {
        let mut words = region.as_mut_slice::<u64>();
        for (w, v) in words.iter_mut().enumerate() {
            *v = !(w as u64);
        }
        for t in 0..WRITERS {
            for p in 0..PAGES {
                words[word_of(t, p)] = base(t, p);
            }
        }
    }
    let region = SharedRegion::new(&mut region);
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let migrations = AtomicU64::new(0);
    let err = FirstError::default();
    let hot = AtomicUsize::new(0);
    let t0 = Instant::now();
    let counts = std::thread::scope(|s| {
        watchdog(
            s,
            &done,
            duration + Duration::from_secs(20),
            &migrations,
            "writers",
        );
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (svm, region, stop, err, hot) = (&svm, &region, &stop, &err, &hot);
                s.spawn(move || {
                    let words = region.as_atomic_u64();
                    let mut rng = Rng::new(seed ^ (0x200 + t as u64));
                    let mut count = vec![0u64; PAGES];
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        if n % YIELD_EVERY == 0 {
                            std::thread::yield_now();
                        }
                        let p = pick_page(&mut rng, hot, PAGES);
                        let w = word_of(t, p);
                        let got = words[w].load(Ordering::Relaxed);
                        let want = base(t, p) + count[p];
                        if got != want {
                            let msg = format!(
                                "writer {t} after {:?}: page {p} word {w} read {got:#x}, expected \
                                 {want:#x} ({} increments {}); {}",
                                t0.elapsed(),
                                count[p],
                                if got < want { "lost" } else { "from nowhere" },
                                describe(svm, region, w)
                            );
                            err.set(stop, msg);
                            break;
                        }
                        words[w].store(want + 1, Ordering::Relaxed);
                        count[p] += 1;
                    }
                    count
                })
            })
            .collect();
        let migrator = {
            let (svm, region, stop, migrations, err) = (&svm, &region, &stop, &migrations, &err);
            let hot = &hot;
            s.spawn(move || migrate_loop(svm, region, stop, migrations, err, hot, seed))
        };
        let until = Instant::now() + duration;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Release);
        let counts: Vec<Vec<u64>> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        migrator.join().unwrap();
        done.store(true, Ordering::Release);
        counts
    });
    if let Some(msg) = err.take() {
        panic!("{msg}");
    }
    let words = region.as_atomic_u64();
    let mut buf = vec![0u8; PAGES * PAGE_SIZE];
    svm.device(DEV)
        .unwrap()
        .read(region.addr(), &mut buf)
        .unwrap();
    let dev = |w: usize| u64::from_ne_bytes(buf[w * 8..w * 8 + 8].try_into().unwrap());
    let mut total = 0;
    for (t, count) in counts.iter().enumerate() {
        for (p, &n) in count.iter().enumerate() {
            let w = word_of(t, p);
            total += n;
            assert_eq!(
                words[w].load(Ordering::Relaxed),
                base(t, p) + n,
                "writer {t} page {p}: final count on the CPU; {}",
                describe(&svm, &region, w)
            );
            assert_eq!(
                dev(w),
                base(t, p) + n,
                "writer {t} page {p}: through the device"
            );
        }
    }
    // The words nobody wrote kept their pattern.
    for (w, word) in words.iter().enumerate().take(PAGES * WORDS_PER_PAGE) {
        if (0..WRITERS).all(|t| word_of(t, w / WORDS_PER_PAGE) != w) {
            assert_eq!(
                word.load(Ordering::Relaxed),
                !(w as u64),
                "untouched word {w}"
            );
        }
    }
    eprintln!(
        "writers (granularity {granularity}): {total} increments, {} migrate calls, {} \
         CPU faults in {:?}",
        migrations.load(Ordering::Relaxed),
        svm.stats().cpu_faults,
        t0.elapsed()
    );
}

/// The tests of this file run one at a time: on a 2-CPU machine they would
/// mostly compete for the CPUs instead of racing each other's migrations.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn readers_racing_migrations_never_see_zeros() {
    let _one = one_at_a_time();
    readers(0, Duration::from_secs(6), 0x5eed_0001);
}

#[test]
fn writers_racing_migrations_lose_nothing() {
    let _one = one_at_a_time();
    writers(0, Duration::from_secs(5), 0x5eed_0002);
}

/// At the default granularity (2 MiB fault windows).
#[test]
fn writers_racing_block_migrations_lose_nothing() {
    let _one = one_at_a_time();
    writers(9, Duration::from_secs(3), 0x5eed_0003);
}
