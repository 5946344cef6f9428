//! Device kernels and CPU threads writing distinct words of the same pages
//! concurrently, while a migrator moves the pages both ways; at the end every
//! word holds its last written value (DESIGN.md §3, invariant 4).
//!
//! Runs a few seconds per mode. The long variant (~60 s per mode):
//! `cargo test --release --test kernel_stress -- --ignored`

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use svmem::{
    AccessMode, Attr, DeviceId, EmulatedConfig, Location, MemoryType, Svm, BLOCK_SIZE, PAGE_SIZE,
};

const D0: DeviceId = DeviceId(0);
/// Word owners: CPU threads 0..CPU, then the device kernel.
const CPU: u64 = 2;
const OWNERS: u64 = CPU + 1;

fn value(round: u64, word: u64) -> u64 {
    round << 32 | word
}

fn run(xnack: bool, granularity: u8, duration: Duration) {
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "stress".into(),
            memory_bytes: 32 << 20,
            copy_engines: 1,
            memory_type: MemoryType::Private,
            compute_units: 2,
            commit_up_front: false,
        })
        .unwrap()
        .xnack(xnack)
        .build()
        .unwrap();
    let len = 6 * BLOCK_SIZE + 5 * PAGE_SIZE;
    let mut region = svm.alloc(len).unwrap();
    region.set_granularity(granularity).unwrap();
    let r = common::SharedRegion::new(&mut region);
    if !xnack {
        svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D0, AccessMode::Access)])
            .unwrap();
    }
    let words = (len / 8) as u64;
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let dev_rounds = std::thread::scope(|s| {
        for t in 0..CPU {
            let (r, stop) = (&r, &stop);
            s.spawn(move || {
                let v = r.as_atomic_u64();
                let mut round = 1;
                while !stop.load(Ordering::Relaxed) {
                    for w in (t..words).step_by(OWNERS as usize * 7) {
                        v[w as usize].store(value(round, w), Ordering::Relaxed);
                    }
                    round += 1;
                }
                // Final round over every owned word.
                for w in (t..words).step_by(OWNERS as usize) {
                    v[w as usize].store(value(u32::MAX as u64, w), Ordering::Relaxed);
                }
            });
        }
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let blocks = len.div_ceil(BLOCK_SIZE) as u64;
                let b = i % blocks;
                let at = b * BLOCK_SIZE as u64;
                let n = (BLOCK_SIZE as u64).min(r.len() - at);
                let to = if i % 2 == 0 {
                    Location::Device(D0)
                } else {
                    Location::System
                };
                svm.migrate(r.at(at), n, to).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let dev = svm.device(D0).unwrap();
        let own = words / OWNERS;
        let mut round = 1u64;
        while start.elapsed() < duration {
            let rep = dev
                .launch(own.div_ceil(64), |lane, item| {
                    for k in item * 64..((item + 1) * 64).min(own) {
                        let w = k * OWNERS + CPU;
                        if w < words {
                            lane.store::<u64>(r.at(w * 8), value(round, w))?;
                        }
                    }
                    Ok(())
                })
                .unwrap();
            if rep.fatal.is_some() {
                stop.store(true, Ordering::Relaxed);
                panic!("round {round}: {:?}", rep.fatal);
            }
            round += 1;
        }
        // Final device round, then stop the others.
        let rep = dev
            .launch(own.div_ceil(64), |lane, item| {
                for k in item * 64..((item + 1) * 64).min(own) {
                    let w = k * OWNERS + CPU;
                    if w < words {
                        lane.store::<u64>(r.at(w * 8), value(u32::MAX as u64, w))?;
                    }
                }
                Ok(())
            })
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(rep.fatal.is_none(), "{:?}", rep.fatal);
        round
    });
    assert!(dev_rounds > 1);
    // Every word, read by the CPU and through the device.
    let v = r.as_atomic_u64();
    for w in 0..words {
        assert_eq!(
            v[w as usize].load(Ordering::Relaxed),
            value(u32::MAX as u64, w),
            "word {w} (owner {}) seen by the CPU",
            w % OWNERS
        );
    }
    svm.migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    let bad = std::sync::atomic::AtomicU64::new(u64::MAX);
    svm.device(D0)
        .unwrap()
        .launch(words, |lane, w| {
            if lane.load::<u64>(r.at(w * 8))? != value(u32::MAX as u64, w) {
                bad.fetch_min(w, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(
        bad.into_inner(),
        u64::MAX,
        "first word wrong through the device"
    );
}

#[test]
fn kernels_and_cpu_threads_retry_mode() {
    run(true, 9, Duration::from_secs(2));
}

#[test]
fn kernels_and_cpu_threads_retry_mode_page_granularity() {
    run(true, 0, Duration::from_secs(2));
}

#[test]
fn kernels_and_cpu_threads_no_retry_mode() {
    run(false, 9, Duration::from_secs(2));
}

#[test]
#[ignore = "long run (~60 s per mode): cargo test --release --test kernel_stress -- --ignored"]
fn kernels_and_cpu_threads_long() {
    run(true, 9, Duration::from_secs(30));
    run(false, 4, Duration::from_secs(30));
}
