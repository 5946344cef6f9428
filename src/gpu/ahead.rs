//! Fault-ahead: a persistent pipeline that migrates the blocks ahead of a
//! sequential device sweep while the device keeps faulting.

use crossbeam_channel::Receiver;

use super::fault::{gather, replay_all, replay_duplicate, service_batch, translated};
use super::fault::{Fault, Msg, SweepHint};
use super::map::map_locked;
use super::Ctx;
use crate::addr::{DeviceId, Location, BLOCK_PAGES, PAGE_SIZE};
use crate::mm::announce::Announce;
use crate::mm::migrate::FAULT_AHEAD;
use crate::mm::migrate::{self, MigrateReport, Trigger};
use crate::mm::space::RegionInner;
use crate::placement::attr::{AccessMode, AttrFlags};
use crate::sync::Ordering;

/// A block of fault-ahead in flight.
struct Inflight<'a> {
    /// Pages `[lo, hi)` of the sweep's region, inside one block.
    lo: usize,
    hi: usize,
    flags: AttrFlags,
    /// What is being copied (holding the block's lock); none when nothing
    /// needed copying (the pages were mapped when the step was made).
    plan: Option<migrate::ToDevicePlan<'a>>,
    rep: MigrateReport,
    told: Announce<'a>,
}

/// Fault-ahead of a sequential device sweep that reached page `h.hi`: keeps
/// up to `pipeline_depth` blocks of the sweep in flight to the device and
/// maps each (then replays the lanes) as soon as its copy lands, so the copy
/// engines never wait for the mapping and a lane never waits for more than
/// its own block. The sweep stays [`FAULT_AHEAD`] windows in front of the
/// furthest fault inside it and ends there, at the end of the region, when
/// device memory runs out, when the attributes stop asking for device
/// placement, or when a fault outside it needs service.
///
/// Lock order: the blocks in flight hold their locks (taken in ascending
/// order, like every migration that holds several), and while any is held
/// this thread takes no other block lock but the next one up. So faults
/// are not serviced here: a fault whose page has meanwhile been mapped well
/// enough is replayed as a duplicate (no lock needed); the others wait, and
/// one outside the sweep stops it, so that the pipeline drains and the
/// usual service takes them. Returns false once the service must shut down
/// (after the blocks in flight are finished).
pub(crate) fn run_ahead(sh: &Ctx, d: DeviceId, rx: &Receiver<Msg>, h: SweepHint) -> bool {
    let r = &*h.r;
    let to = Location::Device(d);
    let trigger = Trigger::DeviceFault;
    let mut at = h.hi;
    let w = r.window_len(at);
    let mut end = (at.next_multiple_of(w) + w * FAULT_AHEAD).min(r.npages);
    let (mut fetching, mut alive) = (true, true);
    let mut inflight: std::collections::VecDeque<Inflight<'_>> = Default::default();
    let mut waiting: Vec<Fault> = Vec::new();
    loop {
        while fetching && inflight.len() < sh.pipeline_depth.max(1) && at < end {
            let b = at / BLOCK_PAGES;
            // One plan per block at a time: a plan holds its block's lock.
            if inflight.back().is_some_and(|p| p.lo / BLOCK_PAGES == b) {
                break;
            }
            let hi = end.min((b + 1) * BLOCK_PAGES);
            let Some(flags) = may_fetch(sh, r, d, at, hi) else {
                fetching = false;
                break;
            };
            let mut rep = MigrateReport {
                requested: (hi - at) as u64,
                ..Default::default()
            };
            let told = Announce::start(r, at, hi - at, Location::System, to, trigger);
            let plan = migrate::isolate_to_device(sh, r, b, at..hi, d, trigger, &mut rep);
            if plan.is_none() {
                // Nothing to copy: map now (this block is above every one held).
                let _g = r.blocks[b].migrate.lock();
                map_locked(sh, r, d, at, hi, false, flags);
            }
            // Out of device memory (or the region is going): stop here.
            fetching = rep.skipped_no_device_memory == 0 && rep.skipped_not_migratable == 0;
            inflight.push_back(Inflight {
                lo: at,
                hi,
                flags,
                plan,
                rep,
                told,
            });
            at = hi;
        }
        let Some(Inflight {
            lo,
            hi,
            flags,
            plan,
            mut rep,
            told,
        }) = inflight.pop_front()
        else {
            break;
        };
        if let Some(p) = plan {
            let _g = migrate::finish_to_device(sh, r, p, &mut rep);
            map_locked(sh, r, d, lo, hi, false, flags);
        }
        told.end(&rep);
        sh.counters
            .add(&sh.counters.device_fault_ahead_pages, rep.migrated);
        r.dev_sweep_end[d.0 as usize].store(hi, Ordering::Relaxed);
        let done = hi;

        alive &= gather(rx, &mut waiting);
        fetching &= alive;
        let w = r.window_len(done.min(r.npages - 1));
        let mut replay = false;
        waiting.retain(|f| {
            let k = r.contains(f.page_addr, 1).then(|| r.page_of(f.page_addr));
            if let Some(k) = k.filter(|k| (done..end + w).contains(k)) {
                // Ahead of what is mapped: the sweep gets there; keep it
                // that far in front of this fault.
                end = end.max(((k + 1).next_multiple_of(w) + w * FAULT_AHEAD).min(r.npages));
                return true;
            }
            if k.is_some_and(|k| translated(r, d, k, f.kind)) {
                replay_duplicate(sh, d, r, f);
                replay = true;
                return false;
            }
            // Needs the usual service, which takes locks: finish the sweep.
            fetching = false;
            true
        });
        if replay {
            replay_all(sh, d);
        }
    }
    // Nothing held any more: whatever still waits is serviced the usual way.
    if !waiting.is_empty() {
        service_batch(sh, d, &mut waiting);
        replay_all(sh, d);
    }
    alive
}

/// Whether fault-ahead may bring pages `[lo, hi)` (one window) of `r` to
/// device `d`: the region is not being freed, its attributes ask for the device,
/// and the device is not thrashing on the block. Returns the window's flags.
fn may_fetch(sh: &Ctx, r: &RegionInner, d: DeviceId, lo: usize, hi: usize) -> Option<AttrFlags> {
    if r.freed.load(std::sync::atomic::Ordering::Acquire) {
        return None;
    }
    let attrs = sh.attrs.read().get(r.addr_of(lo).0 / PAGE_SIZE as u64);
    let xnack = sh.xnack.load(Ordering::Acquire);
    let wants_device = attrs.access(d, xnack) == AccessMode::Access
        || attrs.preferred == Some(Location::Device(d));
    if !wants_device || attrs.preferred == Some(Location::System) {
        return None;
    }
    // Blocks the device is thrashing on are served in place by the policy;
    // fetching them ahead would evict what the device still uses.
    if (lo / BLOCK_PAGES..=(hi - 1) / BLOCK_PAGES)
        .any(|b| crate::pressure::evict::thrashing(&sh.pressure, r, b, d))
    {
        return None;
    }
    Some(attrs.flags)
}
