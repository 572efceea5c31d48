//! The node's event loop: the one place that joins sockets, clocks and audio to the sans-IO
//! protocol core. Each turn handles one input (a command, a frame tick, a voice datagram, a
//! swarm event, a timer), then flushes what the mesh state machines want sent.

use super::api::{
    AudioStats, LinkKind, NodeCommand, NodeEvent, NodeStats, PeerStats, SentStream, StreamChannel,
};
use super::control::{ControlMessage, PeerControl};
use super::playout::Playout;
use super::voice::{Target, Transmitter};
use super::NodeError;
use crate::audio::mixer::ChannelMix;
use crate::link::socket::ProbeNonces;
use crate::link::swarm::{NodeNetwork, RelayAllowList};
use crate::link::LinkEvent;
use callsign_keys::{IdentityKey, NodeKeys};
use callsign_mesh::admission::JoinRequest;
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::sync::{CharterSync, SyncEvent};
use callsign_mesh::charter::{ChannelId, CharterState, Permissions};
use callsign_mesh::floor::FloorControl;
use callsign_mesh::forward::Forwarder;
use callsign_mesh::presence::PresenceTable;
use callsign_mesh::reachability::AddressBook;
use callsign_mesh::topology::{Route, TopologyConfig};
use callsign_mesh::voice::{speakable, whisper_delivery, KeySchedule, VoiceReceiver};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::PeerId;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Everything the loop owns. Built by `Node::start`.
pub(crate) struct Driver {
    pub keys: NodeKeys,
    pub local: IdentityKey,
    pub local_peer: PeerId,
    pub network: NodeNetwork,
    pub link_events: mpsc::UnboundedReceiver<LinkEvent>,
    pub sync: CharterSync<PeerId>,
    pub log: Option<OpLog>,
    pub presence: PresenceTable,
    pub presence_seq: u64,
    pub presence_interval: Duration,
    pub next_presence: Instant,
    pub display_name: String,
    pub listening: Vec<ChannelId>,
    pub receiver: VoiceReceiver,
    pub schedule: KeySchedule,
    pub peers: BTreeMap<PeerId, PeerControl>,
    pub link_kinds: BTreeMap<PeerId, LinkKind>,
    /// For peers linked through a relay circuit: the relay.
    pub circuits: BTreeMap<PeerId, PeerId>,
    /// The newest connection to each peer.
    pub connections: BTreeMap<PeerId, libp2p::swarm::ConnectionId>,
    pub members: BTreeMap<PeerId, IdentityKey>,
    /// Who may use the relay circuits we serve (the org's members).
    pub relay_allow: RelayAllowList,
    /// The listener of our circuit reservation on a member relay, while we hold or await one.
    pub reservation: Option<libp2p::core::transport::ListenerId>,
    pub transmitter: Transmitter,
    pub playout: Playout,
    pub events: mpsc::UnboundedSender<NodeEvent>,
    pub sent: BTreeMap<(IdentityKey, StreamChannel), u64>,
    pub ptt_denied: u64,
    pub epoch: Instant,
    pub start: Instant,
    pub unix_at_start_ms: u64,
    pub frame: Duration,
    pub tap: bool,
    pub send_loss: f64,
    pub loss_rng: ChaCha8Rng,
    pub keys_dirty: bool,
    /// Loss each listener last reported for our frames.
    pub listener_loss: BTreeMap<PeerId, u8>,
    pub ticks: u64,
    pub floor: FloorControl,
    /// Channels PTT is held on (simulcast), after the charter check.
    pub ptt_channels: Vec<ChannelId>,
    /// Those we transmit on now: open ones, and half-duplex ones whose floor we hold.
    pub tx_channels: Vec<ChannelId>,
    /// Frames refused because their sender did not hold the floor.
    pub floor_drops: u64,
    /// The charter's rented relays that are not members, by peer id.
    pub relays: BTreeMap<PeerId, IdentityKey>,
    pub topology: TopologyConfig,
    /// The upload we may spend on voice, kbit/s (0: not said), advertised in presence.
    pub uplink_kbps: u32,
    /// How each channel we listen or speak on travels.
    pub routes: BTreeMap<ChannelId, Route>,
    /// When presence news is next folded into the routes (`None`: nothing new).
    pub replan_due: Option<Instant>,
    /// When the routes were last planned.
    pub replanned: Instant,
    /// Channels that moved to a relay, until when their direct copies continue.
    pub route_switched: BTreeMap<ChannelId, Instant>,
    /// The channels each relay was last told to forward us.
    pub subscribed: BTreeMap<IdentityKey, Vec<ChannelId>>,
    pub subscription_seq: u64,
    /// Set when we forward for others (a relay).
    pub forwarder: Option<Forwarder>,
    /// Our request to join with an invite, until the charter names us a member.
    pub join: Option<JoinRequest>,
    /// Dialed at start, and again at each presence tick while we have no link at all.
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// See [`super::NodeConfig::announce`].
    pub announce: Option<Vec<libp2p::Multiaddr>>,
    pub subscriptions_refused: u64,
    /// Our candidate public addresses and their probes.
    pub reachability: AddressBook<PeerId>,
    /// Nonces of probes that reached our socket.
    pub probes: ProbeNonces,
    /// The UDP address each directly linked peer's connection comes from.
    pub remote_addrs: BTreeMap<PeerId, std::net::SocketAddr>,
    /// When we last sent a probe for each peer (rate limit).
    pub probed_for: BTreeMap<PeerId, Instant>,
    /// The configuration says we are publicly reachable (`NodeConfig::relay_circuits`).
    pub vouched: bool,
    /// The attempt number our next pair session starts at (see `mesh::pairing`).
    pub next_pairing: u64,
    pub forward_latency: [u64; super::forwarding::LATENCY_BUCKETS],
    pub forward_latency_sum_us: u64,
}

pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(super) fn member_map(state: &CharterState) -> BTreeMap<PeerId, IdentityKey> {
    let mut all: BTreeSet<IdentityKey> = state.members.keys().copied().collect();
    all.insert(state.org);
    all.extend(state.admins.iter().copied());
    all.into_iter().map(|k| (k.peer_id(), k)).collect()
}

pub(super) fn link_kind(endpoint: &libp2p::core::ConnectedPoint) -> LinkKind {
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
pub(super) fn circuit_relay(endpoint: &libp2p::core::ConnectedPoint) -> Option<PeerId> {
    let addr = match endpoint {
        libp2p::core::ConnectedPoint::Dialer { address, .. } => address,
        libp2p::core::ConnectedPoint::Listener { local_addr, .. } => local_addr,
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

impl Driver {
    pub(super) fn emit(&self, event: NodeEvent) {
        // Nobody listening is fine: a headless bot may ignore events.
        let _ = self.events.send(event);
    }

    pub(super) fn state(&self) -> &CharterState {
        self.sync.charter().state()
    }

    pub(super) fn set_members(&mut self) {
        self.members = member_map(self.state());
        self.relays = self
            .state()
            .relays
            .keys()
            .map(|k| (k.peer_id(), *k))
            .filter(|(p, _)| !self.members.contains_key(p))
            .collect();
        self.relay_allow.set(self.members.keys().copied());
    }

    pub(super) fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_at_start_ms + now.saturating_duration_since(self.start).as_millis() as u64
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<NodeCommand>,
    ) -> Result<NodeStats, NodeError> {
        let first_tick = tokio::time::Instant::now() + self.frame;
        let mut tick = tokio::time::interval_at(first_tick, self.frame);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        self.set_members();
        self.floor
            .update_charter(self.sync.charter().state(), now());
        self.update_arbiters(now());
        self.dial_relays();
        self.replan(now());
        self.keys_dirty = true;
        self.flush(now());
        loop {
            let deadline = self.next_deadline();
            // `biased`: a fixed order of inputs, so a simulated run replays exactly (tokio's
            // default picks among ready branches at random).
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None | Some(NodeCommand::Shutdown) => break,
                    Some(command) => self.command(command, now()),
                },
                at = tick.tick() => self.audio_tick(at.into_std())?,
                Some(datagram) = self.network.datagrams.recv() => self.datagram(datagram, now()),
                event = self.network.swarm.select_next_some() => self.swarm_event(event, now()),
                Some(event) = self.link_events.recv() => self.link_event(event),
                Some(nonce) = self.probes.recv() => self.probe_arrived(nonce, now()),
                _ = tokio::time::sleep_until(deadline.into()) => self.timers(now()),
            }
            self.flush(now());
        }
        let stats = self.stats();
        // Say goodbye: close every QUIC connection and give the endpoint a moment to send the
        // CONNECTION_CLOSE frames, so peers stop sending to us at once instead of timing out.
        for peer in self.link_kinds.keys() {
            self.network.links.close(peer);
        }
        if !self.link_kinds.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.playout.finish()?;
        Ok(stats)
    }

    pub(super) fn next_deadline(&self) -> Instant {
        [
            self.sync.poll_timeout(),
            self.schedule.poll_timeout(),
            self.floor.poll_timeout(),
            self.reachability.poll_timeout(),
            self.peers
                .values()
                .filter_map(|c| c.pairing.as_ref()?.poll_timeout())
                .min(),
            Some(self.next_presence),
            self.replan_due,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_presence)
    }

    pub(super) fn timers(&mut self, now: Instant) {
        self.sync.handle_timeout(now);
        self.floor.handle_timeout(now);
        self.reachability.handle_timeout(now);
        self.pairing_timeouts(now);
        self.keys_dirty = true;
        if now >= self.next_presence {
            self.next_presence = now + self.presence_interval;
            self.announce_presence(now);
            let gone = {
                let members = &self.members;
                self.presence
                    .expire(self.unix_ms(now), |p| members.contains_key(&p.peer_id()))
            };
            for peer in gone {
                self.emit(NodeEvent::PresenceGone { peer });
            }
            self.dial_relays();
            self.redial_bootstrap();
            self.replan(now);
        }
    }

    /// Alone (every peer was offline when we started, or all links dropped): try the
    /// bootstrap addresses again, so a member or newcomer finds the org once someone is up.
    fn redial_bootstrap(&mut self) {
        if !self.link_kinds.is_empty() {
            return;
        }
        for addr in self.bootstrap.clone() {
            if let Err(e) = self.network.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, %e, "bootstrap redial");
            }
        }
    }

    // ---- commands ----

    pub(super) fn command(&mut self, command: NodeCommand, now: Instant) {
        match command {
            NodeCommand::Dial(addr) => {
                if let Err(e) = self.network.swarm.dial(addr.clone()) {
                    self.emit(NodeEvent::Warning(format!("dial {addr}: {e}")));
                }
            }
            NodeCommand::Listen(channel) => {
                if self.state().may(&self.local, channel, Permissions::LISTEN) {
                    if let Err(at) = self.listening.binary_search(&channel) {
                        self.listening.insert(at, channel);
                        self.replan(now);
                        self.announce_presence(now);
                    }
                } else {
                    self.emit(NodeEvent::Warning(format!(
                        "the charter does not let us listen on {channel}"
                    )));
                }
            }
            NodeCommand::Unlisten(channel) => {
                if let Ok(at) = self.listening.binary_search(&channel) {
                    self.listening.remove(at);
                    self.replan(now);
                    self.announce_presence(now);
                }
            }
            NodeCommand::Mute(channel, muted) => {
                self.update_mix(channel, |m| m.muted = muted);
            }
            NodeCommand::SetVolume(channel, volume) => {
                self.update_mix(channel, |m| m.volume = volume.clamp(0.0, 2.0));
            }
            NodeCommand::SetPan(channel, pan) => {
                self.update_mix(channel, |m| m.pan = pan.clamp(-1.0, 1.0));
            }
            NodeCommand::PttDown(channels) => {
                let allowed = self.speakable_or_refuse(&channels);
                self.ptt_down(allowed, false, now);
            }
            NodeCommand::Emergency(channel) => self.ptt_down(vec![channel], true, now),
            NodeCommand::ClearEmergency { channel, raiser } => {
                self.clear_emergency(channel, raiser, now)
            }
            NodeCommand::WhisperDown(peer) => {
                match whisper_delivery(self.state(), &self.schedule, &self.local, &peer, now) {
                    Ok(_) => {
                        // A whisper replaces any channel transmission and its floor requests.
                        self.ptt_up(now);
                        self.transmitter.press(Target::Whisper(peer));
                    }
                    Err(e) => {
                        self.ptt_denied += 1;
                        self.emit(NodeEvent::PttDenied {
                            channels: Vec::new(),
                            reason: format!("whisper: {e}"),
                        });
                    }
                }
            }
            NodeCommand::PttUp => self.ptt_up(now),
            NodeCommand::VoiceActivation(channels) => {
                let allowed = self.speakable_or_refuse(&channels);
                let allowed = self.open_only(allowed);
                self.transmitter.set_voice_activation(allowed);
            }
            NodeCommand::EditCharter(body) => {
                let unix = self.unix_ms(now);
                let identity = self.keys.identity.clone();
                match self.sync.edit(&identity, body, unix) {
                    Ok(op) => {
                        self.persist(&[op.encode()]);
                        self.charter_changed(1, now);
                    }
                    Err(e) => self.emit(NodeEvent::Warning(format!("charter edit refused: {e}"))),
                }
            }
            NodeCommand::InjectDatagram { peer, bytes } => {
                if let Err(e) = self.network.links.send_datagram(&peer, &bytes) {
                    self.emit(NodeEvent::Warning(format!("inject to {peer}: {e}")));
                }
            }
            NodeCommand::Subscribe { relay, channels } => {
                if !self.subscribe_at(relay, channels) {
                    self.emit(NodeEvent::Warning(format!("no link to relay {relay}")));
                }
            }
            NodeCommand::SetAudio(settings) => {
                let applied = settings
                    .validate()
                    .and_then(|()| self.transmitter.apply(&settings));
                match applied {
                    Ok(()) => self.playout.apply(&settings),
                    Err(e) => self.emit(NodeEvent::Warning(format!("audio settings refused: {e}"))),
                }
            }
            NodeCommand::SetInput(input) => {
                if let Err(e) = self.transmitter.set_input(input) {
                    self.emit(NodeEvent::Warning(format!("input unchanged: {e}")));
                }
            }
            NodeCommand::SetOutputDevice(device) => {
                if let Err(e) = self.playout.set_output_device(device.as_ref()) {
                    self.emit(NodeEvent::Warning(format!("output unchanged: {e}")));
                }
            }
            NodeCommand::Charter(reply) => {
                let _ = reply.send(self.state().clone());
            }
            NodeCommand::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            NodeCommand::Shutdown => {}
        }
    }

    /// The requested channels the charter lets us speak on; the rest are refused (counted and
    /// reported).
    fn speakable_or_refuse(&mut self, channels: &[ChannelId]) -> Vec<ChannelId> {
        let (allowed, denied) = speakable(self.state(), &self.local, channels);
        if !denied.is_empty() {
            self.ptt_denied += 1;
            self.emit(NodeEvent::PttDenied {
                channels: denied,
                reason: "the charter does not let us speak there".into(),
            });
        }
        allowed
    }

    pub(super) fn update_mix(&mut self, channel: ChannelId, change: impl FnOnce(&mut ChannelMix)) {
        let mut mix = self.playout.mixer.channel(channel);
        change(&mut mix);
        self.playout.mixer.set_channel(channel, mix);
    }

    pub(super) fn persist(&mut self, ops: &[Vec<u8>]) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.append(ops.iter().map(Vec::as_slice)) {
                let warning = format!("charter log: {e}");
                self.emit(NodeEvent::Warning(warning));
            }
        }
    }

    pub(super) fn charter_changed(&mut self, ops: usize, now: Instant) {
        self.set_members();
        if self.finish_join() {
            // Everything we had was learnt as a stranger: announce ourselves as a member.
            self.listening = self.state().channels.keys().copied().collect();
        }
        let state = self.state().clone();
        self.listening
            .retain(|c| state.may(&self.local, *c, Permissions::LISTEN));
        self.floor.update_charter(&state, now);
        self.keys_dirty = true;
        // Links to peers that are no longer members (or relays) lose their control state.
        let joining = self.joining();
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !joining && self.link_role(p).is_none())
            .copied()
            .collect();
        for peer in gone {
            self.peers.remove(&peer);
            self.sync.handle_link_down(&peer);
        }
        let members: BTreeSet<IdentityKey> = self.members.values().copied().collect();
        self.floor.retain_participants(|k| members.contains(k), now);
        self.update_arbiters(now);
        // Peers linked before the charter named them start their control now.
        let joined: Vec<PeerId> = self
            .link_kinds
            .keys()
            .filter(|p| self.link_role(p).is_some() && !self.peers.contains_key(p))
            .copied()
            .collect();
        for peer in joined {
            // If the peer was to start the E2EE session, its first message reached us while
            // it was a stranger and was ignored: as responder we ask it to start again.
            self.peer_up(peer, now, true);
        }
        self.dial_relays();
        self.replan(now);
        self.emit(NodeEvent::CharterChanged { ops });
    }

    /// Drains what the state machines want sent.
    pub(super) fn flush(&mut self, now: Instant) {
        if self.replan_due.is_some_and(|due| due <= now) {
            self.replan(now);
        }
        while let Some((peer, message)) = self.sync.poll_transmit() {
            if let Some(control) = self.peers.get_mut(&peer) {
                control.queue(ControlMessage::Sync(message.encode()));
            }
        }
        let mut added = 0;
        while let Some(event) = self.sync.poll_event() {
            match event {
                SyncEvent::Added { ops, .. } => {
                    added += ops.len();
                    self.persist(&ops);
                }
                SyncEvent::Rejected { reason, .. } => {
                    self.emit(NodeEvent::Warning(format!("charter op rejected: {reason}")));
                }
            }
        }
        if added > 0 {
            self.charter_changed(added, now);
        }
        if self.keys_dirty {
            self.keys_dirty = false;
            let sessions: BTreeSet<IdentityKey> = self
                .peers
                .iter()
                .filter(|(_, c)| c.is_established())
                .filter_map(|(p, _)| self.members.get(p).copied())
                .collect();
            let state = self.sync.charter().state().clone();
            self.schedule.update(&state, &sessions, now);
        }
        while let Some(grant) = self.schedule.poll_grant() {
            let peer = grant.peer.peer_id();
            let Some(control) = self.peers.get_mut(&peer) else {
                continue;
            };
            let Some(session) = control.pairing.as_mut().and_then(|p| p.session()) else {
                continue;
            };
            match session.grant(&self.keys, &grant.key, grant.channels) {
                Ok(sealed) => control.queue(ControlMessage::Grant(sealed)),
                Err(e) => tracing::warn!(%peer, %e, "sealing a grant failed"),
            }
        }
        self.flush_reachability(now);
        // Floor messages last: the charter changes above may have started floors.
        self.flush_floor();
        for (peer, control) in &mut self.peers {
            if let Some(bytes) = control.next_to_send() {
                let id = self
                    .network
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_request(peer, bytes);
                control.sent(id);
            }
        }
    }

    pub(super) fn stats(&self) -> NodeStats {
        let mut peers: Vec<PeerStats> = self
            .link_kinds
            .iter()
            .map(|(peer, kind)| PeerStats {
                peer: peer.to_string(),
                kind: *kind,
                rtt: self.network.links.rtt(peer),
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        NodeStats {
            received: self.playout.report(),
            sent: self
                .sent
                .iter()
                .map(|((to, channel), frames)| SentStream {
                    to: *to,
                    channel: *channel,
                    frames_sent: *frames,
                })
                .collect(),
            drops: self.receiver.drops().clone(),
            ptt_denied: self.ptt_denied,
            key_rotations: self.schedule.rotations(),
            peers,
            frames_encoded: self.transmitter.encoded(),
            expected_loss_pct: self.transmitter.expected_loss_pct(),
            charter_hash: self
                .state()
                .state_hash()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            charter_ops: self.sync.charter().len(),
            floor_drops: self.floor_drops,
            floor: self.floor_stats(),
            routes: self.routes.iter().map(|(c, r)| (*c, *r)).collect(),
            audio_keys_held: self.receiver.keys_held(),
            forwarding: self.forwarding_stats(),
            audio: self.audio_stats(),
        }
    }

    fn audio_stats(&self) -> AudioStats {
        let (input_level_db, speech_probability) = self.transmitter.level();
        let (capture_overruns, capture_feed) = self.transmitter.device_health();
        let (playback_underruns, playback_feed) = self.playout.device_health();
        AudioStats {
            input_level_db,
            speech_probability,
            capture_overruns,
            playback_underruns,
            capture_feed,
            playback_feed,
        }
    }
}
