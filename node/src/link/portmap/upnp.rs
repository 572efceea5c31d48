//! UPnP IGD through `igd-next` (the client libp2p-upnp uses: tokio-native, maintained): find
//! the gateway by SSDP, ask for our port, renew, remove.

use super::{private_router_address, PortMapConfig, DESCRIPTION};
use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// A mapping an IGD granted.
pub(super) struct UpnpMapping {
    gateway: Gateway<Tokio>,
    pub external: SocketAddr,
    local: SocketAddr,
    /// Seconds; 0: permanent.
    pub lease_s: u32,
}

/// Finds the gateway and asks it for our port (the same number outside if it is free).
pub(super) async fn map(local: SocketAddr, config: &PortMapConfig) -> Result<UpnpMapping, String> {
    let options = SearchOptions {
        broadcast_address: config.ssdp,
        timeout: Some(config.search_timeout),
        single_search_timeout: Some(config.search_timeout),
        ..SearchOptions::default()
    };
    let gateway = igd_next::aio::tokio::search_gateway(options)
        .await
        .map_err(|e| format!("no UPnP router answered ({e})"))?;
    let external_ip = gateway
        .get_external_ip()
        .await
        .map_err(|e| format!("the UPnP router at {} gave no address ({e})", gateway.addr))?;
    let external_ip = match external_ip {
        IpAddr::V4(v4) if !v4.is_unspecified() => IpAddr::V4(v4),
        other => {
            return Err(format!(
                "the UPnP router at {} reports no usable public address ({other})",
                gateway.addr
            ))
        }
    };
    private_router_address(external_ip)?;
    let local = SocketAddr::new(local_ip_towards(local, gateway.addr)?, local.port());
    let lease_s = u32::try_from(config.lease.as_secs()).unwrap_or(u32::MAX);
    let (port, lease_s) = match add(&gateway, local.port(), local, lease_s).await {
        Ok(lease_s) => (local.port(), lease_s),
        Err(AddPortError::PortInUse | AddPortError::ActionNotAuthorized) => {
            // Another machine holds our port number outside: take any.
            let port = gateway
                .add_any_port(PortMappingProtocol::UDP, local, lease_s, DESCRIPTION)
                .await
                .map_err(|e| format!("the UPnP router refused a mapping ({e})"))?;
            (port, lease_s)
        }
        Err(e) => return Err(format!("the UPnP router refused a mapping ({e})")),
    };
    Ok(UpnpMapping {
        gateway,
        external: SocketAddr::new(external_ip, port),
        local,
        lease_s,
    })
}

impl UpnpMapping {
    pub(super) async fn renew(&self) -> Result<(), String> {
        add(
            &self.gateway,
            self.external.port(),
            self.local,
            self.lease_s,
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("the UPnP router refused to renew ({e})"))
    }

    pub(super) async fn remove(&self) -> Result<(), String> {
        self.gateway
            .remove_port(PortMappingProtocol::UDP, self.external.port())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Asks for `external_port` → `local`; a router that grants only permanent leases gets asked
/// for one. Returns the lease granted (0: permanent).
async fn add(
    gateway: &Gateway<Tokio>,
    external_port: u16,
    local: SocketAddr,
    lease_s: u32,
) -> Result<u32, AddPortError> {
    let udp = PortMappingProtocol::UDP;
    match gateway
        .add_port(udp, external_port, local, lease_s, DESCRIPTION)
        .await
    {
        Err(AddPortError::OnlyPermanentLeasesSupported) => gateway
            .add_port(udp, external_port, local, 0, DESCRIPTION)
            .await
            .map(|()| 0),
        other => other.map(|()| lease_s),
    }
}

/// The address of ours the router sees: the socket's own unless it is bound to every
/// interface, else the one the kernel routes towards the gateway through (no packet is sent).
fn local_ip_towards(local: SocketAddr, gateway: SocketAddr) -> Result<IpAddr, String> {
    if !local.ip().is_unspecified() {
        return Ok(local.ip());
    }
    let probe = UdpSocket::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0))
        .and_then(|s| s.connect(gateway).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no route to the UPnP router at {gateway} ({e})"))?;
    Ok(probe.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_is_the_bound_one_or_the_route_to_the_gateway() {
        let bound: SocketAddr = "192.168.1.20:5000".parse().unwrap();
        assert_eq!(
            local_ip_towards(bound, "192.168.1.1:1900".parse().unwrap()),
            Ok(bound.ip())
        );
        let any: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert_eq!(
            local_ip_towards(any, "127.0.0.1:1900".parse().unwrap()),
            Ok(IpAddr::from([127, 0, 0, 1]))
        );
    }
}
