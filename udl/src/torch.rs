//! tch tensors over a UDL's input and from its outputs, with no copy (feature `torch`).
//!
//! [`Input::with_tensor`] wraps the input where it lies: the node's copy on a GPU for an
//! object of a GPU-cached pool ([`Input::device`], a CUDA tensor at the cache's very
//! address), else the host blob. [`emit_tensor`] sends a tensor to the vertex's
//! destinations: from GPU memory through [`Context::emit_device`] (the node copies it, and
//! on the GPU into destination pools cached there), from host memory as bytes.
//!
//! The tensors alias memory the node lends for the call only. A tensor made by
//! `with_tensor` must not outlive its closure (nor may a `shallow_clone` or a view of it);
//! copy what must stay (`Tensor::copy`, `to_device`). The input's bytes are the stored
//! object: read them, never write them.

use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::{Context, DeviceView, Input, UdlError};

/// Makes libtorch's CUDA backend available, once per process: a plugin links only
/// `libtorch_cpu` (the linker drops `libtorch_cuda`, which nothing names), and CUDA
/// tensors need `libtorch_cuda.so` loaded (found on the library path, next to
/// `libtorch_cpu.so`). The answer (or why not) is kept.
pub fn torch_cuda() -> Result<(), UdlError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: loading the library runs its initialisers, which register its CUDA
            // backend with the libtorch this process already has; it is never unloaded.
            let library = unsafe {
                libloading::os::unix::Library::open(
                    Some("libtorch_cuda.so"),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            }
            .map_err(|e| format!("libtorch_cuda.so cannot be loaded: {e}"))?;
            std::mem::forget(library);
            if tch::Cuda::is_available() {
                Ok(())
            } else {
                Err("libtorch sees no CUDA device".to_string())
            }
        })
        .clone()
        .map_err(UdlError::new)
}

impl Input<'_> {
    /// Runs `f` with a 1-D `uint8` tensor over the input, without copying it: on the GPU
    /// the node cached it on (`Input::device` of type CUDA), else over the host blob (or
    /// pinned host copy). The tensor must not escape `f`. Fails only when the input is on
    /// a GPU and libtorch cannot use CUDA ([`torch_cuda`]).
    pub fn with_tensor<R>(&self, f: impl FnOnce(&Tensor) -> R) -> Result<R, UdlError> {
        let (address, len_bytes, device) = match &self.device {
            Some(view) if view.device_type == DeviceView::CUDA => {
                torch_cuda()?;
                (
                    view.address as *const u8,
                    view.len_bytes,
                    Device::Cuda(view.device_id as usize),
                )
            }
            Some(view) => (view.address as *const u8, view.len_bytes, Device::Cpu),
            None => (self.blob.as_ptr(), self.blob.len() as u64, Device::Cpu),
        };
        let len = i64::try_from(len_bytes).expect("an object is smaller than 2^63 bytes");
        // SAFETY: the node keeps this memory (the blob, or the pinned cached copy) valid
        // and unchanged for the whole call, `len` bytes from `address` on `device`; the
        // tensor is dropped when `f` returns, before the call ends.
        let tensor = unsafe { Tensor::from_blob(address, &[len], &[1], Kind::Uint8, device) };
        Ok(f(&tensor))
    }
}

/// Sends `tensor` (contiguous, any dtype) to every destination of the vertex as
/// `destination/key`, like [`Context::emit`]: from a GPU through
/// [`Context::emit_device`] without a copy here, from host memory as its bytes.
pub fn emit_tensor(ctx: &mut dyn Context, key: &str, tensor: &Tensor) -> Result<(), UdlError> {
    if !tensor.is_contiguous() {
        return Err(UdlError::new(
            "emit_tensor: the tensor is not contiguous; emit tensor.contiguous()",
        ));
    }
    let len_bytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
    match tensor.device() {
        Device::Cuda(ordinal) => ctx.emit_device(
            key,
            &DeviceView {
                address: tensor.data_ptr() as u64,
                len_bytes: len_bytes as u64,
                device_type: DeviceView::CUDA,
                device_id: ordinal as u32,
                stream: 0,
            },
        ),
        _ => {
            let bytes = tensor
                .f_view_dtype(Kind::Uint8)
                .and_then(|t| t.f_reshape([-1]))
                .map_err(|e| UdlError::new(format!("emit_tensor: {e}")))?;
            let mut host = vec![0u8; len_bytes];
            bytes
                .f_copy_data_u8(&mut host, len_bytes)
                .map_err(|e| UdlError::new(format!("emit_tensor: {e}")))?;
            ctx.emit(key, host.into())
        }
    }
}
