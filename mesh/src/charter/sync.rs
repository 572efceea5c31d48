//! Charter anti-entropy, sans-IO.
//!
//! Inputs: link up/down, messages from peers, timeouts, local edits, each with `now`. Outputs:
//! messages to send ([`CharterSync::poll_transmit`]), events ([`CharterSync::poll_event`]) and
//! the next deadline ([`CharterSync::poll_timeout`]). The driver owns sockets and clocks.
//!
//! Protocol: on link-up and every `announce_interval` (jittered by the seeded RNG) each side sends
//! `Heads`. A side that sees unknown heads answers `Want { want, have: its heads }`; the other
//! sends everything in the causal past of `want` but not of `have`, parents first, so a fresh
//! node catches up in one round trip. A side whose heads are all known to it but differ pushes
//! what the other lacks. New ops are pushed to every other linked peer (epidemic).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use callsign_keys::{Identity, IdentityKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::bundle::{compress_ops, decompress_ops};
use super::op::{Op, OpBody, OpHash};
use super::replica::{Charter, EditError, IngestReport};

/// The sync message encoding version.
pub const SYNC_VERSION: u8 = 1;
/// Messages larger than this are refused.
pub const MAX_SYNC_MESSAGE: usize = 1024 * 1024;
const MAX_HASHES: usize = 4096;
const MAX_BUNDLE_RAW: usize = 16 * 1024 * 1024;

/// A sync message between two replicas of one org.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SyncMessage {
    /// "These are my heads."
    Heads {
        /// The org.
        org: IdentityKey,
        /// Sender's heads.
        heads: Vec<OpHash>,
        /// Sender's op count (diagnostic).
        count: u64,
    },
    /// "Send me the causal past of `want`, minus that of `have`."
    Want {
        /// The org.
        org: IdentityKey,
        /// Hashes wanted.
        want: Vec<OpHash>,
        /// Requester's heads.
        have: Vec<OpHash>,
    },
    /// Ops in wire form, parents first.
    Ops {
        /// The org.
        org: IdentityKey,
        /// The ops.
        ops: Vec<Vec<u8>>,
    },
    /// Ops compressed with zstd (see `bundle`), for bulk transfer.
    Bundle {
        /// The org.
        org: IdentityKey,
        /// Compressed records.
        data: Vec<u8>,
    },
}

/// Why a sync message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncDecodeError {
    /// Empty or too large.
    #[error("sync message size {0} outside 1..={MAX_SYNC_MESSAGE}")]
    Size(usize),
    /// Unknown version.
    #[error("unsupported sync message version {0}")]
    Version(u8),
    /// Does not parse, or exceeds a bound.
    #[error("malformed sync message: {0}")]
    Malformed(String),
}

crate::wire::wire_error_into!(SyncDecodeError);

impl SyncMessage {
    /// Wire form: `SYNC_VERSION | postcard(self)`.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(SYNC_VERSION, self)
    }

    /// Parses and bounds-checks a message.
    pub fn decode(bytes: &[u8]) -> Result<Self, SyncDecodeError> {
        let msg: Self = crate::wire::decode(SYNC_VERSION, MAX_SYNC_MESSAGE, bytes)?;
        let too_many = match &msg {
            Self::Heads { heads, .. } => heads.len() > MAX_HASHES,
            Self::Want { want, have, .. } => want.len() > MAX_HASHES || have.len() > MAX_HASHES,
            Self::Ops { .. } | Self::Bundle { .. } => false,
        };
        if too_many {
            return Err(SyncDecodeError::Malformed("too many hashes".into()));
        }
        Ok(msg)
    }

    fn org(&self) -> &IdentityKey {
        match self {
            Self::Heads { org, .. }
            | Self::Want { org, .. }
            | Self::Ops { org, .. }
            | Self::Bundle { org, .. } => org,
        }
    }
}

/// Tuning.
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// Mean time between `Heads` announcements to each peer (jittered ±25%).
    pub announce_interval: Duration,
    /// Target raw size of one `Ops`/`Bundle` message.
    pub chunk_bytes: usize,
    /// Chunks larger than this are zstd-compressed.
    pub compress_above: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            announce_interval: Duration::from_secs(15),
            chunk_bytes: 256 * 1024,
            compress_above: 4 * 1024,
        }
    }
}

/// Something the application should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// New ops were added; persist them (wire form, parents first).
    Added {
        /// The ops.
        ops: Vec<Vec<u8>>,
        /// State hash after the fold.
        state_hash: [u8; 32],
    },
    /// A peer sent something invalid.
    Rejected {
        /// The op, if it decoded.
        hash: Option<OpHash>,
        /// Why.
        reason: String,
    },
}

/// Anti-entropy for one org's charter, over any number of peers of type `P`.
pub struct CharterSync<P> {
    charter: Charter,
    config: SyncConfig,
    rng: StdRng,
    peers: BTreeMap<P, Instant>,
    /// What to send, to whom, and whether it is a periodic announcement (which the next one
    /// replaces, so a transport may lose it).
    outbox: VecDeque<(P, SyncMessage, bool)>,
    events: VecDeque<SyncEvent>,
}

impl<P: Ord + Clone> CharterSync<P> {
    /// Wraps a replica. `seed` drives announcement jitter.
    pub fn new(charter: Charter, config: SyncConfig, seed: u64) -> Self {
        Self {
            charter,
            config,
            rng: StdRng::seed_from_u64(seed),
            peers: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Announces to each peer every `every` (jittered) from the next announcement on.
    pub fn set_announce_interval(&mut self, every: Duration) {
        self.config.announce_interval = every;
    }

    /// The replica.
    pub fn charter(&self) -> &Charter {
        &self.charter
    }

    fn org(&self) -> IdentityKey {
        self.charter.org()
    }

    fn next_announce(&mut self, now: Instant) -> Instant {
        let base = self.config.announce_interval.as_secs_f64();
        now + Duration::from_secs_f64(base * self.rng.gen_range(0.75..1.25))
    }

    fn heads_message(&self) -> SyncMessage {
        SyncMessage::Heads {
            org: self.org(),
            heads: self.charter.heads(),
            count: self.charter.len() as u64,
        }
    }

    /// A link to `peer` came up.
    pub fn handle_link_up(&mut self, peer: P, now: Instant) {
        let at = self.next_announce(now);
        self.peers.insert(peer.clone(), at);
        let heads = self.heads_message();
        self.queue(peer, heads);
    }

    /// The link to `peer` went down.
    pub fn handle_link_down(&mut self, peer: &P) {
        self.peers.remove(peer);
        self.outbox.retain(|(p, _, _)| p != peer);
    }

    /// Periodic announcements.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in due {
            let at = self.next_announce(now);
            self.peers.insert(peer.clone(), at);
            let heads = self.heads_message();
            self.outbox.push_back((peer, heads, true));
        }
    }

    /// The earliest deadline, if any peer is linked.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().min().copied()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(P, SyncMessage)> {
        self.poll_transmission()
            .map(|(peer, message, _)| (peer, message))
    }

    /// The next message to send, and whether it is a periodic announcement of our heads: the
    /// next one follows within the announce interval, so it may travel where it can be lost.
    pub fn poll_transmission(&mut self) -> Option<(P, SyncMessage, bool)> {
        self.outbox.pop_front()
    }

    fn queue(&mut self, peer: P, message: SyncMessage) {
        self.outbox.push_back((peer, message, false));
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }

    /// Makes a local edit and pushes it to every linked peer. Persist the returned op (and
    /// fsync) before telling the user it is done.
    pub fn edit(&mut self, author: &Identity, body: OpBody, unix_ms: u64) -> Result<Op, EditError> {
        let op = self.charter.edit(author, body, unix_ms)?;
        let encoded = op.encode();
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.queue(
                peer,
                SyncMessage::Ops {
                    org: self.org(),
                    ops: vec![encoded.clone()],
                },
            );
        }
        Ok(op)
    }

    /// A message from `peer`.
    pub fn handle_message(&mut self, peer: P, msg: SyncMessage, _now: Instant) {
        if *msg.org() != self.org() {
            self.events.push_back(SyncEvent::Rejected {
                hash: None,
                reason: "sync message for another org".into(),
            });
            return;
        }
        match msg {
            SyncMessage::Heads { heads, .. } => {
                let unknown: Vec<OpHash> = heads
                    .iter()
                    .filter(|h| !self.charter.knows(h))
                    .copied()
                    .collect();
                if !unknown.is_empty() {
                    self.queue(
                        peer.clone(),
                        SyncMessage::Want {
                            org: self.org(),
                            want: unknown,
                            have: self.charter.heads(),
                        },
                    );
                }
                if heads != self.charter.heads() {
                    // Whatever they lack of ours, without waiting for them to ask.
                    let known: Vec<OpHash> = heads
                        .into_iter()
                        .filter(|h| self.charter.dag().contains(h))
                        .collect();
                    self.send_difference(&peer, &self.charter.heads(), &known);
                }
            }
            SyncMessage::Want { want, have, .. } => self.send_difference(&peer, &want, &have),
            SyncMessage::Ops { ops, .. } => self.receive(peer, ops),
            SyncMessage::Bundle { data, .. } => match decompress_ops(&data, MAX_BUNDLE_RAW) {
                Ok(ops) => self.receive(peer, ops),
                Err(e) => self.events.push_back(SyncEvent::Rejected {
                    hash: None,
                    reason: e.to_string(),
                }),
            },
        }
    }

    fn send_difference(&mut self, peer: &P, want: &[OpHash], have: &[OpHash]) {
        for msg in self.difference(want, have) {
            self.queue(peer.clone(), msg);
        }
    }

    /// The causal past of `want` minus that of `have`, parents first, in messages of about
    /// `chunk_bytes`.
    pub fn difference(&self, want: &[OpHash], have: &[OpHash]) -> Vec<SyncMessage> {
        let ops: Vec<Vec<u8>> = self
            .charter
            .dag()
            .difference(want, have)
            .into_iter()
            .map(|o| o.encoded.clone())
            .collect();
        let mut out = Vec::new();
        let mut chunk: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        for op in ops {
            size += op.len() + 4;
            chunk.push(op);
            if size >= self.config.chunk_bytes {
                out.push(self.chunk(std::mem::take(&mut chunk), size));
                size = 0;
            }
        }
        if !chunk.is_empty() {
            out.push(self.chunk(chunk, size));
        }
        out
    }

    fn send_chunk(&mut self, peer: &P, ops: Vec<Vec<u8>>, size: usize) {
        let msg = self.chunk(ops, size);
        self.queue(peer.clone(), msg);
    }

    fn chunk(&self, ops: Vec<Vec<u8>>, size: usize) -> SyncMessage {
        if size > self.config.compress_above {
            SyncMessage::Bundle {
                org: self.org(),
                data: compress_ops(ops.iter().map(Vec::as_slice)),
            }
        } else {
            SyncMessage::Ops {
                org: self.org(),
                ops,
            }
        }
    }

    fn receive(&mut self, from: P, ops: Vec<Vec<u8>>) {
        let report: IngestReport = self.charter.ingest(ops);
        for (hash, reason) in report.rejected {
            self.events.push_back(SyncEvent::Rejected { hash, reason });
        }
        if !report.missing.is_empty() {
            self.queue(
                from.clone(),
                SyncMessage::Want {
                    org: self.org(),
                    want: report.missing,
                    have: self.charter.heads(),
                },
            );
        }
        if report.added.is_empty() {
            return;
        }
        let added: Vec<Vec<u8>> = report
            .added
            .iter()
            .filter_map(|h| self.charter.dag().get(h).map(|o| o.encoded.clone()))
            .collect();
        let others: Vec<P> = self.peers.keys().filter(|p| **p != from).cloned().collect();
        for peer in others {
            let size = added.iter().map(|o| o.len() + 4).sum();
            self.send_chunk(&peer, added.clone(), size);
        }
        self.events.push_back(SyncEvent::Added {
            ops: added,
            state_hash: self.charter.state().state_hash(),
        });
    }
}
