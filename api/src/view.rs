//! What the API knows between requests: the node's events as JSON, numbered in the order the
//! node reported them, and the roster and talkers they add up to.

use std::collections::BTreeMap;

use callsign_keys::IdentityKey;
use callsign_mesh::charter::{ChannelId, CharterState};
use callsign_mesh::topology::Route;
use callsign_node::runtime::{describe_floor, PortMapping};
use callsign_node::NodeEvent;
use serde::Serialize;
use serde_json::{json, Value};

/// One event as clients see it: `{"seq": N, "type": "...", ...}`.
#[derive(Clone, Debug, Serialize)]
pub struct ApiEvent {
    /// 1, 2, 3…: in the order the node reported them.
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub fields: Value,
}

/// A member seen in presence.
#[derive(Clone, Debug, Serialize)]
pub struct RosterEntry {
    pub peer: String,
    pub name: String,
    /// Channel paths it listens on (not those it monitors).
    pub listening: Vec<String>,
    /// Channel paths it records.
    pub recording: Vec<String>,
    /// Whether it is talking now, and where (paths, or `whisper`).
    pub talking: Option<Vec<String>>,
}

/// A member as its presence shows it.
#[derive(Debug)]
struct Seen {
    name: String,
    listening: Vec<ChannelId>,
    recording: Vec<ChannelId>,
}

/// The roster and talkers, kept from the events.
#[derive(Debug, Default)]
pub struct View {
    pub charter: Option<CharterState>,
    seq: u64,
    presence: BTreeMap<IdentityKey, Seen>,
    talking: BTreeMap<IdentityKey, Talk>,
}

#[derive(Clone, Debug)]
enum Talk {
    Channels(Vec<ChannelId>),
    Whisper,
}

impl View {
    pub fn new(charter: CharterState) -> Self {
        Self {
            charter: Some(charter),
            ..Self::default()
        }
    }

    /// A channel's path, or its id when the charter does not (yet) name it.
    pub fn path(&self, channel: &ChannelId) -> String {
        self.charter
            .as_ref()
            .and_then(|c| c.path(*channel))
            .unwrap_or_else(|| channel.to_string())
    }

    fn paths(&self, channels: &[ChannelId]) -> Vec<String> {
        channels.iter().map(|c| self.path(c)).collect()
    }

    fn name(&self, peer: &IdentityKey) -> String {
        self.presence
            .get(peer)
            .map(|seen| seen.name.clone())
            .or_else(|| {
                let charter = self.charter.as_ref()?;
                Some(charter.members.get(peer)?.name.clone())
            })
            .unwrap_or_else(|| peer.to_string())
    }

    /// Takes in one of the node's events and returns it as clients see it (`None` for events
    /// too frequent or internal to publish).
    pub fn take(&mut self, event: &NodeEvent) -> Option<ApiEvent> {
        let (kind, fields) = match event {
            NodeEvent::TalkerStarted {
                peer,
                name,
                channels,
                whisper,
            } => {
                let talk = if *whisper {
                    Talk::Whisper
                } else {
                    Talk::Channels(channels.clone())
                };
                self.talking.insert(*peer, talk);
                (
                    "talker-start",
                    json!({"peer": peer.to_string(), "name": name,
                           "channels": self.paths(channels), "whisper": whisper}),
                )
            }
            NodeEvent::TalkerStopped { peer } => {
                self.talking.remove(peer);
                (
                    "talker-stop",
                    json!({"peer": peer.to_string(), "name": self.name(peer)}),
                )
            }
            NodeEvent::Presence {
                peer,
                name,
                listening,
                recording,
            } => {
                self.presence.insert(
                    *peer,
                    Seen {
                        name: name.clone(),
                        listening: listening.clone(),
                        recording: recording.clone(),
                    },
                );
                (
                    "presence",
                    json!({"peer": peer.to_string(), "name": name,
                           "listening": self.paths(listening),
                           "recording": self.paths(recording)}),
                )
            }
            NodeEvent::Recording { channel, on } => (
                "recording",
                json!({"channel": self.path(channel), "on": on}),
            ),
            NodeEvent::RecordingRefused { channel, reason } => (
                "recording-refused",
                json!({"channel": self.path(channel), "reason": reason}),
            ),
            NodeEvent::PresenceGone { peer } => {
                let name = self.name(peer);
                self.presence.remove(peer);
                self.talking.remove(peer);
                (
                    "presence-gone",
                    json!({"peer": peer.to_string(), "name": name}),
                )
            }
            NodeEvent::SessionUp { peer } => ("session-up", json!({"peer": peer.to_string()})),
            NodeEvent::LinkUp { peer, kind, remote } => (
                "link-up",
                json!({"peer": peer.to_string(), "kind": kind, "remote": remote.to_string()}),
            ),
            NodeEvent::LinkDown { peer } => ("link-down", json!({"peer": peer.to_string()})),
            NodeEvent::Transmitting { channels, whisper } => (
                "transmit",
                json!({"channels": self.paths(channels),
                       "whisper_to": whisper.map(|p| p.to_string())}),
            ),
            NodeEvent::TransmitStopped => ("transmit-stop", json!({})),
            NodeEvent::PttDenied { channels, reason } => (
                "ptt-denied",
                json!({"channels": self.paths(channels), "reason": reason}),
            ),
            NodeEvent::CharterChanged { ops } => ("charter", json!({ "ops": ops })),
            NodeEvent::Admitted { peer, name, role } => (
                "admitted",
                json!({"peer": peer.to_string(), "name": name, "role": role}),
            ),
            NodeEvent::JoinRefused { reason } => ("join-refused", json!({ "reason": reason })),
            NodeEvent::Removed { by } => ("removed", json!({"by": by.to_string()})),
            NodeEvent::Floor(floor) => {
                let text = describe_floor(floor, |k| self.name(k), |c| self.path(c));
                ("floor", json!({ "text": text }))
            }
            NodeEvent::RouteChanged { channel, route } => {
                let via = match route {
                    Route::Mesh => json!("mesh"),
                    Route::Relay(relay) => json!({"relay": relay.to_string()}),
                };
                (
                    "route",
                    json!({"channel": self.path(channel), "route": via}),
                )
            }
            NodeEvent::PathRepair {
                talker,
                channels,
                rung,
            } => (
                "path-repair",
                json!({
                    "talker": talker.to_string(),
                    "name": self.name(talker),
                    "channels": self.paths(channels),
                    "rung": format!("{rung:?}").to_lowercase(),
                }),
            ),
            NodeEvent::SubscriptionRefused { peer, reason } => (
                "subscription-refused",
                json!({"peer": peer.to_string(), "reason": reason}),
            ),
            NodeEvent::Warning(text) => ("warning", json!({ "text": text })),
            NodeEvent::Reachability { addr, reachable } => (
                "reachability",
                json!({"addr": addr.to_string(), "reachable": reachable}),
            ),
            NodeEvent::PortMapping(mapping) => (
                "port-mapping",
                match mapping {
                    PortMapping::Mapped { external, protocol } => {
                        json!({"mapped": external.to_string(), "protocol": protocol})
                    }
                    PortMapping::Lost { external, reason } => {
                        json!({"lost": external.to_string(), "reason": reason})
                    }
                    PortMapping::Unavailable { reason } => json!({ "reason": reason }),
                },
            ),
            // Fifty a second while transmitting: counted in /v1/stats instead.
            NodeEvent::VoiceSent { .. } => return None,
        };
        self.seq += 1;
        Some(ApiEvent {
            seq: self.seq,
            kind,
            fields,
        })
    }

    /// Everyone in presence, by name.
    pub fn roster(&self) -> Vec<RosterEntry> {
        let mut roster: Vec<RosterEntry> = self
            .presence
            .iter()
            .map(|(peer, seen)| RosterEntry {
                peer: peer.to_string(),
                name: seen.name.clone(),
                listening: self.paths(&seen.listening),
                recording: self.paths(&seen.recording),
                talking: self.talking.get(peer).map(|t| self.talk_paths(t)),
            })
            .collect();
        roster.sort_by(|a, b| (&a.name, &a.peer).cmp(&(&b.name, &b.peer)));
        roster
    }

    fn talk_paths(&self, talk: &Talk) -> Vec<String> {
        match talk {
            Talk::Channels(channels) => self.paths(channels),
            Talk::Whisper => vec!["whisper".to_string()],
        }
    }

    /// Who talks on `channel` now (names).
    pub fn talkers_on(&self, channel: ChannelId) -> Vec<String> {
        self.talking
            .iter()
            .filter(|(_, t)| matches!(t, Talk::Channels(cs) if cs.contains(&channel)))
            .map(|(peer, _)| self.name(peer))
            .collect()
    }

    /// Who listens on `channel`, from presence (names).
    pub fn listeners_on(&self, channel: ChannelId) -> Vec<String> {
        self.names_where(|seen| seen.listening.contains(&channel))
    }

    /// Who records `channel`, from presence (names).
    pub fn recorders_on(&self, channel: ChannelId) -> Vec<String> {
        self.names_where(|seen| seen.recording.contains(&channel))
    }

    fn names_where(&self, pick: impl Fn(&Seen) -> bool) -> Vec<String> {
        self.presence
            .values()
            .filter(|seen| pick(seen))
            .map(|seen| seen.name.clone())
            .collect()
    }
}
