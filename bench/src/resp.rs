//! A minimal Redis (RESP) client for the benchmarks: one connection, one request at a
//! time, replies parsed as far as the benchmarks need (simple, bulk, arrays), and the
//! stream entries of an XREAD.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::kv::split_connection;

/// A RESP value, as much of it as the benchmarks need.
#[derive(Debug)]
pub enum Value {
    Simple,
    Bulk(Option<Bytes>),
    Array(Option<Vec<Value>>),
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

fn read_value<'a>(r: &'a mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Boxed<'a, Value> {
    Box::pin(async move {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            bail!("redis closed the connection");
        }
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1.min(line.len()));
        match kind {
            "+" | ":" => Ok(Value::Simple),
            "-" => bail!("redis: {line}"),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    return Ok(Value::Bulk(None));
                }
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf).await?;
                buf.truncate(n as usize);
                Ok(Value::Bulk(Some(Bytes::from(buf))))
            }
            "*" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    return Ok(Value::Array(None));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_value(r).await?);
                }
                Ok(Value::Array(Some(items)))
            }
            _ => bail!("redis: unexpected reply `{line}`"),
        }
    })
}

pub struct Redis {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    out: BytesMut,
}

/// One stream entry: its id and its `v` field.
pub struct Entry {
    pub id: Bytes,
    pub value: Bytes,
}

impl Redis {
    pub async fn connect(addr: SocketAddr) -> Result<Redis> {
        let (r, w) = split_connection(addr).await?;
        Ok(Redis {
            reader: BufReader::with_capacity(1 << 20, r),
            writer: w,
            out: BytesMut::new(),
        })
    }

    pub async fn call(&mut self, parts: &[&[u8]]) -> Result<Value> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for p in parts {
            self.out
                .extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            self.out.extend_from_slice(p);
            self.out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&self.out).await?;
        read_value(&mut self.reader).await
    }

    /// Blocks until entries after `after` arrive in `stream`.
    pub async fn read(&mut self, stream: &[u8], after: &[u8]) -> Result<Vec<Entry>> {
        let reply = self
            .call(&[b"XREAD", b"BLOCK", b"0", b"STREAMS", stream, after])
            .await?;
        let mut entries = Vec::new();
        let Value::Array(Some(streams)) = reply else {
            return Ok(entries);
        };
        for s in streams {
            let Value::Array(Some(mut pair)) = s else {
                continue;
            };
            let Some(Value::Array(Some(list))) = pair.pop() else {
                continue;
            };
            for e in list {
                let Value::Array(Some(mut e)) = e else {
                    continue;
                };
                let (Some(Value::Array(Some(fields))), Some(Value::Bulk(Some(id)))) =
                    (e.pop(), e.pop())
                else {
                    continue;
                };
                // Fields come as name, value pairs: `k`, the key, then `v`, the value.
                let value = match fields.into_iter().nth(3) {
                    Some(Value::Bulk(Some(v))) => v,
                    _ => Bytes::new(),
                };
                entries.push(Entry { id, value });
            }
        }
        Ok(entries)
    }
}
