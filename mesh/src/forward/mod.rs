//! A relay's forwarding rule, sans-IO: which subscribers get a voice packet, read from its clear
//! header only. The relay never holds a sender key: it forwards the sealed bytes as they came.
//!
//! Members ask a relay for channels with a signed [`Subscription`] (wire form: version byte `1`
//! then postcard; signed under `callsign/subscription/v1`; canonical encoding only). The
//! [`Forwarder`] accepts one only from a member the charter lets listen on every channel it
//! names, and checks again at each packet (the charter may have changed). A packet is
//! forwarded once to each subscriber of any of its channels, never back to its sender; a
//! simulcast frame sent as one packet per channel reaches a subscriber of several of them once
//! (the first of its packets the subscriber may hear). Packets from non-members or for channels
//! the sender may not speak on, oversize, malformed, duplicate (replay window per sender and
//! channel list), whispers, and packets beyond a sender's rate are dropped and counted by
//! reason.
//!
//! Relays cascade: one of the org's rented relays may subscribe at another (any channel); what
//! a relay gets from a member goes to its member subscribers and to its relay subscribers, what
//! it gets from a relay goes to members only, so a packet crosses at most two relays.
//!
//! Who may hear a channel (subscribed, and allowed by the charter) is worked out once per
//! channel and kept until a subscription or the charter changes (the caller names the
//! charter's generation); a talker's recipients are kept for its next packet on the same
//! channels over the same link, so its steady stream costs the sender's checks per packet
//! (`cargo bench -p callsign-mesh --bench forward`).
//!
//! A rented relay's link layer forwards most packets itself, without a hop to the member
//! ([`ForwardView`], module `view`): both go through one [`SharedForwarder`].
//!
//! A sender asks a relay to forward by wrapping the voice packet in an envelope (one tag byte,
//! [`ENVELOPE_V1`], then the packet as sealed): a voice packet that arrives bare is for the
//! relay itself, if it is a member, and is never forwarded.

mod view;

pub use view::{lock, Copies, ForwardView, SharedForwarder};

use crate::charter::{ChannelId, CharterState, Permissions};
use crate::rate::{Rate, TokenBucket};
use crate::voice::{ReplayWindow, SenderShortId, VoiceFlags, VoiceHeader, MAX_CHANNELS};
use callsign_keys::context::SUBSCRIPTION;
use callsign_keys::{Identity, IdentityKey, Signature};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// First byte of a datagram that asks its receiver to forward the voice packet after it.
/// Voice packets start with their version (1), so the two never clash.
pub const ENVELOPE_V1: u8 = 0x81;

/// Wraps a sealed voice packet for a relay.
pub fn envelope(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packet.len() + 1);
    out.push(ENVELOPE_V1);
    out.extend_from_slice(packet);
    out
}

/// The voice packet inside an envelope, or `None` when `datagram` is not one.
pub fn open_envelope(datagram: &[u8]) -> Option<&[u8]> {
    match datagram.split_first() {
        Some((&ENVELOPE_V1, packet)) => Some(packet),
        _ => None,
    }
}

fn is_member(state: &CharterState, peer: &IdentityKey) -> bool {
    state.members.contains_key(peer) || state.is_admin(peer)
}

/// One of the org's rented relays (and no member).
pub fn is_relay(state: &CharterState, peer: &IdentityKey) -> bool {
    state.relays.contains_key(peer) && !is_member(state, peer)
}

/// Version byte of subscriptions.
pub const SUBSCRIPTION_VERSION: u8 = 1;
/// Largest encoded subscription accepted.
pub const MAX_SUBSCRIPTION_BYTES: usize = 2048;
const MAX_SUBSCRIBED: usize = 64;

/// The signed content of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionBody {
    /// The org (its root key).
    pub org: IdentityKey,
    /// Who wants the audio; also the signer.
    pub subscriber: IdentityKey,
    /// Increases with every subscription the member issues; newer replaces older.
    pub seq: u64,
    /// Channels to forward, sorted and unique (empty: unsubscribe).
    pub channels: Vec<ChannelId>,
}

/// A signed subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The signed content.
    pub body: SubscriptionBody,
    /// The subscriber's signature.
    pub signature: Signature,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscriptionError {
    /// Empty or too large.
    #[error("subscription of {0} bytes")]
    Size(usize),
    /// Unknown version.
    #[error("unknown subscription version {0}")]
    Version(u8),
    /// Does not decode, or not canonically.
    #[error("malformed subscription: {0}")]
    Malformed(String),
    /// Too many channels, or not sorted and unique.
    #[error("subscription out of bounds")]
    Bounds,
    /// The signature does not verify.
    #[error("subscription signature does not verify")]
    BadSignature,
    /// For another org.
    #[error("subscription for another org")]
    WrongOrg,
    /// The subscriber may not listen on a channel it names (or is no member).
    #[error("the charter does not let the subscriber listen on {0}")]
    NotAllowed(ChannelId),
    /// Not newer than the one held.
    #[error("stale subscription")]
    Stale,
    /// The relay serves as many members as it may.
    #[error("the relay is full")]
    Full,
    /// The charter does not list the subscriber as a member.
    #[error("the subscriber is no member")]
    NotMember,
    /// Signed by someone other than the link's peer.
    #[error("subscription signed by someone other than the sender")]
    NotSender,
}

crate::wire::wire_error_into!(SubscriptionError);

fn body_bytes(body: &SubscriptionBody) -> Vec<u8> {
    // Plain data into a Vec: postcard cannot fail here.
    postcard::to_stdvec(body).unwrap_or_default()
}

impl Subscription {
    /// Signs `body` as `identity` (channels are sorted and de-duplicated here).
    pub fn sign(
        identity: &Identity,
        mut body: SubscriptionBody,
    ) -> Result<Self, SubscriptionError> {
        body.subscriber = identity.public();
        body.channels.sort();
        body.channels.dedup();
        if body.channels.len() > MAX_SUBSCRIBED {
            return Err(SubscriptionError::Bounds);
        }
        let signature = identity.sign(SUBSCRIPTION, &body_bytes(&body));
        Ok(Self { body, signature })
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(SUBSCRIPTION_VERSION, self)
    }

    /// Decodes and checks size, version, canonical form, bounds and signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, SubscriptionError> {
        let record: Self =
            crate::wire::decode(SUBSCRIPTION_VERSION, MAX_SUBSCRIPTION_BYTES, bytes)?;
        if record.encode() != bytes {
            return Err(SubscriptionError::Malformed("not canonical".into()));
        }
        let channels = &record.body.channels;
        if channels.len() > MAX_SUBSCRIBED || channels.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SubscriptionError::Bounds);
        }
        record
            .body
            .subscriber
            .verify(SUBSCRIPTION, &body_bytes(&record.body), &record.signature)
            .map_err(|_| SubscriptionError::BadSignature)?;
        Ok(record)
    }
}

/// Why a packet was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ForwardDrop {
    /// The clear header does not parse.
    Malformed,
    /// Larger than [`ForwarderConfig::max_packet`].
    Oversize,
    /// The link's peer is not a member, or the header names someone else as sender.
    Stranger,
    /// The sender may not speak on one of the packet's channels.
    Unauthorised,
    /// Whispers go member to member, not through relays.
    Whisper,
    /// The sender exceeded its packet rate.
    RateLimited,
    /// The org as a whole exceeded its packet rate ([`ForwarderConfig::org_rate`]), on a relay
    /// shared by several orgs.
    OrgRateLimited,
    /// Seen before (network duplicate or replay).
    Duplicate,
    /// Nobody to forward to.
    NoSubscribers,
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// Largest packet forwarded (header, Opus frame and tag).
    pub max_packet: usize,
    /// Sustained packets per second per sender (a 20 ms talker sends 50).
    pub packets_per_second: u32,
    /// How many packets above the rate a sender may burst.
    pub burst: u32,
    /// Members served at once; further subscriptions are refused.
    pub max_subscribers: usize,
    /// Packets per second from all the org's senders together (after each sender's own
    /// limit), so one org cannot take a shared relay from the others. `None`: no org limit.
    pub org_rate: Option<Rate>,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            max_packet: 3 + 8 * MAX_CHANNELS + 10 + 1275 + 16,
            packets_per_second: 100,
            burst: 50,
            max_subscribers: 1000,
            org_rate: None,
        }
    }
}

/// Packets and bytes handled, and drops by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardCounts {
    /// Packets received from senders.
    pub packets_in: u64,
    /// Bytes received from senders.
    pub bytes_in: u64,
    /// Copies sent to subscribers.
    pub packets_out: u64,
    /// Bytes sent to subscribers.
    pub bytes_out: u64,
    /// Drops by reason.
    pub drops: BTreeMap<ForwardDrop, u64>,
    /// Packets accepted (authorised, within the sender's rate, no replay), per channel they
    /// name.
    pub channel_packets: BTreeMap<ChannelId, u64>,
    /// Newer subscriptions naming the channels already held: a member repairing its path
    /// (`crate::path`, the first rung) or starting its session over.
    pub resubscribed: u64,
}

#[derive(Debug)]
struct SenderState {
    bucket: TokenBucket,
    /// Per channel list: a simulcast frame arrives as one packet per channel (each sealed with
    /// that channel's key), all with the frame's sequence number.
    replay: BTreeMap<Vec<ChannelId>, ReplayWindow>,
    /// The latest frame's sequence number and who got a copy of it (sorted), so a subscriber
    /// of several of its channels gets one copy.
    served: Option<(u16, Vec<IdentityKey>)>,
}

/// A talker's recipients kept for its next frame: its frames go to the same people until the
/// audience, its channel list or the link they come over changes, and working the list out
/// again per frame (a pass over every subscriber) was most of a relay's forwarding decision.
#[derive(Debug)]
struct Recent {
    sender: IdentityKey,
    /// [`Audience::epoch`] when worked out.
    epoch: u64,
    channels: Vec<ChannelId>,
    from: IdentityKey,
    to: Arc<[Recipient]>,
    /// `to` split into copies by [`Forwarder::forward_copies`] for the relay named, once.
    copies: Option<(IdentityKey, Copies)>,
}

/// A subscriber a packet goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The subscriber.
    pub key: IdentityKey,
    /// Its peer id, which links are keyed by.
    pub peer: libp2p_identity::PeerId,
    /// One of the org's relays (cascading): it gets packets enveloped, and nothing another
    /// relay sent.
    pub relay: bool,
}

/// Per channel, the subscribers the charter lets hear it, in key order; valid for one
/// charter generation and set of subscriptions.
#[derive(Debug, Default)]
struct Audience {
    generation: Option<u64>,
    /// Changes whenever the lists are dropped, so what was worked out from them ([`Recent`])
    /// is known stale.
    epoch: u64,
    channels: BTreeMap<ChannelId, Vec<Recipient>>,
}

impl Audience {
    /// Drops every list: the charter is now at `generation`, or a subscription changed.
    fn clear(&mut self, generation: Option<u64>) {
        self.generation = generation;
        self.epoch += 1;
        self.channels.clear();
    }
}

/// How many talkers' recipient lists ([`Recent`]) a forwarder keeps: one per talker at once,
/// about. A bound, as a list is the channel's size (120 bytes a subscriber) and everyone talks
/// once.
const KEPT: usize = 8;

/// See the module documentation.
#[derive(Debug)]
pub struct Forwarder {
    org: IdentityKey,
    config: ForwarderConfig,
    subscriptions: BTreeMap<IdentityKey, SubscriptionBody>,
    senders: BTreeMap<IdentityKey, SenderState>,
    counts: ForwardCounts,
    audience: Audience,
    /// The whole org's bucket, with [`ForwarderConfig::org_rate`].
    org_bucket: Option<TokenBucket>,
    /// Talkers' recipient lists, most recent last.
    recent: Vec<Recent>,
}

impl Forwarder {
    /// A forwarder for `org` with no subscribers.
    pub fn new(org: IdentityKey, config: ForwarderConfig) -> Self {
        Self {
            org,
            config,
            subscriptions: BTreeMap::new(),
            senders: BTreeMap::new(),
            counts: ForwardCounts::default(),
            audience: Audience::default(),
            org_bucket: None,
            recent: Vec::new(),
        }
    }

    /// Accepts a verified subscription (from [`Subscription::decode`]) if the charter lets its
    /// subscriber listen on every channel it names and it is newer than the one held.
    pub fn subscribe(
        &mut self,
        state: &CharterState,
        subscription: Subscription,
    ) -> Result<(), SubscriptionError> {
        let body = subscription.body;
        if body.org != self.org || state.org != self.org {
            return Err(SubscriptionError::WrongOrg);
        }
        if is_relay(state, &body.subscriber) {
            // Another of the org's relays, cascading: it passes what it gets on to its own
            // subscribers, each checked there.
        } else if !is_member(state, &body.subscriber) {
            return Err(SubscriptionError::NotMember);
        } else if let Some(c) = body
            .channels
            .iter()
            .find(|c| !state.may_hear(&body.subscriber, **c))
        {
            return Err(SubscriptionError::NotAllowed(*c));
        }
        match self.subscriptions.get(&body.subscriber) {
            // The one we hold, again: a subscriber whose parked link reopens sends it on the
            // voice plane first and then as ordered control.
            Some(held) if *held == body => return Ok(()),
            Some(held) if held.seq >= body.seq => return Err(SubscriptionError::Stale),
            Some(held) if held.channels == body.channels => self.counts.resubscribed += 1,
            _ => {}
        }
        self.audience.clear(self.audience.generation);
        if body.channels.is_empty() {
            self.subscriptions.remove(&body.subscriber);
        } else if !self.subscriptions.contains_key(&body.subscriber)
            && self.subscriptions.len() >= self.config.max_subscribers
        {
            return Err(SubscriptionError::Full);
        } else {
            self.subscriptions.insert(body.subscriber, body);
        }
        Ok(())
    }

    /// The member's link went: it gets nothing until it subscribes again.
    pub fn remove(&mut self, peer: &IdentityKey) {
        self.audience.clear(self.audience.generation);
        self.subscriptions.remove(peer);
        self.senders.remove(peer);
    }

    /// A packet from a link whose peer is no member (the caller cannot name it by key).
    pub fn refuse_stranger(&mut self, packet: &[u8]) {
        self.counts.packets_in += 1;
        self.counts.bytes_in += packet.len() as u64;
        *self.counts.drops.entry(ForwardDrop::Stranger).or_default() += 1;
    }

    /// Subscribers, each with its channels, in key order.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&IdentityKey, &[ChannelId])> {
        self.subscriptions
            .iter()
            .map(|(k, s)| (k, s.channels.as_slice()))
    }

    /// Subscribers of `channel`.
    pub fn subscribers(&self, channel: ChannelId) -> usize {
        self.subscriptions
            .values()
            .filter(|s| s.channels.binary_search(&channel).is_ok())
            .count()
    }

    /// Counters so far.
    pub fn counts(&self) -> &ForwardCounts {
        &self.counts
    }

    /// Who gets `packet`, received at `now` from member `from` over an authenticated link, in
    /// key order; or why nobody does. Works the audience out afresh: see
    /// [`Forwarder::forward_to`] for the relay's path.
    pub fn forward(
        &mut self,
        state: &CharterState,
        from: &IdentityKey,
        packet: &[u8],
        now: Instant,
    ) -> Result<Vec<IdentityKey>, ForwardDrop> {
        self.audience.clear(None);
        self.forward_to(state, None, from, packet, now)
            .map(|to| to.iter().map(|r| r.key).collect())
    }

    /// The copies of `packet` that the relay `local` sends, for a charter at `generation`:
    /// `from` is the member or fellow relay the link's peer is, `None` for a stranger (refused
    /// and counted). What both a relay's paths do with a packet ([`ForwardView`]).
    pub fn forward_copies(
        &mut self,
        state: &CharterState,
        generation: u64,
        from: Option<&IdentityKey>,
        packet: &[u8],
        now: Instant,
        local: &IdentityKey,
    ) -> Result<Copies, ForwardDrop> {
        let Some(from) = from else {
            self.refuse_stranger(packet);
            return Err(ForwardDrop::Stranger);
        };
        let to = self.forward_to(state, Some(generation), from, packet, now)?;
        // A list kept for the talker is the last one used; one worked out for a frame's
        // second channel list is not kept, and is split afresh.
        let Some(recent) = self.recent.last_mut().filter(|r| Arc::ptr_eq(&r.to, &to)) else {
            return Ok(Copies::split(&to, local));
        };
        match &recent.copies {
            Some((relay, copies)) if relay == local => Ok(copies.clone()),
            _ => {
                let copies = Copies::split(&to, local);
                recent.copies = Some((*local, copies.clone()));
                Ok(copies)
            }
        }
    }

    /// [`Forwarder::forward`] for a charter at `generation` (any number that changes whenever
    /// its state may have: the op count), keeping each channel's audience while it holds.
    /// `None` works it out afresh.
    pub fn forward_to(
        &mut self,
        state: &CharterState,
        generation: Option<u64>,
        from: &IdentityKey,
        packet: &[u8],
        now: Instant,
    ) -> Result<Arc<[Recipient]>, ForwardDrop> {
        if generation.is_none() || self.audience.generation != generation {
            self.audience.clear(generation);
        }
        self.counts.packets_in += 1;
        self.counts.bytes_in += packet.len() as u64;
        let result = self.route(state, from, packet, now);
        match &result {
            Ok(to) => {
                self.counts.packets_out += to.len() as u64;
                self.counts.bytes_out += (to.len() * packet.len()) as u64;
            }
            Err(reason) => *self.counts.drops.entry(*reason).or_default() += 1,
        }
        result
    }

    fn route(
        &mut self,
        state: &CharterState,
        from: &IdentityKey,
        packet: &[u8],
        now: Instant,
    ) -> Result<Arc<[Recipient]>, ForwardDrop> {
        if packet.len() > self.config.max_packet {
            return Err(ForwardDrop::Oversize);
        }
        let (header, _) = VoiceHeader::parse(packet).map_err(|_| ForwardDrop::Malformed)?;
        // From a fellow relay (cascading), the sender is the member the header names; from
        // anyone else, the link's peer must be that member.
        let from_relay = is_relay(state, from);
        let sender = if from_relay {
            // The root is an admin without an `admins` entry: it speaks too.
            state
                .members
                .keys()
                .chain(state.admins.iter())
                .chain(std::iter::once(&state.org))
                .find(|k| SenderShortId::of(k) == header.sender)
                .copied()
                .ok_or(ForwardDrop::Stranger)?
        } else if is_member(state, from) && header.sender == SenderShortId::of(from) {
            *from
        } else {
            return Err(ForwardDrop::Stranger);
        };
        if header.flags.contains(VoiceFlags::WHISPER) {
            return Err(ForwardDrop::Whisper);
        }
        if header
            .channels
            .iter()
            .any(|c| !state.may(&sender, *c, Permissions::SPEAK))
        {
            return Err(ForwardDrop::Unauthorised);
        }
        let rate = Rate::new(self.config.packets_per_second, self.config.burst);
        let bucket = self.senders.entry(sender).or_insert_with(|| SenderState {
            bucket: TokenBucket::new(rate, now),
            replay: BTreeMap::new(),
            served: None,
        });
        if !bucket.bucket.take(rate, now) {
            return Err(ForwardDrop::RateLimited);
        }
        if let Some(org_rate) = self.config.org_rate {
            let org = self
                .org_bucket
                .get_or_insert_with(|| TokenBucket::new(org_rate, now));
            if !org.take(org_rate, now) {
                return Err(ForwardDrop::OrgRateLimited);
            }
        }
        // Channel lists are bounded: the sender may speak on each channel named.
        let replay = bucket.replay.entry(header.channels.clone()).or_default();
        if !replay.accept(header.sequence) {
            return Err(ForwardDrop::Duplicate);
        }
        for channel in &header.channels {
            *self.counts.channel_packets.entry(*channel).or_default() += 1;
        }
        let already: &[IdentityKey] = match &bucket.served {
            Some((seq, served)) if *seq == header.sequence => served,
            _ => &[],
        };
        let epoch = self.audience.epoch;
        let kept = self.recent.iter().position(|r| {
            already.is_empty()
                && r.sender == sender
                && r.epoch == epoch
                && r.from == *from
                && r.channels == header.channels
        });
        let to: Arc<[Recipient]> = match kept {
            Some(at) => {
                let recent = self.recent.remove(at);
                let to = recent.to.clone();
                self.recent.push(recent);
                to
            }
            None => {
                let mut to: Vec<Recipient> = Vec::new();
                for channel in &header.channels {
                    let audience = self
                        .audience
                        .channels
                        .entry(*channel)
                        .or_insert_with(|| audience(&self.subscriptions, state, *channel));
                    // What came from a relay goes to members only: one hop between relays.
                    to.extend(audience.iter().filter(|r| {
                        r.key != sender
                            && r.key != *from
                            && !(r.relay && from_relay)
                            && already.binary_search(&r.key).is_err()
                    }));
                }
                if header.channels.len() > 1 {
                    to.sort_by_key(|r| r.key);
                    to.dedup_by_key(|r| r.key);
                }
                let to: Arc<[Recipient]> = to.into();
                if already.is_empty() {
                    if self.recent.len() == KEPT {
                        self.recent.remove(0);
                    }
                    self.recent.push(Recent {
                        sender,
                        epoch,
                        channels: header.channels.clone(),
                        from: *from,
                        to: to.clone(),
                        copies: None,
                    });
                }
                to
            }
        };
        match &mut bucket.served {
            Some((seq, served)) if *seq == header.sequence => {
                served.extend(to.iter().map(|r| r.key));
                served.sort_unstable();
            }
            // A new sequence: the last one's list is reused (`to` is in key order).
            Some((seq, served)) => {
                *seq = header.sequence;
                served.clear();
                served.extend(to.iter().map(|r| r.key));
            }
            None => bucket.served = Some((header.sequence, to.iter().map(|r| r.key).collect())),
        }
        if to.is_empty() {
            return Err(ForwardDrop::NoSubscribers);
        }
        Ok(to)
    }
}

/// The subscribers of `channel` whom the charter lets hear it (a relay subscriber, cascading,
/// hears any), in key order.
fn audience(
    subscriptions: &BTreeMap<IdentityKey, SubscriptionBody>,
    state: &CharterState,
    channel: ChannelId,
) -> Vec<Recipient> {
    subscriptions
        .values()
        .filter(|s| s.channels.binary_search(&channel).is_ok())
        .filter_map(|s| {
            let relay = is_relay(state, &s.subscriber);
            (relay || state.may_hear(&s.subscriber, channel)).then(|| Recipient {
                key: s.subscriber,
                peer: s.subscriber.peer_id(),
                relay,
            })
        })
        .collect()
}
