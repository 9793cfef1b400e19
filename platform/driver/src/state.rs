//! What a state transfer carries between drivers: the application's state of a shard and
//! the shard's log records the receiver lacks, so a member new to a shard (or back from a
//! total stop with a shorter log) ends with the same log as its source, not just the same
//! state. A later total restart compares logs, so they must be complete.
//!
//! The records follow `base`: the receiver keeps its own log up to it (the joiners' logs
//! held that much, and the source's log held that version) and replaces the rest; with
//! no base, the records are the whole log.
//!
//! It is a stream, so that a log larger than memory can travel: the source writes a
//! [`StateHeader`] and then records chunk by chunk as it reads its log, and the receiver
//! reads records as parts arrive ([`StateReader`]) and appends them to its log, holding
//! at most a record that spans parts. The stream ends where the transfer's last part
//! does.
//!
//! Layout (little-endian): `app_len: u32, app, has_base: u8, [base: u64]`, then records
//! `(version: u64, hlc_us: u64, len: u32, payload)` to the end. Decoding slices the
//! received parts: no payload is copied unless it spans two parts.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_log::Record;
use thiserror::Error;

/// A record's bytes before its payload.
const RECORD_HEADER_BYTES: usize = 20;

/// The start of a state stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateHeader {
    pub app: Bytes,
    pub base: Option<u64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    #[error("state transfer ends inside {what}")]
    Truncated { what: &'static str },
    #[error("state transfer base flag {0} (0 or 1)")]
    BadBaseFlag(u8),
    #[error("state transfer record of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge { len: usize, max: usize },
}

impl StateHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(13 + self.app.len());
        out.put_u32_le(self.app.len() as u32);
        out.put_slice(&self.app);
        match self.base {
            Some(base) => {
                out.put_u8(1);
                out.put_u64_le(base);
            }
            None => out.put_u8(0),
        }
    }
}

/// Appends `records` to a state stream.
pub fn encode_records(records: &[Record], out: &mut BytesMut) {
    let payload_bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    out.reserve(RECORD_HEADER_BYTES * records.len() + payload_bytes);
    for r in records {
        out.put_u64_le(r.version);
        out.put_u64_le(r.hlc_us);
        out.put_u32_le(r.payload.len() as u32);
        out.put_slice(&r.payload);
    }
}

/// Reads a state stream part by part.
#[derive(Debug)]
pub struct StateReader {
    /// Parts received and not yet read, in order.
    parts: VecDeque<Bytes>,
    buffered: usize,
    header: Option<StateHeader>,
    /// A record longer than this is refused (it could never have been logged).
    record_bytes_max: usize,
}

impl StateReader {
    pub fn new(record_bytes_max: usize) -> StateReader {
        StateReader {
            parts: VecDeque::new(),
            buffered: 0,
            header: None,
            record_bytes_max,
        }
    }

    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.buffered += part.len();
            self.parts.push_back(part);
        }
    }

    /// The header, once enough has arrived; it is read at most once.
    pub fn header(&mut self) -> Result<Option<&StateHeader>, StateError> {
        if self.header.is_none() {
            let Some(app_len) = self.peek(4).map(|mut b| b.get_u32_le() as usize) else {
                return Ok(None);
            };
            let Some(flag) = self.byte_at(4 + app_len) else {
                return Ok(None);
            };
            let len = match flag {
                0 => 4 + app_len + 1,
                1 => 4 + app_len + 9,
                flag => return Err(StateError::BadBaseFlag(flag)),
            };
            let Some(mut bytes) = self.take(len) else {
                return Ok(None);
            };
            bytes.advance(4);
            let app = bytes.split_to(app_len);
            bytes.advance(1);
            let base = (flag == 1).then(|| bytes.get_u64_le());
            self.header = Some(StateHeader { app, base });
        }
        Ok(self.header.as_ref())
    }

    /// The whole records received so far (after the header), taken out.
    pub fn records(&mut self) -> Result<Vec<Record>, StateError> {
        let mut records = Vec::new();
        if self.header.is_none() {
            return Ok(records);
        }
        while let Some(head) = self.peek(RECORD_HEADER_BYTES) {
            let len = (&head[16..20]).get_u32_le() as usize;
            if len > self.record_bytes_max {
                return Err(StateError::RecordTooLarge {
                    len,
                    max: self.record_bytes_max,
                });
            }
            let Some(mut bytes) = self.take(RECORD_HEADER_BYTES + len) else {
                break;
            };
            let version = bytes.get_u64_le();
            let hlc_us = bytes.get_u64_le();
            bytes.advance(4);
            records.push(Record {
                version,
                hlc_us,
                payload: bytes,
            });
        }
        Ok(records)
    }

    /// The stream ended: an error unless it ended after the header and a whole record.
    pub fn finish(&mut self) -> Result<StateHeader, StateError> {
        let Some(header) = self.header.take() else {
            return Err(StateError::Truncated { what: "the header" });
        };
        if self.buffered > 0 {
            return Err(StateError::Truncated { what: "a record" });
        }
        Ok(header)
    }

    /// The first `n` bytes, if there are that many: a slice of the first part when it
    /// holds them, else a copy.
    fn peek(&self, n: usize) -> Option<Bytes> {
        if self.buffered < n {
            return None;
        }
        let first = self.parts.front()?;
        if first.len() >= n {
            return Some(first.slice(..n));
        }
        let mut out = BytesMut::with_capacity(n);
        for part in &self.parts {
            let want = (n - out.len()).min(part.len());
            out.put_slice(&part[..want]);
            if out.len() == n {
                break;
            }
        }
        Some(out.freeze())
    }

    fn byte_at(&self, mut i: usize) -> Option<u8> {
        for part in &self.parts {
            if i < part.len() {
                return Some(part[i]);
            }
            i -= part.len();
        }
        None
    }

    /// Takes the first `n` bytes out, as [`StateReader::peek`] gives them.
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let bytes = self.peek(n)?;
        let mut left = n;
        while left > 0 {
            let Some(first) = self.parts.front_mut() else {
                break;
            };
            if first.len() > left {
                first.advance(left);
                left = 0;
            } else {
                left -= first.len();
                self.parts.pop_front();
            }
        }
        self.buffered -= n;
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        (0..5)
            .map(|i| Record {
                version: 100 + i,
                hlc_us: 7 * i,
                payload: Bytes::from(vec![i as u8; i as usize * 10]),
            })
            .collect()
    }

    fn stream(base: Option<u64>) -> Bytes {
        let mut out = BytesMut::new();
        StateHeader {
            app: Bytes::from_static(b"digest"),
            base,
        }
        .encode(&mut out);
        encode_records(&records(), &mut out);
        out.freeze()
    }

    /// Reads `bytes` cut into parts of `part` bytes.
    fn read(bytes: &Bytes, part: usize) -> Result<(StateHeader, Vec<Record>), StateError> {
        let mut reader = StateReader::new(1 << 20);
        let mut got = Vec::new();
        let mut from = 0;
        while from < bytes.len() {
            let to = (from + part).min(bytes.len());
            reader.push(bytes.slice(from..to));
            from = to;
            reader.header()?;
            got.extend(reader.records()?);
        }
        Ok((reader.finish()?, got))
    }

    #[test]
    fn a_stream_reads_back_whatever_its_parts() {
        for base in [None, Some(99)] {
            let bytes = stream(base);
            for part in [1, 3, 7, 20, 21, 64, bytes.len()] {
                let (header, got) = read(&bytes, part).expect("reads");
                assert_eq!(header.app, Bytes::from_static(b"digest"));
                assert_eq!(header.base, base);
                assert_eq!(got, records(), "parts of {part}");
            }
        }
    }

    #[test]
    fn records_inside_one_part_are_not_copied() {
        let bytes = stream(None);
        let mut reader = StateReader::new(1 << 20);
        reader.push(bytes.clone());
        reader.header().expect("header");
        let got = reader.records().expect("records");
        let last = got.last().expect("records");
        let offset = bytes.len() - last.payload.len();
        assert_eq!(last.payload.as_ptr(), bytes[offset..].as_ptr());
    }

    #[test]
    fn damage_is_refused() {
        let bytes = stream(Some(99));
        let mut bad_flag = BytesMut::from(&bytes[..]);
        bad_flag[4 + 6] = 2;
        assert_eq!(
            read(&bad_flag.freeze(), 5).map(drop),
            Err(StateError::BadBaseFlag(2))
        );
        for cut in [0, 3, 9, bytes.len() - 1] {
            assert!(matches!(
                read(&bytes.slice(..cut), 4),
                Err(StateError::Truncated { .. })
            ));
        }
        // A record length beyond any record is refused before waiting for its bytes.
        let mut huge = BytesMut::new();
        StateHeader {
            app: Bytes::new(),
            base: None,
        }
        .encode(&mut huge);
        huge.put_u64_le(1);
        huge.put_u64_le(1);
        huge.put_u32_le(u32::MAX);
        assert!(matches!(
            read(&huge.freeze(), 8),
            Err(StateError::RecordTooLarge { .. })
        ));
    }
}
