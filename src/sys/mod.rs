//! The syscall layer: every `mmap`, `madvise`, `ioctl` and raw memory copy in
//! svmem lives here, behind owning types and safe, bounds-checked wrappers.
//! Nothing outside this module calls the kernel directly.

mod copy;
mod eventfd;
pub mod fork;
pub mod futex;
mod guarded;
mod mapping;
pub mod meminfo;
mod pagemap;
mod signals;
pub mod uffd;
pub mod vma;

pub use copy::stream_copy;
pub use eventfd::EventFd;
pub use mapping::{Advice, Mapping, Prot};
pub use pagemap::{huge_mapped, populated_pages, zero_pages};
pub use signals::AsyncSignalsBlocked;
pub use uffd::{Uffd, UffdMsg};

/// The size of a base page on every platform svmem supports (x86-64, aarch64 with 4K pages).
pub const PAGE_SIZE: usize = 4096;

/// The errno of the last failed libc call.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
