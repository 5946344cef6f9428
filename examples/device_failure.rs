//! Surviving a device failure: injected copy failures roll migrations back
//! without losing data; a device lost without warning poisons only the pages
//! that lived on it; a reset brings the device back and everything else goes
//! on working.
//!
//! `cargo run --example device_failure`; `cargo test --example device_failure`.

use svmem::{CopyFailure, DeviceId, EmulatedConfig, Error, Injection, Location, Region, Svm};

const DEV0: DeviceId = DeviceId(0);
const DEV1: DeviceId = DeviceId(1);

fn fill(r: &mut Region<'_>, seed: u8) {
    for (i, b) in r.as_mut_slice::<u8>().iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
}

fn check(
    svm: &Svm,
    dev: DeviceId,
    r: &Region<'_>,
    seed: u8,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut buf = vec![0u8; r.len() as usize];
    svm.device(dev)?.read(r.addr(), &mut buf)?;
    match buf
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != seed.wrapping_add(i as u8))
    {
        Some((i, b)) => Err(format!("byte {i} is {b} after the failure").into()),
        None => Ok(()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let svm = Svm::builder()
        .emulated(EmulatedConfig::with_memory(16 << 20))?
        .emulated(EmulatedConfig::with_memory(16 << 20))?
        .build()?;
    let mut doomed = svm.alloc(1 << 20)?;
    let mut safe = svm.alloc(1 << 20)?;
    fill(&mut doomed, 1);
    fill(&mut safe, 2);

    // 1. Every copy job fails: the migration reports the pages rolled back
    //    and leaves them exactly where and as they were.
    svm.device(DEV0)?.inject(Injection {
        copy: CopyFailure::After(0),
        alloc_fails: false,
    })?;
    let rep = svm.migrate(doomed.addr(), doomed.len(), Location::Device(DEV0))?;
    assert_eq!((rep.migrated, rep.rolled_back), (0, doomed.npages() as u64));
    assert_eq!(svm.location(doomed.addr()), Some(Location::System));
    svm.device(DEV0)?.clear_injection()?;
    check(&svm, DEV1, &doomed, 1)?;

    // 2. The device is lost while it holds `doomed`; `safe` lives on DEV1.
    svm.migrate(doomed.addr(), doomed.len(), Location::Device(DEV0))?;
    svm.migrate(safe.addr(), safe.len(), Location::Device(DEV1))?;
    svm.device(DEV0)?.lose()?;
    match svm.migrate(safe.addr(), safe.len(), Location::Device(DEV0)) {
        Err(Error::DeviceLost { dev }) if dev == DEV0 => {}
        other => return Err(format!("expected DeviceLost, got {other:?}").into()),
    }
    // Only the pages on the lost device are gone; reads say so (a CPU touch
    // would get SIGBUS, like memory lost to a hardware error).
    let mut word = [0u8; 8];
    match svm.device(DEV1)?.read(doomed.addr(), &mut word) {
        Err(Error::Poisoned { .. }) => {}
        other => return Err(format!("expected Poisoned, got {other:?}").into()),
    }
    assert_eq!(svm.stats().poisoned_pages, doomed.npages() as u64);
    check(&svm, DEV1, &safe, 2)?;

    // 3. Reset the device: it comes back empty and usable.
    let reset = svm.reset_device(DEV0)?;
    assert!(reset.was_lost);
    svm.migrate(safe.addr(), safe.len(), Location::Device(DEV0))?;
    check(&svm, DEV0, &safe, 2)?;
    if safe.as_slice::<u8>()[1000] != 2u8.wrapping_add(1000u16 as u8) {
        return Err("the CPU reads wrong data after the reset".into());
    }
    println!(
        "device_failure: rollback kept all {} pages; the loss poisoned {} pages and spared the rest",
        rep.rolled_back,
        svm.stats().poisoned_pages
    );
    Ok(())
}

#[test]
fn runs_and_checks_its_data() {
    main().expect("the device_failure example");
}
