//! System-memory accounting: the limit refuses allocations and recovers
//! after frees, usage categories follow pages as they move, bounce buffers
//! are charged, and nothing leaks once every region is gone.

#![allow(clippy::unwrap_used)]

use svmem::{
    AccessMode, Attr, DeviceId, EmulatedConfig, Error, Location, MemoryType, MemoryUsage, Svm,
};

const D0: DeviceId = DeviceId(0);
const D1: DeviceId = DeviceId(1);
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn device(name: &str, mib: u64) -> EmulatedConfig {
    EmulatedConfig {
        name: name.into(),
        memory_bytes: mib * MIB,
        copy_engines: 1,
        memory_type: MemoryType::Private,
        compute_units: 2,
        commit_up_front: false,
    }
}

/// One 16 MiB device, a generous limit.
fn svm() -> Svm {
    Svm::builder()
        .emulated(device("d0", 16))
        .unwrap()
        .memory_limit(1 << 40)
        .build()
        .unwrap()
}

/// The page categories partition managed memory; in use is managed +
/// metadata + bounce; staging pages are a subset of device-resident ones.
fn assert_consistent(u: &MemoryUsage) {
    assert_eq!(
        u.unpopulated_bytes
            + u.system_bytes
            + u.device_bytes
            + u.migrating_bytes
            + u.poisoned_bytes,
        u.managed_bytes,
        "{u:#?}"
    );
    assert_eq!(
        u.in_use_bytes,
        u.managed_bytes + u.metadata_bytes + u.bounce_bytes,
        "{u:#?}"
    );
    assert!(u.staging_bytes <= u.device_bytes, "{u:#?}");
    assert_eq!(
        u.devices.iter().map(|d| d.resident_bytes).sum::<u64>(),
        u.device_bytes
    );
    for d in &u.devices {
        assert!(d.resident_bytes <= d.capacity_bytes - d.free_bytes, "{d:?}");
    }
}

#[test]
fn the_limit_refuses_an_allocation_and_recovers_after_frees() {
    let svm = svm();
    let idle = svm.memory_usage().in_use_bytes;
    let limit = idle + 6 * MIB;
    svm.set_memory_limit(limit).unwrap();
    assert_eq!(svm.memory_limit(), limit);

    let a = svm.alloc(4 * MIB as usize).unwrap();
    let before = svm.memory_usage();
    assert_eq!(before.managed_bytes, 4 * MIB);
    assert!(
        before.in_use_bytes > idle + 4 * MIB,
        "metadata is charged too"
    );
    match svm.alloc(4 * MIB as usize) {
        Err(Error::MemoryLimit {
            requested,
            in_use,
            limit: l,
        }) => {
            // The region's length plus the metadata it would need.
            assert!(
                requested > 4 * MIB && requested < 4 * MIB + 64 * 1024,
                "{requested}"
            );
            assert_eq!(in_use, before.in_use_bytes);
            assert_eq!(l, limit);
            assert!(in_use + requested > l);
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    // The refusal changed nothing.
    assert_eq!(svm.memory_usage(), before);

    // A small one still fits; page rounding is what gets charged.
    let small = svm.alloc(3 * PAGE as usize + 1).unwrap();
    assert_eq!(small.len(), 4 * PAGE);
    assert_eq!(svm.memory_usage().managed_bytes, 4 * MIB + 4 * PAGE);
    drop(small);

    drop(a);
    let after = svm.memory_usage();
    assert_eq!(after.managed_bytes, 0);
    assert_eq!(after.in_use_bytes, idle);
    let b = svm
        .alloc(4 * MIB as usize)
        .expect("fits again after the free");
    assert_eq!(svm.memory_usage().managed_bytes, b.len());
}

#[test]
fn a_limit_below_usage_is_refused_and_changes_nothing() {
    let svm = svm();
    let mut r = svm.alloc(MIB as usize).unwrap();
    r.as_mut_slice::<u8>()[0] = 1;
    let u = svm.memory_usage();
    let old = svm.memory_limit();
    match svm.set_memory_limit(u.in_use_bytes - 1) {
        Err(Error::LimitBelowUsage { limit, in_use }) => {
            assert_eq!(limit, u.in_use_bytes - 1);
            assert_eq!(in_use, u.in_use_bytes);
        }
        other => panic!("expected LimitBelowUsage, got {other:?}"),
    }
    assert_eq!(svm.memory_limit(), old);
    assert_eq!(svm.memory_usage(), u);
    // Exactly what is in use is accepted; then nothing more fits.
    svm.set_memory_limit(u.in_use_bytes).unwrap();
    assert!(matches!(
        svm.alloc(4096),
        Err(Error::MemoryLimit { limit, .. }) if limit == u.in_use_bytes
    ));
}

#[test]
fn the_default_limit_is_ram_minus_a_64th_minus_one_and_a_half_gib() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let total = kb * 1024;
    let expect = (total - total / 64).saturating_sub(3 << 29);
    let svm = Svm::with_emulated(4 * MIB).unwrap();
    assert_eq!(svm.memory_limit(), expect);
    assert_eq!(svmem::default_memory_limit(), expect);
    assert_eq!(svm.memory_usage().limit_bytes, expect);
    // The pin limit defaults to the memory limit.
    assert_eq!(svm.memory_usage().pin_limit_bytes, expect);
}

#[test]
fn usage_categories_add_up_as_pages_move() {
    let svm = svm();
    let cap = 16 * MIB;
    let mut r = svm.alloc(4 * MIB as usize).unwrap();
    let u = svm.memory_usage();
    assert_consistent(&u);
    assert_eq!(u.unpopulated_bytes, 4 * MIB);
    assert_eq!(u.devices[0].free_bytes, cap);

    // Half the region touched by the CPU.
    r.as_mut_slice::<u8>()[..2 * MIB as usize].fill(7);
    let u = svm.memory_usage();
    assert_consistent(&u);
    assert_eq!(u.system_bytes, 2 * MIB);
    assert_eq!(u.unpopulated_bytes, 2 * MIB);

    // To the device: touched pages keep their system page in staging,
    // untouched ones become zero-filled device pages with none.
    let rep = svm
        .migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!(rep.migrated, 1024);
    let u = svm.memory_usage();
    assert_consistent(&u);
    assert_eq!(u.system_bytes, 0);
    assert_eq!(u.device_bytes, 4 * MIB);
    assert_eq!(u.devices[0].resident_bytes, 4 * MIB);
    assert_eq!(u.devices[0].free_bytes, cap - 4 * MIB);
    assert_eq!(u.staging_bytes, 2 * MIB);
    assert_eq!(u.bounce_bytes, 0);

    // Back to system memory.
    let rep = svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    assert_eq!(rep.migrated, 1024);
    let u = svm.memory_usage();
    assert_consistent(&u);
    assert_eq!(u.system_bytes, 4 * MIB);
    assert_eq!((u.device_bytes, u.staging_bytes, u.bounce_bytes), (0, 0, 0));
    assert_eq!(u.devices[0].free_bytes, cap);
    assert!(r.as_slice::<u8>()[..2 * MIB as usize]
        .iter()
        .all(|&b| b == 7));
    assert!(r.as_slice::<u8>()[2 * MIB as usize..]
        .iter()
        .all(|&b| b == 0));

    // Metadata: the same figure as the counters, reported per page; at
    // least a state word and a PTE per page, far below a 64-byte struct page.
    assert_eq!(u.metadata_bytes, svm.stats().metadata_bytes);
    let per_page = u.metadata_bytes as f64 / 1024.0;
    assert!((u.metadata_bytes_per_page - per_page).abs() < 1e-9);
    assert!(
        u.metadata_bytes_per_page >= 8.0 && u.metadata_bytes_per_page < 64.0,
        "{}",
        u.metadata_bytes_per_page
    );
    // The usage is serializable.
    let json = serde_json::to_string(&u).unwrap();
    assert!(json.contains("\"metadata_bytes_per_page\""));
}

#[test]
fn bounce_buffers_are_charged_and_refused_past_the_limit() {
    let svm = svm();
    let r = svm.alloc(MIB as usize).unwrap();
    // Never touched: on the device with no staged system page.
    let rep = svm
        .migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!(rep.migrated, 256);
    let u = svm.memory_usage();
    assert_eq!(u.staging_bytes, 0);
    svm.set_memory_limit(u.in_use_bytes).unwrap();
    let u = svm.memory_usage();
    assert_eq!(u.limit_bytes, u.in_use_bytes);

    // No room for a bounce buffer: the pages stay on the device, busy.
    let rep = svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    assert_eq!(rep.migrated, 0);
    assert_eq!(rep.skipped_busy, 256);
    assert_eq!(svm.memory_usage(), u);
    assert_eq!(svm.location(r.addr()), Some(Location::Device(D0)));

    // A CPU fault must be served all the same (its window passes the limit).
    assert_eq!(r.as_slice::<u64>()[0], 0);
    assert_eq!(svm.location(r.addr()), Some(Location::System));
    let after = svm.memory_usage();
    assert_eq!(after.bounce_bytes, 0, "the bounce buffer is un-charged");
    assert_consistent(&after);

    // With room again, the rest comes back.
    svm.set_memory_limit(u.in_use_bytes + MIB).unwrap();
    let rep = svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    assert_eq!(rep.migrated + rep.already_there, 256);
    assert_eq!(rep.skipped(), 0);
    let u = svm.memory_usage();
    assert_eq!((u.device_bytes, u.bounce_bytes), (0, 0));
}

#[test]
fn nothing_leaks_once_every_region_is_dropped() {
    let svm = Svm::builder()
        .emulated(device("d0", 16))
        .unwrap()
        .emulated(device("d1", 16))
        .unwrap()
        .memory_limit(1 << 40)
        .build()
        .unwrap();
    let idle = svm.memory_usage();
    assert_consistent(&idle);
    assert_eq!(idle.managed_bytes, 0);
    assert!(idle.metadata_bytes > 0, "device allocators are metadata");
    for d in &idle.devices {
        assert_eq!(d.free_bytes, d.capacity_bytes);
    }

    // a: half touched, all on device 0 (staged and unstaged pages).
    let mut a = svm.alloc(4 * MIB as usize).unwrap();
    a.as_mut_slice::<u8>()[..2 * MIB as usize].fill(1);
    svm.migrate(a.addr(), a.len(), Location::Device(D0))
        .unwrap();
    // b: on device 1, then partly pinned back to system memory.
    let mut b = svm.alloc(2 * MIB as usize).unwrap();
    b.as_mut_slice::<u8>().fill(2);
    svm.migrate(b.addr(), b.len(), Location::Device(D1))
        .unwrap();
    svm.pin(b.addr(), MIB).unwrap();
    svm.pin(b.addr(), 4 * PAGE).unwrap();
    // c: attributes, device kernel faults, CPU reads pulling some back.
    let c = svm.alloc(2 * MIB as usize).unwrap();
    svm.set_attributes(
        c.at(MIB),
        MIB,
        &[
            Attr::PreferredLocation(Some(Location::Device(D1))),
            Attr::Access(D0, AccessMode::AccessInPlace),
        ],
    )
    .unwrap();
    svm.device(D1)
        .unwrap()
        .launch(512, |lane, i| lane.store::<u64>(c.at(i * PAGE), i + 1))
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(c.as_slice::<u64>()[512], 2, "page 1 holds item 1's value");

    let busy = svm.memory_usage();
    assert_consistent(&busy);
    assert!(busy.pinned_bytes >= MIB);
    assert!(busy.staging_bytes > 0);
    assert!(busy.devices[0].resident_bytes > 0 && busy.devices[1].resident_bytes > 0);
    assert!(busy.metadata_bytes > idle.metadata_bytes);

    drop((a, b, c));
    let u = svm.memory_usage();
    assert_consistent(&u);
    for d in &u.devices {
        assert_eq!(d.free_bytes, d.capacity_bytes, "device {} leaks", d.id);
        assert_eq!(d.resident_bytes, 0);
    }
    assert_eq!(
        (
            u.managed_bytes,
            u.system_bytes,
            u.device_bytes,
            u.staging_bytes,
            u.bounce_bytes,
            u.pinned_bytes
        ),
        (0, 0, 0, 0, 0, 0)
    );
    assert_eq!(u.metadata_bytes, idle.metadata_bytes);
    assert_eq!(u.in_use_bytes, idle.in_use_bytes);
    assert_eq!(u, idle);
}
