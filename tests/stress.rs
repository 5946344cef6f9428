//! Concurrency stress with a full data check at the end (DESIGN.md §3,
//! invariant 4: no write is lost under any interleaving of CPU threads, device
//! accesses and migrations).
//!
//! CPU threads store increasing values into u64 words they own (spread over
//! every page) through `Region::as_atomic_u64`; one device-writer thread per
//! device writes its own words through `DeviceHandle::write`; a migrator moves
//! random block-aligned and page-aligned ranges between system memory and the
//! devices (and now and then releases a device). Everyone checks their own
//! words as they go; at the end every word must hold its last written value,
//! seen from the CPU and through every device.
//!
//! The default tests run a few seconds each. The long variants (~60 s each):
//!
//! ```text
//! cargo test --release --test stress -- --ignored
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use common::Rng;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use svmem::{
    DeviceId, EmulatedConfig, Location, MemoryType, MigrateReport, Svm, BLOCK_SIZE, PAGE_SIZE,
};

const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;
const CPU_THREADS: usize = 4;
/// Words each CPU thread owns in every page.
const CPU_WORDS: usize = 2;
/// Words each device writer owns in every page.
const DEV_WORDS: usize = 2;

/// Word `j` of CPU thread `t` in page `p` (interleaved in the page's first half).
fn cpu_word(p: usize, t: usize, j: usize) -> usize {
    p * WORDS_PER_PAGE + (t * CPU_WORDS + j) * 16 + p % 16
}

/// Word `j` of the writer of device `d` in page `p` (in the page's second half).
fn dev_word(p: usize, d: usize, j: usize) -> usize {
    p * WORDS_PER_PAGE + WORDS_PER_PAGE / 2 + (d * DEV_WORDS + j) * 16 + p % 16
}

struct Config {
    region_bytes: usize,
    /// Device memory sizes; smaller than the region exercises "no device memory".
    device_bytes: Vec<u64>,
    granularity: u8,
    /// Huge first touch (the default); off keeps every page 4 KiB.
    huge_pages: bool,
    duration: Duration,
    seed: u64,
}

#[derive(Default, Debug)]
struct MigratorTally {
    calls: u64,
    releases: u64,
    total: MigrateReport,
}

fn add_report(acc: &mut MigrateReport, r: &MigrateReport) {
    acc.requested += r.requested;
    acc.migrated += r.migrated;
    acc.skipped_busy += r.skipped_busy;
    acc.skipped_not_migratable += r.skipped_not_migratable;
    acc.skipped_no_device_memory += r.skipped_no_device_memory;
    acc.already_there += r.already_there;
    acc.rolled_back += r.rolled_back;
}

fn run(cfg: Config) {
    let mut b = Svm::builder();
    for (i, &bytes) in cfg.device_bytes.iter().enumerate() {
        b = b
            .emulated(EmulatedConfig {
                name: format!("stress{i}"),
                memory_bytes: bytes,
                copy_engines: 2,
                memory_type: MemoryType::Private,
                compute_units: 2,
                commit_up_front: false,
            })
            .unwrap();
    }
    let svm = b
        .granularity(cfg.granularity)
        .huge_pages(cfg.huge_pages)
        .build()
        .unwrap();
    let ndev = cfg.device_bytes.len();
    let mut region = svm.alloc(cfg.region_bytes).unwrap();
    let region = common::SharedRegion::new(&mut region);
    let npages = region.npages();
    let nwords = npages * WORDS_PER_PAGE;
    assert!(npages >= 1 && ndev >= 1 && CPU_WORDS * CPU_THREADS * 16 <= WORDS_PER_PAGE / 2);

    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    // Progress counters, so that a hang report says who stopped moving.
    let cpu_ops = AtomicU64::new(0);
    let dev_ops = AtomicU64::new(0);
    let migrations = AtomicU64::new(0);
    let deadline = Instant::now() + cfg.duration;

    let (cpu_last, dev_last, tally) = std::thread::scope(|s| {
        // Watchdog: a deadlock must fail the test, not stall it.
        s.spawn(|| {
            let limit = deadline + Duration::from_secs(120);
            while !done.load(Ordering::Acquire) {
                if Instant::now() > limit {
                    // Straight to stderr: the harness's capture dies with the abort.
                    let _ = writeln!(
                        std::io::stderr(),
                        "stress: no completion 120 s after the deadline (cpu ops {}, device ops {}, \
                         migrations {}); stats: {:?}",
                        cpu_ops.load(Ordering::Relaxed),
                        dev_ops.load(Ordering::Relaxed),
                        migrations.load(Ordering::Relaxed),
                        svm.stats()
                    );
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });

        let cpu: Vec<_> = (0..CPU_THREADS)
            .map(|t| {
                let (svm, region, stop, cpu_ops) = (&svm, &region, &stop, &cpu_ops);
                s.spawn(move || {
                    let words = region.as_atomic_u64();
                    let mut rng = Rng::new(cfg.seed ^ (0x100 + t as u64));
                    // last[p * CPU_WORDS + j]: what this thread last stored there.
                    let mut last = vec![0u64; npages * CPU_WORDS];
                    let mut seq = 0u64;
                    let tag = (t as u64 + 1) << 48;
                    while !stop.load(Ordering::Relaxed) {
                        if rng.chance(500) {
                            // A sweep over every page: faults in whatever the
                            // migrator has moved out.
                            for p in 0..npages {
                                for j in 0..CPU_WORDS {
                                    seq += 1;
                                    words[cpu_word(p, t, j)].store(tag | seq, Ordering::Relaxed);
                                    last[p * CPU_WORDS + j] = tag | seq;
                                }
                            }
                            for p in 0..npages {
                                for j in 0..CPU_WORDS {
                                    let got = words[cpu_word(p, t, j)].load(Ordering::Relaxed);
                                    assert_eq!(
                                        got,
                                        last[p * CPU_WORDS + j],
                                        "cpu thread {t}: page {p} word {j} after a sweep"
                                    );
                                }
                            }
                        } else {
                            let (p, j) = (rng.below(npages), rng.below(CPU_WORDS));
                            let w = cpu_word(p, t, j);
                            seq += 1;
                            words[w].store(tag | seq, Ordering::Relaxed);
                            last[p * CPU_WORDS + j] = tag | seq;
                            if rng.chance(4) {
                                let (p, j) = (rng.below(npages), rng.below(CPU_WORDS));
                                let got = words[cpu_word(p, t, j)].load(Ordering::Relaxed);
                                assert_eq!(
                                    got,
                                    last[p * CPU_WORDS + j],
                                    "cpu thread {t}: page {p} word {j} read back from the CPU"
                                );
                            }
                            if rng.chance(32) {
                                // Read an own word back through a device.
                                let (p, j) = (rng.below(npages), rng.below(CPU_WORDS));
                                let d = DeviceId(rng.below(ndev) as u8);
                                let mut buf = [0u8; 8];
                                svm.device(d)
                                    .unwrap()
                                    .read(region.at((cpu_word(p, t, j) * 8) as u64), &mut buf)
                                    .unwrap();
                                assert_eq!(
                                    u64::from_ne_bytes(buf),
                                    last[p * CPU_WORDS + j],
                                    "cpu thread {t}: page {p} word {j} read back through {d}"
                                );
                            }
                        }
                        cpu_ops.fetch_add(1, Ordering::Relaxed);
                    }
                    last
                })
            })
            .collect();

        let dev: Vec<_> = (0..ndev)
            .map(|d| {
                let (svm, region, stop, dev_ops) = (&svm, &region, &stop, &dev_ops);
                s.spawn(move || {
                    let words = region.as_atomic_u64();
                    let h = svm.device(DeviceId(d as u8)).unwrap();
                    let mut rng = Rng::new(cfg.seed ^ (0x200 + d as u64));
                    let mut last = vec![0u64; npages * DEV_WORDS];
                    let mut seq = 0u64;
                    let tag = (0x80 + d as u64) << 48;
                    while !stop.load(Ordering::Relaxed) {
                        let (p, j) = (rng.below(npages), rng.below(DEV_WORDS));
                        seq += 1;
                        let addr = region.at((dev_word(p, d, j) * 8) as u64);
                        h.write(addr, &(tag | seq).to_ne_bytes()).unwrap();
                        last[p * DEV_WORDS + j] = tag | seq;
                        if rng.chance(3) {
                            let (p, j) = (rng.below(npages), rng.below(DEV_WORDS));
                            let mut buf = [0u8; 8];
                            h.read(region.at((dev_word(p, d, j) * 8) as u64), &mut buf)
                                .unwrap();
                            assert_eq!(
                                u64::from_ne_bytes(buf),
                                last[p * DEV_WORDS + j],
                                "device {d}: page {p} word {j} read back through the device"
                            );
                        }
                        if rng.chance(16) {
                            // The CPU sees what the device wrote.
                            let (p, j) = (rng.below(npages), rng.below(DEV_WORDS));
                            let got = words[dev_word(p, d, j)].load(Ordering::Relaxed);
                            assert_eq!(
                                got,
                                last[p * DEV_WORDS + j],
                                "device {d}: page {p} word {j} read back from the CPU"
                            );
                        }
                        dev_ops.fetch_add(1, Ordering::Relaxed);
                    }
                    last
                })
            })
            .collect();

        let migrator = {
            let (svm, region, stop, migrations) = (&svm, &region, &stop, &migrations);
            s.spawn(move || {
                let mut rng = Rng::new(cfg.seed ^ 0x300);
                let mut tally = MigratorTally::default();
                let nblocks = npages.div_ceil(BLOCK_SIZE / PAGE_SIZE);
                let block_pages = BLOCK_SIZE / PAGE_SIZE;
                while !stop.load(Ordering::Relaxed) {
                    if rng.chance(50) {
                        let d = DeviceId(rng.below(ndev) as u8);
                        let rep = svm.device(d).unwrap().release();
                        assert_eq!(rep.rolled_back, 0, "release of {d}: {rep:?}");
                        tally.releases += 1;
                        continue;
                    }
                    let (first, n) = if rng.chance(2) {
                        let b = rng.below(nblocks);
                        let nb = 1 + rng.below(2.min(nblocks - b));
                        let first = b * block_pages;
                        (first, (nb * block_pages).min(npages - first))
                    } else {
                        let first = rng.below(npages);
                        (first, 1 + rng.below(700.min(npages - first)))
                    };
                    let to = match rng.below(ndev + 1) {
                        0 => Location::System,
                        k => Location::Device(DeviceId(k as u8 - 1)),
                    };
                    let rep = svm
                        .migrate(
                            region.at((first * PAGE_SIZE) as u64),
                            (n * PAGE_SIZE) as u64,
                            to,
                        )
                        .unwrap();
                    assert_eq!(rep.requested, n as u64);
                    assert_eq!(rep.rolled_back, 0, "migrate {first}+{n} to {to}: {rep:?}");
                    add_report(&mut tally.total, &rep);
                    tally.calls += 1;
                    migrations.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        };

        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if cpu.iter().chain(&dev).any(|h| h.is_finished()) || migrator.is_finished() {
                break; // a worker panicked: stop the others and report it
            }
        }
        stop.store(true, Ordering::Relaxed);
        let cpu_last: Vec<Vec<u64>> = cpu.into_iter().map(|h| h.join().unwrap()).collect();
        let dev_last: Vec<Vec<u64>> = dev.into_iter().map(|h| h.join().unwrap()).collect();
        let tally = migrator.join().unwrap();
        done.store(true, Ordering::Release);
        (cpu_last, dev_last, tally)
    });

    eprintln!(
        "stress (g={}, {} pages, {} devices, {:?}): cpu ops {}, device ops {}, {:?}\n  stats: {:?}",
        cfg.granularity,
        npages,
        ndev,
        cfg.duration,
        cpu_ops.load(Ordering::Relaxed),
        dev_ops.load(Ordering::Relaxed),
        tally,
        svm.stats()
    );
    assert!(tally.calls > 0, "the migrator never ran");

    let mut expect = vec![0u64; nwords];
    for p in 0..npages {
        for (t, last) in cpu_last.iter().enumerate() {
            for j in 0..CPU_WORDS {
                expect[cpu_word(p, t, j)] = last[p * CPU_WORDS + j];
            }
        }
        for (d, last) in dev_last.iter().enumerate() {
            for j in 0..DEV_WORDS {
                expect[dev_word(p, d, j)] = last[p * DEV_WORDS + j];
            }
        }
    }

    let check = |got: &[u64], via: &str| {
        let bad: Vec<usize> = (0..nwords).filter(|&w| got[w] != expect[w]).collect();
        assert!(
            bad.is_empty(),
            "{} of {nwords} words wrong seen {via}; first: {:?}",
            bad.len(),
            bad.iter()
                .take(8)
                .map(|&w| (w / WORDS_PER_PAGE, w % WORDS_PER_PAGE, got[w], expect[w]))
                .collect::<Vec<_>>()
        );
    };
    // Through every device first (pages stay where they are or get pulled),
    // then from the CPU (everything faults back).
    for d in svm.device_ids() {
        let mut buf = vec![0u8; npages * PAGE_SIZE];
        svm.device(d)
            .unwrap()
            .read(region.addr(), &mut buf)
            .unwrap();
        let got: Vec<u64> = buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        check(&got, &format!("through {d}"));
    }
    // Scatter the pages once more, so the CPU check faults some back.
    let rep = svm
        .migrate(region.addr(), region.len(), Location::Device(DeviceId(0)))
        .unwrap();
    assert_eq!(rep.rolled_back, 0);
    let got: Vec<u64> = region
        .as_atomic_u64()
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .collect();
    check(&got, "from the CPU");
}

fn two_devices(granularity: u8, duration: Duration, seed: u64) -> Config {
    Config {
        region_bytes: 4 * BLOCK_SIZE, // 8 MiB
        // Device 1 holds only half the region: some migrations run out of memory.
        device_bytes: vec![16 << 20, 4 << 20],
        granularity,
        huge_pages: true,
        duration,
        seed,
    }
}

#[test]
fn stress_two_devices_block_granularity() {
    run(two_devices(9, Duration::from_secs(5), 1));
}

#[test]
fn stress_two_devices_page_granularity() {
    run(two_devices(0, Duration::from_secs(4), 2));
}

#[test]
fn stress_two_devices_small_pages_only() {
    run(Config {
        huge_pages: false,
        ..two_devices(9, Duration::from_secs(3), 4)
    });
}

#[test]
fn stress_one_device_odd_region() {
    run(Config {
        // Not a whole number of blocks: the last block is short.
        region_bytes: 2 * BLOCK_SIZE + 37 * PAGE_SIZE,
        device_bytes: vec![8 << 20],
        granularity: 4,
        huge_pages: true,
        duration: Duration::from_secs(2),
        seed: 3,
    });
}

#[test]
#[ignore = "long run (~60 s per test): cargo test --release --test stress -- --ignored"]
fn stress_long_block_granularity() {
    run(two_devices(9, Duration::from_secs(60), 11));
}

#[test]
#[ignore = "long run (~60 s per test): cargo test --release --test stress -- --ignored"]
fn stress_long_page_granularity() {
    run(two_devices(0, Duration::from_secs(60), 12));
}
