//! The node's event loop, in the shape of quinn's `ConnectionDriver`: it takes one input at a
//! time (a command, a frame tick, a voice datagram, a swarm event, a probe, a timer), feeds
//! the sans-IO [`Member`] with `now`, and carries out what it outputs on the swarm, the links,
//! the probe socket, the audio worker, the charter log and the app's event channel. Protocol
//! decisions are the member's; this file only translates.

use super::api::{NodeCommand, NodeEvent, NodeStats};
use super::playout::Playout;
use super::voice::{Encoded, Transmitter};
use super::NodeError;
use crate::audio::SAMPLE_RATE;
use crate::link::control::ControlEvent;
use crate::link::forwarding::ForwardLatency;
use crate::link::portmap::PortMapper;
use crate::link::relay::RelayAllowList;
use crate::link::socket::ProbeNonces;
use crate::link::swarm::NodeNetwork;
use crate::link::{LinkEvent, Links};
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::member::{Command, DialCondition, Frame, Input, Member, Output, PortMapping};
use callsign_mesh::punch::PunchRole;
use callsign_mesh::spatial::Placement;
use callsign_mesh::voice::VoiceFlags;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::ConnectionId;
use libp2p::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connections::HeldConnection;
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

    pub(super) fn link_down(&mut self, peer: PeerId, now: Instant) {
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

    pub(super) fn control_event(&mut self, event: ControlEvent, now: Instant) {
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
    pub(super) fn addresses_changed(&mut self, now: Instant) {
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

/// 48 kHz samples from `epoch` to `at` (wrapping, as the header field does).
fn media_timestamp(epoch: Instant, at: Instant) -> u32 {
    let elapsed = at.saturating_duration_since(epoch);
    (elapsed.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u32
}
