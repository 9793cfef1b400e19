//! The native client: the Rust client's operations, each returned as a [`Call`] that
//! the Python `Client` waits on and `AsyncClient` awaits.

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use squall_adapters::client::{Client, ClientError, Policy};
use squall_adapters::wire::At;
use squall_kvs::{Condition, PoolSpec, StoreKind};
use squall_platform::Version;

use crate::buffer::value_bytes;
use crate::call::{Call, Out};

fn policy(name: &str) -> PyResult<Policy> {
    match name {
        "round_robin" => Ok(Policy::RoundRobin),
        "key_hash" => Ok(Policy::KeyHash),
        "fixed" => Ok(Policy::Fixed),
        other => Err(PyValueError::new_err(format!(
            "policy {other:?}: expected \"round_robin\", \"key_hash\" or \"fixed\""
        ))),
    }
}

/// Connects to the first reachable of `addrs`; the call produces a `NativeClient`.
#[pyfunction]
#[pyo3(signature = (addrs, token=None, policy_name="round_robin"))]
pub fn connect(addrs: Vec<String>, token: Option<String>, policy_name: &str) -> PyResult<Call> {
    if addrs.is_empty() {
        return Err(PyValueError::new_err("no node address given"));
    }
    let policy = policy(policy_name)?;
    Ok(Call::new(async move {
        let client = Client::connect(&addrs, token, policy).await?;
        Ok(Out::Client(client))
    }))
}

/// A connection to a cluster (the `squall.Client` and `squall.AsyncClient` wrap one).
#[pyclass(module = "squall._native", frozen)]
pub struct NativeClient {
    pub inner: Client,
}

fn written(w: squall_adapters::client::Written) -> Out {
    Out::Written {
        version: w.version.0,
        timestamp_us: w.timestamp_us,
    }
}

#[pymethods]
impl NativeClient {
    #[pyo3(signature = (key, value, previous_version=None, previous_version_by_key=None, if_absent=false))]
    fn put(
        &self,
        key: String,
        value: &Bound<'_, PyAny>,
        previous_version: Option<u64>,
        previous_version_by_key: Option<u64>,
        if_absent: bool,
    ) -> PyResult<Call> {
        let condition = match (previous_version, previous_version_by_key, if_absent) {
            (None, None, false) => Condition::Always,
            (Some(v), None, false) => Condition::ShardVersion(Some(Version(v))),
            (None, Some(v), false) => Condition::KeyVersion(Some(Version(v))),
            (None, None, true) => Condition::KeyVersion(None),
            _ => {
                return Err(PyValueError::new_err(
                    "give at most one of previous_version, previous_version_by_key and \
                     if_absent",
                ));
            }
        };
        let value = value_bytes(value)?;
        let client = self.inner.clone();
        Ok(Call::new(async move {
            Ok(written(client.put_if(&key, value, condition).await?))
        }))
    }

    fn put_and_forget(&self, key: String, value: &Bound<'_, PyAny>) -> PyResult<Call> {
        let value = value_bytes(value)?;
        let client = self.inner.clone();
        Ok(Call::new(async move {
            client.put_and_forget(&key, value).await?;
            Ok(Out::Unit)
        }))
    }

    fn trigger_put(&self, key: String, value: &Bound<'_, PyAny>) -> PyResult<Call> {
        let value = value_bytes(value)?;
        let client = self.inner.clone();
        Ok(Call::new(async move {
            client.trigger_put(&key, value).await?;
            Ok(Out::Unit)
        }))
    }

    fn call(&self, key: String, value: &Bound<'_, PyAny>) -> PyResult<Call> {
        let value = value_bytes(value)?;
        let client = self.inner.clone();
        Ok(Call::new(async move {
            Ok(Out::Outputs(client.call_udl(&key, value).await?))
        }))
    }

    fn remove(&self, key: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(written(client.remove(&key).await?)) })
    }

    #[pyo3(signature = (key, version=None, timestamp_us=None, stable=false))]
    fn get(
        &self,
        key: String,
        version: Option<u64>,
        timestamp_us: Option<u64>,
        stable: bool,
    ) -> PyResult<Call> {
        let at = match (version, timestamp_us, stable) {
            (None, None, false) => At::Latest,
            (Some(v), None, false) => At::Version(Version(v)),
            (None, Some(t), false) => At::Time(t),
            (None, None, true) => At::Stable,
            _ => {
                return Err(PyValueError::new_err(
                    "give at most one of version, timestamp_us and stable",
                ));
            }
        };
        let client = self.inner.clone();
        Ok(Call::new(async move {
            Ok(Out::Object(client.get_at(&key, at).await?))
        }))
    }

    fn multi_get(&self, keys: Vec<String>) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Objects(client.multi_get(&keys).await?)) })
    }

    fn get_size(&self, key: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Size(client.get_size(&key).await?)) })
    }

    #[pyo3(signature = (prefix, timestamp_us=None))]
    fn list_keys(&self, prefix: String, timestamp_us: Option<u64>) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Keys(client.list_keys(&prefix, timestamp_us).await?)) })
    }

    /// `gpu_cache`: `(device, capacity_bytes)` (the `squall` package parses
    /// `{"device": 0, "capacity": "1GiB"}` into it).
    #[pyo3(signature = (path, kind, subgroup=None, shards=0, affinity=None, overrides=None, gpu_cache=None))]
    #[allow(clippy::too_many_arguments)]
    fn create_pool(
        &self,
        path: String,
        kind: &str,
        subgroup: Option<u32>,
        shards: u32,
        affinity: Option<String>,
        overrides: Option<std::collections::BTreeMap<String, u32>>,
        gpu_cache: Option<(u32, u64)>,
    ) -> PyResult<Call> {
        let kind = StoreKind::parse(kind).ok_or_else(|| {
            PyValueError::new_err(format!(
                "kind {kind:?}: expected \"volatile\", \"persistent\" or \"trigger\""
            ))
        })?;
        let client = self.inner.clone();
        Ok(Call::new(async move {
            let subgroup = match subgroup {
                Some(g) => g,
                None => first_subgroup_of(&client, kind).await?,
            };
            let mut spec = PoolSpec::new(path, kind, subgroup);
            spec.shards = shards;
            spec.affinity = affinity;
            spec.overrides = overrides.unwrap_or_default();
            spec.gpu_cache = gpu_cache.map(|(device, capacity_bytes)| squall_kvs::GpuCache {
                device,
                capacity_bytes,
            });
            client.create_pool(spec).await?;
            Ok(Out::Unit)
        }))
    }

    fn compact(&self, pool: String, before_us: u64) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Compacted(client.compact(&pool, before_us).await?)) })
    }

    fn remove_pool(&self, path: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move {
            client.remove_pool(&path).await?;
            Ok(Out::Unit)
        })
    }

    fn find_pool(&self, key: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Pool(client.find_pool(&key).await?)) })
    }

    fn list_pools(&self) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Pools(client.list_pools().await?)) })
    }

    fn members(&self) -> Call {
        let client = self.inner.clone();
        Call::new(async move {
            let (view, members) = client.members().await?;
            Ok(Out::Members(view, members))
        })
    }

    fn watch(&self, prefix: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Watch(client.watch(&prefix).await?)) })
    }

    fn upload_udl(&self, name: String, plugin: &Bound<'_, PyAny>) -> PyResult<Call> {
        let plugin = value_bytes(plugin)?;
        let client = self.inner.clone();
        Ok(Call::new(async move {
            client.upload_udl(&name, plugin).await?;
            Ok(Out::Unit)
        }))
    }

    fn remove_udl(&self, uuid: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move {
            client.remove_udl(&uuid).await?;
            Ok(Out::Unit)
        })
    }

    fn add_dfgs(&self, json: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move {
            client.add_dfgs(Bytes::from(json.into_bytes())).await?;
            Ok(Out::Unit)
        })
    }

    fn remove_dfg(&self, id: String) -> Call {
        let client = self.inner.clone();
        Call::new(async move {
            client.remove_dfg(&id).await?;
            Ok(Out::Unit)
        })
    }

    fn list_udls(&self) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Text(client.list_udls().await?)) })
    }

    fn list_dfgs(&self) -> Call {
        let client = self.inner.clone();
        Call::new(async move { Ok(Out::Text(client.list_dfgs().await?)) })
    }
}

/// The subgroup of the first existing pool of `kind` (as the CLI picks it).
async fn first_subgroup_of(client: &Client, kind: StoreKind) -> Result<u32, ClientError> {
    client
        .first_subgroup_of(kind)
        .await?
        .ok_or_else(|| ClientError::Server {
            code: squall_adapters::wire::ErrorCode::BadRequest,
            message: format!(
                "no {} pool exists to learn its subgroup from: pass subgroup=",
                kind.name()
            ),
            current: None,
        })
}
