//! Device fault-ahead (`fault::run_ahead`) and zero-copy lane reads
//! (`Lane::read_words`): a sequential device sweep is fetched ahead block by
//! block; faults elsewhere during the sweep are served (no lock-order
//! deadlock with the blocks in flight); a region freed under a running sweep
//! gives back every device page; `read_words` reads what `read_slice` reads,
//! from system and from device memory.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::emulated;
use svmem::{Attr, DeviceId, FaultReason, Location, Svm, BLOCK_SIZE};

const D0: DeviceId = DeviceId(0);

fn svm(device_bytes: u64, lanes: usize) -> Svm {
    let mut cfg = emulated("ahead", device_bytes);
    cfg.compute_units = lanes;
    cfg.copy_engines = 2;
    Svm::builder().emulated(cfg).unwrap().build().unwrap()
}

fn prefer_device(svm: &Svm, r: &svmem::Region<'_>) {
    let at = [Attr::PreferredLocation(Some(Location::Device(D0)))];
    svm.set_attributes(r.addr(), r.len(), &at).unwrap();
}

/// Word `i` of the pattern these tests write.
fn word(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a
}

#[test]
fn a_sequential_sweep_is_fetched_ahead_and_reads_every_word() {
    let svm = svm(64 << 20, 2);
    let mut r = svm.alloc(32 << 20).unwrap();
    for (i, w) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
        *w = word(i as u64);
    }
    prefer_device(&svm, &r);
    let words = r.len() / 8;
    let sum = common::sum_kernel(&svm, D0, r.addr(), words, BLOCK_SIZE as u64 / 8).unwrap();
    let want = (0..words).fold(0u64, |a, i| a.wrapping_add(word(i)));
    assert_eq!(sum, want);
    let s = svm.stats();
    assert!(s.device_fault_ahead_pages > 0, "{s:?}");
    assert_eq!(
        s.to_device_pages,
        r.npages() as u64,
        "every page moved once"
    );
    // Far fewer faults than pages: the lanes mostly found their blocks mapped.
    assert!(s.device_faults < r.npages() as u64 / 16, "{s:?}");
    assert!(
        (0..r.npages() as u64).all(|k| svm.location(r.at(k * 4096)) == Some(Location::Device(D0)))
    );
}

#[test]
fn faults_elsewhere_during_a_sweep_are_served() {
    // Lane 0 sweeps region `a` (fetched ahead); the other lanes read pages
    // of region `b` and pages of `a` behind the sweep, in no order, while a
    // CPU thread migrates blocks of both regions back and forth. Every read
    // must see its word, and nothing may deadlock.
    let svm = svm(64 << 20, 3);
    let mut a = svm.alloc(16 << 20).unwrap();
    let mut b = svm.alloc(8 << 20).unwrap();
    for r in [&mut a, &mut b] {
        for (i, w) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
            *w = word(i as u64);
        }
        prefer_device(&svm, r);
    }
    let (a_words, b_words) = (a.len() / 8, b.len() / 8);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let bad = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for r in [&a, &b] {
                    let blk = r.at((k % (r.len() / BLOCK_SIZE as u64)) * BLOCK_SIZE as u64);
                    let to = if k % 2 == 0 {
                        Location::System
                    } else {
                        Location::Device(D0)
                    };
                    svm.migrate(blk, BLOCK_SIZE as u64, to).unwrap();
                }
                k += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
        });
        let per_item = 4096u64; // 32 KiB items
        let items = a_words / per_item;
        svm.device(D0)
            .unwrap()
            .launch(items * 3, |lane, item| {
                let (r, first) = match item % 3 {
                    0 => (&a, (item / 3) * per_item),
                    1 => (&b, (item * 7919 % (b_words / per_item)) * per_item),
                    _ => (&a, (item * 104_729 % (item / 3 + 1)) * per_item),
                };
                let mut i = first;
                lane.read_words(r.at(first * 8), per_item, |ws| {
                    for w in ws {
                        if w.load(Ordering::Relaxed) != word(i) {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                })
            })
            .unwrap()
            .check()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    for r in [&a, &b] {
        let ws = r.as_slice::<u64>();
        assert!(ws.iter().enumerate().all(|(i, &w)| w == word(i as u64)));
    }
}

#[test]
fn a_region_freed_under_a_running_sweep_gives_back_every_device_page() {
    let svm = svm(128 << 20, 2);
    let dev = svm.device(D0).unwrap();
    let free_before = dev.info().free_bytes;
    for round in 0..6u64 {
        let mut r = svm.alloc(64 << 20).unwrap();
        for (i, w) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
            *w = word(i as u64);
        }
        prefer_device(&svm, &r);
        let (base, words) = (r.addr(), r.len() / 8);
        let started = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let launch = s.spawn(|| {
                dev.launch(words / 512, |lane, item| {
                    if item == 8 {
                        started.wait();
                    }
                    lane.read_words(base.offset(item * 512 * 8), 512, |_| {})
                })
            });
            started.wait();
            std::thread::sleep(Duration::from_micros(200 * round));
            drop(r);
            // The kernel either finished first or met the freed range.
            let rep = launch.join().unwrap().unwrap();
            if let Some(f) = rep.fatal {
                assert_eq!(f.reason, FaultReason::Unmanaged, "{f:?}");
            }
        });
        // Whatever fault-ahead had in flight was freed with the region.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dev.info().free_bytes != free_before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            dev.info().free_bytes,
            free_before,
            "round {round}: device pages leaked"
        );
    }
}

#[test]
fn read_words_reads_what_read_slice_reads() {
    let svm = svm(16 << 20, 2);
    let mut r = svm.alloc(3 * BLOCK_SIZE).unwrap();
    for (i, w) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
        *w = word(i as u64);
    }
    // Block 1 on the device, the rest in system memory (mapped in place).
    svm.migrate(
        r.at(BLOCK_SIZE as u64),
        BLOCK_SIZE as u64,
        Location::Device(D0),
    )
    .unwrap();
    let dev = svm.device(D0).unwrap();
    // A range across all three blocks, not page aligned.
    let (first, n) = (BLOCK_SIZE as u64 / 8 - 1001, BLOCK_SIZE as u64 / 8 + 2003);
    let got = std::sync::Mutex::new((Vec::new(), Vec::new()));
    dev.launch(1, |lane, _| {
        let mut words = Vec::new();
        lane.read_words(r.at(first * 8), n, |ws| {
            words.extend(ws.iter().map(|w| w.load(Ordering::Relaxed)))
        })?;
        let mut slice = vec![0u64; n as usize];
        lane.read_slice(r.at(first * 8), &mut slice)?;
        *got.lock().unwrap() = (words, slice);
        Ok(())
    })
    .unwrap()
    .check()
    .unwrap();
    let (words, slice) = got.into_inner().unwrap();
    assert_eq!(words, slice);
    assert!(words
        .iter()
        .enumerate()
        .all(|(k, &w)| w == word(first + k as u64)));

    // A misaligned address is a fatal fault that names it.
    let rep = dev
        .launch(1, |lane, _| lane.read_words(r.at(4), 1, |_| {}))
        .unwrap();
    let f = rep.fatal.expect("fatal fault");
    assert_eq!((f.addr, f.reason), (r.at(4), FaultReason::Misaligned));
}
