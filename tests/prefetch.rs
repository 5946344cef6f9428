//! The density prefetcher (`DeviceHandle::set_prefetch`): on a sweep at
//! 4 KiB fault granularity it grows each migration to the dense part of
//! its block, so the device needs far fewer fault batches, and every byte
//! still reads right.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use svmem::{Attr, DeviceId, EmulatedConfig, Location, MemoryType, Prefetch, Svm, PAGE_SIZE};

const D0: DeviceId = DeviceId(0);
const PAGES: usize = 1024;

/// One lane reads a CPU-written 4 MiB array page by page, last page first
/// (a descending sweep: fault-ahead, which follows ascending ones, stays
/// out). Returns (fault batches, pages migrated to the device).
fn sweep(p: Prefetch) -> (u64, u64) {
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "p".into(),
            memory_bytes: 16 << 20,
            copy_engines: 1,
            memory_type: MemoryType::Private,
            compute_units: 1,
            commit_up_front: false,
        })
        .unwrap()
        .build()
        .unwrap();
    let dev = svm.device(D0).unwrap();
    dev.set_prefetch(p).unwrap();
    assert_eq!(dev.prefetch(), p);
    let mut r = svm.alloc(PAGES * PAGE_SIZE).unwrap();
    for (i, v) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = i as u64;
    }
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[
            Attr::Granularity(0),
            Attr::PreferredLocation(Some(Location::Device(D0))),
        ],
    )
    .unwrap();
    let before = svm.stats();
    let sum = AtomicU64::new(0);
    let words = PAGE_SIZE / 8;
    dev.launch(PAGES as u64, |lane, item| {
        let page = PAGES - 1 - item as usize;
        let mut buf = vec![0u64; words];
        lane.read_slice(r.at((page * PAGE_SIZE) as u64), &mut buf)?;
        sum.fetch_add(buf.iter().sum::<u64>(), Ordering::Relaxed);
        Ok(())
    })
    .unwrap()
    .check()
    .unwrap();
    let n = (PAGES * words) as u64;
    assert_eq!(sum.into_inner(), n * (n - 1) / 2, "{p:?}: data");
    let after = svm.stats();
    (
        after.device_fault_batches - before.device_fault_batches,
        after.to_device_pages - before.to_device_pages,
    )
}

#[test]
fn density_prefetch_cuts_fault_batches_on_a_sweep() {
    let (none, moved_none) = sweep(Prefetch::None);
    let (density, moved_density) = sweep(Prefetch::Density);
    // Without it every page is its own fault; with it each block takes
    // about log2(512) faults.
    assert_eq!(none, PAGES as u64, "one batch per page without prefetch");
    assert!(
        density * 20 < none,
        "density {density} vs none {none} batches"
    );
    assert_eq!(moved_none, PAGES as u64);
    assert_eq!(moved_density, PAGES as u64, "nothing moved twice");
}

#[test]
fn density_prefetch_leaves_scattered_faults_alone() {
    // Alone in its block, a fault migrates its own window only.
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(16 << 20))
        .unwrap()
        .build()
        .unwrap();
    let dev = svm.device(D0).unwrap();
    dev.set_prefetch(Prefetch::Density).unwrap();
    let mut r = svm.alloc(8 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(3);
    svm.set_attributes(r.addr(), r.len(), &[Attr::Granularity(0)])
        .unwrap();
    let before = svm.stats();
    dev.launch(4, |lane, item| {
        let v: u64 = lane.load(r.at(item * (2 << 20) + 4096 * 7))?;
        assert_eq!(v, 3);
        Ok(())
    })
    .unwrap()
    .check()
    .unwrap();
    let after = svm.stats();
    assert_eq!(after.to_device_pages - before.to_device_pages, 4);
}
