//! The node's event loop, in the shape of quinn's `ConnectionDriver`: it takes one input at a
//! time (a command, a frame tick, a voice datagram, a swarm event, a probe, a timer), feeds
//! the sans-IO [`Member`] with `now`, and carries out what it outputs on the swarm, the links,
//! the probe socket, the audio worker, the charter log and the app's event channel. Protocol
//! decisions are the member's; this file only translates.

use super::api::{NodeCommand, NodeEvent, NodeStats};
use super::playout::Playout;
use super::voice::{Encoded, Transmitter};
use super::NodeError;
use crate::audio::mixer::ChannelMix;
use crate::audio::SAMPLE_RATE;
use crate::link::control::ControlEvent;
use crate::link::forwarding::ForwardLatency;
use crate::link::portmap::PortMapper;
use crate::link::relay::RelayAllowList;
use crate::link::socket::ProbeNonces;
use crate::link::swarm::{answer_echo, NodeBehaviourEvent, NodeNetwork};
use crate::link::{LinkEvent, Links};
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::member::{
    Command, DialCondition, Frame, Input, LinkKind, LinkUp, Member, Output, PortMapping,
};
use callsign_mesh::punch::PunchRole;
use callsign_mesh::spatial::Placement;
use callsign_mesh::voice::VoiceFlags;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connections::{upgrades_circuit, HeldConnection};
use tokio::sync::mpsc;

/// Everything the loop owns. Built by `Node::start`.
pub(crate) struct Driver {
    pub member: Member,
    /// The port mapping on our home router, when the node asks for one.
    pub port_mapper: Option<PortMapper>,
    pub network: NodeNetwork,
    pub link_events: mpsc::UnboundedReceiver<LinkEvent>,
    /// Nonces of probes that reached our socket.
    pub probes: ProbeNonces,
    pub log: Option<OpLog>,
    pub transmitter: Transmitter,
    pub playout: Playout,
    pub events: mpsc::UnboundedSender<NodeEvent>,
    /// The connection kept to each peer (`connections`).
    pub connections: BTreeMap<PeerId, HeldConnection>,
    /// Our hole punch dials under way (`Output::Punch`): the connection one brings is
    /// `LinkKind::HolePunched`.
    pub punch_dials: BTreeSet<ConnectionId>,
    /// Who may use the relay circuits we serve (the org's members).
    pub relay_allow: RelayAllowList,
    /// The listener of our circuit reservation on a member relay, while we hold or await one.
    pub reservation: Option<ListenerId>,
    pub epoch: Instant,
    pub frame: Duration,
    /// Whether the audio engine runs (its 20 ms tick): not on a relay, which neither captures
    /// nor plays and holds no key.
    pub audio: bool,
    pub ticks: u64,
    /// Shared with the links' fast path, which forwards most of a rented relay's voice.
    pub forward_latency: Arc<ForwardLatency>,
    pub recorder: super::recorder::Recorder,
    /// When the links' round-trip times were last handed to the member.
    pub rtts_given: Option<Instant>,
    /// Links QUIC has received nothing on for a while (`super::quiet`).
    pub quiet: super::quiet::QuietLinks,
    /// Each linked peer's id in text, kept between snapshots: base58 costs microseconds a
    /// peer, which a relay polled every second with a thousand links paid every time.
    pub peer_names: BTreeMap<PeerId, String>,
    /// Parked links, and on a rented relay which links to park.
    pub parking: super::parking::Parking,
}

/// How often the member hears the links' round-trip times: reading them locks every link, which
/// on a relay with hundreds of links was a visible share of an idle process.
const RTT_EVERY: Duration = Duration::from_millis(500);

/// The port mapper's next report; never, without one.
async fn next_mapping(mapper: &mut Option<PortMapper>) -> PortMapping {
    match mapper {
        Some(mapper) => mapper.recv().await,
        None => std::future::pending().await,
    }
}

/// The runtime's clock: tokio's (virtual under turmoil).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Driver {
    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<NodeCommand>,
    ) -> Result<NodeStats, NodeError> {
        // Held while the loop runs: the frame tick needs a fine OS timer (`os_timer`).
        let _fine_timer = self.audio.then(super::os_timer::FineTimer::acquire);
        let first_tick = tokio::time::Instant::now() + self.frame;
        let mut tick = tokio::time::interval_at(first_tick, self.frame);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        self.addresses_changed(now());
        self.drain(now());
        // One timer, moved when the member's deadline moves: registering a fresh one for every
        // event was a visible share of a large simulation's CPU.
        let timeout = tokio::time::sleep_until(self.member.poll_timeout().into());
        tokio::pin!(timeout);
        let park_look = tokio::time::sleep(self.parking.look_every(now()));
        tokio::pin!(park_look);
        loop {
            if self.member.is_removed() {
                // An admin removed us: the node stops, as after a shutdown.
                break;
            }
            let deadline = tokio::time::Instant::from_std(self.member.poll_timeout());
            if timeout.deadline() != deadline {
                timeout.as_mut().reset(deadline);
            }
            // `biased`: a fixed order of inputs, so a simulated run replays exactly (tokio's
            // default picks among ready branches at random).
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None | Some(NodeCommand::Shutdown) => break,
                    Some(command) => self.command(command, now()),
                },
                at = tick.tick(), if self.audio => self.audio_tick(at.into_std())?,
                Some(datagram) = self.network.datagrams.recv() => {
                    let input = if datagram.control {
                        Input::Control(datagram.peer, datagram.payload.to_vec())
                    } else {
                        Input::Datagram {
                            peer: datagram.peer,
                            bytes: &datagram.payload,
                            received_at: datagram.received_at,
                        }
                    };
                    self.member.handle_input(now(), input);
                }
                event = self.network.swarm.select_next_some() => self.swarm_event(event, now()),
                Some(event) = self.link_events.recv() => match event {
                    LinkEvent::Migrated { peer, to, .. } => {
                        tracing::debug!(%peer, %to, "link migrated");
                    }
                    // A parked link's end: no connection closes under it.
                    LinkEvent::Down { peer, reason } if self.parking.unpark(&peer) => {
                        tracing::debug!(%peer, reason, "parked link down");
                        self.link_down(peer, now());
                    }
                    LinkEvent::Up { .. } | LinkEvent::Down { .. } => {}
                },
                _ = &mut park_look, if self.parking.enabled() => {
                    let now = now();
                    self.park_idle_links(now);
                    let next = tokio::time::Instant::now() + self.parking.look_every(now);
                    park_look.as_mut().reset(next);
                }
                Some(nonce) = self.probes.recv() => {
                    self.member.handle_input(now(), Input::ProbeArrived(nonce));
                }
                mapping = next_mapping(&mut self.port_mapper) => {
                    self.member.handle_input(now(), Input::PortMapping(mapping));
                }
                _ = &mut timeout => {
                    let now = now();
                    if self.rtts_given.is_none_or(|at| now.saturating_duration_since(at) >= RTT_EVERY) {
                        self.rtts_given = Some(now);
                        let all = self.network.links.rtts();
                        let rtts = self
                            .member
                            .links()
                            .filter_map(|(peer, _)| Some((*peer, *all.get(peer)?)))
                            .collect();
                        self.member.handle_input(now, Input::Rtts(rtts));
                        // A rented relay's own links keep alive slowly; its members watch them.
                        if self.member.role() == callsign_mesh::member::Role::Member {
                            let counts = self.network.links.received_datagrams();
                            for peer in self.quiet.look(&counts, now) {
                                self.member.handle_input(now, Input::LinkQuiet(peer));
                            }
                        }
                    }
                    self.member.handle_input(now, Input::Timeout);
                }
            }
            self.drain(now());
        }
        let stats = self.stats();
        // Say goodbye: close every QUIC connection and give the endpoint a moment to send the
        // CONNECTION_CLOSE frames, so peers stop sending to us at once instead of timing out.
        let linked: Vec<PeerId> = self.member.links().map(|(p, _)| *p).collect();
        for peer in &linked {
            self.network.links.close(peer);
        }
        if !linked.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(mapper) = self.port_mapper.take() {
            mapper.stop().await;
        }
        self.playout.finish()?;
        Ok(stats)
    }

    pub(super) fn emit(&self, event: NodeEvent) {
        // Nobody listening is fine: a headless bot may ignore events.
        let _ = self.events.send(event);
    }

    // ---- inputs ----

    fn command(&mut self, command: NodeCommand, now: Instant) {
        let to_member = match command {
            NodeCommand::Dial(addr) => {
                if let Err(e) = self.network.swarm.dial(addr.clone()) {
                    self.emit(NodeEvent::Warning(format!("dial {addr}: {e}")));
                }
                return;
            }
            NodeCommand::Listen(channel) => Command::Listen(channel),
            NodeCommand::Unlisten(channel) => Command::Unlisten(channel),
            NodeCommand::Monitor(channel) => Command::Monitor(channel),
            NodeCommand::Record { channel, on } => {
                if on && !self.recorder.can_record() {
                    return self.emit(NodeEvent::RecordingRefused {
                        channel,
                        reason: "this node has no recordings folder".into(),
                    });
                }
                Command::Record { channel, on }
            }
            NodeCommand::PttDown(channels) => Command::PttDown(channels),
            NodeCommand::Emergency(channel) => Command::Emergency(channel),
            NodeCommand::ClearEmergency { channel, raiser } => {
                Command::ClearEmergency { channel, raiser }
            }
            NodeCommand::PttUp => Command::PttUp,
            NodeCommand::WhisperDown(peer) => Command::WhisperDown(peer),
            NodeCommand::VoiceActivation(channels) => Command::VoiceActivation(channels),
            NodeCommand::EditCharter(body) => Command::EditCharter(body),
            NodeCommand::Subscribe { relay, channels } => Command::Subscribe { relay, channels },
            NodeCommand::SetPosition(position) => Command::SetPosition(position),
            NodeCommand::Mute(channel, muted) => {
                return self.update_mix(channel, |m| m.muted = muted);
            }
            NodeCommand::SetVolume(channel, volume) => {
                return self.update_mix(channel, |m| m.volume = volume.clamp(0.0, 2.0));
            }
            NodeCommand::SetPan(channel, pan) => {
                return self.update_mix(channel, |m| m.pan = pan.clamp(-1.0, 1.0));
            }
            NodeCommand::InjectDatagram { peer, bytes } => {
                if let Err(e) = self.network.links.send_datagram(&peer, &bytes) {
                    self.emit(NodeEvent::Warning(format!("inject to {peer}: {e}")));
                }
                return;
            }
            NodeCommand::SetAudio(settings) => {
                let applied = settings
                    .validate()
                    .and_then(|()| self.transmitter.apply(&settings));
                match applied {
                    Ok(()) => self.playout.apply(&settings),
                    Err(e) => self.emit(NodeEvent::Warning(format!("audio settings refused: {e}"))),
                }
                return;
            }
            NodeCommand::SetInput(input) => {
                if let Err(e) = self.transmitter.set_input(input) {
                    self.emit(NodeEvent::Warning(format!("input unchanged: {e}")));
                }
                return;
            }
            NodeCommand::SetOutputDevice(device) => {
                if let Err(e) = self.playout.set_output_device(device.as_ref()) {
                    self.emit(NodeEvent::Warning(format!("output unchanged: {e}")));
                }
                self.transmitter
                    .set_output_is_device(self.playout.has_device());
                return;
            }
            NodeCommand::TryEditCharter(body, reply) => {
                let result = self.member.edit_charter(now, body);
                let _ = reply.send(result);
                return;
            }
            NodeCommand::Charter(reply) => {
                let _ = reply.send(self.member.state().clone());
                return;
            }
            NodeCommand::InviteAddresses(reply) => {
                let _ = reply.send(
                    self.member
                        .invite_addresses(callsign_keys::MAX_BOOTSTRAP_ADDRS / 2),
                );
                return;
            }
            NodeCommand::Stats(reply) => {
                let _ = reply.send(self.stats());
                return;
            }
            NodeCommand::Shutdown => return,
        };
        self.member.handle_input(now, Input::Command(to_member));
    }

    fn update_mix(&mut self, channel: ChannelId, change: impl FnOnce(&mut ChannelMix)) {
        let mut mix = self.playout.mixer.channel(channel);
        change(&mut mix);
        self.playout.mixer.set_channel(channel, mix);
    }

    fn audio_tick(&mut self, scheduled: Instant) -> Result<(), NodeError> {
        let timestamp = media_timestamp(self.epoch, scheduled);
        let was_transmitting = self.transmitter.is_transmitting();
        if let Some(Encoded {
            target,
            flags,
            sequence,
            payload,
        }) = self.transmitter.tick()?
        {
            let frame = Frame {
                target,
                flags,
                sequence,
                timestamp,
                payload: payload.to_vec(),
            };
            if flags.contains(VoiceFlags::START) {
                let (channels, whisper) = match &frame.target {
                    callsign_mesh::member::Target::Channels(channels) => (channels.clone(), None),
                    callsign_mesh::member::Target::Whisper(peer) => (Vec::new(), Some(*peer)),
                };
                self.emit(NodeEvent::Transmitting { channels, whisper });
            }
            self.member.handle_input(scheduled, Input::Frame(frame));
        }
        if was_transmitting && !self.transmitter.is_transmitting() {
            self.emit(NodeEvent::TransmitStopped);
        }
        let changes = self.playout.tick(now())?;
        let (played, output_delay_ms) = self.playout.last_block();
        // The capture side's delay is about one frame in the feed.
        let frame_ms = self.frame.as_millis() as u32;
        self.transmitter
            .echo_reference(played, output_delay_ms + frame_ms);
        for peer in changes.stopped {
            self.emit(NodeEvent::TalkerStopped { peer });
        }
        self.ticks += 1;
        let per_second =
            (Duration::from_secs(1).as_micros() / self.frame.as_micros().max(1)) as u64;
        if self.ticks % per_second.max(1) == 0 {
            let reports = self.playout.loss_reports();
            if !reports.is_empty() {
                self.member.handle_input(now(), Input::LossReports(reports));
            }
        }
        Ok(())
    }

    fn swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>, now: Instant) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let held = self.member.link(&peer_id);
                let inbound = matches!(endpoint, ConnectedPoint::Listener { .. });
                let transport_kind = link_kind(&endpoint);
                let beside_circuit = upgrades_circuit(held, transport_kind, inbound);
                // Only our punch's own dial is reported as one: a direct dial beside a circuit
                // (a newly confirmed address) is a plain direct path.
                let kind = if self.punch_dials.remove(&connection_id) {
                    LinkKind::HolePunched
                } else {
                    transport_kind
                };
                // A relayed link never replaces a direct one, and TCP never replaces QUIC
                // (both sides may have dialed, on every address the other announced): voice
                // wants datagrams and no relay in the path. Unless the peer dialed us well
                // after our link came up: nobody dials a peer it is linked to, so it restarted
                // (a crash: our link to its previous run has not timed out yet) and our NAT
                // lets only its circuit in.
                let worse = held.is_some_and(|held| kind.worse_than(held));
                // Who opened the QUIC connection: a hole punch's waiting side "dials" in the
                // listener role and takes the peer's connection, which the peer counts as its
                // own dial. Both ends must agree for the crossing-dials rule to keep the same
                // connection (counted as ours here, a punch took the peer's dial for a second
                // one of ours, and the two ends each closed the one the other kept).
                let dialed_by_us = matches!(
                    endpoint,
                    ConnectedPoint::Dialer {
                        role_override: Endpoint::Dialer,
                        ..
                    }
                );
                let previous = (num_established.get() > 1)
                    .then(|| self.connections.get(&peer_id).copied())
                    .flatten();
                let redialed = !dialed_by_us && previous.is_some_and(|p| p.outlived_by(now));
                if worse && previous.is_some() && !redialed {
                    self.network.swarm.close_connection(connection_id);
                    return;
                }
                // A parked link's peer (both ends parked it) dialed or was dialed for ordered
                // control: the control session starts over on the new connection.
                let unparked = self.parking.unpark(&peer_id);
                if unparked {
                    tracing::debug!(%peer_id, dialed_by_us, "parked link back on a new connection");
                }
                // One connection per peer: an older one is most likely to a previous run of it
                // (restarted, its connection not yet timed out), and request-response would keep
                // sending control messages into it; a better kind (a hole punch beside a
                // circuit) replaces a worse one; or our dials crossed (`connections`).
                let better = held.is_some_and(|held| held.worse_than(kind));
                if let Some(previous) = previous {
                    let local = *self.network.swarm.local_peer_id();
                    let replace =
                        better || previous.replaced_by(&local, &peer_id, dialed_by_us, now);
                    tracing::debug!(%peer_id, ?previous, new = ?connection_id, dialed_by_us, replace,
                        "a second connection to a peer");
                    if !replace {
                        self.network.swarm.close_connection(connection_id);
                        return;
                    }
                    self.network.swarm.close_connection(previous.id);
                }
                self.connections.insert(
                    peer_id,
                    HeldConnection {
                        id: connection_id,
                        since: now,
                        dialed_by_us,
                    },
                );
                let remote = match &endpoint {
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                    ConnectedPoint::Dialer { address, .. } => address,
                };
                let up = LinkUp {
                    peer: peer_id,
                    kind,
                    remote: callsign_mesh::member::quic_socket_addr(remote),
                    circuit: circuit_relay(&endpoint),
                    dialed: match &endpoint {
                        ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
                        ConnectedPoint::Listener { .. } => None,
                    },
                    // A replaced connection may have taken control messages with it.
                    restarted: (previous.is_some() || unparked) && !beside_circuit,
                    resumed: unparked && !beside_circuit,
                    beside_circuit,
                    rtt: self.network.links.rtt(&peer_id),
                };
                self.member.handle_input(now, Input::LinkUp(up));
                // The member's word on the kind: a dial to a port the peer's router forwards
                // is `Mapped`.
                self.emit(NodeEvent::LinkUp {
                    peer: peer_id,
                    kind: self.member.link(&peer_id).unwrap_or(kind),
                    remote: endpoint.get_remote_address().clone(),
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connections.remove(&peer_id);
                let parked = self.network.links.is_parked(&peer_id);
                self.parking.closed(peer_id, parked);
                if parked {
                    tracing::debug!(peer = %peer_id, "link parked");
                } else {
                    self.link_down(peer_id, now);
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                if self.reservation == Some(listener_id) {
                    // A refused or lost reservation: the next relay we hear of gets asked.
                    self.reservation = None;
                    self.member.handle_input(now, Input::ReservationClosed);
                }
                self.addresses_changed(now);
            }
            SwarmEvent::NewListenAddr { .. }
            | SwarmEvent::ExpiredListenAddr { .. }
            | SwarmEvent::ExternalAddrConfirmed { .. }
            | SwarmEvent::ExternalAddrExpired { .. } => self.addresses_changed(now),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id: Some(peer),
                error: DialError::Transport(attempts),
            } => {
                self.punch_dials.remove(&connection_id);
                tracing::debug!(%peer, ?attempts, "dial failed");
                let addrs = attempts.into_iter().map(|(addr, _)| addr).collect();
                self.member
                    .handle_input(now, Input::DialFailed { peer, addrs });
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, %error, "dial failed");
                self.punch_dials.remove(&connection_id);
            }
            SwarmEvent::Behaviour(event) => {
                let mut event = Some(event);
                answer_echo(&mut self.network.swarm, &mut event);
                if let Some(NodeBehaviourEvent::Control(event)) = event {
                    self.control_event(event, now);
                }
            }
            _ => {}
        }
    }

    /// Sends a control message (`ordered`: its token). To a parked link's peer it goes on
    /// the plane at once if it fits (a new connection takes a round trip or two more; every
    /// control message a relay and a member exchange may arrive twice) and as control over a
    /// connection dialed where the plane sends.
    fn send_control(&mut self, peer: PeerId, bytes: Vec<u8>, ordered: Option<u64>, now: Instant) {
        self.parking.control(peer, now);
        let dial = match self.parking.is_parked(&peer) {
            true => self.network.links.parked_address(&peer),
            false => None,
        };
        if dial.is_some() {
            let _ = self.network.links.send_lossy_control(&peer, &bytes);
        }
        let addresses = dial.map(crate::link::socket_to_multiaddr).into_iter();
        let control = &mut self.network.swarm.behaviour_mut().control;
        control.send_dialing(&peer, bytes, ordered, addresses.collect());
    }

    fn link_down(&mut self, peer: PeerId, now: Instant) {
        self.member.handle_input(now, Input::LinkDown(peer));
        self.emit(NodeEvent::LinkDown { peer });
    }

    /// On a rented relay: parks the links to members whose ordered control has been quiet for
    /// `NodeConfig::park_idle_links` (none awaiting an acknowledgement). Links to fellow relays
    /// stay: they carry cascaded voice and subscriptions both ways; so do links that carry a
    /// relay v2 reservation or circuit, which need the connection.
    fn park_idle_links(&mut self, now: Instant) {
        let member = &self.member;
        let behaviour = self.network.swarm.behaviour();
        let (control, circuits) = (&behaviour.control, behaviour.relay_server.as_ref());
        let refused = self.network.links.refused_connections();
        let idle = self.parking.idle(now, refused, &self.connections, |peer| {
            !member.is_charter_relay(peer)
                && !control.awaits_ack(peer)
                && !circuits.is_some_and(|c| c.0.relays_for(peer))
        });
        for peer in idle {
            self.network.links.park(&peer);
        }
    }

    fn control_event(&mut self, event: ControlEvent, now: Instant) {
        let peer = match &event {
            ControlEvent::Message { peer, .. }
            | ControlEvent::Acked { peer, .. }
            | ControlEvent::Failed { peer, .. } => *peer,
        };
        self.parking.control(peer, now);
        let input = match event {
            ControlEvent::Message { peer, bytes } => Input::Control(peer, bytes),
            ControlEvent::Acked { peer, token } => Input::ControlAcked(peer, token),
            ControlEvent::Failed { peer, token, error } => {
                tracing::debug!(%peer, %error, "ordered control request lost");
                Input::ControlFailed(peer, token)
            }
        };
        self.member.handle_input(now, input);
    }

    /// Tells the member where we listen and which external addresses the swarm holds.
    fn addresses_changed(&mut self, now: Instant) {
        let swarm = &self.network.swarm;
        let input = Input::Addresses {
            listening: swarm.listeners().cloned().collect(),
            external: swarm.external_addresses().cloned().collect(),
        };
        self.member.handle_input(now, input);
    }

    // ---- outputs ----

    /// Carries out everything the member wants done.
    fn drain(&mut self, now: Instant) {
        while let Some(output) = self.member.poll_output() {
            match output {
                Output::Control {
                    peer,
                    bytes,
                    ordered,
                } => self.send_control(peer, bytes, ordered, now),
                Output::Announce { peer, bytes } => {
                    if !matches!(
                        self.network.links.send_lossy_control(&peer, &bytes),
                        Ok(true)
                    ) {
                        self.send_control(peer, bytes, None, now);
                    }
                }
                Output::Datagram { peers, bytes } => {
                    // Framed once: every copy shares the buffer.
                    let frame = Links::frame_datagram(&bytes);
                    for peer in peers {
                        if let Err(e) = self.network.links.send_framed(&peer, frame.clone()) {
                            tracing::debug!(%peer, %e, "voice datagram not sent");
                        }
                    }
                }
                Output::Forward {
                    packet,
                    plain,
                    enveloped,
                    received_at,
                } => self.forward(&packet, &plain, &enveloped, received_at),
                Output::ForwardView(view) => self.network.links.set_forward_view(view),
                Output::Dial {
                    peer,
                    addrs,
                    condition,
                } => {
                    if let Some(peer) = peer {
                        let rented = self.member.is_charter_relay(&peer);
                        self.network.links.set_rented_relay(peer, rented);
                    }
                    let result = match peer {
                        Some(peer) => self.network.swarm.dial(
                            DialOpts::peer_id(peer)
                                .addresses(addrs)
                                .condition(match condition {
                                    DialCondition::Always => PeerCondition::Always,
                                    DialCondition::Disconnected => PeerCondition::Disconnected,
                                    DialCondition::DisconnectedAndNotDialing => {
                                        PeerCondition::DisconnectedAndNotDialing
                                    }
                                })
                                .build(),
                        ),
                        None => match addrs.into_iter().next() {
                            Some(addr) => self.network.swarm.dial(addr),
                            None => Ok(()),
                        },
                    };
                    if let Err(e) = result {
                        tracing::debug!(%e, "dial");
                    }
                }
                Output::Punch { peer, addrs, role } => {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::Always);
                    let opts = match role {
                        PunchRole::Dial => opts,
                        PunchRole::Await => opts.override_role(),
                    };
                    let opts = opts.build();
                    let id = opts.connection_id();
                    match self.network.swarm.dial(opts) {
                        Ok(()) => {
                            self.punch_dials.insert(id);
                        }
                        Err(e) => tracing::debug!(%peer, %e, "hole punch dial"),
                    }
                }
                Output::ReserveCircuit(addr) => match self.network.swarm.listen_on(addr) {
                    Ok(id) => self.reservation = Some(id),
                    Err(e) => {
                        tracing::debug!(%e, "relay reservation");
                        self.member.handle_input(now, Input::ReservationClosed);
                    }
                },
                Output::Probe { to, datagram } => self.network.socket.send_probe(to, datagram),
                Output::ExternalAddress { addr, add } => {
                    if add {
                        self.network.swarm.add_external_address(addr);
                    } else {
                        self.network.swarm.remove_external_address(&addr);
                    }
                    self.addresses_changed(now);
                }
                Output::CircuitMembers(peers) => self.relay_allow.set(peers),
                Output::CloseLink(peer) => self.network.links.close(&peer),
                Output::Persist(ops) => {
                    if let Some(log) = &mut self.log {
                        if let Err(e) = log.append(ops.iter().map(Vec::as_slice)) {
                            self.emit(NodeEvent::Warning(format!("charter log: {e}")));
                        }
                    }
                }
                Output::Play(frame) => {
                    self.record(&frame, now);
                    self.play(frame, now);
                }
                Output::Event(NodeEvent::Recording { channel, on }) => {
                    self.recording_changed(channel, on, now)
                }
                Output::Transmit(Some(target)) => self.transmitter.press(target),
                Output::Transmit(None) => self.transmitter.release(),
                Output::VoiceActivation(channels) => {
                    self.transmitter.set_voice_activation(channels)
                }
                Output::ExpectedLoss(pct) => {
                    if let Err(e) = self.transmitter.set_expected_loss(pct) {
                        tracing::warn!(%e, "setting expected loss");
                    }
                }
                Output::Event(event) => self.emit(event),
            }
        }
    }

    fn play(&mut self, frame: callsign_mesh::voice::ReceivedFrame, now: Instant) {
        // Placed by the first positioned channel it is heard on.
        let state = self.member.state();
        let placement = frame
            .channels
            .iter()
            .find_map(|c| state.spatial.get(c))
            .filter(|_| !frame.whisper)
            .map_or(Placement::Unplaced, |spatial| {
                spatial.place(self.member.position().as_ref(), frame.position.as_ref())
            });
        match self.playout.receive(&frame, placement, now) {
            Ok(true) => self.emit(NodeEvent::TalkerStarted {
                peer: frame.sender,
                name: self.member.display_name(&frame.sender),
                channels: frame.channels,
                whisper: frame.whisper,
            }),
            Ok(false) => {}
            Err(e) => self.emit(NodeEvent::Warning(format!("playout: {e}"))),
        }
    }

    /// Writes a played frame to the channels we record; a recording that cannot be written
    /// stops (and the member stops announcing it).
    fn record(&mut self, frame: &callsign_mesh::voice::ReceivedFrame, now: Instant) {
        if self.recorder.is_idle() {
            return;
        }
        let name = self.member.display_name(&frame.sender);
        for (channel, e) in self.recorder.frame(frame, &name, now) {
            self.emit(NodeEvent::Warning(e.to_string()));
            self.member
                .handle_input(now, Input::Command(Command::Record { channel, on: false }));
        }
    }

    /// The member started or stopped recording a channel: open or close its file.
    fn recording_changed(&mut self, channel: ChannelId, on: bool, now: Instant) {
        if on {
            let path = self.member.state().path(channel).unwrap_or_default();
            let by = self.member.own_name().to_string();
            let unix = self.member.unix_ms(now);
            match self.recorder.start(channel, &path, &by, unix, now) {
                Ok(file) => tracing::info!(file = %file.display(), "recording"),
                Err(e) => {
                    self.emit(NodeEvent::Warning(e.to_string()));
                    self.member
                        .handle_input(now, Input::Command(Command::Record { channel, on: false }));
                    return;
                }
            }
        } else if let Some(Err(e)) = self.recorder.stop(channel) {
            self.emit(NodeEvent::Warning(e.to_string()));
        }
        self.emit(NodeEvent::Recording { channel, on });
    }

    /// A relay's copies: framed once, every copy shares the buffer.
    fn forward(
        &mut self,
        packet: &[u8],
        plain: &Arc<[PeerId]>,
        enveloped: &Arc<[PeerId]>,
        received_at: Instant,
    ) {
        // A subscriber whose link just went is simply skipped.
        if !plain.is_empty() {
            let frame = Links::frame_datagram(packet);
            self.network.links.send_framed_to_many(plain, &frame);
        }
        if !enveloped.is_empty() {
            let frame = Links::frame_datagram(&callsign_mesh::forward::envelope(packet));
            self.network.links.send_framed_to_many(enveloped, &frame);
        }
        self.forward_latency.record(received_at);
    }
}

fn link_kind(endpoint: &ConnectedPoint) -> LinkKind {
    // An inbound circuit's remote address is just `/p2p/<peer>`; its local one names the relay.
    if endpoint.is_relayed() {
        LinkKind::Relayed
    } else if endpoint
        .get_remote_address()
        .iter()
        .any(|p| matches!(p, Protocol::Tcp(_)))
    {
        LinkKind::TcpFallback
    } else {
        LinkKind::Direct
    }
}

/// The relay a circuit runs through: the peer named just before `/p2p-circuit` (an outbound
/// circuit's remote address, an inbound one's local address).
fn circuit_relay(endpoint: &ConnectedPoint) -> Option<PeerId> {
    let addr = match endpoint {
        ConnectedPoint::Dialer { address, .. } => address,
        ConnectedPoint::Listener { local_addr, .. } => local_addr,
    };
    let mut last = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// 48 kHz samples from `epoch` to `at` (wrapping, as the header field does).
fn media_timestamp(epoch: Instant, at: Instant) -> u32 {
    let elapsed = at.saturating_duration_since(epoch);
    (elapsed.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u32
}
