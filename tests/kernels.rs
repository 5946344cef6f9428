//! Device kernels on the emulated device: retry (XNACK on) and no-retry
//! (XNACK off) faults, atomics, fatal faults, queue eviction and restore.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use svmem::{
    AccessKind, AccessMode, Attr, AttrFlags, DeviceId, EmulatedConfig, FaultReason, Location,
    MemoryType, Svm,
};

const D0: DeviceId = DeviceId(0);

fn svm(xnack: bool, device_mib: u64) -> Svm {
    Svm::builder()
        .emulated(EmulatedConfig {
            name: "k".into(),
            memory_bytes: device_mib << 20,
            copy_engines: 1,
            memory_type: MemoryType::Private,
            compute_units: 3,
            commit_up_front: false,
        })
        .expect("device")
        .xnack(xnack)
        .build()
        .expect("svm")
}

/// CPU fills, device kernel computes y = 2x + 1 into a second array, CPU checks.
fn scale_workload(svm: &Svm, n: usize) -> (u64, Vec<u64>) {
    let mut x = svm.alloc(n * 8).expect("x");
    let y = svm.alloc(n * 8).expect("y");
    for (i, v) in x.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = i as u64 * 3;
    }
    if !svm.xnack() {
        for r in [&x, &y] {
            svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D0, AccessMode::Access)])
                .expect("grant access");
        }
    }
    let per_item = 512usize;
    let rep = svm
        .device(D0)
        .unwrap()
        .launch(n.div_ceil(per_item) as u64, |lane, item| {
            let lo = item as usize * per_item;
            let hi = (lo + per_item).min(n);
            let mut buf = vec![0u64; hi - lo];
            lane.read_slice(x.at(lo as u64 * 8), &mut buf)?;
            for v in &mut buf {
                *v = *v * 2 + 1;
            }
            lane.write_slice(y.at(lo as u64 * 8), &buf)
        })
        .expect("launch")
        .check()
        .expect("no fatal fault");
    let out = y.as_slice::<u64>().to_vec();
    (rep.faults, out)
}

#[test]
fn retry_and_no_retry_modes_compute_the_same() {
    let n = 3 << 18; // 6 MiB per array
    let on = svm(true, 64);
    let (faults_on, y_on) = scale_workload(&on, n);
    let off = svm(false, 64);
    let (faults_off, y_off) = scale_workload(&off, n);
    for (i, v) in y_on.iter().enumerate() {
        assert_eq!(*v, i as u64 * 6 + 1, "retry mode, element {i}");
    }
    assert_eq!(y_on, y_off);
    assert!(faults_on > 0, "retry mode services faults");
    assert_eq!(
        faults_off, 0,
        "no-retry mode never faults: ranges were mapped ahead"
    );
    assert!(on.stats().device_fault_batches > 0);
    assert_eq!(off.stats().device_faults, 0);
}

#[test]
fn no_retry_mode_without_access_is_a_fatal_fault_with_its_address() {
    let svm = svm(false, 16);
    let r = svm.alloc(1 << 20).unwrap();
    let rep = svm
        .device(D0)
        .unwrap()
        .launch(4, |lane, i| lane.store::<u64>(r.at(i * 4096 + 8), 7))
        .unwrap();
    let f = rep.fatal.clone().expect("fatal fault");
    assert_eq!(f.reason, FaultReason::NoTranslation);
    assert_eq!(f.kind, AccessKind::Write);
    assert_eq!(f.addr.0 % 4096, 8);
    assert!(rep.clone().check().is_err());
    // The CPU side is unaffected.
    assert_eq!(r.as_slice::<u64>()[1], 0);
    assert!(svm.stats().device_faults_fatal >= 1);
}

#[test]
fn retry_mode_preferred_device_migrates_on_fault() {
    let svm = svm(true, 32);
    let mut r = svm.alloc(4 << 20).unwrap();
    r.as_mut_slice::<u32>().fill(5);
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[Attr::PreferredLocation(Some(Location::Device(D0)))],
    )
    .unwrap();
    let sum = std::sync::atomic::AtomicU64::new(0);
    svm.device(D0)
        .unwrap()
        .launch(1024, |lane, i| {
            let v: u32 = lane.load(r.at(i * 4096))?;
            sum.fetch_add(v as u64, Ordering::Relaxed);
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(sum.into_inner(), 5 * 1024);
    assert_eq!(svm.location(r.addr()), Some(Location::Device(D0)));
    assert!(svm.stats().to_device_pages >= 512);
}

#[test]
fn atomics_from_all_lanes_add_up() {
    for xnack in [true, false] {
        let svm = svm(xnack, 16);
        let r = svm.alloc(8192).unwrap();
        if !xnack {
            svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D0, AccessMode::Access)])
                .unwrap();
        }
        let dev = svm.device(D0).unwrap();
        dev.launch(10_000, |lane, i| {
            lane.atomic_add_u64(r.at(0), 1)?;
            lane.atomic_add_u32(r.at(8), 2)?;
            // A lock-free max via compare-exchange.
            let mut cur: u64 = lane.load(r.at(16))?;
            while cur < i {
                match lane.compare_exchange_u64(r.at(16), cur, i)? {
                    Ok(_) => break,
                    Err(actual) => cur = actual,
                }
            }
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
        {
            // A CPU view bars device writes while it lives: drop it before
            // the next launch.
            let w = r.as_slice::<u64>();
            assert_eq!(w[0], 10_000, "xnack {xnack}");
            assert_eq!(w[1] & 0xffff_ffff, 20_000, "xnack {xnack}");
            assert_eq!(w[2], 9_999, "xnack {xnack}");
        }
        // Same again with the page in device memory.
        svm.migrate(r.addr(), r.len(), Location::Device(D0))
            .unwrap();
        dev.launch(1000, |lane, _| lane.atomic_add_u64(r.at(0), 1).map(|_| ()))
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(r.as_slice::<u64>()[0], 11_000);
        let misaligned = dev
            .launch(1, |lane, _| lane.atomic_add_u64(r.at(4), 1).map(|_| ()))
            .unwrap();
        assert_eq!(misaligned.fatal.unwrap().reason, FaultReason::Misaligned);
    }
}

#[test]
fn outside_managed_memory_is_fatal() {
    let svm = svm(true, 16);
    let r = svm.alloc(4096).unwrap();
    let rep = svm
        .device(D0)
        .unwrap()
        .launch(1, |lane, _| lane.load::<u8>(r.at(4096 * 1000)).map(|_| ()))
        .unwrap();
    assert_eq!(rep.fatal.unwrap().reason, FaultReason::Unmanaged);
}

#[test]
fn device_read_only_flag_makes_device_writes_fail() {
    let svm = svm(true, 16);
    let mut r = svm.alloc(1 << 20).unwrap();
    r.as_mut_slice::<u8>().fill(9);
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[Attr::SetFlags(AttrFlags::DEVICE_READ_ONLY)],
    )
    .unwrap();
    let dev = svm.device(D0).unwrap();
    let rd = dev
        .launch(1, |lane, _| {
            assert_eq!(lane.load::<u8>(r.at(100))?, 9);
            Ok(())
        })
        .unwrap();
    assert!(rd.fatal.is_none());
    let wr = dev
        .launch(1, |lane, _| lane.store::<u8>(r.at(100), 1))
        .unwrap();
    let f = wr.fatal.expect("write refused");
    assert_eq!(f.kind, AccessKind::Write);
    assert!(matches!(f.reason, FaultReason::Policy(_)), "{f}");
    assert_eq!(r.as_slice::<u8>()[100], 9, "memory untouched");
}

/// XNACK off: a kernel keeps incrementing words of a range while a CPU
/// thread keeps migrating that range to the device and touching it back.
/// Every invalidation evicts the queues; the restore worker maps again; no
/// increment is lost.
#[test]
fn queue_eviction_and_restore_while_cpu_touches_pages() {
    let svm = svm(false, 64);
    let mut region = svm.alloc(4 << 20).unwrap();
    let r = common::SharedRegion::new(&mut region);
    svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D0, AccessMode::Access)])
        .unwrap();
    let words = 64u64;
    let rounds = 40u64;
    let stop = AtomicBool::new(false);
    let cycles = AtomicU64::new(0);
    let mut launches = 0u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = svm.migrate(r.addr(), r.len(), Location::Device(D0));
                // CPU touches (reads) pages the kernel uses: faults them back.
                let v = r.as_atomic_u64();
                let _ = v[((k % words) * 512 + 3) as usize].load(Ordering::Relaxed);
                k += 1;
                cycles.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(300));
            }
        });
        // Keep launching until the migrator has invalidated the range many
        // times: on a loaded machine one launch can finish before the
        // migrator thread is first scheduled.
        while cycles.load(Ordering::Relaxed) < 20 || launches < 4 {
            let rep = svm
                .device(D0)
                .unwrap()
                .launch(words * rounds, |lane, i| {
                    let w = i % words;
                    lane.atomic_add_u64(r.at(w * 4096 * 8), 1).map(|_| ())
                })
                .unwrap();
            assert!(rep.fatal.is_none(), "{:?}", rep.fatal);
            launches += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let v = r.as_atomic_u64();
    for w in 0..words {
        assert_eq!(
            v[(w * 4096) as usize].load(Ordering::Relaxed),
            rounds * launches,
            "word {w}"
        );
    }
    let st = svm.stats();
    assert!(st.queue_evictions > 0, "{st:?}");
    assert!(st.queue_restores > 0, "{st:?}");
}

/// Retry mode with the always-mapped flag: the range is mapped ahead (no
/// faults), and an invalidation evicts the queues until the restore worker
/// maps it again, exactly as with XNACK off.
#[test]
fn always_mapped_in_retry_mode_maps_ahead_and_restores() {
    let svm = svm(true, 16);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(1);
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[Attr::SetFlags(AttrFlags::ALWAYS_MAPPED)],
    )
    .unwrap();
    let dev = svm.device(D0).unwrap();
    let rep = dev
        .launch(512, |lane, p| lane.load::<u64>(r.at(p * 4096)).map(|_| ()))
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(rep.faults, 0, "mapped ahead");
    // Migrating the range invalidates its system-memory mappings: eviction,
    // then a restore that maps the new (device) location.
    svm.migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while svm.stats().queue_restores == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = svm.stats();
    assert!(st.queue_evictions >= 1 && st.queue_restores >= 1, "{st:?}");
    let rep = dev
        .launch(512, |lane, p| lane.store::<u64>(r.at(p * 4096), 2))
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(rep.faults, 0);
    assert_eq!(r.as_slice::<u64>()[512], 2);
}
