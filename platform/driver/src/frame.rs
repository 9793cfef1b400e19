//! Frames on a TCP link between two nodes.
//!
//! ```text
//! frame   := length: u32 LE (bytes after this field) | kind: u8 | body
//! HELLO   := magic "SQWL" | protocol: u16 | cluster_id: u64 | node: u32 | incarnation: u32
//! MESSAGE := one codec-encoded `Wire` message
//! CHUNK   := more: u8 | total: u32 | bytes   (a message cut in pieces; `more = 0` ends
//!            it; `total` is the whole message's length, so the receiver reads every
//!            piece straight into one buffer of that size)
//! BEAT    := (empty)               (transport heartbeat)
//! ```
//!
//! A message larger than `chunk_bytes` travels as CHUNK frames. Between chunks go
//! heartbeats and the control lane (rows, membership traffic, as whole MESSAGE frames),
//! so a 16 MiB object never holds them behind it; data messages stay in order behind it.
//! The core accepts a row before the data it counts (it waits for that data).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_platform::codec::CODEC_VERSION;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: [u8; 4] = *b"SQWL";
const KIND_HELLO: u8 = 1;
const KIND_MESSAGE: u8 = 2;
const KIND_CHUNK: u8 = 3;
const KIND_BEAT: u8 = 4;
const HELLO_BYTES: usize = 4 + 2 + 8 + 4 + 4;

/// Who is at the other end, as it claims in its first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u16,
    pub cluster_id: u64,
    pub node: u32,
    pub incarnation: u32,
}

impl Hello {
    pub fn new(cluster_id: u64, node: u32, incarnation: u32) -> Self {
        Hello {
            protocol: CODEC_VERSION,
            cluster_id,
            node,
            incarnation,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Message(Bytes),
    Chunk {
        more: bool,
        total: u32,
        bytes: Bytes,
    },
    Beat,
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad hello: {0}")]
    BadHello(&'static str),
    #[error("bad chunk: {0}")]
    BadChunk(&'static str),
    #[error("message of {size} bytes exceeds the limit of {max}")]
    MessageTooLarge { size: usize, max: usize },
}

/// What the data path reads. Chunk bodies go straight into the message being reassembled.
#[derive(Debug)]
pub enum Incoming {
    Hello(Hello),
    Message(Bytes),
    /// A chunk arrived; the message is not complete yet.
    ChunkMore,
    /// The last chunk arrived: the whole message.
    ChunkDone(Bytes),
    Beat,
}

const CHUNK_HEADER_BYTES: usize = 1 + 4;

async fn read_len(
    r: &mut (impl AsyncRead + Unpin),
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    let len = r.read_u32_le().await? as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge {
            size: len,
            max: frame_bytes_max,
        });
    }
    Ok(len)
}

/// Appends exactly `n` bytes from `r` to `buf`, without zeroing memory first.
async fn read_exact_into(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    n: usize,
) -> std::io::Result<()> {
    buf.reserve(n);
    let target = buf.len() + n;
    while buf.len() < target {
        let want = target - buf.len();
        if r.read_buf(&mut (&mut *buf).limit(want)).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Reads one frame of the data path; a chunk's body is appended to `assembling`, which
/// is allocated once at the message's announced size (at most `message_bytes_max`).
pub async fn read_incoming(
    r: &mut (impl AsyncRead + Unpin),
    frame_bytes_max: usize,
    message_bytes_max: usize,
    assembling: &mut Option<BytesMut>,
) -> Result<Incoming, FrameError> {
    let len = read_len(r, frame_bytes_max).await?;
    let kind = r.read_u8().await?;
    if kind != KIND_CHUNK {
        let mut body = BytesMut::new();
        read_exact_into(r, &mut body, len - 1).await?;
        return Ok(match parse(kind, body.freeze())? {
            Frame::Hello(h) => Incoming::Hello(h),
            Frame::Message(m) => Incoming::Message(m),
            Frame::Beat => Incoming::Beat,
            Frame::Chunk { .. } => unreachable!("kind checked above"),
        });
    }
    let Some(n) = (len - 1).checked_sub(CHUNK_HEADER_BYTES) else {
        return Err(FrameError::BadChunk("short header"));
    };
    let more = match r.read_u8().await? {
        0 => false,
        1 => true,
        _ => return Err(FrameError::BadChunk("bad flag")),
    };
    let total = r.read_u32_le().await? as usize;
    if total > message_bytes_max {
        return Err(FrameError::MessageTooLarge {
            size: total,
            max: message_bytes_max,
        });
    }
    let buf = assembling.get_or_insert_with(|| BytesMut::with_capacity(total));
    if buf.capacity() < total || buf.len() + n > total {
        return Err(FrameError::BadChunk("pieces exceed the announced length"));
    }
    read_exact_into(r, buf, n).await?;
    if more {
        return Ok(Incoming::ChunkMore);
    }
    let whole = assembling.take().unwrap_or_default();
    if whole.len() != total {
        return Err(FrameError::BadChunk(
            "pieces fall short of the announced length",
        ));
    }
    Ok(Incoming::ChunkDone(whole.freeze()))
}

/// Writes the header of a MESSAGE frame whose body (`body_len` bytes) follows.
pub fn put_message_header(out: &mut BytesMut, body_len: usize) {
    out.put_u32_le(frame_len(1 + body_len));
    out.put_u8(KIND_MESSAGE);
}

/// Writes the header of a CHUNK frame whose piece (`piece_len` bytes) follows.
pub fn put_chunk_header(out: &mut BytesMut, more: bool, total: usize, piece_len: usize) {
    out.put_u32_le(frame_len(1 + CHUNK_HEADER_BYTES + piece_len));
    out.put_u8(KIND_CHUNK);
    out.put_u8(u8::from(more));
    out.put_u32_le(frame_len(total));
}

/// Reads one frame; refuses frames over `frame_bytes_max` before reading their body.
pub async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    frame_bytes_max: usize,
) -> Result<Frame, FrameError> {
    let len = read_len(r, frame_bytes_max).await?;
    let mut body = BytesMut::new();
    read_exact_into(r, &mut body, len).await?;
    let mut body = body.freeze();
    let kind = body.get_u8();
    parse(kind, body)
}

fn parse(kind: u8, mut body: Bytes) -> Result<Frame, FrameError> {
    match kind {
        KIND_HELLO => {
            if body.len() != HELLO_BYTES {
                return Err(FrameError::BadHello("wrong length"));
            }
            if body[..4] != MAGIC {
                return Err(FrameError::BadHello("wrong magic"));
            }
            body.advance(4);
            Ok(Frame::Hello(Hello {
                protocol: body.get_u16_le(),
                cluster_id: body.get_u64_le(),
                node: body.get_u32_le(),
                incarnation: body.get_u32_le(),
            }))
        }
        KIND_MESSAGE => Ok(Frame::Message(body)),
        KIND_CHUNK => {
            if body.len() < CHUNK_HEADER_BYTES {
                return Err(FrameError::BadChunk("short header"));
            }
            let more = match body.get_u8() {
                0 => false,
                1 => true,
                _ => return Err(FrameError::BadChunk("bad flag")),
            };
            let total = body.get_u32_le();
            Ok(Frame::Chunk {
                more,
                total,
                bytes: body,
            })
        }
        KIND_BEAT => Ok(Frame::Beat),
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Appends `frame` to `out` (the caller writes `out` when it has batched enough).
pub fn put_frame(out: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::Hello(h) => {
            out.put_u32_le((1 + HELLO_BYTES) as u32);
            out.put_u8(KIND_HELLO);
            out.put_slice(&MAGIC);
            out.put_u16_le(h.protocol);
            out.put_u64_le(h.cluster_id);
            out.put_u32_le(h.node);
            out.put_u32_le(h.incarnation);
        }
        Frame::Message(body) => {
            out.put_u32_le(frame_len(1 + body.len()));
            out.put_u8(KIND_MESSAGE);
            out.put_slice(body);
        }
        Frame::Chunk { more, total, bytes } => {
            put_chunk_header(out, *more, *total as usize, bytes.len());
            out.put_slice(bytes);
        }
        Frame::Beat => {
            out.put_u32_le(1);
            out.put_u8(KIND_BEAT);
        }
    }
}

fn frame_len(len: usize) -> u32 {
    u32::try_from(len).expect("frames are bounded by frame_bytes_max, far below 4 GiB")
}

pub async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    frame: &Frame,
) -> Result<(), FrameError> {
    let mut out = BytesMut::new();
    put_frame(&mut out, frame);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(frame: Frame) -> Frame {
        let mut out = BytesMut::new();
        put_frame(&mut out, &frame);
        let mut reader = &out[..];
        read_frame(&mut reader, 1 << 20).await.expect("valid frame")
    }

    #[tokio::test]
    async fn frames_round_trip() {
        for frame in [
            Frame::Hello(Hello::new(7, 3, 2)),
            Frame::Message(Bytes::from_static(b"abc")),
            Frame::Chunk {
                more: true,
                total: 3,
                bytes: Bytes::from_static(b"xyz"),
            },
            Frame::Chunk {
                more: false,
                total: 0,
                bytes: Bytes::new(),
            },
            Frame::Beat,
        ] {
            assert_eq!(round_trip(frame.clone()).await, frame);
        }
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_refused() {
        let mut out = BytesMut::new();
        put_frame(&mut out, &Frame::Message(Bytes::from(vec![0; 100])));
        let err = read_frame(&mut &out[..], 50).await.expect_err("too large");
        assert!(
            matches!(err, FrameError::TooLarge { size: 101, max: 50 }),
            "{err}"
        );

        let bad_kind = [1u8, 0, 0, 0, 99];
        let err = read_frame(&mut &bad_kind[..], 50).await.expect_err("kind");
        assert!(matches!(err, FrameError::UnknownKind(99)), "{err}");

        let mut hello = BytesMut::new();
        put_frame(&mut hello, &Frame::Hello(Hello::new(1, 1, 1)));
        hello[5] = b'X';
        let err = read_frame(&mut &hello[..], 50).await.expect_err("magic");
        assert!(matches!(err, FrameError::BadHello("wrong magic")), "{err}");

        let truncated = [10u8, 0, 0, 0, KIND_MESSAGE, 1, 2];
        let err = read_frame(&mut &truncated[..], 50).await.expect_err("eof");
        assert!(matches!(err, FrameError::Io(_)), "{err}");
    }
}
