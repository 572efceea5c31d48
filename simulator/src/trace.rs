//! The trace's vocabulary: one typed [`TraceEvent`] per node event, naming members and
//! channels by their scenario names (not keys), so the trace hash depends only on what happened
//! and when. Its text form (`Display`) is what the hash covers and the trace file holds.

use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::floor::FloorEvent;
use callsign_mesh::topology::Route;
use callsign_node::runtime::LinkKind;
use callsign_node::NodeEvent;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// One line of the trace: virtual time, node index, what happened.
pub(crate) type TraceLine = (Duration, usize, TraceEvent);

/// One event of the trace, as a test or the report reads it: virtual ms, node, event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Virtual milliseconds since the start.
    pub at_ms: u64,
    /// The node it happened at.
    pub node: String,
    /// What happened.
    pub event: TraceEvent,
}

/// What a node reported, by name. Warnings and tapped datagrams are not traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    LinkUp {
        peer: String,
        kind: LinkKind,
    },
    LinkDown {
        peer: String,
    },
    Presence {
        peer: String,
        listening: usize,
    },
    PresenceGone {
        peer: String,
    },
    SessionUp {
        peer: String,
    },
    Recording {
        channel: String,
        on: bool,
    },
    RecordingRefused {
        channel: String,
    },
    Talker {
        peer: String,
        channels: usize,
        whisper: bool,
    },
    TalkerStop {
        peer: String,
    },
    /// A channel's route: the mesh (`None`) or a relay.
    Route {
        channel: String,
        relay: Option<String>,
    },
    SubscriptionRefused {
        peer: String,
        reason: String,
    },
    PathRepair {
        talker: String,
        rung: callsign_mesh::path::Rung,
    },
    Transmit {
        channels: usize,
        whisper: bool,
    },
    TransmitStop,
    PttDenied {
        channels: usize,
    },
    Charter {
        ops: usize,
    },
    Admitted {
        peer: String,
        role: String,
    },
    JoinRefused {
        reason: String,
    },
    /// An admin removed this node from the charter; it stopped.
    Removed {
        by: String,
    },
    Floor(FloorTrace),
    Reachable {
        addr: String,
        reachable: bool,
    },
}

/// A floor event, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FloorTrace {
    Granted {
        channel: String,
    },
    Denied {
        channel: String,
    },
    Queued {
        channel: String,
        position: usize,
    },
    Preempted {
        channel: String,
        by: String,
    },
    Revoked {
        channel: String,
    },
    Released {
        channel: String,
    },
    Holder {
        channel: String,
        holder: Option<String>,
    },
    Emergency {
        channel: String,
        by: String,
    },
    EmergencyClear {
        channel: String,
        raiser: String,
        by: String,
    },
}

impl FloorTrace {
    /// The channel it is about.
    pub fn channel(&self) -> &str {
        match self {
            Self::Granted { channel }
            | Self::Denied { channel }
            | Self::Queued { channel, .. }
            | Self::Preempted { channel, .. }
            | Self::Revoked { channel }
            | Self::Released { channel }
            | Self::Holder { channel, .. }
            | Self::Emergency { channel, .. }
            | Self::EmergencyClear { channel, .. } => channel,
        }
    }
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinkUp { peer, kind } => write!(f, "link-up {peer} {kind:?}"),
            Self::LinkDown { peer } => write!(f, "link-down {peer}"),
            Self::Presence { peer, listening } => write!(f, "presence {peer} {listening}"),
            Self::PresenceGone { peer } => write!(f, "presence-gone {peer}"),
            Self::SessionUp { peer } => write!(f, "session-up {peer}"),
            Self::Recording { channel, on } => write!(f, "recording {channel} {on}"),
            Self::RecordingRefused { channel } => write!(f, "recording-refused {channel}"),
            Self::Talker {
                peer,
                channels,
                whisper,
            } => write!(f, "talker {peer} {channels} {whisper}"),
            Self::TalkerStop { peer } => write!(f, "talker-stop {peer}"),
            Self::Route {
                channel,
                relay: None,
            } => write!(f, "route {channel} mesh"),
            Self::Route {
                channel,
                relay: Some(relay),
            } => write!(f, "route {channel} relay {relay}"),
            Self::SubscriptionRefused { peer, reason } => {
                write!(f, "subscription-refused {peer} {reason}")
            }
            Self::PathRepair { talker, rung } => write!(f, "path-repair {talker} {rung:?}"),
            Self::Transmit { channels, whisper } => write!(f, "transmit {channels} {whisper}"),
            Self::TransmitStop => write!(f, "transmit-stop"),
            Self::PttDenied { channels } => write!(f, "ptt-denied {channels}"),
            Self::Charter { ops } => write!(f, "charter {ops}"),
            Self::Admitted { peer, role } => write!(f, "admitted {peer} {role}"),
            Self::JoinRefused { reason } => write!(f, "join-refused {reason}"),
            Self::Removed { by } => write!(f, "removed-by {by}"),
            Self::Floor(floor) => floor.fmt(f),
            Self::Reachable { addr, reachable } => write!(f, "reachable {addr} {reachable}"),
        }
    }
}

impl fmt::Display for FloorTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Granted { channel } => write!(f, "floor-granted {channel}"),
            Self::Denied { channel } => write!(f, "floor-denied {channel}"),
            Self::Queued { channel, position } => write!(f, "floor-queued {channel} {position}"),
            Self::Preempted { channel, by } => write!(f, "floor-preempted {channel} {by}"),
            Self::Revoked { channel } => write!(f, "floor-revoked {channel}"),
            Self::Released { channel } => write!(f, "floor-released {channel}"),
            Self::Holder { channel, holder } => write!(
                f,
                "floor-holder {channel} {}",
                holder.as_deref().unwrap_or("none")
            ),
            Self::Emergency { channel, by } => write!(f, "emergency {channel} {by}"),
            Self::EmergencyClear {
                channel,
                raiser,
                by,
            } => write!(f, "emergency-clear {channel} {raiser} {by}"),
        }
    }
}

/// The trace event for `event` (`None`: not traced).
pub(crate) fn describe(
    event: &NodeEvent,
    names: &BTreeMap<IdentityKey, String>,
    channels: &BTreeMap<ChannelId, String>,
) -> Option<TraceEvent> {
    let name = |k: &IdentityKey| names.get(k).cloned().unwrap_or_else(|| "?".into());
    let ch = |c: &ChannelId| channels.get(c).cloned().unwrap_or_else(|| c.to_string());
    let peer_name = |p: &libp2p::PeerId| {
        names
            .iter()
            .find(|(k, _)| k.peer_id() == *p)
            .map_or("?".to_string(), |(_, n)| n.clone())
    };
    Some(match event {
        NodeEvent::LinkUp { peer, kind, .. } => TraceEvent::LinkUp {
            peer: peer_name(peer),
            kind: *kind,
        },
        NodeEvent::LinkDown { peer } => TraceEvent::LinkDown {
            peer: peer_name(peer),
        },
        NodeEvent::Presence {
            peer, listening, ..
        } => TraceEvent::Presence {
            peer: name(peer),
            listening: listening.len(),
        },
        NodeEvent::PresenceGone { peer } => TraceEvent::PresenceGone { peer: name(peer) },
        NodeEvent::SessionUp { peer } => TraceEvent::SessionUp { peer: name(peer) },
        NodeEvent::Recording { channel, on } => TraceEvent::Recording {
            channel: ch(channel),
            on: *on,
        },
        NodeEvent::RecordingRefused { channel, .. } => TraceEvent::RecordingRefused {
            channel: ch(channel),
        },
        NodeEvent::TalkerStarted {
            peer,
            channels,
            whisper,
            ..
        } => TraceEvent::Talker {
            peer: name(peer),
            channels: channels.len(),
            whisper: *whisper,
        },
        NodeEvent::TalkerStopped { peer } => TraceEvent::TalkerStop { peer: name(peer) },
        NodeEvent::RouteChanged { channel, route } => TraceEvent::Route {
            channel: ch(channel),
            relay: match route {
                Route::Mesh => None,
                Route::Relay(k) => Some(name(k)),
            },
        },
        NodeEvent::PathRepair { talker, rung, .. } => TraceEvent::PathRepair {
            talker: name(talker),
            rung: *rung,
        },
        NodeEvent::SubscriptionRefused { peer, reason } => TraceEvent::SubscriptionRefused {
            peer: peer_name(peer),
            reason: reason.clone(),
        },
        NodeEvent::Transmitting { channels, whisper } => TraceEvent::Transmit {
            channels: channels.len(),
            whisper: whisper.is_some(),
        },
        NodeEvent::TransmitStopped => TraceEvent::TransmitStop,
        NodeEvent::PttDenied { channels, .. } => TraceEvent::PttDenied {
            channels: channels.len(),
        },
        NodeEvent::CharterChanged { ops } => TraceEvent::Charter { ops: *ops },
        NodeEvent::Admitted { peer, role, .. } => TraceEvent::Admitted {
            peer: name(peer),
            role: role.clone(),
        },
        NodeEvent::JoinRefused { reason } => TraceEvent::JoinRefused {
            reason: reason.clone(),
        },
        NodeEvent::Removed { by } => TraceEvent::Removed { by: name(by) },
        NodeEvent::Floor(event) => TraceEvent::Floor(match event {
            FloorEvent::Granted { channel } => FloorTrace::Granted {
                channel: ch(channel),
            },
            FloorEvent::Denied { channel, .. } => FloorTrace::Denied {
                channel: ch(channel),
            },
            FloorEvent::Queued { channel, position } => FloorTrace::Queued {
                channel: ch(channel),
                position: *position,
            },
            FloorEvent::Preempted { channel, by } => FloorTrace::Preempted {
                channel: ch(channel),
                by: name(by),
            },
            FloorEvent::Revoked { channel } => FloorTrace::Revoked {
                channel: ch(channel),
            },
            FloorEvent::Released { channel } => FloorTrace::Released {
                channel: ch(channel),
            },
            FloorEvent::Holder { channel, holder } => FloorTrace::Holder {
                channel: ch(channel),
                holder: holder.as_ref().map(&name),
            },
            FloorEvent::EmergencyRaised { channel, by } => FloorTrace::Emergency {
                channel: ch(channel),
                by: name(by),
            },
            FloorEvent::EmergencyCleared {
                channel,
                raiser,
                by,
            } => FloorTrace::EmergencyClear {
                channel: ch(channel),
                raiser: name(raiser),
                by: name(by),
            },
        }),
        NodeEvent::Reachability { addr, reachable } => TraceEvent::Reachable {
            addr: addr.to_string(),
            reachable: *reachable,
        },
        NodeEvent::Warning(_) | NodeEvent::VoiceSent { .. } | NodeEvent::PortMapping(_) => {
            return None
        }
    })
}
