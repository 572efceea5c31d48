//! The folded charter: what every node agrees the org looks like, and the questions asked of it.

use std::collections::{BTreeMap, BTreeSet};

use callsign_keys::IdentityKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::model::{
    ChannelId, ChannelPolicy, Member, Permissions, Preset, PresetChannel, Priority,
    RecordingPolicy, RelayInfo, Role,
};

/// One channel as folded.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Channel {
    /// Name, unique among siblings.
    pub name: String,
    /// Parent, `None` at the top level.
    pub parent: Option<ChannelId>,
    /// Per-role overrides.
    pub acl: BTreeMap<String, Permissions>,
    /// Policy.
    pub policy: ChannelPolicy,
}

/// The state of an org's charter after folding its ops.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct CharterState {
    /// Root key, which names the org.
    pub org: IdentityKey,
    /// Display name (empty until the genesis op is present).
    pub name: String,
    /// Admins other than the root (who always is one).
    pub admins: BTreeSet<IdentityKey>,
    /// Members.
    pub members: BTreeMap<IdentityKey, Member>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
    /// Live channels (removed subtrees are gone).
    pub channels: BTreeMap<ChannelId, Channel>,
    /// Rented relays.
    pub relays: BTreeMap<IdentityKey, RelayInfo>,
    /// Presets by name.
    pub presets: BTreeMap<String, Preset>,
    /// Nonces of invite grants that admitted someone (each admits once).
    pub used_invites: BTreeSet<[u8; 16]>,
    /// Channel links `(from, to)`: listeners of `to` hear the talkers of `from` (see
    /// `links`).
    pub links: BTreeSet<(ChannelId, ChannelId)>,
    /// Conferences by name: channels heard as one.
    pub conferences: BTreeMap<String, BTreeSet<ChannelId>>,
    /// Recording policies set on channels (others inherit; see
    /// [`CharterState::recording_policy`]).
    pub recording: BTreeMap<ChannelId, RecordingPolicy>,
    /// Positional and proximity channels (not inherited: each is set on its own).
    pub spatial: BTreeMap<ChannelId, crate::spatial::Spatial>,
}

impl CharterState {
    pub(crate) fn empty(org: IdentityKey) -> Self {
        Self {
            org,
            name: String::new(),
            admins: BTreeSet::new(),
            members: BTreeMap::new(),
            roles: BTreeMap::new(),
            channels: BTreeMap::new(),
            relays: BTreeMap::new(),
            presets: BTreeMap::new(),
            used_invites: BTreeSet::new(),
            links: BTreeSet::new(),
            conferences: BTreeMap::new(),
            recording: BTreeMap::new(),
            spatial: BTreeMap::new(),
        }
    }

    /// A hash of the whole state; equal on every node that folded the same ops.
    pub fn state_hash(&self) -> [u8; 32] {
        // BTreeMaps serialise in key order, so the bytes are canonical.
        Sha256::digest(postcard::to_stdvec(self).expect("state serialises")).into()
    }

    /// Whether `peer` is an admin (the root always is).
    pub fn is_admin(&self, peer: &IdentityKey) -> bool {
        *peer == self.org || self.admins.contains(peer)
    }

    /// What `peer` may do on `channel`: the union over its roles of the nearest ACL override on
    /// the channel or an ancestor, else the role's own permissions. Admins may do everything.
    pub fn effective_permissions(&self, peer: &IdentityKey, channel: ChannelId) -> Permissions {
        if !self.channels.contains_key(&channel) {
            return Permissions::NONE;
        }
        if self.is_admin(peer) {
            return Permissions::ALL;
        }
        let Some(member) = self.members.get(peer) else {
            return Permissions::NONE;
        };
        member
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name).map(|role| (name, role)))
            .fold(Permissions::NONE, |acc, (name, role)| {
                acc.union(self.role_permissions(name, role, channel))
            })
    }

    fn role_permissions(&self, role_name: &str, role: &Role, channel: ChannelId) -> Permissions {
        let mut at = Some(channel);
        while let Some(id) = at {
            let Some(ch) = self.channels.get(&id) else {
                return Permissions::NONE;
            };
            if let Some(perms) = ch.acl.get(role_name) {
                return *perms;
            }
            at = ch.parent;
        }
        role.perms
    }

    /// Whether `peer` holds every permission in `perms` on `channel`.
    pub fn may(&self, peer: &IdentityKey, channel: ChannelId, perms: Permissions) -> bool {
        self.effective_permissions(peer, channel).contains(perms)
    }

    /// Whether `peer` may hear `channel`: listen, or monitor silently.
    pub fn may_hear(&self, peer: &IdentityKey, channel: ChannelId) -> bool {
        let perms = self.effective_permissions(peer, channel);
        perms.contains(Permissions::LISTEN) || perms.contains(Permissions::MONITOR)
    }

    /// Members and admins allowed to hear `channel` (listeners and monitors), sorted.
    pub fn listeners(&self, channel: ChannelId) -> Vec<IdentityKey> {
        let mut out: BTreeSet<IdentityKey> = self
            .members
            .keys()
            .filter(|peer| self.may_hear(peer, channel))
            .copied()
            .collect();
        if self.channels.contains_key(&channel) {
            out.insert(self.org);
            out.extend(self.admins.iter().copied());
        }
        out.into_iter().collect()
    }

    /// The highest floor priority `peer` holds through its roles.
    pub fn priority(&self, peer: &IdentityKey) -> Priority {
        if self.is_admin(peer) {
            return Priority::EMERGENCY;
        }
        self.members
            .get(peer)
            .into_iter()
            .flat_map(|m| m.roles.iter())
            .filter_map(|r| self.roles.get(r))
            .map(|r| r.priority)
            .max()
            .unwrap_or(Priority::NONE)
    }

    /// Children of `parent` (top level for `None`), sorted by name.
    pub fn children(&self, parent: Option<ChannelId>) -> Vec<ChannelId> {
        let mut out: Vec<_> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.parent == parent)
            .map(|(id, ch)| (ch.name.as_str(), *id))
            .collect();
        out.sort();
        out.into_iter().map(|(_, id)| id).collect()
    }

    /// The subtree at `root` as a preset (names, ACLs, policies), parents before children;
    /// `None` if there is no such channel.
    pub fn preset_of(&self, root: ChannelId) -> Option<Preset> {
        self.channels.get(&root)?;
        let mut channels = Vec::new();
        let mut queue = vec![(root, None)];
        while let Some((id, parent)) = queue.pop() {
            let Some(ch) = self.channels.get(&id) else {
                continue;
            };
            let index = channels.len() as u16;
            channels.push(PresetChannel {
                name: ch.name.clone(),
                parent,
                acl: ch.acl.clone(),
                policy: ch.policy.clone(),
            });
            for child in self.children(Some(id)).into_iter().rev() {
                queue.push((child, Some(index)));
            }
        }
        Some(Preset { channels })
    }

    /// The channel's path, like `/Command/Flight`.
    pub fn path(&self, channel: ChannelId) -> Option<String> {
        let mut parts = Vec::new();
        let mut at = Some(channel);
        while let Some(id) = at {
            let ch = self.channels.get(&id)?;
            parts.push(ch.name.as_str());
            at = ch.parent;
            if parts.len() > self.channels.len() {
                return None;
            }
        }
        parts.reverse();
        Some(format!("/{}", parts.join("/")))
    }

    /// Finds a channel by path (`/Command/Flight`; the leading slash is optional).
    pub fn find(&self, path: &str) -> Option<ChannelId> {
        let mut at = None;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at = Some(
                self.children(at)
                    .into_iter()
                    .find(|id| self.channels[id].name == part)?,
            );
        }
        at
    }
}
