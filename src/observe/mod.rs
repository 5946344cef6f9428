//! What svmem shows of itself: the event stream, the notifier that
//! invalidates device mappings and raises unmap events, and counters.

pub mod events;
pub(crate) mod notify;
pub mod stats;

pub use events::{Event, EventKind, EventStream};
pub use stats::Stats;
