//! The `svmem` command line: an end-to-end demo on the emulated device,
//! workloads driven by device kernels, and benchmarks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use svmem::{DeviceId, EmulatedConfig, Location, MemoryType, Stats, Svm};
use svmem_cli::bench::{self, BenchError, Machine, MigrateBench, Spread};
use svmem_cli::bench_faults::{self, FaultsBench};
use svmem_cli::bench_oversub::{self, OversubBench};
use svmem_cli::bench_suite::{self, SuiteConfig};
use svmem_cli::limits::{self, Capacity, FlagError};
use svmem_cli::units::{human_bytes, parse_size};
use svmem_cli::workloads::{self, RunConfig, RunError, RunReport, Workload};
use svmem_cli::{plot, progress, table, trace};

#[derive(Parser)]
#[command(
    name = "svmem",
    version,
    about = "Shared virtual memory for heterogeneous devices, in user space"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// End-to-end run on an emulated device; every step timed, every byte verified
    ///
    /// Steps: the CPU fills managed memory (first-touch faults), migrate to the
    /// device, the device reads and the demo verifies, the device writes a new
    /// pattern, the CPU reads it back through page faults and verifies, migrate
    /// to the device again, release the device, verify again. Exits non-zero
    /// if any verification fails.
    Demo {
        /// Bytes of managed memory (suffixes K, M, G: KiB, MiB, GiB).
        #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_size)]
        size: u64,
        /// Bytes of emulated device memory (suffixes K, M, G).
        #[arg(long, value_name = "BYTES", default_value = "512M", value_parser = parse_size)]
        device_memory: u64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trace: TraceOut,
    },
    /// Run a workload on an emulated device: CPU and device kernels share
    /// managed memory, every result is verified
    ///
    /// Workloads (each array is --size bytes):
    ///   stream    the CPU writes b and c (f64); a kernel computes a = b + 3·c in
    ///             64 KiB work items; the CPU checks every element of a
    ///   gather    the CPU writes table[i] = f(i) (u64); each work item sums 32
    ///             random elements into out[item]; the CPU recomputes every sum
    ///   pingpong  per round a kernel adds 1 to every element of x (u64), then
    ///             the CPU does; at the end every element must be 2·rounds
    ///   2dconv 3dconv gemm atax bicg mvt gesummv syr2k hotspot pathfinder
    ///   bfs gups nw nn: benchmark kernels sized from --size, each checked
    ///             against a CPU reference (see svmem_cli::workloads)
    ///
    /// Prints what moved (bytes each way, faults, fault batches, migrations,
    /// queue evictions) as a table, or with --json as one JSON object on one
    /// line. Exits non-zero if any element is wrong or a kernel stops on a
    /// fatal device fault.
    ///
    /// With --events, every event of the run (migrations, device faults,
    /// queue evictions and restores, device unmaps) is printed on stdout as one
    /// JSON object per line, after the run and before the report; the report
    /// then says how many events were printed and how many were dropped (a
    /// subscriber that falls 65536 events behind loses the newest). With --json
    /// too, stdout is JSON Lines: the events, then the report as the last line
    /// (the only line without an "event" field).
    #[command(verbatim_doc_comment)]
    Run {
        /// The workload.
        #[arg(value_name = "WORKLOAD", value_parser = workload_parser())]
        workload: Workload,
        /// Bytes per array (suffixes K, M, G: KiB, MiB, GiB).
        #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_size)]
        size: u64,
        /// Retry device faults (on), or map every array ahead and treat a
        /// device access without a translation as fatal (off).
        #[arg(long, value_name = "MODE", default_value = "on")]
        xnack: OnOff,
        /// Preferred location of every array (default: none).
        #[arg(long, value_name = "WHERE")]
        preferred: Option<Place>,
        /// Fault and migration granularity, log2 pages: 0 (4 KiB) to 9 (2 MiB).
        #[arg(long, value_name = "N", default_value_t = 9,
              value_parser = clap::value_parser!(u8).range(0..=9))]
        granularity: u8,
        /// pingpong rounds (the other workloads run once).
        #[arg(long, value_name = "N", default_value_t = 4,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        rounds: u32,
        /// Bytes of emulated device memory (suffixes K, M, G) [default: the
        /// workload's arrays + 64M, so everything fits].
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        device_memory: Option<u64>,
        /// Print the report as one JSON object (one line) instead of the table.
        #[arg(long)]
        json: bool,
        /// Print every event of the run as a JSON line (see above).
        #[arg(long)]
        events: bool,
        /// Timing model of the device: none, pcie4, pcie5, coherent, apu.
        #[arg(long, value_name = "NAME", default_value = "none", value_parser = profile_parser)]
        profile: svmem::TimingProfile,
        #[command(flatten)]
        trace: TraceOut,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Draw a trace (from --trace) as an SVG: bytes resident per location and
    /// migration throughput per direction over time
    Plot {
        /// The trace file `--trace FILE` wrote.
        #[arg(value_name = "TRACE")]
        trace: PathBuf,
        /// The SVG to write [default: TRACE with the extension .svg].
        #[arg(short, long, value_name = "FILE.svg")]
        output: Option<PathBuf>,
    },
}

/// Options every benchmark takes.
#[derive(Args)]
struct BenchOut {
    /// Measured runs (the median is reported).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    runs: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    trace: TraceOut,
}

/// Where to write a trace and a plot of what svmem did.
#[derive(Args, Clone, Default)]
struct TraceOut {
    /// Write a trace of what svmem did to FILE: Chrome trace-event JSON
    /// (open it in ui.perfetto.dev or chrome://tracing): migrations per
    /// direction, device fault batches, CPU faults, evictions, queue
    /// evictions, and bytes resident per location.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Draw bytes resident per location and migration throughput over time
    /// as an SVG (as `svmem plot` does with a trace).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

impl TraceOut {
    fn wanted(&self) -> bool {
        self.trace.is_some() || self.plot.is_some()
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// memcpy vs. migration to the device and back vs. a CPU fault sweep
    ///
    /// All on the same bytes in one process: per run, a single-thread copy of
    /// the region (the faster of memcpy and a streaming copy: the copy
    /// limit), migrate all to device 0, migrate all back, and a sequential
    /// CPU read of device-resident pages that faults them back. Reports
    /// medians, min and max, and each rate divided by the same run's copy
    /// limit.
    Migrate {
        /// Bytes of managed memory (suffixes K, M, G: KiB, MiB, GiB).
        #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        out: BenchOut,
    },
    /// Device-fault-driven migration vs. memcpy; fault batch service times
    ///
    /// In one process, per run on fresh regions: a single-thread copy of
    /// --size bytes (the faster of memcpy and a streaming copy); a kernel reading the same CPU-written bytes (preferred
    /// location device 0, XNACK on) in 2 MiB items, so every page reaches the
    /// device through device faults (ratio to that copy: target >= 0.50); the
    /// time of migrating one 2 MiB block; and a kernel on a 256-lane device
    /// whose lanes all fault on different pages of one block, block after
    /// block, so batches of 256 faults form (their median service time:
    /// target < block migrate + 100 µs). Reports medians, min and max.
    /// Device memory is --size + 64M.
    Faults {
        /// Bytes of the sweep region (suffixes K, M, G: KiB, MiB, GiB).
        #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        out: BenchOut,
    },
    /// A device kernel streaming over working sets larger than device memory
    ///
    /// Per run, on a fresh Svm each (XNACK on, preferred location device 0):
    /// working sets of 0.5x, 1.25x, 1.5x and 2x device memory, one untimed
    /// warm-up pass, then --passes timed passes reading every byte. Reports
    /// wall time, slowdown_vs_fit (time per byte over the 0.5x case; target
    /// at 2x: <= 3), evictions and bytes moved each way.
    Oversub {
        /// Device memory (suffixes K, M, G: KiB, MiB, GiB).
        #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_size)]
        device_memory: u64,
        /// Timed passes over each working set.
        #[arg(long, value_name = "N", default_value_t = 3,
              value_parser = clap::value_parser!(u32).range(1..=1_000))]
        passes: u32,
        /// Timing model of the device: none, pcie4, pcie5, coherent, apu.
        #[arg(long, value_name = "NAME", default_value = "none", value_parser = profile_parser)]
        profile: svmem::TimingProfile,
        #[command(flatten)]
        out: BenchOut,
    },
    /// Every workload at every footprint level, timed by a device model
    ///
    /// Per workload and level x, on a fresh Svm (XNACK on, no preferred
    /// location): device memory is the working set / x, the workload runs and
    /// is verified. Reports modelled time (timing profile --profile), the
    /// slowdown against the 1.0 run, bytes migrated each way, bytes read and
    /// written remotely, device faults, fault batches, evictions, wall time.
    Suite {
        /// Timing model of the device: none, pcie4, pcie5, coherent, apu.
        #[arg(long, value_name = "NAME", default_value = "pcie4", value_parser = profile_parser)]
        profile: svmem::TimingProfile,
        /// Footprint levels, multiples of device memory.
        #[arg(
            long,
            value_name = "X,..",
            value_delimiter = ',',
            default_value = "1.0,1.25,1.5"
        )]
        oversub: Vec<f64>,
        /// Workloads to run [default: all].
        #[arg(long, value_name = "NAME,..", value_delimiter = ',', value_parser = workload_parser())]
        kernels: Vec<Workload>,
        /// Bytes per array (suffixes K, M, G: KiB, MiB, GiB).
        #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_size)]
        size: u64,
        /// Runs per row (the median run's figures are reported).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=1_000))]
        runs: u32,
        /// Prefetchers to compare: none, density.
        #[arg(long, value_name = "NAME,..", value_delimiter = ',', default_value = "none",
              value_parser = |s: &str| svmem::Prefetch::by_name(s).map_err(|e| e.to_string()))]
        prefetch: Vec<svmem::Prefetch>,
        /// Fault granularity, log2 pages: 0 (4 KiB) to 9 (2 MiB).
        #[arg(long, value_name = "N", default_value_t = 9,
              value_parser = clap::value_parser!(u8).range(0..=9))]
        granularity: u8,
        /// Eviction policies to compare: clock, lru, alloc (allocation order).
        #[arg(long, value_name = "NAME,..", value_delimiter = ',', default_value = "clock",
              value_parser = |s: &str| svmem::Eviction::by_name(s).map_err(|e| e.to_string()))]
        eviction: Vec<svmem::Eviction>,
        /// Thrashing mitigation settings to compare: on, off.
        #[arg(
            long,
            value_name = "on|off,..",
            value_delimiter = ',',
            default_value = "on"
        )]
        mitigation: Vec<OnOff>,
        /// Thrash streaks to compare: evictions of a block in a row before
        /// its refault counts as thrashing (1 to 3).
        #[arg(long, value_name = "N,..", value_delimiter = ',', default_value = "1",
              value_parser = clap::value_parser!(u8).range(1..=3))]
        thrash_streak: Vec<u8>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trace: TraceOut,
    },
}

/// Parses a timing profile's name.
fn profile_parser(s: &str) -> Result<svmem::TimingProfile, String> {
    svmem::TimingProfile::by_name(s).map_err(|e| e.to_string())
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// A preferred location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Place {
    /// System memory.
    System,
    /// Device 0's memory.
    Device,
}

/// Parses a workload name; the help and errors list the names.
fn workload_parser() -> impl TypedValueParser<Value = Workload> {
    clap::builder::PossibleValuesParser::new(Workload::ALL.map(Workload::name))
        .try_map(|s| s.parse::<Workload>())
}

fn main() -> ExitCode {
    svmem_cli::default_sigpipe();
    let cli = Cli::parse();
    if let Err(e) = check_flags(&cli.command, &Capacity::detect()) {
        eprintln!("svmem: {e}");
        return ExitCode::from(2);
    }
    let (json, outputs) = cli.command.outputs();
    progress::enable(progress::wanted(json));
    if outputs.wanted() {
        trace::install();
    }
    let result = match cli.command {
        Command::Demo {
            size,
            device_memory,
            json,
            ..
        } => demo(size, device_memory, json),
        Command::Run {
            workload,
            size,
            xnack,
            preferred,
            granularity,
            rounds,
            device_memory,
            json,
            events,
            profile,
            ..
        } => {
            let cfg = RunConfig {
                bytes: size,
                xnack: xnack == OnOff::On,
                preferred: preferred.map(|p| match p {
                    Place::System => Location::System,
                    Place::Device => Location::Device(DeviceId(0)),
                }),
                granularity,
                rounds,
            };
            run(workload, &cfg, device_memory, json, events, profile)
        }
        Command::Bench {
            which: BenchCommand::Migrate { size, out },
        } => bench::bench_migrate(size, out.runs as usize)
            .map_err(CliError::from)
            .and_then(|b| show(&b, out.json, print_bench)),
        Command::Bench {
            which: BenchCommand::Faults { size, out },
        } => bench_faults::bench_faults(size, out.runs as usize)
            .map_err(CliError::from)
            .and_then(|b| show(&b, out.json, print_faults_bench)),
        Command::Bench {
            which:
                BenchCommand::Oversub {
                    device_memory,
                    passes,
                    profile,
                    out,
                },
        } => bench_oversub::bench_oversub(device_memory, passes, out.runs as usize, profile)
            .map_err(CliError::from)
            .and_then(|b| show(&b, out.json, print_oversub_bench)),
        Command::Bench {
            which:
                BenchCommand::Suite {
                    profile,
                    oversub,
                    kernels,
                    size,
                    runs,
                    prefetch,
                    granularity,
                    eviction,
                    mitigation,
                    thrash_streak,
                    json,
                    ..
                },
        } => bench_suite::bench_suite(&SuiteConfig {
            profile,
            levels: oversub,
            kernels: if kernels.is_empty() {
                Workload::SUITE.to_vec()
            } else {
                kernels
            },
            bytes: size,
            runs: runs as usize,
            prefetch,
            granularity,
            eviction,
            mitigation: mitigation.iter().map(|m| *m == OnOff::On).collect(),
            thrash_streak,
        })
        .map_err(CliError::from)
        .and_then(|b| show(&b, json, bench_suite::print_table)),
        Command::Plot { trace, output } => plot_trace(&trace, output.as_deref()),
    };
    // The trace and plot are written whatever the outcome: a failed run's
    // trace shows what happened.
    let written = write_outputs(&outputs);
    match result.and_then(|code| written.map(|()| code)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("svmem: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Whether the output is JSON, and where traces and plots go.
    fn outputs(&self) -> (bool, TraceOut) {
        match self {
            Command::Demo { json, trace, .. } | Command::Run { json, trace, .. } => {
                (*json, trace.clone())
            }
            Command::Bench { which } => match which {
                BenchCommand::Migrate { out, .. }
                | BenchCommand::Faults { out, .. }
                | BenchCommand::Oversub { out, .. } => (out.json, out.trace.clone()),
                BenchCommand::Suite { json, trace, .. } => (*json, trace.clone()),
            },
            Command::Plot { .. } => (false, TraceOut::default()),
        }
    }
}

/// Writes the trace and the plot the command was asked for.
fn write_outputs(o: &TraceOut) -> Result<(), CliError> {
    let Some(tracer) = trace::installed() else {
        return Ok(());
    };
    let json = tracer.to_json();
    if let Some(path) = &o.trace {
        let text = serde_json::to_string(&json).map_err(|e| CliError::Other(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| {
            CliError::Other(format!(
                "cannot write the trace to {}: {e}; pass --trace a path in a writable directory",
                path.display()
            ))
        })?;
    }
    if let Some(path) = &o.plot {
        write_plot(&json, path, "svmem")?;
    }
    Ok(())
}

/// Draws the trace `trace` into the SVG file `path`.
fn write_plot(trace: &serde_json::Value, path: &Path, title: &str) -> Result<(), CliError> {
    let series = plot::Series::from_trace(trace)?;
    let svg = plot::svg(&series, title)?;
    std::fs::write(path, svg).map_err(|e| {
        CliError::Other(format!(
            "cannot write the plot to {}: {e}; pass a path in a writable directory",
            path.display()
        ))
    })
}

/// `svmem plot`.
fn plot_trace(path: &Path, output: Option<&Path>) -> Result<ExitCode, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Other(format!(
            "cannot read the trace {}: {e}; pass the file `--trace FILE` wrote",
            path.display()
        ))
    })?;
    let trace: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CliError::Other(format!(
            "{} is not JSON ({e}); pass the file `--trace FILE` wrote",
            path.display()
        ))
    })?;
    let out = output.map_or_else(|| path.with_extension("svg"), Path::to_path_buf);
    let title = format!("svmem: {}", path.display());
    write_plot(&trace, &out, &title)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Device memory below one 2 MiB block (the unit svmem migrates and evicts)
/// cannot hold a block.
const MIN_DEVICE_MEMORY: u64 = 2 << 20;
/// Benchmark regions below this migrate too fast to time against the copy
/// limit (about a millisecond at 20 GB/s).
const MIN_BENCH_BYTES: u64 = 16 << 20;
/// Device memory `svmem run` adds to the working set by default.
const RUN_DEVICE_HEADROOM: u64 = 64 << 20;

/// Checks the size flags against the machine before anything is allocated:
/// each refusal names the flag, the value, the limit and a value that passes.
fn check_flags(cmd: &Command, cap: &Capacity) -> Result<(), FlagError> {
    let device = |d: u64, data: u64| -> Result<(), FlagError> {
        limits::at_least(
            "--device-memory",
            d,
            MIN_DEVICE_MEMORY,
            "one 2 MiB block, the unit svmem migrates and evicts",
        )?;
        limits::whole_pages("--device-memory", d, "device memory comes in")?;
        limits::committed_fits(
            "--device-memory",
            d,
            |d| d + data,
            "emulated device memory is real memory: with the data this needs",
            cap,
        )
    };
    match cmd {
        Command::Plot { .. } => Ok(()),
        Command::Demo {
            size,
            device_memory,
            ..
        } => {
            limits::whole_pages("--size", *size, "the demo moves")?;
            limits::managed_fits("--size", *size, |v| v, cap)?;
            device(*device_memory, *size)
        }
        Command::Run {
            workload,
            size,
            device_memory,
            ..
        } => {
            let w = *workload;
            limits::managed_fits("--size", *size, |v| w.working_set(v), cap)?;
            match device_memory {
                Some(d) => device(*d, w.working_set(*size)),
                None => limits::committed_fits(
                    "--size",
                    *size,
                    |v| 2 * w.working_set(v) + RUN_DEVICE_HEADROOM,
                    "the arrays and the device memory to hold them (plus 64 MiB) need",
                    cap,
                ),
            }
        }
        Command::Bench {
            which: BenchCommand::Migrate { size, .. } | BenchCommand::Faults { size, .. },
        } => {
            limits::at_least(
                "--size",
                *size,
                MIN_BENCH_BYTES,
                "smaller regions move too fast to time",
            )?;
            limits::managed_fits("--size", *size, |v| v, cap)?;
            limits::committed_fits(
                "--size",
                *size,
                |v| 3 * v + RUN_DEVICE_HEADROOM,
                "the region, its device memory and a copy buffer need",
                cap,
            )
        }
        Command::Bench {
            which: BenchCommand::Suite { size, kernels, .. },
        } => {
            let kernels: &[Workload] = if kernels.is_empty() {
                &Workload::SUITE
            } else {
                kernels
            };
            let most = |v: u64| kernels.iter().map(|w| w.working_set(v)).max().unwrap_or(v);
            limits::managed_fits("--size", *size, most, cap)?;
            limits::committed_fits(
                "--size",
                *size,
                |v| 2 * most(v) + RUN_DEVICE_HEADROOM,
                "the largest kernel's arrays and the device memory to hold them need",
                cap,
            )
        }
        Command::Bench {
            which: BenchCommand::Oversub { device_memory, .. },
        } => {
            let d = *device_memory;
            limits::at_least(
                "--device-memory",
                d,
                MIN_BENCH_BYTES,
                "smaller devices evict too fast to time",
            )?;
            limits::whole_pages("--device-memory", d, "device memory comes in")?;
            limits::managed_fits("--device-memory", d, |d| 2 * d, cap)?;
            limits::committed_fits(
                "--device-memory",
                d,
                |d| 3 * d,
                "the device and its largest working set (2x) need",
                cap,
            )
        }
    }
}

/// Prints a benchmark's result as pretty JSON or as its table.
fn show<T: serde::Serialize>(v: &T, json: bool, table: fn(&T)) -> Result<ExitCode, CliError> {
    if json {
        print_json(v)?;
    } else {
        table(v);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::Other(e.to_string()))?;
    println!("{s}");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Svm(#[from] svmem::Error),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error("{0}")]
    Other(String),
}

// ---------------------------------------------------------------- bench

fn print_bench(b: &MigrateBench) {
    println!(
        "svmem bench migrate: {} region ({} pages), {} run(s), emulated device {} with {} copy engine(s)",
        human_bytes(b.size_bytes),
        b.pages,
        b.runs,
        human_bytes(b.device_memory_bytes),
        b.copy_engines,
    );
    println!("machine: {}", b.machine);
    println!();
    let s = &b.spread;
    let mut t = rows_table(
        "operation (GB/s)",
        &[
            ("copy limit (1 thread)", Some(s.memcpy_gbps), None),
            ("  memcpy (libc)", Some(s.memcpy_libc_gbps), None),
            ("  streaming copy", Some(s.memcpy_stream_gbps), None),
            (
                "copy limit (all cores)",
                Some(s.memcpy_all_cores_gbps),
                None,
            ),
            (
                "migrate to device",
                Some(s.to_device_gbps),
                Some(s.to_device_ratio),
            ),
            (
                "  ÷ all-cores limit",
                Some(s.to_device_gbps),
                Some(s.to_device_ratio_all_cores),
            ),
            (
                "migrate to system",
                Some(s.to_system_gbps),
                Some(s.to_system_ratio),
            ),
            (
                "  ÷ all-cores limit",
                Some(s.to_system_gbps),
                Some(s.to_system_ratio_all_cores),
            ),
            (
                "CPU fault sweep (read)",
                Some(s.cpu_fault_sweep_gbps),
                Some(s.cpu_fault_sweep_ratio),
            ),
        ],
    );
    t.add_row(vec![
        "first-touch fill (once)".to_string(),
        format!("{:.2}", b.first_touch_fill_gbps),
    ]);
    println!("{}", table::text(&t));
    println!();
    println!("per run:");
    let mut t = table::new(
        &[
            "run",
            "memcpy ms",
            "to dev ms",
            "to sys ms",
            "sweep ms",
            "sweep faults",
            "sweep windows",
        ],
        &[0, 1, 2, 3, 4, 5, 6],
    );
    for (i, r) in b.samples.iter().enumerate() {
        t.add_row(vec![
            i.to_string(),
            format!("{:.2}", r.memcpy_ms),
            format!("{:.2}", r.to_device_ms),
            format!("{:.2}", r.to_system_ms),
            format!("{:.2}", r.cpu_fault_sweep_ms),
            r.sweep_cpu_faults.to_string(),
            r.sweep_fault_windows.to_string(),
        ]);
    }
    println!("{}", table::text(&t));
    println!();
    println!(
        "metadata: {:.2} bytes per 4 KiB page ({:.3}% of the data)",
        b.metadata_bytes_per_page,
        b.metadata_bytes_per_page / 4096.0 * 100.0
    );
    println!("data verified: every word after all runs, checksum after every sweep");
    println!();
    print_counters(&b.counters);
}

/// A bench table: one row per quantity with its median, min and max over
/// the runs ("none" when it was never measured), and the spread of its
/// ratio to the copy limit where it has one.
fn rows_table(first: &str, rows: &[(&str, Option<Spread>, Option<Spread>)]) -> comfy_table::Table {
    let mut t = table::new(
        &[
            first,
            "median",
            "min",
            "max",
            "÷ copy limit (median [min–max])",
        ],
        &[1, 2, 3, 4],
    );
    for (name, v, ratio) in rows {
        let r = ratio.map_or(String::new(), |r| {
            format!("{:.3} [{:.3}–{:.3}]", r.median, r.min, r.max)
        });
        match v {
            Some(v) => t.add_row(vec![
                name.to_string(),
                format!("{:.2}", v.median),
                format!("{:.2}", v.min),
                format!("{:.2}", v.max),
                r,
            ]),
            None => t.add_row(vec![name.to_string(), "none".to_string()]),
        };
    }
    t
}

fn print_counters(s: &Stats) {
    println!("counters:");
    // Stats is a flat struct of numbers; its JSON keeps the field order.
    let Ok(json) = serde_json::to_string(s) else {
        return;
    };
    let body = json.trim_start_matches('{').trim_end_matches('}');
    let rows = body
        .split(',')
        .filter_map(|field| field.split_once(':'))
        .map(|(k, v)| (format!("  {}", k.trim_matches('"')), v.to_string()));
    println!("{}", table::text(&table::key_values(rows)));
}

fn print_oversub_bench(b: &OversubBench) {
    println!(
        "svmem bench oversub: emulated device {}, {} lane(s), {} timed pass(es) per working set, {} run(s)",
        human_bytes(b.device_memory_bytes),
        b.lanes,
        b.passes,
        b.runs
    );
    let mut t = table::new(
        &[
            "set",
            "mitigation",
            "bytes",
            "wall ms",
            "GB/s",
            "slowdown (min..max)",
            "evictions",
            "to device",
            "to system",
        ],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8],
    );
    for p in &b.points {
        t.add_row(vec![
            format!("{:.2}x", p.ratio),
            mitigation(p).to_string(),
            human_bytes(p.working_set_bytes),
            format!("{:.1}", p.wall_ms),
            format!("{:.2}", p.gbps),
            format!(
                "{:.2} ({:.2}..{:.2})",
                p.slowdown_vs_fit, p.slowdown_spread.min, p.slowdown_spread.max
            ),
            p.evictions.to_string(),
            human_bytes(p.to_device_bytes),
            human_bytes(p.to_system_bytes),
        ]);
    }
    println!("{}", table::text(&t));
    println!(
        "  slowdown at 2x: {:.2} (target <= {:.1}): {}; without the thrashing mitigation: {:.2}",
        b.slowdown_2x,
        b.target_slowdown_2x,
        if b.within_target { "met" } else { "NOT met" },
        b.slowdown_2x_without_mitigation
    );
    if b.profile != "none" {
        let points: Vec<String> = b
            .points
            .iter()
            .map(|p| {
                let m = match mitigation(p) {
                    "-" => String::new(),
                    m => format!(" {m}"),
                };
                format!(
                    "{:.2}x{m} {:.2} ({:.1} ms)",
                    p.ratio, p.modelled_slowdown_vs_fit, p.modelled_ms
                )
            })
            .collect();
        println!(
            "  modelled slowdown (profile {}): {}",
            b.profile,
            points.join(", ")
        );
    }
}

/// Whether a working set ran with the thrashing mitigation ("-" when it fits
/// and nothing is evicted).
fn mitigation(p: &bench_oversub::OversubPoint) -> &'static str {
    if p.ratio <= 1.0 {
        "-"
    } else if p.thrash_mitigation {
        "on"
    } else {
        "off"
    }
}

fn print_faults_bench(b: &FaultsBench) {
    println!(
        "svmem bench faults: {} sweep region, {} run(s), emulated device {} with {} copy engine(s), {} lane(s); \
         fault service: {} lanes over {} blocks of 2 MiB",
        human_bytes(b.size_bytes),
        b.runs,
        human_bytes(b.device_memory_bytes),
        b.copy_engines,
        b.sweep_lanes,
        b.service_lanes,
        b.service_blocks,
    );
    println!("machine: {}", b.machine);
    println!();
    let s = &b.spread;
    let t = rows_table(
        "operation",
        &[
            ("copy limit (1 thread), GB/s", Some(s.memcpy_gbps), None),
            ("  memcpy (libc), GB/s", Some(s.memcpy_libc_gbps), None),
            ("  streaming copy, GB/s", Some(s.memcpy_stream_gbps), None),
            (
                "device fault sweep, GB/s",
                Some(s.device_fault_sweep_gbps),
                Some(s.device_fault_sweep_ratio),
            ),
            ("block migrate (2 MiB), µs", Some(s.block_migrate_us), None),
            ("batch service p50, µs", Some(s.batch_service_p50_us), None),
            // No spread when no batch held 256 faults.
            (
                "full batch (256) p50, µs",
                b.full_batch_service_p50_us
                    .map(|_| s.full_batch_service_p50_us),
                None,
            ),
            ("faults per second (busy)", Some(s.faults_per_sec), None),
        ],
    );
    println!("{}", table::text(&t));
    println!();
    println!(
        "device fault sweep ÷ copy limit: {:.3} (target >= 0.50: {})",
        b.device_fault_sweep_ratio,
        if b.device_fault_sweep_ratio >= 0.5 {
            "met"
        } else {
            "NOT met"
        }
    );
    match b.full_batch_service_p50_us {
        Some(p) => println!(
            "full batch p50 {p:.1} µs vs. block migrate + 100 µs = {:.1} µs: {}",
            b.full_batch_target_us,
            if b.full_batch_within_target {
                "within target"
            } else {
                "NOT within target"
            }
        ),
        None => println!("no batch held 256 faults: full-batch target not measurable"),
    }
    println!();
    println!("per run:");
    let mut t = table::new(
        &[
            "run",
            "memcpy ms",
            "sweep ms",
            "ratio",
            "swp flts",
            "swp ahead",
            "migr µs",
            "batches",
            "full",
            "faults",
            "dups",
            "p50 µs",
            "full p50",
        ],
        &(0..13).collect::<Vec<_>>(),
    );
    for (i, r) in b.samples.iter().enumerate() {
        t.add_row(vec![
            i.to_string(),
            format!("{:.2}", r.memcpy_ms),
            format!("{:.2}", r.device_fault_sweep_ms),
            format!("{:.3}", r.device_fault_sweep_ratio),
            r.sweep_faults.to_string(),
            r.sweep_ahead_pages.to_string(),
            format!("{:.1}", r.block_migrate_us),
            r.batches.to_string(),
            r.full_batches.to_string(),
            r.faults.to_string(),
            r.duplicates.to_string(),
            format!("{:.1}", r.batch_service_p50_us),
            r.full_batch_service_p50_us
                .map_or("-".to_string(), |p| format!("{p:.1}")),
        ]);
    }
    println!("{}", table::text(&t));
    println!();
    println!(
        "fault service totals: {} faults ({} duplicates) in {} batches, {} of them full",
        b.faults, b.duplicates, b.batches, b.full_batches
    );
    println!("data verified: checksum of every sweep and of every fault-service kernel");
}

// ---------------------------------------------------------------- run

/// `svmem run --json` output: the report, plus the event counts with --events.
#[derive(serde::Serialize)]
struct RunOutput<'a> {
    #[serde(flatten)]
    report: &'a RunReport,
    device_memory_bytes: u64,
    /// Of `to_device_pages`, pages the device zero-filled: migrated, but no
    /// byte copied (so not in `to_device_bytes`).
    device_zero_fill_pages: u64,
    /// 2 MiB device blocks evicted under device-memory pressure.
    evictions: u64,
    /// Pages those evictions moved back to system memory.
    evicted_pages: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events_dropped: Option<u64>,
    /// The timing model's account of the run.
    timing: svmem::TimingReport,
}

fn run(
    w: Workload,
    cfg: &RunConfig,
    device_memory: Option<u64>,
    json: bool,
    events: bool,
    profile: svmem::TimingProfile,
) -> Result<ExitCode, CliError> {
    let device_memory = device_memory.unwrap_or(w.working_set(cfg.bytes) + RUN_DEVICE_HEADROOM);
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "emulated0".into(),
            memory_bytes: device_memory,
            ..EmulatedConfig::default()
        })?
        .xnack(cfg.xnack)
        .timing(profile)
        .build()?;
    let t0 = svm.device(DeviceId(0))?.timing().unwrap_or_default();
    let s0 = svm.stats();
    let spinner = progress::spinner(&format!("svmem run {w}"));
    spinner.set_message("allocating, initialising, running kernels, verifying");
    let tracer = trace::installed();
    let go = || workloads::run(&svm, w, cfg);
    // A recording collects the events on a thread of its own while the run
    // goes, so the stream never falls far behind; they are printed after.
    let (result, recording) = if events || tracer.is_some() {
        let origin = tracer.map_or(0, trace::Tracer::now_ns);
        let (r, rec) = trace::record(&svm, &format!("run {w}"), origin, go);
        (r, Some(rec))
    } else {
        (go(), None)
    };
    spinner.finish_and_clear();
    let s1 = svm.stats();
    let (lines, dropped) = match &recording {
        Some(rec) if events => {
            let mut out = std::io::stdout().lock();
            for e in &rec.events {
                // A closed stdout (e.g. `| head`) ends the listing, not the run.
                if writeln!(out, "{}", e.to_json_line()).is_err() {
                    break;
                }
            }
            (Some(rec.events.len() as u64), Some(rec.dropped))
        }
        _ => (None, None),
    };
    if let (Some(t), Some(rec)) = (tracer, recording) {
        t.keep(rec);
    }
    let report = result?;
    let out = RunOutput {
        report: &report,
        device_memory_bytes: device_memory,
        device_zero_fill_pages: s1.device_zero_fill_pages - s0.device_zero_fill_pages,
        evictions: s1.evictions - s0.evictions,
        evicted_pages: s1.evicted_pages - s0.evicted_pages,
        events: lines,
        events_dropped: dropped,
        timing: svm
            .device(DeviceId(0))?
            .timing()
            .unwrap_or_default()
            .since(&t0),
    };
    if json {
        let s = serde_json::to_string(&out).map_err(|e| CliError::Other(e.to_string()))?;
        println!("{s}");
    } else {
        print_run(&out);
    }
    Ok(ExitCode::SUCCESS)
}

/// "N pages migrated", labelled where pages and bytes differ: pages the
/// device zero-filled migrate without a byte copied.
fn pages_note(pages: u64, bytes: u64, zero_filled: u64) -> String {
    let copied = bytes / PAGE;
    if copied == pages {
        format!("{pages} pages migrated")
    } else if copied + zero_filled == pages {
        format!(
            "{pages} pages migrated = {copied} copied + {zero_filled} zero-filled on the device, \
             which count as pages but not bytes"
        )
    } else {
        format!("{pages} pages migrated, {copied} pages' worth of bytes copied")
    }
}

fn print_run(o: &RunOutput<'_>) {
    let r = o.report;
    let arrays = match r.workload {
        Workload::Stream => format!("3 arrays of {}", human_bytes(r.bytes)),
        Workload::Gather => format!(
            "table of {} + out of {}",
            human_bytes(r.bytes),
            human_bytes(r.working_set_bytes - r.bytes)
        ),
        Workload::Pingpong => format!("1 array of {}, {} round(s)", human_bytes(r.bytes), r.rounds),
        w => format!(
            "{} arrays sized from {}, {} in all",
            w.arrays(r.bytes).len(),
            human_bytes(r.bytes),
            human_bytes(r.working_set_bytes)
        ),
    };
    println!(
        "svmem run {}: {arrays}; XNACK {}, preferred location {}, granularity {} ({}); emulated device {}, {} lane(s)",
        r.workload,
        if r.xnack { "on" } else { "off" },
        r.preferred.map_or("none".to_string(), |l| l.to_string()),
        r.granularity,
        human_bytes(PAGE << r.granularity),
        human_bytes(o.device_memory_bytes),
        r.lanes,
    );
    println!("machine: {}", Machine::detect());
    println!();
    let mut rows: Vec<(&str, String)> = vec![
        (
            "time",
            format!(
                "{:.2} ms ({:.2} ms in {} kernel launch(es))",
                r.wall_ms, r.kernel_ms, r.kernel_launches
            ),
        ),
        (
            "moved to device",
            format!(
                "{} copied ({})",
                human_bytes(r.bytes_to_device),
                pages_note(
                    r.pages_to_device,
                    r.bytes_to_device,
                    o.device_zero_fill_pages
                )
            ),
        ),
        (
            "moved to system",
            format!(
                "{} copied ({})",
                human_bytes(r.bytes_to_system),
                pages_note(r.pages_to_system, r.bytes_to_system, 0)
            ),
        ),
        (
            "device faults",
            format!(
                "{} ({} duplicates) in {} batches, batch p50 {:.1} µs",
                r.device_faults, r.device_fault_duplicates, r.device_fault_batches, r.batch_p50_us
            ),
        ),
        ("CPU faults", r.cpu_faults.to_string()),
        (
            "evictions",
            format!(
                "{} blocks of 2 MiB ({} pages back to system memory)",
                o.evictions, o.evicted_pages
            ),
        ),
    ];
    if o.timing.profile != "none" {
        rows.push(("modelled time", bench_suite::modelled_line(&o.timing)));
    }
    rows.push((
        "queue evictions",
        format!("{} ({} restores)", r.queue_evictions, r.queue_restores),
    ));
    if let (Some(n), Some(d)) = (o.events, o.events_dropped) {
        rows.push(("events", format!("{n} printed, {d} dropped")));
    }
    rows.push((
        "verified",
        if r.verified {
            "yes, every element".to_string()
        } else {
            "NO".to_string()
        },
    ));
    let t = table::key_values(rows.into_iter().map(|(k, v)| (format!("  {k}"), v)));
    println!("{}", table::text(&t));
}

// ---------------------------------------------------------------- demo

const SEED_CPU: u64 = 0x00c0_ffee_0000_0001;
const SEED_DEV: u64 = 0x00de_7ce0_0000_0002;
/// Device accesses go through a bounce buffer of this size.
const CHUNK: usize = 1 << 20;
const PAGE: u64 = svmem::PAGE_SIZE as u64;
/// Steps the demo records.
const DEMO_STEPS: u64 = 8;

#[derive(Debug, serde::Serialize)]
struct Step {
    step: usize,
    name: &'static str,
    bytes: u64,
    time_ms: f64,
    gbps: f64,
    ok: bool,
    notes: String,
}

#[derive(serde::Serialize)]
struct DemoOutput {
    ok: bool,
    size_bytes: u64,
    device: svmem::DeviceInfo,
    machine: Machine,
    steps: Vec<Step>,
    counters: Stats,
    failures: Vec<String>,
}

struct Demo {
    steps: Vec<Step>,
    failures: Vec<String>,
    /// One tick per step (hidden unless progress bars are on).
    bar: indicatif::ProgressBar,
}

impl Demo {
    /// Records a step; a step that is not ok is a failure of the demo.
    fn step(&mut self, name: &'static str, bytes: u64, el: Duration, ok: bool, notes: String) {
        if !ok {
            let n = self.steps.len() + 1;
            self.failures.push(format!("step {n} ({name}): {notes}"));
        }
        self.steps.push(Step {
            step: self.steps.len() + 1,
            name,
            bytes,
            time_ms: el.as_secs_f64() * 1e3,
            gbps: bench::gbps(bytes, el),
            ok,
            notes,
        });
        self.bar.inc(1);
    }
}

fn mismatch_msg(m: &bench::Mismatch, base_word: u64, what: &str) -> String {
    format!(
        "{what}: {} word(s) differ; first at byte offset {:#x}: expected {:#018x}, found {:#018x}",
        m.count,
        (base_word + m.first) * 8,
        m.expected,
        m.found
    )
}

fn demo(size: u64, device_memory: u64, json: bool) -> Result<ExitCode, CliError> {
    let len = usize::try_from(size)
        .map_err(|_| CliError::Other(format!("size {size} does not fit in memory")))?;
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "emulated0".into(),
            memory_bytes: device_memory,
            copy_engines: EmulatedConfig::default().copy_engines,
            memory_type: MemoryType::Private,
            compute_units: 2,
            commit_up_front: false,
        })?
        .build()?;
    let dev_id = DeviceId(0);
    let dev = svm.device(dev_id)?;
    let mut region = svm.alloc(len)?;
    let (addr, bytes) = (region.addr(), region.len());
    let to_dev = Location::Device(dev_id);
    let mut d = Demo {
        steps: Vec::new(),
        failures: Vec::new(),
        bar: progress::bar(DEMO_STEPS, "svmem demo: steps"),
    };
    // Region and device stay outside the recording: its last sample shows
    // where the data ended up.
    trace::traced(&svm, "demo", || -> Result<(), CliError> {
        // 1. CPU first touch: zero-fill faults, then the pattern.
        let s0 = svm.stats();
        let t = Instant::now();
        fill_words(&mut region.as_mut_slice::<u64>(), SEED_CPU);
        let el = t.elapsed();
        let s1 = svm.stats();
        d.step(
            "CPU fills managed memory (first touch)",
            bytes,
            el,
            true,
            format!(
                "{}, {} pages zero-filled",
                fault_note(&s0, &s1),
                s1.cpu_zero_fill_pages - s0.cpu_zero_fill_pages
            ),
        );

        // 2. Migrate everything to the device.
        timed_migrate(&mut d, &svm, addr, bytes, to_dev, "migrate to device")?;

        // 3. The device reads everything through its page table (timed), and the
        // demo checks every word of each chunk (not timed).
        let mut buf = vec![0u64; CHUNK / 8];
        let (mut pages, mut passes, mut bad) = (0, 0, None::<String>);
        let mut elapsed = Duration::ZERO;
        let mut off = 0u64;
        while off < bytes {
            let n = CHUNK.min((bytes - off) as usize);
            let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut buf[..n / 8]);
            let t = Instant::now();
            let rep = dev.read(addr.offset(off), dst)?;
            elapsed += t.elapsed();
            pages += rep.pages;
            passes += rep.fault_passes;
            if bad.is_none() {
                if let Some(m) = bench::check_pattern(&buf[..n / 8], SEED_CPU, off / 8) {
                    bad = Some(mismatch_msg(&m, off / 8, "device read"));
                }
            }
            off += n as u64;
        }
        record_verify(
            &mut d,
            "device reads (1 MiB chunks), verified",
            bytes,
            elapsed,
            bad,
            format!("{pages} page accesses, {passes} fault passes"),
        );

        // 4. The device overwrites everything with a second pattern.
        let (mut pages, mut passes) = (0, 0);
        let mut elapsed = Duration::ZERO;
        let mut words = vec![0u64; CHUNK / 8];
        let mut off = 0u64;
        while off < bytes {
            let n = CHUNK.min((bytes - off) as usize);
            // Pattern generation is not part of the timed device write.
            bench::fill_pattern(&mut words[..n / 8], SEED_DEV, off / 8);
            let src: &[u8] = bytemuck::cast_slice(&words[..n / 8]);
            let t = Instant::now();
            let rep = dev.write(addr.offset(off), src)?;
            elapsed += t.elapsed();
            pages += rep.pages;
            passes += rep.fault_passes;
            off += n as u64;
        }
        d.step(
            "device writes a new pattern",
            bytes,
            elapsed,
            true,
            format!("{pages} page accesses, {passes} fault passes"),
        );

        // 5. The CPU reads it back: device-resident pages fault and migrate back.
        let s0 = svm.stats();
        let t = Instant::now();
        let bad = bench::check_pattern(&region.as_slice::<u64>(), SEED_DEV, 0)
            .map(|m| mismatch_msg(&m, 0, "CPU read-back"));
        let el = t.elapsed();
        let s1 = svm.stats();
        record_verify(
            &mut d,
            "CPU reads back + verifies (faults)",
            bytes,
            el,
            bad,
            format!(
                "{}, {} pages back to system",
                fault_note(&s0, &s1),
                s1.to_system_pages - s0.to_system_pages
            ),
        );

        // 6. Migrate to the device again, release the device, verify again.
        let r = timed_migrate(&mut d, &svm, addr, bytes, to_dev, "migrate to device again")?;
        let on_device = r.migrated + r.already_there;
        let t = Instant::now();
        let r = dev.release();
        let el = t.elapsed();
        let ok = r.migrated == on_device && dev.info().free_bytes == dev.info().capacity_bytes;
        d.step(
            "device release (evict all)",
            r.migrated * PAGE,
            el,
            ok,
            format!(
                "{}/{} pages evicted to system{}",
                r.migrated,
                r.requested,
                skipped_note(&r)
            ),
        );
        let s0 = svm.stats();
        let t = Instant::now();
        let bad = bench::check_pattern(&region.as_slice::<u64>(), SEED_DEV, 0)
            .map(|m| mismatch_msg(&m, 0, "CPU read after release"));
        let el = t.elapsed();
        let s1 = svm.stats();
        let faults = s1.cpu_faults - s0.cpu_faults;
        record_verify(
            &mut d,
            "CPU verifies after release",
            bytes,
            el,
            bad,
            format!("{faults} faults (expected 0: all pages are in system memory)"),
        );
        Ok(())
    })?;
    d.bar.finish_and_clear();

    let out = DemoOutput {
        ok: d.failures.is_empty(),
        size_bytes: bytes,
        device: dev.info(),
        machine: Machine::detect(),
        steps: d.steps,
        counters: svm.stats(),
        failures: d.failures,
    };
    if json {
        print_json(&out)?;
    } else {
        print_demo(&out);
    }
    drop(region);
    if out.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &out.failures {
            eprintln!("svmem: demo failed: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn fill_words(words: &mut [u64], seed: u64) {
    bench::fill_pattern(words, seed, 0);
}

fn record_verify(
    d: &mut Demo,
    name: &'static str,
    bytes: u64,
    el: Duration,
    bad: Option<String>,
    notes: String,
) {
    let ok = bad.is_none();
    let notes = match &bad {
        None => format!("{notes}; verified"),
        Some(b) => format!("{notes}; MISMATCH: {b}"),
    };
    d.step(name, bytes, el, ok, notes);
}

/// Every page moved, except pages the device had no room for (the demo may
/// run with less device memory than managed memory).
/// CPU faults and fault windows between two counter snapshots.
fn fault_note(s0: &Stats, s1: &Stats) -> String {
    format!(
        "{} faults in {} windows",
        s1.cpu_faults - s0.cpu_faults,
        s1.cpu_fault_windows - s0.cpu_fault_windows
    )
}

/// Migrates `[addr, addr+bytes)` and records it as one demo step.
fn timed_migrate(
    d: &mut Demo,
    svm: &Svm,
    addr: svmem::VirtAddr,
    bytes: u64,
    to: Location,
    name: &'static str,
) -> svmem::Result<svmem::MigrateReport> {
    let t = Instant::now();
    let r = svm.migrate(addr, bytes, to)?;
    let el = t.elapsed();
    let notes = format!(
        "{}/{} pages moved{}",
        r.migrated,
        r.requested,
        skipped_note(&r)
    );
    d.step(
        name,
        r.migrated * PAGE,
        el,
        migrated_all_that_fit(&r),
        notes,
    );
    Ok(r)
}

fn migrated_all_that_fit(r: &svmem::MigrateReport) -> bool {
    r.migrated + r.already_there + r.skipped_no_device_memory == r.requested
}

fn skipped_note(r: &svmem::MigrateReport) -> String {
    let mut v = Vec::new();
    for (what, n) in [
        ("already there", r.already_there),
        ("busy", r.skipped_busy),
        ("not migratable", r.skipped_not_migratable),
        ("no device memory", r.skipped_no_device_memory),
        ("rolled back", r.rolled_back),
    ] {
        if n != 0 {
            v.push(format!("{n} {what}"));
        }
    }
    if v.is_empty() {
        String::new()
    } else {
        format!(" ({})", v.join(", "))
    }
}

fn print_demo(o: &DemoOutput) {
    println!(
        "svmem demo: {} of managed memory, device {} \"{}\" ({:?}, {}), {}",
        human_bytes(o.size_bytes),
        o.device.id,
        o.device.name,
        o.device.memory_type,
        human_bytes(o.device.capacity_bytes),
        o.machine
    );
    println!();
    let mut t = table::new(
        &["#", "step", "bytes", "time ms", "GB/s", "ok", "notes"],
        &[0, 2, 3, 4],
    );
    for s in &o.steps {
        t.add_row(vec![
            s.step.to_string(),
            s.name.to_string(),
            human_bytes(s.bytes),
            format!("{:.2}", s.time_ms),
            format!("{:.2}", s.gbps),
            if s.ok { "ok" } else { "FAIL" }.to_string(),
            s.notes.clone(),
        ]);
    }
    println!("{}", table::text(&t));
    println!();
    print_counters(&o.counters);
    println!();
    if o.ok {
        println!("all data verified");
    } else {
        println!("FAILED: {} problem(s), see stderr", o.failures.len());
    }
}
