//! The crate's error type: every variant carries the values involved and, where
//! there is one, what to do about it.

use crate::addr::{AccessKind, DeviceId, VirtAddr};
use std::fmt;

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

    #[error(
        "{what} at {start} of {count} {unit} runs past the end of the address space: \
         give a length that fits the managed region"
    )]
    RangeOverflow {
        what: &'static str,
        start: VirtAddr,
        count: u64,
        unit: &'static str,
    },

    #[error("{what} of zero bytes: give a length of at least one byte")]
    ZeroLength { what: &'static str },

    #[error("unknown device {id}: this Svm has {count} device(s)")]
    UnknownDevice { id: DeviceId, count: usize },

    #[error("cannot register {len} bytes at {addr} as managed memory: {reason}")]
    CannotRegister {
        addr: VirtAddr,
        len: u64,
        reason: String,
    },

    #[error(
        "memory at {addr} is managed already (by a region of this Svm): register each range \
         once, or unregister it first"
    )]
    AlreadyManaged { addr: VirtAddr },

    #[error("allocation of {requested} bytes is too large: {reason}")]
    AllocTooLarge { requested: u64, reason: String },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("device {dev} write to read-only memory at {addr}")]
    ReadOnly { dev: DeviceId, addr: VirtAddr },

    #[error(
        "device {dev} {} at {addr}: the region is held by a CPU view (`Region::as_slice` \
         bars device writes, `Region::as_mut_slice` every device access); drop the view first",
        if *write { "write" } else { "read" }
    )]
    HeldByCpuView {
        dev: DeviceId,
        addr: VirtAddr,
        write: bool,
    },

    #[error("page at {addr} is poisoned: its data was lost in a device failure")]
    Poisoned { addr: VirtAddr },

    #[error(
        "page at {addr} was unmapped by the program (munmap, or a mapping over it): it is a \
         hole in its managed region, so devices cannot access or migrate it; keep device \
         accesses and migrations to mapped pages, or allocate a new region"
    )]
    Unmapped { addr: VirtAddr },

    #[error(
        "device {dev} may not {} the page at {addr}: the program's protection of it \
         (mprotect) forbids the CPU that access, and devices honour the CPU's protection; \
         change the protection with mprotect first",
        if *write { "write" } else { "read" }
    )]
    Protected {
        dev: DeviceId,
        addr: VirtAddr,
        write: bool,
    },

    #[error("granularity {value} is out of range: use 0 (one page) to 9 (2 MiB)")]
    Granularity { value: u8 },

    #[error("device {dev} failed: {reason}")]
    Device { dev: DeviceId, reason: String },

    #[error("kernel stopped by a {0}")]
    DeviceFault(Box<DeviceFault>),

    #[error("invalid range attributes: {0}")]
    Attr(#[from] AttrError),

    #[error("{what}: {running} kernel launch(es) are running on {dev}; wait for them to finish")]
    Busy {
        what: &'static str,
        dev: DeviceId,
        running: usize,
    },

    #[error(
        "device {dev} cannot be reset: migrations to it were still in flight after \
         {waited_ms} ms; retry the reset"
    )]
    MigrationsInFlight { dev: DeviceId, waited_ms: u64 },

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

    #[error(
        "this Svm belongs to the parent process (pid {owner}); a forked child (pid {pid}) \
         cannot use it: create a new Svm in the child"
    )]
    Forked { owner: u32, pid: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, source: std::io::Error) -> Error {
        Error::Os { op, source }
    }
}

/// Why a device access failed for good.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum FaultReason {
    /// The placement policy refused it (no access, read-only, unreachable).
    Policy(FailReason),
    /// No translation and the device does not retry faults (XNACK off).
    NoTranslation,
    /// The address is not inside managed memory.
    Unmanaged,
    /// The page's data was lost in a device failure.
    Poisoned,
    /// The program unmapped the page (a hole in its region; the kernel
    /// answers -EFAULT).
    Unmapped,
    /// A CPU view of the region (`Region::as_slice` / `as_mut_slice`) bars
    /// this access while it lives.
    CpuView,
    /// The CPU's protection of the page forbids it (the program's
    /// `mprotect`): a read of `PROT_NONE` memory, or a write or atomic on
    /// memory without `PROT_WRITE` (`write`). Devices honour the CPU's
    /// protection as the kernel's HMM does.
    Protection { write: bool },
    /// An atomic on a word that is not naturally aligned.
    Misaligned,
    /// The device itself failed the access.
    Device(String),
    /// The access kept faulting (the range changed under it every time).
    NotConverged,
    /// Another lane of the launch faulted fatally first.
    Aborted,
    /// The kernel asked for an access that cannot be made (lengths that do
    /// not match, an address range that overflows); says which and the fix.
    Argument(String),
}

impl std::fmt::Display for FaultReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultReason::Policy(r) => write!(f, "{r}"),
            FaultReason::NoTranslation => write!(
                f,
                "no translation and retry faults are off (XNACK off): grant the device access to the range first"
            ),
            FaultReason::Unmanaged => write!(f, "address is not in managed memory"),
            FaultReason::Poisoned => write!(f, "page is poisoned (its data was lost)"),
            FaultReason::Unmapped => write!(f, "page was unmapped by the program (a hole)"),
            FaultReason::CpuView => write!(
                f,
                "the region is held by a CPU view that bars this access (drop the view first)"
            ),
            FaultReason::Protection { write: false } => write!(
                f,
                "the page is PROT_NONE for the CPU (mprotect), so devices may not read it either"
            ),
            FaultReason::Protection { write: true } => write!(
                f,
                "the page is not writable for the CPU (mprotect without PROT_WRITE), so devices may not write it either"
            ),
            FaultReason::Misaligned => write!(f, "atomic access is not naturally aligned"),
            FaultReason::Device(s) => write!(f, "device error: {s}"),
            FaultReason::NotConverged => write!(f, "access did not converge after repeated faults"),
            FaultReason::Aborted => write!(f, "launch aborted by another lane's fatal fault"),
            FaultReason::Argument(s) => write!(f, "invalid access: {s}"),
        }
    }
}

/// A fatal device fault: where, what kind of access, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("fatal fault on {dev} lane {lane}: {kind:?} at {addr}: {reason}")]
pub struct DeviceFault {
    pub dev: DeviceId,
    pub lane: usize,
    pub addr: VirtAddr,
    pub kind: AccessKind,
    pub reason: FaultReason,
}

/// Why a fault was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FailReason {
    /// The device's access mode for the range is none.
    NoAccess,
    /// A write or atomic to read-only memory.
    ReadOnly,
    /// The data is in memory the device cannot reach and may not be moved.
    /// [`crate::KfdPolicy`] never returns it (it migrates to system memory instead);
    /// it is for policies that pin data.
    Unreachable,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailReason::NoAccess => {
                "the device has no access to this range (grant it with an access attribute)"
            }
            FailReason::ReadOnly => {
                "write to read-only memory (the region or the range's device_read_only flag)"
            }
            FailReason::Unreachable => "the data is in memory the device cannot reach",
        })
    }
}

/// Why attributes could not be set or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    #[error("no attributes given: pass at least one attribute to set")]
    NoAttributes,

    #[error("empty page range [{start:#x}, {end:#x}): the end page must be above the start page")]
    EmptyRange { start: u64, end: u64 },

    #[error("unknown device {id}: there are {count} device(s), use an index below {count}")]
    UnknownDevice { id: DeviceId, count: usize },

    #[error("granularity {value} is out of range: use 0 (one page) to 9 (512 pages, 2 MiB)")]
    Granularity { value: u8 },

    #[error(
        "unknown attribute kind {kind}: the kinds are 0 (preferred location), 1 (prefetch \
         location), 2 (access), 3 (access in place), 4 (no access), 5 (set flags), \
         6 (clear flags) and 7 (granularity)"
    )]
    UnknownKind { kind: u32 },

    #[error(
        "location {value:#x} is not valid: use 0 (system memory), 1 to 8 (device n-1) or \
         0xffffffff (undefined)"
    )]
    UnknownLocation { value: u32 },

    #[error(
        "flag bits {bits:#x} ({}) are not supported: svmem implements host_access (0x1), \
         coherent (0x2), device_read_only (0x8), device_exec (0x10), read_mostly (0x20) and \
         always_mapped (0x40)",
        unsupported_names(.bits)
    )]
    UnsupportedFlags { bits: u32 },

    #[error("conflicting attributes in one call: {what}; give each attribute one value")]
    Conflict { what: String },
}

/// Names the bits of a flag word that svmem refuses, for error messages.
fn unsupported_names(bits: &u32) -> String {
    let mut names = Vec::new();
    for bit in 0..32 {
        let b = 1u32 << bit;
        if bits & b == 0 {
            continue;
        }
        names.push(match b {
            0x4 => "hive_local".to_string(),    // KFD_IOCTL_SVM_FLAG_HIVE_LOCAL
            0x80 => "ext_coherent".to_string(), // KFD_IOCTL_SVM_FLAG_EXT_COHERENT
            other => format!("unknown {other:#x}"),
        });
    }
    names.join("|")
}
