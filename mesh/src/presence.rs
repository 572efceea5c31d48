//! Presence: signed, versioned, expiring records of who is online in an org, which channels
//! they listen to, whether they can relay, and where to reach them. Nodes gossip them over links;
//! a [`PresenceTable`] keeps the newest valid record per member and drops expired ones.
//!
//! Version 2 adds what the topology rule needs from every member: its RTT to each relay it is
//! linked to, and the relay it uses for each channel (see `topology`). Version 3 adds the tags of
//! the peers the member is linked to, so gossip skips peers that hear the member first-hand.
//!
//! Wire form (docs/protocol.md, "Presence record"): version byte `3` then the postcard encoding
//! of [`PresenceRecord`]; the signature covers the body under `callsign/presence/v1`. Only the
//! canonical encoding is accepted.

use crate::charter::{ChannelId, CharterState, Permissions};
use callsign_keys::{context::PRESENCE, Identity, IdentityKey, Signature};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version byte of presence records.
pub const PRESENCE_VERSION: u8 = 6;
/// Largest encoded record accepted.
pub const MAX_PRESENCE_BYTES: usize = 4096;
/// Longest lifetime a record may claim (a node re-announces well before).
pub const MAX_TTL_MS: u32 = 10 * 60 * 1000;
const MAX_NAME: usize = 64;
const MAX_LISTENING: usize = 64;
const MAX_ADDRS: usize = 16;
const MAX_RELAYS: usize = 16;
const MAX_LINKED: usize = 256;

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
    /// [`link_tag`]s of the peers the member has a control link to when it signs, sorted,
    /// unique. Those peers get the record from the member itself, so nobody forwards it to them:
    /// without this, gossip in a full mesh of n members sent every record n² times.
    pub linked: Vec<u32>,
    /// Indices into `addrs` of the addresses the member's own router forwards to it on
    /// request (UPnP IGD, PCP, NAT-PMP), sorted, unique: a link dialed there is `Mapped`.
    pub mapped: Vec<u8>,
    /// Of `listening`, the channels the member monitors (hears silently, with the monitor
    /// permission): senders still send there, rosters leave the member out. Sorted, unique.
    pub monitoring: Vec<ChannelId>,
    /// Of `listening`, the channels the member records: shown to everyone listening. Sorted,
    /// unique.
    pub recording: Vec<ChannelId>,
    /// Where the member is (context, decimetres), announced only in orgs with proximity
    /// channels: their senders skip listeners out of reach.
    pub position: Option<(crate::spatial::ContextId, [i32; 3])>,
}

/// A short tag naming a linked peer in [`PresenceBody::linked`]: the last four bytes of its
/// peer id (an ed25519 key's last bytes, as good as random). A collision only means one
/// forwarded copy fewer; the member's own announcements still reach the peer.
pub fn link_tag(peer: &PeerId) -> u32 {
    // The multihash's digest ends as its byte form does, without allocating that form: this
    // runs for every peer a gossiped record might go to.
    let digest = peer.as_ref().digest();
    let tail: [u8; 4] = digest[digest.len().saturating_sub(4)..]
        .try_into()
        .unwrap_or_default();
    u32::from_be_bytes(tail)
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
        if self.linked.len() > MAX_LINKED || self.linked.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PresenceError::Bounds(
                "linked peers: more than 256, or not sorted and unique",
            ));
        }
        if self.mapped.windows(2).any(|w| w[0] >= w[1])
            || self
                .mapped
                .iter()
                .any(|i| usize::from(*i) >= self.addrs.len())
        {
            return Err(PresenceError::Bounds(
                "mapped addresses: not sorted and unique, or not among the addresses",
            ));
        }
        for subset in [&self.monitoring, &self.recording] {
            if subset.windows(2).any(|w| w[0] >= w[1])
                || subset
                    .iter()
                    .any(|c| self.listening.binary_search(c).is_err())
            {
                return Err(PresenceError::Bounds(
                    "monitored or recorded channels: not sorted and unique, or not listened to",
                ));
            }
        }
        if self.ttl_ms == 0 || self.ttl_ms > MAX_TTL_MS {
            return Err(PresenceError::Bounds("ttl outside 1 ms to 10 minutes"));
        }
        Ok(())
    }

    /// The addresses the member's router forwards to it (see [`PresenceBody::mapped`]).
    pub fn mapped_addrs(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.mapped
            .iter()
            .filter_map(|i| self.addrs.get(usize::from(*i)).map(Vec::as_slice))
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
        if self.body.listening.binary_search(&channel).is_err() {
            return false;
        }
        let needed = if self.monitors(channel) {
            Permissions::MONITOR
        } else {
            Permissions::LISTEN
        };
        state.may(&self.body.peer, channel, needed)
    }

    /// Whether the member hears `channel` silently (out of its roster).
    pub fn monitors(&self, channel: ChannelId) -> bool {
        self.body.monitoring.binary_search(&channel).is_ok()
    }

    /// The channels the member shows itself listening to: those it listens to but does not
    /// monitor.
    pub fn shown_listening(&self) -> Vec<ChannelId> {
        self.body
            .listening
            .iter()
            .copied()
            .filter(|c| !self.monitors(*c))
            .collect()
    }

    /// Whether the member said it is linked to `peer`, so `peer` hears the member first-hand.
    pub fn linked_to(&self, peer: &PeerId) -> bool {
        self.body.linked.binary_search(&link_tag(peer)).is_ok()
    }

    /// Signs `body` (whose `peer` must be `identity`; `listening` is sorted here).
    pub fn sign(identity: &Identity, mut body: PresenceBody) -> Result<Self, PresenceError> {
        body.peer = identity.public();
        body.listening.sort();
        body.listening.dedup();
        for subset in [&mut body.monitoring, &mut body.recording] {
            subset.sort();
            subset.dedup();
            subset.retain(|c| body.listening.binary_search(c).is_ok());
        }
        body.relay_rtt_ms.sort();
        body.relay_rtt_ms.dedup_by_key(|(relay, _)| *relay);
        if body.relay_rtt_ms.len() > MAX_RELAYS {
            // The nearest: in a big squad most members are reachable rendezvous, and a record
            // naming them all would not sign (chaos seed 119: nine members never announced
            // themselves again, and nobody sent them voice).
            body.relay_rtt_ms.sort_by_key(|(relay, rtt)| (*rtt, *relay));
            body.relay_rtt_ms.truncate(MAX_RELAYS);
            body.relay_rtt_ms.sort();
        }
        body.routes.sort();
        body.routes.dedup_by_key(|(channel, _)| *channel);
        body.linked.sort_unstable();
        body.linked.dedup();
        body.linked.truncate(MAX_LINKED);
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
        let record = Self::decode_unverified(bytes)?;
        record.verify()?;
        Ok(record)
    }

    /// Decodes and checks everything [`decode`](Self::decode) does but the signature, so a
    /// receiver can first ask [`PresenceTable::judge`] whether the record would change anything
    /// (gossip brings most records many times). Verify before trusting any field.
    pub fn decode_unverified(bytes: &[u8]) -> Result<Self, PresenceError> {
        let record: Self = crate::wire::decode(PRESENCE_VERSION, MAX_PRESENCE_BYTES, bytes)?;
        if record.encode() != bytes {
            return Err(PresenceError::NonCanonical);
        }
        record.body.check_bounds()?;
        Ok(record)
    }

    /// Checks the signature over the body under the presence context.
    pub fn verify(&self) -> Result<(), PresenceError> {
        self.body
            .peer
            .verify(PRESENCE, &body_bytes(&self.body), &self.signature)
            .map_err(|_| PresenceError::BadSignature)
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

impl PresenceUpdate {
    /// The record was taken: a member came or has news.
    pub fn is_news(self) -> bool {
        matches!(self, Self::Joined | Self::Updated)
    }
}

/// The newest valid presence per member of one org.
#[derive(Clone, Debug)]
pub struct PresenceTable {
    org: IdentityKey,
    records: BTreeMap<IdentityKey, PresenceRecord>,
}

/// The first fields of a record's wire form, read without checking the keys (which costs a
/// curve point decompression each).
#[derive(Deserialize)]
struct Header<'a> {
    org: &'a [u8],
    peer: &'a [u8],
    seq: u64,
}

impl PresenceTable {
    /// An empty table for `org`.
    pub fn new(org: IdentityKey) -> Self {
        Self {
            org,
            records: BTreeMap::new(),
        }
    }

    /// Whether `bytes` names a member of this org and a `seq` no newer than the record held
    /// for it, read from the header alone: such a record could change nothing. Gossip brings
    /// each record once from every neighbour, and decoding and checking each copy was most of
    /// a large mesh's CPU. Anything else (malformed bytes too) is left to
    /// [`PresenceRecord::decode`].
    pub fn holds(&self, bytes: &[u8]) -> bool {
        let Some((&PRESENCE_VERSION, body)) = bytes.split_first() else {
            return false;
        };
        let Ok((header, _)) = postcard::take_from_bytes::<Header<'_>>(body) else {
            return false;
        };
        header.org == self.org.to_bytes()
            && self
                .records
                .values()
                .any(|held| held.body.peer.to_bytes() == header.peer && held.body.seq >= header.seq)
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
        let update = self.judge(&record.body, now_ms, is_member);
        if update.is_news() {
            self.records.insert(record.body.peer, record);
        }
        update
    }

    /// What [`insert`](Self::insert) would do with a record of `body`, changing nothing.
    pub fn judge(
        &self,
        body: &PresenceBody,
        now_ms: u64,
        is_member: impl Fn(&IdentityKey) -> bool,
    ) -> PresenceUpdate {
        if body.org != self.org || !is_member(&body.peer) {
            return PresenceUpdate::NotMember;
        }
        if body.expires_at_ms() <= now_ms {
            return PresenceUpdate::Expired;
        }
        match self.records.get(&body.peer) {
            Some(held) if held.body.seq >= body.seq => PresenceUpdate::Stale,
            Some(_) => PresenceUpdate::Updated,
            None => PresenceUpdate::Joined,
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
