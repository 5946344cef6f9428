//! # svmem — shared virtual memory for heterogeneous devices, in user space
//!
//! A program allocates *managed* memory from an [`Svm`]; the same pointers are
//! valid on the CPU and on every device. Pages migrate between system RAM and
//! device memory on explicit [`Svm::migrate`] calls and on CPU faults, and
//! devices reach them through their own page tables.
//!
//! How it works, in one paragraph: each managed region is an anonymous mapping
//! registered with userfaultfd. A page that lives on a device is simply absent
//! from the CPU mapping, so a CPU touch raises a real page fault, which the
//! `svmem-uffd` thread resolves by migrating the page's window back. Migration
//! takes pages out of the CPU view with `UFFDIO_MOVE` into a staging mirror
//! (zero copy), has a copy engine copy them through that window, and commits a
//! per-page atomic state word ([`PageState`]). Device accesses translate through
//! per-device page tables that every migration invalidates first.
//!
//! ```
//! use svmem::{Location, Svm, DeviceId};
//!
//! let svm = Svm::with_emulated(16 << 20)?;            // one 16 MiB emulated device
//! let mut region = svm.alloc(4 << 20)?;                // 4 MiB of managed memory
//! region.as_mut_slice::<u32>().iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
//!
//! let report = svm.migrate(region.addr(), region.len(), Location::Device(DeviceId(0)))?;
//! assert_eq!(report.migrated, 1024);
//!
//! // The device reads through its page table; the CPU reads through a real fault.
//! let mut word = [0u8; 4];
//! svm.device(DeviceId(0))?.read(region.at(40), &mut word)?;
//! assert_eq!(u32::from_ne_bytes(word), 10);
//! assert_eq!(region.as_slice::<u32>()[1000], 1000);
//! assert!(svm.stats().cpu_faults >= 1);
//! # Ok::<(), svmem::Error>(())
//! ```
//!
//! ## Where to start
//!
//! - [`Svm`], built by [`Svm::with_emulated`] or [`Svm::builder`]: the
//!   address space, its devices and limits.
//! - [`Region`] from [`Svm::alloc`] (or [`Svm::register`] for memory you
//!   already have): managed memory; [`Region::as_slice`] and
//!   [`Region::as_mut_slice`] are CPU views that keep devices off while they
//!   live, [`Region::as_atomic_u64`] is for memory CPU threads and kernels
//!   share.
//! - Placement: [`Svm::migrate`], [`Svm::prefetch`], [`Svm::set_attributes`]
//!   (AMD SVM range attributes), [`Svm::advise`] (`cudaMemAdvise`), a
//!   [`PlacementPolicy`] of your own with [`Svm::set_policy`].
//! - Devices: [`Svm::device`] gives a [`DeviceHandle`] for reads and writes
//!   through the device's page table and for kernels
//!   ([`DeviceHandle::launch`]; a [`Lane`] loads, stores and runs atomics).
//! - Memory pressure: [`Svm::memory_usage`], the memory limit, [`Svm::pin`];
//!   device failures: [`DeviceHandle::inject`], [`Svm::reset_device`].
//! - Watching: [`Svm::subscribe`] (an event stream), [`Svm::stats`].
//! - [`Error`]: each variant says when it happens and what to do.
//!
//! Units: addresses are host virtual addresses ([`VirtAddr`]); lengths are
//! bytes; range operations take 4 KiB-aligned ranges ([`PAGE_SIZE`]) inside
//! one region; migration blocks are 2 MiB ([`BLOCK_SIZE`]); granularity is
//! log2 of pages (0 = 4 KiB … 9 = 2 MiB).

#![deny(missing_docs)]

// The README's Rust examples run as doctests (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// Layers, bottom up; a module imports only from layers below it (the test
// `tests/layers.rs` keeps it so). ARCHITECTURE.md says what each one owns.
pub mod addr;
mod api;
mod cpu;
pub mod device;
pub mod error;
mod gpu;
mod mm;
pub mod observe;
pub mod placement;
mod pressure;
mod sync;
mod sys;

pub use addr::{AccessKind, DevPage, DeviceId, Location, VirtAddr, BLOCK_SIZE, PAGE_SIZE};
pub use api::{
    huge_mapped, DeviceHandle, DeviceInfo, MemAdvice, Region, Svm, SvmBuilder, View, ViewMut,
};
pub use device::{CopyFailure, Device, EmulatedConfig, EmulatedDevice, Injection, MemoryType};
pub use device::{LaunchTiming, TimingProfile, TimingReport};
pub use error::{DeviceFault, Error, FaultReason, Result};
pub use gpu::{AccessReport, BatchStats, Group, Lane, LaunchReport, PageView, Prefetch, MAX_BATCH};
pub use gpu::{MAX_GROUP_SIZE, MAX_LOCAL_WORDS};
pub use mm::{MigrateReport, PageState};
pub use observe::{Event, EventKind, EventStream, Stats};
pub use placement::{AccessMode, Attr, AttrFlags, AttrQuery, Common};
pub use placement::{Decision, KfdPolicy, PlacementPolicy};
pub use pressure::{default_memory_limit, DeviceUsage, Eviction, MemoryUsage, ResetReport};
pub use sys::Prot;
