//! Running the `svmem` binary from the CLI's integration tests (each test
//! file uses some of these).

#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `svmem args` and returns what it did.
pub fn svmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_svmem"))
        .args(args)
        .output()
        .expect("start the svmem binary")
}

/// Bytes of output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `svmem args` and expects it to succeed, showing both outputs if not.
pub fn run_ok(args: &[&str]) -> Output {
    let out = svmem(args);
    assert!(
        out.status.success(),
        "svmem {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}
