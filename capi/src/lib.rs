//! The C API of svmem: an owned handle over an [`svmem::Svm`] with emulated
//! devices, managed allocations kept inside the handle (keyed by address),
//! migration, prefetch, range attributes and advice, device reads and
//! writes, kernels given as C callbacks, events and statistics.
//!
//! The header `include/svmem.h` is generated from this file by cbindgen
//! (`capi/tests/header.rs` checks that the checked-in copy matches).
//!
//! Conventions: every function returns an [`SvmemStatus`] (0 on success, a
//! negative code on failure); on failure, [`svmem_last_error`] gives this
//! thread's message (what happened, with the values, and what to do). No
//! panic crosses the boundary: each entry point catches one and reports
//! [`SvmemStatus::Panic`]. A handle may be used from many threads at once.
//!
//! Ownership: [`svmem::Region`] borrows its `Svm`, which a C caller cannot
//! express; the handle owns both. Regions live in the handle's table, keyed
//! by their address, and the table is emptied before the `Svm` drops, so no
//! region outlives the `Svm` it borrows. C code reaches managed memory
//! through the returned pointer as it would CUDA managed memory: it must not
//! touch bytes that a running kernel or a device write changes at the same
//! time (svmem's own device copies are word-atomic).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use svmem::{
    AccessKind, Attr, DeviceFault, DeviceId, EmulatedConfig, Error, Event, EventKind, EventStream,
    FaultReason, Lane, Location, MemAdvice, MigrateReport, Region, Svm, VirtAddr,
};

/// Status of a call: 0 is success, every failure is negative.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmemStatus {
    /// Success.
    Ok = 0,
    /// An argument is wrong (null pointer, unaligned or empty range, unknown
    /// attribute, bad configuration); the message names it.
    InvalidArgument = -1,
    /// The system-memory limit, the pin limit or device memory is exhausted.
    OutOfMemory = -2,
    /// The address range is not managed memory of this handle.
    NotManaged = -3,
    /// Pages stayed busy (pinned, racing, a CPU view holds them); retry.
    Busy = -4,
    /// A device access or kernel failed with a fatal device fault.
    DeviceFault = -5,
    /// The device was lost; its data is poisoned.
    DeviceLost = -6,
    /// The data at the address was lost (poisoned) or unmapped.
    DataLost = -7,
    /// userfaultfd is not permitted or lacks a feature; the message says how
    /// to enable it.
    Unsupported = -8,
    /// An operating-system call failed.
    Os = -9,
    /// A bug in svmem (a caught panic); the message has its text.
    Panic = -10,
    /// Any other error; the message says what.
    Other = -11,
}

/// The location value that means system memory; devices are `0..n`.
pub const SVMEM_SYSTEM: i32 = -1;

/// Raw attribute kinds for [`SvmemAttr`] (KFD's `(type, value)` pairs).
/// Preferred location; value: 0 system, `n` device `n - 1`, `0xffffffff` none.
pub const SVMEM_ATTR_PREFERRED_LOC: u32 = 0;
/// Prefetch location (migrates now); values as for the preferred location.
pub const SVMEM_ATTR_PREFETCH_LOC: u32 = 1;
/// Grants device `value` access (migrating on its faults).
pub const SVMEM_ATTR_ACCESS: u32 = 2;
/// Grants device `value` access in place (mapped where the data is).
pub const SVMEM_ATTR_ACCESS_IN_PLACE: u32 = 3;
/// Takes device `value`'s access away.
pub const SVMEM_ATTR_NO_ACCESS: u32 = 4;
/// Sets the flag bits in `value` (`SVMEM_FLAG_*`).
pub const SVMEM_ATTR_SET_FLAGS: u32 = 5;
/// Clears the flag bits in `value`.
pub const SVMEM_ATTR_CLR_FLAGS: u32 = 6;
/// Migration granularity, log2 pages (0..=9).
pub const SVMEM_ATTR_GRANULARITY: u32 = 7;

/// Flag bits for the flag attributes.
pub const SVMEM_FLAG_HOST_ACCESS: u32 = 0x1;
/// Coherent access.
pub const SVMEM_FLAG_COHERENT: u32 = 0x2;
/// Devices may only read the range.
pub const SVMEM_FLAG_DEVICE_READ_ONLY: u32 = 0x8;
/// Devices may execute from the range.
pub const SVMEM_FLAG_DEVICE_EXEC: u32 = 0x10;
/// Read-mostly: devices read copies.
pub const SVMEM_FLAG_READ_MOSTLY: u32 = 0x20;
/// Always mapped on every device with access.
pub const SVMEM_FLAG_ALWAYS_MAPPED: u32 = 0x40;

/// How to build a handle.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SvmemConfig {
    /// Bytes of memory of each emulated device.
    pub device_memory_bytes: u64,
    /// Emulated devices (1 if 0).
    pub devices: u32,
    /// Retry device faults (XNACK on): nonzero. Zero turns it off.
    pub xnack: u32,
    /// System-memory limit in bytes; 0 keeps the default (derived from RAM).
    pub memory_limit_bytes: u64,
}

/// One raw range attribute (see the `SVMEM_ATTR_*` kinds).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SvmemAttr {
    /// One of `SVMEM_ATTR_*`.
    pub kind: u32,
    /// The kind's value.
    pub value: u32,
}

/// `cudaMemAdvise`-style advice for [`svmem_advise`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmemAdvice {
    /// Devices read copies.
    SetReadMostly = 1,
    /// Undo `SetReadMostly`.
    UnsetReadMostly = 2,
    /// Prefer the location given with the advice.
    SetPreferredLocation = 3,
    /// Forget the preferred location.
    UnsetPreferredLocation = 4,
    /// The device given with the advice maps the data where it is.
    SetAccessedBy = 5,
    /// Undo `SetAccessedBy`.
    UnsetAccessedBy = 6,
}

/// What a migration or prefetch did, in 4 KiB pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SvmemMigrateReport {
    /// Pages in the range.
    pub requested: u64,
    /// Pages that moved.
    pub migrated: u64,
    /// Pages already there.
    pub already_there: u64,
    /// Pages busy after 3 tries.
    pub skipped_busy: u64,
    /// Pages that cannot migrate (read-only, poisoned).
    pub skipped_not_migratable: u64,
    /// Pages left for lack of device memory.
    pub skipped_no_device_memory: u64,
    /// Pages pinned to system memory.
    pub skipped_pinned: u64,
    /// Pages whose copy failed and were rolled back intact.
    pub rolled_back: u64,
    /// Pages whose data was lost.
    pub poisoned: u64,
}

impl From<&MigrateReport> for SvmemMigrateReport {
    fn from(r: &MigrateReport) -> Self {
        SvmemMigrateReport {
            requested: r.requested,
            migrated: r.migrated,
            already_there: r.already_there,
            skipped_busy: r.skipped_busy,
            skipped_not_migratable: r.skipped_not_migratable,
            skipped_no_device_memory: r.skipped_no_device_memory,
            skipped_pinned: r.skipped_pinned,
            rolled_back: r.rolled_back,
            poisoned: r.poisoned,
        }
    }
}

/// What a kernel launch did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SvmemLaunchReport {
    /// Work items that ran to completion.
    pub items_done: u64,
    /// Work items launched.
    pub grid: u64,
    /// Device faults the lanes posted (retried).
    pub faults: u64,
    /// Nonzero when a fatal fault stopped the launch (the call then returns
    /// `SVMEM_STATUS_DEVICE_FAULT` and the message describes it).
    pub fatal: u32,
}

/// The main counters (the full set: [`svmem_stats_json`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SvmemStats {
    /// CPU fault messages read.
    pub cpu_faults: u64,
    /// Device faults posted.
    pub device_faults: u64,
    /// Pages migrated to device memory.
    pub to_device_pages: u64,
    /// Bytes copied to device memory (zero-filled pages copy nothing).
    pub to_device_bytes: u64,
    /// Pages migrated to system memory.
    pub to_system_pages: u64,
    /// Bytes copied to system memory.
    pub to_system_bytes: u64,
    /// 2 MiB blocks evicted under device-memory pressure.
    pub evictions: u64,
    /// Pages those evictions moved.
    pub evicted_pages: u64,
    /// Kernel launches.
    pub kernel_launches: u64,
    /// Pages whose data was lost.
    pub poisoned_pages: u64,
    /// Bytes of svmem metadata.
    pub metadata_bytes: u64,
    /// Events a full subscriber lost.
    pub events_dropped: u64,
}

/// Where memory is (the full breakdown: [`svmem_memory_usage_json`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SvmemMemoryUsage {
    /// The system-memory limit.
    pub limit_bytes: u64,
    /// Bytes charged against it.
    pub in_use_bytes: u64,
    /// Page-rounded length of every live region.
    pub managed_bytes: u64,
    /// Managed bytes in system memory.
    pub system_bytes: u64,
    /// Managed bytes on devices.
    pub device_bytes: u64,
    /// Managed bytes never touched.
    pub unpopulated_bytes: u64,
}

/// What kind of event an [`SvmemEvent`] is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmemEventKind {
    /// A migration begins (`addr`, `pages`, `from`, `to`).
    MigrateStart = 1,
    /// A migration ended (`migrated` of `pages` moved).
    MigrateEnd = 2,
    /// Device `dev` faulted on `addr`.
    PageFaultStart = 3,
    /// That fault was handled.
    PageFaultEnd = 4,
    /// Device `dev` stopped its queues.
    QueueEviction = 5,
    /// Device `dev` runs its queues again.
    QueueRestore = 6,
    /// `pages` pages at `addr` left device `dev`'s page table.
    UnmapFromDevice = 7,
    /// `pages` pages at `addr` on device `from` go to device `to` through
    /// system memory (no peer path between them).
    PeerFallback = 8,
}

/// One event. Fields a kind does not use are 0 (`from`/`to`: -1).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SvmemEvent {
    /// Nanoseconds since the handle was created (monotonic).
    pub ts_ns: u64,
    /// The kind.
    pub kind: SvmemEventKind,
    /// Device of fault, queue and unmap events.
    pub dev: i32,
    /// Source of a migration (`SVMEM_SYSTEM` or a device).
    pub from: i32,
    /// Target of a migration.
    pub to: i32,
    /// Address the event is about.
    pub addr: u64,
    /// Pages the event covers.
    pub pages: u64,
    /// Pages a migration moved (`MigrateEnd`).
    pub migrated: u64,
}

/// A lane of a running kernel, passed to the kernel callback.
pub struct SvmemLane {
    _opaque: [u8; 0],
}

/// The kernel callback: runs once per work item `item` on lane `lane`, on
/// several threads at once (it must be thread-safe). Returns 0 to go on; a
/// nonzero value stops the launch as a fatal fault (a failed lane load or
/// store returns a nonzero status that the callback should return).
pub type SvmemKernelFn =
    Option<unsafe extern "C" fn(lane: *mut SvmemLane, item: u64, user: *mut c_void) -> i32>;

/// The handle: an `Svm`, the regions allocated through it, one event stream.
pub struct Svmem {
    /// Declared before `svm` so that it drops first (and `Drop` empties it
    /// explicitly): every region borrows the `Svm`.
    regions: Mutex<HashMap<u64, Region<'static>>>,
    events: Mutex<Option<EventStream>>,
    svm: Box<Svm>,
}

impl Drop for Svmem {
    fn drop(&mut self) {
        let regions = std::mem::take(self.regions.get_mut().unwrap_or_else(|p| p.into_inner()));
        drop(regions);
        *self.events.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: String) {
    // A message cannot hold NUL bytes; replace any rather than lose it.
    let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

fn status_of(e: &Error) -> SvmemStatus {
    use SvmemStatus as S;
    match e {
        Error::Unaligned { .. }
        | Error::EmptyRange { .. }
        | Error::RangeOverflow { .. }
        | Error::ZeroLength { .. }
        | Error::UnknownDevice { .. }
        | Error::Config(_)
        | Error::Granularity { .. }
        | Error::Attr(_)
        | Error::Injection { .. }
        | Error::NotPinned { .. }
        | Error::LimitBelowUsage { .. } => S::InvalidArgument,
        Error::AllocTooLarge { .. }
        | Error::MemoryLimit { .. }
        | Error::DeviceMemory { .. }
        | Error::PinLimit { .. }
        | Error::PinOverflow { .. } => S::OutOfMemory,
        Error::OutsideManaged { .. } => S::NotManaged,
        Error::Busy { .. }
        | Error::MigrationsInFlight { .. }
        | Error::PinBusy { .. }
        | Error::HeldByCpuView { .. } => S::Busy,
        Error::DeviceFault(_) | Error::ReadOnly { .. } | Error::Device { .. } => S::DeviceFault,
        Error::DeviceLost { .. } => S::DeviceLost,
        Error::Poisoned { .. } | Error::Unmapped { .. } => S::DataLost,
        Error::UffdPermission { .. } | Error::UffdMissingFeature { .. } => S::Unsupported,
        Error::Os { .. } => S::Os,
        _ => S::Other,
    }
}

/// A failure of one call: its status and message.
struct Fail(SvmemStatus, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(status_of(&e), e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> Fail {
    Fail(SvmemStatus::InvalidArgument, msg.into())
}

/// Runs one entry point: catches panics, records the message of a failure.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> SvmemStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error(String::new());
            SvmemStatus::Ok
        }
        Ok(Err(Fail(status, msg))) => {
            set_last_error(msg);
            status
        }
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("svmem panicked (a bug, please report it): {text}"));
            SvmemStatus::Panic
        }
    }
}

/// The handle behind `h`, or an error naming the null pointer.
///
/// # Safety
/// `h` is null or a live handle from [`svmem_create`].
unsafe fn handle<'a>(h: *const Svmem) -> Result<&'a Svmem, Fail> {
    // SAFETY: the caller passes null or a pointer from `svmem_create` that
    // `svmem_destroy` has not freed; such a handle is shared across threads
    // only through `&` (all its state is behind locks).
    unsafe { h.as_ref() }
        .ok_or_else(|| invalid("the svmem handle is NULL; create one with svmem_create"))
}

fn location(value: i32, what: &str) -> Result<Location, Fail> {
    match value {
        SVMEM_SYSTEM => Ok(Location::System),
        d if (0..=255).contains(&d) => Ok(Location::Device(DeviceId(d as u8))),
        v => Err(invalid(format!(
            "{what} {v} is not a location: use SVMEM_SYSTEM (-1) or a device index 0..=255"
        ))),
    }
}

fn device_id(value: i32) -> Result<DeviceId, Fail> {
    match u8::try_from(value) {
        Ok(d) => Ok(DeviceId(d)),
        Err(_) => Err(invalid(format!(
            "device {value} is not a device index: use 0 .. (number of devices - 1)"
        ))),
    }
}

fn loc_code(l: Location) -> i32 {
    match l {
        Location::System => SVMEM_SYSTEM,
        Location::Device(d) => i32::from(d.0),
    }
}

/// Writes `text` NUL-terminated into `buf` of `cap` bytes when it fits, and
/// the length it needs (without the NUL) to `*len`.
///
/// # Safety
/// `buf` is null or valid for `cap` bytes; `len` is valid for a write.
unsafe fn write_text(
    text: &str,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> Result<(), Fail> {
    if len.is_null() {
        return Err(invalid(
            "the length pointer is NULL; pass a size_t to receive the needed length",
        ));
    }
    // SAFETY: checked non-null; the caller passes a writable size_t.
    unsafe { *len = text.len() };
    if buf.is_null() || cap <= text.len() {
        return Err(invalid(format!(
            "the buffer holds {cap} bytes, {} are needed (with the NUL); call again with a larger one",
            text.len() + 1
        )));
    }
    // SAFETY: `buf` is valid for `cap > text.len()` bytes (caller's contract),
    // and a Rust string never overlaps a caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        *buf.add(text.len()) = 0;
    }
    Ok(())
}

/// This thread's message for the last failed call ("" after a success). The
/// pointer stays valid until this thread's next svmem call.
#[no_mangle]
pub extern "C" fn svmem_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A config with one emulated device of `device_memory_bytes`, XNACK on
/// and the default memory limit.
#[no_mangle]
pub extern "C" fn svmem_config_default(device_memory_bytes: u64) -> SvmemConfig {
    SvmemConfig {
        device_memory_bytes,
        devices: 1,
        xnack: 1,
        memory_limit_bytes: 0,
    }
}

/// Builds a handle with emulated devices and stores it in `*out`.
///
/// # Safety
/// `config` is null (one 256 MiB device) or points to a config; `out` is
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn svmem_create(
    config: *const SvmemConfig,
    out: *mut *mut Svmem,
) -> SvmemStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid(
                "`out` is NULL; pass the address of an svmem_t pointer",
            ));
        }
        // SAFETY: the caller passes null or a valid config.
        let cfg = unsafe { config.as_ref() }
            .copied()
            .unwrap_or(svmem_config_default(256 << 20));
        if cfg.devices as usize > svmem::addr::MAX_DEVICES {
            return Err(invalid(format!(
                "devices = {}: an svmem handle holds at most {} devices; use 1 to {}",
                cfg.devices,
                svmem::addr::MAX_DEVICES,
                svmem::addr::MAX_DEVICES
            )));
        }
        let mut b = Svm::builder().xnack(cfg.xnack != 0);
        if cfg.memory_limit_bytes != 0 {
            b = b.memory_limit(cfg.memory_limit_bytes);
        }
        for _ in 0..cfg.devices.max(1) {
            b = b.emulated(EmulatedConfig::with_memory(cfg.device_memory_bytes))?;
        }
        let h = Svmem {
            regions: Mutex::new(HashMap::new()),
            events: Mutex::new(None),
            svm: Box::new(b.build()?),
        };
        // SAFETY: `out` is non-null and the caller's to write.
        unsafe { *out = Box::into_raw(Box::new(h)) };
        Ok(())
    })
}

/// Frees every region of the handle, stops its threads and frees it. Null
/// is accepted. Pointers into its regions are dangling afterwards.
///
/// # Safety
/// `h` is null or a handle from [`svmem_create`], not used after this call
/// by any thread.
#[no_mangle]
pub unsafe extern "C" fn svmem_destroy(h: *mut Svmem) {
    let _ = guard(|| {
        if !h.is_null() {
            // SAFETY: `h` came from `Box::into_raw` in `svmem_create` and the
            // caller gives up every use of it.
            drop(unsafe { Box::from_raw(h) });
        }
        Ok(())
    });
}

/// Number of devices of the handle, or a negative status.
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn svmem_device_count(h: *const Svmem) -> i32 {
    let mut n = 0;
    let st = guard(|| {
        // SAFETY: forwarded contract.
        n = unsafe { handle(h) }?.svm.device_ids().len() as i32;
        Ok(())
    });
    if st == SvmemStatus::Ok {
        n
    } else {
        st as i32
    }
}

/// Allocates `len` bytes of managed memory (rounded up to 4 KiB): `*ptr`
/// gets its address, `*out_len` its rounded length. Free it with
/// [`svmem_free`] or with the handle.
///
/// # Safety
/// `h` is null or a live handle; `ptr` and `out_len` are valid for writes.
#[no_mangle]
pub unsafe extern "C" fn svmem_alloc(
    h: *const Svmem,
    len: usize,
    ptr: *mut *mut c_void,
    out_len: *mut usize,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if ptr.is_null() || out_len.is_null() {
            return Err(invalid(
                "`ptr` or `out_len` is NULL; pass addresses to receive the allocation",
            ));
        }
        let region = h.svm.alloc(len)?;
        // SAFETY: the region borrows `*h.svm`, which is boxed (its address
        // never changes) and outlives every region: regions live only in
        // `h.regions`, which is emptied before the `Svm` drops (`Drop for
        // Svmem` and field order). Nothing hands the 'static borrow out.
        let region: Region<'static> =
            unsafe { std::mem::transmute::<Region<'_>, Region<'static>>(region) };
        let (addr, rlen) = (region.addr().0, region.len());
        h.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, region);
        // SAFETY: both checked non-null above; the caller's to write.
        unsafe {
            *ptr = addr as *mut c_void;
            *out_len = rlen as usize;
        }
        Ok(())
    })
}

/// Frees the region that starts at `ptr` (its device and staging pages too).
///
/// # Safety
/// `h` is null or a live handle; no thread uses the region's memory after.
#[no_mangle]
pub unsafe extern "C" fn svmem_free(h: *const Svmem, ptr: *mut c_void) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        let region = h
            .regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ptr as u64));
        match region {
            // Dropped outside the table's lock: freeing waits for migrations.
            Some(r) => {
                drop(r);
                Ok(())
            }
            None => Err(Fail(
                SvmemStatus::NotManaged,
                format!("{ptr:p} is not the start of a region of this handle; pass a pointer svmem_alloc returned"),
            )),
        }
    })
}

fn report_out(rep: &MigrateReport, out: *mut SvmemMigrateReport) {
    if let Some(o) = std::ptr::NonNull::new(out) {
        // SAFETY: non-null; the public callers require `out` null or valid.
        unsafe { o.as_ptr().write(rep.into()) };
    }
}

/// Migrates `[addr, addr+len)` (page-aligned) to `location` (`SVMEM_SYSTEM`
/// or a device), best effort per page; `*out` (may be null) says what moved.
///
/// # Safety
/// `h` is null or a live handle; `out` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn svmem_migrate(
    h: *const Svmem,
    addr: *const c_void,
    len: usize,
    location_: i32,
    out: *mut SvmemMigrateReport,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        let to = location(location_, "location")?;
        let rep = h.svm.migrate(VirtAddr(addr as u64), len as u64, to)?;
        report_out(&rep, out);
        Ok(())
    })
}

/// `cudaMemPrefetchAsync`: records `location` as the range's prefetch
/// location and migrates it now; `*out` (may be null) says what moved.
///
/// # Safety
/// As [`svmem_migrate`].
#[no_mangle]
pub unsafe extern "C" fn svmem_prefetch(
    h: *const Svmem,
    addr: *const c_void,
    len: usize,
    location_: i32,
    out: *mut SvmemMigrateReport,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        let to = location(location_, "location")?;
        let rep = h.svm.prefetch(VirtAddr(addr as u64), len as u64, to)?;
        report_out(&rep, out);
        Ok(())
    })
}

/// Sets `n` raw attributes on the range, all or none.
///
/// # Safety
/// `h` is null or a live handle; `attrs` is valid for `n` elements.
#[no_mangle]
pub unsafe extern "C" fn svmem_set_attributes(
    h: *const Svmem,
    addr: *const c_void,
    len: usize,
    attrs: *const SvmemAttr,
    n: usize,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if attrs.is_null() && n != 0 {
            return Err(invalid(format!(
                "`attrs` is NULL with n = {n}; pass an array of n attributes"
            )));
        }
        let raw: &[SvmemAttr] = if n == 0 {
            &[]
        } else {
            // SAFETY: non-null and valid for `n` elements (caller's contract).
            unsafe { std::slice::from_raw_parts(attrs, n) }
        };
        let parsed = raw
            .iter()
            .map(|a| Attr::from_raw(a.kind, a.value).map_err(Error::from))
            .collect::<Result<Vec<_>, _>>()?;
        h.svm
            .set_attributes(VirtAddr(addr as u64), len as u64, &parsed)?;
        Ok(())
    })
}

/// `cudaMemAdvise` with an [`SvmemAdvice`] value: `target` is the location for the preferred-location
/// advice, the device for the accessed-by advice, ignored otherwise.
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn svmem_advise(
    h: *const Svmem,
    addr: *const c_void,
    len: usize,
    advice: i32,
    target: i32,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        // An int, not the enum, crosses the boundary: C may pass any value.
        let a = match advice {
            x if x == SvmemAdvice::SetReadMostly as i32 => MemAdvice::SetReadMostly,
            x if x == SvmemAdvice::UnsetReadMostly as i32 => MemAdvice::UnsetReadMostly,
            x if x == SvmemAdvice::SetPreferredLocation as i32 => {
                MemAdvice::SetPreferredLocation(location(target, "preferred location")?)
            }
            x if x == SvmemAdvice::UnsetPreferredLocation as i32 => MemAdvice::UnsetPreferredLocation,
            x if x == SvmemAdvice::SetAccessedBy as i32 => MemAdvice::SetAccessedBy(device_id(target)?),
            x if x == SvmemAdvice::UnsetAccessedBy as i32 => MemAdvice::UnsetAccessedBy(device_id(target)?),
            other => {
                return Err(invalid(format!(
                    "advice {other} is unknown; use one of SVMEM_ADVICE_SET_READ_MOSTLY (1) .. SVMEM_ADVICE_UNSET_ACCESSED_BY (6)"
                )))
            }
        };
        h.svm.advise(VirtAddr(addr as u64), len as u64, a)?;
        Ok(())
    })
}

/// Device `dev` reads `len` bytes at managed address `addr` into `buf`,
/// through its page table (faulting pages in as a kernel would).
///
/// # Safety
/// `h` is null or a live handle; `buf` is valid for `len` bytes of writes
/// and is not managed memory of `h`.
#[no_mangle]
pub unsafe extern "C" fn svmem_device_read(
    h: *const Svmem,
    dev: i32,
    addr: *const c_void,
    buf: *mut c_void,
    len: usize,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if buf.is_null() && len != 0 {
            return Err(invalid("`buf` is NULL; pass a buffer of `len` bytes"));
        }
        let out: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: valid for `len` bytes and not aliased by managed
            // memory (caller's contract).
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
        };
        h.svm
            .device(device_id(dev)?)?
            .read(VirtAddr(addr as u64), out)?;
        Ok(())
    })
}

/// Device `dev` writes `len` bytes from `buf` at managed address `addr`.
///
/// # Safety
/// `h` is null or a live handle; `buf` is valid for `len` bytes of reads
/// and is not managed memory of `h`.
#[no_mangle]
pub unsafe extern "C" fn svmem_device_write(
    h: *const Svmem,
    dev: i32,
    addr: *const c_void,
    buf: *const c_void,
    len: usize,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if buf.is_null() && len != 0 {
            return Err(invalid("`buf` is NULL; pass a buffer of `len` bytes"));
        }
        let src: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: valid for `len` bytes (caller's contract).
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
        };
        h.svm
            .device(device_id(dev)?)?
            .write(VirtAddr(addr as u64), src)?;
        Ok(())
    })
}

/// What a kernel callback sees behind its `SvmemLane` pointer.
struct LaneCtx<'l, 'a> {
    lane: &'l mut Lane<'a>,
    /// The first failed access of the current item, returned to svmem.
    fault: Option<DeviceFault>,
}

/// The user pointer of a launch, shared by the lane threads.
struct UserPtr(*mut c_void);
// SAFETY: `svmem_launch` documents that the callback and its user data are
// used from several threads at once; the C caller guarantees that is safe.
unsafe impl Send for UserPtr {}
// SAFETY: as above.
unsafe impl Sync for UserPtr {}

/// Runs `kernel(lane, item, user)` for every `item` in `0..grid` on device
/// `dev`. The callback runs on several lane threads at once. A fatal fault
/// (or a nonzero return) stops the launch: the call returns
/// `SVMEM_STATUS_DEVICE_FAULT` and `out->fatal` is set.
///
/// # Safety
/// `h` is null or a live handle; `kernel` is thread-safe with `user`;
/// `out` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn svmem_launch(
    h: *const Svmem,
    dev: i32,
    grid: u64,
    kernel: SvmemKernelFn,
    user: *mut c_void,
    out: *mut SvmemLaunchReport,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        let Some(kernel) = kernel else {
            return Err(invalid(
                "`kernel` is NULL; pass a callback int (*)(svmem_lane*, uint64_t, void*)",
            ));
        };
        let user = UserPtr(user);
        let device = h.svm.device(device_id(dev)?)?;
        let rep = device.launch(grid, |lane, item| {
            let user = &user;
            let dev = lane.device();
            let id = lane.id();
            let mut ctx = LaneCtx { lane, fault: None };
            let p = (&mut ctx as *mut LaneCtx<'_, '_>).cast::<SvmemLane>();
            // SAFETY: the callback is a valid C function (caller's
            // contract); `p` points to `ctx`, alive for the whole call, and
            // is only read back by the `svmem_lane_*` functions on this
            // thread. A panic cannot unwind out of C code: none is raised
            // between here and the callback's return.
            let code = unsafe { kernel(p, item, user.0) };
            match (code, ctx.fault) {
                (_, Some(f)) if code != 0 => Err(f),
                (0, _) => Ok(()),
                (c, None) => Err(DeviceFault {
                    dev,
                    lane: id,
                    addr: VirtAddr(0),
                    kind: AccessKind::Read,
                    reason: FaultReason::Device(format!(
                        "the kernel callback returned {c} for item {item}"
                    )),
                }),
                (_, Some(f)) => Err(f),
            }
        })?;
        if let Some(o) = std::ptr::NonNull::new(out) {
            let r = SvmemLaunchReport {
                items_done: rep.items_done,
                grid: rep.grid,
                faults: rep.faults,
                fatal: u32::from(rep.fatal.is_some()),
            };
            // SAFETY: non-null, the caller's to write.
            unsafe { o.as_ptr().write(r) };
        }
        rep.check()?;
        Ok(())
    })
}

/// # Safety
/// `lane` is the pointer a kernel callback got, used during that call.
unsafe fn lane_ctx<'x>(lane: *mut SvmemLane) -> Result<&'x mut LaneCtx<'x, 'x>, Fail> {
    // SAFETY: `svmem_launch` passes a pointer to a live `LaneCtx` for the
    // duration of the callback, which is the caller's contract here; only
    // this thread uses it.
    unsafe { lane.cast::<LaneCtx<'x, 'x>>().as_mut() }
        .ok_or_else(|| invalid("`lane` is NULL; pass the lane your kernel callback received"))
}

/// Loads the u64 at managed address `addr` through the lane's device.
///
/// # Safety
/// `lane` is the pointer the running callback received; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn svmem_lane_load_u64(
    lane: *mut SvmemLane,
    addr: u64,
    out: *mut u64,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let ctx = unsafe { lane_ctx(lane) }?;
        if out.is_null() {
            return Err(invalid(
                "`out` is NULL; pass a uint64_t to receive the value",
            ));
        }
        match ctx.lane.load::<u64>(VirtAddr(addr)) {
            Ok(v) => {
                // SAFETY: non-null; the caller's to write.
                unsafe { *out = v };
                Ok(())
            }
            Err(f) => {
                let msg = f.to_string();
                ctx.fault.get_or_insert(f);
                Err(Fail(SvmemStatus::DeviceFault, msg))
            }
        }
    })
}

/// Stores `value` at managed address `addr` through the lane's device.
///
/// # Safety
/// `lane` is the pointer the running callback received.
#[no_mangle]
pub unsafe extern "C" fn svmem_lane_store_u64(
    lane: *mut SvmemLane,
    addr: u64,
    value: u64,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let ctx = unsafe { lane_ctx(lane) }?;
        match ctx.lane.store::<u64>(VirtAddr(addr), value) {
            Ok(()) => Ok(()),
            Err(f) => {
                let msg = f.to_string();
                ctx.fault.get_or_insert(f);
                Err(Fail(SvmemStatus::DeviceFault, msg))
            }
        }
    })
}

/// Starts recording events (at most `capacity` pending; more are counted
/// as dropped). Calling it again starts a fresh stream.
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn svmem_events_subscribe(h: *const Svmem, capacity: usize) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if capacity == 0 {
            return Err(invalid(
                "capacity 0 holds no event; pass 1 or more (4096 is a good start)",
            ));
        }
        *h.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.svm.subscribe(capacity));
        Ok(())
    })
}

fn event_out(e: &Event) -> SvmemEvent {
    let mut o = SvmemEvent {
        ts_ns: e.ts_ns,
        kind: SvmemEventKind::MigrateStart,
        dev: -1,
        from: -1,
        to: -1,
        addr: 0,
        pages: 0,
        migrated: 0,
    };
    match &e.kind {
        EventKind::MigrateStart {
            start,
            pages,
            from,
            to,
            ..
        } => {
            (o.addr, o.pages, o.from, o.to) = (start.0, *pages, loc_code(*from), loc_code(*to));
        }
        EventKind::MigrateEnd {
            start,
            pages,
            migrated,
            from,
            to,
            ..
        } => {
            o.kind = SvmemEventKind::MigrateEnd;
            (o.addr, o.pages, o.migrated) = (start.0, *pages, *migrated);
            (o.from, o.to) = (loc_code(*from), loc_code(*to));
        }
        EventKind::PageFaultStart { dev, addr, .. } => {
            (o.kind, o.dev, o.addr) = (SvmemEventKind::PageFaultStart, i32::from(dev.0), addr.0);
        }
        EventKind::PageFaultEnd { dev, addr, .. } => {
            (o.kind, o.dev, o.addr) = (SvmemEventKind::PageFaultEnd, i32::from(dev.0), addr.0);
        }
        EventKind::QueueEviction { dev, .. } => {
            (o.kind, o.dev) = (SvmemEventKind::QueueEviction, i32::from(dev.0));
        }
        EventKind::QueueRestore { dev, .. } => {
            (o.kind, o.dev) = (SvmemEventKind::QueueRestore, i32::from(dev.0));
        }
        EventKind::UnmapFromDevice {
            dev, start, pages, ..
        } => {
            o.kind = SvmemEventKind::UnmapFromDevice;
            (o.dev, o.addr, o.pages) = (i32::from(dev.0), start.0, *pages);
        }
        EventKind::PeerFallback {
            start,
            pages,
            from,
            to,
        } => {
            o.kind = SvmemEventKind::PeerFallback;
            (o.addr, o.pages) = (start.0, *pages);
            (o.from, o.to) = (i32::from(from.0), i32::from(to.0));
        }
    }
    o
}

/// Takes the next recorded event without waiting: returns 1 and fills
/// `*out` if there was one, 0 if none, or a negative status (no
/// subscription yet: call [`svmem_events_subscribe`]).
///
/// # Safety
/// `h` is null or a live handle; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn svmem_events_poll(h: *const Svmem, out: *mut SvmemEvent) -> i32 {
    let mut got = 0;
    let st = guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if out.is_null() {
            return Err(invalid("`out` is NULL; pass an svmem_event to fill"));
        }
        let events = h.events.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stream) = events.as_ref() else {
            return Err(invalid(
                "no event subscription; call svmem_events_subscribe first",
            ));
        };
        if let Some(e) = stream.try_recv() {
            // SAFETY: non-null; the caller's to write.
            unsafe { out.write(event_out(&e)) };
            got = 1;
        }
        Ok(())
    });
    if st == SvmemStatus::Ok {
        got
    } else {
        st as i32
    }
}

/// Reads the main counters into `*out`.
///
/// # Safety
/// `h` is null or a live handle; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn svmem_stats(h: *const Svmem, out: *mut SvmemStats) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if out.is_null() {
            return Err(invalid("`out` is NULL; pass an svmem_stats to fill"));
        }
        let s = h.svm.stats();
        let o = SvmemStats {
            cpu_faults: s.cpu_faults,
            device_faults: s.device_faults,
            to_device_pages: s.to_device_pages,
            to_device_bytes: s.to_device_bytes,
            to_system_pages: s.to_system_pages,
            to_system_bytes: s.to_system_bytes,
            evictions: s.evictions,
            evicted_pages: s.evicted_pages,
            kernel_launches: s.kernel_launches,
            poisoned_pages: s.poisoned_pages,
            metadata_bytes: s.metadata_bytes,
            events_dropped: s.events_dropped,
        };
        // SAFETY: non-null; the caller's to write.
        unsafe { out.write(o) };
        Ok(())
    })
}

/// Every counter as one JSON object, NUL-terminated into `buf` (`cap`
/// bytes); `*len` gets the length needed. Too small a buffer fails with
/// `SVMEM_STATUS_INVALID_ARGUMENT` after setting `*len`.
///
/// # Safety
/// `h` is null or a live handle; `buf` is null or valid for `cap` bytes;
/// `len` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn svmem_stats_json(
    h: *const Svmem,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        let text = json(&h.svm.stats())?;
        // SAFETY: forwarded contract.
        unsafe { write_text(&text, buf, cap, len) }
    })
}

/// Reads where memory is into `*out` (one scan of the page tables).
///
/// # Safety
/// `h` is null or a live handle; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn svmem_memory_usage(
    h: *const Svmem,
    out: *mut SvmemMemoryUsage,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        if out.is_null() {
            return Err(invalid("`out` is NULL; pass an svmem_memory_usage to fill"));
        }
        let u = h.svm.memory_usage();
        let o = SvmemMemoryUsage {
            limit_bytes: u.limit_bytes,
            in_use_bytes: u.in_use_bytes,
            managed_bytes: u.managed_bytes,
            system_bytes: u.system_bytes,
            device_bytes: u.device_bytes,
            unpopulated_bytes: u.unpopulated_bytes,
        };
        // SAFETY: non-null; the caller's to write.
        unsafe { out.write(o) };
        Ok(())
    })
}

/// The full memory usage (per device too) as JSON, as [`svmem_stats_json`].
///
/// # Safety
/// As [`svmem_stats_json`].
#[no_mangle]
pub unsafe extern "C" fn svmem_memory_usage_json(
    h: *const Svmem,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> SvmemStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let h = unsafe { handle(h) }?;
        let text = json(&h.svm.memory_usage())?;
        // SAFETY: forwarded contract.
        unsafe { write_text(&text, buf, cap, len) }
    })
}

fn json<T: svmem_serialize::Serialize>(v: &T) -> Result<String, Fail> {
    svmem_serialize::to_string(v)
        .map_err(|e| Fail(SvmemStatus::Other, format!("cannot encode JSON: {e}")))
}

/// The name of a status, for messages ("ok", "invalid_argument", ...).
#[no_mangle]
pub extern "C" fn svmem_status_name(status: i32) -> *const c_char {
    let s: &'static CStr = match status {
        0 => c"ok",
        -1 => c"invalid_argument",
        -2 => c"out_of_memory",
        -3 => c"not_managed",
        -4 => c"busy",
        -5 => c"device_fault",
        -6 => c"device_lost",
        -7 => c"data_lost",
        -8 => c"unsupported",
        -9 => c"os",
        -10 => c"panic",
        -11 => c"other",
        _ => c"unknown_status",
    };
    s.as_ptr()
}

/// Serialisation used for the JSON outputs.
mod svmem_serialize {
    pub use serde::Serialize;
    pub use serde_json::to_string;
}
