//! The one routine that maps pages for a device (`map_locked`), used by
//! device faults, device reads and writes, fault-ahead and always-mapped
//! ranges; and keeping always-mapped ranges mapped.

use super::Ctx;
use crate::addr::{AccessKind, DeviceId, BLOCK_PAGES, PAGE_SIZE};
use crate::error::FaultReason;
use crate::mm::migrate::{self, Trigger};
use crate::mm::space::{Pte, RegionInner};
use crate::mm::state::PageState;
use crate::placement::attr::{AccessMode, AttrFlags, RangeAttrs};
use crate::sync::Ordering;

/// Maps pages `[lo, hi)` (inside one block, whose lock the caller holds) for
/// device `d` where their data is: system pages in place (zero-filling
/// untouched ones), `d`'s own pages directly. Pages elsewhere are left
/// unmapped (the caller pulls them first), and so are holes, always.
/// Returns whether every page of the window that is not poisoned or a hole
/// got a translation.
pub(crate) fn map_locked(
    sh: &Ctx,
    r: &RegionInner,
    d: DeviceId,
    lo: usize,
    hi: usize,
    write: bool,
    flags: AttrFlags,
) -> bool {
    if sh.devices[d.0 as usize].is_lost() {
        // A lost device gets no translations (its table was cleared).
        return false;
    }
    crate::mm::populate::populate(sh, r, lo, hi, write);
    let table = &r.ptes[d.0 as usize];
    let w = r.is_writable() && !flags.contains(AttrFlags::DEVICE_READ_ONLY);
    let mut all = true;
    // The CPU's protection of each page (the program may have changed it
    // behind svmem's back): no translation without PROT_READ, a read-only
    // one without PROT_WRITE.
    let mut prot = CpuProt::default();
    for k in lo..hi {
        let (readable, writable) = prot.at(r.addr_of(k).0);
        if !readable {
            continue;
        }
        let w = w && writable;
        let pte = match r.states[k].load() {
            PageState::System => Pte::System { write: w },
            PageState::Device { dev, page, .. } if dev == d => Pte::Device { page, write: w },
            // Poisoned pages and holes stay unmapped: accesses to them fail,
            // no retry helps (a hole's address may be the program's now).
            PageState::Poisoned | PageState::Hole => continue,
            _ => {
                all = false;
                continue;
            }
        };
        table[k].store(pte.encode(), Ordering::Release);
    }
    let blk = &r.blocks[lo / BLOCK_PAGES];
    blk.mapped.fetch_or(1 << d.0, Ordering::AcqRel);
    blk.mapped_at.store(sh.notifier.now_ns(), Ordering::Relaxed);
    crate::pressure::evict::touch(r, lo / BLOCK_PAGES, d);
    all
}

/// The CPU's protection of consecutive addresses, one `PROCMAP_QUERY` per
/// mapping crossed.
#[derive(Default)]
pub(crate) struct CpuProt {
    /// `[start, end)`, readable, writable.
    cached: Option<(u64, u64, bool, bool)>,
}

impl CpuProt {
    /// Whether `addr` is readable and writable for the CPU (neither if no
    /// mapping holds it; both if the kernel cannot be asked).
    pub(crate) fn at(&mut self, addr: u64) -> (bool, bool) {
        match self.cached {
            Some((s, e, rd, wr)) if s <= addr && addr < e => (rd, wr),
            _ => match crate::sys::vma::query(addr) {
                Ok(Some(v)) => {
                    self.cached = Some((v.start, v.end, v.read, v.write));
                    (v.read, v.write)
                }
                Ok(None) => (false, false),
                Err(_) => (true, true),
            },
        }
    }
}

/// Why the CPU's own mapping of `addr` forbids a device access of `kind`,
/// if it does: the program changed its protection (`mprotect`) or unmapped
/// it behind svmem's back. Devices honour the CPU's protection as HMM does
/// (`hmm_range_fault` checks the VMA): a read needs `PROT_READ`, a write or
/// an atomic `PROT_WRITE`. One `PROCMAP_QUERY` ioctl, so callers ask once
/// per mapping pass, not per access.
pub(crate) fn cpu_forbids(addr: u64, kind: AccessKind) -> Option<FaultReason> {
    match crate::sys::vma::query(addr) {
        Ok(None) => Some(FaultReason::Unmapped),
        Ok(Some(v)) if !v.read => Some(FaultReason::Protection { write: false }),
        Ok(Some(v)) if kind != AccessKind::Read && !v.write => {
            Some(FaultReason::Protection { write: true })
        }
        _ => None,
    }
}

/// The attribute segments of block `b`, as page ranges of `r`.
pub(crate) fn block_segments(
    sh: &Ctx,
    r: &RegionInner,
    b: usize,
) -> Vec<(usize, usize, RangeAttrs)> {
    let pages = r.block_pages(b);
    let base = r.base() / PAGE_SIZE as u64;
    sh.attrs
        .read()
        .segments(base + pages.start as u64, base + pages.end as u64)
        .into_iter()
        .map(|(s, e, a)| ((s - base) as usize, (e - base) as usize, a))
        .collect()
}

/// Whether device `d` must keep a range with `attrs` mapped: it has access,
/// and either faults are not retried or the range is always mapped.
fn keeps_mapped(attrs: &RangeAttrs, d: DeviceId, xnack: bool) -> bool {
    attrs.access(d, xnack) != AccessMode::None
        && (!xnack || attrs.flags.contains(AttrFlags::ALWAYS_MAPPED))
}

/// Maps the pages of block `b` that device `d` must keep mapped, pulling
/// pages held by other devices to system memory first.
pub(crate) fn map_ahead_block(sh: &Ctx, r: &RegionInner, d: DeviceId, b: usize) -> bool {
    let xnack = sh.xnack.load(Ordering::Acquire);
    let segs = block_segments(sh, r, b);
    let _g = r.blocks[b].migrate.lock();
    let mut ok = true;
    for (lo, hi, attrs) in segs.iter().filter(|s| keeps_mapped(&s.2, d, xnack)) {
        migrate::pull_to_system(sh, r, *lo..*hi, Some(d), Trigger::DeviceFault);
        ok &= map_locked(sh, r, d, *lo, *hi, false, attrs.flags);
    }
    ok
}

/// Recomputes block `b`'s derived attributes: its fault granularity (the
/// smallest of its ranges) and which devices must keep it mapped.
pub(crate) fn refresh_block(sh: &Ctx, r: &RegionInner, b: usize) {
    let xnack = sh.xnack.load(Ordering::Acquire);
    let segs = block_segments(sh, r, b);
    let mut keep = 0u8;
    for dd in 0..sh.devices.len() {
        if segs
            .iter()
            .any(|s| keeps_mapped(&s.2, DeviceId(dd as u8), xnack))
        {
            keep |= 1 << dd;
        }
    }
    let g = segs
        .iter()
        .map(|s| s.2.granularity)
        .min()
        .unwrap_or(sh.granularity);
    let blk = &r.blocks[b];
    blk.granularity.store(g, Ordering::Relaxed);
    blk.keep_mapped.store(keep, Ordering::Release);
}
