//! Counters: CPU faults, device fault passes, migrations per direction, skips
//! by reason. Plain relaxed atomics, read as a [`Stats`] snapshot.

use crate::sync::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// Live counters of one `Svm`.
        #[derive(Debug, Default)]
        pub struct Counters { $(pub(crate) $name: AtomicU64,)* }

        /// A snapshot of the counters, plus metadata bytes.
        #[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct Stats {
            $($(#[$m])* pub $name: u64,)*
            /// Bytes of host memory svmem keeps as metadata (state words, device
            /// page tables, block locks, allocator state, range attributes).
            pub metadata_bytes: u64,
            /// Device queue evictions (XNACK off / always-mapped invalidations).
            pub queue_evictions: u64,
            /// Queue restores after evictions.
            pub queue_restores: u64,
            /// Restore passes that had to be retried.
            pub queue_restore_retries: u64,
            /// Events a full subscriber lost.
            pub events_dropped: u64,
            /// Modelled device time, summed over devices, ns (0 under the
            /// timing profile `none`; see `device::timing`).
            pub modelled_ns: u64,
            /// Bytes kernels read from system memory in place.
            pub remote_read_bytes: u64,
            /// Bytes kernels wrote to system memory in place.
            pub remote_write_bytes: u64,
        }

        impl Counters {
            pub(crate) fn snapshot(&self, metadata_bytes: u64) -> Stats {
                Stats { $($name: self.$name.load(Ordering::Relaxed),)* metadata_bytes, ..Default::default() }
            }
        }
    };
}

counters! {
    /// Page-state commits refused where the protocol says they cannot be
    /// (always 0 unless svmem has a bug; each is also reported on stderr).
    protocol_errors,
    /// Regions the program moved whole with `mremap`, followed to their new
    /// address.
    remaps_followed,
    /// Read-only or `PROT_NONE` pages taken out of the CPU view by copy (the
    /// kernel's `UFFDIO_MOVE` refuses them), their protection untouched.
    protected_pages_copied_out,
    /// Parts of regions the program moved with `mremap` alone, handed over
    /// as ordinary memory (device data copied in).
    remaps_detached,
    /// Registered stretches no region held (a managed mapping grown in
    /// place by `mremap`), released to the kernel on their first fault.
    stray_ranges_released,
    /// Fault messages read from the userfaultfd.
    cpu_faults,
    /// Fault windows resolved (one per group of faults in a window).
    cpu_fault_windows,
    /// Pages migrated back ahead of a sequential CPU sweep.
    cpu_fault_ahead_pages,
    /// Pages zero-filled on first CPU touch.
    cpu_zero_fill_pages,
    /// Device accesses (read or write calls).
    device_accesses,
    /// Device reads and writes done again because the program's mremap or
    /// munmap changed the range while they copied system memory.
    device_accesses_repeated_after_events,
    /// Device fault passes (a cold access of any length needs one).
    device_fault_passes,
    /// Pages migrated to device memory.
    to_device_pages,
    /// Bytes copied to device memory (zero-filled pages copy nothing).
    to_device_bytes,
    /// Pages migrated back to system memory.
    to_system_pages,
    /// Bytes copied back to system memory.
    to_system_bytes,
    /// Pages that became zero-filled device pages without a copy.
    device_zero_fill_pages,
    /// Of `to_device_pages`, pages moved from another device directly
    /// (peer path: no system memory in between).
    peer_pages,
    /// Bytes those peer moves copied device to device.
    peer_bytes,
    /// Skips below count the reports of `Svm::migrate` calls.
    /// Pages skipped because they were busy (pinned, shared, racing) after 3 tries.
    skipped_busy,
    /// Pages skipped because they cannot migrate (read-only region, poisoned).
    skipped_not_migratable,
    /// Pages skipped because the target device had no free memory.
    skipped_no_device_memory,
    /// Pages already at the requested location.
    skipped_already_there,
    /// Pages whose migration failed in the copy and were rolled back.
    rolled_back_pages,
    /// munmap / madvise(DONTNEED) events read from the userfaultfd.
    uffd_events,
    /// Kernel launches.
    kernel_launches,
    /// Device faults posted to the fault buffers (retry mode).
    device_faults,
    /// Posted faults that needed no work (same page as another fault of the
    /// batch, or already translated by the time they were serviced).
    device_fault_duplicates,
    /// Fault batches serviced.
    device_fault_batches,
    /// Times the fault service found its block invalidated before it could map it.
    device_fault_retries,
    /// Pages migrated to a device ahead of a sequential device-fault sweep.
    device_fault_ahead_pages,
    /// Launches stopped by a fatal device fault.
    device_faults_fatal,
    /// Pages skipped because they are pinned to system memory.
    skipped_pinned,
    /// 2 MiB device blocks evicted to system memory under device-memory pressure.
    evictions,
    /// Pages those evictions moved back to system memory.
    evicted_pages,
    /// Pages poisoned: their data was lost in a device failure or a failed
    /// back-migration.
    poisoned_pages,
    /// Devices lost without warning.
    devices_lost,
    /// Graceful device resets.
    device_resets,
    /// 2 MiB blocks whose first touch mapped one huge page.
    huge_fills,
    /// Whole-block first touches that found no huge page (or whose move
    /// stopped part way) and were filled with 4 KiB pages.
    huge_fill_fallbacks,
    /// Forks this process made while the `Svm` lived (each brought the
    /// device-resident pages home first).
    forks,
    /// Pages brought home from devices before a fork.
    fork_evicted_pages,
    /// Pages that stayed on a device through a fork (their copy failed, or
    /// a migration was stuck): a forked child reads zeros there.
    fork_stuck_pages,
    /// Runs of managed pages `UFFDIO_MOVE` refused as shared with a forked
    /// child (copy-on-write), made exclusive again and moved.
    fork_unshare_runs,
}

impl Counters {
    pub(crate) fn add(&self, c: &AtomicU64, n: u64) {
        if n != 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}
