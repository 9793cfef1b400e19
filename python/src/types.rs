//! The values calls return: objects, pools, members and watch events.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use squall_adapters::wire::{CallOutput, MemberInfo, WatchEvent, WireObject};
use squall_kvs::PoolSpec;
use tokio::sync::{Mutex, mpsc};

use crate::buffer::Blob;
use crate::call::{Call, Out};

/// One version of a key. `value` is a read-only buffer over the received bytes:
/// `memoryview(obj.value)` and `numpy.frombuffer(obj.value, dtype)` do not copy.
#[pyclass(module = "squall._native", frozen, get_all)]
pub struct Object {
    pub key: String,
    /// The shard version (an int; `squall.format_version` shows it as `v<view>:<seq>`).
    pub version: u64,
    pub timestamp_us: u64,
    /// The shard's previous version (`None` for its first).
    pub previous_version: Option<u64>,
    /// This key's previous version (`None` for its first).
    pub previous_version_by_key: Option<u64>,
    pub value: Py<Blob>,
}

impl Object {
    pub fn new(py: Python<'_>, o: WireObject) -> PyResult<Object> {
        Ok(Object {
            value: Py::new(py, Blob::new(o.blob))?,
            key: o.key,
            version: o.version.0,
            timestamp_us: o.timestamp_us,
            previous_version: o.previous_version.map(|v| v.0),
            previous_version_by_key: o.previous_key_version.map(|v| v.0),
        })
    }
}

#[pymethods]
impl Object {
    fn __repr__(&self) -> String {
        format!(
            "Object(key={:?}, version={}, timestamp_us={}, {} bytes)",
            self.key,
            crate::format_version(self.version),
            self.timestamp_us,
            self.value.get().bytes.len()
        )
    }

    /// The value as `bytes` (a copy).
    fn tobytes<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.value.get().bytes)
    }

    fn __len__(&self) -> usize {
        self.value.get().bytes.len()
    }
}

/// One output of `Client.call`: the key as the UDL emitted it and a read-only buffer
/// over the emitted bytes (not copied on the way).
#[pyclass(module = "squall._native", frozen, get_all)]
pub struct Output {
    pub key: String,
    pub value: Py<Blob>,
}

impl Output {
    pub fn new(py: Python<'_>, o: CallOutput) -> PyResult<Output> {
        Ok(Output {
            value: Py::new(py, Blob::new(o.blob))?,
            key: o.key,
        })
    }
}

#[pymethods]
impl Output {
    fn __repr__(&self) -> String {
        format!(
            "Output(key={:?}, {} bytes)",
            self.key,
            self.value.get().bytes.len()
        )
    }

    /// The value as `bytes` (a copy).
    fn tobytes<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.value.get().bytes)
    }

    fn __len__(&self) -> usize {
        self.value.get().bytes.len()
    }
}

/// An object pool: a key prefix and where its objects live.
#[pyclass(module = "squall._native", frozen, get_all)]
pub struct Pool {
    pub path: String,
    /// `"volatile"`, `"persistent"` or `"trigger"`.
    pub kind: String,
    pub subgroup: u32,
    /// Shards the pool spreads over (0: all of its subgroup's).
    pub shards: u32,
    pub affinity: Option<String>,
    pub overrides: Py<PyDict>,
    /// `{"device": n, "capacity_bytes": n}` when the pool is cached on a GPU, else `None`.
    pub gpu_cache: Option<Py<PyDict>>,
}

impl Pool {
    pub fn new(py: Python<'_>, p: PoolSpec) -> PyResult<Pool> {
        let overrides = PyDict::new(py);
        for (k, v) in &p.overrides {
            overrides.set_item(k, v)?;
        }
        let gpu_cache = match p.gpu_cache {
            None => None,
            Some(g) => {
                let d = PyDict::new(py);
                d.set_item("device", g.device)?;
                d.set_item("capacity_bytes", g.capacity_bytes)?;
                Some(d.unbind())
            }
        };
        Ok(Pool {
            gpu_cache,
            path: p.path,
            kind: p.kind.name().to_string(),
            subgroup: p.subgroup,
            shards: p.shards,
            affinity: p.affinity,
            overrides: overrides.unbind(),
        })
    }
}

#[pymethods]
impl Pool {
    fn __repr__(&self) -> String {
        let gpu = if self.gpu_cache.is_some() {
            ", gpu_cache"
        } else {
            ""
        };
        format!(
            "Pool(path={:?}, kind={:?}, subgroup={}, shards={}{gpu})",
            self.path, self.kind, self.subgroup, self.shards
        )
    }
}

/// A member of the current view.
#[pyclass(module = "squall._native", frozen, get_all)]
pub struct Member {
    pub node: u32,
    pub incarnation: u32,
    /// `host:port` its clients connect to.
    pub client_addr: String,
}

impl From<MemberInfo> for Member {
    fn from(m: MemberInfo) -> Member {
        Member {
            node: m.node,
            incarnation: m.incarnation,
            client_addr: m.client_addr,
        }
    }
}

#[pymethods]
impl Member {
    fn __repr__(&self) -> String {
        format!(
            "Member(node={}, incarnation={}, client_addr={:?})",
            self.node, self.incarnation, self.client_addr
        )
    }
}

/// A change under a watched prefix: a new version, or a removal (`value` is `None`).
#[pyclass(name = "WatchEvent", module = "squall._native", frozen, get_all)]
pub struct WatchEventPy {
    pub key: String,
    pub version: u64,
    pub timestamp_us: u64,
    pub value: Option<Py<Blob>>,
}

impl WatchEventPy {
    pub fn new(py: Python<'_>, e: WatchEvent) -> PyResult<WatchEventPy> {
        Ok(WatchEventPy {
            value: e.blob.map(|b| Py::new(py, Blob::new(b))).transpose()?,
            key: e.key,
            version: e.version.0,
            timestamp_us: e.timestamp_us,
        })
    }
}

#[pymethods]
impl WatchEventPy {
    #[getter]
    fn removed(&self) -> bool {
        self.value.is_none()
    }

    fn __repr__(&self) -> String {
        match &self.value {
            Some(v) => format!(
                "WatchEvent(key={:?}, version={}, {} bytes)",
                self.key,
                crate::format_version(self.version),
                v.get().bytes.len()
            ),
            None => format!(
                "WatchEvent(key={:?}, version={}, removed)",
                self.key,
                crate::format_version(self.version)
            ),
        }
    }
}

/// The stream of a `watch`: each `next()` is a call producing the next event, or `None`
/// once the stream ended (no replica took a broken watch back: list and watch again).
#[pyclass(module = "squall._native", frozen)]
pub struct Watch {
    events: Arc<Mutex<mpsc::Receiver<WatchEvent>>>,
}

impl Watch {
    pub fn new(rx: mpsc::Receiver<WatchEvent>) -> Watch {
        Watch {
            events: Arc::new(Mutex::new(rx)),
        }
    }
}

#[pymethods]
impl Watch {
    /// The next event; with `timeout_s`, `TimeoutError` if none came in time.
    #[pyo3(signature = (timeout_s=None))]
    fn next(&self, timeout_s: Option<f64>) -> Call {
        let events = Arc::clone(&self.events);
        Call::new(async move {
            let mut rx = events.lock().await;
            match timeout_s {
                None => Ok(Out::Event(rx.recv().await)),
                Some(t) => {
                    let limit = std::time::Duration::from_secs_f64(t.max(0.0));
                    match tokio::time::timeout(limit, rx.recv()).await {
                        Ok(e) => Ok(Out::Event(e)),
                        Err(_) => Ok(Out::Timeout),
                    }
                }
            }
        })
    }

    /// Stops the watch (the client ends it at each node when its next event comes).
    fn close(&self) {
        if let Ok(mut rx) = self.events.try_lock() {
            rx.close();
        }
    }
}
