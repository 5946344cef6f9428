//! The device side: device faults and their service, fault-ahead, queue
//! restore, the one routine that maps pages for a device, kernels and their
//! lanes, and device reads, writes and snapshots.

pub(crate) mod access;
pub(crate) mod ahead;
pub(crate) mod fault;
pub(crate) mod kernel;
pub(crate) mod map;
pub(crate) mod prefetch;
pub(crate) mod restore;

pub use access::{AccessReport, PageView};
pub use fault::{BatchStats, MAX_BATCH};
pub use kernel::{Group, Lane, LaunchReport, MAX_GROUP_SIZE, MAX_LOCAL_WORDS};
pub use prefetch::Prefetch;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::mm::ctx::Shared;
use crate::placement::attr::AttrMap;
use crate::placement::policy::PlacementPolicy;
use crate::pressure::PressureState;

/// What the device side works with: the core, the pressure layer, placement
/// (attributes and policy) and its own per-device runtime. Dereferences to
/// the core's [`Shared`].
pub(crate) struct Ctx {
    pub sh: Arc<Shared>,
    pub pressure: Arc<PressureState>,
    /// Range attributes, by page number.
    pub attrs: Arc<RwLock<AttrMap>>,
    pub policy: RwLock<Arc<dyn PlacementPolicy>>,
    /// Retry faults (XNACK on) for every device of this `Svm`.
    pub xnack: AtomicBool,
    /// Per device: fault buffer, batch log, running launches.
    pub runtime: Box<[fault::DeviceRuntime]>,
}

impl std::ops::Deref for Ctx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.sh
    }
}
