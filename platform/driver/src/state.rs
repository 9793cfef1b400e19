//! What a state transfer carries between drivers: the application's state of a shard and
//! the shard's log records the receiver lacks, so a member new to a shard (or back from a
//! total stop with a shorter log) ends with the same log as its source, not just the same
//! state. A later total restart compares logs, so they must be complete.
//!
//! Layout (little-endian): `app_len: u32, app, count: u32, count × (version: u64,
//! hlc_us: u64, len: u32, payload)`. Decoding slices the received buffer: no payload is
//! copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_log::Record;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEnvelope {
    pub app: Bytes,
    pub records: Vec<Record>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    #[error("state transfer ends inside {what}")]
    Truncated { what: &'static str },
    #[error("state transfer has {0} bytes after its last record")]
    Trailing(usize),
}

impl StateEnvelope {
    pub fn encode(&self) -> Bytes {
        let payload_bytes: usize = self.records.iter().map(|r| r.payload.len()).sum();
        let mut out =
            BytesMut::with_capacity(8 + self.app.len() + 20 * self.records.len() + payload_bytes);
        out.put_u32_le(self.app.len() as u32);
        out.put_slice(&self.app);
        out.put_u32_le(self.records.len() as u32);
        for r in &self.records {
            out.put_u64_le(r.version);
            out.put_u64_le(r.hlc_us);
            out.put_u32_le(r.payload.len() as u32);
            out.put_slice(&r.payload);
        }
        out.freeze()
    }

    pub fn decode(mut buf: Bytes) -> Result<StateEnvelope, StateError> {
        fn need(buf: &Bytes, n: usize, what: &'static str) -> Result<(), StateError> {
            if buf.remaining() < n {
                return Err(StateError::Truncated { what });
            }
            Ok(())
        }
        need(&buf, 4, "the application state length")?;
        let app_len = buf.get_u32_le() as usize;
        need(&buf, app_len, "the application state")?;
        let app = buf.split_to(app_len);
        need(&buf, 4, "the record count")?;
        let count = buf.get_u32_le() as usize;
        // Each record takes at least 20 bytes: a count the buffer cannot hold is refused
        // before anything is allocated for it.
        need(&buf, count.saturating_mul(20), "the records")?;
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            need(&buf, 20, "a record header")?;
            let version = buf.get_u64_le();
            let hlc_us = buf.get_u64_le();
            let len = buf.get_u32_le() as usize;
            need(&buf, len, "a record payload")?;
            records.push(Record {
                version,
                hlc_us,
                payload: buf.split_to(len),
            });
        }
        if buf.has_remaining() {
            return Err(StateError::Trailing(buf.remaining()));
        }
        Ok(StateEnvelope { app, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let envelope = StateEnvelope {
            app: Bytes::from_static(b"digest"),
            records: (0..3)
                .map(|i| Record {
                    version: 100 + i,
                    hlc_us: 7 * i,
                    payload: Bytes::from(vec![i as u8; i as usize * 10]),
                })
                .collect(),
        };
        let bytes = envelope.encode();
        assert_eq!(StateEnvelope::decode(bytes.clone()), Ok(envelope));
        for cut in [0, 3, 9, bytes.len() - 1] {
            assert!(matches!(
                StateEnvelope::decode(bytes.slice(..cut)),
                Err(StateError::Truncated { .. })
            ));
        }
        let mut longer = BytesMut::from(&bytes[..]);
        longer.put_u8(0);
        assert_eq!(
            StateEnvelope::decode(longer.freeze()),
            Err(StateError::Trailing(1))
        );
        // A record count far beyond the buffer is refused without allocating for it.
        let mut huge = BytesMut::new();
        huge.put_u32_le(0);
        huge.put_u32_le(u32::MAX);
        assert!(matches!(
            StateEnvelope::decode(huge.freeze()),
            Err(StateError::Truncated {
                what: "the records"
            })
        ));
    }
}
