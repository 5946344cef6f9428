//! Oversubscription watched through events: a working set four times the
//! device's memory moves through it in chunks; svmem evicts older blocks to
//! make room, and the event stream shows every eviction. No byte is lost.
//!
//! `cargo run --example oversubscription`; `cargo test --example oversubscription`.

use svmem::observe::events::MigrateTrigger;
use svmem::{DeviceId, EventKind, Location, Svm};

const DEV: DeviceId = DeviceId(0);
const MIB: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device_memory = 8 * MIB;
    let svm = Svm::with_emulated(device_memory)?;
    let mut region = svm.alloc(4 * device_memory as usize)?;
    for (i, w) in region.as_mut_slice::<u64>().iter_mut().enumerate() {
        *w = !(i as u64);
    }
    let events = svm.subscribe(1 << 16);

    // Bring each quarter in turn onto the device, and let a kernel update
    // it there. From the second quarter on, the device is full.
    let chunk = device_memory;
    for q in 0..4 {
        let start = region.at(q * chunk);
        svm.prefetch(start, chunk, Location::Device(DEV))?;
        svm.device(DEV)?
            .launch(chunk / 8, |lane, i| {
                let at = start.offset(i * 8);
                let v: u64 = lane.load(at)?;
                lane.store(at, v ^ 0xff)
            })?
            .check()?;
    }

    // What the events say: evictions moved blocks back to system memory.
    let (mut evicted_pages, mut evictions, mut to_device) = (0, 0, 0);
    for e in events.drain() {
        match e.kind {
            EventKind::MigrateEnd {
                trigger: MigrateTrigger::Eviction,
                migrated,
                ..
            } => {
                evictions += 1;
                evicted_pages += migrated;
            }
            EventKind::MigrateEnd {
                to: Location::Device(_),
                migrated,
                ..
            } => to_device += migrated,
            _ => {}
        }
    }
    let stats = svm.stats();
    if evictions == 0 || evicted_pages != stats.evicted_pages {
        return Err(format!(
            "events show {evictions} evictions of {evicted_pages} pages; counters say {} pages",
            stats.evicted_pages
        )
        .into());
    }
    let usage = svm.memory_usage();
    assert!(usage.device_bytes <= device_memory);
    assert!(to_device * 4096 >= 4 * device_memory);

    // Every word is right, wherever it lives now.
    for (i, &w) in region.as_slice::<u64>().iter().enumerate() {
        if w != !(i as u64) ^ 0xff {
            return Err(format!("word {i} = {w:#x}, expected {:#x}", !(i as u64) ^ 0xff).into());
        }
    }
    println!(
        "oversubscription: 32 MiB through an 8 MiB device; {evictions} evictions moved \
         {evicted_pages} pages ({} MiB) home; data checked",
        evicted_pages * 4096 / MIB
    );
    Ok(())
}

#[test]
fn runs_and_checks_its_data() {
    main().expect("the oversubscription example");
}
