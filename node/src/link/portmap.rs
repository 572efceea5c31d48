//! Port mapping on the home router: ask the UPnP IGD gateway of the local network to forward a
//! public UDP port to the node's QUIC port, renew the lease before it runs out, and remove the
//! mapping when the node stops.
//!
//! What it learns goes to the member as [`PortMapping`] reports. A mapped address is only a
//! candidate there: it is announced once a probe from a stranger's port gets in, so a router
//! that lies, sits behind carrier-grade NAT or still filters costs one probe and nothing else.
//!
//! UPnP IGD through `igd-next`, the client libp2p-upnp uses (already in the dependency tree,
//! tokio-native, maintained). NAT-PMP and PCP are not asked yet: no maintained crate here
//! speaks PCP (iroh's `portmapper` does all three but needs a newer compiler than ours and
//! brings iroh's networking stack along).

use callsign_mesh::member::PortMapping;
use callsign_mesh::reachability::is_beyond_local_network;
use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What a mapping is called on the router's page.
const DESCRIPTION: &str = "callsign voice";

/// How the node asks for its mapping.
#[derive(Clone, Debug)]
pub struct PortMapConfig {
    /// Where the search for a gateway goes: SSDP's multicast group (tests point it at a
    /// router of their own).
    pub ssdp: SocketAddr,
    /// The lease asked for; renewed at half of it. Routers that only grant permanent leases
    /// get one, removed at shutdown.
    pub lease: Duration,
    /// How long to wait for a gateway to answer the search.
    pub search_timeout: Duration,
    /// After a failure (no gateway, a refusal), ask again this much later: the user may
    /// enable UPnP, or roam to another network.
    pub retry_after: Duration,
    /// How long shutdown waits for the router to confirm the removal.
    pub remove_timeout: Duration,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        Self {
            ssdp: SocketAddr::from(([239, 255, 255, 250], 1900)),
            lease: Duration::from_secs(3600),
            search_timeout: Duration::from_secs(3),
            retry_after: Duration::from_secs(300),
            remove_timeout: Duration::from_secs(2),
        }
    }
}

/// Whether asking a router makes sense for a socket bound to `local`: not on loopback (tests,
/// one machine) and not when the address is already public.
pub fn worth_mapping(local: SocketAddr) -> bool {
    !local.ip().is_loopback() && (local.ip().is_unspecified() || !is_beyond_local_network(&local))
}

/// The background task that holds the mapping. Its reports arrive on [`PortMapper::recv`];
/// [`PortMapper::stop`] removes the mapping.
pub struct PortMapper {
    reports: mpsc::UnboundedReceiver<PortMapping>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PortMapper {
    /// Starts asking for a mapping to `local` (the QUIC socket's address). Must run inside a
    /// tokio runtime on real sockets.
    pub fn start(local: SocketAddr, config: PortMapConfig) -> Self {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(tracing::Instrument::in_current_span(hold(
            local, config, reports_tx, stopped,
        )));
        Self {
            reports,
            stop,
            task,
        }
    }

    /// The next report; pending forever once the task has ended.
    pub async fn recv(&mut self) -> PortMapping {
        match self.reports.recv().await {
            Some(report) => report,
            None => std::future::pending().await,
        }
    }

    /// Removes the mapping (waiting at most the configured removal timeout) and ends the task.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::warn!(%e, "the port mapping task ended badly");
        }
    }
}

/// A mapping the router granted.
struct Held {
    gateway: Gateway<Tokio>,
    external: SocketAddr,
    local: SocketAddr,
    lease_s: u32,
}

async fn hold(
    local: SocketAddr,
    config: PortMapConfig,
    reports: mpsc::UnboundedSender<PortMapping>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut last_failure: Option<String> = None;
    loop {
        let attempt = tokio::select! {
            attempt = map(local, &config) => attempt,
            _ = &mut stopped => return,
        };
        let held = match attempt {
            Ok(held) => held,
            Err(reason) => {
                // Said once per distinct reason: a network without UPnP stays quiet after.
                if last_failure.as_ref() != Some(&reason) {
                    tracing::info!(%reason, "no port mapping");
                    let _ = reports.send(PortMapping::Unavailable {
                        reason: reason.clone(),
                    });
                    last_failure = Some(reason);
                }
                tokio::select! {
                    _ = tokio::time::sleep(config.retry_after) => continue,
                    _ = &mut stopped => return,
                }
            }
        };
        last_failure = None;
        tracing::info!(external = %held.external, local = %held.local, lease_s = held.lease_s,
            "UPnP port mapping granted");
        let _ = reports.send(PortMapping::Mapped {
            external: held.external,
            protocol: "UPnP IGD".into(),
        });
        // Renewed at half the lease. A permanent lease needs no renewal, but the router may
        // reboot and forget it: it is re-asserted as often as the lease we asked for.
        let granted = match held.lease_s {
            0 => config.lease,
            s => Duration::from_secs(u64::from(s)),
        };
        let renew_every = (granted / 2).max(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {
                    if let Err(reason) = renew(&held).await {
                        tracing::info!(%reason, external = %held.external, "port mapping renewal failed");
                        let _ = reports.send(PortMapping::Lost { external: held.external, reason });
                        break;
                    }
                }
                _ = &mut stopped => {
                    let removal = tokio::time::timeout(
                        config.remove_timeout,
                        held.gateway.remove_port(PortMappingProtocol::UDP, held.external.port()),
                    )
                    .await;
                    match removal {
                        Ok(Ok(())) => tracing::info!(external = %held.external, "port mapping removed"),
                        Ok(Err(e)) => tracing::info!(%e, external = %held.external, "removing the port mapping failed"),
                        Err(_) => tracing::info!(external = %held.external, "the router did not confirm the removal in time"),
                    }
                    let _ = reports.send(PortMapping::Lost {
                        external: held.external,
                        reason: "the node stopped".into(),
                    });
                    return;
                }
            }
        }
    }
}

/// Finds the gateway and asks it for our port (the same number outside if it is free).
async fn map(local: SocketAddr, config: &PortMapConfig) -> Result<Held, String> {
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
    if !is_beyond_local_network(&SocketAddr::new(external_ip, 1)) {
        return Err(format!(
            "the UPnP router's own address {external_ip} is private: another NAT sits in \
             front of it (carrier-grade NAT?), so a mapping would reach nobody"
        ));
    }
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
    Ok(Held {
        gateway,
        external: SocketAddr::new(external_ip, port),
        local,
        lease_s,
    })
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

async fn renew(held: &Held) -> Result<(), String> {
    add(
        &held.gateway,
        held.external.port(),
        held.local,
        held.lease_s,
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("the UPnP router refused to renew ({e})"))
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
    fn loopback_and_public_sockets_are_not_mapped() {
        assert!(!worth_mapping("127.0.0.1:5000".parse().unwrap()));
        assert!(!worth_mapping("198.51.100.7:5000".parse().unwrap()));
        assert!(worth_mapping("0.0.0.0:5000".parse().unwrap()));
        assert!(worth_mapping("192.168.1.20:5000".parse().unwrap()));
    }

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
