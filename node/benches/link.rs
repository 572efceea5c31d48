//! Link benchmarks over real loopback sockets: datagram goodput (delivered per second, from the
//! first send to the last receipt, while the sender floods) and round-trip time over a
//! QUIC connection (TLS, datagram frames, the Links registry) next to plain UDP sockets measured
//! in the same run, so the ratio is what QUIC costs.
//!
//! Run: `cargo bench -p callsign-node --bench link`. Prints numbers; asserts nothing.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsign_node::link::{LinkConfig, LinkSocket, Links, QuicTransport};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use tokio::net::UdpSocket;

const PAYLOAD: usize = 120; // a 24 kb/s Opus frame plus voice header
const BURST: u64 = 200_000;
const ROUND_TRIPS: usize = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut rtts: Vec<Duration>) -> (Duration, Duration) {
    rtts.sort();
    (percentile(&rtts, 0.5), percentile(&rtts, 0.99))
}

async fn udp() -> (f64, f64, (Duration, Duration)) {
    let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let a_addr = a.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let (rx, counter) = (a.clone(), received.clone());
    let receiver = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut last = Instant::now();
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv_from(&mut buf)).await
        {
            counter.fetch_add(1, Ordering::Relaxed);
            last = Instant::now();
        }
        last
    });
    let payload = [7u8; PAYLOAD];
    let start = Instant::now();
    for i in 0..BURST {
        b.send_to(&payload, a_addr).await.unwrap();
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    let last = receiver.await.unwrap();
    let delivered = received.load(Ordering::Relaxed);
    let rate = delivered as f64 / (last - start).as_secs_f64();

    // Round trips: B sends, A echoes.
    let echo = a.clone();
    let echo_task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    let mut buf = [0u8; 2048];
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        b.send_to(&payload, a_addr).await.unwrap();
        b.recv_from(&mut buf).await.unwrap();
        rtts.push(t.elapsed());
    }
    echo_task.abort();
    (rate, delivered as f64 / BURST as f64, summary(rtts))
}

async fn quic() -> (f64, f64, (Duration, Duration)) {
    let make = || {
        let keypair = Keypair::generate_ed25519();
        let (links, datagrams) = Links::new(1 << 16);
        let socket = LinkSocket::bind_tokio("127.0.0.1:0".parse().unwrap()).unwrap();
        let transport = QuicTransport::new(
            keypair.clone(),
            LinkConfig::default(),
            socket,
            links.clone(),
        )
        .unwrap();
        (keypair.public().to_peer_id(), links, datagrams, transport)
    };
    let (a_peer, _a_links, mut a_datagrams, mut a_transport) = make();
    let (_, b_links, _b_datagrams, mut b_transport) = make();
    a_transport
        .listen_on(
            ListenerId::next(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        )
        .unwrap();
    let addr = loop {
        if let TransportEvent::NewAddress { listen_addr, .. } =
            poll_fn(|cx| Pin::new(&mut a_transport).poll(cx)).await
        {
            break listen_addr;
        }
    };
    tokio::spawn(async move {
        loop {
            if let TransportEvent::Incoming { upgrade, .. } =
                poll_fn(|cx| Pin::new(&mut a_transport).poll(cx)).await
            {
                tokio::spawn(async move {
                    let kept = upgrade.await;
                    // Keep the muxer alive for the run.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(kept);
                });
            }
        }
    });
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::Reuse,
    };
    let (_, _muxer) = b_transport
        .dial(addr.with(Protocol::P2p(a_peer)), opts)
        .unwrap()
        .await
        .unwrap();

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let receiver = tokio::spawn(async move {
        let mut last = Instant::now();
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), a_datagrams.recv()).await
        {
            counter.fetch_add(1, Ordering::Relaxed);
            last = Instant::now();
        }
        (last, a_datagrams)
    });
    let payload = [7u8; PAYLOAD];
    let start = Instant::now();
    for i in 0..BURST {
        // Wait for buffer room (congestion control's pace) rather than dropping the oldest,
        // so this measures how fast QUIC can carry datagrams.
        b_links.send_datagram_wait(&a_peer, &payload).await.unwrap();
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    let (last, _datagrams) = receiver.await.unwrap();
    let delivered = received.load(Ordering::Relaxed);
    let rate = delivered as f64 / (last - start).as_secs_f64();

    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        if let Ok(Some(rtt)) = b_links.ping_datagram(&a_peer, Duration::from_secs(1)).await {
            rtts.push(rtt);
        }
    }
    (rate, delivered as f64 / BURST as f64, summary(rtts))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (udp_rate, udp_delivered, (udp_p50, udp_p99)) = runtime.block_on(udp());
    let (quic_rate, quic_delivered, (quic_p50, quic_p99)) = runtime.block_on(quic());
    println!("loopback, {PAYLOAD}-byte datagrams, burst of {BURST}, {ROUND_TRIPS} round trips:");
    println!(
        "  plain UDP   {:>9.0} datagrams/s delivered ({:.1}% of the burst)  RTT p50 {:>6.1} µs  p99 {:>6.1} µs",
        udp_rate, udp_delivered * 100.0, us(udp_p50), us(udp_p99)
    );
    println!(
        "  QUIC        {:>9.0} datagrams/s delivered ({:.1}% of the burst)  RTT p50 {:>6.1} µs  p99 {:>6.1} µs",
        quic_rate, quic_delivered * 100.0, us(quic_p50), us(quic_p99)
    );
    println!(
        "  QUIC/UDP    throughput {:.2}   RTT p50 {:.2}",
        quic_rate / udp_rate,
        quic_p50.as_secs_f64() / udp_p50.as_secs_f64()
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
