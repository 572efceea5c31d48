//! The fold: ops in topological order → [`CharterState`], deciding each op's validity.
//!
//! Validity rules (also in `docs/protocol.md`):
//! 1. **Causal authority.** An op is authorised iff its author holds the needed permission in the
//!    state of the op's causal past (its ancestors). Grants concurrent with an op never authorise
//!    it. An unauthorised op is *rejected*: its causal past is fixed, so it never becomes valid.
//! 2. **Revocation wins.** If `RevokeAdmin(A)` or `RemoveMember(A)` is applied, every op by `A`
//!    that is concurrent with it (neither its ancestor nor its descendant) is *void*: kept in the
//!    DAG, but without effect. A revoked admin cannot keep editing by pretending not to have seen
//!    the revocation. Ops after the revocation are judged by rule 1 (so a later re-grant works).
//! 3. **Conflicts.** Structural conflicts between concurrent valid ops (two channels with one
//!    name, a move into a removed subtree) are resolved by the order: the later one is *skipped*.
//!
//! Authority is looked up per fact (admin flag, member record, role, ACL entry, channel parent):
//! each fact keeps its history in fold order, and its value in an op's causal past is the last
//! entry that is an ancestor of the op — an O(1) check with [`Ancestry`].

use std::collections::{BTreeMap, BTreeSet};

use callsign_keys::IdentityKey;
use sha2::{Digest, Sha256};

use super::dag::{Ancestry, DagOp};
use super::model::{check_name, ChannelId, Member, Permissions, RelayInfo};
use super::op::{OpBody, OpHash};
use super::state::{Channel, CharterState};

mod ops;

/// What the fold made of one op.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Took effect.
    Applied,
    /// Invalid forever (unauthorised in its causal past, or malformed).
    Rejected(String),
    /// Valid but without effect (conflict with, or voided by, a concurrent op).
    Skipped(String),
}

/// The result of folding a DAG.
#[derive(Clone, Debug)]
pub struct Fold {
    /// The state.
    pub state: CharterState,
    /// Every op's outcome.
    pub outcomes: BTreeMap<OpHash, Outcome>,
}

/// A fact's writes in fold order; `None` records removal.
///
/// A fact's value as seen from an op is decided by the writes in that op's causal past alone:
/// the causally latest write, and among concurrent latest writes the one with the greatest op
/// hash. It does not depend on how concurrent ops happen to be ordered, so an op's validity
/// depends only on its causal past.
struct History<V> {
    entries: Vec<(u32, OpHash, Option<V>)>,
}

impl<V> Default for History<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> History<V> {
    /// The value with every write visible.
    fn current(&self, ancestry: &Ancestry) -> Option<&V> {
        self.resolve(ancestry, |_| true)
    }

    /// The value in the causal past of the op at position `at`.
    fn at(&self, ancestry: &Ancestry, at: u32) -> Option<&V> {
        self.resolve(ancestry, |pos| ancestry.is_ancestor(pos, at))
    }

    fn resolve(&self, ancestry: &Ancestry, visible: impl Fn(u32) -> bool) -> Option<&V> {
        // Newest first: a write can only be overwritten by a later one (its descendant), so a
        // write is live iff it is no ancestor of any write already seen. Histories are short.
        let mut seen: Vec<u32> = Vec::new();
        let mut best: Option<&(u32, OpHash, Option<V>)> = None;
        for entry in self.entries.iter().rev().filter(|e| visible(e.0)) {
            let overwritten = seen
                .iter()
                .any(|&later| ancestry.is_ancestor(entry.0, later));
            seen.push(entry.0);
            if !overwritten && best.is_none_or(|b| entry.1 > b.1) {
                best = Some(entry);
            }
        }
        best.and_then(|(_, _, v)| v.as_ref())
    }

    fn set(&mut self, at: (u32, OpHash), value: Option<V>) {
        self.entries.push((at.0, at.1, value));
    }
}

#[derive(Clone)]
struct ChannelNode {
    name: String,
    parent: Option<ChannelId>,
}

/// Mutable state during one pass.
struct Pass<'a> {
    org: IdentityKey,
    ancestry: &'a Ancestry,
    name: String,
    created: bool,
    admins: BTreeMap<IdentityKey, History<()>>,
    members: BTreeMap<IdentityKey, History<Member>>,
    roles: BTreeMap<String, History<super::model::Role>>,
    acl: BTreeMap<(ChannelId, String), History<Permissions>>,
    channels: BTreeMap<ChannelId, History<ChannelNode>>,
    policies: BTreeMap<ChannelId, super::model::ChannelPolicy>,
    relays: BTreeMap<IdentityKey, RelayInfo>,
    presets: BTreeMap<String, super::model::Preset>,
    invites: BTreeSet<[u8; 16]>,
    links: BTreeSet<(ChannelId, ChannelId)>,
    conferences: BTreeMap<String, BTreeSet<ChannelId>>,
    recording: BTreeMap<ChannelId, super::model::RecordingPolicy>,
    spatial: BTreeMap<ChannelId, crate::spatial::Spatial>,
    revocations: Vec<(u32, IdentityKey)>,
}

type Verdict = Result<(), Outcome>;

fn reject(reason: impl Into<String>) -> Verdict {
    Err(Outcome::Rejected(reason.into()))
}

fn skip(reason: impl Into<String>) -> Verdict {
    Err(Outcome::Skipped(reason.into()))
}

/// A channel walk longer than this means a cycle, which the move rule should make impossible.
const MAX_DEPTH: usize = 256;

impl Pass<'_> {
    fn is_admin_at(&self, peer: &IdentityKey, at: u32) -> bool {
        *peer == self.org
            || self
                .admins
                .get(peer)
                .is_some_and(|h| h.at(self.ancestry, at).is_some())
    }

    fn perms_at(&self, peer: &IdentityKey, channel: ChannelId, at: u32) -> Permissions {
        if self.is_admin_at(peer, at) {
            return Permissions::ALL;
        }
        let Some(member) = self.members.get(peer).and_then(|h| h.at(self.ancestry, at)) else {
            return Permissions::NONE;
        };
        let mut perms = Permissions::NONE;
        for role_name in &member.roles {
            let Some(role) = self
                .roles
                .get(role_name)
                .and_then(|h| h.at(self.ancestry, at))
            else {
                continue;
            };
            let mut here = Some(channel);
            let mut found = None;
            for _ in 0..MAX_DEPTH {
                let Some(id) = here else { break };
                let Some(node) = self.channels.get(&id).and_then(|h| h.at(self.ancestry, at))
                else {
                    return Permissions::NONE;
                };
                if let Some(p) = self
                    .acl
                    .get(&(id, role_name.clone()))
                    .and_then(|h| h.at(self.ancestry, at))
                {
                    found = Some(*p);
                    break;
                }
                here = node.parent;
            }
            perms = perms.union(found.unwrap_or(role.perms));
        }
        perms
    }

    fn require_admin(&self, author: &IdentityKey, at: u32) -> Verdict {
        if self.is_admin_at(author, at) {
            Ok(())
        } else {
            reject("author is not an admin in the op's causal past")
        }
    }

    fn require_manage(&self, author: &IdentityKey, channel: Option<ChannelId>, at: u32) -> Verdict {
        match channel {
            None => self.require_admin(author, at),
            Some(ch) if self.perms_at(author, ch, at).contains(Permissions::MANAGE) => Ok(()),
            Some(ch) => reject(format!(
                "author lacks manage permission on channel {ch} in the op's causal past"
            )),
        }
    }

    /// Live now: the channel and all its ancestors exist.
    fn alive(&self, channel: ChannelId) -> bool {
        let mut here = Some(channel);
        for _ in 0..MAX_DEPTH {
            let Some(id) = here else { return true };
            match self
                .channels
                .get(&id)
                .and_then(|h| h.current(self.ancestry))
            {
                Some(node) => here = node.parent,
                None => return false,
            }
        }
        false
    }

    fn require_alive(&self, channel: Option<ChannelId>) -> Verdict {
        match channel {
            Some(ch) if !self.alive(ch) => skip(format!("channel {ch} does not exist")),
            _ => Ok(()),
        }
    }

    fn name_taken(&self, parent: Option<ChannelId>, name: &str, except: Option<ChannelId>) -> bool {
        self.channels.iter().any(|(id, h)| {
            Some(*id) != except
                && h.current(self.ancestry)
                    .is_some_and(|n| n.parent == parent && n.name == name)
                && self.alive(*id)
        })
    }

    fn is_in_subtree(&self, candidate: ChannelId, root: ChannelId) -> bool {
        let mut here = Some(candidate);
        for _ in 0..MAX_DEPTH {
            let Some(id) = here else { return false };
            if id == root {
                return true;
            }
            here = self
                .channels
                .get(&id)
                .and_then(|h| h.current(self.ancestry))
                .and_then(|n| n.parent);
        }
        true
    }

    fn apply(&mut self, pos: u32, dag_op: &DagOp) -> Verdict {
        let at = (pos, dag_op.hash);
        let op = &dag_op.op;
        let author = &op.author;
        if op.org != self.org {
            return reject("op belongs to another org");
        }
        if let OpBody::CreateOrg { name } = &op.body {
            if *author != self.org || !op.parents.is_empty() {
                return reject("only the org root creates the org, with no parents");
            }
            check_name("org", name).or_else(reject)?;
            if self.created {
                return skip("org already created");
            }
            self.created = true;
            self.name = name.clone();
            return Ok(());
        }
        if op.parents.is_empty() {
            return reject("only the genesis op has no parents");
        }
        match &op.body {
            OpBody::CreateOrg { .. } => unreachable!("handled above"),
            OpBody::AddChannel { .. }
            | OpBody::MoveChannel { .. }
            | OpBody::RenameChannel { .. }
            | OpBody::RemoveChannel { .. }
            | OpBody::SetChannelAcl { .. }
            | OpBody::SetChannelPolicy { .. } => self.apply_channel(at, dag_op),
            OpBody::LinkChannel { .. }
            | OpBody::SetConference { .. }
            | OpBody::SetRecording { .. }
            | OpBody::SetSpatial { .. } => self.apply_routing(at, dag_op),
            OpBody::PutRole { .. }
            | OpBody::RemoveRole { .. }
            | OpBody::PutMember { .. }
            | OpBody::AdmitMember { .. }
            | OpBody::RemoveMember { .. }
            | OpBody::GrantAdmin { .. }
            | OpBody::RevokeAdmin { .. }
            | OpBody::PutRelay { .. }
            | OpBody::RemoveRelay { .. } => self.apply_people(at, dag_op),
            OpBody::DefinePreset { .. }
            | OpBody::RemovePreset { .. }
            | OpBody::ApplyPreset { .. } => self.apply_preset(at, dag_op),
        }
    }

    fn add_channel(
        &mut self,
        at: (u32, OpHash),
        id: ChannelId,
        parent: Option<ChannelId>,
        name: &str,
    ) -> Verdict {
        if self.channels.contains_key(&id) {
            return skip("channel id already in use");
        }
        if self.name_taken(parent, name, None) {
            return skip(format!("a channel named {name:?} already exists there"));
        }
        self.channels.entry(id).or_default().set(
            at,
            Some(ChannelNode {
                name: name.to_string(),
                parent,
            }),
        );
        Ok(())
    }

    fn into_state(self) -> CharterState {
        let mut state = CharterState::empty(self.org);
        state.name = self.name.clone();
        state.admins = self
            .admins
            .iter()
            .filter(|(_, h)| h.current(self.ancestry).is_some())
            .map(|(k, _)| *k)
            .collect();
        state.members = self
            .members
            .iter()
            .filter_map(|(k, h)| h.current(self.ancestry).map(|m| (*k, m.clone())))
            .collect();
        state.roles = self
            .roles
            .iter()
            .filter_map(|(k, h)| h.current(self.ancestry).map(|r| (k.clone(), r.clone())))
            .collect();
        for (id, h) in &self.channels {
            if let (Some(node), true) = (h.current(self.ancestry), self.alive(*id)) {
                state.channels.insert(
                    *id,
                    Channel {
                        name: node.name.clone(),
                        parent: node.parent,
                        acl: BTreeMap::new(),
                        policy: self.policies.get(id).cloned().unwrap_or_default(),
                    },
                );
            }
        }
        for ((id, role), h) in &self.acl {
            if let (Some(ch), Some(perms)) = (state.channels.get_mut(id), h.current(self.ancestry))
            {
                ch.acl.insert(role.clone(), *perms);
            }
        }
        // Links, conferences and policies outlive nothing: a removed channel takes its own.
        let live = |c: &ChannelId| state.channels.contains_key(c);
        state.links = self
            .links
            .iter()
            .filter(|(from, to)| live(from) && live(to))
            .copied()
            .collect();
        state.conferences = self
            .conferences
            .iter()
            .map(|(name, chs)| (name.clone(), chs.iter().copied().filter(live).collect()))
            .filter(|(_, chs): &(String, BTreeSet<ChannelId>)| chs.len() >= 2)
            .collect();
        state.recording = self
            .recording
            .iter()
            .filter(|(c, _)| live(c))
            .map(|(c, p)| (*c, *p))
            .collect();
        state.spatial = self
            .spatial
            .iter()
            .filter(|(c, _)| live(c))
            .map(|(c, s)| (*c, *s))
            .collect();
        state.relays = self.relays;
        state.presets = self.presets;
        state.used_invites = self.invites;
        state
    }
}

/// The id of the `index`th channel created by a preset application.
fn derived_channel_id(op: &OpHash, index: usize) -> ChannelId {
    let mut h = Sha256::new();
    h.update(op.0);
    h.update((index as u64).to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    ChannelId(u64::from_be_bytes(b))
}

/// Folds ops given in topological order (see [`super::dag::OpDag::topological_order`]).
pub fn fold(org: IdentityKey, order: &[&DagOp]) -> Fold {
    let mut position = std::collections::HashMap::with_capacity(order.len());
    for (i, o) in order.iter().enumerate() {
        position.insert(o.hash, i as u32);
    }
    let parents_by_pos: Vec<Vec<u32>> = order
        .iter()
        .map(|o| o.op.parents.iter().map(|p| position[p]).collect())
        .collect();
    let ancestry = Ancestry::build(&parents_by_pos);

    // Revocation-wins can void ops that were applied earlier in the order, so fold again until
    // the voided set stops growing. Revocations are rare; this is almost always one pass.
    let mut void: BTreeSet<u32> = BTreeSet::new();
    loop {
        let mut pass = Pass {
            org,
            ancestry: &ancestry,
            name: String::new(),
            created: false,
            admins: BTreeMap::new(),
            members: BTreeMap::new(),
            roles: BTreeMap::new(),
            acl: BTreeMap::new(),
            channels: BTreeMap::new(),
            policies: BTreeMap::new(),
            relays: BTreeMap::new(),
            presets: BTreeMap::new(),
            invites: BTreeSet::new(),
            links: BTreeSet::new(),
            conferences: BTreeMap::new(),
            recording: BTreeMap::new(),
            spatial: BTreeMap::new(),
            revocations: Vec::new(),
        };
        let mut outcomes = BTreeMap::new();
        for (i, dag_op) in order.iter().enumerate() {
            let pos = i as u32;
            let outcome = if void.contains(&pos) {
                Outcome::Skipped("author was revoked concurrently".into())
            } else {
                match pass.apply(pos, dag_op) {
                    Ok(()) => Outcome::Applied,
                    Err(outcome) => outcome,
                }
            };
            outcomes.insert(dag_op.hash, outcome);
        }
        let mut newly_void = Vec::new();
        for &(r, peer) in &pass.revocations {
            for (i, dag_op) in order.iter().enumerate() {
                let p = i as u32;
                if dag_op.op.author == peer
                    && !ancestry.is_ancestor(p, r)
                    && !ancestry.is_ancestor(r, p)
                    && !void.contains(&p)
                    && outcomes[&dag_op.hash] == Outcome::Applied
                {
                    newly_void.push(p);
                }
            }
        }
        if newly_void.is_empty() {
            return Fold {
                state: pass.into_state(),
                outcomes,
            };
        }
        void.extend(newly_void);
    }
}
