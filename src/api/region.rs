//! [`Region`]: a managed allocation, freed when dropped.

use std::sync::Arc;

use super::svm::Svm;
use crate::addr::VirtAddr;
use crate::error::{Error, Result};
use crate::mm::space::{CpuBar, RegionInner};
use crate::observe::events::UnmapTrigger;
use crate::sys::{AsyncSignalsBlocked, Prot};

/// Managed memory: the same pointers are valid on the CPU and on every device
/// of its `Svm`. Freed (with its device and staging pages) on drop.
///
/// CPU views borrow the region and bar devices while they live: a shared
/// view ([`Region::as_slice`]) bars device writes, an exclusive one
/// ([`Region::as_mut_slice`]) every device access, so safe code never sees
/// bytes change under a Rust reference. For memory CPU threads and devices
/// use at the same time, use [`Region::as_atomic_u64`].
pub struct Region<'s> {
    pub(super) svm: &'s Svm,
    pub(super) inner: Arc<RegionInner>,
    /// Freed by [`Region::unregister`] already.
    pub(super) freed: bool,
}

impl std::fmt::Debug for Region<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("addr", &self.addr())
            .field("len", &self.len())
            .finish()
    }
}

impl Region<'_> {
    /// The region's pages' record now (it changes when the program moves
    /// the whole region with `mremap`: the handle follows).
    fn cur(&self) -> &RegionInner {
        // An mremap that returned is followed before the answer.
        self.svm.shared.events.wait();
        self.inner.current()
    }

    /// Where the region starts (2 MiB aligned for [`Svm::alloc`]). It changes
    /// if the program moves the whole region with `mremap`: the handle
    /// follows.
    pub fn addr(&self) -> VirtAddr {
        VirtAddr(self.cur().base())
    }
    /// Length in bytes (a multiple of 4 KiB).
    pub fn len(&self) -> u64 {
        self.cur().len()
    }
    /// Always false: a region holds at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Length in 4 KiB pages.
    pub fn npages(&self) -> usize {
        self.cur().npages
    }
    /// The address `offset` bytes into the region.
    pub fn at(&self, offset: u64) -> VirtAddr {
        self.addr().offset(offset)
    }

    /// A typed view for the CPU: as many whole `T`s as fit in the region
    /// (empty for zero-sized `T`). While the view lives, devices may read
    /// the region but not write it: a device write (`DeviceHandle::write`,
    /// a lane's store or atomic) fails with [`Error::HeldByCpuView`] or a
    /// fatal [`crate::FaultReason::CpuView`] fault, so the bytes behind the
    /// shared slice never change. Taking the first view of a region takes
    /// away its device translations (one walk of its blocks).
    pub fn as_slice<T: bytemuck::Pod>(&self) -> View<'_, T> {
        let inner = self.cur();
        // In a forked child the mapping is the child's own ordinary memory
        // and no device exists: no bar (its locks are the parent's copy).
        let owned = self.svm.check_owner().is_ok();
        if owned {
            let mut views = inner.views.lock();
            if *views == 0 {
                inner.raise_bar(CpuBar::Writes);
            }
            *views += 1;
        }
        // SAFETY: the mapping lives as long as `self`. No Rust reference to
        // these bytes is mutable while `&self` is borrowed (`as_mut_slice`
        // and `as_atomic_u64` take `&mut self`), and no device writes them
        // until the view drops: the bar is raised and every device
        // translation is gone (in-flight accesses drained) before we return;
        // CPU faults and migrations move pages without changing their bytes.
        let bytes = unsafe { inner.managed.as_slice() };
        View {
            slice: bytemuck::cast_slice(&bytes[..whole_elements::<T>(bytes.len())]),
            inner: owned.then_some(inner),
        }
    }

    /// A typed mutable view for the CPU (whole `T`s, as [`Region::as_slice`]).
    /// While it lives, devices may not touch the region at all: device
    /// accesses fail as described at [`Region::as_slice`].
    pub fn as_mut_slice<T: bytemuck::Pod>(&mut self) -> ViewMut<'_, T> {
        let inner = self.cur();
        let owned = self.svm.check_owner().is_ok();
        if owned {
            inner.raise_bar(CpuBar::All);
        }
        // SAFETY: `&mut self` makes this the only CPU reference to the
        // region's bytes, and every device translation is gone with the bar
        // up (see `as_slice`), so nothing else reads or writes them until
        // the view drops.
        let bytes = unsafe { inner.managed.as_mut_slice() };
        let n = whole_elements::<T>(bytes.len());
        ViewMut {
            slice: bytemuck::cast_slice_mut(&mut bytes[..n]),
            inner: owned.then_some(inner),
        }
    }

    /// The region as 64-bit atomics, for memory CPU threads and devices
    /// share while they run: every svmem access to managed memory is atomic
    /// (device copies included), so concurrent use is never a data race.
    /// Takes `&mut self` so that no plain view of the region lives meanwhile;
    /// the returned slice may be shared among threads.
    pub fn as_atomic_u64(&mut self) -> &[std::sync::atomic::AtomicU64] {
        let words = self.cur().npages * (crate::addr::PAGE_SIZE / 8);
        self.cur()
            .managed
            .atomic_words(0, words)
            .unwrap_or_default()
    }

    /// Sets this region's fault granularity (log2 pages, 0..=9): how much a
    /// fault migrates at once, from one 4 KiB page (0) to a 2 MiB block (9).
    /// Errors: [`Error::Granularity`] above 9.
    pub fn set_granularity(&self, g: u8) -> Result<()> {
        self.svm.check_owner()?;
        self.svm.set_granularity(self.addr(), self.len(), g)
    }

    /// Makes the region read-only (or writable again) for the CPU and every
    /// device. Device writes to a read-only region fail; its pages do not
    /// migrate (reported not migratable). Every device translation of the
    /// region is dropped first. Errors: [`Error::Os`] if `mprotect` fails.
    pub fn protect(&self, prot: Prot) -> Result<()> {
        self.svm.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        let r = self.cur();
        r.invalidate_range(0..r.npages, UnmapTrigger::MmuNotify, |_, _| {});
        r.managed
            .protect(prot)
            .map_err(|e| Error::os("mprotect", e))?;
        r.writable.store(
            prot == Prot::ReadWrite,
            std::sync::atomic::Ordering::Release,
        );
        Ok(())
    }
}

/// Bytes of `len` that hold whole `T`s; 0 for zero-sized `T` (bytemuck
/// refuses to cast bytes to those), so typed views never panic.
fn whole_elements<T>(len: usize) -> usize {
    match std::mem::size_of::<T>() {
        0 => 0,
        n => len - len % n,
    }
}

impl Region<'_> {
    /// Ends the management of memory adopted with [`Svm::register`]: every
    /// page comes back to system memory with its data, and the range stays
    /// mapped as ordinary memory. (Dropping the region does the same; this
    /// says whether every page made it.) For a region from [`Svm::alloc`] it
    /// frees the region, like drop.
    ///
    /// Errors: [`Error::Poisoned`] naming the first page whose data was lost
    /// in a device failure (it raises `SIGBUS` when touched, as before).
    pub fn unregister(mut self) -> Result<()> {
        self.svm.check_owner()?;
        let rep = self.free();
        match rep.poisoned {
            0 => Ok(()),
            _ => Err(Error::Poisoned {
                addr: (0..self.cur().npages)
                    .find(|&k| self.cur().states[k].load() == crate::mm::state::PageState::Poisoned)
                    .map_or(self.addr(), |k| self.cur().addr_of(k)),
            }),
        }
    }

    /// Frees the region once (drop after `unregister` does nothing).
    fn free(&mut self) -> crate::mm::migrate::MigrateReport {
        if self.freed {
            return Default::default();
        }
        self.freed = true;
        self.svm.shared.events.wait();
        self.svm.free_region(self.inner.current())
    }
}

impl Drop for Region<'_> {
    fn drop(&mut self) {
        if self.svm.check_owner().is_err() {
            // A forked child: the region is the parent's; the child's copy
            // of its mapping stays as ordinary memory until the child exits
            // (no ioctl on the inherited uffd: it acts on the parent).
            return;
        }
        self.free();
    }
}

/// A shared CPU view of a region (see [`Region::as_slice`]); devices may
/// not write the region while it lives. Dereferences to `&[T]`.
pub struct View<'r, T> {
    slice: &'r [T],
    /// `None` in a forked child (no bar was raised).
    inner: Option<&'r RegionInner>,
}

impl<T> std::ops::Deref for View<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

impl<T> Drop for View<'_, T> {
    fn drop(&mut self) {
        let Some(inner) = self.inner else { return };
        let mut views = inner.views.lock();
        *views -= 1;
        if *views == 0 {
            inner.lift_bar();
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for View<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.slice.fmt(f)
    }
}

/// An exclusive CPU view of a region (see [`Region::as_mut_slice`]); no
/// device touches the region while it lives. Dereferences to `&mut [T]`.
pub struct ViewMut<'r, T> {
    slice: &'r mut [T],
    /// `None` in a forked child (no bar was raised).
    inner: Option<&'r RegionInner>,
}

impl<T> std::ops::Deref for ViewMut<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

impl<T> std::ops::DerefMut for ViewMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.slice
    }
}

impl<T> Drop for ViewMut<'_, T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner {
            inner.lift_bar();
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ViewMut<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.slice.fmt(f)
    }
}
