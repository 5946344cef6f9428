//! Guarded accesses: copies and atomics on memory the program may
//! `mprotect` or unmap at any moment, behind svmem's back (no userfaultfd
//! event reports `mprotect`). A device lane that reads or writes a
//! system-resident page goes through here, so a page the program made
//! `PROT_NONE` or read-only gives the lane an error it reports as a fault,
//! where a plain access would kill the process with `SIGSEGV`.
//!
//! How (x86-64): the few instructions that touch such memory live in one
//! assembly section (`rep movsb` for copies, `lock xadd` / `lock cmpxchg` /
//! `mov` for atomics); each routine is a leaf that touches guarded memory
//! only in that one instruction. A `SIGSEGV`/`SIGBUS` handler, installed
//! once, checks whether the faulting instruction lies in the section; if so
//! it resumes at a shared exit that returns "faulted" to the caller (the
//! kernel's exception-table idea: no unwinding, no `longjmp`). Any other
//! fault goes to the handler that was installed before (Rust's stack
//! overflow detection, a language runtime's), or gets the default action.
//!
//! Cost: a `rep movsb` instead of the word-by-word atomic copy it replaces
//! (no system call); the handler runs only when a guarded access faults.
//!
//! Memory model: `rep movsb` moves single bytes, each single-copy atomic on
//! x86-64, so a guarded copy is a sequence of relaxed atomic byte accesses
//! and never races in the language's sense with the lanes, devices and CPU
//! atomic views that share this memory; the atomics are sequentially
//! consistent (`lock`-prefixed).
//!
//! Elsewhere (not x86-64) a copy is one `process_vm_readv` on this process
//! (the kernel copies both ways through its fault path and returns
//! `EFAULT` instead of raising a signal), and atomics are plain (an atomic
//! on a protected page there still faults).
//!
//! Every device access to system memory uses these: lanes and
//! `DeviceHandle` reads and writes alike.

use std::io;

/// Why a guarded access failed: the page is not accessible as asked (a
/// protection change or an unmap behind svmem's back).
pub fn fault_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EFAULT)
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Once;

    std::arch::global_asm!(
        ".pushsection .text.svmem_guarded,\"ax\",@progbits",
        ".p2align 4",
        ".globl svmem_guarded_start",
        ".hidden svmem_guarded_start",
        "svmem_guarded_start:",
        // copy(dst rdi, src rsi, len rdx) -> eax 0 ok / 1 faulted
        ".globl svmem_guarded_copy",
        ".hidden svmem_guarded_copy",
        "svmem_guarded_copy:",
        "mov rcx, rdx",
        "rep movsb",
        "xor eax, eax",
        "ret",
        // xadd64(ptr rdi, v rsi, out rdx)
        ".globl svmem_guarded_xadd64",
        ".hidden svmem_guarded_xadd64",
        "svmem_guarded_xadd64:",
        "lock xadd qword ptr [rdi], rsi",
        "mov qword ptr [rdx], rsi",
        "xor eax, eax",
        "ret",
        // xadd32(ptr rdi, v esi, out rdx)
        ".globl svmem_guarded_xadd32",
        ".hidden svmem_guarded_xadd32",
        "svmem_guarded_xadd32:",
        "lock xadd dword ptr [rdi], esi",
        "mov dword ptr [rdx], esi",
        "xor eax, eax",
        "ret",
        // cas64(ptr rdi, current rsi, new rdx, out rcx): out = old value
        ".globl svmem_guarded_cas64",
        ".hidden svmem_guarded_cas64",
        "svmem_guarded_cas64:",
        "mov rax, rsi",
        "lock cmpxchg qword ptr [rdi], rdx",
        "mov qword ptr [rcx], rax",
        "xor eax, eax",
        "ret",
        // cas32(ptr rdi, current esi, new edx, out rcx)
        ".globl svmem_guarded_cas32",
        ".hidden svmem_guarded_cas32",
        "svmem_guarded_cas32:",
        "mov eax, esi",
        "lock cmpxchg dword ptr [rdi], edx",
        "mov dword ptr [rcx], eax",
        "xor eax, eax",
        "ret",
        // The shared exit a fault inside the section resumes at: the stack
        // is as the routine found it (leaf routines, nothing pushed).
        ".globl svmem_guarded_fault",
        ".hidden svmem_guarded_fault",
        "svmem_guarded_fault:",
        "mov eax, 1",
        "ret",
        ".globl svmem_guarded_end",
        ".hidden svmem_guarded_end",
        "svmem_guarded_end:",
        ".popsection",
    );

    extern "sysv64" {
        static svmem_guarded_start: u8;
        static svmem_guarded_end: u8;
        static svmem_guarded_fault: u8;
        fn svmem_guarded_copy(dst: *mut u8, src: *const u8, len: usize) -> u32;
        fn svmem_guarded_xadd64(p: *mut u64, v: u64, out: *mut u64) -> u32;
        fn svmem_guarded_xadd32(p: *mut u32, v: u32, out: *mut u32) -> u32;
        fn svmem_guarded_cas64(p: *mut u64, current: u64, new: u64, out: *mut u64) -> u32;
        fn svmem_guarded_cas32(p: *mut u32, current: u32, new: u32, out: *mut u32) -> u32;
    }

    /// The handlers that were installed before ours, as `sigaction`s stored
    /// by address (0 = none recorded).
    static PREV_SEGV: AtomicUsize = AtomicUsize::new(0);
    static PREV_BUS: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: Once = Once::new();

    fn range() -> (usize, usize, usize) {
        // Only the addresses of the assembly labels are taken; the bytes
        // behind them are never read.
        (
            std::ptr::addr_of!(svmem_guarded_start) as usize,
            std::ptr::addr_of!(svmem_guarded_end) as usize,
            std::ptr::addr_of!(svmem_guarded_fault) as usize,
        )
    }

    extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let (start, end, fixup) = range();
        // SAFETY: the kernel passes a valid `ucontext_t` as the third
        // argument of an SA_SIGINFO handler; only the saved instruction
        // pointer is read and, for a fault inside the guarded section,
        // redirected to the section's exit, which returns to the routine's
        // caller with the stack as the routine found it.
        unsafe {
            let uc = ctx.cast::<libc::ucontext_t>();
            let rip = &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize];
            if (start..end).contains(&(*rip as usize)) {
                *rip = fixup as i64;
                return;
            }
        }
        let prev = match sig {
            libc::SIGBUS => PREV_BUS.load(Ordering::Acquire),
            _ => PREV_SEGV.load(Ordering::Acquire),
        };
        // SAFETY: `prev` is 0 or the address of a leaked `sigaction` written
        // once before our handler was installed. Calling the previous
        // handler with the kernel's arguments is what it was installed to
        // receive; restoring the default action and returning re-raises the
        // fault with that action (the faulting instruction runs again).
        unsafe {
            let act = (prev as *const libc::sigaction).as_ref();
            match act {
                Some(a) if a.sa_sigaction != libc::SIG_DFL && a.sa_sigaction != libc::SIG_IGN => {
                    if a.sa_flags & libc::SA_SIGINFO != 0 {
                        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                            std::mem::transmute(a.sa_sigaction);
                        f(sig, info, ctx);
                    } else {
                        let f: extern "C" fn(libc::c_int) = std::mem::transmute(a.sa_sigaction);
                        f(sig);
                    }
                }
                _ => {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
        }
    }

    /// Installs the fault handler once per process.
    fn install() {
        INSTALL.call_once(|| {
            for (sig, slot) in [(libc::SIGSEGV, &PREV_SEGV), (libc::SIGBUS, &PREV_BUS)] {
                // SAFETY: a zeroed `sigaction` is a valid value; the handler
                // is an `extern "C"` function of the SA_SIGINFO shape; the
                // previous action is written into a leaked box (read by the
                // handler for the life of the process) before ours is live.
                unsafe {
                    let prev: &'static mut libc::sigaction =
                        Box::leak(Box::new(std::mem::zeroed()));
                    let mut act: libc::sigaction = std::mem::zeroed();
                    act.sa_sigaction = on_fault as *const () as usize;
                    act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
                    libc::sigemptyset(&mut act.sa_mask);
                    libc::sigaction(sig, std::ptr::null(), prev);
                    slot.store(prev as *const libc::sigaction as usize, Ordering::Release);
                    libc::sigaction(sig, &act, std::ptr::null_mut());
                }
            }
        });
    }

    /// Copies `len` bytes; false if a source or destination byte faulted.
    ///
    /// # Safety
    /// `dst..dst+len` and `src..src+len` must not overlap, and every byte
    /// that is mapped must be memory no Rust reference (other than atomics)
    /// points into; unmapped or protected bytes are allowed.
    pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> bool {
        install();
        // SAFETY: the caller's contract; a fault is caught by the handler.
        unsafe { svmem_guarded_copy(dst, src, len) == 0 }
    }

    /// # Safety
    /// `p` is 8-byte aligned and, if mapped, accessed only atomically.
    pub unsafe fn xadd64(p: *mut u64, v: u64) -> Option<u64> {
        install();
        let mut out = 0;
        // SAFETY: the caller's contract; `out` is a local.
        (unsafe { svmem_guarded_xadd64(p, v, &mut out) } == 0).then_some(out)
    }

    /// # Safety
    /// As [`xadd64`], 4-byte aligned.
    pub unsafe fn xadd32(p: *mut u32, v: u32) -> Option<u32> {
        install();
        let mut out = 0;
        // SAFETY: the caller's contract; `out` is a local.
        (unsafe { svmem_guarded_xadd32(p, v, &mut out) } == 0).then_some(out)
    }

    /// Compare-and-swap; the old value, or `None` if the word faulted.
    ///
    /// # Safety
    /// As [`xadd64`].
    pub unsafe fn cas64(p: *mut u64, current: u64, new: u64) -> Option<u64> {
        install();
        let mut out = 0;
        // SAFETY: the caller's contract; `out` is a local.
        (unsafe { svmem_guarded_cas64(p, current, new, &mut out) } == 0).then_some(out)
    }

    /// # Safety
    /// As [`xadd32`].
    pub unsafe fn cas32(p: *mut u32, current: u32, new: u32) -> Option<u32> {
        install();
        let mut out = 0;
        // SAFETY: the caller's contract; `out` is a local.
        (unsafe { svmem_guarded_cas32(p, current, new, &mut out) } == 0).then_some(out)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

    pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> bool {
        // `process_vm_readv` on this process: the kernel reads `src` and
        // writes `dst` through its own fault path, so a protected or
        // unmapped byte on either side fails the call with EFAULT.
        let local = libc::iovec {
            iov_base: dst.cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: src as *mut _,
            iov_len: len,
        };
        // SAFETY: both iovecs describe `len` bytes the caller vouches for;
        // neither is dereferenced here.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        n == len as isize
    }

    pub unsafe fn xadd64(p: *mut u64, v: u64) -> Option<u64> {
        // SAFETY: aligned and atomically accessed (caller's contract).
        Some(unsafe { AtomicU64::from_ptr(p) }.fetch_add(v, SeqCst))
    }
    pub unsafe fn xadd32(p: *mut u32, v: u32) -> Option<u32> {
        // SAFETY: as above.
        Some(unsafe { AtomicU32::from_ptr(p) }.fetch_add(v, SeqCst))
    }
    pub unsafe fn cas64(p: *mut u64, c: u64, n: u64) -> Option<u64> {
        // SAFETY: as above.
        Some(
            match unsafe { AtomicU64::from_ptr(p) }.compare_exchange(c, n, SeqCst, SeqCst) {
                Ok(v) | Err(v) => v,
            },
        )
    }
    pub unsafe fn cas32(p: *mut u32, c: u32, n: u32) -> Option<u32> {
        // SAFETY: as above.
        Some(
            match unsafe { AtomicU32::from_ptr(p) }.compare_exchange(c, n, SeqCst, SeqCst) {
                Ok(v) | Err(v) => v,
            },
        )
    }
}

pub(crate) use imp::{cas32, cas64, copy, xadd32, xadd64};
