//! The per-page state machine: one `AtomicU32` per 4 KiB managed page.
//!
//! ```text
//!  from \ to    Unpopulated   System     Migrating   Device     Poisoned  Hole
//!  Unpopulated   -             populate   isolate     -          -         unmap
//!  System        discard       -          isolate     -          -         unmap
//!  Migrating     rollback      commit,    -           commit,    commit    -
//!                               rollback               rollback   (data lost)
//!  Device        discard       -          isolate     -          -         unmap
//!  Poisoned      discard       -          -           -          -         unmap
//!  Hole          -             -          -           -          -         -
//! ```
//!
//! Every edge: `populate` (first touch), `isolate` (from Unpopulated, System
//! or Device, to Migrating), `commit` (Migrating to System, Device or
//! Poisoned), rollback (Migrating back to the state it left, a commit to the
//! old value), `discard` (System, Device or Poisoned to Unpopulated: madvise
//! DONTNEED/FREE/REMOVE, region free; refused while Migrating), `unmap`
//! (any state but Migrating to Hole: the program unmapped the page, UNMAP
//! event). `Hole` is never left: the address may now belong to a mapping of
//! the program's own, so nothing of svmem's may touch it again; the region's
//! free skips it. A migration holds the block lock while its pages are
//! `Migrating`, and the reader takes that lock before `unmap`, so an UNMAP
//! racing a migration waits for its commit or rollback, then unmaps.
//!
//! Who may do what: every transition out of `Unpopulated`, `System` and
//! `Device` happens with the page's 2 MiB block migration lock held, so two
//! transitions of one page never race; the word is atomic so that lock-free
//! readers (snapshot, counters) see a consistent value. `Migrating` means the
//! page is isolated: absent from the CPU view (touching it blocks in the kernel
//! until commit or rollback) and absent from every device page table.
//!
//! Layout: bits 0..3 tag, bit 3 `staged`, bits 4..7 device index, bits 7..32
//! device page (so 8 devices of up to 128 GiB each).

use crate::addr::{DevPage, DeviceId};
use crate::sync::{AtomicU32, Ordering};

pub use crate::addr::MAX_DEVICES;
pub use crate::addr::MAX_DEV_PAGES;

/// The state of one managed page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageState {
    /// Never touched (or discarded): reads see zeros.
    Unpopulated,
    /// Data in the managed mapping; devices may map it remotely.
    System,
    /// Data in device memory; absent from the CPU mapping. `staged`: the
    /// page's former system page waits in the staging area, so migrating back
    /// needs no allocation.
    Device {
        /// The device holding the data.
        dev: DeviceId,
        /// Where in its memory.
        page: DevPage,
        /// Whether the former system page waits in the staging area.
        staged: bool,
    },
    /// Isolated by a migration in progress.
    Migrating,
    /// Data lost by a device failure; every access errors.
    Poisoned,
    /// Unmapped by the program (munmap, or mmap/mremap over it): no data,
    /// no translation, every device access and migration errors, and the
    /// address is never touched again (the program may map its own memory
    /// there).
    Hole,
}

const TAG_UNPOP: u32 = 0;
const TAG_SYSTEM: u32 = 1;
const TAG_DEVICE: u32 = 2;
const TAG_MIGRATING: u32 = 3;
const TAG_POISONED: u32 = 4;
const TAG_HOLE: u32 = 5;

impl PageState {
    pub(crate) fn encode(self) -> u32 {
        match self {
            PageState::Unpopulated => TAG_UNPOP,
            PageState::System => TAG_SYSTEM,
            PageState::Device { dev, page, staged } => {
                debug_assert!((dev.0 as usize) < MAX_DEVICES && (page.0 as u64) < MAX_DEV_PAGES);
                TAG_DEVICE | (staged as u32) << 3 | (dev.0 as u32) << 4 | page.0 << 7
            }
            PageState::Migrating => TAG_MIGRATING,
            PageState::Poisoned => TAG_POISONED,
            PageState::Hole => TAG_HOLE,
        }
    }

    pub(crate) fn decode(w: u32) -> PageState {
        match w & 7 {
            TAG_UNPOP => PageState::Unpopulated,
            TAG_SYSTEM => PageState::System,
            TAG_DEVICE => PageState::Device {
                dev: DeviceId(((w >> 4) & 7) as u8),
                page: DevPage(w >> 7),
                staged: w & 8 != 0,
            },
            TAG_MIGRATING => PageState::Migrating,
            TAG_POISONED => PageState::Poisoned,
            _ => PageState::Hole,
        }
    }

    /// States a migration may isolate.
    pub fn is_isolatable(self) -> bool {
        matches!(
            self,
            PageState::Unpopulated | PageState::System | PageState::Device { .. }
        )
    }
}

/// A transition was attempted from a state that does not allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Refused {
    pub actual: PageState,
}

/// One page's atomic state word.
#[derive(Debug, Default)]
pub struct StateCell(AtomicU32);

impl StateCell {
    pub fn new() -> StateCell {
        StateCell(AtomicU32::new(TAG_UNPOP))
    }

    /// A cell already in state `s`: a region that took over the pages of
    /// another (the program moved them with `mremap`), built before anyone
    /// else can see it.
    pub fn with_state(s: PageState) -> StateCell {
        StateCell(AtomicU32::new(s.encode()))
    }

    pub fn load(&self) -> PageState {
        PageState::decode(self.0.load(Ordering::Acquire))
    }

    fn transition(&self, from: PageState, to: PageState) -> Result<(), Refused> {
        self.0
            .compare_exchange(
                from.encode(),
                to.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|w| Refused {
                actual: PageState::decode(w),
            })
    }

    /// [`StateCell::commit`] of a page the caller isolated and whose block
    /// lock it holds, so that a refusal can only mean the protocol broke:
    /// it is reported on stderr and counted in `Stats::protocol_errors` in
    /// every build, never ignored.
    pub fn commit_isolated(&self, to: PageState, counters: &crate::observe::stats::Counters) {
        if let Err(r) = self.commit(to) {
            counters.add(&counters.protocol_errors, 1);
            eprintln!(
                "svmem: page-state protocol error: commit to {to:?} refused, the page is {:?} \
                 (please report this)",
                r.actual
            );
            debug_assert!(false, "commit to {to:?} refused: {:?}", r.actual);
        }
    }

    /// `Unpopulated → System`: the CPU view got a zero-filled page.
    pub fn populate(&self) -> Result<(), Refused> {
        self.transition(PageState::Unpopulated, PageState::System)
    }

    /// `Unpopulated | System | Device → Migrating`, given the state the caller
    /// saw; refused if it changed or cannot be isolated.
    pub fn isolate(&self, seen: PageState) -> Result<(), Refused> {
        if !seen.is_isolatable() {
            return Err(Refused {
                actual: self.load(),
            });
        }
        self.transition(seen, PageState::Migrating)
    }

    /// `Migrating → to` (`to` is the destination, or the state before
    /// isolation for a rollback, or `Poisoned`).
    pub fn commit(&self, to: PageState) -> Result<(), Refused> {
        if to == PageState::Migrating || to == PageState::Hole {
            return Err(Refused {
                actual: self.load(),
            });
        }
        self.transition(PageState::Migrating, to)
    }

    /// `System | Device | Poisoned → Unpopulated`: the data was discarded
    /// (madvise DONTNEED, region free). Returns the state it left. A `Hole`
    /// stays one (returned as is).
    pub fn discard(&self) -> Result<PageState, Refused> {
        let seen = self.load();
        match seen {
            PageState::Migrating => Err(Refused { actual: seen }),
            PageState::Unpopulated | PageState::Hole => Ok(seen),
            _ => self.transition(seen, PageState::Unpopulated).map(|_| seen),
        }
    }

    /// `Unpopulated | System | Device | Poisoned → Hole`: the program
    /// unmapped the page (UNMAP event). Returns the state it left (`Hole`
    /// again for a page already unmapped); refused while `Migrating`.
    pub fn unmap(&self) -> Result<PageState, Refused> {
        let seen = self.load();
        match seen {
            PageState::Migrating => Err(Refused { actual: seen }),
            PageState::Hole => Ok(seen),
            _ => self.transition(seen, PageState::Hole).map(|_| seen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        for s in [
            PageState::Unpopulated,
            PageState::System,
            PageState::Migrating,
            PageState::Poisoned,
            PageState::Hole,
            PageState::Device {
                dev: DeviceId(7),
                page: DevPage((MAX_DEV_PAGES - 1) as u32),
                staged: true,
            },
            PageState::Device {
                dev: DeviceId(0),
                page: DevPage(0),
                staged: false,
            },
        ] {
            assert_eq!(PageState::decode(s.encode()), s);
        }
    }

    #[test]
    fn named_transitions_refuse_wrong_states() {
        let c = StateCell::new();
        assert!(c.commit(PageState::System).is_err());
        c.populate().expect("fresh page populates");
        assert!(c.populate().is_err());
        c.isolate(PageState::System).expect("system page isolates");
        assert!(c.isolate(PageState::Migrating).is_err());
        assert!(c.discard().is_err(), "a migrating page cannot be discarded");
        c.commit(PageState::Device {
            dev: DeviceId(1),
            page: DevPage(5),
            staged: true,
        })
        .expect("commit");
        assert_eq!(
            c.discard().expect("discard"),
            PageState::Device {
                dev: DeviceId(1),
                page: DevPage(5),
                staged: true
            }
        );
        assert_eq!(c.load(), PageState::Unpopulated);
    }

    #[test]
    fn a_hole_is_never_left() {
        let c = StateCell::new();
        c.populate().expect("populate");
        c.isolate(PageState::System).expect("isolate");
        assert!(c.unmap().is_err(), "a migrating page cannot be unmapped");
        assert!(c.commit(PageState::Hole).is_err(), "no commit to a hole");
        c.commit(PageState::System).expect("commit");
        assert_eq!(c.unmap().expect("unmap"), PageState::System);
        assert_eq!(c.unmap().expect("again"), PageState::Hole);
        assert!(c.populate().is_err());
        assert!(c.isolate(PageState::Hole).is_err());
        assert!(c.commit(PageState::System).is_err());
        assert_eq!(c.discard().expect("discard"), PageState::Hole);
        assert_eq!(c.load(), PageState::Hole);
    }
}

#[cfg(test)]
#[path = "state_model_tests.rs"]
mod model_tests;
