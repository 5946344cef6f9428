//! Streaming copies: loads as usual, stores non-temporal (they bypass the
//! caches and need no read-for-ownership of the destination), the way a DMA
//! engine writes memory without polluting the CPU's caches.
//!
//! glibc's `memcpy` switches to non-temporal stores only above a threshold
//! derived from the last-level cache (tens of MiB here), so the copy
//! engines' 2 MiB jobs would otherwise move three streams through memory
//! (source, destination read for ownership, destination write) instead of
//! two. On x86-64 this uses AVX2 stores when the CPU has them, else SSE2
//! (always present); elsewhere it is a plain copy.

/// Copies `src` into `dst` (same length) with streaming stores.
///
/// # Panics
/// If the lengths differ.
pub fn stream_copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy: lengths differ");
    // SAFETY: two distinct Rust slices of equal length: valid, non-overlapping.
    unsafe { stream_copy_raw(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
}

/// Copies `len` bytes from `src` to `dst` with streaming stores.
///
/// # Safety
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of
/// writes, and the two ranges must not overlap.
pub(crate) unsafe fn stream_copy_raw(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // Stores need an aligned destination: copy up to the boundary first.
        let head = dst.align_offset(32).min(len);
        // SAFETY: within the caller's ranges.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
        let body = (len - head) & !127;
        // SAFETY: `dst + head` is 32-byte aligned and `body` bytes from there
        // (and from `src + head`) are inside the caller's ranges.
        unsafe {
            if std::arch::is_x86_feature_detected!("avx2") {
                x86::stream_avx2(dst.add(head), src.add(head), body);
            } else {
                x86::stream_sse2(dst.add(head), src.add(head), body);
            }
        }
        let done = head + body;
        // SAFETY: the rest of the caller's ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, len)
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 available; `dst` 32-byte aligned; `len` a multiple of 128; both
    /// ranges valid and disjoint.
    #[target_feature(enable = "avx2")]
    pub unsafe fn stream_avx2(dst: *mut u8, src: *const u8, len: usize) {
        let mut i = 0;
        while i < len {
            // SAFETY: `i + 128 <= len`; loads may be unaligned, stores are
            // aligned because `dst` is and `i` is a multiple of 128.
            unsafe {
                let s = src.add(i).cast::<__m256i>();
                let d = dst.add(i).cast::<__m256i>();
                let (a, b) = (_mm256_loadu_si256(s), _mm256_loadu_si256(s.add(1)));
                let (c, e) = (_mm256_loadu_si256(s.add(2)), _mm256_loadu_si256(s.add(3)));
                _mm256_stream_si256(d, a);
                _mm256_stream_si256(d.add(1), b);
                _mm256_stream_si256(d.add(2), c);
                _mm256_stream_si256(d.add(3), e);
            }
            i += 128;
        }
        // Streaming stores are weakly ordered: make them visible before
        // whatever the caller publishes next (a fence completion).
        _mm_sfence();
    }

    /// # Safety
    /// `dst` 16-byte aligned; `len` a multiple of 128; both ranges valid and
    /// disjoint.
    pub unsafe fn stream_sse2(dst: *mut u8, src: *const u8, len: usize) {
        let mut i = 0;
        while i < len {
            // SAFETY: as in `stream_avx2`, with 16-byte vectors.
            unsafe {
                let s = src.add(i).cast::<__m128i>();
                let d = dst.add(i).cast::<__m128i>();
                for k in 0..8 {
                    _mm_stream_si128(d.add(k), _mm_loadu_si128(s.add(k)));
                }
            }
            i += 128;
        }
        // SAFETY: sfence has no memory-safety preconditions.
        unsafe { _mm_sfence() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Mapping, Prot};

    #[test]
    fn aligned_mappings_start_on_the_boundary() {
        let m = Mapping::anonymous_aligned(3 * 4096, 2 << 20, Prot::ReadWrite).expect("map");
        assert_eq!((m.addr() % (2 << 20), m.len()), (0, 3 * 4096));
        m.write_at(3 * 4096 - 8, &[7; 8]).expect("last word");
        assert!(Mapping::anonymous_aligned(0, 2 << 20, Prot::ReadWrite).is_err());
        assert!(Mapping::anonymous_aligned(4096, 3000, Prot::ReadWrite).is_err());
    }

    #[test]
    fn mapping_stream_copies_and_refuses_overlap() {
        let m = Mapping::anonymous(4 * 4096, Prot::ReadWrite, false).expect("map");
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        m.write_at(0, &pattern).expect("write");
        m.stream_from(2 * 4096, &m, 0, 4096).expect("copy");
        let mut back = vec![0u8; 4096];
        m.read_at(2 * 4096, &mut back).expect("read");
        assert_eq!(back, pattern);
        let e = m.stream_from(100, &m, 0, 4096).expect_err("overlap");
        assert!(e.to_string().contains("overlapping"), "{e}");
        assert!(
            m.stream_from(3 * 4096, &m, 0, 8192).is_err(),
            "out of range"
        );
    }

    #[test]
    fn copies_every_byte_at_any_alignment_and_length() {
        let src: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for (so, doff, len) in [
            (0, 0, 0),
            (1, 3, 1),
            (0, 0, 4096),
            (5, 17, 4000),
            (3, 0, 9000),
        ] {
            let mut dst = vec![0xeeu8; 10_000];
            stream_copy(&mut dst[doff..doff + len], &src[so..so + len]);
            assert_eq!(
                &dst[doff..doff + len],
                &src[so..so + len],
                "{so} {doff} {len}"
            );
            assert!(dst[..doff].iter().all(|&b| b == 0xee));
            assert!(dst[doff + len..].iter().all(|&b| b == 0xee));
        }
    }
}
