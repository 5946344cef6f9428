//! Migration throughput of a 64 MiB managed region on an emulated device,
//! beside a memcpy of the same size in the same group (the machine's limit).
//!
//! `cargo bench --bench migrate` (about a minute); `-- --quick` for a glance.
//! Throughput is reported in bytes of the region per iteration; the round
//! trip moves each byte twice and counts both.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use svmem::{DeviceId, Location, Svm};
use svmem_cli::bench::{fill_pattern, prefaulted, sum_words};

const SIZE: usize = 64 << 20;
const SEED: u64 = 0x6d69_6772_6174_6521;

fn bench(c: &mut Criterion) {
    let svm = match Svm::with_emulated(SIZE as u64) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("svmem: {e}");
            std::process::exit(1);
        }
    };
    let mut region = svm.alloc(SIZE).expect("alloc 64 MiB of managed memory");
    let checksum = fill_pattern(&mut region.as_mut_slice::<u64>(), SEED, 0);
    let (addr, len) = (region.addr(), region.len());
    let dev = Location::Device(DeviceId(0));
    let npages = region.npages() as u64;
    let migrate = |to: Location| {
        let r = svm.migrate(addr, len, to).expect("migrate");
        assert_eq!(r.migrated, npages, "incomplete migration: {r:?}");
    };

    let mut g = c.benchmark_group("migrate_64MiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    g.throughput(Throughput::Bytes(len));
    let src = prefaulted(SIZE);
    let mut dst = prefaulted(SIZE);
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });

    // Each timed step starts from the same state: all pages in system memory.
    g.bench_function("to_device", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let s = Instant::now();
                migrate(dev);
                t += s.elapsed();
                migrate(Location::System);
            }
            t
        })
    });
    g.bench_function("to_system", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                migrate(dev);
                let s = Instant::now();
                migrate(Location::System);
                t += s.elapsed();
            }
            t
        })
    });
    // A sequential CPU read of device-resident pages: every window comes
    // back through a real page fault.
    g.bench_function("cpu_fault_sweep", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                migrate(dev);
                let s = Instant::now();
                let sum = sum_words(black_box(&region.as_slice::<u64>()));
                t += s.elapsed();
                assert_eq!(sum, checksum, "data changed");
            }
            t
        })
    });

    g.throughput(Throughput::Bytes(2 * len));
    g.bench_function("round_trip", |b| {
        b.iter(|| {
            migrate(dev);
            migrate(Location::System);
        })
    });
    g.finish();

    assert_eq!(sum_words(&region.as_slice::<u64>()), checksum);
}

criterion_group!(benches, bench);
criterion_main!(benches);
