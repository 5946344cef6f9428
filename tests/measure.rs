//! Measurements, not tests: `cargo test --release --test measure --
//! --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use svmem::{Attr, DeviceId, Location, Svm};

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn lane_remote_read_throughput() {
    let svm = Svm::with_emulated(64 << 20).unwrap();
    let len = 256usize << 20;
    let mut r = svm.alloc(len).unwrap();
    r.as_mut_slice::<u64>()
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = i as u64);
    svm.set_attributes(
        r.addr(),
        len as u64,
        &[Attr::PreferredLocation(Some(Location::System))],
    )
    .unwrap();
    let dev = svm.device(DeviceId(0)).unwrap();
    let item = 64usize << 10;
    let base = r.addr();
    let mut times = Vec::new();
    for _ in 0..6 {
        let t = std::time::Instant::now();
        dev.launch((len / item) as u64, |lane, i| {
            let mut buf = vec![0u64; item / 8];
            lane.read_slice(base.offset(i * item as u64), &mut buf)?;
            assert_eq!(buf[1], (i as usize * item / 8 + 1) as u64);
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    println!(
        "lane remote read: {:.2} GB/s (median of 5, {:.1} ms)",
        len as f64 / med / 1e9,
        med * 1e3
    );
}

/// munmap of 1 GiB that is device-resident, until the device's memory is
/// free again (the program's munmap returns once the event is read; the
/// reader frees the device pages right after).
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn munmap_device_resident_until_free() {
    let gib = 1usize << 30;
    let svm = Svm::with_emulated(gib as u64 + (64 << 20)).unwrap();
    let dev = svm.device(DeviceId(0)).unwrap();
    let cap = dev.info().free_bytes;
    let mut times = Vec::new();
    for _ in 0..3 {
        let mut r = svm.alloc(gib).unwrap();
        r.as_mut_slice::<u64>().iter_mut().for_each(|v| *v = 7);
        svm.migrate(r.addr(), gib as u64, Location::Device(DeviceId(0)))
            .unwrap();
        let t = std::time::Instant::now();
        // SAFETY: unmaps the test's own region behind svmem's back; no
        // reference into it lives.
        let rc = unsafe { libc::munmap(r.addr().0 as *mut libc::c_void, gib) };
        assert_eq!(rc, 0);
        let returned = t.elapsed();
        while dev.info().free_bytes != cap {
            std::hint::spin_loop();
        }
        times.push((
            returned.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
        ));
        drop(r);
    }
    times.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap());
    let (ret, free) = times[1];
    println!("munmap of 1 GiB device-resident: returns in {ret:.2} ms, device memory free after {free:.2} ms (median of 3)");
}

/// Device-to-device migration of 1 GiB over the peer path, against the
/// copy limit measured in the same run (one thread streaming 1 GiB between
/// two buffers, svmem's own copy loop) and against the same move through
/// system memory (peer access off): time and bytes copied.
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn peer_migration_against_copy_limit() {
    let gib = 1usize << 30;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let limit = {
        let src = vec![7u8; gib];
        let mut dst = vec![0u8; gib];
        svmem::device::stream_copy(&mut dst, &src);
        median(
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    svmem::device::stream_copy(&mut dst, &src);
                    gib as f64 / t.elapsed().as_secs_f64() / 1e9
                })
                .collect(),
        )
    };
    // The same copy split over every core, for the all-cores limit.
    let all_cores = {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let src = vec![7u8; gib];
        let mut dst = vec![0u8; gib];
        let chunk = gib / n;
        median(
            (0..6)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::thread::scope(|s| {
                        for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                            s.spawn(move || svmem::device::stream_copy(d, c));
                        }
                    });
                    gib as f64 / t.elapsed().as_secs_f64() / 1e9
                })
                .collect(),
        )
    };
    for peer in [true, false] {
        let cfg = |name: &str| svmem::EmulatedConfig {
            name: name.into(),
            memory_bytes: gib as u64 + (64 << 20),
            commit_up_front: true,
            ..Default::default()
        };
        let svm = Svm::builder()
            .emulated(cfg("gpu0"))
            .unwrap()
            .emulated(cfg("gpu1"))
            .unwrap()
            .peer_access(peer)
            .build()
            .unwrap();
        let mut r = svm.alloc(gib).unwrap();
        r.as_mut_slice::<u64>()
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as u64);
        let (a, n) = (r.addr(), gib as u64);
        let mut rates = Vec::new();
        let mut copied = 0;
        let moved = |s: &svmem::Stats| s.peer_bytes + s.to_device_bytes + s.to_system_bytes;
        for k in 0..5 {
            let (from, to) = if k % 2 == 0 { (0, 1) } else { (1, 0) };
            svm.migrate(a, n, Location::Device(DeviceId(from))).unwrap();
            let before = svm.stats();
            let t = std::time::Instant::now();
            let rep = svm.migrate(a, n, Location::Device(DeviceId(to))).unwrap();
            rates.push(gib as f64 / t.elapsed().as_secs_f64() / 1e9);
            assert_eq!(rep.migrated, n / 4096);
            copied += moved(&svm.stats()) - moved(&before);
        }
        svm.migrate(a, n, Location::System).unwrap();
        assert!(r
            .as_slice::<u64>()
            .iter()
            .enumerate()
            .all(|(i, v)| *v == i as u64));
        let rate = median(rates);
        println!(
            "device to device, 1 GiB, peer access {}: {rate:.2} GB/s = {:.2} of the copy limit \
             ({limit:.2} GB/s, one thread), {:.2} of the all-cores limit ({all_cores:.2} GB/s); \
             {:.2} GiB copied per 1 GiB moved",
            if peer { "on " } else { "off" },
            rate / limit,
            rate / all_cores,
            copied as f64 / 5.0 / gib as f64
        );
    }
}
