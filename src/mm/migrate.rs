//! The migration protocol, per 2 MiB block, best effort per page:
//!
//! 1. **collect** (block lock held): read each page's state, decide copy /
//!    zero-fill / skip (with the reason), allocate device memory;
//! 2. **isolate**: clear device PTEs and drain device accesses, move the
//!    states to `Migrating`, and take the pages out of the CPU view with one
//!    `UFFDIO_MOVE` into the staging mirror (zero copy; CPU touches now fault
//!    and wait for the block lock);
//! 3. **copy**: a copy job per device through the staging window, one fence;
//! 4. **commit**: on success write the new states (and the target device's
//!    PTEs); on failure roll every page back exactly as it was;
//! 5. **finalize**: free what the pages left, unlock.
//!
//! [`migrate_range`] keeps a few blocks in flight so the calling thread
//! isolates block k+1 while a copy engine copies block k.

use std::collections::VecDeque;
use std::sync::Arc;

use super::announce::Announce;
use super::staging::{return_cpu_pages, runs, take_cpu_pages, Taken};
use crate::addr::{DevPage, DeviceId, Location, BLOCK_PAGES, PAGE_SIZE};
use crate::device::{
    CopyJob, CopyOp, DevRun, DeviceError, Fence, FreeBatch, HostRef, MAX_JOB_PAGES,
};
use crate::mm::ctx::Shared;
use crate::mm::space::{Pte, RegionInner};
use crate::mm::state::PageState;
use crate::observe::events::UnmapTrigger;
use crate::sync::{MutexGuard, Ordering};
use crate::sys::{Mapping, Prot};

/// What a migration did, page by page.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    /// Pages in the requested range.
    pub requested: u64,
    /// Pages that moved to the requested location.
    pub migrated: u64,
    /// Pages left where they were because they stayed busy (pinned, shared
    /// with a child process, racing) after 3 tries.
    pub skipped_busy: u64,
    /// Pages that cannot migrate (read-only region, poisoned).
    pub skipped_not_migratable: u64,
    /// Pages left in place because the target device had no free memory.
    pub skipped_no_device_memory: u64,
    /// Pages left in system memory because they are pinned there.
    pub skipped_pinned: u64,
    /// Pages already at the requested location.
    pub already_there: u64,
    /// Pages whose copy failed and that were rolled back untouched.
    pub rolled_back: u64,
    /// Pages whose data was lost: their copy back from a device failed on a
    /// CPU fault (retried page by page), so they are poisoned now.
    pub poisoned: u64,
    /// Of `migrated`, pages that came from another device directly, device
    /// to device (peer path), without passing through system memory.
    pub from_peer: u64,
    /// Modelled time of the copies, ns (`device::timing`; set by
    /// `Svm::migrate`, 0 under profile `none`).
    pub modelled_ns: u64,
}

impl MigrateReport {
    /// Pages that did not move and were not already there.
    pub fn skipped(&self) -> u64 {
        self.skipped_busy
            + self.skipped_not_migratable
            + self.skipped_no_device_memory
            + self.skipped_pinned
            + self.rolled_back
    }
}

/// Why a migration ran (counters and the event stream).
pub use crate::observe::events::MigrateTrigger as Trigger;

/// Windows (CPU) or blocks (device) migrated ahead of a sequential sweep,
/// pipelined like any migration, so the sweeper consumes one while the
/// next ones arrive instead of paying a fault round trip each.
pub(crate) const FAULT_AHEAD: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The page had data: it was moved into staging and is copied.
    Copy,
    /// The page had no data: the device page is zero-filled.
    Zero,
    /// The page is on device `from` (its `staged` page kept for the way
    /// back): copied device to device over the peer path.
    Peer {
        from: DeviceId,
        page: DevPage,
        staged: bool,
    },
}

impl Kind {
    /// The state the page was isolated from (and returns to on rollback).
    fn before(self) -> PageState {
        match self {
            Kind::Copy => PageState::System,
            Kind::Zero => PageState::Unpopulated,
            Kind::Peer { from, page, staged } => PageState::Device {
                dev: from,
                page,
                staged,
            },
        }
    }
}

struct ToDevicePage {
    idx: usize,
    page: DevPage,
    kind: Kind,
}

/// Isolated pages of one block on their way to device `d`.
pub(crate) struct ToDevicePlan<'a> {
    guard: MutexGuard<'a, ()>,
    /// Keeps a device reset out until this migration has committed.
    _ticket: super::ctx::GateTicket,
    b: usize,
    d: DeviceId,
    pages: Vec<ToDevicePage>,
    fence: Fence,
    /// The events of the device-to-device moves in this plan, one per
    /// source device, ended when it finishes.
    peer_told: Vec<(DeviceId, Announce<'a>)>,
}

struct ToSystemPage {
    idx: usize,
    prev: PageState,
    /// Slot in the bounce buffer for pages with no staged system page.
    bounce: Option<usize>,
}

/// Isolated device-resident pages of one block on their way to system memory.
/// The caller holds the block lock (in `guard`, or further up the stack).
pub(crate) struct ToSystemPlan<'a> {
    _guard: Option<MutexGuard<'a, ()>>,
    pages: Vec<ToSystemPage>,
    /// Jobs not yet run (synchronous plans run them in `finish`).
    jobs: Vec<(DeviceId, CopyJob)>,
    fence: Fence,
    bounce: Option<Arc<Mapping>>,
    /// On a failed copy, retry page by page and poison the pages that still
    /// fail (the CPU-fault path), instead of rolling every page back.
    poison_on_failure: bool,
    /// The bounce buffer's charge against the memory limit, while it lives.
    bounce_charge: Option<super::ctx::Charge>,
}

/// Collect + isolate + submit for pages `[lo, hi)` of block `b` going to device `d`.
pub(crate) fn isolate_to_device<'a>(
    sh: &Shared,
    r: &'a RegionInner,
    b: usize,
    pages: std::ops::Range<usize>,
    d: DeviceId,
    trigger: Trigger,
    rep: &mut MigrateReport,
) -> Option<ToDevicePlan<'a>> {
    let (lo, hi) = (pages.start, pages.end);
    let guard = r.blocks[b].migrate.lock();
    let dev = &sh.devices[d.0 as usize];
    let Some(ticket) = sh.reset_gate.enter(d) else {
        // The device is being reset: nothing goes to it meanwhile.
        rep.skipped_busy += (hi - lo) as u64;
        return None;
    };
    if r.freed.load(std::sync::atomic::Ordering::Acquire) {
        // Being freed (fault-ahead raced with the free): its device pages
        // would never be returned.
        rep.skipped_not_migratable += (hi - lo) as u64;
        return None;
    }
    if !r.is_writable() {
        for i in lo..hi {
            match r.states[i].load() {
                PageState::Device { dev, .. } if dev == d => rep.already_there += 1,
                _ => rep.skipped_not_migratable += 1,
            }
        }
        return None;
    }
    // Pages on another device move device to device where `d` reads that
    // device's memory; the others come back to system memory first (and an
    // event says so). Any that cannot move stay and are counted busy below.
    let via_system = |dev: DeviceId| dev != d && !sh.peer_path(dev, d);
    if let Some((first, from)) = (lo..hi).find_map(|i| match r.states[i].load() {
        PageState::Device { dev, .. } if via_system(dev) => Some((i, dev)),
        _ => None,
    }) {
        r.notifier
            .events
            .emit_with(|| crate::observe::events::EventKind::PeerFallback {
                start: r.addr_of(first),
                pages: (first..hi)
                    .filter(|&i| {
                        matches!(r.states[i].load(), PageState::Device { dev, .. } if via_system(dev))
                    })
                    .count() as u64,
                from,
                to: d,
            });
        pull(sh, r, lo..hi, via_system, trigger, false);
    }
    let mut cands: Vec<(usize, Kind)> = Vec::with_capacity(hi - lo);
    for i in lo..hi {
        if r.pins.pinned(b, i) {
            rep.skipped_pinned += 1;
            continue;
        }
        match r.states[i].load() {
            PageState::Device { dev, .. } if dev == d => rep.already_there += 1,
            PageState::Device { dev, page, staged } if sh.peer_path(dev, d) => cands.push((
                i,
                Kind::Peer {
                    from: dev,
                    page,
                    staged,
                },
            )),
            PageState::System => cands.push((i, Kind::Copy)),
            PageState::Unpopulated => cands.push((i, Kind::Zero)),
            PageState::Poisoned | PageState::Hole => rep.skipped_not_migratable += 1,
            PageState::Device { .. } | PageState::Migrating => rep.skipped_busy += 1,
        }
    }
    if cands.is_empty() {
        return None;
    }
    let mut runs_out = Vec::new();
    let mut got = dev.alloc(cands.len(), &mut runs_out);
    // Under pressure, evict other blocks (never this one: its lock is ours)
    // and allocate again.
    while got < cands.len() && sh.pressure.make_room(sh, d, (cands.len() - got) as u64) {
        got += dev.alloc(cands.len() - got, &mut runs_out);
    }
    if got < cands.len() {
        rep.skipped_no_device_memory += (cands.len() - got) as u64;
        cands.truncate(got);
    }
    if cands.is_empty() {
        return None;
    }
    let dev_pages = runs_out
        .iter()
        .flat_map(|run| (0..run.npages).map(move |k| DevPage(run.start.0 + k)));
    let mut pages: Vec<ToDevicePage> = cands
        .iter()
        .zip(dev_pages)
        .map(|(&(idx, kind), page)| ToDevicePage { idx, page, kind })
        .collect();

    r.invalidate(
        b,
        pages.iter().map(|p| p.idx),
        UnmapTrigger::MmuNotifyMigrate,
    );
    pages.retain(|p| {
        let ok = r.states[p.idx].isolate(p.kind.before()).is_ok();
        if !ok {
            rep.skipped_busy += 1;
            dev.free(DevRun {
                start: p.page,
                npages: 1,
            });
        }
        ok
    });
    // Take the pages with data out of the CPU view, one MOVE per run.
    let copy_runs = runs(pages.iter().filter(|p| p.kind == Kind::Copy).map(|p| p.idx));
    let mut outcome = std::collections::HashMap::new();
    for (s, n) in copy_runs {
        for (k, t) in take_cpu_pages(sh, r, s, n).into_iter().enumerate() {
            if t != Taken::Moved {
                outcome.insert(s + k, t);
            }
        }
    }
    if !outcome.is_empty() {
        pages.retain_mut(|p| match outcome.get(&p.idx) {
            Some(Taken::Hole) => {
                p.kind = Kind::Zero;
                true
            }
            Some(t @ (Taken::Busy | Taken::Refused)) => {
                r.states[p.idx].commit_isolated(PageState::System, &sh.counters);
                dev.free(DevRun {
                    start: p.page,
                    npages: 1,
                });
                match t {
                    Taken::Refused => rep.skipped_not_migratable += 1,
                    _ => rep.skipped_busy += 1,
                }
                false
            }
            _ => true,
        });
    }
    if pages.is_empty() {
        return None;
    }
    // One job for the block (at most 512 pages), one fence.
    let mut job = CopyJob::default();
    for p in &pages {
        job.push(match p.kind {
            Kind::Copy => CopyOp::ToDevice {
                src: HostRef {
                    map: r.staging.clone(),
                    off: p.idx * PAGE_SIZE,
                },
                dst: p.page,
                npages: 1,
            },
            Kind::Zero => CopyOp::Fill {
                dst: p.page,
                npages: 1,
            },
            Kind::Peer { from, page, .. } => CopyOp::FromPeer {
                from,
                src: page,
                dst: p.page,
                npages: 1,
            },
        });
    }
    let mut peer_told: Vec<(DeviceId, Announce<'a>)> = Vec::new();
    for p in &pages {
        if let Kind::Peer { from, .. } = p.kind {
            if !peer_told.iter().any(|(f, _)| *f == from) {
                let told = Announce::start(
                    r,
                    p.idx,
                    peer_pages_from(&pages, from) as usize,
                    Location::Device(from),
                    Location::Device(d),
                    trigger,
                );
                peer_told.push((from, told));
            }
        }
    }
    let fence = Fence::new();
    dev.submit(job, &fence);
    Some(ToDevicePlan {
        guard,
        _ticket: ticket,
        b,
        d,
        pages,
        fence,
        peer_told,
    })
}

/// Pages of a plan that come from device `from` over the peer path.
fn peer_pages_from(pages: &[ToDevicePage], from: DeviceId) -> u64 {
    pages
        .iter()
        .filter(|p| matches!(p.kind, Kind::Peer { from: f, .. } if f == from))
        .count() as u64
}

/// Wait + commit (or roll back); returns the block's lock, which the caller
/// drops (or keeps a little longer, to map the block under it).
pub(crate) fn finish_to_device<'a>(
    sh: &Shared,
    r: &RegionInner,
    plan: ToDevicePlan<'a>,
    rep: &mut MigrateReport,
) -> MutexGuard<'a, ()> {
    let c = &sh.counters;
    match plan.fence.wait() {
        Ok(()) => {
            let write = r.is_writable();
            let table = &r.ptes[plan.d.0 as usize];
            let (mut copied, mut peer) = (0, 0);
            let mut left = FreeBatch::new(&sh.devices);
            for p in &plan.pages {
                let staged = match p.kind {
                    Kind::Copy => true,
                    Kind::Zero => false,
                    Kind::Peer { from, page, staged } => {
                        // Its old page is free once the new one is committed.
                        left.push(from, page);
                        peer += 1;
                        staged
                    }
                };
                copied += (p.kind == Kind::Copy) as u64;
                r.states[p.idx].commit_isolated(
                    PageState::Device {
                        dev: plan.d,
                        page: p.page,
                        staged,
                    },
                    &sh.counters,
                );
                table[p.idx].store(
                    Pte::Device {
                        page: p.page,
                        write,
                    }
                    .encode(),
                    Ordering::Release,
                );
            }
            r.blocks[plan.b]
                .mapped
                .fetch_or(1 << plan.d.0, Ordering::AcqRel);
            sh.pressure.note_resident(sh, r, plan.b, plan.d);
            left.flush();
            let n = plan.pages.len() as u64;
            rep.migrated += n;
            rep.from_peer += peer;
            c.add(&c.to_device_pages, n);
            c.add(&c.to_device_bytes, copied * PAGE_SIZE as u64);
            c.add(&c.peer_pages, peer);
            c.add(&c.peer_bytes, peer * PAGE_SIZE as u64);
            c.add(&c.device_zero_fill_pages, n - copied - peer);
            for (from, told) in plan.peer_told {
                let moved = peer_pages_from(&plan.pages, from);
                told.end(&MigrateReport {
                    requested: moved,
                    migrated: moved,
                    from_peer: moved,
                    ..Default::default()
                });
            }
        }
        Err(_) => {
            let mut lost = Vec::new();
            for (s, n) in runs(
                plan.pages
                    .iter()
                    .filter(|p| p.kind == Kind::Copy)
                    .map(|p| p.idx),
            ) {
                // return_cpu_pages already fell back to COPY for pages MOVE
                // refused; a page neither could put back is an error in every
                // build: committing it to System would let the CPU read a
                // hole (zeros) where its data was, silently.
                lost.extend(return_cpu_pages(sh, r, s, n));
            }
            let mut freed = FreeBatch::new(&sh.devices);
            for p in plan.pages.iter().filter(|p| !lost.contains(&p.idx)) {
                // A peer page goes back to its device: its data is there.
                r.states[p.idx].commit_isolated(p.kind.before(), &sh.counters);
                freed.push(plan.d, p.page);
            }
            freed.flush();
            for (from, told) in plan.peer_told {
                let n = peer_pages_from(&plan.pages, from);
                told.end(&MigrateReport {
                    requested: n,
                    rolled_back: n,
                    ..Default::default()
                });
            }
            wake_runs(sh, r, plan.pages.iter().map(|p| p.idx));
            let n = plan.pages.len() as u64 - lost.len() as u64;
            rep.rolled_back += n;
            c.add(&c.rolled_back_pages, n);
            if !lost.is_empty() {
                eprintln!(
                    "svmem: a failed migration could not put {} page(s) of region {:#x} back \
                     into the CPU view (first: page {}); they are poisoned (their staged \
                     copy is kept until the region is freed)",
                    lost.len(),
                    r.base(),
                    lost[0]
                );
                // Device pages of these were not filled: free them; the
                // staged copies stay where they are (never mapped again).
                let mut freed = FreeBatch::new(&sh.devices);
                for p in plan.pages.iter().filter(|p| lost.contains(&p.idx)) {
                    r.states[p.idx].commit_isolated(PageState::Poisoned, &sh.counters);
                    freed.push(plan.d, p.page);
                }
                freed.flush();
                c.add(&c.poisoned_pages, lost.len() as u64);
                rep.poisoned += lost.len() as u64;
                for (s, n) in runs(lost.into_iter()) {
                    super::poison::poison_cpu_view(sh, r, s, n);
                }
            }
        }
    };
    plan.guard
}

/// Collect + isolate (+ submit unless `sync`) for the device-resident pages
/// among `idxs` (all in block `b`, whose lock the caller holds or passes in
/// `guard`).
pub(crate) fn isolate_to_system<'a>(
    sh: &Shared,
    r: &'a RegionInner,
    b: usize,
    idxs: &[usize],
    sync: bool,
    guard: Option<MutexGuard<'a, ()>>,
    rep: &mut MigrateReport,
) -> Option<ToSystemPlan<'a>> {
    let mut pages: Vec<ToSystemPage> = idxs
        .iter()
        .filter_map(|&idx| match r.states[idx].load() {
            prev @ PageState::Device { .. } => Some(ToSystemPage {
                idx,
                prev,
                bounce: None,
            }),
            _ => None,
        })
        .collect();
    if pages.is_empty() {
        return None;
    }
    r.invalidate(
        b,
        pages.iter().map(|p| p.idx),
        UnmapTrigger::MmuNotifyMigrate,
    );
    pages.retain(|p| {
        let ok = r.states[p.idx].isolate(p.prev).is_ok();
        if !ok {
            rep.skipped_busy += 1;
        }
        ok
    });
    let unstaged = pages
        .iter()
        .filter(|p| matches!(p.prev, PageState::Device { staged: false, .. }))
        .count();
    let bounce_charge = match unstaged {
        0 => None,
        n => sh.pressure.charge_bounce(sh, (n * PAGE_SIZE) as u64),
    };
    let bounce = if unstaged > 0 {
        let map = bounce_charge
            .as_ref()
            .and_then(|_| Mapping::anonymous(unstaged * PAGE_SIZE, Prot::ReadWrite, false).ok());
        match map {
            Some(m) => Some(Arc::new(m)),
            None => {
                // No memory for a bounce buffer (or no room for it under the
                // memory limit): leave those pages on the device.
                pages.retain(|p| {
                    let keep = matches!(p.prev, PageState::Device { staged: true, .. });
                    if !keep {
                        r.states[p.idx].commit_isolated(p.prev, &sh.counters);
                        rep.skipped_busy += 1;
                    }
                    keep
                });
                None
            }
        }
    } else {
        None
    };
    let mut slot = 0;
    let mut jobs: Vec<(DeviceId, CopyJob)> = Vec::new();
    for p in pages.iter_mut() {
        let PageState::Device { dev, page, staged } = p.prev else {
            continue;
        };
        if !staged && bounce.is_some() {
            p.bounce = Some(slot);
            slot += 1;
        }
        let Some(dst) = back_dst(r, p, bounce.as_ref()) else {
            continue;
        };
        let job = match jobs.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, j)) => j,
            None => {
                jobs.push((dev, CopyJob::default()));
                &mut jobs.last_mut().expect("just pushed").1
            }
        };
        match job.ops.last_mut() {
            Some(CopyOp::ToHost {
                src,
                dst: last,
                npages,
            }) if src.0 + *npages == page.0
                && Arc::ptr_eq(&last.map, &dst.map)
                && last.off + *npages as usize * PAGE_SIZE == dst.off
                && *npages < MAX_JOB_PAGES =>
            {
                *npages += 1
            }
            _ => job.ops.push(CopyOp::ToHost {
                src: page,
                dst,
                npages: 1,
            }),
        }
    }
    let fence = Fence::new();
    if !sync {
        for (d, job) in jobs.drain(..) {
            sh.devices[d.0 as usize].submit(job, &fence);
        }
    }
    Some(ToSystemPlan {
        _guard: guard,
        pages,
        jobs,
        fence,
        bounce_charge: bounce_charge.filter(|_| bounce.is_some()),
        bounce,
        poison_on_failure: false,
    })
}

/// Wait (or run the jobs) + put the pages into the CPU view + commit + free.
pub(crate) fn finish_to_system(
    sh: &Shared,
    r: &RegionInner,
    mut plan: ToSystemPlan<'_>,
    _trigger: Trigger,
    rep: &mut MigrateReport,
) {
    let c = &sh.counters;
    let mut result: Result<(), DeviceError> = Ok(());
    for (d, job) in &plan.jobs {
        result = result.and(sh.devices[d.0 as usize].copy_now(job));
    }
    result = result.and(plan.fence.wait());
    if result.is_err() && plan.poison_on_failure {
        // Page by page, each its own job: only the pages that still fail
        // lose their data; the others migrate below.
        let mut lost = Vec::new();
        plan.pages.retain(|p| {
            let ok = copy_one_back(sh, r, p, plan.bounce.as_ref()).is_ok();
            if !ok {
                lost.push((p.idx, p.prev));
            }
            ok
        });
        let n = super::poison::poison_isolated(sh, r, &lost);
        rep.poisoned += n;
        result = Ok(());
    }
    if result.is_err() {
        // The data is still on the device: nothing moved in the CPU view.
        for p in &plan.pages {
            r.states[p.idx].commit_isolated(p.prev, &sh.counters);
        }
        let n = plan.pages.len() as u64;
        rep.rolled_back += n;
        c.add(&c.rolled_back_pages, n);
        return;
    }
    let mut failed: Vec<usize> = Vec::new();
    let staged = plan
        .pages
        .iter()
        .filter(|p| matches!(p.prev, PageState::Device { staged: true, .. }));
    for (s, n) in runs(staged.map(|p| p.idx)) {
        failed.extend(return_cpu_pages(sh, r, s, n));
    }
    if let Some(bm) = &plan.bounce {
        for p in plan.pages.iter() {
            let Some(slot) = p.bounce else { continue };
            let src = bm.addr() + (slot * PAGE_SIZE) as u64;
            if sh
                .uffd
                .copy(r.addr_of(p.idx).0, src, PAGE_SIZE as u64, true)
                .is_err()
            {
                failed.push(p.idx);
            }
        }
    }
    let mut moved = 0u64;
    let mut freed = FreeBatch::new(&sh.devices);
    for p in &plan.pages {
        let PageState::Device { dev, page, .. } = p.prev else {
            continue;
        };
        if failed.contains(&p.idx) {
            // Data stays safely on the device.
            r.states[p.idx].commit_isolated(p.prev, &sh.counters);
            rep.rolled_back += 1;
            continue;
        }
        r.states[p.idx].commit_isolated(PageState::System, &sh.counters);
        freed.push(dev, page);
        moved += 1;
    }
    freed.flush();
    // The bounce buffer is spent: free it, and its charge, before anyone wakes.
    drop((plan.bounce, plan.bounce_charge));
    rep.migrated += moved;
    c.add(&c.to_system_pages, moved);
    c.add(&c.to_system_bytes, moved * PAGE_SIZE as u64);
    wake_runs(sh, r, plan.pages.iter().map(|p| p.idx));
}

/// Where an isolated device page's data goes back to: its staged page, or
/// its slot in the bounce buffer (`None` if it has neither).
fn back_dst(r: &RegionInner, p: &ToSystemPage, bounce: Option<&Arc<Mapping>>) -> Option<HostRef> {
    match (p.prev, p.bounce, bounce) {
        (PageState::Device { staged: true, .. }, _, _) => Some(HostRef {
            map: r.staging.clone(),
            off: p.idx * PAGE_SIZE,
        }),
        (PageState::Device { .. }, Some(slot), Some(bm)) => Some(HostRef {
            map: bm.clone(),
            off: slot * PAGE_SIZE,
        }),
        _ => None,
    }
}

/// Copies one isolated device page back into its staged page or bounce slot.
fn copy_one_back(
    sh: &Shared,
    r: &RegionInner,
    p: &ToSystemPage,
    bounce: Option<&Arc<Mapping>>,
) -> Result<(), DeviceError> {
    let PageState::Device { dev, page, .. } = p.prev else {
        return Ok(());
    };
    let dst =
        back_dst(r, p, bounce).ok_or_else(|| DeviceError::new("no bounce buffer for the page"))?;
    let job = CopyJob {
        ops: vec![CopyOp::ToHost {
            src: page,
            dst,
            npages: 1,
        }],
    };
    sh.devices[dev.0 as usize].copy_now(&job)
}

/// Wakes CPU threads waiting on faults in the given pages, one call per run.
fn wake_runs(sh: &Shared, r: &RegionInner, idx: impl Iterator<Item = usize>) {
    for (s, n) in runs(idx) {
        let _ = sh.uffd.wake(r.addr_of(s).0, (n * PAGE_SIZE) as u64);
    }
}

/// Brings the device-resident pages of `pages` (inside one block, whose lock
/// the caller holds) back to system memory now, copying on this thread;
/// pages on `except` stay where they are. Pages that cannot move stay on
/// their device (the caller sees them by their state).
pub(crate) fn pull_to_system(
    sh: &Shared,
    r: &RegionInner,
    pages: std::ops::Range<usize>,
    except: Option<DeviceId>,
    trigger: Trigger,
) {
    pull(sh, r, pages, |dev| Some(dev) != except, trigger, false);
}

/// Brings the pages of `pages` (inside one block, whose lock the caller
/// holds) that are on device `d` back to system memory now (evictions and
/// resets); returns what moved.
pub(crate) fn pull_from(
    sh: &Shared,
    r: &RegionInner,
    pages: std::ops::Range<usize>,
    d: DeviceId,
    trigger: Trigger,
) -> MigrateReport {
    pull(sh, r, pages, |dev| dev == d, trigger, false)
}

/// [`pull_to_system`] for a CPU fault window, which must be served: a page
/// whose copy back fails (retried alone) is poisoned instead of left on its
/// device, so the faulting thread gets SIGBUS rather than faulting forever,
/// and the bounce buffer may pass the memory limit; every other page of the
/// window migrates.
pub(crate) fn pull_for_cpu_fault(sh: &Shared, r: &RegionInner, pages: std::ops::Range<usize>) {
    super::ctx::past_limit(|| pull(sh, r, pages, |_| true, Trigger::CpuFault, true));
}

/// Pulls the pages of `pages` on the devices `which` accepts; emits the
/// migration events and returns the report.
fn pull(
    sh: &Shared,
    r: &RegionInner,
    pages: std::ops::Range<usize>,
    which: impl Fn(DeviceId) -> bool,
    trigger: Trigger,
    poison_on_failure: bool,
) -> MigrateReport {
    let b = pages.start / BLOCK_PAGES;
    let idxs: Vec<usize> = pages
        .filter(|&i| matches!(r.states[i].load(), PageState::Device { dev, .. } if which(dev)))
        .collect();
    let mut rep = MigrateReport {
        requested: idxs.len() as u64,
        ..Default::default()
    };
    let Some(&first) = idxs.first() else {
        return rep;
    };
    let from = r.location(first);
    let told = Announce::start(r, first, idxs.len(), from, Location::System, trigger);
    if let Some(mut p) = isolate_to_system(sh, r, b, &idxs, true, None, &mut rep) {
        p.poison_on_failure = poison_on_failure;
        finish_to_system(sh, r, p, trigger, &mut rep);
    }
    told.end(&rep);
    rep
}

/// Credits a report's skips to the counters (for migrations a caller asked for).
pub(crate) fn count_skips(sh: &Shared, rep: &MigrateReport) {
    let c = &sh.counters;
    c.add(&c.skipped_busy, rep.skipped_busy);
    c.add(&c.skipped_not_migratable, rep.skipped_not_migratable);
    c.add(&c.skipped_no_device_memory, rep.skipped_no_device_memory);
    c.add(&c.skipped_pinned, rep.skipped_pinned);
    c.add(&c.skipped_already_there, rep.already_there);
}

enum Plan<'a> {
    ToDevice(ToDevicePlan<'a>),
    ToSystem(ToSystemPlan<'a>),
}

/// Migrates pages `[first, first + n)` of `r` to `to`, keeping up to
/// `sh.pipeline_depth` blocks in flight.
pub(crate) fn migrate_range(
    sh: &Shared,
    r: &RegionInner,
    first: usize,
    n: usize,
    to: Location,
    trigger: Trigger,
) -> MigrateReport {
    let mut rep = MigrateReport::default();
    let events = &r.notifier.events;
    let from = || match to {
        Location::Device(_) => Location::System,
        Location::System => (first..first + n)
            .map(|k| r.location(k))
            .find(|l| *l != Location::System)
            .unwrap_or(Location::System),
    };
    let from = if events.is_active() {
        from()
    } else {
        Location::System
    };
    let told = Announce::start(r, first, n, from, to, trigger);
    pipeline(sh, r, first..first + n, to, None, trigger, &mut rep);
    told.end(&rep);
    rep
}

/// The pipelined migration loop every multi-block caller shares: blocks in
/// ascending order (their locks are taken in that order), each isolated and
/// its copy started, up to `pipeline_depth` blocks in flight before the
/// oldest is finished. `only_from` (to system only): move just the pages
/// held by that device, and count just those as requested; otherwise every
/// page of `pages` is requested, and pages already there are counted so.
pub(crate) fn pipeline(
    sh: &Shared,
    r: &RegionInner,
    pages: std::ops::Range<usize>,
    to: Location,
    only_from: Option<DeviceId>,
    trigger: Trigger,
    rep: &mut MigrateReport,
) {
    let mut q: VecDeque<Plan<'_>> = VecDeque::new();
    let finish = |p: Plan<'_>, rep: &mut MigrateReport| match p {
        Plan::ToDevice(p) => drop(finish_to_device(sh, r, p, rep)),
        Plan::ToSystem(p) => finish_to_system(sh, r, p, trigger, rep),
    };
    let mut i = pages.start;
    while i < pages.end {
        let b = i / BLOCK_PAGES;
        let hi = pages.end.min((b + 1) * BLOCK_PAGES);
        let plan = match to {
            Location::Device(d) => {
                rep.requested += (hi - i) as u64;
                isolate_to_device(sh, r, b, i..hi, d, trigger, rep).map(Plan::ToDevice)
            }
            Location::System => {
                let guard = r.blocks[b].migrate.lock();
                let mut idxs = Vec::new();
                for k in i..hi {
                    match (r.states[k].load(), only_from) {
                        (PageState::Device { dev, .. }, Some(d)) if dev != d => {}
                        (PageState::Device { .. }, _) => idxs.push(k),
                        (_, Some(_)) => {}
                        (PageState::Poisoned | PageState::Hole, None) => {
                            rep.skipped_not_migratable += 1
                        }
                        (_, None) => rep.already_there += 1,
                    }
                }
                rep.requested += match only_from {
                    Some(_) => idxs.len(),
                    None => hi - i,
                } as u64;
                isolate_to_system(sh, r, b, &idxs, false, Some(guard), rep).map(Plan::ToSystem)
            }
        };
        if let Some(p) = plan {
            q.push_back(p);
        }
        while q.len() > sh.pipeline_depth {
            if let Some(p) = q.pop_front() {
                finish(p, rep);
            }
        }
        i = hi;
    }
    while let Some(p) = q.pop_front() {
        finish(p, rep);
    }
}
