//! Presence: signed, versioned, expiring records of who is online in an org, which channels
//! they listen to, whether they can relay, and where to reach them. Nodes gossip them over links;
//! a [`PresenceTable`] keeps the newest valid record per member and drops expired ones.
//!
//! Version 2 adds what the topology rule needs from every member: its RTT to each relay it is
//! linked to, and the relay it uses for each channel (see `topology`).
//!
//! Wire form (docs/protocol.md, "Presence record"): version byte `2` then the postcard encoding
//! of [`PresenceRecord`]; the signature covers the body under `callsign/presence/v1`. Only the
//! canonical encoding is accepted.

use crate::charter::{ChannelId, CharterState, Permissions};
use callsign_keys::{context::PRESENCE, Identity, IdentityKey, Signature};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version byte of presence records.
pub const PRESENCE_VERSION: u8 = 2;
/// Largest encoded record accepted.
pub const MAX_PRESENCE_BYTES: usize = 4096;
/// Longest lifetime a record may claim (a node re-announces well before).
pub const MAX_TTL_MS: u32 = 10 * 60 * 1000;
const MAX_NAME: usize = 64;
const MAX_LISTENING: usize = 64;
const MAX_ADDRS: usize = 16;
const MAX_RELAYS: usize = 16;

/// What a node offers as a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCapability {
    /// Reachable from the internet without hole punching (per autonat).
    pub public: bool,
    /// Uplink the node is willing to spend forwarding, in kb/s.
    pub spare_uplink_kbps: u32,
}

/// The signed content of a presence record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceBody {
    /// The org the record is for (its root key).
    pub org: IdentityKey,
    /// Whose presence this is; also the signer.
    pub peer: IdentityKey,
    /// Increases with every record the peer issues; newer replaces older.
    pub seq: u64,
    /// When the peer issued it (its clock, milliseconds since the Unix epoch).
    pub issued_at_ms: u64,
    /// How long after `issued_at_ms` the record stays valid.
    pub ttl_ms: u32,
    /// Name shown to others.
    pub display_name: String,
    /// Channels the peer listens to, sorted and unique.
    pub listening: Vec<ChannelId>,
    /// Relay offer.
    pub relay: RelayCapability,
    /// Multiaddrs (binary form) where the peer can be reached.
    pub addrs: Vec<Vec<u8>>,
    /// RTT in milliseconds to each relay the peer is linked to, sorted by relay, unique.
    pub relay_rtt_ms: Vec<(IdentityKey, u32)>,
    /// The relay the peer uses for each channel it listens to through one, sorted by channel,
    /// unique.
    pub routes: Vec<(ChannelId, IdentityKey)>,
    /// The upload the peer may spend on voice, kbit/s (0: not said); a channel whose speakers
    /// cannot send one stream per listener goes through a relay.
    pub uplink_kbps: u32,
}

/// A signed presence record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The signed content.
    pub body: PresenceBody,
    /// The peer's signature over the body.
    pub signature: Signature,
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PresenceError {
    /// Empty or larger than [`MAX_PRESENCE_BYTES`].
    #[error("presence record of {0} bytes")]
    Size(usize),
    /// A version this code does not speak.
    #[error("unknown presence version {0}")]
    Version(u8),
    /// Not a valid encoding.
    #[error("malformed presence record: {0}")]
    Malformed(String),
    /// Valid bytes but not the one canonical encoding.
    #[error("presence record is not canonically encoded")]
    NonCanonical,
    /// The signature does not verify.
    #[error("presence signature does not verify")]
    BadSignature,
    /// A field is out of bounds.
    #[error("presence record out of bounds: {0}")]
    Bounds(&'static str),
}

crate::wire::wire_error_into!(PresenceError);

fn body_bytes(body: &PresenceBody) -> Vec<u8> {
    // Serialising owned plain data into a Vec cannot fail.
    postcard::to_stdvec(body).expect("presence body serialises")
}

impl PresenceBody {
    fn check_bounds(&self) -> Result<(), PresenceError> {
        if self.display_name.len() > MAX_NAME {
            return Err(PresenceError::Bounds("display name longer than 64 bytes"));
        }
        if self.listening.len() > MAX_LISTENING {
            return Err(PresenceError::Bounds("more than 64 channels"));
        }
        if self.listening.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PresenceError::Bounds("channels not sorted and unique"));
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(PresenceError::Bounds("more than 16 addresses"));
        }
        if self.relay_rtt_ms.len() > MAX_RELAYS
            || self.relay_rtt_ms.windows(2).any(|w| w[0].0 >= w[1].0)
        {
            return Err(PresenceError::Bounds(
                "relay RTTs: more than 16, or not sorted and unique",
            ));
        }
        if self.routes.len() > MAX_LISTENING || self.routes.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(PresenceError::Bounds(
                "routes: more than 64, or not sorted and unique",
            ));
        }
        if self.ttl_ms == 0 || self.ttl_ms > MAX_TTL_MS {
            return Err(PresenceError::Bounds("ttl outside 1 ms to 10 minutes"));
        }
        Ok(())
    }

    /// When the record stops being valid.
    pub fn expires_at_ms(&self) -> u64 {
        self.issued_at_ms.saturating_add(u64::from(self.ttl_ms))
    }
}

impl PresenceRecord {
    /// Whether this member hears `channel`: it says it listens there and the charter lets it.
    /// The one test of an audience, for fan-out, routing and counting.
    pub fn hears(&self, state: &CharterState, channel: ChannelId) -> bool {
        self.body.listening.binary_search(&channel).is_ok()
            && state.may(&self.body.peer, channel, Permissions::LISTEN)
    }

    /// Signs `body` (whose `peer` must be `identity`; `listening` is sorted here).
    pub fn sign(identity: &Identity, mut body: PresenceBody) -> Result<Self, PresenceError> {
        body.peer = identity.public();
        body.listening.sort();
        body.listening.dedup();
        body.relay_rtt_ms.sort();
        body.relay_rtt_ms.dedup_by_key(|(relay, _)| *relay);
        body.routes.sort();
        body.routes.dedup_by_key(|(channel, _)| *channel);
        body.check_bounds()?;
        let signature = identity.sign(PRESENCE, &body_bytes(&body));
        Ok(Self { body, signature })
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(PRESENCE_VERSION, self)
    }

    /// Decodes and checks size, version, canonical form, bounds and signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, PresenceError> {
        let record: Self = crate::wire::decode(PRESENCE_VERSION, MAX_PRESENCE_BYTES, bytes)?;
        if record.encode() != bytes {
            return Err(PresenceError::NonCanonical);
        }
        record.body.check_bounds()?;
        record
            .body
            .peer
            .verify(PRESENCE, &body_bytes(&record.body), &record.signature)
            .map_err(|_| PresenceError::BadSignature)?;
        Ok(record)
    }
}

/// What [`PresenceTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceUpdate {
    /// A member came online.
    Joined,
    /// A newer record replaced the member's previous one.
    Updated,
    /// Not newer than what is held: ignored.
    Stale,
    /// Already expired at `now`: ignored.
    Expired,
    /// For another org, or from someone the charter does not list as a member: ignored.
    NotMember,
}

/// The newest valid presence per member of one org.
#[derive(Clone, Debug)]
pub struct PresenceTable {
    org: IdentityKey,
    records: BTreeMap<IdentityKey, PresenceRecord>,
}

impl PresenceTable {
    /// An empty table for `org`.
    pub fn new(org: IdentityKey) -> Self {
        Self {
            org,
            records: BTreeMap::new(),
        }
    }

    /// Adds a verified record (from [`PresenceRecord::decode`]) if it is for this org, from a
    /// member (`is_member`, answered from the charter), unexpired at `now_ms` and newer than the
    /// one held.
    pub fn insert(
        &mut self,
        record: PresenceRecord,
        now_ms: u64,
        is_member: impl Fn(&IdentityKey) -> bool,
    ) -> PresenceUpdate {
        let body = &record.body;
        if body.org != self.org || !is_member(&body.peer) {
            return PresenceUpdate::NotMember;
        }
        if body.expires_at_ms() <= now_ms {
            return PresenceUpdate::Expired;
        }
        match self.records.get(&body.peer) {
            Some(held) if held.body.seq >= body.seq => PresenceUpdate::Stale,
            Some(_) => {
                self.records.insert(body.peer, record);
                PresenceUpdate::Updated
            }
            None => {
                self.records.insert(body.peer, record);
                PresenceUpdate::Joined
            }
        }
    }

    /// Drops records expired at `now_ms` (and members the charter no longer lists), returning
    /// who left, in key order.
    pub fn expire(
        &mut self,
        now_ms: u64,
        is_member: impl Fn(&IdentityKey) -> bool,
    ) -> Vec<IdentityKey> {
        let gone: Vec<IdentityKey> = self
            .records
            .iter()
            .filter(|(peer, r)| r.body.expires_at_ms() <= now_ms || !is_member(peer))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &gone {
            self.records.remove(peer);
        }
        gone
    }

    /// The record held for `peer`.
    pub fn get(&self, peer: &IdentityKey) -> Option<&PresenceRecord> {
        self.records.get(peer)
    }

    /// Members present, in key order.
    pub fn present(&self) -> impl Iterator<Item = &PresenceRecord> {
        self.records.values()
    }

    /// Members present who [hear](PresenceRecord::hears) `channel`, in key order.
    pub fn hearers<'a>(
        &'a self,
        state: &'a CharterState,
        channel: ChannelId,
    ) -> impl Iterator<Item = &'a IdentityKey> + 'a {
        self.records
            .values()
            .filter(move |r| r.hears(state, channel))
            .map(|r| &r.body.peer)
    }

    /// Members present who say they listen to `channel`, in key order (the charter unchecked).
    pub fn listeners(&self, channel: ChannelId) -> impl Iterator<Item = &IdentityKey> {
        self.records
            .iter()
            .filter(move |(_, r)| r.body.listening.binary_search(&channel).is_ok())
            .map(|(peer, _)| peer)
    }
}
