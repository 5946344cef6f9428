//! Small end-to-end workloads that drive managed memory from the CPU and from
//! a device kernel, verify every result, and report what the memory manager
//! did (the `svmem run` command).
//!
//! | workload   | arrays (each `bytes`)       | what moves |
//! |------------|-----------------------------|------------|
//! | `stream`   | `a`, `b`, `c` of `f64`      | the CPU writes `b` and `c`; a kernel computes the triad `a = b + 3·c` in 64 KiB work items (bulk reads and writes); the CPU checks every element of `a` |
//! | `gather`   | `table` of `u64` (+ `out`, one word per work item) | the CPU writes `table[i] = f(i)`; each work item sums [`GATHER_READS`] random elements (SplitMix64 per item) into `out[item]`; the CPU recomputes every sum |
//! | `pingpong` | `x` of `u64`                | per round a kernel adds 1 to every element, then the CPU does; at the end every element is `2 · rounds` |
//!
//! Fourteen more kernels, re-implemented from their published descriptions
//! (PolyBench/GPU, Rodinia, HPCC RandomAccess), make with `stream` the
//! benchmark suite [`Workload::SUITE`]: the regular `2dconv`, `3dconv`,
//! `gemm`, `atax`, `bicg`, `mvt`, `gesummv`, `syr2k` ([`polybench`]),
//! `hotspot`, `pathfinder`, and the irregular `bfs`, `nw`, `nn`
//! ([`rodinia`]) and `gups` ([`gups`]). Each module says how `bytes` sizes
//! its arrays. Every result is checked against a CPU reference: integers
//! exactly, floating point bit-exactly (tolerance zero), since the
//! reference evaluates each element with the same operations in the same
//! order as the kernel, and Rust neither fuses nor reorders float operations.
//!
//! Every array gets the run's granularity and, if set, its preferred
//! location; with XNACK off the device is granted access to it, so it is
//! mapped ahead (a device access without a translation would be fatal).
//!
//! The caller builds the [`Svm`] (with the XNACK mode of the [`RunConfig`]);
//! [`run`] reports the counter deltas of the run. A wrong element or a fatal
//! device fault is a [`RunError`], never a panic.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::bench::pattern_word;
use svmem::Error;
use svmem::Stats;
use svmem::{AccessMode, Attr};
use svmem::{DeviceFault, Lane, LaunchReport};
use svmem::{DeviceId, Location, VirtAddr, PAGE_SIZE};
use svmem::{Region, Svm};

pub mod gups;
pub mod polybench;
pub mod rodinia;

/// The device every workload runs on.
const DEV: DeviceId = DeviceId(0);
/// Bytes one `stream` / `pingpong` work item covers in each array.
pub const ITEM_BYTES: u64 = 64 << 10;
/// Random table reads per `gather` work item.
pub const GATHER_READS: u64 = 32;
/// The triad's scalar: `a = b + STREAM_SCALAR * c`.
pub const STREAM_SCALAR: f64 = 3.0;
/// Seed of the `gather` table and of its per-item generators.
const GATHER_SEED: u64 = 0x5356_4d45_4d00_0a7e;

/// A workload of [`run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Triad `a = b + s·c` over three `f64` arrays.
    Stream,
    /// Random reads of a `u64` table, summed per work item.
    Gather,
    /// The device and the CPU take turns incrementing every element.
    Pingpong,
    /// PolyBench 2DCONV: a 3×3 stencil over an `f64` matrix.
    #[serde(rename = "2dconv")]
    Conv2d,
    /// PolyBench 3DCONV: a 3×3×3 stencil over an `f64` cube.
    #[serde(rename = "3dconv")]
    Conv3d,
    /// PolyBench GEMM: `C = α·A·B + β·C`.
    Gemm,
    /// PolyBench ATAX: `y = Aᵀ·(A·x)`.
    Atax,
    /// PolyBench BICG: `s = Aᵀ·r`, `q = A·p`.
    Bicg,
    /// PolyBench MVT: `x1 += A·y1`, `x2 += Aᵀ·y2`.
    Mvt,
    /// PolyBench GESUMMV: `y = α·A·x + β·B·x`.
    Gesummv,
    /// PolyBench SYR2K: `C = α·A·Bᵀ + α·B·Aᵀ + β·C` (lower triangle).
    Syr2k,
    /// Rodinia hotspot: thermal simulation steps on a chip grid.
    Hotspot,
    /// Rodinia pathfinder: dynamic programming down a grid of weights.
    Pathfinder,
    /// Rodinia BFS: level-synchronous breadth-first search of a generated graph.
    Bfs,
    /// HPCC RandomAccess (GUPS): atomic xor updates at random table slots.
    Gups,
    /// Rodinia Needleman-Wunsch: sequence alignment by anti-diagonal wavefronts.
    Nw,
    /// Rodinia nearest neighbour: distances of records to a point, and the nearest.
    Nn,
}

impl Workload {
    pub const ALL: [Workload; 17] = [
        Workload::Stream,
        Workload::Gather,
        Workload::Pingpong,
        Workload::Conv2d,
        Workload::Conv3d,
        Workload::Gemm,
        Workload::Atax,
        Workload::Bicg,
        Workload::Mvt,
        Workload::Gesummv,
        Workload::Syr2k,
        Workload::Hotspot,
        Workload::Pathfinder,
        Workload::Bfs,
        Workload::Gups,
        Workload::Nw,
        Workload::Nn,
    ];

    /// The fifteen benchmark kernels (every workload but `gather` and
    /// `pingpong`): eleven regular, four irregular.
    pub const SUITE: [Workload; 15] = [
        Workload::Stream,
        Workload::Conv2d,
        Workload::Conv3d,
        Workload::Gemm,
        Workload::Atax,
        Workload::Bicg,
        Workload::Mvt,
        Workload::Gesummv,
        Workload::Syr2k,
        Workload::Hotspot,
        Workload::Pathfinder,
        Workload::Bfs,
        Workload::Gups,
        Workload::Nw,
        Workload::Nn,
    ];

    /// The name the command line and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Stream => "stream",
            Workload::Gather => "gather",
            Workload::Pingpong => "pingpong",
            Workload::Conv2d => "2dconv",
            Workload::Conv3d => "3dconv",
            Workload::Gemm => "gemm",
            Workload::Atax => "atax",
            Workload::Bicg => "bicg",
            Workload::Mvt => "mvt",
            Workload::Gesummv => "gesummv",
            Workload::Syr2k => "syr2k",
            Workload::Hotspot => "hotspot",
            Workload::Pathfinder => "pathfinder",
            Workload::Bfs => "bfs",
            Workload::Gups => "gups",
            Workload::Nw => "nw",
            Workload::Nn => "nn",
        }
    }

    /// Irregular kernels: data-dependent (random or graph-shaped) accesses.
    pub fn irregular(self) -> bool {
        matches!(
            self,
            Workload::Gather | Workload::Bfs | Workload::Gups | Workload::Nw | Workload::Nn
        )
    }

    /// Byte sizes of the arrays the workload allocates for `bytes`, in
    /// allocation order (each is rounded up to 4 KiB when allocated).
    pub fn arrays(self, bytes: u64) -> Vec<u64> {
        let b = page_round(bytes);
        match self {
            Workload::Stream => vec![b; 3],
            Workload::Gather => vec![b, gather_items(b / 8) * 8],
            Workload::Pingpong => vec![b],
            Workload::Conv2d
            | Workload::Conv3d
            | Workload::Gemm
            | Workload::Atax
            | Workload::Bicg
            | Workload::Mvt
            | Workload::Gesummv
            | Workload::Syr2k => polybench::arrays(self, b),
            Workload::Hotspot
            | Workload::Pathfinder
            | Workload::Bfs
            | Workload::Nw
            | Workload::Nn => rodinia::arrays(self, b),
            Workload::Gups => gups::arrays(b),
        }
    }

    /// [`Workload::working_set`], or more, computed in constant time.
    fn working_set_bound(self, bytes: u64) -> u64 {
        match self {
            // At most 8 edges of 4 bytes per node; four arrays rounded up.
            Workload::Bfs => page_round(bytes) / 8 * (8 + 8 + 32) + 5 * PAGE_SIZE as u64,
            w => w.working_set(bytes),
        }
    }

    /// Bytes of managed memory the workload allocates for arrays of `bytes`
    /// (each rounded up to 4 KiB): what device memory must hold for all of
    /// it to live there at once.
    pub fn working_set(self, bytes: u64) -> u64 {
        self.arrays(bytes).into_iter().map(page_round).sum()
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a workload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload `{0}`: use one of {names}", names = workload_names())]
pub struct UnknownWorkload(pub String);

fn workload_names() -> String {
    Workload::ALL.map(Workload::name).join(", ")
}

impl FromStr for Workload {
    type Err = UnknownWorkload;
    fn from_str(s: &str) -> Result<Workload, UnknownWorkload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownWorkload(s.to_string()))
    }
}

/// How to run a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// Bytes per array (rounded up to 4 KiB).
    pub bytes: u64,
    /// Retry faults (XNACK on); must match the `Svm`'s mode.
    pub xnack: bool,
    /// Preferred location of every array (`None`: no preference).
    pub preferred: Option<Location>,
    /// Fault and migration granularity of every array, log2 pages (0..=9).
    pub granularity: u8,
    /// `pingpong` rounds (the other workloads run once).
    pub rounds: u32,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            bytes: 64 << 20,
            xnack: true,
            preferred: None,
            granularity: 9,
            rounds: 4,
        }
    }
}

/// What one run did. Counters are deltas over the run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    pub workload: Workload,
    /// Bytes per array (after rounding to 4 KiB; `gather`'s `out` array holds
    /// one word per work item).
    #[serde(rename = "array_bytes")]
    pub bytes: u64,
    /// Bytes of managed memory allocated for all arrays.
    pub working_set_bytes: u64,
    pub xnack: bool,
    /// `"system"`, `"dev0"`, or null.
    #[serde(serialize_with = "ser_location")]
    pub preferred: Option<Location>,
    pub granularity: u8,
    pub rounds: u32,
    /// Compute lanes the kernels ran on.
    pub lanes: usize,
    /// The whole run: allocation and attributes, CPU initialisation, kernels,
    /// CPU updates and the verification.
    pub wall_ms: f64,
    /// Time inside kernel launches, summed.
    pub kernel_ms: f64,
    pub kernel_launches: u64,
    /// Bytes copied to device memory (zero-filled device pages copy nothing).
    #[serde(rename = "to_device_bytes")]
    pub bytes_to_device: u64,
    /// Bytes copied back to system memory.
    #[serde(rename = "to_system_bytes")]
    pub bytes_to_system: u64,
    /// Pages migrated to device memory / back to system memory.
    #[serde(rename = "to_device_pages")]
    pub pages_to_device: u64,
    #[serde(rename = "to_system_pages")]
    pub pages_to_system: u64,
    /// Faults posted to the device's fault buffer (retry mode).
    pub device_faults: u64,
    /// Posted faults that needed no work.
    pub device_fault_duplicates: u64,
    pub device_fault_batches: u64,
    /// Median service time of the device's fault batches (its recent batch
    /// log; for an `Svm` built for this run, the run's batches), 0 if none.
    pub batch_p50_us: f64,
    /// CPU page faults (uffd fault messages).
    pub cpu_faults: u64,
    pub queue_evictions: u64,
    pub queue_restores: u64,
    /// Every element was checked and right (a report exists only then).
    pub verified: bool,
}

fn ser_location<S: serde::Serializer>(
    l: &Option<Location>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match l {
        Some(l) => s.collect_str(l),
        None => s.serialize_none(),
    }
}

/// One element value, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    F32(f32),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v:?}"),
            Value::F32(v) => write!(f, "{v:?}"),
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Svm(#[from] Error),

    #[error("invalid run configuration: {0}")]
    Config(String),

    /// A kernel stopped on a fatal device fault.
    #[error("{workload}: {step} stopped by a {fault}")]
    DeviceFault {
        workload: Workload,
        step: String,
        fault: Box<DeviceFault>,
    },

    /// Elements read back by the CPU are not what the workload computes.
    #[error(
        "{workload}: verification failed: {mismatches} of {elements} elements of `{array}` are \
         wrong; the first is {array}[{index}]: expected {expected}, found {found}"
    )]
    Verify {
        workload: Workload,
        array: &'static str,
        elements: u64,
        mismatches: u64,
        index: u64,
        expected: Value,
        found: Value,
    },
}

/// Runs workload `w` on device 0 of `svm`; see the module docs.
pub fn run(svm: &Svm, w: Workload, cfg: &RunConfig) -> std::result::Result<RunReport, RunError> {
    if cfg.xnack != svm.xnack() {
        return Err(RunError::Config(format!(
            "the run asks for XNACK {} but the Svm was built with XNACK {}",
            on_off(cfg.xnack),
            on_off(svm.xnack())
        )));
    }
    if cfg.bytes < 8 {
        return Err(RunError::Config(format!(
            "{} bytes per array: need at least 8 (one element)",
            cfg.bytes
        )));
    }
    if w == Workload::Pingpong && cfg.rounds == 0 {
        return Err(RunError::Config("pingpong needs at least 1 round".into()));
    }
    if cfg.granularity > 9 {
        return Err(Error::Granularity {
            value: cfg.granularity,
        }
        .into());
    }
    let bytes = page_round(cfg.bytes);
    // The managed arrays, the CPU's copies of the inputs and its reference
    // results: about three times the working set of host memory.
    let need = w.working_set_bound(bytes).saturating_mul(3);
    if let Some(avail) = host_available().filter(|&a| need > a) {
        return Err(RunError::Config(format!(
            "{w} with {bytes} bytes per array needs about {need} bytes of host memory (managed \
             arrays, the CPU's inputs and reference); {avail} are available: use a smaller size"
        )));
    }
    let mut r = Runner {
        svm,
        w,
        cfg,
        kernel_time: Duration::ZERO,
        launches: 0,
        lanes: 0,
    };
    let before = svm.stats();
    let t = Instant::now();
    match w {
        Workload::Stream => r.stream(bytes)?,
        Workload::Gather => r.gather(bytes)?,
        Workload::Pingpong => r.pingpong(bytes)?,
        Workload::Conv2d => r.conv2d(bytes)?,
        Workload::Conv3d => r.conv3d(bytes)?,
        Workload::Gemm => r.gemm(bytes)?,
        Workload::Atax => r.atax(bytes)?,
        Workload::Bicg => r.bicg(bytes)?,
        Workload::Mvt => r.mvt(bytes)?,
        Workload::Gesummv => r.gesummv(bytes)?,
        Workload::Syr2k => r.syr2k(bytes)?,
        Workload::Hotspot => r.hotspot(bytes)?,
        Workload::Pathfinder => r.pathfinder(bytes)?,
        Workload::Bfs => r.bfs(bytes)?,
        Workload::Gups => r.gups(bytes)?,
        Workload::Nw => r.nw(bytes)?,
        Workload::Nn => r.nn(bytes)?,
    }
    let wall = t.elapsed();
    let after = svm.stats();
    let d = |f: fn(&Stats) -> u64| f(&after).saturating_sub(f(&before));
    Ok(RunReport {
        workload: w,
        bytes,
        working_set_bytes: w.working_set(bytes),
        xnack: cfg.xnack,
        preferred: cfg.preferred,
        granularity: cfg.granularity,
        rounds: if w == Workload::Pingpong {
            cfg.rounds
        } else {
            1
        },
        lanes: r.lanes,
        wall_ms: wall.as_secs_f64() * 1e3,
        kernel_ms: r.kernel_time.as_secs_f64() * 1e3,
        kernel_launches: r.launches,
        bytes_to_device: d(|s| s.to_device_bytes),
        bytes_to_system: d(|s| s.to_system_bytes),
        pages_to_device: d(|s| s.to_device_pages),
        pages_to_system: d(|s| s.to_system_pages),
        device_faults: d(|s| s.device_faults),
        device_fault_duplicates: d(|s| s.device_fault_duplicates),
        device_fault_batches: d(|s| s.device_fault_batches),
        batch_p50_us: svm.device(DEV)?.fault_stats().p50_us,
        cpu_faults: d(|s| s.cpu_faults),
        queue_evictions: d(|s| s.queue_evictions),
        queue_restores: d(|s| s.queue_restores),
        verified: true,
    })
}

/// `MemAvailable` of /proc/meminfo, in bytes (None if it cannot be read).
fn host_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn page_round(b: u64) -> u64 {
    b.next_multiple_of(PAGE_SIZE as u64)
}

/// `gather` work items for a table of `n` elements (one output word each).
fn gather_items(n: u64) -> u64 {
    n.div_ceil(GATHER_READS).max(1)
}

/// Items of [`ITEM_BYTES`] covering `n` 8-byte elements.
fn chunk_items(n: u64) -> u64 {
    n.div_ceil(ITEM_BYTES / 8)
}

/// The element range `[lo, hi)` of chunk item `item` of an array of `n`.
fn chunk(item: u64, n: u64) -> (u64, u64) {
    let per = ITEM_BYTES / 8;
    (item * per, ((item + 1) * per).min(n))
}

/// Runs `f` on this thread's scratch buffer of at least `words` words (kept
/// across work items: a kernel lane is one thread, so no allocation and no
/// first-touch fault per item).
pub(crate) fn with_scratch<R>(words: usize, f: impl FnOnce(&mut [u64]) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < words {
            v.resize(words, 0);
        }
        f(&mut v[..words])
    })
}

/// SplitMix64, the per-item generator of `gather`.
#[derive(Clone, Copy, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn for_item(item: u64) -> Self {
        SplitMix64(GATHER_SEED ^ item.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }
    fn next_u64(&mut self) -> u64 {
        svmem::device::splitmix64(&mut self.0)
    }
}

/// `stream`'s inputs: exact in `f64`, different for neighbouring elements.
fn stream_b(i: u64) -> f64 {
    (i % 1_000_003) as f64 * 0.5
}
fn stream_c(i: u64) -> f64 {
    (i.wrapping_mul(7) % 1009) as f64 + 0.25
}

/// An element type the workloads verify.
trait Element: Copy {
    fn same(self, other: Self) -> bool;
    fn value(self) -> Value;
}

impl Element for u64 {
    fn same(self, other: u64) -> bool {
        self == other
    }
    fn value(self) -> Value {
        Value::U64(self)
    }
}

impl Element for u32 {
    fn same(self, other: u32) -> bool {
        self == other
    }
    fn value(self) -> Value {
        Value::U64(self.into())
    }
}

impl Element for i32 {
    fn same(self, other: i32) -> bool {
        self == other
    }
    fn value(self) -> Value {
        Value::I64(self.into())
    }
}

impl Element for f32 {
    fn same(self, other: f32) -> bool {
        self.to_bits() == other.to_bits()
    }
    fn value(self) -> Value {
        Value::F32(self)
    }
}

impl Element for f64 {
    fn same(self, other: f64) -> bool {
        // The CPU does the same operations as the kernel: bit-exact.
        self.to_bits() == other.to_bits()
    }
    fn value(self) -> Value {
        Value::F64(self)
    }
}

/// Checks every element of `got` against `expected(index)`.
fn verify<T: Element>(
    workload: Workload,
    array: &'static str,
    got: &[T],
    expected: impl Fn(u64) -> T,
) -> Result<(), RunError> {
    let mut first = None;
    let mut mismatches = 0u64;
    for (i, &v) in got.iter().enumerate() {
        let e = expected(i as u64);
        if !v.same(e) {
            mismatches += 1;
            first.get_or_insert((i as u64, e, v));
        }
    }
    match first {
        None => Ok(()),
        Some((index, e, v)) => Err(RunError::Verify {
            workload,
            array,
            elements: got.len() as u64,
            mismatches,
            index,
            expected: e.value(),
            found: v.value(),
        }),
    }
}

/// Checks the first `want.len()` elements of `r`, read as `T`, against `want`.
fn check_array<T: Element + bytemuck::Pod>(
    workload: Workload,
    array: &'static str,
    r: &Region<'_>,
    want: &[T],
) -> Result<(), RunError> {
    let view = r.as_slice::<T>();
    verify(workload, array, &view[..want.len()], |i| want[i as usize])
}

/// Writes `vals` at the start of `r` from the CPU.
fn fill_array<T: bytemuck::Pod>(r: &mut Region<'_>, vals: &[T]) {
    r.as_mut_slice::<T>()[..vals.len()].copy_from_slice(vals);
}

/// A deterministic 64-bit hash of `(salt, i)` (the generators' source).
fn hash2(salt: u64, i: u64) -> u64 {
    pattern_word(salt, i)
}

struct Runner<'a> {
    svm: &'a Svm,
    w: Workload,
    cfg: &'a RunConfig,
    kernel_time: Duration,
    launches: u64,
    lanes: usize,
}

impl<'a> Runner<'a> {
    /// Allocates one array and gives it the run's attributes.
    fn array(&self, bytes: u64) -> Result<Region<'a>, RunError> {
        let len = usize::try_from(bytes).map_err(|_| {
            RunError::Config(format!("{bytes} bytes per array do not fit in memory"))
        })?;
        let r = self.svm.alloc(len)?;
        self.svm
            .set_granularity(r.addr(), r.len(), self.cfg.granularity)?;
        let mut attrs = Vec::new();
        if let Some(loc) = self.cfg.preferred {
            attrs.push(Attr::PreferredLocation(Some(loc)));
        }
        if !self.cfg.xnack {
            // No retry faults: the device may only touch what is mapped
            // ahead, and granting access maps the range (and keeps it mapped).
            attrs.push(Attr::Access(DEV, AccessMode::Access));
        }
        if !attrs.is_empty() {
            self.svm.set_attributes(r.addr(), r.len(), &attrs)?;
        }
        Ok(r)
    }

    /// Allocates an array of `bytes` and writes `vals` at its start.
    fn input<T: bytemuck::Pod>(&self, vals: &[T], bytes: u64) -> Result<Region<'a>, RunError> {
        let mut r = self.array(bytes)?;
        fill_array(&mut r, vals);
        Ok(r)
    }

    /// Launches `kernel` over `grid` items on device 0; a fatal fault is an error.
    fn launch<F>(&mut self, step: impl Into<String>, grid: u64, kernel: F) -> Result<(), RunError>
    where
        F: Fn(&mut Lane<'_>, u64) -> Result<(), DeviceFault> + Sync,
    {
        let rep: LaunchReport = self.svm.device(DEV)?.launch(grid, kernel)?;
        self.finish(step, rep)
    }

    /// A persistent launch ([`svmem::DeviceHandle::launch_steps`]): the
    /// lanes run step after step, `next` (on one lane, between steps) says
    /// the next step's grid or `None`.
    fn launch_steps<F, G>(
        &mut self,
        step: impl Into<String>,
        grid: u64,
        kernel: F,
        next: G,
    ) -> Result<(), RunError>
    where
        F: Fn(&mut Lane<'_>, u64, u64) -> Result<(), DeviceFault> + Sync,
        G: FnMut(&mut Lane<'_>, u64) -> Result<Option<u64>, DeviceFault> + Send,
    {
        let rep = self.svm.device(DEV)?.launch_steps(grid, kernel, next)?;
        self.finish(step, rep)
    }

    fn finish(&mut self, step: impl Into<String>, rep: LaunchReport) -> Result<(), RunError> {
        self.kernel_time += rep.elapsed;
        self.launches += 1;
        self.lanes = rep.lanes;
        match rep.fatal {
            Some(fault) => Err(RunError::DeviceFault {
                workload: self.w,
                step: step.into(),
                fault: Box::new(fault),
            }),
            None => Ok(()),
        }
    }

    fn stream(&mut self, bytes: u64) -> Result<(), RunError> {
        let n = bytes / 8;
        let a = self.array(bytes)?;
        let mut b = self.array(bytes)?;
        let mut c = self.array(bytes)?;
        for (i, v) in b.as_mut_slice::<f64>().iter_mut().enumerate() {
            *v = stream_b(i as u64);
        }
        for (i, v) in c.as_mut_slice::<f64>().iter_mut().enumerate() {
            *v = stream_c(i as u64);
        }
        let (pa, pb, pc) = (a.addr(), b.addr(), c.addr());
        self.launch("the triad kernel", chunk_items(n), |lane, item| {
            let (lo, hi) = chunk(item, n);
            let len = (hi - lo) as usize;
            with_scratch(2 * len, |buf| {
                let (x, y) = buf.split_at_mut(len);
                let (x, y): (&mut [f64], &mut [f64]) =
                    (bytemuck::cast_slice_mut(x), bytemuck::cast_slice_mut(y));
                lane.read_slice(pb.offset(lo * 8), x)?;
                lane.read_slice(pc.offset(lo * 8), y)?;
                for (x, y) in x.iter_mut().zip(y.iter()) {
                    *x += STREAM_SCALAR * *y;
                }
                lane.write_slice(pa.offset(lo * 8), x)
            })
        })?;
        let view = a.as_slice::<f64>();
        verify(self.w, "a", &view, |i| {
            stream_b(i) + STREAM_SCALAR * stream_c(i)
        })
    }

    fn gather(&mut self, bytes: u64) -> Result<(), RunError> {
        let n = bytes / 8;
        let items = gather_items(n);
        let mut table = self.array(bytes)?;
        let out = self.array(items * 8)?;
        for (i, v) in table.as_mut_slice::<u64>().iter_mut().enumerate() {
            *v = pattern_word(GATHER_SEED, i as u64);
        }
        let (pt, po) = (table.addr(), out.addr());
        self.launch("the gather kernel", items, |lane, item| {
            let mut rng = SplitMix64::for_item(item);
            let mut sum = 0u64;
            for _ in 0..GATHER_READS {
                let j = rng.next_u64() % n;
                sum = sum.wrapping_add(lane.load::<u64>(pt.offset(j * 8))?);
            }
            lane.store(po.offset(item * 8), sum)
        })?;
        let out_words = &out.as_slice::<u64>()[..items as usize];
        verify(self.w, "out", out_words, |item| {
            let mut rng = SplitMix64::for_item(item);
            (0..GATHER_READS).fold(0u64, |s, _| {
                s.wrapping_add(pattern_word(GATHER_SEED, rng.next_u64() % n))
            })
        })
    }

    fn pingpong(&mut self, bytes: u64) -> Result<(), RunError> {
        let n = bytes / 8;
        let mut x = self.array(bytes)?;
        let px: VirtAddr = x.addr();
        for round in 1..=self.cfg.rounds {
            self.launch(
                format!("the increment kernel of round {round}"),
                chunk_items(n),
                |lane, item| {
                    let (lo, hi) = chunk(item, n);
                    with_scratch((hi - lo) as usize, |buf| {
                        lane.read_slice(px.offset(lo * 8), buf)?;
                        buf.iter_mut().for_each(|v| *v = v.wrapping_add(1));
                        lane.write_slice(px.offset(lo * 8), buf)
                    })
                },
            )?;
            for v in x.as_mut_slice::<u64>().iter_mut() {
                *v = v.wrapping_add(1);
            }
        }
        let want = 2 * u64::from(self.cfg.rounds);
        let view = x.as_slice::<u64>();
        verify(self.w, "x", &view, |_| want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
            assert_eq!(w.to_string(), w.name());
        }
        let e = "maybe".parse::<Workload>().expect_err("not a workload");
        assert!(e.to_string().contains("`maybe`"), "{e}");
    }

    #[test]
    fn verify_names_the_first_wrong_element() {
        let got = [0u64, 1, 5, 3, 9];
        let e = verify(Workload::Pingpong, "x", &got, |i| i).expect_err("two wrong");
        let RunError::Verify {
            mismatches,
            index,
            expected,
            found,
            ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!((*mismatches, *index), (2, 2));
        assert_eq!((*expected, *found), (Value::U64(2), Value::U64(5)));
        assert!(e.to_string().contains("x[2]: expected 2, found 5"), "{e}");
        assert!(verify(Workload::Stream, "a", &[1.5f64], |_| 1.5).is_ok());
    }

    #[test]
    fn working_sets() {
        assert_eq!(Workload::Stream.working_set(1000), 3 * 4096);
        assert_eq!(Workload::Pingpong.working_set(8192), 8192);
        // 512 table words → 16 items → one page of output.
        assert_eq!(Workload::Gather.working_set(4096), 2 * 4096);
        for b in [4096, 1 << 20, 3 << 20] {
            let (exact, bound) = (
                Workload::Bfs.working_set(b),
                Workload::Bfs.working_set_bound(b),
            );
            assert!(exact <= bound && bound < exact * 2, "{b}: {exact} {bound}");
        }
    }
}
