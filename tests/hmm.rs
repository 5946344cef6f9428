//! The behaviour of the Linux kernel's HMM self-tests (hmm-tests.c driving the
//! test_hmm device), re-expressed against svmem's emulated device: device
//! reads and writes with fault-pass accounting, read-only memory, migration to
//! the device and back through CPU faults, device release, multiple devices,
//! snapshots, kernel-mode (syscall) access to device-resident pages, and fault
//! granularity.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Seek, SeekFrom, Write};

use common::{emulated, fill, pattern, svm, two_devices};
use svmem::{DeviceId, Error, Location, PageView, Prot, Region, Svm, BLOCK_SIZE, PAGE_SIZE};

const MIB: usize = 1 << 20;
const DEV0: DeviceId = DeviceId(0);
const DEV1: DeviceId = DeviceId(1);

fn expected(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| pattern(i, seed)).collect()
}

/// Checks every byte of the region from the CPU (faulting pages back as needed).
fn check_cpu(region: &Region<'_>, seed: u8) {
    let got = region.as_slice::<u8>();
    if let Some(i) = (0..got.len()).find(|&i| got[i] != pattern(i, seed)) {
        panic!(
            "CPU byte {i} (page {}) is {:#x}, expected {:#x}",
            i / PAGE_SIZE,
            got[i],
            pattern(i, seed)
        );
    }
}

fn capacity(svm: &Svm, d: DeviceId) -> u64 {
    svm.device(d).unwrap().info().capacity_bytes
}

fn free(svm: &Svm, d: DeviceId) -> u64 {
    svm.device(d).unwrap().info().free_bytes
}

fn migrate_all(svm: &Svm, region: &Region<'_>, to: Location) -> svmem::MigrateReport {
    svm.migrate(region.addr(), region.len(), to)
        .expect("migrate the whole region")
}

// ---------------------------------------------------------------------------
// Device reads and writes (hmm_anon_read, hmm_anon_write, ...)
// ---------------------------------------------------------------------------

#[test]
fn device_read_of_fresh_memory_reads_zeros_in_one_pass() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let dev = svm.device(DEV0).unwrap();

    let mut buf = vec![0xa5u8; MIB];
    let rep = dev.read(region.addr(), &mut buf).unwrap();
    assert_eq!(rep.pages, region.npages() as u64);
    assert_eq!(rep.fault_passes, 1);
    assert!(
        buf.iter().all(|&b| b == 0),
        "fresh memory must read as zeros"
    );

    let rep = dev.read(region.addr(), &mut buf).unwrap();
    assert_eq!(rep.pages, region.npages() as u64);
    assert_eq!(rep.fault_passes, 0, "a warm read needs no fault pass");
    assert_eq!(svm.stats().device_fault_passes, 1);
    // The CPU sees zeros too.
    assert!(region.as_slice::<u8>().iter().all(|&b| b == 0));
}

#[test]
fn device_read_of_cpu_written_memory() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 7);
    let dev = svm.device(DEV0).unwrap();

    let mut buf = vec![0u8; MIB];
    let rep = dev.read(region.addr(), &mut buf).unwrap();
    assert_eq!(rep.pages, region.npages() as u64);
    assert_eq!(rep.fault_passes, 1);
    assert_eq!(buf, expected(MIB, 7));

    let mut again = vec![0u8; MIB];
    let rep = dev.read(region.addr(), &mut again).unwrap();
    assert_eq!(rep.fault_passes, 0);
    assert_eq!(again, buf);
}

#[test]
fn device_read_of_partial_unaligned_range() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 3);
    let dev = svm.device(DEV0).unwrap();
    // 3 pages touched: starts 100 bytes before the end of page 4.
    let start = 5 * PAGE_SIZE - 100;
    let len = PAGE_SIZE + 200;
    let mut buf = vec![0u8; len];
    let rep = dev.read(region.at(start as u64), &mut buf).unwrap();
    assert_eq!(rep.pages, 3);
    assert_eq!(rep.fault_passes, 1);
    assert_eq!(buf, expected(start + len, 3)[start..]);
}

#[test]
fn device_write_to_fresh_memory_is_seen_by_cpu() {
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    let dev = svm.device(DEV0).unwrap();

    let data = expected(MIB, 11);
    let rep = dev.write(region.addr(), &data).unwrap();
    assert_eq!(rep.pages, region.npages() as u64);
    assert_eq!(rep.fault_passes, 1);
    check_cpu(&region, 11);

    let rep = dev.write(region.addr(), &data).unwrap();
    assert_eq!(rep.fault_passes, 0, "a warm write needs no fault pass");
}

#[test]
fn device_write_to_cpu_written_memory_is_seen_by_cpu() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 1);
    let dev = svm.device(DEV0).unwrap();

    let rep = dev.write(region.addr(), &expected(MIB, 2)).unwrap();
    assert_eq!(rep.pages, region.npages() as u64);
    assert_eq!(rep.fault_passes, 1);
    check_cpu(&region, 2);
}

#[test]
fn device_write_after_device_read_upgrades_in_one_pass() {
    // A read maps fresh pages read-only-zero; the following write must still work.
    let svm = svm(16 << 20);
    let region = svm.alloc(256 << 10).unwrap();
    let dev = svm.device(DEV0).unwrap();
    let mut buf = vec![0u8; region.len() as usize];
    assert_eq!(dev.read(region.addr(), &mut buf).unwrap().fault_passes, 1);
    let data = expected(region.len() as usize, 9);
    let rep = dev.write(region.addr(), &data).unwrap();
    assert!(rep.fault_passes <= 1);
    check_cpu(&region, 9);
}

// ---------------------------------------------------------------------------
// Read-only memory (hmm_anon_read_prot, hmm_anon_write_prot)
// ---------------------------------------------------------------------------

#[test]
fn read_only_memory_reads_but_refuses_device_writes() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 5);
    region.protect(Prot::ReadOnly).unwrap();
    let dev = svm.device(DEV0).unwrap();

    let mut buf = vec![0u8; MIB];
    let rep = dev.read(region.addr(), &mut buf).unwrap();
    assert_eq!(rep.pages, region.npages() as u64);
    assert_eq!(rep.fault_passes, 1);
    assert_eq!(buf, expected(MIB, 5));

    let junk = vec![0xeeu8; 2 * PAGE_SIZE];
    match dev.write(region.at(PAGE_SIZE as u64), &junk) {
        Err(Error::ReadOnly { dev: d, addr }) => {
            assert_eq!(d, DEV0);
            assert_eq!(addr, region.at(PAGE_SIZE as u64));
        }
        other => panic!("device write to read-only memory: {other:?}"),
    }
    // Memory is untouched.
    check_cpu(&region, 5);
    let views = dev.snapshot(region.addr(), region.npages()).unwrap();
    assert!(
        views.iter().all(|&v| v == PageView::ReadOnly),
        "snapshot of read-only memory: {views:?}"
    );

    // Read-only pages do not migrate.
    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.migrated, 0);
    assert_eq!(rep.skipped_not_migratable, region.npages() as u64);
    check_cpu(&region, 5);

    // Writable again: the device may write.
    region.protect(Prot::ReadWrite).unwrap();
    dev.write(region.addr(), &expected(MIB, 6)).unwrap();
    check_cpu(&region, 6);
}

// ---------------------------------------------------------------------------
// Migration (hmm_migrate, hmm_migrate_fault, hmm_migrate_release, ...)
// ---------------------------------------------------------------------------

#[test]
fn migrate_to_device_then_cpu_reads_back() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(4 * MIB).unwrap();
    fill(&mut region, 21);
    let before = svm.stats();

    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.requested, region.npages() as u64);
    assert_eq!(rep.migrated, region.npages() as u64);
    assert_eq!(rep.skipped(), 0);
    assert_eq!(svm.location(region.addr()), Some(Location::Device(DEV0)));
    assert_eq!(
        free(&svm, DEV0),
        capacity(&svm, DEV0) - region.len(),
        "device memory holds the region"
    );

    check_cpu(&region, 21);
    let after = svm.stats();
    assert_eq!(
        after.to_device_pages - before.to_device_pages,
        region.npages() as u64
    );
    assert!(after.cpu_faults > before.cpu_faults, "the CPU must fault");
    assert_eq!(
        after.to_system_pages - before.to_system_pages,
        region.npages() as u64
    );
    assert_eq!(svm.location(region.addr()), Some(Location::System));
    assert_eq!(free(&svm, DEV0), capacity(&svm, DEV0));
}

#[test]
fn migrate_to_device_then_device_reads_locally() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(2 * MIB).unwrap();
    fill(&mut region, 4);
    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.migrated, region.npages() as u64);
    let dev = svm.device(DEV0).unwrap();
    let before = svm.stats();

    let views = dev.snapshot(region.addr(), region.npages()).unwrap();
    assert!(
        views.iter().all(|&v| v == PageView::DeviceLocal),
        "{views:?}"
    );

    let mut buf = vec![0u8; 2 * MIB];
    let rep = dev.read(region.addr(), &mut buf).unwrap();
    assert_eq!(rep.pages, region.npages() as u64);
    assert!(rep.fault_passes <= 1);
    assert_eq!(buf, expected(2 * MIB, 4));
    let rep = dev.read(region.addr(), &mut buf).unwrap();
    assert_eq!(rep.fault_passes, 0);
    assert_eq!(buf, expected(2 * MIB, 4));

    // The device's reads did not move anything.
    let views = dev.snapshot(region.addr(), region.npages()).unwrap();
    assert!(views.iter().all(|&v| v == PageView::DeviceLocal));
    assert_eq!(svm.stats().to_system_pages, 0);
    assert_eq!(svm.stats().cpu_faults, before.cpu_faults);
}

#[test]
fn device_write_to_device_resident_pages_then_cpu_reads() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 1);
    migrate_all(&svm, &region, Location::Device(DEV0));
    let dev = svm.device(DEV0).unwrap();
    let rep = dev.write(region.addr(), &expected(MIB, 2)).unwrap();
    assert!(rep.fault_passes <= 1);
    assert_eq!(svm.location(region.addr()), Some(Location::Device(DEV0)));
    check_cpu(&region, 2);
}

#[test]
fn mixed_residency_migrates_only_what_came_back() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(4 * MIB).unwrap();
    fill(&mut region, 33);
    let n = region.npages() as u64;
    assert_eq!(
        migrate_all(&svm, &region, Location::Device(DEV0)).migrated,
        n
    );

    // Page-level faults; the CPU touches every other page.
    region.set_granularity(0).unwrap();
    let mut back = 0u64;
    for p in (0..region.npages()).step_by(2) {
        let off = p * PAGE_SIZE + 17;
        assert_eq!(
            std::hint::black_box(region.as_slice::<u8>()[off]),
            pattern(off, 33)
        );
        back += 1;
    }
    for p in 0..region.npages() {
        let want = if p % 2 == 0 {
            Location::System
        } else {
            Location::Device(DEV0)
        };
        assert_eq!(svm.location(region.at((p * PAGE_SIZE) as u64)), Some(want));
    }

    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.requested, n);
    assert_eq!(rep.migrated, back);
    assert_eq!(rep.already_there, n - back);
    assert_eq!(rep.migrated + rep.already_there, rep.requested);
    check_cpu(&region, 33);
}

#[test]
fn mixed_residency_with_default_window() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(4 * MIB).unwrap();
    fill(&mut region, 34);
    let n = region.npages() as u64;
    migrate_all(&svm, &region, Location::Device(DEV0));
    // One touch in the first 2 MiB brings that whole window back.
    assert_eq!(
        std::hint::black_box(region.as_slice::<u8>()[100]),
        pattern(100, 34)
    );
    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.migrated, (BLOCK_SIZE / PAGE_SIZE) as u64);
    assert_eq!(rep.migrated + rep.already_there, rep.requested);
    assert_eq!(rep.requested, n);
    check_cpu(&region, 34);
}

#[test]
fn migrate_back_to_system_explicitly() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(2 * MIB).unwrap();
    fill(&mut region, 8);
    migrate_all(&svm, &region, Location::Device(DEV0));
    let rep = migrate_all(&svm, &region, Location::System);
    assert_eq!(rep.migrated, region.npages() as u64);
    assert_eq!(free(&svm, DEV0), capacity(&svm, DEV0));
    let faults = svm.stats().cpu_faults;
    check_cpu(&region, 8);
    assert_eq!(svm.stats().cpu_faults, faults, "pages are already back");
    let rep = migrate_all(&svm, &region, Location::System);
    assert_eq!(rep.already_there, region.npages() as u64);
}

#[test]
fn release_device_then_cpu_reads() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(4 * MIB).unwrap();
    fill(&mut region, 44);
    migrate_all(&svm, &region, Location::Device(DEV0));
    let dev = svm.device(DEV0).unwrap();
    assert!(free(&svm, DEV0) < capacity(&svm, DEV0));

    let rep = dev.release();
    assert_eq!(rep.requested, region.npages() as u64);
    assert_eq!(rep.migrated, region.npages() as u64);
    let info = dev.info();
    assert_eq!(info.free_bytes, info.capacity_bytes);
    assert_eq!(svm.location(region.addr()), Some(Location::System));

    let faults = svm.stats().cpu_faults;
    check_cpu(&region, 44);
    assert_eq!(svm.stats().cpu_faults, faults);
    // Releasing again finds nothing.
    assert_eq!(dev.release().requested, 0);
}

#[test]
fn repeated_migrate_and_read_cycles() {
    let svm = svm(16 << 20);
    let cap = capacity(&svm, DEV0);
    let dev = svm.device(DEV0).unwrap();
    for cycle in 0..20u8 {
        let mut region = svm.alloc(MIB).unwrap();
        fill(&mut region, cycle);
        let rep = migrate_all(&svm, &region, Location::Device(DEV0));
        assert_eq!(rep.migrated, region.npages() as u64, "cycle {cycle}");
        let mut buf = vec![0u8; MIB];
        dev.read(region.addr(), &mut buf).unwrap();
        assert_eq!(buf, expected(MIB, cycle), "cycle {cycle}: device read");
        check_cpu(&region, cycle);
        drop(region);
        assert_eq!(free(&svm, DEV0), cap, "cycle {cycle}");
    }
    assert_eq!(svm.stats().to_device_pages, 20 * 256);
}

#[test]
fn migrate_subrange_only() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 12);
    let rep = svm
        .migrate(
            region.at(4 * PAGE_SIZE as u64),
            8 * PAGE_SIZE as u64,
            Location::Device(DEV0),
        )
        .unwrap();
    assert_eq!(rep.requested, 8);
    assert_eq!(rep.migrated, 8);
    let views = svm
        .device(DEV0)
        .unwrap()
        .snapshot(region.addr(), 16)
        .unwrap();
    for (p, v) in views.iter().enumerate() {
        let want = if (4..12).contains(&p) {
            PageView::DeviceLocal
        } else {
            PageView::Writable
        };
        assert_eq!(*v, want, "page {p}");
    }
    check_cpu(&region, 12);
}

// ---------------------------------------------------------------------------
// Two devices (hmm_mixedmap / multiple device tests)
// ---------------------------------------------------------------------------

#[test]
fn two_devices_share_then_pull_back() {
    let svm = two_devices(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 55);
    let (d0, d1) = (svm.device(DEV0).unwrap(), svm.device(DEV1).unwrap());
    let want = expected(MIB, 55);

    let mut buf = vec![0u8; MIB];
    assert_eq!(d0.read(region.addr(), &mut buf).unwrap().fault_passes, 1);
    assert_eq!(buf, want);
    buf.fill(0);
    assert_eq!(d1.read(region.addr(), &mut buf).unwrap().fault_passes, 1);
    assert_eq!(buf, want);

    let rep = migrate_all(&svm, &region, Location::Device(DEV1));
    assert_eq!(rep.migrated, region.npages() as u64);
    let v0 = d0.snapshot(region.addr(), region.npages()).unwrap();
    assert!(v0.iter().all(|&v| v == PageView::DeviceRemote), "{v0:?}");
    let v1 = d1.snapshot(region.addr(), region.npages()).unwrap();
    assert!(v1.iter().all(|&v| v == PageView::DeviceLocal), "{v1:?}");

    // Device 0 reads: its stale translations are gone, the read faults once
    // and pulls the pages off device 1.
    buf.fill(0);
    let rep = d0.read(region.addr(), &mut buf).unwrap();
    assert_eq!(rep.fault_passes, 1);
    assert_eq!(rep.pages, region.npages() as u64);
    assert_eq!(buf, want);
    assert_ne!(
        svm.location(region.addr()),
        Some(Location::Device(DEV1)),
        "device 0's access pulls the pages away from device 1"
    );
    assert_eq!(free(&svm, DEV1), capacity(&svm, DEV1));
    let v0 = d0.snapshot(region.addr(), region.npages()).unwrap();
    assert!(v0.iter().all(|&v| v != PageView::DeviceRemote), "{v0:?}");
    check_cpu(&region, 55);
}

#[test]
fn migrate_between_devices_directly() {
    let svm = two_devices(16 << 20);
    let mut region = svm.alloc(2 * MIB).unwrap();
    fill(&mut region, 66);
    migrate_all(&svm, &region, Location::Device(DEV0));
    let rep = migrate_all(&svm, &region, Location::Device(DEV1));
    assert_eq!(rep.migrated, region.npages() as u64);
    assert_eq!(svm.location(region.addr()), Some(Location::Device(DEV1)));
    assert_eq!(free(&svm, DEV0), capacity(&svm, DEV0));
    let mut buf = vec![0u8; 2 * MIB];
    svm.device(DEV1)
        .unwrap()
        .read(region.addr(), &mut buf)
        .unwrap();
    assert_eq!(buf, expected(2 * MIB, 66));
    check_cpu(&region, 66);
}

#[test]
fn device_write_pulls_pages_from_other_device() {
    let svm = two_devices(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 70);
    migrate_all(&svm, &region, Location::Device(DEV1));
    let rep = svm
        .device(DEV0)
        .unwrap()
        .write(region.addr(), &expected(MIB, 71))
        .unwrap();
    assert_eq!(rep.fault_passes, 1);
    assert_eq!(free(&svm, DEV1), capacity(&svm, DEV1));
    check_cpu(&region, 71);
}

// ---------------------------------------------------------------------------
// Snapshot (hmm_anon_snapshot style)
// ---------------------------------------------------------------------------

#[test]
fn snapshot_of_mixed_range() {
    let svm = two_devices(16 << 20);
    let mut region = svm.alloc(8 * PAGE_SIZE).unwrap();
    region.set_granularity(0).unwrap();
    let base = region.addr();
    let p = move |k: usize| base.offset((k * PAGE_SIZE) as u64);

    // page 0: never touched -> None
    // page 1: CPU read only -> Zero
    assert_eq!(
        std::hint::black_box(region.as_slice::<u8>()[PAGE_SIZE + 5]),
        0
    );
    // page 2: CPU written -> Writable
    region.as_mut_slice::<u8>()[2 * PAGE_SIZE + 9] = 0x42;
    // page 3: on device 0 (from the device 0 point of view: DeviceLocal)
    region.as_mut_slice::<u8>()[3 * PAGE_SIZE] = 0x43;
    // page 4: on device 1 (DeviceRemote)
    region.as_mut_slice::<u8>()[4 * PAGE_SIZE] = 0x44;
    let to = |k: usize, d: DeviceId| {
        let rep = svm
            .migrate(p(k), PAGE_SIZE as u64, Location::Device(d))
            .unwrap();
        assert_eq!(rep.migrated, 1, "page {k}");
    };
    to(3, DEV0);
    to(4, DEV1);

    let views = svm
        .device(DEV0)
        .unwrap()
        .snapshot(region.addr(), 5)
        .unwrap();
    assert_eq!(
        views,
        vec![
            PageView::None,
            PageView::Zero,
            PageView::Writable,
            PageView::DeviceLocal,
            PageView::DeviceRemote,
        ]
    );
    let views = svm.device(DEV1).unwrap().snapshot(p(3), 2).unwrap();
    assert_eq!(views, vec![PageView::DeviceRemote, PageView::DeviceLocal]);

    // A read-only region, in a separate region.
    let mut ro = svm.alloc(2 * PAGE_SIZE).unwrap();
    ro.as_mut_slice::<u8>().fill(0x77);
    ro.protect(Prot::ReadOnly).unwrap();
    let views = svm.device(DEV0).unwrap().snapshot(ro.addr(), 2).unwrap();
    assert_eq!(views, vec![PageView::ReadOnly, PageView::ReadOnly]);

    // A snapshot faults nothing: everything is where it was.
    assert_eq!(svm.location(p(3)), Some(Location::Device(DEV0)));
    assert_eq!(svm.location(p(4)), Some(Location::Device(DEV1)));
    let data = region.as_slice::<u8>();
    assert_eq!(data[2 * PAGE_SIZE + 9], 0x42);
    assert_eq!(data[3 * PAGE_SIZE], 0x43);
    assert_eq!(data[4 * PAGE_SIZE], 0x44);
}

// ---------------------------------------------------------------------------
// Freeing (hmm_migrate_... + munmap)
// ---------------------------------------------------------------------------

#[test]
fn drop_region_on_device_returns_device_memory() {
    let svm = svm(8 << 20);
    let cap = capacity(&svm, DEV0);
    {
        let mut region = svm.alloc(8 * MIB).unwrap();
        fill(&mut region, 90);
        let rep = migrate_all(&svm, &region, Location::Device(DEV0));
        assert_eq!(rep.migrated, region.npages() as u64);
        assert_eq!(free(&svm, DEV0), 0);
    }
    assert_eq!(free(&svm, DEV0), cap);

    // The whole device is usable again.
    let mut region = svm.alloc(8 * MIB).unwrap();
    fill(&mut region, 91);
    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.migrated, region.npages() as u64);
    assert_eq!(rep.skipped_no_device_memory, 0);
    check_cpu(&region, 91);
}

// ---------------------------------------------------------------------------
// Kernel-mode access to device-resident pages (read(2)/write(2) fault into uffd)
// ---------------------------------------------------------------------------

fn temp_file(tag: &str) -> (std::fs::File, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "svmem-hmm-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create temp file");
    (f, path)
}

#[test]
fn kernel_read_into_device_resident_page() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 13);
    let (mut f, path) = temp_file("read");
    let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i * 7 + 1) as u8).collect();
    f.write_all(&data).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();

    region.set_granularity(0).unwrap();
    migrate_all(&svm, &region, Location::Device(DEV0));
    // read(2) into pages 3 and 4, both on the device.
    let off = 3 * PAGE_SIZE;
    f.read_exact(&mut region.as_mut_slice::<u8>()[off..off + 2 * PAGE_SIZE])
        .unwrap();
    std::fs::remove_file(&path).ok();

    let got = region.as_slice::<u8>();
    assert_eq!(&got[off..off + 2 * PAGE_SIZE], &data[..]);
    let want = expected(MIB, 13);
    assert_eq!(&got[..off], &want[..off]);
    assert_eq!(&got[off + 2 * PAGE_SIZE..], &want[off + 2 * PAGE_SIZE..]);
    assert!(svm.stats().cpu_faults > 0);
}

#[test]
fn kernel_write_from_device_resident_page() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 14);
    migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(svm.location(region.addr()), Some(Location::Device(DEV0)));

    let (mut f, path) = temp_file("write");
    let off = 5 * PAGE_SIZE;
    f.write_all(&region.as_slice::<u8>()[off..off + 3 * PAGE_SIZE])
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(back, expected(off + 3 * PAGE_SIZE, 14)[off..]);
    assert!(svm.stats().cpu_faults > 0);
    check_cpu(&region, 14);
}

// ---------------------------------------------------------------------------
// Zero pages and unpopulated pages
// ---------------------------------------------------------------------------

#[test]
fn unpopulated_pages_migrate_as_zero_fill_without_copy() {
    let svm = svm(16 << 20);
    let region = svm.alloc(2 * MIB).unwrap();
    let before = svm.stats();
    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.migrated, region.npages() as u64);
    let after = svm.stats();
    assert_eq!(
        after.device_zero_fill_pages - before.device_zero_fill_pages,
        region.npages() as u64
    );
    assert_eq!(after.to_device_bytes, before.to_device_bytes, "no copy");
    assert_eq!(
        after.to_device_pages - before.to_device_pages,
        region.npages() as u64
    );
    let dev = svm.device(DEV0).unwrap();
    let views = dev.snapshot(region.addr(), region.npages()).unwrap();
    assert!(views.iter().all(|&v| v == PageView::DeviceLocal));

    let mut buf = vec![0xffu8; 2 * MIB];
    dev.read(region.addr(), &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert!(region.as_slice::<u8>().iter().all(|&b| b == 0));
}

#[test]
fn zero_pages_read_by_cpu_migrate_as_zero() {
    // Pages the CPU only read map the zero page; migrating them must not
    // produce garbage.
    let svm = svm(16 << 20);
    let region = svm.alloc(MIB).unwrap();
    assert!(region.as_slice::<u8>().iter().all(|&b| b == 0));
    let rep = migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(rep.migrated, region.npages() as u64);
    let mut buf = vec![0xffu8; MIB];
    svm.device(DEV0)
        .unwrap()
        .read(region.addr(), &mut buf)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert!(region.as_slice::<u8>().iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------------------
// Fault granularity
// ---------------------------------------------------------------------------

#[test]
fn page_granularity_brings_back_one_page() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 17);
    region.set_granularity(0).unwrap();
    migrate_all(&svm, &region, Location::Device(DEV0));
    let before = svm.stats();

    let off = 10 * PAGE_SIZE + 123;
    assert_eq!(
        std::hint::black_box(region.as_slice::<u8>()[off]),
        pattern(off, 17)
    );
    let after = svm.stats();
    assert_eq!(after.to_system_pages - before.to_system_pages, 1);
    assert_eq!(
        svm.location(region.at(10 * PAGE_SIZE as u64)),
        Some(Location::System)
    );
    for k in [9u64, 11] {
        assert_eq!(
            svm.location(region.at(k * PAGE_SIZE as u64)),
            Some(Location::Device(DEV0)),
            "neighbour page {k}"
        );
    }
    assert_eq!(
        free(&svm, DEV0),
        capacity(&svm, DEV0) - region.len() + PAGE_SIZE as u64
    );
}

#[test]
fn default_granularity_brings_back_the_2mib_window() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(4 * MIB).unwrap();
    fill(&mut region, 18);
    migrate_all(&svm, &region, Location::Device(DEV0));
    let before = svm.stats();

    let off = 300 * PAGE_SIZE + 5;
    assert_eq!(
        std::hint::black_box(region.as_slice::<u8>()[off]),
        pattern(off, 18)
    );
    let after = svm.stats();
    let window = (BLOCK_SIZE / PAGE_SIZE) as u64;
    assert_eq!(after.to_system_pages - before.to_system_pages, window);
    for k in [0u64, 299, 301, 511] {
        assert_eq!(
            svm.location(region.at(k * PAGE_SIZE as u64)),
            Some(Location::System),
            "page {k} is in the faulting window"
        );
    }
    for k in [512u64, 1023] {
        assert_eq!(
            svm.location(region.at(k * PAGE_SIZE as u64)),
            Some(Location::Device(DEV0)),
            "page {k} is outside the faulting window"
        );
    }
    check_cpu(&region, 18);
}

#[test]
fn intermediate_granularity_window() {
    let svm = svm(16 << 20);
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 19);
    region.set_granularity(4).unwrap(); // 16 pages
    migrate_all(&svm, &region, Location::Device(DEV0));
    let off = 20 * PAGE_SIZE;
    assert_eq!(
        std::hint::black_box(region.as_slice::<u8>()[off]),
        pattern(off, 19)
    );
    for k in 0..64u64 {
        let want = if (16..32).contains(&k) {
            Location::System
        } else {
            Location::Device(DEV0)
        };
        assert_eq!(
            svm.location(region.at(k * PAGE_SIZE as u64)),
            Some(want),
            "page {k}"
        );
    }
}

#[test]
fn builder_granularity_applies_to_new_regions() {
    let svm = Svm::builder()
        .emulated(emulated("gpu", 16 << 20))
        .unwrap()
        .granularity(0)
        .build()
        .unwrap();
    let mut region = svm.alloc(MIB).unwrap();
    fill(&mut region, 20);
    migrate_all(&svm, &region, Location::Device(DEV0));
    assert_eq!(
        std::hint::black_box(region.as_slice::<u8>()[0]),
        pattern(0, 20)
    );
    assert_eq!(svm.location(region.addr()), Some(Location::System));
    assert_eq!(
        svm.location(region.at(PAGE_SIZE as u64)),
        Some(Location::Device(DEV0))
    );
}

// ---------------------------------------------------------------------------
// Shared atomics (device and CPU agree on one word)
// ---------------------------------------------------------------------------

#[test]
fn atomics_survive_migration() {
    use std::sync::atomic::Ordering;
    let svm = svm(16 << 20);
    let mut region = svm.alloc(64 * PAGE_SIZE).unwrap();
    for (i, w) in region.as_atomic_u64().iter().enumerate() {
        w.store(i as u64 * 3, Ordering::Relaxed);
    }
    migrate_all(&svm, &region, Location::Device(DEV0));
    svm.device(DEV0)
        .unwrap()
        .write(region.at(8), &77u64.to_ne_bytes())
        .unwrap();
    let words = region.as_atomic_u64();
    assert_eq!(words[1].load(Ordering::Relaxed), 77);
    assert_eq!(words[0].fetch_add(1, Ordering::Relaxed), 0);
    assert_eq!(words[1000].load(Ordering::Relaxed), 3000);
}
