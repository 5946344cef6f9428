//! `svmem bench suite`: every workload of [`Workload::SUITE`] at every
//! footprint level, under a timing profile, so that placement, prefetch and
//! eviction can be judged by what they would cost on a real device.
//!
//! A level `x` runs the workload on a fresh `Svm` whose one emulated device
//! has `working set / x` bytes of memory (rounded up to 4 KiB): at 1.0 the
//! working set fits, at 1.5 it is half again as large as device memory. The
//! run is [`workloads::run`] with its defaults (XNACK on, no preferred
//! location, 2 MiB granularity), so the data reaches the device through
//! device faults and, past 1.0, is evicted or served in place.
//!
//! Per row: modelled time (the device's [`TimingReport`] over the run:
//! launches plus migrations outside them), the slowdown against the same
//! kernel's fitting run (the 1.0 level, else the lowest level asked for),
//! bytes migrated each way, bytes the kernels read and wrote in system
//! memory over the link, device faults, fault batches, evictions and wall
//! time. Each combination of prefetcher ([`Prefetch`]), eviction policy
//! ([`Eviction`]) and thrashing mitigation (on: the builder's default
//! thrash window; off: window 0) and thrash streak (evictions in a row
//! before a refault counts as thrashing) asked for gets its own rows, its slowdowns
//! against its own fitting run. Modelled time depends only on the sequence
//! of work; wall time is this machine's. With several runs each figure is
//! the median run's.
//!
//! Two more figures per row:
//! - `first_touch_link_fraction`: how well migrations use the link, in the
//!   model: the time their bytes take at link rate (each way) over the
//!   engine time spent on them (copy jobs, with their setup, plus the fault
//!   batches that asked for them). Lanes wait for exactly that engine time
//!   when they fault, so at the fitting level (every byte moved once, on
//!   first touch) it is the fraction of link bandwidth the first touch
//!   streams at.
//! - The machine's copy limit, measured once per suite with one thread and
//!   with all cores ([`crate::bench::CopyLimit`]); each row's bytes migrated
//!   (both ways) per wall second is reported against both.

use std::time::Instant;

use crate::bench::{BenchError, CopyLimit};
use crate::workloads::{self, RunConfig, Workload};
use svmem::{
    DeviceId, EmulatedConfig, Eviction, Prefetch, Svm, TimingProfile, TimingReport, PAGE_SIZE,
};

const DEV: DeviceId = DeviceId(0);

/// Footprint levels when none are given.
pub const DEFAULT_LEVELS: [f64; 3] = [1.0, 1.25, 1.5];
/// Bytes per array when no size is given.
pub const DEFAULT_SIZE: u64 = 16 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    pub profile: TimingProfile,
    /// Footprints, as multiples of device memory.
    pub levels: Vec<f64>,
    pub kernels: Vec<Workload>,
    /// Bytes per array.
    pub bytes: u64,
    pub runs: usize,
    /// Prefetchers to compare (each row names its own).
    pub prefetch: Vec<Prefetch>,
    /// Fault granularity of every array, log2 pages.
    pub granularity: u8,
    /// Eviction policies to compare.
    pub eviction: Vec<Eviction>,
    /// Thrashing mitigation settings to compare (on: the default window).
    pub mitigation: Vec<bool>,
    /// Thrash streaks to compare (`SvmBuilder::thrash_streak`; matters only
    /// with the mitigation on).
    pub thrash_streak: Vec<u8>,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            profile: TimingProfile::pcie4(),
            levels: DEFAULT_LEVELS.to_vec(),
            kernels: Workload::ALL.to_vec(),
            bytes: DEFAULT_SIZE,
            runs: 1,
            prefetch: vec![Prefetch::None],
            granularity: 9,
            eviction: vec![Eviction::Clock],
            mitigation: vec![true],
            thrash_streak: vec![1],
        }
    }
}

/// One kernel at one footprint level.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SuiteRow {
    pub kernel: String,
    pub prefetch: &'static str,
    pub eviction: &'static str,
    /// Thrashing mitigation (serve refaulted blocks in place) on or off.
    pub mitigation: bool,
    pub thrash_streak: u8,
    pub oversub: f64,
    pub working_set_bytes: u64,
    pub device_memory_bytes: u64,
    pub modelled_ms: f64,
    /// Modelled time over the fitting run's.
    pub slowdown: f64,
    /// Of the modelled time: copy jobs, and fault-batch service.
    pub copies_ms: f64,
    pub fault_service_ms: f64,
    #[serde(rename = "to_device_bytes")]
    pub bytes_to_device: u64,
    #[serde(rename = "to_system_bytes")]
    pub bytes_to_system: u64,
    pub remote_read_bytes: u64,
    pub remote_write_bytes: u64,
    pub device_faults: u64,
    pub fault_batches: u64,
    pub evictions: u64,
    pub wall_ms: f64,
    /// See the module docs.
    pub first_touch_link_fraction: f64,
    /// Bytes migrated both ways per wall second, and over the suite's
    /// one-thread and all-cores copy limits.
    pub migrated_wall_gbps: f64,
    pub migrated_ratio_one_thread: f64,
    pub migrated_ratio_all_cores: f64,
}

/// The result of [`bench_suite`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteBench {
    pub profile: TimingProfile,
    #[serde(rename = "array_bytes")]
    pub bytes_per_array: u64,
    pub runs: usize,
    pub granularity: u8,
    /// The machine's copy limit, one thread and all cores.
    pub copy_limit: CopyLimit,
    pub rows: Vec<SuiteRow>,
}

/// Device memory for `ws` bytes of working set at footprint `level`
/// (whole pages).
pub fn device_memory_for(ws: u64, level: f64) -> u64 {
    let p = PAGE_SIZE as u64;
    ((ws as f64 / level).ceil() as u64)
        .max(p)
        .next_multiple_of(p)
}

fn check(cfg: &SuiteConfig) -> Result<(), BenchError> {
    if cfg.levels.is_empty()
        || cfg.kernels.is_empty()
        || cfg.runs == 0
        || cfg.prefetch.is_empty()
        || cfg.eviction.is_empty()
        || cfg.mitigation.is_empty()
        || cfg.thrash_streak.is_empty()
    {
        return Err(BenchError::Params(
            "the suite needs at least one level, kernel, prefetcher, eviction policy, \
             mitigation setting and run"
                .into(),
        ));
    }
    if cfg.granularity > 9 {
        return Err(BenchError::Params(format!(
            "granularity {}: use 0 (4 KiB) to 9 (2 MiB)",
            cfg.granularity
        )));
    }
    if let Some(l) = cfg.levels.iter().find(|l| !(0.1..=16.0).contains(*l)) {
        return Err(BenchError::Params(format!(
            "footprint level {l}: use multiples of device memory from 0.1 to 16 (e.g. 1.0,1.25,1.5)"
        )));
    }
    if cfg.bytes < 4096 {
        return Err(BenchError::Params(format!(
            "{} bytes per array: use at least 4K",
            cfg.bytes
        )));
    }
    Ok(())
}

/// One combination of policies a row group runs under.
#[derive(Clone, Copy, Debug)]
struct Policies {
    prefetch: Prefetch,
    eviction: Eviction,
    mitigation: bool,
    thrash_streak: u8,
}

/// One run of `w` at `level`.
fn one(
    cfg: &SuiteConfig,
    w: Workload,
    pol: Policies,
    level: f64,
    limit: &CopyLimit,
) -> Result<SuiteRow, BenchError> {
    let p = pol.prefetch;
    let ws = w.working_set(cfg.bytes);
    let device_memory = device_memory_for(ws, level);
    let mut b = Svm::builder()
        .emulated(EmulatedConfig {
            name: "suite0".into(),
            ..EmulatedConfig::with_memory(device_memory)
        })?
        .timing(cfg.profile)
        .eviction(pol.eviction)
        .thrash_streak(pol.thrash_streak);
    if !pol.mitigation {
        b = b.thrash_window(std::time::Duration::ZERO);
    }
    let svm = b.build()?;
    let dev = svm.device(DEV)?;
    dev.set_prefetch(p)?;
    let t0 = dev.timing().unwrap_or_default();
    let s0 = svm.stats();
    let start = Instant::now();
    let run = RunConfig {
        bytes: cfg.bytes,
        granularity: cfg.granularity,
        ..RunConfig::default()
    };
    let label = format!("bench suite: {} {level}x, prefetch {}", w.name(), p.name());
    let rep = crate::trace::traced(&svm, &label, || workloads::run(&svm, w, &run))
        .map_err(|e| BenchError::Params(e.to_string()))?;
    let wall = start.elapsed();
    let t = dev.timing().unwrap_or_default().since(&t0);
    let s1 = svm.stats();
    let prof = &cfg.profile;
    let link_ps = TimingProfile::transfer_ps(t.copied_to_device_bytes, prof.link_h2d_bytes_per_sec)
        + TimingProfile::transfer_ps(t.copied_to_host_bytes, prof.link_d2h_bytes_per_sec);
    let engine = (t.copies + t.fault_service).as_secs_f64();
    let moved = rep.bytes_to_device + rep.bytes_to_system;
    let wall_s = wall.as_secs_f64().max(1e-9);
    let migrated_wall_gbps = moved as f64 / wall_s / 1e9;
    let ratio = |limit: f64| {
        if limit > 0.0 {
            migrated_wall_gbps / limit
        } else {
            0.0
        }
    };
    Ok(SuiteRow {
        kernel: w.name().to_string(),
        prefetch: p.name(),
        eviction: pol.eviction.name(),
        mitigation: pol.mitigation,
        thrash_streak: pol.thrash_streak,
        oversub: level,
        working_set_bytes: ws,
        device_memory_bytes: device_memory,
        modelled_ms: t.modelled.as_secs_f64() * 1e3,
        slowdown: 0.0,
        copies_ms: t.copies.as_secs_f64() * 1e3,
        fault_service_ms: t.fault_service.as_secs_f64() * 1e3,
        bytes_to_device: rep.bytes_to_device,
        bytes_to_system: rep.bytes_to_system,
        remote_read_bytes: t.remote_read_bytes,
        remote_write_bytes: t.remote_write_bytes,
        device_faults: rep.device_faults,
        fault_batches: rep.device_fault_batches,
        evictions: s1.evictions - s0.evictions,
        wall_ms: wall.as_secs_f64() * 1e3,
        first_touch_link_fraction: if engine > 0.0 {
            link_ps as f64 * 1e-12 / engine
        } else {
            0.0
        },
        migrated_wall_gbps,
        migrated_ratio_one_thread: ratio(limit.best()),
        migrated_ratio_all_cores: ratio(limit.all_cores_gbps),
    })
}

/// Runs the suite; see the module docs.
pub fn bench_suite(cfg: &SuiteConfig) -> Result<SuiteBench, BenchError> {
    check(cfg)?;
    let mut levels = cfg.levels.clone();
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    let base_level = if levels.contains(&1.0) {
        1.0
    } else {
        levels[0]
    };
    let limit = measure_copy_limit(cfg.bytes);
    let mut groups = Vec::new();
    for &w in &cfg.kernels {
        for &prefetch in &cfg.prefetch {
            for &eviction in &cfg.eviction {
                for &mitigation in &cfg.mitigation {
                    // Without the mitigation the streak changes nothing.
                    let streaks = if mitigation {
                        &cfg.thrash_streak[..]
                    } else {
                        &cfg.thrash_streak[..1]
                    };
                    for &thrash_streak in streaks {
                        let pol = Policies {
                            prefetch,
                            eviction,
                            mitigation,
                            thrash_streak,
                        };
                        groups.push((w, pol));
                    }
                }
            }
        }
    }
    let mut rows = Vec::new();
    let bar = crate::progress::bar(groups.len() as u64, "bench suite: kernels");
    for (w, pol) in groups {
        let first = rows.len();
        for &level in &levels {
            let mut runs = (0..cfg.runs)
                .map(|_| one(cfg, w, pol, level, &limit))
                .collect::<Result<Vec<_>, _>>()?;
            runs.sort_by(|a, b| a.modelled_ms.total_cmp(&b.modelled_ms));
            rows.push(runs.swap_remove(runs.len() / 2));
        }
        let base = rows[first..]
            .iter()
            .find(|r| r.oversub == base_level)
            .map_or(0.0, |r| r.modelled_ms);
        for r in &mut rows[first..] {
            r.slowdown = if base > 0.0 {
                r.modelled_ms / base
            } else {
                0.0
            };
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(SuiteBench {
        profile: cfg.profile,
        bytes_per_array: cfg.bytes,
        runs: cfg.runs,
        granularity: cfg.granularity,
        copy_limit: limit,
        rows,
    })
}

/// The copy limit on a buffer of the array size, clamped to 16–256 MiB so
/// that it is long enough to time and short enough not to dominate.
fn measure_copy_limit(bytes: u64) -> CopyLimit {
    let n = bytes.clamp(16 << 20, 256 << 20) as usize;
    let src = crate::bench::prefaulted(n);
    let mut dst = crate::bench::prefaulted(n);
    crate::bench::copy_limit(&mut dst, &src)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 20) as f64)
}

/// One line on a run's modelled time, for `svmem run`.
pub fn modelled_line(t: &TimingReport) -> String {
    format!(
        "{:.3} ms on profile {} (copies {:.3} ms, fault service {:.3} ms; remote {} MiB read, {} MiB written)",
        t.modelled.as_secs_f64() * 1e3,
        t.profile,
        t.copies.as_secs_f64() * 1e3,
        t.fault_service.as_secs_f64() * 1e3,
        mib(t.remote_read_bytes),
        mib(t.remote_write_bytes),
    )
}

/// Prints the suite as a table.
pub fn print_table(b: &SuiteBench) {
    let p = &b.profile;
    println!(
        "svmem bench suite: profile {} (HBM {:.0} GB/s, link {:.0}/{:.0} GB/s h->d/d->h, {} ns round trip), \
         {} per array, granularity {}, {} run(s) per row",
        p.name,
        p.hbm_bytes_per_sec as f64 / 1e9,
        p.link_h2d_bytes_per_sec as f64 / 1e9,
        p.link_d2h_bytes_per_sec as f64 / 1e9,
        p.link_latency_ns,
        mib(b.bytes_per_array) + " MiB",
        b.granularity,
        b.runs
    );
    println!(
        "  copy limit: {:.2} GB/s one thread, {:.2} GB/s all {} cores",
        b.copy_limit.best(),
        b.copy_limit.all_cores_gbps,
        b.copy_limit.threads
    );
    println!(
        "  {:<12} {:<8} {:<5} {:<5} {:>6} {:>8} {:>11} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9} {:>5}",
        "kernel",
        "prefetch",
        "evict",
        "mitig",
        "oversub",
        "WS MiB",
        "modelled ms",
        "slowdown",
        "to dev",
        "to sys",
        "rem rd",
        "rem wr",
        "faults",
        "batches",
        "evicts",
        "wall ms",
        "link"
    );
    for r in &b.rows {
        println!(
            "  {:<12} {:<8} {:<5} {:<5} {:>6.2}x {:>8} {:>11.3} {:>7.2}x {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9.1} {:>5.2}",
            r.kernel,
            r.prefetch,
            r.eviction,
            match (r.mitigation, r.thrash_streak) {
                (false, _) => "off".to_string(),
                (true, 1) => "on".to_string(),
                (true, n) => format!("on/{n}"),
            },
            r.oversub,
            mib(r.working_set_bytes),
            r.modelled_ms,
            r.slowdown,
            mib(r.bytes_to_device),
            mib(r.bytes_to_system),
            mib(r.remote_read_bytes),
            mib(r.remote_write_bytes),
            r.device_faults,
            r.fault_batches,
            r.evictions,
            r.wall_ms,
            r.first_touch_link_fraction
        );
    }
    println!(
        "  (bytes in MiB; slowdown: modelled time over the fitting run of the same kernel and \
         policies; link: migrations' link time over their engine time, modelled)"
    );
}
