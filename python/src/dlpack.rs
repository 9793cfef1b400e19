//! DLPack export of an object's bytes: [`DlpackBuffer`] has `__dlpack__` and
//! `__dlpack_device__`, so `numpy.from_dlpack(buf)` and `torch.from_dlpack(buf)` wrap
//! the memory as an array or tensor without copying it.
//!
//! A buffer views one of two kinds of memory:
//! - **host bytes** (the object's `Bytes`, or a CPU view of those very bytes): every
//!   capsule holds a clone of the `Bytes`, so the memory lives as long as any array or
//!   tensor made from it, after the UDL call too;
//! - **memory the node lends for one call** (a `squall_udl::DeviceView` of the object's
//!   copy on a GPU, or in pinned host memory outside the `Bytes`): the node guarantees it
//!   only while the handler runs. The buffer then holds a [`Lease`] that the host closes
//!   when the handler returns: exporting after that raises `BufferError`. A tensor made
//!   during the call cannot be revoked (the consumer holds a raw pointer), so the host
//!   counts the exports still alive when the call ends and fails the invocation with a
//!   clear message when one is (see `udl_host`).
//!
//! The capsules follow the DLPack spec: the legacy `dltensor` (`DLManagedTensor`, what
//! every consumer accepts) unless the consumer asks for `max_version >= (1, 0)`, then
//! `dltensor_versioned` (`DLManagedTensorVersioned`) with `DLPACK_FLAG_BITMASK_READ_ONLY`
//! set: numpy >= 2.1 then makes a read-only array. The legacy protocol has no flags, and
//! numpy marks arrays it imports that way writeable; the memory is still the node's
//! stored object and must not be written. PyTorch ignores the flag (it has no read-only
//! tensors) and accepts both capsules.
//!
//! The tensor is always 1-D `uint8` of the object's length, contiguous (stride 1), with
//! `byte_offset` 0 and `data` the object's first byte, so the consumer's data pointer
//! equals [`DlpackBuffer::address`]. Pinned host memory (`kDLCUDAHost`) is exported as
//! `kDLCPU`: it is host memory, and PyTorch does not import `kDLCUDAHost`.

// DLPack is a C ABI: raw structs, capsules and a deleter called by the consumer. Each
// unsafe block states what it relies on.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

/// `DLDeviceType` values this module produces or reads (dlpack.h).
pub const DL_CPU: i32 = 1;
pub const DL_CUDA: i32 = 2;
pub const DL_CUDA_HOST: i32 = 3;
/// `DLDataTypeCode::kDLUInt`.
const DL_UINT: u8 = 1;
/// The DLPack version of [`DLManagedTensorVersioned`] (the struct layout of dlpack.h 1.0).
const DLPACK_VERSION_MAJOR: u32 = 1;
const DLPACK_VERSION_MINOR: u32 = 0;
const DLPACK_FLAG_BITMASK_READ_ONLY: u64 = 1 << 0;
const DLPACK_FLAG_BITMASK_IS_COPIED: u64 = 1 << 1;

/// Capsule names of the Python DLPack protocol: a consumer renames the capsule to the
/// `used_` name when it takes ownership of the tensor (and calls its deleter itself).
const CAPSULE_LEGACY: &CStr = c"dltensor";
const CAPSULE_VERSIONED: &CStr = c"dltensor_versioned";

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DLDevice {
    /// `DLDeviceType`, a C enum: an `int` on every platform we build for.
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
#[derive(Debug)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    /// In elements; null would mean compact row-major (deprecated since DLPack 1.2).
    strides: *mut i64,
    byte_offset: u64,
}

/// DLPack <= 0.8's managed tensor, the payload of a `dltensor` capsule.
#[repr(C)]
#[derive(Debug)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

/// DLPack >= 1.0's managed tensor, the payload of a `dltensor_versioned` capsule.
#[repr(C)]
#[derive(Debug)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

// The layouts of dlpack.h on the 64-bit platforms we build for.
const _: () = {
    assert!(std::mem::size_of::<DLDevice>() == 8);
    assert!(std::mem::size_of::<DLDataType>() == 4);
    assert!(std::mem::size_of::<DLTensor>() == 48);
    assert!(std::mem::offset_of!(DLTensor, shape) == 24);
    assert!(std::mem::offset_of!(DLTensor, byte_offset) == 40);
    assert!(std::mem::size_of::<DLManagedTensor>() == 64);
    assert!(std::mem::offset_of!(DLManagedTensor, deleter) == 56);
    assert!(std::mem::size_of::<DLManagedTensorVersioned>() == 80);
    assert!(std::mem::offset_of!(DLManagedTensorVersioned, flags) == 24);
    assert!(std::mem::offset_of!(DLManagedTensorVersioned, dl_tensor) == 32);
};

/// The validity of memory the node lends for one UDL call, shared by the buffer and by
/// every export made from it.
#[derive(Debug)]
pub struct Lease {
    open: AtomicBool,
    exports_alive: AtomicUsize,
}

impl Lease {
    pub fn new() -> Arc<Lease> {
        Arc::new(Lease {
            open: AtomicBool::new(true),
            exports_alive: AtomicUsize::new(0),
        })
    }

    /// Ends the loan: exports from now on raise. Exports already made stay as they are
    /// (their memory is the consumer's problem now; see [`Lease::exports_alive`]).
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Arrays or tensors made from the lent memory that their consumer still holds.
    pub fn exports_alive(&self) -> usize {
        self.exports_alive.load(Ordering::Acquire)
    }
}

/// What keeps one export's memory valid until its deleter runs. Dropped without the GIL
/// when a consumer frees the tensor on another thread: `Bytes` of a Python buffer
/// release it through `buffer`'s releaser thread, and a `Py` drop is deferred.
enum Keep {
    /// Host bytes: this clone keeps them.
    Bytes(#[allow(dead_code)] Bytes),
    /// A copy made for `copy=True`, owned by the export (and writable).
    Owned(#[allow(dead_code)] Vec<u8>),
    /// Lent memory: counted while the export lives; `owner` is an optional Python object
    /// that keeps it allocated (views made by `_dlpack_view`).
    Lent {
        lease: Arc<Lease>,
        #[allow(dead_code)]
        owner: Option<Py<PyAny>>,
    },
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Keep::Lent { lease, .. } = self {
            let before = lease.exports_alive.fetch_sub(1, Ordering::AcqRel);
            assert!(before > 0, "a DLPack export was released twice");
        }
    }
}

/// One export, allocated once; `managed` first so the managed tensor's address is the
/// export's (the deleter frees the whole allocation from it).
#[repr(C)]
struct Export<M> {
    managed: M,
    shape: [i64; 1],
    strides: [i64; 1],
    keep: Keep,
}

/// Where an exported tensor's bytes are and how they are described.
struct Described {
    data: *mut c_void,
    len_bytes: u64,
    device: DLDevice,
    flags: u64,
}

impl DLTensor {
    /// A tensor to fill in once its allocation has its final address.
    fn unset() -> DLTensor {
        DLTensor {
            data: std::ptr::null_mut(),
            device: DLDevice {
                device_type: DL_CPU,
                device_id: 0,
            },
            ndim: 0,
            dtype: DLDataType {
                code: DL_UINT,
                bits: 8,
                lanes: 1,
            },
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        }
    }
}

impl Described {
    /// `shape` and `strides` point to one `i64` each, in the export's allocation.
    fn tensor(&self, shape: *mut i64, strides: *mut i64) -> DLTensor {
        DLTensor {
            data: self.data,
            device: self.device,
            ndim: 1,
            dtype: DLDataType {
                code: DL_UINT,
                bits: 8,
                lanes: 1,
            },
            shape,
            strides,
            byte_offset: 0,
        }
    }
}

fn len_i64(len_bytes: u64) -> PyResult<i64> {
    i64::try_from(len_bytes).map_err(|_| PyValueError::new_err("a buffer longer than i64::MAX"))
}

/// The deleter of a legacy export; called once, by the consumer or by the capsule's
/// destructor if no consumer took it.
unsafe extern "C" fn delete_legacy(managed: *mut DLManagedTensor) {
    if managed.is_null() {
        return;
    }
    // SAFETY: `managed` is the first field of an `Export` that `Box::into_raw` leaked in
    // `legacy_capsule`, and the protocol calls the deleter exactly once.
    drop(unsafe { Box::from_raw(managed.cast::<Export<DLManagedTensor>>()) });
}

/// The deleter of a versioned export (see [`delete_legacy`]).
unsafe extern "C" fn delete_versioned(managed: *mut DLManagedTensorVersioned) {
    if managed.is_null() {
        return;
    }
    // SAFETY: as in `delete_legacy`, for `versioned_capsule`'s allocation.
    drop(unsafe { Box::from_raw(managed.cast::<Export<DLManagedTensorVersioned>>()) });
}

/// Runs `f` with the interpreter's pending exception (if any) set aside: a capsule may be
/// destroyed while an exception propagates, and dropping what an export keeps can run
/// Python code (a decref).
unsafe fn with_error_saved(f: impl FnOnce()) {
    let (mut kind, mut value, mut trace) = (
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    // SAFETY: called from a capsule destructor, with the GIL held; Fetch/Restore pair up.
    unsafe { ffi::PyErr_Fetch(&mut kind, &mut value, &mut trace) };
    f();
    // SAFETY: as above; Restore takes back the references Fetch gave.
    unsafe { ffi::PyErr_Restore(kind, value, trace) };
}

/// Destructor of a `dltensor` capsule: frees the export unless a consumer took it (it
/// renamed the capsule `used_dltensor` and owns the deleter call).
unsafe extern "C" fn legacy_capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: `capsule` is the capsule being destroyed (GIL held); IsValid sets no error.
    if unsafe { ffi::PyCapsule_IsValid(capsule, CAPSULE_LEGACY.as_ptr()) } != 1 {
        return;
    }
    // SAFETY: the name matched, so the pointer is the `DLManagedTensor` we stored.
    unsafe {
        with_error_saved(|| {
            let managed = ffi::PyCapsule_GetPointer(capsule, CAPSULE_LEGACY.as_ptr())
                .cast::<DLManagedTensor>();
            if let Some(deleter) = managed.as_ref().and_then(|m| m.deleter) {
                deleter(managed);
            }
        })
    }
}

/// Destructor of a `dltensor_versioned` capsule (see [`legacy_capsule_destructor`]).
unsafe extern "C" fn versioned_capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: as in `legacy_capsule_destructor`.
    if unsafe { ffi::PyCapsule_IsValid(capsule, CAPSULE_VERSIONED.as_ptr()) } != 1 {
        return;
    }
    // SAFETY: the name matched, so the pointer is the `DLManagedTensorVersioned` we stored.
    unsafe {
        with_error_saved(|| {
            let managed = ffi::PyCapsule_GetPointer(capsule, CAPSULE_VERSIONED.as_ptr())
                .cast::<DLManagedTensorVersioned>();
            if let Some(deleter) = managed.as_ref().and_then(|m| m.deleter) {
                deleter(managed);
            }
        })
    }
}

/// Wraps a leaked export in a capsule; on failure the export is freed.
fn capsule<'py>(
    py: Python<'py>,
    pointer: *mut c_void,
    name: &'static CStr,
    destructor: unsafe extern "C" fn(*mut ffi::PyObject),
    free: impl FnOnce(),
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `pointer` stays valid until its deleter runs; the name is 'static as the
    // capsule API requires (it keeps the pointer, not a copy).
    let raw = unsafe { ffi::PyCapsule_New(pointer, name.as_ptr(), Some(destructor)) };
    if raw.is_null() {
        free();
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference, just checked to be non-null.
    Ok(unsafe { Bound::from_owned_ptr(py, raw) })
}

fn legacy_capsule<'py>(
    py: Python<'py>,
    what: Described,
    keep: Keep,
) -> PyResult<Bound<'py, PyAny>> {
    let len = len_i64(what.len_bytes)?;
    let export = Box::new(Export {
        managed: DLManagedTensor {
            dl_tensor: DLTensor::unset(),
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete_legacy),
        },
        shape: [len],
        strides: [1],
        keep,
    });
    let raw = Box::into_raw(export);
    // SAFETY: `raw` was just leaked and is not shared yet. The shape and strides live in
    // the same allocation, which never moves; the manager context is the export itself.
    unsafe {
        let shape = (&raw mut (*raw).shape).cast::<i64>();
        let strides = (&raw mut (*raw).strides).cast::<i64>();
        (*raw).managed.dl_tensor = what.tensor(shape, strides);
        (*raw).managed.manager_ctx = raw.cast();
    }
    capsule(
        py,
        raw.cast(),
        CAPSULE_LEGACY,
        legacy_capsule_destructor,
        || {
            // SAFETY: the capsule was not made, so nobody else has the pointer.
            unsafe { delete_legacy(raw.cast()) }
        },
    )
}

fn versioned_capsule<'py>(
    py: Python<'py>,
    what: Described,
    keep: Keep,
) -> PyResult<Bound<'py, PyAny>> {
    let len = len_i64(what.len_bytes)?;
    let export = Box::new(Export {
        managed: DLManagedTensorVersioned {
            version: DLPackVersion {
                major: DLPACK_VERSION_MAJOR,
                minor: DLPACK_VERSION_MINOR,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete_versioned),
            flags: what.flags,
            dl_tensor: DLTensor::unset(),
        },
        shape: [len],
        strides: [1],
        keep,
    });
    let raw = Box::into_raw(export);
    // SAFETY: as in `legacy_capsule`.
    unsafe {
        let shape = (&raw mut (*raw).shape).cast::<i64>();
        let strides = (&raw mut (*raw).strides).cast::<i64>();
        (*raw).managed.dl_tensor = what.tensor(shape, strides);
        (*raw).managed.manager_ctx = raw.cast();
    }
    capsule(
        py,
        raw.cast(),
        CAPSULE_VERSIONED,
        versioned_capsule_destructor,
        || {
            // SAFETY: as in `legacy_capsule`.
            unsafe { delete_versioned(raw.cast()) }
        },
    )
}

/// What a [`DlpackBuffer`] views.
enum Source {
    /// Host bytes, kept by every export.
    Host(Bytes),
    /// Memory lent for the duration of a lease.
    Lent {
        lease: Arc<Lease>,
        owner: Option<Py<PyAny>>,
    },
}

/// An object's bytes for DLPack consumers: ``numpy.from_dlpack(buf)``,
/// ``torch.from_dlpack(buf)``, ``cupy.from_dlpack(buf)``... give a 1-D ``uint8`` array or
/// tensor over the same memory (no copy).
///
/// Host memory (``device == "cpu"`` and ``lent`` false) stays valid as long as an array
/// made from it lives. GPU memory (and host memory the node lends, ``lent`` true) is
/// valid only during the UDL call that received it: ``__dlpack__`` raises
/// ``BufferError`` after the call, and a tensor made from it must not outlive the call
/// (copy what you keep, e.g. ``tensor.clone()``); the host fails an invocation that
/// leaves one alive.
#[pyclass(module = "squall._native", frozen, name = "DLPackBuffer")]
pub struct DlpackBuffer {
    address: u64,
    len_bytes: u64,
    /// The `DLDeviceType` the capsules carry (`kDLCUDAHost` is exported as `kDLCPU`).
    export_type: i32,
    /// The type of the memory as the node described it.
    memory_type: i32,
    device_id: i32,
    stream: u64,
    /// Made from the node's view of its cached copy (`Input::device`), not from the
    /// object's host bytes alone.
    cached: bool,
    source: Source,
}

impl DlpackBuffer {
    /// A buffer over host bytes.
    pub fn host(bytes: Bytes) -> DlpackBuffer {
        DlpackBuffer {
            address: bytes.as_ptr() as u64,
            len_bytes: bytes.len() as u64,
            export_type: DL_CPU,
            memory_type: DL_CPU,
            device_id: 0,
            stream: 0,
            cached: false,
            source: Source::Host(bytes),
        }
    }

    /// A buffer over a node's view of an object (`squall_udl::DeviceView`), with `blob`
    /// the object's host bytes: a host view of `blob` itself (what a node without a GPU
    /// passes) is kept by a clone of `blob` (valid after the call); any other view is
    /// lent under `lease`. A view whose length is not the object's is refused.
    pub fn view(
        view: &squall_udl::DeviceView,
        blob: &Bytes,
        lease: &Arc<Lease>,
    ) -> PyResult<DlpackBuffer> {
        if view.len_bytes != blob.len() as u64 {
            return Err(PyValueError::new_err(format!(
                "the node's device view has {} bytes but the object has {}",
                view.len_bytes,
                blob.len()
            )));
        }
        let memory_type = i32::try_from(view.device_type).unwrap_or(i32::MAX);
        let host_accessible = memory_type == DL_CPU || memory_type == DL_CUDA_HOST;
        let start = blob.as_ptr() as u64;
        if host_accessible && view.address == start {
            let mut buffer = DlpackBuffer::host(blob.clone());
            buffer.memory_type = memory_type;
            buffer.cached = true;
            return Ok(buffer);
        }
        Ok(DlpackBuffer {
            address: view.address,
            len_bytes: view.len_bytes,
            export_type: if host_accessible { DL_CPU } else { memory_type },
            memory_type,
            device_id: i32::try_from(view.device_id).unwrap_or(i32::MAX),
            stream: view.stream,
            cached: true,
            source: Source::Lent {
                lease: Arc::clone(lease),
                owner: None,
            },
        })
    }

    /// `"cpu"`, `"cuda:N"`, or `"dlpack:<type>:N"` for other DLPack device types.
    pub fn device_name(&self) -> String {
        match self.export_type {
            DL_CPU => "cpu".to_string(),
            DL_CUDA => format!("cuda:{}", self.device_id),
            other => format!("dlpack:{other}:{}", self.device_id),
        }
    }

    /// The bytes of a host-accessible buffer (`export_type` CPU), while it is valid.
    fn host_bytes(&self) -> &[u8] {
        match &self.source {
            Source::Host(bytes) => bytes,
            Source::Lent { .. } if self.len_bytes == 0 => &[],
            Source::Lent { .. } => {
                assert_eq!(
                    self.export_type, DL_CPU,
                    "only host memory can be read here"
                );
                let len = usize::try_from(self.len_bytes).unwrap_or(usize::MAX);
                // SAFETY: host memory the node (or `_dlpack_view`'s caller) lends while
                // the lease is open, which the caller checked; it is `len` bytes long.
                unsafe { std::slice::from_raw_parts(self.address as *const u8, len) }
            }
        }
    }

    fn described(&self, data: *mut c_void, len_bytes: u64, flags: u64) -> Described {
        Described {
            data,
            len_bytes,
            device: DLDevice {
                device_type: self.export_type,
                device_id: if self.export_type == DL_CPU {
                    0
                } else {
                    self.device_id
                },
            },
            flags,
        }
    }
}

#[pymethods]
impl DlpackBuffer {
    /// A DLPack capsule over the memory (the Python array API's ``__dlpack__``).
    ///
    /// ``stream`` is accepted and needs no action: the node finished copying the object
    /// to its device before the handler ran. ``max_version`` >= (1, 0) gives a
    /// ``dltensor_versioned`` capsule flagged read-only, anything else the legacy
    /// ``dltensor`` capsule. ``dl_device`` must be this buffer's device. ``copy=True``
    /// copies host memory into a writable buffer the export owns (flagged
    /// ``IS_COPIED``, valid after the call too); GPU memory cannot be copied here (import
    /// it, then copy with the consumer).
    #[pyo3(signature = (stream=None, *, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = stream;
        let device = self.__dlpack_device__();
        if let Some(wanted) = dl_device
            && wanted != device
        {
            return Err(PyBufferError::new_err(format!(
                "this buffer is on DLPack device {device:?}, not {wanted:?}; import it there \
                 and move it with the consumer"
            )));
        }
        let versioned = max_version.is_some_and(|(major, _)| major >= DLPACK_VERSION_MAJOR);
        if let Source::Lent { lease, .. } = &self.source
            && !lease.is_open()
        {
            return Err(PyBufferError::new_err(
                "this DLPack buffer views memory the node lent for one UDL call, and that \
                 call has returned: use it inside the handler, and copy what you keep \
                 (tensor.clone())",
            ));
        }
        let (described, keep) = if copy == Some(true) {
            if self.export_type != DL_CPU {
                return Err(PyBufferError::new_err(
                    "copy=True: this buffer is GPU memory; import it without a copy and copy \
                     with the consumer (tensor.clone())",
                ));
            }
            let mut owned = self.host_bytes().to_vec();
            let data = owned.as_mut_ptr().cast::<c_void>();
            (
                self.described(data, self.len_bytes, DLPACK_FLAG_BITMASK_IS_COPIED),
                Keep::Owned(owned),
            )
        } else {
            let keep = match &self.source {
                Source::Host(bytes) => Keep::Bytes(bytes.clone()),
                Source::Lent { lease, owner } => {
                    lease.exports_alive.fetch_add(1, Ordering::AcqRel);
                    Keep::Lent {
                        lease: Arc::clone(lease),
                        owner: owner.as_ref().map(|o| o.clone_ref(py)),
                    }
                }
            };
            (
                self.described(
                    self.address as *mut c_void,
                    self.len_bytes,
                    DLPACK_FLAG_BITMASK_READ_ONLY,
                ),
                keep,
            )
        };
        if versioned {
            versioned_capsule(py, described, keep)
        } else {
            let mut described = described;
            described.flags = 0;
            legacy_capsule(py, described, keep)
        }
    }

    /// ``(device_type, device_id)`` in DLPack's terms: ``(1, 0)`` for host memory,
    /// ``(2, n)`` for CUDA device ``n``.
    fn __dlpack_device__(&self) -> (i32, i32) {
        let id = if self.export_type == DL_CPU {
            0
        } else {
            self.device_id
        };
        (self.export_type, id)
    }

    /// The address of the first byte (a device address for GPU memory): what
    /// ``arr.ctypes.data`` or ``tensor.data_ptr()`` of an import equals.
    #[getter]
    fn address(&self) -> u64 {
        self.address
    }

    #[getter]
    fn nbytes(&self) -> u64 {
        self.len_bytes
    }

    fn __len__(&self) -> usize {
        usize::try_from(self.len_bytes).unwrap_or(usize::MAX)
    }

    /// ``"cpu"`` or ``"cuda:N"`` (torch's device names).
    #[getter]
    fn device(&self) -> String {
        self.device_name()
    }

    /// The DLPack device type of the memory as the node described it: 1 host, 2 CUDA,
    /// 3 pinned host (``cudaHostAlloc``; exported as 1).
    #[getter]
    fn memory_type(&self) -> i32 {
        self.memory_type
    }

    /// The CUDA stream the node copied the object on (0: none or the default stream);
    /// the copy is complete before the handler runs.
    #[getter]
    fn stream(&self) -> u64 {
        self.stream
    }

    /// True when the node gave the UDL its cache's view of the object (a GPU-cached
    /// pool; on a machine without a GPU that view is the host bytes themselves).
    #[getter]
    fn cached(&self) -> bool {
        self.cached
    }

    /// True when the memory is only lent for the UDL call (GPU memory): an import must
    /// not outlive the call.
    #[getter]
    fn lent(&self) -> bool {
        matches!(self.source, Source::Lent { .. })
    }

    /// Whether ``__dlpack__`` may be called now (False once the call that lent the
    /// memory returned).
    #[getter]
    fn valid(&self) -> bool {
        match &self.source {
            Source::Host(_) => true,
            Source::Lent { lease, .. } => lease.is_open(),
        }
    }

    fn __repr__(&self) -> String {
        let lent = match &self.source {
            Source::Host(_) => "",
            Source::Lent { lease, .. } if lease.is_open() => ", lent for this call",
            Source::Lent { .. } => ", expired",
        };
        format!(
            "DLPackBuffer({} bytes on {} at {:#x}{lent})",
            self.len_bytes,
            self.device_name(),
            self.address
        )
    }
}

/// The loan behind a [`DlpackBuffer`] made by [`dlpack_view`] (tests and tools): close it
/// as the host does when a UDL call returns.
#[pyclass(module = "squall._native", frozen, name = "DLPackLease")]
pub struct DlpackLease {
    lease: Arc<Lease>,
}

#[pymethods]
impl DlpackLease {
    fn close(&self) {
        self.lease.close();
    }

    #[getter]
    fn open(&self) -> bool {
        self.lease.is_open()
    }

    /// Imports made from the buffer that are still alive.
    #[getter]
    fn exports_alive(&self) -> usize {
        self.lease.exports_alive()
    }
}

/// A buffer over memory described as a node describes a device view, and its lease:
/// what a UDL gets for a GPU-cached object, without a node (for tests and tools).
/// ``owner`` is kept alive by the buffer and by every import of it (pass the array or
/// tensor that owns the memory). Like ``ctypes``, an address that is not what it says
/// crashes the process.
#[pyfunction]
#[pyo3(name = "_dlpack_view", signature = (address, nbytes, device_type, device_id=0, stream=0, owner=None))]
pub fn dlpack_view(
    address: u64,
    nbytes: u64,
    device_type: i32,
    device_id: i32,
    stream: u64,
    owner: Option<Py<PyAny>>,
) -> PyResult<(DlpackBuffer, DlpackLease)> {
    if ![DL_CPU, DL_CUDA, DL_CUDA_HOST].contains(&device_type) {
        return Err(PyValueError::new_err(format!(
            "device_type must be 1 (CPU), 2 (CUDA) or 3 (CUDA host), not {device_type}"
        )));
    }
    let lease = Lease::new();
    let host_accessible = device_type != DL_CUDA;
    let buffer = DlpackBuffer {
        address,
        len_bytes: nbytes,
        export_type: if host_accessible { DL_CPU } else { device_type },
        memory_type: device_type,
        device_id,
        stream,
        cached: true,
        source: Source::Lent {
            lease: Arc::clone(&lease),
            owner,
        },
    };
    Ok((buffer, DlpackLease { lease }))
}

/// The GPU memory of a value a UDL emits, when it is a DLPack producer on a CUDA device
/// (a torch CUDA tensor, a CuPy array): the view of its bytes, and the capsule that keeps
/// them alive (drop it after the node has copied them). `None` for anything else: host
/// values go through the buffer protocol. The tensor must be contiguous (compact
/// row-major, any dtype of whole bytes); it is exported with `stream=-1` (no
/// synchronisation asked of the producer: the node waits for all queued GPU work before
/// it copies).
pub fn gpu_output<'py>(
    value: &Bound<'py, PyAny>,
) -> PyResult<Option<(squall_udl::DeviceView, Bound<'py, PyAny>)>> {
    let py = value.py();
    if !value.hasattr("__dlpack_device__")? || !value.hasattr("__dlpack__")? {
        return Ok(None);
    }
    let (device_type, device_id): (i32, i32) =
        value.call_method0("__dlpack_device__")?.extract()?;
    if device_type != DL_CUDA {
        return Ok(None);
    }
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("stream", -1)?;
    let capsule = match value.call_method("__dlpack__", (), Some(&kwargs)) {
        Ok(capsule) => capsule,
        // A producer without the keyword (DLPack before 0.6).
        Err(error) if error.is_instance_of::<pyo3::exceptions::PyTypeError>(py) => {
            value.call_method0("__dlpack__")?
        }
        Err(error) => return Err(error),
    };
    // SAFETY: `capsule` is a live object (GIL held); GetPointer checks the name and sets
    // an exception on a mismatch, which `PyErr::fetch` takes.
    let managed = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), CAPSULE_LEGACY.as_ptr()) };
    if managed.is_null() {
        let _ = PyErr::take(py);
        return Err(PyValueError::new_err(
            "emit: __dlpack__() did not return a 'dltensor' capsule",
        ));
    }
    // SAFETY: a `dltensor` capsule holds a `DLManagedTensor` that the producer keeps valid
    // while the capsule is unconsumed; we only read it, and hold the capsule.
    let tensor = unsafe { &(*managed.cast::<DLManagedTensor>()).dl_tensor };
    let ndim = usize::try_from(tensor.ndim)
        .map_err(|_| PyValueError::new_err("emit: a tensor with negative ndim"))?;
    let shape: &[i64] = if ndim == 0 {
        &[]
    } else {
        // SAFETY: DLPack gives `shape` `ndim` entries, valid with the tensor.
        unsafe { std::slice::from_raw_parts(tensor.shape, ndim) }
    };
    let mut elements: u64 = 1;
    for &extent in shape {
        let extent = u64::try_from(extent)
            .map_err(|_| PyValueError::new_err("emit: a tensor with a negative extent"))?;
        elements = elements
            .checked_mul(extent)
            .ok_or_else(|| PyValueError::new_err("emit: the tensor's size overflows"))?;
    }
    if !tensor.strides.is_null() && ndim > 0 {
        // SAFETY: as for `shape`.
        let strides = unsafe { std::slice::from_raw_parts(tensor.strides, ndim) };
        let mut expected: i64 = 1;
        for (extent, stride) in shape.iter().zip(strides).rev() {
            if *extent != 1 && *stride != expected {
                return Err(PyValueError::new_err(
                    "emit: the tensor is not contiguous; emit tensor.contiguous()",
                ));
            }
            expected = expected.saturating_mul(*extent);
        }
    }
    let dtype = tensor.dtype;
    if dtype.lanes != 1 || dtype.bits == 0 || dtype.bits % 8 != 0 {
        return Err(PyValueError::new_err(format!(
            "emit: a dtype of {} bits x {} lanes is not whole bytes",
            dtype.bits, dtype.lanes
        )));
    }
    let len_bytes = elements
        .checked_mul(u64::from(dtype.bits / 8))
        .ok_or_else(|| PyValueError::new_err("emit: the tensor's size overflows"))?;
    let view = squall_udl::DeviceView {
        address: (tensor.data as u64).wrapping_add(tensor.byte_offset),
        len_bytes,
        device_type: squall_udl::DeviceView::CUDA,
        device_id: u32::try_from(device_id)
            .map_err(|_| PyValueError::new_err("emit: a negative device id"))?,
        stream: 0,
    };
    Ok(Some((view, capsule)))
}
