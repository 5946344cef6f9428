//! The timing model (`svmem::device::timing`): its arithmetic against
//! hand-computed cases, its determinism, and `none` charging nothing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use svmem::device::timing::{Bound, Clock, LaneClock};
use svmem::{AccessKind, AccessMode, Attr, DeviceId, EmulatedConfig, Location, MemoryType};
use svmem::{Svm, TimingProfile, PAGE_SIZE};

const D0: DeviceId = DeviceId(0);

/// Round numbers: a link of 1 byte per ns each way, device memory of 4
/// bytes per ns, 1 µs round trips with one access in flight, 5 µs copy
/// setup, fault batches of 10 µs + 1 µs per fault, no TLB cost.
fn simple() -> TimingProfile {
    TimingProfile {
        name: "custom",
        hbm_bytes_per_sec: 4_000_000_000,
        link_h2d_bytes_per_sec: 1_000_000_000,
        link_d2h_bytes_per_sec: 1_000_000_000,
        link_latency_ns: 1_000,
        remote_in_flight: 1,
        remote_min_bytes: 64,
        copy_setup_ns: 5_000,
        fault_batch_ns: 10_000,
        fault_ns: 1_000,
        tlb_miss_ns: 0,
    }
}

fn svm(profile: TimingProfile, lanes: usize, engines: usize, xnack: bool) -> Svm {
    Svm::builder()
        .emulated(EmulatedConfig {
            name: "t".into(),
            memory_bytes: 32 << 20,
            copy_engines: engines,
            memory_type: MemoryType::Private,
            compute_units: lanes,
            commit_up_front: false,
        })
        .unwrap()
        .xnack(xnack)
        .timing(profile)
        .build()
        .unwrap()
}

#[test]
fn one_remote_read_costs_its_bytes_latency_and_fault() {
    let svm = svm(simple(), 1, 1, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(7);
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[Attr::Access(D0, AccessMode::AccessInPlace)],
    )
    .unwrap();
    let dev = svm.device(D0).unwrap();
    let before = dev.timing().unwrap();
    let rep = dev
        .launch(1, |lane, _| {
            let mut buf = vec![0u64; PAGE_SIZE / 8];
            lane.read_slice(r.addr(), &mut buf)?;
            assert!(buf.iter().all(|&v| v == 7));
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(
        rep.faults, 1,
        "the first touch faults once, then maps in place"
    );
    let t = &rep.timing;
    assert_eq!(t.remote_read_bytes, PAGE_SIZE as u64);
    assert_eq!(t.device_bytes, 0);
    assert_eq!(
        t.copied_to_device_bytes, 0,
        "served in place, nothing copied"
    );
    // 4096 bytes at 1 B/ns + one 1 µs round trip + the 11 µs batch it waited for.
    assert_eq!(t.modelled, Duration::from_nanos(4_096 + 1_000 + 11_000));
    assert_eq!(t.bound, Bound::Lanes);
    assert_eq!(t.engine, Duration::from_micros(11));
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.modelled, t.modelled);
    assert_eq!(d.fault_batches, 1);
    assert_eq!(d.remote_read_bytes, PAGE_SIZE as u64);
    assert_eq!(svm.stats().remote_read_bytes, PAGE_SIZE as u64);
}

#[test]
fn one_migration_costs_setup_plus_bytes_over_the_link() {
    let svm = svm(simple(), 1, 1, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(1);
    let dev = svm.device(D0).unwrap();
    let before = dev.timing().unwrap();
    let m = svm
        .migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    assert_eq!(m.migrated, 512);
    assert_eq!(m.modelled_ns, 5_000 + (2 << 20), "the report has it too");
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.copied_to_device_bytes, 2 << 20);
    // One job of 512 pages: 5 µs + 2 MiB at 1 B/ns; outside a launch it
    // is charged serially.
    let want = Duration::from_nanos(5_000 + (2 << 20));
    assert_eq!(d.copies, want);
    assert_eq!(d.modelled, want);
    assert_eq!(d.launches, Duration::ZERO);
    // And home again, the other direction.
    svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.copied_to_host_bytes, 2 << 20);
    assert_eq!(d.modelled, want * 2);
    assert_eq!(svm.stats().modelled_ns, (want * 2).as_nanos() as u64);
}

#[test]
fn two_engines_share_the_link() {
    // Two engines each move 2 MiB at once: the link carries 4 MiB, so the
    // pair takes twice as long as one, not the same.
    let svm = svm(simple(), 1, 2, true);
    let mut r = svm.alloc(4 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(1);
    let dev = svm.device(D0).unwrap();
    let before = dev.timing().unwrap();
    svm.migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.copied_to_device_bytes, 4 << 20);
    assert_eq!(d.modelled, Duration::from_nanos(2 * (5_000 + (2 << 20))));

    // The same inside a launch: two lanes reading 1 MiB remotely each are
    // bound by the shared link (2 MiB), not by either lane (1 MiB).
    let p = TimingProfile {
        link_latency_ns: 0,
        ..simple()
    };
    let clock = Clock::new(p);
    let span = clock.launch_begin();
    let mut lane = LaneClock::default();
    for _ in 0..256 {
        lane.access(true, AccessKind::Read, 4096, p.remote_min_bytes);
    }
    span.lane_done(&lane, 2);
    span.lane_done(&lane, 2);
    let t = span.end();
    assert_eq!(t.bound, Bound::LinkToDevice);
    assert_eq!(t.modelled, Duration::from_nanos(2 << 20));
    assert_eq!(clock.report().modelled, Duration::from_nanos(2 << 20));
}

#[test]
fn lane_arithmetic_by_hand() {
    let p = simple();
    let mut l = LaneClock::default();
    // 8 bytes remote: 64 on the wire (the minimum), one round trip.
    l.access(true, AccessKind::Read, 8, p.remote_min_bytes);
    // An atomic goes both ways.
    l.access(true, AccessKind::Atomic, 8, p.remote_min_bytes);
    // 4000 device bytes; with 2 lanes a lane has half of 4 B/ns.
    l.access(false, AccessKind::Write, 4000, p.remote_min_bytes);
    assert_eq!((l.remote_read_bytes, l.remote_write_bytes), (16, 8));
    assert_eq!((l.wire_read_bytes, l.wire_write_bytes), (128, 64));
    let ns = l.path_ps(&p, 2) / 1000;
    // hbm 4000·2/4 = 2000; link 128 + 64; latency 2 accesses · 1000 · 2 lanes.
    assert_eq!(ns, 2_000 + 192 + 4_000);
    assert_eq!(TimingProfile::none().copy_ps(1 << 20, 1 << 20, 1 << 20), 0);
    assert_eq!(p.fault_batch_ps(3), 13_000_000);
    // The modelled TLB maps 2 MiB blocks: walks inside one block miss once,
    // walks over more blocks than it holds miss every time.
    let mut l = LaneClock::default();
    for vpn in 0..512 {
        l.tlb_walk(vpn);
    }
    assert_eq!(l.tlb_misses, 1);
    let mut l = LaneClock::default();
    for round in 0..2 {
        for b in 0..64u64 {
            l.tlb_walk(b * 512 + round);
        }
    }
    assert_eq!(l.tlb_misses, 128);
    let ns = l.path_ps(
        &TimingProfile {
            tlb_miss_ns: 7,
            ..p
        },
        1,
    ) / 1000;
    assert_eq!(ns, 128 * 7);
}

/// One lane reads a CPU-written array backwards (no sequential sweep, so no
/// fault-ahead racing the lane): faults, migrations and device reads.
fn backwards_sweep(profile: TimingProfile) -> (svmem::LaunchTiming, svmem::TimingReport) {
    let svm = svm(profile, 1, 2, true);
    let n = (6 << 20) / 8;
    let mut r = svm.alloc(n * 8).unwrap();
    for (i, v) in r.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = i as u64;
    }
    svm.set_attributes(
        r.addr(),
        r.len(),
        &[Attr::PreferredLocation(Some(Location::Device(D0)))],
    )
    .unwrap();
    let dev = svm.device(D0).unwrap();
    let before = dev.timing().unwrap();
    let chunk = 8192usize;
    let items = (n / chunk) as u64;
    let sum = std::sync::atomic::AtomicU64::new(0);
    let rep = dev
        .launch(items, |lane, item| {
            let lo = (items - 1 - item) as usize * chunk;
            let mut buf = vec![0u64; chunk];
            lane.read_slice(r.at(lo as u64 * 8), &mut buf)?;
            sum.fetch_add(
                buf.iter().sum::<u64>(),
                std::sync::atomic::Ordering::Relaxed,
            );
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(sum.into_inner(), (n as u64 - 1) * n as u64 / 2);
    (rep.timing, dev.timing().unwrap().since(&before))
}

#[test]
fn modelled_time_is_the_same_across_runs() {
    let (a, ta) = backwards_sweep(TimingProfile::pcie4());
    let (b, tb) = backwards_sweep(TimingProfile::pcie4());
    assert!(a.modelled > Duration::ZERO);
    assert_eq!(a, b);
    assert_eq!(ta, tb);
    assert_eq!(ta.copied_to_device_bytes, 6 << 20);
    assert_eq!(
        ta.device_bytes,
        6 << 20,
        "every byte read from device memory"
    );
}

#[test]
fn profile_none_charges_nothing() {
    let (t, total) = backwards_sweep(TimingProfile::none());
    assert_eq!(t.modelled, Duration::ZERO);
    assert_eq!(t.bound, Bound::Nothing);
    assert_eq!(total.modelled, Duration::ZERO);
    assert_eq!(total.copies, Duration::ZERO);
    assert_eq!(total.fault_service, Duration::ZERO);
    // The counts are kept all the same.
    assert_eq!(total.copied_to_device_bytes, 6 << 20);
}

#[test]
fn bad_profiles_are_refused_with_the_fix() {
    let bad = TimingProfile {
        remote_in_flight: 0,
        ..TimingProfile::pcie4()
    };
    let e = Svm::builder()
        .emulated(EmulatedConfig::with_memory(4 << 20))
        .unwrap()
        .timing(bad)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("remote_in_flight") && e.contains("at least 1"),
        "{e}"
    );
    let e = TimingProfile::by_name("pcie3").unwrap_err().to_string();
    assert!(e.contains("pcie3") && e.contains("coherent"), "{e}");
}

#[test]
fn device_reads_and_writes_are_charged_remote_or_resident() {
    let svm = svm(simple(), 1, 1, true);
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(5);
    let dev = svm.device(D0).unwrap();
    // In system memory: the read is served over the link. Two pages in one
    // copy: 8192 bytes at 1 B/ns + one 1 µs round trip (one in flight).
    let before = dev.timing().unwrap();
    let mut buf = vec![0u8; 2 * PAGE_SIZE];
    dev.read(r.addr(), &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 5 || b == 0));
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.remote_read_bytes, 2 * PAGE_SIZE as u64);
    assert_eq!(d.device_bytes, 0);
    assert_eq!(d.copied_to_device_bytes, 0, "served in place");
    assert_eq!(d.modelled, Duration::from_nanos(8_192 + 1_000));
    // A remote write of one page: the other direction.
    let before = dev.timing().unwrap();
    dev.write(r.addr(), &[9u8; PAGE_SIZE]).unwrap();
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.remote_write_bytes, PAGE_SIZE as u64);
    assert_eq!(d.remote_read_bytes, 0);
    assert_eq!(d.modelled, Duration::from_nanos(4_096 + 1_000));
    // A 1-byte remote read still moves a whole cache line (64 bytes).
    let before = dev.timing().unwrap();
    dev.read(r.addr(), &mut [0u8; 1]).unwrap();
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.remote_read_bytes, 1);
    assert_eq!(d.modelled, Duration::from_nanos(64 + 1_000));
    // Resident in device memory: 8192 bytes at 4 B/ns, nothing remote.
    svm.migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    let before = dev.timing().unwrap();
    dev.read(r.addr(), &mut buf).unwrap();
    assert_eq!(&buf[..PAGE_SIZE], &[9u8; PAGE_SIZE][..]);
    let d = dev.timing().unwrap().since(&before);
    assert_eq!(d.device_bytes, 2 * PAGE_SIZE as u64);
    assert_eq!(d.remote_read_bytes, 0);
    assert_eq!(d.modelled, Duration::from_nanos(8_192 / 4));
}

#[test]
fn throttle_mode_keeps_wall_time_at_least_modelled_time() {
    // A slow link (100 MB/s): 4 MiB each way is about 84 ms modelled.
    let slow = TimingProfile {
        link_h2d_bytes_per_sec: 100_000_000,
        link_d2h_bytes_per_sec: 100_000_000,
        ..simple()
    };
    let start = std::time::Instant::now();
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(8 << 20))
        .unwrap()
        .timing(slow)
        .throttle(true)
        .build()
        .unwrap();
    let dev = svm.device(D0).unwrap();
    let mut r = svm.alloc(2 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(1);
    svm.migrate(r.addr(), r.len(), Location::Device(D0))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    dev.read(r.addr(), &mut buf).unwrap();
    svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    dev.read(r.addr(), &mut buf).unwrap();
    let wall = start.elapsed();
    let modelled = dev.timing().unwrap().modelled;
    assert!(modelled > Duration::from_millis(40), "{modelled:?}");
    assert!(wall >= modelled, "wall {wall:?} < modelled {modelled:?}");
}
