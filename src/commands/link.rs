//! `callsign link`: listen for links, and check that this machine can reach another node
//! (RTT over a QUIC stream and over QUIC datagrams, datagram loss).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use callsign_node::link::swarm::{
    answer_echo, build_swarm, Echo, NodeBehaviourEvent, NodeNetwork, SwarmConfig,
};
use callsign_node::link::LinkSocket;
use clap::{Args, Subcommand};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{Event as EchoEvent, Message as EchoMessage};
use libp2p::swarm::SwarmEvent;
use libp2p::Multiaddr;
use serde::Serialize;

/// Link commands.
#[derive(Subcommand, Debug)]
pub enum LinkCommand {
    /// Listen on one UDP port (QUIC) and the same TCP port (fallback); print the addresses.
    Listen(ListenArgs),
    /// Connect to a node and measure RTT over a stream and over datagrams.
    Ping(PingArgs),
}

#[derive(Args, Debug)]
pub struct IdentityArgs {
    /// Identity key file to use; without it a throwaway identity is generated.
    #[arg(long, env = "CALLSIGN_KEY")]
    pub key: Option<PathBuf>,
    /// Passphrase for an encrypted key, read from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// UDP (and TCP) port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Print addresses and connections as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PingArgs {
    /// The node's address, e.g. /ip4/203.0.113.5/udp/4433/quic-v1/p2p/12D3Koo…
    pub addr: Multiaddr,
    /// Number of round trips to measure on each path.
    #[arg(long, default_value_t = 10)]
    pub count: u32,
    /// Give up connecting after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: LinkCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cmd {
            LinkCommand::Listen(args) => listen(args).await,
            LinkCommand::Ping(args) => ping(args).await,
        }
    })
}

fn keypair(args: &IdentityArgs) -> Result<Keypair> {
    match &args.key {
        Some(path) => {
            let (keys, _) = super::keys::unlock(path, args.passphrase_env.as_deref())?;
            Ok(keys.identity.to_libp2p())
        }
        None => Ok(Keypair::generate_ed25519()),
    }
}

fn network(keypair: Keypair, port: u16) -> Result<NodeNetwork> {
    let socket = LinkSocket::bind_tokio((std::net::Ipv4Addr::UNSPECIFIED, port).into())
        .with_context(|| format!("cannot bind UDP port {port}"))?;
    Ok(build_swarm(keypair, SwarmConfig::default(), socket)?)
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum ListenLine {
    Listening { addr: String },
    Connected { peer: String, remote: String },
    Disconnected { peer: String },
}

/// Prints one listener line. Write errors are ignored: a listener whose output is no longer
/// read (a closed pipe) keeps serving links.
fn emit(line: &ListenLine, json: bool) {
    let text = if json {
        serde_json::to_string(line).unwrap_or_default()
    } else {
        match line {
            ListenLine::Listening { addr } => addr.clone(),
            ListenLine::Connected { peer, remote } => format!("connected {peer} via {remote}"),
            ListenLine::Disconnected { peer } => format!("disconnected {peer}"),
        }
    };
    let mut out = std::io::stdout().lock();
    // Scripts read the addresses line by line while the listener keeps running.
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

async fn listen(args: ListenArgs) -> Result<()> {
    let keypair = keypair(&args.identity)?;
    let peer = keypair.public().to_peer_id();
    let mut net = network(keypair, args.port)?;
    let bound = net.local_addr.port();
    net.swarm
        .listen_on(format!("/ip4/0.0.0.0/udp/{bound}/quic-v1").parse()?)
        .context("cannot listen on QUIC")?;
    // The TCP fallback takes the same port number when it is free. The kernel chose the UDP
    // port alone, so a TCP socket may hold that number already; then any free port will do.
    let same_port = net
        .swarm
        .listen_on(format!("/ip4/0.0.0.0/tcp/{bound}").parse()?);
    if let Err(e) = same_port {
        tracing::info!(%e, port = bound, "TCP port taken; the TCP fallback takes another");
        if let Err(e) = net.swarm.listen_on("/ip4/0.0.0.0/tcp/0".parse()?) {
            tracing::warn!(%e, "no TCP fallback listener");
        }
    }
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            event = net.swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let addr = address.with(Protocol::P2p(peer)).to_string();
                    emit(&ListenLine::Listening { addr }, args.json);
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    let remote = endpoint.get_remote_address().to_string();
                    emit(&ListenLine::Connected { peer: peer_id.to_string(), remote }, args.json);
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    emit(&ListenLine::Disconnected { peer: peer_id.to_string() }, args.json);
                }
                SwarmEvent::Behaviour(event) => answer_echo(&mut net.swarm, &mut Some(event)),
                _ => {}
            }
        }
    }
}

#[derive(Serialize, Default)]
struct RttSummary {
    sent: u32,
    received: u32,
    loss_pct: f64,
    min_ms: Option<f64>,
    avg_ms: Option<f64>,
    max_ms: Option<f64>,
}

impl RttSummary {
    fn new(sent: u32, rtts: &[Duration]) -> Self {
        let ms: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let received = ms.len() as u32;
        Self {
            sent,
            received,
            loss_pct: if sent == 0 {
                0.0
            } else {
                100.0 * f64::from(sent - received) / f64::from(sent)
            },
            min_ms: ms.iter().copied().reduce(f64::min),
            avg_ms: (!ms.is_empty()).then(|| ms.iter().sum::<f64>() / ms.len() as f64),
            max_ms: ms.iter().copied().reduce(f64::max),
        }
    }

    fn line(&self, name: &str) -> String {
        match (self.min_ms, self.avg_ms, self.max_ms) {
            (Some(min), Some(avg), Some(max)) => format!(
                "{name:<9} rtt min/avg/max = {min:.2}/{avg:.2}/{max:.2} ms, {}/{} answered ({:.0}% loss)",
                self.received, self.sent, self.loss_pct
            ),
            _ => format!("{name:<9} no answers ({} sent)", self.sent),
        }
    }
}

#[derive(Serialize)]
struct PingReport {
    peer: String,
    remote: String,
    transport: &'static str,
    stream: RttSummary,
    /// `None` over the TCP fallback, which has no datagrams.
    datagram: Option<RttSummary>,
}

async fn ping(args: PingArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let Some(Protocol::P2p(target)) = args.addr.iter().last() else {
        bail!(
            "{} has no /p2p/PEER_ID at the end: the peer's identity must be known to verify it",
            args.addr
        );
    };
    let mut net = network(keypair(&args.identity)?, 0)?;
    net.swarm
        .dial(args.addr.clone())
        .with_context(|| format!("cannot dial {}", args.addr))?;

    let deadline = tokio::time::sleep(args.timeout);
    tokio::pin!(deadline);
    let remote = loop {
        tokio::select! {
            _ = &mut deadline => bail!("cannot reach {} within {:?}", args.addr, args.timeout),
            event = net.swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } if peer_id == target => {
                    break endpoint.get_remote_address().clone();
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    bail!("cannot connect to {}: {error}", args.addr)
                }
                _ => {}
            }
        }
    };
    let quic = remote.iter().any(|p| p == Protocol::QuicV1);

    // Datagram pings run beside the swarm: quinn drives the connection in its own tasks.
    let links = net.links.clone();
    let count = args.count;
    let datagrams = tokio::spawn(async move {
        let mut rtts = Vec::new();
        for _ in 0..count {
            if let Ok(Some(rtt)) = links.ping_datagram(&target, Duration::from_secs(1)).await {
                rtts.push(rtt);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rtts
    });
    let mut stream_rtts = Vec::new();
    for nonce in 0..u64::from(count) {
        let id = net
            .swarm
            .behaviour_mut()
            .echo
            .send_request(&target, Echo { nonce });
        let sent = tokio::time::Instant::now();
        let answered = loop {
            match net.swarm.select_next_some().await {
                SwarmEvent::Behaviour(NodeBehaviourEvent::Echo(EchoEvent::Message {
                    message:
                        EchoMessage::Response {
                            request_id,
                            response,
                        },
                    ..
                })) if request_id == id => break response.nonce == nonce,
                SwarmEvent::Behaviour(NodeBehaviourEvent::Echo(EchoEvent::OutboundFailure {
                    request_id,
                    ..
                })) if request_id == id => break false,
                SwarmEvent::Behaviour(event) => answer_echo(&mut net.swarm, &mut Some(event)),
                _ => {}
            }
        };
        if answered {
            stream_rtts.push(sent.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let datagram_rtts = datagrams.await.context("datagram ping task")?;
    let report = PingReport {
        peer: target.to_string(),
        remote: remote.to_string(),
        transport: if quic { "quic" } else { "tcp" },
        stream: RttSummary::new(count, &stream_rtts),
        datagram: quic.then(|| RttSummary::new(count, &datagram_rtts)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "connected to {} over {} ({})",
            report.peer, report.transport, report.remote
        );
        println!("{}", report.stream.line("stream"));
        match &report.datagram {
            Some(d) => println!("{}", d.line("datagram")),
            None => println!("datagram  unavailable over the TCP fallback"),
        }
    }
    Ok(())
}
