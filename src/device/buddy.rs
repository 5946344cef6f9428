//! A buddy allocator of device pages: blocks of 2^k pages, k = 0..=9 (4 KiB to
//! 2 MiB). Any run it handed out may be freed in pieces; freed buddies merge.

use std::collections::BTreeSet;

use parking_lot::Mutex;

use super::DevRun;
use crate::addr::DevPage;

/// Largest order: 2^9 pages = 2 MiB.
pub const MAX_ORDER: u32 = 9;

#[derive(Debug)]
struct Inner {
    /// `k + 1` where a free block of order k starts, else 0.
    head: Vec<u8>,
    free: [BTreeSet<u32>; MAX_ORDER as usize + 1],
    free_pages: u64,
}

/// The allocator; all operations take one short lock.
#[derive(Debug)]
pub struct Buddy {
    inner: Mutex<Inner>,
    total: u64,
}

/// Largest order `k <= MAX_ORDER` with `p` aligned to 2^k and 2^k <= n.
fn fit_order(p: u32, n: u64) -> u32 {
    let mut k = MAX_ORDER;
    while k > 0 && (p % (1 << k) != 0 || (1u64 << k) > n) {
        k -= 1;
    }
    k
}

impl Inner {
    fn insert(&mut self, p: u32, k: u32) {
        self.head[p as usize] = k as u8 + 1;
        self.free[k as usize].insert(p);
    }
    fn remove(&mut self, p: u32, k: u32) {
        self.head[p as usize] = 0;
        self.free[k as usize].remove(&p);
    }
    fn alloc_order(&mut self, k: u32) -> Option<u32> {
        let j = (k..=MAX_ORDER).find(|&j| !self.free[j as usize].is_empty())?;
        let p = *self.free[j as usize].first()?;
        self.remove(p, j);
        for s in (k..j).rev() {
            self.insert(p + (1 << s), s);
        }
        self.free_pages -= 1 << k;
        Some(p)
    }
    fn free_block(&mut self, mut p: u32, mut k: u32, total: u64) {
        self.free_pages += 1 << k;
        while k < MAX_ORDER {
            let b = p ^ (1 << k);
            if (b as u64) < total && self.head[b as usize] == k as u8 + 1 {
                self.remove(b, k);
                p = p.min(b);
                k += 1;
            } else {
                break;
            }
        }
        self.insert(p, k);
    }
}

impl Buddy {
    /// An allocator over pages `0..total_pages`, all free (carved into the
    /// largest aligned power-of-two blocks that fit, up to 512 pages).
    pub fn new(total_pages: u64) -> Buddy {
        let mut inner = Inner {
            head: vec![0; total_pages as usize],
            free: Default::default(),
            free_pages: 0,
        };
        let mut p = 0u64;
        while p < total_pages {
            let k = fit_order(p as u32, total_pages - p);
            inner.free_block(p as u32, k, total_pages);
            p += 1 << k;
        }
        Buddy {
            inner: Mutex::new(inner),
            total: total_pages,
        }
    }

    /// Pages it manages in all.
    pub fn total_pages(&self) -> u64 {
        self.total
    }

    /// Pages free now.
    pub fn free_pages(&self) -> u64 {
        self.inner.lock().free_pages
    }

    /// Allocates up to `npages` as power-of-two runs, largest first.
    pub fn alloc(&self, npages: usize, out: &mut Vec<DevRun>) -> usize {
        let mut g = self.inner.lock();
        let mut left = npages as u64;
        while left > 0 {
            let want = (63 - left.leading_zeros()).min(MAX_ORDER);
            let got = (0..=want)
                .rev()
                .find_map(|k| g.alloc_order(k).map(|p| (p, k)));
            match got {
                Some((p, k)) => {
                    out.push(DevRun {
                        start: DevPage(p),
                        npages: 1 << k,
                    });
                    left -= 1 << k;
                }
                None => break,
            }
        }
        npages - left as usize
    }

    /// Frees any run of allocated pages.
    pub fn free(&self, run: DevRun) {
        let mut g = self.inner.lock();
        let mut p = run.start.0;
        let end = p as u64 + run.npages as u64;
        while (p as u64) < end {
            let k = fit_order(p, end - p as u64);
            g.free_block(p, k, self.total);
            p += 1 << k;
        }
    }

    /// Host bytes its bookkeeping uses (one byte per page plus the free lists).
    pub fn metadata_bytes(&self) -> u64 {
        let g = self.inner.lock();
        let nodes: usize = g.free.iter().map(BTreeSet::len).sum();
        (g.head.capacity() + nodes * 16) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_whole_blocks_and_merges_back() {
        let b = Buddy::new(1024 + 3);
        assert_eq!(b.free_pages(), 1027);
        let mut runs = vec![];
        assert_eq!(b.alloc(512, &mut runs), 512);
        assert_eq!(
            runs,
            vec![DevRun {
                start: DevPage(0),
                npages: 512
            }]
        );
        // Free in single pages: they must merge back into the 2 MiB block.
        for i in 0..512 {
            b.free(DevRun {
                start: DevPage(i),
                npages: 1,
            });
        }
        runs.clear();
        assert_eq!(b.alloc(1024, &mut runs), 1024);
        assert_eq!(runs.len(), 2);
        assert_eq!(b.free_pages(), 3);
        runs.clear();
        assert_eq!(
            b.alloc(10, &mut runs),
            3,
            "short memory gives what there is"
        );
        assert_eq!(b.free_pages(), 0);
    }
}
