//! Finding the charter's rented relays again. The charter names each relay's addresses, but a
//! restarted relay may come back elsewhere (a new port, a new VPS address) and cannot sign a
//! charter edit. So members and relays remember where their links to a relay came from, tell
//! their other peers (`ControlMessage::RelayAddress`, also to every peer that links later), and
//! dial every charter relay they are not linked to every [`RELAY_REDIAL`] at those addresses and
//! the charter's. A member behind a NAT that
//! filters strangers cannot be dialed by the relay; its own dial opens the way.
//!
//! The hints are unsigned: a dial names the relay's peer id, so a wrong address costs one
//! failed dial and never a link to anyone else.

use super::{DialCondition, Member, Output};
use crate::charter::RelayInfo;
use crate::control::ControlMessage;
use callsign_keys::IdentityKey;
use multiaddr::{Multiaddr, Protocol};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often relays the charter lists but we are not linked to are dialed.
pub(super) const RELAY_REDIAL: Duration = Duration::from_secs(2);
/// Addresses remembered per relay, newest first.
const KEPT: usize = 4;

/// Where `relay` may be: where members last saw it (`seen`, newest first), then the charter's
/// addresses for it.
pub(super) fn relay_addrs_of(
    seen: &BTreeMap<IdentityKey, Vec<Multiaddr>>,
    relay: &IdentityKey,
    info: &RelayInfo,
) -> Vec<Multiaddr> {
    let mut addrs = seen.get(relay).cloned().unwrap_or_default();
    for addr in info
        .addrs
        .iter()
        .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
    {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}

/// A direct QUIC address (`/ip4|ip6/…/udp/…/quic-v1`, optionally `/p2p/…`), which is all a
/// relay hint may be.
fn is_direct_quic(addr: &Multiaddr) -> bool {
    let mut parts = addr.iter();
    matches!(parts.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_)))
        && matches!(parts.next(), Some(Protocol::Udp(_)))
        && matches!(parts.next(), Some(Protocol::QuicV1))
        && parts.all(|p| matches!(p, Protocol::P2p(_)))
}

impl Member {
    /// A link to the charter relay `relay` came up from `remote`: remember it, and tell the
    /// peers we are linked to unless our last link to it came from there too. Whether a peer
    /// had told us of the address first does not matter: we pass on what we saw, not what we
    /// heard, and the peers that told us are not the only ones that need it (a fellow relay of
    /// our region learns where a relay restarted during a partition from its members, which
    /// heard it from the other region's before they could link).
    pub(super) fn relay_seen_at(&mut self, relay: IdentityKey, remote: &Multiaddr) {
        self.learn_relay_address(relay, remote);
        if !self.is_relay_hint(&relay, remote) || self.relay_told.get(&relay) == Some(remote) {
            return;
        }
        self.relay_told.insert(relay, remote.clone());
        let message = ControlMessage::RelayAddress {
            relay,
            addr: remote.to_vec(),
        };
        let relay_peer = relay.peer_id();
        for (_, control) in self.peers.iter_mut().filter(|(p, _)| **p != relay_peer) {
            control.queue(message.clone());
        }
    }

    /// What a peer that just linked should hear of where the charter's relays are (the newest
    /// address we know for each, the peer itself left out): hints sent while it was cut off
    /// (a partition, its own restart) never reached it, and a relay needs them to find a
    /// fellow relay that restarted elsewhere, as members do.
    pub(super) fn relay_hints_for(&self, peer: &IdentityKey) -> Vec<ControlMessage> {
        self.relay_addrs
            .iter()
            .filter(|(relay, _)| *relay != peer)
            .filter_map(|(relay, addrs)| {
                addrs.first().map(|addr| ControlMessage::RelayAddress {
                    relay: *relay,
                    addr: addr.to_vec(),
                })
            })
            .collect()
    }

    /// A member told us where it saw `relay`.
    pub(super) fn relay_address_heard(&mut self, relay: IdentityKey, addr: &[u8], now: Instant) {
        let Ok(addr) = Multiaddr::try_from(addr.to_vec()) else {
            return;
        };
        if self.learn_relay_address(relay, &addr) {
            self.next_relay_dial = now;
        }
    }

    /// Whether `addr` may be a hint for `relay`: a charter relay, at a direct QUIC address.
    fn is_relay_hint(&self, relay: &IdentityKey, addr: &Multiaddr) -> bool {
        self.state().relays.contains_key(relay) && is_direct_quic(addr)
    }

    fn learn_relay_address(&mut self, relay: IdentityKey, addr: &Multiaddr) -> bool {
        if !self.is_relay_hint(&relay, addr) {
            return false;
        }
        let kept = self.relay_addrs.entry(relay).or_default();
        if kept.first() == Some(addr) {
            return false;
        }
        kept.retain(|a| a != addr);
        kept.insert(0, addr.clone());
        kept.truncate(KEPT);
        true
    }

    /// Whether a relay the charter lists is not linked (so [`Member::dial_relays`] is due
    /// every [`RELAY_REDIAL`]).
    pub(super) fn relay_missing(&self) -> bool {
        self.state()
            .relays
            .keys()
            .any(|k| *k != self.local && !self.links.contains_key(&k.peer_id()))
    }

    /// Dials every charter relay we are not linked to, at the addresses members saw it at and
    /// the charter's. A dial to addresses we have not tried yet goes out even while an older
    /// one is still in its handshake: that one may be to where the relay ran before it
    /// restarted, and waited out its handshake timeout (10 s) before the new address was
    /// tried (chaos seed 866: members found a restarted relay 12 s late, and a channel split
    /// between the two relays' routes).
    pub(super) fn dial_relays(&mut self) {
        let state = self.sync.charter().state();
        let dialed_at = &mut self.relay_dialed_at;
        let dials: Vec<Output> = state
            .relays
            .iter()
            .filter(|(k, _)| **k != self.local)
            .filter(|(k, _)| !self.links.contains_key(&k.peer_id()))
            .filter_map(|(k, info)| {
                let addrs = relay_addrs_of(&self.relay_addrs, k, info);
                if addrs.is_empty() {
                    return None;
                }
                let condition = if dialed_at.get(k) == Some(&addrs) {
                    DialCondition::DisconnectedAndNotDialing
                } else {
                    DialCondition::Disconnected
                };
                dialed_at.insert(*k, addrs.clone());
                Some(Output::Dial {
                    peer: Some(k.peer_id()),
                    addrs,
                    condition,
                })
            })
            .collect();
        self.outputs.extend(dials);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_quic_addresses_are_hints() {
        let ok: Multiaddr = "/ip4/203.0.113.7/udp/4434/quic-v1".parse().unwrap();
        assert!(is_direct_quic(&ok));
        for bad in [
            "/ip4/203.0.113.7/tcp/4434",
            "/ip4/203.0.113.7/udp/4434/quic-v1/p2p-circuit",
            "/dns4/relay.example/udp/4434/quic-v1",
            "/ip4/203.0.113.7/udp/4434",
        ] {
            assert!(!is_direct_quic(&bad.parse().unwrap()), "{bad}");
        }
    }
}
