//! Quick start: managed memory that the CPU and an emulated device share.
//!
//! `cargo run --example quickstart` (as root, or with access to
//! `/dev/userfaultfd`). `cargo test --example quickstart` runs it as a test.

use svmem::{DeviceId, Location, Svm};

const DEV: DeviceId = DeviceId(0);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One emulated device with 64 MiB of memory.
    let svm = Svm::with_emulated(64 << 20)?;

    // 8 MiB of managed memory: one pointer, valid on the CPU and the device.
    let mut region = svm.alloc(8 << 20)?;
    let n = region.len() as usize / 8;
    for (i, w) in region.as_mut_slice::<u64>().iter_mut().enumerate() {
        *w = i as u64;
    }

    // Move it into device memory; the report says what moved and why not.
    let report = svm.migrate(region.addr(), region.len(), Location::Device(DEV))?;
    assert_eq!(report.migrated, region.npages() as u64);
    assert_eq!(svm.location(region.addr()), Some(Location::Device(DEV)));

    // A kernel: one work item per word, each lane loading and storing
    // through the device's page table.
    let base = region.addr();
    let launch = svm.device(DEV)?.launch(n as u64, |lane, i| {
        let at = base.offset(i * 8);
        let v: u64 = lane.load(at)?;
        lane.store(at, v * 2 + 1)
    })?;
    launch.check()?;

    // The CPU reads the result: its touches fault the pages back.
    let faults_before = svm.stats().cpu_faults;
    let words = region.as_slice::<u64>();
    for (i, &w) in words.iter().enumerate() {
        if w != i as u64 * 2 + 1 {
            return Err(format!("word {i}: {w}, expected {}", i * 2 + 1).into());
        }
    }
    drop(words);
    let stats = svm.stats();
    assert!(stats.cpu_faults > faults_before);
    println!(
        "quickstart: {n} words checked; {} pages to the device, {} back, {} CPU faults",
        stats.to_device_pages, stats.to_system_pages, stats.cpu_faults
    );
    Ok(())
}

#[test]
fn runs_and_checks_its_data() {
    main().expect("the quickstart example");
}
