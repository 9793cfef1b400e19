//! The CUDA side (feature `cuda`): detection through the driver API, the device tier and
//! the pinned-host tier, all on `cudarc` with dynamic loading.
//!
//! Why dynamic loading: `libcuda.so` is opened at run time, so the crate builds with no
//! CUDA toolkit and a binary runs on a machine with no NVIDIA driver. But cudarc *panics*
//! (it does not return an error) when the library is missing, on the first driver call
//! (`CudaContext::new`, `cuInit`, ...). So every entry point here first asks
//! [`sys::is_culib_present`] and, as a second line of defence (a library that is present
//! but lacks a symbol also panics), runs driver initialisation inside `catch_unwind`.
//! That needs `panic = "unwind"`, the default, which the workspace keeps.
//!
//! `unsafe` is allowed in this module only, for three driver calls cudarc marks unsafe;
//! each block says why it is sound.
#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::Bytes;
use cudarc::driver::{CudaContext, CudaStream, DevicePtr, DevicePtrMut, DriverError, result, sys};

use crate::detect::{DeviceInfo, GpuAvailability};
use crate::error::GpuError;
use crate::tier::{Block, Location, Memory, Tier};

/// Why detection says "no GPU" when the driver library is absent.
pub(crate) const NO_DRIVER_REASON: &str = "libcuda.so not found: no NVIDIA driver on this machine";

/// Whether `libcuda` can be opened. Never panics.
fn driver_library_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on the candidate names and closes
    // what it opened; it is unsafe because loading a library runs its initialisers, which
    // for the NVIDIA driver library is the intended use.
    unsafe { sys::is_culib_present() }
}

/// Runs a driver-touching closure, turning a cudarc panic into an error message.
fn without_panics<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        format!("the CUDA driver panicked during initialisation: {message}")
    })
}

/// Detection: initialise the driver and list its devices, creating no context (a context
/// costs hundreds of MiB of device memory and ~100 ms; tiers create theirs when opened).
pub(crate) fn probe() -> GpuAvailability {
    if !driver_library_present() {
        return GpuAvailability::Unavailable {
            reason: NO_DRIVER_REASON.to_owned(),
        };
    }
    let listed = match without_panics(list_devices) {
        Ok(listed) => listed,
        Err(reason) => return GpuAvailability::Unavailable { reason },
    };
    match listed {
        Ok(devices) if devices.is_empty() => GpuAvailability::Unavailable {
            reason: "the CUDA driver reports no devices".to_owned(),
        },
        Ok(devices) => GpuAvailability::Available { devices },
        Err(error) => GpuAvailability::Unavailable {
            reason: format!("the CUDA driver failed to initialise: {error}"),
        },
    }
}

fn list_devices() -> Result<Vec<DeviceInfo>, DriverError> {
    result::init()?;
    let count = result::device::get_count()?;
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let device = result::device::get(ordinal)?;
        let name = result::device::get_name(device)?;
        // SAFETY: `device` was just returned by `cuDeviceGet`, as `total_mem` requires.
        let total_memory_bytes = unsafe { result::device::total_mem(device) }?;
        devices.push(DeviceInfo {
            ordinal: u32::try_from(ordinal).expect("cuDeviceGetCount is non-negative"),
            name,
            total_memory_bytes: total_memory_bytes as u64,
        });
    }
    Ok(devices)
}

/// The primary driver context of GPU `ordinal`, or why there is none.
fn open_context(ordinal: u32) -> Result<Arc<CudaContext>, GpuError> {
    if !driver_library_present() {
        return Err(GpuError::GpuUnavailable {
            reason: NO_DRIVER_REASON.to_owned(),
        });
    }
    without_panics(|| CudaContext::new(ordinal as usize))
        .map_err(|reason| GpuError::GpuUnavailable { reason })?
        .map_err(|error| driver_error(ordinal, "context creation", error))
}

fn driver_error(ordinal: u32, operation: &'static str, error: DriverError) -> GpuError {
    GpuError::Driver {
        ordinal,
        operation,
        message: error.to_string(),
    }
}

fn alloc_error(ordinal: u32, len_bytes: usize, error: DriverError) -> GpuError {
    if error.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return GpuError::DeviceOutOfMemory {
            ordinal,
            len_bytes: len_bytes as u64,
        };
    }
    driver_error(ordinal, "allocation", error)
}

/// Memory on one GPU. Copies go through one stream of its own (not the legacy default
/// stream, which would serialise with every other user of the device) and are complete
/// when a call returns, so a view handed to a UDL is ready on any stream.
#[derive(Debug)]
pub struct DeviceTier {
    ordinal: u32,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl DeviceTier {
    /// Opens GPU `ordinal` (its primary context and a new stream).
    pub fn open(ordinal: u32) -> Result<Self, GpuError> {
        let context = open_context(ordinal)?;
        let stream = context
            .new_stream()
            .map_err(|error| driver_error(ordinal, "stream creation", error))?;
        Ok(DeviceTier {
            ordinal,
            context,
            stream,
        })
    }

    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// Free and total device memory now, in bytes, as the driver reports them.
    pub fn memory_info(&self) -> Result<(u64, u64), GpuError> {
        let (free, total) = self
            .context
            .mem_get_info()
            .map_err(|error| driver_error(self.ordinal, "memory query", error))?;
        Ok((free as u64, total as u64))
    }

    fn location(&self) -> Location {
        Location::Device {
            ordinal: self.ordinal,
        }
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(|error| driver_error(self.ordinal, "stream synchronisation", error))
    }

    /// Checks that `len_bytes` at `address` lie in one allocation of this GPU, then waits
    /// for every stream of this process on it, so what a UDL wrote there is complete.
    fn check_device_range(&self, address: u64, len_bytes: usize) -> Result<(), GpuError> {
        let not_ours = |reason: String| GpuError::NotDeviceMemory {
            ordinal: self.ordinal,
            address,
            len_bytes: len_bytes as u64,
            reason,
        };
        self.context
            .bind_to_thread()
            .map_err(|error| driver_error(self.ordinal, "context binding", error))?;
        let mut base: sys::CUdeviceptr = 0;
        let mut size: usize = 0;
        // SAFETY: the out-pointers are valid for the call; the driver only reads its own
        // allocation table for `address`.
        unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, address) }
            .result()
            .map_err(|error| not_ours(format!("no allocation there ({error})")))?;
        let end = address
            .checked_add(len_bytes as u64)
            .ok_or_else(|| not_ours("the range overflows".to_owned()))?;
        if end > base + size as u64 {
            return Err(not_ours(format!(
                "the allocation there is {size} bytes from {base:#x}"
            )));
        }
        let mut ordinal: i32 = -1;
        // SAFETY: the attribute is an int, written to a valid out-pointer.
        unsafe {
            sys::cuPointerGetAttribute(
                (&mut ordinal as *mut i32).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                address,
            )
        }
        .result()
        .map_err(|error| not_ours(format!("its device is unknown ({error})")))?;
        if u32::try_from(ordinal).ok() != Some(self.ordinal) {
            return Err(not_ours(format!("it is on GPU {ordinal}")));
        }
        self.context
            .synchronize()
            .map_err(|error| driver_error(self.ordinal, "device synchronisation", error))
    }

    fn wrap(&self, slice: cudarc::driver::CudaSlice<u8>) -> Block {
        let len_bytes = slice.len();
        let address = {
            let (pointer, _record_read) = slice.device_ptr(&self.stream);
            pointer
        };
        Block::new(Memory::Device(slice), address, len_bytes, self.location())
    }
}

impl Tier for DeviceTier {
    fn location(&self) -> Location {
        DeviceTier::location(self)
    }

    fn stream_handle(&self) -> u64 {
        self.stream.cu_stream() as u64
    }

    fn copies_host_bytes(&self) -> bool {
        true
    }

    fn alloc(&self, len_bytes: usize) -> Result<Block, GpuError> {
        if len_bytes == 0 {
            return Ok(Block::empty(self.location()));
        }
        let slice = self
            .stream
            .alloc_zeros::<u8>(len_bytes)
            .map_err(|error| alloc_error(self.ordinal, len_bytes, error))?;
        self.synchronize()?;
        Ok(self.wrap(slice))
    }

    fn upload(&self, src: &Bytes) -> Result<Block, GpuError> {
        if src.is_empty() {
            return Ok(Block::empty(self.location()));
        }
        let slice = self
            .stream
            .clone_htod(src.as_ref())
            .map_err(|error| alloc_error(self.ordinal, src.len(), error))?;
        self.synchronize()?;
        Ok(self.wrap(slice))
    }

    fn copy_from_host(&self, src: &[u8], dst: &mut Block) -> Result<(), GpuError> {
        dst.check_copy_target(self.location(), src.len())?;
        let Memory::Device(slice) = &mut dst.memory else {
            return Ok(()); // empty block
        };
        self.stream
            .memcpy_htod(src, slice)
            .map_err(|error| driver_error(self.ordinal, "host-to-device copy", error))?;
        self.synchronize()
    }

    fn copy_to_host(&self, src: &Block) -> Result<Bytes, GpuError> {
        src.check_copy_target(self.location(), src.len_bytes())?;
        let Memory::Device(slice) = &src.memory else {
            return Ok(Bytes::new()); // empty block
        };
        let host = self
            .stream
            .clone_dtoh(slice)
            .map_err(|error| driver_error(self.ordinal, "device-to-host copy", error))?;
        self.synchronize()?;
        Ok(Bytes::from(host))
    }

    fn copy_from_device(&self, address: u64, len_bytes: usize) -> Result<Block, GpuError> {
        if len_bytes == 0 {
            return Ok(Block::empty(self.location()));
        }
        self.check_device_range(address, len_bytes)?;
        // SAFETY: the whole allocation is written by the copy below before anyone reads it.
        let mut slice = unsafe { self.stream.alloc::<u8>(len_bytes) }
            .map_err(|error| alloc_error(self.ordinal, len_bytes, error))?;
        {
            let (dst, _record_write) = slice.device_ptr_mut(&self.stream);
            // SAFETY: `dst` is a fresh allocation of `len_bytes` on this stream; the source
            // range was checked to be one allocation of this GPU, complete (synchronised).
            unsafe { result::memcpy_dtod_async(dst, address, len_bytes, self.stream.cu_stream()) }
                .map_err(|error| driver_error(self.ordinal, "device-to-device copy", error))?;
        }
        self.synchronize()?;
        Ok(self.wrap(slice))
    }

    fn read_device(&self, address: u64, len_bytes: usize) -> Result<Bytes, GpuError> {
        if len_bytes == 0 {
            return Ok(Bytes::new());
        }
        self.check_device_range(address, len_bytes)?;
        let mut host = vec![0u8; len_bytes];
        // SAFETY: `host` is `len_bytes` long and outlives the copy (synchronised below);
        // the source range was checked as in `copy_from_device`.
        unsafe { result::memcpy_dtoh_async(&mut host, address, self.stream.cu_stream()) }
            .map_err(|error| driver_error(self.ordinal, "device-to-host copy", error))?;
        self.synchronize()?;
        Ok(Bytes::from(host))
    }
}

/// Page-locked host memory registered with GPU `device`'s context: the staging tier a DMA
/// engine reads directly. Allocated `PORTABLE` (usable from every context) and *not*
/// write-combined (cudarc's default), because the host reads these blocks back too and
/// write-combined memory is very slow for the CPU to read.
#[derive(Debug)]
pub struct PinnedHostTier {
    device: u32,
    context: Arc<CudaContext>,
}

impl PinnedHostTier {
    pub fn open(device: u32) -> Result<Self, GpuError> {
        Ok(PinnedHostTier {
            device,
            context: open_context(device)?,
        })
    }

    fn location(&self) -> Location {
        Location::PinnedHost {
            device: self.device,
        }
    }

    fn read_error(&self, error: DriverError) -> GpuError {
        driver_error(self.device, "pinned memory synchronisation", error)
    }
}

impl Tier for PinnedHostTier {
    fn location(&self) -> Location {
        PinnedHostTier::location(self)
    }

    fn stream_handle(&self) -> u64 {
        0
    }

    fn copies_host_bytes(&self) -> bool {
        true
    }

    fn alloc(&self, len_bytes: usize) -> Result<Block, GpuError> {
        if len_bytes == 0 {
            return Ok(Block::empty(self.location()));
        }
        // SAFETY: the memory is uninitialised when this returns, which is why cudarc marks
        // it unsafe; it is zero-filled below before anything reads it.
        let mut pinned = unsafe {
            self.context
                .alloc_pinned_with_flags::<u8>(len_bytes, sys::CU_MEMHOSTALLOC_PORTABLE)
        }
        .map_err(|error| alloc_error(self.device, len_bytes, error))?;
        pinned
            .as_mut_slice()
            .map_err(|error| self.read_error(error))?
            .fill(0);
        let address = pinned.as_ptr().map_err(|error| self.read_error(error))? as u64;
        Ok(Block::new(
            Memory::Pinned(pinned),
            address,
            len_bytes,
            self.location(),
        ))
    }

    fn upload(&self, src: &Bytes) -> Result<Block, GpuError> {
        let mut block = self.alloc(src.len())?;
        self.copy_from_host(src, &mut block)?;
        Ok(block)
    }

    fn copy_from_host(&self, src: &[u8], dst: &mut Block) -> Result<(), GpuError> {
        dst.check_copy_target(self.location(), src.len())?;
        let Memory::Pinned(pinned) = &mut dst.memory else {
            return Ok(()); // empty block
        };
        pinned
            .as_mut_slice()
            .map_err(|error| self.read_error(error))?
            .copy_from_slice(src);
        Ok(())
    }

    fn copy_to_host(&self, src: &Block) -> Result<Bytes, GpuError> {
        src.check_copy_target(self.location(), src.len_bytes())?;
        let Memory::Pinned(pinned) = &src.memory else {
            return Ok(Bytes::new()); // empty block
        };
        let host = pinned.as_slice().map_err(|error| self.read_error(error))?;
        Ok(Bytes::copy_from_slice(host))
    }
}
