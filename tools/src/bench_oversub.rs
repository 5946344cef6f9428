//! `svmem bench oversub`: a device kernel streaming repeatedly over a working
//! set of 0.5×, 1.25×, 1.5× and 2× device memory (XNACK on, preferred
//! location the device), so every pass of an oversubscribed set migrates in
//! through device faults and evicts under pressure.
//!
//! Per working set, on a fresh `Svm`: the CPU writes a pattern; one untimed
//! pass brings the set to its steady state (for 0.5×: all of it on the
//! device); then `passes` timed passes read every byte in
//! [`ITEM_BYTES`] work items, each pass's sum checked against the pattern.
//! `slowdown_vs_fit` is the time per byte over the 0.5× case's time per byte,
//! measured in the same process (ratio per run, then the median).
//!
//! Each oversubscribed set runs twice: with the thrashing mitigation
//! (placement rule 9, the default: blocks refaulted soon after their
//! eviction are served in place) and without it (every pass evicts and
//! refetches, CLOCK only). The emulated device reaches system memory as fast
//! as its own, so the mitigated figure shows the cost of the policy's
//! bookkeeping, not of remote access over a real bus; the unmitigated one is
//! the cost of eviction itself.

use std::time::{Duration, Instant};

use crate::bench::{fill_pattern, gbps, sum_kernel, BenchError, Machine, Spread};
use svmem::Attr;
use svmem::EmulatedConfig;
use svmem::Svm;
use svmem::{DeviceId, Location, PAGE_SIZE};

/// Working sets, as multiples of device memory.
pub const RATIOS: [f64; 4] = [0.5, 1.25, 1.5, 2.0];
/// Bytes one work item reads in bulk.
pub const ITEM_BYTES: u64 = 2 << 20;
/// Default device memory.
pub const DEFAULT_DEVICE_MEMORY: u64 = 256 << 20;
/// Target for `slowdown_vs_fit` at 2×.
pub const TARGET_SLOWDOWN_2X: f64 = 3.0;

const DEV: DeviceId = DeviceId(0);
const SEED: u64 = 0x5356_4d45_4d00_0a51;

/// One working set in one run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OversubRun {
    pub ratio: f64,
    pub thrash_mitigation: bool,
    pub working_set_bytes: u64,
    /// Timed passes, in all.
    pub wall_ms: f64,
    pub gbps: f64,
    pub ns_per_byte: f64,
    pub slowdown_vs_fit: f64,
    /// Modelled time of the timed passes (timing profile; 0 under `none`),
    /// and its ratio per byte to the fitting set's.
    pub modelled_ms: f64,
    pub modelled_slowdown_vs_fit: f64,
    /// Over the timed passes.
    pub evictions: u64,
    pub to_device_bytes: u64,
    pub to_system_bytes: u64,
    pub device_faults: u64,
}

/// One working set over all runs (medians; counts from the median run's
/// neighbours are not mixed: they are the first run's).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OversubPoint {
    pub ratio: f64,
    pub thrash_mitigation: bool,
    pub working_set_bytes: u64,
    pub wall_ms: f64,
    pub gbps: f64,
    pub slowdown_vs_fit: f64,
    pub slowdown_spread: Spread,
    pub modelled_ms: f64,
    pub modelled_slowdown_vs_fit: f64,
    pub evictions: u64,
    pub to_device_bytes: u64,
    pub to_system_bytes: u64,
    pub device_faults: u64,
}

/// The result of [`bench_oversub`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct OversubBench {
    /// The timing profile of the device (`none`: nothing modelled).
    pub profile: &'static str,
    pub device_memory_bytes: u64,
    pub passes: u32,
    pub runs: usize,
    pub lanes: usize,
    pub item_bytes: u64,
    pub points: Vec<OversubPoint>,
    /// `slowdown_vs_fit` at 2× with the default configuration (target ≤ 3).
    pub slowdown_2x: f64,
    /// The same without the thrashing mitigation.
    pub slowdown_2x_without_mitigation: f64,
    pub target_slowdown_2x: f64,
    pub within_target: bool,
    pub samples: Vec<OversubRun>,
    pub machine: Machine,
}

/// Measures; see the module docs.
pub fn bench_oversub(
    device_memory: u64,
    passes: u32,
    runs: usize,
    profile: svmem::TimingProfile,
) -> Result<OversubBench, BenchError> {
    if device_memory < 4 * ITEM_BYTES {
        return Err(BenchError::Params(format!(
            "device memory of {device_memory} bytes: use at least {} (four work items)",
            4 * ITEM_BYTES
        )));
    }
    if passes == 0 || runs == 0 {
        return Err(BenchError::Params(format!(
            "passes {passes} and runs {runs} must both be at least 1"
        )));
    }
    let device_memory = device_memory.next_multiple_of(PAGE_SIZE as u64);
    let lanes = EmulatedConfig::default().compute_units;
    let mut samples = Vec::new();
    let levels = RATIOS
        .iter()
        .map(|&r| if r <= 1.0 { 1 } else { 2 })
        .sum::<u64>();
    let bar = crate::progress::bar(runs as u64 * levels, "bench oversub: working sets");
    for _ in 0..runs {
        let (mut fit_ns, mut fit_modelled) = (None, None);
        for ratio in RATIOS {
            for mitigation in [true, false] {
                if ratio <= 1.0 && !mitigation {
                    continue; // nothing is evicted: one measurement serves both
                }
                let mut s = one(device_memory, ratio, passes, mitigation, profile)?;
                let fit = *fit_ns.get_or_insert(s.ns_per_byte);
                s.slowdown_vs_fit = s.ns_per_byte / fit;
                let per_byte = s.modelled_ms / s.working_set_bytes as f64;
                let fit = *fit_modelled.get_or_insert(per_byte);
                s.modelled_slowdown_vs_fit = if fit > 0.0 { per_byte / fit } else { 0.0 };
                samples.push(s);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let mut points: Vec<OversubPoint> = Vec::new();
    for ratio in RATIOS {
        for mitigation in [true, false] {
            let of: Vec<&OversubRun> = samples
                .iter()
                .filter(|s| s.ratio == ratio && s.thrash_mitigation == mitigation)
                .collect();
            let Some(first) = of.first() else { continue };
            let col = |f: fn(&OversubRun) -> f64| {
                Spread::of(&of.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            let slow = col(|s| s.slowdown_vs_fit);
            points.push(OversubPoint {
                ratio,
                thrash_mitigation: mitigation,
                working_set_bytes: first.working_set_bytes,
                wall_ms: col(|s| s.wall_ms).median,
                gbps: col(|s| s.gbps).median,
                slowdown_vs_fit: slow.median,
                slowdown_spread: slow,
                modelled_ms: col(|s| s.modelled_ms).median,
                modelled_slowdown_vs_fit: col(|s| s.modelled_slowdown_vs_fit).median,
                evictions: first.evictions,
                to_device_bytes: first.to_device_bytes,
                to_system_bytes: first.to_system_bytes,
                device_faults: first.device_faults,
            });
        }
    }
    let at_2x = |mitigation: bool| {
        points
            .iter()
            .find(|p| p.ratio == 2.0 && p.thrash_mitigation == mitigation)
            .map_or(f64::NAN, |p| p.slowdown_vs_fit)
    };
    let slowdown_2x = at_2x(true);
    let slowdown_2x_without_mitigation = at_2x(false);
    Ok(OversubBench {
        profile: profile.name,
        device_memory_bytes: device_memory,
        passes,
        runs,
        lanes,
        item_bytes: ITEM_BYTES,
        points,
        slowdown_2x,
        slowdown_2x_without_mitigation,
        target_slowdown_2x: TARGET_SLOWDOWN_2X,
        within_target: slowdown_2x <= TARGET_SLOWDOWN_2X,
        samples,
        machine: Machine::detect(),
    })
}

/// One working set on a fresh `Svm`.
fn one(
    device_memory: u64,
    ratio: f64,
    passes: u32,
    mitigation: bool,
    profile: svmem::TimingProfile,
) -> Result<OversubRun, BenchError> {
    let window = if mitigation {
        Duration::from_millis(svmem::placement::policy::THRASH_WINDOW_MS)
    } else {
        Duration::ZERO
    };
    let svm = Svm::builder()
        .emulated(EmulatedConfig {
            name: "oversub".into(),
            memory_bytes: device_memory,
            ..EmulatedConfig::default()
        })?
        .xnack(true)
        .thrash_window(window)
        .timing(profile)
        .build()?;
    let label = format!(
        "bench oversub: {ratio}x, mitigation {}",
        if mitigation { "on" } else { "off" }
    );
    crate::trace::traced(&svm, &label, || {
        one_on(&svm, device_memory, ratio, passes, mitigation)
    })
}

/// [`one`] on its `Svm`.
fn one_on(
    svm: &Svm,
    device_memory: u64,
    ratio: f64,
    passes: u32,
    mitigation: bool,
) -> Result<OversubRun, BenchError> {
    let len = ((device_memory as f64 * ratio) as u64).next_multiple_of(ITEM_BYTES);
    let mut region = svm.alloc(len as usize)?;
    let expected = fill_pattern(&mut region.as_mut_slice::<u64>(), SEED, 0);
    svm.set_attributes(
        region.addr(),
        len,
        &[Attr::PreferredLocation(Some(Location::Device(DEV)))],
    )?;
    let base = region.addr();
    let words = len / 8;
    let pass = |which: &str| -> Result<(), BenchError> {
        let sum = sum_kernel(svm, DEV, base, words, ITEM_BYTES / 8)?;
        if sum != expected {
            return Err(BenchError::Verify {
                when: format!(
                    "{ratio}x working set, {which}: checksum {sum:#x}, expected {expected:#x}"
                ),
                words,
                mismatches: 0,
                first_offset: 0,
                expected,
                found: sum,
            });
        }
        Ok(())
    };
    pass("warm-up pass")?;
    let before = svm.stats();
    let t = Instant::now();
    for p in 0..passes {
        pass(&format!("pass {p}"))?;
    }
    let el = t.elapsed();
    let after = svm.stats();
    let bytes = len * passes as u64;
    Ok(OversubRun {
        ratio,
        thrash_mitigation: mitigation,
        working_set_bytes: len,
        wall_ms: el.as_secs_f64() * 1e3,
        gbps: gbps(bytes, el),
        ns_per_byte: el.as_secs_f64() * 1e9 / bytes as f64,
        slowdown_vs_fit: 0.0,
        modelled_ms: (after.modelled_ns - before.modelled_ns) as f64 / 1e6,
        modelled_slowdown_vs_fit: 0.0,
        evictions: after.evictions - before.evictions,
        to_device_bytes: after.to_device_bytes - before.to_device_bytes,
        to_system_bytes: after.to_system_bytes - before.to_system_bytes,
        device_faults: after.device_faults - before.device_faults,
    })
}
