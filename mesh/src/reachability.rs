//! Which of our public addresses others can reach unasked, learned from peers and proven by a
//! dial-back probe before presence announces it.
//!
//! A node behind a NAT cannot see its public address; its peers can (the source address of
//! what it sends them). Peers tell us what they see ([`AddressBook::observed`]); an address
//! seen is a *candidate*, not a fact: a port-restricted or symmetric NAT drops packets from
//! anyone we did not send to first, and a lying peer could name any address. So each candidate
//! is *probed*: we ask a linked member to send a nonce to it from a fresh UDP port (a source
//! our NAT has never seen). Only if the nonce arrives is the address confirmed: someone who
//! never heard from us can reach us there, so it is worth announcing and we can serve as a
//! rendezvous (relay circuits) for members who cannot be reached.
//!
//! Lies: the prober refuses an address whose IP differs from the one it sees our connection
//! come from ([`may_probe`]), and a peer that is the only one to have reported an address is
//! never asked to confirm it (it could send the nonce to our real address and so "confirm" a
//! wrong one). A lie therefore costs at most a probe that never arrives.
//!
//! Sans-IO: every entry point takes `now`; nonces come from a seeded RNG; candidates and peers
//! live in ordered maps. The node owns the sockets that send and receive probes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes of a probe nonce.
pub const NONCE_LEN: usize = 16;

/// What every probe datagram starts with. The first byte has QUIC's fixed bit (0x40) clear and
/// the long-header bit clear, and the 16 bytes after it would be a connection id in a greased
/// short-header packet: no QUIC packet of ours matches by accident (2^-128).
const PROBE_MAGIC: &[u8; 17] = b"\x00callsign/probe/1";

/// A probe datagram: magic, then the nonce. Sent raw over UDP, never through QUIC.
pub fn probe_datagram(nonce: &[u8; NONCE_LEN]) -> [u8; PROBE_MAGIC.len() + NONCE_LEN] {
    let mut out = [0u8; PROBE_MAGIC.len() + NONCE_LEN];
    out[..PROBE_MAGIC.len()].copy_from_slice(PROBE_MAGIC);
    out[PROBE_MAGIC.len()..].copy_from_slice(nonce);
    out
}

/// The nonce of a probe datagram, or `None` for anything else (QUIC, garbage).
pub fn parse_probe(datagram: &[u8]) -> Option<[u8; NONCE_LEN]> {
    if datagram.len() != PROBE_MAGIC.len() + NONCE_LEN || !datagram.starts_with(PROBE_MAGIC) {
        return None;
    }
    datagram[PROBE_MAGIC.len()..].try_into().ok()
}

/// Whether a prober should send a probe to `requested` for a peer whose connection it sees
/// coming from `seen_from`: only to the peer's own public IP, so a member cannot aim probes at
/// third parties or get a made-up address confirmed. The port may differ: that is the point.
pub fn may_probe(requested: &SocketAddr, seen_from: &SocketAddr) -> bool {
    canonical_ip(requested) == canonical_ip(seen_from) && requested.port() != 0
}

/// Whether `addr` can be reached from beyond the local network: not private (RFC 1918, unique
/// local), shared (carrier-grade NAT, 100.64.0.0/10), loopback, link-local or unspecified.
/// The documentation ranges count as public: the NAT test bed uses them as the internet.
pub fn is_beyond_local_network(addr: &SocketAddr) -> bool {
    match canonical_ip(addr) {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b)))
        }
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

fn canonical_ip(addr: &SocketAddr) -> std::net::IpAddr {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// "Send this nonce to me at `addr` from a fresh port": the body of a probe request on the
/// control channel. Versioned (docs/protocol.md, "Reachability probes").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRequest {
    /// Where to send the probe: our candidate public address.
    pub addr: SocketAddr,
    /// What to send (after the magic).
    pub nonce: [u8; NONCE_LEN],
}

/// Version byte of [`ProbeRequest`] and [`Observation`] bodies.
pub const REACHABILITY_VERSION: u8 = 1;

/// Why a reachability message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReachabilityDecodeError {
    /// The version byte is not one we know.
    #[error("unknown reachability message version {0}")]
    Version(u8),
    /// The body does not parse.
    #[error("malformed reachability message: {0}")]
    Malformed(String),
}

fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    crate::wire::encode(REACHABILITY_VERSION, value)
}

fn decode_versioned<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, ReachabilityDecodeError> {
    // Observations and probe requests are a few dozen bytes.
    crate::wire::decode(REACHABILITY_VERSION, 1024, bytes).map_err(|e| match e {
        crate::wire::WireError::Version(v) => ReachabilityDecodeError::Version(v),
        e => ReachabilityDecodeError::Malformed(e.to_string()),
    })
}

impl ProbeRequest {
    /// Versioned encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses an encoded request; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReachabilityDecodeError> {
        decode_versioned(bytes)
    }
}

/// "I see your link to me coming from `addr`": what a peer tells us on link-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Our address as the peer sees it.
    pub addr: SocketAddr,
}

impl Observation {
    /// Versioned encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses an encoded observation; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReachabilityDecodeError> {
        decode_versioned(bytes)
    }
}

/// Timing of [`AddressBook`].
#[derive(Clone, Debug)]
pub struct ReachabilityConfig {
    /// A probe not heard within this failed.
    pub probe_timeout: Duration,
    /// A confirmed address is probed again after this (a NAT's mapping may lapse, a router
    /// reboot changes the address); it stays confirmed until that probe fails.
    pub reconfirm_after: Duration,
    /// A failed candidate is tried again after this (another prober, a changed network).
    pub retry_after: Duration,
    /// Candidates kept; the oldest seen goes first.
    pub max_candidates: usize,
}

impl Default for ReachabilityConfig {
    fn default() -> Self {
        Self {
            probe_timeout: Duration::from_secs(3),
            reconfirm_after: Duration::from_secs(300),
            retry_after: Duration::from_secs(60),
            max_candidates: 8,
        }
    }
}

/// What changed about our reachability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReachabilityEvent {
    /// A probe arrived: others can reach us at this address unasked.
    Confirmed(SocketAddr),
    /// A confirmed address failed its re-probe (or was dropped): stop announcing it.
    Lost(SocketAddr),
    /// A probe never arrived: the NAT filters unknown senders there (port-restricted,
    /// symmetric) or the address was wrong.
    Unreachable(SocketAddr),
}

#[derive(Clone, Debug)]
enum State<P> {
    /// Seen, not probed yet (or due again).
    Due {
        confirmed: bool,
    },
    Probing {
        nonce: [u8; NONCE_LEN],
        prober: P,
        deadline: Instant,
        confirmed: bool,
        /// Anything came from the prober in the second half of the probe's window, well
        /// after our request reached it: its link works, so a probe that does not arrive says
        /// something about our NAT. (What it sent before may have crossed our request.)
        heard: bool,
    },
    Confirmed {
        reprobe_at: Instant,
    },
    Failed {
        retry_at: Instant,
    },
}

#[derive(Clone, Debug)]
struct Candidate<P> {
    observers: BTreeSet<P>,
    /// Our own router forwards this address to us (a port mapping): kept until unmapped, and
    /// any linked member may probe it, since no peer alone vouches for it.
    mapped: bool,
    last_seen: Instant,
    state: State<P>,
    /// Probes in a row whose prober stayed silent until the deadline ([`MAX_UNANSWERED`]).
    unanswered: u8,
}

/// Probes in a row whose prober said nothing at all (a partition cut it off, its link not yet
/// timed out) that are taken as no answer about the address; the next silent one counts as a
/// failure, so a candidate cannot be re-asked every few seconds forever of a quiet prober.
pub const MAX_UNANSWERED: u8 = 3;

/// Our candidate public addresses, their probes and the confirmed ones, for peers named by `P`.
#[derive(Debug)]
pub struct AddressBook<P> {
    config: ReachabilityConfig,
    rng: ChaCha8Rng,
    linked: BTreeSet<P>,
    candidates: BTreeMap<SocketAddr, Candidate<P>>,
    /// Addresses our own socket is bound to: a peer that reports one of these cannot be
    /// lying about where we are, only the probe's answer (does a stranger get in) is news.
    bound: BTreeSet<SocketAddr>,
    requests: VecDeque<(P, ProbeRequest)>,
    events: VecDeque<ReachabilityEvent>,
}

impl<P: Ord + Clone> AddressBook<P> {
    /// An empty book; `seed` drives nonces and the choice of prober.
    pub fn new(config: ReachabilityConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x7265_6163_6861_626c),
            linked: BTreeSet::new(),
            candidates: BTreeMap::new(),
            bound: BTreeSet::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A member we can ask for probes is linked.
    pub fn link_up(&mut self, peer: P, now: Instant) {
        self.linked.insert(peer);
        self.schedule(now);
    }

    /// A member went away: it can probe no more, and a probe it owed is asked of another.
    pub fn link_down(&mut self, peer: &P, now: Instant) {
        self.linked.remove(peer);
        for candidate in self.candidates.values_mut() {
            if let State::Probing {
                prober, confirmed, ..
            } = &candidate.state
            {
                if prober == peer {
                    candidate.state = State::Due {
                        confirmed: *confirmed,
                    };
                }
            }
        }
        self.schedule(now);
    }

    /// Our socket is bound to these addresses (listening on a public IP, say). A candidate
    /// among them may be probed by any linked peer, its sole reporter too, as a mapping may:
    /// with a public member and one other, nobody else could ever confirm it.
    pub fn set_bound(&mut self, bound: impl IntoIterator<Item = SocketAddr>, now: Instant) {
        let bound: BTreeSet<SocketAddr> = bound.into_iter().collect();
        if bound != self.bound {
            self.bound = bound;
            self.schedule(now);
        }
    }

    /// `reporter` sees us at `addr`.
    pub fn observed(&mut self, reporter: P, addr: SocketAddr, now: Instant) {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return;
        }
        if !self.candidates.contains_key(&addr)
            && self.candidates.len() >= self.config.max_candidates
        {
            // Make room: the candidate seen longest ago that is not confirmed.
            let stale = self
                .candidates
                .iter()
                .filter(|(_, c)| !c.is_confirmed() && !c.mapped)
                .min_by_key(|(a, c)| (c.last_seen, **a))
                .map(|(a, _)| *a);
            match stale {
                Some(stale) => {
                    self.candidates.remove(&stale);
                }
                None => return,
            }
        }
        let candidate = self
            .candidates
            .entry(addr)
            .or_insert_with(|| Candidate::new(now));
        candidate.last_seen = now;
        let new_observer = candidate.observers.insert(reporter);
        // A second witness may make a failed or unprobeable candidate worth another try.
        if new_observer && candidate.observers.len() == 2 {
            if let State::Failed { .. } = candidate.state {
                candidate.state = State::Due { confirmed: false };
            }
        }
        self.schedule(now);
    }

    /// Our router maps `addr` to us (UPnP IGD, NAT-PMP, PCP). Like an observation, it is only
    /// a candidate until a probe gets in: the router may sit behind another NAT (carrier-grade
    /// NAT gives it a shared address nobody can reach), or its firewall may still filter.
    pub fn mapped(&mut self, addr: SocketAddr, now: Instant) {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return;
        }
        let candidate = self
            .candidates
            .entry(addr)
            .or_insert_with(|| Candidate::new(now));
        candidate.mapped = true;
        candidate.last_seen = now;
        // A mapping is new evidence for an address whose probe failed before it existed.
        if let State::Failed { .. } = candidate.state {
            candidate.state = State::Due { confirmed: false };
        }
        self.schedule(now);
    }

    /// Our router no longer maps `addr` (we removed it, or renewing failed): stop announcing
    /// it, unless peers still see us there and a fresh probe gets in without the mapping.
    pub fn unmapped(&mut self, addr: &SocketAddr, now: Instant) {
        let Some(candidate) = self.candidates.get_mut(addr) else {
            return;
        };
        candidate.mapped = false;
        if candidate.observers.is_empty() {
            if candidate.is_confirmed() {
                self.events.push_back(ReachabilityEvent::Lost(*addr));
            }
            self.candidates.remove(addr);
        } else if let State::Confirmed { .. } = candidate.state {
            candidate.state = State::Due { confirmed: true };
            self.schedule(now);
        }
    }

    /// Something (any control message) came from `peer`: a probe it owes is answered, or its
    /// address is filtered, not lost with the request on a link a partition cut.
    pub fn heard_from(&mut self, peer: &P, now: Instant) {
        let half = self.config.probe_timeout / 2;
        for candidate in self.candidates.values_mut() {
            if let State::Probing {
                prober,
                heard,
                deadline,
                ..
            } = &mut candidate.state
            {
                if prober == peer && now + half >= *deadline {
                    *heard = true;
                }
            }
        }
    }

    /// A probe datagram carrying `nonce` arrived at our socket.
    pub fn probe_received(&mut self, nonce: &[u8; NONCE_LEN], now: Instant) {
        let reprobe_at = now + self.config.reconfirm_after;
        for (addr, candidate) in &mut self.candidates {
            if let State::Probing {
                nonce: expected,
                confirmed,
                ..
            } = &candidate.state
            {
                if expected == nonce {
                    if !confirmed {
                        self.events.push_back(ReachabilityEvent::Confirmed(*addr));
                    }
                    candidate.state = State::Confirmed { reprobe_at };
                    candidate.unanswered = 0;
                    return;
                }
            }
        }
    }

    /// Forget everything learned (the local network changed: new interface, new router).
    pub fn reset(&mut self) {
        for (addr, candidate) in std::mem::take(&mut self.candidates) {
            if candidate.is_confirmed() {
                self.events.push_back(ReachabilityEvent::Lost(addr));
            }
        }
        self.requests.clear();
    }

    /// Expires probes and starts due ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        let retry_at = now + self.config.retry_after;
        for (addr, candidate) in &mut self.candidates {
            match candidate.state {
                State::Probing {
                    deadline,
                    confirmed,
                    heard,
                    ..
                } if deadline <= now => {
                    if !heard && candidate.unanswered + 1 < MAX_UNANSWERED {
                        // No answer about the address: the request or the probe may have
                        // died with the prober's link. Asked again (of whom schedule picks).
                        candidate.unanswered += 1;
                        candidate.state = State::Due { confirmed };
                        continue;
                    }
                    candidate.unanswered = 0;
                    self.events.push_back(if confirmed {
                        ReachabilityEvent::Lost(*addr)
                    } else {
                        ReachabilityEvent::Unreachable(*addr)
                    });
                    candidate.state = State::Failed { retry_at };
                }
                State::Confirmed { reprobe_at } if reprobe_at <= now => {
                    candidate.state = State::Due { confirmed: true };
                }
                State::Failed { retry_at } if retry_at <= now => {
                    candidate.state = State::Due { confirmed: false };
                }
                _ => {}
            }
        }
        self.schedule(now);
    }

    /// The next instant [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.candidates
            .values()
            .filter_map(|c| match c.state {
                State::Probing { deadline, .. } => Some(deadline),
                State::Confirmed { reprobe_at } => Some(reprobe_at),
                State::Failed { retry_at } => Some(retry_at),
                State::Due { .. } => None,
            })
            .min()
    }

    /// A probe to ask of a peer: send it `ProbeRequest` on the control channel.
    pub fn poll_request(&mut self) -> Option<(P, ProbeRequest)> {
        self.requests.pop_front()
    }

    /// What changed since the last call.
    pub fn poll_event(&mut self) -> Option<ReachabilityEvent> {
        self.events.pop_front()
    }

    /// Addresses a probe reached, in address order: announce these.
    pub fn confirmed(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates
            .iter()
            .filter(|(_, c)| c.is_confirmed())
            .map(|(a, _)| *a)
    }

    /// True once an address beyond the local network is confirmed: we can serve as a
    /// rendezvous. A confirmed private address (a member on our LAN probed it) helps only
    /// members on that network, so it is announced but makes no rendezvous.
    pub fn is_reachable(&self) -> bool {
        self.candidates
            .iter()
            .any(|(addr, c)| c.is_confirmed() && is_beyond_local_network(addr))
    }

    /// Addresses our router forwards to us (port mappings), confirmed or not.
    pub fn mappings(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates
            .iter()
            .filter(|(_, c)| c.mapped)
            .map(|(a, _)| *a)
    }

    /// Every address peers report, confirmed or not (hole punching tries them all).
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates.keys().copied()
    }

    fn schedule(&mut self, now: Instant) {
        let deadline = now + self.config.probe_timeout;
        let Self {
            rng,
            linked,
            candidates,
            bound,
            requests,
            ..
        } = self;
        for (addr, candidate) in candidates.iter_mut() {
            let State::Due { confirmed } = candidate.state else {
                continue;
            };
            // A sole witness may not confirm its own report; anyone linked may when two agree,
            // or when we vouch for the address ourselves (our router maps it, our socket is
            // bound to it), as then no report could have misled us.
            let ours = candidate.mapped || bound.contains(addr);
            let eligible: Vec<&P> = linked
                .iter()
                .filter(|p| {
                    ours || candidate.observers.len() >= 2 || !candidate.observers.contains(*p)
                })
                .collect();
            if eligible.is_empty() {
                continue;
            }
            let prober = eligible[rng.gen_range(0..eligible.len())].clone();
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill(&mut nonce);
            candidate.state = State::Probing {
                nonce,
                prober: prober.clone(),
                deadline,
                confirmed,
                heard: false,
            };
            requests.push_back((prober, ProbeRequest { addr: *addr, nonce }));
        }
    }
}

impl<P> Candidate<P> {
    /// Seen (or mapped) for the first time at `now`: due for a probe.
    fn new(now: Instant) -> Self {
        Self {
            observers: BTreeSet::new(),
            mapped: false,
            last_seen: now,
            state: State::Due { confirmed: false },
            unanswered: 0,
        }
    }

    fn is_confirmed(&self) -> bool {
        matches!(
            self.state,
            State::Confirmed { .. }
                | State::Due { confirmed: true }
                | State::Probing {
                    confirmed: true,
                    ..
                }
        )
    }
}
