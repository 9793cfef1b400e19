//! The conformance suite of [`Tier`]: one function per obligation of the trait's doc, and
//! [`check_tier`] running them all. Every tier runs it: the host tier in this crate's
//! tests everywhere, the device and pinned tiers on a GPU machine. A new tier (in another
//! crate) should run it too. Failures panic with the obligation's number.

use std::thread;

use bytes::Bytes;

use crate::error::GpuError;
use crate::host::HostTier;
use crate::tier::{Location, Tier};

/// Lengths that cover empty, one byte, an odd size and more than a page.
const LENGTHS_BYTES: [usize; 4] = [0, 1, 4_099, (1 << 20) + 3];

/// Runs every check against `tier`.
pub fn check_tier(tier: &dyn Tier) {
    alloc_is_zeroed_and_sized(tier);
    allocations_do_not_overlap(tier);
    upload_round_trips(tier);
    copy_from_host_round_trips_in_place(tier);
    copy_from_host_checks_length(tier);
    foreign_blocks_are_refused(tier);
    concurrent_uploads_round_trip(tier);
}

fn pattern(len_bytes: usize, seed: u8) -> Bytes {
    (0..len_bytes)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Obligations 1 and 2: location, length, zero fill; an empty block has address 0.
pub fn alloc_is_zeroed_and_sized(tier: &dyn Tier) {
    for len_bytes in LENGTHS_BYTES {
        let block = tier.alloc(len_bytes).expect("alloc");
        assert_eq!(block.location(), tier.location(), "1: location");
        assert_eq!(block.len_bytes(), len_bytes, "1: length");
        assert_eq!(
            block.address() == 0,
            len_bytes == 0,
            "1: address 0 iff empty"
        );
        let host = tier.copy_to_host(&block).expect("copy_to_host");
        assert_eq!(host.len(), len_bytes, "4: length back");
        assert!(host.iter().all(|byte| *byte == 0), "2: zero-filled");
    }
}

/// Obligation 2: live blocks from `alloc` do not overlap.
pub fn allocations_do_not_overlap(tier: &dyn Tier) {
    let blocks: Vec<_> = (0..8).map(|_| tier.alloc(4_096).expect("alloc")).collect();
    for (index, first) in blocks.iter().enumerate() {
        for second in &blocks[index + 1..] {
            let disjoint = first.address() + first.len_bytes() as u64 <= second.address()
                || second.address() + second.len_bytes() as u64 <= first.address();
            assert!(disjoint, "2: {first:?} overlaps {second:?}");
        }
    }
}

/// Obligations 1, 3 and 4: an upload holds exactly the source; a sharing tier's block is
/// the source's own buffer.
pub fn upload_round_trips(tier: &dyn Tier) {
    for len_bytes in LENGTHS_BYTES {
        let source = pattern(len_bytes, 7);
        let block = tier.upload(&source).expect("upload");
        assert_eq!(block.location(), tier.location(), "1: location");
        assert_eq!(block.len_bytes(), len_bytes, "1: length");
        assert_eq!(
            tier.copy_to_host(&block).expect("copy_to_host"),
            source,
            "3/4: bytes"
        );
        if !tier.copies_host_bytes() && len_bytes > 0 {
            assert_eq!(
                block.address(),
                source.as_ptr() as u64,
                "3: shared, not copied"
            );
        }
    }
}

/// Obligations 1, 4 and 5: a block overwritten from the host reads back the same, at the
/// same address.
pub fn copy_from_host_round_trips_in_place(tier: &dyn Tier) {
    for len_bytes in LENGTHS_BYTES {
        let mut block = tier.alloc(len_bytes).expect("alloc");
        let address = block.address();
        for seed in [1, 2] {
            let source = pattern(len_bytes, seed);
            tier.copy_from_host(&source, &mut block)
                .expect("copy_from_host");
            assert_eq!(
                tier.copy_to_host(&block).expect("copy_to_host"),
                source,
                "4/5: bytes"
            );
            assert_eq!(block.address(), address, "1: address stable");
        }
    }
}

/// Obligation 5: a source of another length is refused; so is a write into a shared block.
pub fn copy_from_host_checks_length(tier: &dyn Tier) {
    let mut block = tier.alloc(16).expect("alloc");
    let refused = tier.copy_from_host(&[0u8; 15], &mut block);
    assert!(
        matches!(
            refused,
            Err(GpuError::LengthMismatch {
                block_len_bytes: 16,
                src_len_bytes: 15
            })
        ),
        "5: length mismatch refused, got {refused:?}"
    );
    let source = pattern(16, 3);
    let mut uploaded = tier.upload(&source).expect("upload");
    let overwrite = tier.copy_from_host(&[9u8; 16], &mut uploaded);
    if tier.copies_host_bytes() {
        overwrite.expect("5: an uploaded copy is writable");
    } else {
        assert!(
            matches!(overwrite, Err(GpuError::ReadOnlyBlock)),
            "5: shared block read-only"
        );
        assert_eq!(source, pattern(16, 3), "5: the shared source is untouched");
    }
}

/// Obligation 5: a block of another tier is refused.
pub fn foreign_blocks_are_refused(tier: &dyn Tier) {
    if tier.location() == Location::Host {
        return; // the only other tier this suite can build everywhere is the host tier
    }
    let mut foreign = HostTier::new().alloc(8).expect("host alloc");
    let refused = tier.copy_from_host(&[0u8; 8], &mut foreign);
    assert!(
        matches!(refused, Err(GpuError::ForeignBlock { .. })),
        "5: got {refused:?}"
    );
    let refused = tier.copy_to_host(&foreign);
    assert!(
        matches!(refused, Err(GpuError::ForeignBlock { .. })),
        "5: got {refused:?}"
    );
}

/// Obligations 6 and 7: uploads and reads from several threads at once; blocks dropped on
/// threads other than the one that made them.
pub fn concurrent_uploads_round_trip(tier: &dyn Tier) {
    let blocks = thread::scope(|scope| {
        let workers: Vec<_> = (0..4u8)
            .map(|seed| {
                scope.spawn(move || {
                    let source = pattern(65_536 + seed as usize, seed);
                    let block = tier.upload(&source).expect("upload");
                    assert_eq!(
                        tier.copy_to_host(&block).expect("copy_to_host"),
                        source,
                        "7"
                    );
                    block
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .collect::<Vec<_>>()
    });
    thread::spawn(move || drop(blocks))
        .join()
        .expect("6: drop on another thread");
}
