//! CPU views and devices (issue 10, item 7): a shared view of a region
//! (`as_slice`) bars device writes while it lives, an exclusive one
//! (`as_mut_slice`) every device access, so safe code never sees the bytes
//! behind a Rust reference change. Atomic views (`as_atomic_u64`) are what
//! CPU threads and devices share while both run.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use common::svm;
use svmem::{DeviceId, Error, FaultReason, Location};

const D0: DeviceId = DeviceId(0);

#[test]
fn a_shared_view_bars_device_writes_and_lets_reads_through() {
    let svm = svm(16 << 20);
    let mut r = svm.alloc(1 << 20).unwrap();
    r.as_mut_slice::<u64>().fill(5);
    let dev = svm.device(D0).unwrap();
    // Warm translations first: the bar must hold for them too.
    dev.write(r.at(8), &5u64.to_ne_bytes()).unwrap();
    let view = r.as_slice::<u64>();
    let err = dev.write(r.at(8), &9u64.to_ne_bytes()).unwrap_err();
    assert!(
        matches!(err, Error::HeldByCpuView { write: true, .. }),
        "{err}"
    );
    let mut buf = [0u8; 8];
    dev.read(r.at(8), &mut buf).unwrap();
    assert_eq!(u64::from_ne_bytes(buf), 5);
    for (name, store) in [("store", true), ("atomic", false)] {
        let rep = dev
            .launch(4, |lane, i| match store {
                true => lane.store::<u64>(r.at(i * 8), 9),
                false => lane.atomic_add_u64(r.at(i * 8), 1).map(|_| ()),
            })
            .unwrap();
        let fatal = rep.fatal.unwrap_or_else(|| panic!("{name} went through"));
        assert_eq!(fatal.reason, FaultReason::CpuView, "{name}");
    }
    // Kernel reads go through.
    let rep = dev
        .launch(4, |lane, i| lane.load::<u64>(r.at(i * 8)).map(|_| ()))
        .unwrap();
    assert!(rep.fatal.is_none(), "{rep:?}");
    assert!(
        view.iter().all(|&w| w == 5),
        "bytes changed under a shared view"
    );
    // Two shared views at once; the bar lifts with the last one.
    let second = r.as_slice::<u8>();
    drop(view);
    assert!(dev.write(r.at(8), &9u64.to_ne_bytes()).is_err());
    drop(second);
    dev.write(r.at(8), &9u64.to_ne_bytes()).unwrap();
    assert_eq!(r.as_slice::<u64>()[1], 9);
}

#[test]
fn an_exclusive_view_bars_every_device_access() {
    let svm = svm(16 << 20);
    let mut r = svm.alloc(1 << 20).unwrap();
    let (addr, at8) = (r.addr(), r.at(8));
    let dev = svm.device(D0).unwrap();
    {
        let mut view = r.as_mut_slice::<u64>();
        view.fill(3);
        let mut buf = [0u8; 8];
        let err = dev.read(at8, &mut buf).unwrap_err();
        assert!(
            matches!(err, Error::HeldByCpuView { write: false, .. }),
            "{err}"
        );
        let rep = dev
            .launch(1, |lane, _| lane.load::<u64>(addr).map(|_| ()))
            .unwrap();
        assert_eq!(rep.fatal.unwrap().reason, FaultReason::CpuView);
        // Migrations are not device accesses: they move pages, not bytes.
        svm.migrate(addr, 1 << 20, Location::Device(D0)).unwrap();
        assert!(view.iter().all(|&w| w == 3));
        view[1] = 4;
    }
    let mut buf = [0u8; 8];
    dev.read(at8, &mut buf).unwrap();
    assert_eq!(u64::from_ne_bytes(buf), 4);
}

/// CPU threads and a kernel share words through the atomic view; device
/// copies to and from system memory are atomic too, so this is no data race.
#[test]
fn atomic_views_are_shared_with_running_kernels() {
    let svm = svm(16 << 20);
    let mut r = svm.alloc(1 << 20).unwrap();
    let base = r.addr();
    let words = r.as_atomic_u64();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..1000 {
                words[0].fetch_add(1, Ordering::Relaxed);
            }
        });
        let rep = svm
            .device(D0)
            .unwrap()
            .launch(1000, |lane, _| {
                lane.atomic_add_u64(base.offset(8), 1).map(|_| ())
            })
            .unwrap();
        assert!(rep.fatal.is_none(), "{rep:?}");
    });
    assert_eq!(words[0].load(Ordering::Relaxed), 1000);
    assert_eq!(words[1].load(Ordering::Relaxed), 1000);
}
