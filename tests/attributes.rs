//! Range attributes through the `Svm` API: prefetch and preferred
//! locations, access in place, the CUDA-style front, custom placement
//! policies, the event stream, and bad input leaving the state unchanged.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use svmem::{
    AccessMode, Attr, AttrFlags, Common, Decision, DeviceId, EmulatedConfig, Error, EventKind,
    Location, MemAdvice, MemoryType, PlacementPolicy, Svm,
};

const D0: DeviceId = DeviceId(0);
const D1: DeviceId = DeviceId(1);

fn svm(ndev: usize, xnack: bool) -> Svm {
    let mut b = Svm::builder().xnack(xnack);
    for i in 0..ndev {
        b = b
            .emulated(EmulatedConfig {
                name: format!("d{i}"),
                memory_bytes: 32 << 20,
                copy_engines: 1,
                memory_type: MemoryType::Private,
                compute_units: 2,
                commit_up_front: false,
            })
            .unwrap();
    }
    b.build().unwrap()
}

fn read_all(svm: &Svm, d: DeviceId, r: &svmem::Region<'_>) -> u64 {
    let sum = AtomicU64::new(0);
    svm.device(d)
        .unwrap()
        .launch(r.npages() as u64, |lane, p| {
            let v: u64 = lane.load(r.at(p * 4096))?;
            sum.fetch_add(v, Ordering::Relaxed);
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
    sum.into_inner()
}

#[test]
fn prefetch_location_migrates_every_time_it_is_set() {
    let svm = svm(1, true);
    let mut r = svm.alloc(4 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(1);
    let to_dev = [Attr::PrefetchLocation(Some(Location::Device(D0)))];
    svm.set_attributes(r.addr(), r.len(), &to_dev).unwrap();
    assert_eq!(svm.location(r.at(4096)), Some(Location::Device(D0)));
    // The CPU pulls half back; setting the same prefetch location again
    // migrates again (it is an action, not only a stored value).
    assert_eq!(r.as_slice::<u64>()[0], 1);
    assert_eq!(svm.location(r.addr()), Some(Location::System));
    svm.set_attributes(r.addr(), r.len(), &to_dev).unwrap();
    assert_eq!(svm.location(r.addr()), Some(Location::Device(D0)));
    let q = svm.attributes(r.addr(), r.len()).unwrap();
    assert_eq!(q.prefetch, Common::Same(Some(Location::Device(D0))));
    // The CUDA front returns what moved.
    let rep = svm.prefetch(r.addr(), r.len(), Location::System).unwrap();
    assert_eq!(rep.migrated, 1024);
    assert_eq!(svm.location(r.addr()), Some(Location::System));
}

#[test]
fn access_in_place_keeps_data_where_it_is() {
    let svm = svm(1, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(3);
    svm.advise(r.addr(), r.len(), MemAdvice::SetAccessedBy(D0))
        .unwrap();
    assert_eq!(
        svm.attributes(r.addr(), r.len()).unwrap().access[0],
        Common::Same(AccessMode::AccessInPlace)
    );
    assert_eq!(read_all(&svm, D0, &r), 3 * 512);
    assert_eq!(
        svm.location(r.addr()),
        Some(Location::System),
        "not migrated"
    );
    assert_eq!(svm.stats().to_device_pages, 0);
    assert!(
        svm.stats().device_faults > 0,
        "served by faults that only mapped"
    );
    // Default access (Access) migrates on fault instead.
    svm.advise(r.addr(), r.len(), MemAdvice::UnsetAccessedBy(D0))
        .unwrap();
    assert_eq!(read_all(&svm, D0, &r), 3 * 512);
    assert_eq!(svm.location(r.addr()), Some(Location::Device(D0)));
}

#[test]
fn preferred_system_keeps_data_in_system_memory() {
    let svm = svm(2, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(2);
    svm.migrate(r.addr(), r.len(), Location::Device(D1))
        .unwrap();
    svm.advise(
        r.addr(),
        r.len(),
        MemAdvice::SetPreferredLocation(Location::System),
    )
    .unwrap();
    // Device 0 faults on pages device 1 holds: the range prefers system
    // memory, so they come back there and device 0 maps them in place.
    assert_eq!(read_all(&svm, D0, &r), 2 * 512);
    assert_eq!(svm.location(r.addr()), Some(Location::System));
    // Without the preference, device 0's default access migrates them to it.
    svm.advise(r.addr(), r.len(), MemAdvice::UnsetPreferredLocation)
        .unwrap();
    svm.migrate(r.addr(), r.len(), Location::Device(D1))
        .unwrap();
    assert_eq!(read_all(&svm, D0, &r), 2 * 512);
    assert_eq!(svm.location(r.addr()), Some(Location::Device(D0)));
}

#[test]
fn read_mostly_reads_are_served_in_place() {
    let svm = svm(1, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(4);
    svm.advise(r.addr(), r.len(), MemAdvice::SetReadMostly)
        .unwrap();
    assert!(svm
        .attributes(r.addr(), r.len())
        .unwrap()
        .flags
        .contains(AttrFlags::READ_MOSTLY));
    assert_eq!(read_all(&svm, D0, &r), 4 * 512);
    assert_eq!(svm.location(r.addr()), Some(Location::System));
}

#[test]
fn a_device_without_access_faults_fatally_and_others_go_on() {
    let svm = svm(2, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(5);
    svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D1, AccessMode::None)])
        .unwrap();
    let rep = svm
        .device(D1)
        .unwrap()
        .launch(8, |lane, i| lane.load::<u64>(r.at(i * 8)).map(|_| ()))
        .unwrap();
    let f = rep.fatal.unwrap();
    assert_eq!(f.dev, D1);
    // Whichever lane reported first: an address of the first page.
    assert_eq!(f.addr.align_down(), r.addr());
    // Device 0 and the CPU are unaffected.
    assert_eq!(read_all(&svm, D0, &r), 5 * 512);
    assert_eq!(r.as_slice::<u64>()[7], 5);
}

#[test]
fn bad_attributes_are_typed_errors_and_change_nothing() {
    let svm = svm(1, true);
    let r = svm.alloc(4 << 20).unwrap();
    let before = svm.attributes(r.addr(), r.len()).unwrap();
    let cases: Vec<(Vec<Attr>, &str)> = vec![
        (
            vec![Attr::Access(DeviceId(3), AccessMode::Access)],
            "device",
        ),
        (
            vec![Attr::PreferredLocation(Some(Location::Device(DeviceId(5))))],
            "device",
        ),
        (vec![Attr::Granularity(12)], "12"),
        (vec![], "no attributes"),
        (
            vec![
                Attr::SetFlags(AttrFlags::READ_MOSTLY),
                Attr::ClearFlags(AttrFlags::READ_MOSTLY),
            ],
            "conflict",
        ),
        (
            // A valid attribute before an invalid one: nothing applies.
            vec![
                Attr::Granularity(3),
                Attr::Access(DeviceId(7), AccessMode::None),
            ],
            "device",
        ),
    ];
    for (attrs, needle) in cases {
        let e = svm.set_attributes(r.addr(), r.len(), &attrs).unwrap_err();
        assert!(matches!(e, Error::Attr(_)), "{e:?}");
        assert!(
            e.to_string().to_lowercase().contains(needle),
            "{e} should mention {needle}"
        );
        assert_eq!(svm.attributes(r.addr(), r.len()).unwrap(), before);
    }
    assert!(Attr::from_raw(42, 0).is_err());
    assert!(
        Attr::from_raw(5, 0x4).is_err(),
        "HIVE_LOCAL is not honoured"
    );
    // Ranges outside managed memory, unaligned.
    assert!(matches!(
        svm.set_attributes(r.at(r.len()), 4096, &[Attr::Granularity(1)]),
        Err(Error::OutsideManaged { .. })
    ));
    assert!(matches!(
        svm.attributes(r.at(1), 4096),
        Err(Error::Unaligned { .. })
    ));
}

#[test]
fn attributes_split_and_query_mixed() {
    let svm = svm(1, true);
    let r = svm.alloc(8 << 20).unwrap();
    svm.set_attributes(
        r.at(2 << 20),
        2 << 20,
        &[
            Attr::PreferredLocation(Some(Location::Device(D0))),
            Attr::Granularity(4),
            Attr::SetFlags(AttrFlags::READ_MOSTLY),
        ],
    )
    .unwrap();
    let whole = svm.attributes(r.addr(), r.len()).unwrap();
    assert_eq!(whole.preferred, Common::Mixed);
    assert_eq!(whole.granularity, 4, "minimum");
    assert!(
        !whole.flags.contains(AttrFlags::READ_MOSTLY),
        "AND of flags"
    );
    assert!(whole.flags.contains(AttrFlags::HOST_ACCESS));
    let inner = svm.attributes(r.at(2 << 20), 2 << 20).unwrap();
    assert_eq!(inner.preferred, Common::Same(Some(Location::Device(D0))));
    assert!(inner.flags.contains(AttrFlags::READ_MOSTLY));
    assert_eq!(inner.access, vec![Common::Same(AccessMode::Access)]);
}

#[derive(Debug)]
struct NeverMigrate;

impl PlacementPolicy for NeverMigrate {
    fn name(&self) -> &str {
        "never-migrate"
    }
    fn decide(&self, input: &svmem::placement::policy::PolicyInput<'_>) -> Decision {
        match input.resident {
            Location::System => Decision::MapInPlace,
            Location::Device(_) => Decision::MigrateToSystem,
        }
    }
}

#[test]
fn a_custom_policy_decides() {
    let svm = svm(1, true);
    svm.set_policy(NeverMigrate);
    assert_eq!(svm.policy_name(), "never-migrate");
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(6);
    svm.advise(
        r.addr(),
        r.len(),
        MemAdvice::SetPreferredLocation(Location::Device(D0)),
    )
    .unwrap();
    assert_eq!(read_all(&svm, D0, &r), 6 * 512);
    assert_eq!(svm.location(r.addr()), Some(Location::System));
    assert_eq!(svm.stats().to_device_pages, 0);
}

#[test]
fn switching_xnack_waits_for_no_kernel_and_maps_ahead() {
    let svm = svm(1, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(1);
    let dev = svm.device(D0).unwrap();
    let started = std::sync::Barrier::new(2);
    let release = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            dev.launch(1, |_, _| {
                started.wait();
                while !release.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            })
            .unwrap();
        });
        started.wait();
        let e = svm.set_xnack(false).unwrap_err();
        assert!(matches!(e, Error::Busy { .. }), "{e}");
        release.store(true, Ordering::Relaxed);
    });
    assert!(svm.xnack());
    // Off: the default access is none, so grant it; the range is mapped ahead
    // and a kernel runs without a single fault.
    svm.set_xnack(false).unwrap();
    svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D0, AccessMode::Access)])
        .unwrap();
    let faults = svm.stats().device_faults;
    assert_eq!(read_all(&svm, D0, &r), 512);
    assert_eq!(svm.stats().device_faults, faults);
}

#[test]
fn the_event_stream_reports_migrations_faults_and_queue_evictions() {
    let svm = svm(1, true);
    let events = svm.subscribe(1 << 16);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(1);
    // Device fault → migration to the device (default access migrates).
    assert_eq!(read_all(&svm, D0, &r), 512);
    // CPU fault → migration back.
    assert_eq!(r.as_slice::<u64>()[0], 1);
    svm.prefetch(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    let got = events.drain();
    let has = |f: &dyn Fn(&EventKind) -> bool| got.iter().any(|e| f(&e.kind));
    use svmem::observe::events::{FaultResolution, MigrateTrigger as T};
    assert!(has(
        &|k| matches!(k, EventKind::PageFaultStart { dev, .. } if *dev == D0)
    ));
    assert!(has(&|k| matches!(
        k,
        EventKind::PageFaultEnd {
            resolution: FaultResolution::Migrated,
            ..
        }
    )));
    assert!(has(&|k| matches!(
        k,
        EventKind::MigrateStart {
            trigger: T::DeviceFault,
            ..
        }
    )));
    assert!(has(&|k| matches!(
        k,
        EventKind::MigrateEnd {
            trigger: T::CpuFault,
            error: 0,
            ..
        }
    )));
    assert!(has(&|k| matches!(
        k,
        EventKind::MigrateStart {
            trigger: T::Prefetch,
            ..
        }
    )));
    assert!(has(&|k| matches!(k, EventKind::UnmapFromDevice { .. })));
    for e in &got {
        let line = e.to_json_line();
        assert!(
            serde_json::from_str::<serde_json::Value>(&line).is_ok(),
            "{line}"
        );
    }
    // XNACK off: an invalidation of a mapped range evicts and restores queues.
    svm.set_xnack(false).unwrap();
    svm.set_attributes(r.addr(), r.len(), &[Attr::Access(D0, AccessMode::Access)])
        .unwrap();
    assert_eq!(r.as_slice::<u64>()[0], 1); // CPU fault migrates back → eviction
    let mut evicted = false;
    let mut restored = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(evicted && restored) && std::time::Instant::now() < deadline {
        if let Some(e) = events.recv_timeout(Duration::from_millis(50)) {
            evicted |= matches!(e.kind, EventKind::QueueEviction { .. });
            restored |= matches!(e.kind, EventKind::QueueRestore { .. });
        }
    }
    assert!(evicted && restored, "{:?}", svm.stats());
}

/// `DEVICE_READ_ONLY` holds on every device write path, whether or not the
/// pages were mapped for the device before (a read maps them), in both fault
/// modes: `DeviceHandle::write`, lane stores, bulk writes and atomics are
/// refused and leave every byte as it was. (Before the mapping routines were
/// one, `DeviceHandle::read` mapped pages writable and `DeviceHandle::write`
/// changed the data.)
#[test]
fn device_read_only_refuses_every_device_write_path() {
    for xnack in [true, false] {
        let svm = svm(1, xnack);
        let mut r = svm.alloc(2 << 20).unwrap();
        r.as_mut_slice::<u64>().fill(7);
        svm.set_attributes(
            r.addr(),
            r.len(),
            &[Attr::SetFlags(AttrFlags::DEVICE_READ_ONLY)],
        )
        .unwrap();
        let dev = svm.device(D0).unwrap();
        // Reads work, and map the pages for the device.
        let mut buf = [0u8; 8];
        dev.read(r.at(64), &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 7);
        let err = dev.write(r.at(64), &1u64.to_ne_bytes()).unwrap_err();
        assert!(matches!(err, Error::ReadOnly { dev: D0, .. }), "{err}");
        // Also on pages never mapped for the device, and partly read-only:
        // the refusal comes before any byte changes.
        let err = dev.write(r.at(1 << 20), &[1u8; 3 * 4096]).unwrap_err();
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        type Kernel = fn(&mut svmem::Lane<'_>, svmem::VirtAddr) -> Result<(), svmem::DeviceFault>;
        let kernels: [(&str, Kernel); 5] = [
            ("store", |l, a| l.store::<u64>(a, 1)),
            ("write_slice", |l, a| l.write_slice::<u64>(a, &[1, 2, 3])),
            ("atomic_add_u32", |l, a| l.atomic_add_u32(a, 1).map(|_| ())),
            ("atomic_add_u64", |l, a| l.atomic_add_u64(a, 1).map(|_| ())),
            ("compare_exchange_u64", |l, a| {
                l.compare_exchange_u64(a, 7, 1).map(|_| ())
            }),
        ];
        for (name, k) in kernels {
            for at in [64u64, 4096 * 300] {
                let rep = dev.launch(1, |lane, _| k(lane, r.at(at))).unwrap();
                assert!(
                    rep.fatal.is_some(),
                    "{name} at {at:#x} (xnack {xnack}) was not refused: {rep:?}"
                );
            }
        }
        assert!(
            r.as_slice::<u64>().iter().all(|&w| w == 7),
            "a device write changed device-read-only memory (xnack {xnack})"
        );
        // Clearing the flag lets writes through again.
        svm.set_attributes(
            r.addr(),
            r.len(),
            &[Attr::ClearFlags(AttrFlags::DEVICE_READ_ONLY)],
        )
        .unwrap();
        dev.write(r.at(64), &1u64.to_ne_bytes()).unwrap();
        assert_eq!(r.as_slice::<u64>()[8], 1);
    }
}
