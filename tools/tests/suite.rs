//! The fifteen benchmark kernels (issue 12) at a small size, each checked by
//! the workload against its CPU reference: with device memory holding the
//! whole working set and holding half of it, with XNACK on and off.

#![allow(clippy::unwrap_used)]

use svmem::{DeviceId, EmulatedConfig, Svm};
use svmem_cli::workloads::{self, RunConfig, RunError, Workload};

const D0: DeviceId = DeviceId(0);
/// Bytes per array: matrices of 362×362 `f64`, 131,072-node graphs.
const BYTES: u64 = 1 << 20;

fn run(w: Workload, xnack: bool, oversubscribed: bool) {
    let ws = w.working_set(BYTES);
    let device = if oversubscribed {
        (ws / 2).next_multiple_of(64 << 10)
    } else {
        ws + (4 << 20)
    };
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(device))
        .unwrap()
        .xnack(xnack)
        .build()
        .unwrap();
    let cfg = RunConfig {
        bytes: BYTES,
        xnack,
        // 64 KiB windows: a small array is still several of them.
        granularity: 4,
        ..Default::default()
    };
    let what = format!("{w}, xnack {xnack}, device {device} bytes for a {ws}-byte working set");
    let rep = workloads::run(&svm, w, &cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(rep.verified, "{what}");
    assert_eq!(rep.working_set_bytes, ws, "{what}");
    assert!(rep.kernel_launches >= 1, "{what}");
    let st = svm.stats();
    if xnack {
        // Retry faults migrate what the kernels touch; with half the room,
        // pages must have been evicted to make space (eviction works by 2 MiB
        // block and never evicts the faulting block itself: a one-array
        // workload at this size is one block, served in place once full).
        assert!(
            rep.device_faults > 0 && rep.pages_to_device > 0,
            "{what}: {rep:?}"
        );
        if oversubscribed && w.arrays(BYTES).len() > 1 {
            assert!(st.evictions > 0, "{what}: {st:?}");
        }
    } else {
        // Mapped ahead in place: no device fault, no fatal fault.
        assert_eq!(rep.device_faults, 0, "{what}");
    }
    let info = svm.device(D0).unwrap().info();
    assert!(
        info.capacity_bytes - info.free_bytes == 0,
        "{what}: device pages leaked"
    );
}

fn all_modes(w: Workload) {
    for xnack in [true, false] {
        for over in [false, true] {
            run(w, xnack, over);
        }
    }
}

#[test]
fn the_suite_has_fifteen_kernels_with_distinct_names() {
    let mut names: Vec<_> = Workload::SUITE.iter().map(|w| w.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 15);
    for w in Workload::SUITE {
        assert!(Workload::ALL.contains(&w));
        assert_eq!(w.name().parse::<Workload>().unwrap(), w);
    }
    let irregular = Workload::SUITE.iter().filter(|w| w.irregular()).count();
    assert_eq!(irregular, 4);
}

#[test]
fn sizes_scale_with_bytes() {
    for w in Workload::SUITE {
        let (small, big) = (w.working_set(1 << 20), w.working_set(16 << 20));
        assert!(
            big >= 12 * small && big <= 20 * small,
            "{w}: {small} -> {big} bytes"
        );
    }
}

#[test]
fn a_mismatched_xnack_mode_is_a_config_error() {
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(8 << 20))
        .unwrap()
        .xnack(false)
        .build()
        .unwrap();
    let cfg = RunConfig {
        bytes: BYTES,
        xnack: true,
        ..Default::default()
    };
    let e = workloads::run(&svm, Workload::Nw, &cfg).unwrap_err();
    assert!(matches!(e, RunError::Config(_)), "{e}");
}

#[test]
fn a_size_beyond_host_memory_is_refused_before_anything_is_allocated() {
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(8 << 20))
        .unwrap()
        .build()
        .unwrap();
    for w in [Workload::Gemm, Workload::Bfs] {
        let cfg = RunConfig {
            bytes: 1 << 50,
            ..Default::default()
        };
        let e = workloads::run(&svm, w, &cfg).unwrap_err();
        assert!(matches!(e, RunError::Config(_)), "{w}: {e}");
        assert!(e.to_string().contains("use a smaller size"), "{e}");
    }
    assert_eq!(svm.memory_usage().managed_bytes, 0);
}

macro_rules! kernel_tests {
    ($($name:ident => $w:expr,)*) => {
        $(
            #[test]
            fn $name() {
                all_modes($w);
            }
        )*
    };
}

kernel_tests! {
    stream => Workload::Stream,
    conv2d => Workload::Conv2d,
    conv3d => Workload::Conv3d,
    gemm => Workload::Gemm,
    atax => Workload::Atax,
    bicg => Workload::Bicg,
    mvt => Workload::Mvt,
    gesummv => Workload::Gesummv,
    syr2k => Workload::Syr2k,
    hotspot => Workload::Hotspot,
    pathfinder => Workload::Pathfinder,
    bfs => Workload::Bfs,
    gups => Workload::Gups,
    nw => Workload::Nw,
    nn => Workload::Nn,
}
