//! Atomics and the block locks used by the page protocol, imported through one
//! place so the loom model checker can replace them (`RUSTFLAGS="--cfg loom"`,
//! see `mm/loom_models.rs`).
//!
//! The locks have parking_lot's API (`lock()`, `try_lock()`, `read()`,
//! `write()` return guards, no poisoning): parking_lot's own types normally,
//! thin wrappers over loom's under `cfg(loom)`.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub use parking_lot::{Mutex, MutexGuard, RwLock};

#[cfg(loom)]
pub use self::loom_locks::{Mutex, MutexGuard, RwLock};

/// parking_lot-shaped wrappers over loom's locks (loom's `lock()` returns a
/// `LockResult`; a poisoned lock here means a model thread panicked, so the
/// wrappers unwrap and let that panic surface).
#[cfg(loom)]
mod loom_locks {
    pub use loom::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

    #[derive(Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        #[allow(dead_code)] // the models build their own
        pub fn new(t: T) -> Self {
            Mutex(loom::sync::Mutex::new(t))
        }
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().expect("model thread panicked")
        }
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
    }

    impl<T> std::fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Mutex { .. }")
        }
    }

    #[derive(Default)]
    pub struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().expect("model thread panicked")
        }
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().expect("model thread panicked")
        }
        pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
            self.0.try_write().ok()
        }
    }

    impl<T> std::fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("RwLock { .. }")
        }
    }
}
