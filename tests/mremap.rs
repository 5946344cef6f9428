//! The program's `mremap` of managed memory: a region moved whole is
//! followed (contents, device-resident pages, attributes, device access at
//! the new address; the old address is no longer managed); a part moved
//! alone leaves management with every byte; growing and shrinking work.
//! Each test runs in a child process.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fill, in_child, pattern};

use svmem::{Attr, DeviceId, Error, Location, Svm, VirtAddr, PAGE_SIZE};

const D0: DeviceId = DeviceId(0);
const MIB: usize = 1 << 20;

/// `mremap` with `MREMAP_MAYMOVE | MREMAP_FIXED` to a fresh address.
fn move_to_fresh(at: VirtAddr, len: usize) -> VirtAddr {
    // A placeholder mapping decides where it goes (mremap replaces it).
    // SAFETY: a fresh mapping at a kernel-chosen address.
    let dst = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(dst, libc::MAP_FAILED);
    // SAFETY: moves the test's own managed range over its own placeholder;
    // no Rust reference into either lives.
    let p = unsafe {
        libc::mremap(
            at.0 as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dst,
        )
    };
    assert_eq!(p, dst, "mremap: {}", std::io::Error::last_os_error());
    VirtAddr(p as u64)
}

fn read_byte(at: u64) -> u8 {
    // SAFETY: a mapped byte of the test's (the read may fault into svmem).
    unsafe { (at as *const u8).read_volatile() }
}

fn svm() -> Svm {
    common::svm(64 << 20)
}

#[test]
fn a_region_moved_whole_is_followed() {
    in_child("a_region_moved_whole_is_followed", || {
        let svm = svm();
        let len = 4 * MIB;
        let mut r = svm.alloc(len).unwrap();
        fill(&mut r, 2);
        let old = r.addr();
        let pref = [Attr::PreferredLocation(Some(Location::Device(D0)))];
        svm.set_attributes(r.at(MIB as u64), MIB as u64, &pref)
            .unwrap();
        svm.migrate(old, (2 * MIB) as u64, Location::Device(D0))
            .unwrap();
        let new = move_to_fresh(old, len);
        assert_eq!(r.addr(), new, "the region follows its pages");
        assert_eq!(
            svm.location(new),
            Some(Location::Device(D0)),
            "still on the device"
        );
        assert_eq!(svm.location(old), None, "the old address is not managed");
        let dev = svm.device(D0).unwrap();
        let mut buf = vec![0u8; len];
        dev.read(new, &mut buf).unwrap();
        assert!(
            buf.iter().enumerate().all(|(i, b)| *b == pattern(i, 2)),
            "device view at the new address"
        );
        assert!(
            dev.read(old, &mut buf[..8]).is_err(),
            "no device access at the old address"
        );
        assert!(svm
            .migrate(old, PAGE_SIZE as u64, Location::System)
            .is_err());
        // Attributes moved with the pages.
        let q = svm
            .attributes(VirtAddr(new.0 + MIB as u64), MIB as u64)
            .unwrap();
        assert!(
            matches!(q.preferred, svmem::Common::Same(Some(Location::Device(D0)))),
            "{q:?}"
        );
        // A kernel at the new address, and the CPU.
        let want = u64::from_ne_bytes(std::array::from_fn(|j| pattern(3 * MIB + j, 2)));
        let got = std::sync::atomic::AtomicU64::new(0);
        dev.launch(1, |lane, _| {
            let v: u64 = lane.load(VirtAddr(new.0 + 3 * MIB as u64))?;
            got.store(v, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap()
        .check()
        .unwrap();
        assert_eq!(got.into_inner(), want);
        assert!(r
            .as_slice::<u8>()
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i, 2)));
        assert_eq!(svm.stats().remaps_followed, 1);
        // And it migrates and frees like any region.
        svm.migrate(new, len as u64, Location::Device(D0)).unwrap();
        drop(r);
        assert_eq!(svm.memory_usage().device_bytes, 0);
    });
}

#[test]
fn a_region_grown_by_mremap_keeps_its_data_and_the_tail_is_ordinary_memory() {
    in_child(
        "a_region_grown_by_mremap_keeps_its_data_and_the_tail_is_ordinary_memory",
        || {
            let svm = svm();
            let len = 2 * MIB;
            let mut r = svm.alloc(len).unwrap();
            fill(&mut r, 4);
            svm.migrate(r.addr(), MIB as u64, Location::Device(D0))
                .unwrap();
            let old = r.addr();
            // SAFETY: grows the test's own region; may move it.
            let p = unsafe {
                libc::mremap(
                    old.0 as *mut libc::c_void,
                    len,
                    2 * len,
                    libc::MREMAP_MAYMOVE,
                )
            };
            assert_ne!(
                p,
                libc::MAP_FAILED,
                "mremap: {}",
                std::io::Error::last_os_error()
            );
            let at = p as u64;
            for i in (0..len).step_by(512) {
                assert_eq!(read_byte(at + i as u64), pattern(i, 4), "byte {i}");
            }
            // The tail: zeros, written and read like any memory (no hang).
            for i in (len..2 * len).step_by(PAGE_SIZE) {
                assert_eq!(read_byte(at + i as u64), 0);
                // SAFETY: inside the grown mapping.
                unsafe { ((at + i as u64) as *mut u8).write_volatile(7) };
                assert_eq!(read_byte(at + i as u64), 7);
            }
            assert_eq!(r.addr().0, at, "the region follows a move");
            drop(r);
            // SAFETY: the tail is the program's; unmap it.
            unsafe { libc::munmap((at + len as u64) as *mut libc::c_void, len) };
        },
    );
}

#[test]
fn registered_memory_grown_in_place_serves_its_tail() {
    in_child("registered_memory_grown_in_place_serves_its_tail", || {
        let svm = svm();
        // SAFETY: a fresh mapping; the upper half is unmapped again, so the
        // lower half can grow in place.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * MIB,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let at = p as u64;
        // SAFETY: the upper half of our own mapping.
        unsafe { libc::munmap((at + 2 * MIB as u64) as *mut libc::c_void, 2 * MIB) };
        for i in 0..2 * MIB {
            // SAFETY: inside the lower half.
            unsafe { ((at + i as u64) as *mut u8).write(pattern(i, 6)) };
        }
        // SAFETY: ours, reached through raw pointers only.
        let r = unsafe { svm.register(p.cast(), 2 * MIB) }.unwrap();
        svm.migrate(r.addr(), MIB as u64, Location::Device(D0))
            .unwrap();
        // SAFETY: grows our own mapping in place (no MAYMOVE).
        let q = unsafe { libc::mremap(p, 2 * MIB, 4 * MIB, 0) };
        assert_eq!(q, p, "grown in place: {}", std::io::Error::last_os_error());
        for i in (2 * MIB..4 * MIB).step_by(PAGE_SIZE) {
            assert_eq!(read_byte(at + i as u64), 0, "tail byte {i}");
        }
        assert!(svm.stats().stray_ranges_released >= 1);
        r.unregister().unwrap();
        for i in (0..2 * MIB).step_by(256) {
            assert_eq!(read_byte(at + i as u64), pattern(i, 6), "byte {i}");
        }
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, 4 * MIB) };
    });
}

#[test]
fn part_of_a_region_moved_alone_leaves_management_with_its_data() {
    in_child(
        "part_of_a_region_moved_alone_leaves_management_with_its_data",
        || {
            let svm = svm();
            let len = 4 * MIB;
            let mut r = svm.alloc(len).unwrap();
            fill(&mut r, 8);
            svm.migrate(r.addr(), len as u64, Location::Device(D0))
                .unwrap();
            let part = VirtAddr(r.addr().0 + MIB as u64);
            let moved = move_to_fresh(part, MIB);
            for i in (0..MIB).step_by(128) {
                assert_eq!(
                    read_byte(moved.0 + i as u64),
                    pattern(MIB + i, 8),
                    "moved byte {i}"
                );
            }
            assert_eq!(svm.location(moved), None, "ordinary memory now");
            let dev = svm.device(D0).unwrap();
            let mut b = [0u8; 8];
            assert!(
                matches!(dev.read(part, &mut b), Err(Error::Unmapped { .. })),
                "a hole at the old address"
            );
            dev.read(r.at(3 * MIB as u64), &mut b).unwrap();
            assert_eq!(b[0], pattern(3 * MIB, 8));
            assert_eq!(svm.stats().remaps_detached, 1);
            drop(r);
            // The moved part is the program's, untouched by the region's free.
            assert_eq!(read_byte(moved.0 + 5), pattern(MIB + 5, 8));
            // SAFETY: the moved part is ours now.
            unsafe { libc::munmap(moved.0 as *mut libc::c_void, MIB) };
        },
    );
}

#[test]
fn a_region_shrunk_by_mremap_has_holes_past_its_new_end() {
    in_child(
        "a_region_shrunk_by_mremap_has_holes_past_its_new_end",
        || {
            let svm = svm();
            let len = 4 * MIB;
            let mut r = svm.alloc(len).unwrap();
            fill(&mut r, 1);
            svm.migrate(r.addr(), len as u64, Location::Device(D0))
                .unwrap();
            // SAFETY: shrinks the test's own region in place.
            let p = unsafe { libc::mremap(r.addr().0 as *mut libc::c_void, len, MIB, 0) };
            assert_eq!(p as u64, r.addr().0);
            let dev = svm.device(D0).unwrap();
            let mut b = [0u8; 8];
            assert!(matches!(
                dev.read(r.at(2 * MIB as u64), &mut b),
                Err(Error::Unmapped { .. })
            ));
            dev.read(r.at(100), &mut b).unwrap();
            assert_eq!(b[0], pattern(100, 1));
            assert_eq!(
                svm.memory_usage().device_bytes,
                MIB as u64,
                "the tail's device pages are freed"
            );
        },
    );
}

/// Device reads racing the program's mremap of the whole region, while a
/// squatter thread maps its own memory (filled with 0xEE) at the vacated
/// address the moment the kernel frees it, before svmem has read the
/// event (as a new thread's stack can land there). Every read either
/// returns the region's data or a typed error; never the squatter's bytes.
/// Before reads checked the address space after their copies (the probe of
/// `gpu::access`), the address-space torture saw such a read return zeros
/// from a freshly mapped stack (`device reader: word 104 read 0x0`).
#[test]
fn device_reads_racing_mremap_never_return_what_is_mapped_there_next() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let svm = svm();
    let len = 2 * MIB;
    let mut r = svm.alloc(len).unwrap();
    fill(&mut r, 3);
    let dev = svm.device(D0).unwrap();
    // Two halves of a reservation to move between.
    // SAFETY: a fresh reservation at a kernel-chosen address.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    let at = AtomicU64::new(r.addr().0);
    let stop = AtomicBool::new(false);
    let squat_at = AtomicU64::new(0);
    let (good, typed) = std::thread::scope(|s| {
        // The squatter: maps its own memory at `squat_at` as soon as it is free.
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                let a = squat_at.load(Ordering::Acquire);
                if a == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                // SAFETY: maps only where nothing is mapped (NOREPLACE).
                let p = unsafe {
                    libc::mmap(
                        a as *mut _,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    )
                };
                if p as u64 == a {
                    // SAFETY: the squatter's own fresh mapping.
                    unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0xEE, len) };
                    squat_at.store(0, Ordering::Release);
                }
            }
        });
        let reader = s.spawn(|| {
            let (mut good, mut typed) = (0u64, 0u64);
            let mut rng = common::Rng::new(7);
            let mut buf = vec![0u8; PAGE_SIZE];
            while !stop.load(Ordering::Acquire) {
                let base = at.load(Ordering::Acquire);
                let off = rng.below(len / PAGE_SIZE) * PAGE_SIZE;
                match dev.read(VirtAddr(base + off as u64), &mut buf) {
                    Ok(_) => {
                        for (i, b) in buf.iter().enumerate() {
                            assert_eq!(
                                *b,
                                pattern(off + i, 3),
                                "byte {} of the region read {b:#x}",
                                off + i
                            );
                        }
                        good += 1;
                    }
                    Err(
                        Error::OutsideManaged { .. }
                        | Error::Unmapped { .. }
                        | Error::Protected { .. },
                    ) => typed += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (good, typed)
        });
        for k in 0..300 {
            let from = at.load(Ordering::Acquire);
            let to = area + (k % 2) as u64 * len as u64;
            // The destination may hold the squatter's last mapping: clear it.
            // SAFETY: the test's own reservation half, not the region.
            unsafe { libc::munmap(to as *mut _, len) };
            squat_at.store(from, Ordering::Release);
            // SAFETY: moves the test's own region (no reference into it lives).
            let p = unsafe {
                libc::mremap(
                    from as *mut _,
                    len,
                    len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to as *mut libc::c_void,
                )
            };
            assert_eq!(p as u64, to, "mremap: {}", std::io::Error::last_os_error());
            at.store(to, Ordering::Release);
            while squat_at.load(Ordering::Acquire) != 0 {
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    eprintln!("{good} reads of the region's data, {typed} typed errors");
    assert!(good > 0);
    assert_eq!(
        r.addr().0,
        at.load(Ordering::Acquire),
        "the Region followed"
    );
    assert!(r
        .as_slice::<u8>()
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i, 3)));
    drop(r);
    // SAFETY: the reservation and the squatter's last mapping are the test's.
    unsafe { libc::munmap(area as *mut _, 2 * len) };
}
