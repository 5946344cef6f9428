//! Huge pages in managed memory (`src/huge.rs`): the first write to a whole
//! block maps one transparent huge page, whole-block migrations keep it
//! whole (one PMD moved each way, by every path that moves a block), and
//! every operation that handles a block in pieces keeps every byte.
//!
//! Whether a page is mapped huge is read from the kernel (PAGEMAP_SCAN), not
//! from svmem's counters.

#![allow(clippy::unwrap_used)]

mod common;

use common::{dontneed, emulated, fill, pattern};
use svmem::{DeviceId, Location, Region, Svm, VirtAddr, BLOCK_SIZE, PAGE_SIZE};

const DEV: Location = Location::Device(DeviceId(0));

/// Whether this kernel hands out transparent huge pages to `MADV_HUGEPAGE`
/// ranges at all (`never` turns them off machine-wide).
fn thp_available() -> bool {
    let s =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    !s.is_empty() && !s.contains("[never]")
}

fn huge_at(addr: VirtAddr) -> bool {
    svmem::huge_mapped(addr).unwrap()
}

fn build(huge: bool) -> Svm {
    Svm::builder()
        .emulated(emulated("huge", 16 << 20))
        .unwrap()
        .huge_pages(huge)
        .build()
        .unwrap()
}

fn check(r: &Region<'_>, seed: u8, what: &str) {
    let bytes = r.as_slice::<u8>();
    if let Some(i) = (0..bytes.len()).find(|&i| bytes[i] != pattern(i, seed)) {
        panic!(
            "{what}: byte {i:#x} is {:#x}, expected {:#x}",
            bytes[i],
            pattern(i, seed)
        );
    }
}

#[test]
fn first_write_to_a_whole_block_maps_one_huge_page() {
    if !thp_available() {
        eprintln!("transparent huge pages are off on this machine: nothing to check");
        return;
    }
    let svm = build(true);
    // Two whole blocks and a short third one.
    let mut r = svm.alloc(2 * BLOCK_SIZE + 8 * PAGE_SIZE).unwrap();
    assert_eq!(
        r.addr().as_u64() % BLOCK_SIZE as u64,
        0,
        "regions start on a block"
    );
    fill(&mut r, 1);
    let s = svm.stats();
    assert_eq!(s.huge_fills + s.huge_fill_fallbacks, 2, "{s:?}");
    assert!(s.huge_fills >= 1, "no huge page at all: {s:?}");
    assert_eq!(s.cpu_zero_fill_pages, r.npages() as u64);
    if s.huge_fills == 2 {
        assert!(huge_at(r.addr()) && huge_at(r.at(BLOCK_SIZE as u64 + 4096)));
    }
    // The short block cannot be one huge page.
    assert!(!huge_at(r.at(2 * BLOCK_SIZE as u64)));
    check(&r, 1, "after the first touch");
}

#[test]
fn whole_block_migrations_keep_the_huge_page() {
    if !thp_available() {
        eprintln!("transparent huge pages are off on this machine: nothing to check");
        return;
    }
    let svm = build(true);
    let mut r = svm.alloc(BLOCK_SIZE).unwrap();
    fill(&mut r, 2);
    assert_eq!(svm.stats().huge_fills, 1, "{:?}", svm.stats());
    let (addr, len) = (r.addr(), r.len());
    assert!(huge_at(addr));

    // Explicit migrations, both ways.
    assert_eq!(svm.migrate(addr, len, DEV).unwrap().migrated, 512);
    assert!(!huge_at(addr), "the block left the CPU view");
    assert_eq!(
        svm.migrate(addr, len, Location::System).unwrap().migrated,
        512
    );
    assert!(huge_at(addr), "back as one huge page");
    check(&r, 2, "after an explicit round trip");

    // Back through a CPU read fault.
    svm.migrate(addr, len, DEV).unwrap();
    assert_eq!(r.as_slice::<u8>()[12345], pattern(12345, 2));
    assert!(huge_at(addr), "a read fault brings the block back whole");
    check(&r, 2, "after a read fault");

    // Back through a CPU write fault.
    svm.migrate(addr, len, DEV).unwrap();
    let faults = svm.stats().cpu_faults;
    r.as_mut_slice::<u8>()[777] = pattern(777, 2);
    assert!(svm.stats().cpu_faults > faults);
    assert!(huge_at(addr), "a write fault brings the block back whole");
    check(&r, 2, "after a write fault");

    // The device reads what the CPU wrote, from its own memory.
    svm.migrate(addr, len, DEV).unwrap();
    let mut buf = vec![0u8; len as usize];
    svm.device(DeviceId(0))
        .unwrap()
        .read(addr, &mut buf)
        .unwrap();
    assert!(buf.iter().enumerate().all(|(i, &b)| b == pattern(i, 2)));
}

#[test]
fn piecewise_operations_on_a_huge_block_keep_every_byte() {
    let svm = build(true);
    let mut r = svm.alloc(2 * BLOCK_SIZE).unwrap();
    fill(&mut r, 3);
    let page = |k: u64| r.at(k * PAGE_SIZE as u64);

    // A few pages of a huge block to the device (the kernel splits it).
    let rep = svm.migrate(page(5), 4 * PAGE_SIZE as u64, DEV).unwrap();
    assert_eq!(rep.migrated, 4);
    check(&r, 3, "after migrating 4 pages of a huge block");

    // The whole region both ways: the split block moves page by page.
    assert_eq!(svm.migrate(r.addr(), r.len(), DEV).unwrap().migrated, 1024);
    assert_eq!(
        svm.migrate(r.addr(), r.len(), Location::System)
            .unwrap()
            .migrated,
        1024
    );
    check(&r, 3, "after a whole-region round trip");

    // Page-sized fault windows on the second (still huge) block.
    r.set_granularity(0).unwrap();
    svm.migrate(r.addr(), r.len(), DEV).unwrap();
    let windows = svm.stats().cpu_fault_windows;
    for k in (512..1024).step_by(97) {
        let i = k * PAGE_SIZE + 8;
        assert_eq!(r.as_slice::<u8>()[i], pattern(i, 3));
    }
    assert!(svm.stats().cpu_fault_windows > windows);
    check(&r, 3, "after 4 KiB fault windows");

    // The application discards part of a block: zeros there, the rest intact.
    r.set_granularity(9).unwrap();
    let (off, len) = (64 * PAGE_SIZE, 3 * PAGE_SIZE);
    dontneed(r.addr(), BLOCK_SIZE + off, len);
    let bytes = r.as_slice::<u8>();
    for (i, &b) in bytes.iter().enumerate() {
        let zeroed = (BLOCK_SIZE + off..BLOCK_SIZE + off + len).contains(&i);
        let want = if zeroed { 0 } else { pattern(i, 3) };
        assert_eq!(b, want, "byte {i:#x} after the discard");
    }
}

#[test]
fn huge_pages_off_maps_only_small_pages() {
    let svm = build(false);
    let mut r = svm.alloc(BLOCK_SIZE).unwrap();
    fill(&mut r, 4);
    let s = svm.stats();
    assert_eq!((s.huge_fills, s.huge_fill_fallbacks), (0, 0));
    assert!(!huge_at(r.addr()));
    svm.migrate(r.addr(), r.len(), DEV).unwrap();
    svm.migrate(r.addr(), r.len(), Location::System).unwrap();
    assert!(!huge_at(r.addr()));
    check(&r, 4, "with huge pages off");
}

#[test]
fn a_read_first_touch_maps_zero_pages_not_a_huge_page() {
    let svm = build(true);
    let mut r = svm.alloc(BLOCK_SIZE).unwrap();
    assert!(r.as_slice::<u64>().iter().all(|&w| w == 0));
    assert_eq!(svm.stats().huge_fills, 0, "reads take no memory for zeros");
    assert!(!huge_at(r.addr()));
    fill(&mut r, 5);
    check(&r, 5, "written after a read first touch");
}
