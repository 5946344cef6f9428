//! No-retry (XNACK off) devices: the restore worker that remaps evicted
//! queues' ranges and resumes them.

use std::sync::Arc;

use super::map::map_ahead_block;
use super::Ctx;
use crate::addr::DeviceId;
use crate::observe::events::EventKind;
use crate::sync::Ordering;

/// The restore worker's body for device `d`.
pub(crate) fn restore_loop(sh: Arc<Ctx>, d: DeviceId) {
    let q = &sh.notifier.queues[d.0 as usize];
    while let Some(gen) = q.next_restore() {
        let ok = restore_pass(&sh, d);
        if let Some(retried) = q.finish_restore(gen, ok) {
            sh.notifier
                .events
                .emit(EventKind::QueueRestore { dev: d, retried });
        }
    }
}

/// Maps, where their data is, every block device `d` must keep mapped.
/// Returns false if some page could not be mapped (retried later).
pub(crate) fn restore_pass(sh: &Ctx, d: DeviceId) -> bool {
    let regions: Vec<_> = sh.regions.read().values().cloned().collect();
    let mut ok = true;
    for r in regions {
        for b in 0..r.blocks.len() {
            if r.blocks[b].keep_mapped.load(Ordering::Acquire) & (1 << d.0) == 0 {
                continue;
            }
            ok &= map_ahead_block(sh, &r, d, b);
        }
    }
    ok
}
