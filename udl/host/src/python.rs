//! Hosting Python UDLs: an interpreter embedded in the node, loaded at run time.
//!
//! The node links no Python. The first time a Python UDL is needed, [`host_plugin`]:
//! 1. asks the configured interpreter (`$SQUALL_PYTHON`, else `python3`) where its
//!    shared `libpython` is, what its `sys.path` is, and where the `squall` package's
//!    native module is (so Python UDLs see what that interpreter's environment has:
//!    numpy, torch, the `squall` package itself);
//! 2. loads that `libpython` with `RTLD_GLOBAL`, initialises it without signal handlers
//!    (the node keeps SIGINT/SIGTERM), sets `sys.path`, imports `squall._native`, and
//!    releases the GIL;
//! 3. loads `squall._native` as a UDL plugin: the extension module exports the Python
//!    UDL host (Cascade's Python UDL UUID), whose instances import the user's module
//!    and call its class, each call holding the GIL.
//!
//! This mirrors how CUDA is reached (dynamic loading, nothing needed at build time): a
//! node without Python runs the same binary and reports the reason if a DFG asks for a
//! Python UDL. The interpreter lives as long as the process (Python cannot be
//! re-initialised), so neither library is ever unloaded. Interpreter start-up and the
//! probe cost about 0.1 s once per node; importing the user's module happens on a UDL
//! worker at its first invocation, never on the node's event loop.

// Embedding is FFI; each unsafe block states what it relies on.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_void};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use tracing::info;

use crate::plugin::Plugin;

/// Cascade's UUID of its Python UDL wrapper: a `dfgs.json` naming it (with `module`,
/// `entry_class` and `python_path` in its configuration) runs unchanged here.
pub const PYTHON_UDL_UUID: &str = "6cfe8f64-3a1d-11ed-8e7e-0242ac110006";

/// What the interpreter says about itself, as the probe prints it.
#[derive(Debug, serde::Deserialize)]
struct Probe {
    libpython: Option<String>,
    sys_path: Vec<String>,
    native: Option<String>,
    version: String,
}

const PROBE: &str = r#"
import json, os, sys, sysconfig
lib = None
if sysconfig.get_config_var("Py_ENABLE_SHARED"):
    d, n = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if d and n and os.path.exists(os.path.join(d, n)):
        lib = os.path.join(d, n)
try:
    import squall._native as m
    native = m.__file__
except Exception:
    native = None
print(json.dumps({"libpython": lib, "sys_path": [p for p in sys.path if p],
                  "native": native, "version": sys.version.split()[0]}))
"#;

/// The interpreter Python UDLs use.
pub fn interpreter() -> String {
    std::env::var("SQUALL_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The Python UDL host, loaded on first use (the same result every call after).
pub fn host_plugin() -> Result<Plugin, String> {
    static HOST: OnceLock<Result<Plugin, String>> = OnceLock::new();
    HOST.get_or_init(|| {
        let started = std::time::Instant::now();
        let result = start();
        match &result {
            Ok(_) => info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                python = %interpreter(),
                "Python UDL host started"
            ),
            Err(e) => tracing::warn!(error = %e, "Python UDLs are unavailable"),
        }
        result
    })
    .clone()
}

fn start() -> Result<Plugin, String> {
    let python = interpreter();
    let out = Command::new(&python)
        .args(["-c", PROBE])
        .output()
        .map_err(|e| format!("cannot run {python} (set SQUALL_PYTHON): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{python} failed to describe itself: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let probe: Probe = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{python} printed no description of itself: {e}"))?;
    let libpython = probe.libpython.ok_or_else(|| {
        format!(
            "{python} (Python {}) has no shared libpython (built without \
             --enable-shared); Python UDLs need one",
            probe.version
        )
    })?;
    let native = probe.native.ok_or_else(|| {
        format!(
            "{python} (Python {}) cannot import the squall package: install its wheel \
             there, or point SQUALL_PYTHON at an interpreter that has it",
            probe.version
        )
    })?;
    // SAFETY: loading libpython runs its initialisers, which only set up statics; it
    // must be global so that extension modules (squall._native, numpy) resolve their
    // Python symbols against it.
    let lib = unsafe {
        libloading::os::unix::Library::open(
            Some(&libpython),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .map_err(|e| format!("cannot load {libpython}: {e}"))?;
    // SAFETY: these are CPython's stable-ABI signatures.
    let (initialize, run, save_thread) = unsafe {
        (
            *lib.get::<unsafe extern "C" fn(c_int)>(b"Py_InitializeEx\0")
                .map_err(|e| e.to_string())?,
            *lib.get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"PyRun_SimpleString\0")
                .map_err(|e| e.to_string())?,
            *lib.get::<unsafe extern "C" fn() -> *mut c_void>(b"PyEval_SaveThread\0")
                .map_err(|e| e.to_string())?,
        )
    };
    let paths = serde_json::to_string(&probe.sys_path).map_err(|e| e.to_string())?;
    let setup = CString::new(format!(
        "import sys\nsys.path[:] = {paths}\nimport squall._native\n"
    ))
    .map_err(|e| e.to_string())?;
    // SAFETY: called once per process (guarded by the OnceLock in `host_plugin`), before
    // any other Python use; 0 = leave the node's signal handlers alone. The setup code
    // runs with the GIL this thread now holds, which it then releases for good so any
    // UDL worker can take it.
    let rc = unsafe {
        initialize(0);
        let rc = run(setup.as_ptr());
        save_thread();
        rc
    };
    // The interpreter must outlive every UDL: never unload it.
    std::mem::forget(lib);
    if rc != 0 {
        return Err(format!(
            "setting up Python {} failed (its traceback is in the node log)",
            probe.version
        ));
    }
    Plugin::load(&PathBuf::from(&native)).map_err(|e| e.to_string())
}
