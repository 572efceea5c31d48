//! The node's libp2p `Swarm`: [`QuicTransport`] first, stock TCP + Noise + Yamux as the fallback
//! for networks that block UDP, and the discovery/NAT behaviours.
//!
//! Simulation: the QUIC transport, `Links` and quinn run on tokio time, which turmoil drives, so
//! they are deterministic in the simulator. The libp2p behaviours below and the Swarm's idle
//! connection timeout keep their own timers on the wall clock (`futures-timer`). A timer that
//! fires on the wall clock lands at an arbitrary virtual instant, so behaviours that send on
//! such timers are switched off in simulation ([`SwarmConfig::wall_clock_behaviours`]):
//!
//! | behaviour | real sockets | simulation |
//! |---|---|---|
//! | identify | yes | off: its first request waits on a zero-length wall-clock timer |
//! | ping (stream RTT) | yes | off: its first ping fires on a wall-clock timer |
//! | relay v2 client | yes | runs; sends only when asked; renewal wall-clock |
//! | relay v2 server (members only) | when configured; per-peer and per-IP rate limits (wall clock) | runs; caps only, no rate limiters |
//! | dcutr | yes | off: waits `rtt / 2` on the wall clock before its dial (and cannot punch there: the simulated NAT rewrites no addresses and identify is off) |
//! | autonat | yes | off: probe schedule wall-clock |
//! | mdns | yes | off (needs real multicast sockets) |
//! | kad | yes | off: query timeouts and refresh wall-clock |
//! | echo (stream RTT) | yes | runs; request timeout 5 s (a year in simulation) |
//! | control (sync, presence, keys) | yes | runs; the member times requests out on its own clock (10 s); the behaviour's timeout is a backstop (a year in simulation) |
//!
//! The Swarm's idle connection timeout is a year in simulation too (QUIC's own idle timeout,
//! on tokio time, ends dead connections), and relay v2 reservations and circuits last a day.
//! Still on the wall clock, inside libp2p: the relay handlers' 10 s idle keep-alive and 60 s
//! stream timeouts, the Swarm's 10 s outbound substream upgrade timeout on relay streams, and
//! yamux's 10 s RTT ping on relayed connections. They act only on relayed connections or on
//! streams that stall (see docs/scenarios.md, "Traces and determinism", for the inventory).
//!
//! Note: libp2p-ping 0.47 re-arms its inbound future without polling it, so over QUIC (whose
//! streams wake only the task that reads them) a node answers the next ping only when something
//! else wakes its connection. Liveness still works (QUIC keep-alives do that job); RTT
//! measurement uses the `echo` request-response protocol instead.
//!
//! The simulator therefore drives `QuicTransport` + `Links` directly for anything timing-sensitive.

use super::config::LinkConfig;
use super::control::ControlBehaviour;
use super::links::{DatagramReceiver, Links};
use super::socket::{LinkSocket, SocketStats};
use super::transport::QuicTransport;
use super::LinkError;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, dcutr, identify, kad, mdns, noise, ping, relay, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
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
    pub identify: Toggle<identify::Behaviour>,
    pub ping: Toggle<ping::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: Toggle<dcutr::Behaviour>,
    pub autonat: Toggle<autonat::Behaviour>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub echo: EchoBehaviour,
    pub control: ControlBehaviour,
}

/// Who may reserve and open circuits on this node's relay: the org's members, kept current by
/// the node as its charter changes. Anyone else is refused before a circuit exists.
#[derive(Clone, Debug, Default)]
pub struct RelayAllowList(Arc<Mutex<BTreeSet<PeerId>>>);

impl RelayAllowList {
    pub fn set(&self, members: impl IntoIterator<Item = PeerId>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = members.into_iter().collect();
    }

    pub fn allows(&self, peer: &PeerId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }

    /// A member relay's limits. libp2p's defaults suit a public relay for strangers (16 circuits,
    /// 4 per peer): a squad member behind a symmetric NAT needs one circuit per other member, so
    /// the caps are sized for an org instead, and only members get past the allow-list anyway.
    /// The default rate limiters read the wall clock, so in simulation (`timed` false) there are
    /// none; on real sockets generous per-peer and per-IP buckets stop a member's runaway redials.
    fn relay_config(&self, timed: bool) -> relay::Config {
        let reserve = self.clone();
        let open = self.clone();
        let mut config = relay::Config {
            max_reservations: RELAY_MAX_RESERVATIONS,
            max_circuits: RELAY_MAX_CIRCUITS,
            max_circuits_per_peer: RELAY_MAX_CIRCUITS_PER_PEER,
            // Voice runs for hours: no byte cap, a day per circuit (the client re-dials).
            max_circuit_bytes: 0,
            max_circuit_duration: Duration::from_secs(24 * 3600),
            reservation_duration: Duration::from_secs(24 * 3600),
            reservation_rate_limiters: Vec::new(),
            circuit_src_rate_limiters: Vec::new(),
            ..relay::Config::default()
        };
        if timed {
            // Checked at compile time: a zero limit does not build.
            config = config
                .reservation_rate_per_peer(const { nz(16) }, Duration::from_secs(10))
                .reservation_rate_per_ip(const { nz(64) }, Duration::from_secs(2))
                .circuit_src_per_peer(
                    const { nz(RELAY_MAX_CIRCUITS_PER_PEER as u32) },
                    Duration::from_secs(1),
                )
                .circuit_src_per_ip(const { nz(1024) }, Duration::from_millis(250));
        }
        config
            .reservation_rate_limiters
            .push(Box::new(move |peer, _: &Multiaddr, _| {
                reserve.allows(&peer)
            }));
        config
            .circuit_src_rate_limiters
            .push(Box::new(move |peer, _: &Multiaddr, _| open.allows(&peer)));
        config
    }
}

/// Circuits through one member relay, and per member (as source or destination): room for an
/// org of a few hundred where every member is behind a symmetric NAT.
const RELAY_MAX_CIRCUITS: usize = 4096;
const RELAY_MAX_CIRCUITS_PER_PEER: usize = 256;
const RELAY_MAX_RESERVATIONS: usize = 1024;

const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a relay rate limit must be positive"),
    }
}

/// A wall-clock timeout that must not fire within a simulated run.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settings for [`build_swarm`].
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    pub link: LinkConfig,
    /// Local-network discovery; only on real sockets.
    pub mdns: bool,
    /// identify, ping, autonat and kad, which send on wall-clock timers; off in simulation, where such a
    /// timer fires at an arbitrary virtual instant and breaks replay.
    pub wall_clock_behaviours: bool,
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
            wall_clock_behaviours: true,
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
        .with_relay_client(noise::Config::new, yamux::Config::default)
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
            let timed = config.wall_clock_behaviours;
            Ok(NodeBehaviour {
                identify: timed
                    .then(|| {
                        identify::Behaviour::new(
                            identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                                .with_agent_version(format!(
                                    "callsign/{}",
                                    env!("CARGO_PKG_VERSION")
                                )),
                        )
                    })
                    .into(),
                ping: timed
                    .then(|| {
                        ping::Behaviour::new(
                            ping::Config::new().with_interval(config.ping_interval),
                        )
                    })
                    .into(),
                relay_client,
                relay_server: config
                    .relay_for
                    .as_ref()
                    .map(|allow| relay::Behaviour::new(peer, allow.relay_config(timed)))
                    .into(),
                dcutr: timed.then(|| dcutr::Behaviour::new(peer)).into(),
                autonat: timed
                    .then(|| autonat::Behaviour::new(peer, autonat::Config::default()))
                    .into(),
                mdns: mdns.into(),
                kad: timed
                    .then(|| {
                        kad::Behaviour::with_config(
                            peer,
                            kad::store::MemoryStore::new(peer),
                            kad_config,
                        )
                    })
                    .into(),
                echo: EchoBehaviour::new(
                    [(ECHO_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(if timed {
                        Duration::from_secs(5)
                    } else {
                        NEVER
                    }),
                ),
                control: ControlBehaviour::new(if timed {
                    Duration::from_secs(30)
                } else {
                    NEVER
                }),
            })
        })
        .map_err(|e| build_err(&e))?
        .with_swarm_config(|c| {
            // Lazy multistream-select: a new substream's first message rides with its protocol
            // proposal instead of waiting a round trip for the answer. Every protocol we open
            // is one the peer speaks, so the optimism costs nothing; it makes a control
            // message (a floor claim, a charter op) take one trip, not one and a half.
            let idle = if config.wall_clock_behaviours {
                config.idle_timeout
            } else {
                NEVER
            };
            c.with_idle_connection_timeout(idle)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
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
