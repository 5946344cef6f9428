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
//! time. Each prefetcher asked for ([`Prefetch`]) gets its own rows, its
//! slowdowns against its own fitting run. Modelled time depends only on the sequence of work; wall time is
//! this machine's. With several runs each figure is the median run's.

use std::time::Instant;

use crate::bench::BenchError;
use crate::workloads::{self, RunConfig, Workload};
use svmem::{DeviceId, EmulatedConfig, Prefetch, Svm, TimingProfile, TimingReport, PAGE_SIZE};

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
        }
    }
}

/// One kernel at one footprint level.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SuiteRow {
    pub kernel: String,
    pub prefetch: &'static str,
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
}

/// The result of [`bench_suite`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteBench {
    pub profile: TimingProfile,
    #[serde(rename = "array_bytes")]
    pub bytes_per_array: u64,
    pub runs: usize,
    pub granularity: u8,
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
    if cfg.levels.is_empty() || cfg.kernels.is_empty() || cfg.runs == 0 || cfg.prefetch.is_empty() {
        return Err(BenchError::Params(
            "the suite needs at least one level, kernel, prefetcher and run".into(),
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

/// One run of `w` at `level`.
fn one(cfg: &SuiteConfig, w: Workload, p: Prefetch, level: f64) -> Result<SuiteRow, BenchError> {
    let ws = w.working_set(cfg.bytes);
    let device_memory = device_memory_for(ws, level);
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "suite0".into(),
            ..EmulatedConfig::with_memory(device_memory)
        })?
        .timing(cfg.profile)
        .build()?;
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
    Ok(SuiteRow {
        kernel: w.name().to_string(),
        prefetch: p.name(),
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
    let mut rows = Vec::new();
    let bar = crate::progress::bar(
        (cfg.kernels.len() * cfg.prefetch.len()) as u64,
        "bench suite: kernels",
    );
    for (&w, &p) in cfg
        .kernels
        .iter()
        .flat_map(|w| cfg.prefetch.iter().map(move |p| (w, p)))
    {
        let first = rows.len();
        for &level in &levels {
            let mut runs = (0..cfg.runs)
                .map(|_| one(cfg, w, p, level))
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
        rows,
    })
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
        "  {:<12} {:<8} {:>6} {:>8} {:>11} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9}",
        "kernel",
        "prefetch",
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
        "evict",
        "wall ms"
    );
    for r in &b.rows {
        println!(
            "  {:<12} {:<8} {:>6.2}x {:>8} {:>11.3} {:>7.2}x {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9.1}",
            r.kernel,
            r.prefetch,
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
            r.wall_ms
        );
    }
    println!("  (bytes in MiB; slowdown: modelled time over the kernel's fitting run)");
}
