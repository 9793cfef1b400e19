//! The raw TCP fan-out baseline: every sender dials every other node and writes each
//! message, length-prefixed, to all of them; receivers count and time what arrives.
//! No ordering, no acknowledgements, no membership: the most a plain TCP mesh of these
//! processes carries on this machine.
//!
//! Like Squall's window, each link queues at most `--window` messages, so a slow
//! receiver slows its sender down instead of growing a queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::NodeArgs;
use crate::child::{self, Control};
use crate::stats::{CpuMeter, Recorder, Window, now_us, stamped_payload};

/// Small messages are gathered into writes of about this many bytes.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Messages at least this large are written straight from their buffer (no copy).
const DIRECT_WRITE_BYTES: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

type Shared<T> = Arc<Mutex<T>>;

pub fn main(args: &NodeArgs) -> Result<()> {
    child::runtime(args.threads)?.block_on(run(args))
}

async fn run(args: &NodeArgs) -> Result<()> {
    let listener = child::listen(args).await?;
    let window: Arc<OnceLock<Window>> = Arc::new(OnceLock::new());
    let recorders: Shared<Vec<Shared<Recorder>>> = Arc::default();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(accept_loop(
        listener,
        Arc::clone(&window),
        Arc::clone(&recorders),
        Arc::clone(&accepted),
    ));

    let mut links = Vec::new();
    if args.is_sender() {
        for (i, &addr) in args.addrs.iter().enumerate() {
            if i == args.index {
                continue;
            }
            let stream = connect(addr).await?;
            // Nothing comes back on a link we dial; the socket stays open with either half.
            let (_, wr) = stream.into_split();
            let (tx, rx) = mpsc::channel::<Bytes>(args.window.max(1) as usize);
            let window = Arc::clone(&window);
            tokio::spawn(async move {
                if let Err(e) = write_loop(wr, rx).await
                    && window.get().is_none_or(|w| now_us() < w.end_us)
                {
                    eprintln!("raw-tcp: writing to {addr}: {e:#}");
                }
            });
            links.push(tx);
        }
    }
    let expected = args.remote_senders();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while accepted.load(Ordering::Acquire) < expected {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "raw-tcp node {}: {} of {expected} senders connected in {CONNECT_TIMEOUT:?}",
                args.index,
                accepted.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child::say_ready();

    let mut control = child::control()?;
    let Some(Control::Go { start_us }) = control.recv().await else {
        return Ok(());
    };
    let w = child::window(args, start_us);
    let _ = window.set(w);
    let cpu = CpuMeter::new();
    let sender = if links.is_empty() {
        None
    } else {
        let size = args.size;
        Some(tokio::spawn(send_loop(links, size, start_us, w)))
    };
    tokio::time::sleep_until(child::instant_at(w.end_us)).await;
    let mut total = Recorder::new();
    let all: Vec<Shared<Recorder>> = recorders.lock().map(|r| r.clone()).unwrap_or_default();
    for rec in all {
        if let Ok(rec) = rec.lock() {
            total.merge(&rec);
        }
    }
    total.cpu_cores = cpu.cores();
    if let Some(sender) = sender {
        total.sent = sender.await.context("the sender task")?;
    }
    child::say_stats(&total.report(args.index))?;
    // Wait for the parent to let us go.
    while let Some(command) = control.recv().await {
        if matches!(command, Control::End) {
            break;
        }
    }
    Ok(())
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connecting to {addr}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    window: Arc<OnceLock<Window>>,
    recorders: Shared<Vec<Shared<Recorder>>>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let rec: Shared<Recorder> = Arc::default();
        if let Ok(mut all) = recorders.lock() {
            all.push(Arc::clone(&rec));
        }
        accepted.fetch_add(1, Ordering::Release);
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            // Ended when the sender goes away (end of file) or at exit.
            let _ = read_loop(rd, &window, &rec).await;
            drop(wr);
        });
    }
}

/// Reads `len: u32 LE | payload` frames and records each delivery.
async fn read_loop(
    rd: OwnedReadHalf,
    window: &OnceLock<Window>,
    rec: &Mutex<Recorder>,
) -> std::io::Result<()> {
    let mut rd = BufReader::with_capacity(WRITE_BATCH_BYTES, rd);
    let mut buf = Vec::new();
    loop {
        let len = rd.read_u32_le().await? as usize;
        buf.resize(len, 0);
        rd.read_exact(&mut buf).await?;
        if let Some(w) = window.get()
            && let Ok(mut rec) = rec.lock()
        {
            rec.delivered(*w, now_us(), &buf, true);
        }
    }
}

/// Writes queued messages, gathering small ones into large writes.
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) -> Result<()> {
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES + DIRECT_WRITE_BYTES);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            out.put_u32_le(u32::try_from(msg.len()).context("message over 4 GiB")?);
            if msg.len() >= DIRECT_WRITE_BYTES {
                wr.write_all(&out).await?;
                out.clear();
                wr.write_all(&msg).await?;
            } else {
                out.extend_from_slice(&msg);
                if out.len() >= WRITE_BATCH_BYTES {
                    wr.write_all(&out).await?;
                    out.clear();
                }
            }
            next = rx.try_recv().ok();
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
    Ok(())
}

/// Fans each stamped message out to every link until the window ends; returns how many
/// messages it stamped inside the window.
async fn send_loop(links: Vec<mpsc::Sender<Bytes>>, size: usize, start_us: u64, w: Window) -> u64 {
    tokio::time::sleep_until(child::instant_at(start_us)).await;
    let mut sent = 0;
    loop {
        // Stamped once every link has room, as Squall's are once the core accepts them.
        let mut permits = Vec::with_capacity(links.len());
        for link in &links {
            match link.reserve().await {
                Ok(permit) => permits.push(permit),
                Err(_) => return sent,
            }
        }
        let payload = stamped_payload(size);
        let stamp = crate::stats::stamp_of(&payload).unwrap_or(0);
        if stamp >= w.end_us {
            return sent;
        }
        for permit in permits {
            permit.send(payload.clone());
        }
        if w.contains(stamp) {
            sent += 1;
        }
    }
}
