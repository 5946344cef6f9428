//! Measurement code shared by `svmem bench` and the criterion benches: the
//! machine's memcpy limit, and migration / fault-sweep throughput measured on
//! the same bytes in the same process, reported as medians with their spread.
//!
//! GB/s here means 10^9 bytes per second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use svmem::EmulatedConfig;
use svmem::Error;
use svmem::MigrateReport;
use svmem::Stats;
use svmem::Svm;
use svmem::{DeviceId, Location, VirtAddr};

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Svm(#[from] Error),

    #[error("invalid benchmark parameters: {0}")]
    Params(String),

    /// A migration left pages behind, so its throughput would not be comparable.
    #[error(
        "run {run}: {step} moved {migrated} of {requested} pages \
         (busy {skipped_busy}, not migratable {skipped_not_migratable}, \
         no device memory {skipped_no_device_memory}, already there {already_there}, \
         rolled back {rolled_back})"
    )]
    Incomplete {
        run: usize,
        step: &'static str,
        requested: u64,
        migrated: u64,
        skipped_busy: u64,
        skipped_not_migratable: u64,
        skipped_no_device_memory: u64,
        already_there: u64,
        rolled_back: u64,
    },

    /// The data read back is not what was written.
    #[error(
        "data verification failed {when}: {mismatches} of {words} words differ; first at byte \
         offset {first_offset:#x}: expected {expected:#018x}, found {found:#018x}"
    )]
    Verify {
        when: String,
        words: u64,
        mismatches: u64,
        first_offset: u64,
        expected: u64,
        found: u64,
    },
}

/// The machine a measurement ran on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub nproc: usize,
    /// Kernel name and release (`uname -sr`).
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: format!(
                "{} {}",
                read("/proc/sys/kernel/ostype"),
                read("/proc/sys/kernel/osrelease")
            ),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} cores, {}", self.nproc, self.kernel)
    }
}

/// Bytes per second in GB/s (10^9 bytes per second).
pub fn gbps(bytes: u64, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if s > 0.0 {
        bytes as f64 / s / 1e9
    } else {
        f64::INFINITY
    }
}

/// A `Vec` of `len` bytes whose pages are all faulted in (written), so copies
/// into it measure memory bandwidth, not first-touch faults.
pub fn prefaulted(len: usize) -> Vec<u8> {
    // A non-zero fill writes every page (a zeroed Vec may map lazily).
    vec![0xa5; len]
}

/// The machine's single-thread copy limit for a set of bytes, measured once
/// each way: glibc's `memcpy`, and a streaming copy (non-temporal stores,
/// [`svmem::device::stream_copy`], what the emulated copy engines use). The
/// faster one is the limit the benchmarks divide by, so an engine's better
/// copy loop never inflates a ratio.
///
/// Also measured with all cores ([`all_cores_copy_limit`]): the same two
/// copies split over `available_parallelism` threads. One thread is what
/// one copy engine can reach; all cores is what the machine can move, the
/// honest ceiling for several engines (or a sweep) running at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CopyLimit {
    pub libc_gbps: f64,
    pub stream_gbps: f64,
    /// The faster of `memcpy` and streaming copies over `threads` threads.
    pub all_cores_gbps: f64,
    pub threads: usize,
}

impl CopyLimit {
    /// The faster of the two single-thread copies, GB/s.
    pub fn best(&self) -> f64 {
        self.libc_gbps.max(self.stream_gbps)
    }
}

/// Copies `src` into `dst` in `threads` equal chunks at once, with `copy`
/// on each; the wall time of the whole.
fn parallel_copy(
    dst: &mut [u8],
    src: &[u8],
    threads: usize,
    copy: fn(&mut [u8], &[u8]),
) -> Duration {
    let chunk = src.len().div_ceil(threads.max(1)).max(1);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
            s.spawn(move || copy(d, black_box(c)));
        }
    });
    t.elapsed()
}

/// The machine's all-cores copy limit: `src` into `dst` over
/// `available_parallelism` threads, once with `memcpy` and once with
/// streaming stores; the faster, GB/s, and the thread count.
///
/// # Panics
/// If the lengths differ.
pub fn all_cores_copy_limit(dst: &mut [u8], src: &[u8]) -> (f64, usize) {
    assert_eq!(dst.len(), src.len());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let libc = parallel_copy(dst, src, threads, |d, c| d.copy_from_slice(c));
    black_box(&mut *dst);
    let stream = parallel_copy(dst, src, threads, svmem::device::stream_copy);
    black_box(&mut *dst);
    let n = src.len() as u64;
    (gbps(n, libc).max(gbps(n, stream)), threads)
}

/// Copies `src` into `dst` (same length; both should be pre-faulted) once
/// with `memcpy` and once with streaming stores; see [`CopyLimit`].
///
/// # Panics
/// If the lengths differ.
pub fn copy_limit(dst: &mut [u8], src: &[u8]) -> CopyLimit {
    let t = Instant::now();
    dst.copy_from_slice(black_box(src));
    let libc = t.elapsed();
    black_box(&mut *dst);
    let t = Instant::now();
    svmem::device::stream_copy(dst, black_box(src));
    let stream = t.elapsed();
    black_box(&mut *dst);
    let (all_cores_gbps, threads) = all_cores_copy_limit(dst, src);
    CopyLimit {
        libc_gbps: gbps(src.len() as u64, libc),
        stream_gbps: gbps(src.len() as u64, stream),
        all_cores_gbps,
        threads,
    }
}

/// The word the benchmarks and the demo write at word index `i` under `seed`
/// (a SplitMix64 step: every word differs, no page is all zeros).
#[inline]
pub fn pattern_word(seed: u64, i: u64) -> u64 {
    let mut state = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    svmem::device::splitmix64(&mut state)
}

/// A sequential read of every word, folded into a checksum (wrapping sum).
#[inline(never)]
pub fn sum_words(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

/// Fills `words` with `pattern_word(seed, first_index + i)`; returns the checksum
/// (`sum_words` of what was written).
pub fn fill_pattern(words: &mut [u64], seed: u64, first_index: u64) -> u64 {
    let mut sum = 0u64;
    for (i, w) in words.iter_mut().enumerate() {
        let v = pattern_word(seed, first_index + i as u64);
        *w = v;
        sum = sum.wrapping_add(v);
    }
    sum
}

/// Mismatches of `words` against `pattern_word(seed, first_index + i)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mismatch {
    pub count: u64,
    /// Word index (relative to `first_index`) of the first mismatch.
    pub first: u64,
    pub expected: u64,
    pub found: u64,
}

/// Checks every word of `words` against the pattern; `None` if all match.
pub fn check_pattern(words: &[u64], seed: u64, first_index: u64) -> Option<Mismatch> {
    let mut m = Mismatch::default();
    for (i, &w) in words.iter().enumerate() {
        let e = pattern_word(seed, first_index + i as u64);
        if w != e {
            if m.count == 0 {
                m.first = i as u64;
                m.expected = e;
                m.found = w;
            }
            m.count += 1;
        }
    }
    (m.count != 0).then_some(m)
}

/// Runs a kernel on device `dev` that reads the `words` u64 words at `base`
/// in place ([`svmem::Lane::read_words`]) in work items of `item_words` (in
/// ascending order) and returns their wrapping sum, so every read happens; a
/// fatal fault is an error.
pub fn sum_kernel(
    svm: &Svm,
    dev: DeviceId,
    base: VirtAddr,
    words: u64,
    item_words: u64,
) -> Result<u64, BenchError> {
    let total = std::sync::atomic::AtomicU64::new(0);
    svm.device(dev)?
        .launch(words.div_ceil(item_words), |lane, item| {
            let lo = item * item_words;
            let n = item_words.min(words - lo);
            let mut sum = 0u64;
            lane.read_words(base.offset(lo * 8), n, |ws| {
                sum = ws.iter().fold(sum, |a, w| {
                    a.wrapping_add(w.load(std::sync::atomic::Ordering::Relaxed))
                });
            })?;
            total.fetch_add(black_box(sum), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })?
        .check()?;
    Ok(total.into_inner())
}

/// Minimum, median and maximum of a set of samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// Of `samples` (the median of an even count is the mean of the middle two).
    pub fn of(samples: &[f64]) -> Spread {
        if samples.is_empty() {
            return Spread::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }
}

/// One run of [`bench_migrate`]: every number measured on the same bytes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MigrateRun {
    /// The copy limit ([`CopyLimit::best`]), and its two parts.
    pub memcpy_gbps: f64,
    pub copy_limit: CopyLimit,
    pub to_device_gbps: f64,
    pub to_system_gbps: f64,
    pub cpu_fault_sweep_gbps: f64,
    pub memcpy_ms: f64,
    pub to_device_ms: f64,
    pub to_system_ms: f64,
    pub cpu_fault_sweep_ms: f64,
    /// Fault messages the sweep raised.
    pub sweep_cpu_faults: u64,
    /// Fault windows the sweep's faults were resolved in.
    pub sweep_fault_windows: u64,
}

/// Spread of each measured quantity over the runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MigrateSpread {
    pub memcpy_gbps: Spread,
    pub memcpy_libc_gbps: Spread,
    pub memcpy_stream_gbps: Spread,
    pub memcpy_all_cores_gbps: Spread,
    pub to_device_gbps: Spread,
    pub to_system_gbps: Spread,
    pub cpu_fault_sweep_gbps: Spread,
    pub to_device_ratio: Spread,
    pub to_system_ratio: Spread,
    pub cpu_fault_sweep_ratio: Spread,
    /// The same ratios against the all-cores copy limit.
    pub to_device_ratio_all_cores: Spread,
    pub to_system_ratio_all_cores: Spread,
    pub cpu_fault_sweep_ratio_all_cores: Spread,
}

/// The result of [`bench_migrate`]. Flat numbers are medians over the runs;
/// ratios are taken per run (against that run's memcpy), then the median.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateBench {
    /// Bytes in the managed region (the requested size rounded up to 4 KiB).
    pub size_bytes: u64,
    pub pages: u64,
    pub runs: usize,
    /// Single-thread copy of the region's bytes into a pre-faulted buffer:
    /// the faster of `memcpy` and a streaming copy ([`CopyLimit`]).
    pub memcpy_gbps: f64,
    /// `migrate(all, Device(0))` of system-resident pages.
    pub to_device_gbps: f64,
    /// `migrate(all, System)` of device-resident pages.
    pub to_system_gbps: f64,
    /// Sequential CPU read of every word of device-resident pages: every
    /// window comes back through a real page fault.
    pub cpu_fault_sweep_gbps: f64,
    pub to_device_ratio: f64,
    pub to_system_ratio: f64,
    pub cpu_fault_sweep_ratio: f64,
    /// The same copy over all cores ([`CopyLimit::all_cores_gbps`]), on
    /// `copy_threads` threads, and the ratios against it.
    pub memcpy_all_cores_gbps: f64,
    pub copy_threads: usize,
    pub to_device_ratio_all_cores: f64,
    pub to_system_ratio_all_cores: f64,
    pub cpu_fault_sweep_ratio_all_cores: f64,
    /// First-touch fill of the region by the CPU (measured once, before the runs).
    pub first_touch_fill_gbps: f64,
    /// `stats().metadata_bytes / pages` with the region allocated (one device).
    pub metadata_bytes_per_page: f64,
    pub spread: MigrateSpread,
    pub samples: Vec<MigrateRun>,
    /// Counters at the end of all runs.
    pub counters: Stats,
    pub device_memory_bytes: u64,
    pub copy_engines: usize,
    pub machine: Machine,
}

/// Default region size of [`bench_migrate`]: 1 GiB.
pub const DEFAULT_BENCH_SIZE: u64 = 1 << 30;

/// A failed data check over `bytes` of words.
fn verify_error(when: String, bytes: u64, m: Mismatch) -> BenchError {
    BenchError::Verify {
        when,
        words: bytes / 8,
        mismatches: m.count,
        first_offset: m.first * 8,
        expected: m.expected,
        found: m.found,
    }
}

/// Migrates the whole region, checks every page moved, returns the time taken.
fn timed_migrate(
    svm: &Svm,
    addr: VirtAddr,
    bytes: u64,
    to: Location,
    run: usize,
    step: &'static str,
) -> Result<Duration, BenchError> {
    let t = Instant::now();
    let r = svm.migrate(addr, bytes, to)?;
    let el = t.elapsed();
    complete(run, step, &r)?;
    Ok(el)
}

fn complete(run: usize, step: &'static str, r: &MigrateReport) -> Result<(), BenchError> {
    if r.migrated == r.requested {
        return Ok(());
    }
    Err(BenchError::Incomplete {
        run,
        step,
        requested: r.requested,
        migrated: r.migrated,
        skipped_busy: r.skipped_busy,
        skipped_not_migratable: r.skipped_not_migratable,
        skipped_no_device_memory: r.skipped_no_device_memory,
        already_there: r.already_there,
        rolled_back: r.rolled_back,
    })
}

/// Seed of the pattern [`bench_migrate`] writes.
const BENCH_SEED: u64 = 0x5356_4d45_4d00_0001;

/// Measures, in one process and on the same bytes: memcpy of the region,
/// migration of all of it to an emulated device and back, and a sequential,
/// fault-driven CPU read sweep over device-resident pages; `runs` times. See
/// [`MigrateBench`]. The data is verified after every sweep (checksum) and
/// word by word after all runs.
pub fn bench_migrate(size: u64, runs: usize) -> Result<MigrateBench, BenchError> {
    if size == 0 {
        return Err(BenchError::Params("size must be at least one byte".into()));
    }
    if runs == 0 {
        return Err(BenchError::Params("runs must be at least 1".into()));
    }
    let len = usize::try_from(size)
        .map_err(|_| BenchError::Params(format!("size {size} does not fit in memory")))?;
    let config = EmulatedConfig {
        name: "bench".into(),
        memory_bytes: size.next_multiple_of(svmem::PAGE_SIZE as u64),
        // Committed before the first run: the runs time copies, not the
        // host's first touch of device memory.
        commit_up_front: true,
        ..EmulatedConfig::default()
    };
    let (device_memory_bytes, copy_engines) = (config.memory_bytes, config.copy_engines);
    let svm = Svm::builder().emulated(config)?.build()?;
    let mut region = svm.alloc(len)?;
    let (bytes, npages) = (region.len(), region.npages() as u64);

    // First touch: zero-fill faults plus the pattern write.
    let t = Instant::now();
    let checksum = fill_pattern(&mut region.as_mut_slice::<u64>(), BENCH_SEED, 0);
    let first_touch_fill_gbps = gbps(bytes, t.elapsed());

    let mut dst = prefaulted(bytes as usize);
    let bar = crate::progress::bar(runs as u64, "bench migrate: runs");
    let samples = crate::trace::traced(&svm, "bench migrate", || {
        let mut samples = Vec::with_capacity(runs);
        for run in 0..runs {
            let s = one_run(&svm, &region, &mut dst, run, checksum)?;
            samples.push(s);
            bar.inc(1);
        }
        Ok::<_, BenchError>(samples)
    })?;
    bar.finish_and_clear();

    let metadata_bytes_per_page = svm.stats().metadata_bytes as f64 / npages as f64;
    if let Some(m) = check_pattern(&region.as_slice::<u64>(), BENCH_SEED, 0) {
        return Err(verify_error(format!("after {runs} runs"), bytes, m));
    }
    let counters = svm.stats();

    let col = |f: fn(&MigrateRun) -> f64| Spread::of(&samples.iter().map(f).collect::<Vec<_>>());
    let spread = MigrateSpread {
        memcpy_gbps: col(|s| s.memcpy_gbps),
        memcpy_libc_gbps: col(|s| s.copy_limit.libc_gbps),
        memcpy_stream_gbps: col(|s| s.copy_limit.stream_gbps),
        memcpy_all_cores_gbps: col(|s| s.copy_limit.all_cores_gbps),
        to_device_gbps: col(|s| s.to_device_gbps),
        to_system_gbps: col(|s| s.to_system_gbps),
        cpu_fault_sweep_gbps: col(|s| s.cpu_fault_sweep_gbps),
        to_device_ratio: col(|s| s.to_device_gbps / s.memcpy_gbps),
        to_system_ratio: col(|s| s.to_system_gbps / s.memcpy_gbps),
        cpu_fault_sweep_ratio: col(|s| s.cpu_fault_sweep_gbps / s.memcpy_gbps),
        to_device_ratio_all_cores: col(|s| s.to_device_gbps / s.copy_limit.all_cores_gbps),
        to_system_ratio_all_cores: col(|s| s.to_system_gbps / s.copy_limit.all_cores_gbps),
        cpu_fault_sweep_ratio_all_cores: col(|s| {
            s.cpu_fault_sweep_gbps / s.copy_limit.all_cores_gbps
        }),
    };
    drop(region);
    Ok(MigrateBench {
        size_bytes: bytes,
        pages: npages,
        runs,
        memcpy_gbps: spread.memcpy_gbps.median,
        to_device_gbps: spread.to_device_gbps.median,
        to_system_gbps: spread.to_system_gbps.median,
        cpu_fault_sweep_gbps: spread.cpu_fault_sweep_gbps.median,
        to_device_ratio: spread.to_device_ratio.median,
        to_system_ratio: spread.to_system_ratio.median,
        cpu_fault_sweep_ratio: spread.cpu_fault_sweep_ratio.median,
        memcpy_all_cores_gbps: spread.memcpy_all_cores_gbps.median,
        copy_threads: samples.first().map_or(1, |s| s.copy_limit.threads),
        to_device_ratio_all_cores: spread.to_device_ratio_all_cores.median,
        to_system_ratio_all_cores: spread.to_system_ratio_all_cores.median,
        cpu_fault_sweep_ratio_all_cores: spread.cpu_fault_sweep_ratio_all_cores.median,
        first_touch_fill_gbps,
        metadata_bytes_per_page,
        spread,
        samples,
        counters,
        device_memory_bytes,
        copy_engines,
        machine: Machine::detect(),
    })
}

/// One run of [`bench_migrate`]: copy limit, migrations each way, the CPU
/// fault sweep (checked against `checksum`).
fn one_run(
    svm: &Svm,
    region: &svmem::Region<'_>,
    dst: &mut [u8],
    run: usize,
    checksum: u64,
) -> Result<MigrateRun, BenchError> {
    let (addr, bytes) = (region.addr(), region.len());
    let dev = Location::Device(DeviceId(0));
    let mut s = MigrateRun::default();
    // Every page is system-resident here.
    s.copy_limit = copy_limit(dst, &region.as_slice::<u8>());
    s.memcpy_gbps = s.copy_limit.best();
    s.memcpy_ms = bytes as f64 / s.memcpy_gbps / 1e6;

    let el = timed_migrate(svm, addr, bytes, dev, run, "migrate to device")?;
    (s.to_device_gbps, s.to_device_ms) = (gbps(bytes, el), el.as_secs_f64() * 1e3);
    let el = timed_migrate(svm, addr, bytes, Location::System, run, "migrate to system")?;
    (s.to_system_gbps, s.to_system_ms) = (gbps(bytes, el), el.as_secs_f64() * 1e3);

    let r = svm.migrate(addr, bytes, dev)?;
    complete(run, "migrate to device (before the sweep)", &r)?;

    let before = svm.stats();
    let t = Instant::now();
    let sum = sum_words(black_box(&region.as_slice::<u64>()));
    let el = t.elapsed();
    let after = svm.stats();
    black_box(sum);
    s.cpu_fault_sweep_gbps = gbps(bytes, el);
    s.cpu_fault_sweep_ms = el.as_secs_f64() * 1e3;
    s.sweep_cpu_faults = after.cpu_faults - before.cpu_faults;
    s.sweep_fault_windows = after.cpu_fault_windows - before.cpu_fault_windows;
    if sum != checksum {
        let m = check_pattern(&region.as_slice::<u64>(), BENCH_SEED, 0).unwrap_or_default();
        let when = format!(
            "in run {run} (checksum {sum:#x} after the fault sweep, expected {checksum:#x})"
        );
        return Err(verify_error(when, bytes, m));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn pattern_roundtrip() {
        let mut v = vec![0u64; 1000];
        let sum = fill_pattern(&mut v, 7, 10);
        assert_eq!(sum, sum_words(&v));
        assert_eq!(check_pattern(&v, 7, 10), None);
        v[5] ^= 1;
        let m = check_pattern(&v, 7, 10).expect("mismatch");
        assert_eq!((m.count, m.first), (1, 5));
        assert!(v.iter().all(|&w| w != 0));
    }
}
