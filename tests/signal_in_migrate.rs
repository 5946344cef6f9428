//! Issue 10, item 2: a signal handler that reads managed memory, running on a
//! thread that is inside `svm.migrate`, must neither deadlock nor read a
//! wrong value.
//!
//! Without care the thread holds a block lock while the block's pages are
//! isolated or on the device; the handler's read faults, the uffd reader waits
//! for that lock, and its owner waits in the fault. API calls that take block
//! locks now hold asynchronous signals back until they return.
//!
//! A watchdog aborts the test binary if the run does not finish in time, so a
//! deadlock fails the test instead of hanging CI.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use svmem::{DeviceId, Location, Svm, PAGE_SIZE};

const PAGES: usize = 64;
const WORDS: usize = PAGES * PAGE_SIZE / 8;

/// The value word `w` holds: never zero.
fn word_value(w: usize) -> u64 {
    (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// Address of the region's first word, for the handler.
static BASE: AtomicUsize = AtomicUsize::new(0);
/// The word the next handler reads.
static WORD: AtomicUsize = AtomicUsize::new(0);
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Wrong values the handler read (0 when none): `word << 32 | low bits read`.
static BAD: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: atomics only.
    let w = WORD.load(Ordering::Relaxed);
    let p = (BASE.load(Ordering::Relaxed) + w * 8) as *const AtomicU64;
    // SAFETY: BASE is the start of the managed region, which outlives every
    // signal the test sends (the sender stops and the thread is joined before
    // the region drops), and `w < WORDS` keeps the word inside it; the word
    // is 8-aligned and only ever accessed atomically.
    let got = unsafe { (*p).load(Ordering::Relaxed) };
    if got != word_value(w) {
        let _ = BAD.compare_exchange(
            0,
            (w as u64) << 32 | (got & 0xffff_ffff) | 1 << 63,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid value (no flags, empty mask);
    // the handler is an `extern "C" fn(c_int)` that touches only atomics and
    // memory that stays mapped while signals are sent (see `on_signal`).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

#[test]
fn signal_handler_reading_managed_memory_inside_migrate() {
    const RUN: Duration = Duration::from_secs(2);
    const WATCHDOG: Duration = Duration::from_secs(20);
    let svm = Svm::with_emulated(16 << 20).unwrap();
    let mut region = svm.alloc(PAGES * PAGE_SIZE).unwrap();
    for (w, v) in region.as_mut_slice::<u64>().iter_mut().enumerate() {
        *v = word_value(w);
    }
    BASE.store(region.addr().as_u64() as usize, Ordering::Relaxed);
    install_handler();

    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let tid = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let until = Instant::now() + WATCHDOG;
            while !done.load(Ordering::Acquire) {
                if Instant::now() > until {
                    let _ = writeln!(
                        std::io::stderr(),
                        "signal_in_migrate: not done after {WATCHDOG:?}: deadlock (migrate \
                         rounds {}, signals sent {}, handled {})",
                        rounds.load(Ordering::Relaxed),
                        sent.load(Ordering::Relaxed),
                        HANDLED.load(Ordering::Relaxed)
                    );
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let migrator = s.spawn(|| {
            // SAFETY: pthread_self has no preconditions.
            tid.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
            while !stop.load(Ordering::Relaxed) {
                let to = svm
                    .migrate(region.addr(), region.len(), Location::Device(DeviceId(0)))
                    .unwrap();
                let back = svm
                    .migrate(region.addr(), region.len(), Location::System)
                    .unwrap();
                assert_eq!(to.rolled_back + back.rolled_back, 0);
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        });
        while tid.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        let t = tid.load(Ordering::Acquire) as libc::pthread_t;
        let mut w = 0usize;
        let until = Instant::now() + RUN;
        while Instant::now() < until {
            w = (w * 31 + 17) % WORDS;
            WORD.store(w, Ordering::Relaxed);
            // SAFETY: `t` names the migrator thread, which runs until `stop`
            // is set below and is joined after; SIGUSR1 has our handler.
            assert_eq!(unsafe { libc::pthread_kill(t, libc::SIGUSR1) }, 0);
            sent.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
        migrator.join().unwrap();
        done.store(true, Ordering::Release);
    });
    let bad = BAD.load(Ordering::Relaxed);
    assert_eq!(
        bad,
        0,
        "the handler read {:#x} (low 32 bits) in word {}",
        bad & 0xffff_ffff,
        (bad >> 32) & 0x7fff_ffff
    );
    let (handled, rounds) = (
        HANDLED.load(Ordering::Relaxed),
        rounds.load(Ordering::Relaxed),
    );
    assert!(
        handled > 0 && rounds > 0,
        "handled {handled}, rounds {rounds}"
    );
    for (w, v) in region.as_slice::<u64>().iter().enumerate() {
        assert_eq!(*v, word_value(w), "word {w} at the end");
    }
    eprintln!(
        "signal_in_migrate: {rounds} migrate round trips, {} signals sent, {handled} handled",
        sent.load(Ordering::Relaxed)
    );
}
