use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Memory protection of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prot {
    /// `PROT_READ`: reads only; writes fault (devices' writes are refused).
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

impl Prot {
    fn bits(self) -> i32 {
        match self {
            Prot::ReadOnly => libc::PROT_READ,
            Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// The `madvise` advice svmem uses.
#[derive(Clone, Copy, Debug)]
pub enum Advice {
    NoHugePage,
    HugePage,
    DontNeed,
    /// Pre-fault writable pages (MADV_POPULATE_WRITE, Linux 5.14+); breaks
    /// copy-on-write sharing without changing the data.
    PopulateWrite,
    /// Leave the range out of a forked child (MADV_DONTFORK).
    DontFork,
    /// Deactivate the pages (MADV_COLD, Linux 5.4+); splits a large folio
    /// mapped only in part of the range, keeps the data.
    Cold,
}

/// An owned anonymous private mapping; `Drop` unmaps it.
///
/// Byte accessors are bounds-checked. The memory may be written concurrently
/// by other threads and by the kernel (it is memory shared with devices), so
/// accessors copy bytes rather than hand out long-lived references.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Sub-ranges `(off, len)` the program unmapped behind our back
    /// ([`Mapping::forget_range`]): no longer ours, `Drop` leaves them alone.
    forgotten: std::sync::Mutex<Vec<(usize, usize)>>,
    /// The program's memory, managed in place ([`Mapping::adopt`]): `Drop`
    /// leaves all of it mapped.
    adopted: bool,
}

// SAFETY: a Mapping is a range of process memory with no thread affinity; all
// accessors copy through raw pointers and are valid from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access only ever copies bytes in or out.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (a multiple of the page size, non-zero) of anonymous
    /// private memory. `populate` pre-faults it (MAP_POPULATE).
    pub fn anonymous(len: usize, prot: Prot, populate: bool) -> io::Result<Mapping> {
        if len == 0 || len % super::PAGE_SIZE != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        if populate {
            flags |= libc::MAP_POPULATE;
        }
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address touches no
        // existing memory; the result is checked for MAP_FAILED below.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot.bits(), flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mapping {
            ptr,
            len,
            forgotten: Default::default(),
            adopted: false,
        })
    }

    /// The program's own private anonymous memory `[addr, addr+len)`, to be
    /// managed in place: accessors work as on svmem's own mappings, and
    /// `Drop` never unmaps it. Fails with `EFAULT` if part of the range is
    /// not mapped, `EINVAL` if it is not page aligned or is file-backed or
    /// shared memory (which `UFFDIO_MOVE` cannot take).
    pub fn adopt(addr: u64, len: usize) -> io::Result<Mapping> {
        let ps = super::PAGE_SIZE as u64;
        let end = addr
            .checked_add(len as u64)
            .filter(|_| addr % ps == 0 && len as u64 % ps == 0 && len > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut at = addr;
        while at < end {
            let v = super::vma::query(at)?
                .filter(|v| v.start <= at)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
            if v.shared || v.file {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            at = v.end;
        }
        let ptr = NonNull::new(addr as *mut u8)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(Mapping {
            ptr,
            len,
            forgotten: Default::default(),
            adopted: true,
        })
    }

    /// The mapping as it is now at `to`, after the program moved it there
    /// with `mremap`: the same length, holes and ownership. `self` forgets
    /// its whole range (the old address is not ours any more).
    pub fn moved(&self, to: u64) -> io::Result<Mapping> {
        let ptr = NonNull::new(to as *mut u8)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        let mut f = self.forgotten.lock().unwrap_or_else(|e| e.into_inner());
        let holes = std::mem::replace(&mut *f, vec![(0, self.len)]);
        Ok(Mapping {
            ptr,
            len: self.len,
            forgotten: std::sync::Mutex::new(holes),
            adopted: self.adopted,
        })
    }

    /// Whether this is the program's memory managed in place.
    pub fn is_adopted(&self) -> bool {
        self.adopted
    }

    /// Like [`Mapping::anonymous`], but the start is a multiple of `align` (a
    /// power of two, at least the page size), so 2 MiB-aligned blocks of the
    /// mapping can be mapped by one huge page and moved by one PMD.
    pub fn anonymous_aligned(len: usize, align: usize, prot: Prot) -> io::Result<Mapping> {
        Mapping::anonymous_phased(len, align, 0, prot)
    }

    /// Like [`Mapping::anonymous_aligned`], but the start is `phase` (page
    /// aligned) past a multiple of `align`: a staging mirror for memory at
    /// an address of that phase keeps its 2 MiB blocks congruent.
    pub fn anonymous_phased(
        len: usize,
        align: usize,
        phase: usize,
        prot: Prot,
    ) -> io::Result<Mapping> {
        if len == 0
            || !align.is_power_of_two()
            || align < super::PAGE_SIZE
            || phase % super::PAGE_SIZE != 0
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let phase = phase % align;
        let pad = align - super::PAGE_SIZE;
        let outer = Mapping::anonymous(
            len.checked_add(pad)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?,
            prot,
            false,
        )?;
        let base = outer.addr() as usize;
        let start = base + (phase + align - base % align) % align;
        let (head, tail) = (start - base, outer.len - (start - base) - len);
        // The trimmed pieces are unmapped here; `outer` must not unmap its
        // original range any more.
        let outer = std::mem::ManuallyDrop::new(outer);
        for (at, n) in [(base, head), (start + len, tail)] {
            if n == 0 {
                continue;
            }
            // SAFETY: `[at, at+n)` is a part of `outer`'s fresh mapping outside
            // the range we keep; nothing references it.
            if unsafe { libc::munmap(at as *mut libc::c_void, n) } != 0 {
                let e = io::Error::last_os_error();
                // SAFETY: undo: the whole original range is still ours.
                unsafe { libc::munmap(outer.ptr.as_ptr().cast(), outer.len) };
                return Err(e);
            }
        }
        let ptr = NonNull::new(start as *mut u8)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mapping {
            ptr,
            len,
            forgotten: Default::default(),
            adopted: false,
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, len: usize) -> io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::ERANGE)),
        }
    }

    pub fn madvise(&self, off: usize, len: usize, advice: Advice) -> io::Result<()> {
        self.check(off, len)?;
        let a = match advice {
            Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
            Advice::HugePage => libc::MADV_HUGEPAGE,
            Advice::DontNeed => libc::MADV_DONTNEED,
            Advice::PopulateWrite => 23,
            Advice::DontFork => libc::MADV_DONTFORK,
            Advice::Cold => 20,
        };
        // SAFETY: the range lies inside this mapping (checked); madvise with these
        // advices does not invalidate Rust references because none are handed out.
        let r = unsafe { libc::madvise(self.ptr.as_ptr().add(off).cast(), len, a) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `mlock2(MLOCK_ONFAULT)` (`lock`) or `munlock` on `[off, off+len)` of
    /// the mapping. MLOCK_ONFAULT marks the range locked without faulting
    /// anything in (a userfaultfd-registered range must not fault from
    /// here). Mirrors a program's mlock of managed memory onto staging, so
    /// `UFFDIO_MOVE` sees equal flags on both sides.
    pub fn set_locked(&self, off: usize, len: usize, lock: bool) -> io::Result<()> {
        self.check(off, len)?;
        // SAFETY: the range lies inside this mapping (checked); mlock2 with
        // MLOCK_ONFAULT only sets the lock flag on its mapping, munlock only
        // clears it. No Rust reference is affected.
        let r = unsafe {
            let at = self.ptr.as_ptr().add(off).cast();
            match lock {
                true => libc::mlock2(at, len, libc::MLOCK_ONFAULT),
                false => libc::munlock(at, len),
            }
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `mprotect(prot_bits)` on `[off, off+len)` of the mapping (opens a
    /// program's read-only managed pages for the `UFFDIO_MOVE` that takes
    /// them out, then restores their protection).
    pub fn protect_range(&self, off: usize, len: usize, prot_bits: i32) -> io::Result<()> {
        self.check(off, len)?;
        // SAFETY: the range lies inside this mapping (checked); a protection
        // change creates no Rust reference, and svmem reaches managed bytes
        // only through guarded or checked accessors and uffd ioctls.
        let r = unsafe { libc::mprotect(self.ptr.as_ptr().add(off).cast(), len, prot_bits) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn protect(&self, prot: Prot) -> io::Result<()> {
        // Forgotten ranges (the program's now) are left alone.
        for (off, len) in self.owned_ranges() {
            // SAFETY: each range is a part of this mapping; protection changes
            // cannot make our accessors unsound (a write to read-only memory
            // would fault, and callers check the recorded protection first).
            let r = unsafe { libc::mprotect(self.ptr.as_ptr().add(off).cast(), len, prot.bits()) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Records that `[off, off + len)` is no longer this mapping's: the
    /// program unmapped it (and may have mapped something of its own there).
    /// `Drop` unmaps only the rest. Page-aligned; clipped to the mapping.
    pub fn forget_range(&self, off: usize, len: usize) {
        let end = off.saturating_add(len).min(self.len);
        let off = off.min(end) & !(super::PAGE_SIZE - 1);
        let end = end.next_multiple_of(super::PAGE_SIZE).min(self.len);
        if off < end {
            self.forgotten
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((off, end - off));
        }
    }

    /// The sub-ranges `(off, len)` still this mapping's (not forgotten), in
    /// ascending order.
    pub fn owned_ranges(&self) -> Vec<(usize, usize)> {
        let mut f = self
            .forgotten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        f.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for (o, n) in f {
            if o > at {
                out.push((at, o - at));
            }
            at = at.max(o + n);
        }
        if at < self.len {
            out.push((at, self.len - at));
        }
        out
    }

    /// Copies `buf.len()` bytes at `off` into `buf` whatever the mapping's
    /// protection (through `/proc/self/mem`, the kernel's forced access, as
    /// a debugger reads). A missing page is faulted in (a userfaultfd
    /// registered page is served by its handler: not for the reader thread).
    pub fn read_forced(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.check(off, buf.len())?;
        let f = std::fs::File::open("/proc/self/mem")?;
        f.read_exact_at(buf, self.addr() + off as u64)
    }

    /// Copies `buf.len()` bytes at `off` into `buf` like [`Mapping::read_at`],
    /// but a byte the program made inaccessible (`mprotect`, `munmap` behind
    /// svmem's back) gives `EFAULT` instead of a signal (see
    /// [`super::guarded`]). For memory the program controls.
    pub fn read_guarded(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.check(off, buf.len())?;
        // SAFETY: the source lies inside this mapping's range (checked),
        // the destination is the caller's buffer, disjoint from it; the
        // mapping's bytes are only ever accessed atomically or through
        // guarded copies (bytewise atomic), and a fault is caught.
        let ok = unsafe {
            super::guarded::copy(buf.as_mut_ptr(), self.ptr.as_ptr().add(off), buf.len())
        };
        ok.then_some(()).ok_or_else(super::guarded::fault_error)
    }

    /// Copies `buf` to `off` like [`Mapping::write_at`], with
    /// [`Mapping::read_guarded`]'s protection.
    pub fn write_guarded(&self, off: usize, buf: &[u8]) -> io::Result<()> {
        self.check(off, buf.len())?;
        // SAFETY: as in `read_guarded`, in the other direction.
        let ok =
            unsafe { super::guarded::copy(self.ptr.as_ptr().add(off), buf.as_ptr(), buf.len()) };
        ok.then_some(()).ok_or_else(super::guarded::fault_error)
    }

    /// Atomically replaces the naturally aligned word of `width` bytes (4 or
    /// 8) at `off` by `next(old)`, returning `old`; `add` uses one locked add
    /// instead of a compare-and-swap loop. `EFAULT` if the program made the
    /// word inaccessible (see [`Mapping::read_guarded`]).
    pub fn rmw_guarded(
        &self,
        off: usize,
        width: usize,
        add: Option<u64>,
        next: impl Fn(u64) -> Option<u64>,
    ) -> io::Result<u64> {
        let p = self.word(off, width)?;
        let fault = super::guarded::fault_error;
        // SAFETY: `p` is a naturally aligned word inside the live mapping
        // (`word` checked), accessed only atomically; a fault is caught.
        unsafe {
            if width == 4 {
                let p = p.cast::<u32>();
                if let Some(v) = add {
                    return super::guarded::xadd32(p, v as u32)
                        .map(u64::from)
                        .ok_or_else(fault);
                }
                let mut old = super::guarded::cas32(p, 0, 0).ok_or_else(fault)?;
                loop {
                    let Some(new) = next(old as u64) else {
                        return Ok(old as u64);
                    };
                    let seen = super::guarded::cas32(p, old, new as u32).ok_or_else(fault)?;
                    if seen == old {
                        return Ok(old as u64);
                    }
                    old = seen;
                }
            }
            let p = p.cast::<u64>();
            if let Some(v) = add {
                return super::guarded::xadd64(p, v).ok_or_else(fault);
            }
            let mut old = super::guarded::cas64(p, 0, 0).ok_or_else(fault)?;
            loop {
                let Some(new) = next(old) else { return Ok(old) };
                let seen = super::guarded::cas64(p, old, new).ok_or_else(fault)?;
                if seen == old {
                    return Ok(old);
                }
                old = seen;
            }
        }
    }

    /// Copies `buf.len()` bytes starting at `off` into `buf`. The bytes are
    /// read as relaxed atomics (aligned 8-byte words, single bytes at the
    /// edges): managed and device memory are shared with other threads (lanes,
    /// devices, CPU atomic views) that may write them at the same time, and a
    /// relaxed atomic copy is never a data race where a plain copy would be.
    pub fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.check(off, buf.len())?;
        let base = self.ptr.as_ptr() as usize + off;
        let mut i = 0;
        while i < buf.len() {
            let at = base + i;
            if at % 8 == 0 && buf.len() - i >= 8 {
                // SAFETY: `at` is 8-aligned and `at..at+8` lies inside the live
                // mapping (checked above); every access to these bytes from
                // svmem is atomic or happens while no other thread can reach
                // them, so an atomic view of them is sound.
                let w = unsafe { AtomicU64::from_ptr(at as *mut u64) }.load(Ordering::Relaxed);
                buf[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: as above, for one byte inside the mapping.
                buf[i] = unsafe { AtomicU8::from_ptr(at as *mut u8) }.load(Ordering::Relaxed);
                i += 1;
            }
        }
        Ok(())
    }

    /// Copies `buf` into the mapping at `off`, as relaxed atomic stores (see
    /// [`Mapping::read_at`]).
    pub fn write_at(&self, off: usize, buf: &[u8]) -> io::Result<()> {
        self.check(off, buf.len())?;
        let base = self.ptr.as_ptr() as usize + off;
        let mut i = 0;
        while i < buf.len() {
            let at = base + i;
            if at % 8 == 0 && buf.len() - i >= 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&buf[i..i + 8]);
                // SAFETY: as in `read_at`: aligned, inside the live mapping,
                // accessed atomically by every concurrent user.
                unsafe { AtomicU64::from_ptr(at as *mut u64) }
                    .store(u64::from_ne_bytes(w), Ordering::Relaxed);
                i += 8;
            } else {
                // SAFETY: as above, for one byte inside the mapping.
                unsafe { AtomicU8::from_ptr(at as *mut u8) }.store(buf[i], Ordering::Relaxed);
                i += 1;
            }
        }
        Ok(())
    }

    /// Copies `len` bytes from `src[src_off..]` to `self[dst_off..]` with
    /// streaming (non-temporal) stores (see [`super::copy`]); the ranges
    /// must not overlap.
    pub fn stream_from(
        &self,
        dst_off: usize,
        src: &Mapping,
        src_off: usize,
        len: usize,
    ) -> io::Result<()> {
        self.check(dst_off, len)?;
        src.check(src_off, len)?;
        let (d, s) = (
            self.addr() as usize + dst_off,
            src.addr() as usize + src_off,
        );
        if d < s + len && s < d + len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "streaming copy of {len} bytes between overlapping ranges {s:#x} and {d:#x}"
                ),
            ));
        }
        // SAFETY: both ranges are checked inside live mappings and disjoint.
        unsafe {
            super::copy::stream_copy_raw(
                self.ptr.as_ptr().add(dst_off),
                src.ptr.as_ptr().add(src_off),
                len,
            )
        };
        Ok(())
    }

    /// Writes zeros over `len` bytes at `off`.
    pub fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len)?;
        // SAFETY: range checked inside the mapping.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), 0, len) };
        Ok(())
    }

    /// The address of the naturally aligned `size`-byte word at `off`.
    fn word(&self, off: usize, size: usize) -> io::Result<*mut u8> {
        self.check(off, size)?;
        if off % size != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {off:#x} is not {size}-byte aligned"),
            ));
        }
        // SAFETY: `off` is inside the mapping (checked), so the pointer stays
        // within the same allocation.
        Ok(unsafe { self.ptr.as_ptr().add(off) })
    }

    /// The aligned 64-bit word at `off`, as an atomic (device atomics on
    /// system memory and on the emulated device's arena).
    pub fn atomic_u64(&self, off: usize) -> io::Result<&std::sync::atomic::AtomicU64> {
        let p = self.word(off, 8)?;
        // SAFETY: `p` is an 8-byte aligned word inside the live mapping (the
        // mapping is page aligned and `word` checked the offset); AtomicU64
        // has u64's layout and every access through it is atomic, so
        // concurrent use is sound. The reference lives no longer than `&self`.
        Ok(unsafe { &*p.cast::<std::sync::atomic::AtomicU64>() })
    }

    /// The `n` aligned 64-bit words at `off`, as atomics: a zero-copy view for
    /// readers that tolerate concurrent writers (a relaxed load is a plain
    /// load).
    pub fn atomic_words(
        &self,
        off: usize,
        n: usize,
    ) -> io::Result<&[std::sync::atomic::AtomicU64]> {
        let bytes = n
            .checked_mul(8)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ERANGE))?;
        self.check(off, bytes)?;
        let p = self.word(off, 8)?;
        // SAFETY: `p` is 8-byte aligned, and `n` words from it lie inside the
        // live mapping (checked); AtomicU64 has u64's layout and every access
        // through the slice is atomic. The slice lives no longer than `&self`.
        Ok(unsafe { std::slice::from_raw_parts(p.cast::<std::sync::atomic::AtomicU64>(), n) })
    }

    /// The aligned 32-bit word at `off`, as an atomic.
    pub fn atomic_u32(&self, off: usize) -> io::Result<&std::sync::atomic::AtomicU32> {
        let p = self.word(off, 4)?;
        // SAFETY: as in `atomic_u64`, for a 4-byte aligned word inside the mapping.
        Ok(unsafe { &*p.cast::<std::sync::atomic::AtomicU32>() })
    }

    /// A shared byte view of the whole mapping.
    ///
    /// # Safety
    /// The caller must ensure no thread (CPU or device) writes the mapping while
    /// the returned slice is alive, or accept that the values it reads may change
    /// (for bytes the caller treats as atomics or volatile data).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live for `&self`'s lifetime and `len` bytes long;
        // aliasing is the caller's contract above.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// An exclusive byte view of the whole mapping.
    ///
    /// # Safety
    /// The caller must hold the only reference through which the mapping's
    /// bytes are accessed for the lifetime of the slice.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: live mapping of `len` bytes; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.adopted {
            // The program's memory: it stays mapped, as ordinary memory.
            return;
        }
        for (off, len) in self.owned_ranges() {
            // SAFETY: we own `[off, off+len)` (forgotten ranges, which the
            // program unmapped and may have mapped again, are skipped) and
            // nobody can use it after drop.
            let r = unsafe { libc::munmap(self.ptr.as_ptr().add(off).cast(), len) };
            if r != 0 {
                // Drop cannot return an error; say what leaked instead of hiding it.
                eprintln!(
                    "svmem: munmap({:#x}, {}) failed: {} (the range stays mapped)",
                    self.addr() + off as u64,
                    len,
                    io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_ranges_are_left_mapped_on_drop() {
        let ps = crate::sys::PAGE_SIZE;
        let m = Mapping::anonymous(4 * ps, Prot::ReadWrite, false).expect("map");
        let (base, len) = (m.addr(), m.len());
        m.write_at(ps, &[7; 8]).expect("write");
        m.forget_range(ps, ps);
        m.forget_range(3 * ps, 10 * ps);
        assert_eq!(m.owned_ranges(), vec![(0, ps), (2 * ps, ps)]);
        let mut b = [0u8; 8];
        m.read_guarded(ps, &mut b)
            .expect("guarded read of a mapped page");
        assert_eq!(b, [7; 8]);
        drop(m);
        // The forgotten pages stay mapped (and readable), the rest is gone.
        let probe = |at: u64| {
            // SAFETY: msync only checks the range's mapping, touching nothing.
            unsafe { libc::msync(at as *mut libc::c_void, ps, libc::MS_ASYNC) == 0 }
        };
        // (That the owned pages are gone cannot be checked here: tests run
        // in parallel, and another one may map memory there at once.)
        assert!(probe(base + ps as u64));
        assert!(probe(base + 3 * ps as u64));
        // SAFETY: the two pages left mapped by the test itself.
        unsafe {
            libc::munmap((base + ps as u64) as *mut libc::c_void, ps);
            libc::munmap((base + 3 * ps as u64) as *mut libc::c_void, len - 3 * ps);
        }
    }
}
