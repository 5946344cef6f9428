//! `svmem bench suite` and `svmem run --profile` end to end, at tiny sizes.

use std::process::{Command, Output};

use serde_json::Value;
use svmem_cli::workloads::Workload;

fn svmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_svmem"))
        .args(args)
        .output()
        .expect("start the svmem binary")
}

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
