//! Object bytes across the Python boundary without copies.
//!
//! In: any object exporting a contiguous buffer (`bytes`, `bytearray`, `memoryview`, a
//! C-contiguous numpy array of any dtype) becomes a [`Bytes`] that *borrows* the Python
//! memory: the buffer export is held until the last `Bytes` clone is gone (the put has
//! been written to the socket), and released under the GIL then. While exported, a
//! `bytearray` cannot be resized (Python refuses), so the memory stays valid; its
//! *contents* are the caller's to leave alone until the call returns, as with any
//! zero-copy API.
//!
//! Out: [`Blob`] is a read-only Python buffer over the `Bytes` the client received, so
//! `memoryview(blob)` and `numpy.frombuffer(blob, ...)` alias Rust-owned memory.

// Buffer protocol calls are FFI; each unsafe block states what it relies on.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};

use bytes::Bytes;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// A held buffer export of a Python object.
struct Exported {
    view: Box<ffi::Py_buffer>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the exported memory stays valid and unmoved until `PyBuffer_Release`, which
// `Drop` calls with the GIL held; reading it needs no GIL.
unsafe impl Send for Exported {}

impl AsRef<[u8]> for Exported {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr`/`len` describe the exported buffer, valid while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        let view = Released(std::mem::replace(
            &mut self.view,
            // SAFETY: an all-zero Py_buffer is inert; it is never released.
            Box::new(unsafe { std::mem::zeroed() }),
        ));
        // Releasing needs the GIL. The last clone of a value is often dropped by a
        // node's event loop (an emitted output, once written), which must never wait
        // for a Python UDL to let go of the GIL: one thread does the releasing.
        match releaser().send(view) {
            Ok(()) => {}
            Err(std::sync::mpsc::SendError(view)) => Python::attach(|_| view.release()),
        }
    }
}

/// A buffer export on its way to be released.
struct Released(Box<ffi::Py_buffer>);

// SAFETY: the export stays valid until released; releasing happens with the GIL held.
unsafe impl Send for Released {}

impl Released {
    fn release(mut self) {
        // SAFETY: filled by a successful `PyObject_GetBuffer` and released exactly once,
        // here, with the GIL held.
        unsafe { ffi::PyBuffer_Release(&mut *self.0) }
    }
}

/// The thread that releases buffer exports (started on first use).
fn releaser() -> &'static std::sync::mpsc::Sender<Released> {
    static RELEASER: std::sync::OnceLock<std::sync::mpsc::Sender<Released>> =
        std::sync::OnceLock::new();
    RELEASER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Released>();
        let spawned = std::thread::Builder::new()
            .name("squall-py-release".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    Python::attach(|_| {
                        first.release();
                        while let Ok(more) = rx.try_recv() {
                            more.release();
                        }
                    });
                }
            });
        if spawned.is_err() {
            // No thread: `send` fails (the receiver is gone) and drops release inline.
            return std::sync::mpsc::channel().0;
        }
        tx
    })
}

/// The bytes of a value handed to a put: a borrowed buffer (no copy) or, for `str`, its
/// UTF-8 encoding.
pub fn value_bytes(value: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_str()?.as_bytes()));
    }
    if let Ok(blob) = value.cast::<Blob>() {
        return Ok(blob.get().bytes.clone());
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        // Immutable: a reference keeps the memory; no export needed.
        let owner = PyBytesOwner {
            ptr: b.as_bytes().as_ptr(),
            len: b.as_bytes().len(),
            _object: b.clone().unbind(),
        };
        return Ok(Bytes::from_owner(owner));
    }
    let mut view: Box<ffi::Py_buffer> = Box::new(
        // SAFETY: Py_buffer is a plain C struct; all-zero is its documented empty state.
        unsafe { std::mem::zeroed() },
    );
    // SAFETY: `value` is a live object (we hold the GIL); PyBUF_SIMPLE asks for one
    // contiguous run of bytes, and exporters that cannot give one fail cleanly.
    let rc = unsafe { ffi::PyObject_GetBuffer(value.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
    if rc != 0 {
        let cause = PyErr::take(value.py());
        let kind = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        let detail = cause.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(PyTypeError::new_err(format!(
            "a value must be bytes-like (bytes, bytearray, memoryview, a contiguous numpy \
             array) or str, not {kind}{detail}"
        )));
    }
    let len = usize::try_from(view.len).unwrap_or(0);
    let ptr = view.buf as *const u8;
    Ok(Bytes::from_owner(Exported { view, ptr, len }))
}

struct PyBytesOwner {
    ptr: *const u8,
    len: usize,
    _object: Py<PyBytes>,
}

// SAFETY: a `bytes` object is immutable and its storage is inline and never moves; the
// `Py` reference keeps it alive (dropping a `Py` without the GIL defers the decref).
unsafe impl Send for PyBytesOwner {}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the `Send` impl; `ptr`/`len` came from the live object.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// An object's value: a read-only buffer over memory the client received into, shared
/// (never copied) by every view made of it.
#[pyclass(module = "squall._native", frozen)]
pub struct Blob {
    pub bytes: Bytes,
}

impl Blob {
    pub fn new(bytes: Bytes) -> Blob {
        Blob { bytes }
    }
}

#[pymethods]
impl Blob {
    /// # Safety
    /// Called by Python's buffer protocol with a `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("an object's value is read-only"));
        }
        let bytes = &slf.get().bytes;
        // SAFETY: the memory belongs to `slf`, which the view references (FillInfo takes
        // a reference), so it outlives the view; it is never written (readonly = 1).
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut c_void,
                bytes.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    /// A copy as `bytes`.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bytes)
    }

    /// A copy as `bytes`.
    fn tobytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bytes)
    }

    /// The address of the first byte (to check that two views share memory).
    #[getter]
    fn address(&self) -> usize {
        self.bytes.as_ptr() as usize
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match value_bytes(other) {
            Ok(b) => b == self.bytes,
            Err(_) => false,
        }
    }

    fn __repr__(&self) -> String {
        let shown = &self.bytes[..self.bytes.len().min(32)];
        let more = if self.bytes.len() > 32 { "..." } else { "" };
        format!(
            "Blob({} bytes: {:?}{more})",
            self.bytes.len(),
            String::from_utf8_lossy(shown)
        )
    }
}
