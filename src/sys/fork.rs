//! `fork` hooks: `pthread_atfork` handlers, registered once per process.
//!
//! svmem's fork support (see `api::fork`) needs to run code in the forking
//! thread right before the fork (bring device-resident pages home, hold
//! migrations to devices out) and right after it, in the parent (let them
//! in again) and in the child (release what the prepare step held). The
//! handlers are plain `fn()`s given once; later calls of [`at_fork`] are
//! ignored. `fork()` through libc (and `std::process::Command` when it
//! falls back to `fork`) runs them; `vfork`, `posix_spawn` and a raw
//! `clone` do not.

use std::sync::OnceLock;

/// The three handlers: before the fork, after it in the parent, in the child.
#[derive(Clone, Copy)]
pub struct ForkHooks {
    pub prepare: fn(),
    pub parent: fn(),
    pub child: fn(),
}

static HOOKS: OnceLock<ForkHooks> = OnceLock::new();

extern "C" fn prepare() {
    if let Some(h) = HOOKS.get() {
        (h.prepare)();
    }
}

extern "C" fn parent() {
    if let Some(h) = HOOKS.get() {
        (h.parent)();
    }
}

extern "C" fn child() {
    if let Some(h) = HOOKS.get() {
        (h.child)();
    }
}

/// Registers `hooks` with `pthread_atfork` (once per process: the first
/// hooks given win). Returns the error of `pthread_atfork`, if any.
pub fn at_fork(hooks: ForkHooks) -> std::io::Result<()> {
    static DONE: OnceLock<i32> = OnceLock::new();
    let rc = *DONE.get_or_init(|| {
        let _ = HOOKS.set(hooks);
        // SAFETY: the three handlers are `extern "C" fn()` items that live
        // for the whole program and only read a `OnceLock` set before this
        // call; pthread_atfork stores the pointers.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) }
    });
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}
