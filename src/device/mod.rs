//! Devices, written from the migration engine's side: local memory (a buddy
//! allocator of 4 KiB..2 MiB blocks), copy engines that move pages between the
//! staging window and device memory under fences, and device-local loads and
//! stores. The device page tables (MMU) live with the managed regions because they
//! are indexed by managed page; a device reads them through its accesses.

mod buddy;
pub mod emulated;
pub mod inject;
pub mod timing;

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

pub use buddy::Buddy;
pub use emulated::{EmulatedConfig, EmulatedDevice};
pub use inject::{splitmix64, CopyFailure, Injection};
pub use timing::{Clock, LaunchTiming, TimingProfile, TimingReport};

use crate::addr::{DevPage, DeviceId};
use crate::sys::Mapping;

/// The copy loop of the emulated copy engines (streaming stores where the
/// CPU has them); benchmarks measure the machine's copy limit with it.
pub use crate::sys::stream_copy;

/// Most pages one copy job may carry (one SDMA-style job through the window).
pub const MAX_JOB_PAGES: u32 = 512;

/// How the CPU sees a device's memory (`MEMORY_DEVICE_*` in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum MemoryType {
    /// The CPU cannot map it; CPU touches migrate pages back.
    Private,
    /// The CPU could map it directly (not yet used differently by svmem).
    Coherent,
    /// Generic device memory.
    Generic,
}

/// A run of contiguous device pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevRun {
    /// The first page of the run.
    pub start: DevPage,
    /// Pages in the run (a power of two, at most 512, from [`Device::alloc`]).
    pub npages: u32,
}

/// A position in a host mapping (a staging page, or a bounce buffer).
#[derive(Clone, Debug)]
pub struct HostRef {
    /// The mapping (kept alive while the job holds it).
    pub map: Arc<Mapping>,
    /// Byte offset of the first page in it (page aligned).
    pub off: usize,
}

/// One operation of a copy job.
#[derive(Clone, Debug)]
pub enum CopyOp {
    /// Host pages → device pages.
    ToDevice {
        /// Where the pages are read, on the host.
        src: HostRef,
        /// The first device page written.
        dst: DevPage,
        /// Pages to copy (contiguous on both sides).
        npages: u32,
    },
    /// Device pages → host pages.
    ToHost {
        /// The first device page read.
        src: DevPage,
        /// Where the pages are written, on the host.
        dst: HostRef,
        /// Pages to copy (contiguous on both sides).
        npages: u32,
    },
    /// Zero-fill device pages (no copy).
    Fill {
        /// The first device page zeroed.
        dst: DevPage,
        /// Pages to zero.
        npages: u32,
    },
    /// Device `from`'s pages → this device's pages, over the peer path (no
    /// system memory in between). Only submitted to a device whose
    /// [`Device::connect_peer`] accepted `from`.
    FromPeer {
        /// The device whose memory is read.
        from: DeviceId,
        /// The first page read on `from`.
        src: DevPage,
        /// The first page written on this device.
        dst: DevPage,
        /// Pages to copy.
        npages: u32,
    },
}

impl CopyOp {
    /// Pages the operation touches.
    pub fn npages(&self) -> u32 {
        match self {
            CopyOp::ToDevice { npages, .. }
            | CopyOp::ToHost { npages, .. }
            | CopyOp::Fill { npages, .. }
            | CopyOp::FromPeer { npages, .. } => *npages,
        }
    }

    /// Grows `self` by `next` when `next` continues it page for page (same
    /// kind, both ends contiguous) and the op stays within
    /// [`MAX_JOB_PAGES`]; returns whether it did.
    pub fn extend(&mut self, next: &CopyOp) -> bool {
        let n = next.npages();
        if self.npages() + n > MAX_JOB_PAGES {
            return false;
        }
        let after = |page: &DevPage, npages: u32, next: &DevPage| page.0 + npages == next.0;
        let host_after = |a: &HostRef, npages: u32, b: &HostRef| {
            Arc::ptr_eq(&a.map, &b.map) && a.off + npages as usize * crate::addr::PAGE_SIZE == b.off
        };
        let grows = match (&*self, next) {
            (
                CopyOp::ToDevice { src, dst, npages },
                CopyOp::ToDevice {
                    src: s2, dst: d2, ..
                },
            ) => host_after(src, *npages, s2) && after(dst, *npages, d2),
            (
                CopyOp::ToHost { src, dst, npages },
                CopyOp::ToHost {
                    src: s2, dst: d2, ..
                },
            ) => after(src, *npages, s2) && host_after(dst, *npages, d2),
            (CopyOp::Fill { dst, npages }, CopyOp::Fill { dst: d2, .. }) => after(dst, *npages, d2),
            (
                CopyOp::FromPeer {
                    from,
                    src,
                    dst,
                    npages,
                },
                CopyOp::FromPeer {
                    from: f2,
                    src: s2,
                    dst: d2,
                    ..
                },
            ) => from == f2 && after(src, *npages, s2) && after(dst, *npages, d2),
            _ => false,
        };
        if grows {
            match self {
                CopyOp::ToDevice { npages, .. }
                | CopyOp::ToHost { npages, .. }
                | CopyOp::Fill { npages, .. }
                | CopyOp::FromPeer { npages, .. } => *npages += n,
            }
        }
        grows
    }
}

/// A batch of copy operations of at most [`MAX_JOB_PAGES`] pages.
#[derive(Clone, Debug, Default)]
pub struct CopyJob {
    /// The operations, run in order.
    pub ops: Vec<CopyOp>,
}

impl CopyJob {
    /// Pages of all its operations.
    pub fn pages(&self) -> u32 {
        self.ops.iter().map(CopyOp::npages).sum()
    }

    fn bytes(&self, f: impl Fn(&CopyOp) -> bool) -> u64 {
        self.ops
            .iter()
            .filter(|op| f(op))
            .map(|op| op.npages() as u64 * crate::addr::PAGE_SIZE as u64)
            .sum()
    }
    /// Bytes the job copies host → device.
    pub fn bytes_to_device(&self) -> u64 {
        self.bytes(|op| matches!(op, CopyOp::ToDevice { .. }))
    }
    /// Bytes the job copies device → host.
    pub fn bytes_to_host(&self) -> u64 {
        self.bytes(|op| matches!(op, CopyOp::ToHost { .. }))
    }
    /// Bytes the job zero-fills in device memory.
    pub fn bytes_filled(&self) -> u64 {
        self.bytes(|op| matches!(op, CopyOp::Fill { .. }))
    }
    /// Bytes the job copies from peer devices.
    pub fn bytes_from_peer(&self) -> u64 {
        self.bytes(|op| matches!(op, CopyOp::FromPeer { .. }))
    }

    /// Appends `op`, merged into the last op when it continues it.
    pub fn push(&mut self, op: CopyOp) {
        if !self.ops.last_mut().is_some_and(|last| last.extend(&op)) {
            self.ops.push(op);
        }
    }
}

/// A device-side failure, with the device's own words, and whether the
/// device is lost (every later operation fails too) or the failure was
/// transient (a failed copy job: retrying may succeed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeviceError {
    /// What failed, in the device's words.
    pub reason: String,
    /// The device is gone until it is reset.
    pub lost: bool,
}

impl DeviceError {
    /// A transient failure.
    pub fn new(reason: impl Into<String>) -> DeviceError {
        DeviceError {
            reason: reason.into(),
            lost: false,
        }
    }

    /// The device is lost.
    pub fn lost(reason: impl Into<String>) -> DeviceError {
        DeviceError {
            reason: reason.into(),
            lost: true,
        }
    }
}

#[derive(Debug, Default)]
struct FenceState {
    pending: u64,
    error: Option<DeviceError>,
}

#[derive(Debug, Default)]
struct FenceInner {
    state: Mutex<FenceState>,
    done: Condvar,
    /// Jobs in flight, readable without the lock (for the spin in `wait`).
    pending: std::sync::atomic::AtomicU64,
}

/// Signalled when every job submitted under it has completed. One fence per
/// migration batch: the migration waits once, on the last job.
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<FenceInner>);

/// How long `Fence::wait` spins before it sleeps: a cross-CPU wake-up costs
/// about 45 µs on the machines we measure, about a third of a 2 MiB copy.
const FENCE_SPIN: std::time::Duration = std::time::Duration::from_micros(60);

impl Fence {
    /// A fence with no job recorded (waiting on it returns at once).
    pub fn new() -> Fence {
        Fence::default()
    }
    /// Records one more job in flight (called by `submit`).
    pub fn add(&self) {
        let mut s = self.0.state.lock();
        s.pending += 1;
        self.0
            .pending
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
    /// Records a job's completion.
    pub fn complete(&self, result: Result<(), DeviceError>) {
        let mut s = self.0.state.lock();
        s.pending -= 1;
        if let Err(e) = result {
            s.error.get_or_insert(e);
        }
        self.0
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
        if s.pending == 0 {
            self.0.done.notify_all();
        }
    }
    /// Waits for all jobs; returns the first error any of them reported.
    pub fn wait(&self) -> Result<(), DeviceError> {
        let start = std::time::Instant::now();
        while self.0.pending.load(std::sync::atomic::Ordering::Acquire) > 0
            && start.elapsed() < FENCE_SPIN
        {
            // Yield rather than spin: on a busy machine the copy engine or a
            // compute lane gets this CPU; on an idle one this returns at once.
            std::thread::yield_now();
        }
        let mut s = self.0.state.lock();
        while s.pending > 0 {
            self.0.done.wait(&mut s);
        }
        match s.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A device, as the migration engine and the device-access path use it.
/// Implementations must pass `tests/conformance.rs`.
pub trait Device: Send + Sync {
    /// A short name for messages and [`crate::DeviceInfo`].
    fn name(&self) -> &str;
    /// How the CPU sees this device's memory.
    fn memory_type(&self) -> MemoryType;
    /// Pages of local memory in all.
    fn capacity_pages(&self) -> u64;
    /// Pages of local memory free now.
    fn free_pages(&self) -> u64;
    /// Allocates up to `npages` pages as few runs as it can (each run a power
    /// of two of at most 512 pages); appends them to `out` and returns how many
    /// pages it got (fewer when memory is short).
    fn alloc(&self, npages: usize, out: &mut Vec<DevRun>) -> usize;
    /// Returns pages to the allocator (any run of pages it handed out).
    fn free(&self, run: DevRun);
    /// Queues a job on a copy engine; `fence` completes when it has run.
    fn submit(&self, job: CopyJob, fence: &Fence);
    /// Runs a job to completion before returning (the fault path uses this when
    /// the caller would only wait for the engine anyway).
    fn copy_now(&self, job: &CopyJob) -> Result<(), DeviceError>;
    /// A device-local load from one page.
    fn load(&self, page: DevPage, off: usize, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// `n` aligned 64-bit words of page `page` from byte `off`, readable in
    /// place (zero copy) when the device's memory is addressable from the
    /// host, as the emulated device's is; `None` makes callers copy them out
    /// with [`Device::load`].
    fn words(
        &self,
        page: DevPage,
        off: usize,
        n: usize,
    ) -> Option<&[std::sync::atomic::AtomicU64]> {
        let _ = (page, off, n);
        None
    }
    /// A device-local store to one page.
    fn store(&self, page: DevPage, off: usize, buf: &[u8]) -> Result<(), DeviceError>;
    /// A device-local atomic read-modify-write on one aligned word; returns
    /// the value the word held before.
    fn atomic(&self, page: DevPage, off: usize, op: AtomicOp) -> Result<u64, DeviceError> {
        let _ = (page, off, op);
        Err(DeviceError::new(format!(
            "{} does not implement atomics",
            self.name()
        )))
    }
    /// Compute units (threads running kernel lanes) the device offers.
    fn compute_units(&self) -> usize {
        1
    }
    /// Host bytes the device's own bookkeeping uses (allocator state).
    fn metadata_bytes(&self) -> u64;

    /// Applies fault-injection settings (validated first: refused settings
    /// change nothing). Devices without fault injection refuse.
    fn inject(&self, inj: Injection) -> crate::error::Result<()> {
        let _ = inj;
        Err(no_injection(self.name()))
    }
    /// The fault-injection settings in force (`None`: not supported).
    fn injection(&self) -> Option<Injection> {
        None
    }
    /// Clears injected copy and allocation failures (not a loss: see `reset`).
    fn clear_injection(&self) -> crate::error::Result<()> {
        Err(no_injection(self.name()))
    }
    /// Simulates the loss of the device, without warning: every copy, load,
    /// store, atomic and allocation fails from now on, with errors marked lost.
    fn lose(&self) -> crate::error::Result<()> {
        Err(no_injection(self.name()))
    }
    /// Whether the device is lost.
    fn is_lost(&self) -> bool {
        false
    }
    /// Resets the device: injection cleared, a loss forgotten. svmem calls it
    /// only once no page lives in the device's memory.
    fn reset(&self) -> crate::error::Result<()> {
        Ok(())
    }
    /// The device's modelled clock ([`timing`]), if it keeps one.
    fn clock(&self) -> Option<&Clock> {
        None
    }
    /// This device's memory as the host addresses it, when it can (the
    /// emulated device's arena): what a peer's copy engines read from.
    fn host_view(&self) -> Option<Arc<Mapping>> {
        None
    }
    /// Offers peer `id` to this device's copy engines: true when they can
    /// now read `peer`'s memory directly ([`CopyOp::FromPeer`] from `id`),
    /// false when they cannot (migrations then go through system memory).
    /// Called once per pair while the `Svm` is built.
    fn connect_peer(&self, id: DeviceId, peer: &Arc<dyn Device>) -> bool {
        let _ = (id, peer);
        false
    }
}

fn no_injection(name: &str) -> crate::error::Error {
    crate::error::Error::Config(format!("device {name} does not support fault injection"))
}

/// An atomic read-modify-write a device kernel may issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicOp {
    /// Adds to a 32-bit word (wrapping).
    AddU32(u32),
    /// Adds to a 64-bit word (wrapping).
    AddU64(u64),
    /// Stores `new` in a 32-bit word if the word equals `current`.
    CasU32 {
        /// The value expected.
        current: u32,
        /// The value stored if it is there.
        new: u32,
    },
    /// Stores `new` in a 64-bit word if the word equals `current`.
    CasU64 {
        /// The value expected.
        current: u64,
        /// The value stored if it is there.
        new: u64,
    },
    /// Bitwise XOR into a 64-bit word.
    XorU64(u64),
    /// Bitwise OR into a 64-bit word.
    OrU64(u64),
    /// Bitwise AND into a 64-bit word.
    AndU64(u64),
    /// Stores the smaller of the word and the operand (unsigned).
    MinU64(u64),
    /// Stores the larger of the word and the operand (unsigned).
    MaxU64(u64),
}

impl AtomicOp {
    /// Bytes of the word it touches.
    pub fn width(self) -> usize {
        match self {
            AtomicOp::AddU32(_) | AtomicOp::CasU32 { .. } => 4,
            AtomicOp::AddU64(_)
            | AtomicOp::CasU64 { .. }
            | AtomicOp::XorU64(_)
            | AtomicOp::OrU64(_)
            | AtomicOp::AndU64(_)
            | AtomicOp::MinU64(_)
            | AtomicOp::MaxU64(_) => 8,
        }
    }

    /// Applies the operation to the word at `off` of memory the program
    /// controls (a system-resident managed page), through a guarded access:
    /// `EFAULT` if the program made the word inaccessible.
    pub fn apply_guarded(self, map: &Mapping, off: usize) -> std::io::Result<u64> {
        match self {
            AtomicOp::AddU32(v) => map.rmw_guarded(off, 4, Some(v as u64), |_| None),
            AtomicOp::AddU64(v) => map.rmw_guarded(off, 8, Some(v), |_| None),
            AtomicOp::CasU32 { current, new } => map.rmw_guarded(off, 4, None, |old| {
                (old == current as u64).then_some(new as u64)
            }),
            AtomicOp::CasU64 { current, new } => {
                map.rmw_guarded(off, 8, None, |old| (old == current).then_some(new))
            }
            AtomicOp::XorU64(v) => map.rmw_guarded(off, 8, None, |old| Some(old ^ v)),
            AtomicOp::OrU64(v) => map.rmw_guarded(off, 8, None, |old| Some(old | v)),
            AtomicOp::AndU64(v) => map.rmw_guarded(off, 8, None, |old| Some(old & v)),
            AtomicOp::MinU64(v) => map.rmw_guarded(off, 8, None, |old| Some(old.min(v))),
            AtomicOp::MaxU64(v) => map.rmw_guarded(off, 8, None, |old| Some(old.max(v))),
        }
    }

    /// Applies the operation to the word at `off` of `map`; returns the old value.
    pub fn apply(self, map: &Mapping, off: usize) -> std::io::Result<u64> {
        use std::sync::atomic::Ordering::SeqCst;
        Ok(match self {
            AtomicOp::AddU32(v) => map.atomic_u32(off)?.fetch_add(v, SeqCst) as u64,
            AtomicOp::AddU64(v) => map.atomic_u64(off)?.fetch_add(v, SeqCst),
            AtomicOp::CasU32 { current, new } => {
                match map
                    .atomic_u32(off)?
                    .compare_exchange(current, new, SeqCst, SeqCst)
                {
                    Ok(v) | Err(v) => v as u64,
                }
            }
            AtomicOp::CasU64 { current, new } => {
                match map
                    .atomic_u64(off)?
                    .compare_exchange(current, new, SeqCst, SeqCst)
                {
                    Ok(v) | Err(v) => v,
                }
            }
            AtomicOp::XorU64(v) => map.atomic_u64(off)?.fetch_xor(v, SeqCst),
            AtomicOp::OrU64(v) => map.atomic_u64(off)?.fetch_or(v, SeqCst),
            AtomicOp::AndU64(v) => map.atomic_u64(off)?.fetch_and(v, SeqCst),
            AtomicOp::MinU64(v) => map.atomic_u64(off)?.fetch_min(v, SeqCst),
            AtomicOp::MaxU64(v) => map.atomic_u64(off)?.fetch_max(v, SeqCst),
        })
    }
}

/// Frees device pages in runs: consecutive pages of one device become one
/// allocator call. Flushes on drop.
pub(crate) struct FreeBatch<'a> {
    devices: &'a [Arc<dyn Device>],
    run: Option<(DeviceId, DevRun)>,
}

impl<'a> FreeBatch<'a> {
    pub fn new(devices: &'a [Arc<dyn Device>]) -> Self {
        FreeBatch { devices, run: None }
    }

    pub fn push(&mut self, dev: DeviceId, page: DevPage) {
        if let Some((d, run)) = &mut self.run {
            if *d == dev && run.start.0 + run.npages == page.0 {
                run.npages += 1;
                return;
            }
        }
        self.flush();
        self.run = Some((
            dev,
            DevRun {
                start: page,
                npages: 1,
            },
        ));
    }

    pub fn flush(&mut self) {
        if let Some((d, run)) = self.run.take() {
            self.devices[d.0 as usize].free(run);
        }
    }
}

impl Drop for FreeBatch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}
