//! What a state transfer carries between drivers: the application's state of a shard and
//! the shard's log records the receiver lacks, so a member new to a shard (or back from a
//! total stop with a shorter log) ends with the same log as its source, not just the same
//! state. A later total restart compares logs, so they must be complete.
//!
//! The records follow `base`: the receiver keeps its own log up to it (the joiners' logs
//! held that much, and the source's log held that version) and replaces the rest; with
//! no base, the records are the whole log.
//!
//! Layout (little-endian): `app_len: u32, app, has_base: u8, [base: u64], count: u32,
//! count × (version: u64, hlc_us: u64, len: u32, payload)`. Decoding slices the received
//! buffer: no payload is copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_log::Record;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEnvelope {
    pub app: Bytes,
    pub base: Option<u64>,
    pub records: Vec<Record>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    #[error("state transfer ends inside {what}")]
    Truncated { what: &'static str },
    #[error("state transfer has {0} bytes after its last record")]
    Trailing(usize),
    #[error("state transfer base flag {0} (0 or 1)")]
    BadBaseFlag(u8),
}

impl StateEnvelope {
    pub fn encode(&self) -> Bytes {
        let payload_bytes: usize = self.records.iter().map(|r| r.payload.len()).sum();
        let mut out =
            BytesMut::with_capacity(17 + self.app.len() + 20 * self.records.len() + payload_bytes);
        out.put_u32_le(self.app.len() as u32);
        out.put_slice(&self.app);
        match self.base {
            Some(base) => {
                out.put_u8(1);
                out.put_u64_le(base);
            }
            None => out.put_u8(0),
        }
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
        need(&buf, 1, "the base flag")?;
        let base = match buf.get_u8() {
            0 => None,
            1 => {
                need(&buf, 8, "the base")?;
                Some(buf.get_u64_le())
            }
            flag => return Err(StateError::BadBaseFlag(flag)),
        };
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
        Ok(StateEnvelope { app, base, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let envelope = StateEnvelope {
            app: Bytes::from_static(b"digest"),
            base: Some(99),
            records: (0..3)
                .map(|i| Record {
                    version: 100 + i,
                    hlc_us: 7 * i,
                    payload: Bytes::from(vec![i as u8; i as usize * 10]),
                })
                .collect(),
        };
        let whole = StateEnvelope {
            base: None,
            ..envelope.clone()
        };
        assert_eq!(StateEnvelope::decode(whole.encode()), Ok(whole));
        let bytes = envelope.encode();
        assert_eq!(StateEnvelope::decode(bytes.clone()), Ok(envelope));
        let mut bad_flag = BytesMut::from(&bytes[..]);
        bad_flag[4 + 6] = 2;
        assert_eq!(
            StateEnvelope::decode(bad_flag.freeze()),
            Err(StateError::BadBaseFlag(2))
        );
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
        huge.put_u8(0);
        huge.put_u32_le(u32::MAX);
        assert!(matches!(
            StateEnvelope::decode(huge.freeze()),
            Err(StateError::Truncated {
                what: "the records"
            })
        ));
    }
}
