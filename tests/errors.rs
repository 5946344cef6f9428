//! Bad input: every call rejects it with an error that names the offending
//! value, leaves memory and caller buffers as they were, and never panics.

#![allow(clippy::unwrap_used)]

mod common;

use common::svm;
use svmem::{
    DeviceId, EmulatedConfig, Error, Location, MemoryType, Prot, Region, Svm, VirtAddr, PAGE_SIZE,
};

const MIB: usize = 1 << 20;
const DEV0: DeviceId = DeviceId(0);
const PG: u64 = PAGE_SIZE as u64;

fn fill(region: &mut Region<'_>) {
    for (i, b) in region.as_mut_slice::<u8>().iter_mut().enumerate() {
        *b = (i as u8) ^ ((i / PAGE_SIZE) as u8);
    }
}

fn check(region: &Region<'_>) {
    let got = region.as_slice::<u8>();
    for (i, &b) in got.iter().enumerate() {
        assert_eq!(b, (i as u8) ^ ((i / PAGE_SIZE) as u8), "byte {i}");
    }
}

/// The error of `r` (for results whose Ok type has no `Debug`).
fn err_of<T>(r: svmem::Result<T>, what: &str) -> Error {
    match r {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e,
    }
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// Asserts that `msg` (an error's Display) mentions `needle`.
fn mentions(e: &Error, needle: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(needle),
        "error message {msg:?} should mention {needle:?}"
    );
}

// ---------------------------------------------------------------------------
// Alignment and empty ranges
// ---------------------------------------------------------------------------

#[test]
fn migrate_unaligned_address() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let bad = region.at(100);
    let e = svm
        .migrate(bad, PG, Location::Device(DEV0))
        .expect_err("unaligned address");
    match &e {
        Error::Unaligned { value, .. } => assert_eq!(*value, bad.0),
        other => panic!("expected Unaligned, got {other:?}"),
    }
    mentions(&e, &hex(bad.0));
    let e = svm.migrate(bad, PG, Location::System).unwrap_err();
    assert!(matches!(e, Error::Unaligned { .. }), "{e:?}");
}

#[test]
fn migrate_unaligned_length() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let e = svm
        .migrate(region.addr(), PG + 1, Location::Device(DEV0))
        .expect_err("unaligned length");
    match &e {
        Error::Unaligned { value, .. } => assert_eq!(*value, PG + 1),
        other => panic!("expected Unaligned, got {other:?}"),
    }
    mentions(&e, &hex(PG + 1));
    assert_eq!(svm.stats().to_device_pages, 0, "nothing moved");
}

#[test]
fn migrate_empty_range() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let e = svm
        .migrate(region.addr(), 0, Location::Device(DEV0))
        .expect_err("empty range");
    match &e {
        Error::EmptyRange { addr } => assert_eq!(*addr, region.addr()),
        other => panic!("expected EmptyRange, got {other:?}"),
    }
    mentions(&e, &hex(region.addr().0));
}

#[test]
fn set_granularity_checks_range_too() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let e = svm.set_granularity(region.at(8), PG, 0).unwrap_err();
    assert!(matches!(e, Error::Unaligned { .. }), "{e:?}");
    let e = svm.set_granularity(region.addr(), 0, 0).unwrap_err();
    assert!(matches!(e, Error::EmptyRange { .. }), "{e:?}");
    let e = svm
        .set_granularity(region.addr(), region.len() + PG, 0)
        .unwrap_err();
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------
// Ranges outside managed memory
// ---------------------------------------------------------------------------

#[test]
fn migrate_outside_managed_memory() {
    let svm = svm(16 << 20);
    let _region = svm.alloc(MIB).unwrap();
    let stack = [0u8; 1];
    let foreign = VirtAddr::from_ptr(stack.as_ptr()).align_down();
    for addr in [VirtAddr(PG), foreign, VirtAddr(!(PG - 1))] {
        let e = svm
            .migrate(addr, PG, Location::Device(DEV0))
            .expect_err("outside managed memory");
        match &e {
            Error::OutsideManaged { start, len } => {
                assert_eq!(*start, addr);
                assert_eq!(*len, PG);
            }
            other => panic!("expected OutsideManaged, got {other:?}"),
        }
        mentions(&e, &hex(addr.0));
    }
}

#[test]
fn migrate_range_straddling_region_end() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region);
    let start = region.at(region.len() - PG);
    let e = svm
        .migrate(start, 2 * PG, Location::Device(DEV0))
        .expect_err("straddles the end");
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    mentions(&e, &hex(start.0));
    // A range longer than the region, from its start.
    let e = svm
        .migrate(region.addr(), region.len() + PG, Location::Device(DEV0))
        .unwrap_err();
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    // A range beginning just before the region.
    let e = svm
        .migrate(
            VirtAddr(region.addr().0 - PG),
            2 * PG,
            Location::Device(DEV0),
        )
        .unwrap_err();
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    // A huge length that would overflow the end address.
    let e = svm
        .migrate(region.addr(), !(PG - 1), Location::Device(DEV0))
        .unwrap_err();
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    assert_eq!(svm.stats().to_device_pages, 0);
    check(&region);
}

#[test]
fn range_spanning_two_regions_is_rejected() {
    let svm = svm(16 << 20);
    let a = svm.alloc(MIB).unwrap();
    let b = svm.alloc(MIB).unwrap();
    let (lo, hi) = if a.addr() < b.addr() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // From the last page of one region to the first page of the next, over
    // whatever lies between (adjacent or not): never one region.
    let start = lo.at(lo.len() - PG);
    let len = hi.addr().0 + PG - start.0;
    let e = svm.migrate(start, len, Location::Device(DEV0)).unwrap_err();
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    mentions(&e, &hex(start.0));
    // Both regions are untouched.
    assert_eq!(svm.stats().to_device_pages, 0);
}

#[test]
fn device_access_outside_managed_memory_leaves_buffer_untouched() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let dev = svm.device(DEV0).unwrap();

    let mut buf = vec![0xaau8; 2 * PAGE_SIZE];
    let at = region.at(region.len() - PG);
    let e = dev.read(at, &mut buf).expect_err("read past the end");
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    mentions(&e, &hex(at.0));
    assert!(buf.iter().all(|&b| b == 0xaa), "buffer must be untouched");

    let e = dev.read(VirtAddr(PG), &mut buf).unwrap_err();
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    assert!(buf.iter().all(|&b| b == 0xaa));

    let e = dev.write(at, &buf).expect_err("write past the end");
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    // Nothing was written at the region's last page.
    assert!(region.as_slice::<u8>().iter().all(|&b| b == 0));
}

#[test]
fn empty_device_access_is_a_no_op() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let dev = svm.device(DEV0).unwrap();
    let rep = dev.read(region.addr(), &mut []).unwrap();
    assert_eq!((rep.pages, rep.fault_passes), (0, 0));
    let rep = dev.write(region.addr(), &[]).unwrap();
    assert_eq!((rep.pages, rep.fault_passes), (0, 0));
}

// ---------------------------------------------------------------------------
// Unknown devices
// ---------------------------------------------------------------------------

#[test]
fn unknown_device() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region);
    let bad = DeviceId(5);

    let e = svm
        .migrate(region.addr(), region.len(), Location::Device(bad))
        .expect_err("migrate to an unknown device");
    match &e {
        Error::UnknownDevice { id, count } => {
            assert_eq!(*id, bad);
            assert_eq!(*count, 1);
        }
        other => panic!("expected UnknownDevice, got {other:?}"),
    }
    mentions(&e, "dev5");
    mentions(&e, "1 device");

    let e = err_of(svm.device(bad), "handle of an unknown device");
    assert!(
        matches!(e, Error::UnknownDevice { id, count: 1 } if id == bad),
        "{e:?}"
    );
    mentions(&e, "dev5");

    // The id just past the last device is unknown too.
    let e = err_of(svm.device(DeviceId(1)), "device 1");
    assert!(matches!(e, Error::UnknownDevice { .. }), "{e:?}");
    mentions(&e, "dev1");

    // Also with an otherwise bad range: the device is the first complaint or
    // the range is; either way an error, never a panic.
    assert!(svm
        .migrate(VirtAddr(1), 0, Location::Device(DeviceId(200)))
        .is_err());

    assert_eq!(svm.stats().to_device_pages, 0);
    check(&region);
}

#[test]
fn snapshot_of_unknown_device_or_bad_address() {
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "a".into(),
            memory_bytes: 16 << 20,
            copy_engines: 1,
            memory_type: MemoryType::Private,
            compute_units: 2,
            commit_up_front: false,
        })
        .unwrap()
        .emulated(EmulatedConfig {
            name: "b".into(),
            memory_bytes: 16 << 20,
            copy_engines: 2,
            memory_type: MemoryType::Private,
            compute_units: 2,
            commit_up_front: false,
        })
        .unwrap()
        .build()
        .unwrap();
    let region = svm.alloc(MIB).unwrap();
    assert!(svm.device(DeviceId(1)).is_ok());
    let e = err_of(svm.device(DeviceId(2)), "device 2");
    assert!(matches!(e, Error::UnknownDevice { count: 2, .. }), "{e:?}");
    mentions(&e, "dev2");
    mentions(&e, "2 device");

    let dev = svm.device(DEV0).unwrap();
    let bad = region.at(10);
    let e = dev.snapshot(bad, 1).expect_err("unaligned snapshot");
    match &e {
        Error::Unaligned { value, .. } => assert_eq!(*value, bad.0),
        other => panic!("expected Unaligned, got {other:?}"),
    }
    mentions(&e, &hex(bad.0));

    let e = dev
        .snapshot(region.addr(), region.npages() + 1)
        .expect_err("snapshot past the end");
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    let e = dev.snapshot(VirtAddr(PG), 1).unwrap_err();
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    mentions(&e, &hex(PG));
}

// ---------------------------------------------------------------------------
// Allocation and configuration
// ---------------------------------------------------------------------------

#[test]
fn zero_length_alloc() {
    let svm = svm(16 << 20);
    let e = svm.alloc(0).expect_err("zero-length alloc");
    // It is not "too large": the error names the zero length (issue 10).
    assert!(matches!(e, Error::ZeroLength { .. }), "{e:?}");
    mentions(&e, "zero bytes");
}

/// Lengths, page counts and addresses near `u64::MAX` get a typed error
/// from every call that takes them; nothing panics, aborts or wraps.
#[test]
fn lengths_and_addresses_near_u64_max_are_typed_errors() {
    let svm = svm(16 << 20);
    let r = svm.alloc(1 << 20).unwrap();
    let dev = svm.device(DeviceId(0)).unwrap();
    let big = !(PAGE_SIZE as u64 - 1); // the last page of the address space
                                       // snapshot: npages * PAGE_SIZE used to wrap, then allocate a giant vector.
    for n in [usize::MAX, usize::MAX / PAGE_SIZE + 1, 1 << 52] {
        let e = dev.snapshot(r.addr(), n).expect_err("huge snapshot");
        assert!(matches!(e, Error::RangeOverflow { .. }), "{n:#x}: {e:?}");
        mentions(&e, "past the end of the address space");
    }
    let e = dev
        .snapshot(VirtAddr(big), 2)
        .expect_err("snapshot at the top");
    assert!(matches!(e, Error::RangeOverflow { .. }), "{e:?}");
    for len in [big, u64::MAX - (PAGE_SIZE as u64 - 1)] {
        let checks: [(&str, svmem::Result<()>); 5] = [
            (
                "migrate",
                svm.migrate(r.addr(), len, Location::System).map(|_| ()),
            ),
            (
                "prefetch",
                svm.prefetch(r.addr(), len, Location::System).map(|_| ()),
            ),
            ("set_granularity", svm.set_granularity(r.addr(), len, 0)),
            ("pin", svm.pin(r.addr(), len)),
            ("attributes", svm.attributes(r.addr(), len).map(|_| ())),
        ];
        for (what, res) in checks {
            let e = res.expect_err(what);
            assert!(
                matches!(e, Error::OutsideManaged { .. }),
                "{what} with length {len:#x}: {e:?}"
            );
        }
    }
    // A range that starts near the top of the address space.
    let e = svm
        .migrate(VirtAddr(big), 2 * PAGE_SIZE as u64, Location::System)
        .expect_err("migrate at the top");
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    let mut buf = [0u8; 16];
    let e = dev
        .read(VirtAddr(u64::MAX - 7), &mut buf)
        .expect_err("read");
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    let e = dev.write(VirtAddr(u64::MAX - 7), &buf).expect_err("write");
    assert!(matches!(e, Error::OutsideManaged { .. }), "{e:?}");
    assert_eq!(svm.location(VirtAddr(u64::MAX)), None);
    assert_eq!(svm.pin_count(VirtAddr(u64::MAX)), 0);
    // A kernel touching the top of the address space gets a fault, not a panic.
    let rep = dev
        .launch(1, |lane, _| {
            lane.load::<u64>(VirtAddr(u64::MAX - 3)).map(|_| ())
        })
        .unwrap();
    assert!(rep.fatal.is_some(), "{rep:?}");
}

#[test]
fn absurd_alloc() {
    let svm = svm(16 << 20);
    let n: usize = 1 << 50;
    let e = svm.alloc(n).expect_err("1 PiB alloc");
    match &e {
        Error::AllocTooLarge { requested, .. } => assert_eq!(*requested, n as u64),
        other => panic!("expected AllocTooLarge, got {other:?}"),
    }
    mentions(&e, &n.to_string());
    // usize::MAX must not overflow while rounding up.
    let e = svm.alloc(usize::MAX).expect_err("usize::MAX alloc");
    assert!(matches!(e, Error::AllocTooLarge { .. }), "{e:?}");
    // The Svm still works.
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region);
    check(&region);
}

#[test]
fn granularity_out_of_range() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let e = region.set_granularity(10).expect_err("granularity 10");
    assert!(matches!(e, Error::Granularity { value: 10 }), "{e:?}");
    mentions(&e, "10");
    let e = svm
        .set_granularity(region.addr(), region.len(), 255)
        .unwrap_err();
    assert!(matches!(e, Error::Granularity { value: 255 }), "{e:?}");
    assert!(region.set_granularity(9).is_ok());
    assert!(region.set_granularity(0).is_ok());

    let e = Svm::builder()
        .emulated(EmulatedConfig::with_memory(16 << 20))
        .unwrap()
        .granularity(10)
        .build()
        .expect_err("builder granularity 10");
    assert!(matches!(e, Error::Granularity { value: 10 }), "{e:?}");
    mentions(&e, "10");
}

#[test]
fn bad_device_configs() {
    let e = Svm::with_emulated(0).expect_err("0-byte device");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let e = err_of(
        Svm::builder().emulated(EmulatedConfig {
            copy_engines: 0,
            ..EmulatedConfig::with_memory(1 << 20)
        }),
        "0 copy engines",
    );
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    mentions(&e, "0 copy engines");
    let e = Svm::builder()
        .emulated(EmulatedConfig::with_memory(1 << 20))
        .unwrap()
        .pipeline_depth(0)
        .build()
        .expect_err("pipeline depth 0");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let mut b = Svm::builder();
    for _ in 0..9 {
        b = b.emulated(EmulatedConfig::with_memory(64 << 10)).unwrap();
    }
    let e = b.build().expect_err("9 devices");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    mentions(&e, "9 devices");
}

// ---------------------------------------------------------------------------
// Device memory exhausted
// ---------------------------------------------------------------------------

#[test]
fn migration_larger_than_device_memory_is_refused_before_it_starts() {
    let svm = svm(1 << 20); // 256 pages
    let mut region = svm.alloc(4 * MIB).unwrap(); // 1024 pages
    fill(&mut region);
    let e = svm
        .migrate(region.addr(), region.len(), Location::Device(DEV0))
        .expect_err("4 MiB cannot fit in 1 MiB");
    match &e {
        Error::DeviceMemory {
            dev,
            requested,
            capacity,
            ..
        } => {
            assert_eq!(*dev, DEV0);
            assert_eq!(*requested, 4 * MIB as u64);
            assert_eq!(*capacity, MIB as u64);
        }
        other => panic!("{other:?}"),
    }
    mentions(&e, "4194304");
    // Nothing moved; the same refusal through a prefetch attribute.
    assert_eq!(svm.stats().to_device_pages, 0);
    let e = svm
        .prefetch(region.addr(), region.len(), Location::Device(DEV0))
        .expect_err("prefetch too");
    assert!(matches!(e, Error::DeviceMemory { .. }), "{e:?}");
    assert_eq!(svm.stats().to_device_pages, 0);

    // What fits still migrates, and the device reads everything (resident
    // or remote).
    let rep = svm
        .migrate(region.addr(), MIB as u64, Location::Device(DEV0))
        .unwrap();
    assert_eq!(rep.migrated, 256);
    let info = svm.device(DEV0).unwrap().info();
    assert_eq!(info.free_bytes, 0);
    let mut buf = vec![0u8; 4 * MIB];
    svm.device(DEV0)
        .unwrap()
        .read(region.addr(), &mut buf)
        .unwrap();
    assert_eq!(buf, region_expected(4 * MIB));
    check(&region);
    drop(region);
    let info = svm.device(DEV0).unwrap().info();
    assert_eq!(info.free_bytes, info.capacity_bytes);
}

fn region_expected(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ ((i / PAGE_SIZE) as u8))
        .collect()
}

#[test]
fn device_full_then_second_region_evicts_the_first() {
    let svm = svm(1 << 20);
    let mut a = svm.alloc(MIB).unwrap();
    fill(&mut a);
    let mut b = svm.alloc(MIB).unwrap();
    fill(&mut b);
    assert_eq!(
        svm.migrate(a.addr(), a.len(), Location::Device(DEV0))
            .unwrap()
            .migrated,
        256
    );
    let rep = svm
        .migrate(b.addr(), b.len(), Location::Device(DEV0))
        .unwrap();
    assert_eq!(rep.migrated, 256, "{rep:?}");
    assert_eq!(rep.skipped_no_device_memory, 0);
    let st = svm.stats();
    assert_eq!(st.evictions, 1, "{st:?}");
    assert_eq!(st.evicted_pages, 256);
    for k in 0..256u64 {
        assert_eq!(svm.location(a.at(k * PG)), Some(Location::System));
        assert_eq!(svm.location(b.at(k * PG)), Some(Location::Device(DEV0)));
    }
    check(&a);
    check(&b);
}

// ---------------------------------------------------------------------------
// Read-only errors
// ---------------------------------------------------------------------------

#[test]
fn read_only_write_error_names_device_and_address() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region);
    region.protect(Prot::ReadOnly).unwrap();
    let at = region.at(3 * PG + 17);
    let e = svm
        .device(DEV0)
        .unwrap()
        .write(at, &[1, 2, 3])
        .expect_err("write to read-only memory");
    assert!(matches!(e, Error::ReadOnly { dev: DEV0, .. }), "{e:?}");
    mentions(&e, &hex(at.0));
    mentions(&e, "dev0");
    check(&region);
}

#[test]
fn typed_views_of_odd_sized_elements_do_not_panic() {
    let svm = svmem::Svm::with_emulated(1 << 20).expect("svm");
    let mut r = svm.alloc(4096).expect("alloc");
    assert_eq!(r.as_slice::<[u8; 3]>().len(), 1365);
    assert_eq!(r.as_mut_slice::<[u8; 3]>().len(), 1365);
    assert_eq!(r.as_slice::<()>().len(), 0);
    assert_eq!(r.as_slice::<u64>().len(), 512);
}
