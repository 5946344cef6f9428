//! The program's own `munmap` and `madvise` of managed memory (issue 11):
//! an unmapped range becomes a *hole* that devices get typed errors for
//! (never a signal), that no device access, migration or region free ever
//! touches again (the program may map its own memory there), and discarded
//! pages read as zeros from devices as soon as `madvise` returns.
//!
//! Every scenario that could crash the process (SIGSEGV from a device access
//! to an unmapped page) runs in a child: the test re-runs its own binary for
//! just that test, with `SVMEM_TEST_CHILD` set.
#![allow(clippy::unwrap_used)]

mod common;
use common::in_child;

use std::sync::atomic::{AtomicBool, Ordering};

use svmem::{
    DeviceId, EmulatedConfig, Error, FaultReason, Location, MemoryType, PageView, Prot, Svm,
    VirtAddr, PAGE_SIZE,
};

const D0: DeviceId = DeviceId(0);

fn svm(xnack: bool) -> Svm {
    Svm::builder()
        .emulated(EmulatedConfig {
            name: "holes".into(),
            memory_bytes: 32 << 20,
            copy_engines: 1,
            memory_type: MemoryType::Private,
            compute_units: 2,
            commit_up_front: false,
        })
        .unwrap()
        .xnack(xnack)
        .build()
        .unwrap()
}

fn munmap(at: VirtAddr, len: usize) {
    // SAFETY: the test unmaps part of a managed region behind svmem's back, as
    // a program would; no Rust reference into the range is alive.
    let rc = unsafe { libc::munmap(at.as_u64() as *mut libc::c_void, len) };
    assert_eq!(rc, 0, "munmap: {}", std::io::Error::last_os_error());
}

fn madvise(at: VirtAddr, len: usize, advice: i32) -> std::io::Result<()> {
    // SAFETY: as in `munmap`: the range stays mapped, no reference into it lives.
    let rc = unsafe { libc::madvise(at.as_u64() as *mut libc::c_void, len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The program's own buffer: `len` bytes mapped at exactly `at` (which must
/// be free), filled with `byte`.
struct Own {
    at: u64,
    len: usize,
}

impl Own {
    fn map(at: VirtAddr, len: usize, byte: u8) -> Own {
        // SAFETY: MAP_FIXED_NOREPLACE maps only if nothing is mapped at `at`.
        let p = unsafe {
            libc::mmap(
                at.as_u64() as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, at.as_u64(), "mmap at the hole");
        // SAFETY: the fresh mapping is ours, `len` bytes.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), byte, len) };
        Own {
            at: at.as_u64(),
            len,
        }
    }

    fn is_all(&self, byte: u8) -> bool {
        // SAFETY: our own live mapping; nothing else writes it unless svmem
        // wrongly does (which is what the tests check).
        let s = unsafe { std::slice::from_raw_parts(self.at as *const u8, self.len) };
        s.iter().all(|&b| b == byte)
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.at as *mut libc::c_void, self.len) };
    }
}

/// Whether anything is mapped at `at` (msync fails with ENOMEM on a hole).
fn mapped(at: u64) -> bool {
    // SAFETY: msync only checks the mapping, touching no memory.
    unsafe { libc::msync(at as *mut libc::c_void, PAGE_SIZE, libc::MS_ASYNC) == 0 }
}

fn unmapped_at(e: &Error) -> Option<VirtAddr> {
    match e {
        Error::Unmapped { addr } => Some(*addr),
        _ => None,
    }
}

/// A 4 MiB region: first 1 MiB on the device, the rest in system memory and
/// mapped for the device; then 1 MiB in the middle (at 1.5 MiB) unmapped.
fn region_with_hole(svm: &Svm) -> (svmem::Region<'_>, VirtAddr) {
    let mut r = svm.alloc(4 << 20).unwrap();
    r.as_mut_slice::<u8>().fill(0x5a);
    svm.migrate(r.addr(), 1 << 20, Location::Device(D0))
        .unwrap();
    let dev = svm.device(D0).unwrap();
    let mut all = vec![0u8; 4 << 20];
    dev.read(r.addr(), &mut all).unwrap();
    assert!(all.iter().all(|&b| b == 0x5a));
    let hole = r.addr().offset(3 << 19);
    munmap(hole, 1 << 20);
    (r, hole)
}

#[test]
fn device_access_to_a_hole_is_a_typed_error() {
    in_child("device_access_to_a_hole_is_a_typed_error", || {
        for xnack in [true, false] {
            let svm = svm(xnack);
            let (r, hole) = region_with_hole(&svm);
            let dev = svm.device(D0).unwrap();
            let mut buf = vec![0u8; 8192];
            let e = dev.read(hole.offset(4096), &mut buf).unwrap_err();
            assert_eq!(unmapped_at(&e), Some(hole.offset(4096)), "{e}");
            assert!(e.to_string().contains("unmapped"), "{e}");
            let e = dev.write(hole, &buf).unwrap_err();
            assert_eq!(unmapped_at(&e), Some(hole), "{e}");
            // Spanning into the hole from mapped pages: the hole is named.
            let e = dev
                .read(VirtAddr(hole.as_u64() - 4096), &mut buf)
                .unwrap_err();
            assert_eq!(unmapped_at(&e), Some(hole), "{e}");
            // The pages around the hole are intact, on both sides.
            let mut b = vec![0u8; 1 << 20];
            dev.read(r.addr(), &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0x5a));
            dev.read(hole.offset(1 << 20), &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0x5a));
            // Kernels: load, store and atomic in the hole fault fatally.
            let at = hole.offset(8);
            let rep = dev.launch(1, |l, _| l.load::<u64>(at).map(|_| ())).unwrap();
            let f = rep.fatal.expect("load in a hole");
            assert_eq!(f.reason, FaultReason::Unmapped, "xnack {xnack}: {f}");
            let rep = dev.launch(1, |l, _| l.store::<u64>(at, 1)).unwrap();
            assert_eq!(rep.fatal.expect("store").reason, FaultReason::Unmapped);
            let rep = dev
                .launch(1, |l, _| l.atomic_add_u64(at, 1).map(|_| ()))
                .unwrap();
            assert_eq!(rep.fatal.expect("atomic").reason, FaultReason::Unmapped);
            // Outside the hole kernels still work.
            let ok = r.addr().offset(8);
            let rep = dev.launch(1, |l, _| l.store::<u64>(ok, 7)).unwrap();
            assert!(rep.fatal.is_none(), "{:?}", rep.fatal);
        }
    });
}

#[test]
fn the_programs_own_mapping_in_a_hole_is_never_touched() {
    in_child(
        "the_programs_own_mapping_in_a_hole_is_never_touched",
        || {
            let svm = svm(true);
            let dev = svm.device(D0).unwrap();
            let cap = dev.info().capacity_bytes;
            let hole;
            let own;
            {
                let (r, h) = region_with_hole(&svm);
                hole = h;
                own = Own::map(hole, 1 << 20, 0xab);
                let mut buf = vec![0u8; 4096];
                let e = dev.read(hole.offset(4096), &mut buf).unwrap_err();
                assert_eq!(unmapped_at(&e), Some(hole.offset(4096)), "{e}");
                assert!(buf.iter().all(|&b| b == 0), "no byte of the buffer read");
                assert!(dev.write(hole, &[1u8; 4096]).is_err());
                let rep = dev.launch(1, |l, _| l.store::<u64>(hole, 1)).unwrap();
                assert_eq!(rep.fatal.expect("store").reason, FaultReason::Unmapped);
                // Migrating the whole region, or only the hole, either way.
                for (at, len) in [(r.addr(), r.len()), (hole, 1 << 20)] {
                    for to in [Location::Device(D0), Location::System] {
                        let e = svm.migrate(at, len, to).unwrap_err();
                        assert_eq!(unmapped_at(&e), Some(hole), "{e}");
                    }
                }
                assert!(own.is_all(0xab), "the program's buffer is intact");
            }
            // The region is freed: its pages are unmapped, the program's are not,
            // and device memory is all free again.
            assert!(own.is_all(0xab), "the buffer survives the region's free");
            assert!(mapped(own.at));
            assert!(
                !mapped(hole.as_u64() - (1 << 20)),
                "region pages are unmapped"
            );
            assert!(
                !mapped(hole.as_u64() + (1 << 20)),
                "region pages are unmapped"
            );
            assert_eq!(dev.info().free_bytes, cap, "device memory leaked");
            drop(own);
        },
    );
}

#[test]
fn migrating_over_a_hole_names_it_and_moves_nothing() {
    in_child("migrating_over_a_hole_names_it_and_moves_nothing", || {
        let svm = svm(true);
        let mut r = svm.alloc(2 << 20).unwrap();
        r.as_mut_slice::<u8>().fill(3);
        let hole = r.addr().offset(64 * 4096);
        munmap(hole, 3 * 4096);
        let e = svm
            .migrate(r.addr(), r.len(), Location::Device(D0))
            .unwrap_err();
        assert_eq!(unmapped_at(&e), Some(hole), "{e}");
        assert!(e.to_string().contains(&hole.to_string()), "{e}");
        for p in [0u64, 63, 67, 511] {
            let at = r.addr().offset(p * 4096);
            assert_eq!(svm.location(at), Some(Location::System), "page {p}");
        }
        // Ranges that avoid the hole migrate as before.
        let rep = svm
            .migrate(r.addr(), 64 * 4096, Location::Device(D0))
            .unwrap();
        assert_eq!(rep.migrated, 64);
        let e = svm
            .migrate(r.addr(), r.len(), Location::System)
            .unwrap_err();
        assert_eq!(unmapped_at(&e), Some(hole), "{e}");
        // Prefetches and pins over the hole too: named, nothing done.
        let e = svm
            .prefetch(r.addr(), r.len(), Location::Device(D0))
            .unwrap_err();
        assert_eq!(unmapped_at(&e), Some(hole), "{e}");
        let e = svm.pin(r.addr(), r.len()).unwrap_err();
        assert_eq!(unmapped_at(&e), Some(hole), "{e}");
        assert_eq!(svm.pin_count(r.addr()), 0, "nothing pinned");
        assert_eq!(
            svm.location(r.addr().offset(100 * 4096)),
            Some(Location::System)
        );
    });
}

#[test]
fn snapshot_reports_every_kind_of_page() {
    in_child("snapshot_reports_every_kind_of_page", || {
        let svm = svm(true);
        let mut r = svm.alloc(8 * 4096).unwrap();
        let a = r.addr();
        // One-page fault windows: each touch populates only its page.
        svm.set_granularity(a, r.len(), 0).unwrap();
        {
            let mut s = r.as_mut_slice::<u8>();
            s[2 * 4096] = 1; // written: writable
            s[4 * 4096] = 1; // to the device below
        }
        assert_eq!(r.as_slice::<u8>()[4096], 0); // read: the zero page
        svm.migrate(a.offset(4 * 4096), 4096, Location::Device(D0))
            .unwrap();
        munmap(a.offset(6 * 4096), 4096);
        let dev = svm.device(D0).unwrap();
        let v = dev.snapshot(a, 8).unwrap();
        use PageView::*;
        assert_eq!(
            v,
            [
                None,
                Zero,
                Writable,
                None,
                DeviceLocal,
                None,
                Unmapped,
                None
            ]
        );
        r.protect(Prot::ReadOnly).unwrap();
        let v = dev.snapshot(a, 8).unwrap();
        assert_eq!(v[2], ReadOnly, "{v:?}");
        assert_eq!(v[6], Unmapped, "{v:?}");
        r.protect(Prot::ReadWrite).unwrap();
        // The program's own mprotect, behind svmem's back: read-only and
        // PROT_NONE pages.
        mprotect(a.offset(2 * 4096), 4096, libc::PROT_READ);
        mprotect(a.offset(7 * 4096), 4096, libc::PROT_NONE);
        let v = dev.snapshot(a, 8).unwrap();
        assert_eq!(v[2], ReadOnly, "{v:?}");
        assert_eq!(v[7], NoAccess, "{v:?}");
        assert_eq!(v[4], DeviceLocal, "{v:?}");
        mprotect(a.offset(2 * 4096), 4096, libc::PROT_READ | libc::PROT_WRITE);
        mprotect(a.offset(7 * 4096), 4096, libc::PROT_READ | libc::PROT_WRITE);
    });
}

/// Once `go` is set, waits `delay_us` and unmaps `[at, at+len)`: the munmap
/// the racing tests throw at a device access in flight.
fn munmap_when(go: &AtomicBool, delay_us: u64, at: VirtAddr, len: usize) {
    while !go.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    std::thread::sleep(std::time::Duration::from_micros(delay_us));
    munmap(at, len);
}

fn mprotect(at: VirtAddr, len: usize, prot: i32) {
    // SAFETY: changes the protection of the test's own managed pages; no
    // reference into them lives meanwhile.
    let rc = unsafe { libc::mprotect(at.0 as *mut libc::c_void, len, prot) };
    assert_eq!(rc, 0);
}

/// The kernel's hmm-tests `anon_teardown`: a device reads a region while
/// another thread unmaps half of it. Every read either succeeds with the
/// right data or fails with the typed error naming a page of that half.
#[test]
fn device_reads_racing_munmap() {
    in_child("device_reads_racing_munmap", || {
        let svm = svm(true);
        let dev = svm.device(D0).unwrap();
        let cap = dev.info().capacity_bytes;
        let mut rng = common::Rng::new(11);
        let (mut ok, mut faulted) = (0, 0);
        for round in 0..200u64 {
            let len = 1usize << 20;
            let mut r = svm.alloc(len).unwrap();
            let seed = round as u8;
            common::fill(&mut r, seed);
            if round % 3 == 1 {
                svm.migrate(r.addr(), len as u64, Location::Device(D0))
                    .unwrap();
            } else if round % 3 == 2 {
                let mut warm = vec![0u8; len];
                dev.read(r.addr(), &mut warm).unwrap();
            }
            let half = r.addr().offset(len as u64 / 2);
            let delay = rng.below(400) as u64;
            let go = AtomicBool::new(false);
            let mut buf = vec![0u8; len];
            let res = std::thread::scope(|s| {
                s.spawn(|| munmap_when(&go, delay, half, len / 2));
                go.store(true, Ordering::Release);
                dev.read(r.addr(), &mut buf)
            });
            match res {
                Ok(_) => {
                    ok += 1;
                    for (i, &b) in buf.iter().enumerate() {
                        assert_eq!(b, common::pattern(i, seed), "round {round} byte {i}");
                    }
                }
                Err(e) => {
                    faulted += 1;
                    let at = unmapped_at(&e).unwrap_or_else(|| panic!("round {round}: {e}"));
                    assert!(at >= half && at < half.offset(len as u64 / 2), "{e}");
                }
            }
            // After the munmap returned: always the typed error.
            let e = dev.read(half, &mut buf[..4096]).unwrap_err();
            assert_eq!(unmapped_at(&e), Some(half), "{e}");
            drop(r);
        }
        eprintln!("{ok} reads succeeded, {faulted} hit the hole");
        assert_eq!(dev.info().free_bytes, cap, "device memory leaked");
    });
}

/// `madvise(DONTNEED)` and `madvise(FREE)` of pages in system memory, mapped
/// for the device, and on the device: a device read right after the call
/// returns sees zeros. (`MADV_REMOVE` is for shared memory: anonymous private
/// memory refuses it with EINVAL, and nothing changes.)
#[test]
fn madvise_then_device_read_sees_zeros() {
    in_child("madvise_then_device_read_sees_zeros", || {
        let svm = svm(true);
        let dev = svm.device(D0).unwrap();
        let len = 1usize << 20;
        let mut r = svm.alloc(len).unwrap();
        let base = r.addr();
        let mut buf = vec![0u8; len];
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Migrations of the last quarter (same 2 MiB block) keep its
            // lock busy, so the reader's handling of a REMOVE often waits
            // for it: the madvise has returned by then.
            s.spawn(|| {
                let q = base.offset(3 * len as u64 / 4);
                while !stop.load(Ordering::Relaxed) {
                    for to in [Location::Device(D0), Location::System] {
                        svm.migrate(q, len as u64 / 4, to).unwrap();
                    }
                }
            });
            for round in 0..100 {
                let advice = if round % 2 == 0 {
                    libc::MADV_DONTNEED
                } else {
                    libc::MADV_FREE
                };
                r.as_mut_slice::<u8>().fill(0x77);
                // A quarter on the device, a quarter mapped for it in place.
                svm.migrate(base, len as u64 / 4, Location::Device(D0))
                    .unwrap();
                dev.read(base.offset(len as u64 / 4), &mut buf[..len / 4])
                    .unwrap();
                madvise(base, len / 2, advice).unwrap();
                dev.read(base, &mut buf).unwrap();
                let (gone, kept) = buf.split_at(len / 2);
                let stale = gone.iter().filter(|&&b| b != 0).count();
                assert_eq!(stale, 0, "round {round}: old bytes after madvise({advice})");
                assert!(kept.iter().all(|&b| b == 0x77), "round {round}");
                assert!(r.as_slice::<u8>()[..len / 2].iter().all(|&b| b == 0));
            }
            stop.store(true, Ordering::Relaxed);
        });
        // MADV_REMOVE is for shared memory: anonymous private memory refuses
        // it (EINVAL) and keeps its data.
        let e = madvise(base, len, libc::MADV_REMOVE).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(r.as_slice::<u8>()[len - 1], 0x77);
    });
}

/// `device_reads_racing_munmap` with kernel lanes instead of `dev.read`: two
/// lanes read the region in 4 KiB pieces (pages served in place, on the
/// device, or faulted on demand) while another thread unmaps its upper
/// half. Every piece read is correct or the launch stops with a typed fault
/// in the upper half; nothing raises a signal.
#[test]
fn kernel_lanes_racing_munmap() {
    in_child("kernel_lanes_racing_munmap", || {
        let svm = svm(true);
        let dev = svm.device(D0).unwrap();
        let mut rng = common::Rng::new(17);
        let (mut ok, mut faulted) = (0, 0);
        for round in 0..150u64 {
            let len = 1usize << 20;
            let mut r = svm.alloc(len).unwrap();
            let seed = round as u8;
            common::fill(&mut r, seed);
            match round % 3 {
                0 => svm
                    .set_attributes(
                        r.addr(),
                        len as u64,
                        &[svmem::Attr::PreferredLocation(Some(Location::System))],
                    )
                    .unwrap(),
                1 => {
                    svm.migrate(r.addr(), len as u64, Location::Device(D0))
                        .unwrap();
                }
                _ => {}
            }
            let half = r.addr().offset(len as u64 / 2);
            let delay = rng.below(400) as u64;
            let go = AtomicBool::new(false);
            let bad = std::sync::Mutex::new(None);
            let base = r.addr();
            let res = std::thread::scope(|s| {
                s.spawn(|| munmap_when(&go, delay, half, len / 2));
                go.store(true, Ordering::Release);
                dev.launch((len / 4096) as u64, |lane, item| {
                    let mut page = [0u8; 4096];
                    let at = base.offset(item * 4096);
                    lane.read_slice(at, &mut page)?;
                    for (i, &b) in page.iter().enumerate() {
                        let want = common::pattern(item as usize * 4096 + i, seed);
                        if b != want {
                            *bad.lock().unwrap() = Some((item, i, b, want));
                        }
                    }
                    Ok(())
                })
                .unwrap()
                .check()
            });
            assert_eq!(*bad.lock().unwrap(), None, "round {round}: a wrong byte");
            match res {
                Ok(_) => ok += 1,
                Err(svmem::Error::DeviceFault(f)) => {
                    faulted += 1;
                    assert!(
                        matches!(f.reason, FaultReason::Unmapped | FaultReason::Aborted),
                        "round {round}: {f}"
                    );
                    assert!(f.addr >= half, "round {round}: fault below the hole: {f}");
                }
                Err(e) => panic!("round {round}: {e}"),
            }
            drop(r);
        }
        eprintln!("{ok} launches succeeded, {faulted} hit the hole");
    });
}
