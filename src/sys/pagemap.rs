//! PAGEMAP_SCAN (Linux 6.7+): which pages of a range map the shared zero page,
//! and whether a page is mapped by a huge page.

use std::io;
use std::os::fd::AsRawFd;

const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_HUGE: u64 = 1 << 6;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<ScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// For each page of `[start, start + npages*4K)`, whether it maps the zero page.
pub fn zero_pages(start: u64, npages: usize) -> io::Result<Vec<bool>> {
    scan(start, npages, PAGE_IS_PFNZERO)
}

/// For each page of the range, whether it holds data: present or swapped
/// out (a page that is neither reads as zeros on its next touch).
pub fn populated_pages(start: u64, npages: usize) -> io::Result<Vec<bool>> {
    scan_any(start, npages, PAGE_IS_PRESENT | PAGE_IS_SWAPPED)
}

/// Whether the page at `addr` is present and mapped by a huge page (a
/// PMD-mapped transparent huge page).
pub fn huge_mapped(addr: u64) -> io::Result<bool> {
    Ok(scan(addr, 1, PAGE_IS_HUGE)?[0])
}

/// For each page of the range, whether it is present and in `category`.
fn scan(start: u64, npages: usize, category: u64) -> io::Result<Vec<bool>> {
    scan_with(start, npages, category | PAGE_IS_PRESENT, 0, category)
}

/// For each page of the range, whether it is in any of `categories`.
fn scan_any(start: u64, npages: usize, categories: u64) -> io::Result<Vec<bool>> {
    scan_with(start, npages, 0, categories, categories)
}

fn scan_with(start: u64, npages: usize, all: u64, any: u64, ret: u64) -> io::Result<Vec<bool>> {
    let f = std::fs::File::open("/proc/self/pagemap")?;
    let mut out = vec![false; npages];
    let end = start + (npages * super::PAGE_SIZE) as u64;
    let mut vec = vec![PageRegion::default(); 256];
    let mut cur = start;
    while cur < end {
        let mut arg = ScanArg {
            size: std::mem::size_of::<ScanArg>() as u64,
            start: cur,
            end,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            category_mask: all,
            category_anyof_mask: any,
            return_mask: ret,
            ..Default::default()
        };
        // SAFETY: `arg` is a live pm_scan_arg whose `vec` points at `vec.len()`
        // writable page_region entries; the kernel writes only those and `arg`.
        let n = unsafe { libc::ioctl(f.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut ScanArg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for r in &vec[..n as usize] {
            let a = ((r.start - start) / super::PAGE_SIZE as u64) as usize;
            let b = ((r.end - start) / super::PAGE_SIZE as u64) as usize;
            out[a..b.min(npages)].iter_mut().for_each(|z| *z = true);
        }
        if arg.walk_end <= cur {
            break;
        }
        cur = arg.walk_end;
    }
    Ok(out)
}
