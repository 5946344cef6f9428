//! Asynchronous signals held back while a thread holds block locks.
//!
//! A thread inside an API call may hold a block's migration lock while the
//! block's pages are isolated or on a device. A signal handler that runs on
//! that thread and touches one of those pages faults, the uffd reader waits
//! for the lock to serve the fault, and the lock's owner is the handler's own
//! thread, stuck in the fault: a deadlock. So API calls that take block locks
//! on the caller's thread block asynchronous signals for their duration
//! ([`AsyncSignalsBlocked`]); a signal sent meanwhile stays pending and runs
//! its handler when the call returns, with no lock held.
//!
//! Synchronous signals (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGTRAP`,
//! `SIGSYS`) stay open: the kernel kills a thread that raises one blocked,
//! and a poisoned page's `SIGBUS` must reach the application. glibc's
//! internal signals (cancellation, set*id) cannot be blocked this way either;
//! `pthread_sigmask` leaves them out.
//!
//! Cost: one `pthread_sigmask` pair per API call, not per page.

use std::marker::PhantomData;
use std::sync::OnceLock;

/// Signals the kernel raises for the instruction a thread runs: never blocked.
const SYNCHRONOUS: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Every signal but the synchronous ones.
fn async_set() -> &'static libc::sigset_t {
    static SET: OnceLock<libc::sigset_t> = OnceLock::new();
    SET.get_or_init(|| {
        // SAFETY: sigset_t is plain data; sigfillset and sigdelset only
        // write the set they are given, a local that outlives the calls, and
        // fail only for invalid signal numbers (ours are the libc constants).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            for s in SYNCHRONOUS {
                libc::sigdelset(&mut set, s);
            }
            set
        }
    })
}

/// While alive, the calling thread's asynchronous signals are blocked; on
/// drop its signal mask is restored exactly as it was. Nests. Not `Send`:
/// it must be dropped on the thread that made it.
#[must_use = "signals are unblocked again when the guard drops"]
pub struct AsyncSignalsBlocked {
    old: libc::sigset_t,
    _not_send: PhantomData<*const ()>,
}

impl AsyncSignalsBlocked {
    pub fn new() -> AsyncSignalsBlocked {
        // SAFETY: sigset_t is plain data, so a zeroed one is a valid value
        // for pthread_sigmask to overwrite.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live sigset_t values (a static and a
        // local); pthread_sigmask changes only this thread's mask and cannot
        // fail with SIG_BLOCK and valid pointers.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, async_set(), &mut old) };
        debug_assert_eq!(rc, 0, "pthread_sigmask(SIG_BLOCK)");
        AsyncSignalsBlocked {
            old,
            _not_send: PhantomData,
        }
    }
}

impl Default for AsyncSignalsBlocked {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AsyncSignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: `old` is the mask pthread_sigmask wrote in `new` on this
        // thread (the guard is not Send); setting it back changes only this
        // thread's mask. Pending signals are delivered on return.
        let rc =
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
        debug_assert_eq!(rc, 0, "pthread_sigmask(SIG_SETMASK)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_mask() -> libc::sigset_t {
        // SAFETY: as in `new`: a zeroed sigset_t for pthread_sigmask to fill;
        // a null `set` only reads the mask.
        unsafe {
            let mut m: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut m);
            m
        }
    }

    fn is_member(m: &libc::sigset_t, s: libc::c_int) -> bool {
        // SAFETY: `m` is a live sigset_t and `s` a valid signal number.
        unsafe { libc::sigismember(m, s) == 1 }
    }

    #[test]
    fn blocks_async_signals_and_restores_the_mask() {
        assert!(!is_member(&current_mask(), libc::SIGUSR1));
        {
            let _outer = AsyncSignalsBlocked::new();
            let m = current_mask();
            assert!(is_member(&m, libc::SIGUSR1) && is_member(&m, libc::SIGINT));
            for s in SYNCHRONOUS {
                assert!(!is_member(&m, s), "synchronous signal {s} blocked");
            }
            {
                let _inner = AsyncSignalsBlocked::new();
                assert!(is_member(&current_mask(), libc::SIGUSR1));
            }
            assert!(
                is_member(&current_mask(), libc::SIGUSR1),
                "inner drop unblocked"
            );
        }
        assert!(!is_member(&current_mask(), libc::SIGUSR1));
    }
}
