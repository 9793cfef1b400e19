//! The library proxy over real sockets, with an echo (or gated sink) upstream behind it.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{EchoUpstream, assert_closed_promptly, eventually, round_trip, start_echo_upstream};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use squall_wanlink::{LinkSettings, LinkSpec, LinkState, WanLink, WanLinkError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

async fn start_wanlink(upstream: std::net::SocketAddr, settings: LinkSettings) -> WanLink {
    start_wanlink_to(&upstream.to_string(), settings).await
}

async fn start_wanlink_to(upstream: &str, settings: LinkSettings) -> WanLink {
    let link = LinkSpec::new("127.0.0.1:0".parse().expect("addr"), upstream).expect("valid link");
    WanLink::start(vec![link], settings)
        .await
        .expect("start the wan link")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_intact_and_in_order_under_jitter() {
    let echo = start_echo_upstream().await;
    let settings = LinkSettings {
        delay_ms: 1,
        jitter_ms: 5,
        jitter_seed: 42,
        ..LinkSettings::default()
    };
    let wan = start_wanlink(echo.addr, settings).await;
    let handle = wan.handle();

    let payload_bytes = 2 << 20;
    let mut rng = SmallRng::seed_from_u64(1);
    let payload: Vec<u8> = (0..payload_bytes).map(|_| rng.random::<u8>()).collect();
    // Random write sizes make many chunks of varied size, each with its own jitter draw.
    let mut write_sizes = Vec::new();
    let mut written = 0;
    while written < payload_bytes {
        let size = rng
            .random_range(1..=16_384usize)
            .min(payload_bytes - written);
        write_sizes.push(size);
        written += size;
    }

    let client = TcpStream::connect(wan.listen_addrs()[0])
        .await
        .expect("connect proxy");
    let (mut client_read, mut client_write) = client.into_split();
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        let mut offset = 0;
        for size in write_sizes {
            client_write
                .write_all(&to_send[offset..offset + size])
                .await
                .expect("write");
            offset += size;
            if offset % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        client_write.shutdown().await.expect("half-close");
    });
    let mut echoed = Vec::with_capacity(payload_bytes);
    tokio::time::timeout(
        Duration::from_secs(15),
        client_read.read_to_end(&mut echoed),
    )
    .await
    .expect("the echo completes")
    .expect("read the echo");
    writer.await.expect("writer task");

    assert_eq!(
        echoed.len(),
        payload.len(),
        "every byte comes back, none extra"
    );
    assert!(echoed == payload, "bytes come back unaltered and in order");
    eventually(
        "both directions are counted and the connection is closed",
        || {
            let total = handle.status().total;
            total.bytes_up == payload_bytes as u64
                && total.bytes_down == payload_bytes as u64
                && total.connections_open == 0
                && total.buffered_bytes == 0
        },
    )
    .await;
}

#[tokio::test]
async fn a_round_trip_pays_the_delay_in_each_direction() {
    let echo = start_echo_upstream().await;
    let settings = LinkSettings {
        delay_ms: 100,
        ..LinkSettings::default()
    };
    let wan = start_wanlink(echo.addr, settings).await;
    let mut client = TcpStream::connect(wan.listen_addrs()[0])
        .await
        .expect("connect proxy");

    let started = Instant::now();
    assert_eq!(round_trip(&mut client, b"ping").await, b"ping");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200),
        "round trip took only {elapsed:?}"
    );

    // A run-time change applies to chunks read afterwards.
    wan.handle().set_delay(150, 10).expect("valid delay");
    let status = wan.handle().status();
    assert_eq!((status.delay.delay_ms, status.delay.jitter_ms), (150, 10));
    let started = Instant::now();
    assert_eq!(round_trip(&mut client, b"pong").await, b"pong");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "round trip took only {elapsed:?}"
    );

    let too_long = wan.handle().set_delay(squall_wanlink::DELAY_MS_MAX + 1, 0);
    assert!(matches!(
        too_long,
        Err(WanLinkError::InvalidSetting {
            name: "delay_ms",
            ..
        })
    ));
}

#[tokio::test]
async fn cut_resets_open_connections_and_refuses_new_ones_until_restored() {
    let EchoUpstream {
        addr,
        open_connections,
    } = start_echo_upstream().await;
    let wan = start_wanlink(addr, LinkSettings::default()).await;
    let handle = wan.handle();
    let listen = wan.listen_addrs()[0];

    let mut client = TcpStream::connect(listen).await.expect("connect proxy");
    assert_eq!(round_trip(&mut client, b"before cut").await, b"before cut");
    assert_eq!(open_connections.load(Ordering::SeqCst), 1);

    handle.cut();
    assert_eq!(handle.state(), LinkState::Cut);
    assert_closed_promptly(&mut client, "client side of an open connection after cut").await;
    eventually("the upstream side is closed too", || {
        open_connections.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually("no proxied connection is open", || {
        handle.status().total.connections_open == 0
    })
    .await;

    // While cut, a new connection is accepted and reset at once (or refused outright).
    if let Ok(mut refused) = TcpStream::connect(listen).await {
        let _ = refused.write_all(b"anyone there?").await;
        assert_closed_promptly(&mut refused, "a new connection while cut").await;
    }
    eventually("the refusal is counted", || {
        handle.status().total.connections_refused_cut >= 1
    })
    .await;
    assert_eq!(
        open_connections.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    assert!(handle.status().to_string().starts_with("cut "));

    handle.restore();
    assert_eq!(handle.state(), LinkState::Up);
    let mut client = TcpStream::connect(listen)
        .await
        .expect("connect after restore");
    assert_eq!(
        round_trip(&mut client, b"after restore").await,
        b"after restore"
    );
    assert_eq!(handle.status().total.connections_open, 1);
}

#[tokio::test]
async fn connections_beyond_the_per_link_limit_are_reset() {
    let echo = start_echo_upstream().await;
    let settings = LinkSettings {
        connections_per_link_max: 2,
        ..LinkSettings::default()
    };
    // The upstream by host name: resolved at each connection.
    let upstream = format!("localhost:{}", echo.addr.port());
    let wan = start_wanlink_to(&upstream, settings).await;
    assert_eq!(wan.handle().status().links[0].upstream, upstream);
    let listen = wan.listen_addrs()[0];
    let mut first = TcpStream::connect(listen).await.expect("connect 1");
    let mut second = TcpStream::connect(listen).await.expect("connect 2");
    assert_eq!(round_trip(&mut first, b"1").await, b"1");
    assert_eq!(round_trip(&mut second, b"2").await, b"2");

    if let Ok(mut third) = TcpStream::connect(listen).await {
        assert_closed_promptly(&mut third, "a connection past connections_per_link_max").await;
    }
    let total = wan.handle().status().total;
    assert_eq!(total.connections_refused_limit, 1);
    assert_eq!(total.connections_open, 2);

    drop(first);
    eventually("the closed connection frees its slot", || {
        wan.handle().status().total.connections_open == 1
    })
    .await;
    let mut fourth = TcpStream::connect(listen).await.expect("connect 4");
    assert_eq!(round_trip(&mut fourth, b"4").await, b"4");
}

/// An upstream that accepts one connection and reads nothing until the gate opens, then
/// reads to EOF and reports what it got.
async fn start_gated_sink() -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    oneshot::Receiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    let (gate_sender, gate) = oneshot::channel::<()>();
    let (received_sender, received) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        gate.await.expect("the gate opens");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.expect("read to end");
        let _ = received_sender.send(bytes);
    });
    (addr, gate_sender, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_makes_the_proxy_stop_reading_not_buffer_more() {
    let (sink, gate, received) = start_gated_sink().await;
    let buffer_bytes_max = 64 << 10;
    let read_chunk_bytes_max = 8 << 10;
    let settings = LinkSettings {
        buffer_bytes_max,
        read_chunk_bytes_max,
        ..LinkSettings::default()
    };
    let wan = start_wanlink(sink, settings).await;
    let handle = wan.handle();

    // Far more than the socket buffers on both sides of the proxy can hold.
    let payload_bytes = 24 << 20;
    let payload: Vec<u8> = (0..payload_bytes)
        .map(|index| (index % 251) as u8)
        .collect();
    let mut client = TcpStream::connect(wan.listen_addrs()[0])
        .await
        .expect("connect");
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&to_send).await.expect("write");
        client.shutdown().await.expect("half-close");
    });

    // Socket buffers on both sides of the proxy absorb (and autotune) first; wait until
    // forwarding has stopped altogether, then look at what the proxy holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (stalled, still_stalled) = loop {
        let stalled = handle.status().total;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let still_stalled = handle.status().total;
        let queue_full =
            still_stalled.buffered_bytes >= (buffer_bytes_max - read_chunk_bytes_max) as u64;
        if stalled.bytes_up == still_stalled.bytes_up && queue_full {
            break (stalled, still_stalled);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "forwarding never stalled behind the gated upstream: {still_stalled:?}"
        );
    };
    for total in [stalled, still_stalled] {
        assert!(total.buffered_bytes <= buffer_bytes_max as u64, "{total:?}");
        assert!(
            total.buffered_bytes_peak <= buffer_bytes_max as u64,
            "{total:?}"
        );
    }
    assert!(
        !writer.is_finished(),
        "the sender is held back by TCP backpressure"
    );

    gate.send(()).expect("open the gate");
    let received = tokio::time::timeout(Duration::from_secs(15), received)
        .await
        .expect("the sink drains within the liveness bound")
        .expect("the sink reports");
    writer.await.expect("writer task");
    assert_eq!(received.len(), payload.len());
    assert!(
        received == payload,
        "bytes arrive unaltered and in order after the stall"
    );
    let total = handle.status().total;
    assert!(
        total.buffered_bytes_peak <= buffer_bytes_max as u64,
        "{total:?}"
    );
}

#[tokio::test]
async fn start_reports_typed_errors() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let link = LinkSpec::new(taken_addr, "127.0.0.1:9").expect("valid link");
    let error = WanLink::start(vec![link], LinkSettings::default())
        .await
        .expect_err("the address is taken");
    assert!(
        matches!(error, WanLinkError::Bind { addr, .. } if addr == taken_addr),
        "{error}"
    );

    let error = WanLink::start(Vec::new(), LinkSettings::default())
        .await
        .expect_err("no links");
    assert!(matches!(error, WanLinkError::NoLinks));

    assert!(matches!(
        LinkSpec::new(taken_addr, "no-port"),
        Err(WanLinkError::LinkSyntax { .. })
    ));
}

#[tokio::test]
async fn shutdown_resets_connections_and_frees_the_port() {
    let echo = start_echo_upstream().await;
    let wan = start_wanlink(echo.addr, LinkSettings::default()).await;
    let listen = wan.listen_addrs()[0];
    let handle = wan.handle();
    let mut client = TcpStream::connect(listen).await.expect("connect");
    assert_eq!(round_trip(&mut client, b"hi").await, b"hi");
    wan.shutdown().await;
    assert_eq!(handle.state(), LinkState::Stopped);
    assert_closed_promptly(&mut client, "a connection after shutdown").await;
    handle.restore();
    assert_eq!(
        handle.state(),
        LinkState::Stopped,
        "restore does not revive a stopped link"
    );
    TcpListener::bind(listen)
        .await
        .expect("the listen port is free again");
}
