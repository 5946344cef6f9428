//! Device kernels: a grid of work items run by the device's compute units
//! (one thread per unit, each a *lane*). Kernel code reaches managed memory
//! only through its [`Lane`]: typed loads and stores, bulk reads and writes,
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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub grid: u64,
    pub lanes: usize,
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
                .read_at(off, buf)
                .map_err(|e| DeviceError::new(e.to_string())),
            Target::Device { page, off } => dev.load(page, off, buf),
        }
    }

    /// Copies `buf` into the target's bytes (within one page).
    pub(crate) fn write(&self, dev: &dyn Device, buf: &[u8]) -> Result<(), DeviceError> {
        match *self {
            Target::System { r, off } => r
                .managed
                .write_at(off, buf)
                .map_err(|e| DeviceError::new(e.to_string())),
            Target::Device { page, off } => dev.store(page, off, buf),
        }
    }
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
        let q = &self.sh.notifier.queues[self.d.0 as usize];
        let xnack = self.sh.xnack.load(Ordering::Acquire);
        let mut pos = 0usize;
        let mut retries = 0u32;
        while pos < len {
            if self.abort.load(Ordering::Relaxed) {
                return Err(self.fault(addr + pos as u64, kind, FaultReason::Aborted));
            }
            if q.wait_resumed() {
                self.queue_waits += 1;
            }
            // A munmap/madvise that returned is handled before a translation
            // is used (no guard is held here).
            self.sh.events.wait();
            let at = addr + pos as u64;
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
                while pos < len {
                    let at = addr + pos as u64;
                    let k = r.page_of(at);
                    if k / BLOCK_PAGES != b || !r.contains(at, 1) {
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
                    let n = (PAGE_SIZE - off).min(len - pos);
                    let target = Target::of(r, pte, at);
                    let remote = matches!(target, Target::System { .. });
                    if let Err(e) = op(target, pos, n) {
                        return Err(self.fault(at, kind, FaultReason::Device(e.reason)));
                    }
                    self.clock.access(remote, kind, n, self.remote_min);
                    pos += n;
                }
            }
            if !missed {
                continue;
            }
            let at = addr + pos as u64;
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
                Target::System { r, off } => f(r
                    .managed
                    .atomic_words(off, words)
                    .map_err(|e| DeviceError::new(e.to_string()))?),
                Target::Device { page, off } => match dev.words(page, off, words) {
                    Some(w) => f(w),
                    None => {
                        let mut buf = vec![0u8; bytes];
                        dev.load(page, off, &mut buf)?;
                        let copy: Vec<std::sync::atomic::AtomicU64> = buf
                            .chunks_exact(8)
                            .map(|c| {
                                let mut w = [0u8; 8];
                                w.copy_from_slice(c);
                                std::sync::atomic::AtomicU64::new(u64::from_ne_bytes(w))
                            })
                            .collect();
                        f(&copy)
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

    fn atomic(&mut self, addr: VirtAddr, op: AtomicOp) -> std::result::Result<u64, DeviceFault> {
        if addr.0 % op.width() as u64 != 0 {
            return Err(self.fault(addr.0, AccessKind::Atomic, FaultReason::Misaligned));
        }
        let dev = self.dev;
        let mut old = 0;
        self.run(addr.0, op.width(), AccessKind::Atomic, |t, _, _| {
            old = match t {
                Target::System { r, off } => op
                    .apply(&r.managed, off)
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
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let chunk = (grid / (lanes as u64 * 64)).clamp(1, 64);
    let fatal = parking_lot::Mutex::new(None::<DeviceFault>);
    let (faults, waits) = (AtomicU64::new(0), AtomicU64::new(0));
    let span = dev.clock().map(crate::device::Clock::launch_begin);
    let remote_min = span.as_ref().map_or(0, |s| s.profile().remote_min_bytes);
    let start = Instant::now();
    std::thread::scope(|s| {
        for id in 0..lanes {
            let (next, done, abort, fatal, kernel) = (&next, &done, &abort, &fatal, &kernel);
            let (faults, waits, span) = (&faults, &waits, &span);
            let spawned = std::thread::Builder::new()
                .name(format!("svmem-cu{id}-{}", dev.name()))
                .spawn_scoped(s, move || {
                    let mut lane = Lane {
                        sh,
                        d,
                        dev,
                        id,
                        regions: Vec::new(),
                        tlb: Box::new([TlbEntry::default(); TLB_ENTRIES]),
                        reply: Arc::new(Reply::default()),
                        abort,
                        faults: 0,
                        queue_waits: 0,
                        clock: Default::default(),
                        remote_min,
                    };
                    let mut mine = 0u64;
                    'items: while !abort.load(Ordering::Relaxed) {
                        let first = next.fetch_add(chunk, Ordering::Relaxed);
                        if first >= grid {
                            break;
                        }
                        for item in first..(first + chunk).min(grid) {
                            if let Err(f) = kernel(&mut lane, item) {
                                if f.reason != FaultReason::Aborted {
                                    fatal.lock().get_or_insert(f);
                                }
                                abort.store(true, Ordering::Relaxed);
                                break 'items;
                            }
                            mine += 1;
                        }
                    }
                    done.fetch_add(mine, Ordering::Relaxed);
                    faults.fetch_add(lane.faults, Ordering::Relaxed);
                    waits.fetch_add(lane.queue_waits, Ordering::Relaxed);
                    if let Some(span) = span {
                        span.lane_done(&lane.clock, lanes as u64);
                    }
                });
            if let Err(e) = spawned {
                eprintln!("svmem: cannot start compute lane {id} of {d}: {e}");
                abort.store(true, Ordering::Relaxed);
            }
        }
    });
    let elapsed = start.elapsed();
    let timing = span.map(crate::device::timing::LaunchSpan::end);
    let c = &sh.counters;
    c.add(&c.kernel_launches, 1);
    let fatal = fatal.into_inner();
    if fatal.is_some() {
        c.add(&c.device_faults_fatal, 1);
    }
    Ok(LaunchReport {
        items_done: done.into_inner(),
        grid,
        lanes,
        elapsed,
        faults: faults.into_inner(),
        queue_waits: waits.into_inner(),
        fatal,
        timing: timing.unwrap_or_default(),
    })
}
