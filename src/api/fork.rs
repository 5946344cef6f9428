//! `fork` and svmem.
//!
//! A device-resident page is absent from the managed view (its data is in
//! device memory), and a forked child gets no userfaultfd registration (svmem
//! does not ask for `UFFD_FEATURE_EVENT_FORK`): it would read zeros there.
//! So svmem takes part in every `fork` of the process through
//! `pthread_atfork` handlers (registered when the first `Svm` is built):
//!
//! - **prepare** (in the forking thread, before the fork): for every live
//!   `Svm` of this process, close every device's migration gate (migrations
//!   to devices in other threads are refused, counted busy, until the fork
//!   is over), wait for those in flight, and migrate every device-resident
//!   page home. Pages that cannot come home (a failed copy, a lost device)
//!   are reported on stderr and counted (`Stats::fork_stuck_pages`): the
//!   child reads zeros there. The cost is one migration to system memory
//!   of all device-resident data, in the fork's critical path.
//! - **parent** (after the fork): open the gates again. Pages stay in system
//!   memory; device faults or migrations take them back when needed.
//! - **child**: release the registry; nothing of the parent's `Svm`s runs
//!   there (no svmem thread exists in the child).
//!
//! The child sees every managed byte as it was at the fork, in its own copy
//! of the mapping, which is ordinary memory there. The parent's handles it
//! inherits are dead: every method returns [`Error::Forked`] (or panics with
//! its message where it returns no `Result`), except the region's address
//! getters and CPU views (`Region::as_slice`, `as_mut_slice`,
//! `as_atomic_u64`: the child's own copy, no device bars it) and
//! `DeviceHandle::id`. Dropping an inherited `Region` or `Svm` does nothing
//! (no ioctl on the inherited userfaultfd, which would act on the parent's
//! address space; no munmap; no thread joins): the child's copy is freed
//! when it exits. A child that wants managed memory builds its own `Svm`.
//!
//! After the fork, the parent's present managed pages are copy-on-write
//! shared with the child, and `UFFDIO_MOVE` refuses them (EBUSY) until they
//! are written, even after the child exits. Migrations unshare such runs
//! where they meet them (`Shared::unshare`: `MADV_POPULATE_WRITE`, which
//! copies a page the child still maps and reuses one only the parent maps),
//! so nothing is copied eagerly at fork time.
//!
//! Limits: do not fork from inside svmem callbacks (a placement policy, a
//! kernel lane): they run under svmem locks the prepare step needs. A signal
//! handler may fork: API calls block asynchronous signals while they hold
//! locks. `vfork`, `posix_spawn` (what `std::process::Command` uses when it
//! can) and raw `clone` run no handlers; the child must only exec.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::addr::Location;
use crate::gpu::Ctx;
use crate::mm::migrate::{self, MigrateReport, Trigger};
use crate::mm::state::PageState;
use crate::sys::fork::{at_fork, ForkHooks};
use crate::sys::AsyncSignalsBlocked;

/// One live `Svm`: its context and the process that built it.
struct Entry {
    ctx: Weak<Ctx>,
    owner: u32,
}

/// Every `Svm` built in this process (and, in a child, its parent's, which
/// it skips by owner).
static LIVE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// What the prepare handler holds until the parent or child handler.
struct Held {
    ctxs: Vec<Arc<Ctx>>,
    live: MutexGuard<'static, Vec<Entry>>,
    signals: AsyncSignalsBlocked,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

fn live() -> MutexGuard<'static, Vec<Entry>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds a new `Svm` to the registry (and registers the fork handlers, once).
pub(super) fn register(ctx: &Arc<Ctx>, owner: u32) {
    if let Err(e) = at_fork(ForkHooks {
        prepare,
        parent,
        child,
    }) {
        eprintln!("svmem: pthread_atfork failed: {e}; a forked child would read zeros for device-resident pages");
    }
    let _signals = AsyncSignalsBlocked::new();
    let mut l = live();
    l.retain(|e| e.ctx.strong_count() > 0);
    l.push(Entry {
        ctx: Arc::downgrade(ctx),
        owner,
    });
}

/// Removes a dropped `Svm` from the registry (waits out a fork in progress).
pub(super) fn unregister(ctx: &Arc<Ctx>) {
    let _signals = AsyncSignalsBlocked::new();
    live().retain(|e| e.ctx.strong_count() > 0 && !std::ptr::eq(e.ctx.as_ptr(), Arc::as_ptr(ctx)));
}

/// How long the prepare step waits for migrations to devices in flight.
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn prepare() {
    let signals = AsyncSignalsBlocked::new();
    let guard = live();
    let me = std::process::id();
    let ctxs: Vec<Arc<Ctx>> = guard
        .iter()
        .filter(|e| e.owner == me)
        .filter_map(|e| e.ctx.upgrade())
        .collect();
    for c in &ctxs {
        if !c.reset_gate.hold_for_fork(GATE_WAIT) {
            eprintln!("svmem: fork: migrations to a device still in flight after {GATE_WAIT:?}");
        }
    }
    for c in &ctxs {
        evict_all(c);
    }
    HELD.with(|h| {
        *h.borrow_mut() = Some(Held {
            ctxs,
            live: guard,
            signals,
        })
    });
}

/// Brings every device-resident page of `c` home; reports what stayed.
fn evict_all(c: &Ctx) {
    let regions: Vec<_> = c.regions.read().values().cloned().collect();
    let mut rep = MigrateReport::default();
    let mut stuck = 0u64;
    for r in &regions {
        migrate::pipeline(
            c,
            r,
            0..r.npages,
            Location::System,
            None,
            Trigger::Release,
            &mut rep,
        );
        stuck += (0..r.npages)
            .filter(|&i| {
                matches!(
                    r.states[i].load(),
                    PageState::Device { .. } | PageState::Migrating
                )
            })
            .count() as u64;
    }
    let k = &c.counters;
    k.add(&k.forks, 1);
    k.add(&k.fork_evicted_pages, rep.migrated);
    k.add(&k.fork_stuck_pages, stuck);
    if stuck > 0 {
        eprintln!(
            "svmem: fork: {stuck} device-resident page(s) could not be brought home first; \
             the child reads zeros there"
        );
    }
}

fn parent() {
    if let Some(held) = HELD.with(|h| h.borrow_mut().take()) {
        for c in &held.ctxs {
            c.reset_gate.release_fork();
        }
        // The contexts go first, then the registry lock, then the signal mask.
        let Held {
            ctxs,
            live,
            signals,
        } = held;
        drop(ctxs);
        drop(live);
        drop(signals);
    }
}

fn child() {
    if let Some(held) = HELD.with(|h| h.borrow_mut().take()) {
        let Held {
            ctxs,
            live,
            signals,
        } = held;
        // The parent's contexts must never be torn down here (that would
        // join threads the child does not have and act on the parent's
        // userfaultfd): leak them.
        std::mem::forget(ctxs);
        drop(live);
        drop(signals);
    }
}
