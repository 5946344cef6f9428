//! Property tests against reference models:
//!
//! - [`StateCell`] transitions against a plain-enum model of the rules
//!   documented in `src/state.rs`;
//! - managed memory (CPU views, device reads and writes, migrations, device
//!   release, granularity changes) against a `Vec<u8>`.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use svmem::state::{Refused, StateCell, MAX_DEVICES, MAX_DEV_PAGES};
use svmem::{
    DevPage, DeviceId, EmulatedConfig, Location, MemoryType, PageState, Svm, BLOCK_SIZE, PAGE_SIZE,
};

// ---------------------------------------------------------------------------
// StateCell against a reference model

/// The documented rules, written out plainly.
#[derive(Debug)]
struct Model(PageState);

fn isolatable(s: PageState) -> bool {
    matches!(
        s,
        PageState::Unpopulated | PageState::System | PageState::Device { .. }
    )
}

impl Model {
    fn refuse<T>(&self) -> Result<T, Refused> {
        Err(Refused { actual: self.0 })
    }
    fn populate(&mut self) -> Result<(), Refused> {
        if self.0 != PageState::Unpopulated {
            return self.refuse();
        }
        self.0 = PageState::System;
        Ok(())
    }
    fn isolate(&mut self, seen: PageState) -> Result<(), Refused> {
        if !isolatable(seen) || seen != self.0 {
            return self.refuse();
        }
        self.0 = PageState::Migrating;
        Ok(())
    }
    fn commit(&mut self, to: PageState) -> Result<(), Refused> {
        if to == PageState::Migrating || self.0 != PageState::Migrating {
            return self.refuse();
        }
        self.0 = to;
        Ok(())
    }
    fn discard(&mut self) -> Result<PageState, Refused> {
        match self.0 {
            PageState::Migrating => self.refuse(),
            prev => {
                self.0 = PageState::Unpopulated;
                Ok(prev)
            }
        }
    }
}

#[derive(Clone, Debug)]
enum CellOp {
    Populate,
    /// Isolate with the state the model holds (what a correct caller saw).
    IsolateSeen,
    /// Isolate with the state the model holds, slightly altered (a stale view).
    IsolateStale(u8),
    /// Isolate with an arbitrary state.
    Isolate(PageState),
    Commit(PageState),
    Discard,
}

fn any_state() -> impl Strategy<Value = PageState> {
    let page = prop_oneof![
        0u32..4,
        (MAX_DEV_PAGES as u32 - 4)..(MAX_DEV_PAGES as u32),
        0u32..(MAX_DEV_PAGES as u32),
    ];
    prop_oneof![
        1 => Just(PageState::Unpopulated),
        1 => Just(PageState::System),
        1 => Just(PageState::Migrating),
        1 => Just(PageState::Poisoned),
        3 => (0..MAX_DEVICES as u8, page, any::<bool>()).prop_map(|(d, p, staged)| {
            PageState::Device {
                dev: DeviceId(d),
                page: DevPage(p),
                staged,
            }
        }),
    ]
}

fn cell_op() -> impl Strategy<Value = CellOp> {
    prop_oneof![
        2 => Just(CellOp::Populate),
        3 => Just(CellOp::IsolateSeen),
        1 => any::<u8>().prop_map(CellOp::IsolateStale),
        1 => any_state().prop_map(CellOp::Isolate),
        3 => any_state().prop_map(CellOp::Commit),
        1 => Just(CellOp::Discard),
    ]
}

/// A state close to `s` but different from it, when one exists.
fn stale(s: PageState, k: u8) -> PageState {
    match s {
        PageState::Device { dev, page, staged } => match k % 3 {
            0 => PageState::Device {
                dev,
                page,
                staged: !staged,
            },
            1 => PageState::Device {
                dev: DeviceId((dev.0 + 1) % MAX_DEVICES as u8),
                page,
                staged,
            },
            _ => PageState::Device {
                dev,
                page: DevPage((page.0 + 1) % MAX_DEV_PAGES as u32),
                staged,
            },
        },
        PageState::Unpopulated => PageState::System,
        PageState::System => PageState::Unpopulated,
        PageState::Migrating => PageState::System,
        PageState::Poisoned => PageState::Unpopulated,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn state_cell_matches_model(ops in prop::collection::vec(cell_op(), 1..64)) {
        let cell = StateCell::new();
        let mut model = Model(PageState::Unpopulated);
        prop_assert_eq!(cell.load(), model.0);
        for (i, op) in ops.iter().enumerate() {
            let (got, want) = match op {
                CellOp::Populate => (cell.populate().map(|_| None), model.populate().map(|_| None)),
                CellOp::IsolateSeen => {
                    let seen = model.0;
                    (cell.isolate(seen).map(|_| None), model.isolate(seen).map(|_| None))
                }
                CellOp::IsolateStale(k) => {
                    let seen = stale(model.0, *k);
                    (cell.isolate(seen).map(|_| None), model.isolate(seen).map(|_| None))
                }
                CellOp::Isolate(seen) => {
                    (cell.isolate(*seen).map(|_| None), model.isolate(*seen).map(|_| None))
                }
                CellOp::Commit(to) => {
                    (cell.commit(*to).map(|_| None), model.commit(*to).map(|_| None))
                }
                CellOp::Discard => (cell.discard().map(Some), model.discard().map(Some)),
            };
            prop_assert_eq!(got, want, "op {} ({:?})", i, op);
            prop_assert_eq!(cell.load(), model.0, "state after op {} ({:?})", i, op);
        }
    }
}

/// Racing isolations of one page: exactly one wins; the losers see `Migrating`.
#[test]
fn racing_isolations_have_one_winner() {
    for round in 0..200 {
        let cell = StateCell::new();
        if round % 2 == 1 {
            cell.populate().unwrap();
        }
        let seen = cell.load();
        let wins = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| match cell.isolate(seen) {
                    Ok(()) => {
                        wins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(r) => assert_eq!(r.actual, PageState::Migrating),
                });
            }
        });
        assert_eq!(wins.into_inner(), 1);
        assert_eq!(cell.load(), PageState::Migrating);
    }
}

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
    let diff = first_diff(region.as_slice::<u8>(), &model);
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
