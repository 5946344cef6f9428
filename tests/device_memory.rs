//! Emulated device memory is committed as it is used, not as configured:
//! a device configured far larger than what it holds costs the process
//! only what it holds (one test per binary: it reads the process's RSS).

#![allow(clippy::unwrap_used)]

use svmem::{EmulatedConfig, Location, Svm};

const MIB: u64 = 1 << 20;

/// Resident set of this process, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn device_memory_is_committed_as_used() {
    let before = rss_bytes();
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "big".into(),
            memory_bytes: 4 << 30,
            ..EmulatedConfig::default()
        })
        .unwrap()
        .build()
        .unwrap();
    let d = svm.device_ids()[0];
    let built = rss_bytes();
    assert!(
        built.saturating_sub(before) < 128 * MIB,
        "a 4 GiB device made the process {} MiB larger before holding anything",
        (built - before) / MIB
    );

    // 64 MiB migrated to the device: the device's memory grows by about
    // that much (the managed copy's pages left for the device).
    let mut r = svm.alloc(64 << 20).unwrap();
    for (i, b) in r.as_mut_slice::<u8>().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let filled = rss_bytes();
    let rep = svm.migrate(r.addr(), r.len(), Location::Device(d)).unwrap();
    assert_eq!(rep.migrated, 64 * MIB / 4096);
    let moved = rss_bytes();
    assert!(
        moved.saturating_sub(filled) < 96 * MIB,
        "migrating 64 MiB grew the process by {} MiB",
        (moved - filled) / MIB
    );
    svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    assert!(r
        .as_slice::<u8>()
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));

    // Committing up front is still there for those who want VRAM-like
    // behaviour (and steadier benchmark numbers).
    drop(r);
    drop(svm);
    let base = rss_bytes();
    let eager = Svm::builder()
        .emulated(EmulatedConfig {
            name: "eager".into(),
            memory_bytes: 256 * MIB,
            commit_up_front: true,
            ..EmulatedConfig::default()
        })
        .unwrap()
        .build()
        .unwrap();
    assert!(
        rss_bytes().saturating_sub(base) >= 200 * MIB,
        "commit_up_front did not commit"
    );
    drop(eager);
}
