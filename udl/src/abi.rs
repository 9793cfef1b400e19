//! The plugin boundary: `#[repr(C)]` types and the plugin-side `extern "C"` functions
//! [`export_udl!`](crate::export_udl) wires into a plugin. The node's loader
//! (`squall-udl-host`) is the other side.
//!
//! Ownership rules, which both sides follow:
//! - An [`FfiStr`] is borrowed for the duration of the call it is passed to.
//! - An [`FfiBytes`] is *moved*: the receiver owns it and calls its `release` exactly
//!   once (through [`FfiBytes::into_bytes`], which makes a [`Bytes`] sharing the memory).
//!   Its `release` is code of the side that made it, so a plugin's bytes stay valid only
//!   while the plugin is loaded: the node keeps the library loaded while any exist.
//! - Status codes: [`STATUS_OK`], [`STATUS_ERROR`] or [`STATUS_PANIC`]; the message of a
//!   failure goes to the [`ErrorSink`] of the call.

use std::ffi::c_void;
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;

use crate::{Context, Input, MessageId, Resources, Udl, UdlError};

pub const STATUS_OK: i32 = 0;
pub const STATUS_ERROR: i32 = 1;
pub const STATUS_PANIC: i32 = 2;

/// `u64` fields of [`FfiInput`] that are absent hold this.
pub const NONE_U64: u64 = u64::MAX;

/// A borrowed UTF-8 string.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FfiStr {
    pub ptr: *const u8,
    pub len: usize,
}

impl FfiStr {
    pub const fn from_static(s: &'static str) -> Self {
        FfiStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    pub fn new(s: &str) -> Self {
        FfiStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// `ptr..ptr + len` must be readable for `'a`.
    pub unsafe fn to_str<'a>(self) -> Result<&'a str, std::str::Utf8Error> {
        if self.len == 0 {
            return Ok("");
        }
        // SAFETY: the caller guarantees the memory is valid for 'a.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        std::str::from_utf8(bytes)
    }
}

/// Owned bytes crossing the boundary without a copy (see the module's ownership rules).
#[repr(C)]
#[derive(Debug)]
pub struct FfiBytes {
    pub ptr: *const u8,
    pub len: usize,
    pub owner: *mut c_void,
    pub release: unsafe extern "C" fn(owner: *mut c_void),
}

unsafe extern "C" fn release_boxed_bytes(owner: *mut c_void) {
    // SAFETY: `owner` came from `Box::into_raw` in `FfiBytes::from_bytes`, released once.
    drop(unsafe { Box::from_raw(owner.cast::<Bytes>()) });
}

impl FfiBytes {
    /// Hands `bytes` over: its memory is not copied; the receiver releases it.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        FfiBytes {
            ptr,
            len,
            owner: Box::into_raw(Box::new(bytes)).cast::<c_void>(),
            release: release_boxed_bytes,
        }
    }

    /// Takes ownership back as [`Bytes`] over the same memory; `keep` lives as long as
    /// they do (the node keeps the plugin's library there).
    ///
    /// # Safety
    /// `self` must come from [`FfiBytes::from_bytes`] (of either side, still loaded
    /// while `keep` lives) and be consumed only once.
    pub unsafe fn into_bytes<K: Send + 'static>(self, keep: K) -> Bytes {
        Bytes::from_owner(Foreign { bytes: self, keep })
    }
}

/// [`FfiBytes`] as the owner of a [`Bytes`]: released when the last clone drops.
struct Foreign<K> {
    bytes: FfiBytes,
    keep: K,
}

// SAFETY: the owner is a `Box<Bytes>` (Send) and `release` only drops it; the memory it
// points to is immutable while shared.
unsafe impl<K: Send> Send for Foreign<K> {}

impl<K> AsRef<[u8]> for Foreign<K> {
    fn as_ref(&self) -> &[u8] {
        if self.bytes.len == 0 {
            return &[];
        }
        // SAFETY: the owner keeps `ptr..ptr + len` alive and unchanged until release.
        unsafe { std::slice::from_raw_parts(self.bytes.ptr, self.bytes.len) }
    }
}

impl<K> Drop for Foreign<K> {
    fn drop(&mut self) {
        // SAFETY: released exactly once, here; `keep` (the library) is dropped after.
        unsafe { (self.bytes.release)(self.bytes.owner) };
        let _ = &self.keep;
    }
}

/// Where a failing call writes its message.
#[repr(C)]
#[derive(Debug)]
pub struct ErrorSink {
    pub sink: *mut c_void,
    pub report: unsafe extern "C" fn(sink: *mut c_void, message: FfiStr),
}

impl ErrorSink {
    /// A sink that stores into `message`.
    pub fn to_string(message: &mut String) -> Self {
        ErrorSink {
            sink: (message as *mut String).cast::<c_void>(),
            report: report_into_string,
        }
    }

    /// # Safety
    /// `this` must be null or point to a valid sink for the current call.
    pub unsafe fn report(this: *const ErrorSink, message: &str) {
        // SAFETY: per the caller, a non-null sink is valid now.
        if let Some(sink) = unsafe { this.as_ref() } {
            // SAFETY: the sink's function accepts its own `sink` pointer.
            unsafe { (sink.report)(sink.sink, FfiStr::new(message)) };
        }
    }
}

unsafe extern "C" fn report_into_string(sink: *mut c_void, message: FfiStr) {
    // SAFETY: `sink` is the `&mut String` given to `ErrorSink::to_string`, alive for the
    // call; `message` is borrowed for it.
    let (target, text) = unsafe { (&mut *sink.cast::<String>(), message.to_str()) };
    target.push_str(text.unwrap_or("(an error message that is not UTF-8)"));
}

/// The object handed to `handle`. `blob` is moved to the plugin.
#[repr(C)]
#[derive(Debug)]
pub struct FfiInput {
    pub pathname: FfiStr,
    pub key: FfiStr,
    pub version: u64,
    pub timestamp_us: u64,
    /// [`NONE_U64`] when absent.
    pub previous_version: u64,
    /// [`NONE_U64`] when absent.
    pub previous_version_by_key: u64,
    pub message_client: u64,
    pub message_seq: u64,
    pub sender: u32,
    pub blob: FfiBytes,
    /// `Input::device`: `device_type` 0 when absent.
    pub device_address: u64,
    pub device_len_bytes: u64,
    pub device_type: u32,
    pub device_id: u32,
    pub device_stream: u64,
}

/// The node's side of a [`Context`], valid for one `handle` call.
#[repr(C)]
#[derive(Debug)]
pub struct FfiContext {
    pub host: *mut c_void,
    /// Moves `value` to the node; a failure's message goes to `errors`.
    pub emit: unsafe extern "C" fn(
        host: *mut c_void,
        key: FfiStr,
        value: FfiBytes,
        errors: *const ErrorSink,
    ) -> i32,
    pub config: FfiStr,
    pub worker_id: u32,
    pub cpu_cores: u32,
    pub gpus: *const u32,
    pub gpus_len: usize,
    /// Reads `key`: on [`STATUS_OK`], `*found` is 1 and `*value` holds the value moved to
    /// the plugin, or `*found` is 0 (no such key) and `*value` is untouched. A failure's
    /// message goes to `errors`.
    pub get: unsafe extern "C" fn(
        host: *mut c_void,
        key: FfiStr,
        found: *mut u8,
        value: *mut FfiBytes,
        errors: *const ErrorSink,
    ) -> i32,
    /// Stores `value` (moved to the node) under `key`; returns once it is applied.
    pub put: unsafe extern "C" fn(
        host: *mut c_void,
        key: FfiStr,
        value: FfiBytes,
        errors: *const ErrorSink,
    ) -> i32,
    /// `Context::emit_device`: the node copies what `view` describes (borrowed for the
    /// call) before returning.
    pub emit_device: unsafe extern "C" fn(
        host: *mut c_void,
        key: FfiStr,
        view: *const FfiDeviceView,
        errors: *const ErrorSink,
    ) -> i32,
}

/// A [`crate::DeviceView`] across the boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FfiDeviceView {
    pub address: u64,
    pub len_bytes: u64,
    pub device_type: u32,
    pub device_id: u32,
    pub stream: u64,
}

/// What a plugin exports (through [`crate::ENTRY_SYMBOL`]). Every string is static in
/// the plugin.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    pub abi_version: u32,
    pub uuid: FfiStr,
    pub description: FfiStr,
    /// The `squall-udl` version the plugin was built with (for `squall udl ls`).
    pub sdk_version: FfiStr,
    /// Makes an instance for one vertex from its JSON configuration; null on failure
    /// (the message goes to `errors`).
    pub create: unsafe extern "C" fn(config: FfiStr, errors: *const ErrorSink) -> *mut c_void,
    /// Runs the handler; a status code, the message of a failure to `errors`.
    pub handle: unsafe extern "C" fn(
        instance: *mut c_void,
        input: *mut FfiInput,
        context: *const FfiContext,
        errors: *const ErrorSink,
    ) -> i32,
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
}

// SAFETY: the descriptor is immutable and only points to static strings and functions.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: as above.
unsafe impl Send for PluginDescriptor {}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// The plugin side of `create` (generic over the plugin's constructor).
///
/// # Safety
/// `config` must be valid for the call; `errors` null or valid for the call.
pub unsafe fn create_instance<U, E, F>(
    config: FfiStr,
    errors: *const ErrorSink,
    constructor: F,
) -> *mut c_void
where
    U: Udl,
    E: Display,
    F: Fn(&str) -> Result<U, E>,
{
    // SAFETY: the host passes a string valid for this call.
    let config = match unsafe { config.to_str() } {
        Ok(c) => c,
        Err(e) => {
            // SAFETY: as the caller guarantees.
            unsafe { ErrorSink::report(errors, &format!("the configuration is not UTF-8: {e}")) };
            return std::ptr::null_mut();
        }
    };
    match catch_unwind(AssertUnwindSafe(|| constructor(config))) {
        Ok(Ok(udl)) => {
            let udl: Box<dyn Udl> = Box::new(udl);
            Box::into_raw(Box::new(udl)).cast::<c_void>()
        }
        Ok(Err(e)) => {
            // SAFETY: as the caller guarantees.
            unsafe { ErrorSink::report(errors, &e.to_string()) };
            std::ptr::null_mut()
        }
        Err(panic) => {
            let message = format!("the constructor panicked: {}", panic_message(&*panic));
            // SAFETY: as the caller guarantees.
            unsafe { ErrorSink::report(errors, &message) };
            std::ptr::null_mut()
        }
    }
}

/// A [`Context`] over the node's [`FfiContext`].
struct PluginContext<'a> {
    ffi: &'a FfiContext,
    config: &'a str,
    resources: Resources,
}

/// A node function that takes a key and bytes moved to the node (`emit`, `put`).
type KeyBytesFn = unsafe extern "C" fn(
    host: *mut c_void,
    key: FfiStr,
    value: FfiBytes,
    errors: *const ErrorSink,
) -> i32;

impl PluginContext<'_> {
    fn call_with_bytes(&self, f: KeyBytesFn, key: &str, value: Bytes) -> Result<(), UdlError> {
        let mut message = String::new();
        let sink = ErrorSink::to_string(&mut message);
        // SAFETY: the node's function takes its own host pointer, a borrowed key, owned
        // bytes and a sink valid for the call.
        let status = unsafe {
            f(
                self.ffi.host,
                FfiStr::new(key),
                FfiBytes::from_bytes(value),
                &sink,
            )
        };
        if status == STATUS_OK {
            Ok(())
        } else {
            Err(UdlError::new(message))
        }
    }
}

impl Context for PluginContext<'_> {
    fn emit(&mut self, key: &str, value: Bytes) -> Result<(), UdlError> {
        self.call_with_bytes(self.ffi.emit, key, value)
    }

    fn config(&self) -> &str {
        self.config
    }

    fn worker_id(&self) -> u32 {
        self.ffi.worker_id
    }

    fn resources(&self) -> &Resources {
        &self.resources
    }

    fn get(&mut self, key: &str) -> Result<Option<Bytes>, UdlError> {
        let mut message = String::new();
        let sink = ErrorSink::to_string(&mut message);
        let mut found = 0u8;
        let mut value = std::mem::MaybeUninit::<FfiBytes>::uninit();
        // SAFETY: the node's get takes its own host pointer, a borrowed key, out-pointers
        // valid for the call and a sink valid for the call.
        let status = unsafe {
            (self.ffi.get)(
                self.ffi.host,
                FfiStr::new(key),
                &mut found,
                value.as_mut_ptr(),
                &sink,
            )
        };
        match (status, found) {
            (STATUS_OK, 0) => Ok(None),
            // SAFETY: with `found` set, the node wrote a value it made with
            // `FfiBytes::from_bytes` and moved to us; its `release` is node code, loaded
            // for as long as the plugin is.
            (STATUS_OK, _) => Ok(Some(unsafe { value.assume_init().into_bytes(()) })),
            _ => Err(UdlError::new(message)),
        }
    }

    fn put(&mut self, key: &str, value: Bytes) -> Result<(), UdlError> {
        self.call_with_bytes(self.ffi.put, key, value)
    }

    fn emit_device(&mut self, key: &str, view: &crate::DeviceView) -> Result<(), UdlError> {
        let mut message = String::new();
        let sink = ErrorSink::to_string(&mut message);
        let view = FfiDeviceView {
            address: view.address,
            len_bytes: view.len_bytes,
            device_type: view.device_type,
            device_id: view.device_id,
            stream: view.stream,
        };
        // SAFETY: the node's function takes its own host pointer, and a key, a view and a
        // sink borrowed for the call.
        let status =
            unsafe { (self.ffi.emit_device)(self.ffi.host, FfiStr::new(key), &view, &sink) };
        if status == STATUS_OK {
            Ok(())
        } else {
            Err(UdlError::new(message))
        }
    }
}

/// The plugin side of `handle`.
///
/// # Safety
/// `instance` must come from `create` and not be destroyed; `input` must be valid and
/// its blob unconsumed (it is consumed here); `context` valid; `errors` null or valid;
/// all for the duration of the call.
pub unsafe extern "C" fn handle_instance(
    instance: *mut c_void,
    input: *mut FfiInput,
    context: *const FfiContext,
    errors: *const ErrorSink,
) -> i32 {
    // SAFETY: per the contract above.
    let (udl, raw, ffi) = unsafe {
        let raw = std::ptr::read(input);
        (&*instance.cast::<Box<dyn Udl>>(), raw, &*context)
    };
    // First of all take the blob, so it is released whatever happens next.
    // SAFETY: the host made it with `FfiBytes::from_bytes` and moved it to us.
    let blob = unsafe { raw.blob.into_bytes(()) };
    // SAFETY: the strings are borrowed for the call.
    let strings = unsafe { (raw.pathname.to_str(), raw.key.to_str(), ffi.config.to_str()) };
    let (Ok(pathname), Ok(key), Ok(config)) = strings else {
        // SAFETY: per the contract above.
        unsafe { ErrorSink::report(errors, "a key, pathname or configuration is not UTF-8") };
        return STATUS_ERROR;
    };
    let gpus = if ffi.gpus_len == 0 {
        Vec::new()
    } else {
        // SAFETY: the node passes `gpus_len` readable ids.
        unsafe { std::slice::from_raw_parts(ffi.gpus, ffi.gpus_len) }.to_vec()
    };
    let optional = |v: u64| (v != NONE_U64).then_some(v);
    let input = Input {
        pathname,
        key,
        version: raw.version,
        timestamp_us: raw.timestamp_us,
        previous_version: optional(raw.previous_version),
        previous_version_by_key: optional(raw.previous_version_by_key),
        message_id: MessageId {
            client: raw.message_client,
            seq: raw.message_seq,
        },
        sender: raw.sender,
        blob,
        device: (raw.device_type != 0).then_some(crate::DeviceView {
            address: raw.device_address,
            len_bytes: raw.device_len_bytes,
            device_type: raw.device_type,
            device_id: raw.device_id,
            stream: raw.device_stream,
        }),
    };
    let mut ctx = PluginContext {
        ffi,
        config,
        resources: Resources {
            cpu_cores: ffi.cpu_cores,
            gpus,
        },
    };
    match catch_unwind(AssertUnwindSafe(|| udl.handle(&input, &mut ctx))) {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(e)) => {
            // SAFETY: per the contract above.
            unsafe { ErrorSink::report(errors, &e.message) };
            STATUS_ERROR
        }
        Err(panic) => {
            let message = format!("the handler panicked: {}", panic_message(&*panic));
            // SAFETY: per the contract above.
            unsafe { ErrorSink::report(errors, &message) };
            STATUS_PANIC
        }
    }
}

/// The plugin side of `destroy`.
///
/// # Safety
/// `instance` must come from `create` and be destroyed only once.
pub unsafe extern "C" fn destroy_instance(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // A panicking destructor must not unwind into the node; it leaks instead.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract above.
        drop(unsafe { Box::from_raw(instance.cast::<Box<dyn Udl>>()) });
    }));
}
