//! The crate's error type: every variant carries the values involved and, where
//! there is one, what to do about it.

use crate::addr::{DeviceId, VirtAddr};

/// Errors returned by svmem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "userfaultfd is not permitted for this process ({source}). Run as root, or give the user \
         read/write access to /dev/userfaultfd (e.g. `setfacl -m u:$USER:rw /dev/userfaultfd`), \
         or allow it system-wide with `sysctl -w vm.unprivileged_userfaultfd=1`"
    )]
    UffdPermission { source: std::io::Error },

    #[error("the kernel's userfaultfd lacks {feature}, which svmem needs (offered feature mask {offered:#x}); use Linux 6.8 or newer")]
    UffdMissingFeature { feature: &'static str, offered: u64 },

    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        source: std::io::Error,
    },

    #[error("{what} {value:#x} is not aligned to the 4096-byte page size")]
    Unaligned { what: &'static str, value: u64 },

    #[error("empty range at {addr}: length must be at least one page")]
    EmptyRange { addr: VirtAddr },

    #[error("range {start}+{len:#x} is not inside one managed region")]
    OutsideManaged { start: VirtAddr, len: u64 },

    #[error("unknown device {id}: this Svm has {count} device(s)")]
    UnknownDevice { id: DeviceId, count: usize },

    #[error("allocation of {requested} bytes is too large: {reason}")]
    AllocTooLarge { requested: u64, reason: String },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("device {dev} write to read-only memory at {addr}")]
    ReadOnly { dev: DeviceId, addr: VirtAddr },

    #[error("page at {addr} is poisoned: its data was lost in a device failure")]
    Poisoned { addr: VirtAddr },

    #[error("granularity {value} is out of range: use 0 (one page) to 9 (2 MiB)")]
    Granularity { value: u8 },

    #[error("device {dev} failed: {reason}")]
    Device { dev: DeviceId, reason: String },

    #[error("kernel stopped by a {0}")]
    DeviceFault(Box<crate::kernel::DeviceFault>),

    #[error("invalid range attributes: {0}")]
    Attr(#[from] crate::attr::AttrError),

    #[error("{what}: {running} kernel launch(es) are running on {dev}; wait for them to finish")]
    Busy {
        what: &'static str,
        dev: DeviceId,
        running: usize,
    },

    #[error(
        "system memory limit: {requested} bytes requested, {in_use} bytes in use, limit {limit} bytes"
    )]
    MemoryLimit {
        requested: u64,
        in_use: u64,
        limit: u64,
    },

    #[error("memory limit of {limit} bytes is below the {in_use} bytes already in use")]
    LimitBelowUsage { limit: u64, in_use: u64 },

    #[error(
        "device {dev} memory: {requested} bytes requested but the device has {capacity} bytes, \
         {evictable} of them evictable"
    )]
    DeviceMemory {
        dev: DeviceId,
        requested: u64,
        capacity: u64,
        evictable: u64,
    },

    #[error("pin limit: {requested} bytes requested, {pinned} bytes pinned, limit {limit} bytes")]
    PinLimit {
        requested: u64,
        pinned: u64,
        limit: u64,
    },

    #[error("page at {addr} is not pinned")]
    NotPinned { addr: VirtAddr },

    #[error("page at {addr} is pinned {count} times, the most one page may be")]
    PinOverflow { addr: VirtAddr, count: u32 },

    #[error("{len:#x} bytes at {addr} could not be pinned: {busy} page(s) stayed on a device")]
    PinBusy { addr: VirtAddr, len: u64, busy: u64 },

    #[error("fault injection: {what} = {value} is out of range ({allowed})")]
    Injection {
        what: &'static str,
        value: String,
        allowed: &'static str,
    },

    #[error("device {dev} is lost; reset it to use it again")]
    DeviceLost { dev: DeviceId },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, source: std::io::Error) -> Error {
        Error::Os { op, source }
    }
}
