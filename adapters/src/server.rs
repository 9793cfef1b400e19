//! The client-facing TCP server: accepts connections (at most `clients_max`), checks the
//! handshake and the bearer token, then turns request frames into service commands and
//! answers as they complete, each connection with one reader and one writer task. A
//! malformed frame or handshake gets a logged reason and closes that connection only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::service::{Command, Reply, WatchFrom, WatchStart};
use crate::wire::{
    self, ErrorCode, Frame, MAGIC, PROTOCOL_VERSION, Request, Response, Role, WireError,
};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node: u32,
    pub frame_bytes_max: usize,
    pub clients_max: usize,
    pub watch_queue_max: usize,
    /// Frames queued for one client before its connection waits (backpressure).
    pub out_queue_max: usize,
    /// Tokens and their roles; none = open access (logged loudly at start).
    pub tokens: Vec<(String, Role)>,
    /// Connections and requests are counted here when given.
    pub metrics: Option<crate::metrics::NodeMetrics>,
}

impl ServerConfig {
    fn role_of(&self, token: Option<&str>) -> Option<Role> {
        if self.tokens.is_empty() {
            return Some(Role::Admin);
        }
        let token = token?;
        self.tokens
            .iter()
            .find(|(t, _)| t.as_bytes() == token.as_bytes())
            .map(|(_, r)| *r)
    }
}

/// Serves clients on `listener` until the process ends.
pub async fn serve(listener: TcpListener, cfg: ServerConfig, commands: mpsc::Sender<Command>) {
    if cfg.tokens.is_empty() {
        warn!(
            "NO AUTH TOKENS CONFIGURED: every client gets the admin role. Configure [[auth.tokens]] for anything but a local test."
        );
    }
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.clients_max));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, limit = cfg.clients_max, "refusing a client: too many connections");
            let mut stream = stream;
            let out = wire::frame_to_vec(&Frame::Refused {
                reason: format!("the node serves {} clients already", cfg.clients_max),
            });
            let _ = stream.write_all(&out).await;
            continue;
        };
        let cfg = Arc::clone(&cfg);
        let commands = commands.clone();
        tokio::spawn(async move {
            if let Some(m) = &cfg.metrics {
                m.client_connections.inc();
            }
            if let Err(reason) = connection(stream, peer, &cfg, commands).await {
                info!(%peer, %reason, "client connection closed");
            }
            if let Some(m) = &cfg.metrics {
                m.client_connections.dec();
            }
            drop(permit);
        });
    }
}

/// Reads one whole frame (bounded by `max`) or fails with a reason.
async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, String> {
    match read_frame_or_skip(stream, buf, max).await? {
        Some(Ok(frame)) => Ok(Some(frame)),
        Some(Err(oversized)) => Err(oversized.to_string()),
        None => Ok(None),
    }
}

/// A request frame over the limit, read past without buffering it.
#[derive(Debug)]
struct Oversized {
    request_id: Option<u64>,
    error: WireError,
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.error)
    }
}

/// Like [`read_frame`], but a request over the limit is skipped (its bytes read and
/// dropped, never held) and reported with its request id, so the connection can answer
/// that one request `TooLarge` and go on: a client writing a large value learns why,
/// instead of losing its connection mid-write and retrying elsewhere.
async fn read_frame_or_skip(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Result<Frame, Oversized>>, String> {
    loop {
        match wire::split_frame(buf, max) {
            Ok(Some(body)) => {
                return wire::decode_frame(body)
                    .map(|f| Some(Ok(f)))
                    .map_err(|e| format!("malformed frame: {e}"));
            }
            Ok(None) => {}
            Err(error @ WireError::TooLarge { len, .. }) => {
                // The kind byte and request id, then the rest is dropped as it comes.
                while buf.len() < 4 + 9 {
                    if stream
                        .read_buf(buf)
                        .await
                        .map_err(|e| format!("read: {e}"))?
                        == 0
                    {
                        return Err("the client closed mid-frame".to_string());
                    }
                }
                let request_id = (buf[4] == wire::FRAME_REQUEST).then(|| {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&buf[5..13]);
                    u64::from_le_bytes(id)
                });
                let mut left = (4 + len).saturating_sub(buf.len());
                if left == 0 {
                    let _ = buf.split_to(4 + len);
                } else {
                    buf.clear();
                }
                let mut scratch = vec![0u8; 64 << 10];
                while left > 0 {
                    let want = left.min(scratch.len());
                    let n = stream
                        .read(&mut scratch[..want])
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("the client closed mid-frame".to_string());
                    }
                    left -= n;
                }
                return Ok(Some(Err(Oversized { request_id, error })));
            }
            Err(e) => return Err(format!("malformed frame: {e}")),
        }
        buf.reserve(64 << 10);
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("the client closed mid-frame".to_string())
            };
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: &ServerConfig,
    commands: mpsc::Sender<Command>,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let hello = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(&mut stream, &mut buf, cfg.frame_bytes_max.min(64 << 10)),
    )
    .await
    .map_err(|_| "no handshake within 10 s".to_string())??;
    let refuse = |reason: String| async move {
        let out = wire::frame_to_vec(&Frame::Refused {
            reason: reason.clone(),
        });
        (out, reason)
    };
    let role = match hello {
        Some(Frame::Hello {
            magic,
            version,
            token,
        }) => {
            if magic != MAGIC {
                let (out, reason) = refuse(format!("bad magic {magic:#x}")).await;
                let _ = stream.write_all(&out).await;
                return Err(reason);
            }
            if version != PROTOCOL_VERSION {
                let (out, reason) = refuse(format!(
                    "protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION})"
                ))
                .await;
                let _ = stream.write_all(&out).await;
                return Err(reason);
            }
            match cfg.role_of(token.as_deref()) {
                Some(role) => role,
                None => {
                    let (out, reason) = refuse("unknown or missing token".to_string()).await;
                    warn!(%peer, "refused a client: unknown or missing token");
                    let _ = stream.write_all(&out).await;
                    return Err(reason);
                }
            }
        }
        Some(_) => return Err("the first frame was not a hello".to_string()),
        None => return Ok(()),
    };
    let (mut reader, mut writer) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(cfg.out_queue_max);
    let writer_task = tokio::spawn(async move {
        let mut out = wire::FrameBuf::with_capacity(64 << 10);
        while let Some(frame) = out_rx.recv().await {
            out.clear();
            wire::put_frame(&mut out, &frame);
            // Batch what is already queued into one write.
            while let Ok(more) = out_rx.try_recv() {
                wire::put_frame(&mut out, &more);
                if out.len() > 1 << 20 {
                    break;
                }
            }
            if out.write_to(&mut writer).await.is_err() {
                return;
            }
        }
    });
    if out_tx
        .send(Frame::Welcome {
            node: cfg.node,
            role,
        })
        .await
        .is_err()
    {
        return Err("writer ended".to_string());
    }
    // This connection's watches, by the request that started each, so `Unwatch` can end
    // one (its forwarding task holds the queue the node fills; ending the task closes it,
    // and the node drops the watcher on its next event).
    let mut watches: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    let result = loop {
        let frame = match read_frame_or_skip(&mut reader, &mut buf, cfg.frame_bytes_max).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(Oversized {
                request_id: Some(request_id),
                error,
            }))) => {
                debug!(%peer, %error, "answered an oversized request TooLarge");
                let response = Response::error(
                    ErrorCode::TooLarge,
                    format!("refused: {error} (limits.frame_bytes_max)"),
                );
                if out_tx
                    .send(Frame::Response {
                        request_id,
                        response,
                    })
                    .await
                    .is_err()
                {
                    break Err("writer ended".to_string());
                }
                continue;
            }
            Ok(Some(Err(oversized))) => {
                let reason = oversized.to_string();
                warn!(%peer, %reason, "dropping a client");
                let _ = out_tx
                    .send(Frame::Refused {
                        reason: reason.clone(),
                    })
                    .await;
                break Err(reason);
            }
            Ok(None) => break Ok(()),
            Err(reason) => {
                warn!(%peer, %reason, "dropping a client");
                // Say why before closing: a client then fails the request at once
                // instead of retrying it elsewhere as a lost connection.
                let _ = out_tx
                    .send(Frame::Refused {
                        reason: reason.clone(),
                    })
                    .await;
                break Err(reason);
            }
        };
        let Frame::Request {
            request_id,
            request,
        } = frame
        else {
            break Err("a client sent a frame other than a request".to_string());
        };
        if let Some(m) = &cfg.metrics {
            m.client_requests
                .with_label_values(&[request.op_name()])
                .inc();
        }
        let (prefix, shard) = match request {
            Request::Unwatch { watch } => {
                if let Some(task) = watches.remove(&watch) {
                    task.abort();
                }
                let done = Frame::Response {
                    request_id,
                    response: Response::Done,
                };
                if out_tx.send(done).await.is_err() {
                    break Err("writer ended".to_string());
                }
                continue;
            }
            Request::Watch { prefix } => (prefix, None),
            Request::WatchShard {
                prefix,
                subgroup,
                shard,
                from,
            } => (
                prefix,
                Some(WatchFrom {
                    subgroup,
                    shard,
                    from,
                }),
            ),
            request => {
                let command = Command::Request {
                    request,
                    role,
                    reply: Reply::new(request_id, out_tx.clone()),
                };
                if commands.send(command).await.is_err() {
                    break Err("the node stopped".to_string());
                }
                continue;
            }
        };
        let (events_tx, mut events) = mpsc::channel(cfg.watch_queue_max);
        let (reply, answer) = oneshot::channel();
        let command = Command::Watch {
            prefix,
            shard,
            events: events_tx,
            reply,
        };
        if commands.send(command).await.is_err() {
            break Err("the node stopped".to_string());
        }
        let out = out_tx.clone();
        let task = tokio::spawn(async move {
            let start = answer.await.unwrap_or_else(|_| WatchStart {
                response: Response::error(ErrorCode::Unavailable, "the node stopped"),
                catch_up: None,
            });
            let ok = matches!(start.response, Response::Done | Response::Watching { .. });
            let _ = out
                .send(Frame::Response {
                    request_id,
                    response: start.response,
                })
                .await;
            if !ok {
                return;
            }
            // What a resuming watch missed goes first; what happened since waits
            // in its queue (and overruns it if this takes too long, as any
            // watcher that falls behind: the client resumes again from there).
            if let Some(mut catch_up) = start.catch_up {
                while let Some(event) = catch_up.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(reason) => {
                            let _ = out
                                .send(Frame::Response {
                                    request_id,
                                    response: Response::error(
                                        ErrorCode::Unavailable,
                                        format!("the watch could not catch up: {reason}"),
                                    ),
                                })
                                .await;
                            return;
                        }
                    };
                    if out.send(Frame::Event { request_id, event }).await.is_err() {
                        return;
                    }
                }
            }
            while let Some(event) = events.recv().await {
                if out.send(Frame::Event { request_id, event }).await.is_err() {
                    return;
                }
            }
            // The service dropped the watcher (it fell behind): say so.
            let _ = out
                .send(Frame::Response {
                    request_id,
                    response: Response::error(
                        ErrorCode::Unavailable,
                        "the node dropped the watch (it fell behind, or the node no longer \
                         holds the shard); watch again",
                    ),
                })
                .await;
        });
        watches.retain(|_, task| !task.is_finished());
        watches.insert(request_id, task.abort_handle());
    };
    drop(out_tx);
    let _ = writer_task.await;
    result
}
