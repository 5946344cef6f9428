//! TEMPORARY stub (replaced by the real module).
use crate::addr::{DeviceId, Location, VirtAddr};
use crate::attr::{AccessMode, RangeAttrs};
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum AccessKind {
    Read,
    Write,
    Atomic,
}
pub struct PolicyInput<'a> {
    pub dev: DeviceId,
    pub addr: VirtAddr,
    pub kind: AccessKind,
    pub resident: Location,
    pub attrs: &'a RangeAttrs,
    pub xnack: bool,
    pub region_writable: bool,
    pub reachable: u8,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Decision {
    MigrateToDevice(DeviceId),
    MigrateToSystem,
    MapInPlace,
    Fail(FailReason),
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum FailReason {
    NoAccess,
    ReadOnly,
    Unreachable,
}
impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
pub trait PlacementPolicy: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    fn decide(&self, input: &PolicyInput<'_>) -> Decision;
}
#[derive(Debug, Default, Clone, Copy)]
pub struct KfdPolicy;
impl PlacementPolicy for KfdPolicy {
    fn name(&self) -> &str {
        "kfd"
    }
    fn decide(&self, i: &PolicyInput<'_>) -> Decision {
        if i.kind != AccessKind::Read && !i.region_writable {
            return Decision::Fail(FailReason::ReadOnly);
        }
        match i.attrs.access(i.dev, i.xnack) {
            AccessMode::None => Decision::Fail(FailReason::NoAccess),
            _ if i.resident == Location::Device(i.dev) => Decision::MapInPlace,
            _ => Decision::MigrateToDevice(i.dev),
        }
    }
}
