//! The C API called as C would call it: status codes and messages for bad
//! input, kernels whose callbacks fail, events, JSON outputs, and handles
//! shared between threads.

use std::ffi::{c_void, CStr};
use std::ptr;

use svmem_capi::*;

fn last_error() -> String {
    // SAFETY: svmem_last_error returns a NUL-terminated string valid until
    // this thread's next svmem call; it is copied at once.
    unsafe { CStr::from_ptr(svmem_last_error()) }
        .to_string_lossy()
        .into_owned()
}

struct Handle(*mut Svmem);

impl Handle {
    fn new(device_memory: u64) -> Handle {
        let cfg = svmem_config_default(device_memory);
        let mut h = ptr::null_mut();
        // SAFETY: `cfg` and `h` are valid for the call.
        let st = unsafe { svmem_create(&cfg, &mut h) };
        assert_eq!(st, SvmemStatus::Ok, "{}", last_error());
        Handle(h)
    }

    fn alloc(&self, len: usize) -> (*mut c_void, usize) {
        let (mut p, mut n) = (ptr::null_mut(), 0);
        // SAFETY: a live handle; `p` and `n` are valid for writes.
        let st = unsafe { svmem_alloc(self.0, len, &mut p, &mut n) };
        assert_eq!(st, SvmemStatus::Ok, "{}", last_error());
        (p, n)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from svmem_create and is not used after.
        unsafe { svmem_destroy(self.0) };
    }
}

// SAFETY: an svmem_t may be used from many threads at once (all its state
// is behind locks); the tests share it only through `&Handle`.
unsafe impl Sync for Handle {}

#[test]
fn bad_input_gets_a_code_and_a_message_naming_it() {
    // SAFETY: null handles and pointers are what is being tested; every
    // other pointer is valid.
    unsafe {
        let mut p = ptr::null_mut();
        let mut n = 0;
        assert_eq!(
            svmem_alloc(ptr::null(), 4096, &mut p, &mut n),
            SvmemStatus::InvalidArgument
        );
        assert!(last_error().contains("handle is NULL"), "{}", last_error());
        assert_eq!(
            svmem_create(ptr::null(), ptr::null_mut()),
            SvmemStatus::InvalidArgument
        );

        let h = Handle::new(16 << 20);
        let (mem, len) = h.alloc(1 << 20);
        assert_eq!(
            svmem_advise(h.0, mem, len, 99, 0),
            SvmemStatus::InvalidArgument
        );
        assert!(
            last_error().contains("advice 99 is unknown"),
            "{}",
            last_error()
        );
        assert_eq!(
            svmem_migrate(h.0, mem, len, -7, ptr::null_mut()),
            SvmemStatus::InvalidArgument
        );
        assert!(
            last_error().contains("-7 is not a location"),
            "{}",
            last_error()
        );
        let bad = SvmemAttr { kind: 42, value: 0 };
        assert_eq!(
            svmem_set_attributes(h.0, mem, len, &bad, 1),
            SvmemStatus::InvalidArgument
        );
        assert_eq!(
            svmem_set_attributes(h.0, mem, len, ptr::null(), 1),
            SvmemStatus::InvalidArgument
        );
        let mut one = 0u64;
        let outside = 0x1000 as *const c_void;
        let st = svmem_device_read(h.0, 0, outside, (&mut one as *mut u64).cast(), 8);
        assert_eq!(st, SvmemStatus::NotManaged, "{}", last_error());
        let st = svmem_device_read(h.0, 5, mem, (&mut one as *mut u64).cast(), 8);
        assert_eq!(st, SvmemStatus::InvalidArgument, "{}", last_error());
        assert!(last_error().contains("dev5"), "{}", last_error());
        assert_eq!(
            svmem_free(h.0, mem.cast::<u8>().add(4096).cast()),
            SvmemStatus::NotManaged
        );
        assert_eq!(svmem_free(h.0, mem), SvmemStatus::Ok);
        assert_eq!(last_error(), "");
        // Freed: the memory is not managed any more.
        assert_eq!(
            svmem_migrate(h.0, mem, len, 0, ptr::null_mut()),
            SvmemStatus::NotManaged
        );
        assert_eq!(svmem_free(h.0, mem), SvmemStatus::NotManaged);
        let mut ev = std::mem::MaybeUninit::<SvmemEvent>::uninit();
        assert_eq!(
            svmem_events_poll(h.0, ev.as_mut_ptr()),
            SvmemStatus::InvalidArgument as i32
        );
        assert!(
            last_error().contains("svmem_events_subscribe"),
            "{}",
            last_error()
        );
        assert_eq!(
            CStr::from_ptr(svmem_status_name(-5)).to_str(),
            Ok("device_fault")
        );
    }
}

unsafe extern "C" fn fails_on_item_7(lane: *mut SvmemLane, item: u64, user: *mut c_void) -> i32 {
    let base = user as u64;
    // SAFETY: `lane` is this callback's lane, used during the call.
    let st = unsafe { svmem_lane_store_u64(lane, base + item * 8, item + 1) };
    if st != SvmemStatus::Ok {
        return st as i32;
    }
    if item == 7 {
        -1
    } else {
        0
    }
}

unsafe extern "C" fn loads_outside(lane: *mut SvmemLane, _item: u64, _user: *mut c_void) -> i32 {
    let mut v = 0u64;
    // SAFETY: `lane` is this callback's lane; `v` is valid for a write.
    unsafe { svmem_lane_load_u64(lane, 0x1000, &mut v) as i32 }
}

#[test]
fn failing_kernels_stop_with_a_device_fault() {
    let h = Handle::new(16 << 20);
    let (mem, _) = h.alloc(1 << 20);
    let mut rep = SvmemLaunchReport::default();
    // SAFETY: a live handle, a thread-safe callback, a valid report.
    let st = unsafe { svmem_launch(h.0, 0, 64, Some(fails_on_item_7), mem, &mut rep) };
    assert_eq!(st, SvmemStatus::DeviceFault);
    assert!(
        last_error().contains("callback returned -1 for item 7"),
        "{}",
        last_error()
    );
    assert_eq!((rep.fatal, rep.grid), (1, 64));
    assert!(rep.items_done < 64);
    // SAFETY: as above.
    let st = unsafe { svmem_launch(h.0, 0, 4, Some(loads_outside), ptr::null_mut(), &mut rep) };
    assert_eq!(st, SvmemStatus::DeviceFault);
    assert!(last_error().contains("fatal fault"), "{}", last_error());
    // SAFETY: as above; a NULL kernel is refused.
    let st = unsafe { svmem_launch(h.0, 0, 4, None, ptr::null_mut(), ptr::null_mut()) };
    assert_eq!(st, SvmemStatus::InvalidArgument);
}

#[test]
fn events_stats_and_json() {
    let h = Handle::new(16 << 20);
    let (mem, len) = h.alloc(2 << 20);
    // SAFETY: live handle; valid out-pointers and buffers throughout.
    unsafe {
        assert_eq!(svmem_events_subscribe(h.0, 0), SvmemStatus::InvalidArgument);
        assert_eq!(svmem_events_subscribe(h.0, 1024), SvmemStatus::Ok);
        let mut rep = SvmemMigrateReport::default();
        assert_eq!(svmem_migrate(h.0, mem, len, 0, &mut rep), SvmemStatus::Ok);
        assert_eq!(rep.migrated, 512);
        let mut ev = std::mem::MaybeUninit::<SvmemEvent>::uninit();
        let mut seen = Vec::new();
        while svmem_events_poll(h.0, ev.as_mut_ptr()) == 1 {
            seen.push(ev.assume_init());
        }
        let end = seen
            .iter()
            .find(|e| e.kind == SvmemEventKind::MigrateEnd)
            .expect("a migrate_end event");
        assert_eq!(
            (end.from, end.to, end.migrated, end.addr),
            (SVMEM_SYSTEM, 0, 512, mem as u64)
        );
        let mut usage = SvmemMemoryUsage::default();
        assert_eq!(svmem_memory_usage(h.0, &mut usage), SvmemStatus::Ok);
        assert_eq!(
            (usage.managed_bytes, usage.device_bytes),
            (2 << 20, 2 << 20)
        );
        let mut need = 0usize;
        let mut small = [0 as std::ffi::c_char; 4];
        let st = svmem_memory_usage_json(h.0, small.as_mut_ptr(), small.len(), &mut need);
        assert_eq!(st, SvmemStatus::InvalidArgument);
        assert!(last_error().contains("call again with a larger one"));
        let mut buf = vec![0 as std::ffi::c_char; need + 1];
        assert_eq!(
            svmem_memory_usage_json(h.0, buf.as_mut_ptr(), buf.len(), &mut need),
            SvmemStatus::Ok
        );
        let text = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
        assert!(text.contains("\"device_bytes\":2097152"), "{text}");
    }
}

#[test]
fn one_handle_serves_many_threads_and_frees_what_is_left() {
    let h = Handle::new(32 << 20);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let h = &h;
            s.spawn(move || {
                for round in 0..8u64 {
                    let (mem, len) = h.alloc(256 << 10);
                    let words = mem.cast::<u64>();
                    let v = t * 100 + round;
                    // SAFETY: `mem` is this thread's fresh region of `len`
                    // bytes; nothing else touches it.
                    unsafe {
                        words.write(v);
                        assert_eq!(
                            svmem_migrate(h.0, mem, len, 0, ptr::null_mut()),
                            SvmemStatus::Ok
                        );
                        let mut got = 0u64;
                        let st = svmem_device_read(h.0, 0, mem, (&mut got as *mut u64).cast(), 8);
                        assert_eq!((st, got), (SvmemStatus::Ok, v));
                        if round % 2 == 0 {
                            assert_eq!(svmem_free(h.0, mem), SvmemStatus::Ok);
                        }
                    }
                }
            });
        }
    });
    let mut usage = SvmemMemoryUsage::default();
    // SAFETY: live handle; valid out-pointer.
    let st = unsafe { svmem_memory_usage(h.0, &mut usage) };
    assert_eq!(st, SvmemStatus::Ok);
    // Half the regions were freed; the handle frees the rest on destroy.
    assert_eq!(usage.managed_bytes, 16 * (256 << 10));
}
