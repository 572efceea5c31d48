//! The invariants every chaos run must keep (docs/scenarios.md, "Chaos").

use super::generate::{Plan, ProbeTarget};
use crate::report::Report;
use crate::scenario::{FloorSpec, Scenario};
use callsign_mesh::floor::FloorConfig;
use std::collections::{BTreeMap, BTreeSet};

/// Share of a probe's frames every allowed, live listener must play on a clean network; on a
/// lossy one, less by what the base link loses ([`min_delivery`]).
pub const MIN_DELIVERY: f64 = 0.95;
/// Allowance under the network's own loss for jitter-buffer late drops and concealment.
const DELIVERY_SLACK: f64 = 0.03;
/// Share of a probe's length its talker must be on air once it may talk (the rest is link
/// setup and the release).
const MIN_ON_AIR: f64 = 0.9;
/// Beyond the floor's acknowledgement timeout, how late a granted talker's first frame may be:
/// a frame period to capture it, and a little scheduling.
const FIRST_FRAME_SLACK_MS: u64 = 60;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

pub(super) fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Checks one run's report against the plan it was generated with.
pub fn check(scenario: &Scenario, plan: &Plan, report: &Report) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(charter(report));
    out.extend(relay_keys(scenario, report));
    out.extend(delivery(scenario, plan, report));
    out.extend(super::floor_agreement::floor_agreement(
        scenario,
        &report.events,
    ));
    out.extend(floor_drops(scenario, plan, report));
    out.extend(
        report
            .heard_themselves
            .iter()
            .map(|node| violation("mix-minus", format!("{node} played frames it sent itself"))),
    );
    out
}

/// Every current member running at the end holds the same charter state.
fn charter(report: &Report) -> Option<Violation> {
    (!report.charter.converged).then(|| {
        let groups: BTreeMap<&str, Vec<&str>> =
            report
                .nodes
                .iter()
                .filter(|n| n.live)
                .fold(BTreeMap::new(), |mut acc, n| {
                    acc.entry(&n.charter_hash[..n.charter_hash.len().min(8)])
                        .or_insert_with(Vec::new)
                        .push(n.node.as_str());
                    acc
                });
        violation(
            "charter-converged",
            format!("live nodes by charter state: {groups:?}"),
        )
    })
}

/// Rented relays hold no audio keys.
fn relay_keys(scenario: &Scenario, report: &Report) -> Vec<Violation> {
    report
        .relays
        .iter()
        .filter(|r| r.audio_keys_held > 0)
        .filter(|r| {
            scenario
                .nodes
                .iter()
                .any(|n| n.name == r.node && n.rented_relay)
        })
        .map(|r| {
            violation(
                "relay-holds-no-keys",
                format!("{} held {} audio keys", r.node, r.audio_keys_held),
            )
        })
        .collect()
}

/// Standard deviations of the network's own loss over one probe that a listener may fall
/// short by: far enough out that thousands of streams over a batch of seeds pass on chance
/// alone, close enough that a listener cut off for a fraction of a second fails.
const DELIVERY_SIGMAS: f64 = 4.0;

/// The share of `frames` a listener must play after the heal: [`MIN_DELIVERY`], or, when that
/// is lower, what two hops (talker, relay, listener) of the base link let through, less
/// [`DELIVERY_SIGMAS`] standard deviations of that loss over `frames` and
/// [`DELIVERY_SLACK`]. Per hop, the stationary loss is the uniform loss plus, for a
/// Gilbert–Elliott burst model, the bad state's share `π = p / (p + r)` times its loss; bursts
/// make losses of neighbouring frames move together, which widens the spread by
/// `(1 + ρ) / (1 − ρ)` with `ρ = 1 − p − r`; a reordered frame counts as lost (it is usually
/// too late to play). A link that loses 13 % cannot carry 95 %, and over
/// 125 frames a bursty 2 % link often loses 8; the invariant is there to catch a listener cut
/// off, not the network's own loss.
pub fn min_delivery(scenario: &Scenario, frames: u64) -> f64 {
    let link = &scenario.link;
    let frames = frames.max(1) as f64;
    let uniform = link.loss.clamp(0.0, 1.0);
    let mut variance = uniform * (1.0 - uniform) / frames;
    let mut bursts = 0.0;
    if let Some(b) = link.burst.as_ref().filter(|b| b.p + b.r > 0.0) {
        let share = b.p / (b.p + b.r);
        let rho = (1.0 - b.p - b.r).clamp(-0.99, 0.99);
        bursts = share * b.bad_loss;
        variance += b.bad_loss.powi(2) * share * (1.0 - share) / frames * (1.0 + rho) / (1.0 - rho);
    }
    // A frame held back by reordering arrives after frames sent later; the jitter buffer aims
    // at the 95th percentile of transit, so such a frame is often too late to play: for the
    // listener it is lost like a dropped one.
    let late = if link.reorder_ms > 0.0 {
        link.reorder.clamp(0.0, 1.0)
    } else {
        0.0
    };
    variance += late * (1.0 - late) / frames;
    let lost = uniform + (1.0 - uniform) * bursts;
    let lost = lost + (1.0 - lost) * late;
    // Two independent hops: the mean compounds, the variances add.
    let spread = DELIVERY_SIGMAS * (2.0 * variance).sqrt();
    let through = (1.0 - lost).powi(2) - spread - DELIVERY_SLACK;
    MIN_DELIVERY.min(through)
}

/// Each probe: its talker went on air, and every live listener allowed to hear it played
/// [`min_delivery`] of what it sent.
fn delivery(scenario: &Scenario, plan: &Plan, report: &Report) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(settled) = &report.settled else {
        return vec![violation("settled", "no settled window".into())];
    };
    let live: BTreeSet<&str> = report
        .nodes
        .iter()
        .filter(|n| n.live && !plan.removed.contains(&n.node))
        .map(|n| n.node.as_str())
        .collect();
    for probe in &plan.probes {
        if !live.contains(probe.talker.as_str()) {
            continue;
        }
        let encoded = settled
            .frames_encoded
            .get(&probe.talker)
            .copied()
            .unwrap_or(0);
        // 50 frames a second.
        let pressed = (super::generate::PROBE_S * 50.0) as u64;
        // On a half-duplex channel the talker waits for the floor first: the floor promises a
        // grant once every participant acknowledged the request or the acknowledgement timeout
        // ran out, whichever comes first (docs/protocol.md). A grant that waited out the timeout
        // on a lossy, relayed path keeps that promise; later does not.
        let mut waited_frames = 0;
        if let ProbeTarget::Channel(channel) = &probe.target {
            let half_duplex = scenario
                .channels
                .iter()
                .any(|c| c.name == *channel && c.floor == FloorSpec::HalfDuplex);
            let at_ms = (probe.at_s * 1000.0).round() as u64;
            let press =
                report.floor.presses.iter().find(|p| {
                    p.node == probe.talker && p.channel == *channel && p.pressed_ms == at_ms
                });
            if let (true, Some(press)) = (half_duplex, press) {
                let promised =
                    FloorConfig::default().ack_timeout.as_millis() as u64 + FIRST_FRAME_SLACK_MS;
                match press.first_frame_ms {
                    Some(ms) if ms <= promised => waited_frames = ms / 20,
                    waited => {
                        out.push(violation(
                            "floor-in-time",
                            format!(
                                "{} pressed {channel} at {} s; first frame after {waited:?} ms \
                                 (at most {promised} ms)",
                                probe.talker, probe.at_s
                            ),
                        ));
                        continue;
                    }
                }
            }
        }
        let may_talk = pressed.saturating_sub(waited_frames);
        if (encoded as f64) < MIN_ON_AIR * may_talk as f64 {
            out.push(violation(
                "talker-on-air",
                format!(
                    "{} pressed at {} s for {pressed} frames, may talk for {may_talk}, sent {encoded}",
                    probe.talker, probe.at_s
                ),
            ));
            continue;
        }
        let joined;
        let (channel, listeners): (&str, Vec<&str>) = match &probe.target {
            ProbeTarget::Channel(c) => (c.as_str(), may_hear(scenario, c, &live)),
            ProbeTarget::Simulcast(channels) => {
                joined = channels.join("+");
                let mut all: Vec<&str> = channels
                    .iter()
                    .flat_map(|c| may_hear(scenario, c, &live))
                    .collect();
                all.sort_unstable();
                all.dedup();
                (joined.as_str(), all)
            }
            ProbeTarget::Whisper(to) => (
                "whisper",
                live.iter().copied().filter(|n| n == to).collect(),
            ),
        };
        // Channel frames count once per (talker, listener): a simulcast frame plays once.
        let (rows, row_channel) = match &probe.target {
            ProbeTarget::Channel(_) | ProbeTarget::Simulcast(_) => {
                (&settled.talkers, crate::report::ANY_CHANNEL)
            }
            ProbeTarget::Whisper(_) => (&settled.streams, "whisper"),
        };
        for listener in listeners.into_iter().filter(|l| *l != probe.talker) {
            let played = rows
                .iter()
                .find(|s| s.from == probe.talker && s.to == listener && s.channel == row_channel)
                .map_or(0, |s| s.frames_played);
            if (played as f64) < min_delivery(scenario, encoded) * encoded as f64 {
                out.push(violation(
                    "heard-after-heal",
                    format!(
                        "{listener} played {played} of {encoded} frames {} sent on {channel} at {} s",
                        probe.talker, probe.at_s
                    ),
                ));
            }
        }
    }
    out
}

/// Frames of a granted talker a listener may drop as "not the floor holder" per half-duplex
/// press after the heal: a late frame of a pre-empted holder, a talker's first frames racing
/// its claim. More means a floor view that stayed wrong.
pub const FLOOR_DROPS_PER_PRESS: u64 = 5;

/// After the heal (the settled window: no partitions), no member drops more than
/// [`FLOOR_DROPS_PER_PRESS`] frames per half-duplex press as out of turn.
fn floor_drops(scenario: &Scenario, plan: &Plan, report: &Report) -> Vec<Violation> {
    let Some(settled) = &report.settled else {
        return Vec::new();
    };
    let half_duplex = |c: &String| {
        scenario
            .channels
            .iter()
            .any(|s| s.name == *c && s.floor == FloorSpec::HalfDuplex)
    };
    let presses = plan
        .probes
        .iter()
        .filter(|p| matches!(&p.target, ProbeTarget::Channel(c) if half_duplex(c)))
        .count() as u64;
    let allowed = FLOOR_DROPS_PER_PRESS * presses;
    settled
        .floor_drops
        .iter()
        .filter(|(_, n)| **n > allowed)
        .map(|(node, n)| {
            violation(
                "floor-drops",
                format!("{node} dropped {n} frames as out of turn after the heal ({presses} half-duplex presses)"),
            )
        })
        .collect()
}

/// Live members whose role may hear `channel` and who listen to it.
fn may_hear<'a>(scenario: &'a Scenario, channel: &str, live: &BTreeSet<&str>) -> Vec<&'a str> {
    let Some(spec) = scenario.channels.iter().find(|c| c.name == channel) else {
        return Vec::new();
    };
    scenario
        .nodes
        .iter()
        .filter(|n| n.member && live.contains(n.name.as_str()))
        .filter(|n| spec.speak.contains(&n.role) || spec.listen.contains(&n.role))
        .filter(|n| n.listen.as_ref().is_none_or(|l| l.contains(&spec.name)))
        .map(|n| n.name.as_str())
        .collect()
}
