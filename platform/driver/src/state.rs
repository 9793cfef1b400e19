//! What a state transfer carries between drivers: the application's state of a shard and
//! the shard's log records the receiver lacks, so a member new to a shard (or back from a
//! total stop with a shorter log) ends with the same log as its source, not just the same
//! state. A later total restart compares logs, so they must be complete.
//!
//! The records follow `base`: the receiver keeps its own log up to it (the joiners' logs
//! held that much, and the source's log held that version) and replaces the rest; with
//! no base, the records are the whole log.
//!
//! It is a stream, so that neither a large application state (a checkpoint of a shard
//! whose log was compacted: the whole store) nor a log larger than memory need be held
//! whole at either end: the source writes a [`StateHeader`], the application's state
//! as chunks in the pieces the application supplies it, and then records chunk by chunk
//! as it reads its log; the receiver reads the application's bytes and the records as
//! parts arrive ([`StateReader`]), handing the bytes on and appending the records to its
//! log, and holds at most a record that spans parts. The stream ends where the
//! transfer's last part does.
//!
//! Layout (little-endian): `has_base: u8, [base: u64]`, then the application's state as
//! chunks `(len: u32 > 0, bytes)` ended by a `len` of 0, then records `(version: u64,
//! hlc_us: u64, len: u32, payload)` to the end. Decoding slices the received parts: no
//! application byte is copied, nor a payload unless it spans two parts.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_log::Record;
use thiserror::Error;

/// A record's bytes before its payload.
const RECORD_HEADER_BYTES: usize = 20;
/// An application chunk's length prefix.
const CHUNK_HEADER_BYTES: usize = 4;

/// The start of a state stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateHeader {
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
        match self.base {
            Some(base) => {
                out.put_u8(1);
                out.put_u64_le(base);
            }
            None => out.put_u8(0),
        }
    }
}

/// Appends a piece of the application's state to a state stream (nothing for an empty
/// one: a chunk of 0 bytes would end the state).
pub fn encode_app_bytes(bytes: &[u8], out: &mut BytesMut) {
    // A chunk's length is a u32: a larger piece goes as several chunks.
    for chunk in bytes.chunks(u32::MAX as usize) {
        out.reserve(CHUNK_HEADER_BYTES + chunk.len());
        out.put_u32_le(chunk.len() as u32);
        out.put_slice(chunk);
    }
}

/// Ends the application's state in a state stream; records follow.
pub fn encode_app_end(out: &mut BytesMut) {
    out.put_u32_le(0);
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

/// Where a [`StateReader`] is in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Header,
    /// Inside the application's state, with this much of the current chunk left (0:
    /// a chunk length comes next).
    App {
        chunk_left: usize,
    },
    Records,
}

/// Reads a state stream part by part.
#[derive(Debug)]
pub struct StateReader {
    /// Parts received and not yet read, in order.
    parts: VecDeque<Bytes>,
    buffered: usize,
    section: Section,
    header: Option<StateHeader>,
    /// A record longer than this is refused (it could never have been logged).
    record_bytes_max: usize,
}

impl StateReader {
    pub fn new(record_bytes_max: usize) -> StateReader {
        StateReader {
            parts: VecDeque::new(),
            buffered: 0,
            section: Section::Header,
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
    pub fn header(&mut self) -> Result<Option<StateHeader>, StateError> {
        if self.section == Section::Header {
            let Some(flag) = self.byte_at(0) else {
                return Ok(None);
            };
            let len = match flag {
                0 => 1,
                1 => 9,
                flag => return Err(StateError::BadBaseFlag(flag)),
            };
            let Some(mut bytes) = self.take(len) else {
                return Ok(None);
            };
            bytes.advance(1);
            let base = (flag == 1).then(|| bytes.get_u64_le());
            self.header = Some(StateHeader { base });
            self.section = Section::App { chunk_left: 0 };
        }
        Ok(self.header)
    }

    /// The application's bytes received so far (after the header), taken out as slices
    /// of the parts they came in; and whether its state ended.
    pub fn app_bytes(&mut self) -> (Vec<Bytes>, bool) {
        let mut bytes = Vec::new();
        loop {
            match self.section {
                Section::Header => return (bytes, false),
                Section::Records => return (bytes, true),
                Section::App { chunk_left: 0 } => {
                    let Some(mut len) = self.take(CHUNK_HEADER_BYTES) else {
                        return (bytes, false);
                    };
                    self.section = match len.get_u32_le() as usize {
                        0 => Section::Records,
                        len => Section::App { chunk_left: len },
                    };
                }
                Section::App { chunk_left } => {
                    let Some(first) = self.parts.front_mut() else {
                        return (bytes, false);
                    };
                    let n = chunk_left.min(first.len());
                    bytes.push(first.split_to(n));
                    if first.is_empty() {
                        self.parts.pop_front();
                    }
                    self.buffered -= n;
                    self.section = Section::App {
                        chunk_left: chunk_left - n,
                    };
                }
            }
        }
    }

    /// The whole records received so far (after the application's state), taken out.
    pub fn records(&mut self) -> Result<Vec<Record>, StateError> {
        let mut records = Vec::new();
        if self.section != Section::Records {
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

    /// The stream ended: an error unless it ended after the application's state and a
    /// whole record (call [`StateReader::app_bytes`] and [`StateReader::records`] first).
    pub fn finish(&mut self) -> Result<StateHeader, StateError> {
        let Some(header) = self.header else {
            return Err(StateError::Truncated { what: "the header" });
        };
        match self.section {
            Section::Records if self.buffered > 0 => {
                Err(StateError::Truncated { what: "a record" })
            }
            Section::Records => Ok(header),
            _ => Err(StateError::Truncated {
                what: "the application's state",
            }),
        }
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

    /// The application's state in pieces as an application might supply it: some empty.
    fn app_pieces() -> Vec<&'static [u8]> {
        vec![b"dig", b"", b"est", b"!"]
    }

    fn stream(base: Option<u64>, app: &[&[u8]]) -> Bytes {
        let mut out = BytesMut::new();
        StateHeader { base }.encode(&mut out);
        for piece in app {
            encode_app_bytes(piece, &mut out);
        }
        encode_app_end(&mut out);
        encode_records(&records(), &mut out);
        out.freeze()
    }

    /// What a receiver made of a stream.
    #[derive(Debug)]
    struct Read {
        header: StateHeader,
        app: Vec<u8>,
        records: Vec<Record>,
    }

    /// Reads `bytes` cut into parts of `part` bytes.
    fn read(bytes: &Bytes, part: usize) -> Result<Read, StateError> {
        let mut reader = StateReader::new(1 << 20);
        let mut app = Vec::new();
        let mut got = Vec::new();
        let mut from = 0;
        while from < bytes.len() {
            let to = (from + part).min(bytes.len());
            reader.push(bytes.slice(from..to));
            from = to;
            reader.header()?;
            let (chunks, _) = reader.app_bytes();
            for chunk in chunks {
                assert!(
                    !chunk.is_empty(),
                    "an empty slice of the state is handed on"
                );
                app.extend_from_slice(&chunk);
            }
            got.extend(reader.records()?);
        }
        Ok(Read {
            header: reader.finish()?,
            app,
            records: got,
        })
    }

    #[test]
    fn a_stream_reads_back_whatever_its_parts() {
        for base in [None, Some(99)] {
            for app in [app_pieces(), vec![]] {
                let bytes = stream(base, &app);
                for part in [1, 3, 7, 20, 21, 64, bytes.len()] {
                    let got = read(&bytes, part).expect("reads");
                    assert_eq!(got.app, app.concat(), "parts of {part}");
                    assert_eq!(got.header.base, base);
                    assert_eq!(got.records, records(), "parts of {part}");
                }
            }
        }
    }

    #[test]
    fn the_state_ends_before_any_record_is_read() {
        let bytes = stream(None, &app_pieces());
        let mut reader = StateReader::new(1 << 20);
        // Everything up to the state's last byte: the state has not ended yet, so no
        // record is read even though bytes follow.
        let end_of_state = 1 + 4 * 3 + 7;
        reader.push(bytes.slice(..end_of_state + 2));
        assert_eq!(reader.header(), Ok(Some(StateHeader { base: None })));
        let (chunks, ended) = reader.app_bytes();
        assert_eq!(chunks.concat(), b"digest!");
        assert!(!ended);
        assert_eq!(reader.records(), Ok(vec![]));
        reader.push(bytes.slice(end_of_state + 2..));
        let (chunks, ended) = reader.app_bytes();
        assert!(chunks.is_empty() && ended);
        assert_eq!(reader.records(), Ok(records()));
        assert_eq!(reader.finish(), Ok(StateHeader { base: None }));
    }

    #[test]
    fn neither_state_nor_records_inside_one_part_are_copied() {
        let bytes = stream(None, &[b"a state of some length"]);
        let mut reader = StateReader::new(1 << 20);
        reader.push(bytes.clone());
        reader.header().expect("header");
        let (chunks, ended) = reader.app_bytes();
        assert!(ended);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].as_ptr(), bytes[5..].as_ptr());
        let got = reader.records().expect("records");
        let last = got.last().expect("records");
        let offset = bytes.len() - last.payload.len();
        assert_eq!(last.payload.as_ptr(), bytes[offset..].as_ptr());
    }

    #[test]
    fn damage_is_refused() {
        let bytes = stream(Some(99), &app_pieces());
        let mut bad_flag = BytesMut::from(&bytes[..]);
        bad_flag[0] = 2;
        assert_eq!(
            read(&bad_flag.freeze(), 5).map(drop),
            Err(StateError::BadBaseFlag(2))
        );
        for (cut, what) in [
            (0, "the header"),
            (5, "the header"),
            (12, "the application's state"),
            (9 + 4 * 4, "the application's state"),
            (bytes.len() - 1, "a record"),
        ] {
            assert_eq!(
                read(&bytes.slice(..cut), 4).map(drop),
                Err(StateError::Truncated { what }),
                "cut at {cut}"
            );
        }
        // A record length beyond any record is refused before waiting for its bytes.
        let mut huge = BytesMut::new();
        StateHeader { base: None }.encode(&mut huge);
        encode_app_end(&mut huge);
        huge.put_u64_le(1);
        huge.put_u64_le(1);
        huge.put_u32_le(u32::MAX);
        assert!(matches!(
            read(&huge.freeze(), 8),
            Err(StateError::RecordTooLarge { .. })
        ));
    }
}
