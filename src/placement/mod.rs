//! Where pages should live: range attributes and the placement policy that
//! reads them.

pub mod attr;
pub mod policy;

pub use attr::{AccessMode, Attr, AttrFlags, AttrQuery, Common};
pub use policy::{Decision, KfdPolicy, PlacementPolicy};
