//! Issue 14: direct peer migration. Pages held by one device move to
//! another device to device, over the peer path, without a trip through
//! system memory; without a peer path (peer access off) they go through
//! system memory and an event says so. Data is verified either way.

#![allow(clippy::unwrap_used)]

mod common;

use common::{emulated, fill, pattern};
use svmem::{
    AccessMode, Attr, DeviceId, Event, EventKind, EventStream, Injection, Location, Svm, VirtAddr,
    PAGE_SIZE,
};

const D0: DeviceId = DeviceId(0);
const D1: DeviceId = DeviceId(1);
const MIB: usize = 1 << 20;

fn two(peer_access: bool) -> Svm {
    Svm::builder()
        .emulated(emulated("gpu0", 16 << 20))
        .unwrap()
        .emulated(emulated("gpu1", 16 << 20))
        .unwrap()
        .peer_access(peer_access)
        .build()
        .unwrap()
}

fn drain(events: &EventStream) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv()).collect()
}

/// Every byte, read by device `d`, is the pattern.
fn check_on(svm: &Svm, d: DeviceId, at: VirtAddr, len: usize, seed: u8) {
    let mut buf = vec![0u8; len];
    svm.device(d).unwrap().read(at, &mut buf).unwrap();
    for (i, b) in buf.iter().enumerate() {
        assert_eq!(*b, pattern(i, seed), "byte {i} read by {d}");
    }
}

#[test]
fn pages_move_device_to_device_directly() {
    let svm = two(true);
    let mut r = svm.alloc(4 * MIB).unwrap();
    fill(&mut r, 7);
    let (at, len, n) = (r.addr(), r.len(), r.npages() as u64);
    svm.migrate(at, len, Location::Device(D0)).unwrap();
    let before = svm.stats();
    let events = svm.subscribe(4096);
    let rep = svm.migrate(at, len, Location::Device(D1)).unwrap();
    assert_eq!(rep.migrated, n, "{rep:?}");
    assert_eq!(rep.from_peer, n, "every page came over the peer path");
    let after = svm.stats();
    assert_eq!(after.peer_pages - before.peer_pages, n);
    assert_eq!(after.peer_bytes - before.peer_bytes, n * PAGE_SIZE as u64);
    assert_eq!(
        after.to_system_pages, before.to_system_pages,
        "nothing passed through system memory"
    );
    assert_eq!(
        after.to_device_bytes, before.to_device_bytes,
        "nothing was copied from the host"
    );
    assert!(matches!(svm.location(at), Some(Location::Device(D1))));
    let used = |d: DeviceId| {
        let i = svm.device(d).unwrap().info();
        i.capacity_bytes - i.free_bytes
    };
    assert_eq!(used(D0), 0, "gpu0 gave its pages back");
    assert_eq!(used(D1), len);

    let ev = drain(&events);
    let dev_to_dev = ev
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::MigrateEnd {
                from: Location::Device(D0),
                to: Location::Device(D1),
                migrated,
                error: 0,
                ..
            } => Some(migrated),
            _ => None,
        })
        .sum::<u64>();
    assert_eq!(dev_to_dev, n, "the events show the device-to-device path");
    assert!(
        !ev.iter().any(|e| matches!(
            e.kind,
            EventKind::MigrateStart {
                to: Location::System,
                ..
            } | EventKind::PeerFallback { .. }
        )),
        "no detour through system memory in the events"
    );

    check_on(&svm, D1, at, len as usize, 7);
    svm.migrate(at, len, Location::System).unwrap();
    assert!(r
        .as_slice::<u8>()
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i, 7)));
}

#[test]
fn without_peer_access_pages_go_through_system_memory_and_say_so() {
    let svm = two(false);
    let mut r = svm.alloc(2 * MIB).unwrap();
    fill(&mut r, 9);
    let (at, len, n) = (r.addr(), r.len(), r.npages() as u64);
    svm.migrate(at, len, Location::Device(D0)).unwrap();
    let before = svm.stats();
    let events = svm.subscribe(4096);
    let rep = svm.migrate(at, len, Location::Device(D1)).unwrap();
    assert_eq!(rep.migrated, n);
    assert_eq!(rep.from_peer, 0);
    let after = svm.stats();
    assert_eq!(after.peer_pages, before.peer_pages);
    assert_eq!(after.to_system_pages - before.to_system_pages, n);
    let ev = drain(&events);
    let fallback: u64 = ev
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::PeerFallback {
                from: D0,
                to: D1,
                pages,
                ..
            } => Some(pages),
            _ => None,
        })
        .sum();
    assert_eq!(fallback, n, "a PeerFallback event covers every page");
    assert!(ev.iter().any(|e| matches!(
        e.kind,
        EventKind::MigrateEnd {
            from: Location::Device(D0),
            to: Location::System,
            ..
        }
    )));
    check_on(&svm, D1, at, len as usize, 9);
}

#[test]
fn a_failed_peer_copy_leaves_the_pages_on_their_device() {
    let svm = two(true);
    let mut r = svm.alloc(2 * MIB).unwrap();
    fill(&mut r, 3);
    let (at, len, n) = (r.addr(), r.len(), r.npages() as u64);
    svm.migrate(at, len, Location::Device(D0)).unwrap();
    let d1 = svm.device(D1).unwrap();
    d1.inject(Injection::copy_fails()).unwrap();
    let rep = svm.migrate(at, len, Location::Device(D1)).unwrap();
    assert_eq!(rep.migrated, 0, "{rep:?}");
    assert_eq!(rep.rolled_back, n);
    assert!(matches!(svm.location(at), Some(Location::Device(D0))));
    let i = svm.device(D1).unwrap().info();
    assert_eq!(i.capacity_bytes, i.free_bytes, "gpu1 kept nothing");
    check_on(&svm, D0, at, len as usize, 3);
    d1.clear_injection().unwrap();
    let rep = svm.migrate(at, len, Location::Device(D1)).unwrap();
    assert_eq!(rep.from_peer, n);
    check_on(&svm, D1, at, len as usize, 3);
}

#[test]
fn a_lost_source_device_fails_the_peer_copy_and_loses_only_its_pages() {
    let svm = two(true);
    let mut r = svm.alloc(2 * MIB).unwrap();
    fill(&mut r, 5);
    let (at, len) = (r.addr(), r.len());
    // Half on gpu0, half in system memory.
    svm.migrate(at, len / 2, Location::Device(D0)).unwrap();
    svm.device(D0).unwrap().lose().unwrap();
    let _ = svm.migrate(at, len, Location::Device(D1));
    // The system half made it, with its data; the lost half is poisoned,
    // never silently zero.
    let half = len as usize / 2;
    let mut buf = vec![0u8; half];
    svm.device(D1)
        .unwrap()
        .read(VirtAddr(at.0 + half as u64), &mut buf)
        .unwrap();
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i + half, 5)));
    let mut one = [0u8; 1];
    assert!(
        svm.device(D1).unwrap().read(at, &mut one).is_err(),
        "a page of the lost device reads as an error, not as data"
    );
}

#[test]
fn device_faults_pull_pages_from_a_peer() {
    let svm = two(true);
    let mut r = svm.alloc(2 * MIB).unwrap();
    fill(&mut r, 11);
    let (at, len) = (r.addr(), r.len());
    svm.migrate(at, len, Location::Device(D0)).unwrap();
    // gpu1 migrates what it touches (rule 7), rather than reading in place.
    svm.set_attributes(at, len, &[Attr::Access(D1, AccessMode::Access)])
        .unwrap();
    let before = svm.stats();
    // A kernel on gpu1 reads every page: its faults bring the pages over.
    let npages = len / PAGE_SIZE as u64;
    let rep = svm.device(D1).unwrap().launch(npages, |lane, item| {
        let off = item as usize * PAGE_SIZE;
        let v: u64 = lane.load(VirtAddr(at.0 + off as u64))?;
        assert_eq!(v.to_ne_bytes()[0], pattern(off, 11));
        Ok(())
    });
    rep.unwrap().check().unwrap();
    let after = svm.stats();
    assert_eq!(
        after.peer_pages - before.peer_pages,
        npages,
        "device faults moved every page from the peer"
    );
    assert_eq!(after.to_system_pages, before.to_system_pages);
    svm.migrate(at, len, Location::System).unwrap();
    assert!(r
        .as_slice::<u8>()
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i, 11)));
}
