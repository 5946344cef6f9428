//! Device-memory oversubscription: workloads whose working set is 1.25×,
//! 1.5×, 2× and 4× device memory complete with verified results, evicting
//! by use; eviction races CPU faults and device faults on the same blocks
//! without losing a write.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use svmem::{DeviceId, EmulatedConfig, EventKind, Location, Svm};
use svmem_cli::workloads::{self, RunConfig, Workload};

const D0: DeviceId = DeviceId(0);
const DEV_MIB: u64 = 16;

fn svm(xnack: bool) -> Svm {
    Svm::builder()
        .emulated(EmulatedConfig::with_memory(DEV_MIB << 20))
        .unwrap()
        .xnack(xnack)
        .build()
        .unwrap()
}

/// `stream` with its three arrays sized to `ratio` × device memory.
fn stream_at(ratio: f64, xnack: bool, preferred: Option<Location>) {
    let svm = svm(xnack);
    let idle = svm.memory_usage();
    let bytes = ((DEV_MIB << 20) as f64 * ratio / 3.0) as u64;
    let cfg = RunConfig {
        bytes,
        xnack,
        preferred,
        ..Default::default()
    };
    let rep = workloads::run(&svm, Workload::Stream, &cfg)
        .unwrap_or_else(|e| panic!("stream at {ratio}x (xnack {xnack}): {e}"));
    assert!(rep.verified);
    let st = svm.stats();
    // Without retry faults ranges are mapped where the data is (in place),
    // so only retry mode migrates on use and has to evict.
    if ratio > 1.0 && xnack && preferred != Some(Location::System) {
        assert!(st.evictions > 0, "{ratio}x: {st:?}");
        assert!(st.evicted_pages >= st.evictions, "{st:?}");
    }
    // Nothing on the device is unaccounted for: the device holds at most its
    // capacity, and the run's arrays are gone.
    let info = svm.device(D0).unwrap().info();
    assert_eq!(
        info.free_bytes, info.capacity_bytes,
        "{ratio}x leaked device pages"
    );
    // Eviction bookkeeping (the rings) returns to idle with the regions.
    assert_eq!(svm.memory_usage().metadata_bytes, idle.metadata_bytes);
}

#[test]
fn stream_at_1_25x_device_memory() {
    stream_at(1.25, true, None);
}

#[test]
fn stream_at_1_5x_device_memory() {
    stream_at(1.5, true, None);
}

#[test]
fn stream_at_2x_device_memory() {
    stream_at(2.0, true, None);
}

#[test]
fn stream_at_4x_device_memory() {
    stream_at(4.0, true, None);
}

#[test]
fn stream_at_2x_preferring_the_device() {
    stream_at(2.0, true, Some(Location::Device(D0)));
}

#[test]
fn stream_at_2x_without_retry_faults_maps_in_place() {
    stream_at(2.0, false, Some(Location::Device(D0)));
}

/// Eviction picks blocks by use: with one block kept hot by the device,
/// streaming other blocks through a full device evicts the cold ones.
#[test]
fn eviction_spares_blocks_the_device_keeps_using() {
    let svm = svm(true);
    let hot = svm.alloc(2 << 20).unwrap();
    let cold = svm.alloc(((DEV_MIB - 2) << 20) as usize).unwrap();
    let extra = svm.alloc(8 << 20).unwrap();
    for r in [&hot, &cold, &extra] {
        svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    }
    // Hot block first (the oldest: allocation order would pick it).
    svm.migrate(hot.addr(), hot.len(), Location::Device(D0))
        .unwrap();
    svm.migrate(cold.addr(), cold.len(), Location::Device(D0))
        .unwrap();
    let dev = svm.device(D0).unwrap();
    assert_eq!(dev.info().free_bytes, 0);
    let mut word = [0u8; 8];
    // Migrate `extra` in 2 MiB steps; the device reads the hot block before
    // each step, as a kernel using it would.
    for step in 0..4u64 {
        dev.read(hot.at(8), &mut word).unwrap();
        let rep = svm
            .migrate(extra.at(step << 21), 2 << 20, Location::Device(D0))
            .unwrap();
        assert_eq!(rep.migrated, 512, "step {step}: {rep:?}");
    }
    assert_eq!(svm.location(hot.addr()), Some(Location::Device(D0)));
    let st = svm.stats();
    assert_eq!(st.evictions, 4, "{st:?}");
    assert_eq!(st.evicted_pages, 4 * 512);
}

/// Evictions show in the event stream with trigger `eviction`.
#[test]
fn evictions_are_reported_as_events() {
    let svm = svm(true);
    let events = svm.subscribe(4096);
    let a = svm.alloc((DEV_MIB << 20) as usize).unwrap();
    let b = svm.alloc(4 << 20).unwrap();
    svm.migrate(a.addr(), a.len(), Location::Device(D0))
        .unwrap();
    svm.migrate(b.addr(), b.len(), Location::Device(D0))
        .unwrap();
    let mut ends = 0;
    for ev in events.drain() {
        if let EventKind::MigrateEnd {
            trigger, to, from, ..
        } = ev.kind
        {
            if trigger == svmem::observe::events::MigrateTrigger::Eviction {
                assert_eq!(to, Location::System);
                assert_eq!(from, Location::Device(D0));
                ends += 1;
            }
        }
    }
    assert_eq!(ends, 2);
    assert_eq!(svm.stats().evictions, 2);
}

/// A device kernel, CPU threads and a migrator all hammer the same blocks of
/// a working set twice the device's memory, so eviction (from the kernel's
/// faults and the migrator) races CPU faults and device faults on the same
/// blocks. Every increment lands.
#[test]
fn eviction_races_cpu_and_device_faults_without_losing_writes() {
    let svm = svm(true);
    let pages = 2 * (DEV_MIB << 20) as usize / 4096;
    let mut region = svm.alloc(pages * 4096).unwrap();
    let rounds = 6u64;
    let cpu_rounds = 4u64;
    let stop = AtomicBool::new(false);
    let migrations = AtomicU64::new(0);
    let base = region.addr();
    let words = region.as_atomic_u64();
    std::thread::scope(|s| {
        // CPU threads: word 1 of every 16th page (the kernel uses word 0).
        for t in 0..2u64 {
            let words = &words;
            s.spawn(move || {
                for _ in 0..cpu_rounds {
                    for p in (t as usize..pages).step_by(16) {
                        words[p * 512 + 1 + t as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // A migrator pushing 2 MiB blocks to the device.
        s.spawn(|| {
            let mut b = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let blocks = (pages / 512) as u64;
                let _ = svm.migrate(
                    base.offset((b % blocks) << 21),
                    2 << 20,
                    Location::Device(D0),
                );
                migrations.fetch_add(1, Ordering::Relaxed);
                b = b.wrapping_mul(7).wrapping_add(3);
            }
        });
        let dev = svm.device(D0).unwrap();
        for _ in 0..rounds {
            let rep = dev
                .launch(pages as u64, |lane, p| {
                    lane.atomic_add_u64(base.offset(p * 4096), 1).map(|_| ())
                })
                .unwrap();
            assert!(rep.fatal.is_none(), "{:?}", rep.fatal);
        }
        stop.store(true, Ordering::Relaxed);
    });
    for p in 0..pages {
        assert_eq!(words[p * 512].load(Ordering::Relaxed), rounds, "page {p}");
        for t in 0..2usize {
            let want = if p % 16 == t { cpu_rounds } else { 0 };
            assert_eq!(
                words[p * 512 + 1 + t].load(Ordering::Relaxed),
                want,
                "page {p} cpu thread {t}"
            );
        }
    }
    let st = svm.stats();
    assert!(st.evictions > 0, "{st:?}");
    assert!(migrations.load(Ordering::Relaxed) > 0);
}

/// Rule 9: with a working set twice the device's memory streamed over and
/// over, blocks refaulted soon after their eviction are served in place, so
/// the passes after the first settle with no evictions at all; without the
/// mitigation every pass evicts and refetches.
#[test]
fn thrashing_blocks_are_served_in_place_once_detected() {
    for (window, settles) in [
        (std::time::Duration::from_secs(60), true),
        (std::time::Duration::ZERO, false),
    ] {
        let svm = Svm::builder()
            .emulated(EmulatedConfig::with_memory(DEV_MIB << 20))
            .unwrap()
            .thrash_window(window)
            .build()
            .unwrap();
        let len = 2 * (DEV_MIB << 20);
        let mut r = svm.alloc(len as usize).unwrap();
        for (i, w) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
            *w = i as u64;
        }
        let dev = svm.device(D0).unwrap();
        let pass = || {
            let sum = AtomicU64::new(0);
            dev.launch(len / 4096, |lane, p| {
                let v = lane.load::<u64>(r.at(p * 4096))?;
                sum.fetch_add(v, Ordering::Relaxed);
                Ok(())
            })
            .unwrap()
            .check()
            .unwrap();
            let want: u64 = (0..len / 4096).map(|p| p * 512).sum();
            assert_eq!(sum.into_inner(), want);
            svm.stats().evictions
        };
        let first = pass();
        let second = pass();
        let third = pass();
        assert!(first > 0, "the first pass overflows the device");
        if settles {
            assert_eq!(
                third, second,
                "a settled pass evicts nothing (window {window:?})"
            );
        } else {
            assert!(third > second, "without mitigation every pass evicts");
        }
    }
}
