//! The crate's error type: every variant carries the values involved and, where
//! there is one, what to do about it.

use crate::addr::{AccessKind, DeviceId, VirtAddr};
use std::fmt;

/// Errors returned by svmem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process may not open a userfaultfd in the mode svmem needs (kernel
    /// faults included): returned by [`SvmBuilder::build`](crate::SvmBuilder::build)
    /// and [`Svm::with_emulated`](crate::Svm::with_emulated). Run as root, grant
    /// the user read/write access to `/dev/userfaultfd`, or set
    /// `vm.unprivileged_userfaultfd=1`; the message names each way.
    #[error(
        "userfaultfd is not permitted for this process ({source}). Run as root, or give the user \
         read/write access to /dev/userfaultfd (e.g. `setfacl -m u:$USER:rw /dev/userfaultfd`), \
         or allow it system-wide with `sysctl -w vm.unprivileged_userfaultfd=1`"
    )]
    UffdPermission {
        /// The error from opening the userfaultfd (`EPERM` usually).
        source: std::io::Error,
    },

    /// The running kernel's userfaultfd lacks a feature svmem relies on
    /// (`UFFD_FEATURE_MOVE` needs Linux 6.8, `UFFD_FEATURE_POISON` 6.6), found when
    /// an [`Svm`](crate::Svm) is built. Nothing to retry: run on a newer kernel.
    #[error("the kernel's userfaultfd lacks {feature}, which svmem needs (offered feature mask {offered:#x}); use Linux 6.8 or newer")]
    UffdMissingFeature {
        /// The missing feature, e.g. `UFFD_FEATURE_MOVE`.
        feature: &'static str,
        /// The feature mask the kernel offered.
        offered: u64,
    },

    /// A system call svmem made failed for a reason other than the ones with
    /// their own variant (`op` names it: an `mmap`, `mprotect`, `madvise`, a
    /// userfaultfd registration, spawning a thread, ...). Usually resource
    /// exhaustion (`ENOMEM`, the `vm.max_map_count` limit, threads); `source` holds
    /// the OS error. Free resources or raise the limit, then retry.
    #[error("{op} failed: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The OS error it returned.
        source: std::io::Error,
    },

    /// An address or length that must be a multiple of the 4 KiB page size
    /// ([`PAGE_SIZE`](crate::PAGE_SIZE)) is not: the range arguments of
    /// [`Svm::migrate`](crate::Svm::migrate), [`Svm::prefetch`](crate::Svm::prefetch),
    /// [`Svm::set_attributes`](crate::Svm::set_attributes), [`Svm::pin`](crate::Svm::pin)
    /// and friends, of [`Svm::register`](crate::Svm::register) and of
    /// [`DeviceHandle::snapshot`](crate::DeviceHandle::snapshot). `what` says
    /// which argument, `value` its value; round it to a page boundary (e.g.
    /// use [`Region::addr`](crate::Region::addr) and [`Region::len`](crate::Region::len)).
    /// (A misaligned atomic inside a kernel is a fatal
    /// [`FaultReason::Misaligned`] instead.)
    #[error("{what} {value:#x} is not aligned to the 4096-byte page size")]
    Unaligned {
        /// Which argument (`"address"`, `"length"`, ...).
        what: &'static str,
        /// Its value.
        value: u64,
    },

    /// A page-range operation (migrate, prefetch, attributes, pin) was given a
    /// length of zero; give at least one page.
    #[error("empty range at {addr}: length must be at least one page")]
    EmptyRange {
        /// Where the empty range starts.
        addr: VirtAddr,
    },

    /// The range `[start, start+len)` is not entirely inside one managed region:
    /// it starts outside managed memory, runs past the end of its region, spans two
    /// regions, or the region was freed. Operate on each region separately, within
    /// [`Region::addr`](crate::Region::addr) and [`Region::len`](crate::Region::len).
    #[error("range {start}+{len:#x} is not inside one managed region")]
    OutsideManaged {
        /// The start of the range.
        start: VirtAddr,
        /// Its length in bytes.
        len: u64,
    },

    /// `start` plus `count` `unit`s (bytes, elements) wraps around the end of
    /// the 64-bit address space: a length or an index computed wrongly. Give a
    /// length that fits inside the managed region.
    #[error(
        "{what} at {start} of {count} {unit} runs past the end of the address space: \
         give a length that fits the managed region"
    )]
    RangeOverflow {
        /// What range (e.g. `"registered range"`).
        what: &'static str,
        /// Where it starts.
        start: VirtAddr,
        /// How many `unit`s long it is.
        count: u64,
        /// The unit of `count` (`"bytes"`, an element type).
        unit: &'static str,
    },

    /// An allocation or registration of zero bytes ([`Svm::alloc`](crate::Svm::alloc),
    /// [`Svm::register`](crate::Svm::register)); ask for at least one byte.
    #[error("{what} of zero bytes: give a length of at least one byte")]
    ZeroLength {
        /// What was asked for.
        what: &'static str,
    },

    /// A [`DeviceId`] that this [`Svm`](crate::Svm) does not have (`id` is at
    /// least `count`, the number of devices added to the builder). Use one of
    /// [`Svm::device_ids`](crate::Svm::device_ids).
    #[error("unknown device {id}: this Svm has {count} device(s)")]
    UnknownDevice {
        /// The device asked for.
        id: DeviceId,
        /// How many devices there are (ids `0..count`).
        count: usize,
    },

    /// [`Svm::register`](crate::Svm::register) cannot manage `[addr, addr+len)`
    /// in place; `reason` says why: part of it is not mapped, the mapping is shared
    /// or file-backed (only private anonymous memory can be managed), or another
    /// userfaultfd already holds it. Register private anonymous memory (`mmap` with
    /// `MAP_PRIVATE | MAP_ANONYMOUS`, a page-aligned heap allocation), or allocate
    /// with [`Svm::alloc`](crate::Svm::alloc) instead.
    #[error("cannot register {len} bytes at {addr} as managed memory: {reason}")]
    CannotRegister {
        /// Start of the range.
        addr: VirtAddr,
        /// Its length in bytes.
        len: u64,
        /// Why it cannot be managed.
        reason: String,
    },

    /// [`Svm::register`](crate::Svm::register) was given a range that overlaps
    /// memory this `Svm` manages already (a region from `alloc` or an earlier
    /// `register`). Register each range once, or unregister it first.
    #[error(
        "memory at {addr} is managed already (by a region of this Svm): register each range \
         once, or unregister it first"
    )]
    AlreadyManaged {
        /// The start of the managed memory it overlaps.
        addr: VirtAddr,
    },

    /// An allocation cannot be made at all, whatever the memory limit says:
    /// more than one region can hold, or the kernel refused to map the managed or
    /// staging area (address space or `vm.max_map_count` exhausted); also emulated
    /// device memory larger than the machine can back. `reason` says which; ask for
    /// less, or split the allocation over several regions.
    #[error("allocation of {requested} bytes is too large: {reason}")]
    AllocTooLarge {
        /// Bytes asked for.
        requested: u64,
        /// Why it cannot be made.
        reason: String,
    },

    /// A configuration value is out of range: a builder setting
    /// ([`SvmBuilder`](crate::SvmBuilder): more devices than supported, pipeline
    /// depth outside 1..=64), an [`EmulatedConfig`](crate::EmulatedConfig) field, an
    /// unknown timing-profile or prefetcher name, a timing profile for a
    /// device without a timing model, fault injection on a device that has
    /// none, or a launch shape (work-group size, local scratch). The message
    /// names the value and what is accepted.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Device `dev` tried to write (or run an atomic on) memory it may only read:
    /// the region is read-only ([`Region::protect`](crate::Region::protect)
    /// with [`Prot::ReadOnly`](crate::Prot::ReadOnly)), or the range has the `device_read_only` flag
    /// ([`AttrFlags::DEVICE_READ_ONLY`](crate::AttrFlags::DEVICE_READ_ONLY), set by
    /// [`Svm::set_attributes`](crate::Svm::set_attributes)). Nothing was written.
    /// Clear the flag, or write from the CPU.
    #[error("device {dev} write to read-only memory at {addr}")]
    ReadOnly {
        /// The device that tried to write.
        dev: DeviceId,
        /// The first read-only address it tried to write.
        addr: VirtAddr,
    },

    /// Device `dev` tried to read (`write == false`) or write a region while a
    /// CPU view bars it: a view from [`Region::as_slice`](crate::Region::as_slice)
    /// bars device writes, one from [`Region::as_mut_slice`](crate::Region::as_mut_slice)
    /// every device access (safe Rust never sees bytes change under a reference).
    /// Drop the view first; share memory between CPU threads and running kernels
    /// through [`Region::as_atomic_u64`](crate::Region::as_atomic_u64).
    #[error(
        "device {dev} {} at {addr}: the region is held by a CPU view (`Region::as_slice` \
         bars device writes, `Region::as_mut_slice` every device access); drop the view first",
        if *write { "write" } else { "read" }
    )]
    HeldByCpuView {
        /// The device that tried the access.
        dev: DeviceId,
        /// Where.
        addr: VirtAddr,
        /// True for a write, false for a read.
        write: bool,
    },

    /// The page at `addr` lost its data in a device failure (the device was lost
    /// while the page was on it, or a copy back to system memory failed on a CPU
    /// fault): devices get this error, the CPU gets `SIGBUS`. The data is gone
    /// and the page stays poisoned; free the region and recompute its data in
    /// a new one (after [`Svm::reset_device`](crate::Svm::reset_device) if
    /// the device was lost).
    #[error("page at {addr} is poisoned: its data was lost in a device failure")]
    Poisoned {
        /// The first poisoned page met.
        addr: VirtAddr,
    },

    /// The page at `addr` was unmapped by the program (`munmap`, or a new mapping
    /// placed over it) and is a hole in its managed region: device accesses,
    /// migrations, prefetches and pins over it fail, naming the first hole. Keep
    /// them to the mapped pages, or allocate a new region.
    #[error(
        "page at {addr} was unmapped by the program (munmap, or a mapping over it): it is a \
         hole in its managed region, so devices cannot access or migrate it; keep device \
         accesses and migrations to mapped pages, or allocate a new region"
    )]
    Unmapped {
        /// The first unmapped page met.
        addr: VirtAddr,
    },

    /// Device `dev` tried an access that the CPU's protection of the page forbids
    /// (the program's `mprotect`): a read (`write == false`) of `PROT_NONE`
    /// memory, or a write or atomic on memory without `PROT_WRITE`. Devices honour
    /// the CPU's protection as the kernel's HMM does; nothing was accessed. Change
    /// the protection with `mprotect` first.
    #[error(
        "device {dev} may not {} the page at {addr}: the program's protection of it \
         (mprotect) forbids the CPU that access, and devices honour the CPU's protection; \
         change the protection with mprotect first",
        if *write { "write" } else { "read" }
    )]
    Protected {
        /// The device that tried the access.
        dev: DeviceId,
        /// The first address the protection forbids.
        addr: VirtAddr,
        /// True for a write or atomic, false for a read.
        write: bool,
    },

    /// A fault granularity above 9: granularity is log2 of the pages a fault
    /// migrates, 0 (one 4 KiB page) to 9 (a 2 MiB block); see
    /// [`Svm::set_granularity`](crate::Svm::set_granularity) and
    /// [`SvmBuilder::granularity`](crate::SvmBuilder::granularity).
    #[error("granularity {value} is out of range: use 0 (one page) to 9 (2 MiB)")]
    Granularity {
        /// The value given.
        value: u8,
    },

    /// Device `dev` failed an operation (its copy engine or memory failed, an
    /// access kept faulting without converging, or a reset could not empty the
    /// device); `reason` says what. Data is kept where it was. Retry, or
    /// [`Svm::reset_device`](crate::Svm::reset_device) the device.
    #[error("device {dev} failed: {reason}")]
    Device {
        /// The device.
        dev: DeviceId,
        /// What failed.
        reason: String,
    },

    /// A kernel launched with [`DeviceHandle::launch`](crate::DeviceHandle::launch)
    /// (or one of its shapes) stopped on a fatal device fault; the [`DeviceFault`]
    /// says which lane, address, access and [`FaultReason`]. Returned by
    /// [`LaunchReport::check`](crate::LaunchReport::check). Fix the access (grant
    /// access, map ahead, drop a CPU view, ...) as the reason says.
    #[error("kernel stopped by a {0}")]
    DeviceFault(Box<DeviceFault>),

    /// Range attributes were rejected before any applied
    /// ([`Svm::set_attributes`](crate::Svm::set_attributes), [`Svm::advise`](crate::Svm::advise),
    /// raw attribute parsing); the [`AttrError`] says which and the fix.
    #[error("invalid range attributes: {0}")]
    Attr(#[from] AttrError),

    /// An operation that needs the device idle (`what`: resetting it, switching
    /// XNACK) found `running` kernel launches on device `dev`. Nothing changed;
    /// wait for the launches to return, then retry.
    #[error("{what}: {running} kernel launch(es) are running on {dev}; wait for them to finish")]
    Busy {
        /// What was refused.
        what: &'static str,
        /// The device with running launches.
        dev: DeviceId,
        /// How many launches are running on it.
        running: usize,
    },

    /// [`Svm::reset_device`](crate::Svm::reset_device) waited `waited_ms`
    /// milliseconds and migrations to device `dev` were still running. Nothing was
    /// reset; retry once the migrations are done.
    #[error(
        "device {dev} cannot be reset: migrations to it were still in flight after \
         {waited_ms} ms; retry the reset"
    )]
    MigrationsInFlight {
        /// The device being reset.
        dev: DeviceId,
        /// How long the reset waited, in milliseconds.
        waited_ms: u64,
    },

    /// Allocating `requested` bytes of system memory (a region from
    /// [`Svm::alloc`](crate::Svm::alloc) or [`Svm::register`](crate::Svm::register)
    /// with its metadata, or a region's pin table on its first pin) would take
    /// the bytes charged against the system-memory limit (`in_use`) past `limit`.
    /// Nothing was allocated. Free regions, migrate data to a
    /// device, or raise the limit with [`Svm::set_memory_limit`](crate::Svm::set_memory_limit)
    /// or [`SvmBuilder::memory_limit`](crate::SvmBuilder::memory_limit). See
    /// [`Svm::memory_usage`](crate::Svm::memory_usage) for what is charged.
    #[error(
        "system memory limit: {requested} bytes requested, {in_use} bytes in use, limit {limit} bytes"
    )]
    MemoryLimit {
        /// Bytes the allocation needs.
        requested: u64,
        /// Bytes charged against the limit now.
        in_use: u64,
        /// The system-memory limit in bytes.
        limit: u64,
    },

    /// [`Svm::set_memory_limit`](crate::Svm::set_memory_limit) was given a
    /// `limit` below the `in_use` bytes already charged; the old limit stays. Free
    /// memory first, or choose a limit at least `in_use`.
    #[error("memory limit of {limit} bytes is below the {in_use} bytes already in use")]
    LimitBelowUsage {
        /// The limit asked for, in bytes.
        limit: u64,
        /// Bytes charged against the limit now.
        in_use: u64,
    },

    /// One migration (or prefetch) to device `dev` asks for more than the
    /// device holds in all: `requested` bytes not on it yet against its
    /// `capacity` (smaller requests evict cold blocks to make room instead).
    /// `evictable` is what the device holds now. Nothing moved; migrate the
    /// range in pieces no larger than the device, or use a larger device.
    #[error(
        "device {dev} memory: {requested} bytes requested but the device has {capacity} bytes, \
         {evictable} of them evictable"
    )]
    DeviceMemory {
        /// The device.
        dev: DeviceId,
        /// Bytes of the range not on the device yet.
        requested: u64,
        /// The device's memory in bytes.
        capacity: u64,
        /// Bytes the device holds now (in use, so evictable).
        evictable: u64,
    },

    /// [`Svm::pin`](crate::Svm::pin) would take the pinned bytes (`pinned`, plus
    /// the `requested` bytes not pinned yet) past the pin limit `limit`
    /// ([`SvmBuilder::pin_limit`](crate::SvmBuilder::pin_limit)). No pin count
    /// changed; unpin something or raise the limit.
    #[error("pin limit: {requested} bytes requested, {pinned} bytes pinned, limit {limit} bytes")]
    PinLimit {
        /// Bytes of the range not pinned yet.
        requested: u64,
        /// Bytes pinned now.
        pinned: u64,
        /// The pin limit in bytes.
        limit: u64,
    },

    /// [`Svm::unpin`](crate::Svm::unpin) found a page that is not pinned
    /// (`addr` is the first). No pin count changed: unpin only what was pinned,
    /// once per pin.
    #[error("page at {addr} is not pinned")]
    NotPinned {
        /// The first page that is not pinned.
        addr: VirtAddr,
    },

    /// A page at `addr` is already pinned `count` (65535) times, the most one
    /// page may be; no pin count changed. Unpin before pinning again.
    #[error("page at {addr} is pinned {count} times, the most one page may be")]
    PinOverflow {
        /// The page.
        addr: VirtAddr,
        /// Its pin count.
        count: u32,
    },

    /// [`Svm::pin`](crate::Svm::pin) could not bring `busy` of the pages of
    /// `[addr, addr+len)` home from a device (busy, or no room for a bounce buffer
    /// under the memory limit). No pin count changed; retry.
    #[error("{len:#x} bytes at {addr} could not be pinned: {busy} page(s) stayed on a device")]
    PinBusy {
        /// Start of the range.
        addr: VirtAddr,
        /// Its length in bytes.
        len: u64,
        /// Pages that stayed on a device.
        busy: u64,
    },

    /// A fault-injection setting ([`DeviceHandle::inject`](crate::DeviceHandle::inject),
    /// an [`Injection`](crate::Injection)) is out of range: `what` names the field,
    /// `value` its value and `allowed` what is accepted.
    #[error("fault injection: {what} = {value} is out of range ({allowed})")]
    Injection {
        /// The setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        allowed: &'static str,
    },

    /// Device `dev` was lost (failed without warning, e.g. the emulated
    /// device's `lose`): migrations to it, launches on it and its reads and writes
    /// are refused, and the pages whose data was on it are poisoned. Call
    /// [`Svm::reset_device`](crate::Svm::reset_device) to use it again.
    #[error("device {dev} is lost; reset it to use it again")]
    DeviceLost {
        /// The lost device.
        dev: DeviceId,
    },

    /// This [`Svm`](crate::Svm) (or a handle from it) was used in a forked child
    /// (`pid`) of the process that built it (`owner`). The parent's handles are
    /// dead in the child; build a new `Svm` there.
    #[error(
        "this Svm belongs to the parent process (pid {owner}); a forked child (pid {pid}) \
         cannot use it: create a new Svm in the child"
    )]
    Forked {
        /// The process id that built the `Svm`.
        owner: u32,
        /// The process id of the child that used it.
        pid: u32,
    },
}

/// `std::result::Result` with svmem's [`Error`] as the default error type.
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
    Protection {
        /// True for a write or atomic, false for a read.
        write: bool,
    },
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
    /// The device the kernel ran on.
    pub dev: DeviceId,
    /// The lane (one of the launch's lane threads, numbered from 0) that faulted.
    pub lane: usize,
    /// The address of the access.
    pub addr: VirtAddr,
    /// What kind of access it was.
    pub kind: AccessKind,
    /// Why it could not be made.
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
    /// [`Svm::set_attributes`](crate::Svm::set_attributes) got an empty list.
    #[error("no attributes given: pass at least one attribute to set")]
    NoAttributes,

    /// A page range whose end is not above its start.
    #[error("empty page range [{start:#x}, {end:#x}): the end page must be above the start page")]
    EmptyRange {
        /// First page number (address / 4096).
        start: u64,
        /// Page number one past the end.
        end: u64,
    },

    /// A location or access attribute names a device that does not exist.
    #[error("unknown device {id}: there are {count} device(s), use an index below {count}")]
    UnknownDevice {
        /// The device named.
        id: DeviceId,
        /// How many devices there are.
        count: usize,
    },

    /// A granularity attribute above 9 (log2 pages: 0 is 4 KiB, 9 is 2 MiB).
    #[error("granularity {value} is out of range: use 0 (one page) to 9 (512 pages, 2 MiB)")]
    Granularity {
        /// The value given.
        value: u8,
    },

    /// A raw attribute (from the C API or Python) with a kind number svmem
    /// does not know; the message lists the kinds.
    #[error(
        "unknown attribute kind {kind}: the kinds are 0 (preferred location), 1 (prefetch \
         location), 2 (access), 3 (access in place), 4 (no access), 5 (set flags), \
         6 (clear flags) and 7 (granularity)"
    )]
    UnknownKind {
        /// The kind number given.
        kind: u32,
    },

    /// A raw location value that is neither system memory, a device nor
    /// undefined; the message lists the valid encodings.
    #[error(
        "location {value:#x} is not valid: use 0 (system memory), 1 to 8 (device n-1) or \
         0xffffffff (undefined)"
    )]
    UnknownLocation {
        /// The raw value given.
        value: u32,
    },

    /// Flag bits svmem does not implement (AMD's `hive_local`,
    /// `ext_coherent`, or unknown bits); the message names them and the
    /// supported flags.
    #[error(
        "flag bits {bits:#x} ({}) are not supported: svmem implements host_access (0x1), \
         coherent (0x2), device_read_only (0x8), device_exec (0x10), read_mostly (0x20) and \
         always_mapped (0x40)",
        unsupported_names(.bits)
    )]
    UnsupportedFlags {
        /// The unsupported bits.
        bits: u32,
    },

    /// One call sets the same attribute twice with different values, or
    /// sets and clears the same flag.
    #[error("conflicting attributes in one call: {what}; give each attribute one value")]
    Conflict {
        /// Which attributes conflict.
        what: String,
    },
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
