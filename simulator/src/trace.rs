//! The trace's vocabulary: one line per node event, in words every run spells the same way
//! (names, not keys), so the trace hash depends only on what happened and when.

use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::floor::FloorEvent;
use callsign_node::NodeEvent;
use std::collections::BTreeMap;
use std::time::Duration;

/// One line of the trace: virtual time, node index, what happened.
pub(crate) type TraceLine = (Duration, usize, String);

/// The trace line for `event` (`None`: not traced).
pub(crate) fn describe(
    event: &NodeEvent,
    names: &BTreeMap<IdentityKey, String>,
    channels: &BTreeMap<ChannelId, String>,
) -> Option<String> {
    let name = |k: &IdentityKey| names.get(k).cloned().unwrap_or_else(|| "?".into());
    let ch = |c: &ChannelId| channels.get(c).cloned().unwrap_or_else(|| c.to_string());
    let peer_name = |p: &libp2p::PeerId| {
        names
            .iter()
            .find(|(k, _)| k.peer_id() == *p)
            .map_or("?".to_string(), |(_, n)| n.clone())
    };
    Some(match event {
        NodeEvent::LinkUp { peer, kind, .. } => format!("link-up {} {kind:?}", peer_name(peer)),
        NodeEvent::LinkDown { peer } => format!("link-down {}", peer_name(peer)),
        NodeEvent::Presence {
            peer, listening, ..
        } => {
            format!("presence {} {}", name(peer), listening.len())
        }
        NodeEvent::PresenceGone { peer } => format!("presence-gone {}", name(peer)),
        NodeEvent::SessionUp { peer } => format!("session-up {}", name(peer)),
        NodeEvent::TalkerStarted {
            peer,
            channels,
            whisper,
            ..
        } => format!("talker {} {} {whisper}", name(peer), channels.len()),
        NodeEvent::TalkerStopped { peer } => format!("talker-stop {}", name(peer)),
        NodeEvent::RouteChanged { channel, route } => match route {
            callsign_mesh::topology::Route::Mesh => format!("route {} mesh", ch(channel)),
            callsign_mesh::topology::Route::Relay(k) => {
                format!("route {} relay {}", ch(channel), name(k))
            }
        },
        NodeEvent::SubscriptionRefused { peer, reason } => {
            format!("subscription-refused {} {reason}", peer_name(peer))
        }
        NodeEvent::Transmitting { channels, whisper } => {
            format!("transmit {} {}", channels.len(), whisper.is_some())
        }
        NodeEvent::TransmitStopped => "transmit-stop".into(),
        NodeEvent::PttDenied { channels, .. } => format!("ptt-denied {}", channels.len()),
        NodeEvent::CharterChanged { ops } => format!("charter {ops}"),
        NodeEvent::Admitted { peer, role, .. } => format!("admitted {} {role}", name(peer)),
        NodeEvent::JoinRefused { reason } => format!("join-refused {reason}"),
        NodeEvent::Floor(event) => match event {
            FloorEvent::Granted { channel } => format!("floor-granted {}", ch(channel)),
            FloorEvent::Denied { channel, .. } => format!("floor-denied {}", ch(channel)),
            FloorEvent::Queued { channel, position } => {
                format!("floor-queued {} {position}", ch(channel))
            }
            FloorEvent::Preempted { channel, by } => {
                format!("floor-preempted {} {}", ch(channel), name(by))
            }
            FloorEvent::Revoked { channel } => format!("floor-revoked {}", ch(channel)),
            FloorEvent::Released { channel } => format!("floor-released {}", ch(channel)),
            FloorEvent::Holder { channel, holder } => format!(
                "floor-holder {} {}",
                ch(channel),
                holder.as_ref().map_or("none".to_string(), &name)
            ),
            FloorEvent::EmergencyRaised { channel, by } => {
                format!("emergency {} {}", ch(channel), name(by))
            }
            FloorEvent::EmergencyCleared {
                channel,
                raiser,
                by,
            } => {
                format!(
                    "emergency-clear {} {} {}",
                    ch(channel),
                    name(raiser),
                    name(by)
                )
            }
        },
        NodeEvent::Reachability { addr, reachable } => format!("reachable {addr} {reachable}"),
        NodeEvent::Warning(_) | NodeEvent::VoiceSent { .. } => return None,
    })
}
