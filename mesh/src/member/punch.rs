//! Hole punching within the member ([`crate::punch`]): a member linked to another only
//! through a relay circuit times a simultaneous dial with it over that circuit, aimed at the
//! candidate addresses each one's address book holds.

use super::reach::{quic_multiaddr, quic_socket_addr};
use super::{LinkKind, LinkRole, Member, Output, Role};
use crate::control::ControlMessage;
use crate::punch::{PunchAction, PunchMessage};
use crate::reachability::is_beyond_local_network;
use libp2p_identity::PeerId;
use std::net::SocketAddr;
use std::time::Instant;

impl Member {
    /// Where a punch may reach us: the public addresses our socket is bound to first (an
    /// IPv6 address needs no NAT, only a firewall's state, which the simultaneous dial
    /// opens), then every address peers saw us at, and our router's mapping.
    fn punch_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self
            .listen_addrs
            .iter()
            .filter_map(quic_socket_addr)
            .filter(is_beyond_local_network)
            .collect();
        for addr in self.reachability.candidates() {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// A link to `peer` came up (or was replaced): a member reached only through a circuit is
    /// one to punch to; any other link needs no punch.
    pub(super) fn punch_link_up(&mut self, peer: PeerId, kind: LinkKind, now: Instant) {
        let member = matches!(self.link_role(&peer), Some(LinkRole::Member(_)));
        if kind == LinkKind::Relayed && member && self.role == Role::Member {
            self.punches.relayed(peer, now);
        } else {
            self.punches.forget(&peer);
        }
    }

    /// A hole punch message from a member.
    pub(super) fn punch_message(&mut self, peer: PeerId, body: &[u8], now: Instant) {
        match PunchMessage::decode(body) {
            Ok(message) => {
                tracing::debug!(%peer, ?message, "hole punch message");
                let ours = self.punch_addrs();
                self.punches.handle_message(peer, message, &ours, now);
            }
            Err(e) => tracing::debug!(%peer, %e, "bad hole punch message"),
        }
    }

    /// Due offers and dials, and attempts that ran out of time.
    pub(super) fn punch_timeouts(&mut self, now: Instant) {
        let ours = self.punch_addrs();
        self.punches.handle_timeout(&ours, now);
    }

    /// Sends what the punches want sent and dialed.
    pub(super) fn flush_punches(&mut self) {
        while let Some(action) = self.punches.poll_action() {
            match action {
                PunchAction::Send(peer, message) => {
                    self.send_now(peer, ControlMessage::Punch(message.encode()))
                }
                PunchAction::Dial {
                    peer,
                    mut addrs,
                    role,
                } => {
                    // Never where another linked peer is: a second connection to it would
                    // replace the live one and then fail its handshake (not the peer we want),
                    // taking that link down (a member's own relay's address once reached a
                    // punch this way). An offer naming one is wrong or hostile.
                    let taken: Vec<SocketAddr> = self
                        .links
                        .iter()
                        .filter(|(p, _)| **p != peer)
                        .filter_map(|(_, l)| l.remote)
                        .collect();
                    addrs.retain(|a| !taken.contains(a));
                    if addrs.is_empty() {
                        continue;
                    }
                    tracing::info!(%peer, ?addrs, ?role, "hole punching");
                    self.outputs.push_back(Output::Punch {
                        peer,
                        addrs: addrs.into_iter().map(quic_multiaddr).collect(),
                        role,
                    });
                }
            }
        }
    }
}
