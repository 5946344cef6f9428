//! [`Region`]: a managed allocation, freed when dropped.

use std::sync::Arc;

use super::svm::Svm;
use crate::addr::VirtAddr;
use crate::error::{Error, Result};
use crate::mm::space::RegionInner;
use crate::observe::events::UnmapTrigger;
use crate::sys::{AsyncSignalsBlocked, Prot};

/// Managed memory: the same pointers are valid on the CPU and on every device
/// of its `Svm`. Freed (with its device and staging pages) on drop.
///
/// CPU views borrow the region; a device access to the same bytes while a
/// `&mut` view is alive is a data race, exactly as with CUDA managed memory.
/// Use [`Region::as_atomic_u64`] for memory CPU threads and devices share.
pub struct Region<'s> {
    pub(super) svm: &'s Svm,
    pub(super) inner: Arc<RegionInner>,
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
    pub fn addr(&self) -> VirtAddr {
        VirtAddr(self.inner.base())
    }
    /// Length in bytes (a multiple of 4 KiB).
    pub fn len(&self) -> u64 {
        self.inner.len()
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn npages(&self) -> usize {
        self.inner.npages
    }
    /// The address `offset` bytes into the region.
    pub fn at(&self, offset: u64) -> VirtAddr {
        self.addr().offset(offset)
    }

    /// A typed view for the CPU: as many whole `T`s as fit in the region
    /// (empty for zero-sized `T`).
    pub fn as_slice<T: bytemuck::Pod>(&self) -> &[T] {
        // SAFETY: the mapping lives as long as `self`; device writes while this
        // view is alive are the caller's data race to avoid (type docs).
        let bytes = unsafe { self.inner.managed.as_slice() };
        bytemuck::cast_slice(&bytes[..whole_elements::<T>(bytes.len())])
    }

    /// A typed mutable view for the CPU (whole `T`s, as [`Region::as_slice`]).
    pub fn as_mut_slice<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        // SAFETY: `&mut self` makes this the only CPU view of the region's bytes.
        let bytes = unsafe { self.inner.managed.as_mut_slice() };
        let n = whole_elements::<T>(bytes.len());
        bytemuck::cast_slice_mut(&mut bytes[..n])
    }

    /// The region as 64-bit atomics, for memory shared by CPU threads and devices.
    pub fn as_atomic_u64(&self) -> &[std::sync::atomic::AtomicU64] {
        let words: &[u64] = self.as_slice();
        // SAFETY: AtomicU64 has the size and alignment of u64 (8-aligned on every
        // 64-bit target: the mapping is page-aligned); every access through the
        // returned slice is atomic.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len()) }
    }

    /// Sets this region's fault granularity (log2 pages, 0..=9).
    pub fn set_granularity(&self, g: u8) -> Result<()> {
        self.svm.set_granularity(self.addr(), self.len(), g)
    }

    /// Makes the region read-only (or writable again) for the CPU and every
    /// device. Device writes to a read-only region fail; its pages do not
    /// migrate (reported not migratable).
    pub fn protect(&self, prot: Prot) -> Result<()> {
        let _signals = AsyncSignalsBlocked::new();
        let r = &self.inner;
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

impl Drop for Region<'_> {
    fn drop(&mut self) {
        self.svm.free_region(&self.inner);
    }
}
