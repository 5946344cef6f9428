//! Device page faults (XNACK on) and the restore of always-mapped ranges.
//!
//! **Fault buffer.** A lane that misses its translation posts a [`Fault`]
//! (page, access kind, lane) to its device's bounded fault buffer and sleeps
//! on its [`Reply`] until replayed.
//!
//! **Fault-service thread** (one per device) drains the buffer in batches of
//! up to [`MAX_BATCH`]: it sorts the faults by page and merges duplicates
//! (keeping the strongest access: atomic > write > read), groups them by 2 MiB
//! block and, per block, with a retry loop in the style of DRM GPU SVM:
//! 1. per fault: a fault whose page is already translated well enough (a racing
//!    fault of another lane was served, or the block was mapped within the last
//!    2 ms and the entry is valid) is a duplicate; otherwise the placement
//!    policy decides from the range's attributes and where the data is;
//! 2. executes the decision on the fault window (granularity-aligned):
//!    migrate to a device, pull to system memory, or nothing (map in place);
//!    a migration to device memory that leaves pages behind (no memory) falls
//!    back to mapping them where they are;
//! 3. reads the block's invalidation sequence number, takes the block lock,
//!    and writes PTEs only if no invalidation happened since (else back to 1);
//! 4. replays every lane waiting on the block's faults.
//!
//! A sequential device sweep (a fault window starting where the previous one
//! of this device ended) is fetched ahead: a pipeline of windows in flight to
//! the device, each mapped and replayed as soon as its copy lands (see
//! [`run_ahead`]).
//!
//! **Restore worker** (one per device): after a queue eviction it maps every
//! range the device must keep mapped again, where the data is, then resumes
//! the queues; see [`crate::observe::notify`].

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::ahead::run_ahead;
use super::map::{cpu_forbids, map_locked, CpuProt};
use super::prefetch::Prefetch;
use super::Ctx;
use crate::addr::AccessKind;
use crate::addr::{DeviceId, Location, VirtAddr, BLOCK_PAGES, PAGE_SIZE};
use crate::error::FaultReason;
use crate::mm::migrate::{self, Trigger};
use crate::mm::space::{Pte, RegionInner};
use crate::mm::state::PageState;
use crate::observe::events::{EventKind, FaultResolution};
use crate::observe::notify::QueueCtl;
use crate::placement::attr::AttrFlags;
use crate::placement::policy::{Decision, PolicyInput};
use crate::sync::Ordering;

/// Most faults one batch services (the hardware fault buffer's batch).
pub const MAX_BATCH: usize = 256;
/// Faults the buffer holds before lanes block posting.
const BUFFER: usize = 4096;
/// A block mapped this recently counts its valid-entry faults as duplicates.
const RECENT_NS: u64 = 2_000_000;
/// Attempts of the decide → migrate → map loop before giving up.
const MAX_SERVICE_RETRIES: usize = 8;

/// How a fault ended for the lane that posted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FaultOutcome {
    /// Retry the access.
    Replay,
    /// Stop: the access can never succeed.
    Fatal(FaultReason),
}

/// A lane's fault slot: the service thread fills it, then wakes every lane
/// of the device at once through the device's replay word.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// 0: pending, 1: replay, 2: fatal (reason in `fatal`).
    state: std::sync::atomic::AtomicU32,
    fatal: Mutex<Option<FaultReason>>,
}

const PENDING: u32 = 0;
const REPLAY: u32 = 1;
const FATAL: u32 = 2;

impl Reply {
    /// Records the outcome; the caller wakes the lanes afterwards.
    fn complete(&self, o: FaultOutcome) {
        let state = match o {
            FaultOutcome::Replay => REPLAY,
            FaultOutcome::Fatal(why) => {
                *self.fatal.lock() = Some(why);
                FATAL
            }
        };
        self.state
            .store(state, std::sync::atomic::Ordering::Release);
    }
}

/// One posted fault.
#[derive(Debug)]
pub(crate) struct Fault {
    pub page_addr: u64,
    pub kind: AccessKind,
    /// The posting lane (shown by `Debug`, for diagnosing stuck faults).
    #[allow(dead_code)]
    lane: usize,
    reply: Arc<Reply>,
}

pub(crate) enum Msg {
    Fault(Fault),
    Shutdown,
}

/// Service times of recent batches (a bounded log).
#[derive(Debug, Default)]
struct BatchLog {
    /// (faults in the batch before merging, microseconds)
    samples: std::collections::VecDeque<(u32, f64)>,
    total_faults: u64,
    busy_us: f64,
}

const BATCH_LOG: usize = 1 << 16;

/// Fault-service statistics of one device, computed from the recent batches.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct BatchStats {
    /// Recent fault batches (the last 65536), which the times below describe.
    pub batches: u64,
    /// Faults serviced since the device's runtime started.
    pub faults: u64,
    /// Median service time of a recent batch, µs.
    pub p50_us: f64,
    /// 90th percentile of the service time, µs.
    pub p90_us: f64,
    /// 99th percentile of the service time, µs.
    pub p99_us: f64,
    /// The longest recent service time, µs.
    pub max_us: f64,
    /// Batches that held [`MAX_BATCH`] faults, and their median service time.
    pub full_batches: u64,
    /// Median service time of the full batches, µs.
    pub full_p50_us: f64,
    /// Faults serviced per second of service-thread busy time.
    pub faults_per_sec: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Per-device runtime state: the fault buffer, batch log, running launches.
#[derive(Debug)]
pub(crate) struct DeviceRuntime {
    /// Replay word: bumped (and futex-woken) after every serviced batch.
    replay: std::sync::atomic::AtomicU32,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    log: Mutex<BatchLog>,
    running: Mutex<usize>,
    /// The device's prefetcher ([`super::prefetch::Prefetch`]).
    pub prefetch: std::sync::atomic::AtomicU8,
}

impl Default for DeviceRuntime {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(BUFFER);
        DeviceRuntime {
            replay: Default::default(),
            tx,
            rx,
            log: Mutex::default(),
            running: Mutex::new(0),
            prefetch: Default::default(),
        }
    }
}

/// Marks a launch as running while alive.
pub(crate) struct Running<'a>(&'a Mutex<usize>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
    }
}

impl DeviceRuntime {
    /// Waits for the queues to run, then counts a launch in.
    pub fn enter_launch<'a>(&'a self, q: &QueueCtl) -> Running<'a> {
        q.wait_resumed();
        *self.running.lock() += 1;
        Running(&self.running)
    }

    /// Holds off new launches while no launch runs (mode switches); the
    /// number running otherwise.
    pub fn idle_guard(&self) -> Result<parking_lot::MutexGuard<'_, usize>, usize> {
        let g = self.running.lock();
        if *g > 0 {
            return Err(*g);
        }
        Ok(g)
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }

    pub fn batch_stats(&self) -> BatchStats {
        let log = self.log.lock();
        let mut all: Vec<f64> = log.samples.iter().map(|s| s.1).collect();
        let mut full: Vec<f64> = log
            .samples
            .iter()
            .filter(|s| s.0 as usize >= MAX_BATCH)
            .map(|s| s.1)
            .collect();
        all.sort_by(f64::total_cmp);
        full.sort_by(f64::total_cmp);
        BatchStats {
            batches: all.len() as u64,
            faults: log.total_faults,
            p50_us: percentile(&all, 0.5),
            p90_us: percentile(&all, 0.9),
            p99_us: percentile(&all, 0.99),
            max_us: all.last().copied().unwrap_or(0.0),
            full_batches: full.len() as u64,
            full_p50_us: percentile(&full, 0.5),
            faults_per_sec: if log.busy_us > 0.0 {
                log.total_faults as f64 / (log.busy_us / 1e6)
            } else {
                0.0
            },
        }
    }
}

/// Posts a fault for the page holding `addr` and sleeps until it is replayed.
pub(crate) fn post(
    sh: &Ctx,
    d: DeviceId,
    addr: u64,
    kind: AccessKind,
    lane: usize,
    reply: &Arc<Reply>,
) -> FaultOutcome {
    use std::sync::atomic::Ordering as O;
    let rt = &sh.runtime[d.0 as usize];
    reply.state.store(PENDING, O::Release);
    // Read before posting: a replay after this point changes it, so the
    // wait below cannot miss it.
    let mut epoch = rt.replay.load(O::Acquire);
    let f = Fault {
        page_addr: addr & !(PAGE_SIZE as u64 - 1),
        kind,
        lane,
        reply: reply.clone(),
    };
    if rt.tx.send(Msg::Fault(f)).is_err() {
        return FaultOutcome::Fatal(FaultReason::Device("fault service is shut down".into()));
    }
    loop {
        match reply.state.load(O::Acquire) {
            REPLAY => return FaultOutcome::Replay,
            FATAL => {
                let why = reply.fatal.lock().take();
                return FaultOutcome::Fatal(why.unwrap_or(FaultReason::NotConverged));
            }
            _ => {
                crate::sys::futex::wait(&rt.replay, epoch, Some(REPLAY_WAIT));
                epoch = rt.replay.load(O::Acquire);
            }
        }
    }
}

/// Longest a lane sleeps between checks of its slot (a safety net: every
/// replay wakes it anyway).
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Wakes every lane of device `d` that waits for a replay.
pub(crate) fn replay_all(sh: &Ctx, d: DeviceId) {
    let rt = &sh.runtime[d.0 as usize];
    rt.replay.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    crate::sys::futex::wake_all(&rt.replay);
}

/// Where a batch's faults were, for fault-ahead: the region, the end of the
/// last fault window, and whether that fault continued a sequential sweep.
pub(crate) struct SweepHint {
    pub r: Arc<RegionInner>,
    pub hi: usize,
    pub sequential: bool,
}

/// The fault-service thread's body for device `d`.
pub(crate) fn service_loop(sh: Arc<Ctx>, d: DeviceId) {
    let rx = sh.runtime[d.0 as usize].rx.clone();
    let mut batch: Vec<Fault> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Block only when there is nothing else to do.
        match rx.recv() {
            Ok(Msg::Fault(f)) => batch.push(f),
            Ok(Msg::Shutdown) | Err(_) => return,
        }
        if !gather(&rx, &mut batch) {
            return;
        }
        let hint = service_batch(&sh, d, &mut batch);
        replay_all(&sh, d);
        if let Some(h) = hint.filter(|h| h.sequential && h.hi < h.r.npages) {
            if !run_ahead(&sh, d, &rx, h) {
                return;
            }
        }
    }
}

/// Moves waiting faults into `batch` without blocking, up to [`MAX_BATCH`];
/// false once the service must shut down.
pub(crate) fn gather(rx: &Receiver<Msg>, batch: &mut Vec<Fault>) -> bool {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Msg::Fault(f)) => batch.push(f),
            Ok(Msg::Shutdown) => return false,
            Err(crossbeam_channel::TryRecvError::Empty) => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Whether page `k` of `r` has a translation on device `d` good for `kind`.
pub(crate) fn translated(r: &RegionInner, d: DeviceId, k: usize, kind: AccessKind) -> bool {
    Pte::decode(r.ptes[d.0 as usize][k].load(Ordering::Acquire)).is_some_and(|p| p.allows(kind))
}

/// Ends a fault that fault-ahead made needless (its page got mapped): it
/// counts, and shows in the event stream, like a duplicate of a batch.
pub(crate) fn replay_duplicate(sh: &Ctx, d: DeviceId, r: &RegionInner, f: &Fault) {
    let c = &sh.counters;
    c.add(&c.device_faults, 1);
    c.add(&c.device_fault_duplicates, 1);
    let (addr, write) = (VirtAddr(f.page_addr), f.kind != AccessKind::Read);
    let events = &r.notifier.events;
    events.emit_with(|| EventKind::PageFaultStart {
        dev: d,
        addr,
        write,
    });
    events.emit_with(|| EventKind::PageFaultEnd {
        dev: d,
        addr,
        write,
        resolution: FaultResolution::Duplicate,
    });
    f.reply.complete(FaultOutcome::Replay);
}

/// One merged fault: a page, the strongest access, every lane waiting on it.
struct Merged {
    idx: usize,
    kind: AccessKind,
    replies: Vec<Arc<Reply>>,
    outcome: Option<(FaultOutcome, FaultResolution)>,
}

/// Services one batch; returns where a sequential sweep should continue.
pub(crate) fn service_batch(sh: &Ctx, d: DeviceId, batch: &mut Vec<Fault>) -> Option<SweepHint> {
    let t0 = Instant::now();
    let raw = batch.len();
    let c = &sh.counters;
    c.add(&c.device_faults, raw as u64);
    c.add(&c.device_fault_batches, 1);
    if let Some(clock) = sh.devices[d.0 as usize].clock() {
        clock.fault_batch(raw as u64);
    }
    if sh.devices[d.0 as usize].is_lost() {
        // A lost device's faults are fatal; its pages are poisoned first.
        sh.check_lost();
        for f in batch.drain(..) {
            f.reply.complete(FaultOutcome::Fatal(FaultReason::Device(
                "the device is lost".into(),
            )));
        }
        return None;
    }
    batch.sort_unstable_by_key(|f| f.page_addr);
    let mut ahead = None;
    let mut i = 0;
    while i < batch.len() {
        // Faults of one region and one 2 MiB block.
        let Some(r) = sh.region_at(batch[i].page_addr) else {
            let f = &batch[i];
            f.reply
                .complete(FaultOutcome::Fatal(FaultReason::Unmanaged));
            i += 1;
            continue;
        };
        let b = r.page_of(batch[i].page_addr) / BLOCK_PAGES;
        let mut merged: Vec<Merged> = Vec::new();
        while i < batch.len()
            && r.contains(batch[i].page_addr, 1)
            && r.page_of(batch[i].page_addr) / BLOCK_PAGES == b
        {
            let f = &batch[i];
            let idx = r.page_of(f.page_addr);
            match merged.last_mut() {
                Some(m) if m.idx == idx => {
                    m.kind = m.kind.max(f.kind);
                    m.replies.push(f.reply.clone());
                    c.add(&c.device_fault_duplicates, 1);
                }
                _ => merged.push(Merged {
                    idx,
                    kind: f.kind,
                    replies: vec![f.reply.clone()],
                    outcome: None,
                }),
            }
            i += 1;
        }
        let sequential = service_block(sh, d, &r, b, &mut merged);
        if let Some(last) = merged.last() {
            let hi = r.fault_window(last.idx).1;
            ahead = Some(SweepHint {
                r: r.clone(),
                hi: sequential.unwrap_or(hi).max(hi),
                sequential: sequential.is_some(),
            });
        }
        for m in merged {
            let (o, res) = m
                .outcome
                .unwrap_or((FaultOutcome::Replay, FaultResolution::Duplicate));
            sh.notifier.events.emit_with(|| EventKind::PageFaultEnd {
                dev: d,
                addr: r.addr_of(m.idx),
                write: m.kind != AccessKind::Read,
                resolution: res,
            });
            for reply in m.replies {
                reply.complete(o.clone());
            }
        }
    }
    batch.clear();
    // Pulls may have found another device lost: its pages are poisoned now,
    // so refaults on them end (no lock is held here).
    sh.check_lost();
    let us = t0.elapsed().as_secs_f64() * 1e6;
    let mut log = sh.runtime[d.0 as usize].log.lock();
    if log.samples.len() >= BATCH_LOG {
        log.samples.pop_front();
    }
    log.samples.push_back((raw as u32, us));
    log.total_faults += raw as u64;
    log.busy_us += us;
    ahead
}

/// Decides, migrates and maps the faults of block `b`; fills each fault's
/// outcome. Returns the end of the last window if this continued a
/// sequential sweep of device memory (fault-ahead starts there).
fn service_block(
    sh: &Ctx,
    d: DeviceId,
    r: &Arc<RegionInner>,
    b: usize,
    faults: &mut [Merged],
) -> Option<usize> {
    let table = &r.ptes[d.0 as usize];
    let blk = &r.blocks[b];
    let xnack = sh.xnack.load(Ordering::Acquire);
    let policy = sh.policy.read().clone();
    let reachable = 1u8 << d.0;
    let mut sweep = None;
    for m in faults.iter() {
        sh.notifier.events.emit_with(|| EventKind::PageFaultStart {
            dev: d,
            addr: r.addr_of(m.idx),
            write: m.kind != AccessKind::Read,
        });
    }
    for _attempt in 0..MAX_SERVICE_RETRIES {
        // 1. decide
        let recent = sh
            .notifier
            .now_ns()
            .saturating_sub(blk.mapped_at.load(Ordering::Relaxed))
            < RECENT_NS;
        let thrashing = crate::pressure::evict::thrashing(&sh.pressure, r, b, d);
        let mut plan: Vec<(usize, usize, Decision, bool, AttrFlags)> = Vec::new();
        let mut prot = CpuProt::default();
        for m in faults.iter_mut().filter(|m| m.outcome.is_none()) {
            let word = table[m.idx].load(Ordering::Acquire);
            if Pte::decode(word).is_some_and(|p| p.allows(m.kind)) || (recent && word != 0) {
                m.outcome = Some((FaultOutcome::Replay, FaultResolution::Duplicate));
                sh.counters.add(&sh.counters.device_fault_duplicates, 1);
                continue;
            }
            if r.states[m.idx].load() == PageState::Poisoned {
                m.outcome = Some((
                    FaultOutcome::Fatal(FaultReason::Poisoned),
                    FaultResolution::Fatal,
                ));
                continue;
            }
            if r.states[m.idx].load() == PageState::Hole {
                m.outcome = Some((
                    FaultOutcome::Fatal(FaultReason::Unmapped),
                    FaultResolution::Fatal,
                ));
                continue;
            }
            if r.barred(m.kind) {
                m.outcome = Some((
                    FaultOutcome::Fatal(FaultReason::CpuView),
                    FaultResolution::Fatal,
                ));
                continue;
            }
            let at = r.addr_of(m.idx).0;
            let (rd, wr) = prot.at(at);
            if !rd || (m.kind != AccessKind::Read && !wr) {
                // The CPU's protection forbids it (HMM checks the VMA too).
                let why = cpu_forbids(at, m.kind).unwrap_or(FaultReason::Protection { write: rd });
                m.outcome = Some((FaultOutcome::Fatal(why), FaultResolution::Fatal));
                continue;
            }
            let attrs = sh.attrs.read().get(r.addr_of(m.idx).0 / PAGE_SIZE as u64);
            let input = PolicyInput {
                dev: d,
                addr: r.addr_of(m.idx),
                kind: m.kind,
                resident: r.location(m.idx),
                attrs: &attrs,
                xnack,
                region_writable: r.is_writable(),
                reachable,
                thrashing,
            };
            let decision = policy.decide(&input);
            if let Decision::Fail(why) = decision {
                m.outcome = Some((
                    FaultOutcome::Fatal(FaultReason::Policy(why)),
                    FaultResolution::Fatal,
                ));
                continue;
            }
            let (lo, hi) = r.fault_window(m.idx);
            let write = m.kind != AccessKind::Read;
            match plan.last_mut() {
                Some(p) if p.0 == lo && p.2 == decision => p.3 |= write,
                _ => plan.push((lo, hi, decision, write, attrs.flags)),
            }
        }
        if plan.is_empty() {
            return sweep;
        }
        if Prefetch::load(&sh.runtime[d.0 as usize].prefetch) == Prefetch::Density {
            super::prefetch::grow(r, d, &mut plan);
        }
        // 2. migrate
        let mut migrated = false;
        for &(lo, hi, decision, _, _) in &plan {
            match decision {
                Decision::MigrateToDevice(x) => {
                    let rep = migrate::migrate_range(
                        sh,
                        r,
                        lo,
                        hi - lo,
                        Location::Device(x),
                        Trigger::DeviceFault,
                    );
                    migrated |= rep.migrated > 0;
                    if x == d {
                        let prev = r.dev_sweep_end[d.0 as usize].swap(hi, Ordering::Relaxed);
                        if prev == lo && hi < r.npages {
                            sweep = Some(hi);
                        }
                    }
                }
                Decision::MigrateToSystem => {
                    let _g = blk.migrate.lock();
                    let before = (lo..hi)
                        .filter(|&k| matches!(r.states[k].load(), PageState::Device { .. }))
                        .count();
                    migrate::pull_to_system(sh, r, lo..hi, None, Trigger::DeviceFault);
                    migrated |= before > 0;
                }
                Decision::MapInPlace | Decision::Fail(_) => {}
            }
        }
        // 3. map, unless an invalidation overtook us
        let seq = blk.seq.load(Ordering::Acquire);
        let guard = blk.migrate.lock();
        if blk.seq.load(Ordering::Acquire) != seq {
            drop(guard);
            sh.counters.add(&sh.counters.device_fault_retries, 1);
            continue;
        }
        for &(lo, hi, _, write, flags) in &plan {
            map_locked(sh, r, d, lo, hi, write, flags);
        }
        drop(guard);
        let res = if migrated {
            FaultResolution::Migrated
        } else {
            FaultResolution::Mapped
        };
        for m in faults.iter_mut().filter(|m| m.outcome.is_none()) {
            m.outcome = Some((FaultOutcome::Replay, res));
        }
        return sweep;
    }
    // Still overtaken: let the lanes refault (their retry budget is bounded).
    sweep
}
