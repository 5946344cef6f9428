//! The kernel API's bulk and atomic accesses (issue 12): strided and
//! gathered loads and stores, and the xor/or/and/min/max/float-add atomics,
//! each on system-resident pages (mapped in place), on device-resident
//! pages, across page boundaries, and with faults in the middle of one call.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use svmem::{
    AccessMode, Attr, DeviceFault, DeviceId, FaultReason, Lane, Location, PageView, Region, Svm,
    VirtAddr, PAGE_SIZE,
};

const D0: DeviceId = DeviceId(0);
/// Two 2 MiB blocks: walks cross a block boundary too.
const LEN: usize = 4 << 20;

/// Where the test region's pages are when the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Placement {
    /// XNACK off, access granted: system pages mapped in place.
    System,
    /// XNACK off, access granted, migrated to the device first.
    Device,
    /// XNACK on, first block on the device, second in system memory and not
    /// mapped for the device: every walk that reaches it faults mid-call.
    Faulting,
}

const ALL: [Placement; 3] = [Placement::System, Placement::Device, Placement::Faulting];

fn svm_for(p: Placement) -> Svm {
    Svm::builder()
        .emulated(common::emulated("api", 32 << 20))
        .unwrap()
        .xnack(p == Placement::Faulting)
        .build()
        .unwrap()
}

/// A region of `LEN` bytes holding byte `i` = `common::pattern(i, 7)`,
/// placed as `p` says.
fn region(svm: &Svm, p: Placement) -> Region<'_> {
    let mut r = svm.alloc(LEN).unwrap();
    common::fill(&mut r, 7);
    match p {
        Placement::System | Placement::Device => {
            svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D0, AccessMode::Access)])
                .unwrap();
            if p == Placement::Device {
                svm.migrate(r.addr(), r.len(), Location::Device(D0))
                    .unwrap();
            }
        }
        Placement::Faulting => {
            svm.migrate(r.addr(), (LEN / 2) as u64, Location::Device(D0))
                .unwrap();
        }
    }
    let want = match p {
        Placement::System => [PageView::Writable, PageView::Writable],
        Placement::Device => [PageView::DeviceLocal, PageView::DeviceLocal],
        // (A snapshot shows where a page is, not whether the device maps it.)
        Placement::Faulting => [PageView::DeviceLocal, PageView::Writable],
    };
    let dev = svm.device(D0).unwrap();
    let first = dev.snapshot(r.addr(), 1).unwrap()[0];
    let last = dev.snapshot(r.at(LEN as u64 - 4096), 1).unwrap()[0];
    assert_eq!([first, last], want, "{p:?}: placement before the kernel");
    r
}

/// The CPU's copy of the region's bytes.
fn bytes(r: &Region<'_>) -> Vec<u8> {
    r.as_slice::<u8>().to_vec()
}

/// Runs `f` once on one lane; the launch's fatal fault, if any.
fn one<F>(svm: &Svm, f: F) -> Option<DeviceFault>
where
    F: Fn(&mut Lane<'_>) -> Result<(), DeviceFault> + Sync,
{
    svm.device(D0)
        .unwrap()
        .launch(1, |lane, _| f(lane))
        .unwrap()
        .fatal
}

/// A 24-byte element: with 4096 not a multiple of 24, some straddle pages.
type Rec = [u32; 6];

fn rec_at(b: &[u8], off: usize) -> Rec {
    bytemuck::pod_read_unaligned(&b[off..off + 24])
}

#[test]
fn strided_loads_and_stores_cross_pages_and_blocks() {
    for p in ALL {
        let svm = svm_for(p);
        let r = region(&svm, p);
        let cpu = bytes(&r);
        // Starts 6 bytes before a page end; every value of 8 bytes 4100 bytes
        // apart: they drift across page boundaries and over the block edge.
        let (start, stride, n) = (PAGE_SIZE as u64 - 6, 4100u64, 900usize);
        let got = parking_lot::Mutex::new(vec![0u64; n]);
        let fatal = one(&svm, |lane| {
            let mut out = vec![0u64; n];
            lane.load_strided(r.at(start), stride, &mut out)?;
            *got.lock() = out;
            Ok(())
        });
        assert_eq!(fatal, None, "{p:?}");
        let got = got.into_inner();
        for (i, v) in got.iter().enumerate() {
            let off = (start + i as u64 * stride) as usize;
            let want = u64::from_ne_bytes(cpu[off..off + 8].try_into().unwrap());
            assert_eq!(*v, want, "{p:?}: value {i} at byte {off}");
        }
        assert!(start + (n as u64 - 1) * stride > (LEN / 2) as u64);

        // Store the values back bitwise inverted, 24-byte records this time.
        let (start, stride, n) = (4000u64, 3 * PAGE_SIZE as u64 + 40, 300usize);
        let vals: Vec<Rec> = (0..n as u32)
            .map(|i| [i, !i, i ^ 0x5a5a, i * 3, i + 7, u32::MAX - i])
            .collect();
        let fatal = one(&svm, |lane| lane.store_strided(r.at(start), stride, &vals));
        assert_eq!(fatal, None, "{p:?}");
        let after = bytes(&r);
        let mut expect = cpu.clone();
        for (i, v) in vals.iter().enumerate() {
            let off = (start + i as u64 * stride) as usize;
            expect[off..off + 24].copy_from_slice(bytemuck::bytes_of(v));
        }
        assert!(
            after == expect,
            "{p:?}: strided store changed the wrong bytes"
        );
        assert_eq!(rec_at(&after, 4000 + 5 * (3 * 4096 + 40)), vals[5]);
        if p == Placement::Faulting {
            assert!(svm.stats().device_faults > 0, "{p:?}: the walks faulted");
        }
    }
}

#[test]
fn gathers_and_scatters_follow_their_indices() {
    for p in ALL {
        let svm = svm_for(p);
        let r = region(&svm, p);
        let cpu = bytes(&r);
        let n_recs = LEN / 24;
        // Indices all over both blocks, some repeated, in no order.
        let idx: Vec<u64> = (0..2000u64)
            .map(|i| (i * 7919 + (i % 3) * 100_003) % n_recs as u64)
            .collect();
        let got = parking_lot::Mutex::new(Vec::new());
        let fatal = one(&svm, |lane| {
            let mut out = vec![[0u32; 6]; idx.len()];
            lane.gather::<Rec>(r.addr(), &idx, &mut out)?;
            *got.lock() = out;
            Ok(())
        });
        assert_eq!(fatal, None, "{p:?}");
        for (k, (&j, v)) in idx.iter().zip(got.into_inner().iter()).enumerate() {
            assert_eq!(
                *v,
                rec_at(&cpu, j as usize * 24),
                "{p:?}: gathered value {k}"
            );
        }

        // Scatter: a later repeat of an index wins.
        let idx: Vec<u64> = (0..1500u64).map(|i| (i * 104_729) % 50_000).collect();
        let vals: Vec<u64> = (0..1500u64).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let fatal = one(&svm, |lane| lane.scatter(r.addr(), &idx, &vals));
        assert_eq!(fatal, None, "{p:?}");
        let mut expect = cpu.clone();
        for (&j, v) in idx.iter().zip(&vals) {
            let off = j as usize * 8;
            expect[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        }
        assert!(
            bytes(&r) == expect,
            "{p:?}: scatter changed the wrong bytes"
        );
    }
}

#[test]
fn bad_arguments_are_typed_faults_that_touch_nothing() {
    let svm = svm_for(Placement::System);
    let r = region(&svm, Placement::System);
    let before = bytes(&r);
    let f = one(&svm, |lane| lane.scatter(r.addr(), &[1, 2, 3], &[9u64, 9]))
        .expect("a length mismatch is fatal");
    let FaultReason::Argument(msg) = &f.reason else {
        panic!("{f}");
    };
    assert!(
        msg.contains("3 indices") && msg.contains("2 values"),
        "{msg}"
    );
    assert!(bytes(&r) == before, "nothing was written");

    let f = one(&svm, |lane| {
        let mut out = [0u64; 2];
        lane.load_strided(r.addr(), u64::MAX, &mut out[..])
    })
    .expect("a walk past the address space is fatal");
    assert!(matches!(f.reason, FaultReason::Argument(_)), "{f}");
    assert!(f.to_string().contains("smaller stride"), "{f}");

    let f = one(&svm, |lane| {
        let mut out = [0u64; 1];
        lane.gather(r.addr(), &[u64::MAX / 4], &mut out)
    })
    .expect("an index past the address space is fatal");
    assert!(f.to_string().contains("index"), "{f}");
}

#[test]
fn a_walk_that_leaves_managed_memory_stops_at_the_first_outside_value() {
    for p in [Placement::System, Placement::Faulting] {
        let svm = svm_for(p);
        let r = region(&svm, p);
        // Eight values per MiB from 1 MiB below the end: the 9th is outside.
        let stride = 128u64 << 10;
        let start = LEN as u64 - (1 << 20);
        let vals = [0xabcd_u64; 12];
        let f = one(&svm, |lane| lane.store_strided(r.at(start), stride, &vals))
            .expect("fatal outside managed memory");
        assert_eq!(f.reason, FaultReason::Unmanaged, "{p:?}: {f}");
        assert_eq!(f.addr, VirtAddr(r.addr().0 + start + 8 * stride), "{p:?}");
        // The values before the fault were stored, in order.
        let w = r.as_slice::<u64>();
        for i in 0..8u64 {
            assert_eq!(w[((start + i * stride) / 8) as usize], 0xabcd, "{p:?}: {i}");
        }
    }
}

#[test]
fn bitwise_min_max_and_float_atomics_from_all_lanes() {
    const N: u64 = 4000;
    for p in ALL {
        let svm = svm_for(p);
        let r = region(&svm, p);
        // Words on both blocks (the second faults in Faulting mode).
        let words: Vec<VirtAddr> = [0u64, 8, 16, 24, 32, 40, 48]
            .iter()
            .map(|&o| r.at(o + 3 * (1 << 20)))
            .collect();
        let init = [0u64, 0, u64::MAX, u64::MAX, 0, 0, 0];
        let view = svm.device(D0).unwrap();
        view.launch(1, |lane, _| {
            for (a, v) in words.iter().zip(init) {
                lane.store(*a, v)?;
            }
            lane.store(words[6], 0.0f64)?;
            lane.store(words[5], 0.0f32)
        })
        .unwrap()
        .check()
        .unwrap();
        let rep = view
            .launch(N, |lane, i| {
                lane.atomic_xor_u64(words[0], i * 0x0101_0101)?;
                lane.atomic_or_u64(words[1], 1 << (i % 61))?;
                lane.atomic_and_u64(words[2], !(1 << (i % 37)))?;
                lane.atomic_min_u64(words[3], (i * 7919) % 100_003 + 11)?;
                lane.atomic_max_u64(words[4], (i * 7919) % 100_003)?;
                lane.atomic_add_f32(words[5], 1.0)?;
                lane.atomic_add_f64(words[6], 0.25)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(rep.fatal, None, "{p:?}");
        let xor = (0..N).fold(0, |a, i| a ^ (i * 0x0101_0101));
        let or = (0..N).fold(0u64, |a, i| a | 1 << (i % 61));
        let and = (0..N).fold(u64::MAX, |a, i| a & !(1 << (i % 37)));
        let min = (0..N).map(|i| (i * 7919) % 100_003 + 11).min().unwrap();
        let max = (0..N).map(|i| (i * 7919) % 100_003).max().unwrap();
        let w = r.as_slice::<u64>();
        let base = 3 * (1 << 20) / 8;
        assert_eq!(w[base], xor, "{p:?} xor");
        assert_eq!(w[base + 1], or, "{p:?} or");
        assert_eq!(w[base + 2], and, "{p:?} and");
        assert_eq!(w[base + 3], min, "{p:?} min");
        assert_eq!(w[base + 4], max, "{p:?} max");
        assert_eq!(
            f32::from_bits(w[base + 5] as u32),
            N as f32,
            "{p:?} f32 add"
        );
        assert_eq!(f64::from_bits(w[base + 6]), N as f64 / 4.0, "{p:?} f64 add");
        drop(w);
        let f = one(&svm, |lane| {
            lane.atomic_min_u64(words[0].offset(4), 1).map(|_| ())
        })
        .expect("misaligned");
        assert_eq!(f.reason, FaultReason::Misaligned);
    }
}

/// An `Svm` with XNACK on and `lanes` compute units.
fn svm_lanes(lanes: usize) -> Svm {
    let mut cfg = common::emulated("steps", 32 << 20);
    cfg.compute_units = lanes;
    Svm::builder().emulated(cfg).unwrap().build().unwrap()
}

#[test]
fn a_persistent_launch_runs_its_steps_in_order_with_a_barrier_between() {
    let svm = svm_lanes(3);
    let n = 5000u64;
    let mut x = svm.alloc(2 * n as usize * 8).unwrap();
    let init: Vec<u64> = (0..n).map(|i| i * 1000).collect();
    x.as_mut_slice::<u64>()[..n as usize].copy_from_slice(&init);
    let (src0, dst0) = (x.addr(), x.at(n * 8));
    const STEPS: u64 = 9;
    let seen = parking_lot::Mutex::new(Vec::new());
    let launches = svm.stats().kernel_launches;
    // Step s shifts the array by one into the other half, plus one: with
    // a barrier between steps, after S steps x[i] = init[(i + S) mod n] + S.
    let rep = svm
        .device(D0)
        .unwrap()
        .launch_steps(
            n,
            |lane, step, i| {
                let (src, dst) = if step % 2 == 0 {
                    (src0, dst0)
                } else {
                    (dst0, src0)
                };
                let v: u64 = lane.load(src.offset((i + 1) % n * 8))?;
                lane.store(dst.offset(i * 8), v + 1)
            },
            |lane, step| {
                // Every item of the step is visible to the one lane here.
                let dst = if step % 2 == 0 { dst0 } else { src0 };
                seen.lock().push(lane.load::<u64>(dst)?);
                Ok((step + 1 < STEPS).then_some(n))
            },
        )
        .unwrap();
    assert_eq!(rep.fatal, None);
    assert_eq!((rep.grid, rep.items_done), (STEPS * n, STEPS * n));
    assert_eq!(svm.stats().kernel_launches, launches + 1, "one launch");
    let want: Vec<u64> = (1..=STEPS).map(|s| init[s as usize] + s).collect();
    assert_eq!(seen.into_inner(), want);
    let out = if STEPS % 2 == 1 { n as usize } else { 0 };
    let w = x.as_slice::<u64>();
    for i in 0..n as usize {
        let expect = init[(i + STEPS as usize) % n as usize] + STEPS;
        assert_eq!(w[out + i], expect, "x[{i}]");
    }
}

#[test]
fn a_fault_in_a_step_or_between_steps_stops_a_persistent_launch() {
    let svm = svm_lanes(3);
    let x = svm.alloc(1 << 20).unwrap();
    let dev = svm.device(D0).unwrap();
    // A lane faults in step 2 while the others wait at the barrier.
    let rep = dev
        .launch_steps(
            300,
            |lane, step, i| {
                if step == 2 && i == 77 {
                    lane.load::<u64>(VirtAddr(8)).map(|_| ())
                } else {
                    lane.store(x.at(i * 8), step)
                }
            },
            |_, step| Ok((step < 5).then_some(300)),
        )
        .unwrap();
    let f = rep.fatal.clone().expect("fatal");
    assert_eq!((f.reason, f.addr), (FaultReason::Unmanaged, VirtAddr(8)));
    assert!(rep.items_done >= 600 && rep.items_done < 900, "{rep:?}");
    // `next` faults: the launch ends after step 0.
    let rep = dev
        .launch_steps(
            100,
            |lane, _, i| lane.store(x.at(i * 8), 1u64),
            |lane, _| lane.load::<u64>(VirtAddr(16)).map(|_| Some(100)),
        )
        .unwrap();
    assert_eq!(rep.fatal.map(|f| f.addr), Some(VirtAddr(16)));
    assert_eq!(rep.items_done, 100);
}

#[test]
fn work_groups_share_zeroed_scratch_across_a_barrier() {
    for (lanes, size) in [(2, 4), (4, 2), (3, 1), (2, 16)] {
        let svm = svm_lanes(lanes);
        let groups = 37u64;
        let per = 1000u64;
        let mut data = svm.alloc((groups * per * 8) as usize).unwrap();
        let out = svm.alloc(groups as usize * 8).unwrap();
        for (i, v) in data.as_mut_slice::<u64>().iter_mut().enumerate() {
            *v = (i as u64).wrapping_mul(0x9e37_79b9) >> 7;
        }
        let (pd, po) = (data.addr(), out.addr());
        let rep = svm
            .device(D0)
            .unwrap()
            .launch_groups(groups, size, size, |lane, g| {
                let me = g.local_id();
                // Scratch starts zeroed for every group.
                assert_eq!(g.local()[me].load(Ordering::Relaxed), 0);
                let chunk = per.div_ceil(g.size() as u64);
                let lo = (g.id() * per + me as u64 * chunk).min((g.id() + 1) * per);
                let hi = (lo + chunk).min((g.id() + 1) * per);
                let mut v = vec![0u64; (hi - lo) as usize];
                lane.read_slice(pd.offset(lo * 8), &mut v)?;
                let s = v.iter().fold(0u64, |a, x| a.wrapping_add(*x));
                g.local()[me].store(s + 1, Ordering::Relaxed);
                g.barrier()?;
                // Every lane sees every other lane's partial sum.
                let all: Vec<u64> = g
                    .local()
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed))
                    .collect();
                assert!(all.iter().all(|&w| w != 0), "{all:?}");
                if me == 0 {
                    let total = all.iter().fold(0u64, |a, w| a.wrapping_add(w - 1));
                    lane.store(po.offset(g.id() * 8), total)?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(rep.fatal, None);
        assert_eq!(rep.items_done, groups, "lanes {lanes} size {size}");
        let d = data.as_slice::<u64>();
        let o = out.as_slice::<u64>();
        for g in 0..groups as usize {
            let want = d[g * per as usize..(g + 1) * per as usize]
                .iter()
                .fold(0u64, |a, x| a.wrapping_add(*x));
            assert_eq!(o[g], want, "lanes {lanes} size {size} group {g}");
        }
    }
}

#[test]
fn a_faulting_group_lane_releases_its_waiting_peers() {
    let svm = svm_lanes(2);
    let dev = svm.device(D0).unwrap();
    let rep = dev
        .launch_groups(10, 4, 0, |lane, g| {
            if g.id() == 3 && g.local_id() == 2 {
                lane.load::<u64>(VirtAddr(64))?;
            }
            g.barrier()
        })
        .unwrap();
    assert_eq!(rep.fatal.map(|f| f.addr), Some(VirtAddr(64)));
    assert!(rep.items_done < 10);
    for (size, words) in [(0, 1), (65, 1), (4, 1 << 20)] {
        let e = dev
            .launch_groups(1, size, words, |_, _| Ok(()))
            .expect_err("refused");
        assert!(e.to_string().contains("use"), "{e}");
    }
}
