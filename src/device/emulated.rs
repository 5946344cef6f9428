//! The emulated device: "VRAM" is an anonymous host arena, a buddy allocator
//! hands out its pages, and copy-engine threads execute copy jobs and signal
//! fences. Runs anywhere; used by the demo, the benchmarks and the tests.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::inject::{Injection, Injector};
use super::timing::Clock;
use super::{AtomicOp, Buddy, CopyJob, CopyOp, DevRun, Device, DeviceError, Fence, MemoryType};
use crate::addr::MAX_DEV_PAGES;
use crate::addr::{DevPage, DeviceId, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::sys::{Advice, Mapping, Prot};

/// How to build an emulated device.
#[derive(Clone, Debug)]
pub struct EmulatedConfig {
    /// The name the device reports (default `"emulated"`).
    pub name: String,
    /// Bytes of device memory (rounded up to 4 KiB).
    pub memory_bytes: u64,
    /// Copy-engine threads.
    pub copy_engines: usize,
    /// The memory type it reports (default [`MemoryType::Private`]; svmem
    /// treats every type as private for now).
    pub memory_type: MemoryType,
    /// Compute threads that run kernel lanes (each thread is one lane).
    pub compute_units: usize,
    /// Commit all of `memory_bytes` when the device is built, as real VRAM
    /// is. Off by default: the arena is reserved, and host memory is
    /// committed as pages are first written, so the process's resident
    /// memory follows what the device holds, not what it was configured
    /// with. A device page once used stays committed until the device is
    /// dropped.
    pub commit_up_front: bool,
}

impl Default for EmulatedConfig {
    fn default() -> Self {
        EmulatedConfig {
            name: "emulated".into(),
            memory_bytes: 256 << 20,
            copy_engines: 2,
            memory_type: MemoryType::Private,
            compute_units: 2,
            commit_up_front: false,
        }
    }
}

impl EmulatedConfig {
    /// The default configuration (2 copy engines, 2 compute units, private
    /// memory) with `memory_bytes` of device memory.
    pub fn with_memory(memory_bytes: u64) -> Self {
        EmulatedConfig {
            memory_bytes,
            ..Default::default()
        }
    }
}

/// An emulated device; see the module docs.
pub struct EmulatedDevice {
    config: EmulatedConfig,
    arena: Arc<Mapping>,
    buddy: Buddy,
    jobs: Option<Sender<(CopyJob, Fence)>>,
    engines: Vec<JoinHandle<()>>,
    /// Fault injection, shared with the copy engines.
    inject: Arc<Injector>,
    /// The timing model's clock, shared with the copy engines.
    clock: Arc<Clock>,
    /// Devices whose memory the copy engines read directly.
    peers: Arc<Peers>,
}

/// A device this one's copy engines read directly: its memory, and the
/// device itself (weakly: peers refer to each other), to see it lost.
struct Peer {
    id: DeviceId,
    memory: Arc<Mapping>,
    device: std::sync::Weak<dyn Device>,
}

type Peers = parking_lot::RwLock<Vec<Peer>>;

impl std::fmt::Debug for EmulatedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedDevice")
            .field("config", &self.config)
            .finish()
    }
}

/// Runs one job unless injection fails it (a failed job touches nothing),
/// and charges it to the timing model.
fn run_job(
    arena: &Mapping,
    inject: &Injector,
    clock: &Clock,
    peers: &Peers,
    job: &CopyJob,
) -> std::result::Result<(), DeviceError> {
    inject.copy_job()?;
    // A peer copy crosses a link like a host one does.
    clock.copy_job(
        job.bytes_to_device() + job.bytes_from_peer(),
        job.bytes_to_host(),
        job.bytes_filled(),
    );
    let err = |e: std::io::Error| DeviceError::new(format!("copy engine: {e}"));
    for op in &job.ops {
        match op {
            CopyOp::ToDevice { src, dst, npages } => {
                let len = *npages as usize * PAGE_SIZE;
                arena
                    .stream_from(dst.0 as usize * PAGE_SIZE, &src.map, src.off, len)
                    .map_err(err)?;
            }
            CopyOp::ToHost { src, dst, npages } => {
                let len = *npages as usize * PAGE_SIZE;
                dst.map
                    .stream_from(dst.off, arena, src.0 as usize * PAGE_SIZE, len)
                    .map_err(err)?;
            }
            CopyOp::Fill { dst, npages } => {
                arena
                    .zero(dst.0 as usize * PAGE_SIZE, *npages as usize * PAGE_SIZE)
                    .map_err(err)?;
            }
            CopyOp::FromPeer {
                from,
                src,
                dst,
                npages,
            } => {
                let peers = peers.read();
                let peer = peers
                    .iter()
                    .find(|p| p.id == *from)
                    .ok_or_else(|| DeviceError::new(format!("no peer path from {from}")))?;
                if peer.device.upgrade().is_none_or(|d| d.is_lost()) {
                    return Err(DeviceError::new(format!(
                        "peer copy: device {from} is lost"
                    )));
                }
                let len = *npages as usize * PAGE_SIZE;
                arena
                    .stream_from(
                        dst.0 as usize * PAGE_SIZE,
                        &peer.memory,
                        src.0 as usize * PAGE_SIZE,
                        len,
                    )
                    .map_err(err)?;
            }
        }
    }
    Ok(())
}

fn engine_loop(
    arena: Arc<Mapping>,
    inject: Arc<Injector>,
    clock: Arc<Clock>,
    peers: Arc<Peers>,
    rx: Receiver<(CopyJob, Fence)>,
) {
    while let Ok((job, fence)) = rx.recv() {
        fence.complete(run_job(&arena, &inject, &clock, &peers, &job));
    }
}

impl EmulatedDevice {
    /// Builds the device: maps and populates its memory (real host memory,
    /// `memory_bytes` of it, resident from the start like VRAM) and starts
    /// its copy-engine threads. Hand it to [`crate::SvmBuilder::device`], or
    /// use [`crate::SvmBuilder::emulated`].
    ///
    /// Errors: [`Error::Config`] for memory outside 4 KiB..=128 GiB, copy
    /// engines outside 1..=64 or compute units outside 1..=256;
    /// [`Error::AllocTooLarge`] if the host cannot map or populate the
    /// memory.
    ///
    /// ```
    /// use svmem::{Device, EmulatedConfig, EmulatedDevice};
    ///
    /// let dev = EmulatedDevice::new(EmulatedConfig { compute_units: 4, ..EmulatedConfig::with_memory(1 << 20) })?;
    /// assert_eq!((dev.capacity_pages(), dev.free_pages(), dev.compute_units()), (256, 256, 4));
    /// assert!(EmulatedDevice::new(EmulatedConfig::with_memory(0)).is_err());
    /// # Ok::<(), svmem::Error>(())
    /// ```
    pub fn new(config: EmulatedConfig) -> Result<EmulatedDevice> {
        let pages = config.memory_bytes.div_ceil(PAGE_SIZE as u64);
        if pages == 0 || pages > MAX_DEV_PAGES {
            return Err(Error::Config(format!(
                "device memory of {} bytes: must be between 4 KiB and {} GiB",
                config.memory_bytes,
                (MAX_DEV_PAGES * PAGE_SIZE as u64) >> 30
            )));
        }
        if config.copy_engines == 0 || config.copy_engines > 64 {
            return Err(Error::Config(format!(
                "{} copy engines: use 1 to 64",
                config.copy_engines
            )));
        }
        if config.compute_units == 0 || config.compute_units > 256 {
            return Err(Error::Config(format!(
                "{} compute units: use 1 to 256",
                config.compute_units
            )));
        }
        let len = pages as usize * PAGE_SIZE;
        let arena = Mapping::anonymous_aligned(len, crate::addr::BLOCK_SIZE, Prot::ReadWrite)
            .map_err(|e| Error::AllocTooLarge {
                requested: len as u64,
                reason: format!("cannot map the emulated device memory: {e}"),
            })?;
        // Huge pages make the arena's copies cheaper; failure only costs speed.
        let _ = arena.madvise(0, len, Advice::HugePage);
        // Device memory is not the child's after a fork (it has no devices:
        // svmem brings device-resident pages home before every fork), so
        // fork copies none of its page tables.
        let _ = arena.madvise(0, len, Advice::DontFork);
        if config.commit_up_front {
            arena
                .madvise(0, len, Advice::PopulateWrite)
                .map_err(|e| Error::AllocTooLarge {
                    requested: len as u64,
                    reason: format!("cannot populate the emulated device memory: {e}"),
                })?;
        }
        let arena = Arc::new(arena);
        let (tx, rx) = crossbeam_channel::unbounded();
        let inject = Arc::new(Injector::new());
        let clock = Arc::new(Clock::default());
        let peers = Arc::new(Peers::default());
        let engines = (0..config.copy_engines)
            .map(|i| {
                let (a, r, inj, c) = (arena.clone(), rx.clone(), inject.clone(), clock.clone());
                let p = peers.clone();
                std::thread::Builder::new()
                    .name(format!("svmem-ce{i}-{}", config.name))
                    .spawn(move || engine_loop(a, inj, c, p, r))
                    .map_err(|e| Error::os("spawn copy engine", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EmulatedDevice {
            buddy: Buddy::new(pages),
            config,
            arena,
            jobs: Some(tx),
            engines,
            inject,
            clock,
            peers,
        })
    }

    fn page_off(
        &self,
        page: DevPage,
        off: usize,
        len: usize,
    ) -> std::result::Result<usize, DeviceError> {
        self.inject.check_lost("device memory access")?;
        if page.0 as u64 >= self.buddy.total_pages() || off + len > PAGE_SIZE {
            return Err(DeviceError::new(format!(
                "access outside device memory: page {} offset {off} len {len}",
                page.0
            )));
        }
        Ok(page.0 as usize * PAGE_SIZE + off)
    }
}

impl Device for EmulatedDevice {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn memory_type(&self) -> MemoryType {
        self.config.memory_type
    }
    fn capacity_pages(&self) -> u64 {
        self.buddy.total_pages()
    }
    fn free_pages(&self) -> u64 {
        self.buddy.free_pages()
    }
    fn alloc(&self, npages: usize, out: &mut Vec<DevRun>) -> usize {
        if self.inject.alloc_fails() {
            return 0;
        }
        self.buddy.alloc(npages, out)
    }
    fn free(&self, run: DevRun) {
        self.buddy.free(run)
    }
    fn submit(&self, job: CopyJob, fence: &Fence) {
        fence.add();
        let sent = self.jobs.as_ref().map(|tx| tx.send((job, fence.clone())));
        if !matches!(sent, Some(Ok(()))) {
            fence.complete(Err(DeviceError::new("copy engines are shut down")));
        }
    }
    fn copy_now(&self, job: &CopyJob) -> std::result::Result<(), DeviceError> {
        run_job(&self.arena, &self.inject, &self.clock, &self.peers, job)
    }
    fn load(
        &self,
        page: DevPage,
        off: usize,
        buf: &mut [u8],
    ) -> std::result::Result<(), DeviceError> {
        let at = self.page_off(page, off, buf.len())?;
        self.arena
            .read_at(at, buf)
            .map_err(|e| DeviceError::new(e.to_string()))
    }
    fn words(
        &self,
        page: DevPage,
        off: usize,
        n: usize,
    ) -> Option<&[std::sync::atomic::AtomicU64]> {
        // A lost device (or a bad range) answers through `load`'s error.
        let at = self.page_off(page, off, n.checked_mul(8)?).ok()?;
        self.arena.atomic_words(at, n).ok()
    }
    fn store(&self, page: DevPage, off: usize, buf: &[u8]) -> std::result::Result<(), DeviceError> {
        let at = self.page_off(page, off, buf.len())?;
        self.arena
            .write_at(at, buf)
            .map_err(|e| DeviceError::new(e.to_string()))
    }
    fn atomic(
        &self,
        page: DevPage,
        off: usize,
        op: AtomicOp,
    ) -> std::result::Result<u64, DeviceError> {
        let at = self.page_off(page, off, op.width())?;
        op.apply(&self.arena, at)
            .map_err(|e| DeviceError::new(format!("atomic at device page {}: {e}", page.0)))
    }
    fn compute_units(&self) -> usize {
        self.config.compute_units
    }
    fn metadata_bytes(&self) -> u64 {
        self.buddy.metadata_bytes()
    }
    fn inject(&self, inj: Injection) -> Result<()> {
        self.inject.set(inj)
    }
    fn injection(&self) -> Option<Injection> {
        Some(self.inject.settings())
    }
    fn clear_injection(&self) -> Result<()> {
        self.inject.clear();
        Ok(())
    }
    fn lose(&self) -> Result<()> {
        self.inject.lose();
        Ok(())
    }
    fn is_lost(&self) -> bool {
        self.inject.is_lost()
    }
    fn reset(&self) -> Result<()> {
        self.inject.restore();
        Ok(())
    }
    fn clock(&self) -> Option<&Clock> {
        Some(&self.clock)
    }
    fn host_view(&self) -> Option<Arc<Mapping>> {
        Some(self.arena.clone())
    }
    fn connect_peer(&self, id: DeviceId, peer: &Arc<dyn Device>) -> bool {
        let Some(memory) = peer.host_view() else {
            return false;
        };
        let mut peers = self.peers.write();
        peers.retain(|p| p.id != id);
        peers.push(Peer {
            id,
            memory,
            device: Arc::downgrade(peer),
        });
        true
    }
}

impl Drop for EmulatedDevice {
    fn drop(&mut self) {
        self.jobs.take();
        for e in self.engines.drain(..) {
            let _ = e.join();
        }
    }
}
