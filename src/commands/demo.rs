//! `callsign demo`: N nodes in this process on 127.0.0.1 with real QUIC sockets, one demo org,
//! a scripted PTT session over synthetic speech (simulcast, a whisper, a refused transmission,
//! a pre-emption on the half-duplex `/net`), and a report of every stream and the floor.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::Permissions;
use callsign_mesh::floor::FloorEvent;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::{describe_floor, AudioInput, NodeStats, StreamChannel};
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent};
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many nodes (2–12).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Length of the scripted session in seconds (at least 3).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Drop this fraction (0.05) or percentage (5%) of voice datagrams at each sender.
    #[arg(long, default_value = "0", value_parser = super::audio::parse_probability)]
    pub loss: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write what each node heard to DIR/<name>.wav.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed for keys, synthetic voices and loss.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run each node's echo canceller on its synthetic voice, with what it plays as the far
    /// end (it is off without sound cards): to measure what it costs.
    #[arg(long)]
    pub echo_cancellation: bool,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
}

#[derive(Serialize)]
struct StreamLine {
    from: String,
    to: String,
    channel: String,
    frames_sent: u64,
    frames_played: u64,
    frames_concealed: u64,
    mouth_to_ear_ms: Option<Latency>,
    /// Mean time a played frame waited in the receiver's jitter buffer.
    jitter_buffer_ms: f64,
    /// Link round-trip time between the two nodes at the end of the session.
    rtt_ms: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    streams: Vec<StreamLine>,
    acl_drops: u64,
    decrypt_failures: u64,
    /// Transmissions the charter refused at the sender.
    ptt_denied: u64,
    /// Frames played on a channel by a node the charter does not let listen there (must be 0).
    unauthorised_frames: u64,
    /// CPU time of the whole process over the session, per node, as a percentage of one core.
    cpu_per_node_pct: f64,
    /// Floor control on the half-duplex channel, as each node saw it.
    floor: Vec<String>,
    /// Frames dropped at receivers because their sender did not hold the floor.
    out_of_turn_drops: u64,
}

/// One scripted action at an offset into the session.
enum Action {
    Ptt(usize, Vec<usize>, f64),
    Whisper(usize, usize, f64),
    Refused(usize, usize),
}

pub fn run(args: DemoArgs) -> Result<()> {
    if !(2..=12).contains(&args.nodes) {
        bail!("--nodes must be between 2 and 12");
    }
    if !(args.seconds >= 3.0 && args.seconds <= 600.0) {
        bail!("--seconds must be between 3 and 600");
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating output directory {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(session(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for s in &report.streams {
            let latency = s.mouth_to_ear_ms.as_ref().map_or(String::new(), |l| {
                format!(", mouth-to-ear p50 {:.0} ms p99 {:.0} ms", l.p50, l.p99)
            });
            println!(
                "{} -> {} on {}: sent {}, played {} ({:.1}%), concealed {}{latency}",
                s.from,
                s.to,
                s.channel,
                s.frames_sent,
                s.frames_played,
                100.0 * s.frames_played as f64 / s.frames_sent.max(1) as f64,
                s.frames_concealed,
            );
        }
        println!(
            "acl drops {}, decrypt failures {}, refused at sender {}, unauthorised frames {}, \
             cpu {:.1}% of a core per node{}",
            report.acl_drops,
            report.decrypt_failures,
            report.ptt_denied,
            report.unauthorised_frames,
            report.cpu_per_node_pct,
            if args.echo_cancellation {
                " (echo canceller on)"
            } else {
                ""
            }
        );
        for line in &report.floor {
            println!("floor: {line}");
        }
        println!("frames dropped out of turn: {}", report.out_of_turn_drops);
    }
    Ok(())
}

fn script(nodes: usize, seconds: f64) -> Vec<(f64, Action)> {
    let at = |fraction: f64| fraction * seconds;
    // Indices: 0 officer (root), 1 pilot, 2 recruit, then pilot, recruit, officer, …
    let (command, flight, net) = (0, 1, 2);
    let mut plan = vec![
        (at(0.08), Action::Ptt(0, vec![command, flight], at(0.24))),
        (at(0.40), Action::Ptt(1, vec![flight], at(0.18))),
    ];
    if nodes >= 3 {
        plan.push((at(0.62), Action::Refused(2, command)));
        plan.push((at(0.64), Action::Whisper(2, 0, at(0.14))));
    } else {
        plan.push((at(0.64), Action::Whisper(1, 0, at(0.14))));
    }
    // The half-duplex net: a pilot talks, then the officer (higher priority) cuts in.
    plan.push((at(0.84), Action::Ptt(1, vec![net], at(0.1))));
    plan.push((at(0.87), Action::Ptt(0, vec![net], at(0.05))));
    for i in 3..nodes {
        let start = 0.08 + 0.7 * (i - 3) as f64 / (nodes - 2) as f64;
        plan.push((at(start), Action::Ptt(i, vec![flight], at(0.1))));
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

async fn session(args: &DemoArgs) -> Result<Report> {
    let org = DemoOrg::new(args.nodes, args.seed).context("building the demo org")?;
    let channels = [org.command, org.flight, org.net];
    let epoch = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, member) in org.members.iter().enumerate() {
        let mut config = NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
        config.listening = org.channels_for(i);
        config.input = AudioInput::Synthetic {
            seed: args.seed.wrapping_mul(1000) + i as u64,
        };
        config.media_epoch = Some(epoch);
        config.seed = args.seed.wrapping_mul(1000) + i as u64;
        config.send_loss = args.loss;
        config.capture.echo_without_devices = args.echo_cancellation;
        config.bootstrap = nodes.iter().map(|n| n.address().clone()).collect();
        config.output = args
            .out
            .as_ref()
            .map(|d| d.join(format!("{}.wav", member.name)));
        nodes.push(Node::start(config).await.context("starting a node")?);
    }
    // Every pair needs an E2EE session before the script starts.
    for (i, node) in nodes.iter_mut().enumerate() {
        let mut sessions = 0;
        while sessions < args.nodes - 1 {
            node.wait_for(Duration::from_secs(20), |e| {
                matches!(e, NodeEvent::SessionUp { .. })
            })
            .await
            .with_context(|| format!("node {i} did not reach every member"))?;
            sessions += 1;
        }
    }
    // Sender keys follow the sessions by one round trip.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cpu_start = process_cpu();
    let wall_start = Instant::now();
    let mut releases: Vec<(f64, usize)> = Vec::new();
    for (at, action) in script(args.nodes, args.seconds) {
        wait_until(wall_start, at, &mut releases, &nodes).await;
        match action {
            Action::Ptt(who, on, length) => {
                let on = on.into_iter().map(|c| channels[c]).collect();
                nodes[who].command(NodeCommand::PttDown(on))?;
                releases.push((at + length, who));
            }
            Action::Whisper(who, to, length) => {
                let target = org.members[to].keys.identity.public();
                nodes[who].command(NodeCommand::WhisperDown(target))?;
                releases.push((at + length, who));
            }
            Action::Refused(who, channel) => {
                nodes[who].command(NodeCommand::PttDown(vec![channels[channel]]))?;
            }
        }
    }
    wait_until(wall_start, args.seconds, &mut releases, &nodes).await;
    // Let the last frames play out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let wall = wall_start.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_start);

    let name = |k: &IdentityKey| org.member_name(k);
    let mut floor = Vec::new();
    let mut stats = Vec::new();
    for (i, mut node) in nodes.into_iter().enumerate() {
        while let Some(event) = node.try_event() {
            let NodeEvent::Floor(event) = event else {
                continue;
            };
            // Every node reports the holder; the talkers' own events tell the story.
            if matches!(event, FloorEvent::Holder { .. }) && i != 0 {
                continue;
            }
            let line = describe_floor(&event, name, |c| org.channel_name(*c));
            floor.push(format!("{}: {line}", org.members[i].name));
        }
        stats.push((node.identity(), node.shutdown().await?));
    }
    let mut report = report(&org, &stats, cpu, wall);
    report.floor = floor;
    Ok(report)
}

async fn wait_until(start: Instant, at: f64, releases: &mut Vec<(f64, usize)>, nodes: &[Node]) {
    loop {
        releases.sort_by(|a, b| a.0.total_cmp(&b.0));
        let next_release = releases.first().map(|r| r.0).filter(|r| *r <= at);
        let target = next_release.unwrap_or(at);
        let due = start + Duration::from_secs_f64(target);
        tokio::time::sleep_until(due.into()).await;
        match next_release {
            Some(_) => {
                let (_, who) = releases.remove(0);
                // A node that stopped has nothing to release.
                let _ = nodes[who].command(NodeCommand::PttUp);
            }
            None => return,
        }
    }
}

fn report(
    org: &DemoOrg,
    stats: &[(IdentityKey, NodeStats)],
    cpu: Duration,
    wall: Duration,
) -> Report {
    let name = |k: &IdentityKey| org.member_name(k);
    let channel_name = |c: StreamChannel| match c {
        StreamChannel::Channel(c) => org.channel_name(c),
        StreamChannel::Whisper => "whisper".to_string(),
    };
    let mut streams = Vec::new();
    for (from, sender) in stats {
        for sent in &sender.sent {
            let heard = stats
                .iter()
                .find(|(k, _)| *k == sent.to)
                .and_then(|(_, s)| {
                    s.received
                        .iter()
                        .find(|r| r.from == *from && r.channel == sent.channel)
                });
            streams.push(StreamLine {
                from: name(from),
                to: name(&sent.to),
                channel: channel_name(sent.channel),
                frames_sent: sent.frames_sent,
                frames_played: heard.map_or(0, |h| h.frames_played),
                frames_concealed: heard.map_or(0, |h| h.frames_concealed),
                mouth_to_ear_ms: heard.and_then(|h| h.mouth_to_ear_ms).map(|l| Latency {
                    p50: l.p50,
                    p99: l.p99,
                }),
                jitter_buffer_ms: heard.map_or(0.0, |h| h.jitter_delay_ms),
                rtt_ms: sender
                    .peers
                    .iter()
                    .find(|p| p.peer == sent.to.peer_id().to_string())
                    .and_then(|p| p.rtt)
                    .map(|rtt| rtt.as_secs_f64() * 1e3),
            });
        }
    }
    let state = org.charter.state();
    let unauthorised_frames = stats
        .iter()
        .flat_map(|(me, s)| s.received.iter().map(move |r| (me, r)))
        .filter(|(me, r)| match r.channel {
            StreamChannel::Channel(c) => !state.may(me, c, Permissions::LISTEN),
            StreamChannel::Whisper => false,
        })
        .map(|(_, r)| r.frames_played)
        .sum();
    Report {
        streams,
        acl_drops: stats.iter().map(|(_, s)| s.drops.acl).sum(),
        decrypt_failures: stats
            .iter()
            .map(|(_, s)| s.drops.auth + s.drops.unknown_sender)
            .sum(),
        ptt_denied: stats.iter().map(|(_, s)| s.ptt_denied).sum(),
        unauthorised_frames,
        cpu_per_node_pct: 100.0 * cpu.as_secs_f64()
            / wall.as_secs_f64().max(1e-9)
            / stats.len().max(1) as f64,
        floor: Vec::new(),
        out_of_turn_drops: stats.iter().map(|(_, s)| s.floor_drops).sum(),
    }
}

/// User + system CPU time of this process.
#[cfg(unix)]
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we hand it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[cfg(not(unix))]
fn process_cpu() -> Duration {
    Duration::ZERO
}
