//! Pinning: pinned pages come back from devices and stay in system memory;
//! migrations skip them, device accesses and kernels map them in place;
//! pins nest; every error leaves the pin counts as they were.

#![allow(clippy::unwrap_used)]

use svmem::{
    AccessMode, Attr, DeviceId, EmulatedConfig, Error, Location, MemoryType, Svm, VirtAddr,
};

const D0: DeviceId = DeviceId(0);
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn builder(xnack: bool) -> svmem::SvmBuilder {
    Svm::builder()
        .emulated(EmulatedConfig {
            name: "p".into(),
            memory_bytes: 16 * MIB,
            copy_engines: 1,
            memory_type: MemoryType::Private,
            compute_units: 3,
            commit_up_front: false,
        })
        .unwrap()
        .memory_limit(1 << 40)
        .xnack(xnack)
}

fn svm() -> Svm {
    builder(true).build().unwrap()
}

fn locations(svm: &Svm, at: VirtAddr, pages: u64) -> Vec<Option<Location>> {
    (0..pages)
        .map(|i| svm.location(at.offset(i * PAGE)))
        .collect()
}

fn all_system(svm: &Svm, at: VirtAddr, pages: u64) -> bool {
    locations(svm, at, pages)
        .iter()
        .all(|l| *l == Some(Location::System))
}

#[test]
fn pin_pulls_pages_back_and_they_stay_while_devices_use_them() {
    let svm = svm();
    let mut r = svm.alloc(4 * MIB as usize).unwrap();
    for (i, v) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = i as u64;
    }
    let rep = svm
        .migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!(rep.migrated, 1024);

    svm.pin(r.addr(), r.len()).unwrap();
    assert!(all_system(&svm, r.addr(), 1024));
    let u = svm.memory_usage();
    assert_eq!(u.pinned_bytes, 4 * MIB);
    assert_eq!(u.device_bytes, 0);
    assert_eq!(u.devices[0].free_bytes, u.devices[0].capacity_bytes);
    assert_eq!(svm.pin_count(r.at(8 * PAGE)), 1);

    // Explicit migrations and prefetches skip every pinned page.
    let rep = svm
        .migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!((rep.migrated, rep.skipped_pinned), (0, 1024));
    assert_eq!(svm.stats().skipped_pinned, 1024);
    let rep = svm
        .prefetch(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!((rep.migrated, rep.skipped_pinned), (0, 1024));
    // The prefetch location and a preferred location stay hints.
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[Attr::PreferredLocation(Some(Location::Device(D0)))],
    )
    .unwrap();
    assert!(all_system(&svm, r.addr(), 1024));

    // Device accesses map system memory in place.
    let dev = svm.device(D0).unwrap();
    let mut word = [0u8; 8];
    dev.read(r.at(8 * 1000), &mut word).unwrap();
    assert_eq!(u64::from_ne_bytes(word), 1000);
    dev.write(r.at(8 * 1001), &7u64.to_ne_bytes()).unwrap();
    assert_eq!(r.as_slice::<u64>()[1001], 7);

    // So do device faults of a kernel: they are served, not fatal, and
    // nothing migrates.
    let to_device = svm.stats().to_device_pages;
    let rep = dev
        .launch(1024, |lane, i| {
            let a = r.at(i * PAGE);
            let v: u64 = lane.load(a)?;
            lane.store::<u64>(a, v * 2)
        })
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(rep.items_done, 1024);
    assert!(rep.faults > 0, "the kernel faulted on unmapped pages");
    assert_eq!(svm.stats().to_device_pages, to_device);
    assert!(all_system(&svm, r.addr(), 1024));
    for i in 0..1024usize {
        assert_eq!(r.as_slice::<u64>()[i * 512], i as u64 * 512 * 2, "page {i}");
    }
}

#[test]
fn pinned_pages_are_mapped_in_place_with_retry_faults_off() {
    let svm = builder(false).build().unwrap();
    let mut r = svm.alloc(2 * MIB as usize).unwrap();
    r.as_mut_slice::<u64>().fill(3);
    svm.pin(r.addr(), r.len()).unwrap();
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[
            Attr::Access(D0, AccessMode::Access),
            Attr::PreferredLocation(Some(Location::Device(D0))),
        ],
    )
    .unwrap();
    let rep = svm
        .device(D0)
        .unwrap()
        .launch(512, |lane, i| {
            lane.atomic_add_u64(r.at(i * PAGE), 1).map(|_| ())
        })
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(rep.faults, 0);
    assert!(all_system(&svm, r.addr(), 512));
    assert_eq!(r.as_slice::<u64>()[512], 4);
}

#[test]
fn pins_nest_and_unpin_restores_migration() {
    let svm = svm();
    let r = svm.alloc(MIB as usize).unwrap();
    svm.pin(r.addr(), r.len()).unwrap();
    svm.pin(r.addr(), 16 * PAGE).unwrap();
    assert_eq!(svm.pin_count(r.addr()), 2);
    assert_eq!(svm.pin_count(r.at(16 * PAGE)), 1);
    assert_eq!(svm.memory_usage().pinned_bytes, MIB);

    svm.unpin(r.addr(), r.len()).unwrap();
    assert_eq!(svm.pin_count(r.addr()), 1);
    assert_eq!(svm.pin_count(r.at(16 * PAGE)), 0);
    assert_eq!(svm.memory_usage().pinned_bytes, 16 * PAGE);
    let rep = svm
        .migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!((rep.migrated, rep.skipped_pinned), (240, 16));

    svm.unpin(r.addr(), 16 * PAGE).unwrap();
    assert_eq!(svm.memory_usage().pinned_bytes, 0);
    let rep = svm
        .migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!(
        (rep.migrated, rep.already_there, rep.skipped_pinned),
        (16, 240, 0)
    );
    assert_eq!(svm.location(r.addr()), Some(Location::Device(D0)));
}

#[test]
fn unpinning_what_is_not_pinned_fails_and_changes_nothing() {
    let svm = svm();
    let r = svm.alloc(MIB as usize).unwrap();
    // Never pinned at all.
    assert!(matches!(
        svm.unpin(r.at(PAGE), PAGE),
        Err(Error::NotPinned { addr }) if addr == r.at(PAGE)
    ));
    svm.pin(r.addr(), 8 * PAGE).unwrap();
    let before = svm.memory_usage();
    // The range runs past the pinned pages: the first unpinned page is named.
    match svm.unpin(r.addr(), 16 * PAGE) {
        Err(Error::NotPinned { addr }) => assert_eq!(addr, r.at(8 * PAGE)),
        other => panic!("expected NotPinned, got {other:?}"),
    }
    for i in 0..8 {
        assert_eq!(svm.pin_count(r.at(i * PAGE)), 1, "page {i}");
    }
    assert_eq!(svm.memory_usage(), before);
    let rep = svm
        .migrate(r.addr(), 8 * PAGE, Location::Device(D0))
        .unwrap();
    assert_eq!(rep.skipped_pinned, 8);
    // Bad ranges are typed errors.
    assert!(matches!(
        svm.pin(r.at(1), PAGE),
        Err(Error::Unaligned { what: "address", value }) if value == r.at(1).0
    ));
    assert!(matches!(
        svm.unpin(r.addr(), 0),
        Err(Error::EmptyRange { .. })
    ));
    assert!(matches!(
        svm.pin(r.addr(), 2 * MIB),
        Err(Error::OutsideManaged { .. })
    ));
}

#[test]
fn pinning_past_the_pin_limit_fails_and_changes_nothing() {
    let svm = builder(true).pin_limit(MIB).build().unwrap();
    let r = svm.alloc(4 * MIB as usize).unwrap();
    assert_eq!(svm.memory_usage().pin_limit_bytes, MIB);
    svm.pin(r.addr(), MIB / 2).unwrap();
    match svm.pin(r.at(MIB / 2), MIB) {
        Err(Error::PinLimit {
            requested,
            pinned,
            limit,
        }) => assert_eq!((requested, pinned, limit), (MIB, MIB / 2, MIB)),
        other => panic!("expected PinLimit, got {other:?}"),
    }
    assert_eq!(svm.pin_count(r.at(MIB / 2)), 0);
    assert_eq!(svm.memory_usage().pinned_bytes, MIB / 2);
    // Pinning pinned pages again takes no more of the limit.
    svm.pin(r.addr(), MIB / 2).unwrap();
    // Up to the limit exactly.
    svm.pin(r.at(MIB / 2), MIB / 2).unwrap();
    assert_eq!(svm.memory_usage().pinned_bytes, MIB);
    assert!(matches!(
        svm.pin(r.at(MIB), PAGE),
        Err(Error::PinLimit { .. })
    ));
    // Freeing the region drops its pins.
    drop(r);
    assert_eq!(svm.memory_usage().pinned_bytes, 0);
    let r = svm.alloc(MIB as usize).unwrap();
    svm.pin(r.addr(), MIB).unwrap();
}

#[test]
fn a_pin_count_cannot_overflow() {
    let svm = svm();
    let r = svm.alloc(2 * PAGE as usize).unwrap();
    for _ in 0..u16::MAX {
        svm.pin(r.addr(), PAGE).unwrap();
    }
    assert_eq!(svm.pin_count(r.addr()), 65535);
    // The range's second page is fine, the first is full: nothing changes.
    match svm.pin(r.addr(), 2 * PAGE) {
        Err(Error::PinOverflow { addr, count }) => {
            assert_eq!((addr, count), (r.addr(), 65535));
        }
        other => panic!("expected PinOverflow, got {other:?}"),
    }
    assert_eq!(svm.pin_count(r.at(PAGE)), 0);
    svm.unpin(r.addr(), PAGE).unwrap();
    svm.pin(r.addr(), 2 * PAGE).unwrap();
    assert_eq!(svm.pin_count(r.addr()), 65535);
    assert_eq!(svm.memory_usage().pinned_bytes, 2 * PAGE);
}

#[test]
fn pages_that_stay_on_the_device_make_the_pin_fail_undone() {
    let svm = svm();
    let r = svm.alloc(MIB as usize).unwrap();
    // Untouched pages become device pages with no staged system page; with
    // no room under the memory limit for a bounce buffer they cannot move.
    svm.migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    svm.pin(r.addr(), PAGE)
        .unwrap_or_else(|e| panic!("pin table: {e}"));
    svm.unpin(r.addr(), PAGE).unwrap();
    let u = svm.memory_usage();
    svm.set_memory_limit(u.in_use_bytes).unwrap();
    let u = svm.memory_usage();
    match svm.pin(r.at(PAGE), 8 * PAGE) {
        Err(Error::PinBusy { addr, len, busy }) => {
            assert_eq!((addr, len, busy), (r.at(PAGE), 8 * PAGE, 8));
        }
        other => panic!("expected PinBusy, got {other:?}"),
    }
    for i in 0..9 {
        assert_eq!(svm.pin_count(r.at(i * PAGE)), 0);
    }
    assert_eq!(svm.memory_usage(), u);
    // With room for the bounce buffer the pin succeeds.
    svm.set_memory_limit(u.in_use_bytes + MIB).unwrap();
    svm.pin(r.at(PAGE), 8 * PAGE).unwrap();
    assert!(all_system(&svm, r.at(PAGE), 8));
    assert_eq!(svm.memory_usage().pinned_bytes, 8 * PAGE);
}

#[test]
fn a_long_term_pin_moves_pages_out_of_coherent_device_memory() {
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "coherent".into(),
            memory_bytes: 16 * MIB,
            copy_engines: 1,
            memory_type: MemoryType::Coherent,
            compute_units: 2,
            commit_up_front: false,
        })
        .unwrap()
        .memory_limit(1 << 40)
        .build()
        .unwrap();
    let mut r = svm.alloc(4 * MIB as usize).unwrap();
    r.as_mut_slice::<u32>().fill(9);
    svm.migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!(svm.memory_usage().devices[0].resident_bytes, 4 * MIB);
    // Pin the middle, across the two 2 MiB blocks.
    svm.pin(r.at(MIB), 2 * MIB).unwrap();
    assert!(all_system(&svm, r.at(MIB), 512));
    assert_eq!(svm.location(r.addr()), Some(Location::Device(D0)));
    assert_eq!(svm.location(r.at(3 * MIB)), Some(Location::Device(D0)));
    let u = svm.memory_usage();
    assert_eq!((u.pinned_bytes, u.device_bytes), (2 * MIB, 2 * MIB));
    assert!(r.as_slice::<u32>().iter().all(|&v| v == 9));
}
