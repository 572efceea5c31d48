//! Scenario files, version 1 (docs/scenarios.md): who is in the org, how the network behaves,
//! and what happens when.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

mod check;

/// The scenario format this build reads.
pub const SCENARIO_VERSION: u32 = 1;

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("unknown scenario version {0} (this build reads {SCENARIO_VERSION})")]
    Version(u32),
    #[error("scenario: {0}")]
    Invalid(String),
}

/// A network path's behaviour, one direction. Every field has a default (a clean LAN).
// Not `deny_unknown_fields`: serde cannot combine it with `flatten`, which link changes and
// pair overrides use.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LinkModel {
    /// One-way base latency.
    pub latency_ms: f64,
    /// Standard deviation of a normal jitter added to the latency (never below zero).
    pub jitter_ms: f64,
    /// Uniform loss probability per datagram.
    pub loss: f64,
    /// Gilbert–Elliott burst loss: chance per datagram of entering the bad state (`p`), of
    /// leaving it (`r`), and the loss probability while in it (`bad_loss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    /// Probability a datagram is held back by `reorder_ms` (so later ones overtake it).
    pub reorder: f64,
    pub reorder_ms: f64,
    /// Probability a datagram arrives twice.
    pub duplicate: f64,
    /// Serialisation rate cap in kbit/s (0 = none), with a queue of `queue_ms` of traffic;
    /// datagrams that would wait longer are dropped.
    pub bandwidth_kbps: f64,
    pub queue_ms: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        Self {
            latency_ms: 2.0,
            jitter_ms: 0.0,
            loss: 0.0,
            burst: None,
            reorder: 0.0,
            reorder_ms: 30.0,
            duplicate: 0.0,
            bandwidth_kbps: 0.0,
            queue_ms: 200.0,
        }
    }
}

/// Gilbert–Elliott parameters.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub p: f64,
    pub r: f64,
    #[serde(default = "one")]
    pub bad_loss: f64,
}

fn one() -> f64 {
    1.0
}

/// A per-pair override (both directions).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct PairLink {
    pub a: String,
    pub b: String,
    #[serde(flatten)]
    pub model: LinkModel,
}

/// A channel and which roles may speak (and listen) or only listen on it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    pub name: String,
    #[serde(default)]
    pub speak: Vec<String>,
    #[serde(default)]
    pub listen: Vec<String>,
    /// `open` (anyone talks) or `half-duplex` (floor control).
    #[serde(default)]
    pub floor: FloorSpec,
    /// Rented relays the channel prefers (node names); two or more cascade.
    #[serde(default)]
    pub relays: Vec<String>,
    /// Channels this channel is linked into: their listeners hear its talkers (one way; list
    /// each other for both ways).
    #[serde(default)]
    pub links: Vec<String>,
    /// Roles that may monitor the channel: hear it silently, out of its roster.
    #[serde(default)]
    pub monitor: Vec<String>,
    /// Positional or proximity audio on the channel (charter `SetSpatial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spatial: Option<SpatialSpec>,
}

/// A channel's positional settings.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpatialSpec {
    /// `positional` (everyone placed) or `proximity` (only those within range heard).
    pub mode: SpatialModeSpec,
    /// Metres.
    pub range_m: f64,
    /// Full volume within this many metres [default: 0].
    #[serde(default)]
    pub full_m: f64,
    /// `linear` [default] or `inverse`.
    #[serde(default)]
    pub falloff: FalloffSpec,
}

/// See [`SpatialSpec::mode`].
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SpatialModeSpec {
    Positional,
    Proximity,
}

/// See [`SpatialSpec::falloff`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FalloffSpec {
    #[default]
    Linear,
    Inverse,
}

impl SpatialSpec {
    /// The charter's form (centimetres).
    pub fn to_charter(self) -> callsign_mesh::spatial::Spatial {
        use callsign_mesh::spatial::{Falloff, Spatial, SpatialMode};
        Spatial {
            mode: match self.mode {
                SpatialModeSpec::Positional => SpatialMode::Positional,
                SpatialModeSpec::Proximity => SpatialMode::Proximity,
            },
            range_cm: (self.range_m * 100.0).round() as u32,
            full_cm: (self.full_m * 100.0).round() as u32,
            falloff: match self.falloff {
                FalloffSpec::Linear => Falloff::Linear,
                FalloffSpec::Inverse => Falloff::Inverse,
            },
        }
    }
}

/// Where a node is in the game.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlaceSpec {
    /// The game context [default: "world"].
    #[serde(default = "default_context")]
    pub context: String,
    /// Metres, X right, Y up, Z forward.
    pub at: [f64; 3],
    /// The way it faces [default: +Z].
    #[serde(default = "default_front")]
    pub front: [f64; 3],
}

fn default_context() -> String {
    "world".into()
}

fn default_front() -> [f64; 3] {
    [0.0, 0.0, 1.0]
}

impl PlaceSpec {
    /// The node's position.
    pub fn to_position(&self) -> callsign_mesh::spatial::Position {
        use callsign_mesh::spatial::{ContextId, Position};
        let f = |v: [f64; 3]| v.map(|x| x as f32);
        Position {
            context: ContextId::of(&self.context),
            at: f(self.at),
            front: f(self.front),
            top: [0.0, 1.0, 0.0],
        }
    }
}

/// Channels heard as one (a charter conference).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConferenceSpec {
    pub name: String,
    pub channels: Vec<String>,
}

/// A channel's floor mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FloorSpec {
    #[default]
    Open,
    HalfDuplex,
}

/// The router in front of a node: [`crate::nat`] says how each maps and filters (RFC 4787).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    #[default]
    None,
    FullCone,
    Restricted,
    PortRestricted,
    Symmetric,
}

/// One simulated member.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub role: String,
    /// Channels it listens to [default: all its role may hear].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<String>>,
    /// Channels it monitors from the start (hears silently; its role needs `monitor` there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitor: Vec<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub nat: NatKind,
    /// Its router forwards the node's port when asked (UPnP IGD): the node starts with that
    /// mapping, as its port mapper would get it.
    #[serde(default)]
    pub upnp: bool,
    /// Serves relay circuits to members who cannot link directly (a reachable volunteer).
    #[serde(default)]
    pub relay: bool,
    /// The node's uplink in kbit/s, shared by everything it sends (0 = unlimited), with a
    /// 200 ms queue: a home connection's upload.
    #[serde(default)]
    pub uplink_kbps: f64,
    /// The org rents this node as a relay (charter `PutRelay`): it forwards voice for large
    /// channels and arbitrates the floor of half-duplex ones.
    #[serde(default)]
    pub rented_relay: bool,
    /// Listed in the charter as a member [default: true]. A rented relay that is no member
    /// runs as the relay process does: no role, no keys, no presence; `role` is ignored.
    #[serde(default = "yes")]
    pub member: bool,
    /// A rented relay's capacity in subscribers (charter `PutRelay`) [default: 1000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Where it is in the game from the start (positional and proximity channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<PlaceSpec>,
}

fn yes() -> bool {
    true
}

/// Something that happens at `at_s` seconds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct EventSpec {
    pub at_s: f64,
    #[serde(flatten)]
    pub action: Action,
}

/// What happens.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// `node` holds PTT on `channels` for `duration_s`.
    Ptt {
        node: String,
        channels: Vec<String>,
        duration_s: f64,
    },
    /// `node` whispers to `to` for `duration_s`.
    Whisper {
        node: String,
        to: String,
        duration_s: f64,
    },
    /// No traffic between any two groups until `heal`.
    Partition {
        groups: Vec<Vec<String>>,
    },
    Heal,
    /// Replace the default link model (or one pair's, given `a` and `b`).
    Link {
        #[serde(skip_serializing_if = "Option::is_none")]
        a: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        b: Option<String>,
        #[serde(flatten)]
        model: LinkModel,
    },
    /// The node goes silent at once (no goodbye) and stops; see `restart`.
    Crash {
        node: String,
    },
    /// A crashed or departed node starts again with the same identity.
    Restart {
        node: String,
    },
    /// The node is absent until now (it must not appear in an earlier event).
    Join {
        node: String,
    },
    /// The node shuts down cleanly.
    Leave {
        node: String,
    },
    /// An admin node adds a channel (open to every role).
    AddChannel {
        node: String,
        name: String,
    },
    /// An admin node removes a member.
    RemoveMember {
        node: String,
        member: String,
    },
    /// An admin node gives a member another role (one that some node of the scenario has).
    SetRole {
        node: String,
        member: String,
        role: String,
    },
    /// `node` raises an emergency on a half-duplex `channel` and transmits for `duration_s`.
    Emergency {
        node: String,
        channel: String,
        duration_s: f64,
    },
    /// `node` clears the emergency `raiser` raised on `channel`.
    ClearEmergency {
        node: String,
        channel: String,
        raiser: String,
    },
    /// `node` starts (or stops) listening to `channel`.
    Listen {
        node: String,
        channel: String,
    },
    Unlisten {
        node: String,
        channel: String,
    },
    /// `node` asks `relay` to forward `channels` to it, whatever its routes say.
    Subscribe {
        node: String,
        relay: String,
        channels: Vec<String>,
    },
    /// `node` is now at `to` (in its context, or in `context` when given).
    Move {
        node: String,
        to: [f64; 3],
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
    /// `node` walks in a straight line from where it is to `to` over `duration_s` (its
    /// position is set every 100 ms, as a game would feed it).
    Walk {
        node: String,
        to: [f64; 3],
        duration_s: f64,
    },
}

/// How often a walking node's position is set.
pub const WALK_STEP_S: f64 = 0.1;

impl Scenario {
    /// Where `node` is at `t` seconds: its start position, moved by the `move` and `walk`
    /// events before `t`. `None` for a node never placed.
    pub fn position_at(&self, node: &str, t: f64) -> Option<PlaceSpec> {
        let mut place = self.nodes.iter().find(|n| n.name == node)?.position.clone();
        let mut events: Vec<&EventSpec> = self.events.iter().collect();
        events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        for e in events.into_iter().filter(|e| e.at_s <= t) {
            match &e.action {
                Action::Move {
                    node: n,
                    to,
                    context,
                } if n == node => {
                    let context = context
                        .clone()
                        .or_else(|| place.as_ref().map(|p| p.context.clone()))
                        .unwrap_or_else(default_context);
                    let front = place.as_ref().map_or_else(default_front, |p| p.front);
                    place = Some(PlaceSpec {
                        context,
                        at: *to,
                        front,
                    });
                }
                Action::Walk {
                    node: n,
                    to,
                    duration_s,
                } if n == node => {
                    if let Some(p) = &mut place {
                        let share = ((t - e.at_s) / duration_s).clamp(0.0, 1.0);
                        let from = p.at;
                        p.at = [0, 1, 2].map(|i| from[i] + (to[i] - from[i]) * share);
                    }
                }
                _ => {}
            }
        }
        place
    }
}

/// A whole scenario file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub duration_s: f64,
    #[serde(default)]
    pub link: LinkModel,
    #[serde(default, rename = "pair")]
    pub pairs: Vec<PairLink>,
    #[serde(rename = "channel")]
    pub channels: Vec<ChannelSpec>,
    #[serde(default, rename = "conference", skip_serializing_if = "Vec::is_empty")]
    pub conferences: Vec<ConferenceSpec>,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSpec>,
    /// Floor priority (0 to 4) per role name [default: 2].
    #[serde(default)]
    pub priorities: std::collections::BTreeMap<String, u8>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
    /// From this virtual second on, the report also counts every stream on its own
    /// (`Report::settled`): delivery after the faults have healed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measure_from_s: Option<f64>,
}
