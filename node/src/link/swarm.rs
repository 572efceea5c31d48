//! The node's libp2p `Swarm`: [`QuicTransport`] first, stock TCP + Noise + Yamux as the fallback
//! for networks that block UDP, and the discovery/NAT behaviours.
//!
//! Simulation: every timer here runs on tokio time, which turmoil drives: quinn's and the
//! `Links`' directly, libp2p's (`futures-timer`) through the workspace's patched `futures-timer`
//! (`timer/`). So timeouts mean the same in a simulated run as on real sockets and fire at
//! virtual instants that replay. What differs in simulation is which behaviours run
//! ([`SwarmConfig::discovery_behaviours`]):
//!
//! | behaviour | real sockets | simulation |
//! |---|---|---|
//! | identify | yes | off: members learn addresses from presence and the charter |
//! | ping (stream RTT) | yes | off (see the note below; `echo` measures RTT) |
//! | relay v2 client | yes | runs |
//! | relay v2 server (members only, [`MemberRelay`]) | when configured; per-peer and per-IP rate limits | runs; no rate limits (libp2p reads them off the wall clock), caps and handshake admission only |
//! | hole punching | the member's own (`callsign_mesh::punch`) | the same: timed on the member's clock over the circuit, dialed through this swarm (libp2p's dcutr is not used: it times the punch with a wall-clock RTT, `web_time::Instant`, which would break replay, and it aims only at identify's observations) |
//! | autonat | yes | off |
//! | mdns | yes | off (needs real multicast sockets) |
//! | kad | yes | off |
//! | echo (stream RTT) | yes | runs; request timeout 5 s |
//! | control (sync, presence, keys) | yes | runs; the member times requests out on its own clock (10 s); the behaviour's 30 s timeout is a backstop |
//!
//! Relayed connections run yamux without its RTT ping ([`circuit_muxer`]), which reads
//! `std::time::Instant` and so would size windows from wall time. The only wall-clock reads left on the
//! simulated path are libp2p's own `Instant::now()` calls (relay reservation expiry, rate
//! limiters, ping), which decide nothing in a run shorter than a day: see docs/scenarios.md,
//! "Traces and determinism".
//!
//! Note: libp2p-ping 0.47 re-arms its inbound future without polling it, so over QUIC (whose
//! streams wake only the task that reads them) a node answers the next ping only when something
//! else wakes its connection. Liveness still works (QUIC keep-alives do that job); RTT
//! measurement uses the `echo` request-response protocol instead.
//!
//! The simulator therefore drives `QuicTransport` + `Links` directly for anything timing-sensitive.

use super::boxed::Boxed;
use super::config::LinkConfig;
use super::control::ControlBehaviour;
use super::links::{DatagramReceiver, Links};
use super::relay::{MemberRelay, RelayAllowList};
use super::socket::{LinkSocket, SocketStats};
use super::transport::QuicTransport;
use super::LinkError;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{autonat, identify, kad, mdns, noise, ping, relay, tcp, yamux, StreamProtocol, Swarm};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Protocol name of identify and kad for Callsign nodes (keeps them out of other DHTs).
pub const PROTOCOL_VERSION: &str = "/callsign/1.0.0";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/callsign/kad/1.0.0");
const ECHO_PROTOCOL: StreamProtocol = StreamProtocol::new("/callsign/echo/1.0.0");

/// Stream echo request: `callsign link ping` measures RTT over a stream with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    pub nonce: u64,
}

/// The echo behaviour's type.
pub type EchoBehaviour = request_response::json::Behaviour<Echo, Echo>;

/// Answers an echo request if `event` is one. Every node's event loop calls this.
pub fn answer_echo(swarm: &mut Swarm<NodeBehaviour>, event: &mut Option<NodeBehaviourEvent>) {
    if let Some(NodeBehaviourEvent::Echo(request_response::Event::Message {
        message: request_response::Message::Request { .. },
        ..
    })) = event
    {
        let Some(NodeBehaviourEvent::Echo(request_response::Event::Message {
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) = event.take()
        else {
            return;
        };
        // The requester may have gone; nothing to do then.
        let _ = swarm.behaviour_mut().echo.send_response(channel, request);
    }
}

/// The node's composed behaviour.
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    // Behaviours a node may run without have their handlers boxed (`link::boxed`): off, they
    // cost each connection a pointer, not their handler's size.
    pub identify: Toggle<Boxed<identify::Behaviour>>,
    pub ping: Toggle<Boxed<ping::Behaviour>>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<Boxed<MemberRelay>>,
    pub autonat: Toggle<Boxed<autonat::Behaviour>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: Toggle<Boxed<kad::Behaviour<kad::store::MemoryStore>>>,
    pub echo: EchoBehaviour,
    pub control: ControlBehaviour,
}

/// Runs the swarm's connection tasks on tokio inside the span that spawned them, so their log
/// lines name the node (the simulator runs each node in a span of its own).
struct SpannedExecutor;

impl libp2p::swarm::Executor for SpannedExecutor {
    fn exec(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        tokio::spawn(tracing::Instrument::in_current_span(future));
    }
}

/// Longest a dial may take, whatever the transport.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings for [`build_swarm`].
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    pub link: LinkConfig,
    /// Local-network discovery; only on real sockets.
    pub mdns: bool,
    /// identify, ping, autonat and kad: on real sockets. Off in simulation, where members
    /// learn addresses from presence, the charter and `Observed`.
    pub discovery_behaviours: bool,
    /// How often the ping behaviour measures stream RTT.
    pub ping_interval: Duration,
    /// Connections with no open streams are closed after this.
    pub idle_timeout: Duration,
    /// Serve relay v2 circuits to these peers (a publicly reachable member).
    pub relay_for: Option<RelayAllowList>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            link: LinkConfig::default(),
            mdns: true,
            discovery_behaviours: true,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            relay_for: None,
        }
    }
}

/// A built swarm and the QUIC link handles that live beside it.
pub struct NodeNetwork {
    pub swarm: Swarm<NodeBehaviour>,
    pub links: Links,
    pub datagrams: DatagramReceiver,
    pub socket_stats: Arc<SocketStats>,
    /// The UDP socket's address (the QUIC port).
    pub local_addr: SocketAddr,
    /// The QUIC endpoint's socket (reachability probes in and out).
    pub socket: Arc<LinkSocket>,
}

/// Most concurrent streams on one relayed connection (yamux's default).
const CIRCUIT_MAX_STREAMS: usize = 512;

/// The stream muxer on relayed connections (noise + yamux over a circuit): yamux 1.0.0 on the
/// wire, like the TCP fallback, but libp2p-yamux's fixed-window implementation (the one any
/// setting other than the default selects; yamux 0.12). The default one (yamux 0.13) pings every
/// 10 s of wall time and sizes its windows from that RTT, so a simulated relayed connection's
/// bytes would depend on how fast the host machine runs the simulation; the fixed-window one has
/// no timers. Circuits carry control and voice, never bulk transfers, so auto-tuned windows buy
/// nothing there.
fn circuit_muxer() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(CIRCUIT_MAX_STREAMS);
    config
}

/// Builds the swarm on `socket` (real or simulated). Must run inside a tokio runtime.
pub fn build_swarm(
    keypair: Keypair,
    config: SwarmConfig,
    socket: Arc<LinkSocket>,
) -> Result<NodeNetwork, LinkError> {
    let (links, datagrams) = Links::new(config.link.datagram_queue);
    let socket_stats = socket.stats();
    let local_addr = socket.local_addr()?;
    let quic = QuicTransport::new(
        keypair.clone(),
        config.link.clone(),
        socket.clone(),
        links.clone(),
    )?;
    let build_err = |e: &dyn std::fmt::Display| LinkError::Config(format!("swarm: {e}"));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| build_err(&e))?
        .with_other_transport(|_| quic)
        .map_err(|e| build_err(&e))?
        .with_relay_client(noise::Config::new, circuit_muxer)
        .map_err(|e| build_err(&e))?
        .with_behaviour(|key, relay_client| {
            let peer = key.public().to_peer_id();
            let mdns = if config.mdns {
                // A machine without multicast simply runs without local discovery.
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer).ok()
            } else {
                None
            };
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            kad_config.set_query_timeout(Duration::from_secs(30));
            // Bootstrap once peers are known (charters name them), not on an empty table.
            kad_config.set_periodic_bootstrap_interval(None);
            let timed = config.discovery_behaviours;
            Ok(NodeBehaviour {
                identify: timed
                    .then(|| {
                        Boxed(identify::Behaviour::new(
                            identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                                .with_agent_version(format!(
                                    "callsign/{}",
                                    env!("CARGO_PKG_VERSION")
                                )),
                        ))
                    })
                    .into(),
                ping: timed
                    .then(|| {
                        Boxed(ping::Behaviour::new(
                            ping::Config::new().with_interval(config.ping_interval),
                        ))
                    })
                    .into(),
                relay_client,
                relay_server: config
                    .relay_for
                    .as_ref()
                    .map(|allow| Boxed(MemberRelay::new(peer, allow.clone(), timed)))
                    .into(),
                autonat: timed
                    .then(|| Boxed(autonat::Behaviour::new(peer, autonat::Config::default())))
                    .into(),
                mdns: mdns.into(),
                kad: timed
                    .then(|| {
                        Boxed(kad::Behaviour::with_config(
                            peer,
                            kad::store::MemoryStore::new(peer),
                            kad_config,
                        ))
                    })
                    .into(),
                echo: EchoBehaviour::new(
                    [(ECHO_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(5)),
                ),
                control: ControlBehaviour::new(Duration::from_secs(30)),
            })
        })
        .map_err(|e| build_err(&e))?
        .with_swarm_config(|_| {
            // Lazy multistream-select: a new substream's first message rides with its protocol
            // proposal instead of waiting a round trip for the answer. Every protocol we open
            // is one the peer speaks, so the optimism costs nothing; it makes a control
            // message (a floor claim, a charter op) take one trip, not one and a half.
            libp2p::swarm::Config::with_executor(SpannedExecutor)
                .with_idle_connection_timeout(config.idle_timeout)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        // Above QUIC's own handshake timeout: QUIC dials end on their own, and this bounds a
        // circuit dial whose relay never answers.
        .with_connection_timeout(CONNECTION_TIMEOUT)
        .build();
    Ok(NodeNetwork {
        swarm,
        links,
        datagrams,
        socket_stats,
        local_addr,
        socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's task holds the composed handler inline (more than once): a handler
    /// that grows it belongs in `Boxed`.
    #[test]
    fn the_composed_connection_handler_stays_small() {
        let size = std::mem::size_of::<<NodeBehaviour as NetworkBehaviour>::ConnectionHandler>();
        assert!(size <= 2048, "{size} bytes");
    }
}
