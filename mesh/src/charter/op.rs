//! Charter operations: their body, canonical encoding, content hash and signature.
//!
//! Wire form (see `docs/protocol.md`): `OP_VERSION u8 | postcard(OpWire)`. The signature is by
//! `author` under `callsign/charter-op/v1` over `OP_VERSION | postcard(content without signature)`.
//! The hash is SHA-256 of the wire form. Decoding re-encodes and refuses anything that is not
//! byte-identical, so every op has exactly one encoding and one hash.

use std::fmt;

use callsign_keys::{context::CHARTER_OP, Identity, IdentityKey, Signature};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{
    ChannelId, ChannelPolicy, Permissions, Preset, RecordingPolicy, RelayInfo, Role,
};

/// The op encoding version this build writes and reads.
pub const OP_VERSION: u8 = 1;
/// Encoded ops larger than this are refused.
pub const MAX_OP_BYTES: usize = 64 * 1024;
/// An op has at most this many parents.
pub const MAX_PARENTS: usize = 16;

/// SHA-256 of an op's wire form: its name in the DAG.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpHash(pub [u8; 32]);

impl OpHash {
    /// The hash of an op's wire form.
    pub fn of_encoded(encoded: &[u8]) -> Self {
        Self(Sha256::digest(encoded).into())
    }

    /// The first 8 bytes as an integer, used to derive ids.
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Debug for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op:")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What an op does.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum OpBody {
    /// The genesis op, by the org root key, with no parents.
    CreateOrg {
        /// Org display name.
        name: String,
    },
    /// A channel under `parent` (top level if `None`). Its id derives from this op's hash.
    AddChannel {
        /// Parent channel.
        parent: Option<ChannelId>,
        /// Name, unique among siblings.
        name: String,
    },
    /// Re-parents a channel.
    MoveChannel {
        /// The channel.
        channel: ChannelId,
        /// New parent.
        parent: Option<ChannelId>,
    },
    /// Renames a channel.
    RenameChannel {
        /// The channel.
        channel: ChannelId,
        /// New name.
        name: String,
    },
    /// Removes a channel and its subtree.
    RemoveChannel {
        /// The channel.
        channel: ChannelId,
    },
    /// Overrides (or, with `None`, stops overriding) a role's permissions on a channel.
    SetChannelAcl {
        /// The channel.
        channel: ChannelId,
        /// The role.
        role: String,
        /// The permissions, or `None` to inherit from the parent again.
        perms: Option<Permissions>,
    },
    /// Sets a channel's policy.
    SetChannelPolicy {
        /// The channel.
        channel: ChannelId,
        /// The policy.
        policy: ChannelPolicy,
    },
    /// Adds or updates a role.
    PutRole {
        /// Role name.
        name: String,
        /// Its bundle.
        role: Role,
    },
    /// Removes a role (members keep the name, which then grants nothing).
    RemoveRole {
        /// Role name.
        name: String,
    },
    /// Adds or updates a member.
    PutMember {
        /// The member's identity.
        peer: IdentityKey,
        /// Display name.
        name: String,
        /// Role names, sorted, no duplicates.
        roles: Vec<String>,
    },
    /// Removes a member. Their ops concurrent with this one are void (see `docs/protocol.md`).
    RemoveMember {
        /// The member.
        peer: IdentityKey,
    },
    /// Makes a peer an admin.
    GrantAdmin {
        /// The peer.
        peer: IdentityKey,
    },
    /// Revokes admin. The peer's ops concurrent with this one are void.
    RevokeAdmin {
        /// The peer.
        peer: IdentityKey,
    },
    /// Registers or updates a rented relay.
    PutRelay {
        /// The relay's identity.
        peer: IdentityKey,
        /// Where and how much.
        info: RelayInfo,
    },
    /// Unregisters a relay.
    RemoveRelay {
        /// The relay.
        peer: IdentityKey,
    },
    /// Defines or replaces a preset.
    DefinePreset {
        /// Preset name.
        name: String,
        /// The template.
        preset: Preset,
    },
    /// Removes a preset.
    RemovePreset {
        /// Preset name.
        name: String,
    },
    /// Stamps out a preset's channels under `parent`.
    ApplyPreset {
        /// Preset name.
        name: String,
        /// Where to put it.
        parent: Option<ChannelId>,
    },
    /// Admits a newcomer who redeemed an invite grant: a member with the grant's role. The
    /// grant's nonce is recorded, so each invite admits once (the first in fold order wins).
    AdmitMember {
        /// The newcomer's identity.
        peer: IdentityKey,
        /// Display name.
        name: String,
        /// The grant's role.
        role: String,
        /// The grant's single-use nonce.
        invite: [u8; 16],
    },
    /// Links (or, with `linked: false`, unlinks) `from` into `to`: listeners of `to` hear the
    /// talkers of `from`. One way; both ways is two ops. Needs manage on both channels.
    LinkChannel {
        /// Whose talkers are carried.
        from: ChannelId,
        /// Whose listeners hear them.
        to: ChannelId,
        /// Linked or not.
        linked: bool,
    },
    /// Defines or replaces a conference: channels heard as one (every talker on any of them is
    /// heard on all). Fewer than two channels removes it. Admins only.
    SetConference {
        /// Conference name.
        name: String,
        /// Its channels.
        channels: Vec<ChannelId>,
    },
    /// Sets (or, with `None`, inherits from the parent again) a channel's recording policy.
    SetRecording {
        /// The channel.
        channel: ChannelId,
        /// The policy.
        policy: Option<RecordingPolicy>,
    },
    /// Makes a channel positional or proximity (or, with `None`, plain again).
    SetSpatial {
        /// The channel.
        channel: ChannelId,
        /// Its settings.
        spatial: Option<crate::spatial::Spatial>,
    },
}

/// A signed charter operation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Op {
    /// The org (root key) this op belongs to; binds the op to one charter.
    pub org: IdentityKey,
    /// Who made it.
    pub author: IdentityKey,
    /// Hashes of the heads the author had seen, sorted, no duplicates.
    pub parents: Vec<OpHash>,
    /// Author's clock, Unix milliseconds. Informational only: never used for ordering.
    pub timestamp_ms: u64,
    /// What it does.
    pub body: OpBody,
    /// `author`'s signature over the content.
    pub signature: Signature,
}

#[derive(Serialize)]
struct OpContent<'a> {
    version: u8,
    org: &'a IdentityKey,
    author: &'a IdentityKey,
    parents: &'a [OpHash],
    timestamp_ms: u64,
    body: &'a OpBody,
}

/// Why bytes are not a valid op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpDecodeError {
    /// Empty or oversize.
    #[error("op size {0} outside 1..={MAX_OP_BYTES} bytes")]
    Size(usize),
    /// Unknown encoding version.
    #[error("unsupported op version {0} (this build reads {OP_VERSION})")]
    Version(u8),
    /// Structurally broken.
    #[error("malformed op: {0}")]
    Malformed(String),
    /// Decodes, but not to the canonical bytes.
    #[error("op is not canonically encoded")]
    NonCanonical,
    /// Signature does not verify under the charter-op context.
    #[error("op signature does not verify")]
    BadSignature,
}

crate::wire::wire_error_into!(OpDecodeError);

impl Op {
    /// Creates and signs an op. `parents` are sorted and de-duplicated here.
    pub fn sign(
        author: &Identity,
        org: IdentityKey,
        mut parents: Vec<OpHash>,
        timestamp_ms: u64,
        body: OpBody,
    ) -> Self {
        parents.sort();
        parents.dedup();
        let author_key = author.public();
        let content = content_bytes(&org, &author_key, &parents, timestamp_ms, &body);
        let signature = author.sign(CHARTER_OP, &content);
        Self {
            org,
            author: author_key,
            parents,
            timestamp_ms,
            body,
            signature,
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(OP_VERSION, self)
    }

    /// The content hash.
    pub fn hash(&self) -> OpHash {
        OpHash::of_encoded(&self.encode())
    }

    /// Decodes and checks canonical form and signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, OpDecodeError> {
        let op: Op = crate::wire::decode(OP_VERSION, MAX_OP_BYTES, bytes)?;
        if op.encode() != bytes {
            return Err(OpDecodeError::NonCanonical);
        }
        if op.parents.len() > MAX_PARENTS {
            return Err(OpDecodeError::Malformed(format!(
                "{} parents, at most {MAX_PARENTS}",
                op.parents.len()
            )));
        }
        if op.parents.windows(2).any(|w| w[0] >= w[1]) {
            return Err(OpDecodeError::Malformed(
                "parents not sorted and unique".into(),
            ));
        }
        op.verify()?;
        Ok(op)
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), OpDecodeError> {
        let content = content_bytes(
            &self.org,
            &self.author,
            &self.parents,
            self.timestamp_ms,
            &self.body,
        );
        self.author
            .verify(CHARTER_OP, &content, &self.signature)
            .map_err(|_| OpDecodeError::BadSignature)
    }
}

fn content_bytes(
    org: &IdentityKey,
    author: &IdentityKey,
    parents: &[OpHash],
    timestamp_ms: u64,
    body: &OpBody,
) -> Vec<u8> {
    let content = OpContent {
        version: OP_VERSION,
        org,
        author,
        parents,
        timestamp_ms,
        body,
    };
    postcard::to_stdvec(&content).expect("op content serialises")
}
