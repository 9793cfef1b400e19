//! Memory tiers: where an object's bytes live (host, pinned host, GPU device), behind one
//! narrow trait, [`Tier`], whose written obligations every implementation keeps and
//! [`crate::conformance`] checks.

use std::fmt;

use bytes::Bytes;

use crate::error::GpuError;

/// The three kinds of memory a tier hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierKind {
    /// Ordinary host memory: `Bytes` shared with the store, zero copy.
    Host,
    /// Page-locked host memory registered with a GPU's driver context: a DMA engine can
    /// read it directly, so host↔device copies from it are faster and can be asynchronous.
    PinnedHost,
    /// Memory on a GPU, addressed by a device pointer.
    Device,
}

/// Where a block lives: the tier kind plus, for CUDA memory, the device it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    Host,
    /// Pinned host memory allocated through the driver context of GPU `device`.
    PinnedHost {
        device: u32,
    },
    Device {
        ordinal: u32,
    },
}

impl Location {
    pub fn kind(self) -> TierKind {
        match self {
            Location::Host => TierKind::Host,
            Location::PinnedHost { .. } => TierKind::PinnedHost,
            Location::Device { .. } => TierKind::Device,
        }
    }

    /// The GPU this memory belongs to, if any.
    pub fn device_ordinal(self) -> Option<u32> {
        match self {
            Location::Host => None,
            Location::PinnedHost { device } => Some(device),
            Location::Device { ordinal } => Some(ordinal),
        }
    }
}

/// `host`, `pinned:0`, `cuda:0`: also the value of the metrics' `device` label.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Host => write!(f, "host"),
            Location::PinnedHost { device } => write!(f, "pinned:{device}"),
            Location::Device { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// A memory tier: allocates [`Block`]s and copies bytes between them and the host.
///
/// Obligations of every implementation (checked by [`crate::conformance::check_tier`]):
/// 1. Every block it returns has `location() == self.location()` and exactly the length
///    asked for; its `address()` never changes while the block lives; a zero-length block
///    allocates nothing.
/// 2. `alloc` returns zero-filled memory. Two live blocks from `alloc` never overlap.
/// 3. `upload` returns a block holding exactly `src`'s bytes, readable by any work issued
///    after `upload` returns (any transfer has completed: no caller has to synchronise).
///    A tier may share `src` instead of copying it ([`Tier::copies_host_bytes`] is then
///    `false`); such a block is read-only.
/// 4. `copy_to_host` returns exactly the block's bytes, the copy complete on return.
/// 5. `copy_from_host` overwrites a whole block: `src.len()` must equal the block's
///    length ([`GpuError::LengthMismatch`]); a block of another tier is refused
///    ([`GpuError::ForeignBlock`]), a shared read-only one too ([`GpuError::ReadOnlyBlock`]).
/// 6. Dropping a block frees its memory, on any thread, with no call to the tier.
/// 7. Implementations are `Send + Sync`: calls may come from many threads at once.
pub trait Tier: Send + Sync + fmt::Debug {
    /// Where this tier's blocks live.
    fn location(&self) -> Location;

    fn kind(&self) -> TierKind {
        self.location().kind()
    }

    /// The stream (a `CUstream`, as an opaque integer) the tier issues its copies on, for a
    /// consumer that wants to order its own GPU work after them; 0 for host tiers.
    fn stream_handle(&self) -> u64;

    /// Whether `upload` and `copy_to_host` copy bytes (a transfer, which the cache counts
    /// and times) or share the host buffer (the host tier: zero copy, nothing counted).
    fn copies_host_bytes(&self) -> bool;

    /// A zero-filled block of `len_bytes`.
    fn alloc(&self, len_bytes: usize) -> Result<Block, GpuError>;

    /// A block holding `src`'s bytes: one host→tier transfer, or none where the tier shares
    /// host memory.
    fn upload(&self, src: &Bytes) -> Result<Block, GpuError>;

    /// Overwrite the whole of `dst` with `src`.
    fn copy_from_host(&self, src: &[u8], dst: &mut Block) -> Result<(), GpuError>;

    /// The block's bytes in host memory: one tier→host transfer, or none where the block
    /// shares a host buffer.
    fn copy_to_host(&self, src: &Block) -> Result<Bytes, GpuError>;

    /// A new block holding a copy of `len_bytes` of this GPU's memory at `address` (a
    /// UDL's output), copied on the device once all work this process queued on the GPU
    /// is done (the UDL's framework wrote it on streams of its own). The range must lie in
    /// one allocation of this GPU ([`GpuError::NotDeviceMemory`] otherwise); tiers over
    /// host memory cannot ([`GpuError::Unsupported`]).
    fn copy_from_device(&self, address: u64, len_bytes: usize) -> Result<Block, GpuError> {
        let _ = (address, len_bytes);
        Err(GpuError::Unsupported {
            location: self.location(),
            operation: "a copy from device memory",
        })
    }

    /// `len_bytes` of this GPU's memory at `address` copied to host memory, under the same
    /// conditions as [`Tier::copy_from_device`].
    fn read_device(&self, address: u64, len_bytes: usize) -> Result<Bytes, GpuError> {
        let _ = (address, len_bytes);
        Err(GpuError::Unsupported {
            location: self.location(),
            operation: "a read of device memory",
        })
    }
}

/// The memory behind a block. The CUDA variants own cudarc allocations, which free
/// themselves (and keep their driver context alive) until dropped.
pub(crate) enum Memory {
    /// A zero-length block: nothing allocated, address 0.
    Empty,
    /// A host buffer shared with whoever else holds the `Bytes` (read-only).
    HostShared(Bytes),
    /// A host buffer this block owns (writable).
    HostOwned(Box<[u8]>),
    #[cfg(feature = "cuda")]
    Pinned(cudarc::driver::PinnedHostSlice<u8>),
    #[cfg(feature = "cuda")]
    Device(cudarc::driver::CudaSlice<u8>),
}

/// A run of bytes in one tier: knows its location, address and length, and frees its
/// memory when dropped (obligation 6 of [`Tier`]).
pub struct Block {
    pub(crate) memory: Memory,
    address: u64,
    len_bytes: usize,
    location: Location,
}

impl Block {
    /// Wraps memory a tier allocated. `address` is the host address or the device pointer.
    pub(crate) fn new(memory: Memory, address: u64, len_bytes: usize, location: Location) -> Self {
        assert!(
            len_bytes == 0 || address != 0,
            "a non-empty block has a non-null address"
        );
        Block {
            memory,
            address,
            len_bytes,
            location,
        }
    }

    pub(crate) fn empty(location: Location) -> Self {
        Block::new(Memory::Empty, 0, 0, location)
    }

    pub fn location(&self) -> Location {
        self.location
    }

    pub fn kind(&self) -> TierKind {
        self.location.kind()
    }

    /// The first byte's address: a host virtual address for host and pinned memory, a
    /// `CUdeviceptr` for device memory; 0 for an empty block.
    pub fn address(&self) -> u64 {
        self.address
    }

    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len_bytes == 0
    }

    /// The shared host buffer behind a host-tier block made by `upload` (zero copy), if
    /// that is what this block is.
    pub fn host_bytes(&self) -> Option<&Bytes> {
        match &self.memory {
            Memory::HostShared(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Checks that this block came from a tier at `expected` and has `src_len_bytes`.
    pub(crate) fn check_copy_target(
        &self,
        expected: Location,
        src_len_bytes: usize,
    ) -> Result<(), GpuError> {
        if self.location != expected {
            return Err(GpuError::ForeignBlock {
                expected,
                found: self.location,
            });
        }
        if self.len_bytes != src_len_bytes {
            return Err(GpuError::LengthMismatch {
                block_len_bytes: self.len_bytes as u64,
                src_len_bytes: src_len_bytes as u64,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("location", &self.location)
            .field("address", &format_args!("{:#x}", self.address))
            .field("len_bytes", &self.len_bytes)
            .finish()
    }
}
