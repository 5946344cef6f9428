//! TEMPORARY stub (replaced by the real module).
use crate::addr::{DeviceId, Location};
use crate::state::MAX_DEVICES;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AccessMode {
    None,
    Access,
    AccessInPlace,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct AttrFlags(u32);
impl AttrFlags {
    pub const HOST_ACCESS: AttrFlags = AttrFlags(1);
    pub const COHERENT: AttrFlags = AttrFlags(2);
    pub const DEVICE_READ_ONLY: AttrFlags = AttrFlags(8);
    pub const DEVICE_EXEC: AttrFlags = AttrFlags(0x10);
    pub const READ_MOSTLY: AttrFlags = AttrFlags(0x20);
    pub const ALWAYS_MAPPED: AttrFlags = AttrFlags(0x40);
    pub fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn bits(self) -> u32 {
        self.0
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    PreferredLocation(Option<Location>),
    PrefetchLocation(Option<Location>),
    Access(DeviceId, AccessMode),
    SetFlags(AttrFlags),
    ClearFlags(AttrFlags),
    Granularity(u8),
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeAttrs {
    pub preferred: Option<Location>,
    pub prefetch: Option<Location>,
    pub access: [Option<AccessMode>; MAX_DEVICES],
    pub flags: AttrFlags,
    pub granularity: u8,
}
impl RangeAttrs {
    pub fn defaults(granularity: u8) -> Self {
        RangeAttrs {
            preferred: None,
            prefetch: None,
            access: [None; MAX_DEVICES],
            flags: AttrFlags(3),
            granularity,
        }
    }
    pub fn access(&self, d: DeviceId, xnack: bool) -> AccessMode {
        self.access[d.0 as usize].unwrap_or(if xnack {
            AccessMode::Access
        } else {
            AccessMode::None
        })
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Common<T> {
    Same(T),
    Mixed,
}
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttrQuery {
    pub preferred: Common<Option<Location>>,
    pub prefetch: Common<Option<Location>>,
    pub access: Vec<Common<AccessMode>>,
    pub flags: AttrFlags,
    pub granularity: u8,
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    #[error("no attributes")]
    NoAttributes,
}
#[derive(Debug)]
pub struct AttrMap {
    g: u8,
}
impl AttrMap {
    pub fn new(g: u8) -> Self {
        AttrMap { g }
    }
    pub fn set(
        &mut self,
        start: u64,
        end: u64,
        _attrs: &[Attr],
        _n: usize,
    ) -> Result<Vec<(u64, u64)>, AttrError> {
        Ok(vec![(start, end)])
    }
    pub fn query(&self, _s: u64, _e: u64, n: usize, _x: bool) -> AttrQuery {
        AttrQuery {
            preferred: Common::Mixed,
            prefetch: Common::Mixed,
            access: vec![Common::Mixed; n],
            flags: AttrFlags(0),
            granularity: self.g,
        }
    }
    pub fn get(&self, _page: u64) -> RangeAttrs {
        RangeAttrs::defaults(self.g)
    }
    pub fn segments(&self, s: u64, e: u64) -> Vec<(u64, u64, RangeAttrs)> {
        vec![(s, e, RangeAttrs::defaults(self.g))]
    }
    pub fn remove(&mut self, _s: u64, _e: u64) {}
    pub fn ranges(&self) -> usize {
        0
    }
    pub fn metadata_bytes(&self) -> u64 {
        0
    }
}
