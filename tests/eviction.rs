//! Eviction policies (`SvmBuilder::eviction`): each takes the block it
//! claims to. A device holds three 2 MiB blocks; blocks 0, 1, 2 move in in
//! that order, then block 0 is used; a fourth block moving in must evict
//! one. Allocation order (NVIDIA UVM's) takes block 0, the oldest, used or
//! not; CLOCK and LRU keep the used block and take block 1.

#![allow(clippy::unwrap_used)]

use svmem::{DeviceId, EmulatedConfig, Eviction, Location, Svm, BLOCK_SIZE};

const D0: DeviceId = DeviceId(0);

/// Where each of the four blocks is after the pattern above under `policy`.
fn after_pattern(policy: Eviction) -> Vec<Location> {
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(3 * BLOCK_SIZE as u64))
        .unwrap()
        .eviction(policy)
        .build()
        .unwrap();
    let mut r = svm.alloc(4 * BLOCK_SIZE).unwrap();
    r.as_mut_slice::<u64>().fill(3);
    let block = |b: usize| svmem::VirtAddr(r.addr().0 + (b * BLOCK_SIZE) as u64);
    for b in 0..3 {
        let m = svm
            .migrate(block(b), BLOCK_SIZE as u64, Location::Device(D0))
            .unwrap();
        assert_eq!(m.migrated, 512, "{policy}: block {b}");
    }
    assert_eq!(svm.stats().evictions, 0, "{policy}: three blocks fit");
    // The device uses block 0 (its first page, resident in device memory).
    let dev = svm.device(D0).unwrap();
    let mut buf = [0u8; 64];
    dev.read(block(0), &mut buf).unwrap();
    assert!(buf.iter().all(|&v| v == 3 || v == 0), "{policy}: {buf:?}");
    let m = svm
        .migrate(block(3), BLOCK_SIZE as u64, Location::Device(D0))
        .unwrap();
    assert_eq!(m.migrated, 512, "{policy}: the fourth block moved in");
    assert_eq!(svm.stats().evictions, 1, "{policy}: one block made room");
    let loc = (0..4).map(|b| svm.location(block(b)).unwrap()).collect();
    // Data survives whichever block went home (the CPU reading it pulls
    // every block home, so this comes last).
    assert!(r.as_slice::<u64>().iter().all(|&v| v == 3), "{policy}");
    loc
}

#[test]
fn allocation_order_evicts_the_oldest_block_even_when_used() {
    let loc = after_pattern(Eviction::AllocOrder);
    assert_eq!(
        loc,
        [
            Location::System,
            Location::Device(D0),
            Location::Device(D0),
            Location::Device(D0)
        ]
    );
}

#[test]
fn clock_and_lru_keep_the_used_block() {
    for policy in [Eviction::Clock, Eviction::Lru] {
        let loc = after_pattern(policy);
        assert_eq!(
            loc,
            [
                Location::Device(D0),
                Location::System,
                Location::Device(D0),
                Location::Device(D0)
            ],
            "{policy}"
        );
    }
}

#[test]
fn the_default_is_clock() {
    assert_eq!(Eviction::default(), Eviction::Clock);
}

#[test]
fn policies_by_name_and_unknown_names() {
    for (n, e) in Eviction::NAMES.iter().zip(Eviction::ALL) {
        assert_eq!(n.parse::<Eviction>().unwrap(), e);
        assert_eq!(e.name(), *n);
    }
    assert_eq!("FIFO".parse::<Eviction>().unwrap(), Eviction::AllocOrder);
    let e = "mru".parse::<Eviction>().unwrap_err().to_string();
    assert!(e.contains("mru") && e.contains("clock, lru, alloc"), "{e}");
}

/// Where block 0 ends up when a kernel reads it right after its first
/// eviction, under thrash streak `streak`: a device of two blocks holds
/// blocks 0 and 1, block 2 moving in evicts block 0, then a kernel faults
/// on block 0.
fn refault_after_one_eviction(streak: u8) -> Location {
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(2 * BLOCK_SIZE as u64))
        .unwrap()
        .thrash_window(std::time::Duration::from_secs(60))
        .thrash_streak(streak)
        .build()
        .unwrap();
    let mut r = svm.alloc(3 * BLOCK_SIZE).unwrap();
    r.as_mut_slice::<u64>().fill(4);
    let block = |b: usize| svmem::VirtAddr(r.addr().0 + (b * BLOCK_SIZE) as u64);
    for b in 0..3 {
        svm.migrate(block(b), BLOCK_SIZE as u64, Location::Device(D0))
            .unwrap();
    }
    assert_eq!(svm.stats().evictions, 1);
    assert_eq!(svm.location(block(0)), Some(Location::System));
    let at = block(0);
    svm.device(D0)
        .unwrap()
        .launch(1, move |lane, _| {
            let v: u64 = lane.load(at)?;
            assert_eq!(v, 4);
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
    svm.location(block(0)).unwrap()
}

#[test]
fn thrash_streak_one_serves_a_refault_in_place_two_migrates_it_back() {
    assert_eq!(refault_after_one_eviction(1), Location::System);
    assert_eq!(refault_after_one_eviction(2), Location::Device(D0));
}

#[test]
fn a_thrash_streak_out_of_range_is_refused_with_the_fix() {
    for n in [0, 4] {
        let e = Svm::builder()
            .emulated(EmulatedConfig::with_memory(BLOCK_SIZE as u64))
            .unwrap()
            .thrash_streak(n)
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("thrash streak {n}")) && e.contains("1 to 3"),
            "{e}"
        );
    }
}
