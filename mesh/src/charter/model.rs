//! The vocabulary of a charter: channels, permissions, roles, policies, relays, presets.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Names (org, channel, role, member, preset) are at most this many bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A channel's stable id, derived from the op that created it (so concurrent creators never
/// pick the same id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelId(pub u64);

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ch:{:016x}", self.0)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A set of channel permissions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Permissions(u8);

impl Permissions {
    /// Hear the channel.
    pub const LISTEN: Self = Self(1);
    /// Transmit on the channel.
    pub const SPEAK: Self = Self(2);
    /// Whisper to members of the channel.
    pub const WHISPER: Self = Self(4);
    /// Edit the channel's subtree, ACLs and policy.
    pub const MANAGE: Self = Self(8);
    /// Hear the channel silently: out of its roster, never transmitting on it (staff
    /// monitoring a net).
    pub const MONITOR: Self = Self(16);
    /// No permission.
    pub const NONE: Self = Self(0);
    /// Every permission.
    pub const ALL: Self = Self(31);

    const NAMES: [(Self, &'static str); 5] = [
        (Self::LISTEN, "listen"),
        (Self::SPEAK, "speak"),
        (Self::WHISPER, "whisper"),
        (Self::MANAGE, "manage"),
        (Self::MONITOR, "monitor"),
    ];

    /// Whether every permission in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether unknown bits are set (a newer peer's permission we cannot interpret).
    pub const fn is_known(self) -> bool {
        self.0 & !Self::ALL.0 == 0
    }

    /// Parses a comma-separated list such as `listen,speak`.
    pub fn parse_list(text: &str) -> Result<Self, String> {
        let mut perms = Self::NONE;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let (perm, _) = Self::NAMES
                .iter()
                .find(|(_, name)| name.eq_ignore_ascii_case(word))
                .ok_or_else(|| {
                    format!("unknown permission {word:?} (listen, speak, whisper, manage, monitor)")
                })?;
            perms = perms.union(*perm);
        }
        Ok(perms)
    }

    /// Permission names in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(perm, _)| self.contains(*perm))
            .map(|(_, name)| *name)
            .collect()
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({})", self.names().join(","))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::NONE {
            f.write_str("none")
        } else {
            f.write_str(&self.names().join(","))
        }
    }
}

/// Floor priority, as in MCPTT: who may pre-empt whom on half-duplex channels.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct Priority(u8);

impl Priority {
    /// 0: may not request the floor.
    pub const NONE: Self = Self(0);
    /// 1.
    pub const LOW: Self = Self(1);
    /// 2: the default.
    pub const NORMAL: Self = Self(2);
    /// 3.
    pub const HIGH: Self = Self(3);
    /// 4: never pre-empted.
    pub const EMERGENCY: Self = Self(4);

    /// A priority from 0 to 4.
    pub fn new(level: u8) -> Option<Self> {
        (level <= 4).then_some(Self(level))
    }

    /// The level, 0 to 4.
    pub const fn level(self) -> u8 {
        self.0
    }
}

/// A role: a named permission bundle with a floor priority.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Role {
    /// Permissions on every channel unless a channel's ACL overrides them for this role.
    pub perms: Permissions,
    /// Floor priority on half-duplex channels.
    pub priority: Priority,
}

/// How the floor works on a channel.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum FloorMode {
    /// Anyone with speak permission talks at any time.
    #[default]
    Open,
    /// One talker at a time, by priority.
    HalfDuplex,
}

/// Per-channel transport and floor policy.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChannelPolicy {
    /// Mesh fan-out while listeners are at most this; a relay beyond it.
    pub mesh_threshold: u8,
    /// Relays (peer ids' keys) to prefer for this channel.
    pub preferred_relays: Vec<callsign_keys::IdentityKey>,
    /// Open or half-duplex.
    pub floor: FloorMode,
}

impl Default for ChannelPolicy {
    fn default() -> Self {
        Self {
            mesh_threshold: 6,
            preferred_relays: Vec::new(),
            floor: FloorMode::Open,
        }
    }
}

/// Whether members may record a channel (what they hear of it, to a file of their own).
/// Recorders are always shown to everyone listening; relays never record (they cannot
/// decrypt).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub enum RecordingPolicy {
    /// Recording allowed; recorders are marked in the roster.
    Allowed,
    /// Recording allowed; recorders are marked and every listener is told when one starts
    /// (the app's banner, the API's `recording` event). The default.
    #[default]
    Notice,
    /// Nobody records this channel: nodes refuse, and stop a running recording.
    Forbidden,
}

impl RecordingPolicy {
    /// Parses `allowed`, `notice` or `forbidden`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "allowed" | "allow" => Ok(Self::Allowed),
            "notice" => Ok(Self::Notice),
            "forbidden" | "forbid" => Ok(Self::Forbidden),
            other => Err(format!(
                "unknown recording policy {other:?} (allowed, notice, forbidden)"
            )),
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Notice => "notice",
            Self::Forbidden => "forbidden",
        }
    }
}

/// A member: display name and roles.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Member {
    /// Display name.
    pub name: String,
    /// Role names (sorted, no duplicates).
    pub roles: Vec<String>,
}

/// A relay the org rents.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RelayInfo {
    /// Binary multiaddrs.
    pub addrs: Vec<Vec<u8>>,
    /// Subscribers it will serve.
    pub capacity: u32,
}

/// One channel in a preset; `parent` indexes an earlier entry of the same preset.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PresetChannel {
    /// Channel name.
    pub name: String,
    /// Index of the parent within the preset, or `None` for the preset's root level.
    pub parent: Option<u16>,
    /// Per-role permission overrides.
    pub acl: BTreeMap<String, Permissions>,
    /// Policy.
    pub policy: ChannelPolicy,
}

/// A channel subtree that can be stamped out in one op (e.g. one wing of an operation).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Preset {
    /// The channels, parents before children.
    pub channels: Vec<PresetChannel>,
}

/// Checks a name's length and characters (no control characters, no `/`, which separates paths).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("{kind} name must be 1 to {MAX_NAME_LEN} bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!(
            "{kind} name {name:?} contains '/' or a control character"
        ));
    }
    Ok(())
}
