//! NAT-PMP (RFC 6886) through the `natpmp` crate: ask the default gateway for its public
//! address and a mapping of our port, renew, remove. The crate sends and parses; the
//! retransmission schedule (250 ms, doubling) and the time limit are ours, since its receive
//! waits for ever.

use super::{private_router_address, PortMapConfig};
use natpmp::{NatpmpAsync, Protocol, Response};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

/// A mapping a NAT-PMP gateway granted.
pub(super) struct PmpMapping {
    client: NatpmpAsync<UdpSocket>,
    pub external: SocketAddr,
    private_port: u16,
    /// Seconds, as granted.
    pub lease_s: u32,
    budget: Duration,
}

/// What we ask the gateway.
#[derive(Clone, Copy)]
enum Request {
    PublicAddress,
    Map {
        private_port: u16,
        public_port: u16,
        lifetime_s: u32,
    },
}

/// Asks the default gateway (or `config.natpmp_gateway`) to map our port.
pub(super) async fn map(local: SocketAddr, config: &PortMapConfig) -> Result<PmpMapping, String> {
    let gateway = match config.natpmp_gateway {
        Some(gateway) => gateway,
        None => default_gateway(config.search_timeout).await?,
    };
    let mut client = natpmp::new_tokio_natpmp_with(gateway)
        .await
        .map_err(|e| format!("NAT-PMP to {gateway}: {e}"))?;
    let budget = config.search_timeout;
    let public = match exchange(&mut client, Request::PublicAddress, budget).await? {
        Response::Gateway(g) => *g.public_address(),
        _ => {
            return Err(format!(
                "the NAT-PMP router at {gateway} answered out of turn"
            ))
        }
    };
    if public.is_unspecified() {
        return Err(format!(
            "the NAT-PMP router at {gateway} has no public address yet"
        ));
    }
    private_router_address(IpAddr::V4(public))?;
    let lifetime_s = u32::try_from(config.lease.as_secs()).unwrap_or(u32::MAX);
    let request = Request::Map {
        private_port: local.port(),
        public_port: local.port(),
        lifetime_s,
    };
    let granted = granted(exchange(&mut client, request, budget).await?, gateway)?;
    Ok(PmpMapping {
        client,
        external: SocketAddr::new(IpAddr::V4(public), granted.0),
        private_port: local.port(),
        lease_s: granted.1,
        budget,
    })
}

impl PmpMapping {
    /// Asks for the same public port again; a gateway that rebooted may give another, which
    /// counts as losing this mapping.
    pub(super) async fn renew(&mut self) -> Result<(), String> {
        let request = Request::Map {
            private_port: self.private_port,
            public_port: self.external.port(),
            lifetime_s: self.lease_s.max(60),
        };
        let gateway = *self.client.gateway();
        let (port, lease_s) = granted(
            exchange(&mut self.client, request, self.budget).await?,
            gateway,
        )?;
        if port != self.external.port() {
            return Err(format!(
                "the NAT-PMP router at {gateway} moved the mapping to port {port}"
            ));
        }
        self.lease_s = lease_s;
        Ok(())
    }

    /// A mapping with lifetime 0 deletes it (RFC 6886 §3.4).
    pub(super) async fn remove(&mut self) -> Result<(), String> {
        let request = Request::Map {
            private_port: self.private_port,
            public_port: 0,
            lifetime_s: 0,
        };
        exchange(&mut self.client, request, self.budget)
            .await
            .map(|_| ())
    }
}

/// The default route's gateway. The lookup reads the routing table through blocking system
/// calls (netlink, /proc), so it runs off the runtime's workers, and is bounded.
pub(super) async fn default_gateway(limit: Duration) -> Result<Ipv4Addr, String> {
    let lookup = tokio::task::spawn_blocking(natpmp::get_default_gateway);
    match tokio::time::timeout(limit, lookup).await {
        Ok(Ok(Ok(gateway))) => Ok(gateway),
        Ok(Ok(Err(e))) => Err(format!("no default gateway to ask over NAT-PMP ({e})")),
        Ok(Err(e)) => Err(format!("looking up the default gateway failed ({e})")),
        Err(_) => Err("looking up the default gateway took too long".into()),
    }
}

/// The (public port, lifetime) of a UDP mapping response.
fn granted(response: Response, gateway: Ipv4Addr) -> Result<(u16, u32), String> {
    match response {
        Response::UDP(m) if m.public_port() != 0 => Ok((
            m.public_port(),
            u32::try_from(m.lifetime().as_secs()).unwrap_or(u32::MAX),
        )),
        _ => Err(format!(
            "the NAT-PMP router at {gateway} answered a mapping request with something else"
        )),
    }
}

/// Sends `request` and waits for the answer, resending at 250 ms, 500 ms, … until `budget`
/// is spent.
async fn exchange(
    client: &mut NatpmpAsync<UdpSocket>,
    request: Request,
    budget: Duration,
) -> Result<Response, String> {
    let gateway = *client.gateway();
    let deadline = tokio::time::Instant::now() + budget;
    let mut wait = Duration::from_millis(250);
    loop {
        let sent = match request {
            Request::PublicAddress => client.send_public_address_request().await,
            Request::Map {
                private_port,
                public_port,
                lifetime_s,
            } => {
                client
                    .send_port_mapping_request(Protocol::UDP, private_port, public_port, lifetime_s)
                    .await
            }
        };
        sent.map_err(|e| format!("NAT-PMP to {gateway}: {e}"))?;
        let until = (tokio::time::Instant::now() + wait).min(deadline);
        match tokio::time::timeout_at(until, client.read_response_or_retry()).await {
            Ok(Ok(response)) => return Ok(response),
            // Receiving failed: ICMP port unreachable, nothing listens for NAT-PMP there.
            Ok(Err(natpmp::Error::NATPMP_ERR_RECVFROM)) => {
                return Err(format!(
                    "no NAT-PMP router answered at {gateway} (port closed)"
                ))
            }
            Ok(Err(e)) => return Err(format!("the NAT-PMP router at {gateway} refused ({e})")),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("no NAT-PMP router answered at {gateway}"))
            }
            Err(_) => wait *= 2,
        }
    }
}
