//! Property test against a reference model: managed memory (CPU views,
//! device reads and writes, migrations, device release, granularity
//! changes) against a `Vec<u8>`. (The page-state word's own model test is a
//! unit test beside it, in `src/mm/state_model_tests.rs`.)

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use svmem::{DeviceId, EmulatedConfig, Location, MemoryType, Svm, BLOCK_SIZE, PAGE_SIZE};

// ---------------------------------------------------------------------------
// Managed memory against a Vec<u8>

const NDEV: u8 = 2;
/// Two whole blocks and a short third one.
const REGION_PAGES: usize = 2 * BLOCK_SIZE / PAGE_SIZE + 40;
const REGION_BYTES: usize = REGION_PAGES * PAGE_SIZE;

#[derive(Clone, Debug)]
enum MemOp {
    CpuWrite {
        off: usize,
        len: usize,
        seed: u8,
    },
    CpuRead {
        off: usize,
        len: usize,
    },
    DevWrite {
        d: u8,
        off: usize,
        len: usize,
        seed: u8,
    },
    DevRead {
        d: u8,
        off: usize,
        len: usize,
    },
    Migrate {
        page: usize,
        npages: usize,
        to: Option<u8>,
    },
    Release {
        d: u8,
    },
    Granularity {
        page: usize,
        npages: usize,
        g: u8,
    },
}

/// A byte range: offsets near page boundaries and lengths from a few bytes to
/// the whole region, clamped to the region.
fn byte_range() -> impl Strategy<Value = (usize, usize)> {
    let off = (
        0..REGION_PAGES,
        prop_oneof![Just(0usize), Just(PAGE_SIZE - 3), 0..PAGE_SIZE],
    )
        .prop_map(|(p, d)| p * PAGE_SIZE + d);
    let len = prop_oneof![
        4 => 1usize..64,
        3 => 1usize..3 * PAGE_SIZE,
        2 => 1usize..BLOCK_SIZE + PAGE_SIZE,
        1 => 1usize..REGION_BYTES,
    ];
    (off, len).prop_map(|(off, len)| (off, len.min(REGION_BYTES - off)))
}

fn page_range() -> impl Strategy<Value = (usize, usize)> {
    let n = prop_oneof![
        1usize..8,
        1usize..BLOCK_SIZE / PAGE_SIZE + 8,
        Just(REGION_PAGES),
    ];
    (0..REGION_PAGES, n).prop_map(|(p, n)| (p, n.min(REGION_PAGES - p)))
}

fn mem_op() -> impl Strategy<Value = MemOp> {
    prop_oneof![
        3 => (byte_range(), any::<u8>())
            .prop_map(|((off, len), seed)| MemOp::CpuWrite { off, len, seed }),
        2 => byte_range().prop_map(|(off, len)| MemOp::CpuRead { off, len }),
        3 => (0..NDEV, byte_range(), any::<u8>())
            .prop_map(|(d, (off, len), seed)| MemOp::DevWrite { d, off, len, seed }),
        2 => (0..NDEV, byte_range()).prop_map(|(d, (off, len))| MemOp::DevRead { d, off, len }),
        4 => (page_range(), prop_oneof![Just(None), (0..NDEV).prop_map(Some)])
            .prop_map(|((page, npages), to)| MemOp::Migrate { page, npages, to }),
        1 => (0..NDEV).prop_map(|d| MemOp::Release { d }),
        1 => (page_range(), prop_oneof![Just(0u8), Just(3), Just(9), 0u8..=9])
            .prop_map(|((page, npages), g)| MemOp::Granularity { page, npages, g }),
    ]
}

/// Deterministic, position-dependent bytes, so misplaced data shows.
fn pattern(seed: u8, off: usize, len: usize) -> Vec<u8> {
    (off..off + len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(0x9E37_79B1)
                .rotate_left(seed as u32 % 32) as u8
                ^ seed
        })
        .collect()
}

fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b)
}

fn run_mem_case(granularity: u8, ops: &[MemOp]) -> Result<(), TestCaseError> {
    let mut b = Svm::builder();
    for i in 0..NDEV {
        b = b
            .emulated(EmulatedConfig {
                name: format!("model{i}"),
                memory_bytes: 16 << 20,
                copy_engines: 1,
                memory_type: MemoryType::Private,
                compute_units: 2,
                commit_up_front: false,
            })
            .unwrap();
    }
    let svm = b.granularity(granularity).build().unwrap();
    let mut region = svm.alloc(REGION_BYTES).unwrap();
    let mut model = vec![0u8; REGION_BYTES];
    let base = region.addr();

    for (i, op) in ops.iter().enumerate() {
        match *op {
            MemOp::CpuWrite { off, len, seed } => {
                let data = pattern(seed, off, len);
                region.as_mut_slice::<u8>()[off..off + len].copy_from_slice(&data);
                model[off..off + len].copy_from_slice(&data);
            }
            MemOp::CpuRead { off, len } => {
                let got = &region.as_slice::<u8>()[off..off + len];
                let d = first_diff(got, &model[off..off + len]);
                prop_assert!(
                    d.is_none(),
                    "op {}: CPU read differs at byte {:?}",
                    i,
                    d.map(|d| off + d)
                );
            }
            MemOp::DevWrite { d, off, len, seed } => {
                let data = pattern(seed, off, len);
                svm.device(DeviceId(d))
                    .unwrap()
                    .write(base.offset(off as u64), &data)
                    .unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
            MemOp::DevRead { d, off, len } => {
                let mut got = vec![0u8; len];
                svm.device(DeviceId(d))
                    .unwrap()
                    .read(base.offset(off as u64), &mut got)
                    .unwrap();
                let diff = first_diff(&got, &model[off..off + len]);
                prop_assert!(
                    diff.is_none(),
                    "op {}: read through dev{} differs at byte {:?}",
                    i,
                    d,
                    diff.map(|x| off + x)
                );
            }
            MemOp::Migrate { page, npages, to } => {
                let to = to.map_or(Location::System, |d| Location::Device(DeviceId(d)));
                let addr = base.offset((page * PAGE_SIZE) as u64);
                let rep = svm.migrate(addr, (npages * PAGE_SIZE) as u64, to).unwrap();
                // Nothing else runs and the devices have room: everything moves.
                prop_assert_eq!(rep.requested, npages as u64, "op {}: {:?}", i, rep);
                prop_assert_eq!(rep.skipped(), 0, "op {}: {:?}", i, rep);
                prop_assert_eq!(
                    rep.migrated + rep.already_there,
                    rep.requested,
                    "op {}: {:?} to {}",
                    i,
                    rep,
                    to
                );
                for k in page..page + npages {
                    let at = svm.location(base.offset((k * PAGE_SIZE) as u64));
                    prop_assert_eq!(
                        at,
                        Some(to),
                        "op {}: page {} after migrating to {}",
                        i,
                        k,
                        to
                    );
                }
            }
            MemOp::Release { d } => {
                let rep = svm.device(DeviceId(d)).unwrap().release();
                prop_assert_eq!(rep.rolled_back, 0, "op {}: {:?}", i, rep);
                prop_assert_eq!(rep.migrated, rep.requested, "op {}: {:?}", i, rep);
                for k in 0..REGION_PAGES {
                    let at = svm.location(base.offset((k * PAGE_SIZE) as u64));
                    prop_assert_ne!(
                        at,
                        Some(Location::Device(DeviceId(d))),
                        "op {}: page {} after releasing dev{}",
                        i,
                        k,
                        d
                    );
                }
            }
            MemOp::Granularity { page, npages, g } => {
                let addr = base.offset((page * PAGE_SIZE) as u64);
                svm.set_granularity(addr, (npages * PAGE_SIZE) as u64, g)
                    .unwrap();
            }
        }
    }

    // Everything, through every device, then from the CPU.
    for d in 0..NDEV {
        let mut got = vec![0u8; REGION_BYTES];
        svm.device(DeviceId(d))
            .unwrap()
            .read(base, &mut got)
            .unwrap();
        let diff = first_diff(&got, &model);
        prop_assert!(
            diff.is_none(),
            "final read through dev{} differs at byte {:?}",
            d,
            diff
        );
    }
    svm.migrate(base, region.len(), Location::Device(DeviceId(1)))
        .unwrap();
    let diff = first_diff(&region.as_slice::<u8>(), &model);
    prop_assert!(diff.is_none(), "final CPU read differs at byte {:?}", diff);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn managed_memory_matches_vec(
        granularity in prop_oneof![Just(0u8), Just(2), Just(9)],
        ops in prop::collection::vec(mem_op(), 1..30),
    ) {
        run_mem_case(granularity, &ops)?;
    }
}
