//! The org a scenario describes: its charter (roles, channels, ACLs, policies, relays) and
//! every member's keys, all derived from the scenario's seed.

use crate::scenario::{FloorSpec, Scenario};
use callsign_keys::{Identity, NodeKeys};
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, EditError, FloorMode, OpBody, Permissions, Priority,
    RelayInfo, Role,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet};

/// The org a scenario describes, with every member's keys.
pub(crate) struct Org {
    pub(crate) charter: Charter,
    pub(crate) keys: Vec<NodeKeys>,
    pub(crate) channels: BTreeMap<String, ChannelId>,
}

pub(crate) fn build_org(scenario: &Scenario, seed: u64) -> Result<Org, EditError> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let root = Identity::generate(&mut rng);
    let keys: Vec<NodeKeys> = scenario
        .nodes
        .iter()
        .map(|_| NodeKeys::generate(&mut rng))
        .collect();
    let (mut charter, _) = Charter::create(&root, &scenario.name, 0)?;
    let roles: BTreeSet<&str> = scenario.nodes.iter().map(|n| n.role.as_str()).collect();
    for role in &roles {
        charter.edit(
            &root,
            OpBody::PutRole {
                name: (*role).into(),
                role: Role {
                    perms: Permissions::NONE,
                    priority: scenario
                        .priorities
                        .get(*role)
                        .and_then(|l| Priority::new(*l))
                        .unwrap_or(Priority::NORMAL),
                },
            },
            0,
        )?;
    }
    let mut channels = BTreeMap::new();
    for spec in &scenario.channels {
        charter.edit(
            &root,
            OpBody::AddChannel {
                parent: None,
                name: spec.name.clone(),
            },
            0,
        )?;
        let id = charter
            .state()
            .find(&format!("/{}", spec.name))
            .ok_or_else(|| EditError::Rejected(format!("channel {} missing", spec.name)))?;
        channels.insert(spec.name.clone(), id);
        if spec.floor == FloorSpec::HalfDuplex || !spec.relays.is_empty() {
            let preferred_relays = spec
                .relays
                .iter()
                .filter_map(|name| {
                    let at = scenario.nodes.iter().position(|n| n.name == *name)?;
                    Some(keys[at].identity.public())
                })
                .collect();
            charter.edit(
                &root,
                OpBody::SetChannelPolicy {
                    channel: id,
                    policy: ChannelPolicy {
                        floor: if spec.floor == FloorSpec::HalfDuplex {
                            FloorMode::HalfDuplex
                        } else {
                            FloorMode::Open
                        },
                        preferred_relays,
                        ..ChannelPolicy::default()
                    },
                },
                0,
            )?;
        }
        let speak = Permissions::LISTEN
            .union(Permissions::SPEAK)
            .union(Permissions::WHISPER);
        for role in &roles {
            let mut perms = if spec.speak.iter().any(|r| r == role) {
                speak
            } else if spec.listen.iter().any(|r| r == role) {
                Permissions::LISTEN
            } else {
                Permissions::NONE
            };
            if spec.monitor.iter().any(|r| r == role) {
                perms = perms.union(Permissions::MONITOR);
            }
            if perms == Permissions::NONE {
                continue;
            }
            charter.edit(
                &root,
                OpBody::SetChannelAcl {
                    channel: id,
                    role: (*role).into(),
                    perms: Some(perms),
                },
                0,
            )?;
        }
    }
    for spec in &scenario.channels {
        if let Some(spatial) = spec.spatial {
            charter.edit(
                &root,
                OpBody::SetSpatial {
                    channel: channels[&spec.name],
                    spatial: Some(spatial.to_charter()),
                },
                0,
            )?;
        }
        for to in &spec.links {
            charter.edit(
                &root,
                OpBody::LinkChannel {
                    from: channels[&spec.name],
                    to: channels[to],
                    linked: true,
                },
                0,
            )?;
        }
    }
    for conference in &scenario.conferences {
        charter.edit(
            &root,
            OpBody::SetConference {
                name: conference.name.clone(),
                channels: conference.channels.iter().map(|c| channels[c]).collect(),
            },
            0,
        )?;
    }
    for (spec, k) in scenario.nodes.iter().zip(&keys) {
        if spec.member {
            charter.edit(
                &root,
                OpBody::PutMember {
                    peer: k.identity.public(),
                    name: spec.name.clone(),
                    roles: vec![spec.role.clone()],
                },
                0,
            )?;
        }
        if spec.admin {
            charter.edit(
                &root,
                OpBody::GrantAdmin {
                    peer: k.identity.public(),
                },
                0,
            )?;
        }
        if spec.rented_relay {
            charter.edit(
                &root,
                OpBody::PutRelay {
                    peer: k.identity.public(),
                    info: RelayInfo {
                        addrs: Vec::new(),
                        capacity: spec.capacity.unwrap_or(1000),
                    },
                },
                0,
            )?;
        }
    }
    Ok(Org {
        charter,
        keys,
        channels,
    })
}
