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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, source: std::io::Error) -> Error {
        Error::Os { op, source }
    }
}
