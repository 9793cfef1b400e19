//! One client call, run either blocking (the GIL released while it waits) or in the
//! background for asyncio (a callback tells the event loop it is done).
//!
//! Every native client method returns a [`Call`] holding its future unstarted. The
//! Python `Client` calls [`Call::wait`], which drives the future on the calling thread
//! (no hand-off to a runtime thread on the way out); `AsyncClient` calls
//! [`Call::spawn`] and awaits the [`Pending`] it returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use squall_adapters::client::ClientError;
use squall_adapters::wire::{CallOutput, MemberInfo, WatchEvent, WireObject};
use squall_kvs::PoolSpec;
use tokio::sync::mpsc;

use crate::types::{Member, Object, Output, Pool, Watch, WatchEventPy};

/// What a call produces, converted to Python objects only once the GIL is held.
#[derive(Debug)]
pub enum Out {
    Unit,
    Written {
        version: u64,
        timestamp_us: u64,
    },
    Object(Option<WireObject>),
    Objects(Vec<Option<WireObject>>),
    Outputs(Vec<CallOutput>),
    Size(Option<u64>),
    Keys(Vec<String>),
    Pools(Vec<PoolSpec>),
    Pool(PoolSpec),
    Members(u32, Vec<MemberInfo>),
    Text(String),
    Watch(mpsc::Receiver<WatchEvent>),
    /// A watch event, or `None`: the stream ended.
    Event(Option<WatchEvent>),
    /// A wait with a time limit ran out (`TimeoutError`).
    Timeout,
    Client(squall_adapters::client::Client),
    /// Per shard, what a compaction forgot.
    Compacted(Vec<squall_adapters::client::ShardCompacted>),
}

pub type CallResult = Result<Out, ClientError>;
type BoxedCall = Pin<Box<dyn Future<Output = CallResult> + Send + 'static>>;

/// The runtime every client in this process shares: one worker thread is plenty for
/// I/O, and a blocking call drives its own future on the caller's thread.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("squall-client")
            .enable_all()
            .build()
            .expect("a tokio runtime for the Squall client")
    })
}

/// A call not started yet.
#[pyclass(module = "squall._native", frozen)]
pub struct Call {
    future: Mutex<Option<BoxedCall>>,
}

impl Call {
    pub fn new(future: impl Future<Output = CallResult> + Send + 'static) -> Call {
        Call {
            future: Mutex::new(Some(Box::pin(future))),
        }
    }

    fn take(&self) -> PyResult<BoxedCall> {
        self.future
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this call was already started"))
    }
}

#[pymethods]
impl Call {
    /// Runs the call to its end, the GIL released meanwhile, and returns its result.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let future = self.take()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from code a runtime is driving (a UDL on a node thread): a runtime
            // cannot block inside another, so the call runs on ours and this waits.
            let pending = Pending::start(future);
            return pending.result(py);
        }
        let result = py.detach(|| runtime().block_on(future));
        convert(py, result)
    }

    /// Starts the call in the background.
    fn spawn(&self) -> PyResult<Pending> {
        Ok(Pending::start(self.take()?))
    }
}

#[derive(Default)]
struct PendingState {
    slot: Mutex<Slot>,
    ready: Condvar,
}

#[derive(Default)]
struct Slot {
    result: Option<CallResult>,
    callbacks: Vec<Py<PyAny>>,
}

impl PendingState {
    fn finish(&self, result: CallResult) {
        let callbacks = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.result = Some(result);
            std::mem::take(&mut slot.callbacks)
        };
        self.ready.notify_all();
        if !callbacks.is_empty() {
            Python::attach(|py| {
                for cb in callbacks {
                    if let Err(e) = cb.call0(py) {
                        e.write_unraisable(py, None);
                    }
                }
            });
        }
    }
}

/// A call running in the background.
#[pyclass(module = "squall._native", frozen)]
pub struct Pending {
    state: Arc<PendingState>,
}

impl Pending {
    fn start(future: BoxedCall) -> Pending {
        let state = Arc::new(PendingState::default());
        let done = Arc::clone(&state);
        runtime().spawn(async move {
            let result = future.await;
            done.finish(result);
        });
        Pending { state }
    }
}

#[pymethods]
impl Pending {
    /// Calls `callback()` (from a client thread) once the call is done; at once if it is.
    fn add_done_callback(&self, py: Python<'_>, callback: Py<PyAny>) -> PyResult<()> {
        let now = {
            let mut slot = self.state.slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.result.is_none() {
                slot.callbacks.push(callback);
                return Ok(());
            }
            callback
        };
        now.call0(py).map(drop)
    }

    fn done(&self) -> bool {
        let slot = self.state.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.result.is_some()
    }

    /// The result (raising the call's error); waits, the GIL released, if not done.
    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let result = py.detach(|| {
            let mut slot = self.state.slot.lock().unwrap_or_else(|p| p.into_inner());
            while slot.result.is_none() {
                slot = self
                    .state
                    .ready
                    .wait(slot)
                    .unwrap_or_else(|p| p.into_inner());
            }
            slot.result.take()
        });
        match result {
            Some(r) => convert(py, r),
            None => Err(PyValueError::new_err("the result was already taken")),
        }
    }
}

/// Raises `e` as the `squall.errors` class for its code.
pub fn raise(py: Python<'_>, e: ClientError) -> PyErr {
    let (code, current) = match &e {
        ClientError::Server { code, current, .. } => (code.name(), current.map(|v| v.0)),
        ClientError::Connect { .. } => ("connect", None),
        ClientError::Refused { .. } => ("refused", None),
        ClientError::Protocol { .. } => ("protocol", None),
        ClientError::Unavailable { .. } => ("unavailable", None),
    };
    let made = py
        .import("squall.errors")
        .and_then(|m| m.getattr("_make"))
        .and_then(|make| make.call1((code, e.to_string(), current)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(import_failed) => import_failed,
    }
}

pub fn convert(py: Python<'_>, result: CallResult) -> PyResult<Py<PyAny>> {
    let out = result.map_err(|e| raise(py, e))?;
    Ok(match out {
        Out::Unit => py.None(),
        Out::Written {
            version,
            timestamp_us,
        } => PyTuple::new(py, [version, timestamp_us])?
            .into_any()
            .unbind(),
        Out::Object(o) => match o {
            Some(o) => Py::new(py, Object::new(py, o)?)?.into_any(),
            None => py.None(),
        },
        Out::Objects(list) => {
            let items = list
                .into_iter()
                .map(|o| match o {
                    Some(o) => Py::new(py, Object::new(py, o)?).map(Py::into_any),
                    None => Ok(py.None()),
                })
                .collect::<PyResult<Vec<_>>>()?;
            items.into_pyobject(py)?.into_any().unbind()
        }
        Out::Outputs(list) => list
            .into_iter()
            .map(|o| Py::new(py, Output::new(py, o)?))
            .collect::<PyResult<Vec<_>>>()?
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Out::Size(s) => s.into_pyobject(py)?.into_any().unbind(),
        Out::Keys(keys) => keys.into_pyobject(py)?.into_any().unbind(),
        Out::Pools(pools) => pools
            .into_iter()
            .map(|p| Py::new(py, Pool::new(py, p)?))
            .collect::<PyResult<Vec<_>>>()?
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Out::Pool(p) => Py::new(py, Pool::new(py, p)?)?.into_any(),
        Out::Members(view_id, members) => {
            let members = members
                .into_iter()
                .map(|m| Py::new(py, Member::from(m)))
                .collect::<PyResult<Vec<_>>>()?;
            (view_id, members).into_pyobject(py)?.into_any().unbind()
        }
        Out::Text(t) => t.into_pyobject(py)?.into_any().unbind(),
        Out::Compacted(shards) => {
            let list = pyo3::types::PyList::empty(py);
            for c in shards {
                let d = pyo3::types::PyDict::new(py);
                d.set_item("shard", c.shard)?;
                d.set_item("through", c.through.map(|v| v.0))?;
                d.set_item("timestamp_us", c.timestamp_us)?;
                d.set_item("versions_dropped", c.versions_dropped)?;
                d.set_item("keys_dropped", c.keys_dropped)?;
                list.append(d)?;
            }
            list.into_any().unbind()
        }
        Out::Watch(rx) => Py::new(py, Watch::new(rx))?.into_any(),
        Out::Client(inner) => Py::new(py, crate::client::NativeClient { inner })?.into_any(),
        Out::Timeout => {
            return Err(pyo3::exceptions::PyTimeoutError::new_err(
                "no event came in the time given",
            ));
        }
        Out::Event(e) => match e {
            Some(e) => Py::new(py, WatchEventPy::new(py, e)?)?.into_any(),
            None => py.None(),
        },
    })
}
