//! Adopting the program's own memory (`Svm::register`): managed in place
//! with its contents, migrated like any managed memory, and given back by
//! `Region::unregister` (or drop) as an ordinary mapping with every byte.
#![allow(clippy::unwrap_used)]

mod common;
use common::{in_child, pattern};

use svmem::{DeviceId, Error, Location, Svm, VirtAddr, PAGE_SIZE};

const D0: DeviceId = DeviceId(0);

/// An anonymous private mapping of the test's own (unmapped on drop).
struct Own {
    at: *mut u8,
    len: usize,
}

impl Own {
    fn map(len: usize, flags: i32, fd: i32) -> Own {
        // SAFETY: a fresh mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Own { at: p.cast(), len }
    }
    fn anonymous(len: usize) -> Own {
        Own::map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }
    fn addr(&self) -> VirtAddr {
        VirtAddr(self.at as u64)
    }
    /// Writes the pattern over the first `n` bytes through the raw pointer.
    fn fill(&self, n: usize, seed: u8) {
        for i in 0..n {
            // SAFETY: inside our mapping; no reference into it exists.
            unsafe { self.at.add(i).write(pattern(i, seed)) };
        }
    }
    /// Byte `i`, read through the raw pointer.
    fn byte(&self, i: usize) -> u8 {
        // SAFETY: inside our mapping; the read may fault into svmem, which
        // resolves it.
        unsafe { self.at.add(i).read_volatile() }
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no reference into it remains.
        unsafe { libc::munmap(self.at.cast(), self.len) };
    }
}

fn svm() -> Svm {
    common::svm(64 << 20)
}

#[test]
fn registered_memory_keeps_its_data_migrates_and_comes_back_on_unregister() {
    in_child(
        "registered_memory_keeps_its_data_migrates_and_comes_back_on_unregister",
        || {
            let svm = svm();
            let len = 4 << 20;
            let own = Own::anonymous(len);
            let written = 3 << 20;
            own.fill(written, 5);
            // SAFETY: the mapping is ours; while the region lives we reach it
            // only through the region and raw pointers.
            let r = unsafe { svm.register(own.at, len) }.unwrap();
            assert_eq!(r.addr(), own.addr());
            assert_eq!(svm.location(own.addr()), Some(Location::System));
            let rep = svm
                .migrate(r.addr(), len as u64, Location::Device(D0))
                .unwrap();
            assert_eq!(rep.migrated, (len / PAGE_SIZE) as u64, "{rep:?}");
            assert_eq!(svm.location(own.addr()), Some(Location::Device(D0)));
            let dev = svm.device(D0).unwrap();
            let mut buf = vec![0u8; len];
            dev.read(r.addr(), &mut buf).unwrap();
            for (i, b) in buf.iter().enumerate() {
                let want = if i < written { pattern(i, 5) } else { 0 };
                assert_eq!(*b, want, "device byte {i}");
            }
            // The CPU faults a page back through the program's own pointer.
            assert_eq!(own.byte(PAGE_SIZE + 3), pattern(PAGE_SIZE + 3, 5));
            dev.write(r.at(8), &[0xee; 4]).unwrap();
            r.unregister().unwrap();
            // Ordinary memory again: every byte there, the device's write too.
            for i in 0..len {
                let want = match i {
                    8..12 => 0xee,
                    i if i < written => pattern(i, 5),
                    _ => 0,
                };
                assert_eq!(own.byte(i), want, "byte {i}");
            }
            assert_eq!(svm.location(own.addr()), None, "no longer managed");
            own.fill(len, 9);
            assert_eq!(own.byte(len - 1), pattern(len - 1, 9));
        },
    );
}

#[test]
fn dropping_a_registered_region_gives_the_memory_back() {
    in_child("dropping_a_registered_region_gives_the_memory_back", || {
        let svm = svm();
        let layout = std::alloc::Layout::from_size_align(1 << 20, PAGE_SIZE).unwrap();
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null());
        for i in 0..layout.size() {
            // SAFETY: inside the allocation.
            unsafe { p.add(i).write(pattern(i, 1)) };
        }
        {
            // SAFETY: the allocation is ours and reached only through `p`.
            let r = unsafe { svm.register(p, layout.size()) }.unwrap();
            svm.migrate(r.addr(), r.len(), Location::Device(D0))
                .unwrap();
        }
        for i in 0..layout.size() {
            // SAFETY: inside the allocation, ordinary memory again.
            assert_eq!(unsafe { p.add(i).read() }, pattern(i, 1), "byte {i}");
        }
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(p, layout) };
    });
}

#[test]
fn register_refuses_what_it_cannot_manage_with_typed_errors() {
    in_child(
        "register_refuses_what_it_cannot_manage_with_typed_errors",
        || {
            let svm = svm();
            let own = Own::anonymous(8 * PAGE_SIZE);
            // SAFETY: every range below is the test's own, and a refused
            // registration changes nothing.
            unsafe {
                let e = svm.register(own.at.add(8), PAGE_SIZE).unwrap_err();
                assert!(
                    matches!(
                        e,
                        Error::Unaligned {
                            what: "address",
                            ..
                        }
                    ),
                    "{e}"
                );
                let e = svm.register(own.at, 100).unwrap_err();
                assert!(matches!(e, Error::Unaligned { what: "length", .. }), "{e}");
                let e = svm.register(own.at, 0).unwrap_err();
                assert!(matches!(e, Error::ZeroLength { .. }), "{e}");
                // Past the end of the mapping: not all of it is mapped.
                let e = svm.register(own.at, 1 << 30).unwrap_err();
                assert!(matches!(e, Error::CannotRegister { .. }), "{e}");
                let e = svm
                    .register((usize::MAX & !4095) as *mut u8, 1 << 20)
                    .unwrap_err();
                assert!(matches!(e, Error::RangeOverflow { .. }), "{e}");
                // Shared anonymous memory.
                let shared = Own::map(PAGE_SIZE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
                let e = svm.register(shared.at, PAGE_SIZE).unwrap_err();
                assert!(
                    matches!(&e, Error::CannotRegister { reason, .. } if reason.contains("shared")),
                    "{e}"
                );
                // A file.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(std::env::temp_dir().join("svmem-register-test"))
                    .unwrap();
                f.set_len(PAGE_SIZE as u64).unwrap();
                let file = Own::map(
                    PAGE_SIZE,
                    libc::MAP_PRIVATE,
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                );
                let e = svm.register(file.at, PAGE_SIZE).unwrap_err();
                assert!(
                    matches!(&e, Error::CannotRegister { reason, .. } if reason.contains("file")),
                    "{e}"
                );
                // Managed already: twice, and inside an allocation.
                let r = svm.register(own.at, 4 * PAGE_SIZE).unwrap();
                let e = svm
                    .register(own.at.add(2 * PAGE_SIZE), 4 * PAGE_SIZE)
                    .unwrap_err();
                assert!(matches!(e, Error::AlreadyManaged { .. }), "{e}");
                let a = svm.alloc(4 * PAGE_SIZE).unwrap();
                let e = svm.register(a.addr().0 as *mut u8, PAGE_SIZE).unwrap_err();
                assert!(matches!(e, Error::AlreadyManaged { .. }), "{e}");
                drop(r);
                // Free again: it can be registered anew.
                svm.register(own.at, 8 * PAGE_SIZE)
                    .unwrap()
                    .unregister()
                    .unwrap();
            }
        },
    );
}

#[test]
fn a_forked_child_sees_registered_pages_that_were_on_the_device() {
    in_child(
        "a_forked_child_sees_registered_pages_that_were_on_the_device",
        || {
            let svm = svm();
            let own = Own::anonymous(1 << 20);
            own.fill(1 << 20, 4);
            // SAFETY: ours, reached through raw pointers only.
            let r = unsafe { svm.register(own.at, 1 << 20) }.unwrap();
            svm.migrate(r.addr(), r.len(), Location::Device(D0))
                .unwrap();
            // SAFETY: the child only reads memory and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let ok = (0..1 << 20).all(|i| own.byte(i) == pattern(i, 4));
                // SAFETY: leave the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child status {status}"
            );
            r.unregister().unwrap();
            assert!((0..1 << 20).all(|i| own.byte(i) == pattern(i, 4)));
        },
    );
}

/// `SVMEM_REGISTER_GIB=1 cargo test --release --test register -- --nocapture
/// register_a_large_range`: how long registering (and unregistering) a
/// populated range takes.
#[test]
fn register_a_large_range() {
    let gib: usize = std::env::var("SVMEM_REGISTER_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let len = if gib == 0 { 64 << 20 } else { gib << 30 };
    let svm = Svm::with_emulated(64 << 20).unwrap();
    let own = Own::anonymous(len);
    // SAFETY: our mapping; touch every page.
    unsafe { libc::madvise(own.at.cast(), len, libc::MADV_POPULATE_WRITE) };
    let t = std::time::Instant::now();
    // SAFETY: ours, reached through raw pointers only.
    let r = unsafe { svm.register(own.at, len) }.unwrap();
    let reg = t.elapsed();
    let t = std::time::Instant::now();
    r.unregister().unwrap();
    println!(
        "register {len} bytes: {reg:?}; unregister: {:?}",
        t.elapsed()
    );
}
