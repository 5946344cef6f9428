//! Helpers shared by the integration tests (each test file uses some).

#![allow(dead_code)]

use svmem::{EmulatedConfig, MemoryType, Region, Svm, PAGE_SIZE};

/// An emulated device config with one copy engine and two lanes.
pub fn emulated(name: &str, memory_bytes: u64) -> EmulatedConfig {
    EmulatedConfig {
        name: name.into(),
        memory_bytes,
        copy_engines: 1,
        memory_type: MemoryType::Private,
        compute_units: 2,
        commit_up_front: false,
    }
}

/// An `Svm` with one emulated device.
pub fn svm(device_bytes: u64) -> Svm {
    Svm::with_emulated(device_bytes).expect("build an Svm with one emulated device")
}

/// An `Svm` with two emulated devices, `gpu0` and `gpu1`.
pub fn two_devices(device_bytes: u64) -> Svm {
    Svm::builder()
        .emulated(emulated("gpu0", device_bytes))
        .expect("gpu0")
        .emulated(emulated("gpu1", device_bytes))
        .expect("gpu1")
        .build()
        .expect("build an Svm with two emulated devices")
}

/// The byte the tests store at offset `i`, varied by `seed` and by page.
pub fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8) ^ ((i / PAGE_SIZE) as u8).wrapping_mul(31) ^ seed
}

/// Writes [`pattern`] over the whole region from the CPU.
pub fn fill(region: &mut Region<'_>, seed: u8) {
    for (i, b) in region.as_mut_slice::<u8>().iter_mut().enumerate() {
        *b = pattern(i, seed);
    }
}

/// xorshift64*: enough randomness for choosing words, ranges and operations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (`n` ≥ 1).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// Uniform-ish in `0..n` (`n` ≥ 1), for `u64` bounds.
    pub fn below_u64(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True one time in `one_in`.
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
}

/// The application discarding part of its managed memory, as a program would.
pub fn dontneed(base: svmem::VirtAddr, offset: usize, len: usize) {
    let p = (base.as_u64() as usize + offset) as *mut libc::c_void;
    // SAFETY: the range lies inside the region's mapping, which stays mapped;
    // no Rust reference into it is alive across the call.
    let rc = unsafe { libc::madvise(p, len, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0, "madvise failed: {}", std::io::Error::last_os_error());
}

/// Sums `words` u64 words from `base` with a device kernel, `item_words` a
/// work item, read in place with `Lane::read_words` (a sequential sweep).
pub fn sum_kernel(
    svm: &Svm,
    dev: svmem::DeviceId,
    base: svmem::VirtAddr,
    words: u64,
    item_words: u64,
) -> svmem::Result<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let total = AtomicU64::new(0);
    svm.device(dev)?
        .launch(words.div_ceil(item_words), |lane, item| {
            let lo = item * item_words;
            let n = item_words.min(words - lo);
            let mut sum = 0u64;
            lane.read_words(base.offset(lo * 8), n, |ws| {
                sum = ws
                    .iter()
                    .fold(sum, |a, w| a.wrapping_add(w.load(Ordering::Relaxed)));
            })?;
            total.fetch_add(sum, Ordering::Relaxed);
            Ok(())
        })?
        .check()?;
    Ok(total.into_inner())
}

/// What the threads share of a region: its address and its words as
/// atomics (`Region::as_atomic_u64` borrows the region mutably, so no plain
/// view of it can live meanwhile).
pub struct SharedRegion<'a> {
    pub words: &'a [std::sync::atomic::AtomicU64],
    base: svmem::VirtAddr,
    len: u64,
}

impl<'a> SharedRegion<'a> {
    pub fn new(region: &'a mut Region<'_>) -> SharedRegion<'a> {
        let (base, len) = (region.addr(), region.len());
        SharedRegion {
            words: region.as_atomic_u64(),
            base,
            len,
        }
    }
    pub fn as_atomic_u64(&self) -> &'a [std::sync::atomic::AtomicU64] {
        self.words
    }
    pub fn addr(&self) -> svmem::VirtAddr {
        self.base
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn npages(&self) -> usize {
        (self.len / svmem::PAGE_SIZE as u64) as usize
    }
    pub fn at(&self, off: u64) -> svmem::VirtAddr {
        self.base.offset(off)
    }
}

/// The first thing that went wrong in a multi-threaded test, for the failure
/// message; setting it also raises `stop` so every thread winds down.
#[derive(Default)]
pub struct FirstError(std::sync::Mutex<Option<String>>);

impl FirstError {
    pub fn set(&self, stop: &std::sync::atomic::AtomicBool, msg: String) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(msg);
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
    }
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Aborts the process if `done` is not set within `limit`: a deadlock must
/// fail the test, not stall CI. `progress` is printed with the message.
pub fn watchdog<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    done: &'s std::sync::atomic::AtomicBool,
    limit: std::time::Duration,
    progress: &'s std::sync::atomic::AtomicU64,
    what: &'static str,
) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    s.spawn(move || {
        let until = std::time::Instant::now() + limit;
        while !done.load(Ordering::Acquire) {
            if std::time::Instant::now() > until {
                let _ = writeln!(
                    std::io::stderr(),
                    "{what}: no completion within {limit:?} (progress {}): deadlock?",
                    progress.load(Ordering::Relaxed)
                );
                std::process::abort();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
}

/// Runs `body` in a child process (this test binary, only test `name`) and
/// fails if the child fails or dies of a signal.
pub fn in_child(name: &str, body: impl FnOnce()) {
    if std::env::var("SVMEM_TEST_CHILD").as_deref() == Ok(name) {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SVMEM_TEST_CHILD", name)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child for {name} failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "child for {name} ran no test:\n{stdout}"
    );
}
