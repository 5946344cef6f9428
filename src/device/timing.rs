//! A timing model for the emulated device: what the same work would take on
//! a real one. The emulated device reads system memory as fast as its own,
//! so wall time cannot tell a migration from a remote access; the model can.
//!
//! **Resources.** A [`TimingProfile`] gives each resource a rate: device
//! memory (HBM), the link to system memory (one rate per direction, plus a
//! round-trip latency per remote access, hidden by the accesses in flight),
//! the fault service (a fixed cost per batch plus one per fault), copy jobs (a
//! setup cost plus their bytes over the link) and TLB misses.
//!
//! **What charges what.** Every charge is a count of bytes or events, kept in
//! atomics; times are computed from the counts with integer arithmetic, so
//! modelled time depends only on the sequence of work, never on this
//! machine's speed or load.
//! - A lane ([`LaneClock`]) counts its device-memory bytes, its remote bytes
//!   each way (a remote access moves at least [`TimingProfile::remote_min_bytes`]
//!   over the link), its remote accesses, its misses of a modelled TLB of
//!   2 MiB entries, and the time it stalled on faults. Its *critical path* is
//!   `device bytes / (HBM / lanes)` (a lane stands for its share of the
//!   device's compute units) `+ remote bytes / link + accesses · latency ·
//!   lanes / in-flight + misses · TLB cost + stalls`.
//! - A copy job costs `setup + to-device bytes / link h→d + to-host bytes /
//!   link d→h + zero-filled bytes / HBM` on the *engine timeline*, a serial
//!   sum: engines share the link, so two engines moving `x` bytes each take
//!   the time of `2x`. A fault batch adds `fixed + faults · per-fault` there.
//! - A lane that posts a fault is charged, as a stall, the engine time
//!   charged while it waited (the batch that served it, the copies it made,
//!   and whatever the engines did meanwhile, such as fault-ahead copies).
//!   With one lane and no fault-ahead this is exactly its own batches and
//!   copies, and repeated runs model the same time; with several lanes, or
//!   fault-ahead racing a sweep, the order the engines ran in (and so the
//!   figure) can vary a little between runs.
//!
//! **A launch** takes the maximum of its resources' busy times over the
//! launch: each lane's critical path, the link's bytes each way (lanes'
//! remote traffic plus copies), HBM's bytes, and the engine timeline. Work
//! done outside any launch (API migrations, CPU faults pulling pages home)
//! is charged serially. The device's modelled time is the sum of both;
//! overlapping launches on one device are each counted in full.
//!
//! **Device reads and writes** through a `DeviceHandle` (outside any
//! kernel) are charged as one lane of their own ([`Clock::host_access`]):
//! each contiguous copy is one access, remote over the link when the page
//! is in system memory (at least [`TimingProfile::remote_min_bytes`] each,
//! plus the round-trip latency shared by the accesses in flight), device
//! bytes at HBM speed when it is resident. Outside a launch that time is
//! serial; during one, its bytes load the launch's link and HBM.
//!
//! Compute is free: the model is of memory, as the workloads it judges are
//! bound by it.
//!
//! **Throttle mode** (`SvmBuilder::throttle`, off by default; for demos):
//! the device sleeps so that its wall time since throttling began is at
//! least its modelled time since then. It paces at the points where
//! modelled time grows: the end of a launch, a copy job or fault batch
//! charged outside launches (on the engine or fault thread that ran it),
//! and a device read or write. Nothing else changes: the modelled figures
//! are the same with the mode on or off.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::addr::AccessKind;
use crate::error::{Error, Result};

/// Rates of a modelled device; see the module docs. A rate of 0 makes its
/// resource free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TimingProfile {
    /// The preset's name (`custom` for hand-made ones).
    pub name: &'static str,
    /// Device-memory bandwidth, bytes per second.
    pub hbm_bytes_per_sec: u64,
    /// Link bandwidth host → device (remote reads, migrations to the device).
    pub link_h2d_bytes_per_sec: u64,
    /// Link bandwidth device → host (remote writes, migrations home).
    pub link_d2h_bytes_per_sec: u64,
    /// Round trip of one remote access, ns.
    pub link_latency_ns: u64,
    /// Remote accesses the whole device keeps in flight (hides latency).
    pub remote_in_flight: u32,
    /// Fewest bytes one remote access moves over the link (a cache line).
    pub remote_min_bytes: u32,
    /// Setup of one copy job, ns.
    pub copy_setup_ns: u64,
    /// Fixed cost of servicing one fault batch, ns.
    pub fault_batch_ns: u64,
    /// Cost per fault of a batch, ns.
    pub fault_ns: u64,
    /// One miss of the modelled device TLB, ns: a page walk, partly hidden
    /// by the other requests in flight. The model gives each lane
    /// [`MODEL_TLB_ENTRIES`] entries of 2 MiB (real GPUs map managed memory
    /// with 2 MiB pages), so a sweep misses once per block, and random
    /// access to a table past the TLB's reach misses on most accesses.
    pub tlb_miss_ns: u64,
}

impl Default for TimingProfile {
    fn default() -> Self {
        TimingProfile::none()
    }
}

impl TimingProfile {
    /// Names [`TimingProfile::by_name`] knows.
    pub const NAMES: [&'static str; 5] = ["none", "pcie4", "pcie5", "coherent", "apu"];

    /// No model: everything is free, modelled time stays 0 (the default).
    pub const fn none() -> TimingProfile {
        TimingProfile {
            name: "none",
            hbm_bytes_per_sec: 0,
            link_h2d_bytes_per_sec: 0,
            link_d2h_bytes_per_sec: 0,
            link_latency_ns: 0,
            remote_in_flight: 1,
            remote_min_bytes: 0,
            copy_setup_ns: 0,
            fault_batch_ns: 0,
            fault_ns: 0,
            tlb_miss_ns: 0,
        }
    }

    /// A discrete GPU on PCIe 4.0 x16, A100-40GB-like. HBM2 1,555 GB/s
    /// (NVIDIA A100 datasheet); the link is 31.5 GB/s each way raw, about
    /// 25 GB/s achieved by bulk copies (nvbandwidth / bandwidthTest figures);
    /// about 1 µs per remote round trip. Fault batches: 30 µs fixed + 0.5 µs
    /// per fault, so a 2 MiB fault costs about 115 µs with its copy, inside
    /// the 100–500 µs published for UVM far faults (Allen & Ge, SC'21).
    pub const fn pcie4() -> TimingProfile {
        TimingProfile {
            name: "pcie4",
            hbm_bytes_per_sec: 1_555_000_000_000,
            link_h2d_bytes_per_sec: 25_000_000_000,
            link_d2h_bytes_per_sec: 25_000_000_000,
            link_latency_ns: 1_000,
            remote_in_flight: 256,
            remote_min_bytes: 64,
            copy_setup_ns: 5_000,
            fault_batch_ns: 30_000,
            fault_ns: 500,
            tlb_miss_ns: 100,
        }
    }

    /// A discrete GPU on PCIe 5.0 x16, H100-like. HBM3 3.35 TB/s (H100 SXM;
    /// H200 reaches 4.8 TB/s); the link is 63 GB/s each way raw, about
    /// 50 GB/s achieved; about 0.9 µs per remote round trip; fault service
    /// as [`TimingProfile::pcie4`] less a little faster host.
    pub const fn pcie5() -> TimingProfile {
        TimingProfile {
            name: "pcie5",
            hbm_bytes_per_sec: 3_350_000_000_000,
            link_h2d_bytes_per_sec: 50_000_000_000,
            link_d2h_bytes_per_sec: 50_000_000_000,
            link_latency_ns: 900,
            remote_in_flight: 256,
            remote_min_bytes: 64,
            copy_setup_ns: 5_000,
            fault_batch_ns: 25_000,
            fault_ns: 400,
            tlb_miss_ns: 100,
        }
    }

    /// A cache-coherent CPU–GPU link, Grace Hopper-like: NVLink-C2C is
    /// 450 GB/s each way raw (NVIDIA Grace Hopper architecture whitepaper);
    /// measured about 375 GB/s host → device and 297 GB/s device → host
    /// (published GH200 characterisations); HBM3 4 TB/s; remote accesses
    /// are cache-line loads of about 0.8 µs.
    pub const fn coherent() -> TimingProfile {
        TimingProfile {
            name: "coherent",
            hbm_bytes_per_sec: 4_000_000_000_000,
            link_h2d_bytes_per_sec: 375_000_000_000,
            link_d2h_bytes_per_sec: 297_000_000_000,
            link_latency_ns: 800,
            remote_in_flight: 512,
            remote_min_bytes: 64,
            copy_setup_ns: 3_000,
            fault_batch_ns: 20_000,
            fault_ns: 300,
            tlb_miss_ns: 100,
        }
    }

    /// An APU with one shared memory, MI300A-like: 5.3 TB/s HBM3 (AMD
    /// Instinct MI300A datasheet) serves both sides, so "remote" accesses
    /// and migrations run at memory speed with no link latency; faults
    /// still cost the driver's service (as [`TimingProfile::coherent`]).
    pub const fn apu() -> TimingProfile {
        TimingProfile {
            name: "apu",
            hbm_bytes_per_sec: 5_300_000_000_000,
            link_h2d_bytes_per_sec: 5_300_000_000_000,
            link_d2h_bytes_per_sec: 5_300_000_000_000,
            link_latency_ns: 0,
            remote_in_flight: 512,
            remote_min_bytes: 64,
            copy_setup_ns: 2_000,
            fault_batch_ns: 20_000,
            fault_ns: 300,
            tlb_miss_ns: 50,
        }
    }

    /// The preset called `name` (any case); an unknown name is an error
    /// that lists the known ones.
    pub fn by_name(name: &str) -> Result<TimingProfile> {
        match name.to_ascii_lowercase().as_str() {
            "none" => Ok(TimingProfile::none()),
            "pcie4" => Ok(TimingProfile::pcie4()),
            "pcie5" => Ok(TimingProfile::pcie5()),
            "coherent" => Ok(TimingProfile::coherent()),
            "apu" => Ok(TimingProfile::apu()),
            _ => Err(Error::Config(format!(
                "unknown timing profile `{name}`: use one of {}",
                TimingProfile::NAMES.join(", ")
            ))),
        }
    }

    /// Whether the profile charges nothing at all.
    pub fn is_none(&self) -> bool {
        [
            self.hbm_bytes_per_sec,
            self.link_h2d_bytes_per_sec,
            self.link_d2h_bytes_per_sec,
            self.link_latency_ns,
            self.copy_setup_ns,
            self.fault_batch_ns,
            self.fault_ns,
            self.tlb_miss_ns,
        ]
        .iter()
        .all(|&v| v == 0)
    }

    /// Refuses a profile the model cannot use.
    pub fn validate(&self) -> Result<()> {
        if self.remote_in_flight == 0 {
            return Err(Error::Config(format!(
                "timing profile `{}`: remote_in_flight is 0; use at least 1",
                self.name
            )));
        }
        Ok(())
    }

    /// Picoseconds to move `bytes` at `rate` bytes per second (0: free).
    pub fn transfer_ps(bytes: u64, rate: u64) -> u64 {
        if rate == 0 {
            return 0;
        }
        (bytes as u128 * 1_000_000_000_000 / rate as u128).min(u64::MAX as u128) as u64
    }

    /// Modelled time of one copy job.
    pub fn copy_ps(&self, to_device: u64, to_host: u64, filled: u64) -> u64 {
        if to_device + to_host + filled == 0 {
            return 0;
        }
        self.copy_setup_ns * 1000
            + Self::transfer_ps(to_device, self.link_h2d_bytes_per_sec)
            + Self::transfer_ps(to_host, self.link_d2h_bytes_per_sec)
            + Self::transfer_ps(filled, self.hbm_bytes_per_sec)
    }

    /// Modelled service time of one fault batch of `faults` faults.
    pub fn fault_batch_ps(&self, faults: u64) -> u64 {
        (self.fault_batch_ns + faults * self.fault_ns) * 1000
    }
}

/// Sets profile `p` on every device of `devices`; one that keeps no clock
/// refuses any profile but `none`.
pub fn apply(devices: &[std::sync::Arc<dyn super::Device>], p: TimingProfile) -> Result<()> {
    p.validate()?;
    for d in devices {
        match d.clock() {
            Some(c) => c.set_profile(p)?,
            None if p.is_none() => {}
            None => {
                return Err(Error::Config(format!(
                    "device {} has no timing model, so timing profile `{}` cannot apply: \
                     use profile none, or emulated devices only",
                    d.name(),
                    p.name
                )))
            }
        }
    }
    Ok(())
}

/// Turns throttle mode on for every device of `devices` (see the module
/// docs); one that keeps no clock is refused.
pub fn throttle(devices: &[std::sync::Arc<dyn super::Device>]) -> Result<()> {
    for d in devices {
        match d.clock() {
            Some(c) => c.set_throttle(true),
            None => {
                return Err(Error::Config(format!(
                    "device {} has no timing model, so throttle mode cannot pace it: \
                     turn throttle off, or use emulated devices only",
                    d.name()
                )))
            }
        }
    }
    Ok(())
}

/// Modelled time of every copy job so far on `devices`, ps (an interval's
/// part is the difference of two readings).
pub fn copies_ps(devices: &[std::sync::Arc<dyn super::Device>]) -> u64 {
    devices
        .iter()
        .filter_map(|d| d.clock())
        .map(|c| c.copy_ps.load(Relaxed))
        .sum()
}

fn ps(ps: u64) -> Duration {
    Duration::from_nanos(ps / 1000)
}

fn ser_us<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e6)
}

/// Entries of the modelled per-lane device TLB, each mapping one 2 MiB block.
pub const MODEL_TLB_ENTRIES: usize = 32;

/// What one lane did, as the model counts it (plain fields: a lane is one
/// thread).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneClock {
    /// Bytes the lane read and wrote in device memory.
    pub device_bytes: u64,
    /// Bytes the lane read from system memory over the link.
    pub remote_read_bytes: u64,
    /// Bytes the lane wrote to system memory over the link.
    pub remote_write_bytes: u64,
    /// Bytes over the link each way (each access at least the minimum).
    pub wire_read_bytes: u64,
    /// Bytes over the link towards the host (each access at least the minimum).
    pub wire_write_bytes: u64,
    /// Accesses to system memory over the link.
    pub remote_accesses: u64,
    /// Misses in the lane's modelled TLB ([`MODEL_TLB_ENTRIES`] 2 MiB entries).
    pub tlb_misses: u64,
    /// Picoseconds waited for fault service.
    pub stall_ps: u64,
    /// The modelled TLB: 2 MiB block number + 1 per entry (0: empty).
    tlb: [u64; MODEL_TLB_ENTRIES],
}

impl LaneClock {
    /// Counts an access of `n` bytes to device memory or, `remote`, to
    /// system memory over the link (an atomic goes both ways); a remote
    /// access moves at least `min` bytes.
    #[inline]
    pub fn access(&mut self, remote: bool, kind: AccessKind, n: usize, min: u32) {
        let n = n as u64;
        if !remote {
            self.device_bytes += n;
            return;
        }
        let wire = n.max(min as u64);
        self.remote_accesses += 1;
        if kind != AccessKind::Write {
            self.remote_read_bytes += n;
            self.wire_read_bytes += wire;
        }
        if kind != AccessKind::Read {
            self.remote_write_bytes += n;
            self.wire_write_bytes += wire;
        }
    }

    /// The lane's critical path under `p`, on a device of `lanes` lanes.
    pub fn path_ps(&self, p: &TimingProfile, lanes: u64) -> u64 {
        let lanes = lanes.max(1);
        let hbm = TimingProfile::transfer_ps(self.device_bytes * lanes, p.hbm_bytes_per_sec);
        let link = TimingProfile::transfer_ps(self.wire_read_bytes, p.link_h2d_bytes_per_sec)
            + TimingProfile::transfer_ps(self.wire_write_bytes, p.link_d2h_bytes_per_sec);
        let latency =
            (self.remote_accesses as u128 * p.link_latency_ns as u128 * 1000 * lanes as u128
                / p.remote_in_flight.max(1) as u128) as u64;
        hbm + link + latency + self.tlb_misses * p.tlb_miss_ns * 1000 + self.stall_ps
    }

    /// The lane walked the page table for virtual page `vpn` (its own small
    /// TLB missed); a miss of the modelled TLB too is counted.
    #[inline]
    pub fn tlb_walk(&mut self, vpn: u64) {
        let tag = (vpn >> 9) + 1;
        let slot = &mut self.tlb[tag as usize % MODEL_TLB_ENTRIES];
        if *slot != tag {
            *slot = tag;
            self.tlb_misses += 1;
        }
    }

    /// Charges, as a stall, the engine time `clock` gained since `mark`
    /// (an [`Clock::engine_mark`] taken before posting a fault).
    pub fn stall_since(&mut self, clock: Option<&Clock>, mark: Option<u64>) {
        if let (Some(c), Some(m)) = (clock, mark) {
            self.stall_ps += c.engine_mark().saturating_sub(m);
        }
    }

    fn fold(&mut self, o: &LaneClock) {
        self.device_bytes += o.device_bytes;
        self.remote_read_bytes += o.remote_read_bytes;
        self.remote_write_bytes += o.remote_write_bytes;
        self.wire_read_bytes += o.wire_read_bytes;
        self.wire_write_bytes += o.wire_write_bytes;
        self.remote_accesses += o.remote_accesses;
        self.tlb_misses += o.tlb_misses;
        self.stall_ps += o.stall_ps;
    }
}

/// The resource that bounded a launch's modelled time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Nothing was charged (profile `none`, or no work).
    #[default]
    Nothing,
    /// The slowest lane's own accesses and stalls.
    Lanes,
    /// The link towards the device (remote reads, copies to the device).
    LinkToDevice,
    /// The link towards the host (remote writes, copies to system memory).
    LinkToHost,
    /// The device's memory bandwidth (all lanes together).
    DeviceMemory,
    /// Fault service and copy jobs, one after another.
    Engines,
}

/// The model's account of one launch.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaunchTiming {
    /// Modelled duration of the launch.
    #[serde(serialize_with = "ser_us", rename = "modelled_us")]
    pub modelled: Duration,
    /// The resource that took longest, and so set `modelled`.
    pub bound: Bound,
    /// Bytes the lanes read from system memory over the link.
    pub remote_read_bytes: u64,
    /// Bytes the lanes wrote to system memory over the link.
    pub remote_write_bytes: u64,
    /// Bytes the lanes moved to and from device memory.
    pub device_bytes: u64,
    /// Bytes copy jobs moved to the device during the launch.
    pub copied_to_device_bytes: u64,
    /// Bytes copy jobs moved to system memory during the launch.
    pub copied_to_host_bytes: u64,
    /// Modelled TLB misses of all lanes.
    pub tlb_misses: u64,
    /// Engine time (fault service and copies) charged during the launch.
    #[serde(serialize_with = "ser_us", rename = "engine_us")]
    pub engine: Duration,
}

/// The model's totals for one device; [`TimingReport::since`] gives the
/// part of an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TimingReport {
    /// The name of the profile in force (`"pcie4"`, `"none"`, ...).
    pub profile: &'static str,
    /// Modelled time of everything so far: launches plus work outside them.
    #[serde(serialize_with = "ser_us", rename = "modelled_us")]
    pub modelled: Duration,
    /// The launches' part of it.
    #[serde(serialize_with = "ser_us", rename = "launches_us")]
    pub launches: Duration,
    /// Modelled time of every copy job (migrations, wherever they ran).
    #[serde(serialize_with = "ser_us", rename = "copies_us")]
    pub copies: Duration,
    /// Modelled time of every fault batch.
    #[serde(serialize_with = "ser_us", rename = "fault_service_us")]
    pub fault_service: Duration,
    /// Bytes copy jobs moved to the device.
    pub copied_to_device_bytes: u64,
    /// Bytes copy jobs moved to system memory.
    pub copied_to_host_bytes: u64,
    /// Bytes lanes read from system memory over the link.
    pub remote_read_bytes: u64,
    /// Bytes lanes wrote to system memory over the link.
    pub remote_write_bytes: u64,
    /// Bytes lanes moved to and from device memory.
    pub device_bytes: u64,
    /// Fault batches serviced.
    pub fault_batches: u64,
    /// Modelled TLB misses of all lanes.
    pub tlb_misses: u64,
}

impl TimingReport {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &TimingReport) -> TimingReport {
        TimingReport {
            profile: self.profile,
            modelled: self.modelled.saturating_sub(earlier.modelled),
            launches: self.launches.saturating_sub(earlier.launches),
            copies: self.copies.saturating_sub(earlier.copies),
            fault_service: self.fault_service.saturating_sub(earlier.fault_service),
            copied_to_device_bytes: self.copied_to_device_bytes - earlier.copied_to_device_bytes,
            copied_to_host_bytes: self.copied_to_host_bytes - earlier.copied_to_host_bytes,
            remote_read_bytes: self.remote_read_bytes - earlier.remote_read_bytes,
            remote_write_bytes: self.remote_write_bytes - earlier.remote_write_bytes,
            device_bytes: self.device_bytes - earlier.device_bytes,
            fault_batches: self.fault_batches - earlier.fault_batches,
            tlb_misses: self.tlb_misses - earlier.tlb_misses,
        }
    }
}

/// One device's modelled clock; see the module docs.
#[derive(Debug, Default)]
pub struct Clock {
    profile: parking_lot::RwLock<TimingProfile>,
    /// Launches running now (work outside them is charged serially).
    launches_running: AtomicU32,
    /// All traffic, for the launch spans: bytes over the link each way
    /// (lanes' wire bytes and copies) and through device memory.
    h2d_bytes: AtomicU64,
    d2h_bytes: AtomicU64,
    hbm_bytes: AtomicU64,
    /// The engine timeline: fault batches and copy jobs, ps.
    engine_ps: AtomicU64,
    copy_ps: AtomicU64,
    fault_ps: AtomicU64,
    serial_ps: AtomicU64,
    launch_ps: AtomicU64,
    copied_to_device: AtomicU64,
    copied_to_host: AtomicU64,
    remote_read: AtomicU64,
    remote_write: AtomicU64,
    device_bytes: AtomicU64,
    fault_batches: AtomicU64,
    tlb_misses: AtomicU64,
    /// Throttle mode: when it began, and the modelled time then (ps).
    throttle: parking_lot::Mutex<Option<(Instant, u64)>>,
}

impl Clock {
    /// A clock at zero charging at `profile`'s rates.
    pub fn new(profile: TimingProfile) -> Clock {
        Clock {
            profile: parking_lot::RwLock::new(profile),
            ..Default::default()
        }
    }

    /// The rates in force.
    pub fn profile(&self) -> TimingProfile {
        *self.profile.read()
    }

    /// Changes the rates from now on (what was charged stays).
    pub fn set_profile(&self, p: TimingProfile) -> Result<()> {
        p.validate()?;
        *self.profile.write() = p;
        Ok(())
    }

    fn engine(&self, t: u64) {
        self.engine_ps.fetch_add(t, Relaxed);
        if self.launches_running.load(Relaxed) == 0 {
            self.serial_ps.fetch_add(t, Relaxed);
            self.pace();
        }
    }

    /// Modelled time so far, ps (launches plus work outside them).
    pub fn modelled_ps(&self) -> u64 {
        self.launch_ps.load(Relaxed) + self.serial_ps.load(Relaxed)
    }

    /// Turns throttle mode on or off (see the module docs); on, it counts
    /// from now.
    pub fn set_throttle(&self, on: bool) {
        *self.throttle.lock() = on.then(|| (Instant::now(), self.modelled_ps()));
    }

    /// Whether throttle mode is on.
    pub fn throttled(&self) -> bool {
        self.throttle.lock().is_some()
    }

    /// Throttle mode: sleeps until wall time since it began is at least the
    /// modelled time since then.
    fn pace(&self) {
        let Some((origin, base)) = *self.throttle.lock() else {
            return;
        };
        let due = ps(self.modelled_ps().saturating_sub(base)) + Duration::from_nanos(1);
        let wall = origin.elapsed();
        if due > wall {
            std::thread::sleep(due - wall);
        }
    }

    /// Charges a device read or write made outside a kernel, counted as one
    /// lane of its own (see the module docs).
    pub fn host_access(&self, lane: &LaneClock) {
        let p = self.profile();
        let t = lane.path_ps(&p, 1);
        self.h2d_bytes.fetch_add(lane.wire_read_bytes, Relaxed);
        self.d2h_bytes.fetch_add(lane.wire_write_bytes, Relaxed);
        self.hbm_bytes.fetch_add(lane.device_bytes, Relaxed);
        self.remote_read.fetch_add(lane.remote_read_bytes, Relaxed);
        self.remote_write
            .fetch_add(lane.remote_write_bytes, Relaxed);
        self.device_bytes.fetch_add(lane.device_bytes, Relaxed);
        if self.launches_running.load(Relaxed) == 0 {
            self.serial_ps.fetch_add(t, Relaxed);
        }
        self.pace();
    }

    /// Charges one copy job's bytes: to device memory over the link, to
    /// host memory over the link, and zero-filled in device memory.
    pub fn copy_job(&self, to_device: u64, to_host: u64, filled: u64) {
        let t = self.profile().copy_ps(to_device, to_host, filled);
        self.h2d_bytes.fetch_add(to_device, Relaxed);
        self.d2h_bytes.fetch_add(to_host, Relaxed);
        self.hbm_bytes.fetch_add(filled, Relaxed);
        self.copied_to_device.fetch_add(to_device, Relaxed);
        self.copied_to_host.fetch_add(to_host, Relaxed);
        self.copy_ps.fetch_add(t, Relaxed);
        self.engine(t);
    }

    /// Charges the service of one fault batch of `faults` faults.
    pub fn fault_batch(&self, faults: u64) {
        let t = self.profile().fault_batch_ps(faults);
        self.fault_batches.fetch_add(1, Relaxed);
        self.fault_ps.fetch_add(t, Relaxed);
        self.engine(t);
    }

    /// The engine timeline now (a lane reads it before and after a fault).
    pub fn engine_mark(&self) -> u64 {
        self.engine_ps.load(Relaxed)
    }

    /// Starts a launch's span.
    pub fn launch_begin(&self) -> LaunchSpan<'_> {
        self.launches_running.fetch_add(1, Relaxed);
        LaunchSpan {
            clock: self,
            profile: self.profile(),
            h2d: self.h2d_bytes.load(Relaxed),
            d2h: self.d2h_bytes.load(Relaxed),
            to_device: self.copied_to_device.load(Relaxed),
            to_host: self.copied_to_host.load(Relaxed),
            engine: self.engine_ps.load(Relaxed),
            lanes: parking_lot::Mutex::new((LaneClock::default(), 0)),
            ended: false,
        }
    }

    /// The totals so far.
    pub fn report(&self) -> TimingReport {
        let launches = self.launch_ps.load(Relaxed);
        TimingReport {
            profile: self.profile().name,
            modelled: ps(launches + self.serial_ps.load(Relaxed)),
            launches: ps(launches),
            copies: ps(self.copy_ps.load(Relaxed)),
            fault_service: ps(self.fault_ps.load(Relaxed)),
            copied_to_device_bytes: self.copied_to_device.load(Relaxed),
            copied_to_host_bytes: self.copied_to_host.load(Relaxed),
            remote_read_bytes: self.remote_read.load(Relaxed),
            remote_write_bytes: self.remote_write.load(Relaxed),
            device_bytes: self.device_bytes.load(Relaxed),
            fault_batches: self.fault_batches.load(Relaxed),
            tlb_misses: self.tlb_misses.load(Relaxed),
        }
    }
}

/// One launch being modelled: lanes fold their clocks in as they finish;
/// [`LaunchSpan::end`] computes the launch's time.
#[derive(Debug)]
pub struct LaunchSpan<'a> {
    clock: &'a Clock,
    profile: TimingProfile,
    h2d: u64,
    d2h: u64,
    to_device: u64,
    to_host: u64,
    engine: u64,
    /// Lanes' counts summed, and the longest critical path.
    lanes: parking_lot::Mutex<(LaneClock, u64)>,
    ended: bool,
}

impl LaunchSpan<'_> {
    /// The profile in force for this launch (lanes read their rates here).
    pub fn profile(&self) -> &TimingProfile {
        &self.profile
    }

    /// Folds in a finished lane of a launch on `lanes` lanes.
    pub fn lane_done(&self, lane: &LaneClock, lanes: u64) {
        let path = lane.path_ps(&self.profile, lanes);
        let c = self.clock;
        c.h2d_bytes.fetch_add(lane.wire_read_bytes, Relaxed);
        c.d2h_bytes.fetch_add(lane.wire_write_bytes, Relaxed);
        c.hbm_bytes.fetch_add(lane.device_bytes, Relaxed);
        c.remote_read.fetch_add(lane.remote_read_bytes, Relaxed);
        c.remote_write.fetch_add(lane.remote_write_bytes, Relaxed);
        c.device_bytes.fetch_add(lane.device_bytes, Relaxed);
        c.tlb_misses.fetch_add(lane.tlb_misses, Relaxed);
        let mut g = self.lanes.lock();
        g.0.fold(lane);
        g.1 = g.1.max(path);
    }

    /// Ends the launch: its modelled time is the busiest resource's.
    pub fn end(mut self) -> LaunchTiming {
        self.ended = true;
        let c = self.clock;
        let p = &self.profile;
        let (sum, path) = *self.lanes.lock();
        let h2d = c.h2d_bytes.load(Relaxed) - self.h2d;
        let d2h = c.d2h_bytes.load(Relaxed) - self.d2h;
        let engine = c.engine_ps.load(Relaxed) - self.engine;
        let candidates = [
            (Bound::Lanes, path),
            (
                Bound::LinkToDevice,
                TimingProfile::transfer_ps(h2d, p.link_h2d_bytes_per_sec),
            ),
            (
                Bound::LinkToHost,
                TimingProfile::transfer_ps(d2h, p.link_d2h_bytes_per_sec),
            ),
            (
                Bound::DeviceMemory,
                TimingProfile::transfer_ps(sum.device_bytes, p.hbm_bytes_per_sec),
            ),
            (Bound::Engines, engine),
        ];
        let (mut bound, mut t) = (Bound::Nothing, 0);
        for (b, v) in candidates {
            if v > t {
                (bound, t) = (b, v);
            }
        }
        c.launch_ps.fetch_add(t, Relaxed);
        c.launches_running.fetch_sub(1, Relaxed);
        c.pace();
        LaunchTiming {
            modelled: ps(t),
            bound,
            remote_read_bytes: sum.remote_read_bytes,
            remote_write_bytes: sum.remote_write_bytes,
            device_bytes: sum.device_bytes,
            copied_to_device_bytes: c.copied_to_device.load(Relaxed) - self.to_device,
            copied_to_host_bytes: c.copied_to_host.load(Relaxed) - self.to_host,
            tlb_misses: sum.tlb_misses,
            engine: ps(engine),
        }
    }
}

impl Drop for LaunchSpan<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.clock.launches_running.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_by_name_and_unknown_names() {
        for n in TimingProfile::NAMES {
            assert_eq!(TimingProfile::by_name(n).expect("a preset").name, n);
        }
        let e = TimingProfile::by_name("pcie9")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("pcie9") && e.contains("pcie4"), "{e}");
        assert!(TimingProfile::none().is_none());
        assert!(!TimingProfile::pcie4().is_none());
    }

    #[test]
    fn transfer_arithmetic() {
        // 25 GB/s: 25 bytes per ns, 1 byte = 40 ps.
        assert_eq!(
            TimingProfile::transfer_ps(25_000, 25_000_000_000),
            1_000_000
        );
        assert_eq!(TimingProfile::transfer_ps(1, 0), 0);
    }
}
