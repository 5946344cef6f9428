//! `svmem bench suite` and `svmem run --profile` end to end, at tiny sizes.

mod common;
use common::svmem;

use serde_json::Value;
use svmem_cli::workloads::Workload;

fn json(args: &[&str]) -> Value {
    let out = svmem(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "svmem {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

#[test]
fn suite_reports_every_kernel_at_every_level() {
    let b = json(&[
        "bench",
        "suite",
        "--size",
        "1M",
        "--oversub",
        "1.5,1.0",
        "--profile",
        "pcie4",
        "--json",
    ]);
    assert_eq!(b["profile"]["name"], "pcie4");
    let rows = b["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), Workload::SUITE.len() * 2);
    for w in Workload::SUITE {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["kernel"] == w.name()).collect();
        assert_eq!(mine.len(), 2, "{w}: {rows:?}");
        // Levels ascending; the fitting run is the baseline.
        assert_eq!(num(mine[0], "oversub"), 1.0);
        assert_eq!(num(mine[1], "oversub"), 1.5);
        assert_eq!(num(mine[0], "slowdown"), 1.0);
        let (fit, over) = (mine[0], mine[1]);
        assert!(num(fit, "modelled_ms") > 0.0, "{w}: {fit}");
        assert!(num(over, "slowdown") > 0.0);
        assert_eq!(num(fit, "evictions"), 0.0, "{w} fits: {fit}");
        assert!(
            num(over, "device_memory_bytes") < num(fit, "device_memory_bytes"),
            "{w}: {over}"
        );
        assert!(num(fit, "to_device_bytes") > 0.0);
        for k in ["fault_batches", "wall_ms", "remote_read_bytes"] {
            num(fit, k);
        }
    }
}

#[test]
fn suite_runs_chosen_kernels_and_prefetchers_and_none_models_nothing() {
    let b = json(&[
        "bench",
        "suite",
        "--size",
        "128K",
        "--oversub",
        "1.0",
        "--kernels",
        "stream",
        "--profile",
        "none",
        "--prefetch",
        "none,density",
        "--granularity",
        "4",
        "--json",
    ]);
    let rows = b["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(b["granularity"], 4);
    for (r, p) in rows.iter().zip(["none", "density"]) {
        assert_eq!(r["kernel"], "stream");
        assert_eq!(r["prefetch"], p);
        assert_eq!(num(r, "modelled_ms"), 0.0);
    }
}

#[test]
fn bad_profile_and_level_are_refused_with_the_fix() {
    let out = svmem(&["bench", "suite", "--profile", "pcie9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pcie9") && err.contains("pcie4"), "{err}");
    let out = svmem(&["bench", "suite", "--oversub", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("level 0") && err.contains("0.1 to 16"),
        "{err}"
    );
}

#[test]
fn run_reports_modelled_time_under_a_profile() {
    let out = svmem(&[
        "run",
        "stream",
        "--size",
        "256K",
        "--profile",
        "pcie5",
        "--json",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON");
    assert_eq!(v["timing"]["profile"], "pcie5");
    assert!(num(&v["timing"], "modelled_us") > 0.0, "{v}");
    assert!(num(&v["timing"], "copied_to_device_bytes") > 0.0, "{v}");
}

#[test]
fn suite_compares_eviction_policies_and_mitigation() {
    // Stream at twice device memory: with the mitigation
    // off every policy must evict; every combination has its own rows and
    // its own fitting run.
    let b = json(&[
        "bench",
        "suite",
        "--size",
        "1M",
        "--kernels",
        "stream",
        "--oversub",
        "1.0,2.0",
        "--eviction",
        "clock,lru,alloc",
        "--mitigation",
        "on,off",
        "--json",
    ]);
    let rows = b["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3 * 2 * 2);
    for ev in ["clock", "lru", "alloc"] {
        for mit in [true, false] {
            let mine: Vec<&Value> = rows
                .iter()
                .filter(|r| r["eviction"] == ev && r["mitigation"] == mit)
                .collect();
            assert_eq!(mine.len(), 2, "{ev} {mit}: {rows:?}");
            assert_eq!(num(mine[0], "slowdown"), 1.0);
            assert!(num(mine[1], "evictions") > 0.0, "{ev} {mit}: {}", mine[1]);
            let f = num(mine[0], "first_touch_link_fraction");
            assert!(f > 0.0 && f <= 1.0, "{ev} {mit}: {f}");
        }
    }
    // Thrashing with the mitigation off moves more bytes than with it on.
    let moved = |mit: bool| -> f64 {
        rows.iter()
            .filter(|r| r["mitigation"] == mit && num(r, "oversub") == 2.0)
            .map(|r| num(r, "to_device_bytes"))
            .sum()
    };
    assert!(moved(false) > moved(true), "{rows:?}");
    let limit = &b["copy_limit"];
    assert!(num(limit, "all_cores_gbps") > 0.0 && num(limit, "threads") >= 1.0);
    assert!(num(&rows[0], "migrated_ratio_all_cores") > 0.0);
}

#[test]
fn bad_eviction_policy_is_refused_with_the_fix() {
    let out = svmem(&["bench", "suite", "--eviction", "mru"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mru") && err.contains("clock, lru, alloc"),
        "{err}"
    );
}

#[test]
fn bench_migrate_reports_both_copy_limits() {
    let b = json(&["bench", "migrate", "--size", "16M", "--runs", "1", "--json"]);
    assert!(num(&b, "memcpy_gbps") > 0.0);
    assert!(num(&b, "memcpy_all_cores_gbps") > 0.0, "{b}");
    assert!(num(&b, "copy_threads") >= 1.0);
    for k in [
        "to_device_ratio_all_cores",
        "to_system_ratio_all_cores",
        "cpu_fault_sweep_ratio_all_cores",
    ] {
        assert!(num(&b, k) > 0.0, "{k}: {b}");
    }
}
