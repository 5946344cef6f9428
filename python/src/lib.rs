//! The Python module `svmem`: an [`Svm`] with emulated devices, managed
//! regions that numpy sees without a copy (the buffer protocol), migration,
//! prefetch, advice and range attributes, device reads and writes,
//! counters, memory usage and events.
//!
//! Ownership. [`svmem::Region`] borrows its `Svm`; Python objects cannot
//! carry that borrow, so the `Svm` sits in an `Arc` and each Python
//! `Region` keeps a clone of it next to its region (dropped after it).
//!
//! Buffers and svmem's view rules. Exporting a region's bytes hands out a
//! pointer that Python code reads and writes with plain loads and stores,
//! which is exactly what a Rust CPU view is, so an export takes one: a
//! region's own export (`numpy.asarray(region)`) is writable and holds its
//! exclusive view ([`svmem::Region::as_mut_slice`]), during which no device
//! touches the region; `region.read_only()` exports read-only and holds a
//! shared view ([`svmem::Region::as_slice`]), during which devices
//! may read but not write it. Device calls and kernels over a region that an
//! array still views fail with `svmem.BusyError` (or a fatal device fault),
//! never race with the array; `del array` (the last one) lifts the bar.
//! Migrations stay allowed: they move pages without changing their bytes,
//! and a CPU access meanwhile waits in the page fault. Every export keeps
//! its `Region` object (and so the memory and the `Svm`) alive, and
//! `Region.free()` refuses while arrays view it.

use std::ffi::{c_int, c_void, CString};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::create_exception;
use pyo3::exceptions::{PyBufferError, PyException, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use svmem::{
    AccessMode, Attr, AttrFlags, Common, DeviceId, EmulatedConfig, Error, EventStream, Location,
    MemAdvice, Region, Svm, View, ViewMut, VirtAddr,
};

create_exception!(
    svmem,
    SvmemError,
    PyException,
    "An svmem call failed; the message says what happened, with the values, and what to do."
);
create_exception!(
    svmem,
    BusyError,
    SvmemError,
    "Pages were busy: pinned, racing, or viewed by a CPU array (delete the array, then retry)."
);

fn err(e: Error) -> PyErr {
    match e {
        Error::Busy { .. } | Error::HeldByCpuView { .. } | Error::PinBusy { .. } => {
            BusyError::new_err(e.to_string())
        }
        e => SvmemError::new_err(e.to_string()),
    }
}

/// `"system"` (or `"cpu"`) for system memory, an int for a device.
fn location(v: &Bound<'_, PyAny>) -> PyResult<Location> {
    if let Ok(s) = v.extract::<String>() {
        return match s.as_str() {
            "system" | "cpu" => Ok(Location::System),
            other => Err(PyValueError::new_err(format!(
                "location {other:?} is unknown; use \"system\" or a device index such as 0"
            ))),
        };
    }
    match v.extract::<i64>() {
        Ok(d) => Ok(Location::Device(device(d)?)),
        Err(_) => Err(PyValueError::new_err(format!(
            "location {v} is neither \"system\" nor a device index"
        ))),
    }
}

fn device(d: i64) -> PyResult<DeviceId> {
    u8::try_from(d)
        .map(DeviceId)
        .map_err(|_| PyValueError::new_err(format!("device {d} is not a device index (0..=255)")))
}

fn location_py(py: Python<'_>, l: Option<Location>) -> PyResult<Py<PyAny>> {
    Ok(match l {
        None => py.None(),
        Some(Location::System) => "system".into_pyobject(py)?.into_any().unbind(),
        Some(Location::Device(d)) => d.0.into_pyobject(py)?.into_any().unbind(),
    })
}

/// A serialisable value as a Python object (through `json.loads`).
fn to_py<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    let text =
        serde_json::to_string(v).map_err(|e| SvmemError::new_err(format!("cannot encode: {e}")))?;
    json_loads(py, &text)
}

fn json_loads(py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// One shared address space with emulated devices.
///
/// `Svm(device_memory=256 MiB, devices=1, xnack=True, memory_limit=None)`
#[pyclass(name = "Svm", module = "svmem", frozen)]
struct PySvm {
    svm: Arc<Svm>,
    events: Mutex<Option<EventStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[pymethods]
impl PySvm {
    #[new]
    #[pyo3(signature = (device_memory = 256 << 20, devices = 1, xnack = true, memory_limit = None))]
    fn new(
        py: Python<'_>,
        device_memory: u64,
        devices: u32,
        xnack: bool,
        memory_limit: Option<u64>,
    ) -> PyResult<Self> {
        let max = svmem::addr::MAX_DEVICES;
        if devices == 0 || devices as usize > max {
            return Err(PyValueError::new_err(format!(
                "devices={devices}: an Svm holds 1 to {max} devices; use devices=1"
            )));
        }
        let svm = py.detach(|| {
            let mut b = Svm::builder().xnack(xnack);
            if let Some(l) = memory_limit {
                b = b.memory_limit(l);
            }
            for _ in 0..devices {
                b = b.emulated(EmulatedConfig::with_memory(device_memory))?;
            }
            b.build()
        });
        Ok(PySvm {
            svm: Arc::new(svm.map_err(err)?),
            events: Mutex::new(None),
        })
    }

    /// Allocates `size` bytes of managed memory (rounded up to 4 KiB).
    fn alloc(&self, py: Python<'_>, size: usize) -> PyResult<PyRegion> {
        let svm = self.svm.clone();
        let region = py.detach(|| svm.alloc(size)).map_err(err)?;
        // SAFETY: the region borrows the `Svm` inside `self.svm`'s `Arc`,
        // whose address never changes; `Held` keeps a clone of that `Arc`
        // in a field declared after the region, so the `Svm` outlives it.
        // The 'static borrow is never handed out of `Held`.
        let region: Region<'static> = unsafe { std::mem::transmute(region) };
        let (addr, len) = (region.addr().0, region.len());
        Ok(PyRegion {
            addr,
            len,
            held: Mutex::new(Some(Held {
                hold: Hold::None,
                exports: 0,
                region,
                svm: self.svm.clone(),
            })),
        })
    }

    /// Device ids, in order.
    fn devices(&self) -> Vec<u32> {
        self.svm
            .device_ids()
            .into_iter()
            .map(|d| u32::from(d.0))
            .collect()
    }

    /// Migrates `[addr, addr+length)` to `to` ("system" or a device index);
    /// returns the report (pages moved, skipped and why).
    fn migrate(
        &self,
        py: Python<'_>,
        addr: u64,
        length: u64,
        to: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let to = location(to)?;
        let rep = py
            .detach(|| self.svm.migrate(VirtAddr(addr), length, to))
            .map_err(err)?;
        to_py(py, &rep)
    }

    /// `cudaMemPrefetchAsync`: records the prefetch location and migrates.
    fn prefetch(
        &self,
        py: Python<'_>,
        addr: u64,
        length: u64,
        to: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let to = location(to)?;
        let rep = py
            .detach(|| self.svm.prefetch(VirtAddr(addr), length, to))
            .map_err(err)?;
        to_py(py, &rep)
    }

    /// `cudaMemAdvise`: `advice` is one of "read_mostly", "unset_read_mostly",
    /// "preferred_location" (with `target`, a location),
    /// "unset_preferred_location", "accessed_by" / "unset_accessed_by"
    /// (with `target`, a device).
    #[pyo3(signature = (addr, length, advice, target = None))]
    fn advise(
        &self,
        py: Python<'_>,
        addr: u64,
        length: u64,
        advice: &str,
        target: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let need = |what: &str| {
            target.ok_or_else(|| {
                PyValueError::new_err(format!("advice {advice:?} needs target= ({what})"))
            })
        };
        let a = match advice {
            "read_mostly" => MemAdvice::SetReadMostly,
            "unset_read_mostly" => MemAdvice::UnsetReadMostly,
            "preferred_location" => MemAdvice::SetPreferredLocation(location(need("a location")?)?),
            "unset_preferred_location" => MemAdvice::UnsetPreferredLocation,
            "accessed_by" => MemAdvice::SetAccessedBy(device(need("a device")?.extract()?)?),
            "unset_accessed_by" => {
                MemAdvice::UnsetAccessedBy(device(need("a device")?.extract()?)?)
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "advice {other:?} is unknown; use read_mostly, unset_read_mostly, \
                     preferred_location, unset_preferred_location, accessed_by or unset_accessed_by"
                )))
            }
        };
        py.detach(|| self.svm.advise(VirtAddr(addr), length, a))
            .map_err(err)
    }

    /// Sets range attributes, all or none. `access` maps a device index to
    /// "none", "access" or "access_in_place"; flags are `FLAG_*` bits.
    #[pyo3(signature = (addr, length, *, preferred_location = None, prefetch_location = None,
        access = None, set_flags = 0, clear_flags = 0, granularity = None))]
    #[allow(clippy::too_many_arguments)]
    fn set_attributes(
        &self,
        py: Python<'_>,
        addr: u64,
        length: u64,
        preferred_location: Option<&Bound<'_, PyAny>>,
        prefetch_location: Option<&Bound<'_, PyAny>>,
        access: Option<&Bound<'_, PyDict>>,
        set_flags: u32,
        clear_flags: u32,
        granularity: Option<u8>,
    ) -> PyResult<()> {
        let mut attrs = Vec::new();
        if let Some(l) = preferred_location {
            attrs.push(Attr::PreferredLocation(Some(location(l)?)));
        }
        if let Some(l) = prefetch_location {
            attrs.push(Attr::PrefetchLocation(Some(location(l)?)));
        }
        if let Some(map) = access {
            for (k, v) in map.iter() {
                let mode = match v.extract::<String>()?.as_str() {
                    "none" => AccessMode::None,
                    "access" => AccessMode::Access,
                    "access_in_place" => AccessMode::AccessInPlace,
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "access mode {other:?} is unknown; use none, access or access_in_place"
                        )))
                    }
                };
                attrs.push(Attr::Access(device(k.extract()?)?, mode));
            }
        }
        let flags = |bits: u32| AttrFlags::from_bits(bits).map_err(|e| err(e.into()));
        if set_flags != 0 {
            attrs.push(Attr::SetFlags(flags(set_flags)?));
        }
        if clear_flags != 0 {
            attrs.push(Attr::ClearFlags(flags(clear_flags)?));
        }
        if let Some(g) = granularity {
            attrs.push(Attr::Granularity(g));
        }
        py.detach(|| self.svm.set_attributes(VirtAddr(addr), length, &attrs))
            .map_err(err)
    }

    /// The attributes of a range as a whole (values sub-ranges disagree on
    /// read "mixed").
    fn attributes(&self, py: Python<'_>, addr: u64, length: u64) -> PyResult<Py<PyAny>> {
        let q = self.svm.attributes(VirtAddr(addr), length).map_err(err)?;
        let d = PyDict::new(py);
        let common = |c: Common<Option<Location>>| -> PyResult<Py<PyAny>> {
            match c {
                Common::Same(l) => location_py(py, l),
                Common::Mixed => Ok("mixed".into_pyobject(py)?.into_any().unbind()),
            }
        };
        d.set_item("preferred_location", common(q.preferred)?)?;
        d.set_item("prefetch_location", common(q.prefetch)?)?;
        let access: Vec<String> = q
            .access
            .iter()
            .map(|a| match a {
                Common::Same(AccessMode::None) => "none".to_string(),
                Common::Same(AccessMode::Access) => "access".to_string(),
                Common::Same(AccessMode::AccessInPlace) => "access_in_place".to_string(),
                Common::Mixed => "mixed".to_string(),
            })
            .collect();
        d.set_item("access", access)?;
        d.set_item("flags", q.flags.bits())?;
        d.set_item("granularity", q.granularity)?;
        Ok(d.into_any().unbind())
    }

    /// Where the page at `addr` lives: "system", a device index, or None
    /// (not managed, or migrating right now).
    fn location(&self, py: Python<'_>, addr: u64) -> PyResult<Py<PyAny>> {
        location_py(py, self.svm.location(VirtAddr(addr)))
    }

    /// Device `dev` reads `length` bytes at `addr` through its page table.
    fn device_read(&self, py: Python<'_>, dev: i64, addr: u64, length: usize) -> PyResult<Vec<u8>> {
        let d = device(dev)?;
        let mut buf = vec![0u8; length];
        py.detach(|| {
            self.svm
                .device(d)
                .and_then(|h| h.read(VirtAddr(addr), &mut buf))
        })
        .map_err(err)?;
        Ok(buf)
    }

    /// Device `dev` writes `data` at `addr` through its page table.
    fn device_write(&self, py: Python<'_>, dev: i64, addr: u64, data: Vec<u8>) -> PyResult<()> {
        let d = device(dev)?;
        py.detach(|| {
            self.svm
                .device(d)
                .and_then(|h| h.write(VirtAddr(addr), &data))
        })
        .map_err(err)?;
        Ok(())
    }

    /// Every counter, as a dict.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.svm.stats())
    }

    /// Where memory is and what is charged against the limit, as a dict.
    fn memory_usage(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let u = py.detach(|| self.svm.memory_usage());
        to_py(py, &u)
    }

    /// Starts recording events (at most `capacity` pending; more are counted
    /// as dropped). Calling it again starts a fresh stream.
    #[pyo3(signature = (capacity = 65536))]
    fn subscribe(&self, capacity: usize) -> PyResult<()> {
        if capacity == 0 {
            return Err(PyValueError::new_err(
                "capacity=0 holds no event; use 1 or more (65536 is the default)",
            ));
        }
        *lock(&self.events) = Some(self.svm.subscribe(capacity));
        Ok(())
    }

    /// The events recorded since the last call, oldest first, as dicts
    /// (`{"ts_ns": ..., "event": "migrate_end", ...}`).
    fn events(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        let events = lock(&self.events);
        let Some(stream) = events.as_ref() else {
            return Err(SvmemError::new_err(
                "no event subscription; call svm.subscribe() first",
            ));
        };
        let list = PyList::empty(py);
        for e in stream.drain() {
            list.append(json_loads(py, &e.to_json_line())?)?;
        }
        Ok(list.unbind())
    }

    fn __repr__(&self) -> String {
        format!("svmem.Svm(devices={})", self.svm.device_ids().len())
    }
}

/// The CPU view an export holds (see the module docs).
enum Hold {
    None,
    Shared(#[allow(dead_code)] View<'static, u8>),
    Exclusive(#[allow(dead_code)] ViewMut<'static, u8>),
}

/// A live region and what its exports hold. Fields drop in order: the view,
/// then the region (which frees the memory), then the `Svm` it borrows.
struct Held {
    hold: Hold,
    exports: usize,
    region: Region<'static>,
    svm: Arc<Svm>,
}

impl Held {
    /// Takes the view `writable` exports need, keeping the one held when it
    /// is enough, and returns the base pointer of the bytes.
    fn hold(&mut self, writable: bool) -> *mut u8 {
        let want_exclusive = writable || matches!(self.hold, Hold::Exclusive(_));
        if want_exclusive && !matches!(self.hold, Hold::Exclusive(_)) {
            // Drop a shared view first: no shared reference to the bytes may
            // live while the exclusive one does.
            self.hold = Hold::None;
            let v = self.region.as_mut_slice::<u8>();
            // SAFETY: the view borrows the region's heap state and mapping,
            // which live until `self.region` drops; `Held` drops `hold`
            // first, and replaces it only after dropping the previous view.
            // While it lives, nothing else takes a view of this region.
            self.hold = Hold::Exclusive(unsafe {
                std::mem::transmute::<ViewMut<'_, u8>, ViewMut<'static, u8>>(v)
            });
        } else if matches!(self.hold, Hold::None) {
            let v = self.region.as_slice::<u8>();
            // SAFETY: as above, for the shared view.
            self.hold =
                Hold::Shared(unsafe { std::mem::transmute::<View<'_, u8>, View<'static, u8>>(v) });
        }
        match &mut self.hold {
            Hold::Exclusive(v) => v.as_mut_ptr(),
            Hold::Shared(v) => v.as_ptr().cast_mut(),
            Hold::None => unreachable!("a view was just taken"),
        }
    }
}

/// Managed memory. `numpy.asarray(region)` is a zero-copy `uint8` array over
/// it (`.view(numpy.float64)` and friends retype it without a copy).
#[pyclass(name = "Region", module = "svmem")]
struct PyRegion {
    addr: u64,
    len: u64,
    /// `None` once freed.
    held: Mutex<Option<Held>>,
}

impl PyRegion {
    fn svm(&self) -> PyResult<Arc<Svm>> {
        match lock(&self.held).as_ref() {
            Some(h) => Ok(h.svm.clone()),
            None => Err(SvmemError::new_err(format!(
                "the region at {:#x} was freed; allocate a new one",
                self.addr
            ))),
        }
    }
}

#[pymethods]
impl PyRegion {
    /// The region's address (as an int).
    #[getter]
    fn addr(&self) -> u64 {
        self.addr
    }

    /// Bytes (a multiple of 4096).
    fn __len__(&self) -> usize {
        self.len as usize
    }

    /// Buffer exports (numpy arrays, memoryviews) alive now.
    #[getter]
    fn exports(&self) -> usize {
        lock(&self.held).as_ref().map_or(0, |h| h.exports)
    }

    /// Whether `free()` ran.
    #[getter]
    fn freed(&self) -> bool {
        lock(&self.held).is_none()
    }

    /// Migrates the whole region to `to` ("system" or a device index).
    fn migrate(&self, py: Python<'_>, to: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let to = location(to)?;
        let svm = self.svm()?;
        let rep = py
            .detach(|| svm.migrate(VirtAddr(self.addr), self.len, to))
            .map_err(err)?;
        to_py(py, &rep)
    }

    /// Prefetches the whole region to `to`.
    fn prefetch(&self, py: Python<'_>, to: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let to = location(to)?;
        let svm = self.svm()?;
        let rep = py
            .detach(|| svm.prefetch(VirtAddr(self.addr), self.len, to))
            .map_err(err)?;
        to_py(py, &rep)
    }

    /// Frees the memory now (it is freed anyway when the object goes).
    /// Refused while an array views it.
    fn free(&self, py: Python<'_>) -> PyResult<()> {
        let mut held = lock(&self.held);
        if let Some(h) = held.as_ref() {
            if h.exports > 0 {
                return Err(RegionInUseError::new_err(format!(
                    "{} array(s) or memoryview(s) still view this region; delete them first",
                    h.exports
                )));
            }
        }
        let h = held.take();
        drop(held);
        py.detach(|| drop(h));
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.free(py)
    }

    fn __repr__(&self) -> String {
        format!("svmem.Region(addr={:#x}, len={})", self.addr, self.len)
    }

    /// A read-only export of this region: `numpy.asarray(region.read_only())`
    /// is a read-only array holding the shared CPU view, so devices may still
    /// read the region (but not write it) while it lives.
    fn read_only(slf: Py<Self>) -> PyReadOnly {
        PyReadOnly { region: slf }
    }

    /// # Safety
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // numpy asks without PyBUF_WRITABLE and honours `readonly`: a
        // region's own export is always the writable, exclusive one.
        let (ptr, len) = export(&slf.borrow(), true)?;
        // SAFETY: forwarded from Python's call.
        unsafe { fill_view(view, flags, slf.into_any(), ptr, len, false) }
    }

    /// # Safety
    /// Called by Python with a `Py_buffer` this object filled.
    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: forwarded from Python's call.
        unsafe { release(self, view) }
    }
}

/// A read-only window on a region (from `Region.read_only()`).
#[pyclass(name = "ReadOnlyRegion", module = "svmem", frozen)]
struct PyReadOnly {
    region: Py<PyRegion>,
}

#[pymethods]
impl PyReadOnly {
    /// # Safety
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "a read_only() region cannot be exported writable; export the region itself",
            ));
        }
        let (ptr, len) = export(&slf.get().region.borrow(slf.py()), false)?;
        // SAFETY: forwarded from Python's call. `obj` is this object, which
        // keeps the region alive through `self.region`.
        unsafe { fill_view(view, flags, slf.into_any(), ptr, len, true) }
    }

    /// # Safety
    /// Called by Python with a `Py_buffer` this object filled.
    unsafe fn __releasebuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer) {
        let region = slf.get().region.borrow(slf.py());
        // SAFETY: forwarded from Python's call.
        unsafe { release(&region, view) }
    }
}

/// Takes the CPU view an export needs and counts the export.
fn export(region: &PyRegion, writable: bool) -> PyResult<(*mut u8, isize)> {
    let mut held = lock(&region.held);
    let Some(h) = held.as_mut() else {
        return Err(PyBufferError::new_err(format!(
            "the region at {:#x} was freed; allocate a new one",
            region.addr
        )));
    };
    let len = isize::try_from(region.len)
        .map_err(|_| PyBufferError::new_err("the region is too large for a buffer"))?;
    let ptr = h.hold(writable);
    h.exports += 1;
    Ok((ptr, len))
}

/// Ends one export; the last one drops the CPU view (lifting the bar).
///
/// # Safety
/// `view` is null or a buffer `fill_view` filled.
unsafe fn release(region: &PyRegion, view: *mut ffi::Py_buffer) {
    // SAFETY: `view` is the buffer `fill_view` filled; its format is null or
    // the `CString` it leaked.
    unsafe {
        if !view.is_null() && !(*view).format.is_null() {
            drop(CString::from_raw((*view).format));
            (*view).format = std::ptr::null_mut();
        }
    }
    let mut held = lock(&region.held);
    if let Some(h) = held.as_mut() {
        h.exports = h.exports.saturating_sub(1);
        if h.exports == 0 {
            h.hold = Hold::None;
        }
    }
}

/// Fills a `Py_buffer` for a one-dimensional byte export.
///
/// # Safety
/// `view` is null or a `Py_buffer` Python passed to `__getbuffer__`; `ptr`
/// is valid for `len` bytes while `obj` lives (it holds the CPU view).
unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    obj: Bound<'_, PyAny>,
    ptr: *mut u8,
    len: isize,
    readonly: bool,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("the Py_buffer is NULL"));
    }
    let format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
        CString::from(c"B").into_raw()
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: `view` is non-null and Python's to fill. `obj` takes a strong
    // reference, which keeps the memory and the CPU view that bars devices
    // alive until the release; `shape` and `strides` point into the
    // `Py_buffer` itself, which outlives the export.
    unsafe {
        (*view).obj = obj.into_ptr();
        (*view).buf = ptr.cast::<c_void>();
        (*view).len = len;
        (*view).readonly = c_int::from(readonly);
        (*view).itemsize = 1;
        (*view).format = format;
        (*view).ndim = 1;
        (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
            &mut (*view).len
        } else {
            std::ptr::null_mut()
        };
        (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
            &mut (*view).itemsize
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
    }
    Ok(())
}

create_exception!(
    svmem,
    RegionInUseError,
    SvmemError,
    "The region cannot be freed or exported in its current state."
);

/// The `svmem` module.
#[pymodule]
#[pyo3(name = "svmem")]
fn svmem_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PySvm>()?;
    m.add_class::<PyRegion>()?;
    m.add_class::<PyReadOnly>()?;
    m.add("Error", py.get_type::<SvmemError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("RegionInUseError", py.get_type::<RegionInUseError>())?;
    m.add("PAGE_SIZE", svmem::PAGE_SIZE)?;
    m.add("BLOCK_SIZE", svmem::BLOCK_SIZE)?;
    for (name, f) in [
        ("FLAG_HOST_ACCESS", AttrFlags::HOST_ACCESS),
        ("FLAG_COHERENT", AttrFlags::COHERENT),
        ("FLAG_DEVICE_READ_ONLY", AttrFlags::DEVICE_READ_ONLY),
        ("FLAG_DEVICE_EXEC", AttrFlags::DEVICE_EXEC),
        ("FLAG_READ_MOSTLY", AttrFlags::READ_MOSTLY),
        ("FLAG_ALWAYS_MAPPED", AttrFlags::ALWAYS_MAPPED),
    ] {
        m.add(name, f.bits())?;
    }
    Ok(())
}
