//! The `svmem` command line's library: benchmarks measured against the
//! machine's own limits, and workloads driven by device kernels. The binary
//! (`src/bin/svmem.rs`) prints what these return.

pub mod bench;
pub mod bench_faults;
pub mod bench_oversub;
pub mod bench_suite;
pub mod limits;
pub mod plot;
pub mod progress;
pub mod table;
pub mod trace;
pub mod units;
pub mod workloads;

/// Restores the default action of SIGPIPE (end the process quietly), as a
/// command-line tool's user expects when its output goes into `head`: Rust
/// programs start with SIGPIPE ignored, which turns a closed pipe into a
/// panic in `println!`.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler code; it changes only this
    // process's disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}
