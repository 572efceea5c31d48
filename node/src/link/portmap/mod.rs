//! Port mapping on the home router: ask the gateway of the local network to forward a public
//! UDP port to the node's QUIC port, renew the lease before it runs out, and remove the mapping
//! when the node stops. UPnP IGD first ([`upnp`]), then PCP ([`pcp`]), then NAT-PMP ([`pmp`]).
//!
//! What it learns goes to the member as [`PortMapping`] reports. A mapped address is only a
//! candidate there: it is announced once a probe from a stranger's port gets in, so a router
//! that lies, sits behind carrier-grade NAT or still filters costs one probe and nothing else.
//!
//! UPnP IGD through `igd-next`, the client libp2p-upnp uses; NAT-PMP through `natpmp`; PCP
//! encoded here (no maintained crate we could use speaks it: iroh's `portmapper` does all three
//! but needs a newer compiler than ours and brings iroh's networking stack along). PCP before
//! NAT-PMP: a gateway that speaks both (miniupnpd) takes either, and one that speaks only
//! NAT-PMP (Apple's) answers PCP's version with its own at once.

pub mod pcp;
mod pmp;
mod upnp;

use callsign_mesh::member::PortMapping;
use callsign_mesh::reachability::is_beyond_local_network;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a mapping is called on the router's page.
const DESCRIPTION: &str = "callsign voice";

/// How the node asks for its mapping.
#[derive(Clone, Debug)]
pub struct PortMapConfig {
    /// Where the search for a UPnP gateway goes: SSDP's multicast group (tests point it at a
    /// router of their own).
    pub ssdp: SocketAddr,
    /// The NAT-PMP gateway; `None`: the default route's.
    pub natpmp_gateway: Option<Ipv4Addr>,
    /// The lease asked for; renewed at half of it. Routers that only grant permanent leases
    /// get one, removed at shutdown.
    pub lease: Duration,
    /// How long to wait for a gateway to answer, per protocol.
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
            natpmp_gateway: None,
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

/// The thread that holds the mapping. Its reports arrive on [`PortMapper::recv`];
/// [`PortMapper::stop`] removes the mapping.
///
/// It runs on a thread and runtime of its own: it talks to router software we do not control
/// (HTTP and SOAP for UPnP, datagrams for NAT-PMP) through crates that may block or spin on
/// what a router sends, and none of that may stall the node's voice and links. (In the test
/// bed a member behind a router that refuses every mapping once stalled its node's runtime.)
pub struct PortMapper {
    reports: mpsc::UnboundedReceiver<PortMapping>,
    stop: oneshot::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PortMapper {
    /// Starts asking for a mapping to `local` (the QUIC socket's address).
    pub fn start(local: SocketAddr, config: PortMapConfig) -> Self {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let span = tracing::Span::current();
        let failed = reports_tx.clone();
        let thread = std::thread::Builder::new()
            .name("port-mapping".into())
            .spawn(move || {
                let _entered = span.enter();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(hold(local, config, reports_tx, stopped)),
                    Err(e) => {
                        let _ = reports_tx.send(PortMapping::Unavailable {
                            reason: format!("cannot start the port mapping runtime ({e})"),
                        });
                    }
                }
            })
            .map_err(|e| {
                let _ = failed.send(PortMapping::Unavailable {
                    reason: format!("cannot start the port mapping thread ({e})"),
                });
            })
            .ok();
        Self {
            reports,
            stop,
            thread,
        }
    }

    /// The next report; pending forever once the mapper has ended.
    pub async fn recv(&mut self) -> PortMapping {
        match self.reports.recv().await {
            Some(report) => report,
            None => std::future::pending().await,
        }
    }

    /// Removes the mapping (waiting at most the configured removal timeout) and ends the
    /// thread; a thread stuck in a router's answer is left behind after a few seconds more.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let Some(thread) = self.thread else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(Duration::from_secs(5), joined).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::warn!("the port mapping thread ended badly"),
            Err(_) => tracing::warn!("the port mapping thread did not stop; left behind"),
        }
    }
}

/// A mapping the router granted, by the protocol that asked.
enum Held {
    Upnp(upnp::UpnpMapping),
    Pcp(pcp::PcpMapping),
    NatPmp(pmp::PmpMapping),
}

impl Held {
    fn external(&self) -> SocketAddr {
        match self {
            Held::Upnp(m) => m.external,
            Held::Pcp(m) => m.external,
            Held::NatPmp(m) => m.external,
        }
    }

    fn protocol(&self) -> &'static str {
        match self {
            Held::Upnp(_) => "UPnP IGD",
            Held::Pcp(_) => "PCP",
            Held::NatPmp(_) => "NAT-PMP",
        }
    }

    /// Seconds; 0: permanent.
    fn lease_s(&self) -> u32 {
        match self {
            Held::Upnp(m) => m.lease_s,
            Held::Pcp(m) => m.lease_s,
            Held::NatPmp(m) => m.lease_s,
        }
    }

    async fn renew(&mut self) -> Result<(), String> {
        match self {
            Held::Upnp(m) => m.renew().await,
            Held::Pcp(m) => m.renew().await,
            Held::NatPmp(m) => m.renew().await,
        }
    }

    async fn remove(&mut self) -> Result<(), String> {
        match self {
            Held::Upnp(m) => m.remove().await,
            Held::Pcp(m) => m.remove().await,
            Held::NatPmp(m) => m.remove().await,
        }
    }
}

/// UPnP IGD, else PCP, else NAT-PMP; the reasons of all three when none maps.
async fn map(local: SocketAddr, config: &PortMapConfig) -> Result<Held, String> {
    let upnp = match upnp::map(local, config).await {
        Ok(mapping) => return Ok(Held::Upnp(mapping)),
        Err(why) => why,
    };
    let pcp = match pcp::map(local, config).await {
        Ok(mapping) => return Ok(Held::Pcp(mapping)),
        Err(why) => why,
    };
    match pmp::map(local, config).await {
        Ok(mapping) => Ok(Held::NatPmp(mapping)),
        Err(pmp) => Err(format!("{upnp}; {pcp}; {pmp}")),
    }
}

/// Refuses a router whose own public address is private or shared: another NAT sits in
/// front of it (carrier-grade NAT, a second router), so a mapping would reach nobody.
fn private_router_address(external: IpAddr) -> Result<(), String> {
    if is_beyond_local_network(&SocketAddr::new(external, 1)) {
        Ok(())
    } else {
        Err(format!(
            "the router's own address {external} is private: another NAT sits in front of it \
             (carrier-grade NAT?), so a mapping would reach nobody"
        ))
    }
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
        let mut held = match attempt {
            Ok(held) => held,
            Err(reason) => {
                // Said once per distinct reason: a network without a mapping router stays
                // quiet after.
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
        let external = held.external();
        tracing::info!(%external, lease_s = held.lease_s(), protocol = held.protocol(),
            "port mapping granted");
        let _ = reports.send(PortMapping::Mapped {
            external,
            protocol: held.protocol().into(),
        });
        // Renewed at half the lease. A permanent lease needs no renewal, but the router may
        // reboot and forget it: it is re-asserted as often as the lease we asked for.
        let granted = match held.lease_s() {
            0 => config.lease,
            s => Duration::from_secs(u64::from(s)),
        };
        let renew_every = (granted / 2).max(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {
                    if let Err(reason) = held.renew().await {
                        tracing::info!(%reason, %external, "port mapping renewal failed");
                        let _ = reports.send(PortMapping::Lost { external, reason });
                        break;
                    }
                }
                _ = &mut stopped => {
                    match tokio::time::timeout(config.remove_timeout, held.remove()).await {
                        Ok(Ok(())) => tracing::info!(%external, "port mapping removed"),
                        Ok(Err(e)) => tracing::info!(%e, %external, "removing the port mapping failed"),
                        Err(_) => tracing::info!(%external, "the router did not confirm the removal in time"),
                    }
                    let _ = reports.send(PortMapping::Lost {
                        external,
                        reason: "the node stopped".into(),
                    });
                    return;
                }
            }
        }
    }
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
    fn a_router_behind_another_nat_is_refused() {
        assert!(private_router_address(IpAddr::from([198, 51, 100, 7])).is_ok());
        for behind in [[100, 64, 3, 4], [10, 0, 0, 1], [192, 168, 0, 1]] {
            let why = private_router_address(IpAddr::from(behind)).unwrap_err();
            assert!(why.contains("another NAT"), "{why}");
        }
    }
}
