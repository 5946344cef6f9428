//! [`DeviceHandle`]: one device of an `Svm`, as the program sees it.

use super::svm::Svm;
use crate::addr::{DeviceId, Location, VirtAddr, PAGE_SIZE};
use crate::device::MemoryType;
use crate::error::{DeviceFault, Result};
use crate::gpu::access::{self, AccessReport, Op, PageView};
use crate::gpu::fault::BatchStats;
use crate::gpu::kernel::{Group, Lane, LaunchReport};
use crate::mm::migrate::{self, MigrateReport, Trigger};
use crate::sys::AsyncSignalsBlocked;

/// Static facts about a device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// The device's index (its [`DeviceId`]`.0`).
    pub id: u8,
    /// The name the device reports (e.g. `"emulated"`).
    pub name: String,
    /// What kind of memory it has and whether the CPU can reach it.
    pub memory_type: MemoryType,
    /// Its memory in bytes.
    pub capacity_bytes: u64,
    /// Bytes of it free when the info was taken.
    pub free_bytes: u64,
}

/// One device of an `Svm`, as the application drives it.
#[derive(Clone, Copy, Debug)]
pub struct DeviceHandle<'s> {
    pub(super) svm: &'s Svm,
    pub(super) id: DeviceId,
}

impl DeviceHandle<'_> {
    /// The device's id in its `Svm`.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// Static facts about the device and its free memory now.
    pub fn info(&self) -> DeviceInfo {
        self.svm.assert_owner();
        let d = &self.svm.shared.devices[self.id.0 as usize];
        DeviceInfo {
            id: self.id.0,
            name: d.name().to_string(),
            memory_type: d.memory_type(),
            capacity_bytes: d.capacity_pages() * PAGE_SIZE as u64,
            free_bytes: d.free_pages() * PAGE_SIZE as u64,
        }
    }

    /// Reads `buf.len()` bytes at `addr` through the device's page table, as
    /// a kernel's loads would: any address and length inside one managed
    /// region (no alignment needed). Pages without a translation fault and
    /// are served as a device fault (placement policy and range attributes
    /// decide whether they migrate or are mapped where they are); the report
    /// says how many pages and fault passes it took. Safe alongside CPU
    /// threads and migrations on the same pages; a page moving meanwhile is
    /// retried.
    ///
    /// Errors: [`Error::OutsideManaged`](crate::Error::OutsideManaged),
    /// [`Error::HeldByCpuView`](crate::Error::HeldByCpuView) (a mutable CPU
    /// view lives), [`Error::Poisoned`](crate::Error::Poisoned),
    /// [`Error::Unmapped`](crate::Error::Unmapped),
    /// [`Error::Protected`](crate::Error::Protected) (`PROT_NONE`),
    /// [`Error::DeviceLost`](crate::Error::DeviceLost),
    /// [`Error::Device`](crate::Error::Device).
    ///
    /// ```
    /// use svmem::{DeviceId, Error, Svm};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let dev = svm.device(DeviceId(0))?;
    /// let mut r = svm.alloc(64 << 10)?;
    /// r.as_mut_slice::<u8>()[4090..4100].copy_from_slice(b"0123456789"); // spans two pages
    /// let mut buf = [0u8; 10];
    /// dev.read(r.at(4090), &mut buf)?;
    /// assert_eq!(&buf, b"0123456789");
    ///
    /// let start = r.addr();
    /// let view = r.as_mut_slice::<u8>();                  // a mutable CPU view bars devices
    /// assert!(matches!(dev.read(start, &mut buf), Err(Error::HeldByCpuView { .. })));
    /// drop(view);
    /// let view = r.as_slice::<u8>();                      // a shared one bars only writes
    /// dev.read(start, &mut buf)?;
    /// assert!(matches!(dev.write(start, b"x"), Err(Error::HeldByCpuView { .. })));
    /// drop(view);
    /// assert!(matches!(dev.read(r.at(64 << 10), &mut buf), Err(Error::OutsideManaged { .. })));
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn read(&self, addr: VirtAddr, buf: &mut [u8]) -> Result<AccessReport> {
        self.svm.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let res = access::access(sh, self.id, addr, Op::Read(buf));
        crate::pressure::failure::after_access(sh, self.id, res)
    }

    /// Writes `buf` at `addr` through the device's page table; the rules and
    /// errors of [`DeviceHandle::read`], and also
    /// [`Error::ReadOnly`](crate::Error::ReadOnly) (a read-only region or a
    /// `device_read_only` range), [`Error::HeldByCpuView`](crate::Error::HeldByCpuView)
    /// while any CPU view lives, and [`Error::Protected`](crate::Error::Protected)
    /// for memory the CPU may not write. Those checks cover the whole range
    /// before any byte is written.
    pub fn write(&self, addr: VirtAddr, buf: &[u8]) -> Result<AccessReport> {
        self.svm.check_owner()?;
        let _signals = AsyncSignalsBlocked::new();
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let res = access::access(sh, self.id, addr, Op::Write(buf));
        crate::pressure::failure::after_access(sh, self.id, res)
    }

    /// Applies fault-injection settings to this device (validated as a
    /// whole first: refused settings change nothing). Devices without fault
    /// injection refuse.
    pub fn inject(&self, inj: crate::device::Injection) -> Result<()> {
        self.svm.check_owner()?;
        self.svm.shared.devices[self.id.0 as usize].inject(inj)
    }

    /// The fault-injection settings in force (`None`: not supported).
    pub fn injection(&self) -> Option<crate::device::Injection> {
        self.svm.assert_owner();
        self.svm.shared.devices[self.id.0 as usize].injection()
    }

    /// Clears injected copy and allocation failures.
    pub fn clear_injection(&self) -> Result<()> {
        self.svm.check_owner()?;
        self.svm.shared.devices[self.id.0 as usize].clear_injection()
    }

    /// Simulates losing the device without warning: from now on every copy,
    /// load, store, atomic and allocation on it fails. svmem finds out at
    /// the next operation that touches the device, poisons the pages whose
    /// data was on it, and refuses further use until
    /// [`Svm::reset_device`].
    pub fn lose(&self) -> Result<()> {
        self.svm.check_owner()?;
        self.svm.shared.devices[self.id.0 as usize].lose()
    }

    /// Whether the device is lost (and not reset since).
    pub fn is_lost(&self) -> bool {
        self.svm.assert_owner();
        self.svm.shared.devices[self.id.0 as usize].is_lost()
    }

    /// What the device would see of `npages` pages from `addr`, faulting nothing.
    pub fn snapshot(&self, addr: VirtAddr, npages: usize) -> Result<Vec<PageView>> {
        self.svm.check_owner()?;
        access::snapshot(&self.svm.shared, self.id, addr, npages)
    }

    /// Runs `kernel(lane, item)` for every work item in `0..grid` on the
    /// device's compute units. Accesses go through the device's page table;
    /// a fatal device fault stops the launch and is in the report (use
    /// [`LaunchReport::check`] to turn it into an error).
    ///
    /// Items are spread over the device's lanes (one thread per compute
    /// unit); the order in which items run is not defined, and `kernel`
    /// must be `Sync`. Returns when every lane has stopped. A lane's access
    /// without a translation posts a fault (XNACK on) that the device's
    /// fault-service thread resolves in batches, migrating or mapping per
    /// the placement policy and the range's attributes; with XNACK off it
    /// is fatal unless the range was mapped ahead. A CPU view of a region
    /// bars the lanes as it bars [`DeviceHandle::read`]/[`write`](Self::write).
    ///
    /// Errors (the launch does not start): [`Error::DeviceLost`](crate::Error::DeviceLost),
    /// [`Error::Forked`](crate::Error::Forked). A fault inside the kernel
    /// is not an error here; see [`LaunchReport::fatal`].
    ///
    /// ```
    /// use svmem::{DeviceId, FaultReason, Svm, VirtAddr};
    ///
    /// let svm = Svm::with_emulated(8 << 20)?;
    /// let mut x = svm.alloc(1 << 20)?;
    /// x.as_mut_slice::<u64>().iter_mut().enumerate().for_each(|(i, v)| *v = i as u64);
    /// let n = x.len() / 8;
    /// let dev = svm.device(DeviceId(0))?;
    /// let report = dev
    ///     .launch(n, |lane, i| {
    ///         let v: u64 = lane.load(x.at(i * 8))?;       // misses fault and are served
    ///         lane.store(x.at(i * 8), v * 3)
    ///     })?
    ///     .check()?;
    /// assert_eq!(report.items_done, n);
    /// assert!(x.as_slice::<u64>().iter().enumerate().all(|(i, &v)| v == 3 * i as u64));
    ///
    /// // A fatal fault stops the launch and is reported, not panicked.
    /// let report = dev.launch(1, |lane, _| lane.load::<u64>(VirtAddr(4096)).map(drop))?;
    /// assert_eq!(report.fatal.as_ref().map(|f| &f.reason), Some(&FaultReason::Unmanaged));
    /// assert!(report.check().is_err());
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn launch<F>(&self, grid: u64, kernel: F) -> Result<LaunchReport>
    where
        F: Fn(&mut Lane<'_>, u64) -> std::result::Result<(), DeviceFault> + Sync,
    {
        self.svm.check_owner()?;
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let rep = crate::gpu::kernel::launch(sh, self.id, grid, kernel);
        sh.check_lost();
        rep
    }

    /// A persistent launch: the lanes start once and run step after step,
    /// `kernel(lane, step, item)` over each step's grid with a device-wide
    /// barrier between steps; after each step one lane calls
    /// `next(lane, step)`, which returns the next step's grid or `None` to
    /// finish (wavefronts and levels without a launch each).
    pub fn launch_steps<F, G>(&self, grid: u64, kernel: F, next: G) -> Result<LaunchReport>
    where
        F: Fn(&mut Lane<'_>, u64, u64) -> std::result::Result<(), DeviceFault> + Sync,
        G: FnMut(&mut Lane<'_>, u64) -> std::result::Result<Option<u64>, DeviceFault> + Send,
    {
        self.svm.check_owner()?;
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let rep = crate::gpu::kernel::launch_steps(sh, self.id, grid, kernel, next);
        sh.check_lost();
        rep
    }

    /// Runs `groups` work groups of `size` lanes (1 to 64) that run
    /// together, meet at [`Group::barrier`] and share `local_words` words of
    /// zeroed [`Group::local`] scratch: `kernel(lane, group)` once per lane
    /// of each group. Every lane of a group must reach the same barriers.
    pub fn launch_groups<F>(
        &self,
        groups: u64,
        size: usize,
        local_words: usize,
        kernel: F,
    ) -> Result<LaunchReport>
    where
        F: Fn(&mut Lane<'_>, &Group<'_>) -> std::result::Result<(), DeviceFault> + Sync,
    {
        self.svm.check_owner()?;
        let sh = &self.svm.shared;
        sh.check_device_alive(self.id)?;
        let rep = crate::gpu::kernel::launch_groups(sh, self.id, groups, size, local_words, kernel);
        sh.check_lost();
        rep
    }

    /// The timing model's totals for this device (`None`: the device keeps
    /// no model); [`crate::device::TimingReport::since`] gives an interval.
    pub fn timing(&self) -> Option<crate::device::TimingReport> {
        self.svm.assert_owner();
        self.svm.shared.devices[self.id.0 as usize]
            .clock()
            .map(|c| c.report())
    }

    /// Changes this device's timing profile from now on.
    pub fn set_timing(&self, profile: crate::device::TimingProfile) -> Result<()> {
        self.svm.check_owner()?;
        let d = &self.svm.shared.devices[self.id.0 as usize];
        crate::device::timing::apply(std::slice::from_ref(d), profile)
    }

    /// How this device's faults grow their migrations from now on
    /// ([`crate::gpu::Prefetch`]; default none).
    pub fn set_prefetch(&self, p: crate::gpu::Prefetch) -> Result<()> {
        self.svm.check_owner()?;
        p.store(&self.svm.shared.runtime[self.id.0 as usize].prefetch);
        Ok(())
    }

    /// The device's prefetcher.
    pub fn prefetch(&self) -> crate::gpu::Prefetch {
        self.svm.assert_owner();
        crate::gpu::Prefetch::load(&self.svm.shared.runtime[self.id.0 as usize].prefetch)
    }

    /// Fault-service statistics of this device (recent batches).
    pub fn fault_stats(&self) -> BatchStats {
        self.svm.assert_owner();
        self.svm.shared.runtime[self.id.0 as usize].batch_stats()
    }

    /// Evicts every page this device holds back to system memory.
    pub fn release(&self) -> MigrateReport {
        self.svm.assert_owner();
        let _signals = AsyncSignalsBlocked::new();
        let sh = &self.svm.shared;
        let regions: Vec<_> = sh.regions.read().values().cloned().collect();
        let mut rep = MigrateReport::default();
        for r in regions {
            let (to, from) = (Location::System, Some(self.id));
            migrate::pipeline(sh, &r, 0..r.npages, to, from, Trigger::Release, &mut rep);
        }
        sh.check_lost();
        rep
    }
}
