//! The relay under test: `callsign-relay run` from a generated org and config, with each
//! subscriber a bare QUIC endpoint and swarm (no node runtime) that subscribes and counts.

use super::process::Measured;
use super::{measurement, speak, BenchOptions, Heard, Measurement, SendTimes};
use crate::store::CharterStore;
use anyhow::{anyhow, bail, Result};
use callsign_keys::{Identity, KeyFile, NodeKeys};
use callsign_mesh::charter::bundle::encode_bundle;
use callsign_mesh::charter::{ChannelId, Charter, OpBody, Permissions, RelayInfo, Role};
use callsign_mesh::control::ControlMessage;
use callsign_mesh::forward::{envelope, Subscription, SubscriptionBody};
use callsign_mesh::voice::{SenderKey, SenderShortId, VoiceFlags, VoiceHeader};
use callsign_node::link::swarm::{answer_echo, build_swarm, SwarmConfig};
use callsign_node::link::LinkSocket;
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
                        self.network.swarm.behaviour_mut().control.send(&peer_id, request, None);
                    }
                    SwarmEvent::Behaviour(event) => {
                        // The control behaviour acknowledges requests itself.
                        answer_echo(&mut self.network.swarm, &mut Some(event));
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

pub(super) async fn measure(options: &BenchOptions) -> Result<Measurement> {
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
