//! The host tier: the fallback "device" where there is no GPU, with the same API. An
//! upload shares the caller's `Bytes` (no copy, no transfer counted), so a cache over this
//! tier costs only its bookkeeping, and a view's address is the host address of the very
//! buffer the store holds.

use bytes::Bytes;

use crate::error::GpuError;
use crate::tier::{Block, Location, Memory, Tier};

/// Host memory as a tier. Stateless; blocks free themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostTier;

impl HostTier {
    pub fn new() -> Self {
        HostTier
    }
}

impl Tier for HostTier {
    fn location(&self) -> Location {
        Location::Host
    }

    fn stream_handle(&self) -> u64 {
        0
    }

    fn copies_host_bytes(&self) -> bool {
        false
    }

    fn alloc(&self, len_bytes: usize) -> Result<Block, GpuError> {
        if len_bytes == 0 {
            return Ok(Block::empty(Location::Host));
        }
        let buffer = vec![0u8; len_bytes].into_boxed_slice();
        let address = buffer.as_ptr() as u64;
        Ok(Block::new(
            Memory::HostOwned(buffer),
            address,
            len_bytes,
            Location::Host,
        ))
    }

    fn upload(&self, src: &Bytes) -> Result<Block, GpuError> {
        if src.is_empty() {
            return Ok(Block::empty(Location::Host));
        }
        let address = src.as_ptr() as u64;
        Ok(Block::new(
            Memory::HostShared(src.clone()),
            address,
            src.len(),
            Location::Host,
        ))
    }

    fn copy_from_host(&self, src: &[u8], dst: &mut Block) -> Result<(), GpuError> {
        dst.check_copy_target(Location::Host, src.len())?;
        match &mut dst.memory {
            Memory::Empty => Ok(()),
            Memory::HostOwned(buffer) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            Memory::HostShared(_) => Err(GpuError::ReadOnlyBlock),
            #[cfg(feature = "cuda")]
            Memory::Pinned(_) | Memory::Device(_) => unreachable!("location checked: host"),
        }
    }

    fn copy_to_host(&self, src: &Block) -> Result<Bytes, GpuError> {
        src.check_copy_target(Location::Host, src.len_bytes())?;
        match &src.memory {
            Memory::Empty => Ok(Bytes::new()),
            Memory::HostShared(bytes) => Ok(bytes.clone()),
            Memory::HostOwned(buffer) => Ok(Bytes::copy_from_slice(buffer)),
            #[cfg(feature = "cuda")]
            Memory::Pinned(_) | Memory::Device(_) => unreachable!("location checked: host"),
        }
    }
}
