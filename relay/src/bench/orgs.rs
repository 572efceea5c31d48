//! `bench --orgs N`: one relay process serving N orgs, each with its own members, speakers and
//! channel, run twice from the same setup: quiet (every speaker at the bench's rate), then with
//! the first org's speakers flooding at `--flood` times the per-member limit. Reported per org:
//! delivery and latency in both runs, so whether one org's flood reaches the others shows.
//! With `--flood-with garbage` the flood is a stranger's datagrams to the first org's port
//! instead ([`flood`]).

use super::relayed::{bench_setup, run, Run};
use super::{BenchOptions, FloodKind};
use anyhow::{anyhow, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One org in one run.
#[derive(Debug, Clone, Serialize)]
pub struct OrgMeasurement {
    pub org: String,
    pub packets_sent: u64,
    pub copies_expected: u64,
    pub copies_delivered: u64,
    pub delivery_percent: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
}

/// One run of all the orgs.
#[derive(Debug, Clone, Serialize)]
pub struct OrgsRun {
    pub orgs: Vec<OrgMeasurement>,
    /// The relay's CPU use, percent of one core.
    pub cpu_percent: f64,
    pub peak_rss_kib: u64,
    /// Packets the relay dropped, as `org/reason` → count.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Datagrams a stranger sent to the first org's port (`--flood-with garbage`), per second.
    pub garbage_per_second: f64,
}

/// Both runs.
#[derive(Debug, Clone, Serialize)]
pub struct OrgsReport {
    pub orgs: usize,
    pub subscribers_per_org: usize,
    pub speakers_per_org: usize,
    pub rate: u32,
    pub seconds: f64,
    /// Packets per second each member may send (the relay's per-member limit).
    pub member_limit: u32,
    /// The flooding org's speakers send this many times `member_limit`.
    pub flood_factor: u32,
    pub flood_with: FloodKind,
    pub quiet: OrgsRun,
    pub flood: OrgsRun,
}

fn summarise(options: &BenchOptions, names: &[String], mut run: Run) -> OrgsRun {
    let subscribers = options.subscribers as u64;
    let orgs = run
        .orgs
        .iter_mut()
        .zip(names)
        .map(|(org, name)| {
            let expected = org.sent * (subscribers - 1);
            OrgMeasurement {
                org: name.clone(),
                packets_sent: org.sent,
                copies_expected: expected,
                copies_delivered: org.heard.copies,
                delivery_percent: 100.0 * org.heard.copies as f64 / expected.max(1) as f64,
                latency_p50_us: org.heard.quantile(0.5),
                latency_p99_us: org.heard.quantile(0.99),
            }
        })
        .collect();
    OrgsRun {
        orgs,
        cpu_percent: 100.0 * run.cpu.as_secs_f64() / run.elapsed.as_secs_f64(),
        peak_rss_kib: run.peak_rss_kib,
        drops: run
            .drops
            .into_iter()
            .map(|((org, reason), n)| (format!("{org}/{reason}"), n))
            .collect(),
        garbage_per_second: run.garbage_sent as f64 / run.elapsed.as_secs_f64(),
    }
}

pub(super) async fn measure(options: &BenchOptions) -> Result<OrgsReport> {
    let limit = options.member_limit;
    // Handshakes are held to the relay's default rate per source: each member has its own.
    let limits = format!(
        "packets_per_second = {limit}\nburst = {}",
        (limit / 2).max(1)
    );
    let setup = bench_setup(
        options.orgs,
        options.subscribers,
        &limits,
        options.voice_priority,
    )?;
    let names: Vec<String> = setup.orgs.iter().map(|o| o.name.clone()).collect();
    let quiet = summarise(options, &names, run(options, &setup, |_| 1, None).await?);
    let flooded = match options.flood_with {
        FloodKind::Voice => {
            // The first org's speakers each send flood × limit packets a second.
            let flood_per_tick = (u64::from(options.flood) * u64::from(limit))
                .div_ceil(u64::from(options.rate))
                .max(1) as usize;
            let per_tick = |org| if org == 0 { flood_per_tick } else { 1 };
            run(options, &setup, per_tick, None).await?
        }
        FloodKind::Garbage => run(options, &setup, |_| 1, Some(0)).await?,
    };
    let flood = summarise(options, &names, flooded);
    Ok(OrgsReport {
        orgs: options.orgs,
        subscribers_per_org: options.subscribers,
        speakers_per_org: options.speakers,
        rate: options.rate,
        seconds: options.seconds,
        member_limit: limit,
        flood_factor: options.flood,
        flood_with: options.flood_with,
        quiet,
        flood,
    })
}

pub(super) fn print(r: &OrgsReport) {
    let flood = match r.flood_with {
        FloodKind::Voice => format!("org0 floods at {}x", r.flood_factor),
        FloodKind::Garbage => "a stranger floods org0's port with garbage".to_string(),
    };
    println!(
        "{} orgs on one relay, {} subscribers and {} speaker(s) each at {} packets/s, {} s; \
         member limit {} packets/s; {flood}",
        r.orgs, r.subscribers_per_org, r.speakers_per_org, r.rate, r.seconds, r.member_limit,
    );
    for (label, run) in [("quiet", &r.quiet), ("flood", &r.flood)] {
        println!(
            "  {label}: relay CPU {:.1} %, peak RSS {} KiB",
            run.cpu_percent, run.peak_rss_kib
        );
        for m in &run.orgs {
            println!(
                "    {:<6} sent {:>6}, delivered {}/{} copies ({:.2} %), latency p50 {} µs, p99 {} µs",
                m.org,
                m.packets_sent,
                m.copies_delivered,
                m.copies_expected,
                m.delivery_percent,
                m.latency_p50_us,
                m.latency_p99_us
            );
        }
        if run.garbage_per_second > 0.0 {
            println!(
                "    garbage: {:.0} datagrams/s to org0's port",
                run.garbage_per_second
            );
        }
        if !run.drops.is_empty() {
            let drops: Vec<String> = run.drops.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("    drops: {}", drops.join(", "));
        }
    }
    for (quiet, flood) in r.quiet.orgs.iter().zip(&r.flood.orgs).skip(1) {
        println!(
            "  {} under the flood: delivery {:.2} %, p99 {:.2}x its quiet p99",
            flood.org,
            flood.delivery_percent,
            flood.latency_p99_us as f64 / quiet.latency_p99_us.max(1) as f64
        );
    }
}

/// Distinct datagrams the stranger cycles through.
const GARBAGE_DATAGRAMS: usize = 1024;

/// What a stranger who knows an org's port but holds no link sends it, in turn: datagrams
/// without QUIC's fixed bit (dropped unread), voice-plane datagrams under made-up link ids,
/// QUIC short-header packets for no connection, and QUIC v1 Initials whose protection does not
/// open. Seeded, so every run floods alike.
fn garbage() -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6761_7262);
    (0..GARBAGE_DATAGRAMS)
        .map(|n| {
            let mut datagram = vec![0u8; rng.gen_range(24..=160)];
            rng.fill(&mut datagram[..]);
            match n % 4 {
                // Fixed bit clear, and not the plane's version byte.
                0 => datagram[0] = rng.gen_range(0x00..0x11),
                1 => datagram[0] = 0x11,
                2 => datagram[0] = 0x40 | (datagram[0] & 0x3f),
                _ => {
                    // Long header, Initial, version 1, 8-byte connection ids, no token,
                    // padded to the 1,200 bytes a client's Initial takes.
                    datagram.resize(1200, 0);
                    datagram[0] = 0xc0 | (datagram[0] & 0x03);
                    datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
                    datagram[5] = 8;
                    datagram[14] = 8;
                    datagram[23] = 0;
                    datagram[24..26].copy_from_slice(&(0x4000u16 | 1174).to_be_bytes());
                }
            }
            datagram
        })
        .collect()
}

/// A stranger's flood of one port, ready to start.
pub(super) struct Flood {
    socket: UdpSocket,
    to: SocketAddr,
    datagrams: Vec<Vec<u8>>,
}

/// A stranger's flood of `to`, from a socket on 127.0.0.2 (still this machine's loopback,
/// and no member's address): the relay holds its Initials to the default handshake rate of a
/// source, as it would a stranger on the internet.
pub(super) fn flood(to: SocketAddr) -> Result<Flood> {
    let socket = UdpSocket::bind("127.0.0.2:0")
        .map_err(|e| anyhow!("binding the stranger's socket on 127.0.0.2: {e}"))?;
    Ok(Flood {
        socket,
        to,
        datagrams: garbage(),
    })
}

/// A flood under way on a thread of its own.
pub(super) struct Flooding {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Flood {
    /// Sends as fast as one thread can until [`Flooding::finish`].
    pub(super) fn start(self) -> Flooding {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0u64;
            // The stop is looked at by attempts, not by sends, so failing sends still stop.
            for (n, datagram) in self.datagrams.iter().cycle().enumerate() {
                if n % 64 == 0 && stopped.load(Ordering::Relaxed) {
                    break;
                }
                if self.socket.send_to(datagram, self.to).is_ok() {
                    sent += 1;
                }
            }
            sent
        });
        Flooding { stop, thread }
    }
}

impl Flooding {
    /// Stops the flood; returns how many datagrams it sent.
    pub(super) async fn finish(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || self.thread.join())
            .await?
            .map_err(|_| anyhow!("the flood's thread panicked"))
    }
}
