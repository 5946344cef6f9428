//! `Svm`: one shared address space — its managed regions, devices, the uffd
//! reader thread and counters — and the handles users hold: [`Region`] and
//! [`DeviceHandle`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::RwLock;

use crate::access::{self, AccessReport, Op, PageView};
use crate::addr::{DeviceId, Location, VirtAddr, BLOCK_PAGES, BLOCK_SIZE, PAGE_SIZE};
use crate::attr::{AccessMode, Attr, AttrFlags, AttrMap, AttrQuery};
use crate::device::{Device, EmulatedConfig, EmulatedDevice, FreeBatch, MemoryType};
use crate::error::{Error, Result};
use crate::events::{EventStream, UnmapTrigger};
use crate::fault::{BatchStats, DeviceRuntime};
use crate::kernel::{DeviceFault, Lane, LaunchReport};
use crate::migrate::{self, MigrateReport, Trigger};
use crate::notify::Notifier;
use crate::policy::{KfdPolicy, PlacementPolicy};
use crate::space::{RegionInner, MAX_REGION_PAGES};
use crate::state::{PageState, MAX_DEVICES};
use crate::stats::{Counters, Stats};
use crate::sync::Ordering;
use crate::sys::uffd::{OpenError, REQUIRED_FEATURES};
use crate::sys::{Advice, EventFd, Mapping, Prot, Uffd};
use std::sync::atomic::AtomicBool;

/// Everything the reader thread and the API calls share.
pub(crate) struct Shared {
    /// Managed regions (MISSING + WP) and their staging mirrors (MISSING)
    /// register here: `UFFDIO_MOVE` needs both ends on one context.
    pub uffd: Uffd,
    /// Messages read early by a [`crate::cpu::Backoff`] on the reader thread.
    pub pending: parking_lot::Mutex<std::collections::VecDeque<crate::sys::UffdMsg>>,
    pub devices: Vec<Arc<dyn Device>>,
    pub regions: RwLock<BTreeMap<u64, Arc<RegionInner>>>,
    pub counters: Counters,
    /// 2 MiB of zeros, the source of zero-filling `UFFDIO_COPY`s.
    pub zeros: Mapping,
    pub pipeline_depth: usize,
    pub granularity: u8,
    /// Event stream and queue control, shared with every region.
    pub notifier: Arc<Notifier>,
    /// Range attributes, by page number.
    pub attrs: RwLock<AttrMap>,
    pub policy: RwLock<Arc<dyn PlacementPolicy>>,
    /// Retry faults (XNACK on) for every device of this `Svm`.
    pub xnack: AtomicBool,
    /// Per device: fault buffer, batch log, running launches.
    pub runtime: Box<[DeviceRuntime]>,
    /// Per device: the eviction clock over blocks holding its pages.
    pub residency: Box<[crate::evict::Residency]>,
    /// Evictions younger than this make faults count as thrashing (ns; 0: never).
    pub thrash_window_ns: u64,
    /// Which device losses have been handled (`crate::failure`).
    pub failure: crate::failure::FailureState,
    /// System-memory limit, charges and pin totals (see [`crate::account`]).
    pub account: Arc<crate::account::Accountant>,
    /// Huge-page slots for first touch of whole blocks (see [`crate::huge`]).
    pub huge: crate::huge::HugePool,
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

    pub(crate) fn metadata_bytes(&self) -> u64 {
        let regions: u64 = self
            .regions
            .read()
            .values()
            .map(|r| r.metadata_bytes())
            .sum();
        regions
            + self.devices.iter().map(|d| d.metadata_bytes()).sum::<u64>()
            + self.attrs.read().metadata_bytes()
            + self
                .residency
                .iter()
                .map(|r| r.metadata_bytes())
                .sum::<u64>()
    }
}

/// Builds an [`Svm`].
pub struct SvmBuilder {
    devices: Vec<Arc<dyn Device>>,
    granularity: u8,
    pipeline_depth: usize,
    xnack: bool,
    policy: Arc<dyn PlacementPolicy>,
    thrash_window: std::time::Duration,
    memory_limit: Option<u64>,
    pin_limit: Option<u64>,
    huge_pages: bool,
}

impl std::fmt::Debug for SvmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvmBuilder")
            .field(
                "devices",
                &self.devices.iter().map(|d| d.name()).collect::<Vec<_>>(),
            )
            .field("granularity", &self.granularity)
            .field("pipeline_depth", &self.pipeline_depth)
            .field("xnack", &self.xnack)
            .field("policy", &self.policy.name())
            .field("memory_limit", &self.memory_limit)
            .field("pin_limit", &self.pin_limit)
            .field("huge_pages", &self.huge_pages)
            .finish()
    }
}

impl Default for SvmBuilder {
    fn default() -> Self {
        SvmBuilder {
            devices: Vec::new(),
            granularity: 9,
            pipeline_depth: 4,
            xnack: true,
            policy: Arc::new(KfdPolicy),
            thrash_window: std::time::Duration::from_millis(crate::policy::THRASH_WINDOW_MS),
            memory_limit: None,
            pin_limit: None,
            huge_pages: true,
        }
    }
}

impl SvmBuilder {
    /// Adds a device; devices are numbered `DeviceId(0)`, `DeviceId(1)`, … in order.
    pub fn device(mut self, d: impl Device + 'static) -> Self {
        self.devices.push(Arc::new(d));
        self
    }

    /// Adds an emulated device built from `config`.
    pub fn emulated(self, config: EmulatedConfig) -> Result<Self> {
        Ok(self.device(EmulatedDevice::new(config)?))
    }

    /// Default fault granularity of new regions, log2 pages (0 = 4 KiB … 9 = 2 MiB).
    pub fn granularity(mut self, g: u8) -> Self {
        self.granularity = g;
        self
    }

    /// Blocks a migration keeps in flight beyond the one it is isolating.
    pub fn pipeline_depth(mut self, n: usize) -> Self {
        self.pipeline_depth = n;
        self
    }

    /// Retry faults (XNACK on, the default) or not: with XNACK off a device
    /// access without a translation is fatal, and ranges the device may
    /// access are mapped ahead.
    pub fn xnack(mut self, on: bool) -> Self {
        self.xnack = on;
        self
    }

    /// How recent an eviction from a device makes a fault on the evicted
    /// block count as thrashing (placement rule 9: served in place instead
    /// of evicting another block). Default [`crate::policy::THRASH_WINDOW_MS`];
    /// zero turns the mitigation off.
    pub fn thrash_window(mut self, window: std::time::Duration) -> Self {
        self.thrash_window = window;
        self
    }

    /// The placement policy device faults consult (default [`KfdPolicy`]).
    pub fn policy(mut self, p: impl PlacementPolicy + 'static) -> Self {
        self.policy = Arc::new(p);
        self
    }

    /// The system-memory limit in bytes (default: derived from the machine's
    /// RAM, see [`crate::account`]).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The most bytes of pages that may be pinned (default and maximum: the
    /// memory limit); see [`Svm::pin`].
    pub fn pin_limit(mut self, bytes: u64) -> Self {
        self.pin_limit = Some(bytes);
        self
    }

    /// Whether the first write to a whole, untouched 2 MiB block maps one
    /// transparent huge page (default on), so that whole-block migrations
    /// move one PMD instead of 512 PTEs; see [`crate::huge`]. Off: every
    /// page is a 4 KiB page, as the kernel's NOHUGEPAGE gives.
    pub fn huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }

    pub fn build(self) -> Result<Svm> {
        if self.devices.len() > MAX_DEVICES {
            return Err(Error::Config(format!(
                "{} devices: at most {MAX_DEVICES} are supported",
                self.devices.len()
            )));
        }
        if self.granularity > 9 {
            return Err(Error::Granularity {
                value: self.granularity,
            });
        }
        if !(1..=64).contains(&self.pipeline_depth) {
            return Err(Error::Config(format!(
                "pipeline depth {}: use 1 to 64",
                self.pipeline_depth
            )));
        }
        let open = |features| {
            Uffd::open(features).map_err(|e| match e {
                OpenError::Permission(source) => Error::UffdPermission { source },
                OpenError::MissingFeature(feature, offered) => {
                    Error::UffdMissingFeature { feature, offered }
                }
                OpenError::Other(op, source) => Error::Os { op, source },
            })
        };
        let uffd = open(REQUIRED_FEATURES)?;
        let zeros = Mapping::anonymous(BLOCK_PAGES * PAGE_SIZE, Prot::ReadOnly, false)
            .map_err(|e| Error::os("mmap zero source", e))?;
        let ndev = self.devices.len();
        let shared = Arc::new(Shared {
            uffd,
            pending: Default::default(),
            devices: self.devices,
            regions: RwLock::new(BTreeMap::new()),
            counters: Counters::default(),
            zeros,
            pipeline_depth: self.pipeline_depth,
            granularity: self.granularity,
            notifier: Arc::new(Notifier::new(ndev)),
            attrs: RwLock::new(AttrMap::new(self.granularity)),
            policy: RwLock::new(self.policy),
            xnack: AtomicBool::new(self.xnack),
            runtime: (0..ndev).map(|_| DeviceRuntime::default()).collect(),
            residency: (0..ndev).map(|_| Default::default()).collect(),
            thrash_window_ns: self.thrash_window.as_nanos().min(u64::MAX as u128) as u64,
            failure: Default::default(),
            account: Arc::new(crate::account::Accountant::new(
                self.memory_limit
                    .unwrap_or_else(crate::account::default_limit),
                self.pin_limit,
            )),
            huge: crate::huge::HugePool::new(self.huge_pages),
        });
        let shutdown = Arc::new(EventFd::new().map_err(|e| Error::os("eventfd", e))?);
        let mut svm = Svm {
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            reader: None,
            workers: Vec::new(),
        };
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|e| Error::os("spawn svmem thread", e))
        };
        let (sh, sd) = (shared.clone(), shutdown);
        svm.reader = Some(spawn(
            "svmem-uffd".into(),
            Box::new(move || crate::cpu::reader_loop(sh, sd)),
        )?);
        for i in 0..ndev {
            let d = DeviceId(i as u8);
            let sh = shared.clone();
            svm.workers.push(spawn(
                format!("svmem-fault{i}"),
                Box::new(move || crate::fault::service_loop(sh, d)),
            )?);
            let sh = shared.clone();
            svm.workers.push(spawn(
                format!("svmem-restore{i}"),
                Box::new(move || crate::fault::restore_loop(sh, d)),
            )?);
        }
        Ok(svm)
    }
}

/// One shared virtual address space. See the crate docs.
pub struct Svm {
    pub(crate) shared: Arc<Shared>,
    shutdown: Arc<EventFd>,
    reader: Option<JoinHandle<()>>,
    /// Fault-service and restore threads, one each per device.
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Svm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svm")
            .field("devices", &self.shared.devices.len())
            .finish_non_exhaustive()
    }
}

impl Svm {
    pub fn builder() -> SvmBuilder {
        SvmBuilder::default()
    }

    /// An `Svm` with one emulated device of `device_bytes` of memory.
    pub fn with_emulated(device_bytes: u64) -> Result<Svm> {
        Svm::builder()
            .emulated(EmulatedConfig::with_memory(device_bytes))?
            .build()
    }

    /// Allocates `len` bytes (rounded up to 4 KiB) of managed memory.
    pub fn alloc(&self, len: usize) -> Result<Region<'_>> {
        let pages = len.div_ceil(PAGE_SIZE);
        if pages == 0 {
            return Err(Error::AllocTooLarge {
                requested: 0,
                reason: "a region needs at least one byte".into(),
            });
        }
        if pages > MAX_REGION_PAGES {
            return Err(Error::AllocTooLarge {
                requested: len as u64,
                reason: format!(
                    "one region holds at most {} bytes",
                    MAX_REGION_PAGES * PAGE_SIZE
                ),
            });
        }
        let bytes = pages * PAGE_SIZE;
        let sh = &self.shared;
        let metadata = RegionInner::metadata_bytes_for(pages, sh.devices.len());
        let charge = sh.account.admit_region(sh, bytes as u64, metadata)?;
        // Block-aligned, so each 2 MiB block is one PMD on both sides.
        let map = |what: &str| {
            Mapping::anonymous_aligned(bytes, BLOCK_SIZE, Prot::ReadWrite).map_err(|e| {
                Error::AllocTooLarge {
                    requested: bytes as u64,
                    reason: format!("cannot map the {what} area: {e}"),
                }
            })
        };
        let managed = map("managed")?;
        let staging = map("staging")?;
        // Managed memory is huge-page advised (with huge pages on) so that a
        // CPU fault on an empty block builds no page table; staging gets no
        // huge page but those moves bring (see crate::huge).
        let managed_advice = if sh.huge.enabled() {
            Advice::HugePage
        } else {
            Advice::NoHugePage
        };
        for (m, advice) in [(&managed, managed_advice), (&staging, Advice::NoHugePage)] {
            m.madvise(0, bytes, advice)
                .map_err(|e| Error::os("madvise(MADV_[NO]HUGEPAGE)", e))?;
        }
        sh.uffd
            .register(managed.addr(), bytes as u64, true)
            .map_err(|e| Error::os("UFFDIO_REGISTER (managed)", e))?;
        if let Err(e) = sh.uffd.register(staging.addr(), bytes as u64, false) {
            let _ = sh.uffd.unregister(managed.addr(), bytes as u64);
            return Err(Error::os("UFFDIO_REGISTER (staging)", e));
        }
        let inner = Arc::new(RegionInner::new(
            managed,
            staging,
            sh.devices.len(),
            sh.granularity,
            sh.notifier.clone(),
        ));
        sh.regions.write().insert(inner.base(), inner.clone());
        charge.commit();
        Ok(Region { svm: self, inner })
    }

    pub(crate) fn check_range(
        &self,
        addr: VirtAddr,
        len: u64,
    ) -> Result<(Arc<RegionInner>, usize, usize)> {
        if !addr.is_page_aligned() {
            return Err(Error::Unaligned {
                what: "address",
                value: addr.0,
            });
        }
        if len % PAGE_SIZE as u64 != 0 {
            return Err(Error::Unaligned {
                what: "length",
                value: len,
            });
        }
        if len == 0 {
            return Err(Error::EmptyRange { addr });
        }
        let r = self.shared.region_for(addr, len)?;
        let first = r.page_of(addr.0);
        Ok((r, first, (len / PAGE_SIZE as u64) as usize))
    }

    /// Migrates the page-aligned range `[addr, addr+len)` to `to`, best effort
    /// per page; the report says what moved and why the rest did not.
    pub fn migrate(&self, addr: VirtAddr, len: u64, to: Location) -> Result<MigrateReport> {
        if let Location::Device(d) = to {
            self.shared.check_device_alive(d)?;
        }
        let (r, first, n) = self.check_range(addr, len)?;
        if let Location::Device(d) = to {
            crate::evict::admit(&self.shared, &r, first, n, d)?;
        }
        let rep = migrate::migrate_range(&self.shared, &r, first, n, to, Trigger::Explicit);
        migrate::count_skips(&self.shared, &rep);
        if self.shared.check_lost() {
            if let Location::Device(d) = to {
                self.shared.check_device_alive(d)?;
            }
        }
        Ok(rep)
    }

    /// Resets device `d` gracefully: every page on it is evicted to system
    /// memory first (failed pages retried, nothing lost; a lost device's
    /// pages were poisoned when the loss was found), then fault injection
    /// and the lost state are cleared and the device's memory is checked
    /// empty. Refused while kernels run on it (`Error::Busy`), or if pages
    /// stay on it after the retries (`Error::Device`, data kept).
    pub fn reset_device(&self, d: DeviceId) -> Result<crate::failure::ResetReport> {
        crate::failure::reset_device(&self.shared, d)
    }

    /// Sets the fault granularity (log2 pages, 0..=9) of every 2 MiB block the
    /// page-aligned range touches.
    pub fn set_granularity(&self, addr: VirtAddr, len: u64, g: u8) -> Result<()> {
        if g > 9 {
            return Err(Error::Granularity { value: g });
        }
        self.set_attributes(addr, len, &[Attr::Granularity(g)])
    }

    /// Sets range attributes on the page-aligned range, as one transaction
    /// with the semantics of AMD's SVM ioctl (see [`crate::attr`]): all are
    /// validated before any applies. Afterwards device mappings of the changed
    /// sub-ranges are invalidated, ranges a device must keep mapped (XNACK off
    /// with access granted, or always mapped) are mapped again, and a
    /// prefetch location migrates the whole range now, every time it is set.
    pub fn set_attributes(&self, addr: VirtAddr, len: u64, attrs: &[Attr]) -> Result<()> {
        self.apply_attributes(addr, len, attrs).map(|_| ())
    }

    fn apply_attributes(
        &self,
        addr: VirtAddr,
        len: u64,
        attrs: &[Attr],
    ) -> Result<Option<MigrateReport>> {
        let (r, first, n) = self.check_range(addr, len)?;
        let sh = &self.shared;
        // Prefetching to a lost device, or more than the device can hold, is
        // refused before anything changes.
        for a in attrs {
            if let Attr::PrefetchLocation(Some(Location::Device(d))) = a {
                if sh.device(*d).is_ok() {
                    sh.check_device_alive(*d)?;
                    crate::evict::admit(sh, &r, first, n, *d)?;
                }
            }
        }
        let base = r.base() / PAGE_SIZE as u64;
        let start = base + first as u64;
        let changed = sh
            .attrs
            .write()
            .set(start, start + n as u64, attrs, sh.devices.len())?;
        let mut blocks: Vec<usize> = Vec::new();
        for (s, e) in changed {
            let (lo, hi) = ((s - base) as usize, (e - base) as usize);
            let mut i = lo;
            while i < hi {
                let b = i / BLOCK_PAGES;
                let bhi = hi.min((b + 1) * BLOCK_PAGES);
                let _g = r.blocks[b].migrate.lock();
                r.invalidate(b, i..bhi, UnmapTrigger::MmuNotify);
                if blocks.last() != Some(&b) {
                    blocks.push(b);
                }
                i = bhi;
            }
        }
        for &b in &blocks {
            crate::fault::refresh_block(sh, &r, b);
        }
        let prefetch = attrs.iter().rev().find_map(|a| match a {
            Attr::PrefetchLocation(Some(loc)) => Some(*loc),
            _ => None,
        });
        let rep = prefetch.map(|to| {
            let rep = migrate::migrate_range(sh, &r, first, n, to, Trigger::Prefetch);
            migrate::count_skips(sh, &rep);
            rep
        });
        self.map_kept(&r, first / BLOCK_PAGES..=(first + n - 1) / BLOCK_PAGES);
        Ok(rep)
    }

    /// Maps, for every device that must keep them mapped, the given blocks.
    fn map_kept(&self, r: &RegionInner, blocks: std::ops::RangeInclusive<usize>) {
        for b in blocks {
            let keep = r.blocks[b].keep_mapped.load(Ordering::Acquire);
            for d in 0..self.shared.devices.len() {
                if keep & (1 << d) != 0 {
                    crate::fault::map_ahead_block(&self.shared, r, DeviceId(d as u8), b);
                }
            }
        }
    }

    /// The attributes of the page-aligned range: each value common to all of
    /// it or `Mixed`, flags as the AND over sub-ranges, granularity the minimum.
    pub fn attributes(&self, addr: VirtAddr, len: u64) -> Result<AttrQuery> {
        let (r, first, n) = self.check_range(addr, len)?;
        let start = r.base() / PAGE_SIZE as u64 + first as u64;
        Ok(self.shared.attrs.read().query(
            start,
            start + n as u64,
            self.shared.devices.len(),
            self.xnack(),
        ))
    }

    /// `cudaMemAdvise` over the same machinery: read-mostly sets the
    /// read-mostly flag, preferred location sets the preferred location,
    /// accessed-by grants the device access in place (map where the data is,
    /// never migrate on its faults). Unset restores the default.
    pub fn advise(&self, addr: VirtAddr, len: u64, advice: MemAdvice) -> Result<()> {
        let xnack = self.xnack();
        let default_access = if xnack {
            AccessMode::Access
        } else {
            AccessMode::None
        };
        let attr = match advice {
            MemAdvice::SetReadMostly => Attr::SetFlags(AttrFlags::READ_MOSTLY),
            MemAdvice::UnsetReadMostly => Attr::ClearFlags(AttrFlags::READ_MOSTLY),
            MemAdvice::SetPreferredLocation(l) => Attr::PreferredLocation(Some(l)),
            MemAdvice::UnsetPreferredLocation => Attr::PreferredLocation(None),
            MemAdvice::SetAccessedBy(d) => Attr::Access(d, AccessMode::AccessInPlace),
            MemAdvice::UnsetAccessedBy(d) => Attr::Access(d, default_access),
        };
        self.set_attributes(addr, len, &[attr])
    }

    /// `cudaMemPrefetchAsync` over the same machinery: sets the prefetch
    /// location, which migrates the range now; returns what moved.
    pub fn prefetch(&self, addr: VirtAddr, len: u64, to: Location) -> Result<MigrateReport> {
        Ok(self
            .apply_attributes(addr, len, &[Attr::PrefetchLocation(Some(to))])?
            .unwrap_or_default())
    }

    /// Whether device faults are retried (XNACK on).
    pub fn xnack(&self) -> bool {
        self.shared.xnack.load(Ordering::Acquire)
    }

    /// Switches retry faults on or off; refused while any kernel runs.
    /// Switching off maps every range devices have access to ahead.
    pub fn set_xnack(&self, on: bool) -> Result<()> {
        let sh = &self.shared;
        let mut guards = Vec::new();
        for (i, rt) in sh.runtime.iter().enumerate() {
            match rt.idle_guard() {
                Ok(g) => guards.push(g),
                Err(running) => {
                    return Err(Error::Busy {
                        what: "switching XNACK",
                        dev: DeviceId(i as u8),
                        running,
                    })
                }
            }
        }
        sh.xnack.store(on, Ordering::Release);
        let regions: Vec<_> = sh.regions.read().values().cloned().collect();
        for r in &regions {
            for b in 0..r.blocks.len() {
                crate::fault::refresh_block(sh, r, b);
            }
            if !r.blocks.is_empty() {
                self.map_kept(r, 0..=r.blocks.len() - 1);
            }
        }
        drop(guards);
        Ok(())
    }

    /// Replaces the placement policy device faults consult.
    pub fn set_policy(&self, p: impl PlacementPolicy + 'static) {
        *self.shared.policy.write() = Arc::new(p);
    }

    /// The name of the placement policy in use.
    pub fn policy_name(&self) -> String {
        self.shared.policy.read().name().to_string()
    }

    /// Subscribes to the event stream; a subscriber that falls `capacity`
    /// events behind loses the newest ones (counted), never stalls svmem.
    pub fn subscribe(&self, capacity: usize) -> EventStream {
        self.shared.notifier.events.subscribe(capacity)
    }

    /// A handle for device `id`.
    pub fn device(&self, id: DeviceId) -> Result<DeviceHandle<'_>> {
        self.shared.device(id)?;
        Ok(DeviceHandle { svm: self, id })
    }

    pub fn device_ids(&self) -> Vec<DeviceId> {
        (0..self.shared.devices.len())
            .map(|i| DeviceId(i as u8))
            .collect()
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let sh = &self.shared;
        let mut s = sh.counters.snapshot(sh.metadata_bytes());
        for q in sh.notifier.queues.iter() {
            s.queue_evictions += q.evictions.load(Ordering::Relaxed);
            s.queue_restores += q.restores.load(Ordering::Relaxed);
            s.queue_restore_retries += q.restore_retries.load(Ordering::Relaxed);
        }
        s.events_dropped = sh.notifier.events.dropped();
        s
    }

    /// Where page `addr` lives now (`None` outside managed memory or while it migrates).
    pub fn location(&self, addr: VirtAddr) -> Option<Location> {
        let r = self.shared.region_at(addr.0)?;
        match r.states[r.page_of(addr.0)].load() {
            PageState::Unpopulated | PageState::System => Some(Location::System),
            PageState::Device { dev, .. } => Some(Location::Device(dev)),
            PageState::Migrating | PageState::Poisoned => None,
        }
    }

    fn free_region(&self, r: &Arc<RegionInner>) {
        let sh = &self.shared;
        r.freed.store(true, std::sync::atomic::Ordering::Release);
        sh.regions.write().remove(&r.base());
        for b in 0..r.blocks.len() {
            let _g = r.blocks[b].migrate.lock();
            r.blocks[b].keep_mapped.store(0, Ordering::Release);
            r.invalidate(b, r.block_pages(b), UnmapTrigger::UnmapFromCpu);
            let mut freed = FreeBatch::new(&sh.devices);
            for i in r.block_pages(b) {
                if let Ok(PageState::Device { dev, page, .. }) = r.states[i].discard() {
                    freed.push(dev, page);
                }
            }
        }
        crate::evict::forget_region(sh, r);
        let first = r.base() / PAGE_SIZE as u64;
        sh.attrs.write().remove(first, first + r.npages as u64);
        crate::pin::release_region(sh, r);
        sh.account.uncharge_region(r.len());
        // Unregister before the mappings go, so munmap sends no UNMAP event.
        if let Err(e) = sh.uffd.unregister(r.base(), r.len()) {
            eprintln!(
                "svmem: UFFDIO_UNREGISTER of region {:#x} failed: {e}",
                r.base()
            );
        }
        if let Err(e) = sh.uffd.unregister(r.staging.addr(), r.len()) {
            eprintln!(
                "svmem: UFFDIO_UNREGISTER of staging {:#x} failed: {e}",
                r.staging.addr()
            );
        }
    }
}

impl Drop for Svm {
    fn drop(&mut self) {
        for (rt, q) in self
            .shared
            .runtime
            .iter()
            .zip(self.shared.notifier.queues.iter())
        {
            rt.shutdown();
            q.shutdown();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        let _ = self.shutdown.signal();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

/// Managed memory: the same pointers are valid on the CPU and on every device
/// of its `Svm`. Freed (with its device and staging pages) on drop.
///
/// CPU views borrow the region; a device access to the same bytes while a
/// `&mut` view is alive is a data race, exactly as with CUDA managed memory.
/// Use [`Region::as_atomic_u64`] for memory CPU threads and devices share.
pub struct Region<'s> {
    svm: &'s Svm,
    inner: Arc<RegionInner>,
}

impl std::fmt::Debug for Region<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("addr", &self.addr())
            .field("len", &self.len())
            .finish()
    }
}

impl Region<'_> {
    pub fn addr(&self) -> VirtAddr {
        VirtAddr(self.inner.base())
    }
    /// Length in bytes (a multiple of 4 KiB).
    pub fn len(&self) -> u64 {
        self.inner.len()
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn npages(&self) -> usize {
        self.inner.npages
    }
    /// The address `offset` bytes into the region.
    pub fn at(&self, offset: u64) -> VirtAddr {
        self.addr().offset(offset)
    }

    /// A typed view for the CPU: as many whole `T`s as fit in the region
    /// (empty for zero-sized `T`).
    pub fn as_slice<T: bytemuck::Pod>(&self) -> &[T] {
        // SAFETY: the mapping lives as long as `self`; device writes while this
        // view is alive are the caller's data race to avoid (type docs).
        let bytes = unsafe { self.inner.managed.as_slice() };
        bytemuck::cast_slice(&bytes[..whole_elements::<T>(bytes.len())])
    }

    /// A typed mutable view for the CPU (whole `T`s, as [`Region::as_slice`]).
    pub fn as_mut_slice<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        // SAFETY: `&mut self` makes this the only CPU view of the region's bytes.
        let bytes = unsafe { self.inner.managed.as_mut_slice() };
        let n = whole_elements::<T>(bytes.len());
        bytemuck::cast_slice_mut(&mut bytes[..n])
    }

    /// The region as 64-bit atomics, for memory shared by CPU threads and devices.
    pub fn as_atomic_u64(&self) -> &[std::sync::atomic::AtomicU64] {
        let words: &[u64] = self.as_slice();
        // SAFETY: AtomicU64 has the size and alignment of u64 (8-aligned on every
        // 64-bit target: the mapping is page-aligned); every access through the
        // returned slice is atomic.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len()) }
    }

    /// Sets this region's fault granularity (log2 pages, 0..=9).
    pub fn set_granularity(&self, g: u8) -> Result<()> {
        self.svm.set_granularity(self.addr(), self.len(), g)
    }

    /// Makes the region read-only (or writable again) for the CPU and every
    /// device. Device writes to a read-only region fail; its pages do not
    /// migrate (reported not migratable).
    pub fn protect(&self, prot: Prot) -> Result<()> {
        let r = &self.inner;
        for b in 0..r.blocks.len() {
            let _g = r.blocks[b].migrate.lock();
            r.invalidate(b, r.block_pages(b), UnmapTrigger::MmuNotify);
        }
        r.managed
            .protect(prot)
            .map_err(|e| Error::os("mprotect", e))?;
        r.writable.store(
            prot == Prot::ReadWrite,
            std::sync::atomic::Ordering::Release,
        );
        Ok(())
    }
}

/// Bytes of `len` that hold whole `T`s; 0 for zero-sized `T` (bytemuck
/// refuses to cast bytes to those), so typed views never panic.
fn whole_elements<T>(len: usize) -> usize {
    match std::mem::size_of::<T>() {
        0 => 0,
        n => len - len % n,
    }
}

impl Drop for Region<'_> {
    fn drop(&mut self) {
        self.svm.free_region(&self.inner);
    }
}

/// `cudaMemAdvise` advice, mapped onto range attributes by [`Svm::advise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemAdvice {
    SetReadMostly,
    UnsetReadMostly,
    SetPreferredLocation(Location),
    UnsetPreferredLocation,
    SetAccessedBy(DeviceId),
    UnsetAccessedBy(DeviceId),
}

/// Static facts about a device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub id: u8,
    pub name: String,
    pub memory_type: MemoryType,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// One device of an `Svm`, as the application drives it.
#[derive(Clone, Copy, Debug)]
pub struct DeviceHandle<'s> {
    svm: &'s Svm,
    id: DeviceId,
}

impl DeviceHandle<'_> {
    pub fn id(&self) -> DeviceId {
        self.id
    }

    pub fn info(&self) -> DeviceInfo {
        let d = &self.svm.shared.devices[self.id.0 as usize];
        DeviceInfo {
            id: self.id.0,
            name: d.name().to_string(),
            memory_type: d.memory_type(),
            capacity_bytes: d.capacity_pages() * PAGE_SIZE as u64,
            free_bytes: d.free_pages() * PAGE_SIZE as u64,
        }
    }

    /// Reads `buf.len()` bytes at `addr` through the device's page table.
    pub fn read(&self, addr: VirtAddr, buf: &mut [u8]) -> Result<AccessReport> {
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let res = access::access(sh, self.id, addr, Op::Read(buf));
        crate::failure::after_access(sh, self.id, res)
    }

    /// Writes `buf` at `addr` through the device's page table.
    pub fn write(&self, addr: VirtAddr, buf: &[u8]) -> Result<AccessReport> {
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let res = access::access(sh, self.id, addr, Op::Write(buf));
        crate::failure::after_access(sh, self.id, res)
    }

    /// Applies fault-injection settings to this device (validated as a
    /// whole first: refused settings change nothing). Devices without fault
    /// injection refuse.
    pub fn inject(&self, inj: crate::device::Injection) -> Result<()> {
        self.svm.shared.devices[self.id.0 as usize].inject(inj)
    }

    /// The fault-injection settings in force (`None`: not supported).
    pub fn injection(&self) -> Option<crate::device::Injection> {
        self.svm.shared.devices[self.id.0 as usize].injection()
    }

    /// Clears injected copy and allocation failures.
    pub fn clear_injection(&self) -> Result<()> {
        self.svm.shared.devices[self.id.0 as usize].clear_injection()
    }

    /// Simulates losing the device without warning: from now on every copy,
    /// load, store, atomic and allocation on it fails. svmem finds out at
    /// the next operation that touches the device, poisons the pages whose
    /// data was on it, and refuses further use until
    /// [`Svm::reset_device`].
    pub fn lose(&self) -> Result<()> {
        self.svm.shared.devices[self.id.0 as usize].lose()
    }

    /// Whether the device is lost (and not reset since).
    pub fn is_lost(&self) -> bool {
        self.svm.shared.devices[self.id.0 as usize].is_lost()
    }

    /// What the device would see of `npages` pages from `addr`, faulting nothing.
    pub fn snapshot(&self, addr: VirtAddr, npages: usize) -> Result<Vec<PageView>> {
        access::snapshot(&self.svm.shared, self.id, addr, npages)
    }

    /// Runs `kernel(lane, item)` for every work item in `0..grid` on the
    /// device's compute units. Accesses go through the device's page table;
    /// a fatal device fault stops the launch and is in the report (use
    /// [`LaunchReport::check`] to turn it into an error).
    pub fn launch<F>(&self, grid: u64, kernel: F) -> Result<LaunchReport>
    where
        F: Fn(&mut Lane<'_>, u64) -> std::result::Result<(), DeviceFault> + Sync,
    {
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let rep = crate::kernel::launch(sh, self.id, grid, kernel);
        sh.check_lost();
        rep
    }

    /// Fault-service statistics of this device (recent batches).
    pub fn fault_stats(&self) -> BatchStats {
        self.svm.shared.runtime[self.id.0 as usize].batch_stats()
    }

    /// Evicts every page this device holds back to system memory.
    pub fn release(&self) -> MigrateReport {
        let sh = &self.svm.shared;
        let regions: Vec<_> = sh.regions.read().values().cloned().collect();
        let mut rep = MigrateReport::default();
        for r in regions {
            // Pipelined like any migration: blocks locked in ascending order,
            // up to `pipeline_depth` in flight.
            let mut inflight = std::collections::VecDeque::new();
            for b in 0..r.blocks.len() {
                let pages = r.block_pages(b);
                let guard = r.blocks[b].migrate.lock();
                let idxs: Vec<usize> = pages
                    .filter(|&i| matches!(r.states[i].load(), PageState::Device { dev, .. } if dev == self.id))
                    .collect();
                rep.requested += idxs.len() as u64;
                if let Some(p) =
                    migrate::isolate_to_system(sh, &r, b, &idxs, false, Some(guard), &mut rep)
                {
                    inflight.push_back(p);
                }
                while inflight.len() > sh.pipeline_depth {
                    if let Some(p) = inflight.pop_front() {
                        migrate::finish_to_system(sh, &r, p, Trigger::Release, &mut rep);
                    }
                }
            }
            while let Some(p) = inflight.pop_front() {
                migrate::finish_to_system(sh, &r, p, Trigger::Release, &mut rep);
            }
        }
        sh.check_lost();
        rep
    }
}
