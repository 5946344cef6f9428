//! The core, which knows no `Svm`: page states, regions and their blocks,
//! staging, the migration protocol, first touch (populate, huge pages) and
//! poisoning. The layers above reach it through [`ctx::Shared`]; it reaches
//! the memory-pressure layer only through [`ctx::Pressure`].

pub(crate) mod announce;
pub(crate) mod ctx;
pub(crate) mod huge;
#[cfg(all(test, loom))]
mod loom_models;
pub(crate) mod migrate;
pub(crate) mod pins;
pub(crate) mod poison;
pub(crate) mod populate;
pub(crate) mod remap;
pub(crate) mod space;
pub(crate) mod staging;
pub(crate) mod state;

pub use migrate::MigrateReport;
pub use state::PageState;
