//! The core's shared state: what every migration, fault and access path
//! needs, and nothing of the layers above (eviction, accounting, placement,
//! device-side runtime own their state and reach this one).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::huge::HugePool;
use super::poison::LossState;
use super::space::RegionInner;
use crate::addr::{DeviceId, VirtAddr, MAX_DEVICES, PAGE_SIZE};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::observe::notify::Notifier;
use crate::observe::stats::Counters;
use crate::sync::{AtomicBool, AtomicU32, Ordering};
use crate::sys::{Advice, Mapping, Uffd};

/// Everything the reader thread and the API calls share.
pub(crate) struct Shared {
    /// Managed regions (MISSING + WP) and their staging mirrors (MISSING)
    /// register here: `UFFDIO_MOVE` needs both ends on one context.
    pub uffd: Uffd,
    /// Messages read early by a [`super::staging::Backoff`] on the reader thread.
    pub pending: parking_lot::Mutex<std::collections::VecDeque<crate::sys::UffdMsg>>,
    /// Whether the reader may hold REMOVE/UNMAP events read but not yet
    /// handled; device accesses wait on it (see [`EventGate`]).
    pub events: EventGate,
    pub devices: Vec<Arc<dyn Device>>,
    /// Per device `d`: bit `a` set when `d`'s copy engines read device
    /// `a`'s memory directly (peer migration, no trip through system memory).
    pub peers: Vec<u64>,
    pub regions: RwLock<BTreeMap<u64, Arc<RegionInner>>>,
    /// Wakes the reader when another thread left messages in `pending`.
    pub kick: crate::sys::EventFd,
    /// REMOVE events svmem raises itself (a protected page copied out of
    /// the CPU view, `staging::copy_out_protected`), as `[start, end)`: the
    /// reader drops one matching event instead of discarding the data.
    pub own_removes: parking_lot::Mutex<Vec<(u64, u64)>>,
    /// Regions being installed (registered, not yet in `regions`): while
    /// non-zero, a fault nobody holds may be one of theirs.
    pub installing: std::sync::atomic::AtomicUsize,
    pub counters: Counters,
    /// 2 MiB of zeros, the source of zero-filling `UFFDIO_COPY`s.
    pub zeros: Mapping,
    /// One populated page registered with `uffd`, never touched: a
    /// `UFFDIO_ZEROPAGE` on it answers EEXIST, or EAGAIN while the program
    /// is in the middle of an mremap/munmap/madvise whose event is unread
    /// (see [`Shared::moved_since`]). Declared after `uffd`, so the
    /// userfaultfd is closed before this page is unmapped (no UNMAP event
    /// for a reader that is gone).
    pub probe: Mapping,
    pub pipeline_depth: usize,
    pub granularity: u8,
    /// Event stream and queue control, shared with every region.
    pub notifier: Arc<Notifier>,
    /// Which device losses have been handled (see [`super::poison`]).
    pub losses: LossState,
    /// Per device: a reset in progress closes it to new migrations.
    pub reset_gate: Arc<ResetGate>,
    /// Huge-page slots for first touch of whole blocks (see [`super::huge`]).
    pub huge: HugePool,
    /// The memory-pressure layer, seen through what the core needs of it.
    pub pressure: Arc<dyn Pressure>,
}

impl Shared {
    /// Whether the program is in the middle of an mremap, munmap or
    /// madvise of registered memory whose event is not read yet: the kernel
    /// refuses uffd ioctls with EAGAIN from before it changes the mapping
    /// until the event is read, so a `UFFDIO_ZEROPAGE` on the probe page
    /// (EEXIST otherwise, changing nothing) tells. Together with the event
    /// gate's generation this tells a device copy of system memory whether
    /// the memory it touched was still the region's (see `gpu::access`).
    pub fn event_pending(&self) -> bool {
        matches!(
            self.uffd.zeropage(self.probe.addr(), PAGE_SIZE as u64, true),
            Err(p) if p.stop() == crate::sys::uffd::Stop::WouldBlock
        )
    }

    /// Reads whatever messages the userfaultfd holds into `pending`, for
    /// the reader to handle in order (under the `pending` lock, as every
    /// read; the event gate stays closed until they are handled). A thread
    /// that needs an event read now (one the reader cannot get to while it
    /// waits for a lock) calls this, then kicks the reader.
    pub fn read_for_reader(&self) {
        let mut buf = [crate::sys::UffdMsg::default(); 16];
        let mut pending = self.pending.lock();
        self.events.reading();
        if let Ok(n) = self.uffd.read_msgs(&mut buf) {
            pending.extend(buf[..n].iter().copied());
        }
    }

    /// Whether pages on device `from` move to `to` over the peer path.
    pub fn peer_path(&self, from: DeviceId, to: DeviceId) -> bool {
        self.peers
            .get(to.0 as usize)
            .is_some_and(|m| m & (1u64 << from.0) != 0)
    }
}

/// Orders device accesses after the program's `munmap`/`madvise`.
///
/// The kernel lets a `munmap` or `madvise(DONTNEED/FREE/REMOVE)` of a
/// registered range return as soon as the reader has *read* its UNMAP or
/// REMOVE message (`userfaultfd_event_complete` runs in the read itself, not
/// when svmem is done with it), so the call can return before device copies
/// are freed and device translations cleared. The reader makes the word odd
/// before every read of the userfaultfd and even again once every event it
/// has read is handled; a device access (API read, write, snapshot, migrate,
/// a kernel lane before it takes a translation) waits while it is odd. So an
/// access that starts after the program's call returned sees the event
/// handled: device memory freed, translations gone, pages zero or holes.
/// Waiters hold no lock the reader's event handling takes.
#[derive(Debug, Default)]
pub(crate) struct EventGate {
    word: std::sync::atomic::AtomicU32,
    waiters: std::sync::atomic::AtomicU32,
}

impl EventGate {
    /// The reader is about to read messages (which may release a program
    /// thread whose event svmem has not handled yet).
    pub fn reading(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        // Any thread may read messages for the reader (with `pending` held),
        // so make it odd exactly once, whoever comes first.
        loop {
            let w = self.word.load(SeqCst);
            if w % 2 == 1 || self.word.compare_exchange(w, w + 1, SeqCst, SeqCst).is_ok() {
                return;
            }
        }
    }

    /// Whether events were read that are not handled yet (or a read is
    /// under way): the program may have moved or unmapped memory svmem has
    /// not caught up with, so addresses of managed pages are not to be
    /// trusted for taking pages out of the CPU view meanwhile.
    pub fn unsettled(&self) -> bool {
        self.word.load(std::sync::atomic::Ordering::SeqCst) % 2 == 1
    }

    /// The reader has handled every event it read.
    pub fn handled(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.word.load(SeqCst) % 2 == 1 {
            self.word.fetch_add(1, SeqCst);
            if self.waiters.load(SeqCst) > 0 {
                crate::sys::futex::wake_all(&self.word);
            }
        }
    }

    /// The gate's generation: even while no event is read but unhandled;
    /// it changes whenever the reader reads messages.
    pub fn generation(&self) -> u32 {
        self.word.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the events the reader has read are handled.
    pub fn wait(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.word.load(SeqCst) % 2 == 0 {
            return;
        }
        self.waiters.fetch_add(1, SeqCst);
        loop {
            let w = self.word.load(SeqCst);
            if w % 2 == 0 {
                break;
            }
            crate::sys::futex::wait(&self.word, w, Some(std::time::Duration::from_millis(10)));
        }
        self.waiters.fetch_sub(1, SeqCst);
    }
}

/// What the core asks of the memory-pressure layer (eviction and accounting
/// live above the core; it reaches them only through this trait).
pub(crate) trait Pressure: Send + Sync {
    /// Evicts from device `d` until `pages` pages are free or nothing more
    /// can go; returns whether anything was freed.
    fn make_room(&self, sh: &Shared, d: DeviceId, pages: u64) -> bool;
    /// Block `b` of `r` now holds pages on device `d` (caller holds the block lock).
    fn note_resident(&self, sh: &Shared, r: &RegionInner, b: usize, d: DeviceId);
    /// Charges a bounce buffer of `bytes` against the memory limit; `None`
    /// if it does not fit. The charge lasts as long as the returned value.
    fn charge_bounce(&self, sh: &Shared, bytes: u64) -> Option<Charge>;
    /// Host bytes of metadata kept above the core (eviction rings, range
    /// attributes), counted with the core's own in [`Shared::metadata_bytes`].
    fn metadata_bytes(&self) -> u64;
    /// `new` took over `old`'s pages (the program moved them with `mremap`;
    /// `new` is published, `old` is all holes): the range attributes move
    /// with the pages, and the eviction rings list `new`'s device-resident
    /// blocks instead of `old`'s.
    fn relocated(&self, sh: &Shared, old: &RegionInner, new: &Arc<RegionInner>);
}

/// A charge held against the memory limit; dropping it un-charges.
pub(crate) type Charge = Box<dyn Send + Sync>;

thread_local! {
    static PAST_LIMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's bounce-buffer charges allowed past the
/// memory limit (for CPU faults, which must be served).
pub(crate) fn past_limit<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PAST_LIMIT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(PAST_LIMIT.with(|c| c.replace(true)));
    f()
}

/// Whether this thread is inside [`past_limit`].
pub(crate) fn is_past_limit() -> bool {
    PAST_LIMIT.with(|c| c.get())
}

impl Shared {
    pub fn device(&self, d: DeviceId) -> Result<&Arc<dyn Device>> {
        self.devices.get(d.0 as usize).ok_or(Error::UnknownDevice {
            id: d,
            count: self.devices.len(),
        })
    }

    pub fn region_at(&self, addr: u64) -> Option<Arc<RegionInner>> {
        let g = self.regions.read();
        let (_, r) = g.range(..=addr).next_back()?;
        r.contains(addr, 1).then(|| r.clone())
    }

    /// The region holding all of `[addr, addr+len)`.
    pub fn region_for(&self, addr: VirtAddr, len: u64) -> Result<Arc<RegionInner>> {
        self.region_at(addr.0)
            .filter(|r| r.contains(addr.0, len))
            .ok_or(Error::OutsideManaged { start: addr, len })
    }

    pub fn regions_overlapping(&self, start: u64, end: u64) -> Vec<Arc<RegionInner>> {
        self.regions
            .read()
            .values()
            .filter(|r| r.base() < end && start < r.base() + r.len())
            .cloned()
            .collect()
    }

    /// Drops the staged system pages of pages `[k, k+n)` (their data was
    /// discarded). The run is unregistered around the `MADV_DONTNEED`, so no
    /// REMOVE event is raised and any thread, the reader included, may call
    /// this. The caller holds the block lock, so nothing moves in meanwhile.
    pub fn drop_staged(&self, r: &RegionInner, k: usize, n: usize) {
        let (at, len) = (r.staging_addr(k), (n * PAGE_SIZE) as u64);
        let res = self
            .uffd
            .unregister(at, len)
            .and_then(|_| {
                r.staging
                    .madvise(k * PAGE_SIZE, n * PAGE_SIZE, Advice::DontNeed)
            })
            .and_then(|_| self.uffd.register(at, len, false));
        if let Err(e) = res {
            eprintln!(
                "svmem: dropping staging pages {at:#x}+{len:#x} failed: {e}; pages {k}..{} of region {:#x} will not migrate again",
                k + n,
                r.base()
            );
        }
    }

    /// Makes managed pages `[k, k+n)` of `r` exclusive to this process
    /// again, without changing their data. After a `fork`, a present page
    /// is copy-on-write shared with the child (and stays "maybe shared" in
    /// the kernel's eyes until written, even after the child exits), and
    /// `UFFDIO_MOVE` refuses such pages (EBUSY). `MADV_POPULATE_WRITE`
    /// write-faults each page: a page the child still maps is copied, one
    /// only we map is reused; a concurrent CPU write is never lost (the
    /// kernel copies under the page-table lock). The run is unregistered
    /// around it, so that a page discarded meanwhile (a hole) takes an
    /// ordinary zero page, which is its content, instead of a uffd fault
    /// that would wait for the reader, which may be waiting for the block
    /// lock the caller holds. Every page of the run is isolated by the
    /// caller (block lock held), so no other fault needs the registration
    /// meanwhile. No event is raised: any thread, the reader included, may
    /// call this. Returns whether it worked.
    pub fn unshare(&self, r: &RegionInner, k: usize, n: usize) -> bool {
        let (at, len) = (r.addr_of(k).0, (n * PAGE_SIZE) as u64);
        self.counters.add(&self.counters.fork_unshare_runs, 1);
        if let Err(e) = self.uffd.unregister(at, len) {
            eprintln!("svmem: unsharing pages {at:#x}+{len:#x}: UFFDIO_UNREGISTER failed: {e}");
            return false;
        }
        let (off, bytes) = (k * PAGE_SIZE, n * PAGE_SIZE);
        let populated = r.managed.madvise(off, bytes, Advice::PopulateWrite);
        // A write fault may *reuse* a page of a large folio the child no
        // longer maps (no copy), but `UFFDIO_MOVE` checks the exclusivity
        // of the folio's first page, which a CPU write may have copied away
        // earlier: then the folio must be split for the pages to move.
        // MADV_COLD splits a large folio mapped in part of the range (it
        // also deactivates the pages: harmless).
        let _ = r.managed.madvise(off, bytes, Advice::Cold);
        if let Err(e) = self.uffd.register(at, len, true) {
            // Unmonitored managed pages would read as zeros once their data
            // went to a device: say so loudly (it takes an ENOMEM to get here).
            eprintln!(
                "svmem: re-registering managed pages {at:#x}+{len:#x} after unsharing failed: {e}; \
                 CPU faults on them are no longer served"
            );
            self.counters.add(&self.counters.protocol_errors, 1);
            return false;
        }
        populated.is_ok()
    }

    /// Host bytes of all svmem metadata: regions and device allocators, and
    /// what the layers above report through [`Pressure::metadata_bytes`].
    pub(crate) fn metadata_bytes(&self) -> u64 {
        let regions: u64 = self
            .regions
            .read()
            .values()
            .map(|r| r.metadata_bytes())
            .sum();
        regions
            + self.devices.iter().map(|d| d.metadata_bytes()).sum::<u64>()
            + self.pressure.metadata_bytes()
    }
}

/// Keeps migrations to a device out while it is reset: a migration to
/// device `d` holds a [`GateTicket`] from before it allocates device pages
/// until it commits; a reset closes the gate (new migrations are refused and
/// counted busy), waits for the tickets out, evicts, resets, and opens it.
#[derive(Debug, Default)]
pub(crate) struct ResetGate {
    closed: [AtomicBool; MAX_DEVICES],
    inflight: [AtomicU32; MAX_DEVICES],
    /// Forks in progress (`api::fork`): while any, every device's gate is
    /// closed, so no page goes to a device between the fork's eviction and
    /// the fork itself.
    forks: AtomicU32,
}

/// A migration to a device in flight (see [`ResetGate`]).
#[derive(Debug)]
pub(crate) struct GateTicket {
    gate: Arc<ResetGate>,
    d: usize,
}

impl Drop for GateTicket {
    fn drop(&mut self) {
        self.gate.inflight[self.d].fetch_sub(1, Ordering::SeqCst);
    }
}

impl ResetGate {
    /// A ticket for a migration to `d`, or `None` while `d` is being reset.
    pub fn enter(self: &Arc<Self>, d: DeviceId) -> Option<GateTicket> {
        let d = d.0 as usize;
        // Counted before the check, the reset's close before its wait (both
        // SeqCst): either the reset sees this ticket and waits for it, or
        // this check sees the gate closed.
        self.inflight[d].fetch_add(1, Ordering::SeqCst);
        let ticket = GateTicket {
            gate: self.clone(),
            d,
        };
        let open = !self.closed[d].load(Ordering::SeqCst) && self.forks.load(Ordering::SeqCst) == 0;
        open.then_some(ticket)
    }

    /// Closes every device's gate for a fork and waits (up to `limit`) until
    /// no migration to any device is in flight; false if some still were.
    /// The gates stay closed until [`ResetGate::release_fork`], either way.
    pub fn hold_for_fork(&self, limit: std::time::Duration) -> bool {
        self.forks.fetch_add(1, Ordering::SeqCst);
        let start = std::time::Instant::now();
        while self.inflight.iter().any(|n| n.load(Ordering::SeqCst) != 0) {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        true
    }

    /// Ends one [`ResetGate::hold_for_fork`].
    pub fn release_fork(&self) {
        self.forks.fetch_sub(1, Ordering::SeqCst);
    }

    /// Closes the gate of `d` and waits until no migration to it is in
    /// flight; false (gate open again) if that took longer than `limit`.
    pub fn close(&self, d: DeviceId, limit: std::time::Duration) -> bool {
        let i = d.0 as usize;
        self.closed[i].store(true, Ordering::SeqCst);
        let start = std::time::Instant::now();
        while self.inflight[i].load(Ordering::SeqCst) != 0 {
            if start.elapsed() > limit {
                self.open(d);
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        true
    }

    pub fn open(&self, d: DeviceId) {
        self.closed[d.0 as usize].store(false, Ordering::SeqCst);
    }
}
