//! First touch: zero-filling unpopulated pages in the CPU view.

use super::ctx::Shared;
use super::space::RegionInner;
use super::staging::Backoff;
use super::state::PageState;
use crate::addr::PAGE_SIZE;
use crate::sys::uffd::Stop;

/// Zero-fills the unpopulated pages among `[lo, hi)` (caller holds the block
/// lock). A write to a whole untouched block gets one huge page
/// ([`crate::mm::huge`]).
pub(crate) fn populate(sh: &Shared, r: &RegionInner, lo: usize, hi: usize, write: bool) {
    let huge = if write {
        crate::mm::huge::fill_block(sh, r, lo, hi)
    } else {
        0
    };
    let mut i = lo + huge;
    let mut filled = 0u64;
    let mut woken = vec![(lo, i)];
    while i < hi {
        if r.states[i].load() != PageState::Unpopulated {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < hi && r.states[j].load() == PageState::Unpopulated {
            j += 1;
        }
        let mut k = i;
        let mut backoff = Backoff::new(sh);
        while k < j {
            let len = ((j - k) * PAGE_SIZE) as u64;
            let dst = r.addr_of(k).0;
            // DONTWAKE: waiters are woken below, once the counters are current.
            let res = if write {
                let len = len.min(sh.zeros.len() as u64);
                sh.uffd.copy(dst, sh.zeros.addr(), len, true)
            } else {
                sh.uffd.zeropage(dst, len, true)
            };
            let done = match res {
                Ok(n) => n as usize / PAGE_SIZE,
                Err(p) if p.stop() == Stop::WouldBlock => {
                    if !backoff.wait() {
                        // Leave the rest unpopulated: a later fault retries.
                        break;
                    }
                    p.done as usize / PAGE_SIZE
                }
                // EEXIST: a page is already there (it can only be zeros we
                // cannot see yet); count it populated and go on.
                Err(p) => p.done as usize / PAGE_SIZE + 1,
            };
            for s in &r.states[k..k + done] {
                let _ = s.populate();
            }
            filled += done as u64;
            k += done;
        }
        woken.push((i, k));
        i = j;
    }
    sh.counters.add(&sh.counters.cpu_zero_fill_pages, filled);
    for (a, b) in woken {
        if b > a {
            let _ = sh.uffd.wake(r.addr_of(a).0, ((b - a) * PAGE_SIZE) as u64);
        }
    }
}
