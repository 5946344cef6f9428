//! Device kernels: a grid of work items run by the device's compute units
//! (one thread per unit, each a *lane*). Kernel code reaches managed memory
//! only through its [`Lane`]: typed loads and stores, bulk reads and writes,
//! strided and gathered accesses (one call, one translation per element),
//! and 32/64-bit atomics. Every access translates through the device's page
//! table with a small per-lane TLB whose entries are tagged with their block's
//! invalidation sequence number, so any invalidation flushes them.
//!
//! One access, per 2 MiB block it touches:
//! 1. wait while the device's queues are evicted (XNACK off / always mapped);
//! 2. take the block's access guard shared (invalidations drain it), read the
//!    block's sequence number, translate each page (TLB, then the PTE);
//! 3. on a hit, load/store device memory or system memory in place;
//! 4. on a miss, drop the guard, then
//!    - XNACK on: post a fault (address, access kind, lane) to the device's
//!      fault buffer and sleep until the fault-service thread replays it;
//!    - XNACK off: if the queues were evicted meanwhile, wait and retry;
//!      otherwise it is a fatal fault that stops the launch.
//!
//! Launch shapes: [`launch`] (lanes take items of one grid), [`launch_steps`]
//! (the same lanes run a sequence of grids, a device-wide barrier between
//! them) and [`launch_groups`] (groups of lanes that run together and share
//! a barrier and local scratch). Each launch starts its lane threads once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::map::cpu_forbids;
use super::Ctx;
use crate::addr::AccessKind;
use crate::addr::{DeviceId, VirtAddr, BLOCK_PAGES, PAGE_SIZE};
use crate::device::{AtomicOp, Device, DeviceError};
use crate::error::{DeviceFault, FaultReason};
use crate::error::{Error, Result};
use crate::gpu::fault::{FaultOutcome, Reply};
use crate::mm::space::{Pte, RegionInner};
use crate::mm::state::PageState;

/// What a launch did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LaunchReport {
    /// Work items that ran to completion.
    pub items_done: u64,
    /// Work items asked for (the sum over steps for `launch_steps`).
    pub grid: u64,
    /// Lanes (threads) that ran them.
    pub lanes: usize,
    /// Wall time of the launch, start of the lanes to the last one's end.
    #[serde(serialize_with = "ser_duration_us")]
    pub elapsed: Duration,
    /// Faults the lanes posted (retry mode).
    pub faults: u64,
    /// Times a lane waited for its queues to be restored.
    pub queue_waits: u64,
    /// The first fatal fault, which stopped the launch.
    pub fatal: Option<DeviceFault>,
    /// The timing model's account of the launch (zero under profile `none`).
    pub timing: crate::device::LaunchTiming,
}

fn ser_duration_us<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e6)
}

impl LaunchReport {
    /// The report, or the fatal fault as an error.
    pub fn check(self) -> Result<LaunchReport> {
        match self.fatal {
            Some(f) => Err(Error::DeviceFault(Box::new(f))),
            None => Ok(self),
        }
    }
}

const TLB_ENTRIES: usize = 64;
/// Faults one access may take before it is declared not converging.
const MAX_RETRIES: u32 = 10_000;

#[derive(Clone, Copy, Default)]
struct TlbEntry {
    /// Virtual page number + 1 (0 = empty).
    tag: u64,
    pte: u32,
    seq: u32,
}

/// Where one translated page's bytes are: the one address translation
/// every device access path (lanes, `DeviceHandle` reads and writes) uses.
pub(crate) enum Target<'a> {
    System {
        r: &'a RegionInner,
        off: usize,
    },
    Device {
        page: crate::addr::DevPage,
        off: usize,
    },
}

impl<'a> Target<'a> {
    /// The bytes at `at` (in `r`) under the valid translation `pte`.
    pub(crate) fn of(r: &'a RegionInner, pte: Pte, at: u64) -> Target<'a> {
        match pte {
            Pte::System { .. } => Target::System {
                r,
                off: (at - r.base()) as usize,
            },
            Pte::Device { page, .. } => Target::Device {
                page,
                off: (at % PAGE_SIZE as u64) as usize,
            },
        }
    }

    /// Copies the target's bytes into `buf` (within one page).
    pub(crate) fn read(&self, dev: &dyn Device, buf: &mut [u8]) -> Result<(), DeviceError> {
        match *self {
            Target::System { r, off } => r
                .managed
                .read_guarded(off, buf)
                .map_err(|e| DeviceError::new(e.to_string())),
            Target::Device { page, off } => dev.load(page, off, buf),
        }
    }

    /// Copies `buf` into the target's bytes (within one page).
    pub(crate) fn write(&self, dev: &dyn Device, buf: &[u8]) -> Result<(), DeviceError> {
        match *self {
            Target::System { r, off } => r
                .managed
                .write_guarded(off, buf)
                .map_err(|e| DeviceError::new(e.to_string())),
            Target::Device { page, off } => dev.store(page, off, buf),
        }
    }
}

/// `bytes` (a multiple of 8) as atomic words.
fn words_of(bytes: &[u8]) -> Vec<std::sync::atomic::AtomicU64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            std::sync::atomic::AtomicU64::new(u64::from_ne_bytes(w))
        })
        .collect()
}

/// The context a kernel's code runs in: one lane of one device.
pub struct Lane<'a> {
    sh: &'a Ctx,
    d: DeviceId,
    dev: &'a dyn Device,
    id: usize,
    regions: Vec<Arc<RegionInner>>,
    tlb: Box<[TlbEntry; TLB_ENTRIES]>,
    reply: Arc<Reply>,
    abort: &'a AtomicBool,
    faults: u64,
    queue_waits: u64,
    /// What the timing model charges this lane.
    clock: crate::device::timing::LaneClock,
    remote_min: u32,
}

impl std::fmt::Debug for Lane<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("dev", &self.d)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<'a> Lane<'a> {
    /// This lane's index among the launch's lanes.
    pub fn id(&self) -> usize {
        self.id
    }
    /// The device the lane runs on.
    pub fn device(&self) -> DeviceId {
        self.d
    }

    fn fault(&self, addr: u64, kind: AccessKind, reason: FaultReason) -> DeviceFault {
        DeviceFault {
            dev: self.d,
            lane: self.id,
            addr: VirtAddr(addr),
            kind,
            reason,
        }
    }

    /// Index in the lane's region cache of the region holding `addr`
    /// (looked up, and cached, on a miss). Borrowing from the cache keeps the
    /// hot path free of reference-count traffic shared between lanes.
    fn region_index(&mut self, addr: u64) -> Option<usize> {
        if let Some(i) = self.regions.iter().position(|r| r.contains(addr, 1)) {
            return Some(i);
        }
        let r = self.sh.region_at(addr)?;
        if self.regions.len() >= 8 {
            self.regions.remove(0);
        }
        self.regions.push(r);
        Some(self.regions.len() - 1)
    }

    /// Runs `op` on every page piece of `[addr, addr+len)` with the translation
    /// `kind` needs, faulting as the mode says. `op(target, pos, n)` handles
    /// bytes `pos..pos+n` of the access.
    fn run(
        &mut self,
        addr: u64,
        len: usize,
        kind: AccessKind,
        mut op: impl FnMut(Target<'_>, usize, usize) -> std::result::Result<(), DeviceError>,
    ) -> std::result::Result<(), DeviceFault> {
        if len == 0 {
            return Ok(());
        }
        self.run_pieces(1, |_| addr, len, kind, |t, _, pos, n| op(t, pos, n))
    }

    /// Runs `op` on every page piece of `count` accesses of `size` bytes each,
    /// access `i` at `at(i)`, in order. Consecutive accesses in one 2 MiB
    /// block share one hold of its access guard (a strided or gathered walk
    /// costs one translation per element, not one guard per element).
    /// `op(target, i, pos, n)` handles bytes `pos..pos+n` of access `i`.
    /// Faults work as for one access; the retry bound counts faults since
    /// the last access completed.
    fn run_pieces(
        &mut self,
        count: usize,
        at_of: impl Fn(usize) -> u64,
        size: usize,
        kind: AccessKind,
        mut op: impl FnMut(Target<'_>, usize, usize, usize) -> std::result::Result<(), DeviceError>,
    ) -> std::result::Result<(), DeviceFault> {
        let q = &self.sh.notifier.queues[self.d.0 as usize];
        let xnack = self.sh.xnack.load(Ordering::Acquire);
        let (mut i, mut pos) = (0usize, 0usize);
        let mut retries = 0u32;
        if size == 0 {
            return Ok(());
        }
        while i < count {
            if self.abort.load(Ordering::Relaxed) {
                return Err(self.fault(at_of(i) + pos as u64, kind, FaultReason::Aborted));
            }
            if q.wait_resumed() {
                self.queue_waits += 1;
            }
            // A munmap/madvise that returned is handled before a translation
            // is used (no guard is held here).
            self.sh.events.wait();
            let at = at_of(i) + pos as u64;
            let Some(ri) = self.region_index(at) else {
                return Err(self.fault(at, kind, FaultReason::Unmanaged));
            };
            let r: &RegionInner = &self.regions[ri];
            let gen = q.generation();
            let b = r.page_of(at) / BLOCK_PAGES;
            let blk = &r.blocks[b];
            let mut missed = false;
            {
                let _guard = blk.access.read();
                crate::pressure::evict::touch(r, b, self.d);
                let seq = blk.seq.load(Ordering::Acquire);
                let table = &r.ptes[self.d.0 as usize];
                while i < count {
                    let at = at_of(i) + pos as u64;
                    if !r.contains(at, 1) {
                        break;
                    }
                    let k = r.page_of(at);
                    if k / BLOCK_PAGES != b {
                        break;
                    }
                    if q.is_paused() {
                        break;
                    }
                    let vpn = at / PAGE_SIZE as u64;
                    let slot = &mut self.tlb[vpn as usize % TLB_ENTRIES];
                    let word = if slot.tag == vpn + 1 && slot.seq == seq {
                        slot.pte
                    } else {
                        self.clock.tlb_walk(vpn);
                        let w = table[k].load(Ordering::Acquire);
                        // Only valid translations are cached: a fault-service
                        // mapping does not bump the sequence number.
                        if w != 0 {
                            *slot = TlbEntry {
                                tag: vpn + 1,
                                pte: w,
                                seq,
                            };
                        }
                        w
                    };
                    let pte = Pte::decode(word).filter(|p| p.allows(kind));
                    let Some(pte) = pte else {
                        // An entry too weak for this access may be upgraded
                        // by the fault: walk the table next time.
                        slot.tag = 0;
                        missed = true;
                        break;
                    };
                    if r.barred(kind) {
                        // A CPU view of the region bars this access (checked
                        // under the access guard the view's owner drains).
                        return Err(self.fault(at, kind, FaultReason::CpuView));
                    }
                    let off = (at % PAGE_SIZE as u64) as usize;
                    let n = (PAGE_SIZE - off).min(size - pos);
                    let target = Target::of(r, pte, at);
                    let system = matches!(target, Target::System { .. });
                    if let Err(e) = op(target, i, pos, n) {
                        // A system page the program protected or unmapped
                        // since the translation was made: say which.
                        // (Allowed again by the time it is asked: it was
                        // not mapped for this access when it ran.)
                        let why = match system {
                            true => cpu_forbids(at, kind).unwrap_or(FaultReason::Unmapped),
                            false => FaultReason::Device(e.reason),
                        };
                        return Err(self.fault(at, kind, why));
                    }
                    self.clock.access(system, kind, n, self.remote_min);
                    pos += n;
                    if pos == size {
                        i += 1;
                        pos = 0;
                        retries = 0;
                    }
                }
            }
            if !missed {
                continue;
            }
            let at = at_of(i) + pos as u64;
            if r.contains(at, 1) && r.states[r.page_of(at)].load() == PageState::Hole {
                // Unmapped by the program: it has no translation and never
                // will (the kernel answers -EFAULT).
                return Err(self.fault(at, kind, FaultReason::Unmapped));
            }
            retries += 1;
            if retries > MAX_RETRIES {
                return Err(self.fault(at, kind, FaultReason::NotConverged));
            }
            if self.dev.is_lost() {
                let reason = FaultReason::Device("the device is lost".into());
                return Err(self.fault(at, kind, reason));
            }
            if xnack {
                self.faults += 1;
                let mark = self.dev.clock().map(crate::device::Clock::engine_mark);
                let outcome =
                    crate::gpu::fault::post(self.sh, self.d, at, kind, self.id, &self.reply);
                self.clock.stall_since(self.dev.clock(), mark);
                match outcome {
                    FaultOutcome::Replay => {}
                    FaultOutcome::Fatal(reason) => return Err(self.fault(at, kind, reason)),
                }
            } else if q.is_paused() || q.generation() != gen {
                // Evicted between the check and the translation: wait for restore.
                continue;
            } else {
                return Err(self.fault(at, kind, FaultReason::NoTranslation));
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&mut self, addr: VirtAddr, buf: &mut [u8]) -> std::result::Result<(), DeviceFault> {
        let dev = self.dev;
        self.run(addr.0, buf.len(), AccessKind::Read, |t, pos, n| {
            t.read(dev, &mut buf[pos..pos + n])
        })
    }

    /// Writes `buf` at `addr`.
    pub fn write(&mut self, addr: VirtAddr, buf: &[u8]) -> std::result::Result<(), DeviceFault> {
        let dev = self.dev;
        self.run(addr.0, buf.len(), AccessKind::Write, |t, pos, n| {
            t.write(dev, &buf[pos..pos + n])
        })
    }

    /// Loads one plain-old-data value.
    pub fn load<T: bytemuck::Pod>(
        &mut self,
        addr: VirtAddr,
    ) -> std::result::Result<T, DeviceFault> {
        let mut v = T::zeroed();
        self.read(addr, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Stores one plain-old-data value.
    pub fn store<T: bytemuck::Pod>(
        &mut self,
        addr: VirtAddr,
        v: T,
    ) -> std::result::Result<(), DeviceFault> {
        self.write(addr, bytemuck::bytes_of(&v))
    }

    /// Reads `out.len()` values starting at `addr`.
    pub fn read_slice<T: bytemuck::Pod>(
        &mut self,
        addr: VirtAddr,
        out: &mut [T],
    ) -> std::result::Result<(), DeviceFault> {
        self.read(addr, bytemuck::cast_slice_mut(out))
    }

    /// Reads the `n` 64-bit words at `addr` (8-byte aligned) in place: `f`
    /// gets them one page piece at a time, in order, as atomics (relaxed
    /// loads are plain loads), without the copy [`Lane::read_slice`] makes.
    /// Translation and faults work as for any read.
    pub fn read_words(
        &mut self,
        addr: VirtAddr,
        n: u64,
        mut f: impl FnMut(&[std::sync::atomic::AtomicU64]),
    ) -> std::result::Result<(), DeviceFault> {
        if addr.0 % 8 != 0 {
            return Err(self.fault(addr.0, AccessKind::Read, FaultReason::Misaligned));
        }
        // A length past the address space covers unmanaged memory anyway.
        let len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| self.fault(addr.0, AccessKind::Read, FaultReason::Unmanaged))?;
        let dev = self.dev;
        self.run(addr.0, len, AccessKind::Read, |t, _, bytes| {
            let words = bytes / 8;
            match t {
                // The program may revoke access to its pages at any moment
                // (mprotect): words handed to `f` are a guarded copy.
                Target::System { r, off } => {
                    let mut buf = vec![0u8; bytes];
                    r.managed
                        .read_guarded(off, &mut buf)
                        .map_err(|e| DeviceError::new(e.to_string()))?;
                    f(&words_of(&buf))
                }
                Target::Device { page, off } => match dev.words(page, off, words) {
                    Some(w) => f(w),
                    None => {
                        let mut buf = vec![0u8; bytes];
                        dev.load(page, off, &mut buf)?;
                        f(&words_of(&buf))
                    }
                },
            }
            Ok(())
        })
    }

    /// Writes `vals` starting at `addr`.
    pub fn write_slice<T: bytemuck::Pod>(
        &mut self,
        addr: VirtAddr,
        vals: &[T],
    ) -> std::result::Result<(), DeviceFault> {
        self.write(addr, bytemuck::cast_slice(vals))
    }

    /// Loads `out.len()` values, value `i` from `base + i·stride_bytes` (a
    /// column walk, a field of an array of records). One translation per
    /// value; values in one 2 MiB block share one hold of its guard. A value
    /// may straddle a page; faults work as for [`Lane::read`].
    pub fn load_strided<T: bytemuck::Pod>(
        &mut self,
        base: VirtAddr,
        stride_bytes: u64,
        out: &mut [T],
    ) -> std::result::Result<(), DeviceFault> {
        let size = std::mem::size_of::<T>();
        self.check_span(base, stride_bytes, out.len(), size, AccessKind::Read)?;
        let dev = self.dev;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        self.run_pieces(
            bytes.len() / size.max(1),
            |i| base.0 + i as u64 * stride_bytes,
            size,
            AccessKind::Read,
            |t, i, pos, n| t.read(dev, &mut bytes[i * size + pos..i * size + pos + n]),
        )
    }

    /// Stores `vals`, value `i` at `base + i·stride_bytes`; see
    /// [`Lane::load_strided`].
    pub fn store_strided<T: bytemuck::Pod>(
        &mut self,
        base: VirtAddr,
        stride_bytes: u64,
        vals: &[T],
    ) -> std::result::Result<(), DeviceFault> {
        let size = std::mem::size_of::<T>();
        self.check_span(base, stride_bytes, vals.len(), size, AccessKind::Write)?;
        let dev = self.dev;
        let bytes: &[u8] = bytemuck::cast_slice(vals);
        self.run_pieces(
            vals.len(),
            |i| base.0 + i as u64 * stride_bytes,
            size,
            AccessKind::Write,
            |t, i, pos, n| t.write(dev, &bytes[i * size + pos..i * size + pos + n]),
        )
    }

    /// Loads `out[i]` from element `indices[i]` of the array of `T` at `base`
    /// (`base + indices[i]·size_of::<T>()`), in order. Fails without touching
    /// memory if the two slices differ in length.
    pub fn gather<T: bytemuck::Pod>(
        &mut self,
        base: VirtAddr,
        indices: &[u64],
        out: &mut [T],
    ) -> std::result::Result<(), DeviceFault> {
        let size = std::mem::size_of::<T>();
        let kind = AccessKind::Read;
        self.check_indices(base, indices, out.len(), size, kind, "gather", "out")?;
        let dev = self.dev;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        self.run_pieces(
            indices.len(),
            |i| base.0 + indices[i] * size as u64,
            size,
            kind,
            |t, i, pos, n| t.read(dev, &mut bytes[i * size + pos..i * size + pos + n]),
        )
    }

    /// Stores `vals[i]` at element `indices[i]` of the array of `T` at
    /// `base`, in order (a later index that repeats an earlier one wins).
    /// Fails without touching memory if the two slices differ in length.
    pub fn scatter<T: bytemuck::Pod>(
        &mut self,
        base: VirtAddr,
        indices: &[u64],
        vals: &[T],
    ) -> std::result::Result<(), DeviceFault> {
        let size = std::mem::size_of::<T>();
        let kind = AccessKind::Write;
        self.check_indices(base, indices, vals.len(), size, kind, "scatter", "vals")?;
        let dev = self.dev;
        let bytes: &[u8] = bytemuck::cast_slice(vals);
        self.run_pieces(
            indices.len(),
            |i| base.0 + indices[i] * size as u64,
            size,
            kind,
            |t, i, pos, n| t.write(dev, &bytes[i * size + pos..i * size + pos + n]),
        )
    }

    /// A strided walk of `count` values of `size` bytes must stay inside the
    /// address space.
    fn check_span(
        &self,
        base: VirtAddr,
        stride: u64,
        count: usize,
        size: usize,
        kind: AccessKind,
    ) -> std::result::Result<(), DeviceFault> {
        let last = (count as u64)
            .checked_sub(1)
            .map_or(Some(0), |c| c.checked_mul(stride))
            .and_then(|o| o.checked_add(size as u64))
            .and_then(|o| base.0.checked_add(o));
        match last {
            Some(_) => Ok(()),
            None => Err(self.fault(
                base.0,
                kind,
                FaultReason::Argument(format!(
                    "{count} values of {size} bytes every {stride} bytes from {base} run past \
                     the end of the address space: use a smaller stride or count"
                )),
            )),
        }
    }

    /// Gathered/scattered indices: as many as values, each address in range.
    #[allow(clippy::too_many_arguments)]
    fn check_indices(
        &self,
        base: VirtAddr,
        indices: &[u64],
        values: usize,
        size: usize,
        kind: AccessKind,
        what: &str,
        name: &str,
    ) -> std::result::Result<(), DeviceFault> {
        if indices.len() != values {
            return Err(self.fault(
                base.0,
                kind,
                FaultReason::Argument(format!(
                    "{what} of {} indices into a `{name}` of {values} values: pass slices of \
                     one length",
                    indices.len()
                )),
            ));
        }
        let size = size as u64;
        if let Some(&bad) = indices.iter().find(|&&j| {
            j.checked_mul(size)
                .and_then(|o| o.checked_add(size))
                .and_then(|o| base.0.checked_add(o))
                .is_none()
        }) {
            return Err(self.fault(
                base.0,
                kind,
                FaultReason::Argument(format!(
                    "{what} index {bad} of {size}-byte values from {base} runs past the end of \
                     the address space: indices count elements, not bytes"
                )),
            ));
        }
        Ok(())
    }

    fn atomic(&mut self, addr: VirtAddr, op: AtomicOp) -> std::result::Result<u64, DeviceFault> {
        if addr.0 % op.width() as u64 != 0 {
            return Err(self.fault(addr.0, AccessKind::Atomic, FaultReason::Misaligned));
        }
        let dev = self.dev;
        let mut old = 0;
        self.run(addr.0, op.width(), AccessKind::Atomic, |t, _, _| {
            old = match t {
                Target::System { r, off } => op
                    .apply_guarded(&r.managed, off)
                    .map_err(|e| DeviceError::new(e.to_string()))?,
                Target::Device { page, off } => dev.atomic(page, off, op)?,
            };
            Ok(())
        })?;
        Ok(old)
    }

    /// Atomically adds `v` to the `u32` at `addr`; returns the old value.
    pub fn atomic_add_u32(
        &mut self,
        addr: VirtAddr,
        v: u32,
    ) -> std::result::Result<u32, DeviceFault> {
        self.atomic(addr, AtomicOp::AddU32(v)).map(|x| x as u32)
    }

    /// Atomically adds `v` to the `u64` at `addr`; returns the old value.
    pub fn atomic_add_u64(
        &mut self,
        addr: VirtAddr,
        v: u64,
    ) -> std::result::Result<u64, DeviceFault> {
        self.atomic(addr, AtomicOp::AddU64(v))
    }

    /// Atomically xors `v` into the `u64` at `addr`; returns the old value.
    pub fn atomic_xor_u64(
        &mut self,
        addr: VirtAddr,
        v: u64,
    ) -> std::result::Result<u64, DeviceFault> {
        self.atomic(addr, AtomicOp::XorU64(v))
    }

    /// Atomically ors `v` into the `u64` at `addr`; returns the old value.
    pub fn atomic_or_u64(
        &mut self,
        addr: VirtAddr,
        v: u64,
    ) -> std::result::Result<u64, DeviceFault> {
        self.atomic(addr, AtomicOp::OrU64(v))
    }

    /// Atomically ands `v` into the `u64` at `addr`; returns the old value.
    pub fn atomic_and_u64(
        &mut self,
        addr: VirtAddr,
        v: u64,
    ) -> std::result::Result<u64, DeviceFault> {
        self.atomic(addr, AtomicOp::AndU64(v))
    }

    /// Atomically stores the smaller of the `u64` at `addr` and `v`; returns
    /// the old value.
    pub fn atomic_min_u64(
        &mut self,
        addr: VirtAddr,
        v: u64,
    ) -> std::result::Result<u64, DeviceFault> {
        self.atomic(addr, AtomicOp::MinU64(v))
    }

    /// Atomically stores the larger of the `u64` at `addr` and `v`; returns
    /// the old value.
    pub fn atomic_max_u64(
        &mut self,
        addr: VirtAddr,
        v: u64,
    ) -> std::result::Result<u64, DeviceFault> {
        self.atomic(addr, AtomicOp::MaxU64(v))
    }

    /// Atomically adds `v` to the `f32` at `addr` (a compare-exchange loop on
    /// its bits, as devices without a native float add do); returns the old
    /// value.
    pub fn atomic_add_f32(
        &mut self,
        addr: VirtAddr,
        v: f32,
    ) -> std::result::Result<f32, DeviceFault> {
        let mut cur = self.load::<u32>(addr)?;
        loop {
            let new = (f32::from_bits(cur) + v).to_bits();
            match self.compare_exchange_u32(addr, cur, new)? {
                Ok(old) => return Ok(f32::from_bits(old)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// 64-bit [`Lane::atomic_add_f32`].
    pub fn atomic_add_f64(
        &mut self,
        addr: VirtAddr,
        v: f64,
    ) -> std::result::Result<f64, DeviceFault> {
        let mut cur = self.load::<u64>(addr)?;
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match self.compare_exchange_u64(addr, cur, new)? {
                Ok(old) => return Ok(f64::from_bits(old)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Stores `new` at `addr` if it holds `current`: `Ok(current)` on success,
    /// `Err(actual)` otherwise.
    pub fn compare_exchange_u32(
        &mut self,
        addr: VirtAddr,
        current: u32,
        new: u32,
    ) -> std::result::Result<std::result::Result<u32, u32>, DeviceFault> {
        let old = self.atomic(addr, AtomicOp::CasU32 { current, new })? as u32;
        Ok(if old == current { Ok(old) } else { Err(old) })
    }

    /// 64-bit [`Lane::compare_exchange_u32`].
    pub fn compare_exchange_u64(
        &mut self,
        addr: VirtAddr,
        current: u64,
        new: u64,
    ) -> std::result::Result<std::result::Result<u64, u64>, DeviceFault> {
        let old = self.atomic(addr, AtomicOp::CasU64 { current, new })?;
        Ok(if old == current { Ok(old) } else { Err(old) })
    }
}

/// What a launch's lanes share: the abort flag and the tallies.
struct Launch<'a> {
    sh: &'a Ctx,
    d: DeviceId,
    dev: &'a dyn Device,
    abort: AtomicBool,
    fatal: parking_lot::Mutex<Option<DeviceFault>>,
    done: AtomicU64,
    faults: AtomicU64,
    waits: AtomicU64,
    /// Barriers lanes may be waiting on: an abort wakes them.
    barriers: Vec<&'a Barrier>,
    /// The timing model's account of the launch (devices that keep one).
    span: Option<crate::device::timing::LaunchSpan<'a>>,
}

impl<'a> Launch<'a> {
    /// Records `f` (the first fatal fault wins) and stops every lane.
    fn fail(&self, f: DeviceFault) {
        if f.reason != FaultReason::Aborted {
            self.fatal.lock().get_or_insert(f);
        }
        self.stop();
    }

    fn stop(&self) {
        self.abort.store(true, Ordering::Relaxed);
        for b in &self.barriers {
            b.wake_all();
        }
    }

    /// Runs `body` on `threads` lane threads (ids `0..threads`), each with a
    /// fresh [`Lane`]; `body` returns the work items the lane completed.
    fn run<B>(&self, threads: usize, body: B)
    where
        B: Fn(&mut Lane<'_>) -> u64 + Sync,
    {
        std::thread::scope(|s| {
            for id in 0..threads {
                let body = &body;
                let spawned = std::thread::Builder::new()
                    .name(format!("svmem-cu{id}-{}", self.dev.name()))
                    .spawn_scoped(s, move || {
                        let mut lane = Lane {
                            sh: self.sh,
                            d: self.d,
                            dev: self.dev,
                            id,
                            regions: Vec::new(),
                            tlb: Box::new([TlbEntry::default(); TLB_ENTRIES]),
                            reply: Arc::new(Reply::default()),
                            abort: &self.abort,
                            faults: 0,
                            queue_waits: 0,
                            clock: Default::default(),
                            remote_min: self
                                .span
                                .as_ref()
                                .map_or(0, |s| s.profile().remote_min_bytes),
                        };
                        let mine = body(&mut lane);
                        self.done.fetch_add(mine, Ordering::Relaxed);
                        self.faults.fetch_add(lane.faults, Ordering::Relaxed);
                        self.waits.fetch_add(lane.queue_waits, Ordering::Relaxed);
                        if let Some(span) = &self.span {
                            span.lane_done(&lane.clock, threads as u64);
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("svmem: cannot start compute lane {id} of {}: {e}", self.d);
                    self.stop();
                }
            }
        });
    }

    /// Runs `kernel(lane, item)` for items handed out from `next` until
    /// `grid`, a few at a time; false if the launch is stopping.
    fn items<F>(
        &self,
        lane: &mut Lane<'_>,
        next: &AtomicU64,
        grid: u64,
        mine: &mut u64,
        kernel: F,
    ) -> bool
    where
        F: Fn(&mut Lane<'_>, u64) -> std::result::Result<(), DeviceFault>,
    {
        let lanes = self.dev.compute_units().max(1) as u64;
        let chunk = (grid / (lanes * 64)).clamp(1, 64);
        while !self.abort.load(Ordering::Relaxed) {
            let first = next.fetch_add(chunk, Ordering::Relaxed);
            if first >= grid {
                return true;
            }
            for item in first..(first + chunk).min(grid) {
                if let Err(f) = kernel(lane, item) {
                    self.fail(f);
                    return false;
                }
                *mine += 1;
            }
        }
        false
    }

    fn report(self, grid: u64, lanes: usize, start: Instant) -> LaunchReport {
        let c = &self.sh.counters;
        c.add(&c.kernel_launches, 1);
        let fatal = self.fatal.into_inner();
        if fatal.is_some() {
            c.add(&c.device_faults_fatal, 1);
        }
        let elapsed = start.elapsed();
        let timing = self.span.map(crate::device::timing::LaunchSpan::end);
        LaunchReport {
            items_done: self.done.into_inner(),
            grid,
            lanes,
            elapsed,
            faults: self.faults.into_inner(),
            queue_waits: self.waits.into_inner(),
            fatal,
            timing: timing.unwrap_or_default(),
        }
    }
}

/// A barrier for a fixed number of lanes that a launch's abort releases.
pub(crate) struct Barrier {
    n: usize,
    state: parking_lot::Mutex<(usize, u64)>,
    cv: parking_lot::Condvar,
}

impl Barrier {
    fn new(n: usize) -> Barrier {
        Barrier {
            n,
            state: parking_lot::Mutex::new((0, 0)),
            cv: parking_lot::Condvar::new(),
        }
    }

    /// Waits until all `n` lanes arrive: `Some(true)` for exactly one of
    /// them (the leader), `None` once `abort` is set.
    fn wait(&self, abort: &AtomicBool) -> Option<bool> {
        let mut g = self.state.lock();
        if abort.load(Ordering::Relaxed) {
            return None;
        }
        let gen = g.1;
        g.0 += 1;
        if g.0 == self.n {
            *g = (0, gen + 1);
            self.cv.notify_all();
            return Some(true);
        }
        while g.1 == gen {
            if abort.load(Ordering::Relaxed) {
                return None;
            }
            self.cv.wait(&mut g);
        }
        Some(false)
    }

    /// Wakes every waiter (after the abort flag is set: they check it under
    /// the lock, so none misses it).
    fn wake_all(&self) {
        let _g = self.state.lock();
        self.cv.notify_all();
    }
}

/// Runs `kernel(lane, item)` for every item in `0..grid` on device `d`'s
/// compute units; items are handed out in ascending order, a few at a time.
pub(crate) fn launch<F>(sh: &Ctx, d: DeviceId, grid: u64, kernel: F) -> Result<LaunchReport>
where
    F: Fn(&mut Lane<'_>, u64) -> std::result::Result<(), DeviceFault> + Sync,
{
    let dev = sh.device(d)?.as_ref();
    let rt = &sh.runtime[d.0 as usize];
    // Launches wait while the queues are evicted, and count as running so the
    // mode cannot change under them.
    let _running = rt.enter_launch(&sh.notifier.queues[d.0 as usize]);
    let lanes = dev.compute_units().max(1);
    let l = Launch::new(sh, d, dev, Vec::new());
    let next = AtomicU64::new(0);
    let start = Instant::now();
    l.run(lanes, |lane| {
        let mut mine = 0;
        l.items(lane, &next, grid, &mut mine, &kernel);
        mine
    });
    Ok(l.report(grid, lanes, start))
}

impl<'a> Launch<'a> {
    fn new(sh: &'a Ctx, d: DeviceId, dev: &'a dyn Device, barriers: Vec<&'a Barrier>) -> Self {
        Launch {
            sh,
            d,
            dev,
            abort: AtomicBool::new(false),
            fatal: parking_lot::Mutex::new(None),
            done: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            barriers,
            span: dev.clock().map(crate::device::Clock::launch_begin),
        }
    }
}

/// A persistent launch: the lanes start once and run a sequence of steps,
/// `kernel(lane, step, item)` for every item of step `step`'s grid, with a
/// grid-wide barrier between steps (the cooperative-kernel pattern: one
/// launch instead of one per wavefront or level). Step 0 has `grid` items;
/// after each step one lane calls `next(lane, step)` with every item of the
/// step done and visible, which returns the next step's grid or `None` to
/// finish. The report's `grid` is the sum over steps.
pub(crate) fn launch_steps<F, G>(
    sh: &Ctx,
    d: DeviceId,
    grid: u64,
    kernel: F,
    next: G,
) -> Result<LaunchReport>
where
    F: Fn(&mut Lane<'_>, u64, u64) -> std::result::Result<(), DeviceFault> + Sync,
    G: FnMut(&mut Lane<'_>, u64) -> std::result::Result<Option<u64>, DeviceFault> + Send,
{
    let dev = sh.device(d)?.as_ref();
    let rt = &sh.runtime[d.0 as usize];
    let _running = rt.enter_launch(&sh.notifier.queues[d.0 as usize]);
    let lanes = dev.compute_units().max(1);
    let barrier = Barrier::new(lanes);
    let l = Launch::new(sh, d, dev, vec![&barrier]);
    // (step, grid of the step, finished); written by the leader between
    // the two barriers of a step change.
    let plan = parking_lot::Mutex::new((0u64, grid, false));
    let total = AtomicU64::new(grid);
    let cursor = AtomicU64::new(0);
    let next = parking_lot::Mutex::new(next);
    let start = Instant::now();
    l.run(lanes, |lane| {
        let mut mine = 0;
        loop {
            let (step, g, finished) = *plan.lock();
            if finished {
                break;
            }
            let k = |lane: &mut Lane<'_>, item| kernel(lane, step, item);
            if !l.items(lane, &cursor, g, &mut mine, k) {
                break;
            }
            match barrier.wait(&l.abort) {
                None => break,
                Some(true) => match (next.lock())(lane, step) {
                    Ok(n) => {
                        cursor.store(0, Ordering::Relaxed);
                        let mut p = plan.lock();
                        *p = (step + 1, n.unwrap_or(0), n.is_none());
                        total.fetch_add(n.unwrap_or(0), Ordering::Relaxed);
                    }
                    Err(f) => {
                        l.fail(f);
                        break;
                    }
                },
                Some(false) => {}
            }
            // Every lane sees the new plan (and a reset cursor) before any
            // takes an item of the next step.
            if barrier.wait(&l.abort).is_none() {
                break;
            }
        }
        mine
    });
    Ok(l.report(total.into_inner(), lanes, start))
}

/// One work group of a `DeviceHandle::launch_groups` launch, as one of its
/// lanes sees it.
pub struct Group<'a> {
    id: u64,
    local_id: usize,
    size: usize,
    local: &'a [AtomicU64],
    barrier: &'a Barrier,
    abort: &'a AtomicBool,
    dev: DeviceId,
    lane: usize,
}

impl std::fmt::Debug for Group<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .field("local_id", &self.local_id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Group<'_> {
    /// The group's index in `0..groups`.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// This lane's index in the group, `0..size`.
    pub fn local_id(&self) -> usize {
        self.local_id
    }
    /// Lanes in the group.
    pub fn size(&self) -> usize {
        self.size
    }
    /// The group's local scratch: zeroed when the group starts, shared by
    /// its lanes only. Writes before a [`Group::barrier`] are visible to
    /// every lane of the group after it.
    pub fn local(&self) -> &[AtomicU64] {
        self.local
    }
    /// Waits until every lane of the group reaches it. Fails (aborted) if
    /// the launch stops meanwhile: return the error, as for any fault.
    pub fn barrier(&self) -> std::result::Result<(), DeviceFault> {
        match self.barrier.wait(self.abort) {
            Some(_) => Ok(()),
            None => Err(DeviceFault {
                dev: self.dev,
                lane: self.lane,
                addr: VirtAddr(0),
                kind: AccessKind::Read,
                reason: FaultReason::Aborted,
            }),
        }
    }
}

/// Runs `groups` work groups of `size` lanes each: `kernel(lane, group)`
/// once per lane of every group; the lanes of one group run at the same
/// time, may wait for each other at [`Group::barrier`] and share
/// `local_words` words of [`Group::local`] scratch. As many groups run at
/// once as the device has compute units for (at least one); each group's
/// lanes are threads of their own. A group finishes when all its lanes
/// return; the report counts one item per group.
pub(crate) fn launch_groups<F>(
    sh: &Ctx,
    d: DeviceId,
    groups: u64,
    size: usize,
    local_words: usize,
    kernel: F,
) -> Result<LaunchReport>
where
    F: Fn(&mut Lane<'_>, &Group<'_>) -> std::result::Result<(), DeviceFault> + Sync,
{
    if size == 0 || size > MAX_GROUP_SIZE {
        return Err(Error::Config(format!(
            "a work group of {size} lanes: use 1 to {MAX_GROUP_SIZE}"
        )));
    }
    if local_words > MAX_LOCAL_WORDS {
        return Err(Error::Config(format!(
            "{local_words} words of group-local scratch: use at most {MAX_LOCAL_WORDS} (512 KiB)"
        )));
    }
    let dev = sh.device(d)?.as_ref();
    let rt = &sh.runtime[d.0 as usize];
    let _running = rt.enter_launch(&sh.notifier.queues[d.0 as usize]);
    let slots = (dev.compute_units() / size).max(1);
    let barriers: Vec<Barrier> = (0..slots).map(|_| Barrier::new(size)).collect();
    let locals: Vec<Vec<AtomicU64>> = (0..slots)
        .map(|_| (0..local_words).map(|_| AtomicU64::new(0)).collect())
        .collect();
    let l = Launch::new(sh, d, dev, barriers.iter().collect());
    let start = Instant::now();
    l.run(slots * size, |lane| {
        let (slot, local_id) = (lane.id / size, lane.id % size);
        let (barrier, local) = (&barriers[slot], &locals[slot][..]);
        let mut mine = 0;
        let mut g = slot as u64;
        while g < groups {
            if local_id == 0 {
                local.iter().for_each(|w| w.store(0, Ordering::Relaxed));
            }
            if barrier.wait(&l.abort).is_none() {
                break;
            }
            let group = Group {
                id: g,
                local_id,
                size,
                local,
                barrier,
                abort: &l.abort,
                dev: d,
                lane: lane.id,
            };
            if let Err(f) = kernel(lane, &group) {
                l.fail(f);
                break;
            }
            // The group ends when every lane is done with its scratch.
            if barrier.wait(&l.abort).is_none() {
                break;
            }
            if local_id == 0 {
                mine += 1;
            }
            g += slots as u64;
        }
        mine
    });
    Ok(l.report(groups, slots * size, start))
}

/// The largest work group (lanes are threads).
pub const MAX_GROUP_SIZE: usize = 64;
/// The most group-local scratch, in 64-bit words.
pub const MAX_LOCAL_WORDS: usize = 64 << 10;
