//! A home router as RFC 4787 describes it: it translates a host's private address to its own
//! public one (a *mapping*: which external port stands for which internal address, chosen per
//! destination or not) and lets in only what its *filtering* allows back through a mapping.
//!
//! | [`NatKind`] | mapping | filtering |
//! |---|---|---|
//! | `none` | one to one (every port forwarded, as a cloud VM's) | none |
//! | `full-cone` | endpoint-independent, port preserved | endpoint-independent |
//! | `restricted` | endpoint-independent, port preserved | address-dependent |
//! | `port-restricted` | endpoint-independent, port preserved (Linux masquerade) | address-and-port-dependent |
//! | `symmetric` | address-and-port-dependent: a new port per destination | address-and-port-dependent |
//!
//! Mappings (and what they let back in) expire [`MAPPING_TIMEOUT`] after the host last sent
//! through them. A port forwarded on request ([`Router::forward`], the simulator's UPnP IGD)
//! never expires and lets anyone in. Sending to the router's own public address comes back in
//! (hairpinning). Everything is in ordered maps and driven by the caller's clock: a run
//! replays.

use crate::scenario::NatKind;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long a NAT keeps a mapping without outbound traffic (RFC 4787 asks for ≥ 2 min; many
/// home routers use 30 s for UDP).
pub const MAPPING_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a symmetric NAT starts handing out ports (Linux picks them at random; sequential
/// ports replay and are no easier to guess for a member, who never tries).
const FIRST_DYNAMIC_PORT: u16 = 40000;

/// One external port of the router.
#[derive(Debug)]
struct Mapping {
    internal: SocketAddr,
    /// The one destination it serves (endpoint-dependent mapping), or any.
    destination: Option<SocketAddr>,
    last_out: Duration,
    /// Forwarded on request: never expires, lets anyone in.
    forwarded: bool,
    /// Destinations sent to through it, and when last: what filtering lets back in.
    sent_to: BTreeMap<SocketAddr, Duration>,
}

impl Mapping {
    fn live(&self, now: Duration) -> bool {
        self.forwarded || now.saturating_sub(self.last_out) < MAPPING_TIMEOUT
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Router {
    public: IpAddr,
    kind: NatKind,
    /// By external port.
    mappings: BTreeMap<u16, Mapping>,
    next_port: u16,
}

impl Router {
    pub fn new(public: IpAddr, kind: NatKind) -> Self {
        Self {
            public,
            kind,
            mappings: BTreeMap::new(),
            next_port: FIRST_DYNAMIC_PORT,
        }
    }

    /// The source a datagram from `from` to `to` leaves the router with; maps a port if none
    /// serves it yet.
    pub fn outbound(&mut self, from: SocketAddr, to: SocketAddr, now: Duration) -> SocketAddr {
        if self.kind == NatKind::None {
            return SocketAddr::new(self.public, from.port());
        }
        let destination = (self.kind == NatKind::Symmetric).then_some(to);
        let existing = self
            .mappings
            .iter()
            .find(|(_, m)| {
                m.internal == from && m.live(now) && (m.forwarded || m.destination == destination)
            })
            .map(|(port, _)| *port);
        let port = match existing {
            Some(port) => port,
            None => {
                // Endpoint-independent mapping keeps the host's port number when it is free.
                let preserve = destination.is_none() && !self.holds(from.port(), now);
                let port = if preserve {
                    from.port()
                } else {
                    self.free_port(now)
                };
                self.mappings.insert(
                    port,
                    Mapping {
                        internal: from,
                        destination,
                        last_out: now,
                        forwarded: false,
                        sent_to: BTreeMap::new(),
                    },
                );
                port
            }
        };
        if let Some(mapping) = self.mappings.get_mut(&port) {
            mapping.last_out = now;
            mapping.sent_to.insert(to, now);
        }
        SocketAddr::new(self.public, port)
    }

    /// The host address a datagram to external `port` goes to, if a mapping holds the port.
    pub fn inbound(&mut self, host: IpAddr, port: u16, now: Duration) -> Option<SocketAddr> {
        if self.kind == NatKind::None {
            return Some(SocketAddr::new(host, port));
        }
        match self.mappings.get(&port) {
            Some(m) if m.live(now) => Some(m.internal),
            Some(_) => {
                self.mappings.remove(&port);
                None
            }
            None => None,
        }
    }

    /// Whether the filter lets a datagram from `seen_from`, sent to external `port`, reach
    /// `local` (decided on arrival: the mapping may have changed since it was sent).
    pub fn admits(
        &self,
        local: SocketAddr,
        seen_from: SocketAddr,
        port: u16,
        now: Duration,
    ) -> bool {
        if self.kind == NatKind::None {
            return true;
        }
        let Some(mapping) = self.mappings.get(&port) else {
            return false;
        };
        if mapping.internal != local || !mapping.live(now) {
            return false;
        }
        let recent = |t: &Duration| now.saturating_sub(*t) < MAPPING_TIMEOUT;
        match self.kind {
            _ if mapping.forwarded => true,
            NatKind::None | NatKind::FullCone => true,
            NatKind::Restricted => mapping
                .sent_to
                .iter()
                .any(|(to, t)| to.ip() == seen_from.ip() && recent(t)),
            NatKind::PortRestricted | NatKind::Symmetric => {
                mapping.sent_to.get(&seen_from).is_some_and(recent)
            }
        }
    }

    /// Forwards an external port to `internal` for good (the port number itself if free),
    /// as a router does when asked over UPnP IGD; returns the public address.
    pub fn forward(&mut self, internal: SocketAddr, now: Duration) -> SocketAddr {
        if self.kind == NatKind::None {
            return SocketAddr::new(self.public, internal.port());
        }
        let port = if self
            .mappings
            .get(&internal.port())
            .is_some_and(|m| m.live(now) && m.internal != internal)
        {
            self.free_port(now)
        } else {
            internal.port()
        };
        let sent_to = self
            .mappings
            .remove(&port)
            .map(|m| m.sent_to)
            .unwrap_or_default();
        self.mappings.insert(
            port,
            Mapping {
                internal,
                destination: None,
                last_out: now,
                forwarded: true,
                sent_to,
            },
        );
        SocketAddr::new(self.public, port)
    }

    fn holds(&self, port: u16, now: Duration) -> bool {
        self.mappings.get(&port).is_some_and(|m| m.live(now))
    }

    fn free_port(&mut self, now: Duration) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = if port == u16::MAX { 1024 } else { port + 1 };
            if !self.holds(port, now) {
                return port;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: [u8; 4] = [198, 51, 100, 7];

    fn router(kind: NatKind) -> Router {
        Router::new(IpAddr::from(PUBLIC), kind)
    }

    fn host(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 168, 0, 7], port))
    }

    fn peer(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, last], port))
    }

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn a_cone_keeps_one_port_for_every_destination_and_its_filter_decides_who_gets_in() {
        for (kind, other_port, other_host) in [
            (NatKind::FullCone, true, true),
            (NatKind::Restricted, true, false),
            (NatKind::PortRestricted, false, false),
        ] {
            let mut r = router(kind);
            let a = r.outbound(host(5000), peer(1, 4433), T);
            let b = r.outbound(host(5000), peer(2, 4433), T);
            assert_eq!(
                a,
                SocketAddr::from((PUBLIC, 5000)),
                "{kind:?}: port preserved"
            );
            assert_eq!(a, b, "{kind:?}: endpoint-independent");
            assert_eq!(r.inbound(host(0).ip(), 5000, T), Some(host(5000)));
            assert!(r.admits(host(5000), peer(1, 4433), 5000, T));
            assert_eq!(
                r.admits(host(5000), peer(1, 9), 5000, T),
                other_port,
                "{kind:?}"
            );
            assert_eq!(
                r.admits(host(5000), peer(3, 4433), 5000, T),
                other_host,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_symmetric_nat_gives_each_destination_its_own_port() {
        let mut r = router(NatKind::Symmetric);
        let a = r.outbound(host(5000), peer(1, 4433), T);
        let b = r.outbound(host(5000), peer(2, 4433), T);
        assert_ne!(a.port(), b.port());
        assert_eq!(
            r.outbound(host(5000), peer(1, 4433), T),
            a,
            "kept while in use"
        );
        // Peer 2 cannot reach us at the port peer 1 saw.
        assert!(!r.admits(host(5000), peer(2, 4433), a.port(), T));
        assert!(r.admits(host(5000), peer(2, 4433), b.port(), T));
    }

    #[test]
    fn mappings_expire_without_outbound_traffic_and_forwarded_ports_do_not() {
        let mut r = router(NatKind::PortRestricted);
        r.outbound(host(5000), peer(1, 4433), T);
        let later = T + MAPPING_TIMEOUT;
        assert!(!r.admits(host(5000), peer(1, 4433), 5000, later));
        assert_eq!(r.inbound(host(0).ip(), 5000, later), None);
        let forwarded = r.forward(host(6000), T);
        assert_eq!(forwarded, SocketAddr::from((PUBLIC, 6000)));
        assert!(r.admits(host(6000), peer(9, 1), 6000, later * 100));
        assert_eq!(
            r.outbound(host(6000), peer(1, 4433), later),
            forwarded,
            "the forwarded port carries outbound traffic too"
        );
    }

    #[test]
    fn a_public_host_is_forwarded_one_to_one() {
        let mut r = router(NatKind::None);
        assert_eq!(
            r.outbound(host(4433), peer(1, 1), T),
            SocketAddr::from((PUBLIC, 4433))
        );
        assert_eq!(r.inbound(host(0).ip(), 4433, T), Some(host(4433)));
        assert!(r.admits(host(4433), peer(2, 2), 4433, T));
    }
}
