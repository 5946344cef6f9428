//! `--trace`, `--plot` and `svmem plot` end to end: the trace is Chrome
//! trace-event JSON whose structure Perfetto accepts (every "B" has its "E"
//! on the same track, spans on a track do not overlap, every track is named),
//! its migrations carry bytes that add up to the run's own report, its
//! residency counters never go negative and end where the data ended up, and
//! the plot is an SVG with the expected series. Also: without a terminal,
//! no progress bar reaches stderr.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{run_ok, svmem, text};

use serde_json::Value;

const PAGE: u64 = 4096;

fn ok(args: &[&str]) -> Output {
    run_ok(args)
}

/// A fresh path for this test's output files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("svmem-cli-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir.join(name)
}

fn read_json(p: &Path) -> Value {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("`{k}` is not an unsigned number in {v}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("`{k}` is not a number in {v}"))
}

/// Checks what every viewer needs, and returns the events.
fn check_structure(trace: &Value) -> Vec<Value> {
    let events = trace["traceEvents"]
        .as_array()
        .expect("a traceEvents array")
        .clone();
    assert!(!events.is_empty());
    let mut named = BTreeSet::new();
    let mut used = BTreeSet::new();
    // Per track: the "B"/"E" stack, and the "X" spans.
    let mut stacks: BTreeMap<(u64, u64), Vec<f64>> = BTreeMap::new();
    let mut spans: BTreeMap<(u64, u64), Vec<(f64, f64)>> = BTreeMap::new();
    let mut timed: Vec<&Value> = events.iter().filter(|e| e["ph"] != "M").collect();
    timed.sort_by(|a, b| f(a, "ts").total_cmp(&f(b, "ts")));
    for e in &events {
        let ph = e["ph"].as_str().expect("ph");
        assert!(
            ["X", "B", "E", "C", "i", "M"].contains(&ph),
            "unexpected phase in {e}"
        );
        let track = (u(e, "pid"), u(e, "tid"));
        if ph == "M" {
            assert!(
                e["args"]["name"].is_string() || e["args"]["sort_index"].is_u64(),
                "{e}"
            );
            if e["name"] == "thread_name" {
                named.insert(track);
            }
        }
    }
    for e in timed {
        let ph = e["ph"].as_str().unwrap_or_default();
        let track = (u(e, "pid"), u(e, "tid"));
        let ts = f(e, "ts");
        assert!(ts >= 0.0, "{e}");
        match ph {
            "X" => {
                let dur = f(e, "dur");
                assert!(dur >= 0.0, "{e}");
                assert!(e["name"].is_string() && e["args"].is_object(), "{e}");
                spans.entry(track).or_default().push((ts, ts + dur));
                used.insert(track);
            }
            "B" => {
                stacks.entry(track).or_default().push(ts);
                used.insert(track);
            }
            "E" => {
                let b = stacks.get_mut(&track).and_then(Vec::pop);
                assert!(b.is_some_and(|b| b <= ts), "an E without its B: {e}");
            }
            "i" => {
                used.insert(track);
            }
            "C" => {
                for (k, v) in e["args"].as_object().expect("counter args") {
                    assert!(
                        v.as_u64().is_some(),
                        "counter {k} is not a count of bytes >= 0: {e}"
                    );
                }
            }
            _ => {}
        }
    }
    for (track, open) in stacks {
        assert!(open.is_empty(), "track {track:?}: a B without its E");
    }
    for (track, mut v) in spans {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in v.windows(2) {
            // Microsecond floats: allow rounding.
            assert!(
                w[1].0 + 1e-3 >= w[0].1,
                "track {track:?}: spans overlap: {w:?}"
            );
        }
    }
    for t in &used {
        assert!(named.contains(t), "track {t:?} has no thread_name");
    }
    events
}

/// The last "resident bytes" counter of process `pid`.
fn last_counter(events: &[Value], pid: u64) -> Value {
    events
        .iter()
        .filter(|e| e["ph"] == "C" && u(e, "pid") == pid && e["name"] == "resident bytes")
        .max_by(|a, b| f(a, "ts").total_cmp(&f(b, "ts")))
        .map(|e| e["args"].clone())
        .expect("a resident-bytes counter")
}

fn migrations(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "migration")
        .collect()
}

#[test]
fn run_trace_has_migrations_fault_batches_and_counters() {
    let path = scratch("run.json");
    let p = path.to_str().expect("utf-8 path");
    let out = ok(&[
        "run",
        "stream",
        "--size",
        "4M",
        "--device-memory",
        "8M",
        "--json",
        "--trace",
        p,
    ]);
    let report: Value = serde_json::from_str(text(&out.stdout).trim()).expect("a JSON report");
    let trace = read_json(&path);
    let events = check_structure(&trace);
    assert_eq!(
        trace["otherData"]["dropped_events"], 0,
        "{}",
        trace["otherData"]
    );

    // Every migration carries its bytes, direction and trigger; those to the
    // device add up to the pages the report counts.
    let moves = migrations(&events);
    assert!(!moves.is_empty());
    let mut to_device_pages = 0;
    for m in &moves {
        let a = &m["args"];
        assert_eq!(u(a, "migrated_bytes"), u(a, "migrated_pages") * PAGE, "{m}");
        assert!(u(a, "migrated_pages") <= u(a, "pages"), "{m}");
        assert!(a["trigger"].is_string() && a["from"].is_string(), "{m}");
        if a["from"] == "system" && a["to"] == "dev0" {
            to_device_pages += u(a, "migrated_pages");
        }
    }
    assert_eq!(to_device_pages, u(&report, "to_device_pages"), "{report}");
    // 12 MiB of arrays through 8 MiB of device memory: evictions.
    assert!(u(&report, "evictions") > 0, "{report}");
    assert!(moves.iter().any(|m| m["args"]["trigger"] == "eviction"));

    // Device faults come in batches with counts, on the fault-service track.
    let batches: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "fault")
        .collect();
    assert!(!batches.is_empty());
    let faults: u64 = batches.iter().map(|b| u(&b["args"], "faults")).sum();
    assert_eq!(faults, u(&report, "device_faults"), "{report}");

    // Tracks are named for what they hold.
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    for want in [
        "migrate system→dev0",
        "dev0 fault service",
        "evictions dev0→system",
    ] {
        assert!(names.contains(&want), "no `{want}` track in {names:?}");
    }

    // Counters: data reached the device, and the run freed everything.
    let dev0_max = events
        .iter()
        .filter(|e| e["ph"] == "C")
        .map(|e| u(&e["args"], "dev0"))
        .max()
        .unwrap_or(0);
    assert!(dev0_max > 0 && dev0_max <= 8 << 20, "{dev0_max}");
    let last = last_counter(&events, 1);
    assert_eq!((u(&last, "system"), u(&last, "dev0")), (0, 0), "{last}");
}

#[test]
fn demo_trace_ends_at_the_final_residency_and_plots() {
    let (tpath, spath) = (scratch("demo.json"), scratch("demo.svg"));
    let (t, s) = (tpath.to_str().unwrap(), spath.to_str().unwrap());
    ok(&[
        "demo",
        "--size",
        "8M",
        "--device-memory",
        "16M",
        "--trace",
        t,
        "--plot",
        s,
    ]);
    let trace = read_json(&tpath);
    let events = check_structure(&trace);
    // The demo ends with every page back in system memory.
    let last = last_counter(&events, 1);
    assert_eq!(u(&last, "system"), 8 << 20, "{last}");
    assert_eq!(u(&last, "dev0"), 0, "{last}");
    let explicit: u64 = migrations(&events)
        .iter()
        .filter(|m| m["args"]["trigger"] == "explicit" && m["args"]["to"] == "dev0")
        .map(|m| u(&m["args"], "migrated_bytes"))
        .sum();
    // Two explicit migrations of all 8 MiB to the device.
    assert_eq!(explicit, 2 * (8 << 20));
    check_svg(&spath, &["system", "dev0", "system→dev0"]);

    // `svmem plot` draws the same trace.
    let out = scratch("again.svg");
    let stdout = text(&ok(&["plot", t, "-o", out.to_str().unwrap()]).stdout);
    assert!(stdout.contains("wrote"), "{stdout}");
    check_svg(&out, &["system", "dev0", "system→dev0"]);
}

fn check_svg(p: &Path, series: &[&str]) {
    let svg = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    // Text elements hold their label on a line of its own.
    let labels: BTreeSet<&str> = svg.lines().map(str::trim).collect();
    for want in series
        .iter()
        .chain(&["resident bytes", "migration throughput", "time (ms)"])
    {
        assert!(
            labels.contains(want),
            "no `{want}` label in {}",
            p.display()
        );
    }
    assert!(svg.contains("<polyline"), "no series drawn");
}

#[test]
fn bench_trace_has_one_process_per_svm() {
    let path = scratch("bench.json");
    let p = path.to_str().unwrap();
    ok(&[
        "bench", "migrate", "--size", "16M", "--runs", "2", "--json", "--trace", p,
    ]);
    let trace = read_json(&path);
    let events = check_structure(&trace);
    let procs: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "process_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert_eq!(procs, ["svmem bench migrate"]);
    // Per run: all 16 MiB to the device twice, back once explicitly.
    let bytes = |from: &str, trig: &str| -> u64 {
        migrations(&events)
            .iter()
            .filter(|m| m["args"]["from"] == from && m["args"]["trigger"] == trig)
            .map(|m| u(&m["args"], "migrated_bytes"))
            .sum()
    };
    assert_eq!(bytes("system", "explicit"), 2 * 2 * (16 << 20));
    assert_eq!(bytes("dev0", "explicit"), 2 * (16 << 20));
}

#[test]
fn plot_refuses_what_is_not_a_trace() {
    let path = scratch("not-a-trace.json");
    std::fs::write(&path, "{\"hello\": 1}").unwrap();
    let out = svmem(&["plot", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not a trace") && err.contains("traceEvents"),
        "{err}"
    );

    let out = svmem(&["plot", "/nonexistent/trace.json"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read the trace /nonexistent/trace.json"),
        "{err}"
    );
}

#[test]
fn no_progress_bar_without_a_terminal() {
    // stderr is a pipe here: bars stay off, stderr stays empty.
    let out = ok(&["run", "stream", "--size", "4M"]);
    assert_eq!(text(&out.stderr), "");
    let out = ok(&["demo", "--size", "4M", "--device-memory", "8M"]);
    assert_eq!(text(&out.stderr), "");
}
