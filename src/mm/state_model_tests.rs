//! [`StateCell`] transitions against a plain-enum model of the rules
//! documented in `state.rs` (property tests).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::{PageState, Refused, StateCell, MAX_DEVICES, MAX_DEV_PAGES};
use crate::addr::{DevPage, DeviceId};

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
        if to == PageState::Migrating || to == PageState::Hole || self.0 != PageState::Migrating {
            return self.refuse();
        }
        self.0 = to;
        Ok(())
    }
    fn discard(&mut self) -> Result<PageState, Refused> {
        match self.0 {
            PageState::Migrating => self.refuse(),
            PageState::Hole => Ok(PageState::Hole),
            prev => {
                self.0 = PageState::Unpopulated;
                Ok(prev)
            }
        }
    }
    fn unmap(&mut self) -> Result<PageState, Refused> {
        match self.0 {
            PageState::Migrating => self.refuse(),
            prev => {
                self.0 = PageState::Hole;
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
    Unmap,
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
        1 => Just(PageState::Hole),
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
        1 => Just(CellOp::Unmap),
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
        PageState::Hole => PageState::Unpopulated,
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
                CellOp::Unmap => (cell.unmap().map(Some), model.unmap().map(Some)),
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
