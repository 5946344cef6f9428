//! `Svm`: one shared address space — its managed regions, devices, the uffd
//! reader thread and counters — and the handles users hold: [`Region`] and
//! [`DeviceHandle`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::RwLock;

use super::device::DeviceHandle;
use super::region::Region;
use crate::addr::{DeviceId, Location, VirtAddr, BLOCK_PAGES, BLOCK_SIZE, PAGE_SIZE};
use crate::device::{Device, EmulatedConfig, EmulatedDevice, FreeBatch};
use crate::error::{Error, Result};
use crate::gpu::fault::DeviceRuntime;
use crate::gpu::Ctx;
use crate::mm::ctx::Shared;
use crate::mm::migrate::{self, MigrateReport, Trigger};
use crate::mm::space::{RegionInner, MAX_REGION_PAGES};
use crate::mm::state::{PageState, MAX_DEVICES};
use crate::observe::events::{EventStream, UnmapTrigger};
use crate::observe::notify::Notifier;
use crate::observe::stats::{Counters, Stats};
use crate::placement::attr::{AccessMode, Attr, AttrFlags, AttrMap, AttrQuery};
use crate::placement::policy::{KfdPolicy, PlacementPolicy};
use crate::pressure::{MemoryUsage, PressureState};
use crate::sync::Ordering;
use crate::sys::uffd::{OpenError, REQUIRED_FEATURES};
use crate::sys::AsyncSignalsBlocked;
use crate::sys::{Advice, EventFd, Mapping, Prot, Uffd};
use std::sync::atomic::AtomicBool;

/// Builds an [`Svm`]: its devices, the defaults of its regions, its
/// placement policy and its limits. Get one from [`Svm::builder`]; every
/// setter takes and returns the builder, and [`SvmBuilder::build`] checks
/// the whole configuration at once.
///
/// ```
/// use svmem::{DeviceId, EmulatedConfig, Svm};
///
/// let svm = Svm::builder()
///     .emulated(EmulatedConfig::with_memory(8 << 20))?   // dev0: 8 MiB
///     .emulated(EmulatedConfig::with_memory(4 << 20))?   // dev1: 4 MiB
///     .granularity(4)                                    // 64 KiB fault windows
///     .memory_limit(1 << 30)
///     .build()?;
/// assert_eq!(svm.device_ids(), [DeviceId(0), DeviceId(1)]);
/// assert_eq!(svm.device(DeviceId(1))?.info().capacity_bytes, 4 << 20);
/// assert_eq!(svm.memory_limit(), 1 << 30);
/// # Ok::<(), svmem::Error>(())
/// ```
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
    timing: Option<crate::device::TimingProfile>,
    peer_access: bool,
    eviction: crate::pressure::Eviction,
    throttle: bool,
    thrash_streak: u8,
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
            .field("eviction", &self.eviction)
            .field("throttle", &self.throttle)
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
            thrash_window: std::time::Duration::from_millis(
                crate::placement::policy::THRASH_WINDOW_MS,
            ),
            memory_limit: None,
            pin_limit: None,
            huge_pages: true,
            timing: None,
            peer_access: true,
            eviction: Default::default(),
            throttle: false,
            thrash_streak: 1,
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
    /// of evicting another block). Default [`crate::placement::policy::THRASH_WINDOW_MS`];
    /// zero turns the mitigation off.
    pub fn thrash_window(mut self, window: std::time::Duration) -> Self {
        self.thrash_window = window;
        self
    }

    /// How many evictions of a block in a row, each within the thrash
    /// window of the one before, make its next fault count as thrashing
    /// (default 1; 1 to 3). See `pressure::evict::thrashing`.
    pub fn thrash_streak(mut self, n: u8) -> Self {
        self.thrash_streak = n;
        self
    }

    /// The placement policy device faults consult (default [`KfdPolicy`]).
    pub fn policy(mut self, p: impl PlacementPolicy + 'static) -> Self {
        self.policy = Arc::new(p);
        self
    }

    /// The system-memory limit in bytes (default: the machine's RAM minus
    /// 1/64 and 1.5 GiB, see [`crate::default_memory_limit`]).
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
    /// move one PMD instead of 512 PTEs (ARCHITECTURE.md). Off: every
    /// page is a 4 KiB page, as the kernel's NOHUGEPAGE gives.
    pub fn huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }

    /// The timing model of every device (see [`crate::device::timing`]);
    /// default: each device's own (`none` for emulated devices).
    pub fn timing(mut self, profile: crate::device::TimingProfile) -> Self {
        self.timing = Some(profile);
        self
    }

    /// Whether pages held by one device migrate to another directly, device
    /// to device, where the two allow it (default on; emulated devices
    /// always can). Off: such pages go through system memory, and a
    /// `PeerFallback` event says so.
    pub fn peer_access(mut self, on: bool) -> Self {
        self.peer_access = on;
        self
    }

    /// Which block eviction takes first under device-memory pressure
    /// (default [`crate::Eviction::Clock`]; see [`crate::Eviction`]).
    pub fn eviction(mut self, policy: crate::pressure::Eviction) -> Self {
        self.eviction = policy;
        self
    }

    /// Throttle mode, for demos (default off): wall time follows the timing
    /// model, each device sleeping so that its wall time since `build` is
    /// at least its modelled time (see [`crate::device::timing`]).
    pub fn throttle(mut self, on: bool) -> Self {
        self.throttle = on;
        self
    }

    /// Checks the configuration and starts the address space: opens the
    /// userfaultfd, maps its scratch areas and starts the `svmem-uffd`
    /// reader thread and, per device, a fault-service and a restore thread
    /// (all stopped when the `Svm` drops).
    ///
    /// Errors: [`Error::Config`] (more than 8 devices, pipeline depth
    /// outside 1..=64, a timing profile a device refuses),
    /// [`Error::Granularity`] (above 9), [`Error::UffdPermission`] and
    /// [`Error::UffdMissingFeature`] (the kernel or the user's rights do
    /// not allow svmem; the message says how to fix it), [`Error::Os`] (a
    /// system call or thread start failed).
    pub fn build(self) -> Result<Svm> {
        if let Some(p) = self.timing {
            crate::device::timing::apply(&self.devices, p)?;
        }
        if !(1..=crate::pressure::evict::MAX_THRASH_STREAK).contains(&self.thrash_streak) {
            return Err(Error::Config(format!(
                "thrash streak {}: use 1 to {}",
                self.thrash_streak,
                crate::pressure::evict::MAX_THRASH_STREAK
            )));
        }
        if self.throttle {
            crate::device::timing::throttle(&self.devices)?;
        }
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
        // The probe page (`Shared::probe`): populated, then registered.
        let probe = Mapping::anonymous(PAGE_SIZE, Prot::ReadWrite, true)
            .map_err(|e| Error::os("mmap probe page", e))?;
        let _ = probe.madvise(0, PAGE_SIZE, crate::sys::Advice::DontFork);
        probe
            .write_at(0, &[1])
            .map_err(|e| Error::os("populate probe page", e))?;
        uffd.register(probe.addr(), PAGE_SIZE as u64, false)
            .map_err(|e| Error::os("UFFDIO_REGISTER probe page", e))?;
        let ndev = self.devices.len();
        let attrs = Arc::new(RwLock::new(AttrMap::new(self.granularity)));
        let pressure = Arc::new(PressureState::new(
            ndev,
            self.thrash_window.as_nanos().min(u64::MAX as u128) as u64,
            crate::pressure::account::Accountant::new(
                self.memory_limit
                    .unwrap_or_else(crate::pressure::account::default_limit),
                self.pin_limit,
            ),
            attrs.clone(),
        ));
        let peers = (0..ndev)
            .map(|d| {
                (0..ndev)
                    .filter(|&a| {
                        a != d
                            && self.peer_access
                            && self.devices[d].connect_peer(DeviceId(a as u8), &self.devices[a])
                    })
                    .fold(0u64, |m, a| m | 1 << a)
            })
            .collect();
        pressure.eviction.set(self.eviction);
        pressure
            .thrash_streak
            .store(self.thrash_streak, Ordering::Relaxed);
        let core = Arc::new(Shared {
            uffd,
            peers,
            pending: Default::default(),
            events: Default::default(),
            devices: self.devices,
            regions: RwLock::new(BTreeMap::new()),
            installing: Default::default(),
            own_removes: Default::default(),
            kick: EventFd::new().map_err(|e| Error::os("eventfd", e))?,
            counters: Counters::default(),
            zeros,
            probe,
            pipeline_depth: self.pipeline_depth,
            granularity: self.granularity,
            notifier: Arc::new(Notifier::new(ndev)),
            losses: Default::default(),
            reset_gate: Default::default(),
            huge: crate::mm::huge::HugePool::new(self.huge_pages),
            pressure: pressure.clone(),
        });
        let shared = Arc::new(Ctx {
            sh: core,
            pressure,
            attrs,
            policy: RwLock::new(self.policy),
            xnack: AtomicBool::new(self.xnack),
            runtime: (0..ndev).map(|_| DeviceRuntime::default()).collect(),
        });
        let shutdown = Arc::new(EventFd::new().map_err(|e| Error::os("eventfd", e))?);
        let mut svm = Svm {
            owner: std::process::id(),
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
        let (sh, sd) = (shared.sh.clone(), shutdown);
        svm.reader = Some(spawn(
            "svmem-uffd".into(),
            Box::new(move || crate::cpu::reader::reader_loop(sh, sd)),
        )?);
        for i in 0..ndev {
            let d = DeviceId(i as u8);
            let sh = shared.clone();
            svm.workers.push(spawn(
                format!("svmem-fault{i}"),
                Box::new(move || crate::gpu::fault::service_loop(sh, d)),
            )?);
            let sh = shared.clone();
            svm.workers.push(spawn(
                format!("svmem-restore{i}"),
                Box::new(move || crate::gpu::restore::restore_loop(sh, d)),
            )?);
        }
        super::fork::register(&svm.shared, svm.owner);
        Ok(svm)
    }
}

/// One shared virtual address space: its managed regions, its devices and
/// the threads that serve their faults. Build one with
/// [`Svm::with_emulated`] or [`Svm::builder`] (an example is at
/// [`SvmBuilder`]); the crate docs explain the model. `Svm` is `Send` and
/// `Sync`: every method takes `&self` and may be called from any thread,
/// concurrently with CPU accesses to managed memory.
///
/// ```
/// fn shared_between_threads<T: Send + Sync>() {}
/// shared_between_threads::<svmem::Svm>();
/// shared_between_threads::<svmem::Region<'static>>();
/// shared_between_threads::<svmem::DeviceHandle<'static>>();
/// fn moved_to_threads<T: Send>() {}
/// moved_to_threads::<svmem::EventStream>();
/// ```
///
/// # fork
///
/// Before every `fork()` of the process, svmem brings every device-resident
/// page home (migrations to devices in other threads are refused until the
/// fork returns), so the child sees every managed byte as it was. In the
/// child, the parent's `Svm` and everything from it are dead: methods return
/// [`Error::Forked`] (or panic with its message where they return no
/// `Result`); CPU views and address getters of a `Region` still work on the
/// child's own copy; dropping does nothing. The child builds its own `Svm`
/// to manage memory. Do not fork from inside svmem callbacks (placement
/// policies, kernels): they run under locks the fork's preparation needs.
pub struct Svm {
    /// The process that built it: in any other (a forked child) it is dead.
    owner: u32,
    pub(crate) shared: Arc<Ctx>,
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
    /// `Err(Error::Forked)` in a process other than the one that built this
    /// `Svm` (a forked child), where it must not be used: see the crate docs
    /// on fork.
    pub(crate) fn check_owner(&self) -> Result<()> {
        let pid = std::process::id();
        if pid == self.owner {
            Ok(())
        } else {
            Err(Error::Forked {
                owner: self.owner,
                pid,
            })
        }
    }

    /// [`Svm::check_owner`] for methods that return no `Result`: panics in a
    /// forked child.
    #[track_caller]
    pub(crate) fn assert_owner(&self) {
        if let Err(e) = self.check_owner() {
            panic!("{e}");
        }
    }

    /// A builder with the defaults: no devices, granularity 9 (2 MiB),
    /// pipeline depth 4, XNACK on, [`KfdPolicy`], huge pages on, the memory
    /// limit of [`crate::default_memory_limit`]. See [`SvmBuilder`].
    pub fn builder() -> SvmBuilder {
        SvmBuilder::default()
    }

    /// An `Svm` with one emulated device of `device_bytes` of memory.
    pub fn with_emulated(device_bytes: u64) -> Result<Svm> {
        Svm::builder()
            .emulated(EmulatedConfig::with_memory(device_bytes))?
            .build()
    }

    /// Allocates `len` bytes (rounded up to 4 KiB) of managed memory: a new
    /// region, 2 MiB aligned, whose pages are untouched (no memory anywhere)
    /// until the CPU or a device first writes them; untouched pages read as
    /// zeros. Its fault granularity is the builder's.
    /// The page-rounded length is charged against the memory limit now.
    /// Dropping the [`Region`] frees it.
    ///
    /// Errors: [`Error::ZeroLength`] (`len == 0`),
    /// [`Error::MemoryLimit`] (past the system-memory limit),
    /// [`Error::AllocTooLarge`] (larger than one region holds, or the
    /// kernel refused the mappings).
    ///
    /// ```
    /// use svmem::{Svm, PAGE_SIZE};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let mut r = svm.alloc(10_000)?;                     // rounded up to 3 pages
    /// assert_eq!(r.len(), 3 * PAGE_SIZE as u64);
    /// assert!(r.as_slice::<u8>().iter().all(|&b| b == 0)); // untouched: zeros
    /// r.as_mut_slice::<u64>()[5] = 7;
    /// assert_eq!(r.as_slice::<u64>()[5], 7);
    /// assert!(svm.alloc(0).is_err());
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn alloc(&self, len: usize) -> Result<Region<'_>> {
        self.check_owner()?;
        let pages = len.div_ceil(PAGE_SIZE);
        if pages == 0 {
            return Err(Error::ZeroLength {
                what: "an allocation",
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
        let charge = sh
            .pressure
            .account
            .admit_region(sh, bytes as u64, metadata)?;
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
        self.install_region(managed, staging, charge)
    }

    /// Manages the program's own memory `[ptr, ptr+len)` in place, contents
    /// kept: anonymous private memory from `mmap`, `malloc` or a `Vec`
    /// (page aligned), like system-allocated memory under HMM (AMD with
    /// XNACK on, Grace Hopper) or `cudaHostRegister`. Pages already there
    /// stay in system memory until something migrates them; untouched pages
    /// read as zeros. Dropping the returned [`Region`], or
    /// [`Region::unregister`], brings every page back to system memory with
    /// its data and leaves the range an ordinary mapping, never unmapped.
    ///
    /// Errors: [`Error::Unaligned`] (`ptr` or `len` not a multiple of
    /// 4 KiB), [`Error::ZeroLength`], [`Error::AlreadyManaged`] (overlaps
    /// managed memory), [`Error::CannotRegister`] (part of the range is not
    /// mapped, is file-backed or shared, or another userfaultfd holds it).
    ///
    /// # Safety
    /// The range must be memory the caller owns, and for as long as the
    /// region lives the caller must reach it only through the region (its
    /// views, devices, raw pointers used as with any managed memory), never
    /// through a Rust reference that existed before (a `Vec`'s slice): svmem
    /// moves the pages in and out, and its views assume no other reference.
    pub unsafe fn register(&self, ptr: *mut u8, len: usize) -> Result<Region<'_>> {
        self.check_owner()?;
        let addr = ptr as u64;
        if addr % PAGE_SIZE as u64 != 0 {
            return Err(Error::Unaligned {
                what: "address",
                value: addr,
            });
        }
        if len % PAGE_SIZE != 0 {
            return Err(Error::Unaligned {
                what: "length",
                value: len as u64,
            });
        }
        if len == 0 {
            return Err(Error::ZeroLength {
                what: "a registration",
            });
        }
        let pages = len / PAGE_SIZE;
        let cannot = |reason: String| Error::CannotRegister {
            addr: VirtAddr(addr),
            len: len as u64,
            reason,
        };
        if pages > MAX_REGION_PAGES {
            return Err(cannot(format!(
                "one region holds at most {} bytes; register it in parts",
                MAX_REGION_PAGES * PAGE_SIZE
            )));
        }
        let end = addr.checked_add(len as u64).ok_or(Error::RangeOverflow {
            what: "registered range",
            start: VirtAddr(addr),
            count: len as u64,
            unit: "bytes",
        })?;
        if let Some(r) = self
            .shared
            .regions_overlapping(addr, end)
            .into_iter()
            .next()
        {
            return Err(Error::AlreadyManaged {
                addr: VirtAddr(addr.max(r.base())),
            });
        }
        let managed = Mapping::adopt(addr, len).map_err(|e| {
            cannot(match e.raw_os_error() {
                Some(libc::EFAULT) => "part of the range is not mapped".into(),
                Some(libc::EINVAL) => "it is file-backed or shared memory; svmem manages private \
                    anonymous memory (mmap MAP_PRIVATE|MAP_ANONYMOUS, malloc, Vec)"
                    .into(),
                _ => format!("its mappings cannot be read: {e}"),
            })
        })?;
        let sh = &self.shared;
        let metadata = RegionInner::metadata_bytes_for(pages, sh.devices.len());
        let charge = sh.pressure.account.admit_region(sh, len as u64, metadata)?;
        // Staging congruent to the range modulo 2 MiB: whole blocks move by
        // one PMD where the program's memory is huge-page mapped.
        let staging =
            Mapping::anonymous_phased(len, BLOCK_SIZE, addr as usize % BLOCK_SIZE, Prot::ReadWrite)
                .map_err(|e| cannot(format!("cannot map its staging area: {e}")))?;
        self.install_region(managed, staging, charge)
    }

    /// Registers `managed` and `staging` with the userfaultfd and makes them
    /// a region. For adopted memory, pages already holding data (present or
    /// swapped out) start in system memory, found after registration (from
    /// then on only svmem fills a missing page).
    fn install_region(
        &self,
        managed: Mapping,
        staging: Mapping,
        charge: crate::pressure::account::RegionCharge<'_>,
    ) -> Result<Region<'_>> {
        let sh = &self.shared;
        let bytes = managed.len();
        staging
            .madvise(0, bytes, Advice::NoHugePage)
            .map_err(|e| Error::os("madvise(MADV_NOHUGEPAGE)", e))?;
        if !managed.is_adopted() {
            // Managed memory is huge-page advised (with huge pages on) so
            // that a CPU fault on an empty block builds no page table;
            // staging gets no huge page but those moves bring (see
            // crate::mm::huge). Adopted memory keeps the program's advice.
            let advice = if sh.huge.enabled() {
                Advice::HugePage
            } else {
                Advice::NoHugePage
            };
            managed
                .madvise(0, bytes, advice)
                .map_err(|e| Error::os("madvise(MADV_[NO]HUGEPAGE)", e))?;
        }
        // Faults in the range before it is in the region map are ours, not
        // strays (see `mm::remap::release_stray`).
        struct Installing<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Installing<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        sh.installing.fetch_add(1, Ordering::AcqRel);
        let _installing = Installing(&sh.installing);
        sh.uffd
            .register(managed.addr(), bytes as u64, true)
            .map_err(|e| match (managed.is_adopted(), e.raw_os_error()) {
                (true, Some(libc::EBUSY)) => Error::CannotRegister {
                    addr: VirtAddr(managed.addr()),
                    len: bytes as u64,
                    reason: "another userfaultfd (another Svm?) holds part of it".into(),
                },
                _ => Error::os("UFFDIO_REGISTER (managed)", e),
            })?;
        if let Err(e) = sh.uffd.register(staging.addr(), bytes as u64, false) {
            let _ = sh.uffd.unregister(managed.addr(), bytes as u64);
            return Err(Error::os("UFFDIO_REGISTER (staging)", e));
        }
        let populated = match managed.is_adopted() {
            true => Some(
                crate::sys::populated_pages(managed.addr(), bytes / PAGE_SIZE).map_err(|e| {
                    let _ = sh.uffd.unregister(managed.addr(), bytes as u64);
                    let _ = sh.uffd.unregister(staging.addr(), bytes as u64);
                    Error::os("PAGEMAP_SCAN", e)
                })?,
            ),
            false => None,
        };
        let inner = Arc::new(RegionInner::new(
            managed,
            staging,
            sh.devices.len(),
            sh.granularity,
            sh.notifier.clone(),
        ));
        for (i, _) in populated.iter().flatten().enumerate().filter(|(_, p)| **p) {
            let _ = inner.states[i].populate();
        }
        sh.regions.write().insert(inner.base(), inner.clone());
        charge.commit();
        Ok(Region {
            svm: self,
            inner,
            freed: false,
        })
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
        // A munmap or mremap that returned is handled before the range is
        // looked up.
        self.shared.events.wait();
        let r = self.shared.region_for(addr, len)?;
        let first = r.page_of(addr.0);
        Ok((r, first, (len / PAGE_SIZE as u64) as usize))
    }

    /// Migrates the page-aligned range `[addr, addr+len)` to `to`, best effort
    /// per page; the report says what moved and why the rest did not. Returns
    /// when the pages have moved (the copies are done). Safe to call from any thread,
    /// alongside CPU accesses, device accesses and kernels on the same
    /// pages: a CPU touch of a page in flight waits for it, a busy page is
    /// retried and then counted in `skipped_busy`. A full device evicts its
    /// coldest 2 MiB blocks to make room.
    ///
    /// Errors: [`Error::Unaligned`] (`addr` or `len` not a multiple of
    /// 4 KiB), [`Error::EmptyRange`], [`Error::OutsideManaged`] (not inside
    /// one region), [`Error::Unmapped`] (the range holds a page the program
    /// unmapped; nothing moves), [`Error::UnknownDevice`],
    /// [`Error::DeviceLost`], [`Error::DeviceMemory`] (more than the device
    /// can ever hold).
    ///
    /// ```
    /// use svmem::{DeviceId, Location, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let mut r = svm.alloc(1 << 20)?;                     // 256 pages
    /// r.as_mut_slice::<u32>().fill(0xabcd);
    ///
    /// let to_dev = svm.migrate(r.addr(), r.len(), Location::Device(DeviceId(0)))?;
    /// assert_eq!((to_dev.migrated, to_dev.skipped()), (256, 0));
    /// assert_eq!(svm.location(r.at(4096)), Some(Location::Device(DeviceId(0))));
    ///
    /// let home = svm.migrate(r.addr(), r.len(), Location::System)?;
    /// assert_eq!(home.migrated, 256);
    /// assert_eq!(svm.location(r.addr()), Some(Location::System));
    /// assert!(r.as_slice::<u32>().iter().all(|&x| x == 0xabcd));
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn migrate(&self, addr: VirtAddr, len: u64, to: Location) -> Result<MigrateReport> {
        self.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        if let Location::Device(d) = to {
            self.shared.check_device_alive(d)?;
        }
        // A munmap that returned is handled first; then a range with a hole
        // migrates nothing (migrate_vma answers -EINVAL).
        self.shared.events.wait();
        let (r, first, n) = self.check_range(addr, len)?;
        refuse_holes(&r, first, n)?;
        if let Location::Device(d) = to {
            crate::pressure::evict::admit(&self.shared, &r, first, n, d)?;
        }
        let t0 = crate::device::timing::copies_ps(&self.shared.devices);
        let mut rep = migrate::migrate_range(&self.shared, &r, first, n, to, Trigger::Explicit);
        rep.modelled_ns = (crate::device::timing::copies_ps(&self.shared.devices) - t0) / 1000;
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
    pub fn reset_device(&self, d: DeviceId) -> Result<crate::pressure::failure::ResetReport> {
        self.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        let sh = &self.shared;
        sh.device(d)?;
        let _idle = sh.runtime[d.0 as usize]
            .idle_guard()
            .map_err(|running| Error::Busy {
                what: "resetting the device",
                dev: d,
                running,
            })?;
        crate::pressure::failure::reset_device(sh, &sh.pressure, d)
    }

    /// Sets the fault granularity (log2 pages, 0..=9) of every 2 MiB block the
    /// page-aligned range touches.
    pub fn set_granularity(&self, addr: VirtAddr, len: u64, g: u8) -> Result<()> {
        self.check_owner()?;
        if g > 9 {
            return Err(Error::Granularity { value: g });
        }
        self.set_attributes(addr, len, &[Attr::Granularity(g)])
    }

    /// Sets range attributes on the page-aligned range, as one transaction
    /// with the semantics of AMD's SVM ioctl (see [`crate::placement::attr`]): all are
    /// validated before any applies. Afterwards device mappings of the changed
    /// sub-ranges are invalidated, ranges a device must keep mapped (XNACK off
    /// with access granted, or always mapped) are mapped again, and a
    /// prefetch location migrates the whole range now, every time it is set.
    ///
    /// Attributes live on the address range, not on a region's pages: they
    /// are kept per page range, split and merged as calls change them, and
    /// read by the placement policy on every device fault. Read them back
    /// with [`Svm::attributes`].
    ///
    /// Errors: the range errors of [`Svm::migrate`]; [`Error::Attr`] with an
    /// [`AttrError`](crate::error::AttrError) for an empty list, an unknown
    /// device, a granularity above 9, or two values for one attribute (then
    /// nothing applies); [`Error::DeviceLost`] / [`Error::DeviceMemory`] from
    /// a prefetch to a device.
    ///
    /// ```
    /// use svmem::{AccessMode, Attr, AttrFlags, Common, DeviceId, Location, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let r = svm.alloc(2 << 20)?;
    /// let dev0 = Location::Device(DeviceId(0));
    /// svm.set_attributes(r.addr(), r.len(), &[
    ///     Attr::PreferredLocation(Some(dev0)),         // device faults migrate there
    ///     Attr::SetFlags(AttrFlags::READ_MOSTLY),
    ///     Attr::Granularity(4),                        // 16 pages per fault
    /// ])?;
    /// let q = svm.attributes(r.addr(), r.len())?;
    /// assert_eq!(q.preferred, Common::Same(Some(dev0)));
    /// assert!(q.flags.contains(AttrFlags::READ_MOSTLY));
    /// assert_eq!(q.granularity, 4);
    /// assert_eq!(q.access, [Common::Same(AccessMode::Access)]); // XNACK on: default access
    ///
    /// // Validated as a whole: a bad attribute applies nothing.
    /// assert!(svm.set_attributes(r.addr(), r.len(), &[Attr::Granularity(10)]).is_err());
    /// assert_eq!(svm.attributes(r.addr(), r.len())?.granularity, 4);
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn set_attributes(&self, addr: VirtAddr, len: u64, attrs: &[Attr]) -> Result<()> {
        self.check_owner()?;
        self.apply_attributes(addr, len, attrs).map(|_| ())
    }

    fn apply_attributes(
        &self,
        addr: VirtAddr,
        len: u64,
        attrs: &[Attr],
    ) -> Result<Option<MigrateReport>> {
        self.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        let (r, first, n) = self.check_range(addr, len)?;
        let sh = &self.shared;
        // Prefetching to a lost device, or more than the device can hold, is
        // refused before anything changes.
        for a in attrs {
            if let Attr::PrefetchLocation(Some(Location::Device(d))) = a {
                if sh.device(*d).is_ok() {
                    sh.check_device_alive(*d)?;
                    crate::pressure::evict::admit(sh, &r, first, n, *d)?;
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
            let pages = (s - base) as usize..(e - base) as usize;
            r.invalidate_range(pages, UnmapTrigger::MmuNotify, |b, _| {
                if blocks.last() != Some(&b) {
                    blocks.push(b);
                }
            });
        }
        for &b in &blocks {
            crate::gpu::map::refresh_block(sh, &r, b);
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
                    crate::gpu::map::map_ahead_block(&self.shared, r, DeviceId(d as u8), b);
                }
            }
        }
    }

    /// The attributes of the page-aligned range: each value common to all of
    /// it or `Mixed`, flags as the AND over sub-ranges, granularity the minimum.
    pub fn attributes(&self, addr: VirtAddr, len: u64) -> Result<AttrQuery> {
        self.check_owner()?;
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
    /// never migrate on its faults). Unset restores the default. See
    /// [`MemAdvice`] for each advice's attribute; errors are those of
    /// [`Svm::set_attributes`].
    ///
    /// ```
    /// use svmem::{AccessMode, Common, DeviceId, Location, MemAdvice, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let r = svm.alloc(1 << 20)?;
    /// let dev0 = DeviceId(0);
    /// svm.advise(r.addr(), r.len(), MemAdvice::SetPreferredLocation(Location::System))?;
    /// svm.advise(r.addr(), r.len(), MemAdvice::SetAccessedBy(dev0))?;
    /// let q = svm.attributes(r.addr(), r.len())?;
    /// assert_eq!(q.preferred, Common::Same(Some(Location::System)));
    /// assert_eq!(q.access[0], Common::Same(AccessMode::AccessInPlace));
    ///
    /// svm.advise(r.addr(), r.len(), MemAdvice::UnsetAccessedBy(dev0))?;
    /// assert_eq!(svm.attributes(r.addr(), r.len())?.access[0], Common::Same(AccessMode::Access));
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn advise(&self, addr: VirtAddr, len: u64, advice: MemAdvice) -> Result<()> {
        self.check_owner()?;
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
    /// location, which migrates the range now; returns what moved. Unlike
    /// CUDA's, it returns when the pages are there. Errors: those of
    /// [`Svm::migrate`] (a range with a hole moves nothing).
    ///
    /// ```
    /// use svmem::{Common, DeviceId, Location, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let mut r = svm.alloc(2 << 20)?;
    /// r.as_mut_slice::<u8>().fill(3);
    /// let dev0 = Location::Device(DeviceId(0));
    /// let report = svm.prefetch(r.addr(), r.len(), dev0)?;
    /// assert_eq!(report.migrated, 512);
    /// assert_eq!(svm.location(r.addr()), Some(dev0));
    /// assert_eq!(svm.attributes(r.addr(), r.len())?.prefetch, Common::Same(Some(dev0)));
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn prefetch(&self, addr: VirtAddr, len: u64, to: Location) -> Result<MigrateReport> {
        self.check_owner()?;
        // Like a migration, a prefetch over a hole moves nothing.
        let (r, first, n) = self.check_range(addr, len)?;
        refuse_holes(&r, first, n)?;
        Ok(self
            .apply_attributes(addr, len, &[Attr::PrefetchLocation(Some(to))])?
            .unwrap_or_default())
    }

    /// Whether device faults are retried (XNACK on).
    pub fn xnack(&self) -> bool {
        self.assert_owner();
        self.shared.xnack.load(Ordering::Acquire)
    }

    /// Switches retry faults on or off; refused while any kernel runs.
    /// Switching off maps every range devices have access to ahead.
    pub fn set_xnack(&self, on: bool) -> Result<()> {
        self.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
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
                crate::gpu::map::refresh_block(sh, r, b);
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
        self.assert_owner();
        *self.shared.policy.write() = Arc::new(p);
    }

    /// The name of the placement policy in use.
    pub fn policy_name(&self) -> String {
        self.assert_owner();
        self.shared.policy.read().name().to_string()
    }

    /// Subscribes to the event stream; a subscriber that falls `capacity`
    /// events behind loses the newest ones (counted), never stalls svmem.
    /// Each stream sees the events emitted after it subscribed, in order;
    /// any number of streams may be open, and a stream can be moved to
    /// another thread. With no stream open, svmem builds no events.
    ///
    /// ```
    /// use svmem::{DeviceId, EventKind, Location, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let mut r = svm.alloc(1 << 20)?;
    /// r.as_mut_slice::<u8>().fill(1);
    /// let events = svm.subscribe(1024);
    /// svm.migrate(r.addr(), r.len(), Location::Device(DeviceId(0)))?;
    /// let ends: Vec<u64> = events
    ///     .drain()
    ///     .into_iter()
    ///     .filter_map(|e| match e.kind {
    ///         EventKind::MigrateEnd { migrated, to: Location::Device(_), .. } => Some(migrated),
    ///         _ => None,
    ///     })
    ///     .collect();
    /// assert_eq!(ends.iter().sum::<u64>(), 256);
    /// assert_eq!(events.dropped(), 0);
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn subscribe(&self, capacity: usize) -> EventStream {
        self.assert_owner();
        self.shared.notifier.events.subscribe(capacity)
    }

    /// Now on the event stream's clock, in nanoseconds: the `ts_ns` an event
    /// emitted at this moment would carry. An observer stamps its own samples
    /// (e.g. of [`Svm::memory_usage`]) with it to place them among events.
    pub fn event_clock_ns(&self) -> u64 {
        self.assert_owner();
        self.shared.notifier.events.now_ns()
    }

    /// A handle for device `id`: its facts, direct reads and writes through
    /// its page table, kernel launches, fault injection. Cheap (`Copy`);
    /// borrow as many as you like, from any thread.
    ///
    /// Errors: [`Error::UnknownDevice`] for an id this `Svm` does not have.
    ///
    /// ```
    /// use svmem::{DeviceId, Location, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let dev = svm.device(DeviceId(0))?;
    /// assert_eq!(dev.info().capacity_bytes, 8 << 20);
    /// assert!(svm.device(DeviceId(1)).is_err());
    ///
    /// let r = svm.alloc(1 << 20)?;
    /// svm.migrate(r.addr(), r.len(), Location::Device(DeviceId(0)))?;
    /// dev.write(r.at(100), b"hello")?;              // through the device's page table
    /// let mut buf = [0u8; 5];
    /// dev.read(r.at(100), &mut buf)?;
    /// assert_eq!(&buf, b"hello");
    /// assert_eq!(&r.as_slice::<u8>()[100..105], b"hello"); // the CPU faults it back
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn device(&self, id: DeviceId) -> Result<DeviceHandle<'_>> {
        self.check_owner()?;
        self.shared.device(id)?;
        Ok(DeviceHandle { svm: self, id })
    }

    /// The ids of this `Svm`'s devices, `DeviceId(0)` up, in the order the
    /// builder received them.
    pub fn device_ids(&self) -> Vec<DeviceId> {
        self.assert_owner();
        (0..self.shared.devices.len())
            .map(|i| DeviceId(i as u8))
            .collect()
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.assert_owner();
        let sh = &self.shared;
        let mut s = sh.counters.snapshot(sh.metadata_bytes());
        for q in sh.notifier.queues.iter() {
            s.queue_evictions += q.evictions.load(Ordering::Relaxed);
            s.queue_restores += q.restores.load(Ordering::Relaxed);
            s.queue_restore_retries += q.restore_retries.load(Ordering::Relaxed);
        }
        s.events_dropped = sh.notifier.events.dropped();
        for t in sh
            .devices
            .iter()
            .filter_map(|d| d.clock())
            .map(|c| c.report())
        {
            s.modelled_ns += t.modelled.as_nanos() as u64;
            s.remote_read_bytes += t.remote_read_bytes;
            s.remote_write_bytes += t.remote_write_bytes;
        }
        s
    }

    /// Where page `addr` lives now (`None` outside managed memory or while it migrates).
    pub fn location(&self, addr: VirtAddr) -> Option<Location> {
        self.assert_owner();
        self.shared.events.wait();
        let r = self.shared.region_at(addr.0)?;
        match r.states[r.page_of(addr.0)].load() {
            PageState::Unpopulated | PageState::System => Some(Location::System),
            PageState::Device { dev, .. } => Some(Location::Device(dev)),
            PageState::Migrating | PageState::Poisoned | PageState::Hole => None,
        }
    }

    /// Frees a region. Adopted memory ([`Svm::register`]) first comes home
    /// to system memory with its data: the report says what did (pages of a
    /// lost device are poisoned and cannot).
    pub(crate) fn free_region(&self, r: &Arc<RegionInner>) -> MigrateReport {
        let _signals = AsyncSignalsBlocked::new();
        let sh = &self.shared;
        // Munmaps of the region's pages that returned are recorded as holes
        // before anything below looks at them.
        sh.events.wait();
        let mut home = MigrateReport::default();
        if r.managed.is_adopted() {
            let (to, trigger) = (Location::System, Trigger::Release);
            migrate::pipeline(sh, r, 0..r.npages, to, None, trigger, &mut home);
            sh.check_lost();
        }
        r.freed.store(true, std::sync::atomic::Ordering::Release);
        {
            let mut map = sh.regions.write();
            if map.get(&r.base()).is_some_and(|x| Arc::ptr_eq(x, r)) {
                map.remove(&r.base());
            }
        }
        for blk in r.blocks.iter() {
            // No restore worker maps a block of a region being freed.
            blk.keep_mapped.store(0, Ordering::Release);
        }
        r.invalidate_range(0..r.npages, UnmapTrigger::UnmapFromCpu, |_, pages| {
            let mut freed = FreeBatch::new(&sh.devices);
            for i in pages {
                if let Ok(PageState::Device { dev, page, .. }) = r.states[i].discard() {
                    freed.push(dev, page);
                }
            }
        });
        crate::pressure::evict::forget_region(sh, &sh.pressure, r);
        let first = r.base() / PAGE_SIZE as u64;
        sh.attrs.write().remove(first, first + r.npages as u64);
        crate::pressure::pin::release_region(sh, &sh.pressure, r);
        sh.pressure.account.uncharge_region(r.len());
        // Unregister before the mappings go, so munmap sends no UNMAP event.
        // Holes are skipped: the program unmapped them, and what it mapped
        // there since is its own (the managed mapping's drop skips them too).
        for (off, len) in r.managed.owned_ranges() {
            let at = r.base() + off as u64;
            if let Err(e) = sh.uffd.unregister(at, len as u64) {
                eprintln!("svmem: UFFDIO_UNREGISTER of region {at:#x}+{len:#x} failed: {e}");
            }
        }
        if let Err(e) = sh.uffd.unregister(r.staging.addr(), r.len()) {
            eprintln!(
                "svmem: UFFDIO_UNREGISTER of staging {:#x} failed: {e}",
                r.staging.addr()
            );
        }
        home
    }
}

/// [`Error::Unmapped`] naming the first hole (a page the program unmapped)
/// among pages `[first, first + n)` of `r`: migrations, prefetches and pins
/// over a hole do nothing (the kernel's `migrate_vma` answers -EINVAL).
fn refuse_holes(r: &RegionInner, first: usize, n: usize) -> Result<()> {
    match (first..first + n).find(|&k| r.states[k].load() == PageState::Hole) {
        Some(k) => Err(Error::Unmapped { addr: r.addr_of(k) }),
        None => Ok(()),
    }
}

impl Drop for Svm {
    fn drop(&mut self) {
        if self.check_owner().is_err() {
            // A forked child: its svmem threads do not exist, the uffd and
            // devices are the parent's. Tear nothing down (leak it all; the
            // child's copy of the memory goes when it exits).
            std::mem::forget(self.shared.clone());
            std::mem::forget(self.shutdown.clone());
            for h in self.workers.drain(..) {
                std::mem::forget(h);
            }
            std::mem::forget(self.reader.take());
            return;
        }
        super::fork::unregister(&self.shared);
        // A region that outlives its Svm (leaked with `mem::forget`) keeps
        // its mapping, which becomes ordinary memory once the userfaultfd
        // closes: bring its device-resident pages home first, while the
        // devices, the copy engines and the reader still run.
        let regions: Vec<_> = self.shared.regions.read().values().cloned().collect();
        for r in regions {
            let _signals = AsyncSignalsBlocked::new();
            let mut rep = MigrateReport::default();
            let (to, trigger) = (Location::System, Trigger::Release);
            migrate::pipeline(&self.shared, &r, 0..r.npages, to, None, trigger, &mut rep);
        }
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

/// `cudaMemAdvise` advice, mapped onto range attributes by [`Svm::advise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemAdvice {
    /// `cudaMemAdviseSetReadMostly`: sets [`AttrFlags::READ_MOSTLY`].
    SetReadMostly,
    /// `cudaMemAdviseUnsetReadMostly`: clears [`AttrFlags::READ_MOSTLY`].
    UnsetReadMostly,
    /// `cudaMemAdviseSetPreferredLocation`: sets the preferred location
    /// ([`Attr::PreferredLocation`]), where device faults migrate the data.
    SetPreferredLocation(Location),
    /// `cudaMemAdviseUnsetPreferredLocation`: no preferred location.
    UnsetPreferredLocation,
    /// `cudaMemAdviseSetAccessedBy`: the device gets access in place
    /// ([`AccessMode::AccessInPlace`]): its faults map the data where it is
    /// instead of migrating it.
    SetAccessedBy(DeviceId),
    /// `cudaMemAdviseUnsetAccessedBy`: the device's access goes back to the
    /// default (access with XNACK on, none with XNACK off).
    UnsetAccessedBy(DeviceId),
}

impl Svm {
    /// Where memory is and what is charged against the system-memory limit,
    /// now (one scan of every page-state table). See [`MemoryUsage`]. A
    /// snapshot: pages that migrate during the scan are counted where the
    /// scan found them.
    ///
    /// ```
    /// use svmem::{DeviceId, Location, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let mut r = svm.alloc(4 << 20)?;
    /// let u = svm.memory_usage();
    /// assert_eq!((u.managed_bytes, u.unpopulated_bytes), (4 << 20, 4 << 20));
    ///
    /// r.as_mut_slice::<u8>()[..2 << 20].fill(1);           // first 2 MiB touched
    /// svm.migrate(r.addr(), 1 << 20, Location::Device(DeviceId(0)))?;
    /// let u = svm.memory_usage();
    /// assert_eq!(u.device_bytes, 1 << 20);
    /// assert_eq!(u.system_bytes, 1 << 20);
    /// assert_eq!(u.unpopulated_bytes, 2 << 20);
    /// assert_eq!(u.devices[0].resident_bytes, 1 << 20);
    /// assert!(u.in_use_bytes <= u.limit_bytes);
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn memory_usage(&self) -> MemoryUsage {
        self.assert_owner();
        crate::pressure::account::usage(&self.shared, &self.shared.pressure)
    }

    /// The system-memory limit in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.assert_owner();
        self.shared.pressure.account.limit()
    }

    /// Replaces the system-memory limit. A limit below the bytes in use is
    /// refused with [`Error::LimitBelowUsage`] and changes nothing.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        self.check_owner()?;
        self.shared.pressure.account.set_limit(&self.shared, bytes)
    }
}

impl Svm {
    /// Pins the page-aligned range `[addr, addr+len)` (inside one region) to
    /// system memory: its device-resident pages migrate back now and no
    /// migration takes them to a device until they are unpinned (migrations
    /// report them `skipped_pinned`; device accesses and faults map the
    /// system pages in place). Pins nest: each pin needs its unpin.
    ///
    /// This is a long-term pin (`FOLL_LONGTERM`): like the kernel, which
    /// moves long-term-pinned pages out of coherent device memory first,
    /// svmem always moves pinned pages to system memory, whatever the
    /// device's memory type.
    ///
    /// Errors, each leaving every pin count unchanged:
    /// [`Error::PinLimit`] if the pages not pinned yet would take the pinned
    /// bytes past the pin limit ([`crate::SvmBuilder::pin_limit`]);
    /// [`Error::PinOverflow`] if a page is already pinned 65535 times;
    /// [`Error::PinBusy`] if some pages stayed on a device (busy, or no room
    /// for a bounce buffer under the memory limit); [`Error::MemoryLimit`] if
    /// the region's pin table (2 bytes per page, allocated on its first pin)
    /// does not fit; the range errors of [`crate::Svm::migrate`].
    ///
    /// ```
    /// use svmem::{DeviceId, Location, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let mut r = svm.alloc(1 << 20)?;
    /// r.as_mut_slice::<u8>().fill(9);
    /// let dev0 = Location::Device(DeviceId(0));
    /// svm.migrate(r.addr(), r.len(), dev0)?;
    ///
    /// svm.pin(r.addr(), 64 << 10)?;                          // first 16 pages come home
    /// assert_eq!(svm.location(r.addr()), Some(Location::System));
    /// assert_eq!(svm.pin_count(r.addr()), 1);
    /// svm.migrate(r.addr(), r.len(), Location::System)?;
    /// let rep = svm.migrate(r.addr(), r.len(), dev0)?;
    /// assert_eq!((rep.migrated, rep.skipped_pinned), (240, 16));
    ///
    /// svm.unpin(r.addr(), 64 << 10)?;
    /// assert!(svm.unpin(r.addr(), 64 << 10).is_err());       // Error::NotPinned
    /// assert_eq!(svm.migrate(r.addr(), r.len(), dev0)?.migrated, 16);
    /// assert!(r.as_slice::<u8>().iter().all(|&b| b == 9));
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn pin(&self, addr: VirtAddr, len: u64) -> Result<()> {
        self.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        let (r, first, n) = self.check_range(addr, len)?;
        refuse_holes(&r, first, n)?;
        crate::pressure::pin::pin(&self.shared, &self.shared.pressure, &r, first, n)
    }

    /// Drops one pin of every page of the page-aligned range. If any page of
    /// it is not pinned, fails with [`Error::NotPinned`] naming the first
    /// such page and changes nothing. Pages whose last pin goes migrate
    /// normally again.
    pub fn unpin(&self, addr: VirtAddr, len: u64) -> Result<()> {
        self.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        let (r, first, n) = self.check_range(addr, len)?;
        crate::pressure::pin::unpin(&self.shared, &self.shared.pressure, &r, first, n)
    }

    /// How many times the page holding `addr` is pinned (0 outside managed
    /// memory).
    pub fn pin_count(&self, addr: VirtAddr) -> u32 {
        self.assert_owner();
        self.shared
            .region_at(addr.0)
            .map_or(0, |r| r.pins.count(r.page_of(addr.0)) as u32)
    }
}

/// Whether the CPU maps the page at `addr` with a huge page (a PMD-mapped
/// transparent huge page), read from `/proc/self/pagemap`: for checking
/// where svmem kept blocks whole. False for a page that is not present.
pub fn huge_mapped(addr: VirtAddr) -> Result<bool> {
    crate::sys::huge_mapped(addr.0).map_err(|e| Error::os("PAGEMAP_SCAN", e))
}
