//! `svmem bench faults`: device-fault-driven migration measured against the
//! machine's own memcpy, and the fault service's batch times measured
//! against the cost of migrating one 2 MiB block, all in one process.
//!
//! Per run, on fresh regions:
//! 1. **memcpy**: a single-thread copy of `size` bytes (the sweep region's
//!    bytes, system-resident, into a pre-faulted buffer), the faster of
//!    `memcpy` and a streaming copy ([`crate::bench::CopyLimit`]);
//! 2. **device fault sweep**: the same region (CPU-written, preferred location
//!    device 0, XNACK on) is read by a kernel in [`SWEEP_ITEM_BYTES`] work
//!    items in ascending order, each summed so the reads happen; every page
//!    reaches the device through device faults (and the fault service's
//!    sweep-ahead). Throughput is `size` over the launch's wall time;
//! 3. **block migrate**: `Svm::migrate` of one 2 MiB block of fresh
//!    CPU-written data to the device, [`MIGRATE_BLOCKS`] times (median);
//! 4. **fault service**: on a device with [`SERVICE_LANES`] lanes, work item
//!    `i` reads page `(i % 256) * 2` of block `(i / 256) * 37 mod blocks`, so
//!    all lanes fault on different pages of one block at about the same time,
//!    block after block, in an order fault-ahead cannot predict:
//!    the fault buffer fills while the service thread migrates the previous
//!    block, and batches of 256 faults of one block follow. Its batch times
//!    come from [`svmem::BatchStats`] of a device built for the run.
//!
//! Every sum is checked against the data the CPU wrote.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bench::{
    copy_limit, fill_pattern, gbps, pattern_word, prefaulted, sum_kernel, BenchError, Machine,
    Spread,
};
use svmem::addr::BLOCK_PAGES;
use svmem::Attr;
use svmem::Stats;
use svmem::{DeviceId, Location, BLOCK_SIZE, PAGE_SIZE};
use svmem::{EmulatedConfig, MemoryType};
use svmem::{Region, Svm};

/// Default size of the sweep region: 1 GiB.
pub const DEFAULT_FAULTS_SIZE: u64 = 1 << 30;
/// Bytes one sweep work item reads in bulk.
pub const SWEEP_ITEM_BYTES: u64 = 2 << 20;
/// Lanes of the fault-service device: one full fault batch.
pub const SERVICE_LANES: usize = svmem::MAX_BATCH;
/// 2 MiB blocks the fault-service kernel walks through.
pub const SERVICE_BLOCKS: u64 = 64;
/// Blocks migrated one by one for the block-migrate time.
pub const MIGRATE_BLOCKS: u64 = 16;
/// Device memory beyond what a phase needs.
const HEADROOM: u64 = 64 << 20;
/// Budget a full batch may take beyond one block migration.
pub const FULL_BATCH_SLACK_US: f64 = 100.0;

const DEV: DeviceId = DeviceId(0);
const SWEEP_SEED: u64 = 0x5356_4d45_4d00_f001;
const SERVICE_SEED: u64 = 0x5356_4d45_4d00_f002;
const MIGRATE_SEED: u64 = 0x5356_4d45_4d00_f003;

/// One run of [`bench_faults`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaultsRun {
    /// The copy limit ([`crate::bench::CopyLimit::best`]), and its two parts.
    pub memcpy_gbps: f64,
    pub copy_limit: crate::bench::CopyLimit,
    pub memcpy_ms: f64,
    pub device_fault_sweep_gbps: f64,
    pub device_fault_sweep_ms: f64,
    pub device_fault_sweep_ratio: f64,
    /// Device faults the sweep posted, their batches, and pages the fault
    /// service migrated ahead of it.
    pub sweep_faults: u64,
    pub sweep_batches: u64,
    pub sweep_ahead_pages: u64,
    /// Median of the [`MIGRATE_BLOCKS`] block migrations.
    pub block_migrate_us: f64,
    /// Fault-service kernel: wall time and its batch statistics.
    pub service_ms: f64,
    pub batch_service_p50_us: f64,
    /// `None` when no batch held 256 faults.
    pub full_batch_service_p50_us: Option<f64>,
    pub faults_per_sec: f64,
    pub batches: u64,
    pub full_batches: u64,
    pub faults: u64,
    pub duplicates: u64,
    pub service_pages_to_device: u64,
}

/// Spread of each timing over the runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaultsSpread {
    pub memcpy_gbps: Spread,
    pub memcpy_libc_gbps: Spread,
    pub memcpy_stream_gbps: Spread,
    pub device_fault_sweep_gbps: Spread,
    pub device_fault_sweep_ratio: Spread,
    pub block_migrate_us: Spread,
    pub batch_service_p50_us: Spread,
    /// Over the runs that had full batches.
    pub full_batch_service_p50_us: Spread,
    pub faults_per_sec: Spread,
}

/// The result of [`bench_faults`]: timings are medians over the runs (ratios
/// per run, then the median); counts are totals over all runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultsBench {
    /// Bytes of the sweep region (the requested size rounded up to 4 KiB).
    pub size_bytes: u64,
    pub runs: usize,
    pub memcpy_gbps: f64,
    pub device_fault_sweep_gbps: f64,
    /// `device_fault_sweep_gbps / memcpy_gbps` (target ≥ 0.50).
    pub device_fault_sweep_ratio: f64,
    /// Median service time of all fault batches of the fault-service kernel.
    pub batch_service_p50_us: f64,
    /// Median service time of batches of 256 faults (`None`: there were none).
    pub full_batch_service_p50_us: Option<f64>,
    /// Median time of migrating one 2 MiB block of CPU-written data.
    pub block_migrate_us: f64,
    /// `block_migrate_us + 100`.
    pub full_batch_target_us: f64,
    /// Full batches exist and their median is below the target.
    pub full_batch_within_target: bool,
    /// Faults serviced per second of fault-service busy time.
    pub faults_per_sec: f64,
    pub batches: u64,
    pub full_batches: u64,
    pub faults: u64,
    pub duplicates: u64,
    pub sweep_item_bytes: u64,
    pub sweep_lanes: usize,
    pub service_lanes: usize,
    pub service_blocks: u64,
    pub device_memory_bytes: u64,
    pub copy_engines: usize,
    pub spread: FaultsSpread,
    pub samples: Vec<FaultsRun>,
    /// Counters of the sweep's `Svm` after all runs.
    pub sweep_counters: Stats,
    pub machine: Machine,
}

/// Measures; see the module docs. `size` is the sweep region (device memory
/// is `size` + 64 MiB), `runs` how many times each measurement is taken.
pub fn bench_faults(size: u64, runs: usize) -> Result<FaultsBench, BenchError> {
    if size == 0 {
        return Err(BenchError::Params("size must be at least one byte".into()));
    }
    if runs == 0 {
        return Err(BenchError::Params("runs must be at least 1".into()));
    }
    let size = size.next_multiple_of(PAGE_SIZE as u64);
    let len = usize::try_from(size)
        .map_err(|_| BenchError::Params(format!("size {size} does not fit in memory")))?;
    let sweep_config = EmulatedConfig {
        name: "sweep".into(),
        memory_bytes: size + HEADROOM,
        ..EmulatedConfig::default()
    };
    let (device_memory_bytes, copy_engines, sweep_lanes) = (
        sweep_config.memory_bytes,
        sweep_config.copy_engines,
        sweep_config.compute_units,
    );
    let sweep_svm = Svm::builder().emulated(sweep_config)?.xnack(true).build()?;
    let mut dst = prefaulted(len);
    let mut samples = Vec::with_capacity(runs);
    let bar = crate::progress::bar(runs as u64, "bench faults: runs");
    for run in 0..runs {
        let mut s = FaultsRun::default();
        crate::trace::traced(
            &sweep_svm,
            &format!("bench faults: sweep, run {run}"),
            || sweep(&sweep_svm, len, &mut dst, run, &mut s),
        )?;
        service(run, &mut s)?;
        samples.push(s);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let col = |f: fn(&FaultsRun) -> f64| Spread::of(&samples.iter().map(f).collect::<Vec<_>>());
    let full: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.full_batch_service_p50_us)
        .collect();
    let spread = FaultsSpread {
        memcpy_gbps: col(|s| s.memcpy_gbps),
        memcpy_libc_gbps: col(|s| s.copy_limit.libc_gbps),
        memcpy_stream_gbps: col(|s| s.copy_limit.stream_gbps),
        device_fault_sweep_gbps: col(|s| s.device_fault_sweep_gbps),
        device_fault_sweep_ratio: col(|s| s.device_fault_sweep_ratio),
        block_migrate_us: col(|s| s.block_migrate_us),
        batch_service_p50_us: col(|s| s.batch_service_p50_us),
        full_batch_service_p50_us: Spread::of(&full),
        faults_per_sec: col(|s| s.faults_per_sec),
    };
    let full_batch_service_p50_us =
        (!full.is_empty()).then_some(spread.full_batch_service_p50_us.median);
    let block_migrate_us = spread.block_migrate_us.median;
    let full_batch_target_us = block_migrate_us + FULL_BATCH_SLACK_US;
    let total = |f: fn(&FaultsRun) -> u64| samples.iter().map(f).sum::<u64>();
    Ok(FaultsBench {
        size_bytes: size,
        runs,
        memcpy_gbps: spread.memcpy_gbps.median,
        device_fault_sweep_gbps: spread.device_fault_sweep_gbps.median,
        device_fault_sweep_ratio: spread.device_fault_sweep_ratio.median,
        batch_service_p50_us: spread.batch_service_p50_us.median,
        full_batch_service_p50_us,
        block_migrate_us,
        full_batch_target_us,
        full_batch_within_target: full_batch_service_p50_us
            .is_some_and(|p| p < full_batch_target_us),
        faults_per_sec: spread.faults_per_sec.median,
        batches: total(|s| s.batches),
        full_batches: total(|s| s.full_batches),
        faults: total(|s| s.faults),
        duplicates: total(|s| s.duplicates),
        sweep_item_bytes: SWEEP_ITEM_BYTES,
        sweep_lanes,
        service_lanes: SERVICE_LANES,
        service_blocks: SERVICE_BLOCKS,
        device_memory_bytes,
        copy_engines,
        spread,
        samples,
        sweep_counters: sweep_svm.stats(),
        machine: Machine::detect(),
    })
}

/// A fresh region of `len` bytes holding the pattern of `seed`, written by
/// the CPU (so system-resident); returns it and the pattern's checksum.
fn filled(svm: &Svm, len: usize, seed: u64) -> Result<(Region<'_>, u64), BenchError> {
    let mut r = svm.alloc(len)?;
    let sum = fill_pattern(&mut r.as_mut_slice::<u64>(), seed, 0);
    Ok((r, sum))
}

/// A checksum that differs from the pattern's: find the first wrong word.
fn sum_error(when: String, r: &Region<'_>, seed: u64, sum: u64, expected: u64) -> BenchError {
    let words = r.as_slice::<u64>();
    let m = crate::bench::check_pattern(&words, seed, 0).unwrap_or_default();
    BenchError::Verify {
        when: format!("{when} (checksum {sum:#x}, expected {expected:#x})"),
        words: words.len() as u64,
        mismatches: m.count,
        first_offset: m.first * 8,
        expected: m.expected,
        found: m.found,
    }
}

/// memcpy and the device-fault-driven sweep of one fresh region.
fn sweep(
    svm: &Svm,
    len: usize,
    dst: &mut [u8],
    run: usize,
    s: &mut FaultsRun,
) -> Result<(), BenchError> {
    let (region, checksum) = filled(svm, len, SWEEP_SEED)?;
    let bytes = region.len();
    s.copy_limit = copy_limit(dst, &region.as_slice::<u8>());
    s.memcpy_gbps = s.copy_limit.best();
    s.memcpy_ms = bytes as f64 / s.memcpy_gbps / 1e6;
    svm.set_attributes(
        region.addr(),
        bytes,
        &[Attr::PreferredLocation(Some(Location::Device(DEV)))],
    )?;

    let base = region.addr();
    let words = bytes / 8;
    let per_item = SWEEP_ITEM_BYTES / 8;
    let before = svm.stats();
    let t = Instant::now();
    let sum = sum_kernel(svm, DEV, base, words, per_item)?;
    let el = t.elapsed();
    let after = svm.stats();
    s.device_fault_sweep_gbps = gbps(bytes, el);
    s.device_fault_sweep_ms = el.as_secs_f64() * 1e3;
    s.device_fault_sweep_ratio = s.device_fault_sweep_gbps / s.memcpy_gbps;
    s.sweep_faults = after.device_faults - before.device_faults;
    s.sweep_batches = after.device_fault_batches - before.device_fault_batches;
    s.sweep_ahead_pages = after.device_fault_ahead_pages - before.device_fault_ahead_pages;
    if sum != checksum {
        let when = format!("in run {run}, device fault sweep");
        return Err(sum_error(when, &region, SWEEP_SEED, sum, checksum));
    }
    Ok(())
}

/// Block-migrate times and the fault-service kernel, on a device built for
/// this run (so its batch log holds this run's batches only).
fn service(run: usize, s: &mut FaultsRun) -> Result<(), BenchError> {
    let block = BLOCK_SIZE as u64;
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "faults".into(),
            memory_bytes: (SERVICE_BLOCKS + MIGRATE_BLOCKS) * block + HEADROOM,
            copy_engines: EmulatedConfig::default().copy_engines,
            memory_type: MemoryType::Private,
            compute_units: SERVICE_LANES,
            commit_up_front: false,
        })?
        .xnack(true)
        .build()?;
    crate::trace::traced(&svm, &format!("bench faults: service, run {run}"), || {
        service_on(&svm, run, s)
    })
}

/// [`service`] on its `Svm`.
fn service_on(svm: &Svm, run: usize, s: &mut FaultsRun) -> Result<(), BenchError> {
    let block = BLOCK_SIZE as u64;
    // One 2 MiB block of fresh CPU-written data to the device, at a time.
    let (m, _) = filled(svm, (MIGRATE_BLOCKS * block) as usize, MIGRATE_SEED)?;
    let mut us = Vec::with_capacity(MIGRATE_BLOCKS as usize);
    for b in 0..MIGRATE_BLOCKS {
        let t = Instant::now();
        let rep = svm.migrate(m.at(b * block), block, Location::Device(DEV))?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if rep.migrated != rep.requested {
            return Err(BenchError::Incomplete {
                run,
                step: "migrate one block to the device",
                requested: rep.requested,
                migrated: rep.migrated,
                skipped_busy: rep.skipped_busy,
                skipped_not_migratable: rep.skipped_not_migratable,
                skipped_no_device_memory: rep.skipped_no_device_memory,
                already_there: rep.already_there,
                rolled_back: rep.rolled_back,
            });
        }
    }
    s.block_migrate_us = Spread::of(&us).median;

    // All lanes on different pages of one block, block after block.
    let (region, _) = filled(svm, (SERVICE_BLOCKS * block) as usize, SERVICE_SEED)?;
    svm.set_attributes(
        region.addr(),
        region.len(),
        &[Attr::PreferredLocation(Some(Location::Device(DEV)))],
    )?;
    let lanes = SERVICE_LANES as u64;
    let stride = (BLOCK_PAGES as u64 / lanes).max(1);
    // Word index of the first word of the page item `i` reads. Blocks are
    // visited in a scrambled order (37 is coprime to the block count), so
    // no fault continues a sequential sweep: every full batch pays for its
    // own block's migration instead of finding it fetched ahead.
    let block_of = |i: u64| (i / lanes * 37) % SERVICE_BLOCKS;
    let word_of = |i: u64| (block_of(i) * BLOCK_PAGES as u64 + (i % lanes) * stride) * 512;
    let grid = SERVICE_BLOCKS * lanes;
    let base = region.addr();
    let total = AtomicU64::new(0);
    let before = svm.stats();
    let t = Instant::now();
    svm.device(DEV)?
        .launch(grid, |lane, i| {
            let w = lane.load::<u64>(base.offset(word_of(i) * 8))?;
            total.fetch_add(w, Ordering::Relaxed);
            Ok(())
        })?
        .check()?;
    let el: Duration = t.elapsed();
    let after = svm.stats();
    let expected = (0..grid).fold(0u64, |a, i| {
        a.wrapping_add(pattern_word(SERVICE_SEED, word_of(i)))
    });
    let sum = total.into_inner();
    if sum != expected {
        let when = format!("in run {run}, fault-service kernel");
        return Err(sum_error(when, &region, SERVICE_SEED, sum, expected));
    }
    let st = svm.device(DEV)?.fault_stats();
    s.service_ms = el.as_secs_f64() * 1e3;
    s.batch_service_p50_us = st.p50_us;
    s.full_batch_service_p50_us = (st.full_batches > 0).then_some(st.full_p50_us);
    s.faults_per_sec = st.faults_per_sec;
    s.batches = after.device_fault_batches - before.device_fault_batches;
    s.full_batches = st.full_batches;
    s.faults = after.device_faults - before.device_faults;
    s.duplicates = after.device_fault_duplicates - before.device_fault_duplicates;
    s.service_pages_to_device = after.to_device_pages - before.to_device_pages;
    Ok(())
}
