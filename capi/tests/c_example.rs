//! Builds `examples/quickstart.c` against the shared library cargo built for
//! this test run with the system C compiler (`cc`), runs it, and checks
//! that it verified its data.

use std::path::PathBuf;
use std::process::Command;

/// The directory holding the shared library cargo built with this test:
/// `target/<profile>/deps`, beside the test binary (cargo copies it up to
/// `target/<profile>` only when the library itself is built).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe
        .parent()
        .expect("the test runs from target/<profile>/deps");
    let found = [Some(deps), deps.parent()]
        .into_iter()
        .flatten()
        .find(|d| d.join("libsvmem_capi.so").exists())
        .unwrap_or(deps)
        .to_path_buf();
    found
}

#[test]
fn quickstart_c_builds_runs_and_checks_its_data() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let libs = lib_dir();
    assert!(
        libs.join("libsvmem_capi.so").exists(),
        "no libsvmem_capi.so in {}: cargo builds it with this test",
        libs.display()
    );
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quickstart");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/quickstart.c"))
        .arg("-L")
        .arg(&libs)
        .arg("-lsvmem_capi")
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}; install one or set CC"));
    assert!(status.success(), "{cc} failed to build quickstart.c");
    let out = Command::new(&exe).output().expect("run quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("quickstart: 524288 words checked"),
        "{stdout}"
    );
    assert!(stdout.ends_with("quickstart: ok\n"), "{stdout}");
}
