//! `squall._native`: the Rust half of the `squall` Python package.
//!
//! The public API is the pure-Python `squall` package, which wraps these classes: every
//! client operation here returns a [`call::Call`], which `squall.Client` runs blocking
//! (the GIL released) and `squall.AsyncClient` awaits. Values cross the boundary without
//! copies ([`buffer`]).

// Every pyclass has a `__repr__` for Python; `Debug` would add nothing.
#![allow(missing_debug_implementations)]

mod buffer;
mod call;
mod client;
mod dlpack;
mod types;
mod udl_host;

use pyo3::prelude::*;

/// `v<view>:<seq>`, the form the CLI prints versions in.
pub fn format_version(version: u64) -> String {
    format!("v{}:{}", version >> 32, version & 0xffff_ffff)
}

#[pyfunction(name = "format_version")]
fn format_version_py(version: u64) -> String {
    format_version(version)
}

/// The UUID a Python UDL of `module`.`entry_class` gets unless named (as the CLI
/// derives it).
#[pyfunction]
fn python_udl_uuid(module: &str, entry_class: &str) -> String {
    squall_adapters::udl::python_udl_uuid(module, entry_class)
}

/// A Python UDL packed for upload: `payload` is the module's source (`format="py"`) or
/// a zip of a package (`"zip"`).
#[pyfunction]
#[pyo3(signature = (uuid, module, entry_class, format, payload, description=String::new()))]
fn python_bundle<'py>(
    py: Python<'py>,
    uuid: String,
    module: String,
    entry_class: String,
    format: String,
    payload: &[u8],
    description: String,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let manifest = squall_adapters::udl::PythonManifest {
        uuid,
        module,
        entry_class,
        format,
        description,
    };
    let bundle = squall_adapters::udl::python_bundle(&manifest, payload);
    // Checked here as every node will check it, so a bad upload fails before it leaves.
    squall_adapters::udl::parse_python_bundle(&bundle)
        .map_err(pyo3::exceptions::PyValueError::new_err)?;
    Ok(pyo3::types::PyBytes::new(py, &bundle))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<buffer::Blob>()?;
    m.add_class::<call::Call>()?;
    m.add_class::<call::Pending>()?;
    m.add_class::<client::NativeClient>()?;
    m.add_class::<types::Object>()?;
    m.add_class::<types::Output>()?;
    m.add_class::<types::Pool>()?;
    m.add_class::<types::Member>()?;
    m.add_class::<types::WatchEventPy>()?;
    m.add_class::<types::Watch>()?;
    m.add_function(wrap_pyfunction!(client::connect, m)?)?;
    m.add_function(wrap_pyfunction!(format_version_py, m)?)?;
    m.add_function(wrap_pyfunction!(python_udl_uuid, m)?)?;
    m.add_function(wrap_pyfunction!(python_bundle, m)?)?;
    m.add_class::<udl_host::UdlInput>()?;
    m.add_class::<udl_host::UdlContext>()?;
    m.add_function(wrap_pyfunction!(udl_host::cascade_emit, m)?)?;
    m.add_function(wrap_pyfunction!(udl_host::current_context, m)?)?;
    m.add_function(wrap_pyfunction!(udl_host::current_dlpack, m)?)?;
    m.add_class::<dlpack::DlpackBuffer>()?;
    m.add_class::<dlpack::DlpackLease>()?;
    m.add_function(wrap_pyfunction!(dlpack::dlpack_view, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
