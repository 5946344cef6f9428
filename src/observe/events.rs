//! Events: a timestamped record of what the memory manager did — migrations,
//! device faults, queue evictions, device unmaps — for tools that watch a
//! running program. The user-space counterpart of AMD KFD's SMI events.
//!
//! An [`EventBus`] belongs to one `Svm`. Any number of observers call
//! [`EventBus::subscribe`] and get an [`EventStream`], the receiving end of a
//! bounded channel. The bus never waits for an observer: when a stream's queue
//! is full, the new event is dropped for that stream alone and counted
//! ([`EventStream::dropped`], [`EventBus::dropped`]), as KFD drops an event when
//! a client's fifo has no room. Dropping the stream unsubscribes it.
//!
//! With no subscriber, [`EventBus::emit`] and [`EventBus::emit_with`] cost one
//! relaxed atomic load; `emit_with` does not even build the event. Callers on
//! hot paths should use `emit_with`.
//!
//! # Event kinds and their KFD counterparts
//!
//! | [`EventKind`]       | KFD SMI event                   | trigger / outcome        |
//! |---------------------|---------------------------------|--------------------------|
//! | `MigrateStart`      | `KFD_SMI_EVENT_MIGRATE_START`   | [`MigrateTrigger`]       |
//! | `MigrateEnd`        | `KFD_SMI_EVENT_MIGRATE_END`     | trigger, `error`         |
//! | `PageFaultStart`    | `KFD_SMI_EVENT_PAGE_FAULT_START`| read or write            |
//! | `PageFaultEnd`      | `KFD_SMI_EVENT_PAGE_FAULT_END`  | [`FaultResolution`]      |
//! | `QueueEviction`     | `KFD_SMI_EVENT_QUEUE_EVICTION`  | [`EvictTrigger`]         |
//! | `QueueRestore`      | `KFD_SMI_EVENT_QUEUE_RESTORE`   | `retried` (KFD's `R`)    |
//! | `UnmapFromDevice`   | `KFD_SMI_EVENT_UNMAP_FROM_GPU`  | [`UnmapTrigger`]         |
//! | `PeerFallback`      | none                            | `from`, `to` devices     |
//!
//! A move between devices over the peer path is one `MigrateStart`/
//! `MigrateEnd` pair from `dev<A>` to `dev<B>`; without a peer path a
//! `PeerFallback` comes first, then the pairs `dev<A>` → `system` and
//! `system` → `dev<B>`.
//!
//! Differences from KFD: addresses are byte addresses (KFD reports page
//! numbers); lengths are counts of 4 KiB pages, as in KFD; timestamps count
//! from the bus's creation on a monotonic clock (KFD uses boot time). Within one
//! stream, timestamps never decrease.
//!
//! # JSON encoding
//!
//! [`Event::to_json_line`] writes one JSON object per event, on one line, with
//! stable field names:
//!
//! - `ts_ns`: number, nanoseconds since the bus was created;
//! - `event`: the kind in snake case (`"migrate_start"`, `"page_fault_end"`, ...);
//! - then the kind's fields, by their Rust names:
//!   - addresses (`start`, `addr`) are hex strings, `"0x7f3a00000000"`, since
//!     64-bit values do not survive every JSON reader as numbers;
//!   - locations (`from`, `to`) are `"system"` or `"dev<N>"`, devices (`dev`)
//!     are `"dev<N>"`, N the decimal [`DeviceId`];
//!   - triggers and resolutions are snake-case strings (`"device_fault"`,
//!     `"mmu_notify_migrate"`, `"migrated"`);
//!   - `pages`, `migrated`, `error` are numbers, `write` and `retried` booleans.
//!
//! ```text
//! {"ts_ns":81234,"event":"migrate_start","start":"0x7f3a00000000","pages":512,"from":"system","to":"dev0","trigger":"explicit"}
//! {"ts_ns":95410,"event":"migrate_end","start":"0x7f3a00000000","pages":512,"migrated":512,"from":"system","to":"dev0","trigger":"explicit","error":0}
//! {"ts_ns":99002,"event":"page_fault_end","dev":"dev1","addr":"0x7f3a00201000","write":true,"resolution":"mapped"}
//! ```

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::addr::{DeviceId, Location, VirtAddr};
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// Why pages migrate (KFD's `KFD_MIGRATE_TRIGGER_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateTrigger {
    /// Moved ahead of use on a placement hint (KFD: `PREFETCH`).
    Prefetch,
    /// A device touched pages it could not reach where they were (KFD:
    /// `PAGEFAULT_GPU`).
    DeviceFault,
    /// The CPU touched pages that live in device memory (KFD: `PAGEFAULT_CPU`).
    CpuFault,
    /// Device memory had to be freed for other pages (KFD: `TTM_EVICTION`).
    Eviction,
    /// The program asked for this migration directly (`Svm::migrate`); KFD
    /// reports such requests as prefetches.
    Explicit,
    /// Pages leave a device that is being released or torn down (no KFD
    /// counterpart).
    Release,
}

/// Why a range stops being mapped on a device (KFD's `KFD_SVM_UNMAP_TRIGGER_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmapTrigger {
    /// The CPU mapping of the range changed underneath (KFD: `MMU_NOTIFY`).
    MmuNotify,
    /// The pages are migrating, so device mappings of the old copy go (KFD:
    /// `MMU_NOTIFY_MIGRATE`).
    MmuNotifyMigrate,
    /// The program unmapped or freed the range (KFD: `UNMAP_FROM_CPU`).
    UnmapFromCpu,
}

/// Why a device's work queues were stopped (KFD's
/// `KFD_QUEUE_EVICTION_TRIGGER_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictTrigger {
    /// Shared virtual memory the queues use is being migrated or unmapped
    /// (KFD: `TRIGGER_SVM`).
    Svm,
    /// The device is suspending (KFD: `TRIGGER_SUSPEND`).
    Suspend,
    /// The device is being reset (KFD reports resets as separate
    /// `GPU_PRE_RESET`/`GPU_POST_RESET` events, not as an eviction trigger).
    Reset,
}

/// How a device page fault ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultResolution {
    /// Pages were migrated to resolve it (KFD's `M` mark).
    Migrated,
    /// Only the device page table was updated; no data moved (KFD's `U` mark).
    Mapped,
    /// Another handler had already resolved the same fault; nothing to do.
    Duplicate,
    /// The fault could not be resolved; the access fails (KFD reports such
    /// faults as a `VMFAULT` event instead).
    Fatal,
}

/// What happened. Addresses are host virtual addresses; `pages` count 4 KiB
/// pages.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A migration of `pages` pages from `start` begins.
    MigrateStart {
        /// Address of the range's first page.
        #[serde(serialize_with = "json::addr")]
        start: VirtAddr,
        /// Pages in the range (4 KiB each).
        pages: u64,
        /// Where the data is.
        #[serde(serialize_with = "json::location")]
        from: Location,
        /// Where it goes.
        #[serde(serialize_with = "json::location")]
        to: Location,
        /// Why it runs.
        trigger: MigrateTrigger,
    },
    /// The migration begun by the matching `MigrateStart` ended; `migrated` of
    /// its `pages` pages moved.
    MigrateEnd {
        /// Address of the range's first page.
        #[serde(serialize_with = "json::addr")]
        start: VirtAddr,
        /// Pages in the range (4 KiB each).
        pages: u64,
        /// Pages that moved.
        migrated: u64,
        /// Where the data was.
        #[serde(serialize_with = "json::location")]
        from: Location,
        /// Where it went.
        #[serde(serialize_with = "json::location")]
        to: Location,
        /// Why it ran.
        trigger: MigrateTrigger,
        /// 0 when it succeeded, else an errno-style code.
        error: i32,
    },
    /// Device `dev` faulted on `addr`.
    PageFaultStart {
        /// The faulting device.
        #[serde(serialize_with = "json::device")]
        dev: DeviceId,
        /// The faulting address.
        #[serde(serialize_with = "json::addr")]
        addr: VirtAddr,
        /// True for a write or atomic, false for a read.
        write: bool,
    },
    /// The fault reported by the matching `PageFaultStart` was handled.
    PageFaultEnd {
        /// The faulting device.
        #[serde(serialize_with = "json::device")]
        dev: DeviceId,
        /// The faulting address.
        #[serde(serialize_with = "json::addr")]
        addr: VirtAddr,
        /// True for a write or atomic, false for a read.
        write: bool,
        /// How it was resolved.
        resolution: FaultResolution,
    },
    /// Device `dev` stopped running its queues.
    QueueEviction {
        /// The device.
        #[serde(serialize_with = "json::device")]
        dev: DeviceId,
        /// Why its queues stopped.
        trigger: EvictTrigger,
    },
    /// Device `dev` runs its queues again.
    QueueRestore {
        /// The device.
        #[serde(serialize_with = "json::device")]
        dev: DeviceId,
        /// The restore needed more than one attempt (KFD's `R` mark).
        retried: bool,
    },
    /// `pages` pages from `start` were removed from device `dev`'s page table.
    UnmapFromDevice {
        /// The device.
        #[serde(serialize_with = "json::device")]
        dev: DeviceId,
        /// Address of the first page removed.
        #[serde(serialize_with = "json::addr")]
        start: VirtAddr,
        /// Pages removed (4 KiB each).
        pages: u64,
        /// Why.
        trigger: UnmapTrigger,
    },
    /// `pages` pages from `start` held by device `from` go to device `to`
    /// through system memory: `to` cannot read `from`'s memory directly
    /// (no peer path, or peer access turned off). Two migrations follow.
    PeerFallback {
        /// The first such page.
        #[serde(serialize_with = "json::addr")]
        start: VirtAddr,
        /// How many pages of that 2 MiB block (from `start` on) take that way.
        pages: u64,
        /// The device that holds them.
        #[serde(serialize_with = "json::device")]
        from: DeviceId,
        /// The device they are going to.
        #[serde(serialize_with = "json::device")]
        to: DeviceId,
    },
}

/// One event, stamped by the bus that emitted it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Nanoseconds since the bus was created, on a monotonic clock.
    pub ts_ns: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The event as one line of JSON, without the trailing newline (see the
    /// [module docs](self) for the encoding).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .expect("an event holds only numbers, booleans and strings; serializing cannot fail")
    }
}

/// The readable JSON forms of addresses, locations and devices.
mod json {
    use serde::Serializer;

    use crate::addr::{DeviceId, Location, VirtAddr};

    pub(super) fn addr<S: Serializer>(a: &VirtAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", a.as_u64()))
    }

    pub(super) fn location<S: Serializer>(l: &Location, s: S) -> Result<S::Ok, S::Error> {
        // `Location`'s Display: "system" or "dev<N>".
        s.collect_str(l)
    }

    pub(super) fn device<S: Serializer>(d: &DeviceId, s: S) -> Result<S::Ok, S::Error> {
        // `DeviceId`'s Display: "dev<N>".
        s.collect_str(d)
    }
}

/// One subscriber as the bus sees it.
struct Subscriber {
    tx: Sender<Event>,
    state: Arc<SubscriberState>,
}

/// What a subscriber and the bus share.
#[derive(Debug)]
struct SubscriberState {
    /// Events this subscriber lost because its queue was full.
    dropped: AtomicU64,
}

/// The bus's state, shared (weakly) with its streams so that dropping a stream
/// unsubscribes it at once.
struct Inner {
    /// Number of entries in `subs`; written only with `subs` locked. The fast
    /// path reads it without the lock.
    live: AtomicUsize,
    subs: Mutex<Vec<Subscriber>>,
    /// Events dropped across all subscribers, gone ones included.
    dropped: AtomicU64,
    epoch: Instant,
}

impl Inner {
    fn set_live(&self, subs: &[Subscriber]) {
        self.live.store(subs.len(), Ordering::Relaxed);
    }

    fn unsubscribe(&self, state: &Arc<SubscriberState>) {
        let mut subs = self.subs.lock();
        subs.retain(|s| !Arc::ptr_eq(&s.state, state));
        self.set_live(&subs);
    }
}

/// The event bus one `Svm` owns: fans each event out to every subscriber
/// without ever blocking the emitter.
pub struct EventBus {
    inner: Arc<Inner>,
}

impl EventBus {
    /// A bus with no subscribers; its clock starts now.
    pub fn new() -> Self {
        EventBus {
            inner: Arc::new(Inner {
                live: AtomicUsize::new(0),
                subs: Mutex::new(Vec::new()),
                dropped: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// Whether any stream is subscribed. Becomes false as soon as the last
    /// stream is dropped.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.inner.live.load(Ordering::Relaxed) != 0
    }

    /// Stamps `kind` and offers it to every subscriber. A subscriber whose queue
    /// is full loses this event (counted); the call never blocks.
    #[inline]
    pub fn emit(&self, kind: EventKind) {
        if self.is_active() {
            self.publish(kind);
        }
    }

    /// Like [`emit`](Self::emit), but builds the event only when someone
    /// listens: with no subscriber, `f` is not called.
    #[inline]
    pub fn emit_with(&self, f: impl FnOnce() -> EventKind) {
        if self.is_active() {
            self.publish(f());
        }
    }

    #[inline(never)]
    fn publish(&self, kind: EventKind) {
        let inner = &*self.inner;
        let mut subs = inner.subs.lock();
        if subs.is_empty() {
            // The last stream went between the check and the lock.
            return;
        }
        // Stamped under the lock, so every stream sees timestamps in order.
        let event = Event {
            ts_ns: inner.elapsed_ns(),
            kind,
        };
        let before = subs.len();
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                s.state.dropped.fetch_add(1, Ordering::Relaxed);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            // A receiver that went away without unsubscribing.
            Err(TrySendError::Disconnected(_)) => false,
        });
        if subs.len() != before {
            inner.set_live(&subs);
        }
    }

    /// A new stream that receives every event emitted from now on, queueing up
    /// to `capacity` of them (at least 1) until it reads them.
    pub fn subscribe(&self, capacity: usize) -> EventStream {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let state = Arc::new(SubscriberState {
            dropped: AtomicU64::new(0),
        });
        let mut subs = self.inner.subs.lock();
        subs.push(Subscriber {
            tx,
            state: Arc::clone(&state),
        });
        self.inner.set_live(&subs);
        drop(subs);
        EventStream {
            rx,
            state,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// Now on the bus's clock: the `ts_ns` an event emitted at this moment
    /// would carry (lets an observer line its own samples up with events).
    pub fn now_ns(&self) -> u64 {
        self.inner.elapsed_ns()
    }

    /// Events dropped because a subscriber's queue was full, summed over all
    /// subscribers this bus has had.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.inner.live.load(Ordering::Relaxed))
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// One subscription: the receiving end of a bounded queue of events. Dropping
/// it unsubscribes.
pub struct EventStream {
    rx: Receiver<Event>,
    state: Arc<SubscriberState>,
    bus: Weak<Inner>,
}

impl EventStream {
    /// The next event, waiting for one; `None` once the bus is gone and the
    /// queue is empty.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or once the
    /// bus is gone and the queue is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Every event queued at the time of the call (not those emitted while it
    /// runs, so it returns even under a steady stream).
    pub fn drain(&self) -> Vec<Event> {
        let queued = self.rx.len();
        let mut out = Vec::with_capacity(queued);
        out.extend((0..queued).map_while(|_| self.rx.try_recv().ok()));
        out
    }

    /// Events this stream lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(&self.state);
        }
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("queued", &self.rx.len())
            .field("capacity", &self.rx.capacity())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Blocking iteration: ends once the bus is gone and the queue is empty.
impl Iterator for EventStream {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

/// Blocking iteration over a borrowed stream (`for e in &stream`).
impl Iterator for &EventStream {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    const _: () = {
        const fn send_sync<T: Send + Sync>() {}
        send_sync::<EventBus>();
        send_sync::<EventStream>();
        send_sync::<Event>();
    };

    fn fault(n: u64) -> EventKind {
        EventKind::PageFaultStart {
            dev: DeviceId(0),
            addr: VirtAddr(n << 12),
            write: false,
        }
    }

    fn addr_of(e: &Event) -> u64 {
        match e.kind {
            EventKind::PageFaultStart { addr, .. } => addr.as_u64() >> 12,
            ref k => panic!("unexpected {k:?}"),
        }
    }

    #[test]
    fn now_ns_is_on_the_events_clock() {
        let bus = EventBus::new();
        let s = bus.subscribe(4);
        let before = bus.now_ns();
        bus.emit(fault(1));
        let after = bus.now_ns();
        let ts = s.recv().unwrap().ts_ns;
        assert!(before <= ts && ts <= after, "{before} <= {ts} <= {after}");
    }

    #[test]
    fn no_subscriber_never_builds_the_event() {
        let bus = EventBus::new();
        assert!(!bus.is_active());
        bus.emit_with(|| panic!("built with nobody listening"));
        bus.emit(fault(1));
        assert_eq!(bus.dropped(), 0);
    }

    #[test]
    fn two_subscribers_receive_everything_in_order() {
        let bus = EventBus::default();
        let a = bus.subscribe(64);
        let b = bus.subscribe(64);
        assert!(bus.is_active());
        for n in 0..50 {
            bus.emit_with(|| fault(n));
        }
        for s in [&a, &b] {
            let got = s.drain();
            assert_eq!(
                got.iter().map(addr_of).collect::<Vec<_>>(),
                (0..50).collect::<Vec<_>>()
            );
            assert!(got.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
            assert_eq!(s.dropped(), 0);
            assert!(s.try_recv().is_none());
        }
    }

    #[test]
    fn full_subscriber_drops_and_counts_while_another_receives() {
        let bus = EventBus::new();
        let slow = bus.subscribe(0); // clamped to 1
        let fast = bus.subscribe(8);
        let reader = std::thread::spawn(move || {
            let got: Vec<u64> = (&fast).map(|e| addr_of(&e)).collect();
            (got, fast.dropped())
        });
        // The slow reader never reads: if emit blocked on it, this would hang.
        for n in 0..1000 {
            bus.emit(fault(n));
            if n % 8 == 7 {
                std::thread::yield_now();
            }
        }
        let total_dropped = bus.dropped();
        drop(bus); // ends the reader's iteration once its queue is empty
        let (got, fast_dropped) = reader.join().unwrap();
        assert_eq!(slow.dropped(), 999);
        assert_eq!(slow.drain().iter().map(addr_of).collect::<Vec<_>>(), [0]);
        assert_eq!(total_dropped, 999 + fast_dropped);
        // Whatever the fast reader got is in order, and its losses are counted.
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(got.len() as u64 + fast_dropped, 1000);
    }

    #[test]
    fn fast_reader_keeps_up_while_a_slow_one_is_full() {
        let bus = EventBus::new();
        let _slow = bus.subscribe(1);
        let fast = bus.subscribe(4);
        for round in 0..100 {
            for i in 0..4 {
                bus.emit(fault(round * 4 + i));
            }
            let got: Vec<u64> = fast.drain().iter().map(addr_of).collect();
            assert_eq!(got, (round * 4..round * 4 + 4).collect::<Vec<_>>());
        }
        assert_eq!(fast.dropped(), 0);
        assert_eq!(bus.dropped(), 399);
    }

    #[test]
    fn dropping_streams_deactivates_the_bus() {
        let bus = EventBus::new();
        let a = bus.subscribe(4);
        let b = bus.subscribe(4);
        drop(a);
        assert!(bus.is_active());
        bus.emit(fault(7));
        assert_eq!(addr_of(&b.recv().unwrap()), 7);
        drop(b);
        assert!(!bus.is_active());
        bus.emit_with(|| panic!("built after the last stream went"));
        // Streams dropped from other threads count too.
        let c = bus.subscribe(4);
        std::thread::spawn(move || drop(c)).join().unwrap();
        assert!(!bus.is_active());
    }

    #[test]
    fn stream_ends_when_the_bus_goes() {
        let bus = EventBus::new();
        let s = bus.subscribe(4);
        bus.emit(fault(3));
        drop(bus);
        assert_eq!(s.recv().map(|e| addr_of(&e)), Some(3));
        assert_eq!(s.recv(), None);
        assert_eq!(s.recv_timeout(Duration::from_secs(5)), None);
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn recv_timeout_times_out_on_a_quiet_bus() {
        let bus = EventBus::new();
        let s = bus.subscribe(1);
        assert_eq!(s.recv_timeout(Duration::from_millis(1)), None);
        assert!(s.drain().is_empty());
        assert!(format!("{s:?} {bus:?}").contains("subscribers: 1"));
    }

    fn json(kind: EventKind) -> serde_json::Map<String, Value> {
        let line = Event { ts_ns: 42, kind }.to_json_line();
        assert!(!line.contains('\n'), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        let obj = v.as_object().unwrap().clone();
        assert_eq!(obj["ts_ns"], 42);
        obj
    }

    fn check(kind: EventKind, want: Value) {
        let got = json(kind);
        let want = want.as_object().unwrap();
        assert_eq!(&got, want);
    }

    #[test]
    fn json_lines_for_every_kind() {
        use serde_json::json as j;
        let a = VirtAddr(0x7f3a_0000_0000);
        check(
            EventKind::MigrateStart {
                start: a,
                pages: 512,
                from: Location::System,
                to: Location::Device(DeviceId(0)),
                trigger: MigrateTrigger::Prefetch,
            },
            j!({"ts_ns": 42, "event": "migrate_start", "start": "0x7f3a00000000", "pages": 512, "from": "system", "to": "dev0", "trigger": "prefetch"}),
        );
        check(
            EventKind::MigrateEnd {
                start: a,
                pages: 512,
                migrated: 500,
                from: Location::Device(DeviceId(1)),
                to: Location::System,
                trigger: MigrateTrigger::CpuFault,
                error: -12,
            },
            j!({"ts_ns": 42, "event": "migrate_end", "start": "0x7f3a00000000", "pages": 512, "migrated": 500, "from": "dev1", "to": "system", "trigger": "cpu_fault", "error": -12}),
        );
        check(
            EventKind::PageFaultStart {
                dev: DeviceId(2),
                addr: a.offset(0x1000),
                write: true,
            },
            j!({"ts_ns": 42, "event": "page_fault_start", "dev": "dev2", "addr": "0x7f3a00001000", "write": true}),
        );
        check(
            EventKind::PageFaultEnd {
                dev: DeviceId(2),
                addr: a,
                write: false,
                resolution: FaultResolution::Duplicate,
            },
            j!({"ts_ns": 42, "event": "page_fault_end", "dev": "dev2", "addr": "0x7f3a00000000", "write": false, "resolution": "duplicate"}),
        );
        check(
            EventKind::QueueEviction {
                dev: DeviceId(0),
                trigger: EvictTrigger::Suspend,
            },
            j!({"ts_ns": 42, "event": "queue_eviction", "dev": "dev0", "trigger": "suspend"}),
        );
        check(
            EventKind::QueueRestore {
                dev: DeviceId(3),
                retried: true,
            },
            j!({"ts_ns": 42, "event": "queue_restore", "dev": "dev3", "retried": true}),
        );
        check(
            EventKind::UnmapFromDevice {
                dev: DeviceId(0),
                start: VirtAddr(0),
                pages: 1,
                trigger: UnmapTrigger::MmuNotifyMigrate,
            },
            j!({"ts_ns": 42, "event": "unmap_from_device", "dev": "dev0", "start": "0x0", "pages": 1, "trigger": "mmu_notify_migrate"}),
        );
        // The stable field order: timestamp, kind, then the kind's fields.
        let line = Event {
            ts_ns: 1,
            kind: EventKind::QueueRestore {
                dev: DeviceId(0),
                retried: false,
            },
        }
        .to_json_line();
        assert_eq!(
            line,
            r#"{"ts_ns":1,"event":"queue_restore","dev":"dev0","retried":false}"#
        );
    }

    fn names<T: serde::Serialize>(xs: &[T]) -> Vec<String> {
        xs.iter()
            .map(|x| {
                serde_json::to_value(x)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn json_names_of_every_trigger() {
        use MigrateTrigger as M;
        assert_eq!(
            names(&[
                M::Prefetch,
                M::DeviceFault,
                M::CpuFault,
                M::Eviction,
                M::Explicit,
                M::Release
            ]),
            [
                "prefetch",
                "device_fault",
                "cpu_fault",
                "eviction",
                "explicit",
                "release"
            ]
        );
        use UnmapTrigger as U;
        assert_eq!(
            names(&[U::MmuNotify, U::MmuNotifyMigrate, U::UnmapFromCpu]),
            ["mmu_notify", "mmu_notify_migrate", "unmap_from_cpu"]
        );
        use EvictTrigger as E;
        assert_eq!(
            names(&[E::Svm, E::Suspend, E::Reset]),
            ["svm", "suspend", "reset"]
        );
        use FaultResolution as F;
        assert_eq!(
            names(&[F::Migrated, F::Mapped, F::Duplicate, F::Fatal]),
            ["migrated", "mapped", "duplicate", "fatal"]
        );
    }
}
