//! One turmoil host per member: its script (commands at virtual times), its comings and goings
//! (crash, restart, join, leave), and the loop that runs the real `Node` through them, tracing
//! every event and keeping its final counters.

use crate::network::public_ip;
use crate::network::SimNetwork;
use crate::org::Org;
use crate::scenario::{Action, NatKind, PairLink, Scenario, WALK_STEP_S};
use crate::trace::{describe, TraceLine};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::{ChannelId, OpBody};
use callsign_node::link::LinkSocket;
use callsign_node::runtime::{AudioInput, NodeStats};
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod incarnations;
use incarnations::{merge, so_far};

/// The QUIC port every simulated node binds.
const PORT: u16 = 4433;

/// A node's comings and goings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Crash,
    Restart,
    Join,
    Leave,
}

fn lifecycle(scenario: &Scenario, name: &str) -> Vec<(Duration, Life)> {
    let mut out: Vec<(Duration, Life)> = scenario
        .events
        .iter()
        .filter_map(|e| {
            let life = match &e.action {
                Action::Crash { node } if node == name => Life::Crash,
                Action::Restart { node } if node == name => Life::Restart,
                Action::Join { node } if node == name => Life::Join,
                Action::Leave { node } if node == name => Life::Leave,
                _ => return None,
            };
            Some((Duration::from_secs_f64(e.at_s), life))
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out
}

/// How long a host stays up after its node stopped for good. The machine does not vanish when
/// the app quits: what the shutdown handed to the network (the goodbye's CONNECTION_CLOSE
/// frames, in flight for the path's latency) still arrives. Without it peers of a member that
/// left kept a dead link until QUIC's idle timeout, and floor presses waited on its
/// acknowledgement (chaos seed 16).
const GOODBYE_LINGER: Duration = Duration::from_secs(1);

/// What every host writes and the report reads: the trace, final counters, the last edit.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) trace: Mutex<Vec<TraceLine>>,
    pub(crate) stats: Mutex<BTreeMap<usize, NodeStats>>,
    /// Virtual time of the last charter edit command.
    pub(crate) last_edit: Mutex<Option<Duration>>,
    /// Each node's counters at the scenario's `measure_from_s`.
    pub(crate) baselines: Mutex<BTreeMap<usize, NodeStats>>,
    /// The nodes still running when the scenario ended.
    pub(crate) live_at_end: Mutex<BTreeSet<usize>>,
    /// Each node's roster when it last stopped: per channel, the members it saw listening.
    pub(crate) rosters: Mutex<BTreeMap<usize, Roster>>,
}

/// Channel name → names of the members shown listening there.
pub(crate) type Roster = BTreeMap<String, BTreeSet<String>>;

pub(crate) fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// A node's script: commands at virtual times.
fn script(
    scenario: &Scenario,
    index: usize,
    org: &Org,
    names: &BTreeMap<String, IdentityKey>,
) -> Vec<(Duration, NodeCommand)> {
    let me = &scenario.nodes[index].name;
    let at = |s: f64| Duration::from_secs_f64(s);
    let mut out: Vec<(Duration, NodeCommand)> = scenario.nodes[index]
        .monitor
        .iter()
        .map(|c| (Duration::ZERO, NodeCommand::Monitor(org.channels[c])))
        .collect();
    if let Some(place) = &scenario.nodes[index].position {
        out.push((
            Duration::ZERO,
            NodeCommand::SetPosition(Some(place.to_position())),
        ));
    }
    for event in &scenario.events {
        match &event.action {
            Action::Move { node, .. } if node == me => out.push((
                at(event.at_s),
                NodeCommand::SetPosition(
                    scenario
                        .position_at(me, event.at_s)
                        .map(|p| p.to_position()),
                ),
            )),
            Action::Walk {
                node, duration_s, ..
            } if node == me => {
                let steps = (duration_s / WALK_STEP_S).ceil() as u64;
                for step in 1..=steps {
                    let t = event.at_s + (step as f64 * WALK_STEP_S).min(*duration_s);
                    out.push((
                        at(t),
                        NodeCommand::SetPosition(
                            scenario.position_at(me, t).map(|p| p.to_position()),
                        ),
                    ));
                }
            }
            Action::Ptt {
                node,
                channels,
                duration_s,
            } if node == me => {
                let ids = channels.iter().map(|c| org.channels[c]).collect();
                out.push((at(event.at_s), NodeCommand::PttDown(ids)));
                out.push((at(event.at_s + duration_s), NodeCommand::PttUp));
            }
            Action::Subscribe {
                node,
                relay,
                channels,
            } if node == me => out.push((
                at(event.at_s),
                NodeCommand::Subscribe {
                    relay: names[relay],
                    channels: channels.iter().map(|c| org.channels[c]).collect(),
                },
            )),
            Action::Whisper {
                node,
                to,
                duration_s,
            } if node == me => {
                out.push((at(event.at_s), NodeCommand::WhisperDown(names[to])));
                out.push((at(event.at_s + duration_s), NodeCommand::PttUp));
            }
            Action::AddChannel { node, name } if node == me => out.push((
                at(event.at_s),
                NodeCommand::EditCharter(OpBody::AddChannel {
                    parent: None,
                    name: name.clone(),
                }),
            )),
            Action::RemoveMember { node, member } if node == me => out.push((
                at(event.at_s),
                NodeCommand::EditCharter(OpBody::RemoveMember {
                    peer: names[member],
                }),
            )),
            Action::SetRole { node, member, role } if node == me => out.push((
                at(event.at_s),
                NodeCommand::EditCharter(OpBody::PutMember {
                    peer: names[member],
                    name: member.clone(),
                    roles: vec![role.clone()],
                }),
            )),
            Action::Emergency {
                node,
                channel,
                duration_s,
            } if node == me => {
                let id = org.channels[channel];
                out.push((at(event.at_s), NodeCommand::Emergency(id)));
                out.push((at(event.at_s + duration_s), NodeCommand::PttUp));
            }
            Action::ClearEmergency {
                node,
                channel,
                raiser,
            } if node == me => out.push((
                at(event.at_s),
                NodeCommand::ClearEmergency {
                    channel: org.channels[channel],
                    raiser: names[raiser],
                },
            )),
            Action::Listen { node, channel } if node == me => {
                out.push((at(event.at_s), NodeCommand::Listen(org.channels[channel])))
            }
            Action::Unlisten { node, channel } if node == me => {
                out.push((at(event.at_s), NodeCommand::Unlisten(org.channels[channel])))
            }
            _ => {}
        }
    }
    // Stable: a release and a press at the same instant keep scenario order.
    out.sort_by_key(|(t, _)| *t);
    out
}

/// What one member's host runs: everything derived from the scenario before it starts.
pub(crate) struct HostPlan {
    index: usize,
    name: String,
    nat: NatKind,
    upnp: bool,
    relay: bool,
    rented_relay: bool,
    uplink_kbps: f64,
    node_seed: u64,
    duration: Duration,
    /// When the report's settled window starts.
    measure_from: Option<Duration>,
    commands: Vec<(Duration, NodeCommand)>,
    /// When this member edits the charter (for convergence time).
    edits: Vec<Duration>,
    listen: Vec<ChannelId>,
    /// Members before it in the scenario (dialed at first start) and all others (on restart).
    earlier: Vec<(String, IdentityKey)>,
    everyone: Vec<(String, IdentityKey)>,
    lifecycle: Vec<(Duration, Life)>,
    pairs: Vec<PairLink>,
    by_key: BTreeMap<IdentityKey, String>,
    channel_names: BTreeMap<ChannelId, String>,
}

impl HostPlan {
    pub(crate) fn new(
        scenario: &Scenario,
        index: usize,
        org: &Org,
        names: &BTreeMap<String, IdentityKey>,
        by_key: &BTreeMap<IdentityKey, String>,
        seed: u64,
    ) -> Self {
        let spec = &scenario.nodes[index];
        let commands = script(scenario, index, org, names);
        let edits: Vec<Duration> = commands
            .iter()
            .filter(|(_, c)| matches!(c, NodeCommand::EditCharter(_)))
            .map(|(t, _)| *t)
            .collect();
        let listen: Vec<ChannelId> = match &spec.listen {
            Some(list) => list.iter().map(|c| org.channels[c]).collect(),
            None => org.channels.values().copied().collect(),
        };
        let earlier: Vec<(String, IdentityKey)> = scenario.nodes[..index]
            .iter()
            .map(|n| (n.name.clone(), names[&n.name]))
            .collect();
        let everyone: Vec<(String, IdentityKey)> = scenario
            .nodes
            .iter()
            .filter(|n| n.name != spec.name)
            .map(|n| (n.name.clone(), names[&n.name]))
            .collect();
        let lifecycle = lifecycle(scenario, &spec.name);
        // Each node sets the `[[pair]]` links it is part of before it sends anything (the
        // later of the two overwrites with the same model).
        let pairs: Vec<PairLink> = scenario
            .pairs
            .iter()
            .filter(|p| p.a == spec.name || p.b == spec.name)
            .cloned()
            .collect();

        let channel_names: BTreeMap<ChannelId, String> =
            org.channels.iter().map(|(n, c)| (*c, n.clone())).collect();
        let uplink_kbps = spec.uplink_kbps;
        let rented_relay = spec.rented_relay;
        let node_seed = seed.wrapping_mul(0x9e37_79b9).wrapping_add(index as u64);
        Self {
            index,
            name: spec.name.clone(),
            nat: spec.nat,
            upnp: spec.upnp,
            relay: spec.relay,
            rented_relay,
            uplink_kbps,
            node_seed,
            duration: Duration::from_secs_f64(scenario.duration_s),
            measure_from: scenario.measure_from_s.map(Duration::from_secs_f64),
            commands,
            edits,
            listen,
            earlier,
            everyone,
            lifecycle,
            pairs,
            by_key: by_key.clone(),
            channel_names,
        }
    }
}

/// Runs one member's host to the end of the scenario.
pub(crate) async fn run_host(
    plan: HostPlan,
    org: Arc<Org>,
    network: Arc<SimNetwork>,
    shared: Arc<Shared>,
) -> turmoil::Result {
    let HostPlan {
        index,
        name,
        nat,
        upnp,
        relay,
        rented_relay,
        uplink_kbps,
        node_seed,
        duration,
        measure_from,
        commands,
        edits,
        listen,
        earlier,
        everyone,
        lifecycle,
        pairs,
        by_key,
        channel_names,
    } = plan;
    let ip: IpAddr = turmoil::lookup(name.as_str());
    network.set_nat(ip, nat);
    network.set_uplink(ip, uplink_kbps);
    for pair in &pairs {
        network.set_pair(
            turmoil::lookup(pair.a.as_str()),
            turmoil::lookup(pair.b.as_str()),
            pair.model.clone(),
        );
    }
    let start = tokio::time::Instant::now() - sim_now();
    let end = start + duration;
    let mut commands = commands.into_iter().peekable();
    let mut lifecycle = lifecycle.into_iter().peekable();
    let mut total: Option<NodeStats> = None;
    let mark = measure_from.map(|m| start + m);
    let mut baseline: Option<NodeStats> = None;
    let mut live = false;
    let mut incarnation = 0u64;
    // A node that joins later waits for its join (or restart) event.
    if matches!(lifecycle.peek(), Some((_, Life::Join | Life::Restart))) {
        if let Some((at, _)) = lifecycle.next() {
            tokio::time::sleep_until(start + at).await;
        }
    }
    loop {
        let model: Arc<dyn callsign_node::link::PathModel> = network.clone();
        // A restarted node binds a fresh port: the old endpoint may still be draining.
        let port = PORT + incarnation as u16;
        let socket = LinkSocket::bind_turmoil_with(
            SocketAddr::from(([0, 0, 0, 0], port)),
            Some((model, ip)),
        )
        .await?;
        let mut config =
            NodeConfig::new(org.keys[index].clone(), org.charter.clone(), name.clone());
        config.listening = listen.clone();
        config.input = AudioInput::Synthetic { seed: node_seed };
        // Nobody watches a simulated member's input meter.
        config.capture.analyse_when_idle = false;
        config.socket = Some(socket);
        config.tcp_fallback = false;
        config.relay_circuits = relay;
        let public = SocketAddr::new(public_ip(ip), port);
        if nat == NatKind::None {
            // A public host knows its address, as a VPS's owner does.
            config.announce = Some(vec![callsign_node::link::socket_to_multiaddr(public)]);
        }
        if upnp {
            config.mapped_port = Some(network.map_port(ip, port));
        }
        // The node says what its uplink carries, as a member would configure it.
        config.uplink_kbps = (uplink_kbps > 0.0).then_some(uplink_kbps as u32);
        if rented_relay {
            config.serve_as_relay(Default::default());
        }
        config.unix_time_ms = Some(1_700_000_000_000 + sim_now().as_millis() as u64);
        config.seed = node_seed.wrapping_add(incarnation << 32);
        // Instants of different turmoil hosts are not comparable; sim time is.
        config.media_epoch = Some(tokio::time::Instant::now().into_std() - sim_now());
        // First start: dial the members before us. Later (re)starts: dial everyone, as
        // their links to our previous self are dead.
        let dial = if incarnation == 0 && sim_now().is_zero() {
            &earlier
        } else {
            &everyone
        };
        for (peer_name, key) in dial {
            // Where its ticket would point: its router's public address (the port it
            // listens on, which a cone NAT preserves and a UPnP router forwards).
            let addr = format!(
                "/ip4/{}/udp/{PORT}/quic-v1/p2p/{}",
                public_ip(turmoil::lookup(peer_name.as_str())),
                key.peer_id()
            );
            config.bootstrap.push(addr.parse()?);
        }
        let mut node = Node::start(config).await?;
        incarnation += 1;
        // What this incarnation's presence shows: who listens where.
        let mut seen: BTreeMap<IdentityKey, Vec<ChannelId>> = BTreeMap::new();
        let stop = lifecycle.peek().map(|(t, life)| (start + *t, *life));
        let run_until = stop.map_or(end, |(t, _)| t.min(end));
        // The node stops by itself when an admin removed it.
        let mut stopped_itself = false;
        loop {
            let mut next = commands
                .peek()
                .map(|(t, _)| start + *t)
                .unwrap_or(run_until)
                .min(run_until);
            if let Some(mark) = mark.filter(|_| baseline.is_none()) {
                next = next.min(mark);
            }
            tokio::select! {
                biased;
                event = node.next_event() => {
                    let Some(event) = event else {
                        stopped_itself = true;
                        break;
                    };
                    match &event {
                        NodeEvent::Presence { peer, listening, .. } => {
                            seen.insert(*peer, listening.clone());
                        }
                        NodeEvent::PresenceGone { peer } => {
                            seen.remove(peer);
                        }
                        _ => {}
                    }
                    if let Some(line) = describe(&event, &by_key, &channel_names) {
                        shared.trace.lock().unwrap_or_else(|e| e.into_inner())
                            .push((sim_now(), index, line));
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    let now = tokio::time::Instant::now();
                    if baseline.is_none() && mark.is_some_and(|m| now >= m) {
                        baseline = Some(so_far(&total, node.stats().await?));
                    }
                    if now >= run_until {
                        break;
                    }
                    if commands.peek().is_some_and(|(t, _)| start + *t <= now) {
                        if let Some((_, command)) = commands.next() {
                            node.command(command)?;
                        }
                    }
                }
            }
        }
        let crashed = matches!(stop, Some((t, Life::Crash)) if t <= end);
        if crashed {
            // No goodbye: the network swallows whatever the shutdown sends.
            network.isolate(ip, true);
        }
        let mut roster = Roster::new();
        for (peer, listening) in &seen {
            for channel in listening {
                if let (Some(c), Some(who)) = (channel_names.get(channel), by_key.get(peer)) {
                    roster.entry(c.clone()).or_default().insert(who.clone());
                }
            }
        }
        shared
            .rosters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, roster);
        let stats = node.shutdown().await?;
        total = Some(match total {
            None => stats,
            Some(acc) => merge(acc, stats),
        });
        if stopped_itself {
            tokio::time::sleep(GOODBYE_LINGER).await;
            break;
        }
        let stopped = stop.is_some_and(|(t, _)| t <= end);
        if !stopped {
            live = true;
            break;
        }
        lifecycle.next();
        // Absent until the next restart or join; commands meanwhile are lost.
        let Some((back_at, _)) = lifecycle.next() else {
            tokio::time::sleep(GOODBYE_LINGER).await;
            break;
        };
        let back = (start + back_at).min(end);
        if baseline.is_none() && mark.is_some_and(|m| m < back) {
            // Absent at the mark: everything so far is before it.
            baseline = total.clone();
        }
        while commands.peek().is_some_and(|(t, _)| start + *t < back) {
            commands.next();
        }
        tokio::time::sleep_until(back).await;
        network.isolate(ip, false);
        if back >= end {
            break;
        }
    }
    if let Some(last) = edits.last() {
        let mut slot = shared.last_edit.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some((*slot).unwrap_or_default().max(*last));
    }
    if mark.is_some_and(|m| m <= end) {
        let before = baseline.or_else(|| total.clone()).unwrap_or_default();
        shared
            .baselines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, before);
    }
    if live {
        shared
            .live_at_end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index);
    }
    if let Some(stats) = total {
        shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, stats);
    }
    Ok(())
}
