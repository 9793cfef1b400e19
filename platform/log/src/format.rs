//! The record format shared by segment files and `meta.log`.
//!
//! ```text
//! offset  size  field
//!      0     4  magic    (SEGMENT_MAGIC or META_MAGIC)
//!      4     4  length   payload bytes
//!      8     8  version  (meta.log: sequence number from 1)
//!     16     8  hlc_us   (meta.log: kind)
//!     24     4  crc32c   over bytes 4..24 of the header, then the payload
//!     28     …  payload
//! ```
//! All integers are little-endian. The magic is outside the CRC: it exists to reject
//! zero-filled or foreign bytes cheaply, while the CRC vouches for everything the reader
//! uses.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::LogError;

/// Bytes of the fixed header in front of every payload.
pub const HEADER_BYTES: usize = 28;

/// Magic of a shard record: "SQLR" when the file is viewed as bytes.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"SQLR");

/// Magic of a `meta.log` record: "SQLM". Distinct from shard records so that a file
/// copied into the wrong place is rejected rather than misread.
pub const META_MAGIC: u32 = u32::from_le_bytes(*b"SQLM");

/// The largest payload length the format accepts. A header claiming more is treated as
/// damage. It is a property of the format, not of the configuration, so that lowering
/// `record_bytes_max` never turns existing records into "torn tails".
pub const RECORD_BYTES_MAX_FORMAT: usize = 1 << 30;

/// Sequential reads during recovery go through a buffer this large.
const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// A decoded, not yet CRC-checked, header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub length: u32,
    pub version: u64,
    pub hlc_us: u64,
    pub crc: u32,
}

impl Header {
    /// Header plus payload.
    pub(crate) fn record_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.length)
    }
}

/// Why bytes at some offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Defect {
    ShortHeader,
    BadMagic,
    ImpossibleLength,
    ShortPayload,
    BadCrc,
}

impl Defect {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Defect::ShortHeader => "incomplete record header",
            Defect::BadMagic => "bad magic",
            Defect::ImpossibleLength => "payload length beyond the format's limit",
            Defect::ShortPayload => "incomplete payload",
            Defect::BadCrc => "CRC mismatch",
        }
    }
}

/// Encode one record into `out` (cleared first), ready for a single write.
pub(crate) fn encode(magic: u32, version: u64, hlc_us: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    encode_after(magic, version, hlc_us, payload, out);
}

/// Like [`encode`], after what `out` holds already: records written with one write.
pub(crate) fn encode_after(
    magic: u32,
    version: u64,
    hlc_us: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    // Callers enforce record_bytes_max <= RECORD_BYTES_MAX_FORMAT < u32::MAX.
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let start = out.len();
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&hlc_us.to_le_bytes());
    let crc = checksum(&out[start + 4..start + 24], payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// CRC32C over the header's (length, version, hlc_us) bytes, then the payload.
fn checksum(fields: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(fields), payload)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decode a header, checking what can be checked without the payload.
pub(crate) fn parse_header(buf: &[u8; HEADER_BYTES], magic: u32) -> Result<Header, Defect> {
    if le_u32(buf, 0) != magic {
        return Err(Defect::BadMagic);
    }
    let header = Header {
        length: le_u32(buf, 4),
        version: le_u64(buf, 8),
        hlc_us: le_u64(buf, 16),
        crc: le_u32(buf, 24),
    };
    if header.length as usize > RECORD_BYTES_MAX_FORMAT {
        return Err(Defect::ImpossibleLength);
    }
    Ok(header)
}

/// Decode and fully verify the record at the start of `buf`. Returns the header; the
/// payload is `buf[HEADER_BYTES..HEADER_BYTES + length]`.
pub(crate) fn decode(buf: &[u8], magic: u32) -> Result<Header, Defect> {
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
        return Err(Defect::ShortHeader);
    };
    let header = parse_header(head, magic)?;
    let end = HEADER_BYTES + header.length as usize;
    let Some(payload) = buf.get(HEADER_BYTES..end) else {
        return Err(Defect::ShortPayload);
    };
    if checksum(&head[4..24], payload) != header.crc {
        return Err(Defect::BadCrc);
    }
    Ok(header)
}

/// How a scan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte of the file belongs to a valid record.
    Clean,
    /// The bytes from `offset` on are not a valid record.
    Defect { offset: u64, defect: Defect },
}

/// Read `file` (of `file_len` bytes) from the start, calling `visit(offset, header,
/// payload)` for each valid record, until the end or the first defect.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    file_len: u64,
    magic: u32,
    mut visit: impl FnMut(u64, &Header, &[u8]) -> Result<(), LogError>,
) -> Result<ScanEnd, LogError> {
    let io_err = |source: io::Error| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    let mut head = [0u8; HEADER_BYTES];
    let mut payload = Vec::new();
    let mut offset = 0u64;
    loop {
        let left = file_len - offset;
        if left == 0 {
            return Ok(ScanEnd::Clean);
        }
        let defect = |defect| Ok(ScanEnd::Defect { offset, defect });
        if left < HEADER_BYTES as u64 {
            return defect(Defect::ShortHeader);
        }
        reader.read_exact(&mut head).map_err(io_err)?;
        let header = match parse_header(&head, magic) {
            Ok(header) => header,
            Err(d) => return defect(d),
        };
        if header.record_bytes() > left {
            return defect(Defect::ShortPayload);
        }
        payload.resize(header.length as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err)?;
        if checksum(&head[4..24], &payload) != header.crc {
            return defect(Defect::BadCrc);
        }
        visit(offset, &header, &payload)?;
        offset += header.record_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut buf = Vec::new();
        encode(SEGMENT_MAGIC, 7, 99, b"hello", &mut buf);
        assert_eq!(buf.len(), HEADER_BYTES + 5);
        assert_eq!(&buf[..4], b"SQLR");
        let header = decode(&buf, SEGMENT_MAGIC).expect("valid record");
        assert_eq!((header.length, header.version, header.hlc_us), (5, 7, 99));
        assert_eq!(&buf[HEADER_BYTES..], b"hello");
    }

    #[test]
    fn decode_finds_each_defect() {
        let mut buf = Vec::new();
        encode(SEGMENT_MAGIC, 7, 99, b"hello", &mut buf);
        assert_eq!(decode(&buf, META_MAGIC), Err(Defect::BadMagic));
        assert_eq!(decode(&buf[..10], SEGMENT_MAGIC), Err(Defect::ShortHeader));
        assert_eq!(
            decode(&buf[..buf.len() - 1], SEGMENT_MAGIC),
            Err(Defect::ShortPayload)
        );
        for at in [4, 8, 16, 24, HEADER_BYTES + 2] {
            let mut bad = buf.clone();
            bad[at] ^= 0x01;
            let got = decode(&bad, SEGMENT_MAGIC);
            // Flipping the length may also make the payload look short.
            assert!(
                got == Err(Defect::BadCrc) || got == Err(Defect::ShortPayload),
                "flip at {at}: {got:?}"
            );
        }
        let mut huge = buf.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge, SEGMENT_MAGIC), Err(Defect::ImpossibleLength));
    }
}
