//! What a run reports: per stream, per path, the charter, drops, and the trace hash.

use crate::network::NetworkCounts;
use crate::org::Org;
use crate::scenario::{Action, FloorSpec, Scenario};
use crate::trace::{FloorTrace, TraceEvent, TraceLine, TraceRecord};
use callsign_keys::IdentityKey;
use callsign_mesh::voice::DropCounts;
use callsign_node::runtime::{LinkKind, NodeStats};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

mod query;
mod streams;

pub use streams::ANY_CHANNEL;
use streams::{settled_streams, stream_reports, talker_reports, Namer};

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencyReport {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// One sender → listener stream on one channel (or a whisper).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamReport {
    pub from: String,
    pub to: String,
    pub channel: String,
    pub frames_sent: u64,
    pub frames_played: u64,
    pub frames_concealed: u64,
    /// Frames the network lost on this stream (some recovered by FEC).
    pub frames_lost: u64,
    pub mouth_to_ear_ms: Option<LatencyReport>,
    /// On positional and proximity channels: the gains (dB) and last pan the listener played
    /// the talker at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placed: Option<callsign_node::runtime::api::PlacedRange>,
}

/// Totals per channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChannelStats {
    pub channel: String,
    pub frames_sent: u64,
    pub frames_played: u64,
}

/// How a pair of nodes ended up linked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathReport {
    pub a: String,
    pub b: String,
    /// The last link between them: `direct` (QUIC), `relayed` (a relay circuit through a
    /// third member), `tcp-fallback`, or `none`.
    pub kind: String,
    /// From the start of the first transmission one of them made while the other was up to
    /// that other hearing it (talker event), in ms: link, session, key grant and jitter buffer.
    pub first_audio_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CharterReport {
    /// Every current member (and rented relay) running at the end holds the same charter
    /// state; members removed by the scenario and nodes crashed or gone at the end are not
    /// counted.
    pub converged: bool,
    /// From the last charter edit to the last node applying it (virtual time).
    pub convergence_ms: Option<f64>,
    pub ops: usize,
}

/// One press (PTT or emergency) on a half-duplex channel, as its presser saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloorPress {
    pub node: String,
    pub channel: String,
    pub pressed_ms: u64,
    /// Waited in the queue before the grant (its grant time measures the wait, not the
    /// protocol).
    pub queued: bool,
    /// Press to floor granted.
    pub grant_ms: Option<u64>,
    /// Press to the first transmission that started after the grant (`None` when the press
    /// was a simulcast already on air on an open channel: the channel joined mid-stream).
    pub first_frame_ms: Option<u64>,
}

/// Floor control over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FloorReport {
    pub presses: Vec<FloorPress>,
    /// Press → grant over presses granted without queueing.
    pub grant_ms: Option<LatencyReport>,
    /// Press → first frame sent, same presses.
    pub first_frame_ms: Option<LatencyReport>,
    /// Frames receivers dropped because their sender did not hold the floor.
    pub drops: u64,
}

/// One relay's forwarding over the run (all its incarnations).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RelayReport {
    pub node: String,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets not forwarded, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Members subscribed when it stopped.
    pub subscribers: usize,
    pub subscriptions_refused: u64,
    /// Voice keys it held at the end: a rented relay must hold none.
    pub audio_keys_held: usize,
    /// Links it parked (QUIC closed, the voice plane kept), and parked links that came back
    /// on a new connection for ordered control (its last incarnation's).
    pub links_parked: u64,
    pub links_unparked: u64,
}

/// Delivery from the scenario's `measure_from_s` to the end, every stream on its own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettledReport {
    pub from_ms: u64,
    /// Frames sent and played in the window (no latency: see the whole-run streams).
    pub streams: Vec<StreamReport>,
    /// Per (talker, listener), channel frames each counted once (see [`Report::talkers`]).
    pub talkers: Vec<StreamReport>,
    /// Frames each node encoded in the window, whoever they went to.
    pub frames_encoded: BTreeMap<String, u64>,
    /// Frames each node dropped in the window because their sender did not hold the floor
    /// in its view.
    pub floor_drops: BTreeMap<String, u64>,
}

/// How one node ended the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeEnd {
    pub node: String,
    /// Still running at the end (not crashed, left or removed for good).
    pub live: bool,
    /// Its charter state hash when it last stopped or at the end.
    pub charter_hash: String,
    /// The voice path's repairs, as listener and as talker (`callsign_mesh::path`).
    pub repairs: callsign_mesh::path::RepairCounts,
}

/// See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// SHA-256 of the event trace (virtual times, nodes, events) and the stream counters.
    pub trace_hash: String,
    pub streams: Vec<StreamReport>,
    /// Per (talker, listener): every channel frame counted once however many of the
    /// listener's channels it reached (`channel` is `*`). A simulcast frame plays once, so
    /// `streams` shows it on the second channel as lost; read delivery here.
    pub talkers: Vec<StreamReport>,
    pub channels: Vec<ChannelStats>,
    pub paths: Vec<PathReport>,
    pub charter: CharterReport,
    pub floor: FloorReport,
    /// Nodes that forwarded for others.
    pub relays: Vec<RelayReport>,
    /// Delivery after `measure_from_s`, when the scenario sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled: Option<SettledReport>,
    /// Every node's end state, in scenario order.
    pub nodes: Vec<NodeEnd>,
    /// Receive-side drops over all nodes, by reason.
    pub drops: DropCounts,
    /// The voice path's repairs over all nodes, by cause.
    pub repairs: callsign_mesh::path::RepairCounts,
    /// Each node's roster when it last stopped: per channel, whom it saw listening there
    /// (monitors never appear).
    pub rosters: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Nodes that played frames they sent themselves (mix-minus broken): empty.
    pub heard_themselves: Vec<String>,
    /// What the simulated network did to datagrams. Diagnostic, outside the trace hash: it
    /// counts QUIC/TLS handshake datagrams too, whose number can differ by a few between runs
    /// because their random key material varies in encoded length.
    pub network: NetworkCounts,
    pub trace_lines: usize,
    /// The event trace, one line per event: `virtual-ms node event`.
    #[serde(skip)]
    pub trace: Vec<String>,
    /// The same events, typed.
    #[serde(skip)]
    pub events: Vec<TraceRecord>,
}

/// What the hosts left behind for the report.
pub(crate) struct Collected {
    pub(crate) stats: BTreeMap<usize, NodeStats>,
    pub(crate) baselines: BTreeMap<usize, NodeStats>,
    pub(crate) live_at_end: BTreeSet<usize>,
    pub(crate) rosters: BTreeMap<usize, crate::host::Roster>,
    pub(crate) trace: Vec<TraceLine>,
    pub(crate) last_edit: Option<Duration>,
}

pub(crate) fn build(
    scenario: &Scenario,
    seed: u64,
    org: &Org,
    names: &BTreeMap<IdentityKey, String>,
    collected: Collected,
    network: crate::network::NetworkCounts,
) -> Report {
    let Collected {
        stats,
        baselines,
        live_at_end,
        rosters,
        trace,
        last_edit,
    } = collected;
    let (stats, trace) = (&stats, trace.as_slice());
    let namer = Namer {
        channels: org.channels.iter().map(|(n, c)| (*c, n.clone())).collect(),
        names,
        keys: org.keys.iter().map(|k| k.identity.public()).collect(),
    };
    let streams = stream_reports(&namer, stats);
    let talkers = talker_reports(&namer, stats);
    let settled = scenario.measure_from_s.map(|from| SettledReport {
        from_ms: (from * 1e3) as u64,
        streams: settled_streams(&streams, &stream_reports(&namer, &baselines)),
        talkers: settled_streams(&talkers, &talker_reports(&namer, &baselines)),
        frames_encoded: stats
            .iter()
            .map(|(i, s)| {
                let before = baselines.get(i).map_or(0, |b| b.frames_encoded);
                (
                    scenario.nodes[*i].name.clone(),
                    s.frames_encoded.saturating_sub(before),
                )
            })
            .collect(),
        floor_drops: stats
            .iter()
            .map(|(i, s)| {
                let before = baselines.get(i).map_or(0, |b| b.floor_drops);
                (
                    scenario.nodes[*i].name.clone(),
                    s.floor_drops.saturating_sub(before),
                )
            })
            .collect(),
    });
    let removed: BTreeSet<&str> = scenario
        .events
        .iter()
        .filter_map(|e| match &e.action {
            Action::RemoveMember { member, .. } => Some(member.as_str()),
            _ => None,
        })
        .collect();
    let nodes: Vec<NodeEnd> = scenario
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeEnd {
            node: n.name.clone(),
            live: live_at_end.contains(&i),
            charter_hash: stats
                .get(&i)
                .map(|s| s.charter_hash.clone())
                .unwrap_or_default(),
            repairs: stats.get(&i).map(|s| s.repairs.clone()).unwrap_or_default(),
        })
        .collect();
    let mut paths = Vec::new();
    for (i, a) in scenario.nodes.iter().enumerate() {
        for (j, b) in scenario.nodes.iter().enumerate().skip(i + 1) {
            let link = |n: usize, other: &str| {
                let other = other.to_string();
                trace
                    .iter()
                    .filter_map(move |(t, node, event)| match event {
                        TraceEvent::LinkUp { peer, kind } if *node == n && *peer == other => {
                            Some((*t, *kind))
                        }
                        _ => None,
                    })
            };
            let kind = link(i, &b.name)
                .chain(link(j, &a.name))
                .max_by_key(|(t, _)| *t)
                .map_or("none".to_string(), |(_, kind)| {
                    match kind {
                        LinkKind::Direct => "direct",
                        LinkKind::Mapped => "mapped",
                        LinkKind::HolePunched => "hole-punched",
                        LinkKind::Relayed => "relayed",
                        LinkKind::TcpFallback => "tcp-fallback",
                    }
                    .to_string()
                });
            let first_audio_ms = [(i, j), (j, i)]
                .into_iter()
                .filter_map(|(speaker, hearer)| first_audio(trace, scenario, speaker, hearer))
                .min();
            paths.push(PathReport {
                a: a.name.clone(),
                b: b.name.clone(),
                kind,
                first_audio_ms,
            });
        }
    }
    let current: Vec<&NodeEnd> = nodes
        .iter()
        .filter(|n| n.live && !removed.contains(n.node.as_str()))
        .collect();
    let hashes: BTreeSet<&str> = current.iter().map(|n| n.charter_hash.as_str()).collect();
    let converged = hashes.len() == 1;
    let last_change = trace
        .iter()
        .filter(|(_, _, e)| matches!(e, TraceEvent::Charter { .. }))
        .map(|(t, _, _)| *t)
        .max();
    let convergence_ms = match (last_edit, last_change) {
        (Some(edit), Some(change)) if change >= edit => Some((change - edit).as_secs_f64() * 1e3),
        (None, _) => Some(0.0),
        _ => None,
    };
    let mut drops = DropCounts::default();
    let mut repairs = callsign_mesh::path::RepairCounts::default();
    for s in stats.values() {
        drops.add(&s.drops);
        repairs.add(&s.repairs);
    }
    let mut hasher = Sha256::new();
    // The trace names its scenario and seed, as a trace file's header would.
    hasher.update(format!("{} {seed}\n", scenario.name));
    for (t, n, line) in trace {
        hasher.update(format!(
            "{} {} {line}\n",
            t.as_millis(),
            scenario.nodes[*n].name
        ));
    }
    for s in &streams {
        hasher.update(format!(
            "{} {} {} {} {} {}\n",
            s.from, s.to, s.channel, s.frames_sent, s.frames_played, s.frames_concealed
        ));
    }
    let per_channel = channel_stats(&streams);
    let floor = FloorReport {
        drops: stats.values().map(|s| s.floor_drops).sum(),
        ..floor_report(scenario, trace)
    };
    Report {
        scenario: scenario.name.clone(),
        seed,
        trace_hash: hex::encode(hasher.finalize()),
        streams,
        talkers,
        channels: per_channel,
        paths,
        charter: CharterReport {
            converged,
            convergence_ms: if converged { convergence_ms } else { None },
            ops: stats.values().map(|s| s.charter_ops).max().unwrap_or(0),
        },
        floor,
        relays: stats
            .iter()
            .filter_map(|(i, s)| {
                let f = s.forwarding.as_ref()?;
                Some(RelayReport {
                    node: scenario.nodes[*i].name.clone(),
                    packets_in: f.counts.packets_in,
                    packets_out: f.counts.packets_out,
                    bytes_out: f.counts.bytes_out,
                    drops: f
                        .counts
                        .drops
                        .iter()
                        .map(|(r, n)| (format!("{r:?}"), *n))
                        .collect(),
                    subscribers: f.subscribers,
                    subscriptions_refused: f.subscriptions_refused,
                    audio_keys_held: s.audio_keys_held,
                    links_parked: f.links.parked,
                    links_unparked: f.links.unparked,
                })
            })
            .collect(),
        settled,
        nodes,
        drops,
        repairs,
        network,
        rosters: rosters
            .into_iter()
            .map(|(i, r)| (scenario.nodes[i].name.clone(), r))
            .collect(),
        heard_themselves: stats
            .iter()
            .filter(|(i, s)| {
                let me = namer.keys[**i];
                s.received
                    .iter()
                    .any(|r| r.from == me && r.frames_played > 0)
            })
            .map(|(i, _)| scenario.nodes[*i].name.clone())
            .collect(),
        trace_lines: trace.len(),
        trace: trace
            .iter()
            .map(|(t, n, line)| format!("{} {} {line}", t.as_millis(), scenario.nodes[*n].name))
            .collect(),
        events: trace
            .iter()
            .map(|(t, n, event)| TraceRecord {
                at_ms: t.as_millis() as u64,
                node: scenario.nodes[*n].name.clone(),
                event: event.clone(),
            })
            .collect(),
    }
}

fn channel_stats(streams: &[StreamReport]) -> Vec<ChannelStats> {
    let mut by: BTreeMap<&str, ChannelStats> = BTreeMap::new();
    for s in streams {
        let c = by
            .entry(s.channel.as_str())
            .or_insert_with(|| ChannelStats {
                channel: s.channel.clone(),
                ..ChannelStats::default()
            });
        c.frames_sent += s.frames_sent;
        c.frames_played += s.frames_played;
    }
    by.into_values().collect()
}

/// When `hearer` first heard `speaker`: the talker event minus the start of the transmission
/// it belongs to (the speaker's last `transmit` before it).
fn first_audio(
    trace: &[TraceLine],
    scenario: &Scenario,
    speaker: usize,
    hearer: usize,
) -> Option<u64> {
    let talker = &scenario.nodes[speaker].name;
    let (heard, _, _) = trace.iter().find(|(_, n, e)| {
        *n == hearer && matches!(e, TraceEvent::Talker { peer, .. } if peer == talker)
    })?;
    let (started, _, _) = trace.iter().rev().find(|(t, n, e)| {
        *n == speaker && t <= heard && matches!(e, TraceEvent::Transmit { .. })
    })?;
    Some((*heard - *started).as_millis() as u64)
}

/// p50/p95/p99 of samples in ms.
fn percentiles(mut samples: Vec<u64>) -> Option<LatencyReport> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64;
    Some(LatencyReport {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
    })
}

/// Every press on a half-duplex channel, matched with its presser's floor events.
fn floor_report(scenario: &Scenario, trace: &[TraceLine]) -> FloorReport {
    let half_duplex: BTreeSet<&str> = scenario
        .channels
        .iter()
        .filter(|c| c.floor == FloorSpec::HalfDuplex)
        .map(|c| c.name.as_str())
        .collect();
    let mut presses = Vec::new();
    for event in &scenario.events {
        let (node, channels, duration_s) = match &event.action {
            Action::Ptt {
                node,
                channels,
                duration_s,
            } => (node, channels.clone(), *duration_s),
            Action::Emergency {
                node,
                channel,
                duration_s,
            } => (node, vec![channel.clone()], *duration_s),
            _ => continue,
        };
        let Some(index) = scenario.nodes.iter().position(|n| &n.name == node) else {
            continue;
        };
        let from = Duration::from_secs_f64(event.at_s);
        let until = Duration::from_secs_f64(event.at_s + duration_s);
        let lines = || {
            trace
                .iter()
                .filter(move |(t, n, _)| *n == index && *t >= from && *t <= until)
        };
        for channel in channels.iter().filter(|c| half_duplex.contains(c.as_str())) {
            let granted = lines()
                .find(|(_, _, e)| {
                    matches!(e, TraceEvent::Floor(FloorTrace::Granted { channel: c }) if c == channel)
                })
                .map(|(t, _, _)| *t);
            let queued = lines().any(|(t, _, e)| {
                matches!(e, TraceEvent::Floor(FloorTrace::Queued { channel: c, .. }) if c == channel)
                    && granted.is_none_or(|g| *t <= g)
            });
            let first_frame = granted.and_then(|g| {
                lines()
                    .find(|(t, _, e)| *t >= g && matches!(e, TraceEvent::Transmit { .. }))
                    .map(|(t, _, _)| *t)
            });
            let ms = |t: Duration| (t - from).as_millis() as u64;
            presses.push(FloorPress {
                node: node.clone(),
                channel: channel.clone(),
                pressed_ms: from.as_millis() as u64,
                queued,
                grant_ms: granted.map(ms),
                first_frame_ms: first_frame.map(ms),
            });
        }
    }
    let direct = || presses.iter().filter(|p| !p.queued);
    FloorReport {
        grant_ms: percentiles(direct().filter_map(|p| p.grant_ms).collect()),
        first_frame_ms: percentiles(direct().filter_map(|p| p.first_frame_ms).collect()),
        presses,
        drops: 0,
    }
}
