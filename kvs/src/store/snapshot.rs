//! A volatile store travels to a joining replica as a snapshot, since no log carries
//! it. The snapshot streams: [`SnapshotStream`] takes the store's state at one point (its
//! metadata; blobs are shared, not copied) and encodes it a piece at a time as the
//! transfer asks, and [`SnapshotLoader`] rebuilds the store from the pieces as they
//! arrive. Neither side holds a second copy of the store's bytes, only the pieces in
//! flight.
//!
//! Format: frames of `u32 length | body`, little-endian. The first frame is the header
//! (last version, last delivered, last timestamp, key count, client count, the pools'
//! horizons, then the removed pools' dropped generations: a section snapshots written
//! before generations lack, read as none), then one
//! frame per key (sorted), then one per client's retry memory (sorted). Pieces may be cut
//! anywhere, so a frame may span pieces.
//!
//! A loaded blob is a slice of the piece it came in only when it is at least half that
//! piece ([`SnapshotLoader::push`]); a smaller one is copied out. A shared slice keeps its
//! whole piece (up to a 16 MiB transfer part) alive for as long as the blob lives, so one
//! small object left after its neighbours were overwritten would pin sixteen megabytes;
//! with the rule a piece is kept by at most two blobs that together fill it, so the store
//! never holds more than twice its live bytes. The copy is one `memcpy` per small blob,
//! against the network's cost of bringing it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_platform::Version;

use super::{
    ClientWindow, Horizon, KeyEntry, MessageId, Object, OpError, ShardStore, StoreKind,
    StoreLimits, VersionMeta, get_count, get_outcome, get_str, get_u8, get_u64, get_version, need,
    put_outcome, put_str, put_version,
};

/// What one frame may hold beyond the largest object: the key, the object's metadata,
/// its list of versions, or one client's retry memory.
const FRAME_SLACK_BYTES: usize = 16 << 20;

/// Bytes of a frame's length prefix.
const LENGTH_BYTES: usize = 4;

/// A store's state as of [`ShardStore::snapshot_stream`], encoded on demand.
#[derive(Debug)]
pub struct SnapshotStream {
    header: Option<Bytes>,
    keys: std::vec::IntoIter<(Arc<str>, KeyEntry)>,
    clients: std::vec::IntoIter<(u64, ClientWindow)>,
}

impl SnapshotStream {
    pub(super) fn new(store: &ShardStore) -> SnapshotStream {
        let mut keys: Vec<(Arc<str>, KeyEntry)> = store
            .keys
            .iter()
            .map(|(k, e)| (Arc::clone(k), e.clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut clients: Vec<(u64, ClientWindow)> =
            store.dedup.iter().map(|(c, w)| (*c, w.clone())).collect();
        clients.sort_by_key(|(c, _)| *c);
        let mut header = BytesMut::new();
        frame(&mut header, |out| {
            put_version(out, store.last_version);
            put_version(out, store.last_delivered);
            out.put_u64_le(store.last_timestamp_us);
            out.put_u32_le(keys.len() as u32);
            out.put_u32_le(clients.len() as u32);
            out.put_u32_le(store.horizons.len() as u32);
            for h in &store.horizons {
                put_str(out, &h.pool);
                out.put_u64_le(h.through.0);
                out.put_u64_le(h.timestamp_us);
            }
            // Sorted, so equal stores give equal snapshots.
            let mut dropped: Vec<(&Arc<str>, &u64)> = store.dropped.iter().collect();
            dropped.sort();
            out.put_u32_le(dropped.len() as u32);
            for (path, generation) in dropped {
                put_str(out, path);
                out.put_u64_le(*generation);
            }
        });
        SnapshotStream {
            header: Some(header.freeze()),
            keys: keys.into_iter(),
            clients: clients.into_iter(),
        }
    }

    /// The next piece: whole frames until it holds at least `bytes_min` (or all that is
    /// left), and whether it is the last. Only the blobs it holds are copied.
    pub fn next_piece(&mut self, bytes_min: usize) -> (Bytes, bool) {
        let mut out = BytesMut::with_capacity(bytes_min.min(64 << 20).saturating_add(4096));
        if let Some(header) = self.header.take() {
            out.put_slice(&header);
        }
        while out.len() < bytes_min {
            if let Some((key, entry)) = self.keys.next() {
                frame(&mut out, |out| put_entry(out, &key, &entry));
            } else if let Some((client, window)) = self.clients.next() {
                frame(&mut out, |out| put_client(out, client, &window));
            } else {
                break;
            }
        }
        let last = self.keys.len() == 0 && self.clients.len() == 0;
        (out.freeze(), last)
    }
}

/// Rebuilds a store from a [`SnapshotStream`]'s pieces, applied as they arrive. Blobs
/// share the pieces' buffers, except for a frame that spans two pieces (copied once).
#[derive(Debug)]
pub struct SnapshotLoader {
    store: ShardStore,
    frames: FrameReader,
    /// `None` until the header is in.
    keys_left: Option<usize>,
    clients_left: usize,
    bytes_received: u64,
}

impl SnapshotLoader {
    pub fn new(kind: StoreKind, limits: StoreLimits) -> SnapshotLoader {
        let frame_bytes_max = limits.object_bytes_max.saturating_add(FRAME_SLACK_BYTES);
        SnapshotLoader {
            store: ShardStore::new(kind, limits),
            frames: FrameReader::new(frame_bytes_max),
            keys_left: None,
            clients_left: 0,
            bytes_received: 0,
        }
    }

    /// Take in the next piece. An error leaves the loader unusable.
    pub fn push(&mut self, piece: Bytes) -> Result<(), OpError> {
        self.bytes_received += piece.len() as u64;
        // Blobs under half the piece are copied out of it (see the module's doc).
        let share_bytes_min = piece.len().div_ceil(2).max(1);
        for frame in self.frames.push(piece)? {
            self.apply(frame, share_bytes_min)?;
        }
        Ok(())
    }

    /// Bytes taken in so far (none: the source had no store to send).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// The store, once every frame the header announced is in.
    pub fn finish(self) -> Result<ShardStore, OpError> {
        if self.keys_left != Some(0) || self.clients_left != 0 || self.frames.partial() {
            return Err(OpError::Truncated { what: "snapshot" });
        }
        let mut store = self.store;
        // Its changes before now are not here: a watch resuming before gets each key's
        // latest.
        store.recent.complete_after = store.last_version;
        Ok(store)
    }

    fn apply(&mut self, mut frame: Bytes, share_bytes_min: usize) -> Result<(), OpError> {
        let r = &mut frame;
        match self.keys_left {
            None => {
                self.store.last_version = get_version(r)?;
                self.store.last_delivered = get_version(r)?;
                self.store.last_timestamp_us = get_u64(r, "timestamp")?;
                need(r, 8, "snapshot header")?;
                self.keys_left = Some(r.get_u32_le() as usize);
                self.clients_left = r.get_u32_le() as usize;
                let n = get_count(r, "horizons", 18)?;
                for _ in 0..n {
                    self.store.horizons.push(Horizon {
                        pool: Arc::from(get_str(r, "pool")?),
                        through: Version(get_u64(r, "version")?),
                        timestamp_us: get_u64(r, "timestamp")?,
                    });
                }
                // Absent from snapshots written before pool generations.
                if r.has_remaining() {
                    let n = get_count(r, "dropped pools", 12)?;
                    if n > super::DROPPED_POOLS_MAX {
                        return Err(OpError::TooLong {
                            what: "dropped pool list",
                            len: n,
                            max: super::DROPPED_POOLS_MAX,
                        });
                    }
                    for _ in 0..n {
                        let path = Arc::from(get_str(r, "pool")?);
                        self.store
                            .dropped
                            .insert(path, get_u64(r, "pool generation")?);
                    }
                }
            }
            Some(n) if n > 0 => {
                let (key, entry) = get_entry(r, share_bytes_min)?;
                self.store.keys.insert(key, entry);
                self.keys_left = Some(n - 1);
            }
            Some(_) if self.clients_left > 0 => {
                let (client, window) = get_client(r)?;
                if let Some(v) = window.last_active {
                    self.store.activity.insert(v, client);
                }
                self.store.dedup.insert(client, window);
                self.clients_left -= 1;
            }
            Some(_) => return Err(OpError::Trailing(frame.len() + LENGTH_BYTES)),
        }
        if frame.has_remaining() {
            return Err(OpError::Trailing(frame.remaining()));
        }
        Ok(())
    }
}

/// Cuts `u32 length | body` frames out of pieces that may split them anywhere.
#[derive(Debug)]
struct FrameReader {
    /// The start of a frame the pieces so far did not complete (copied).
    partial: BytesMut,
    frame_bytes_max: usize,
}

impl FrameReader {
    fn new(frame_bytes_max: usize) -> FrameReader {
        FrameReader {
            partial: BytesMut::new(),
            frame_bytes_max,
        }
    }

    fn partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// The frames `piece` completes, in order.
    fn push(&mut self, mut piece: Bytes) -> Result<VecDeque<Bytes>, OpError> {
        let mut frames = VecDeque::new();
        if !self.partial.is_empty() {
            // Copy only what the frame begun in an earlier piece still lacks.
            if self.partial.len() < LENGTH_BYTES {
                let take = (LENGTH_BYTES - self.partial.len()).min(piece.len());
                self.partial.put_slice(&piece.split_to(take));
                if self.partial.len() < LENGTH_BYTES {
                    return Ok(frames);
                }
            }
            let len = self.length(&self.partial)?;
            let take = (LENGTH_BYTES + len - self.partial.len()).min(piece.len());
            self.partial.put_slice(&piece.split_to(take));
            if self.partial.len() < LENGTH_BYTES + len {
                return Ok(frames);
            }
            let mut whole = self.partial.split().freeze();
            whole.advance(LENGTH_BYTES);
            frames.push_back(whole);
        }
        while piece.len() >= LENGTH_BYTES {
            let len = self.length(&piece)?;
            if piece.len() < LENGTH_BYTES + len {
                break;
            }
            piece.advance(LENGTH_BYTES);
            frames.push_back(piece.split_to(len));
        }
        self.partial.put_slice(&piece);
        Ok(frames)
    }

    fn length(&self, at: &[u8]) -> Result<usize, OpError> {
        let mut prefix = [0u8; LENGTH_BYTES];
        prefix.copy_from_slice(&at[..LENGTH_BYTES]);
        let len = u32::from_le_bytes(prefix) as usize;
        if len > self.frame_bytes_max {
            return Err(OpError::TooLong {
                what: "snapshot frame",
                len,
                max: self.frame_bytes_max,
            });
        }
        Ok(len)
    }
}

/// Writes one frame: its length, then what `body` writes.
fn frame(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u32_le(0);
    body(out);
    let len = (out.len() - at - LENGTH_BYTES) as u32;
    out[at..at + LENGTH_BYTES].copy_from_slice(&len.to_le_bytes());
}

fn put_entry(out: &mut BytesMut, key: &str, e: &KeyEntry) {
    let o = &e.latest;
    put_str(out, key);
    out.put_u64_le(o.version.0);
    out.put_u64_le(o.timestamp_us);
    put_version(out, o.previous_version);
    put_version(out, o.previous_key_version);
    out.put_u64_le(o.message_id.client);
    out.put_u64_le(o.message_id.seq);
    out.put_u8(u8::from(o.tombstone));
    out.put_u32_le(o.blob.len() as u32);
    out.put_slice(&o.blob);
    out.put_u32_le((e.versions.len() + usize::from(e.history_from.is_some())) as u32);
    for m in e.versions.iter().chain(&e.history_from) {
        put_meta(out, m);
    }
    out.put_u8(u8::from(e.history_from.is_some()));
}

fn put_meta(out: &mut BytesMut, m: &VersionMeta) {
    out.put_u64_le(m.version.0);
    out.put_u64_le(m.timestamp_us);
    out.put_u64_le(m.size as u64);
    out.put_u8(u8::from(m.tombstone));
}

fn get_meta(r: &mut Bytes) -> Result<VersionMeta, OpError> {
    Ok(VersionMeta {
        version: Version(get_u64(r, "version")?),
        timestamp_us: get_u64(r, "timestamp")?,
        size: get_u64(r, "size")? as usize,
        tombstone: get_u8(r, "tombstone")? != 0,
    })
}

/// One key's frame; its blob shares `r`'s buffer if it is `share_bytes_min` or more, and
/// is copied out of it otherwise.
fn get_entry(r: &mut Bytes, share_bytes_min: usize) -> Result<(Arc<str>, KeyEntry), OpError> {
    let key: Arc<str> = Arc::from(get_str(r, "key")?);
    let version = Version(get_u64(r, "version")?);
    let timestamp_us = get_u64(r, "timestamp")?;
    let previous_version = get_version(r)?;
    let previous_key_version = get_version(r)?;
    let message_id = MessageId {
        client: get_u64(r, "message id")?,
        seq: get_u64(r, "message id")?,
    };
    let tombstone = get_u8(r, "tombstone")? != 0;
    let len = get_count(r, "blob", 1)?;
    let blob = if len >= share_bytes_min {
        r.split_to(len)
    } else {
        let blob = Bytes::copy_from_slice(&r[..len]);
        r.advance(len);
        blob
    };
    let n = get_count(r, "versions", 25)?;
    let mut versions = Vec::with_capacity(n);
    for _ in 0..n {
        versions.push(get_meta(r)?);
    }
    // The versions' count covers a trailing `history_from`, flagged after them.
    let history_from = match get_u8(r, "history flag")? {
        0 => None,
        1 => versions.pop(),
        tag => {
            return Err(OpError::UnknownTag {
                what: "history flag",
                tag,
            });
        }
    };
    let latest = Object {
        key: Arc::clone(&key),
        blob,
        version,
        timestamp_us,
        previous_version,
        previous_key_version,
        message_id,
        tombstone,
    };
    Ok((
        key,
        KeyEntry {
            versions,
            latest,
            history_from,
        },
    ))
}

fn put_client(out: &mut BytesMut, client: u64, w: &ClientWindow) {
    out.put_u64_le(client);
    put_version(out, w.last_active);
    out.put_u32_le(w.recent.len() as u32);
    for (seq, outcome) in &w.recent {
        out.put_u64_le(*seq);
        put_outcome(out, outcome);
    }
}

fn get_client(r: &mut Bytes) -> Result<(u64, ClientWindow), OpError> {
    let client = get_u64(r, "client")?;
    let last_active = get_version(r)?;
    let n = get_count(r, "requests", 9)?;
    let mut recent = VecDeque::with_capacity(n);
    for _ in 0..n {
        let seq = get_u64(r, "sequence")?;
        recent.push_back((seq, get_outcome(r)?));
    }
    Ok((
        client,
        ClientWindow {
            recent,
            last_active,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Condition, Op};

    fn store_with(keys: u32) -> ShardStore {
        let mut s = ShardStore::new(StoreKind::Volatile, StoreLimits::default());
        for i in 0..keys {
            let op = Op::Put {
                id: MessageId {
                    client: u64::from(i % 5),
                    seq: u64::from(i),
                },
                hlc_us: 1_000 + u64::from(i),
                condition: Condition::Always,
                pool_generation: 0,
                key: format!("/v/k{i:04}"),
                blob: Bytes::from(vec![i as u8; 1 + (i as usize * 37) % 500]),
            };
            s.apply(Version::new(1, i), &op);
        }
        s
    }

    /// Every piece of a stream asked for with `bytes_min`, recut into parts of `part`.
    fn parts(store: &ShardStore, bytes_min: usize, part: usize) -> Vec<Bytes> {
        let mut stream = store.snapshot_stream();
        let mut whole = BytesMut::new();
        let mut pieces = 0;
        loop {
            let (piece, last) = stream.next_piece(bytes_min);
            assert!(
                last || piece.len() >= bytes_min,
                "a short piece that is not last"
            );
            whole.put_slice(&piece);
            pieces += 1;
            if last {
                break;
            }
        }
        assert!(
            bytes_min >= whole.len() || pieces > 1,
            "one piece for {bytes_min}"
        );
        let whole = whole.freeze();
        (0..whole.len())
            .step_by(part)
            .map(|at| whole.slice(at..(at + part).min(whole.len())))
            .collect()
    }

    #[test]
    fn pieces_of_any_size_rebuild_the_same_store() {
        let store = store_with(200);
        let whole = store.snapshot();
        for bytes_min in [1, 100, 4_096, usize::MAX] {
            for part in [1, 3, 7, 64, 1_000, whole.len()] {
                let mut loader = SnapshotLoader::new(StoreKind::Volatile, StoreLimits::default());
                for p in parts(&store, bytes_min, part) {
                    loader.push(p).expect("a valid piece");
                }
                let back = loader.finish().expect("complete");
                assert_eq!(
                    back.snapshot(),
                    whole,
                    "pieces of {bytes_min}, parts of {part}"
                );
                assert_eq!(back.latest("/v/k0123"), store.latest("/v/k0123"));
            }
        }
    }

    /// A snapshot written before pool generations (its header ends after the horizons)
    /// loads, with no dropped generations.
    #[test]
    fn a_snapshot_without_dropped_generations_loads() {
        let store = store_with(3);
        let now = store.snapshot();
        let header = u32::from_le_bytes(now[..4].try_into().expect("4 bytes")) as usize;
        // The new header's last field is the (empty) dropped list's count.
        assert_eq!(now[4 + header - 4..4 + header], [0, 0, 0, 0]);
        let mut old = BytesMut::new();
        old.put_u32_le((header - 4) as u32);
        old.put_slice(&now[4..4 + header - 4]);
        old.put_slice(&now[4 + header..]);
        let back =
            ShardStore::from_snapshot(StoreKind::Volatile, StoreLimits::default(), old.freeze())
                .expect("loads");
        assert_eq!(back.snapshot(), now);
    }

    #[test]
    fn the_stream_keeps_the_state_it_was_taken_at() {
        let mut store = store_with(20);
        let before = store.snapshot();
        let mut stream = store.snapshot_stream();
        let op = Op::Put {
            id: MessageId { client: 9, seq: 1 },
            hlc_us: 5_000,
            condition: Condition::Always,
            pool_generation: 0,
            key: "/v/k0003".into(),
            blob: Bytes::from_static(b"later"),
        };
        store.apply(Version::new(2, 0), &op);
        let (piece, last) = stream.next_piece(usize::MAX);
        assert!(last);
        assert_eq!(piece, before);
        assert_ne!(store.snapshot(), before);
    }

    #[test]
    fn a_blob_shares_its_piece_only_if_it_fills_half_of_it() {
        let mut store = store_with(10);
        let big_blob = Bytes::from(vec![7u8; 20_000]);
        let op = Op::Put {
            id: MessageId { client: 9, seq: 1 },
            hlc_us: 5_000,
            condition: Condition::Always,
            pool_generation: 0,
            key: "/v/big".into(),
            blob: big_blob.clone(),
        };
        store.apply(Version::new(2, 0), &op);
        let whole = store.snapshot();
        assert!(whole.len() < 2 * 20_000, "the big blob fills over half");
        let mut loader = SnapshotLoader::new(StoreKind::Volatile, StoreLimits::default());
        loader.push(whole.clone()).expect("valid");
        let back = loader.finish().expect("complete");
        let range = whole.as_ptr_range();
        let big = back.latest("/v/big").expect("present").blob.clone();
        assert!(range.contains(&big.as_ptr()), "the big blob was copied");
        assert_eq!(big, big_blob);
        // A small blob would pin the whole piece: it is copied out.
        let small = back.latest("/v/k0007").expect("present").blob.clone();
        assert!(
            !range.contains(&small.as_ptr()),
            "a small blob pins the piece"
        );
        assert_eq!(small, store.latest("/v/k0007").expect("present").blob);
        // Cut into parts the big blob cannot fill half of, it is copied too.
        let mut loader = SnapshotLoader::new(StoreKind::Volatile, StoreLimits::default());
        let mut in_a_part = 0;
        for at in (0..whole.len()).step_by(4_096) {
            let part = whole.slice(at..(at + 4_096).min(whole.len()));
            loader.push(part).expect("valid");
            in_a_part += 1;
        }
        assert!(in_a_part > 4);
        let back = loader.finish().expect("complete");
        let big = back.latest("/v/big").expect("present").blob.clone();
        assert!(!whole.as_ptr_range().contains(&big.as_ptr()));
        assert_eq!(big, big_blob);
    }

    #[test]
    fn damage_is_refused() {
        let store = store_with(10);
        let whole = store.snapshot();
        let load = |bytes: Bytes| {
            let mut loader = SnapshotLoader::new(StoreKind::Volatile, StoreLimits::default());
            loader.push(bytes)?;
            loader.finish()
        };
        // Cut anywhere: incomplete.
        for cut in [0, 3, 4, 20, whole.len() - 1] {
            assert!(load(whole.slice(..cut)).is_err(), "cut at {cut}");
        }
        // A frame longer than any object may be.
        let mut huge = BytesMut::from(&whole[..]);
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            load(huge.freeze()),
            Err(OpError::TooLong {
                what: "snapshot frame",
                ..
            })
        ));
        // A frame after the announced ones.
        let mut more = BytesMut::from(&whole[..]);
        more.put_u32_le(1);
        more.put_u8(0);
        assert_eq!(load(more.freeze()).err(), Some(OpError::Trailing(5)));
    }
}
