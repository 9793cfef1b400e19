//! Upstreams and helpers shared by the integration tests (real sockets on 127.0.0.1).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Long enough for a loaded CI machine; only ever a liveness bound, never a timing claim.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// An echo server: writes back every byte it reads, closes after EOF.
#[derive(Debug)]
pub struct EchoUpstream {
    pub addr: SocketAddr,
    /// Upstream-side connections currently open.
    pub open_connections: Arc<AtomicUsize>,
}

pub async fn start_echo_upstream() -> EchoUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo upstream");
    let addr = listener.local_addr().expect("echo upstream addr");
    let open_connections = Arc::new(AtomicUsize::new(0));
    let open = Arc::clone(&open_connections);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let open = Arc::clone(&open);
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read_half, mut write_half) = stream.split();
                if tokio::io::copy(&mut read_half, &mut write_half)
                    .await
                    .is_ok()
                {
                    let _ = write_half.shutdown().await;
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    EchoUpstream {
        addr,
        open_connections,
    }
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after [`PROMPTLY`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `message` and reads back as many bytes; returns them.
pub async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream
        .write_all(message)
        .await
        .expect("write through the proxy");
    let mut reply = vec![0u8; message.len()];
    tokio::time::timeout(PROMPTLY, stream.read_exact(&mut reply))
        .await
        .expect("echo reply within the liveness bound")
        .expect("read the echo");
    reply
}

/// Asserts the peer closed or reset `stream` within [`PROMPTLY`]: a read returns EOF
/// or an error (any bytes still in flight before the close are skipped).
pub async fn assert_closed_promptly(stream: &mut TcpStream, what: &str) {
    let closed = tokio::time::timeout(PROMPTLY, async {
        let mut scratch = [0u8; 4096];
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: the connection stayed open");
}
