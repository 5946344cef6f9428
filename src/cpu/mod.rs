//! The CPU side: the userfaultfd reader thread and CPU fault resolution.

pub(crate) mod reader;
