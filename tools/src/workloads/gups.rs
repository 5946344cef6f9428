//! HPCC RandomAccess ("GUPS"), re-implemented from its published rules: a
//! table of `bytes / 8` words, `T[i] = i`, takes `bytes / 8` updates (HPCC
//! asks for four times the table; one keeps runs short), each an atomic xor
//! of a pseudo-random word into the slot that word selects (`r mod n`). A
//! work item makes [`UPDATES_PER_ITEM`] updates from its own SplitMix64
//! stream. Xor commutes, so the CPU replays every update in any order and
//! the table must match it exactly: a lost, doubled or torn update shows.

use super::*;

/// Updates one work item makes.
pub const UPDATES_PER_ITEM: u64 = 1024;
const SEED: u64 = 0x6775_7073_0000_0001;

pub(super) fn arrays(b: u64) -> Vec<u64> {
    vec![b]
}

/// Work item `item`'s update stream.
fn stream(item: u64) -> u64 {
    SEED ^ item.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Updates of work item `item` when `total` are made in all.
fn updates(item: u64, total: u64) -> u64 {
    total
        .saturating_sub(item * UPDATES_PER_ITEM)
        .min(UPDATES_PER_ITEM)
}

impl Runner<'_> {
    pub(super) fn gups(&mut self, b: u64) -> Result<(), RunError> {
        let n = b / 8;
        let init: Vec<u64> = (0..n).collect();
        let t = self.input(&init, arrays(b)[0])?;
        let pt = t.addr();
        let items = n.div_ceil(UPDATES_PER_ITEM);
        self.launch("the update kernel", items, |lane, item| {
            let mut s = stream(item);
            for _ in 0..updates(item, n) {
                let r = svmem::device::splitmix64(&mut s);
                lane.atomic_xor_u64(pt.offset(r % n * 8), r)?;
            }
            Ok(())
        })?;
        let mut want = init;
        for item in 0..items {
            let mut s = stream(item);
            for _ in 0..updates(item, n) {
                let r = svmem::device::splitmix64(&mut s);
                want[(r % n) as usize] ^= r;
            }
        }
        check_array(self.w, "T", &t, &want)
    }
}
