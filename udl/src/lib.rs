//! The SDK for Squall user-defined logic (UDLs): the only crate a plugin author depends
//! on.
//!
//! A UDL is a type implementing [`Udl`]. Its handler runs on the node that holds the data,
//! the moment an object arrives under a data-flow-graph vertex it is attached to. It gets
//! the object ([`Input`]: key, version, timestamp, previous versions, message id and the
//! blob as a [`Bytes`] that *shares the node's receive buffer*) and a [`Context`] to emit
//! results to the vertex's destinations, get and put objects anywhere in the cluster, read
//! its JSON configuration and learn its worker id and resources.
//!
//! A plugin is a `cdylib` that names its UDL with [`export_udl!`]:
//!
//! ```no_run
//! use squall_udl::{export_udl, Context, Input, Udl, UdlError};
//!
//! struct Upper;
//!
//! impl Udl for Upper {
//!     fn handle(&self, input: &Input<'_>, ctx: &mut dyn Context) -> Result<(), UdlError> {
//!         ctx.emit(input.key_suffix(), input.blob.to_ascii_uppercase().into())
//!     }
//! }
//!
//! export_udl! {
//!     uuid: "5b7f4a2e-9c1d-4e8a-b3f6-0a1b2c3d4e5f",
//!     description: "upper-cases text",
//!     constructor: |_config: &str| Ok::<_, String>(Upper),
//! }
//! ```
//!
//! The plugin boundary is `extern "C"` with `#[repr(C)]` types ([`abi`]), not Rust trait
//! objects: a plugin built by another compiler version still loads, and the node checks
//! [`ABI_VERSION`] before it reads anything else. A panic inside a handler is caught at
//! the boundary and becomes that invocation's error; it never unwinds into the node.

// The plugin boundary is FFI: raw pointers in `#[repr(C)]` structs, `extern "C"` entry
// points. Every unsafe block states what it relies on.
#![allow(unsafe_code)]

pub mod abi;
#[cfg(feature = "torch")]
mod torch;
#[cfg(feature = "torch")]
pub use torch::{emit_tensor, torch_cuda};

use std::fmt;

pub use bytes::Bytes;

/// The version of the plugin interface ([`abi`]). The node refuses a plugin that exports
/// another one, before it reads anything else from it.
pub const ABI_VERSION: u32 = 4;

/// The symbol of `extern "C" fn() -> u32` returning the plugin's [`ABI_VERSION`].
pub const ABI_VERSION_SYMBOL: &str = "squall_udl_abi_version";
/// The symbol of `extern "C" fn() -> *const abi::PluginDescriptor`.
pub const ENTRY_SYMBOL: &str = "squall_udl_entry";

/// A message id: the client that wrote the object and its sequence number. Outputs of a
/// UDL carry ids derived from their input's, so a re-run is applied at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub client: u64,
    pub seq: u64,
}

/// The object that triggered the UDL.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The vertex pathname the UDL is attached to (ends with `/`).
    pub pathname: &'a str,
    /// The object's full key; it starts with `pathname` or one of its descendants.
    pub key: &'a str,
    /// Version in its shard (`0` for a `trigger_put`, which is not stored).
    pub version: u64,
    pub timestamp_us: u64,
    pub previous_version: Option<u64>,
    pub previous_version_by_key: Option<u64>,
    pub message_id: MessageId,
    /// The node that delivered (or received) the object.
    pub sender: u32,
    /// The object's value. It shares the node's buffer: no copy was made to give it to
    /// the UDL, and none is made by cloning or slicing it.
    pub blob: Bytes,
    /// The same bytes in another memory tier, when the node keeps the object there (a
    /// GPU-cached pool): valid for the handler call. `None` for host-only objects.
    pub device: Option<DeviceView>,
}

/// Where a copy of an object's bytes lives outside the host buffer, in DLPack's terms, so
/// a UDL can wrap it as a tensor without copying (`tch::Tensor::from_blob`,
/// `torch.from_dlpack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// The first byte, in the device's address space.
    pub address: u64,
    pub len_bytes: u64,
    /// DLPack `DLDeviceType`: [`DeviceView::CPU`], [`DeviceView::CUDA`] or
    /// [`DeviceView::CUDA_HOST`] (pinned host memory).
    pub device_type: u32,
    /// The device ordinal (0 for host memory).
    pub device_id: u32,
    /// The CUDA stream the node copied the object on, finished before the handler runs
    /// (0: none, or the default stream).
    pub stream: u64,
}

impl DeviceView {
    pub const CPU: u32 = 1;
    pub const CUDA: u32 = 2;
    pub const CUDA_HOST: u32 = 3;
}

impl Input<'_> {
    /// The key below the vertex pathname (`/in/a/b` under `/in/` is `a/b`): what
    /// Cascade's `emit` appends to each destination.
    pub fn key_suffix(&self) -> &str {
        self.key.strip_prefix(self.pathname).unwrap_or(self.key)
    }
}

/// What the node granted the UDL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU cores the UDL's workers may use.
    pub cpu_cores: u32,
    /// GPU device ordinals, empty without a GPU.
    pub gpus: Vec<u32>,
}

/// The handler's way out and its facts about where it runs.
pub trait Context {
    /// Sends `value` to every destination of the vertex, as `destination/key`
    /// (`put` or `trigger_put`, as the DFG says).
    fn emit(&mut self, key: &str, value: Bytes) -> Result<(), UdlError>;
    /// Like [`Context::emit`], for an output in device memory (a tensor the handler made
    /// on the GPU, [`DeviceView::CUDA`]) or host memory ([`DeviceView::CPU`],
    /// [`DeviceView::CUDA_HOST`]) that stays valid until this returns: the node waits for
    /// the GPU work queued before it, copies the bytes to host memory once (the store
    /// needs them), and, for each destination pool GPU-cached on that GPU of this node,
    /// device to device into that cache, so the output's cached copy never crosses to
    /// host and back. Memory that is not one allocation of the GPU is refused.
    fn emit_device(&mut self, key: &str, view: &DeviceView) -> Result<(), UdlError>;
    /// The UDL's configuration from the DFG (`user_defined_logic_config_list`), as JSON.
    fn config(&self) -> &str;
    /// Which of the vertex's workers runs this invocation.
    fn worker_id(&self) -> u32;
    fn resources(&self) -> &Resources;
    /// The latest value of `key` in the cluster (`None`: no such key), read like a
    /// client's `get`: linearizable. It blocks this worker until answered.
    fn get(&mut self, key: &str) -> Result<Option<Bytes>, UdlError>;
    /// Stores `value` under `key` (any pool), like a client's `put`: answered once
    /// applied (volatile) or durable on every replica (persistent). It blocks this worker
    /// until then. The put carries a message id derived from the input and its place
    /// among this invocation's puts, so a re-run of a handler that puts the same things
    /// in the same order is applied once.
    fn put(&mut self, key: &str, value: Bytes) -> Result<(), UdlError>;
}

/// A handler's failure: counted and logged by the node, reported as that invocation's
/// error. The node and other UDLs keep running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdlError {
    pub message: String,
}

impl UdlError {
    pub fn new(message: impl Into<String>) -> Self {
        UdlError {
            message: message.into(),
        }
    }
}

impl fmt::Display for UdlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UdlError {}

impl From<String> for UdlError {
    fn from(message: String) -> Self {
        UdlError { message }
    }
}

impl From<&str> for UdlError {
    fn from(message: &str) -> Self {
        UdlError::new(message)
    }
}

/// User-defined logic. One instance serves every worker of a vertex at once (hence
/// `Sync`): state kept across invocations needs interior mutability. A `stateful` UDL
/// sees the invocations of one key in order, one at a time.
pub trait Udl: Send + Sync + 'static {
    fn handle(&self, input: &Input<'_>, ctx: &mut dyn Context) -> Result<(), UdlError>;
}

/// Exports one UDL from a `cdylib` plugin through the versioned `extern "C"` entry
/// points the node looks for ([`ABI_VERSION_SYMBOL`], [`ENTRY_SYMBOL`]).
///
/// - `uuid`: the UDL's id in DFGs (`user_defined_logic_list`), canonical 8-4-4-4-12 hex;
/// - `description`: one line for `squall udl ls`;
/// - `constructor`: `Fn(&str) -> Result<impl Udl, E>` with `E: Display`, given the UDL's
///   JSON configuration of a vertex; the node calls it once per vertex using the UDL.
#[macro_export]
macro_rules! export_udl {
    (uuid: $uuid:expr, description: $description:expr, constructor: $constructor:expr $(,)?) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn squall_udl_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn squall_udl_entry() -> *const $crate::abi::PluginDescriptor {
            static DESCRIPTOR: $crate::abi::PluginDescriptor = $crate::abi::PluginDescriptor {
                abi_version: $crate::ABI_VERSION,
                uuid: $crate::abi::FfiStr::from_static($uuid),
                description: $crate::abi::FfiStr::from_static($description),
                sdk_version: $crate::abi::FfiStr::from_static(env!("CARGO_PKG_VERSION")),
                create: __squall_udl_create,
                handle: $crate::abi::handle_instance,
                destroy: $crate::abi::destroy_instance,
            };
            &DESCRIPTOR
        }

        unsafe extern "C" fn __squall_udl_create(
            config: $crate::abi::FfiStr,
            errors: *const $crate::abi::ErrorSink,
        ) -> *mut ::std::ffi::c_void {
            // SAFETY: the host passes a valid string and error sink for this call.
            unsafe { $crate::abi::create_instance(config, errors, $constructor) }
        }
    };
}
