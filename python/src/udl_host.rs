//! The Python UDL host: a UDL plugin, exported by this extension module, whose
//! instances run a Python class. A node loads it after starting its embedded
//! interpreter (see `squall_udl_host::python`); to users it is Cascade's Python UDL
//! (same UUID, same configuration keys: `python_path`, `module`, `entry_class`).
//!
//! Two kinds of class are accepted:
//! - Squall's: `__init__(self, config: dict)` and `handle(self, obj, ctx)`, where `obj`
//!   is a [`UdlInput`] and `ctx` a [`UdlContext`] (`emit`, `get`, `put`, ...);
//! - Cascade's (it defines `ocdpo_handler`): `__init__(self, conf_str)` with the JSON
//!   text, and `ocdpo_handler(**kwargs)` with Cascade's keyword arguments; it emits with
//!   `cascade_context.emit(key, value, ...)`.
//!
//! Either way the object's bytes reach Python as a read-only numpy `uint8` array over
//! the node's buffer (a `memoryview` where numpy is missing): no copy. An emitted numpy
//! array or other buffer goes back to the node without a copy either.
//!
//! The same bytes are also a DLPack buffer ([`DlpackBuffer`]): `obj.dlpack` for Squall's
//! classes, `cascade_context.dlpack()` for Cascade's (their keyword arguments stay
//! Cascade's). For an object of a GPU-cached pool the node passes a view of its copy in
//! GPU memory (`Input::device`), and the buffer is that view: `torch.from_dlpack` gives a
//! CUDA tensor over it without a copy. That memory is lent for the call only: the buffer's
//! lease is closed when the handler returns (exporting later raises `BufferError`), and
//! an invocation that leaves a tensor over it alive fails with that reason.
//!
//! Importing the module and constructing the class happen at the first invocation, on
//! a UDL worker thread, so a slow import (torch) never stalls the node's event loop; an
//! error there fails that invocation (counted and logged) and is retried by the next.
//! Every call holds the GIL, so Python UDL invocations of a node run one at a time;
//! code that releases the GIL (numpy, torch kernels, `ctx.get`/`put`/`emit`) overlaps.

// The context pointer crosses into Python for one call; see `UdlContext`.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyDict, PyList, PyTuple};
use squall_udl::{Context, Input, Udl, UdlError};

use crate::buffer::{Blob, value_bytes};
use crate::dlpack::{DlpackBuffer, Lease};

squall_udl::export_udl! {
    uuid: "6cfe8f64-3a1d-11ed-8e7e-0242ac110006",
    description: "Python UDLs: runs `entry_class` of `module` (found on `python_path`) in the node's embedded interpreter",
    constructor: PythonUdl::new,
}

/// Where the user's class comes from.
struct Spec {
    python_path: Vec<String>,
    module: String,
    entry_class: String,
    /// All of it, as Cascade's classes get it.
    config: serde_json::Value,
    /// Without the host's keys (`python_path`, `module`, `entry_class`): what a Squall
    /// class and its `ctx.config` see.
    user_config: String,
}

/// The class instance, made at the first invocation.
enum Loaded {
    Squall(Py<PyAny>),
    Cascade(Py<PyAny>),
}

pub struct PythonUdl {
    spec: Spec,
    loaded: Mutex<Option<Loaded>>,
}

impl PythonUdl {
    fn new(config: &str) -> Result<PythonUdl, String> {
        let config: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("configuration: {e}"))?;
        let text = |key: &str| {
            config
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("a Python UDL's configuration needs {key:?} (a string)"))
        };
        let module = text("module")?;
        let entry_class = text("entry_class")?;
        let python_path = match config.get("python_path") {
            None => Vec::new(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("python_path must be a string or a list of strings")?,
            Some(_) => return Err("python_path must be a string or a list of strings".into()),
        };
        let mut user = config.clone();
        if let Some(map) = user.as_object_mut() {
            for key in ["python_path", "module", "entry_class"] {
                map.remove(key);
            }
        }
        Ok(PythonUdl {
            spec: Spec {
                python_path,
                module,
                entry_class,
                config,
                user_config: user.to_string(),
            },
            loaded: Mutex::new(None),
        })
    }

    /// Imports the module and constructs the class (once).
    fn load(&self, py: Python<'_>) -> PyResult<Loaded> {
        let sys = py.import("sys")?;
        let path = sys.getattr("path")?.cast_into::<PyList>()?;
        for (i, p) in self.spec.python_path.iter().enumerate() {
            if !path.contains(p)? {
                path.insert(i, p)?;
            }
        }
        // A module of that name loaded from elsewhere (an older upload) is dropped, so
        // the import finds the one on this UDL's path.
        let modules = sys.getattr("modules")?.cast_into::<PyDict>()?;
        let top = self.spec.module.split('.').next().unwrap_or_default();
        if let Some(existing) = modules.get_item(top)? {
            let file: Option<String> = existing
                .getattr("__file__")
                .ok()
                .and_then(|f| f.extract().ok());
            let inside =
                file.is_some_and(|f| self.spec.python_path.iter().any(|p| f.starts_with(p)));
            if !inside && !self.spec.python_path.is_empty() {
                let stale: Vec<String> = modules
                    .keys()
                    .iter()
                    .filter_map(|k| k.extract::<String>().ok())
                    .filter(|k| k == top || k.starts_with(&format!("{top}.")))
                    .collect();
                for k in stale {
                    modules.del_item(k)?;
                }
            }
        }
        let module = py.import(self.spec.module.as_str())?;
        let class = module.getattr(self.spec.entry_class.as_str())?;
        if class.hasattr("ocdpo_handler")? {
            let text = self.spec.config.to_string();
            Ok(Loaded::Cascade(class.call1((text,))?.unbind()))
        } else {
            let json = py.import("json")?;
            let config = json.call_method1("loads", (self.spec.user_config.as_str(),))?;
            Ok(Loaded::Squall(class.call1((config,))?.unbind()))
        }
    }

    fn call(&self, py: Python<'_>, input: &Input<'_>, ctx: &mut dyn Context) -> PyResult<()> {
        // Locked with the GIL released while waiting: a thread importing the module
        // lets go of the GIL now and then, and must be able to take it back.
        let mut guard = self
            .loaded
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            // One load at a time in the whole interpreter: two UDLs from modules of the
            // same name (two uploads of one file) would otherwise evict each other's
            // module from `sys.modules` mid-import.
            static LOADING: Mutex<()> = Mutex::new(());
            let _loading = LOADING
                .lock_py_attached(py)
                .unwrap_or_else(|p| p.into_inner());
            *guard = Some(self.load(py)?);
        }
        let target = match guard.as_ref() {
            Some(Loaded::Squall(i)) => Loaded::Squall(i.clone_ref(py)),
            Some(Loaded::Cascade(i)) => Loaded::Cascade(i.clone_ref(py)),
            None => return Err(PyRuntimeError::new_err("the UDL did not load")),
        };
        // Invocations run in parallel outside Python; only loading is serialised.
        drop(guard);
        let blob = Py::new(py, Blob::new(input.blob.clone()))?;
        let array = as_array(py, &blob)?;
        let lease = Lease::new();
        let dlpack = match &input.device {
            None => DlpackBuffer::host(input.blob.clone()),
            Some(view) => DlpackBuffer::view(view, &input.blob, &lease)?,
        };
        let device = dlpack.device_name();
        let dlpack = Py::new(py, dlpack)?;
        let config = match target {
            Loaded::Squall(_) => self.spec.user_config.clone(),
            Loaded::Cascade(_) => self.spec.config.to_string(),
        };
        let scope = ContextScope::enter(py, ctx, config, dlpack.clone_ref(py))?;
        let result = match target {
            Loaded::Squall(instance) => {
                let obj = UdlInput {
                    key: input.key.to_string(),
                    key_suffix: input.key_suffix().to_string(),
                    pathname: input.pathname.to_string(),
                    version: input.version,
                    timestamp_us: input.timestamp_us,
                    previous_version: input.previous_version,
                    previous_version_by_key: input.previous_version_by_key,
                    message_id: (input.message_id.client, input.message_id.seq),
                    sender: input.sender,
                    value: blob,
                    blob: array,
                    dlpack,
                    device,
                };
                instance
                    .bind(py)
                    .call_method1("handle", (obj, scope.context.clone_ref(py)))
                    .map(drop)
            }
            Loaded::Cascade(instance) => {
                let kwargs = PyDict::new(py);
                kwargs.set_item("sender", input.sender)?;
                kwargs.set_item("pathname", input.pathname)?;
                kwargs.set_item("key", input.key_suffix())?;
                kwargs.set_item("version", input.version)?;
                kwargs.set_item("timestamp_us", input.timestamp_us)?;
                kwargs.set_item("previous_version", input.previous_version)?;
                kwargs.set_item("previous_version_by_key", input.previous_version_by_key)?;
                kwargs.set_item("blob", array)?;
                kwargs.set_item("worker_id", ctx_worker(&scope))?;
                kwargs.set_item(
                    "message_id",
                    PyTuple::new(py, [input.message_id.client, input.message_id.seq])?,
                )?;
                instance
                    .bind(py)
                    .call_method("ocdpo_handler", (), Some(&kwargs))
                    .map(drop)
            }
        };
        drop(scope);
        end_loan(py, &lease, result)
    }
}

/// Closes the loan of the call's device memory, and fails a call that succeeded but left
/// an import of that memory alive (kept in `self`, a global, a cycle): the node may
/// evict or overwrite the memory once the call returns, so the import would read other
/// data. A failed call's imports die with its traceback.
fn end_loan(py: Python<'_>, lease: &Lease, result: PyResult<()>) -> PyResult<()> {
    lease.close();
    if result.is_err() || lease.exports_alive() == 0 {
        return result;
    }
    // Imports only reachable from garbage cycles are not a leak yet: collect them.
    py.import("gc")?.call_method0("collect")?;
    let alive = lease.exports_alive();
    if alive == 0 {
        return result;
    }
    Err(PyRuntimeError::new_err(format!(
        "{alive} array(s)/tensor(s) made from obj.dlpack are still alive after the handler \
         returned, over GPU memory the node lends for the call only: keep a copy \
         (tensor.clone(), tensor.cpu()) instead"
    )))
}

thread_local! {
    /// Whether this thread already holds its lifelong Python thread state.
    static THREAD_STATE_KEPT: Cell<bool> = const { Cell::new(false) };
}

/// Gives the calling node thread one Python thread state for the rest of its life.
///
/// Without it each `Python::attach` on a thread Python did not create makes a new thread
/// state and deletes it on return, so every invocation ran under a different one.
/// Extensions keep thread-local state keyed to the thread state they first saw: torch's
/// second `torch.from_dlpack` on a worker, a call later, blocked for ever in
/// `gil_scoped_acquire` waiting for a GIL its own thread held (seen on an H100). The
/// state is taken once (`PyGILState_Ensure`, count 1) and the GIL let go at once
/// (`PyEval_SaveThread`); every later `PyGILState_Ensure` on the thread finds it. Node
/// threads live as long as the node, and the interpreter is never finalised, so it is
/// never released.
fn keep_thread_state() {
    THREAD_STATE_KEPT.with(|kept| {
        if kept.get() {
            return;
        }
        kept.set(true);
        // SAFETY: the interpreter is initialised (this library is loaded by it). Ensure
        // says whether the thread already held the GIL: if it did (a thread running
        // Python), its state is Python's own and the count goes back; if not, the thread
        // keeps the count of 1 and lets the GIL go.
        unsafe {
            let state = pyo3::ffi::PyGILState_Ensure();
            if state == pyo3::ffi::PyGILState_STATE::PyGILState_UNLOCKED {
                let _ = pyo3::ffi::PyEval_SaveThread();
            } else {
                pyo3::ffi::PyGILState_Release(state);
            }
        }
    });
}

impl Udl for PythonUdl {
    fn handle(&self, input: &Input<'_>, ctx: &mut dyn Context) -> Result<(), UdlError> {
        keep_thread_state();
        Python::attach(|py| {
            self.call(py, input, ctx).map_err(|e| {
                let trace = e
                    .traceback(py)
                    .and_then(|t| t.format().ok())
                    .unwrap_or_default();
                UdlError::new(format!(
                    "{}.{}: {e}\n{trace}",
                    self.spec.module, self.spec.entry_class
                ))
            })
        })
    }
}

/// The bytes as a read-only numpy `uint8` array sharing their memory (a `memoryview`
/// without numpy).
fn as_array(py: Python<'_>, blob: &Py<Blob>) -> PyResult<Py<PyAny>> {
    match py.import("numpy") {
        Ok(np) => Ok(np
            .call_method1("frombuffer", (blob.clone_ref(py), np.getattr("uint8")?))?
            .unbind()),
        Err(_) => Ok(py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((blob.clone_ref(py),))?
            .unbind()),
    }
}

/// The object that triggered a Python UDL.
#[pyclass(module = "squall._native", frozen, get_all)]
pub struct UdlInput {
    /// The full key.
    pub key: String,
    /// The key below the vertex pathname (what `emit` appends to each destination).
    pub key_suffix: String,
    pub pathname: String,
    pub version: u64,
    pub timestamp_us: u64,
    pub previous_version: Option<u64>,
    pub previous_version_by_key: Option<u64>,
    pub message_id: (u64, u64),
    /// The node the object came from.
    pub sender: u32,
    /// The value as a read-only buffer (`memoryview`, `numpy.frombuffer`).
    pub value: Py<Blob>,
    /// The value as a read-only numpy `uint8` array over the node's buffer.
    pub blob: Py<PyAny>,
    /// The value for DLPack consumers (`torch.from_dlpack(obj.dlpack)`,
    /// `numpy.from_dlpack(obj.dlpack)`): the object's copy on the GPU when its pool caches
    /// there (valid during this call only), else the host bytes.
    pub dlpack: Py<DlpackBuffer>,
    /// Where `dlpack` is: `"cpu"` or `"cuda:N"`.
    pub device: String,
}

#[pymethods]
impl UdlInput {
    /// `torch.from_dlpack(obj.dlpack)`: a 1-D `uint8` tensor over the value without a
    /// copy, on the GPU when the pool caches the object there. A GPU tensor is valid
    /// during this call only.
    fn tensor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let torch = py.import("torch").map_err(|e| {
            pyo3::exceptions::PyImportError::new_err(format!(
                "obj.tensor() needs torch ({e}); without it use obj.blob (numpy) or \
                 numpy.from_dlpack(obj.dlpack)"
            ))
        })?;
        torch.call_method1("from_dlpack", (self.dlpack.clone_ref(py),))
    }

    fn __repr__(&self) -> String {
        format!(
            "UdlInput(key={:?}, version={}, {} bytes, {})",
            self.key,
            crate::format_version(self.version),
            self.value.get().bytes.len(),
            self.device
        )
    }
}

/// A pointer to the node's context, usable only while its invocation runs.
struct Handle(*mut (dyn Context + 'static));

// SAFETY: the pointer is only dereferenced while the invocation that owns the context
// is running (the scope clears it before `handle` returns), and a `Context` is used by
// one thread at a time: the `Mutex` around the handle serialises Python threads.
unsafe impl Send for Handle {}

/// The invocation's way out: `emit(key, value)` to the vertex's destinations, `get` and
/// `put` anywhere in the cluster, and facts (`config`, `worker_id`, `resources`).
/// Valid only during the call it was passed to.
#[pyclass(module = "squall._native", frozen)]
pub struct UdlContext {
    handle: Mutex<Option<Handle>>,
    worker_id: u32,
    config: String,
    cpu_cores: u32,
    gpus: Vec<u32>,
    /// The input's DLPack buffer (for Cascade's classes: `cascade_context.dlpack()`).
    input_dlpack: Py<DlpackBuffer>,
}

impl UdlContext {
    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut dyn Context) -> Result<T, UdlError> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        let mut guard = self
            .handle
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner());
        let Some(handle) = guard.as_mut() else {
            return Err(PyRuntimeError::new_err(
                "this UDL context belongs to an invocation that has returned",
            ));
        };
        let ptr = SendPtr(handle.0);
        // The node may block (a put waits until applied): let other Python run.
        let result = py.detach(move || {
            let ptr = ptr;
            // SAFETY: see `Handle`; the guard held across this call keeps the scope
            // from ending and other threads from using the context meanwhile.
            f(unsafe { &mut *ptr.0 })
        });
        drop(guard);
        result.map_err(|e| PyRuntimeError::new_err(e.message))
    }
}

struct SendPtr(*mut (dyn Context + 'static));
// SAFETY: see `Handle`.
unsafe impl Send for SendPtr {}

#[pymethods]
impl UdlContext {
    /// Sends `value` (bytes-like or str; not copied) to every destination of the
    /// vertex as `destination/key`. A contiguous tensor on a GPU (torch CUDA, CuPy: any
    /// DLPack producer) is copied by the node before this returns: to host memory once,
    /// and on the GPU into each destination pool cached on that GPU here, so its cached
    /// copy never goes through host memory.
    fn emit(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Some((view, capsule)) = crate::dlpack::gpu_output(value)? {
            // GPU memory (a CUDA tensor): the node copies it before this returns; the
            // capsule keeps it alive until then.
            let key = key.to_string();
            let result = self.with(py, move |ctx| ctx.emit_device(&key, &view));
            drop(capsule);
            return result;
        }
        let value = value_bytes(value)?;
        let key = key.to_string();
        self.with(py, move |ctx| ctx.emit(&key, value))
    }

    /// The latest value of `key` in the cluster (a read-only buffer), or `None`.
    fn get(&self, py: Python<'_>, key: &str) -> PyResult<Option<Py<Blob>>> {
        let key = key.to_string();
        let found = self.with(py, move |ctx| ctx.get(&key))?;
        found.map(|b| Py::new(py, Blob::new(b))).transpose()
    }

    /// Stores `value` under `key` (any pool); returns once applied. Re-runs of this
    /// invocation apply it once.
    fn put(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = value_bytes(value)?;
        let key = key.to_string();
        self.with(py, move |ctx| ctx.put(&key, value))
    }

    /// The UDL's configuration from the DFG, parsed.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.config.as_str(),))
    }

    #[getter]
    fn worker_id(&self) -> u32 {
        self.worker_id
    }

    /// `{"cpu_cores": n, "gpus": [...]}`: what the node granted.
    #[getter]
    fn resources<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("cpu_cores", self.cpu_cores)?;
        d.set_item("gpus", self.gpus.clone())?;
        Ok(d)
    }
}

thread_local! {
    /// The context of the invocation running on this thread (for Cascade's
    /// `cascade_context.emit`).
    static CURRENT: Cell<Option<*const Py<UdlContext>>> = const { Cell::new(None) };
}

/// One invocation's context, made current on this thread until dropped.
struct ContextScope {
    context: Py<UdlContext>,
}

impl ContextScope {
    fn enter(
        py: Python<'_>,
        ctx: &mut dyn Context,
        config: String,
        input_dlpack: Py<DlpackBuffer>,
    ) -> PyResult<Box<ContextScope>> {
        // SAFETY: the lifetime is erased only for the duration of this scope, which
        // `call` drops before `handle` returns (and `Drop` clears the pointer).
        let erased: *mut (dyn Context + 'static) = unsafe {
            std::mem::transmute::<*mut (dyn Context + '_), *mut (dyn Context + 'static)>(ctx)
        };
        let context = Py::new(
            py,
            UdlContext {
                worker_id: ctx.worker_id(),
                config,
                cpu_cores: ctx.resources().cpu_cores,
                gpus: ctx.resources().gpus.clone(),
                handle: Mutex::new(Some(Handle(erased))),
                input_dlpack,
            },
        )?;
        let scope = Box::new(ContextScope { context });
        CURRENT.with(|c| c.set(Some(&scope.context as *const Py<UdlContext>)));
        Ok(scope)
    }
}

impl Drop for ContextScope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
        let mut handle = self
            .context
            .get()
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *handle = None;
    }
}

fn ctx_worker(scope: &ContextScope) -> u32 {
    scope.context.get().worker_id
}

/// Cascade's `cascade_context.emit(key, value, **ignored)`: emits through the
/// invocation running on this thread.
#[pyfunction]
#[pyo3(signature = (key, value, **_ignored))]
pub fn cascade_emit(
    py: Python<'_>,
    key: &str,
    value: &Bound<'_, PyAny>,
    _ignored: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let current = CURRENT.with(Cell::get).ok_or_else(|| {
        PyValueError::new_err("emit called outside a UDL invocation (or on another thread)")
    })?;
    // SAFETY: CURRENT points into the boxed scope of the invocation running on this
    // thread, which clears it before it is freed.
    let context = unsafe { &*current }.clone_ref(py);
    context.get().emit(py, key, value)
}

/// The current invocation's context (for helpers that are not handed `ctx`).
#[pyfunction]
pub fn current_context(py: Python<'_>) -> Option<Py<UdlContext>> {
    CURRENT
        .with(Cell::get)
        // SAFETY: as in `cascade_emit`.
        .map(|p| unsafe { &*p }.clone_ref(py))
}

/// The DLPack buffer of the input of the invocation running on this thread (Cascade's
/// classes get no `obj`; `cascade_context.dlpack()` calls this), or `None` outside one.
#[pyfunction]
pub fn current_dlpack(py: Python<'_>) -> Option<Py<DlpackBuffer>> {
    current_context(py).map(|c| c.get().input_dlpack.clone_ref(py))
}
