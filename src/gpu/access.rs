//! Device accesses to managed memory through the device's page table, with the
//! semantics of the kernel's HMM test device: a missing or insufficient
//! translation triggers one fault pass over the rest of the range, which maps
//! system pages in place (remote access), zero-fills untouched pages, and pulls
//! pages held by another device; then the access resumes.

use super::kernel::Target;
use super::map::{block_segments, cpu_forbids, map_locked};
use super::Ctx;
use crate::addr::{AccessKind, DeviceId, VirtAddr, BLOCK_PAGES, PAGE_SIZE};
use crate::device::DeviceError;
use crate::error::{Error, FaultReason, Result};
use crate::mm::migrate::{self, Trigger};
use crate::mm::space::{Pte, RegionInner};
use crate::mm::state::PageState;
use crate::placement::attr::AttrFlags;
use crate::sync::Ordering;

/// What a device read or write covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AccessReport {
    /// Pages the access touched.
    pub pages: u64,
    /// Fault passes it needed (a cold access of any length needs one).
    pub fault_passes: u64,
}

/// What a device sees of one page, without faulting anything (the HMM test
/// device's snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PageView {
    /// Not populated anywhere.
    None,
    /// Mapped to the shared zero page.
    Zero,
    /// System memory the device may only read.
    ReadOnly,
    /// System memory the device may write.
    Writable,
    /// Resident in this device's memory.
    DeviceLocal,
    /// Resident in another device's memory.
    DeviceRemote,
    /// Being migrated right now.
    Migrating,
    /// Data lost: every access errors.
    Error,
    /// Unmapped by the program (a hole): every access errors.
    Unmapped,
    /// The CPU's protection is `PROT_NONE` (the program's `mprotect`):
    /// devices may not access it either.
    NoAccess,
}

pub(crate) enum Op<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
}

/// Maps pages `[from, to)` of `r` for device `d`, pulling pages held by
/// other devices and populating untouched ones, through the one mapping
/// routine ([`map_locked`], which honours the range's attributes). One pass.
fn fault_pass(
    sh: &Ctx,
    r: &RegionInner,
    d: DeviceId,
    from: usize,
    to: usize,
    write: bool,
) -> Result<()> {
    // A lost device gets no translations: say so instead of retrying.
    sh.check_device_alive(d)?;
    let mut i = from;
    while i < to {
        let b = i / BLOCK_PAGES;
        let hi = to.min((b + 1) * BLOCK_PAGES);
        let segs = block_segments(sh, r, b);
        let _g = r.blocks[b].migrate.lock();
        if let Some(e) = unusable(r, i..hi) {
            return Err(e);
        }
        let kind = if write {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        if let Some(e) = protection_error(r.addr_of(i).0, kind, d) {
            return Err(e);
        }
        migrate::pull_to_system(sh, r, i..hi, Some(d), Trigger::DeviceFault);
        for (lo, shi, attrs) in segs {
            let (lo, shi) = (lo.max(i), shi.min(hi));
            if lo < shi {
                // Pages left elsewhere (a failed pull) stay unmapped: the
                // access retries them.
                map_locked(sh, r, d, lo, shi, write, attrs.flags);
            }
        }
        i = hi;
    }
    sh.counters.add(&sh.counters.device_fault_passes, 1);
    Ok(())
}

/// The error for a device access of `kind` at `addr` that the CPU's own
/// mapping forbids (see [`cpu_forbids`]), if it does.
fn protection_error(addr: u64, kind: AccessKind, dev: DeviceId) -> Option<Error> {
    let addr_v = VirtAddr(addr);
    match cpu_forbids(addr, kind)? {
        FaultReason::Protection { write } => Some(Error::Protected {
            dev,
            addr: addr_v,
            write,
        }),
        _ => Some(Error::Unmapped { addr: addr_v }),
    }
}

/// The first page of `pages` no device access can use, as its error: a
/// poisoned page or a hole.
pub(crate) fn unusable(r: &RegionInner, pages: std::ops::Range<usize>) -> Option<Error> {
    pages.into_iter().find_map(|k| match r.states[k].load() {
        PageState::Poisoned => Some(Error::Poisoned { addr: r.addr_of(k) }),
        PageState::Hole => Some(Error::Unmapped { addr: r.addr_of(k) }),
        _ => None,
    })
}

/// A device read or write of `[addr, addr + len)`.
pub(crate) fn access(
    sh: &Ctx,
    d: DeviceId,
    addr: VirtAddr,
    mut op: Op<'_>,
) -> Result<AccessReport> {
    // A copy of system memory that raced the program's mremap or munmap
    // (whose event svmem had not read yet) may have touched whatever the
    // program mapped at the old address since: it is done again from the
    // start, under the address space svmem knows after the event.
    for tries in 0..MAX_ADDRESS_SPACE_RETRIES {
        if let Some(rep) = access_once(sh, d, addr, &mut op)? {
            return Ok(rep);
        }
        sh.counters
            .add(&sh.counters.device_accesses_repeated_after_events, 1);
        // The event is read as soon as the reader runs (the program's call
        // waits for that). The reader may be waiting for a block lock whose
        // holder retries an ioctl the unread event refuses: read it for the
        // reader, and give it the CPU.
        if sh.event_pending() {
            sh.read_for_reader();
            let _ = sh.kick.signal();
        }
        if tries < 8 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    Err(Error::Device {
        dev: d,
        reason: format!(
            "access at {addr}: the program's mremap/munmap kept changing the range under it \
             ({MAX_ADDRESS_SPACE_RETRIES} tries)"
        ),
    })
}

/// Tries of [`access`] when the address space changes under its copies
/// (about 100 ms in all).
const MAX_ADDRESS_SPACE_RETRIES: usize = 1000;

/// Waits until the events the reader has read are handled; returns the
/// event gate's generation then (even).
fn settled(sh: &Ctx) -> u32 {
    loop {
        sh.events.wait();
        let g = sh.events.generation();
        if g % 2 == 0 {
            return g;
        }
    }
}

/// After events were read and handled during a copy of system pages of
/// `r`: whether the copy may have touched memory that was no longer the
/// region's (the program moved the region, or unmapped pages of it: the
/// kernel changes the mapping first and tells svmem after).
fn moved_away(r: &RegionInner, pages: std::ops::Range<usize>) -> bool {
    r.moved_to.get().is_some()
        || r.freed.load(Ordering::Acquire)
        || pages
            .into_iter()
            .any(|k| r.states[k].load() == PageState::Hole)
}

/// One try of [`access`]; `None` when a copy of system memory may have
/// raced a change of the address space (then nothing it read counts, and
/// what it wrote is written again by the next try, or refused there).
fn access_once(
    sh: &Ctx,
    d: DeviceId,
    addr: VirtAddr,
    op: &mut Op<'_>,
) -> Result<Option<AccessReport>> {
    let dev = sh.device(d)?;
    let (len, write) = match &*op {
        Op::Read(b) => (b.len() as u64, false),
        Op::Write(b) => (b.len() as u64, true),
    };
    if len == 0 {
        return Ok(Some(AccessReport {
            pages: 0,
            fault_passes: 0,
        }));
    }
    // Events the program's munmap/madvise already returned from are handled
    // before this access looks at a translation.
    let mut gen = settled(sh);
    let r = sh.region_for(addr, len)?;
    if write && !r.is_writable() {
        return Err(Error::ReadOnly { dev: d, addr });
    }
    let first = r.page_of(addr.0);
    let last = r.page_of(addr.0 + len - 1);
    let kind = if write {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    if r.barred(kind) {
        return Err(Error::HeldByCpuView {
            dev: d,
            addr,
            write,
        });
    }
    if write {
        // A device-read-only range refuses every device write before any
        // byte changes (its translations are read-only; this says so once).
        let base = r.base() / PAGE_SIZE as u64;
        let segs = sh
            .attrs
            .read()
            .segments(base + first as u64, base + last as u64 + 1);
        if let Some((s, _, _)) = segs
            .iter()
            .find(|s| s.2.flags.contains(AttrFlags::DEVICE_READ_ONLY))
        {
            let at = VirtAddr((*s * PAGE_SIZE as u64).max(addr.0));
            return Err(Error::ReadOnly { dev: d, addr: at });
        }
    }
    if let Some(e) = unusable(&r, first..last + 1) {
        return Err(e);
    }
    // The CPU's protection now (no event reports an mprotect): device
    // pages included, whatever translation the device still holds.
    let mut prot = super::map::CpuProt::default();
    for k in first..=last {
        let at = r.addr_of(k).0.max(addr.0);
        let (rd, wr) = prot.at(at);
        if !rd || (write && !wr) {
            return Err(protection_error(at, kind, d).unwrap_or(Error::Protected {
                dev: d,
                addr: VirtAddr(at),
                write,
            }));
        }
    }
    sh.counters.add(&sh.counters.device_accesses, 1);
    let table = &r.ptes[d.0 as usize];
    let dev_err = |e: DeviceError| Error::Device {
        dev: d,
        reason: e.reason,
    };
    // A failed copy of a run `[at, at+n)`: the first page the CPU's mapping
    // forbids now names the error (or the run's start if none does: it was
    // unmapped when the copy ran).
    let sys_err = |e: std::io::Error, at: u64, n: usize| match e.raw_os_error() {
        Some(libc::EFAULT) => (at & !(PAGE_SIZE as u64 - 1)..at + n as u64)
            .step_by(PAGE_SIZE)
            .find_map(|p| protection_error(p.max(at), kind, d))
            .unwrap_or(Error::Unmapped { addr: VirtAddr(at) }),
        _ => Error::os("device access to system memory", e),
    };
    // The timing model: this access, as one lane of its own.
    let clock = dev.clock();
    let remote_min = clock.map_or(0, |c| c.profile().remote_min_bytes);
    let mut lane = crate::device::timing::LaneClock::default();
    let mut pos = 0u64;
    let mut passes = 0u64;
    'outer: while pos < len {
        let b = r.page_of(addr.0 + pos) / BLOCK_PAGES;
        let guard = r.blocks[b].access.read();
        crate::pressure::evict::touch(&r, b, d);
        while pos < len {
            let at = addr.0 + pos;
            let k = r.page_of(at);
            if k / BLOCK_PAGES != b {
                break;
            }
            let Some(pte) =
                Pte::decode(table[k].load(Ordering::Acquire)).filter(|p| !write || p.writable())
            else {
                drop(guard);
                if passes >= 64 {
                    return Err(Error::Device {
                        dev: d,
                        reason: format!(
                            "access at {} did not converge after {passes} fault passes",
                            VirtAddr(at)
                        ),
                    });
                }
                fault_pass(sh, &r, d, k, last + 1, write)?;
                passes += 1;
                // A device found lost by the pass: its pages become poisoned
                // (no lock is held here), so the next pass reports them.
                sh.check_lost();
                continue 'outer;
            };
            if r.barred(kind) {
                // A CPU view taken since the check above (this one holds the
                // access guard the view's owner drains).
                return Err(Error::HeldByCpuView {
                    dev: d,
                    addr,
                    write,
                });
            }
            let off = (at % PAGE_SIZE as u64) as usize;
            let mut n = ((PAGE_SIZE - off) as u64).min(len - pos) as usize;
            if let Pte::System { .. } = pte {
                // One guarded copy for the whole run of system pages in this
                // block, not one per page.
                let usable = |j: usize| {
                    j / BLOCK_PAGES == b
                        && Pte::decode(table[j].load(Ordering::Acquire)).is_some_and(|p| {
                            matches!(p, Pte::System { .. }) && (!write || p.writable())
                        })
                };
                let mut j = k + 1;
                while (n as u64) < len - pos && usable(j) {
                    n = ((n + PAGE_SIZE) as u64).min(len - pos) as usize;
                    j += 1;
                }
            }
            let span = pos as usize..pos as usize + n;
            let target = Target::of(&r, pte, at);
            let remote = matches!(target, Target::System { .. });
            match (target, &mut *op) {
                // System memory is copied with guarded copies, so a page the
                // program unmapped under a translation not yet invalidated
                // (its UNMAP event still unread: the kernel unmaps first and
                // tells us after) fails with EFAULT instead of a SIGSEGV.
                (Target::System { off, .. }, Op::Read(buf)) => r
                    .managed
                    .read_guarded(off, &mut buf[span])
                    .map_err(|e| sys_err(e, at, n)),
                (Target::System { off, .. }, Op::Write(buf)) => r
                    .managed
                    .write_guarded(off, &buf[span])
                    .map_err(|e| sys_err(e, at, n)),
                (t, Op::Read(buf)) => t.read(&**dev, &mut buf[span]).map_err(dev_err),
                (t, Op::Write(buf)) => t.write(&**dev, &buf[span]).map_err(dev_err),
            }?;
            lane.access(remote, kind, n, remote_min);
            if remote {
                // Was that still the region's memory? An event still unread
                // says maybe not; events read since `gen` say look (without
                // the access guard: the reader may need to drain it to handle
                // them).
                if sh.event_pending() {
                    return Ok(None);
                }
                if sh.events.generation() != gen {
                    drop(guard);
                    gen = settled(sh);
                    if moved_away(&r, first..last + 1) {
                        return Ok(None);
                    }
                    pos += n as u64;
                    continue 'outer;
                }
            }
            pos += n as u64;
        }
    }
    if let Some(c) = clock {
        c.host_access(&lane);
    }
    Ok(Some(AccessReport {
        pages: (last - first + 1) as u64,
        fault_passes: passes,
    }))
}

/// Per-page view for device `d` of `npages` pages from `addr`, faulting nothing.
pub(crate) fn snapshot(
    sh: &Ctx,
    d: DeviceId,
    addr: VirtAddr,
    npages: usize,
) -> Result<Vec<PageView>> {
    sh.device(d)?;
    if !addr.is_page_aligned() {
        return Err(Error::Unaligned {
            what: "snapshot address",
            value: addr.0,
        });
    }
    let len = (npages as u64)
        .checked_mul(PAGE_SIZE as u64)
        .filter(|l| addr.0.checked_add(*l).is_some())
        .ok_or(Error::RangeOverflow {
            what: "snapshot",
            start: addr,
            count: npages as u64,
            unit: "pages",
        })?;
    sh.events.wait();
    let r = sh.region_for(addr, len)?;
    let first = r.page_of(addr.0);
    let zero = crate::sys::zero_pages(addr.0, npages).map_err(|e| Error::os("PAGEMAP_SCAN", e))?;
    // The CPU's protection of each page, which devices honour.
    let mut prot = super::map::CpuProt::default();
    Ok((0..npages)
        .map(|k| match r.states[first + k].load() {
            PageState::Hole => PageView::Unmapped,
            _ if !prot.at(addr.0 + (k * PAGE_SIZE) as u64).0 => PageView::NoAccess,
            PageState::Unpopulated => PageView::None,
            PageState::System if zero[k] => PageView::Zero,
            PageState::System if r.is_writable() && prot.at(addr.0 + (k * PAGE_SIZE) as u64).1 => {
                PageView::Writable
            }
            PageState::System => PageView::ReadOnly,
            PageState::Device { dev, .. } if dev == d => PageView::DeviceLocal,
            PageState::Device { .. } => PageView::DeviceRemote,
            PageState::Migrating => PageView::Migrating,
            PageState::Poisoned => PageView::Error,
        })
        .collect())
}
