//! Following the program's `mremap` of managed memory (`UFFD_EVENT_REMAP`).
//!
//! The kernel moves a mapping's page tables to the new address (present
//! pages move with them) and keeps the new range registered with our
//! userfaultfd; pages svmem holds elsewhere (on a device, in staging) are
//! holes there, and the caller's `mremap` returns as soon as the reader has
//! read the event. svmem then:
//!
//! - **a whole region moved** (`mremap` of an allocation, as `realloc` does):
//!   a new region record takes over its pages at the new address
//!   ([`relocate`]) — page states, device pages, staging, pins, attributes,
//!   eviction listing; device translations are invalidated so devices
//!   translate the new address afresh. The old record becomes all holes and
//!   points at the new one, which its `Region` handle follows. The old
//!   address is no longer managed.
//! - **part of a region moved**: that part leaves management ([`detach`]):
//!   device-resident data is copied into the new address, poisoned pages
//!   stay poisoned there, and the new range is unregistered, so it is
//!   ordinary memory with every byte; the part's old pages become holes.
//! - **a range grew in place** (no event): the tail is registered (the
//!   kernel extended the mapping) but no region holds it; the first fault
//!   there finds it ([`release_stray`]) and unregisters it, so it is
//!   ordinary memory.
//!
//! Shrinking unmaps the tail, which arrives as an `UNMAP` event (holes).

use std::sync::Arc;

use super::ctx::Shared;
use super::space::RegionInner;
use super::state::PageState;
use crate::addr::PAGE_SIZE;
use crate::observe::events::UnmapTrigger;
use crate::sync::Ordering;

/// Handles `UFFD_EVENT_REMAP`: `len` bytes moved from `from` to `to`.
pub(crate) fn remap(sh: &Shared, from: u64, to: u64, len: u64) {
    let end = from.saturating_add(len);
    // Parts of [to, to+len) that stay managed (whole regions that moved).
    let mut followed: Vec<(u64, u64)> = Vec::new();
    for r in sh.regions_overlapping(from, end) {
        let (s, e) = (r.base().max(from), (r.base() + r.len()).min(end));
        let at = to + (s - from);
        let whole = s == r.base() && e == r.base() + r.len();
        if whole && relocate(sh, &r, at).is_some() {
            followed.push((at, at + (e - s)));
            continue;
        }
        detach(sh, &r, s, e, at);
    }
    // Everything else that arrived at `to` is the program's own memory now.
    followed.sort_unstable();
    let mut cur = to;
    for (s, e) in followed.into_iter().chain([(to + len, to + len)]) {
        if s > cur {
            if let Err(e) = sh.uffd.unregister(cur, s - cur) {
                eprintln!(
                    "svmem: unregistering the moved range {cur:#x}+{:#x} failed: {e}",
                    s - cur
                );
            }
        }
        cur = cur.max(e);
    }
}

/// A new record for region `r`, whose pages the program moved to `to` as a
/// whole; returns it (published in the region map), or `None` if the
/// mapping could not be rebuilt (then the caller detaches the pages).
pub(crate) fn relocate(sh: &Shared, r: &Arc<RegionInner>, to: u64) -> Option<Arc<RegionInner>> {
    let managed = r.managed.moved(to).ok()?;
    let guards: Vec<_> = r.blocks.iter().map(|b| b.migrate.lock()).collect();
    for b in 0..r.blocks.len() {
        r.invalidate(b, r.block_pages(b), UnmapTrigger::UnmapFromCpu);
    }
    let new = Arc::new(r.relocated(managed));
    for k in 0..r.npages {
        // The pages (device pages, staged copies) are the new record's now.
        let _ = r.states[k].unmap();
    }
    r.freed.store(true, Ordering::Release);
    {
        let mut map = sh.regions.write();
        map.remove(&r.base());
        map.insert(new.base(), new.clone());
    }
    let _ = r.moved_to.set(new.clone());
    drop(guards);
    sh.pressure.relocated(sh, r, &new);
    sh.counters.add(&sh.counters.remaps_followed, 1);
    Some(new)
}

/// Pages `[s, e)` of `r` moved to `to` without the rest of the region:
/// their data is delivered to `to` (device pages copied in, poisoned pages
/// poisoned there) and they become holes of `r`.
fn detach(sh: &Shared, r: &RegionInner, s: u64, e: u64, to: u64) {
    let (lo, hi) = (r.page_of(s), r.page_of(e - 1) + 1);
    r.managed
        .forget_range((s - r.base()) as usize, (e - s) as usize);
    let mut buf = vec![0u8; PAGE_SIZE];
    r.invalidate_range(lo..hi, UnmapTrigger::UnmapFromCpu, |_, pages| {
        let mut freed = crate::device::FreeBatch::new(&sh.devices);
        for k in pages {
            let dst = to + (r.addr_of(k).0 - s);
            match r.states[k].unmap() {
                Ok(PageState::Device { dev, page, staged }) => {
                    let dev_ref = &sh.devices[dev.0 as usize];
                    let copied = dev_ref.load(page, 0, &mut buf).is_ok()
                        && super::staging::copy_page(sh, dst, &buf, false);
                    if !copied {
                        // The data cannot reach the new address: say so there.
                        let _ = sh.uffd.poison(dst, PAGE_SIZE as u64);
                        sh.counters.add(&sh.counters.protocol_errors, 1);
                        eprintln!(
                            "svmem: the device page of {dst:#x} (moved by mremap) could not be \
                             copied; the page is poisoned"
                        );
                    }
                    freed.push(dev, page);
                    if staged {
                        sh.drop_staged(r, k, 1);
                    }
                }
                Ok(PageState::Poisoned) => {
                    let _ = sh.uffd.poison(dst, PAGE_SIZE as u64);
                }
                _ => {}
            }
        }
    });
    sh.counters.add(&sh.counters.remaps_detached, 1);
}

/// A fault at `addr`, which no region holds: if the address is registered
/// memory no region or staging area covers (a managed range that grew in
/// place), unregisters that stretch so the kernel serves it as ordinary
/// memory. Returns whether it did. Only called with no region being
/// installed (`Shared::installing` is 0), so a range registered for a new
/// region is never taken for one.
pub(crate) fn release_stray(sh: &Shared, addr: u64) -> bool {
    let Ok(Some(v)) = crate::sys::vma::query(addr) else {
        return false;
    };
    let (mut lo, mut hi) = (v.start, v.end);
    let map = sh.regions.read();
    for r in map.values() {
        for (s, e) in [
            (r.base(), r.base() + r.len()),
            (r.staging.addr(), r.staging.addr() + r.len()),
        ] {
            if s <= addr && addr < e {
                return false; // covered after all: a region or staging
            }
            if e <= addr {
                lo = lo.max(e);
            } else if s > addr {
                hi = hi.min(s);
            }
        }
    }
    drop(map);
    if lo >= hi || sh.installing.load(Ordering::Acquire) != 0 {
        return false;
    }
    // Counted first: unregistering wakes the faulting thread, which may
    // look at the counters next.
    sh.counters.add(&sh.counters.stray_ranges_released, 1);
    match sh.uffd.unregister(lo, hi - lo) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "svmem: releasing the unmanaged stretch {lo:#x}+{:#x} failed: {e}",
                hi - lo
            );
            false
        }
    }
}
