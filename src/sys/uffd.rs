//! A small userfaultfd layer over libc: open (`/dev/userfaultfd` first, then the
//! syscall), API handshake with a feature probe, and the ioctls svmem uses.
//! Facts from `include/uapi/linux/userfaultfd.h`; the encoding is ours.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// The kernel's uapi structs and constants (`include/uapi/linux/userfaultfd.h`),
// as `linux-raw-sys` carries them for this architecture.
use linux_raw_sys::general as uapi;
use linux_raw_sys::ioctl as uapi_ioctl;

const UFFD_API: u64 = uapi::UFFD_API as u64;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// `_IOC(dir, 0xAA, nr, size)` (the generic encoding), for the requests
/// `linux-raw-sys` 0.12 does not carry yet (MOVE, POISON); the ABI test
/// below pins them.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((uapi::UFFDIO as u64) << 8) | nr
}

const UFFDIO_API: u64 = uapi_ioctl::UFFDIO_API as u64;
const UFFDIO_REGISTER: u64 = uapi_ioctl::UFFDIO_REGISTER as u64;
const UFFDIO_UNREGISTER: u64 = uapi_ioctl::UFFDIO_UNREGISTER as u64;
const UFFDIO_WAKE: u64 = uapi_ioctl::UFFDIO_WAKE as u64;
const UFFDIO_COPY: u64 = uapi_ioctl::UFFDIO_COPY as u64;
const UFFDIO_ZEROPAGE: u64 = uapi_ioctl::UFFDIO_ZEROPAGE as u64;
const UFFDIO_WRITEPROTECT: u64 = uapi_ioctl::UFFDIO_WRITEPROTECT as u64;
const UFFDIO_MOVE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    uapi::_UFFDIO_MOVE as u64,
    std::mem::size_of::<uapi::uffdio_move>(),
);
const UFFDIO_POISON: u64 = ioc(
    IOC_READ | IOC_WRITE,
    uapi::_UFFDIO_POISON as u64,
    std::mem::size_of::<uapi::uffdio_poison>(),
);
/// `_IO(0xAA, 0x00)` on `/dev/userfaultfd` (not in `linux-raw-sys` 0.12).
const USERFAULTFD_IOC_NEW: u64 = (uapi::USERFAULTFD_IOC as u64) << 8;

const REGISTER_MODE_MISSING: u64 = uapi::UFFDIO_REGISTER_MODE_MISSING as u64;
const REGISTER_MODE_WP: u64 = uapi::UFFDIO_REGISTER_MODE_WP as u64;
const MODE_DONTWAKE: u64 = uapi::UFFDIO_COPY_MODE_DONTWAKE as u64;
/// `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES` (not in `linux-raw-sys` 0.12).
const MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP` (not in `linux-raw-sys` 0.12).
const WP_MODE_WP: u64 = 1 << 0;

/// Features svmem needs, with the names the kernel headers give them.
pub const REQUIRED_FEATURES: &[(u64, &str)] = &[
    (
        uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64,
        "UFFD_FEATURE_PAGEFAULT_FLAG_WP",
    ),
    (
        uapi::UFFD_FEATURE_EVENT_REMAP as u64,
        "UFFD_FEATURE_EVENT_REMAP",
    ),
    (
        uapi::UFFD_FEATURE_EVENT_REMOVE as u64,
        "UFFD_FEATURE_EVENT_REMOVE",
    ),
    (
        uapi::UFFD_FEATURE_EVENT_UNMAP as u64,
        "UFFD_FEATURE_EVENT_UNMAP",
    ),
    (
        uapi::UFFD_FEATURE_THREAD_ID as u64,
        "UFFD_FEATURE_THREAD_ID",
    ),
    (
        uapi::UFFD_FEATURE_POISON as u64,
        "UFFD_FEATURE_POISON (Linux 6.6+)",
    ),
    (
        uapi::UFFD_FEATURE_MOVE as u64,
        "UFFD_FEATURE_MOVE (Linux 6.8+)",
    ),
];

pub const EVENT_PAGEFAULT: u8 = uapi::UFFD_EVENT_PAGEFAULT as u8;
pub const EVENT_REMAP: u8 = uapi::UFFD_EVENT_REMAP as u8;
pub const EVENT_REMOVE: u8 = uapi::UFFD_EVENT_REMOVE as u8;
pub const EVENT_UNMAP: u8 = uapi::UFFD_EVENT_UNMAP as u8;
pub const PAGEFAULT_FLAG_WRITE: u64 = uapi::UFFD_PAGEFAULT_FLAG_WRITE as u64;
#[allow(dead_code)] // write-protect: the uffd layer is complete; tested below, used by no path yet
pub const PAGEFAULT_FLAG_WP: u64 = uapi::UFFD_PAGEFAULT_FLAG_WP as u64;

/// `struct uffdio_range` for `[start, start + len)`.
fn range(start: u64, len: u64) -> uapi::uffdio_range {
    uapi::uffdio_range { start, len }
}

/// One message read from the userfaultfd (`struct uffd_msg`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct UffdMsg {
    pub event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    /// pagefault: flags; remove/unmap: start; remap: from.
    pub arg0: u64,
    /// pagefault: address; remove/unmap: end; remap: to.
    pub arg1: u64,
    /// pagefault: thread id (low 32 bits); remap: len.
    pub arg2: u64,
}

/// Why opening a userfaultfd failed.
#[derive(Debug)]
pub enum OpenError {
    /// Neither `/dev/userfaultfd` nor the syscall was permitted.
    Permission(io::Error),
    /// The kernel lacks a feature svmem needs.
    MissingFeature(&'static str, u64),
    Other(&'static str, io::Error),
}

/// An ioctl that stopped part-way: `done` bytes were handled before `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub done: u64,
    pub errno: i32,
}

/// Why a ranged uffd ioctl stopped, by what the protocol does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `EAGAIN`: a non-cooperative event (REMOVE, UNMAP) is not read yet;
    /// retry once the reader has read it.
    WouldBlock,
    /// `EEXIST`: the destination page is present already.
    Exists,
    /// `ENOENT`: the source page is absent (a hole, for `UFFDIO_MOVE`).
    Hole,
    /// `EBUSY`: the page cannot move now (pinned, shared with a child,
    /// under writeback, or split across mappings).
    Busy,
    /// `EINVAL` / `ENOENT` on the range itself: not registered, or not
    /// one mapping.
    Invalid,
    /// Anything else, with its errno.
    Other(i32),
}

impl Partial {
    /// The errno as a [`Stop`].
    pub fn stop(&self) -> Stop {
        match self.errno {
            libc::EAGAIN => Stop::WouldBlock,
            libc::EEXIST => Stop::Exists,
            libc::ENOENT => Stop::Hole,
            libc::EBUSY => Stop::Busy,
            libc::EINVAL => Stop::Invalid,
            e => Stop::Other(e),
        }
    }

    #[allow(dead_code)] // for callers that pass the failure on as io::Error
    pub fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// An owned userfaultfd in full mode (kernel-mode faults are reported too),
/// non-blocking, after a successful API handshake.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    #[allow(dead_code)] // read by `features`
    features: u64,
}

fn open_raw() -> Result<OwnedFd, OpenError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let dev = c"/dev/userfaultfd";
    // SAFETY: `dev` is a NUL-terminated path; the result is checked.
    let devfd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    let mut dev_err = None;
    if devfd >= 0 {
        // SAFETY: devfd is a fresh fd we own; wrapping it closes it on return.
        let dev_owned = unsafe { OwnedFd::from_raw_fd(devfd) };
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value, no pointers.
        let fd = unsafe { libc::ioctl(dev_owned.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
        if fd >= 0 {
            // SAFETY: the ioctl returned a new fd that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        dev_err = Some(io::Error::last_os_error());
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            dev_err = Some(e);
        }
    }
    // SAFETY: the userfaultfd syscall takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        // SAFETY: the syscall returned a new fd that nobody else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Err(OpenError::Permission(dev_err.unwrap_or(e))),
        _ => Err(OpenError::Other("userfaultfd()", e)),
    }
}

fn api(fd: &OwnedFd, features: u64) -> Result<u64, OpenError> {
    let mut arg = uapi::uffdio_api {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `arg` is a live, correctly laid-out uffdio_api for the kernel to fill.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            UFFDIO_API as _,
            &mut arg as *mut uapi::uffdio_api,
        )
    };
    if r != 0 {
        return Err(OpenError::Other("UFFDIO_API", io::Error::last_os_error()));
    }
    Ok(arg.features)
}

impl Uffd {
    /// Opens a userfaultfd with every feature in `required`, after probing
    /// which the kernel offers ([`REQUIRED_FEATURES`] for the main one).
    pub fn open(required: &[(u64, &'static str)]) -> Result<Uffd, OpenError> {
        let probe = open_raw()?;
        let offered = api(&probe, 0)?;
        drop(probe);
        let mut want = 0;
        for &(bit, name) in required {
            if offered & bit == 0 {
                return Err(OpenError::MissingFeature(name, offered));
            }
            want |= bit;
        }
        let fd = open_raw()?;
        let features = api(&fd, want)?;
        Ok(Uffd { fd, features })
    }

    #[allow(dead_code)] // write-protect: the uffd layer is complete; tested below, used by no path yet
    pub fn features(&self) -> u64 {
        self.features
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: every caller passes the argument struct that `req` encodes
        // (the size is part of the request number); the kernel reads and writes
        // only within it.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Registers `[start, start+len)` for missing faults, and write-protect faults if `wp`.
    pub fn register(&self, start: u64, len: u64, wp: bool) -> io::Result<()> {
        let mode = REGISTER_MODE_MISSING | if wp { REGISTER_MODE_WP } else { 0 };
        let mut arg = uapi::uffdio_register {
            range: range(start, len),
            mode,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_REGISTER, &mut arg)
    }

    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        self.ioctl(UFFDIO_UNREGISTER, &mut range(start, len))
    }

    /// Wakes threads waiting on faults in the range.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        self.ioctl(UFFDIO_WAKE, &mut range(start, len))
    }

    fn partial(result: i64, len: u64) -> Result<u64, Partial> {
        let errno = crate::sys::errno();
        if result >= 0 && result as u64 == len {
            return Ok(len);
        }
        let done = if result > 0 { result as u64 } else { 0 };
        let errno = if result < 0 {
            (-result) as i32
        } else if errno != 0 {
            errno
        } else {
            libc::EAGAIN
        };
        Err(Partial { done, errno })
    }

    /// Atomically copies `len` bytes from `src` (any readable memory) into the
    /// missing pages at `dst`, waking waiters unless `dontwake`.
    pub fn copy(&self, dst: u64, src: u64, len: u64, dontwake: bool) -> Result<u64, Partial> {
        let mode = if dontwake { MODE_DONTWAKE } else { 0 };
        let mut arg = uapi::uffdio_copy {
            dst,
            src,
            len,
            mode,
            copy: 0,
        };
        match self.ioctl(UFFDIO_COPY, &mut arg) {
            Ok(()) => Ok(len),
            Err(_) => Self::partial(arg.copy, len),
        }
    }

    /// Maps the zero page over the missing pages in the range.
    pub fn zeropage(&self, start: u64, len: u64, dontwake: bool) -> Result<u64, Partial> {
        let mode = if dontwake { MODE_DONTWAKE } else { 0 };
        let mut arg = uapi::uffdio_zeropage {
            range: range(start, len),
            mode,
            zeropage: 0,
        };
        match self.ioctl(UFFDIO_ZEROPAGE, &mut arg) {
            Ok(()) => Ok(len),
            Err(_) => Self::partial(arg.zeropage, len),
        }
    }

    /// Moves the pages at `src` to the holes at `dst` by remapping them (no
    /// copy). Holes in the source are skipped when `allow_holes`.
    pub fn move_pages(
        &self,
        dst: u64,
        src: u64,
        len: u64,
        allow_holes: bool,
        dontwake: bool,
    ) -> Result<u64, Partial> {
        let mode = if dontwake { MODE_DONTWAKE } else { 0 }
            | if allow_holes {
                MOVE_MODE_ALLOW_SRC_HOLES
            } else {
                0
            };
        let mut arg = uapi::uffdio_move {
            dst,
            src,
            len,
            mode,
            move_: 0,
        };
        match self.ioctl(UFFDIO_MOVE, &mut arg) {
            Ok(()) => Ok(len),
            Err(_) => Self::partial(arg.move_, len),
        }
    }

    /// Sets or clears write protection on the range.
    pub fn writeprotect(&self, start: u64, len: u64, protect: bool) -> io::Result<()> {
        let mut arg = uapi::uffdio_writeprotect {
            range: range(start, len),
            mode: if protect { WP_MODE_WP } else { 0 },
        };
        self.ioctl(UFFDIO_WRITEPROTECT, &mut arg)
    }

    /// Installs poison markers: any access to these pages raises SIGBUS.
    pub fn poison(&self, start: u64, len: u64) -> Result<u64, Partial> {
        let mut arg = uapi::uffdio_poison {
            range: range(start, len),
            mode: 0,
            updated: 0,
        };
        match self.ioctl(UFFDIO_POISON, &mut arg) {
            Ok(()) => Ok(len),
            Err(_) => Self::partial(arg.updated, len),
        }
    }

    /// Reads pending messages without blocking; returns how many were read (0 when none).
    pub fn read_msgs(&self, buf: &mut [UffdMsg]) -> io::Result<usize> {
        let bytes = std::mem::size_of_val(buf);
        // SAFETY: `buf` is a live, writable array of `bytes` bytes of plain-old-data messages.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize / std::mem::size_of::<UffdMsg>())
    }

    /// Waits until the uffd or one of `others` is readable, or `timeout_ms`
    /// passes. Returns (uffd readable, each of `others` readable).
    pub fn poll_with<const N: usize>(
        &self,
        others: [BorrowedFd<'_>; N],
        timeout_ms: i32,
    ) -> io::Result<(bool, [bool; N])> {
        let pfd = |fd: i32| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = vec![pfd(self.fd.as_raw_fd())];
        fds.extend(others.iter().map(|o| pfd(o.as_raw_fd())));
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok((false, [false; N]));
            }
            return Err(e);
        }
        Ok((
            fds[0].revents != 0,
            std::array::from_fn(|i| fds[i + 1].revents != 0),
        ))
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_abi() {
        // Values from the kernel's uapi header on x86-64.
        assert_eq!(UFFDIO_API, 0xc018aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010aa02);
        assert_eq!(UFFDIO_COPY, 0xc028aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020aa04);
        assert_eq!(UFFDIO_MOVE, 0xc028aa05);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018aa06);
        assert_eq!(UFFDIO_POISON, 0xc020aa08);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        assert_eq!(MOVE_MODE_ALLOW_SRC_HOLES, 2);
        assert_eq!(WP_MODE_WP, 1);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
        assert_eq!(
            std::mem::size_of::<UffdMsg>(),
            std::mem::size_of::<uapi::uffd_msg>()
        );
        assert_eq!(REQUIRED_FEATURES[5].0, 1 << 14);
        assert_eq!(REQUIRED_FEATURES[6].0, 1 << 16);
        assert_eq!(
            (EVENT_PAGEFAULT, EVENT_REMAP, EVENT_REMOVE, EVENT_UNMAP),
            (0x12, 0x14, 0x15, 0x16)
        );
    }

    /// ZEROPAGE, COPY, WRITEPROTECT and POISON against a real mapping. The
    /// poisoned page is read by the kernel (a `write(2)` to a pipe), which
    /// fails with EFAULT instead of raising SIGBUS in the test.
    #[test]
    fn fill_protect_and_poison_a_real_mapping() {
        use crate::sys::{Mapping, Prot, PAGE_SIZE};
        let uffd = Uffd::open(REQUIRED_FEATURES).expect("open userfaultfd");
        let m = Mapping::anonymous(3 * PAGE_SIZE, Prot::ReadWrite, false).expect("mmap");
        let page = PAGE_SIZE as u64;
        uffd.register(m.addr(), 3 * page, true).expect("register");
        let src = [7u8; PAGE_SIZE];
        assert_eq!(uffd.zeropage(m.addr(), page, false), Ok(page));
        assert_eq!(
            uffd.copy(m.addr() + page, src.as_ptr() as u64, page, false),
            Ok(page)
        );
        assert_eq!(
            uffd.copy(m.addr() + page, src.as_ptr() as u64, page, false)
                .map_err(|p| p.errno),
            Err(libc::EEXIST)
        );
        uffd.writeprotect(m.addr() + page, page, true)
            .expect("write-protect");
        uffd.writeprotect(m.addr() + page, page, false)
            .expect("un-protect");
        assert_eq!(uffd.poison(m.addr() + 2 * page, page), Ok(page));

        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a live array of two ints for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let kernel_read = |addr: u64| {
            // SAFETY: `addr` is inside the live mapping `m`; write(2) only reads
            // it, and reports a fault on a poisoned page as EFAULT.
            let n = unsafe { libc::write(fds[1], addr as *const libc::c_void, 16) };
            if n < 0 {
                Err(crate::sys::errno())
            } else {
                Ok(n)
            }
        };
        assert_eq!(kernel_read(m.addr() + page), Ok(16));
        assert_eq!(kernel_read(m.addr() + 2 * page), Err(libc::EFAULT));
        let mut buf = [0u8; 16];
        m.read_at(PAGE_SIZE, &mut buf).expect("read");
        assert_eq!(buf, [7u8; 16]);
        uffd.unregister(m.addr(), 3 * page).expect("unregister");
        for fd in fds {
            // SAFETY: closing the two fds pipe(2) gave us, once each.
            unsafe { libc::close(fd) };
        }
    }
}
