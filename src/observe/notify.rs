//! What every invalidation tells: the event stream (unmap-from-device), and
//! the per-device queue control that XNACK-off devices (and always-mapped
//! ranges) need — an invalidation of a range a device must keep mapped
//! *evicts* that device's queues: running lanes pause at their next access,
//! new launches wait, and the restore worker maps the range again (1 ms later,
//! retried every 1 ms until it succeeds) before the queues resume.
//!
//! Queue state transitions (all under `QueueCtl::state`):
//! - `evict` (any thread holding a block lock, inside `invalidate`):
//!   running → evicted (`paused` set, eviction counted and reported),
//!   evicted → evicted (a new generation: the restore in progress must redo);
//!   in both cases a restore is due 1 ms from now;
//! - `finish_restore` (the restore worker only): evicted → running, when the
//!   pass it ran saw no newer generation and no new restore became due.
//!
//! Lanes never hold a block's access guard while they wait for `resume`.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::addr::{DeviceId, VirtAddr};
use crate::observe::events::{EventBus, EventKind, EvictTrigger, UnmapTrigger};
use crate::sync::{AtomicU64, Ordering};

/// Delay between an eviction and the restore attempt (KFD's restore delay).
pub(crate) const RESTORE_DELAY: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
struct QueueState {
    paused: bool,
    /// When the restore worker should next try.
    restore_due: Option<Instant>,
    /// Restore passes that failed or were overtaken since the eviction.
    attempts: u32,
    shutdown: bool,
}

/// Queue control of one device.
#[derive(Debug, Default)]
pub(crate) struct QueueCtl {
    state: Mutex<QueueState>,
    /// Lanes waiting for resume, and the restore worker waiting for work.
    cv: Condvar,
    /// Readable without the lock: lanes check it before every access.
    paused: std::sync::atomic::AtomicBool,
    /// Bumped by every eviction.
    generation: AtomicU64,
    pub evictions: AtomicU64,
    pub restores: AtomicU64,
    pub restore_retries: AtomicU64,
}

impl QueueCtl {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Blocks while the queues are evicted. Returns whether it waited.
    pub fn wait_resumed(&self) -> bool {
        if !self.is_paused() {
            return false;
        }
        let mut s = self.state.lock();
        while s.paused && !s.shutdown {
            self.cv.wait(&mut s);
        }
        true
    }

    /// The restore worker's wait: returns the generation to restore, or
    /// `None` on shutdown.
    pub fn next_restore(&self) -> Option<u64> {
        let mut s = self.state.lock();
        loop {
            if s.shutdown {
                return None;
            }
            match s.restore_due {
                None => self.cv.wait(&mut s),
                Some(due) if Instant::now() < due => {
                    self.cv.wait_until(&mut s, due);
                }
                Some(_) => {
                    s.restore_due = None;
                    return Some(self.generation());
                }
            }
        }
    }

    /// After a restore pass that started at generation `gen`: resumes the
    /// queues if the pass succeeded and nothing was evicted since; otherwise
    /// schedules another attempt. Returns `Some(retried)` when it resumed.
    pub fn finish_restore(&self, gen: u64, ok: bool) -> Option<bool> {
        let mut s = self.state.lock();
        if ok && self.generation() == gen && s.restore_due.is_none() {
            let retried = s.attempts > 0;
            s.attempts = 0;
            if s.paused {
                s.paused = false;
                self.paused.store(false, Ordering::Release);
                self.restores.fetch_add(1, Ordering::Relaxed);
            }
            self.cv.notify_all();
            return Some(retried);
        }
        s.attempts += 1;
        self.restore_retries.fetch_add(1, Ordering::Relaxed);
        s.restore_due.get_or_insert(Instant::now() + RESTORE_DELAY);
        None
    }

    pub fn shutdown(&self) {
        let mut s = self.state.lock();
        s.shutdown = true;
        self.cv.notify_all();
    }
}

/// Shared by every region of one `Svm`: the event bus, the queue control of
/// each device, and the clock events and fault timestamps use.
#[derive(Debug)]
pub(crate) struct Notifier {
    pub events: EventBus,
    pub queues: Box<[QueueCtl]>,
    epoch: Instant,
}

impl Notifier {
    pub fn new(ndevices: usize) -> Notifier {
        Notifier {
            events: EventBus::new(),
            queues: (0..ndevices).map(|_| QueueCtl::default()).collect(),
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since this `Svm` started.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Evicts device `d`'s queues (see the module docs).
    pub fn evict(&self, d: usize) {
        let q = &self.queues[d];
        let mut s = q.state.lock();
        q.generation.fetch_add(1, Ordering::AcqRel);
        if !s.paused {
            s.paused = true;
            q.paused.store(true, Ordering::Release);
            q.evictions.fetch_add(1, Ordering::Relaxed);
            self.events.emit(EventKind::QueueEviction {
                dev: DeviceId(d as u8),
                trigger: EvictTrigger::Svm,
            });
        }
        s.restore_due = Some(Instant::now() + RESTORE_DELAY);
        q.cv.notify_all();
    }

    /// Reports that device `d` lost `pages` translations from `start`.
    pub fn unmapped(&self, d: usize, start: VirtAddr, pages: u64, trigger: UnmapTrigger) {
        self.events.emit_with(|| EventKind::UnmapFromDevice {
            dev: DeviceId(d as u8),
            start,
            pages,
            trigger,
        });
    }
}
