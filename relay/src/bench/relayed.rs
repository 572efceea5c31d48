//! The relay under test: `callsign-relay run` from a generated org and config, with each
//! subscriber a bare QUIC endpoint and swarm (no node runtime) that subscribes and counts.

use super::process::Measured;
use super::{measurement, speak, BenchOptions, Heard, Measurement, SendTimes, VoicePriority};
use crate::store::CharterStore;
use anyhow::{anyhow, bail, Result};
use callsign_keys::{Identity, KeyFile, NodeKeys};
use callsign_mesh::charter::bundle::encode_bundle;
use callsign_mesh::charter::{ChannelId, Charter, OpBody, Permissions, RelayInfo, Role};
use callsign_mesh::control::ControlMessage;
use callsign_mesh::forward::{envelope, Subscription, SubscriptionBody};
use callsign_mesh::voice::{SenderKey, SenderShortId, VoiceFlags, VoiceHeader};
use callsign_node::link::swarm::{answer_echo, build_swarm, SwarmConfig};
use callsign_node::link::{multiaddr_to_socket, LinkSocket};
use callsign_node::runtime::RELAY_PARK_AFTER;
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One org: everyone's keys and the bench channel.
pub(super) struct BenchOrg {
    pub(super) name: String,
    members: Vec<NodeKeys>,
    org: callsign_keys::IdentityKey,
    channel: ChannelId,
}

/// The relay's files and the orgs it serves.
pub(super) struct BenchSetup {
    dir: std::path::PathBuf,
    pub(super) orgs: Vec<BenchOrg>,
}

impl Drop for BenchSetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An org named `name` with `subscribers` members who may all speak and listen on `/ops`,
/// renting `relay`; its bundle goes to `dir/<name>.charter`.
fn bench_org(
    dir: &std::path::Path,
    name: &str,
    subscribers: usize,
    relay: &NodeKeys,
) -> Result<BenchOrg> {
    let mut rng = rand::rngs::OsRng;
    let root = Identity::generate(&mut rng);
    let members: Vec<NodeKeys> = (0..subscribers)
        .map(|_| NodeKeys::generate(&mut rng))
        .collect();
    let (mut charter, _) = Charter::create(&root, name, 0)?;
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
    let file = dir.join(format!("{name}.charter"));
    std::fs::write(&file, bundle)?;
    // Fail here, with the store's reason, rather than in the child.
    CharterStore::open(
        &dir.join("check").join(name),
        Some(&file),
        relay.identity.public(),
    )?;
    let channel = charter
        .state()
        .find("/ops")
        .ok_or_else(|| anyhow!("the bench channel is missing"))?;
    Ok(BenchOrg {
        name: name.to_string(),
        members,
        org: charter.org(),
        channel,
    })
}

/// `orgs` orgs of `subscribers` members each, and a relay config serving them with `limits`
/// (a TOML `[limits]` body) and `priority`. One org uses the original `[org]` form, more use
/// `[[org]]`.
pub(super) fn bench_setup(
    orgs: usize,
    subscribers: usize,
    limits: &str,
    priority: VoicePriority,
) -> Result<BenchSetup> {
    let dir = std::env::temp_dir().join(format!("callsign-relay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let relay = NodeKeys::generate(&mut rand::rngs::OsRng);
    KeyFile::seal(&relay, None, &mut rand::rngs::OsRng)?.save(&dir.join("relay.key"), true)?;
    let mut config = "version = 1\nkey = \"relay.key\"\nmetrics = \"127.0.0.1:0\"\n\
                      data_dir = \"state\"\ncircuits = false\n"
        .to_string();
    config += priority.config_line();
    let setup = BenchSetup {
        orgs: (0..orgs)
            .map(|i| bench_org(&dir, &format!("org{i}"), subscribers, &relay))
            .collect::<Result<_>>()?,
        dir,
    };
    if orgs == 1 {
        config += "listen = \"127.0.0.1:0\"\n";
    }
    config += &format!("[limits]\nmax_subscribers = {subscribers}\n{limits}\n");
    if orgs == 1 {
        config += "[org]\ncharter = \"org0.charter\"\n";
    } else {
        for org in &setup.orgs {
            config += &format!(
                "[[org]]\nname = \"{0}\"\nlisten = \"127.0.0.1:0\"\ncharter = \"{0}.charter\"\n",
                org.name
            );
        }
    }
    std::fs::write(setup.dir.join("relay.toml"), config)?;
    Ok(setup)
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
    address: Multiaddr,
    subscription: Vec<u8>,
}

/// How long a member whose dial failed (the relay refused it at its connection limit) waits
/// before it dials again; members' nodes dial their org's relays every 2 s.
const REDIAL: Duration = Duration::from_secs(1);

/// Member `n`'s own source address, as if each were a host of its own: `127.1.x.y` (all of
/// 127/8 is this machine's loopback), so the relay's per-source limits see one member each.
fn member_address(n: usize) -> std::net::Ipv4Addr {
    let [_, high, x, y] = (n as u32 + 1).to_be_bytes();
    std::net::Ipv4Addr::new(127, 1 + high, x, y)
}

impl Client {
    fn connect(
        keys: &NodeKeys,
        n: usize,
        org: &BenchOrg,
        relay: &Multiaddr,
        relay_peer: PeerId,
    ) -> Result<Self> {
        let socket = LinkSocket::bind_tokio(SocketAddr::from((member_address(n), 0)))?;
        let mut network = build_swarm(
            keys.identity.to_libp2p(),
            SwarmConfig {
                mdns: false,
                ..SwarmConfig::default()
            },
            socket,
        )?;
        // Dialed as a member's node dials its org's rented relay.
        network.links.set_rented_relay(relay_peer, true);
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
            address: relay.clone(),
            subscription: ControlMessage::Subscribe(subscription.encode()).encode(),
        })
    }

    /// Drives the swarm (the link, the subscription, the relay's control requests) in one task
    /// and counts the relay's copies in another until `stop` turns true. Counting apart keeps
    /// each copy's cost in this process to one wake-up and a header parse, so the subscribers'
    /// own work (a swarm poll per datagram) does not delay the copies the others time.
    async fn run(
        self,
        speakers: Arc<Vec<SenderShortId>>,
        times: Arc<SendTimes>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Heard {
        let Self {
            network,
            relay,
            address,
            subscription,
        } = self;
        let mut swarm = network.swarm;
        let mut datagrams = network.datagrams;
        let mut swarm_stop = stop.clone();
        let driver = tokio::spawn(async move {
            let mut stopped = std::pin::pin!(swarm_stop.wait_for(|s| *s));
            let mut redial_at = None;
            loop {
                let redial = async {
                    match redial_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut stopped => return swarm,
                    () = redial => {
                        redial_at = None;
                        let _ = swarm.dial(address.clone());
                    }
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == relay => {
                            let request = subscription.clone();
                            swarm.behaviour_mut().control.send(&peer_id, request, None);
                        }
                        // Refused at the relay's connection limit, as a member's node would be.
                        // (A parked link closes its connection too, and needs no dial.)
                        SwarmEvent::OutgoingConnectionError { .. } => {
                            redial_at = Some(tokio::time::Instant::now() + REDIAL);
                        }
                        SwarmEvent::Behaviour(event) => {
                            // The control behaviour acknowledges requests itself.
                            answer_echo(&mut swarm, &mut Some(event));
                        }
                        _ => {}
                    },
                }
            }
        });
        let mut heard = Heard::default();
        let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
        loop {
            // What already arrived is counted before the stop.
            tokio::select! {
                biased;
                // The relay's periodic heads may arrive as lossy control: not a copy.
                Some(datagram) = datagrams.recv() => {
                    if datagram.control {
                        continue;
                    }
                    heard.copies += 1;
                    if let Ok((header, _)) = VoiceHeader::parse(&datagram.payload) {
                        if let Some(speaker) = speakers.iter().position(|s| *s == header.sender) {
                            let arrived = datagram.received_at;
                            if let Some(l) = times.latency_us(speaker, header.sequence, arrived) {
                                heard.latencies_us.push(l);
                            }
                        }
                    }
                }
                _ = &mut stopped => break,
            }
        }
        // The links close with the swarm, after the last copy is counted.
        drop(driver.await);
        heard
    }
}

/// The relay's `/health` `subscribers` figure (all orgs).
fn subscribers(metrics: SocketAddr) -> Option<usize> {
    let response = http_get(metrics, "/health").ok()?;
    let body = response.split("\r\n\r\n").nth(1)?;
    let health: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    health.get("subscribers")?.as_u64().map(|n| n as usize)
}

/// The relay's drop counters, by (org, reason), from its `/metrics` text.
fn drops(text: &str) -> BTreeMap<(String, String), u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("callsign_relay_drops_total{org=\"")?;
            let (org, rest) = rest.split_once("\",reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            Some((
                (org.to_string(), reason.to_string()),
                value.trim().parse().ok()?,
            ))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The relay's own forwarding latency (arrival at its link layer to the last copy handed to
/// the kernel) in µs, read off the histogram in its `/metrics` text over all orgs: the mean (from the
/// histogram's sum and count) and p99 (a power-of-two bucket's upper bound).
fn forward_latency(text: &str) -> (u64, u64) {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut sum_s, mut count) = (0.0f64, 0u64);
    for line in text.lines() {
        let value = || line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok());
        if line.starts_with("callsign_relay_forward_latency_seconds_sum") {
            sum_s += value().unwrap_or(0.0);
        }
        if line.starts_with("callsign_relay_forward_latency_seconds_count") {
            count += value().unwrap_or(0.0) as u64;
        }
        let Some(rest) = line.strip_prefix("callsign_relay_forward_latency_seconds_bucket{le=\"")
        else {
            continue;
        };
        let Some((le, rest)) = rest.split_once('"') else {
            continue;
        };
        let Some(count) = rest.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let upper_us = match le.parse::<f64>() {
            Ok(seconds) => (seconds * 1e6).round() as u64,
            Err(_) => u64::MAX,
        };
        *buckets.entry(upper_us).or_default() += count;
    }
    let total = buckets.values().last().copied().unwrap_or(0);
    let at = |q: f64| {
        let want = (total as f64 * q).ceil() as u64;
        buckets
            .iter()
            .find(|(_, n)| **n >= want.max(1))
            .map_or(0, |(le, _)| *le)
    };
    ((sum_s * 1e6 / count.max(1) as f64).round() as u64, at(0.99))
}

/// Time given to the links after everyone subscribed, before the idle measurement: until the
/// relay has parked them (`RELAY_PARK_AFTER` of quiet control, a look a second, the closing),
/// so both measurements see a relay as it runs once its members are in, not the one-off
/// closing of every member's QUIC connection (which fell inside 10 s rounds).
const IDLE_SETTLE: Duration = Duration::from_secs(RELAY_PARK_AFTER.as_secs() + 3);
/// How long the relay's idle CPU is measured for.
const IDLE_MEASURED: Duration = Duration::from_secs(3);

/// What one org's members sent and heard in a run.
pub(super) struct OrgHeard {
    pub(super) sent: u64,
    pub(super) heard: Heard,
}

/// One run of the relay process.
pub(super) struct Run {
    pub(super) orgs: Vec<OrgHeard>,
    pub(super) cpu: Duration,
    /// The relay's CPU per second of wall time with everyone linked and nobody talking.
    pub(super) idle_cpu: f64,
    /// From the first dial until every member subscribed.
    pub(super) joined: Duration,
    pub(super) elapsed: Duration,
    pub(super) peak_rss_kib: u64,
    /// Drops by (org, reason) at the end.
    pub(super) drops: BTreeMap<(String, String), u64>,
    /// The relay's own forwarding latency, mean and p99 (a bucket bound), µs.
    pub(super) forward_latency_us: (u64, u64),
    /// Datagrams the stranger sent to the flooded org's port (`--flood-with garbage`).
    pub(super) garbage_sent: u64,
}

/// Starts the relay from `setup`, links and subscribes every member, then for
/// `options.seconds` has each org's first `options.speakers` members send `per_tick(org)`
/// packets each per tick of `options.rate`, and counts what everyone hears. With
/// `garbage_to`, a stranger floods that org's port meanwhile ([`super::orgs::flood`]).
pub(super) async fn run(
    options: &BenchOptions,
    setup: &BenchSetup,
    per_tick: impl Fn(usize) -> usize,
    garbage_to: Option<usize>,
) -> Result<Run> {
    let child = Measured::spawn(
        &[
            "run".into(),
            "--config".into(),
            setup.dir.join("relay.toml").display().to_string(),
        ],
        options.forwarder_cpu,
    )?;
    let addresses: Vec<Multiaddr> = if setup.orgs.len() == 1 {
        vec![child.line("relay listening on")?.parse()?]
    } else {
        setup
            .orgs
            .iter()
            .map(|org| {
                Ok(child
                    .line(&format!("org {} listening on", org.name))?
                    .parse()?)
            })
            .collect::<Result<_>>()?
    };
    let metrics: SocketAddr = child
        .line("metrics on http://")?
        .trim_end_matches("/metrics")
        .parse()?;
    let relay_peer = addresses[0]
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the relay's address names no peer"))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Per org: the speakers' short ids, their send times, their links, the listeners' tasks.
    let mut speakers = Vec::new();
    let mut times = Vec::new();
    let mut links = Vec::new();
    let mut tasks = Vec::new();
    for (o, (org, address)) in setup.orgs.iter().zip(&addresses).enumerate() {
        let ids: Arc<Vec<SenderShortId>> = Arc::new(
            org.members[..options.speakers]
                .iter()
                .map(|k| SenderShortId::of(&k.identity.public()))
                .collect(),
        );
        let sent_at = SendTimes::new(options.speakers);
        let mut org_links = Vec::new();
        let mut org_tasks = Vec::new();
        for (k, keys) in org.members.iter().enumerate() {
            let n = o * org.members.len() + k;
            let client = Client::connect(keys, n, org, address, relay_peer)?;
            org_links.push(client.network.links.clone());
            org_tasks.push(tokio::spawn(client.run(
                ids.clone(),
                sent_at.clone(),
                stopped.clone(),
            )));
        }
        speakers.push(ids);
        times.push(sent_at);
        links.push(org_links);
        tasks.push(org_tasks);
    }
    // Everyone linked and subscribed before the clock starts.
    let everyone = options.subscribers * setup.orgs.len();
    let joining = Instant::now();
    let deadline = joining + Duration::from_secs(60);
    loop {
        let n = tokio::task::spawn_blocking(move || subscribers(metrics))
            .await?
            .unwrap_or(0);
        if n == everyone {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {everyone} subscribers got in");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let joined = joining.elapsed();
    // Everyone linked and nobody talking: what the links cost by themselves, once the
    // handshakes' and subscriptions' work is done and the links are parked.
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_before = child.cpu()?;
    tokio::time::sleep(IDLE_MEASURED).await;
    let idle_cpu = (child.cpu()? - idle_before).as_secs_f64() / IDLE_MEASURED.as_secs_f64();
    let mut rng = rand::rngs::OsRng;
    let keys: Vec<Vec<SenderKey>> = setup
        .orgs
        .iter()
        .map(|_| {
            (0..options.speakers)
                .map(|_| SenderKey::generate(1, &mut rng))
                .collect()
        })
        .collect();
    let counts: Vec<usize> = (0..setup.orgs.len()).map(&per_tick).collect();
    let payload = vec![0x5a; options.payload];
    let mut sent = vec![0u64; setup.orgs.len()];
    let garbage = garbage_to
        .map(|org| {
            let (to, _) = multiaddr_to_socket(&addresses[org])
                .ok_or_else(|| anyhow!("{} is not a QUIC address", addresses[org]))?;
            super::orgs::flood(to)
        })
        .transpose()?;
    options.ready().await;
    let cpu_before = child.cpu()?;
    let started = Instant::now();
    let garbage = garbage.map(super::orgs::Flood::start);
    speak(options, |speaker, tick| {
        for (o, org) in setup.orgs.iter().enumerate() {
            for k in 0..counts[o] {
                let seq = (usize::from(tick) * counts[o] + k) as u16;
                let header = VoiceHeader {
                    flags: VoiceFlags::empty(),
                    channels: vec![org.channel],
                    sender: speakers[o][speaker],
                    sequence: seq,
                    timestamp: u32::from(seq) * 960,
                    key_id: keys[o][speaker].id(),
                };
                if let Ok(packet) = keys[o][speaker].seal(&header, &payload) {
                    times[o].sent(speaker, seq);
                    let _ = links[o][speaker].send_datagram(&relay_peer, &envelope(&packet));
                    sent[o] += 1;
                }
            }
        }
    })
    .await;
    let garbage_sent = match garbage {
        Some(flood) => flood.finish().await?,
        None => 0,
    };
    let elapsed = started.elapsed();
    let cpu = child.cpu()? - cpu_before;
    let peak_rss_kib = child.peak_rss_kib();
    let text = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics"))
        .await?
        .unwrap_or_default();
    let (drops, forward_latency_us) = (drops(&text), forward_latency(&text));
    let _ = stop.send(true);
    let mut orgs = Vec::new();
    for (org_tasks, sent) in tasks.into_iter().zip(sent) {
        let mut heard = Heard::default();
        for task in org_tasks {
            heard.merge(task.await?);
        }
        orgs.push(OrgHeard { sent, heard });
    }
    drop(child);
    Ok(Run {
        orgs,
        cpu,
        idle_cpu,
        joined,
        elapsed,
        peak_rss_kib,
        drops,
        forward_latency_us,
        garbage_sent,
    })
}

/// The relay alone: one org, its packet limits out of the way, every speaker at the bench's rate.
pub(super) async fn measure(options: &BenchOptions) -> Result<Measurement> {
    // Handshakes are held to the relay's default rate per source: each member has its own.
    let setup = bench_setup(
        1,
        options.subscribers,
        "packets_per_second = 100000\nburst = 1000",
        options.voice_priority,
    )?;
    let mut run = run(options, &setup, |_| 1, None).await?;
    let org = run.orgs.remove(0);
    let mut m = measurement(
        "relay",
        options,
        org.sent,
        org.heard,
        run.cpu,
        run.elapsed,
        run.peak_rss_kib,
    );
    m.inside_mean_us = Some(run.forward_latency_us.0);
    m.inside_p99_us = Some(run.forward_latency_us.1);
    m.idle_cpu_ms_per_s = Some(run.idle_cpu * 1e3);
    m.joined_s = Some(run.joined.as_secs_f64());
    Ok(m)
}
