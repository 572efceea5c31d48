//! The Node API: one member's node, started with [`Node::start`], driven by [`NodeCommand`]s,
//! reporting [`NodeEvent`]s and [`NodeStats`]. The CLI, the UI, the relay and the simulator all
//! use it.
//!
//! - [`config`]: [`NodeConfig`], what a node starts with.
//! - [`api`]: commands, events, stats.
//! - [`voice`]: the transmitter (capture → gate → Opus) and playout (jitter → decode → mix).
//! - [`demo_org`]: the org the demo, tests and screenshots use.
//! - `driver`: the event loop, an adapter in the shape of quinn's `ConnectionDriver`: it feeds
//!   the sans-IO [`callsign_mesh::member::Member`] (which makes every protocol decision) and
//!   carries out its outputs on the swarm, the links, the audio worker and the event channel;
//!   `stats`: the snapshot it answers [`NodeCommand::Stats`] with.
//!
//! The node runs on tokio time (`tokio::time::Instant`), so the simulator's virtual clock
//! drives it exactly as it drives the links.

pub mod api;
mod command;
pub mod config;
mod connections;
pub mod demo_org;
mod driver;
mod os_timer;
mod parking;
mod playout;
mod quiet;
mod recorder;
mod stats;
mod swarm_event;
pub mod voice;

pub use api::{
    AudioSettings, AudioStats, FloorStats, ForwardingStats, LatencyMs, LinkKind, NodeCommand,
    NodeEvent, NodeStats, PeerStats, PortMapping, ReceivedStream, SentStream, StreamChannel,
    TalkerFrames,
};
pub use config::{AudioInput, NodeConfig, RELAY_IDLE_TIMEOUT, RELAY_PARK_AFTER};
pub use stats::describe_floor;

use crate::audio::AudioError;
use crate::link::forwarding::ForwardLatency;
use crate::link::portmap::{worth_mapping, PortMapConfig, PortMapper};
use crate::link::relay::RelayAllowList;
use crate::link::swarm::{build_swarm, SwarmConfig};
use crate::link::{socket_to_multiaddr, LinkError, LinkSocket};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::member::{Input, Member, MemberConfig};
use driver::Driver;
use libp2p::{Multiaddr, PeerId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("links: {0}")]
    Link(#[from] LinkError),
    #[error("audio: {0}")]
    Audio(#[from] AudioError),
    #[error("listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the node has stopped")]
    Stopped,
    #[error("the node's task failed: {0}")]
    Task(String),
}

/// A running node. Dropping it stops the node.
pub struct Node {
    commands: mpsc::UnboundedSender<NodeCommand>,
    events: mpsc::UnboundedReceiver<NodeEvent>,
    identity: IdentityKey,
    peer_id: PeerId,
    address: Multiaddr,
    tcp_address: Option<Multiaddr>,
    task: JoinHandle<Result<NodeStats, NodeError>>,
}

impl Node {
    /// Binds the node's QUIC endpoint, dials the bootstrap peers and starts its event loop.
    /// Must run inside a tokio runtime (real or turmoil).
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        Self::start_with_log(config, None).await
    }

    /// [`Node::start`], appending every charter op the node learns to `log`.
    pub async fn start_with_log(
        mut config: NodeConfig,
        log: Option<OpLog>,
    ) -> Result<Self, NodeError> {
        let socket = match config.socket.take() {
            Some(socket) => socket,
            None => LinkSocket::bind_tokio_marked(config.listen, config.dscp)
                .map_err(LinkError::from)?,
        };
        let simulated = socket.is_simulated();
        if simulated && config.link.rng_seed.is_none() {
            // quinn skips packet numbers at random, and a skip makes the peer ACK at once:
            // unseeded, that reshuffles traffic from run to run.
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&config.seed.to_le_bytes());
            seed[8..16].copy_from_slice(b"quinnrng");
            config.link.rng_seed = Some(seed);
        }
        let keypair = config.keys.identity.to_libp2p();
        // Every node can serve circuits to members; it offers them once it is known to be
        // reachable (configured, or confirmed by a probe). Not a relay told not to: a member's
        // reservation holds its QUIC connection open, which a relay otherwise parks when idle.
        let relay_allow = RelayAllowList::default();
        let serves_circuits = config.relay_circuits || config.forwarding.is_none();
        let mut network = build_swarm(
            keypair,
            SwarmConfig {
                link: config.link.clone(),
                mdns: config.mdns,
                // A rented relay is dialed at the addresses the charter gives; identify, ping,
                // autonat and kad would only cost it memory and wake-ups on every link.
                discovery_behaviours: !simulated && config.forwarding.is_none(),
                relay_for: serves_circuits.then(|| relay_allow.clone()),
                ..SwarmConfig::default()
            },
            socket,
        )?;
        let listen = socket_to_multiaddr(network.local_addr);
        // One socket on both families (`LinkSocket::bind_tokio`) is shown, and mapped on the
        // home router, as the IPv4 socket it also is: what a user reads, and what a NAT maps.
        let v4_side = if network.socket.is_dual_stack() {
            std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, network.local_addr.port()))
        } else {
            network.local_addr
        };
        network
            .swarm
            .listen_on(listen.clone())
            .map_err(|e| NodeError::Listen {
                addr: listen.clone(),
                reason: e.to_string(),
            })?;
        // TCP + Noise + Yamux for networks that block UDP; voice then rides the control
        // stream. Its port is known once the listener reports it.
        let want_tcp = config.tcp_fallback && !simulated;
        if want_tcp {
            let tcp = Multiaddr::empty()
                .with(v4_side.ip().into())
                .with(libp2p::multiaddr::Protocol::Tcp(0));
            network
                .swarm
                .listen_on(tcp.clone())
                .map_err(|e| NodeError::Listen {
                    addr: tcp,
                    reason: e.to_string(),
                })?;
        }
        if config.relay_circuits {
            // A relay vouches for its own reachability: reservations it grants tell clients
            // these addresses (the announced ones when named), and autonat may be off
            // (simulation) or slow to confirm.
            let vouched = match &config.announce {
                Some(addrs) if !addrs.is_empty() => addrs.clone(),
                _ => vec![listen.clone()],
            };
            for addr in vouched {
                network.swarm.add_external_address(addr);
            }
        }
        let identity = config.keys.identity.public();
        let peer_id = identity.peer_id();
        let tcp_address = if !want_tcp {
            None
        } else {
            tcp_listen_address(&mut network.swarm, peer_id).await
        };
        let address = socket_to_multiaddr(v4_side)
            .with_p2p(peer_id)
            .unwrap_or_else(|a| a);
        for addr in &config.bootstrap {
            network
                .swarm
                .dial(addr.clone())
                .map_err(|e| LinkError::Config(format!("dial {addr}: {e}")))?;
        }
        let link_events = network.links.events();
        let network_probes = network
            .socket
            .take_probes()
            .ok_or_else(|| LinkError::Config("the socket already serves another node".into()))?;
        let now = tokio::time::Instant::now().into_std();
        let epoch = config.media_epoch.unwrap_or(now);
        let unix_at_start_ms = config.unix_time_ms.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let mut member = Member::new(
            MemberConfig {
                keys: config.keys,
                charter: config.charter,
                display_name: config.display_name,
                listening: config.listening,
                unix_at_start_ms,
                presence_interval: config.presence_interval,
                keys_schedule: config.keys_schedule,
                floor: config.floor,
                topology: config.topology,
                uplink_kbps: config.uplink_kbps.unwrap_or(0),
                forwarding: config.forwarding.clone(),
                vouched: config.relay_circuits,
                join: config.join,
                bootstrap: config.bootstrap,
                announce: config.announce,
                send_loss: config.send_loss,
                tap_voice: config.tap_voice,
                seed: config.seed,
            },
            now,
        );
        if let Some(external) = config.mapped_port {
            member.handle_input(
                now,
                Input::PortMapping(PortMapping::Mapped {
                    external,
                    protocol: "UPnP IGD".into(),
                }),
            );
        }
        let relay = config.forwarding.is_some();
        let forward_latency = Arc::new(ForwardLatency::default());
        if let Some(forwarder) = member.shared_forwarder().filter(|_| relay) {
            network
                .links
                .forward_on_plane(forwarder, forward_latency.clone());
        }
        let port_mapper = (config.port_mapping && !simulated && worth_mapping(v4_side))
            .then(|| PortMapper::start(v4_side, PortMapConfig::default()));
        let mut driver = Driver {
            member,
            port_mapper,
            network,
            link_events,
            probes: network_probes,
            log,
            transmitter: voice::Transmitter::new(
                config.input,
                config.capture,
                config.encoder.clone(),
            )?,
            playout: playout::Playout::new(
                crate::audio::jitter::JitterConfig {
                    frame: config.encoder.frame,
                    ..config.jitter
                },
                config.output.as_deref(),
                config.output_device.as_ref(),
                config.media_epoch,
            )?,
            events: events_tx,
            connections: BTreeMap::new(),
            punch_dials: Default::default(),
            relay_allow,
            reservation: None,
            epoch,
            frame: config.encoder.frame.duration(),
            audio: !relay,
            ticks: 0,
            forward_latency,
            recorder: recorder::Recorder::new(config.recordings),
            rtts_given: None,
            quiet: Default::default(),
            peer_names: BTreeMap::new(),
            parking: parking::Parking::new(config.park_idle_links),
        };
        driver
            .transmitter
            .set_output_is_device(driver.playout.has_device());
        // In the caller's span: the simulator names each node's log lines that way.
        let task = tokio::spawn(tracing::Instrument::in_current_span(
            driver.run(commands_rx),
        ));
        Ok(Self {
            commands,
            events,
            identity,
            peer_id,
            address,
            tcp_address,
            task,
        })
    }

    /// Our identity.
    pub fn identity(&self) -> IdentityKey {
        self.identity
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where others dial us (`/ip4/../udp/../quic-v1/p2p/..`).
    pub fn address(&self) -> &Multiaddr {
        &self.address
    }

    /// The TCP fallback address (`/ip4/../tcp/../p2p/..`), if its listener came up.
    pub fn tcp_address(&self) -> Option<&Multiaddr> {
        self.tcp_address.as_ref()
    }

    /// Sends a command; fails only once the node has stopped.
    pub fn command(&self, command: NodeCommand) -> Result<(), NodeError> {
        self.commands.send(command).map_err(|_| NodeError::Stopped)
    }

    /// A handle that sends commands from elsewhere (another task: the local API) while this
    /// `Node` keeps its events.
    pub fn control(&self) -> NodeControl {
        NodeControl {
            commands: self.commands.clone(),
        }
    }

    /// The next event; `None` once the node has stopped.
    pub async fn next_event(&mut self) -> Option<NodeEvent> {
        self.events.recv().await
    }

    /// An event if one is waiting.
    pub fn try_event(&mut self) -> Option<NodeEvent> {
        self.events.try_recv().ok()
    }

    /// Waits up to `timeout` for an event matching `want`, discarding others.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&NodeEvent) -> bool,
    ) -> Option<NodeEvent> {
        tokio::time::timeout(timeout, async {
            while let Some(event) = self.events.recv().await {
                if want(&event) {
                    return Some(event);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Where a newcomer with an invite can reach the org now, best first: the bootstrap
    /// addresses for an invite ticket.
    pub async fn invite_addresses(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.control().invite_addresses().await
    }

    /// A snapshot of the node's counters.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        self.control().stats().await
    }

    /// Stops the node, closes its output file and returns its final counters.
    pub async fn shutdown(self) -> Result<NodeStats, NodeError> {
        // Already stopped is fine: the task's result says how.
        let _ = self.commands.send(NodeCommand::Shutdown);
        self.task
            .await
            .map_err(|e| NodeError::Task(e.to_string()))?
    }
}

/// Sends commands to a running node and asks it questions; cloned freely. Events stay with
/// the [`Node`].
#[derive(Clone, Debug)]
pub struct NodeControl {
    commands: mpsc::UnboundedSender<NodeCommand>,
}

impl NodeControl {
    /// Sends a command; fails only once the node has stopped.
    pub fn command(&self, command: NodeCommand) -> Result<(), NodeError> {
        self.commands.send(command).map_err(|_| NodeError::Stopped)
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> NodeCommand,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(command(tx))?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// See [`Node::invite_addresses`].
    pub async fn invite_addresses(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(NodeCommand::InviteAddresses).await
    }

    /// See [`Node::stats`].
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        self.ask(NodeCommand::Stats).await
    }

    /// The charter's state now.
    pub async fn charter(&self) -> Result<callsign_mesh::charter::CharterState, NodeError> {
        self.ask(NodeCommand::Charter).await
    }

    /// Signs and applies a charter edit; `Ok(Err(why))` when the charter refuses it.
    pub async fn try_edit_charter(
        &self,
        body: callsign_mesh::charter::OpBody,
    ) -> Result<Result<(), callsign_mesh::charter::EditError>, NodeError> {
        self.ask(|reply| NodeCommand::TryEditCharter(body, reply))
            .await
    }
}

/// Waits for the swarm to report its TCP listener's address.
async fn tcp_listen_address(
    swarm: &mut libp2p::Swarm<crate::link::swarm::NodeBehaviour>,
    peer_id: PeerId,
) -> Option<Multiaddr> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
                futures::StreamExt::select_next_some(&mut *swarm).await
            {
                if address
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
                {
                    return address;
                }
            }
        }
    })
    .await
    .ok()
    .map(|a| a.with_p2p(peer_id).unwrap_or_else(|a| a))
}
