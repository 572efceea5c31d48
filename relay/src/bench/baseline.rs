//! The baseline: a plain UDP forwarder (no links, no checks) between the same speakers and
//! subscribers.

use super::process::Measured;
use super::{measurement, speak, BenchOptions, Heard, Measurement, SendTimes};
use anyhow::Result;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub(super) async fn measure(options: &BenchOptions) -> Result<Measurement> {
    let mut sockets = Vec::new();
    for _ in 0..options.subscribers {
        sockets.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    }
    let ports: Vec<String> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()?;
    let child = Measured::spawn(
        &["udp-forward".into(), format!("--to={}", ports.join(","))],
        options.forwarder_cpu,
    )?;
    let forwarder: SocketAddr = child.line("udp-forward on")?.parse()?;
    let times = SendTimes::new(options.speakers);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let sockets: Vec<Arc<tokio::net::UdpSocket>> = sockets.into_iter().map(Arc::new).collect();
    for socket in &sockets {
        let (socket, times, mut stop) = (socket.clone(), times.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            let mut heard = Heard::default();
            let mut buf = [0u8; 2048];
            let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
            loop {
                // What already arrived is counted before the stop.
                let got = tokio::select! {
                    biased;
                    got = socket.recv(&mut buf) => got,
                    _ = &mut stopped => break,
                };
                if let Ok(n) = got {
                    let arrived = Instant::now();
                    if n >= 3 {
                        heard.copies += 1;
                        let seq = u16::from_be_bytes([buf[1], buf[2]]);
                        if let Some(l) = times.latency_us(usize::from(buf[0]), seq, arrived) {
                            heard.latencies_us.push(l);
                        }
                    }
                }
            }
            heard
        }));
    }
    let payload = vec![0x5a; options.payload + 30];
    options.ready().await;
    let cpu_before = child.cpu()?;
    let started = Instant::now();
    let sent = speak(options, |speaker, seq| {
        let mut packet = payload.clone();
        packet[0] = speaker as u8;
        packet[1..3].copy_from_slice(&seq.to_be_bytes());
        times.sent(speaker, seq);
        // The speaker is subscriber `speaker`; the forwarder skips the sender.
        let _ = sockets[speaker].try_send_to(&packet, forwarder);
    })
    .await;
    let elapsed = started.elapsed();
    let cpu = child.cpu()? - cpu_before;
    let _ = stop.send(true);
    let mut heard = Heard::default();
    for task in tasks {
        heard.merge(task.await?);
    }
    Ok(measurement(
        "udp",
        options,
        sent,
        heard,
        cpu,
        elapsed,
        child.peak_rss_kib(),
    ))
}
