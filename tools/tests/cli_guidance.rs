//! The command line refuses sizes it cannot serve before allocating
//! anything, and each refusal names the flag, the value as given, the limit
//! in human units and a value that passes (exit status 2, like a usage
//! error). Sizes are chosen to be wrong on any machine.

mod common;
use common::svmem;

/// Runs `svmem args`, expects a refusal, returns its message.
fn refused(args: &[&str]) -> String {
    let out = svmem(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "svmem {args:?}: {err}");
    assert!(out.stdout.is_empty(), "svmem {args:?} printed a result");
    err
}

fn has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "missing `{n}` in: {msg}");
    }
}

#[test]
fn a_size_past_the_memory_limit_names_the_limit_and_a_fix() {
    let msg = refused(&["demo", "--size", "64T"]);
    has(
        &msg,
        &[
            "svmem: --size 64T: larger than this machine's memory limit of ",
            " GiB; use --size ",
            "G or less",
        ],
    );
    // Workloads count every array: the fix is per array.
    let msg = refused(&["run", "stream", "--size", "16T"]);
    has(
        &msg,
        &[
            "--size 16T: needs 48.0 TiB of managed memory",
            "use --size ",
        ],
    );
    let msg = refused(&["bench", "migrate", "--size", "64T"]);
    has(
        &msg,
        &["--size 64T: larger than this machine's memory limit"],
    );
}

#[test]
fn device_memory_is_checked_against_available_memory() {
    let msg = refused(&["demo", "--device-memory", "64T"]);
    has(
        &msg,
        &[
            "--device-memory 64T: emulated device memory is real memory",
            "of memory this machine has available now; use --device-memory ",
            " or less",
        ],
    );
    let msg = refused(&["run", "gather", "--size", "4M", "--device-memory", "64T"]);
    has(&msg, &["--device-memory 64T", "available now"]);
}

#[test]
fn tiny_device_memory_is_refused_not_rounded() {
    let msg = refused(&["run", "stream", "--size", "4M", "--device-memory", "1"]);
    has(
        &msg,
        &[
            "--device-memory 1: below the minimum of 2.0 MiB",
            "use --device-memory 2M or more",
        ],
    );
    let msg = refused(&["demo", "--size", "4M", "--device-memory", "2049K"]);
    has(
        &msg,
        &[
            "--device-memory 2049K",
            "not a multiple of 4 KiB",
            "use --device-memory 2052K",
        ],
    );
}

#[test]
fn benchmarks_refuse_sizes_they_cannot_measure() {
    let msg = refused(&["bench", "migrate", "--size", "3"]);
    has(
        &msg,
        &[
            "--size 3: below the minimum of 16.0 MiB",
            "use --size 16M or more",
        ],
    );
    let msg = refused(&["bench", "faults", "--size", "1M"]);
    has(
        &msg,
        &[
            "--size 1M: below the minimum of 16.0 MiB",
            "use --size 16M or more",
        ],
    );
    let msg = refused(&["bench", "oversub", "--device-memory", "4M"]);
    has(
        &msg,
        &[
            "--device-memory 4M: below the minimum of 16.0 MiB",
            "16M or more",
        ],
    );
}

#[test]
fn the_demo_refuses_partial_pages() {
    let msg = refused(&["demo", "--size", "3"]);
    has(
        &msg,
        &[
            "--size 3: the demo moves whole 4 KiB pages",
            "use --size 4K",
        ],
    );
}

#[test]
fn the_suggested_minimums_pass() {
    let out = svmem(&["demo", "--size", "4K", "--device-memory", "2M", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
