//! Channel links, conferences and recording policy: which channels hear a talker besides the
//! ones it keyed, and who may record what.
//!
//! A link `(from, to)` carries the talkers of `from` to the listeners of `to`, one way. A
//! conference is a set of channels linked every way. The channels a frame reaches are the
//! closure of its keyed channels over links, computed once by the sender: each channel is in
//! the frame's header at most once, so a frame crosses each link at most once however the links
//! loop, and a listener of several reached channels gets one copy. Each hop is crossed only where
//! the talker may speak on the channel it leads to (the receiver checks the same ACL again).

use std::collections::{BTreeSet, VecDeque};

use super::model::{ChannelId, RecordingPolicy};
use super::state::CharterState;

impl CharterState {
    /// The channels `channel`'s talkers are carried to directly: its links out and its fellow
    /// conference channels, in id order, without `channel` itself.
    pub fn linked_from(&self, channel: ChannelId) -> BTreeSet<ChannelId> {
        let mut out: BTreeSet<ChannelId> = self
            .links
            .range((channel, ChannelId(0))..=(channel, ChannelId(u64::MAX)))
            .map(|(_, to)| *to)
            .collect();
        for members in self.conferences.values() {
            if members.contains(&channel) {
                out.extend(members.iter().copied());
            }
        }
        out.remove(&channel);
        out.retain(|c| self.channels.contains_key(c));
        out
    }

    /// The channels a frame keyed on `keyed` reaches: `keyed` first (in order), then what
    /// the links reach, breadth first, each channel once, at most `limit` in all. A hop is
    /// crossed only into channels `cross` accepts (the talker's ACL and floor there); a refused
    /// channel carries nothing further.
    pub fn reach(
        &self,
        keyed: &[ChannelId],
        limit: usize,
        mut cross: impl FnMut(ChannelId) -> bool,
    ) -> Vec<ChannelId> {
        let mut out: Vec<ChannelId> = Vec::new();
        for c in keyed {
            if !out.contains(c) && out.len() < limit {
                out.push(*c);
            }
        }
        // Every voice frame asks: an org without links pays nothing more.
        if self.links.is_empty() && self.conferences.is_empty() {
            return out;
        }
        let mut refused: BTreeSet<ChannelId> = BTreeSet::new();
        let mut queue: VecDeque<ChannelId> = out.iter().copied().collect();
        while let Some(at) = queue.pop_front() {
            for next in self.linked_from(at) {
                if out.len() >= limit {
                    return out;
                }
                if out.contains(&next) || refused.contains(&next) {
                    continue;
                }
                if cross(next) {
                    out.push(next);
                    queue.push_back(next);
                } else {
                    refused.insert(next);
                }
            }
        }
        out
    }

    /// The recording policy of `channel`: the nearest one set on it or an ancestor, else
    /// [`RecordingPolicy::Notice`].
    pub fn recording_policy(&self, channel: ChannelId) -> RecordingPolicy {
        let mut at = Some(channel);
        let mut depth = 0;
        while let Some(id) = at {
            if let Some(policy) = self.recording.get(&id) {
                return *policy;
            }
            depth += 1;
            if depth > self.channels.len() {
                break;
            }
            at = self.channels.get(&id).and_then(|c| c.parent);
        }
        RecordingPolicy::default()
    }
}
