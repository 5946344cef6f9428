//! A custom placement policy: data a device only reads stays in system
//! memory and is mapped there (no migration); a write fault moves the data
//! to the writing device. Everything else is left to the built-in KFD rules.
//!
//! `cargo run --example custom_policy`; `cargo test --example custom_policy`.

use svmem::placement::policy::PolicyInput;
use svmem::{AccessKind, Decision, DeviceId, KfdPolicy, Location, PlacementPolicy, Svm};

const DEV: DeviceId = DeviceId(0);

/// Reads map in place, writes migrate to the writer.
#[derive(Debug)]
struct WritesMigrate;

impl PlacementPolicy for WritesMigrate {
    fn name(&self) -> &str {
        "writes-migrate"
    }

    fn decide(&self, i: &PolicyInput<'_>) -> Decision {
        // Keep KFD's refusals (read-only ranges, no access) and its choices
        // for data on other devices; change only what a device does about
        // system-memory data it can map.
        match KfdPolicy.decide(i) {
            Decision::MigrateToDevice(d) if i.resident == Location::System => {
                if i.kind == AccessKind::Read {
                    Decision::MapInPlace
                } else {
                    Decision::MigrateToDevice(d)
                }
            }
            other => other,
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let svm = Svm::builder()
        .emulated(svmem::EmulatedConfig::with_memory(32 << 20))?
        .policy(WritesMigrate)
        .build()?;
    assert_eq!(svm.policy_name(), "writes-migrate");

    let mut input = svm.alloc(2 << 20)?;
    let output = svm.alloc(2 << 20)?;
    for (i, v) in input.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = i as u64;
    }
    let n = input.len() / 8;
    let (src, dst) = (input.addr(), output.addr());

    // The kernel reads `input` and writes `output`.
    svm.device(DEV)?
        .launch(n, |lane, i| {
            let v: u64 = lane.load(src.offset(i * 8))?;
            lane.store(dst.offset(i * 8), v + 100)
        })?
        .check()?;

    // The policy's effect: the read data never left system memory, the
    // written data moved to the device on its write faults.
    if svm.location(input.addr()) != Some(Location::System) {
        return Err("input moved, but the policy maps reads in place".into());
    }
    if svm.location(output.addr()) != Some(Location::Device(DEV)) {
        return Err("output stayed home, but the policy migrates writes".into());
    }
    let stats = svm.stats();
    assert_eq!(stats.to_device_pages, output.npages() as u64);

    for (i, &v) in output.as_slice::<u64>().iter().enumerate() {
        if v != i as u64 + 100 {
            return Err(format!("output[{i}] = {v}, expected {}", i + 100).into());
        }
    }
    println!(
        "custom_policy: {n} words; input stayed in system memory, {} output pages migrated",
        stats.to_device_pages
    );
    Ok(())
}

#[test]
fn runs_and_checks_its_data() {
    main().expect("the custom_policy example");
}
