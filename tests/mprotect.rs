//! `mprotect` behind svmem's back: devices honour the CPU's protection
//! (a read of `PROT_NONE` memory and a write to `PROT_READ` memory are
//! typed fault errors, never a signal), and read-only pages migrate to a
//! device and back and stay read-only. Each test runs in a child process:
//! a regression here would kill the process with `SIGSEGV`.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fill, in_child, pattern};

use svmem::{
    Attr, DeviceId, Error, FaultReason, Location, MigrateReport, Svm, VirtAddr, PAGE_SIZE,
};

const D0: DeviceId = DeviceId(0);

fn mprotect(at: VirtAddr, len: usize, prot: i32) {
    // SAFETY: changes the protection of managed pages the test owns; no
    // Rust reference into them is alive while they are protected.
    let rc = unsafe { libc::mprotect(at.0 as *mut libc::c_void, len, prot) };
    assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
}

/// The protection `/proc/self/maps` shows for `addr`, as "rw" / "r-" / "--".
fn cpu_prot(addr: u64) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let range = it.next().expect("range");
        let perms = it.next().expect("perms");
        let (s, e) = range.split_once('-').expect("dash");
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        if s <= addr && addr < e {
            return perms[..2].to_string();
        }
    }
    panic!("{addr:#x} is not mapped");
}

fn protection_fault(e: &Error) -> Option<bool> {
    match e {
        Error::DeviceFault(f) => match f.reason {
            FaultReason::Protection { write } => Some(write),
            _ => None,
        },
        _ => None,
    }
}

/// Launch one lane that reads (or writes) the word at `at`.
fn lane_access(svm: &Svm, at: VirtAddr, write: bool) -> Result<u64, Error> {
    let mut seen = 0u64;
    let seen_ref = std::sync::Mutex::new(&mut seen);
    svm.device(D0)?
        .launch(1, |lane, _| {
            if write {
                lane.store(at, 0xfeed_u64)
            } else {
                let v: u64 = lane.load(at)?;
                **seen_ref.lock().unwrap() = v;
                Ok(())
            }
        })?
        .check()?;
    Ok(seen)
}

fn word(i: usize) -> u64 {
    u64::from_ne_bytes(std::array::from_fn(|j| pattern(i + j, 7)))
}

#[test]
fn lanes_and_device_accesses_honour_the_cpus_protection_of_system_pages() {
    in_child(
        "lanes_and_device_accesses_honour_the_cpus_protection_of_system_pages",
        || {
            let svm = common::svm(32 << 20);
            let mut r = svm.alloc(8 * PAGE_SIZE).unwrap();
            fill(&mut r, 7);
            // Served in place: the device's translations point at system pages.
            svm.set_attributes(
                r.addr(),
                r.len(),
                &[Attr::PreferredLocation(Some(Location::System))],
            )
            .unwrap();
            let p1 = r.at(PAGE_SIZE as u64);
            assert_eq!(lane_access(&svm, p1, false).unwrap(), word(PAGE_SIZE));
            let dev = svm.device(D0).unwrap();
            // The translation stays in the device's table and TLB: the
            // protection is checked on the access itself.
            mprotect(p1, PAGE_SIZE, libc::PROT_NONE);
            let e = lane_access(&svm, p1, false).unwrap_err();
            assert_eq!(protection_fault(&e), Some(false), "{e}");
            let mut buf = [0u8; 8];
            let e = dev.read(p1, &mut buf).unwrap_err();
            assert!(matches!(e, Error::Protected { write: false, .. }), "{e}");
            mprotect(p1, PAGE_SIZE, libc::PROT_READ);
            assert_eq!(lane_access(&svm, p1, false).unwrap(), word(PAGE_SIZE));
            let e = lane_access(&svm, p1, true).unwrap_err();
            assert_eq!(protection_fault(&e), Some(true), "{e}");
            let e = dev.write(p1, &[1u8; 8]).unwrap_err();
            assert!(matches!(e, Error::Protected { write: true, .. }), "{e}");
            let e = svm
                .device(D0)
                .unwrap()
                .launch(1, |lane, _| lane.atomic_add_u64(p1, 1).map(|_| ()))
                .unwrap()
                .check()
                .unwrap_err();
            assert_eq!(protection_fault(&e), Some(true), "{e}");
            // Nothing was written.
            dev.read(p1, &mut buf).unwrap();
            assert_eq!(u64::from_ne_bytes(buf), word(PAGE_SIZE));
            mprotect(p1, PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE);
            lane_access(&svm, p1, true).unwrap();
            assert_eq!(lane_access(&svm, p1, false).unwrap(), 0xfeed);
        },
    );
}

#[test]
fn device_faults_on_protected_pages_are_typed_errors() {
    in_child("device_faults_on_protected_pages_are_typed_errors", || {
        let svm = common::svm(32 << 20);
        let mut r = svm.alloc(8 * PAGE_SIZE).unwrap();
        fill(&mut r, 7);
        let p2 = r.at(2 * PAGE_SIZE as u64);
        mprotect(p2, PAGE_SIZE, libc::PROT_NONE);
        let e = lane_access(&svm, p2, false).unwrap_err();
        assert_eq!(protection_fault(&e), Some(false), "{e}");
        mprotect(p2, PAGE_SIZE, libc::PROT_READ);
        // A read fault migrates it (read-only) to the device; a write is refused.
        assert_eq!(lane_access(&svm, p2, false).unwrap(), word(2 * PAGE_SIZE));
        let e = lane_access(&svm, p2, true).unwrap_err();
        assert_eq!(protection_fault(&e), Some(true), "{e}");
        mprotect(p2, PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE);
        lane_access(&svm, p2, true).unwrap();
        assert_eq!(r.as_slice::<u64>()[2 * PAGE_SIZE / 8], 0xfeed);
    });
}

#[test]
fn read_only_pages_migrate_both_ways_and_stay_read_only() {
    in_child(
        "read_only_pages_migrate_both_ways_and_stay_read_only",
        || {
            let svm = common::svm(32 << 20);
            let n = 16;
            let mut r = svm.alloc(n * PAGE_SIZE).unwrap();
            fill(&mut r, 7);
            let ro = r.at(4 * PAGE_SIZE as u64);
            mprotect(ro, 8 * PAGE_SIZE, libc::PROT_READ);
            let none = r.at(14 * PAGE_SIZE as u64);
            mprotect(none, PAGE_SIZE, libc::PROT_NONE);
            let rep: MigrateReport = svm
                .migrate(r.addr(), r.len(), Location::Device(D0))
                .unwrap();
            assert_eq!(rep.migrated, n as u64, "{rep:?}");
            for p in 0..n {
                assert_eq!(
                    svm.location(r.at((p * PAGE_SIZE) as u64)),
                    Some(Location::Device(D0)),
                    "page {p}"
                );
            }
            let dev = svm.device(D0).unwrap();
            let mut buf = vec![0u8; 8 * PAGE_SIZE];
            dev.read(ro, &mut buf).unwrap();
            assert!(buf
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(4 * PAGE_SIZE + i, 7)));
            assert!(matches!(
                dev.write(ro, &[0u8; 8]),
                Err(Error::Protected { write: true, .. })
            ));
            // Back to system memory, by migration and by a CPU fault.
            let rep = svm
                .migrate(r.addr(), (8 * PAGE_SIZE) as u64, Location::System)
                .unwrap();
            assert_eq!(rep.migrated, 8, "{rep:?}");
            assert_eq!(cpu_prot(ro.0), "r-");
            assert_eq!(cpu_prot(none.0), "--");
            mprotect(none, PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE);
            let s = r.as_slice::<u8>();
            for (i, b) in s.iter().enumerate() {
                assert_eq!(*b, pattern(i, 7), "byte {i}");
            }
            assert_eq!(cpu_prot(ro.0), "r-", "the read-only pages stay read-only");
        },
    );
}

#[test]
fn two_read_only_copies_of_the_same_data_migrate() {
    in_child("two_read_only_copies_of_the_same_data_migrate", || {
        let svm = common::svm(32 << 20);
        let mut a = svm.alloc(4 * PAGE_SIZE).unwrap();
        let mut b = svm.alloc(4 * PAGE_SIZE).unwrap();
        fill(&mut a, 3);
        fill(&mut b, 3);
        mprotect(a.addr(), 4 * PAGE_SIZE, libc::PROT_READ);
        mprotect(b.addr(), 4 * PAGE_SIZE, libc::PROT_READ);
        for r in [&a, &b] {
            let rep = svm
                .migrate(r.addr(), r.len(), Location::Device(D0))
                .unwrap();
            assert_eq!(rep.migrated, 4, "{rep:?}");
        }
        let dev = svm.device(D0).unwrap();
        for r in [&a, &b] {
            let mut buf = vec![0u8; 4 * PAGE_SIZE];
            dev.read(r.addr(), &mut buf).unwrap();
            assert!(buf.iter().enumerate().all(|(i, v)| *v == pattern(i, 3)));
            assert!(r
                .as_slice::<u8>()
                .iter()
                .enumerate()
                .all(|(i, v)| *v == pattern(i, 3)));
        }
    });
}
