//! One proxied connection: connect upstream, then forward each direction through a
//! delay queue until both sides finish, an error breaks one, or the link is cut.
//!
//! Per direction, a read side and a write side run concurrently (one task per connection,
//! so a cut drops everything at once):
//!
//! ```text
//! from ──read──▶ [chunk, release_at] ─ queue (≤ buffer_bytes_max, ≤ chunks_buffered_max) ─▶ sleep_until ──write──▶ to
//! ```
//!
//! **Invariants.** Bytes leave in the order they were read and unchanged: each chunk's
//! release time is at least its predecessor's, and the writer asserts it. The queue holds
//! at most `buffer_bytes_max` payload bytes: the reader takes that budget from a
//! semaphore *before* it reads, so a slow receiver stops the reads (TCP backpressure
//! to the sender) rather than growing memory.
//!
//! **Boundary.** No reordering, loss, duplication or bandwidth shaping: a cut is the only
//! fault. A connection whose upstream is unreachable is closed with a reset.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::link::{Direction, LinkShared, Shared};
use crate::{DelaySettings, LinkState};

/// When a chunk read at `read_at` may be written out: after the delay plus a uniform
/// jitter in `[0, jitter_ms]` (microsecond steps), and never before the chunk read
/// before it (`previous_release_at`), so bytes are never reordered.
pub(crate) fn release_time(
    read_at: Instant,
    previous_release_at: Option<Instant>,
    delay: DelaySettings,
    rng: &mut SmallRng,
) -> Instant {
    let jitter_us = if delay.jitter_ms == 0 {
        0
    } else {
        rng.random_range(0..=delay.jitter_ms * 1_000)
    };
    let due = read_at + Duration::from_millis(delay.delay_ms) + Duration::from_micros(jitter_us);
    match previous_release_at {
        Some(previous) if previous > due => previous,
        _ => due,
    }
}

/// The jitter stream of one direction of one connection, so a run is reproducible
/// from `jitter_seed` given the same connection order.
fn jitter_rng(jitter_seed: u64, connection_id: u64, direction: Direction) -> SmallRng {
    let direction_bits = match direction {
        Direction::Up => 0x5555_5555_5555_5555,
        Direction::Down => 0xaaaa_aaaa_aaaa_aaaa,
    };
    SmallRng::seed_from_u64(
        jitter_seed ^ connection_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ direction_bits,
    )
}

/// Removes an open connection from its link's count however the task ends.
#[derive(Debug)]
pub(crate) struct OpenConnectionGuard {
    link: Arc<LinkShared>,
}

impl OpenConnectionGuard {
    pub(crate) fn new(link: Arc<LinkShared>) -> Self {
        link.counters
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        OpenConnectionGuard { link }
    }
}

impl Drop for OpenConnectionGuard {
    fn drop(&mut self) {
        self.link
            .counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes with a reset (`SO_LINGER` 0) once the stream is dropped, so the peer learns
/// at once, and no data still queued in the kernel trickles out after a cut.
pub(crate) fn close_abruptly(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        debug!(%error, "cannot set SO_LINGER 0; the close will be a FIN");
    }
}

enum Outcome {
    Finished,
    Failed(io::Error),
    Cut,
}

/// Runs one accepted client connection to its end. `_open` counts it as open meanwhile.
pub(crate) async fn run_connection(
    client: TcpStream,
    shared: Arc<Shared>,
    link: Arc<LinkShared>,
    connection_id: u64,
    _open: OpenConnectionGuard,
) {
    let mut state = shared.state.subscribe();
    let connect_timeout = Duration::from_millis(shared.settings.upstream_connect_timeout_ms);
    let connect = tokio::time::timeout(
        connect_timeout,
        TcpStream::connect(link.spec.upstream.as_str()),
    );
    let connected = tokio::select! {
        connected = connect => connected,
        _ = state.wait_for(|state| *state != LinkState::Up) => {
            close_abruptly(&client);
            return;
        }
    };
    let mut upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            warn!(%error, upstream = %link.spec.upstream, "cannot connect upstream; resetting the client");
            close_abruptly(&client);
            return;
        }
        Err(_elapsed) => {
            warn!(upstream = %link.spec.upstream, timeout_ms = shared.settings.upstream_connect_timeout_ms,
                "upstream connect timed out; resetting the client");
            close_abruptly(&client);
            return;
        }
    };
    // The emulated delay is the only delay: Nagle's algorithm would add its own.
    for stream in [&client, &upstream] {
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
    }
    let mut client = client;
    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let up = forward_direction(
            client_read,
            upstream_write,
            Direction::Up,
            &shared,
            &link,
            connection_id,
        );
        let down = forward_direction(
            upstream_read,
            client_write,
            Direction::Down,
            &shared,
            &link,
            connection_id,
        );
        tokio::select! {
            result = async { tokio::try_join!(up, down) } => match result {
                Ok(_) => Outcome::Finished,
                Err(error) => Outcome::Failed(error),
            },
            _ = state.wait_for(|state| *state != LinkState::Up) => Outcome::Cut,
        }
    };
    match outcome {
        Outcome::Finished => debug!("connection closed by both ends"),
        Outcome::Failed(error) => {
            debug!(%error, "connection broke; resetting both sides");
            close_abruptly(&client);
            close_abruptly(&upstream);
        }
        Outcome::Cut => {
            debug!("link cut; resetting both sides");
            close_abruptly(&client);
            close_abruptly(&upstream);
        }
    }
}

/// Payload bytes held in the proxy, returned to the counters however the chunk goes
/// (written, or dropped by a cut).
struct BufferedBytes<'a> {
    direction_buffered: &'a AtomicU64,
    link_buffered: &'a AtomicU64,
    bytes: u64,
}

impl Drop for BufferedBytes<'_> {
    fn drop(&mut self) {
        self.direction_buffered
            .fetch_sub(self.bytes, Ordering::Relaxed);
        self.link_buffered.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Chunk<'a> {
    data: Vec<u8>,
    release_at: Instant,
    /// This chunk's share of the direction's `buffer_bytes_max` budget.
    _budget: SemaphorePermit<'a>,
    _buffered: BufferedBytes<'a>,
}

/// Forwards one direction until `from` reaches EOF (then shuts `to` down for writing,
/// passing the half-close on) or an I/O error.
async fn forward_direction<R, W>(
    mut from: R,
    mut to: W,
    direction: Direction,
    shared: &Shared,
    link: &LinkShared,
    connection_id: u64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let settings = &shared.settings;
    let buffer_bytes_max = settings.buffer_bytes_max as u64;
    let read_chunk_bytes = settings.read_chunk_bytes();
    let read_chunk_permits =
        u32::try_from(read_chunk_bytes).expect("validate bounds read_chunk_bytes_max");
    let bytes_budget = Semaphore::new(settings.buffer_bytes_max);
    let direction_buffered = AtomicU64::new(0);
    let (chunk_sender, mut chunk_receiver) =
        mpsc::channel::<Chunk<'_>>(settings.chunks_buffered_max);
    let mut rng = jitter_rng(settings.jitter_seed, connection_id, direction);

    let read_side = async {
        // Owned here, so the queue closes (and the writer drains and finishes) at EOF.
        let chunk_sender = chunk_sender;
        let mut scratch = vec![0u8; read_chunk_bytes];
        let mut previous_release_at = None;
        loop {
            let mut budget = bytes_budget
                .acquire_many(read_chunk_permits)
                .await
                .expect("the budget semaphore is never closed");
            let Ok(slot) = chunk_sender.reserve().await else {
                // The write side ended early; its error is what try_join reports.
                return Ok(());
            };
            let read_bytes = from.read(&mut scratch).await?;
            if read_bytes == 0 {
                return Ok(());
            }
            let read_at = Instant::now();
            let chunk_budget = budget
                .split(read_bytes)
                .expect("a read never exceeds the permits taken for it");
            drop(budget);
            let release_at = release_time(read_at, previous_release_at, shared.delay(), &mut rng);
            previous_release_at = Some(release_at);
            let bytes = read_bytes as u64;
            let direction_buffered_now =
                direction_buffered.fetch_add(bytes, Ordering::Relaxed) + bytes;
            assert!(
                direction_buffered_now <= buffer_bytes_max,
                "buffered {direction_buffered_now} bytes, above buffer_bytes_max {buffer_bytes_max}"
            );
            link.counters
                .buffered_bytes
                .fetch_add(bytes, Ordering::Relaxed);
            link.counters
                .buffered_bytes_peak
                .fetch_max(direction_buffered_now, Ordering::Relaxed);
            slot.send(Chunk {
                data: scratch[..read_bytes].to_vec(),
                release_at,
                _budget: chunk_budget,
                _buffered: BufferedBytes {
                    direction_buffered: &direction_buffered,
                    link_buffered: &link.counters.buffered_bytes,
                    bytes,
                },
            });
        }
    };

    let write_side = async {
        let mut previous_release_at = None;
        while let Some(chunk) = chunk_receiver.recv().await {
            assert!(
                previous_release_at.is_none_or(|previous| previous <= chunk.release_at),
                "chunks must be released in the order they were read"
            );
            previous_release_at = Some(chunk.release_at);
            tokio::time::sleep_until(chunk.release_at).await;
            to.write_all(&chunk.data).await?;
            link.counters
                .bytes_forwarded(direction)
                .fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        }
        to.shutdown().await
    };

    tokio::try_join!(read_side, write_side).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_times_never_go_backwards_and_stay_in_the_window() {
        let mut rng = SmallRng::seed_from_u64(7);
        let start = Instant::now();
        let mut previous = None;
        for step_us in 0..2_000u64 {
            let read_at = start + Duration::from_micros(step_us * 10);
            let delay = DelaySettings {
                delay_ms: if step_us < 1_000 { 50 } else { 5 },
                jitter_ms: 20,
            };
            let release_at = release_time(read_at, previous, delay, &mut rng);
            assert!(release_at >= read_at + Duration::from_millis(delay.delay_ms));
            if let Some(previous) = previous {
                assert!(release_at >= previous);
            }
            let latest_due = read_at + Duration::from_millis(delay.delay_ms + delay.jitter_ms);
            assert!(release_at <= latest_due || Some(release_at) == previous);
            previous = Some(release_at);
        }
    }

    #[test]
    fn zero_delay_releases_at_read_time() {
        let mut rng = SmallRng::seed_from_u64(1);
        let read_at = Instant::now();
        let release_at = release_time(read_at, None, DelaySettings::default(), &mut rng);
        assert_eq!(release_at, read_at);
    }
}
