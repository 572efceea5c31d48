//! Reading a report after a run: totals, one stream or path, and what a node believed at a
//! virtual instant (floor holder, route, emergencies, its own floor state).

use super::{PathReport, RelayReport, Report, StreamReport};
use crate::trace::{FloorTrace, TraceEvent};

impl Report {
    /// Frames played over frames sent, over every stream.
    pub fn delivery(&self) -> f64 {
        let sent: u64 = self.streams.iter().map(|s| s.frames_sent).sum();
        let played: u64 = self.streams.iter().map(|s| s.frames_played).sum();
        played as f64 / sent.max(1) as f64
    }

    /// The stream from `from` to `to` on `channel`.
    /// The path between `a` and `b`, in either order.
    pub fn path(&self, a: &str, b: &str) -> Option<&PathReport> {
        self.paths
            .iter()
            .find(|p| (p.a == a && p.b == b) || (p.a == b && p.b == a))
    }

    /// `node`'s events at or before `at_ms`, latest first.
    pub fn events_before(&self, node: &str, at_ms: u64) -> impl Iterator<Item = &TraceEvent> {
        let node = node.to_string();
        self.events
            .iter()
            .rev()
            .filter(move |r| r.node == node && r.at_ms <= at_ms)
            .map(|r| &r.event)
    }

    /// The first event of `node` at or after `from_ms` that `want` accepts: its time.
    pub fn first_after(
        &self,
        node: &str,
        from_ms: u64,
        want: impl Fn(&TraceEvent) -> bool,
    ) -> Option<u64> {
        self.events
            .iter()
            .find(|r| r.node == node && r.at_ms >= from_ms && want(&r.event))
            .map(|r| r.at_ms)
    }

    /// Who `node` believed held the floor on `channel` at `at_ms` (`None`: free or unknown).
    pub fn floor_holder(&self, node: &str, channel: &str, at_ms: u64) -> Option<&str> {
        self.events_before(node, at_ms)
            .find_map(|e| match e {
                TraceEvent::Floor(FloorTrace::Holder { channel: c, holder }) if c == channel => {
                    Some(holder.as_deref())
                }
                _ => None,
            })
            .flatten()
    }

    /// The route `node` gave `channel` at `at_ms`: `Some(Some(relay))`, `Some(None)` for the
    /// mesh, `None` before any route event.
    pub fn route(&self, node: &str, channel: &str, at_ms: u64) -> Option<Option<&str>> {
        self.events_before(node, at_ms).find_map(|e| match e {
            TraceEvent::Route { channel: c, relay } if c == channel => Some(relay.as_deref()),
            _ => None,
        })
    }

    /// Who raised the last emergency on `channel` that `node` heard of by `at_ms`.
    pub fn emergency_by(&self, node: &str, channel: &str, at_ms: u64) -> Option<&str> {
        self.events_before(node, at_ms).find_map(|e| match e {
            TraceEvent::Floor(FloorTrace::Emergency { channel: c, by }) if c == channel => {
                Some(by.as_str())
            }
            _ => None,
        })
    }

    /// The last emergency cleared on `channel` that `node` heard of by `at_ms`: whose, and who
    /// cleared it.
    pub fn emergency_cleared(&self, node: &str, channel: &str, at_ms: u64) -> Option<(&str, &str)> {
        self.events_before(node, at_ms).find_map(|e| match e {
            TraceEvent::Floor(FloorTrace::EmergencyClear {
                channel: c,
                raiser,
                by,
            }) if c == channel => Some((raiser.as_str(), by.as_str())),
            _ => None,
        })
    }

    /// `node`'s last own floor event on `channel` at `at_ms`: `granted`, `queued <n>`,
    /// `preempted <by>`, `released`, `revoked` or `denied`.
    pub fn floor_state(&self, node: &str, channel: &str, at_ms: u64) -> Option<String> {
        self.events_before(node, at_ms).find_map(|e| {
            let TraceEvent::Floor(floor) = e else {
                return None;
            };
            if floor.channel() != channel {
                return None;
            }
            Some(match floor {
                FloorTrace::Granted { .. } => "granted".to_string(),
                FloorTrace::Denied { .. } => "denied".to_string(),
                FloorTrace::Queued { position, .. } => format!("queued {position}"),
                FloorTrace::Preempted { by, .. } => format!("preempted {by}"),
                FloorTrace::Revoked { .. } => "revoked".to_string(),
                FloorTrace::Released { .. } => "released".to_string(),
                FloorTrace::Holder { .. }
                | FloorTrace::Emergency { .. }
                | FloorTrace::EmergencyClear { .. } => return None,
            })
        })
    }

    /// The forwarding report of relay `node`.
    pub fn relay(&self, node: &str) -> Option<&RelayReport> {
        self.relays.iter().find(|r| r.node == node)
    }

    pub fn stream(&self, from: &str, to: &str, channel: &str) -> Option<&StreamReport> {
        self.streams
            .iter()
            .find(|s| s.from == from && s.to == to && s.channel == channel)
    }
}
