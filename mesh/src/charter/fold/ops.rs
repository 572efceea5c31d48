//! The fold's rules per kind of op: the channel tree and its ACLs and policies; roles,
//! members, admins and relays; presets. Each checks the author's authority in the op's causal
//! past and records the change at its position.

use super::{derived_channel_id, reject, skip, ChannelNode, Pass, Verdict};
use crate::charter::dag::DagOp;
use crate::charter::model::{check_name, ChannelId, Member};
use crate::charter::op::{OpBody, OpHash};
use std::collections::BTreeSet;

/// Channels in one conference, at most.
const MAX_CONFERENCE: usize = 64;

impl Pass<'_> {
    /// A channel op: add, move, rename, remove, ACL, policy.
    pub(super) fn apply_channel(&mut self, at: (u32, OpHash), dag_op: &DagOp) -> Verdict {
        let pos = at.0;
        let author = &dag_op.op.author;
        match &dag_op.op.body {
            OpBody::AddChannel { parent, name } => {
                check_name("channel", name).or_else(reject)?;
                self.require_manage(author, *parent, pos)?;
                self.require_alive(*parent)?;
                let id = ChannelId(dag_op.hash.prefix_u64());
                self.add_channel(at, id, *parent, name)?;
            }
            OpBody::MoveChannel { channel, parent } => {
                self.require_manage(author, Some(*channel), pos)?;
                self.require_manage(author, *parent, pos)?;
                self.require_alive(Some(*channel))?;
                self.require_alive(*parent)?;
                if parent.is_some_and(|p| self.is_in_subtree(p, *channel)) {
                    return skip("move would put the channel inside itself");
                }
                let name = self.channels[channel]
                    .current(self.ancestry)
                    .map(|n| n.name.clone())
                    .unwrap_or_default();
                if self.name_taken(*parent, &name, Some(*channel)) {
                    return skip(format!("a channel named {name:?} already exists there"));
                }
                self.channels.entry(*channel).or_default().set(
                    at,
                    Some(ChannelNode {
                        name,
                        parent: *parent,
                    }),
                );
            }
            OpBody::RenameChannel { channel, name } => {
                check_name("channel", name).or_else(reject)?;
                self.require_manage(author, Some(*channel), pos)?;
                self.require_alive(Some(*channel))?;
                let parent = self.channels[channel]
                    .current(self.ancestry)
                    .and_then(|n| n.parent);
                if self.name_taken(parent, name, Some(*channel)) {
                    return skip(format!("a channel named {name:?} already exists there"));
                }
                self.channels.entry(*channel).or_default().set(
                    at,
                    Some(ChannelNode {
                        name: name.clone(),
                        parent,
                    }),
                );
            }
            OpBody::RemoveChannel { channel } => {
                self.require_manage(author, Some(*channel), pos)?;
                self.require_alive(Some(*channel))?;
                self.channels.entry(*channel).or_default().set(at, None);
            }
            OpBody::SetChannelAcl {
                channel,
                role,
                perms,
            } => {
                check_name("role", role).or_else(reject)?;
                if perms.is_some_and(|p| !p.is_known()) {
                    return reject("unknown permission bits");
                }
                self.require_manage(author, Some(*channel), pos)?;
                self.require_alive(Some(*channel))?;
                self.acl
                    .entry((*channel, role.clone()))
                    .or_default()
                    .set(at, *perms);
            }
            OpBody::SetChannelPolicy { channel, policy } => {
                if policy.mesh_threshold == 0 {
                    return reject("mesh threshold must be at least 1");
                }
                self.require_manage(author, Some(*channel), pos)?;
                self.require_alive(Some(*channel))?;
                self.policies.insert(*channel, policy.clone());
            }
            _ => unreachable!("dispatched by kind"),
        }
        Ok(())
    }

    /// A routing op: channel links, conferences, recording policy.
    pub(super) fn apply_routing(&mut self, at: (u32, OpHash), dag_op: &DagOp) -> Verdict {
        let pos = at.0;
        let author = &dag_op.op.author;
        match &dag_op.op.body {
            OpBody::LinkChannel { from, to, linked } => {
                if from == to {
                    return reject("a channel cannot link to itself");
                }
                self.require_manage(author, Some(*from), pos)?;
                self.require_manage(author, Some(*to), pos)?;
                if *linked {
                    self.require_alive(Some(*from))?;
                    self.require_alive(Some(*to))?;
                    self.links.insert((*from, *to));
                } else {
                    self.links.remove(&(*from, *to));
                }
            }
            OpBody::SetConference { name, channels } => {
                check_name("conference", name).or_else(reject)?;
                if channels.len() > MAX_CONFERENCE {
                    return reject(format!(
                        "a conference has at most {MAX_CONFERENCE} channels"
                    ));
                }
                self.require_admin(author, pos)?;
                let channels: BTreeSet<ChannelId> = channels.iter().copied().collect();
                if channels.len() < 2 {
                    self.conferences.remove(name);
                } else {
                    self.conferences.insert(name.clone(), channels);
                }
            }
            OpBody::SetRecording { channel, policy } => {
                self.require_manage(author, Some(*channel), pos)?;
                self.require_alive(Some(*channel))?;
                match policy {
                    Some(p) => self.recording.insert(*channel, *p),
                    None => self.recording.remove(channel),
                };
            }
            OpBody::SetSpatial { channel, spatial } => {
                self.require_manage(author, Some(*channel), pos)?;
                self.require_alive(Some(*channel))?;
                match spatial {
                    Some(s) => {
                        s.check().map_err(|e| e.to_string()).or_else(reject)?;
                        self.spatial.insert(*channel, *s)
                    }
                    None => self.spatial.remove(channel),
                };
            }
            _ => unreachable!("dispatched by kind"),
        }
        Ok(())
    }

    /// An op on roles, members, admins or rented relays.
    pub(super) fn apply_people(&mut self, at: (u32, OpHash), dag_op: &DagOp) -> Verdict {
        let pos = at.0;
        let author = &dag_op.op.author;
        match &dag_op.op.body {
            OpBody::PutRole { name, role } => {
                check_name("role", name).or_else(reject)?;
                if !role.perms.is_known() {
                    return reject("unknown permission bits");
                }
                self.require_admin(author, pos)?;
                self.roles
                    .entry(name.clone())
                    .or_default()
                    .set(at, Some(role.clone()));
            }
            OpBody::RemoveRole { name } => {
                self.require_admin(author, pos)?;
                self.roles.entry(name.clone()).or_default().set(at, None);
            }
            OpBody::PutMember { peer, name, roles } => {
                check_name("member", name).or_else(reject)?;
                for role in roles {
                    check_name("role", role).or_else(reject)?;
                }
                if roles.windows(2).any(|w| w[0] >= w[1]) {
                    return reject("member roles must be sorted and unique");
                }
                self.require_admin(author, pos)?;
                self.members.entry(*peer).or_default().set(
                    at,
                    Some(Member {
                        name: name.clone(),
                        roles: roles.clone(),
                    }),
                );
            }
            OpBody::AdmitMember {
                peer,
                name,
                role,
                invite,
            } => {
                check_name("member", name).or_else(reject)?;
                check_name("role", role).or_else(reject)?;
                self.require_admin(author, pos)?;
                if !self.invites.insert(*invite) {
                    return skip("invite already used");
                }
                self.members.entry(*peer).or_default().set(
                    at,
                    Some(Member {
                        name: name.clone(),
                        roles: vec![role.clone()],
                    }),
                );
            }
            OpBody::RemoveMember { peer } => {
                self.require_admin(author, pos)?;
                self.members.entry(*peer).or_default().set(at, None);
                self.revocations.push((pos, *peer));
            }
            OpBody::GrantAdmin { peer } => {
                self.require_admin(author, pos)?;
                self.admins.entry(*peer).or_default().set(at, Some(()));
            }
            OpBody::RevokeAdmin { peer } => {
                if *peer == self.org {
                    return reject("the org root cannot be revoked");
                }
                self.require_admin(author, pos)?;
                self.admins.entry(*peer).or_default().set(at, None);
                self.revocations.push((pos, *peer));
            }
            OpBody::PutRelay { peer, info } => {
                self.require_admin(author, pos)?;
                self.relays.insert(*peer, info.clone());
            }
            OpBody::RemoveRelay { peer } => {
                self.require_admin(author, pos)?;
                self.relays.remove(peer);
            }
            _ => unreachable!("dispatched by kind"),
        }
        Ok(())
    }

    /// A preset op: define, remove, apply.
    pub(super) fn apply_preset(&mut self, at: (u32, OpHash), dag_op: &DagOp) -> Verdict {
        let pos = at.0;
        let author = &dag_op.op.author;
        match &dag_op.op.body {
            OpBody::DefinePreset { name, preset } => {
                check_name("preset", name).or_else(reject)?;
                for (i, ch) in preset.channels.iter().enumerate() {
                    check_name("channel", &ch.name).or_else(reject)?;
                    if ch.parent.is_some_and(|p| p as usize >= i) {
                        return reject("preset channel parents must come first");
                    }
                }
                self.require_admin(author, pos)?;
                self.presets.insert(name.clone(), preset.clone());
            }
            OpBody::RemovePreset { name } => {
                self.require_admin(author, pos)?;
                self.presets.remove(name);
            }
            OpBody::ApplyPreset { name, parent } => {
                self.require_manage(author, *parent, pos)?;
                self.require_alive(*parent)?;
                let Some(preset) = self.presets.get(name).cloned() else {
                    return skip(format!("no preset named {name:?}"));
                };
                for ch in preset.channels.iter().filter(|c| c.parent.is_none()) {
                    if self.name_taken(*parent, &ch.name, None) {
                        return skip(format!(
                            "a channel named {:?} already exists there",
                            ch.name
                        ));
                    }
                }
                let mut ids = Vec::with_capacity(preset.channels.len());
                for (i, ch) in preset.channels.iter().enumerate() {
                    let id = derived_channel_id(&dag_op.hash, i);
                    let ch_parent = match ch.parent {
                        Some(p) => Some(ids[p as usize]),
                        None => *parent,
                    };
                    // Sibling names inside a preset may repeat; later ones are skipped silently.
                    if self.add_channel(at, id, ch_parent, &ch.name).is_err() {
                        ids.push(id);
                        continue;
                    }
                    for (role, perms) in &ch.acl {
                        self.acl
                            .entry((id, role.clone()))
                            .or_default()
                            .set(at, Some(*perms));
                    }
                    self.policies.insert(id, ch.policy.clone());
                    ids.push(id);
                }
            }
            _ => unreachable!("dispatched by kind"),
        }
        Ok(())
    }
}
