//! Address and page newtypes: host virtual addresses, device ids, device pages,
//! and locations. No raw `u64` addresses cross the public API.

use std::fmt;

pub use crate::sys::PAGE_SIZE;

/// Pages in one 2 MiB migration block (the default granularity).
pub const BLOCK_PAGES: usize = 512;
/// Bytes in one 2 MiB migration block.
pub const BLOCK_SIZE: usize = BLOCK_PAGES * PAGE_SIZE;

/// A host virtual address (the same pointer value is valid on the CPU and, through
/// its MMU, on every device).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(pub u64);

impl VirtAddr {
    /// The address of a pointer.
    pub fn from_ptr<T>(p: *const T) -> VirtAddr {
        VirtAddr(p as u64)
    }
    /// The address as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
    /// Whether it is a multiple of [`PAGE_SIZE`] (4 KiB).
    pub fn is_page_aligned(self) -> bool {
        self.0 % PAGE_SIZE as u64 == 0
    }
    /// The start of the 4 KiB page holding it.
    pub fn align_down(self) -> VirtAddr {
        VirtAddr(self.0 & !(PAGE_SIZE as u64 - 1))
    }
    /// The address `bytes` further on. Overflowing the address space is a
    /// bug (it panics in debug builds).
    #[must_use]
    pub fn offset(self, bytes: u64) -> VirtAddr {
        VirtAddr(self.0 + bytes)
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
/// Serialized as a hex string (`"0x7f..."`), as addresses are read.
impl serde::Serialize for VirtAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A device of one `Svm`, numbered in the order the builder received them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize)]
pub struct DeviceId(pub u8);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev{}", self.0)
    }
}

/// A 4 KiB page of a device's local memory.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DevPage(pub u32);

/// Where a page's data lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, serde::Serialize)]
pub enum Location {
    /// System memory (the CPU's RAM): the page is present in the CPU mapping.
    System,
    /// The local memory of a device; the CPU mapping lacks the page, so a
    /// CPU touch faults it back.
    Device(DeviceId),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::System => write!(f, "system"),
            Location::Device(d) => write!(f, "{d}"),
        }
    }
}

/// What a faulting access wanted to do. Ordered by strength:
/// `Atomic > Write > Read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum AccessKind {
    /// A load.
    Read,
    /// A store.
    Write,
    /// A read-modify-write (needs write permission too).
    Atomic,
}

/// Most devices one `Svm` can hold.
pub const MAX_DEVICES: usize = 8;
/// Largest device page number the state word can hold.
pub const MAX_DEV_PAGES: u64 = 1 << 25;
