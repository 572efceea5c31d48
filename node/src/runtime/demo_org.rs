//! A ready-made org for demos, tests and screenshots: `/command` (officers speak, pilots
//! listen, recruits have no access), `/flight` (everyone speaks and whispers) and `/net`
//! (half-duplex: one talker at a time, officers pre-empt), with node 0 the root (an officer),
//! then pilot, recruit, officer, pilot, recruit, … in turn.

use callsign_keys::{Identity, NodeKeys};
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, EditError, FloorMode, OpBody, Permissions, Priority, Role,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The demo roles, by node index after the root.
const ROTATION: [&str; 3] = ["pilot", "recruit", "officer"];

/// One demo member.
#[derive(Clone, Debug)]
pub struct DemoMember {
    pub name: String,
    pub role: &'static str,
    pub keys: NodeKeys,
}

/// See the module documentation.
pub struct DemoOrg {
    pub root: Identity,
    pub charter: Charter,
    pub command: ChannelId,
    pub flight: ChannelId,
    /// Half-duplex.
    pub net: ChannelId,
    pub members: Vec<DemoMember>,
}

impl DemoOrg {
    /// `nodes` members (at least 1), keys from `seed`.
    pub fn new(nodes: usize, seed: u64) -> Result<Self, EditError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let members: Vec<DemoMember> = (0..nodes.max(1))
            .map(|i| {
                let role = if i == 0 {
                    "officer"
                } else {
                    ROTATION[(i - 1) % ROTATION.len()]
                };
                DemoMember {
                    name: format!("{}-{i}", role),
                    role,
                    keys: NodeKeys::generate(&mut rng),
                }
            })
            .collect();
        let root = members[0].keys.identity.clone();
        let (mut charter, _) = Charter::create(&root, "Demo Wing", 0)?;
        let everything = Permissions::LISTEN
            .union(Permissions::SPEAK)
            .union(Permissions::WHISPER);
        for (name, priority) in [
            ("officer", Priority::HIGH),
            ("pilot", Priority::NORMAL),
            ("recruit", Priority::LOW),
        ] {
            charter.edit(
                &root,
                OpBody::PutRole {
                    name: name.into(),
                    role: Role {
                        perms: everything,
                        priority,
                    },
                },
                0,
            )?;
        }
        for name in ["command", "flight", "net"] {
            charter.edit(
                &root,
                OpBody::AddChannel {
                    parent: None,
                    name: name.into(),
                },
                0,
            )?;
        }
        let find = |c: &Charter, path: &str| {
            c.state()
                .find(path)
                .ok_or_else(|| EditError::Rejected(format!("{path} missing")))
        };
        let command = find(&charter, "/command")?;
        let flight = find(&charter, "/flight")?;
        let net = find(&charter, "/net")?;
        charter.edit(
            &root,
            OpBody::SetChannelPolicy {
                channel: net,
                policy: ChannelPolicy {
                    floor: FloorMode::HalfDuplex,
                    ..ChannelPolicy::default()
                },
            },
            0,
        )?;
        for (role, perms) in [
            ("pilot", Permissions::LISTEN),
            ("recruit", Permissions::NONE),
        ] {
            charter.edit(
                &root,
                OpBody::SetChannelAcl {
                    channel: command,
                    role: role.into(),
                    perms: Some(perms),
                },
                0,
            )?;
        }
        for member in &members[1..] {
            charter.edit(
                &root,
                OpBody::PutMember {
                    peer: member.keys.identity.public(),
                    name: member.name.clone(),
                    roles: vec![member.role.into()],
                },
                0,
            )?;
        }
        Ok(Self {
            root,
            charter,
            command,
            flight,
            net,
            members,
        })
    }

    /// The channels member `i` may listen to.
    pub fn channels_for(&self, i: usize) -> Vec<ChannelId> {
        let key = self.members[i].keys.identity.public();
        [self.command, self.flight, self.net]
            .into_iter()
            .filter(|c| self.charter.state().may(&key, *c, Permissions::LISTEN))
            .collect()
    }

    /// A member's name, or its key if it is not one of ours.
    pub fn member_name(&self, key: &callsign_keys::IdentityKey) -> String {
        self.members
            .iter()
            .find(|m| m.keys.identity.public() == *key)
            .map_or_else(|| key.to_string(), |m| m.name.clone())
    }

    /// The channel's name without the leading slash.
    pub fn channel_name(&self, channel: ChannelId) -> String {
        self.charter
            .state()
            .path(channel)
            .map(|p| p.trim_start_matches('/').to_string())
            .unwrap_or_else(|| channel.to_string())
    }
}
