//! Loom models of the page protocol (`cfg(all(test, loom))`).
//!
//! Run them with
//!
//! ```text
//! CARGO_TARGET_DIR=target-loom LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" \
//!     cargo test --release -p svmem --lib loom_models
//! ```
//!
//! (a few hundred executions per model at 3 preemptions: well under a second
//! once built; `-- --nocapture` prints the count per model). Each model is
//! also checked to fail when the protocol is broken: without the drain in
//! `invalidate`, or with `seq` bumped before the PTEs are cleared, models (4)
//! and (5) fail; with `fill_stale_hole` filling whatever the state, model (1)
//! fails; the old unlocked decision is kept as a `should_panic` model, and
//! so is a relocation (mremap) that copies states without the block locks.
//!
//! What is real and what is modelled:
//! - **Real**: the page-state words ([`StateCell`] and its named transitions),
//!   the block's `migrate` mutex, `access` RwLock, `seq` and `mapped` words
//!   (all through `crate::sync`, so loom owns them), [`RegionInner`] itself
//!   (built over two small anonymous mappings that nothing touches), its
//!   [`RegionInner::invalidate`], and the CPU-fault decisions
//!   [`RegionInner::window_needs_work`] and [`RegionInner::fill_stale_hole`].
//! - **Modelled** (syscalls and copy engines cannot run under loom): the
//!   kernel's page tables of the managed view and the staging mirror
//!   ([`Kernel`]), device memory ([`DevMem`]), and the steps of the paths that
//!   take `Shared` (migrations, CPU fault resolution, the device-fault map
//!   step, eviction, a lane's translation), each written as the same sequence
//!   of real transitions, in the same order, as the function it names.
//!
//! The model's assumption about the kernel: each uffd ioctl (`UFFDIO_MOVE`,
//! `UFFDIO_ZEROPAGE`, `UFFDIO_COPY`) on one page is atomic with respect to the
//! others and to a CPU access (the kernel does it under the page-table lock),
//! so the model runs each as one critical section of [`Kernel`]. A CPU access
//! to an absent page faults; the faulting thread then runs the resolution
//! itself (standing for the reader serving its message: several resolutions
//! at once is a superset of the one reader's behaviours, since every step but
//! the first hint runs under the block lock).
//!
//! Every model ends with [`World::check_quiescent`]: each page has exactly one
//! authoritative copy (a `System` page is present in the CPU view and nowhere
//! else, a `Device` page is absent from the CPU view and held by its device
//! page, nothing is left `Migrating`), holding the last value written (no lost
//! write), every valid device PTE points where the page is, and no device page
//! leaks.

use std::ops::Range;

use loom::sync::Arc;
use loom::thread;

use crate::addr::{DevPage, DeviceId, BLOCK_PAGES, PAGE_SIZE};
use crate::mm::space::{Pte, RegionInner};
use crate::mm::state::PageState;
use crate::observe::events::UnmapTrigger;
use crate::observe::notify::Notifier;
use crate::sync::{Mutex, Ordering};
use crate::sys::{Mapping, Prot};

/// The device of every model (lanes, faults, migrations from system).
const D: DeviceId = DeviceId(0);
/// The peer device of the peer-migration model (8 pages at most per model).
const D1: DeviceId = DeviceId(1);
/// Pages a model's region may have.
const MAX_MODEL_PAGES: usize = 8;

/// Device page given to managed page `i` (fixed, so that a leak is visible).
fn dev_page(i: usize) -> DevPage {
    DevPage(4 + i as u32)
}

/// Device page of the peer device [`D1`] given to managed page `i` (one
/// device memory holds both devices' pages, apart).
fn peer_page(i: usize) -> DevPage {
    DevPage((4 + MAX_MODEL_PAGES + i) as u32)
}

/// An ioctl refused: the destination is present, or the source is absent.
#[derive(Debug, PartialEq, Eq)]
enum Errno {
    Eexist,
    Enoent,
}

/// The kernel's page tables for one region: per page, the managed view's
/// content (`None`: absent, a CPU touch faults) and the staging mirror's.
#[derive(Default)]
struct Views {
    managed: Vec<Option<u64>>,
    staging: Vec<Option<u64>>,
}

struct Kernel(Mutex<Views>);

impl Kernel {
    /// `UFFDIO_ZEROPAGE` of one managed page.
    fn zeropage(&self, i: usize) -> Result<(), Errno> {
        self.copy(i, 0)
    }

    /// `UFFDIO_COPY` of one page into the managed view.
    fn copy(&self, i: usize, v: u64) -> Result<(), Errno> {
        let mut k = self.0.lock();
        if k.managed[i].is_some() {
            return Err(Errno::Eexist);
        }
        k.managed[i] = Some(v);
        Ok(())
    }

    /// `UFFDIO_MOVE` managed -> staging (`take_cpu_pages`).
    fn move_out(&self, i: usize) -> Result<(), Errno> {
        let mut k = self.0.lock();
        if k.staging[i].is_some() {
            return Err(Errno::Eexist);
        }
        let v = k.managed[i].take().ok_or(Errno::Enoent)?;
        k.staging[i] = Some(v);
        Ok(())
    }

    /// `UFFDIO_MOVE` staging -> managed (`return_cpu_pages`).
    fn move_back(&self, i: usize) -> Result<(), Errno> {
        let mut k = self.0.lock();
        if k.managed[i].is_some() {
            return Err(Errno::Eexist);
        }
        let v = k.staging[i].take().ok_or(Errno::Enoent)?;
        k.managed[i] = Some(v);
        Ok(())
    }

    /// A CPU load or store: `None` if the page is absent (a fault).
    fn cpu_access(&self, i: usize, write: Option<u64>) -> Option<u64> {
        let mut k = self.0.lock();
        let slot = k.managed[i].as_mut()?;
        if let Some(v) = write {
            *slot = v;
        }
        Some(*slot)
    }

    fn staging(&self, i: usize) -> Option<u64> {
        self.0.lock().staging[i]
    }
    fn set_staging(&self, i: usize, v: Option<u64>) {
        self.0.lock().staging[i] = v;
    }
}

/// Device memory: `None` is a free page. Copy engines and lanes each touch it
/// in one critical section per page.
struct DevMem(Mutex<Vec<Option<u64>>>);

impl DevMem {
    fn alloc(&self, p: DevPage) {
        let mut m = self.0.lock();
        assert!(
            m[p.0 as usize].is_none(),
            "device page {p:?} allocated twice"
        );
        m[p.0 as usize] = Some(0xdead);
    }
    fn free(&self, p: DevPage) {
        let mut m = self.0.lock();
        assert!(
            m[p.0 as usize].take().is_some(),
            "device page {p:?} freed twice"
        );
    }
    fn get(&self, p: DevPage) -> Option<u64> {
        self.0.lock()[p.0 as usize]
    }
    fn set(&self, p: DevPage, v: u64) {
        let mut m = self.0.lock();
        let slot = m[p.0 as usize]
            .as_mut()
            .expect("write to a free device page");
        *slot = v;
    }
}

/// One region of a few pages in one block, one device.
struct World {
    r: RegionInner,
    k: Kernel,
    dev: DevMem,
}

/// A page's starting point.
#[derive(Clone, Copy)]
enum Init {
    Unpopulated,
    /// In the CPU view with this value; `mapped`: device 0 holds a
    /// `Pte::System` for it.
    System {
        v: u64,
        mapped: bool,
    },
    /// On device 0 (page [`dev_page`]) with this value, staged, not mapped.
    Device {
        v: u64,
    },
}

impl World {
    /// `granularity`: log2 of the CPU fault window, in pages.
    fn new(init: &[Init], granularity: u8) -> Arc<World> {
        let n = init.len();
        assert!(n <= MAX_MODEL_PAGES);
        let map = || Mapping::anonymous(n * PAGE_SIZE, Prot::ReadWrite, false).expect("mmap");
        let r = RegionInner::new(
            map(),
            map(),
            2,
            granularity,
            std::sync::Arc::new(Notifier::new(2)),
        );
        let mut views = Views {
            managed: vec![None; n],
            staging: vec![None; n],
        };
        let mut dev = vec![None; 4 + 2 * MAX_MODEL_PAGES];
        for (i, s) in init.iter().enumerate() {
            let cell = &r.states[i];
            match *s {
                Init::Unpopulated => {}
                Init::System { v, mapped } => {
                    cell.populate().expect("fresh");
                    views.managed[i] = Some(v);
                    if mapped {
                        r.ptes[0][i].store(Pte::System { write: true }.encode(), Ordering::Relaxed);
                        r.blocks[i / BLOCK_PAGES]
                            .mapped
                            .fetch_or(1, Ordering::Relaxed);
                    }
                }
                Init::Device { v } => {
                    cell.populate().expect("fresh");
                    cell.isolate(PageState::System).expect("system");
                    let to = PageState::Device {
                        dev: D,
                        page: dev_page(i),
                        staged: true,
                    };
                    cell.commit(to).expect("isolated");
                    views.staging[i] = Some(0xdead);
                    dev[dev_page(i).0 as usize] = Some(v);
                }
            }
        }
        Arc::new(World {
            r,
            k: Kernel(Mutex::new(views)),
            dev: DevMem(Mutex::new(dev)),
        })
    }

    /// With every thread joined: one authoritative copy of each page, holding
    /// `expect[i]`; device PTEs point where the pages are; no device page
    /// leaked.
    fn check_quiescent(&self, expect: &[u64]) {
        self.check_region(&self.r, expect);
    }

    /// [`World::check_quiescent`] for `r`, which holds the world's pages
    /// (the world's region, or the one that took them over in an mremap).
    fn check_region(&self, r: &RegionInner, expect: &[u64]) {
        let mut owned = Vec::new();
        for (i, &want) in expect.iter().enumerate() {
            let state = r.states[i].load();
            let (managed, staging) = {
                let k = self.k.0.lock();
                (k.managed[i], k.staging[i])
            };
            let pte = Pte::decode(r.ptes[0][i].load(Ordering::Acquire));
            let peer_pte = Pte::decode(r.ptes[1][i].load(Ordering::Acquire));
            if !matches!(state, PageState::Device { dev: D1, .. }) {
                assert_eq!(peer_pte, None, "page {i}: {state:?}, peer PTE {peer_pte:?}");
            }
            match state {
                PageState::System => {
                    assert_eq!(managed, Some(want), "page {i}: System, CPU view wrong");
                    assert_eq!(staging, None, "page {i}: System but a staged copy");
                    assert!(
                        matches!(pte, None | Some(Pte::System { .. })),
                        "page {i}: System, PTE {pte:?}"
                    );
                }
                PageState::Device { dev, page, staged } => {
                    let (pte, other) = match dev {
                        D => (pte, None),
                        D1 => (peer_pte, pte),
                        _ => panic!("page {i}: on unknown device {dev}"),
                    };
                    assert_eq!(other, None, "page {i}: on {dev}, the other device maps it");
                    assert_eq!(
                        managed, None,
                        "page {i}: on the device but present in the CPU view \
                         (two copies; the CPU reads {managed:?} for ever)"
                    );
                    assert_eq!(self.dev.get(page), Some(want), "page {i}: device data");
                    assert_eq!(staging.is_some(), staged, "page {i}: staged flag");
                    assert!(
                        match pte {
                            None => true,
                            Some(Pte::Device { page: p, .. }) => p == page,
                            Some(Pte::System { .. }) => false,
                        },
                        "page {i}: Device({page:?}), PTE {pte:?}"
                    );
                    owned.push(page);
                }
                PageState::Unpopulated => {
                    assert_eq!(want, 0, "page {i}: data lost (Unpopulated)");
                    assert_eq!(managed, None, "page {i}: Unpopulated but present");
                    assert_eq!(pte, None, "page {i}: Unpopulated but mapped");
                }
                PageState::Hole => {
                    assert_eq!(managed, None, "page {i}: a hole but present");
                    assert_eq!(staging, None, "page {i}: a hole but a staged copy");
                    assert_eq!(pte, None, "page {i}: a hole but mapped");
                }
                s => panic!("page {i}: left {s:?}"),
            }
        }
        let m = self.dev.0.lock();
        for (p, slot) in m.iter().enumerate() {
            assert_eq!(
                slot.is_some(),
                owned.contains(&DevPage(p as u32)),
                "device page {p}: allocated iff a page lives there"
            );
        }
    }
}

// ---- The paths, step by step --------------------------------------------

/// A migration of `pages` (one block) to device 0, as `isolate_to_device`
/// then `finish_to_device` take it: lock; collect (`System`: copy,
/// `Unpopulated`: zero-fill); allocate; `invalidate`; isolate; MOVE the
/// pages with data into staging (ENOENT: a hole, zero-fill it; refused:
/// back to `System`); copy; commit `Device` and write the PTE, or on a failed
/// copy MOVE back (COPY fallback), commit the old states, free.
fn to_device(w: &World, pages: Range<usize>, copy_ok: bool) {
    let r = &w.r;
    let b = pages.start / BLOCK_PAGES;
    let _guard = r.blocks[b].migrate.lock();
    // (idx, seen state, has data)
    let mut plan: Vec<(usize, PageState, bool)> = Vec::new();
    for i in pages {
        match r.states[i].load() {
            s @ PageState::System => plan.push((i, s, true)),
            s @ PageState::Unpopulated => plan.push((i, s, false)),
            _ => {}
        }
    }
    for p in &plan {
        w.dev.alloc(dev_page(p.0));
    }
    r.invalidate(b, plan.iter().map(|p| p.0), UnmapTrigger::MmuNotifyMigrate);
    plan.retain(|&(i, seen, _)| {
        let ok = r.states[i].isolate(seen).is_ok();
        if !ok {
            w.dev.free(dev_page(i));
        }
        ok
    });
    plan.retain_mut(|p| {
        if !p.2 {
            return true;
        }
        match w.k.move_out(p.0) {
            Ok(()) => true,
            Err(Errno::Enoent) => {
                p.2 = false;
                true
            }
            Err(Errno::Eexist) => {
                let _ = r.states[p.0].commit(PageState::System);
                w.dev.free(dev_page(p.0));
                false
            }
        }
    });
    // The copy engine: staging -> device (or a fill).
    if copy_ok {
        for &(i, _, data) in &plan {
            let v = if data {
                w.k.staging(i).expect("staged")
            } else {
                0
            };
            w.dev.set(dev_page(i), v);
        }
        for &(i, _, data) in &plan {
            let page = dev_page(i);
            let to = PageState::Device {
                dev: D,
                page,
                staged: data,
            };
            r.states[i].commit(to).expect("isolated by us");
            r.ptes[0][i].store(
                Pte::Device { page, write: true }.encode(),
                Ordering::Release,
            );
        }
        if !plan.is_empty() {
            r.blocks[b].mapped.fetch_or(1, Ordering::AcqRel);
        }
    } else {
        for &(i, _, data) in &plan {
            if data && w.k.move_back(i).is_err() {
                let v = w.k.staging(i).expect("staged");
                w.k.copy(i, v).expect("rollback could not restore the page");
                w.k.set_staging(i, None);
            }
        }
        for &(i, _, data) in &plan {
            let back = if data {
                PageState::System
            } else {
                PageState::Unpopulated
            };
            r.states[i].commit(back).expect("isolated by us");
            w.dev.free(dev_page(i));
        }
    }
}

/// A migration of `pages` (one block) to the peer device [`D1`], as
/// `isolate_to_device` then `finish_to_device` take pages found on device 0
/// over the peer path: lock; collect `Device` pages of device 0; allocate
/// peer pages; `invalidate`; isolate from the state seen; the peer copy
/// engine copies device page to device page (no CPU view, no staging: the
/// staged flag is carried over); commit `Device` on the peer and write its
/// PTE, free the old page; or, on a failed copy, commit the old state and
/// free the new page.
fn peer_to_d1(w: &World, pages: Range<usize>, copy_ok: bool) {
    let r = &w.r;
    let b = pages.start / BLOCK_PAGES;
    let _guard = r.blocks[b].migrate.lock();
    let mut plan: Vec<(usize, PageState)> = pages
        .filter_map(|i| match r.states[i].load() {
            s @ PageState::Device { dev: D, .. } => Some((i, s)),
            _ => None,
        })
        .collect();
    for p in &plan {
        w.dev.alloc(peer_page(p.0));
    }
    r.invalidate(b, plan.iter().map(|p| p.0), UnmapTrigger::MmuNotifyMigrate);
    plan.retain(|&(i, seen)| {
        let ok = r.states[i].isolate(seen).is_ok();
        if !ok {
            w.dev.free(peer_page(i));
        }
        ok
    });
    for &(i, prev) in &plan {
        let PageState::Device { page, staged, .. } = prev else {
            unreachable!()
        };
        if copy_ok {
            let v = w.dev.get(page).expect("device page of a Device page");
            w.dev.set(peer_page(i), v);
            let to = PageState::Device {
                dev: D1,
                page: peer_page(i),
                staged,
            };
            r.states[i].commit(to).expect("isolated by us");
            r.ptes[1][i].store(
                Pte::Device {
                    page: peer_page(i),
                    write: true,
                }
                .encode(),
                Ordering::Release,
            );
            r.blocks[b].mapped.fetch_or(2, Ordering::AcqRel);
            w.dev.free(page);
        } else {
            r.states[i].commit(prev).expect("isolated by us");
            w.dev.free(peer_page(i));
        }
    }
}

/// The program munmaps page `i` (the kernel drops it from the managed view
/// first), then the reader handles the UNMAP event as `cpu::reader::unmap`
/// does: lock the block, invalidate, `unmap` the state (`Hole`), free the
/// device page and drop the staged copy of a page that was on the device.
fn munmap_and_unmap_event(w: &World, i: usize) {
    w.k.0.lock().managed[i] = None;
    let r = &w.r;
    let _guard = r.blocks[i / BLOCK_PAGES].migrate.lock();
    r.invalidate(i / BLOCK_PAGES, i..i + 1, UnmapTrigger::UnmapFromCpu);
    let left = r.states[i]
        .unmap()
        .expect("no page is Migrating under the block lock");
    if let PageState::Device { page, staged, .. } = left {
        w.dev.free(page);
        if staged {
            w.k.set_staging(i, None);
        }
    }
}

/// The program moves the whole region with mremap (the kernel carries the
/// managed view's page tables along: in the model the views are indexed by
/// page, so they serve the new address as they are), then the reader
/// handles the REMAP event as `mm::remap::relocate` does: every block lock
/// (ascending), invalidate every block, a new record from the real
/// [`RegionInner::relocated`], the old pages become holes. `locked: false`
/// is the broken variant that copies the states without the locks.
fn relocate(w: &World, locked: bool) -> RegionInner {
    let r = &w.r;
    let guards: Vec<_> = match locked {
        true => r.blocks.iter().map(|b| b.migrate.lock()).collect(),
        false => Vec::new(),
    };
    for b in 0..r.blocks.len() {
        r.invalidate(b, r.block_pages(b), UnmapTrigger::UnmapFromCpu);
    }
    let at = r.managed.addr();
    let new = r.relocated(r.managed.moved(at).expect("moved"));
    for k in 0..r.npages {
        let _ = r.states[k].unmap();
    }
    r.freed.store(true, Ordering::Release);
    drop(guards);
    new
}

/// The device-resident pages among `idxs` (one block, whose lock the caller
/// holds) back to system memory, as `isolate_to_system` then
/// `finish_to_system` take them (staged pages only): `invalidate`; isolate;
/// copy device -> staged page; MOVE back (refused: COPY, drop the staged
/// page; refused too: stays `Device`); commit `System`; free.
fn to_system_locked(w: &World, b: usize, idxs: Range<usize>) -> usize {
    let r = &w.r;
    let mut pages: Vec<(usize, PageState)> = idxs
        .filter_map(|i| match r.states[i].load() {
            s @ PageState::Device { .. } => Some((i, s)),
            _ => None,
        })
        .collect();
    if pages.is_empty() {
        return 0;
    }
    r.invalidate(b, pages.iter().map(|p| p.0), UnmapTrigger::MmuNotifyMigrate);
    pages.retain(|&(i, prev)| r.states[i].isolate(prev).is_ok());
    for &(i, prev) in &pages {
        let PageState::Device { page, staged, .. } = prev else {
            unreachable!()
        };
        assert!(staged, "the models stage every device page");
        let v = w.dev.get(page).expect("device page of a Device page");
        w.k.set_staging(i, Some(v));
    }
    let mut moved = 0;
    for &(i, prev) in &pages {
        let PageState::Device { page, .. } = prev else {
            unreachable!()
        };
        let back = w.k.move_back(i).is_ok() || {
            let v = w.k.staging(i).expect("staged");
            let ok = w.k.copy(i, v).is_ok();
            if ok {
                w.k.set_staging(i, None);
            }
            ok
        };
        if back {
            r.states[i]
                .commit(PageState::System)
                .expect("isolated by us");
            w.dev.free(page);
            moved += 1;
        } else {
            r.states[i].commit(prev).expect("isolated by us");
        }
    }
    moved
}

/// `populate` without huge pages: each unpopulated page of `[lo, hi)` gets
/// a ZEROPAGE (read) or a COPY of zeros (write); EEXIST counts as done;
/// then `Unpopulated -> System`. The caller holds the block lock.
fn populate(w: &World, lo: usize, hi: usize, _write: bool) {
    for i in lo..hi {
        if w.r.states[i].load() != PageState::Unpopulated {
            continue;
        }
        let _ = w.k.zeropage(i);
        let _ = w.r.states[i].populate();
    }
}

/// The stale-fault step `resolve` takes when its window needs no work.
type StaleStep = fn(&RegionInner, usize, &dyn Fn()) -> bool;

/// The real step: [`RegionInner::fill_stale_hole`].
fn fill_stale_hole(r: &RegionInner, idx: usize, f: &dyn Fn()) -> bool {
    r.fill_stale_hole(idx, f)
}

/// The decision before the fix of race 1 (commit 490477a): a zero page into
/// the faulting page, no lock, whatever the state (kept only to show that
/// the models catch it).
fn fill_stale_hole_unlocked(_r: &RegionInner, _idx: usize, f: &dyn Fn()) -> bool {
    f();
    true
}

/// `cpu::reader::resolve` for a fault on page `idx` (no poison, no
/// fault-ahead): the unlocked hint; if the window needs no work, the stale
/// step; else lock, pull the window's device pages, populate, unlock.
fn resolve(w: &World, idx: usize, write: bool, stale: StaleStep) {
    let r = &w.r;
    let (lo, hi) = r.fault_window(idx);
    if !r.window_needs_work(lo, hi) {
        stale(r, idx, &|| {
            let _ = w.k.zeropage(idx);
        });
        return;
    }
    let b = lo / BLOCK_PAGES;
    let _guard = r.blocks[b].migrate.lock();
    to_system_locked(w, b, lo..hi);
    populate(w, lo, hi, write);
}

/// A CPU load (`write: None`) or store of page `i`: a fault on an absent page
/// is resolved and the access retried (the kernel's retry after the wake).
fn cpu_access(w: &World, i: usize, write: Option<u64>) -> u64 {
    for _ in 0..3 {
        if let Some(v) = w.k.cpu_access(i, write) {
            return v;
        }
        resolve(w, i, write.is_some(), fill_stale_hole);
    }
    panic!("CPU fault on page {i} not served after 3 tries");
}

/// `migrate_range(.., Location::System)` for `pages` (one block), as
/// `pipeline` takes it: lock, then [`to_system_locked`].
fn migrate_to_system(w: &World, pages: Range<usize>) {
    let b = pages.start / BLOCK_PAGES;
    let _guard = w.r.blocks[b].migrate.lock();
    to_system_locked(w, b, pages);
}

/// A lane's TLB entry for one page: (block `seq` it was filled under, PTE).
type Tlb = Option<(u32, u32)>;

/// One lane access to page `k` as `gpu::kernel` `Lane::run` takes it: hold
/// `access` shared; read `seq`; translate through the TLB if its entry was
/// filled under this `seq`, else through the PTE (caching a valid one); use
/// the translation. Returns the value read or written, `None` if there was
/// no translation (the lane would post a fault). Checks, while the
/// translation is in use, that it points where the page is.
fn lane_access(w: &World, tlb: &mut Tlb, k: usize, write: Option<u64>) -> Option<u64> {
    let r = &w.r;
    let blk = &r.blocks[k / BLOCK_PAGES];
    let _guard = blk.access.read();
    let seq = blk.seq.load(Ordering::Acquire);
    let word = match *tlb {
        Some((s, word)) if s == seq => word,
        _ => {
            let word = r.ptes[0][k].load(Ordering::Acquire);
            if word != 0 {
                *tlb = Some((seq, word));
            }
            word
        }
    };
    let Some(pte) = Pte::decode(word) else {
        *tlb = None;
        return None;
    };
    let state = r.states[k].load();
    match pte {
        Pte::System { .. } => {
            assert_eq!(
                state,
                PageState::System,
                "lane used a System translation of a {state:?} page"
            );
            let v = w.k.cpu_access(k, write);
            assert!(v.is_some(), "lane touched an absent managed page");
            v
        }
        Pte::Device { page, .. } => {
            assert!(
                matches!(state, PageState::Device { dev, page: p, .. } if dev == D && p == page),
                "lane used a translation to device page {page:?} of a {state:?} page"
            );
            // (A lane of device 0 never holds a peer page: no peer mapping.)
            if let Some(v) = write {
                w.dev.set(page, v);
            }
            Some(w.dev.get(page).expect("lane touched a free device page"))
        }
    }
}

/// Step 3 of `gpu::fault::service_block` and `gpu::map::map_locked` for
/// `[lo, hi)`: read `seq`, lock, retry if an invalidation overtook us, else
/// populate and write a PTE for each page where it is (`System`: in place;
/// on device 0: its device page), mark the block mapped.
fn device_fault_map(w: &World, lo: usize, hi: usize) -> bool {
    let r = &w.r;
    let blk = &r.blocks[lo / BLOCK_PAGES];
    for _ in 0..2 {
        let seq = blk.seq.load(Ordering::Acquire);
        let guard = blk.migrate.lock();
        if blk.seq.load(Ordering::Acquire) != seq {
            drop(guard);
            continue;
        }
        populate(w, lo, hi, false);
        for k in lo..hi {
            let pte = match r.states[k].load() {
                PageState::System => Pte::System { write: true },
                PageState::Device { dev, page, .. } if dev == D => {
                    Pte::Device { page, write: true }
                }
                _ => continue,
            };
            r.ptes[0][k].store(pte.encode(), Ordering::Release);
        }
        blk.mapped.fetch_or(1, Ordering::AcqRel);
        return true;
    }
    false
}

/// `pressure::evict::step` on block `b`: try-lock (busy: not a victim); a
/// device access in progress: not now; else pull device 0's pages back.
fn evict_step(w: &World, b: usize) -> usize {
    let r = &w.r;
    let blk = &r.blocks[b];
    let Some(_guard) = blk.migrate.try_lock() else {
        return 0;
    };
    if blk.access.try_write().is_none() {
        return 0;
    }
    to_system_locked(w, b, r.block_pages(b))
}

/// Runs `f` under loom, with at most `LOOM_MAX_PREEMPTIONS` (default here: 3)
/// preemptions per execution.
fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    b.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "explored {} executions",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

// ---- The models ----------------------------------------------------------

/// Model (1), race 1 on the fixed code: the reader serves a stale fault on a
/// `System` page (its window needs no work, so it takes the stale step)
/// while a migration moves the page to the device. The stale step's zero
/// page goes in only under the block lock and only on a `System` page, so it
/// never fills the hole the migration's MOVE leaves. Invariant: exactly one
/// authoritative copy (the device's), no CPU view of zeros, data kept.
#[test]
fn loom_stale_fault_vs_to_device() {
    stale_fault_vs_to_device(fill_stale_hole);
}

/// Model (1) with the stale step given: one `System` page, a reader taking
/// the stale step, a migration to the device.
fn stale_fault_vs_to_device(stale: StaleStep) {
    check(move || {
        let w = World::new(
            &[Init::System {
                v: 42,
                mapped: false,
            }],
            0,
        );
        let w2 = w.clone();
        let m = thread::spawn(move || to_device(&w2, 0..1, true));
        resolve(&w, 0, false, stale);
        m.join().expect("migration");
        w.check_quiescent(&[42]);
    });
}

/// Model (1) on the old decision (before 490477a): the stale step fills
/// the page with a zero page without the block lock. Loom finds race 1: the
/// reader sees `System`, the migration isolates the page and MOVEs it into
/// staging, the zero page fills the hole, the migration commits `Device`:
/// two copies, the CPU reads zeros for ever. Must fail.
#[test]
#[should_panic(expected = "on the device but present in the CPU view")]
fn loom_stale_fault_vs_to_device_old_decision_finds_race_1() {
    stale_fault_vs_to_device(fill_stale_hole_unlocked);
}

/// Model (2): a CPU read fault on a device page (window of two pages, the
/// other unpopulated) against an API migration of the window to system.
/// Whichever locks first moves the page back; the other finds nothing to
/// pull (or takes the stale step). Invariants: one copy, the device's data
/// back in the CPU view, the device page freed once, the read sees it.
#[test]
fn loom_cpu_fault_vs_to_system() {
    check(|| {
        let w = World::new(&[Init::Device { v: 42 }, Init::Unpopulated], 1);
        let w2 = w.clone();
        let m = thread::spawn(move || migrate_to_system(&w2, 0..2));
        assert_eq!(cpu_access(&w, 0, None), 42);
        m.join().expect("migration");
        let page1 = w.r.states[1].load();
        assert!(matches!(page1, PageState::System | PageState::Unpopulated));
        w.check_quiescent(&[42, 0]);
    });
}

/// Model (3): two CPU faults on one window (a device page and an
/// unpopulated page), each thread storing to its page once served. One
/// resolution serves the whole window; the other sees a stale or a
/// half-served window. Invariant: no lost write (neither store is
/// overwritten by the other fault's zero-fill or pull).
#[test]
fn loom_two_cpu_faults_one_window() {
    check(|| {
        let w = World::new(&[Init::Device { v: 42 }, Init::Unpopulated], 1);
        let w2 = w.clone();
        let t = thread::spawn(move || {
            cpu_access(&w2, 1, Some(7));
        });
        assert_eq!(cpu_access(&w, 0, None), 42);
        cpu_access(&w, 0, Some(5));
        t.join().expect("second fault");
        w.check_quiescent(&[5, 7]);
    });
}

/// Model (4): a device fault on a page of its own device (unmapped) against
/// an eviction of the block. The fault maps the page where it is under the
/// block lock (device page or, after the eviction, system memory in place);
/// eviction only try-locks. Then a lane reads through the mapping.
/// Invariants: no stale translation used (the lane's translation points
/// where the page is while it uses it), one copy, data kept, the device page
/// freed only once nothing maps it.
#[test]
fn loom_device_fault_vs_eviction() {
    check(|| {
        let w = World::new(&[Init::Device { v: 42 }], 0);
        let w2 = w.clone();
        let e = thread::spawn(move || {
            evict_step(&w2, 0);
        });
        device_fault_map(&w, 0, 1);
        let mut tlb = None;
        if let Some(v) = lane_access(&w, &mut tlb, 0, None) {
            assert_eq!(v, 42);
        }
        e.join().expect("eviction");
        w.check_quiescent(&[42]);
    });
}

/// Model (5): invalidation against commit. A lane holding a cached
/// translation of a mapped `System` page (TLB entry tagged with the block's
/// `seq`) writes through it, then reads through its TLB, while a migration
/// to the device invalidates (clears the PTE, bumps `seq`, drains `access`),
/// isolates, MOVEs, copies and commits. Invariants: the lane never uses a
/// translation to memory the page no longer occupies (checked under its
/// `access` guard), its write is not lost, one copy.
#[test]
fn loom_invalidate_vs_commit() {
    check(|| {
        let w = World::new(
            &[Init::System {
                v: 42,
                mapped: true,
            }],
            0,
        );
        let mut tlb = None;
        // A first access caches the translation (no concurrency yet).
        assert_eq!(lane_access(&w, &mut tlb, 0, None), Some(42));
        let w2 = w.clone();
        let m = thread::spawn(move || to_device(&w2, 0..1, true));
        let wrote = lane_access(&w, &mut tlb, 0, Some(43)).is_some();
        if let Some(v) = lane_access(&w, &mut tlb, 0, None) {
            assert_eq!(v, if wrote { 43 } else { 42 });
        }
        m.join().expect("migration");
        w.check_quiescent(&[if wrote { 43 } else { 42 }]);
    });
}

/// Model (6): a migration to the device whose copy fails (a `System` page
/// and an unpopulated one) rolls back, against a CPU write fault on the
/// unpopulated page. The rollback MOVEs the data back and restores both
/// states under the block lock; the fault populates the page before or
/// after, and a store that finds the page isolated faults again and waits.
/// Invariants: no lost write, the rollback restores the page (its MOVE or
/// COPY back is never refused by a page the fault put there), one copy.
#[test]
fn loom_failed_copy_rollback_vs_cpu_fault() {
    check(|| {
        let w = World::new(
            &[
                Init::System {
                    v: 42,
                    mapped: false,
                },
                Init::Unpopulated,
            ],
            1,
        );
        let w2 = w.clone();
        let m = thread::spawn(move || to_device(&w2, 0..2, false));
        cpu_access(&w, 1, Some(9));
        m.join().expect("migration");
        w.check_quiescent(&[42, 9]);
    });
}

/// Model (7): the program unmaps a page (UNMAP event) while a migration
/// takes it to the device. Whichever holds the block lock first, the page
/// ends a `Hole`: no device page leaked, no staged copy, no translation,
/// nothing present in the CPU view (a MOVE from the unmapped page finds
/// nothing and the migration zero-fills, then the event frees it).
#[test]
fn loom_unmap_vs_to_device() {
    check(|| {
        let w = World::new(
            &[Init::System {
                v: 42,
                mapped: true,
            }],
            0,
        );
        let w2 = w.clone();
        let m = thread::spawn(move || to_device(&w2, 0..1, true));
        munmap_and_unmap_event(&w, 0);
        m.join().expect("migration");
        w.check_quiescent(&[0]);
    });
}

/// Model (8): the program moves the region with mremap (REMAP event) while
/// a migration takes its page to the device. Whichever holds the block lock
/// first, the new record holds the one authoritative copy (on the device
/// if the migration went first, in the CPU view otherwise: a migration that
/// finds the old record's page a hole moves nothing) and the old record is
/// all holes.
#[test]
fn loom_relocate_vs_to_device() {
    relocate_vs_to_device(true);
}

fn relocate_vs_to_device(locked: bool) {
    check(move || {
        let w = World::new(
            &[Init::System {
                v: 42,
                mapped: true,
            }],
            0,
        );
        let w2 = w.clone();
        let m = thread::spawn(move || to_device(&w2, 0..1, true));
        let new = relocate(&w, locked);
        m.join().expect("migration");
        assert_eq!(
            w.r.states[0].load(),
            PageState::Hole,
            "the old record keeps a page"
        );
        w.check_region(&new, &[42]);
    });
}

/// Model (8) broken: the states copied without the block locks. Loom finds
/// the migration's page copied while `Migrating` (or the commit landing on
/// the old record): must fail.
#[test]
#[should_panic(expected = "the old record keeps a page")]
fn loom_relocate_unlocked_vs_to_device_fails() {
    relocate_vs_to_device(false);
}

/// Model (9): a peer migration (device 0 to device 1, device to device)
/// against a CPU read fault on the same page and a lane of device 0 that
/// mapped the page and reads through its TLB. Whichever takes the block
/// lock first wins: the CPU pulls the page home from whichever device holds
/// it, or the peer move finds it in system memory and does nothing.
/// Invariants: the lane never reads through a translation to a page that
/// moved (its device page freed and reused), one copy, data kept, both
/// device pages freed exactly when nothing lives there. With `copy_ok`
/// false the peer copy fails and rolls back.
fn peer_vs_cpu_fault_and_lane(copy_ok: bool) {
    check(move || {
        let w = World::new(&[Init::Device { v: 42 }], 0);
        device_fault_map(&w, 0, 1);
        let w2 = w.clone();
        let m = thread::spawn(move || peer_to_d1(&w2, 0..1, copy_ok));
        let w3 = w.clone();
        let lane = thread::spawn(move || {
            let mut tlb = None;
            for _ in 0..2 {
                if let Some(v) = lane_access(&w3, &mut tlb, 0, None) {
                    assert_eq!(v, 42);
                }
            }
        });
        assert_eq!(cpu_access(&w, 0, None), 42);
        m.join().expect("peer migration");
        lane.join().expect("lane");
        w.check_quiescent(&[42]);
    });
}

#[test]
fn loom_peer_migration_vs_cpu_fault_and_lane() {
    peer_vs_cpu_fault_and_lane(true);
}

#[test]
fn loom_failed_peer_migration_vs_cpu_fault_and_lane() {
    peer_vs_cpu_fault_and_lane(false);
}

/// Model (9) broken: the peer move commits without isolating (the state
/// goes `Device(0)` -> `Device(1)` in one store, no `invalidate`), so a
/// lane's cached translation outlives its page. Must fail.
#[test]
#[should_panic]
fn loom_peer_migration_without_invalidate_fails() {
    check(|| {
        let w = World::new(&[Init::Device { v: 42 }], 0);
        device_fault_map(&w, 0, 1);
        let w2 = w.clone();
        let m = thread::spawn(move || {
            let r = &w2.r;
            let _guard = r.blocks[0].migrate.lock();
            let prev = r.states[0].load();
            let PageState::Device { page, staged, .. } = prev else {
                return;
            };
            w2.dev.alloc(peer_page(0));
            w2.dev.set(peer_page(0), w2.dev.get(page).expect("data"));
            r.states[0].isolate(prev).expect("device");
            r.states[0]
                .commit(PageState::Device {
                    dev: D1,
                    page: peer_page(0),
                    staged,
                })
                .expect("isolated");
            w2.dev.free(page);
        });
        let mut tlb = None;
        for _ in 0..2 {
            if let Some(v) = lane_access(&w, &mut tlb, 0, None) {
                assert_eq!(v, 42);
            }
        }
        m.join().expect("peer migration");
        w.check_quiescent(&[42]);
    });
}
