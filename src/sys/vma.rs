//! What the kernel knows about one mapping (VMA) of this process: its bounds,
//! protection and backing, asked with `PROCMAP_QUERY` (an ioctl on
//! `/proc/self/maps`, Linux 6.11+; one call, no text to parse), or, on an
//! older kernel, by reading `/proc/self/maps`.
//!
//! svmem asks when it cannot know otherwise: the program may `mprotect`,
//! `mlock` or replace memory svmem manages without any userfaultfd event,
//! and a device access, a `UFFDIO_MOVE` and `Svm::register` must all honour
//! what is there now.

use std::fs::File;
use std::io::{self, BufRead};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// One mapping, as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `MAP_SHARED` (or shared file) memory.
    pub shared: bool,
    /// Backed by a file (or a special mapping with an inode, like shmem).
    pub file: bool,
}

#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 =
    (3 << 30) | ((std::mem::size_of::<ProcmapQuery>() as u64) << 16) | ((b'f' as u64) << 8) | 17;
const Q_READABLE: u64 = 0x01;
const Q_WRITABLE: u64 = 0x02;
const Q_EXECUTABLE: u64 = 0x04;
const Q_SHARED: u64 = 0x08;

/// `/proc/self/maps` opened by this process (a forked child must open its
/// own: the file names the process that opened it).
static MAPS: Mutex<Option<(u32, File)>> = Mutex::new(None);

/// The mapping that contains `addr`, or `None` if no mapping does.
pub fn query(addr: u64) -> io::Result<Option<Vma>> {
    let mut maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if maps.as_ref().is_none_or(|(p, _)| *p != pid) {
        *maps = Some((pid, File::open("/proc/self/maps")?));
    }
    let (_, f) = maps.as_ref().expect("opened above");
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_addr: addr,
        ..Default::default()
    };
    // SAFETY: `q` is a properly sized, initialised `struct procmap_query`
    // whose name and build-id buffers are null with size 0 (the kernel writes
    // neither); the kernel reads and writes only that struct.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            PROCMAP_QUERY as _,
            &mut q as *mut ProcmapQuery,
        )
    };
    if r == 0 {
        return Ok(Some(Vma {
            start: q.vma_start,
            end: q.vma_end,
            read: q.vma_flags & Q_READABLE != 0,
            write: q.vma_flags & Q_WRITABLE != 0,
            exec: q.vma_flags & Q_EXECUTABLE != 0,
            shared: q.vma_flags & Q_SHARED != 0,
            file: q.inode != 0,
        }));
    }
    match super::errno() {
        libc::ENOENT => Ok(None),
        libc::ENOTTY | libc::EINVAL => query_text(addr),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// [`query`] by reading `/proc/self/maps` (kernels before 6.11).
fn query_text(addr: u64) -> io::Result<Option<Vma>> {
    let f = io::BufReader::new(File::open("/proc/self/maps")?);
    for line in f.lines() {
        let line = line?;
        if let Some(v) = parse_line(&line).filter(|v| v.start <= addr && addr < v.end) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// One line of `/proc/self/maps`: `start-end perms offset dev inode [name]`.
fn parse_line(line: &str) -> Option<Vma> {
    let mut it = line.split_whitespace();
    let (s, e) = it.next()?.split_once('-')?;
    let perms = it.next()?.as_bytes();
    let _offset = it.next()?;
    let _dev = it.next()?;
    let inode: u64 = it.next()?.parse().ok()?;
    Some(Vma {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        shared: perms.get(3) == Some(&b's'),
        file: inode != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Mapping, Prot};

    #[test]
    fn query_sees_protection_changes_and_holes() {
        let m = Mapping::anonymous(4 * 4096, Prot::ReadWrite, false).expect("map");
        let v = query(m.addr()).expect("query").expect("mapped");
        assert!(v.read && v.write && !v.shared && !v.file, "{v:?}");
        assert!(v.start <= m.addr() && v.end >= m.addr() + 4 * 4096);
        m.protect_range(4096, 4096, libc::PROT_READ)
            .expect("mprotect");
        let v = query(m.addr() + 4096).expect("query").expect("mapped");
        assert_eq!(
            (v.start, v.end, v.read, v.write),
            (m.addr() + 4096, m.addr() + 8192, true, false)
        );
        assert_eq!(
            query_text(m.addr() + 4096).expect("text").expect("mapped"),
            v
        );
        assert!(query(8).expect("query").is_none(), "page 0 is never mapped");
    }

    #[test]
    fn parses_maps_lines() {
        let v = parse_line("7f00-7f10 r-xs 00000000 08:01 1234   /usr/lib/x.so").expect("parse");
        assert_eq!((v.start, v.end), (0x7f00, 0x7f10));
        assert!(v.read && !v.write && v.exec && v.shared && v.file);
        assert!(parse_line("garbage").is_none());
    }
}
