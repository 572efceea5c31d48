//! `callsign-relay bench`: speakers send voice-sized packets to a forwarder that copies each
//! to every other subscriber, over real loopback sockets, twice in one run:
//!
//! 1. the baseline, a plain UDP forwarder (`callsign-relay udp-forward`, a child process: one
//!    blocking socket, `recv_from` then one `send_to` per subscriber, no checks);
//! 2. the relay itself (`callsign-relay run`, a child process from a generated config): QUIC
//!    links with TLS, signed subscriptions checked against a charter, enveloped voice packets
//!    sealed with a real sender key, checked and forwarded as in production.
//!
//! Each child's CPU time (`/proc/<pid>/schedstat`) and peak memory (`VmHWM`) are read around
//! the measurement, so the parent's own work (the subscribers) does not count. Reported:
//! copies delivered per second, copies per CPU-second of the forwarder ("per core"), the
//! forwarder's CPU share, sender-to-subscriber latency p50/p99, and the relay/baseline ratios.

use crate::store::CharterStore;
use anyhow::{anyhow, bail, Context, Result};
use callsign_keys::{Identity, KeyFile, NodeKeys};
use callsign_mesh::charter::bundle::encode_bundle;
use callsign_mesh::charter::{ChannelId, Charter, OpBody, Permissions, RelayInfo, Role};
use callsign_mesh::forward::{envelope, Subscription, SubscriptionBody};
use callsign_mesh::voice::{SenderKey, SenderShortId, VoiceFlags, VoiceHeader};
use callsign_node::link::swarm::{answer_echo, build_swarm, NodeBehaviourEvent, SwarmConfig};
use callsign_node::link::LinkSocket;
use callsign_node::runtime::control::ControlMessage;
use futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Subscribers to the channel (the speakers among them).
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// Members talking at once.
    #[arg(long, default_value_t = 1)]
    pub speakers: usize,
    /// Packets per second per speaker (a 20 ms Opus talker sends 50).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Seconds measured (after every subscriber is in).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Opus payload bytes (24 kb/s at 20 ms is 60).
    #[arg(long, default_value_t = 60)]
    pub payload: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One forwarder's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub forwarder: &'static str,
    pub packets_sent: u64,
    pub copies_expected: u64,
    pub copies_delivered: u64,
    pub copies_per_second: f64,
    /// Copies per second of the forwarder's CPU time.
    pub copies_per_cpu_second: f64,
    /// The forwarder's CPU use over the measurement, percent of one core.
    pub cpu_percent: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    /// The forwarder's peak resident memory, KiB.
    pub peak_rss_kib: u64,
}

/// Both runs and their ratios.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub subscribers: usize,
    pub speakers: usize,
    pub rate: u32,
    pub seconds: f64,
    pub baseline: Measurement,
    pub relay: Measurement,
    /// relay / baseline, copies per CPU-second.
    pub efficiency_ratio: f64,
    /// relay − baseline, latency p50 and p99, µs.
    pub added_latency_p50_us: i64,
    pub added_latency_p99_us: i64,
}

/// Runs both measurements and prints the report.
pub fn run(options: BenchOptions) -> Result<()> {
    if options.subscribers < 2 || options.speakers == 0 || options.speakers > options.subscribers {
        bail!("need at least 2 subscribers and 1 to subscribers speakers");
    }
    if options.rate == 0 || options.seconds <= 0.0 {
        bail!("rate and seconds must be positive");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let baseline = runtime.block_on(baseline(&options))?;
    let relay = runtime.block_on(relay(&options))?;
    let report = BenchReport {
        subscribers: options.subscribers,
        speakers: options.speakers,
        rate: options.rate,
        seconds: options.seconds,
        efficiency_ratio: relay.copies_per_cpu_second / baseline.copies_per_cpu_second.max(1e-9),
        added_latency_p50_us: relay.latency_p50_us as i64 - baseline.latency_p50_us as i64,
        added_latency_p99_us: relay.latency_p99_us as i64 - baseline.latency_p99_us as i64,
        baseline,
        relay,
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &BenchReport) {
    println!(
        "{} subscribers, {} speaker(s) at {} packets/s, {} s",
        r.subscribers, r.speakers, r.rate, r.seconds
    );
    for m in [&r.baseline, &r.relay] {
        println!(
            "  {:<9} delivered {}/{} copies ({:.0}/s); {:.0} copies per CPU-second; CPU {:.1} %; \
             latency p50 {} µs, p99 {} µs; peak RSS {} KiB",
            m.forwarder,
            m.copies_delivered,
            m.copies_expected,
            m.copies_per_second,
            m.copies_per_cpu_second,
            m.cpu_percent,
            m.latency_p50_us,
            m.latency_p99_us,
            m.peak_rss_kib
        );
    }
    println!(
        "  relay / baseline, copies per CPU-second: {:.3}; added latency p50 {} µs, p99 {} µs",
        r.efficiency_ratio, r.added_latency_p50_us, r.added_latency_p99_us
    );
}

// ---- the child processes ----

/// The baseline forwarder's loop (`callsign-relay udp-forward`).
pub fn udp_forward(to: &[u16]) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    println!("udp-forward on {}", socket.local_addr()?);
    std::io::stdout().flush()?;
    let targets: Vec<SocketAddr> = to
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        for target in &targets {
            if *target != from {
                let _ = socket.send_to(&buf[..n], target);
            }
        }
    }
}

/// A child process we measure; killed when dropped.
struct Measured {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Measured {
    fn spawn(args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding our own binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the forwarder")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The first stdout line that starts with `prefix`, without it.
    fn line(&self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(_) => break,
            }
        }
        bail!("the forwarder never printed {prefix:?}")
    }

    /// CPU time so far, over all the child's threads.
    fn cpu(&self) -> Result<Duration> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut ns = 0u64;
        for task in
            std::fs::read_dir(&tasks).context("reading the forwarder's threads (Linux /proc)")?
        {
            let path = task?.path().join("schedstat");
            // A thread that just exited has no file any more.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            ns += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("unexpected schedstat {text:?}"))?;
        }
        Ok(Duration::from_nanos(ns))
    }

    /// Peak resident memory, KiB.
    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- timing ----

/// Send times by (speaker, sequence), nanoseconds since `start`.
struct SendTimes {
    start: Instant,
    at: Vec<AtomicU64>,
}

impl SendTimes {
    fn new(speakers: usize) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            at: (0..speakers * 65536).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn sent(&self, speaker: usize, seq: u16) {
        let ns = self.start.elapsed().as_nanos() as u64;
        self.at[speaker * 65536 + usize::from(seq)].store(ns, Ordering::Relaxed);
    }

    fn latency_us(&self, speaker: usize, seq: u16) -> Option<u64> {
        let sent = self
            .at
            .get(speaker * 65536 + usize::from(seq))?
            .load(Ordering::Relaxed);
        let now = self.start.elapsed().as_nanos() as u64;
        (sent > 0).then(|| now.saturating_sub(sent) / 1000)
    }
}

/// What the subscribers heard.
#[derive(Default)]
struct Heard {
    copies: u64,
    latencies_us: Vec<u64>,
}

impl Heard {
    fn merge(&mut self, other: Heard) {
        self.copies += other.copies;
        self.latencies_us.extend(other.latencies_us);
    }

    fn quantile(&mut self, q: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        self.latencies_us.sort_unstable();
        let at = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[at]
    }
}

#[allow(clippy::too_many_arguments)]
fn measurement(
    forwarder: &'static str,
    options: &BenchOptions,
    sent: u64,
    mut heard: Heard,
    cpu: Duration,
    elapsed: Duration,
    peak_rss_kib: u64,
) -> Measurement {
    let cpu_s = cpu.as_secs_f64().max(1e-9);
    Measurement {
        forwarder,
        packets_sent: sent,
        copies_expected: sent * (options.subscribers as u64 - 1),
        copies_delivered: heard.copies,
        copies_per_second: heard.copies as f64 / elapsed.as_secs_f64(),
        copies_per_cpu_second: heard.copies as f64 / cpu_s,
        cpu_percent: 100.0 * cpu_s / elapsed.as_secs_f64(),
        latency_p50_us: heard.quantile(0.5),
        latency_p99_us: heard.quantile(0.99),
        peak_rss_kib,
    }
}

/// Paces `speakers` at `rate` for `seconds`, calling `send(speaker, seq)`; returns packets sent.
async fn speak(options: &BenchOptions, mut send: impl FnMut(usize, u16)) -> u64 {
    let period = Duration::from_secs_f64(1.0 / f64::from(options.rate));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (options.seconds * f64::from(options.rate)).round() as u64;
    let mut sent = 0;
    for n in 0..total {
        tick.tick().await;
        for speaker in 0..options.speakers {
            send(speaker, n as u16);
            sent += 1;
        }
    }
    // Let the last copies arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sent
}

// ---- the baseline ----

async fn baseline(options: &BenchOptions) -> Result<Measurement> {
    let mut sockets = Vec::new();
    for _ in 0..options.subscribers {
        sockets.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    }
    let ports: Vec<String> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()?;
    let child = Measured::spawn(&["udp-forward".into(), format!("--to={}", ports.join(","))])?;
    let forwarder: SocketAddr = child.line("udp-forward on")?.parse()?;
    let times = SendTimes::new(options.speakers);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    let sockets: Vec<Arc<tokio::net::UdpSocket>> = sockets.into_iter().map(Arc::new).collect();
    for socket in &sockets {
        let (socket, times, stop) = (socket.clone(), times.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut heard = Heard::default();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let got =
                    tokio::time::timeout(Duration::from_millis(50), socket.recv(&mut buf)).await;
                if let Ok(Ok(n)) = got {
                    if n >= 3 {
                        heard.copies += 1;
                        let seq = u16::from_be_bytes([buf[1], buf[2]]);
                        if let Some(l) = times.latency_us(usize::from(buf[0]), seq) {
                            heard.latencies_us.push(l);
                        }
                    }
                }
            }
            heard
        }));
    }
    let payload = vec![0x5a; options.payload + 30];
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
    stop.store(true, Ordering::Relaxed);
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

// ---- the relay ----

/// The org, the relay's files and everyone's keys.
struct BenchOrg {
    dir: std::path::PathBuf,
    members: Vec<NodeKeys>,
    org: callsign_keys::IdentityKey,
    channel: ChannelId,
}

fn bench_org(subscribers: usize) -> Result<BenchOrg> {
    let dir = std::env::temp_dir().join(format!("callsign-relay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut rng = rand::rngs::OsRng;
    let root = Identity::generate(&mut rng);
    let relay = NodeKeys::generate(&mut rng);
    let members: Vec<NodeKeys> = (0..subscribers)
        .map(|_| NodeKeys::generate(&mut rng))
        .collect();
    let (mut charter, _) = Charter::create(&root, "bench", 0)?;
    let everything = Permissions::LISTEN.union(Permissions::SPEAK);
    charter.edit(
        &root,
        OpBody::PutRole {
            name: "member".into(),
            role: Role {
                perms: everything,
                priority: Default::default(),
            },
        },
        0,
    )?;
    charter.edit(
        &root,
        OpBody::AddChannel {
            parent: None,
            name: "ops".into(),
        },
        0,
    )?;
    for (i, m) in members.iter().enumerate() {
        charter.edit(
            &root,
            OpBody::PutMember {
                peer: m.identity.public(),
                name: format!("m{i}"),
                roles: vec!["member".into()],
            },
            0,
        )?;
    }
    charter.edit(
        &root,
        OpBody::PutRelay {
            peer: relay.identity.public(),
            info: RelayInfo {
                addrs: Vec::new(),
                capacity: subscribers as u32,
            },
        },
        0,
    )?;
    let bundle = encode_bundle(
        &charter.org(),
        charter.dag().iter().map(|o| o.encoded.as_slice()),
    );
    std::fs::write(dir.join("org.charter"), bundle)?;
    KeyFile::seal(&relay, None, &mut rng)?.save(&dir.join("relay.key"), true)?;
    std::fs::write(
        dir.join("relay.toml"),
        format!(
            "version = 1\nkey = \"relay.key\"\nlisten = \"127.0.0.1:0\"\n\
             metrics = \"127.0.0.1:0\"\ndata_dir = \"state\"\ncircuits = false\n\
             [org]\ncharter = \"org.charter\"\n[limits]\nmax_subscribers = {subscribers}\n\
             packets_per_second = 100000\nburst = 1000\n"
        ),
    )?;
    // Fail here, with the store's reason, rather than in the child.
    CharterStore::open(
        &dir.join("check"),
        Some(&dir.join("org.charter")),
        relay.identity.public(),
    )?;
    let channel = charter
        .state()
        .find("/ops")
        .ok_or_else(|| anyhow!("the bench channel is missing"))?;
    Ok(BenchOrg {
        dir,
        members,
        org: charter.org(),
        channel,
    })
}

/// `GET path` on the relay's metrics address.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// One member's QUIC endpoint and swarm, without the node runtime: it subscribes once linked
/// to the relay, answers the relay's control requests, and counts what the relay forwards.
struct Client {
    network: callsign_node::link::swarm::NodeNetwork,
    relay: PeerId,
    subscription: Vec<u8>,
}

impl Client {
    fn connect(
        keys: &NodeKeys,
        org: &BenchOrg,
        relay: &Multiaddr,
        relay_peer: PeerId,
    ) -> Result<Self> {
        let socket = LinkSocket::bind_tokio(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let mut network = build_swarm(
            keys.identity.to_libp2p(),
            SwarmConfig {
                mdns: false,
                ..SwarmConfig::default()
            },
            socket,
        )?;
        network.swarm.dial(relay.clone())?;
        let subscription = Subscription::sign(
            &keys.identity,
            SubscriptionBody {
                org: org.org,
                subscriber: keys.identity.public(),
                seq: 1,
                channels: vec![org.channel],
            },
        )?;
        Ok(Self {
            network,
            relay: relay_peer,
            subscription: ControlMessage::Subscribe(subscription.encode()).encode(),
        })
    }

    async fn run(
        mut self,
        speakers: Arc<Vec<SenderShortId>>,
        times: Arc<SendTimes>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Heard {
        let mut heard = Heard::default();
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                event = self.network.swarm.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == self.relay => {
                        let request = self.subscription.clone();
                        self.network.swarm.behaviour_mut().control.send_request(&peer_id, request);
                    }
                    SwarmEvent::Behaviour(event) => {
                        let mut event = Some(event);
                        answer_echo(&mut self.network.swarm, &mut event);
                        if let Some(NodeBehaviourEvent::Control(request_response::Event::Message {
                            message: Message::Request { channel, .. },
                            ..
                        })) = event
                        {
                            let control = &mut self.network.swarm.behaviour_mut().control;
                            let _ = control.send_response(channel, Vec::new());
                        }
                    }
                    _ => {}
                },
                Some(datagram) = self.network.datagrams.recv() => {
                    heard.copies += 1;
                    if let Ok((header, _)) = VoiceHeader::parse(&datagram.payload) {
                        if let Some(speaker) = speakers.iter().position(|s| *s == header.sender) {
                            if let Some(l) = times.latency_us(speaker, header.sequence) {
                                heard.latencies_us.push(l);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        heard
    }
}

/// The relay's `/health` `subscribers` figure.
fn subscribers(metrics: SocketAddr) -> Option<usize> {
    let response = http_get(metrics, "/health").ok()?;
    let body = response.split("\r\n\r\n").nth(1)?;
    let health: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    health.get("subscribers")?.as_u64().map(|n| n as usize)
}

async fn relay(options: &BenchOptions) -> Result<Measurement> {
    let org = bench_org(options.subscribers)?;
    let child = Measured::spawn(&[
        "run".into(),
        "--config".into(),
        org.dir.join("relay.toml").display().to_string(),
    ])?;
    let relay_addr: Multiaddr = child.line("relay listening on")?.parse()?;
    let metrics: SocketAddr = child
        .line("metrics on http://")?
        .trim_end_matches("/metrics")
        .parse()?;
    let relay_peer = relay_addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the relay's address names no peer"))?;
    let times = SendTimes::new(options.speakers);
    let speakers: Arc<Vec<SenderShortId>> = Arc::new(
        org.members[..options.speakers]
            .iter()
            .map(|k| SenderShortId::of(&k.identity.public()))
            .collect(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut links = Vec::new();
    let mut tasks = Vec::new();
    for keys in &org.members {
        let client = Client::connect(keys, &org, &relay_addr, relay_peer)?;
        links.push(client.network.links.clone());
        tasks.push(tokio::spawn(client.run(
            speakers.clone(),
            times.clone(),
            stop.clone(),
        )));
    }
    // Everyone linked and subscribed before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = tokio::task::spawn_blocking(move || subscribers(metrics))
            .await?
            .unwrap_or(0);
        if n == options.subscribers {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {} subscribers got in", options.subscribers);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut rng = rand::rngs::OsRng;
    let keys: Vec<SenderKey> = (0..options.speakers)
        .map(|_| SenderKey::generate(1, &mut rng))
        .collect();
    let payload = vec![0x5a; options.payload];
    let cpu_before = child.cpu()?;
    let started = Instant::now();
    let sent = speak(options, |speaker, seq| {
        let header = VoiceHeader {
            flags: VoiceFlags::empty(),
            channels: vec![org.channel],
            sender: speakers[speaker],
            sequence: seq,
            timestamp: u32::from(seq) * 960,
            key_id: keys[speaker].id(),
        };
        if let Ok(packet) = keys[speaker].seal(&header, &payload) {
            times.sent(speaker, seq);
            let _ = links[speaker].send_datagram(&relay_peer, &envelope(&packet));
        }
    })
    .await;
    let elapsed = started.elapsed();
    let cpu = child.cpu()? - cpu_before;
    let peak = child.peak_rss_kib();
    stop.store(true, Ordering::Relaxed);
    let mut heard = Heard::default();
    for task in tasks {
        heard.merge(task.await?);
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&org.dir);
    Ok(measurement(
        "relay", options, sent, heard, cpu, elapsed, peak,
    ))
}
