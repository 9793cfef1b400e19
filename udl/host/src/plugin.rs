//! Loading UDL plugins and calling them.
//!
//! A plugin is a shared library exporting the entry points of [`squall_udl::export_udl!`].
//! [`Plugin::load`] checks, in this order and before it trusts anything else, that the
//! library loads, exports [`squall_udl::ABI_VERSION_SYMBOL`] with our [`ABI_VERSION`],
//! exports [`squall_udl::ENTRY_SYMBOL`], and describes itself with a well-formed UUID and
//! UTF-8 strings. Each failure is its own [`PluginError`].
//!
//! An [`Instance`] (one per DFG vertex using the UDL) holds the library loaded, and so
//! does every [`Bytes`] a UDL emitted, since their memory is released by plugin code.
//! Replacing a plugin is therefore safe while invocations are in flight: they finish on
//! the old instance, which unloads when the last of them and their outputs are gone.

// Calling into a plugin is FFI; every unsafe block states what it relies on.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use libloading::Library;
use squall_udl::abi::{
    self, ErrorSink, FfiBytes, FfiContext, FfiDeviceView, FfiInput, FfiStr, PluginDescriptor,
};
use squall_udl::{ABI_VERSION, ABI_VERSION_SYMBOL, DeviceView, ENTRY_SYMBOL, Input, Resources};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PluginError {
    #[error("cannot load {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("{} is not a Squall UDL plugin: it exports no `{symbol}`", path.display())]
    MissingEntryPoint { path: PathBuf, symbol: &'static str },
    #[error("{} was built for UDL ABI version {found}; this node speaks version {expected}", path.display())]
    WrongAbi {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{} describes itself badly: {reason}", path.display())]
    BadDescriptor { path: PathBuf, reason: String },
    #[error("UDL {uuid} refused its configuration: {reason}")]
    Create { uuid: String, reason: String },
}

/// Why one invocation failed. The node counts and logs it; nothing else is affected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InvokeError {
    #[error("UDL {uuid} failed: {message}")]
    Failed { uuid: String, message: String },
    #[error("UDL {uuid} panicked: {message}")]
    Panicked { uuid: String, message: String },
}

/// `8-4-4-4-12` hex digits, the form DFGs name UDLs by.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A loaded, checked plugin.
#[derive(Debug, Clone)]
pub struct Plugin {
    library: Arc<Library>,
    descriptor: *const PluginDescriptor,
    pub uuid: String,
    pub description: String,
    pub sdk_version: String,
}

// SAFETY: the descriptor is immutable static data of the library, which `library` keeps
// loaded; the plugin's functions are callable from any thread (its `Udl` is Send + Sync).
unsafe impl Send for Plugin {}
// SAFETY: as above.
unsafe impl Sync for Plugin {}

impl Plugin {
    pub fn load(path: &Path) -> Result<Plugin, PluginError> {
        let path_buf = path.to_path_buf();
        // SAFETY: loading runs the library's initialisers. Plugins are uploaded by an
        // admin and checked before they are stored; running their code is their purpose.
        let library = unsafe { Library::new(path) }.map_err(|e| PluginError::Load {
            path: path_buf.clone(),
            reason: e.to_string(),
        })?;
        let missing = |symbol| PluginError::MissingEntryPoint {
            path: path_buf.clone(),
            symbol,
        };
        // SAFETY: the symbol's type is fixed by the SDK for every ABI version.
        let version = unsafe {
            library
                .get::<extern "C" fn() -> u32>(ABI_VERSION_SYMBOL.as_bytes())
                .map_err(|_| missing(ABI_VERSION_SYMBOL))?()
        };
        if version != ABI_VERSION {
            return Err(PluginError::WrongAbi {
                path: path_buf,
                found: version,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: for ABI_VERSION, the entry point has exactly this type.
        let descriptor = unsafe {
            library
                .get::<extern "C" fn() -> *const PluginDescriptor>(ENTRY_SYMBOL.as_bytes())
                .map_err(|_| missing(ENTRY_SYMBOL))?()
        };
        let bad = |reason: String| PluginError::BadDescriptor {
            path: path_buf.clone(),
            reason,
        };
        // SAFETY: the entry point returns a pointer to a static descriptor (or null).
        let Some(d) = (unsafe { descriptor.as_ref() }) else {
            return Err(bad("its entry point returned no descriptor".to_string()));
        };
        if d.abi_version != ABI_VERSION {
            return Err(PluginError::WrongAbi {
                path: path_buf,
                found: d.abi_version,
                expected: ABI_VERSION,
            });
        }
        let text = |s: FfiStr, what: &str| {
            // SAFETY: descriptor strings are static in the library.
            unsafe { s.to_str() }
                .map(str::to_string)
                .map_err(|e| bad(format!("its {what} is not UTF-8: {e}")))
        };
        let uuid = text(d.uuid, "uuid")?.to_ascii_lowercase();
        if !is_uuid(&uuid) {
            return Err(bad(format!(
                "its uuid {uuid:?} is not 8-4-4-4-12 hex digits"
            )));
        }
        let description = text(d.description, "description")?;
        let sdk_version = text(d.sdk_version, "SDK version")?;
        Ok(Plugin {
            library: Arc::new(library),
            descriptor,
            uuid,
            description,
            sdk_version,
        })
    }

    fn descriptor(&self) -> &PluginDescriptor {
        // SAFETY: checked non-null at load; static in the library `self` keeps loaded.
        unsafe { &*self.descriptor }
    }

    /// An instance for one vertex, given that vertex's JSON configuration of the UDL.
    pub fn instantiate(&self, config: &str) -> Result<Instance, PluginError> {
        let mut message = String::new();
        let sink = ErrorSink::to_string(&mut message);
        // SAFETY: `create` takes a string and a sink valid for the call.
        let instance = unsafe { (self.descriptor().create)(FfiStr::new(config), &sink) };
        if instance.is_null() {
            return Err(PluginError::Create {
                uuid: self.uuid.clone(),
                reason: message,
            });
        }
        Ok(Instance {
            plugin: self.clone(),
            instance,
            config: config.to_string(),
        })
    }
}

/// A UDL instance: one per vertex using the UDL. Callable from many workers at once.
#[derive(Debug)]
pub struct Instance {
    plugin: Plugin,
    instance: *mut c_void,
    config: String,
}

// SAFETY: the instance is the plugin's `Box<dyn Udl>`, and `Udl: Send + Sync`.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

/// Where an invocation runs and where its outputs go.
pub struct Invocation<'a> {
    pub worker_id: u32,
    pub resources: &'a Resources,
    /// Receives each `emit(key, value)`; an `Err` is the UDL's `emit` error.
    pub emit: &'a mut dyn FnMut(&str, Bytes) -> Result<(), String>,
    /// Receives each `emit_device(key, view)` (the view is valid for the call only);
    /// without one it fails.
    pub emit_device: Option<&'a mut EmitDeviceFn<'a>>,
    /// Serves the context's `get` and `put`; without one they fail.
    pub client: Option<&'a mut dyn ContextClient>,
}

/// What takes an invocation's `emit_device(key, view)`.
pub type EmitDeviceFn<'f> = dyn FnMut(&str, &DeviceView) -> Result<(), String> + 'f;

/// The cluster as a UDL's context reaches it (blocking calls from the worker).
pub trait ContextClient {
    fn get(&mut self, key: &str) -> Result<Option<Bytes>, String>;
    fn put(&mut self, key: &str, value: Bytes) -> Result<(), String>;
}

impl std::fmt::Debug for Invocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("worker_id", &self.worker_id)
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

/// The state `host_emit`, `host_get` and `host_put` see through the `host` pointer.
struct EmitState<'a, 'b> {
    emit: &'a mut dyn FnMut(&str, Bytes) -> Result<(), String>,
    emit_device: Option<&'a mut EmitDeviceFn<'a>>,
    client: Option<&'a mut dyn ContextClient>,
    library: &'b Arc<Library>,
}

/// The key of a context call, or the status to return after reporting why not.
///
/// # Safety
/// `key` must be borrowed for the call and `errors` valid for it.
unsafe fn context_key<'k>(key: FfiStr, errors: *const ErrorSink) -> Result<&'k str, i32> {
    // SAFETY: per the caller.
    match unsafe { key.to_str() } {
        Ok(k) => Ok(k),
        Err(_) => {
            // SAFETY: per the caller.
            unsafe { ErrorSink::report(errors, "the key is not UTF-8") };
            Err(abi::STATUS_ERROR)
        }
    }
}

const NO_CLIENT: &str = "client calls are not available to this invocation";

/// The status of a context call; a failure's message goes to `errors`.
///
/// # Safety
/// `errors` must be valid for the call.
unsafe fn status(result: Result<(), String>, errors: *const ErrorSink) -> i32 {
    match result {
        Ok(()) => abi::STATUS_OK,
        Err(message) => {
            // SAFETY: per the caller.
            unsafe { ErrorSink::report(errors, &message) };
            abi::STATUS_ERROR
        }
    }
}

/// The running invocation's state and the call's key, or the status to return after
/// reporting why not. Only for calls that take nothing they must release (`get`,
/// `emit_device`): `emit` and `put` take their bytes before they look at the key.
///
/// # Safety
/// `host` must be the `EmitState` of the running `invoke`, which outlives the call; `key`
/// and `errors` must be borrowed for the call.
unsafe fn context_call<'s, 'a, 'b>(
    host: *mut c_void,
    key: FfiStr,
    errors: *const ErrorSink,
) -> Result<(&'s mut EmitState<'a, 'b>, &'s str), i32> {
    // SAFETY: per the caller.
    let state = unsafe { &mut *host.cast::<EmitState<'a, 'b>>() };
    // SAFETY: per the caller.
    let key = unsafe { context_key(key, errors) }?;
    Ok((state, key))
}

unsafe extern "C" fn host_get(
    host: *mut c_void,
    key: FfiStr,
    found: *mut u8,
    value: *mut FfiBytes,
    errors: *const ErrorSink,
) -> i32 {
    // SAFETY: the node's `invoke` passes its state; the plugin borrows key and sink.
    let (state, key) = match unsafe { context_call(host, key, errors) } {
        Ok(call) => call,
        Err(status) => return status,
    };
    let result = match state.client.as_mut() {
        Some(client) => client.get(key),
        None => Err(NO_CLIENT.to_string()),
    };
    let result = result.map(|found_value| {
        // SAFETY: the plugin passes out-pointers valid for the call.
        unsafe {
            match found_value {
                Some(bytes) => {
                    value.write(FfiBytes::from_bytes(bytes));
                    found.write(1);
                }
                None => found.write(0),
            }
        }
    });
    // SAFETY: the plugin's sink is valid for the call.
    unsafe { status(result, errors) }
}

unsafe extern "C" fn host_emit_device(
    host: *mut c_void,
    key: FfiStr,
    view: *const FfiDeviceView,
    errors: *const ErrorSink,
) -> i32 {
    // SAFETY: as in `host_get`.
    let (state, key) = match unsafe { context_call(host, key, errors) } {
        Ok(call) => call,
        Err(status) => return status,
    };
    // SAFETY: the plugin passes a view valid for the call (or null, refused).
    let result = match unsafe { view.as_ref() } {
        None => Err("no view".to_string()),
        Some(v) => {
            let view = DeviceView {
                address: v.address,
                len_bytes: v.len_bytes,
                device_type: v.device_type,
                device_id: v.device_id,
                stream: v.stream,
            };
            match state.emit_device.as_mut() {
                Some(emit_device) => emit_device(key, &view),
                None => Err("outputs in device memory are not taken by this node".to_string()),
            }
        }
    };
    // SAFETY: the plugin's sink is valid for the call.
    unsafe { status(result, errors) }
}

unsafe extern "C" fn host_put(
    host: *mut c_void,
    key: FfiStr,
    value: FfiBytes,
    errors: *const ErrorSink,
) -> i32 {
    // SAFETY: as in `host_emit`: `host` is the running `invoke`'s state.
    let state = unsafe { &mut *host.cast::<EmitState<'_, '_>>() };
    // SAFETY: as in `host_emit`: the library stays loaded as long as the bytes.
    let value = unsafe { value.into_bytes(Arc::clone(state.library)) };
    // SAFETY: the plugin borrows the key and its sink for the call.
    let key = match unsafe { context_key(key, errors) } {
        Ok(k) => k,
        Err(status) => return status,
    };
    let result = match state.client.as_mut() {
        Some(client) => client.put(key, value),
        None => Err(NO_CLIENT.to_string()),
    };
    // SAFETY: the plugin's sink is valid for the call.
    unsafe { status(result, errors) }
}

unsafe extern "C" fn host_emit(
    host: *mut c_void,
    key: FfiStr,
    value: FfiBytes,
    errors: *const ErrorSink,
) -> i32 {
    // SAFETY: `host` is the `EmitState` of the running `invoke`, which outlives the call.
    let state = unsafe { &mut *host.cast::<EmitState<'_, '_>>() };
    // SAFETY: the plugin made `value` with `FfiBytes::from_bytes` and moved it here; the
    // library that releases it stays loaded as long as the bytes (kept in their owner).
    let value = unsafe { value.into_bytes(Arc::clone(state.library)) };
    // SAFETY: the plugin borrows the key and its sink for the call.
    let key = match unsafe { context_key(key, errors) } {
        Ok(k) => k,
        Err(status) => return status,
    };
    // SAFETY: as above.
    unsafe { status((state.emit)(key, value), errors) }
}

impl Instance {
    pub fn uuid(&self) -> &str {
        &self.plugin.uuid
    }

    /// Runs the handler on `input`. Its blob goes to the plugin without a copy.
    pub fn invoke(&self, input: &Input<'_>, call: Invocation<'_>) -> Result<(), InvokeError> {
        let mut state = EmitState {
            emit: call.emit,
            emit_device: call.emit_device,
            client: call.client,
            library: &self.plugin.library,
        };
        let context = FfiContext {
            host: (&mut state as *mut EmitState<'_, '_>).cast::<c_void>(),
            emit: host_emit,
            config: FfiStr::new(&self.config),
            worker_id: call.worker_id,
            cpu_cores: call.resources.cpu_cores,
            gpus: call.resources.gpus.as_ptr(),
            gpus_len: call.resources.gpus.len(),
            get: host_get,
            put: host_put,
            emit_device: host_emit_device,
        };
        let mut ffi_input = FfiInput {
            pathname: FfiStr::new(input.pathname),
            key: FfiStr::new(input.key),
            version: input.version,
            timestamp_us: input.timestamp_us,
            previous_version: input.previous_version.unwrap_or(abi::NONE_U64),
            previous_version_by_key: input.previous_version_by_key.unwrap_or(abi::NONE_U64),
            message_client: input.message_id.client,
            message_seq: input.message_id.seq,
            sender: input.sender,
            blob: FfiBytes::from_bytes(input.blob.clone()),
            device_address: input.device.map_or(0, |d| d.address),
            device_len_bytes: input.device.map_or(0, |d| d.len_bytes),
            device_type: input.device.map_or(0, |d| d.device_type),
            device_id: input.device.map_or(0, |d| d.device_id),
            device_stream: input.device.map_or(0, |d| d.stream),
        };
        let mut message = String::new();
        let sink = ErrorSink::to_string(&mut message);
        // SAFETY: the instance is live (destroyed only in Drop); input, context and sink
        // are valid for the call, and the blob in `ffi_input` is consumed by the plugin.
        let status = unsafe {
            (self.plugin.descriptor().handle)(self.instance, &mut ffi_input, &context, &sink)
        };
        let uuid = self.plugin.uuid.clone();
        match status {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_PANIC => Err(InvokeError::Panicked { uuid, message }),
            _ => Err(InvokeError::Failed { uuid, message }),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: created by this plugin's `create`, destroyed once, here.
        unsafe { (self.plugin.descriptor().destroy)(self.instance) };
    }
}
