//! The density prefetcher, after NVIDIA UVM's tree-based one: a fault that
//! migrates its window to the device grows the migration to the largest
//! aligned power-of-two group of pages around it, up to its 2 MiB block,
//! of which more than half are already on the device or migrating there in
//! the same batch. A sweep therefore migrates 1, 1, 2, 4, … 256 pages per
//! fault instead of one window per fault (about log2(512) faults per block
//! at 4 KiB granularity, not 512), while scattered faults stay small.
//!
//! It is off by default ([`Prefetch::None`], today's behaviour: the fault
//! window only, plus fault-ahead of sequential sweeps); a device turns it on
//! with `DeviceHandle::set_prefetch`.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::addr::{DeviceId, BLOCK_PAGES};
use crate::error::{Error, Result};
use crate::mm::space::RegionInner;
use crate::mm::state::PageState;
use crate::placement::attr::AttrFlags;
use crate::placement::policy::Decision;

/// How device faults grow their migrations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefetch {
    /// The fault window only.
    #[default]
    None,
    /// UVM-style density growth; see the module docs.
    Density,
}

impl Prefetch {
    /// Every prefetcher, in the order `--prefetch` lists them.
    pub const ALL: [Prefetch; 2] = [Prefetch::None, Prefetch::Density];

    /// Its name (`"none"`, `"density"`), as [`Prefetch::by_name`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Prefetch::None => "none",
            Prefetch::Density => "density",
        }
    }

    /// The prefetcher called `name`; an unknown name is an error listing
    /// the known ones.
    pub fn by_name(name: &str) -> Result<Prefetch> {
        Prefetch::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::Config(format!("unknown prefetcher `{name}`: use none or density"))
            })
    }

    pub(crate) fn load(a: &AtomicU8) -> Prefetch {
        match a.load(Ordering::Relaxed) {
            1 => Prefetch::Density,
            _ => Prefetch::None,
        }
    }

    pub(crate) fn store(self, a: &AtomicU8) {
        a.store(self as u8, Ordering::Relaxed);
    }
}

/// One fault window of a batch's plan: pages, decision, write, flags.
pub(crate) type Step = (usize, usize, Decision, bool, AttrFlags);

/// Grows the windows of `plan` (one block's, ascending) that migrate to
/// device `d` as [`Prefetch::Density`] says, then merges windows that
/// overlap.
pub(crate) fn grow(r: &RegionInner, d: DeviceId, plan: &mut Vec<Step>) {
    let to_d = |s: &Step| s.2 == Decision::MigrateToDevice(d);
    let wanted: Vec<(usize, usize)> = plan
        .iter()
        .filter(|s| to_d(s))
        .map(|s| (s.0, s.1))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let counted = |k: usize| {
        wanted.iter().any(|&(lo, hi)| (lo..hi).contains(&k))
            || matches!(r.states[k].load(), PageState::Device { dev, .. } if dev == d)
    };
    for s in plan.iter_mut().filter(|s| to_d(s)) {
        (s.0, s.1) = dense_window(r.npages, s.0, s.1, counted);
    }
    let mut merged: Vec<Step> = Vec::with_capacity(plan.len());
    for s in plan.drain(..) {
        match merged.last_mut() {
            Some(m) if m.2 == s.2 && s.0 < m.1 => {
                m.1 = m.1.max(s.1);
                m.3 |= s.3;
            }
            _ => merged.push(s),
        }
    }
    *plan = merged;
}

/// The largest aligned power-of-two group of pages containing `[lo, hi)`,
/// inside its 2 MiB block and the region's `npages`, more than half of whose
/// pages are `counted`; `[lo, hi)` itself if none is.
pub(crate) fn dense_window(
    npages: usize,
    lo: usize,
    hi: usize,
    counted: impl Fn(usize) -> bool,
) -> (usize, usize) {
    let base = lo / BLOCK_PAGES * BLOCK_PAGES;
    let mut best = (lo, hi);
    let mut size = (hi - lo).next_power_of_two() * 2;
    while size <= BLOCK_PAGES {
        let s = base + ((lo - base) & !(size - 1));
        let e = (s + size).min(npages);
        if s < e && e >= hi {
            let n = (s..e).filter(|&k| counted(k)).count();
            if n * 2 > e - s {
                best = (s.min(lo), e.max(hi));
            }
        }
        size *= 2;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_largest_dense_subtree() {
        // Pages 0 and 1 resident, fault on 2: [0, 4) has 3 of 4.
        let res = |k: usize| k <= 2;
        assert_eq!(dense_window(1024, 2, 3, res), (0, 4));
        // A lone fault in an empty block stays alone.
        assert_eq!(dense_window(1024, 700, 701, |k| k == 700), (700, 701));
        // Half is not more than half: 4 of [0, 8) resident + none.
        assert_eq!(dense_window(1024, 0, 1, |k| k < 4 || k == 0), (0, 4));
        // 257 of 512 counted: the whole block.
        assert_eq!(dense_window(1024, 512, 513, |k| k < 512 + 257), (512, 1024));
        // Never past the region's end or the block.
        assert_eq!(dense_window(600, 590, 591, |_| true), (512, 600));
        assert_eq!(
            Prefetch::by_name("DENSITY").expect("known"),
            Prefetch::Density
        );
        assert!(Prefetch::by_name("tree").is_err());
    }
}
