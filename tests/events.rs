//! The application's own `madvise(MADV_DONTNEED)` on managed memory (a uffd
//! REMOVE event): the data is discarded everywhere, device memory is freed,
//! and CPU faults racing with it neither hang nor lose the pages not discarded.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::dontneed;

use svmem::{DeviceId, Location, Svm};

const DEV: DeviceId = DeviceId(0);

#[test]
fn dontneed_discards_device_and_system_pages() {
    let svm = Svm::with_emulated(16 << 20).unwrap();
    let mut r = svm.alloc(4 << 20).unwrap();
    r.as_mut_slice::<u64>()
        .iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w = i as u64 + 1);
    // First 2 MiB to the device, second 2 MiB stays in system memory.
    let rep = svm
        .migrate(r.addr(), 2 << 20, Location::Device(DEV))
        .unwrap();
    assert_eq!(rep.migrated, 512);
    let dev = svm.device(DEV).unwrap();
    let cap = dev.info().capacity_bytes;
    assert_eq!(dev.info().free_bytes, cap - (2 << 20));

    // Discard 1 MiB of each half.
    dontneed(r.addr(), 1 << 20, 2 << 20);
    // The kernel lets madvise return once the reader has read the event; the
    // reader frees the device pages right after.
    let t = Instant::now();
    while (dev.info().free_bytes != cap - (1 << 20) || svm.stats().uffd_events == 0)
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        dev.info().free_bytes,
        cap - (1 << 20),
        "discarded device pages are freed"
    );
    assert!(svm.stats().uffd_events >= 1);

    let words = r.as_slice::<u64>();
    for (i, &w) in words.iter().enumerate() {
        let discarded = (1 << 20..3 << 20).contains(&(i * 8));
        let want = if discarded { 0 } else { i as u64 + 1 };
        assert_eq!(w, want, "word {i}");
    }
    // The discarded pages migrate again, with no page left busy by stale staging.
    let rep = svm
        .migrate(r.addr(), r.len(), Location::Device(DEV))
        .unwrap();
    assert_eq!(rep.skipped(), 0, "{rep:?}");
    assert_eq!(rep.migrated + rep.already_there, rep.requested);
    let mut buf = vec![0u8; r.len() as usize];
    dev.read(r.addr(), &mut buf).unwrap();
    assert_eq!(&buf[..], &r.as_slice::<u8>()[..]);
}

#[test]
fn dontneed_racing_with_cpu_faults_does_not_hang() {
    let svm = Svm::builder()
        .emulated(svmem::EmulatedConfig::with_memory(32 << 20))
        .unwrap()
        .granularity(4)
        .build()
        .unwrap();
    let mut region = svm.alloc(8 << 20).unwrap();
    let r = common::SharedRegion::new(&mut region);
    let words = r.as_atomic_u64();
    let n = words.len();
    // Even 64 KiB windows hold data that is never discarded; odd ones get discarded.
    let window_words = (64 << 10) / 8;
    let kept = |i: usize| (i / window_words) % 2 == 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        rounds += 1;
        for (i, w) in words.iter().enumerate() {
            w.store(
                rounds << 32 | i as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        svm.migrate(r.addr(), r.len(), Location::Device(DEV))
            .unwrap();
        std::thread::scope(|s| {
            // A reader faulting every page back...
            s.spawn(|| {
                for (i, w) in words.iter().enumerate() {
                    let v = w.load(std::sync::atomic::Ordering::Relaxed);
                    if kept(i) {
                        assert_eq!(
                            v,
                            rounds << 32 | i as u64,
                            "kept word {i} in round {rounds}"
                        );
                    } else {
                        assert!(
                            v == 0 || v == rounds << 32 | i as u64,
                            "discarded word {i} = {v:#x}"
                        );
                    }
                }
            });
            // ...while another thread discards the odd windows.
            s.spawn(|| {
                for off in (64 << 10..n * 8).step_by(128 << 10) {
                    dontneed(r.addr(), off, 64 << 10);
                }
            });
        });
        for (i, w) in words.iter().enumerate() {
            if !kept(i) {
                assert_eq!(
                    w.load(std::sync::atomic::Ordering::Relaxed),
                    0,
                    "discarded word {i} after round {rounds}"
                );
            }
        }
    }
    assert!(svm.stats().uffd_events >= rounds);
}
