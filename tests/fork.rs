//! fork: the child sees every managed byte as it was at the fork (device-
//! resident pages included), nothing it does changes the parent, its
//! inherited handles fail with `Error::Forked`, and the parent's pages stay
//! migratable after it. Each scenario forks; the child does little (reads,
//! compares, writes) and reports through its exit code.
//!
//! The tests of this file run one at a time (`SERIAL`): a fork brings every
//! `Svm` of the process home and holds migrations to devices out meanwhile,
//! which would disturb another test's counts.

mod common;

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use common::{emulated, pattern};
use svmem::{DeviceId, Error, Location, Region, Svm, BLOCK_SIZE, PAGE_SIZE};

const DEV: DeviceId = DeviceId(0);
const MIB: usize = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forks; the child runs `f` and exits with its code (101 if it panics).
/// Returns the child's pid.
fn spawn(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: fork in a multi-threaded process: the child has only this
    // thread, so it must not wait for locks other threads held. It runs
    // `f` (test code that reads and writes its own memory, and svmem calls
    // that fail before taking any lock) and leaves with `_exit`, running
    // no destructors or atexit handlers of the parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child at once, which is all it may do now.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for child `pid`; its exit code (panics if it did not exit).
fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a live int for waitpid to fill.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status),
        "child did not exit normally (status {status:#x})"
    );
    libc::WEXITSTATUS(status)
}

fn in_child(f: impl FnOnce() -> i32) -> i32 {
    wait(spawn(f))
}

fn svm(device_bytes: u64) -> Svm {
    Svm::builder()
        .emulated(emulated("gpu0", device_bytes))
        .expect("emulated device")
        .build()
        .expect("build an Svm")
}

/// Fills the region with `pattern(_, seed)` from the CPU.
fn fill(region: &mut Region<'_>, seed: u8) {
    for (i, b) in region.as_mut_slice::<u8>().iter_mut().enumerate() {
        *b = pattern(i, seed);
    }
}

/// The first byte of `region[range]` that is not `pattern(_, seed)`.
fn first_wrong(region: &Region<'_>, range: std::ops::Range<usize>, seed: u8) -> Option<usize> {
    let v = region.as_slice::<u8>();
    range.into_iter().find(|&i| v[i] != pattern(i, seed))
}

/// Every other 2 MiB block of the region to the device, checked.
fn half_to_device(svm: &Svm, region: &Region<'_>) -> u64 {
    let mut moved = 0;
    for b in (0..region.len() as usize / BLOCK_SIZE).step_by(2) {
        let at = region.at((b * BLOCK_SIZE) as u64);
        let rep = svm
            .migrate(at, BLOCK_SIZE as u64, Location::Device(DEV))
            .expect("migrate to device");
        assert_eq!(rep.migrated, (BLOCK_SIZE / PAGE_SIZE) as u64, "{rep:?}");
        assert_eq!(svm.location(at), Some(Location::Device(DEV)));
        moved += rep.migrated;
    }
    moved
}

/// (a) The child reads every byte as it was at the fork, device-resident
/// pages included (before: zeros there).
#[test]
fn child_sees_device_resident_data() {
    let _s = serial();
    let svm = svm(64 * MIB as u64);
    let mut region = svm.alloc(64 * MIB).expect("alloc");
    fill(&mut region, 7);
    let on_device = half_to_device(&svm, &region);
    let len = region.len() as usize;
    let code = in_child(|| match first_wrong(&region, 0..len, 7) {
        None => 0,
        Some(i) if i % (2 * BLOCK_SIZE) < BLOCK_SIZE => 1, // a page that was on the device
        Some(_) => 2,
    });
    assert_eq!(
        code, 0,
        "child saw wrong data (1: device-resident page, 2: system page)"
    );
    let s = svm.stats();
    assert_eq!(s.forks, 1);
    assert_eq!(s.fork_evicted_pages, on_device);
    assert_eq!(s.fork_stuck_pages, 0);
    assert_eq!(first_wrong(&region, 0..len, 7), None);
    // Migrations to the device work again after the fork.
    half_to_device(&svm, &region);
    assert_eq!(first_wrong(&region, 0..len, 7), None);
}

/// (b) The child writes pages that were device-resident at the fork while
/// the parent migrates them (both ways) and reads them: the parent's data
/// does not change, the child sees its own writes.
#[test]
fn child_writes_do_not_reach_parent() {
    let _s = serial();
    let svm = svm(64 * MIB as u64);
    let mut region = svm.alloc(32 * MIB).expect("alloc");
    fill(&mut region, 3);
    half_to_device(&svm, &region);
    let len = region.len() as usize;
    // The child keeps rewriting its copy of the pages that were on the device.
    let base = region.addr().0 as usize;
    let pid = spawn(|| {
        for pass in 0..20u8 {
            let seed = 100 + pass;
            for b in (0..len / BLOCK_SIZE).step_by(2) {
                for i in b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE {
                    // SAFETY: the child's own copy of the mapping, no Rust
                    // reference to it lives (the region is not viewed here).
                    unsafe { *((base + i) as *mut u8) = pattern(i, seed) };
                }
            }
            for b in (0..len / BLOCK_SIZE).step_by(2) {
                for i in b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE {
                    // SAFETY: as above.
                    if unsafe { *((base + i) as *const u8) } != pattern(i, seed) {
                        return 1;
                    }
                }
            }
        }
        0
    });
    let before = svm.stats().fork_unshare_runs;
    for round in 0..4 {
        let to = if round % 2 == 0 {
            Location::Device(DEV)
        } else {
            Location::System
        };
        let rep = svm
            .migrate(region.addr(), region.len(), to)
            .expect("migrate");
        assert_eq!(rep.skipped_busy, 0, "round {round}: {rep:?}");
        assert_eq!(first_wrong(&region, 0..len, 3), None, "round {round}");
    }
    assert_eq!(wait(pid), 0, "the child did not read back its own writes");
    // After the child exits every page still migrates.
    let rep = svm
        .migrate(region.addr(), region.len(), Location::Device(DEV))
        .expect("migrate");
    assert_eq!(rep.skipped_busy, 0, "{rep:?}");
    assert!(
        svm.stats().fork_unshare_runs > before,
        "pages shared with the child were unshared"
    );
    assert_eq!(first_wrong(&region, 0..len, 3), None);
}

/// (c) The child drops its Region and Svm and exits: the parent's data is
/// unchanged, the child exits cleanly, and every page migrates both ways
/// afterwards (before: the child's drop freed the parent's device pages
/// through the inherited uffd, panicked, and pages stayed busy).
#[test]
fn child_drops_handles_parent_unchanged() {
    let _s = serial();
    let svm = svm(64 * MIB as u64);
    let mut region = svm.alloc(32 * MIB).expect("alloc");
    fill(&mut region, 9);
    half_to_device(&svm, &region);
    let len = region.len() as usize;
    let npages = region.npages() as u64;
    // The child owns nothing of these: moves go through raw pointers
    // (`mem::drop` of a borrowed Region is what the child may do).
    let region_ptr = &mut region as *mut Region<'_>;
    let svm_ptr = &svm as *const Svm;
    let code = in_child(|| {
        // SAFETY: the child's copies of the parent's `region` and `svm`;
        // the parent's own values are untouched (another process). Reading
        // them out moves them into the child's drops below; the child never
        // uses the originals again (it exits right after).
        let (r, s) = unsafe { (std::ptr::read(region_ptr), std::ptr::read(svm_ptr)) };
        drop(r);
        drop(s);
        0
    });
    assert_eq!(code, 0, "the child panicked dropping its inherited handles");
    assert_eq!(first_wrong(&region, 0..len, 9), None);
    for to in [
        Location::Device(DEV),
        Location::System,
        Location::Device(DEV),
    ] {
        let rep = svm
            .migrate(region.addr(), region.len(), to)
            .expect("migrate");
        assert_eq!(rep.skipped_busy, 0, "to {to:?}: {rep:?}");
        assert_eq!(
            rep.migrated + rep.already_there,
            npages,
            "to {to:?}: {rep:?}"
        );
        assert_eq!(svm.location(region.addr()), Some(to));
        assert_eq!(
            first_wrong(&region, 0..len, 9),
            None,
            "after moving to {to:?}"
        );
    }
    drop(region);
}

/// (d) Inherited handles fail with `Error::Forked` in the child (before:
/// they acted on the parent's address space, or hung); a child builds its
/// own `Svm` and uses it.
#[test]
fn inherited_handles_are_forked_errors() {
    let _s = serial();
    let svm = svm(16 * MIB as u64);
    let region = svm.alloc(4 * MIB).expect("alloc");
    let dev = svm.device(DEV).expect("device handle");
    let parent = std::process::id();
    let code = in_child(|| {
        let forked = |e: &Error| {
            matches!(e, Error::Forked { owner, .. } if *owner == parent)
                && e.to_string().contains("create a new Svm in the child")
        };
        let mut bad = 0;
        match svm.migrate(region.addr(), region.len(), Location::Device(DEV)) {
            Err(e) if forked(&e) => {}
            _ => bad |= 1,
        }
        match svm.alloc(PAGE_SIZE) {
            Err(e) if forked(&e) => {}
            _ => bad |= 2,
        }
        let mut buf = [0u8; 8];
        match dev.read(region.addr(), &mut buf) {
            Err(e) if forked(&e) => {}
            _ => bad |= 4,
        }
        match svm.device(DEV) {
            Err(e) if forked(&e) => {}
            _ => bad |= 8,
        }
        // No Result: panics with the same message.
        if std::panic::catch_unwind(AssertUnwindSafe(|| svm.stats())).is_ok() {
            bad |= 16;
        }
        // The child's own Svm works.
        let own = || -> svmem::Result<bool> {
            let s2 = Svm::with_emulated(8 * MIB as u64)?;
            let mut r2 = s2.alloc(2 * MIB)?;
            fill(&mut r2, 5);
            s2.migrate(r2.addr(), r2.len(), Location::Device(DEV))?;
            let mut b = vec![0u8; PAGE_SIZE];
            s2.device(DEV)?.read(r2.at(PAGE_SIZE as u64), &mut b)?;
            Ok(b.iter()
                .enumerate()
                .all(|(i, &x)| x == pattern(PAGE_SIZE + i, 5))
                && first_wrong(&r2, 0..r2.len() as usize, 5).is_none())
        };
        if !matches!(own(), Ok(true)) {
            bad |= 32;
        }
        bad
    });
    assert_eq!(code, 0, "bit mask of checks that failed in the child");
    // The parent's handles still work.
    let rep = svm
        .migrate(region.addr(), region.len(), Location::Device(DEV))
        .expect("migrate");
    assert_eq!(rep.skipped_busy, 0);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `fork()` in the parent (the child exits at once), ms; median of 5.
fn time_forks(mut before_each: impl FnMut()) -> f64 {
    median(
        (0..5)
            .map(|_| {
                before_each();
                let t = std::time::Instant::now();
                let pid = spawn(|| 0);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert_eq!(wait(pid), 0);
                ms
            })
            .collect(),
    )
}

/// The cost of a fork with 1 GiB device-resident against a plain fork of a
/// process with 1 GiB of ordinary populated memory. Run with
/// `cargo test --release --test fork -- --ignored --nocapture fork_cost`.
#[test]
#[ignore = "a measurement: 3 GiB of memory, a few seconds"]
fn fork_cost() {
    let _s = serial();
    const GIB: usize = 1 << 30;
    let empty = time_forks(|| {});
    {
        let mut plain = vec![0u8; GIB];
        for (i, b) in plain.iter_mut().enumerate().step_by(PAGE_SIZE) {
            *b = i as u8;
        }
        let plain_ms = time_forks(|| {});
        println!(
            "fork, no svmem, 1 GiB populated Vec: {plain_ms:.2} ms (empty process: {empty:.2} ms)"
        );
        std::hint::black_box(&plain);
    }
    let svm = svm(GIB as u64);
    let mut region = svm.alloc(GIB).expect("alloc");
    fill(&mut region, 1);
    let sys_ms = time_forks(|| {});
    println!("fork, svmem 1 GiB region in system memory: {sys_ms:.2} ms");
    let to_dev = |svm: &Svm, region: &Region<'_>| {
        let t = std::time::Instant::now();
        let rep = svm
            .migrate(region.addr(), region.len(), Location::Device(DEV))
            .expect("migrate");
        assert_eq!(rep.migrated, region.npages() as u64, "{rep:?}");
        t.elapsed().as_secs_f64() * 1e3
    };
    let dev_ms = time_forks(|| {
        to_dev(&svm, &region);
    });
    println!("fork, svmem 1 GiB region device-resident: {dev_ms:.2} ms (brings 1 GiB home first)");
    // Migrating to the device after a fork: pages shared with the child
    // (alive, or exited) are unshared on the way.
    svm.migrate(region.addr(), region.len(), Location::System)
        .expect("home");
    let fresh: Vec<f64> = (0..3)
        .map(|_| {
            let ms = to_dev(&svm, &region);
            svm.migrate(region.addr(), region.len(), Location::System)
                .expect("home");
            ms
        })
        .collect();
    let pid = spawn(|| 0);
    assert_eq!(wait(pid), 0);
    let after_exit = to_dev(&svm, &region);
    svm.migrate(region.addr(), region.len(), Location::System)
        .expect("home");
    let pid = spawn(|| {
        // SAFETY: pause until the parent kills us.
        unsafe { libc::pause() };
        0
    });
    let alive = to_dev(&svm, &region);
    // SAFETY: our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: `status` is a live int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    println!(
        "migrate 1 GiB to device: {:.2} ms without a fork; {after_exit:.2} ms after a fork (child exited); \
         {alive:.2} ms with the forked child alive (copy-on-write copies)",
        median(fresh)
    );
    assert_eq!(first_wrong(&region, 0..GIB, 1), None);
}
