//! Memory pressure: eviction from device memory, system-memory accounting,
//! pinning, and surviving device failures. The core reaches this layer only
//! through [`crate::mm::ctx::Pressure`], implemented by [`Pressure`].

pub(crate) mod account;
pub(crate) mod evict;
pub(crate) mod failure;
pub(crate) mod pin;

pub use account::default_limit as default_memory_limit;
pub use account::{DeviceUsage, MemoryUsage};
pub use evict::Eviction;
pub use failure::ResetReport;

use std::sync::Arc;

use parking_lot::RwLock;

use crate::addr::DeviceId;
use crate::mm::ctx::{Charge, Shared};
use crate::mm::space::RegionInner;
use crate::placement::attr::AttrMap;

/// The memory-pressure layer's own state, one per `Svm`.
pub(crate) struct PressureState {
    /// Per device: the eviction clock over blocks holding its pages.
    pub residency: Box<[evict::Residency]>,
    /// Which block eviction takes first.
    pub eviction: evict::EvictionCell,
    /// Evictions younger than this make faults count as thrashing (ns; 0: never).
    pub thrash_window_ns: u64,
    /// Evictions in a row, each within the window of the last, that make a
    /// fault count as thrashing (see [`evict::thrashing`]).
    pub thrash_streak: crate::sync::AtomicU8,
    /// System-memory limit, charges and pin totals.
    pub account: Arc<account::Accountant>,
    /// Range attributes (placement's, shared with the device side): held
    /// here so that their metadata is charged with everything else.
    pub attrs: Arc<RwLock<AttrMap>>,
}

impl PressureState {
    pub fn new(
        devices: usize,
        thrash_window_ns: u64,
        account: account::Accountant,
        attrs: Arc<RwLock<AttrMap>>,
    ) -> Self {
        PressureState {
            residency: (0..devices).map(|_| Default::default()).collect(),
            eviction: Default::default(),
            thrash_window_ns,
            thrash_streak: crate::sync::AtomicU8::new(1),
            account: Arc::new(account),
            attrs,
        }
    }
}

impl crate::mm::ctx::Pressure for PressureState {
    fn make_room(&self, sh: &Shared, d: DeviceId, pages: u64) -> bool {
        evict::make_room(sh, self, d, pages)
    }

    fn note_resident(&self, sh: &Shared, r: &RegionInner, b: usize, d: DeviceId) {
        evict::note_resident(sh, self, r, b, d)
    }

    fn charge_bounce(&self, sh: &Shared, bytes: u64) -> Option<Charge> {
        let c = self.account.charge_bounce(sh, bytes)?;
        Some(Box::new(c))
    }

    fn metadata_bytes(&self) -> u64 {
        let rings: u64 = self.residency.iter().map(|r| r.metadata_bytes()).sum();
        rings + self.attrs.read().metadata_bytes()
    }

    fn relocated(&self, sh: &Shared, old: &RegionInner, new: &Arc<RegionInner>) {
        let ps = crate::addr::PAGE_SIZE as u64;
        self.attrs
            .write()
            .relocate(old.base() / ps, new.base() / ps, new.npages as u64);
        evict::forget_region(sh, self, old);
        for b in 0..new.blocks.len() {
            let _g = new.blocks[b].migrate.lock();
            let mut on = 0u8;
            for k in new.block_pages(b) {
                if let crate::mm::state::PageState::Device { dev, .. } = new.states[k].load() {
                    on |= 1 << dev.0;
                }
            }
            for d in 0..crate::addr::MAX_DEVICES {
                if on & (1 << d) != 0 {
                    evict::note_resident(sh, self, new, b, crate::addr::DeviceId(d as u8));
                }
            }
        }
    }
}
