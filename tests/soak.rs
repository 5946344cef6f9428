//! A long randomized soak: allocations, frees, CPU writes, device writes and
//! kernels, migrations both ways, pins, evictions (two small devices), copy
//! failures injected around migrations, and graceful device resets, with a
//! shadow copy of every word the soak wrote and a full data check at the end
//! (and every few hundred steps). Ignored by default; run it with
//!
//! ```text
//! SVMEM_SOAK_SECS=600 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! (`SVMEM_SOAK_SECS` defaults to 60; `SVMEM_SOAK_SEED` picks the seed.)
//! Failures are injected only around explicit migrations, never while the
//! CPU may fault a page back: a failed CPU-fault back-migration poisons the
//! page by design (SIGBUS), which `tests/failures.rs` checks in a child
//! process.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Rng;
use svmem::{CopyFailure, DeviceId, EmulatedConfig, Injection, Location, Region, Svm, PAGE_SIZE};

const DEVS: [DeviceId; 2] = [DeviceId(0), DeviceId(1)];
const PG: u64 = PAGE_SIZE as u64;

struct Live<'s> {
    region: Region<'s>,
    /// Word index → value the soak last stored there (others are zero).
    shadow: HashMap<u64, u64>,
    pinned: u32,
}

fn check(l: &Live<'_>, when: &str) {
    let words = l.region.as_slice::<u64>();
    for (i, w) in words.iter().enumerate() {
        let want = l.shadow.get(&(i as u64)).copied().unwrap_or(0);
        assert_eq!(*w, want, "{when}: word {i} of region {}", l.region.addr());
    }
}

#[test]
#[ignore = "long soak; see the module docs for the command"]
fn randomized_soak_loses_nothing() {
    let secs: u64 = std::env::var("SVMEM_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SVMEM_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x50a4_5eed);
    let mut builder = Svm::builder();
    for d in 0..2 {
        builder = builder
            .emulated(EmulatedConfig {
                name: format!("soak{d}"),
                ..EmulatedConfig::with_memory(8 << 20)
            })
            .unwrap();
    }
    let svm = builder.build().unwrap();
    let idle = svm.memory_usage();
    let mut rng = Rng::new(seed);
    let mut live: Vec<Live<'_>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut steps = 0u64;
    let mut ops = [0u64; 10];
    while Instant::now() < deadline {
        steps += 1;
        let op = if live.is_empty() {
            0
        } else {
            rng.below_u64(10)
        };
        ops[op as usize] += 1;
        match op {
            // Allocate 4 KiB .. 6 MiB (at most 8 live regions).
            0 if live.len() < 8 => {
                let pages = 1 + rng.below_u64(1536);
                let region = svm.alloc((pages * PG) as usize).unwrap();
                live.push(Live {
                    region,
                    shadow: HashMap::new(),
                    pinned: 0,
                });
            }
            // Free one (checked first).
            1 if live.len() > 2 => {
                let l = live.swap_remove(rng.below_u64(live.len() as u64) as usize);
                check(&l, "before free");
            }
            // CPU writes a few words.
            2 => {
                let k = rng.below_u64(live.len() as u64) as usize;
                let l = &mut live[k];
                let n = l.region.len() / 8;
                for _ in 0..1 + rng.below_u64(64) {
                    let (i, v) = (rng.below_u64(n), rng.next());
                    l.region.as_mut_slice::<u64>()[i as usize] = v;
                    l.shadow.insert(i, v);
                }
            }
            // A device writes a few words.
            3 => {
                let d = DEVS[rng.below_u64(2) as usize];
                let k = rng.below_u64(live.len() as u64) as usize;
                let l = &mut live[k];
                let n = l.region.len() / 8;
                for _ in 0..1 + rng.below_u64(16) {
                    let (i, v) = (rng.below_u64(n), rng.next());
                    svm.device(d)
                        .unwrap()
                        .write(l.region.at(i * 8), &v.to_ne_bytes())
                        .unwrap();
                    l.shadow.insert(i, v);
                }
            }
            // A kernel adds 1 to word 0 of every page of a range.
            4 => {
                let d = DEVS[rng.below_u64(2) as usize];
                let k = rng.below_u64(live.len() as u64) as usize;
                let l = &mut live[k];
                let pages = l.region.npages() as u64;
                let first = rng.below_u64(pages);
                let count = 1 + rng.below_u64((pages - first).min(1024));
                let base = l.region.at(first * PG);
                svm.device(d)
                    .unwrap()
                    .launch(count, |lane, p| {
                        lane.atomic_add_u64(base.offset(p * PG), 1).map(|_| ())
                    })
                    .unwrap()
                    .check()
                    .unwrap();
                for p in first..first + count {
                    *l.shadow.entry(p * 512).or_insert(0) += 1;
                }
            }
            // Migrate a range to a device or back (oversubscribing the devices).
            5 | 6 => {
                let k = rng.below_u64(live.len() as u64) as usize;
                let l = &live[k];
                let pages = l.region.npages() as u64;
                let first = rng.below_u64(pages);
                let count = 1 + rng.below_u64((pages - first).min(1536));
                let to = if op == 5 {
                    Location::Device(DEVS[rng.below_u64(2) as usize])
                } else {
                    Location::System
                };
                let rep = svm
                    .migrate(l.region.at(first * PG), count * PG, to)
                    .unwrap();
                assert_eq!(rep.requested, count);
            }
            // The same under injected copy failures: rolled back, nothing lost.
            7 => {
                let d = DEVS[rng.below_u64(2) as usize];
                let dev = svm.device(d).unwrap();
                let copy = match rng.below_u64(3) {
                    0 => CopyFailure::EveryNth(1 + rng.below_u64(3)),
                    1 => CopyFailure::Probability {
                        p: 0.5,
                        seed: rng.next(),
                    },
                    _ => CopyFailure::After(rng.below_u64(3)),
                };
                dev.inject(Injection {
                    copy,
                    alloc_fails: rng.below_u64(4) == 0,
                })
                .unwrap();
                let k = rng.below_u64(live.len() as u64) as usize;
                let l = &live[k];
                let n = l.region.len().min(4 << 20);
                let _ = svm
                    .migrate(l.region.addr(), n, Location::Device(d))
                    .unwrap();
                let _ = svm.migrate(l.region.addr(), n, Location::System).unwrap();
                dev.clear_injection().unwrap();
            }
            // Pin or unpin a whole region.
            8 => {
                let k = rng.below_u64(live.len() as u64) as usize;
                let l = &mut live[k];
                if l.pinned > 0 && rng.below_u64(2) == 0 {
                    svm.unpin(l.region.addr(), l.region.len()).unwrap();
                    l.pinned -= 1;
                } else if l.pinned < 3 {
                    svm.pin(l.region.addr(), l.region.len()).unwrap();
                    l.pinned += 1;
                }
            }
            // Rarely: a graceful reset of one device.
            9 if rng.below_u64(20) == 0 => {
                svm.reset_device(DEVS[rng.below_u64(2) as usize]).unwrap();
            }
            _ => {}
        }
        if steps % 500 == 0 {
            for l in &live {
                check(l, &format!("step {steps}"));
            }
        }
    }
    for l in &live {
        check(l, "end");
    }
    let st = svm.stats();
    eprintln!("soak: {steps} steps, ops {ops:?}, {st:?}");
    assert_eq!(st.poisoned_pages, 0);
    assert_eq!(st.protocol_errors, 0);
    assert!(
        st.evictions > 0,
        "the soak should oversubscribe the devices"
    );
    drop(live);
    let u = svm.memory_usage();
    assert_eq!(u.managed_bytes, 0);
    assert_eq!(u.metadata_bytes, idle.metadata_bytes);
    for d in &u.devices {
        assert_eq!(d.free_bytes, d.capacity_bytes);
    }
}
