//! Split mappings (issue 11): `madvise(MADV_RANDOM)` or `mlock` on part of a
//! 2 MiB block splits the kernel's mapping of managed memory; a
//! `UFFDIO_MOVE` may not cross a mapping boundary, so the protocol moves
//! such runs piece by piece. Every page still migrates both ways, with its
//! data.

#![allow(clippy::unwrap_used)]

mod common;

use common::{fill, pattern, svm};
use svmem::{DeviceId, Location, Region, PAGE_SIZE};

const D0: Location = Location::Device(DeviceId(0));

fn split(r: &Region<'_>, offset: usize, len: usize, how: &str) {
    let p = (r.addr().as_u64() as usize + offset) as *mut libc::c_void;
    let rc = match how {
        // SAFETY: the range lies inside the region's mapping; MADV_RANDOM
        // only changes read-ahead advice (and splits the VMA).
        "random" => unsafe { libc::madvise(p, len, libc::MADV_RANDOM) },
        // SAFETY: as above; mlock pins the pages and splits the VMA.
        _ => unsafe { libc::mlock(p, len) },
    };
    assert_eq!(rc, 0, "{how}: {}", std::io::Error::last_os_error());
}

fn round_trip(how: &str) {
    let svm = svm(16 << 20);
    let mut r = svm.alloc(4 << 20).unwrap();
    fill(&mut r, 7);
    // Two splits inside the first block, one across the block boundary.
    split(&r, 64 << 10, 64 << 10, how);
    split(&r, (2 << 20) - (8 << 10), 16 << 10, how);
    let n = r.npages() as u64;
    let rep = svm.migrate(r.addr(), r.len(), D0).unwrap();
    assert_eq!(rep.migrated, n, "{how}: to device {rep:?}");
    let rep = svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    assert_eq!(rep.migrated, n, "{how}: to system {rep:?}");
    let rep = svm.migrate(r.addr(), r.len(), D0).unwrap();
    assert_eq!(rep.migrated, n, "{how}: to device again {rep:?}");
    // The CPU faults everything back through the split mappings.
    let bytes = r.as_slice::<u8>();
    let bad = (0..bytes.len()).find(|&i| bytes[i] != pattern(i, 7));
    assert_eq!(
        bad,
        None,
        "{how}: byte {bad:?} (page {:?})",
        bad.map(|b| b / PAGE_SIZE)
    );
}

#[test]
fn pages_across_madvise_random_splits_migrate() {
    round_trip("random");
}

#[test]
fn pages_across_mlock_splits_migrate() {
    round_trip("mlock");
}
