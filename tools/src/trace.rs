//! Traces of what svmem did, in the Chrome trace-event format that Perfetto
//! (ui.perfetto.dev) and chrome://tracing open.
//!
//! A [`Recording`] is what one `Svm` did while a closure ran: every event of
//! its stream ([`Svm::subscribe`]) and samples of [`Svm::memory_usage`] taken
//! every [`SAMPLE_EVERY`] on the same clock ([`Svm::event_clock_ns`]). A
//! [`Tracer`] gathers the recordings of one command (a benchmark builds many
//! `Svm`s, one after another) and writes them as one trace: one process per
//! recording, with these tracks (threads):
//!
//! | track                        | events                                       |
//! |------------------------------|----------------------------------------------|
//! | `migrate system→dev0`        | "X" per migration (explicit, prefetch, device fault, release), one track per direction, `#2`, `#3`… for overlapping ones (copy engines working at once) |
//! | `CPU faults dev0→system`     | "X" per migration a CPU fault started        |
//! | `evictions dev0→system`      | "X" per migration that freed device memory   |
//! | `dev0 fault service`         | "X" per batch of device faults, with counts  |
//! | `dev0 queues`                | "B"/"E": queues evicted until restored       |
//! | `dev0 page table`            | "i" per range unmapped from the device       |
//! | `resident bytes` (counter)   | "C": bytes resident in system memory and on each device |
//!
//! Timestamps (`ts`, `dur`) are microseconds since the tracer started.
//! Migration spans carry `pages`, `migrated_pages` and `migrated_bytes`
//! (migrated pages × 4 KiB: a page the device zero-filled counts, though no
//! byte was copied), `from`, `to`, `trigger` and `error`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use svmem::{Event, EventKind, Location, Svm, PAGE_SIZE};

/// How often a recording samples `memory_usage` while its closure runs.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Events a recording may fall behind by before the stream drops the newest.
pub const EVENT_CAPACITY: usize = 1 << 16;

/// Where the managed data of one `Svm` was at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// On the event clock ([`Svm::event_clock_ns`]).
    pub ts_ns: u64,
    /// Managed bytes resident in system memory.
    pub system_bytes: u64,
    /// Managed bytes resident on each device, by device id.
    pub device_bytes: Vec<u64>,
}

impl Sample {
    fn of(svm: &Svm) -> Sample {
        let u = svm.memory_usage();
        Sample {
            ts_ns: svm.event_clock_ns(),
            system_bytes: u.system_bytes,
            device_bytes: u.devices.iter().map(|d| d.resident_bytes).collect(),
        }
    }
}

/// What one `Svm` did while a closure ran.
#[derive(Clone, Debug)]
pub struct Recording {
    /// Names the trace's process.
    pub label: String,
    /// Nanoseconds from the tracer's start (or the recording's, without a
    /// tracer) to `clock0_ns` on the event clock.
    pub origin_ns: u64,
    /// The event clock when the recording began.
    pub clock0_ns: u64,
    /// Every event received, in order.
    pub events: Vec<Event>,
    /// Residency samples, the first taken before the closure ran and the
    /// last after it returned.
    pub samples: Vec<Sample>,
    /// Events the stream dropped (the recording fell too far behind).
    pub dropped: u64,
}

/// Runs `f` while recording `svm`'s events and residency. `origin_ns` places
/// the recording on a tracer's clock (0 without one).
pub fn record<R>(svm: &Svm, label: &str, origin_ns: u64, f: impl FnOnce() -> R) -> (R, Recording) {
    let clock0_ns = svm.event_clock_ns();
    let stream = svm.subscribe(EVENT_CAPACITY);
    let first = Sample::of(svm);
    let done = AtomicBool::new(false);
    let (result, events, mut samples) = std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let (mut events, mut samples) = (Vec::new(), vec![first]);
            let mut next_sample = Instant::now() + SAMPLE_EVERY;
            while !done.load(Ordering::Acquire) {
                let wait = next_sample.saturating_duration_since(Instant::now());
                if let Some(e) = stream.recv_timeout(wait) {
                    events.push(e);
                }
                if Instant::now() >= next_sample {
                    samples.push(Sample::of(svm));
                    next_sample = Instant::now() + SAMPLE_EVERY;
                }
            }
            (events, samples)
        });
        let result = f();
        done.store(true, Ordering::Release);
        // The collector only reads a stream and takes samples; it cannot
        // panic short of a bug in svmem, which we pass on.
        let (events, samples) = match collector.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        };
        (result, events, samples)
    });
    let mut events = events;
    events.extend(stream.drain());
    samples.push(Sample::of(svm));
    let rec = Recording {
        label: label.to_string(),
        origin_ns,
        clock0_ns,
        events,
        samples,
        dropped: stream.dropped(),
    };
    (result, rec)
}

/// The recordings of one command, written as one trace.
#[derive(Debug)]
pub struct Tracer {
    start: Instant,
    recordings: Mutex<Vec<Recording>>,
}

impl Default for Tracer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracer {
    /// A tracer whose clock starts now.
    pub fn new() -> Tracer {
        Tracer {
            start: Instant::now(),
            recordings: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` while recording `svm`, and keeps the recording.
    pub fn record<R>(&self, svm: &Svm, label: &str, f: impl FnOnce() -> R) -> R {
        let origin = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (r, rec) = record(svm, label, origin, f);
        self.keep(rec);
        r
    }

    /// Keeps a recording made with [`record`].
    pub fn keep(&self, rec: Recording) {
        self.lock().push(rec);
    }

    /// Nanoseconds since the tracer started (the `origin_ns` of a recording
    /// starting now).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Recording>> {
        // A panic while pushing leaves a valid Vec.
        self.recordings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The trace of every recording kept so far.
    pub fn to_json(&self) -> Value {
        chrome_trace(&self.lock())
    }

    /// Writes the trace to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let f = std::fs::File::create(path)?;
        let mut w = std::io::BufWriter::new(f);
        serde_json::to_writer(&mut w, &self.to_json())?;
        std::io::Write::flush(&mut w)
    }
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Turns tracing on for this process: every [`traced`] call records from now
/// on. Returns the process's tracer.
pub fn install() -> &'static Tracer {
    TRACER.get_or_init(Tracer::new)
}

/// The process's tracer, if [`install`] was called.
pub fn installed() -> Option<&'static Tracer> {
    TRACER.get()
}

/// Runs `f`; with tracing on ([`install`]), records `svm` meanwhile. The hook
/// benchmarks and commands put around the work they do on an `Svm`.
pub fn traced<R>(svm: &Svm, label: &str, f: impl FnOnce() -> R) -> R {
    match installed() {
        Some(t) => t.record(svm, label, f),
        None => f(),
    }
}

/// Builds the Chrome trace-event JSON of `recordings` (see the module docs).
pub fn chrome_trace(recordings: &[Recording]) -> Value {
    let mut out = Vec::new();
    let mut dropped = 0;
    for (i, rec) in recordings.iter().enumerate() {
        dropped += rec.dropped;
        Process::new(i as u64 + 1, rec).emit(&mut out);
    }
    json!({
        "traceEvents": out,
        "displayTimeUnit": "ms",
        "otherData": {
            "producer": concat!("svmem ", env!("CARGO_PKG_VERSION")),
            "recordings": recordings.len(),
            "dropped_events": dropped,
        },
    })
}

/// A migration from its start to its end event.
struct Span {
    start_ns: u64,
    end_ns: u64,
    group: String,
    name: String,
    args: Value,
}

/// One recording as a trace process.
struct Process<'a> {
    pid: u64,
    rec: &'a Recording,
    tids: BTreeMap<String, u64>,
}

impl<'a> Process<'a> {
    fn new(pid: u64, rec: &'a Recording) -> Self {
        Process {
            pid,
            rec,
            tids: BTreeMap::new(),
        }
    }

    /// Microseconds on the tracer's clock of an event-clock time.
    fn us(&self, ts_ns: u64) -> f64 {
        let rel = ts_ns.saturating_sub(self.rec.clock0_ns);
        (self.rec.origin_ns.saturating_add(rel)) as f64 / 1e3
    }

    fn tid(&mut self, track: &str) -> u64 {
        let next = self.tids.len() as u64 + 1;
        *self.tids.entry(track.to_string()).or_insert(next)
    }

    fn emit(mut self, out: &mut Vec<Value>) {
        let mut body = Vec::new();
        let end_ns = self
            .rec
            .events
            .last()
            .map_or(0, |e| e.ts_ns)
            .max(self.rec.samples.last().map_or(0, |s| s.ts_ns));
        let spans = self.migrations(end_ns);
        self.lay_out(spans, &mut body);
        self.fault_batches(end_ns, &mut body);
        self.queues_and_unmaps(end_ns, &mut body);
        self.counters(&mut body);
        out.push(json!({
            "ph": "M", "name": "process_name", "pid": self.pid, "tid": 0,
            "args": {"name": format!("svmem {}", self.rec.label)},
        }));
        out.push(json!({
            "ph": "M", "name": "process_sort_index", "pid": self.pid, "tid": 0,
            "args": {"sort_index": self.pid},
        }));
        for (name, tid) in &self.tids {
            out.push(json!({
                "ph": "M", "name": "thread_name", "pid": self.pid, "tid": tid,
                "args": {"name": name},
            }));
            out.push(json!({
                "ph": "M", "name": "thread_sort_index", "pid": self.pid, "tid": tid,
                "args": {"sort_index": tid},
            }));
        }
        out.extend(body);
    }

    /// Pairs each `MigrateEnd` with the earliest open `MigrateStart` of the
    /// same range, direction and trigger. A start without an end (the
    /// recording stopped first) ends at `end_ns`, marked unfinished.
    fn migrations(&self, end_ns: u64) -> Vec<Span> {
        type Key = (u64, u64, String, String, String);
        let mut open: HashMap<Key, Vec<u64>> = HashMap::new();
        let mut spans = Vec::new();
        for e in &self.rec.events {
            match &e.kind {
                EventKind::MigrateStart {
                    start,
                    pages,
                    from,
                    to,
                    trigger,
                } => {
                    let key = (
                        start.as_u64(),
                        *pages,
                        from.to_string(),
                        to.to_string(),
                        name_of(trigger),
                    );
                    open.entry(key).or_default().push(e.ts_ns);
                }
                EventKind::MigrateEnd {
                    start,
                    pages,
                    migrated,
                    from,
                    to,
                    trigger,
                    error,
                } => {
                    let trig = name_of(trigger);
                    let key = (
                        start.as_u64(),
                        *pages,
                        from.to_string(),
                        to.to_string(),
                        trig.clone(),
                    );
                    // An end whose start came before the recording: from
                    // the recording's start.
                    let begun = match open.get_mut(&key) {
                        Some(v) if !v.is_empty() => v.remove(0),
                        _ => self.rec.clock0_ns,
                    };
                    spans.push(Span {
                        start_ns: begun,
                        end_ns: e.ts_ns,
                        group: migration_track(&from.to_string(), &to.to_string(), &trig),
                        name: format!("migrate ({trig})"),
                        args: json!({
                            "start": format!("{:#x}", start.as_u64()),
                            "pages": pages,
                            "migrated_pages": migrated,
                            "migrated_bytes": migrated * PAGE_SIZE as u64,
                            "from": from.to_string(),
                            "to": to.to_string(),
                            "trigger": trig,
                            "error": error,
                        }),
                    });
                }
                _ => {}
            }
        }
        for ((start, pages, from, to, trig), v) in open {
            for begun in v {
                spans.push(Span {
                    start_ns: begun,
                    end_ns: end_ns.max(begun),
                    group: migration_track(&from, &to, &trig),
                    name: format!("migrate ({trig}, unfinished)"),
                    args: json!({
                        "start": format!("{start:#x}"),
                        "pages": pages,
                        "migrated_pages": 0,
                        "migrated_bytes": 0,
                        "from": from,
                        "to": to,
                        "trigger": trig,
                        "unfinished": true,
                    }),
                });
            }
        }
        spans
    }

    /// Puts overlapping spans of one group on tracks of their own (`group`,
    /// `group #2`, …), so spans on one track never overlap.
    fn lay_out(&mut self, mut spans: Vec<Span>, body: &mut Vec<Value>) {
        spans.sort_by_key(|s| (s.start_ns, s.end_ns));
        let mut lanes: HashMap<String, Vec<u64>> = HashMap::new();
        for s in spans {
            let ends = lanes.entry(s.group.clone()).or_default();
            let lane = match ends.iter().position(|&e| e <= s.start_ns) {
                Some(l) => l,
                None => {
                    ends.push(0);
                    ends.len() - 1
                }
            };
            ends[lane] = s.end_ns;
            let track = if lane == 0 {
                s.group.clone()
            } else {
                format!("{} #{}", s.group, lane + 1)
            };
            let tid = self.tid(&track);
            body.push(json!({
                "ph": "X", "name": s.name, "cat": "migration",
                "pid": self.pid, "tid": tid,
                "ts": self.us(s.start_ns),
                "dur": s.end_ns.saturating_sub(s.start_ns) as f64 / 1e3,
                "args": s.args,
            }));
        }
    }

    /// A device's fault batch: from the first fault it starts serving while
    /// none is open to the moment every started fault has ended.
    fn fault_batches(&mut self, end_ns: u64, body: &mut Vec<Value>) {
        #[derive(Default)]
        struct Batch {
            start_ns: u64,
            open: u64,
            faults: u64,
            writes: u64,
            ends: BTreeMap<String, u64>,
        }
        let mut batches: BTreeMap<String, Batch> = BTreeMap::new();
        let mut done = Vec::new();
        for e in &self.rec.events {
            match &e.kind {
                EventKind::PageFaultStart { dev, write, .. } => {
                    let b = batches.entry(dev.to_string()).or_default();
                    if b.open == 0 {
                        *b = Batch {
                            start_ns: e.ts_ns,
                            ..Batch::default()
                        };
                    }
                    b.open += 1;
                    b.faults += 1;
                    b.writes += u64::from(*write);
                }
                EventKind::PageFaultEnd {
                    dev, resolution, ..
                } => {
                    let Some(b) = batches.get_mut(&dev.to_string()) else {
                        continue; // started before the recording
                    };
                    if b.open == 0 {
                        continue;
                    }
                    b.open -= 1;
                    *b.ends.entry(name_of(resolution)).or_default() += 1;
                    if b.open == 0 {
                        done.push((dev.to_string(), std::mem::take(b), e.ts_ns, false));
                    }
                }
                _ => {}
            }
        }
        for (dev, b) in batches {
            if b.open > 0 {
                done.push((dev, b, end_ns, true));
            }
        }
        for (dev, b, end, unfinished) in done {
            let tid = self.tid(&format!("{dev} fault service"));
            let mut args = json!({
                "faults": b.faults,
                "write_faults": b.writes,
            });
            for (k, v) in &b.ends {
                args[k.as_str()] = json!(v);
            }
            if unfinished {
                args["unfinished"] = json!(true);
            }
            body.push(json!({
                "ph": "X", "name": format!("fault batch ({} faults)", b.faults),
                "cat": "fault", "pid": self.pid, "tid": tid,
                "ts": self.us(b.start_ns),
                "dur": end.saturating_sub(b.start_ns) as f64 / 1e3,
                "args": args,
            }));
        }
    }

    /// Queue evictions as "B"/"E" pairs (nested evictions as instants), and
    /// device unmaps as instants.
    fn queues_and_unmaps(&mut self, end_ns: u64, body: &mut Vec<Value>) {
        let mut depth: BTreeMap<String, u64> = BTreeMap::new();
        for e in &self.rec.events {
            let ts = self.us(e.ts_ns);
            match &e.kind {
                EventKind::QueueEviction { dev, trigger } => {
                    let tid = self.tid(&format!("{dev} queues"));
                    let d = depth.entry(dev.to_string()).or_default();
                    *d += 1;
                    let ph = if *d == 1 { "B" } else { "i" };
                    let mut ev = json!({
                        "ph": ph, "name": "queues evicted", "cat": "queue",
                        "pid": self.pid, "tid": tid, "ts": ts,
                        "args": {"trigger": name_of(trigger)},
                    });
                    if ph == "i" {
                        ev["s"] = json!("t");
                        ev["name"] = json!("queues evicted again");
                    }
                    body.push(ev);
                }
                EventKind::QueueRestore { dev, retried } => {
                    let tid = self.tid(&format!("{dev} queues"));
                    let d = depth.entry(dev.to_string()).or_default();
                    match *d {
                        // A restore of an eviction before the recording.
                        0 => body.push(json!({
                            "ph": "i", "s": "t", "name": "queues restored", "cat": "queue",
                            "pid": self.pid, "tid": tid, "ts": ts,
                            "args": {"retried": retried},
                        })),
                        _ => {
                            *d = 0;
                            body.push(json!({
                                "ph": "E", "pid": self.pid, "tid": tid, "ts": ts,
                                "args": {"retried": retried},
                            }));
                        }
                    }
                }
                EventKind::UnmapFromDevice {
                    dev,
                    start,
                    pages,
                    trigger,
                } => {
                    let tid = self.tid(&format!("{dev} page table"));
                    body.push(json!({
                        "ph": "i", "s": "t", "name": "unmap", "cat": "unmap",
                        "pid": self.pid, "tid": tid, "ts": ts,
                        "args": {
                            "start": format!("{:#x}", start.as_u64()),
                            "pages": pages,
                            "trigger": name_of(trigger),
                        },
                    }));
                }
                EventKind::PeerFallback {
                    start,
                    pages,
                    from,
                    to,
                } => {
                    // No peer path: the pages take two migrations through
                    // system memory (on the direction tracks).
                    let tid = self.tid(&format!("peer fallback {from}→{to}"));
                    body.push(json!({
                        "ph": "i", "s": "t", "name": "through system memory",
                        "cat": "peer", "pid": self.pid, "tid": tid, "ts": ts,
                        "args": {
                            "start": format!("{:#x}", start.as_u64()),
                            "pages": pages,
                        },
                    }));
                }
                _ => {}
            }
        }
        // Queues still evicted when the recording stopped.
        for (dev, d) in depth {
            if d > 0 {
                let tid = self.tid(&format!("{dev} queues"));
                body.push(json!({
                    "ph": "E", "pid": self.pid, "tid": tid, "ts": self.us(end_ns),
                    "args": {"unfinished": true},
                }));
            }
        }
    }

    /// "C" events of the bytes resident in system memory and on each device:
    /// the samples, and between samples each finished migration's effect
    /// (never below zero; the next sample corrects any drift).
    fn counters(&mut self, body: &mut Vec<Value>) {
        let ndev = self
            .rec
            .samples
            .iter()
            .map(|s| s.device_bytes.len())
            .max()
            .unwrap_or(0);
        let names: Vec<String> = std::iter::once("system".to_string())
            .chain((0..ndev).map(|d| format!("dev{d}")))
            .collect();
        // Merge samples and migration ends by time; a sample wins a tie.
        enum Point<'e> {
            Sample(&'e Sample),
            Moved(&'e Event),
        }
        let mut points: Vec<(u64, u8, Point<'_>)> = Vec::new();
        for s in &self.rec.samples {
            points.push((s.ts_ns, 1, Point::Sample(s)));
        }
        // The last sample is the final residency: nothing after it counts.
        let final_ns = self.rec.samples.last().map_or(0, |s| s.ts_ns);
        for e in &self.rec.events {
            if let EventKind::MigrateEnd { migrated, .. } = e.kind {
                if migrated > 0 && e.ts_ns < final_ns {
                    points.push((e.ts_ns, 0, Point::Moved(e)));
                }
            }
        }
        points.sort_by_key(|p| (p.0, p.1));
        let mut now = vec![0u64; names.len()];
        let slot = |l: &Location| match l {
            Location::System => Some(0),
            Location::Device(d) => Some(d.0 as usize + 1),
        };
        let mut last: Option<Vec<u64>> = None;
        for (ts, _, p) in points {
            match p {
                Point::Sample(s) => {
                    now[0] = s.system_bytes;
                    for (i, b) in s.device_bytes.iter().enumerate() {
                        now[i + 1] = *b;
                    }
                }
                Point::Moved(e) => {
                    let EventKind::MigrateEnd {
                        migrated, from, to, ..
                    } = &e.kind
                    else {
                        continue;
                    };
                    let bytes = migrated * PAGE_SIZE as u64;
                    if let Some(i) = slot(from).filter(|&i| i < now.len()) {
                        now[i] = now[i].saturating_sub(bytes);
                    }
                    if let Some(i) = slot(to).filter(|&i| i < now.len()) {
                        now[i] += bytes;
                    }
                }
            }
            if last.as_ref() == Some(&now) {
                continue;
            }
            let args: serde_json::Map<String, Value> = names
                .iter()
                .zip(&now)
                .map(|(n, b)| (n.clone(), json!(b)))
                .collect();
            body.push(json!({
                "ph": "C", "name": "resident bytes", "pid": self.pid, "tid": 0,
                "ts": self.us(ts), "args": args,
            }));
            last = Some(now.clone());
        }
    }
}

/// The track of a migration: by direction, with CPU-fault migrations and
/// evictions on tracks of their own.
fn migration_track(from: &str, to: &str, trigger: &str) -> String {
    match trigger {
        // First touch: a fault window filled in place, nothing moved.
        "cpu_fault" if from == to => "CPU faults (first touch)".to_string(),
        "cpu_fault" => format!("CPU faults {from}→{to}"),
        "eviction" => format!("evictions {from}→{to}"),
        _ => format!("migrate {from}→{to}"),
    }
}

/// The snake-case name serde gives a trigger or resolution.
fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "unknown".to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use svmem::observe::events::{EvictTrigger, FaultResolution, MigrateTrigger};
    use svmem::{DeviceId, VirtAddr};

    const DEV: Location = Location::Device(DeviceId(0));

    fn ev(ts_ns: u64, kind: EventKind) -> Event {
        Event { ts_ns, kind }
    }

    fn start(ts: u64, addr: u64, pages: u64) -> Event {
        ev(
            ts,
            EventKind::MigrateStart {
                start: VirtAddr(addr),
                pages,
                from: Location::System,
                to: DEV,
                trigger: MigrateTrigger::DeviceFault,
            },
        )
    }

    fn end(ts: u64, addr: u64, pages: u64) -> Event {
        ev(
            ts,
            EventKind::MigrateEnd {
                start: VirtAddr(addr),
                pages,
                migrated: pages,
                from: Location::System,
                to: DEV,
                trigger: MigrateTrigger::DeviceFault,
                error: 0,
            },
        )
    }

    fn fault(ts: u64, end: bool) -> Event {
        let (dev, addr, write) = (DeviceId(0), VirtAddr(0x1000), false);
        ev(
            ts,
            if end {
                EventKind::PageFaultEnd {
                    dev,
                    addr,
                    write,
                    resolution: FaultResolution::Migrated,
                }
            } else {
                EventKind::PageFaultStart { dev, addr, write }
            },
        )
    }

    fn recording(events: Vec<Event>, samples: Vec<Sample>) -> Recording {
        Recording {
            label: "test".into(),
            origin_ns: 1_000_000,
            clock0_ns: 500,
            events,
            samples,
            dropped: 0,
        }
    }

    fn sample(ts_ns: u64, system: u64, dev: u64) -> Sample {
        Sample {
            ts_ns,
            system_bytes: system,
            device_bytes: vec![dev],
        }
    }

    fn of_phase<'v>(t: &'v Value, ph: &str) -> Vec<&'v Value> {
        t["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == ph)
            .collect()
    }

    #[test]
    fn overlapping_migrations_go_on_tracks_of_their_own() {
        // Two migrations at once, then a third after both.
        let events = vec![
            start(1_000, 0x1000, 512),
            start(2_000, 0x20_0000, 512),
            end(5_000, 0x1000, 512),
            end(6_000, 0x20_0000, 512),
            start(7_000, 0x40_0000, 512),
            end(9_000, 0x40_0000, 512),
        ];
        let t = chrome_trace(&[recording(events, vec![])]);
        let spans = of_phase(&t, "X");
        assert_eq!(spans.len(), 3);
        let tids: Vec<u64> = spans.iter().map(|s| s["tid"].as_u64().unwrap()).collect();
        assert_ne!(tids[0], tids[1]);
        assert_eq!(tids[0], tids[2], "the third reuses the free track");
        // Microseconds from the tracer's start: origin + (ts - clock0).
        assert_eq!(spans[0]["ts"], 1_000.5);
        assert_eq!(spans[0]["dur"], 4.0);
        assert_eq!(spans[0]["args"]["migrated_bytes"], 512 * 4096);
        let names: Vec<&str> = of_phase(&t, "M")
            .iter()
            .filter(|m| m["name"] == "thread_name")
            .filter_map(|m| m["args"]["name"].as_str())
            .collect();
        assert_eq!(names, ["migrate system→dev0", "migrate system→dev0 #2"]);
    }

    #[test]
    fn a_start_without_an_end_is_unfinished_and_fault_batches_count() {
        let events = vec![
            fault(1_000, false),
            fault(1_100, false),
            fault(3_000, true),
            fault(3_100, true),
            start(4_000, 0x1000, 1),
        ];
        let t = chrome_trace(&[recording(events, vec![sample(9_000, 0, 0)])]);
        let spans = of_phase(&t, "X");
        let batch = spans.iter().find(|s| s["cat"] == "fault").unwrap();
        assert_eq!(batch["args"]["faults"], 2);
        assert_eq!(batch["args"]["migrated"], 2);
        assert_eq!(batch["dur"], 2.1);
        let open = spans.iter().find(|s| s["cat"] == "migration").unwrap();
        assert_eq!(open["args"]["unfinished"], true);
        assert_eq!(open["dur"], 5.0, "ends at the last sample");
    }

    #[test]
    fn queue_evictions_pair_and_close_at_the_end() {
        let q = |ts, evict: bool| {
            ev(
                ts,
                if evict {
                    EventKind::QueueEviction {
                        dev: DeviceId(0),
                        trigger: EvictTrigger::Svm,
                    }
                } else {
                    EventKind::QueueRestore {
                        dev: DeviceId(0),
                        retried: false,
                    }
                },
            )
        };
        let events = vec![
            q(1_000, true),
            q(2_000, true),
            q(3_000, false),
            q(4_000, true),
        ];
        let t = chrome_trace(&[recording(events, vec![sample(5_000, 0, 0)])]);
        assert_eq!(of_phase(&t, "B").len(), 2);
        let ends = of_phase(&t, "E");
        assert_eq!(ends.len(), 2, "the last eviction closes at the end");
        assert_eq!(ends[1]["args"]["unfinished"], true);
        assert_eq!(
            of_phase(&t, "i").len(),
            1,
            "the nested eviction is an instant"
        );
    }

    #[test]
    fn counters_follow_migrations_between_samples_and_end_at_the_last_sample() {
        let mib = 1 << 20;
        let events = vec![start(1_500, 0x1000, 256), end(2_000, 0x1000, 256)];
        let samples = vec![sample(1_000, 4 * mib, 0), sample(3_000, 3 * mib, mib)];
        let t = chrome_trace(&[recording(events, samples)]);
        let c: Vec<(u64, u64)> = of_phase(&t, "C")
            .iter()
            .map(|c| {
                (
                    c["args"]["system"].as_u64().unwrap(),
                    c["args"]["dev0"].as_u64().unwrap(),
                )
            })
            .collect();
        // The migration's 1 MiB moves at its end; the last sample agrees,
        // so it adds no point.
        assert_eq!(c, [(4 * mib, 0), (3 * mib, mib)]);
    }
}
