//! The `svmem` binary end to end: `svmem run` for every workload in retry and
//! no-retry mode, its JSON and event output, `svmem bench faults --json`, and
//! refusal of bad input. Sizes are small: the whole file runs in seconds.

mod common;
use common::{run_ok, svmem, text};

use serde_json::Value;

/// Runs `svmem args`, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    text(&run_ok(args).stdout)
}

/// The report of `svmem run ... --json` (the last line of stdout).
fn run_report(args: &[&str]) -> Value {
    let stdout = ok(args);
    let last = stdout.lines().last().expect("a report line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("report is not JSON ({e}): {last}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

fn check_verified(r: &Value, workload: &str) {
    assert_eq!(r["workload"], workload, "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert!(num(r, "wall_ms") > 0.0, "{r}");
    assert_eq!(num(r, "array_bytes"), (4 << 20) as f64, "{r}");
}

#[test]
fn every_workload_verifies_in_retry_mode() {
    for w in ["stream", "gather", "pingpong"] {
        let r = run_report(&["run", w, "--size", "4M", "--json"]);
        check_verified(&r, w);
        assert_eq!(r["xnack"], true);
        assert!(
            num(&r, "device_faults") > 0.0,
            "{w}: the kernel reached system-resident data through device faults: {r}"
        );
        assert!(num(&r, "to_device_pages") > 0.0, "{w}: {r}");
        assert!(num(&r, "device_fault_batches") > 0.0, "{w}: {r}");
    }
    // pingpong: data goes both ways every round.
    let r = run_report(&["run", "pingpong", "--size", "4M", "--rounds", "3", "--json"]);
    assert_eq!(r["rounds"], 3);
    assert!(num(&r, "cpu_faults") > 0.0, "{r}");
    assert!(num(&r, "to_system_bytes") > 0.0, "{r}");
}

#[test]
fn table_output_names_what_moved() {
    let out = ok(&[
        "run",
        "gather",
        "--size",
        "4M",
        "--preferred",
        "device",
        "--granularity",
        "4",
    ]);
    for needle in [
        "svmem run gather",
        "moved to device",
        "moved to system",
        "device faults",
        "evictions",
        "queue evictions",
        "verified",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
}

/// XNACK off: the arrays are mapped ahead, so the kernels never fault.
#[test]
fn no_retry_mode_maps_ahead_and_verifies() {
    let r = run_report(&[
        "run",
        "stream",
        "--size",
        "4M",
        "--xnack",
        "off",
        "--preferred",
        "device",
        "--json",
    ]);
    check_verified(&r, "stream");
    assert_eq!(r["xnack"], false);
    assert_eq!(r["preferred"], "dev0");
    assert_eq!(num(&r, "device_faults"), 0.0, "{r}");
}

#[test]
fn events_are_json_lines_before_the_report() {
    let stdout = ok(&["run", "pingpong", "--size", "4M", "--json", "--events"]);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let (report, events) = lines.split_last().expect("output");
    check_verified(report, "pingpong");
    assert!(events.iter().all(|e| e["event"].is_string()));
    assert!(
        events.iter().any(|e| e["event"] == "migrate_start"),
        "no migrate_start among {} events",
        events.len()
    );
    assert_eq!(num(report, "events"), events.len() as f64);
    assert_eq!(num(report, "events_dropped"), 0.0);
}

#[test]
fn bench_faults_json_has_the_required_fields() {
    let stdout = ok(&["bench", "faults", "--size", "64M", "--runs", "1", "--json"]);
    let b: Value = serde_json::from_str(&stdout).expect("one JSON object");
    for key in [
        "memcpy_gbps",
        "device_fault_sweep_gbps",
        "device_fault_sweep_ratio",
        "batch_service_p50_us",
        "block_migrate_us",
        "faults_per_sec",
    ] {
        assert!(num(&b, key) > 0.0, "`{key}` in {b}");
    }
    // Null when no batch held 256 faults.
    let full = &b["full_batch_service_p50_us"];
    assert!(
        full.is_null() || full.as_f64().is_some_and(|v| v > 0.0),
        "{b}"
    );
    assert!(b["full_batch_within_target"].is_boolean());
    assert!(num(&b, "faults") >= num(&b, "duplicates"));
    assert_eq!(b["samples"].as_array().map(Vec::len), Some(1));
}

#[test]
fn bench_oversub_json_reports_every_working_set() {
    let stdout = ok(&[
        "bench",
        "oversub",
        "--device-memory",
        "16M",
        "--passes",
        "1",
        "--runs",
        "1",
        "--json",
    ]);
    let b: Value = serde_json::from_str(&stdout).expect("one JSON object");
    let points = b["points"].as_array().expect("points");
    // 0.5x once; 1.25x, 1.5x and 2x with and without the mitigation.
    assert_eq!(points.len(), 7, "{b}");
    for p in points {
        assert!(num(p, "wall_ms") > 0.0, "{p}");
        assert!(num(p, "slowdown_vs_fit") > 0.0, "{p}");
        assert!(p["evictions"].is_u64(), "{p}");
        assert!(p["to_device_bytes"].is_u64(), "{p}");
    }
    let fit = &points[0];
    assert_eq!(num(fit, "ratio"), 0.5);
    assert_eq!(num(fit, "slowdown_vs_fit"), 1.0);
    // Without the mitigation, a 2x set evicts on every pass.
    let unmitigated = points
        .iter()
        .find(|p| num(p, "ratio") == 2.0 && p["thrash_mitigation"] == false)
        .expect("2x without mitigation");
    assert!(num(unmitigated, "evictions") > 0.0, "{unmitigated}");
    assert!(num(&b, "slowdown_2x") > 0.0);
    assert!(b["within_target"].is_boolean());
}

#[test]
fn bad_input_is_refused_naming_the_value() {
    for (args, value) in [
        (&["run", "stream", "--granularity", "12"][..], "12"),
        (&["run", "stream", "--xnack", "maybe"][..], "maybe"),
        (&["run", "frobnicate"][..], "frobnicate"),
        (&["run", "stream", "--size", "4Q"][..], "4Q"),
        (&["run", "pingpong", "--rounds", "0"][..], "0"),
        (&["bench", "oversub", "--passes", "0"][..], "0"),
    ] {
        let out = svmem(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "svmem {args:?} succeeded");
        assert!(
            err.contains(&format!("'{value}'")) || err.contains(&format!("`{value}`")),
            "svmem {args:?}: the message does not name `{value}`:\n{err}"
        );
    }
}
