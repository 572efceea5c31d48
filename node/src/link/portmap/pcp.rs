//! PCP (RFC 6887), the successor of NAT-PMP that carrier equipment and newer home routers
//! speak: a `MAP` request for our UDP port to the default gateway's port 5351, renewed with
//! the same nonce, removed with lifetime 0. No crate we could use speaks it, so the 60-byte
//! request and response are encoded here ([`encode_map`], [`parse_map_response`]); every
//! answer is checked before it is believed (version, opcode, result, nonce, protocol, port).
//! Retransmission: 250 ms, doubling, within the search budget (RFC 6887 §8.1.1 starts at 3 s,
//! which would leave a node waiting on a silent gateway longer than UPnP and NAT-PMP together).

use super::{private_router_address, PortMapConfig};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

/// The PCP server port on the gateway.
const PCP_PORT: u16 = 5351;
/// The version this client speaks (NAT-PMP is version 0).
const VERSION: u8 = 2;
const OPCODE_MAP: u8 = 1;
/// The response bit of the opcode byte.
const RESPONSE: u8 = 0x80;
const PROTOCOL_UDP: u8 = 17;
/// A `MAP` request or response: 24 bytes of header, 36 of `MAP` payload.
pub const MAP_LEN: usize = 60;

/// A `MAP` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// Seconds; 0 deletes the mapping.
    pub lifetime_s: u32,
    /// Our address as the gateway sees it (the request's source), IPv4 as mapped IPv6.
    pub client: Ipv6Addr,
    /// Names the mapping: renewals and the deletion carry the same one.
    pub nonce: [u8; 12],
    pub internal_port: u16,
    pub suggested_port: u16,
    pub suggested_ip: Ipv6Addr,
}

/// A gateway's answer to a `MAP` request, as far as we use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapResponse {
    pub lifetime_s: u32,
    pub nonce: [u8; 12],
    pub protocol: u8,
    pub internal_port: u16,
    pub external: SocketAddr,
}

/// Why an answer is not a granted mapping.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PcpError {
    #[error("a PCP answer of {0} bytes (a MAP answer has {MAP_LEN})")]
    Length(usize),
    #[error("the gateway speaks NAT-PMP, not PCP (version {0} answer)")]
    Version(u8),
    #[error("not a PCP MAP answer (opcode byte {0:#04x})")]
    Opcode(u8),
    #[error("the gateway refused: {0}")]
    Refused(&'static str),
}

/// The request's 60 bytes.
pub fn encode_map(request: &MapRequest) -> [u8; MAP_LEN] {
    let mut bytes = [0u8; MAP_LEN];
    bytes[0] = VERSION;
    bytes[1] = OPCODE_MAP;
    bytes[4..8].copy_from_slice(&request.lifetime_s.to_be_bytes());
    bytes[8..24].copy_from_slice(&request.client.octets());
    bytes[24..36].copy_from_slice(&request.nonce);
    bytes[36] = PROTOCOL_UDP;
    bytes[40..42].copy_from_slice(&request.internal_port.to_be_bytes());
    bytes[42..44].copy_from_slice(&request.suggested_port.to_be_bytes());
    bytes[44..60].copy_from_slice(&request.suggested_ip.octets());
    bytes
}

/// Parses a gateway's answer; never panics. A refusal is an error naming the result code.
pub fn parse_map_response(bytes: &[u8]) -> Result<MapResponse, PcpError> {
    // A NAT-PMP-only gateway answers a version it does not speak with its own, shorter,
    // "unsupported version" message: say so rather than "wrong length".
    if let Some(&version) = bytes.first() {
        if version != VERSION {
            return Err(PcpError::Version(version));
        }
    }
    if bytes.len() < MAP_LEN {
        return Err(PcpError::Length(bytes.len()));
    }
    if bytes[1] != RESPONSE | OPCODE_MAP {
        return Err(PcpError::Opcode(bytes[1]));
    }
    if bytes[3] != 0 {
        return Err(PcpError::Refused(result_name(bytes[3])));
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let port = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[24..36]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&bytes[44..60]);
    let ip = Ipv6Addr::from(ip);
    Ok(MapResponse {
        lifetime_s: word(4),
        nonce,
        protocol: bytes[36],
        internal_port: port(40),
        external: SocketAddr::new(ip.to_canonical(), port(42)),
    })
}

/// RFC 6887 §7.4's result codes.
fn result_name(code: u8) -> &'static str {
    match code {
        1 => "unsupported version",
        2 => "not authorized",
        3 => "malformed request",
        4 => "unsupported opcode",
        5 => "unsupported option",
        6 => "malformed option",
        7 => "network failure",
        8 => "no resources",
        9 => "unsupported protocol",
        10 => "user exceeded quota",
        11 => "cannot provide the external port",
        12 => "address mismatch (another NAT between us and the gateway?)",
        13 => "excessive remote peers",
        _ => "an unknown result code",
    }
}

/// A mapping a PCP gateway granted.
pub(super) struct PcpMapping {
    socket: UdpSocket,
    gateway: Ipv4Addr,
    request: MapRequest,
    pub external: SocketAddr,
    /// Seconds, as granted.
    pub lease_s: u32,
    budget: Duration,
}

/// Asks the default gateway (or `config.natpmp_gateway`: PCP shares NAT-PMP's port) to map
/// our port.
pub(super) async fn map(local: SocketAddr, config: &PortMapConfig) -> Result<PcpMapping, String> {
    let gateway = match config.natpmp_gateway {
        Some(gateway) => gateway,
        None => super::pmp::default_gateway(config.search_timeout).await?,
    };
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| format!("PCP socket: {e}"))?;
    socket
        .connect((gateway, PCP_PORT))
        .await
        .map_err(|e| format!("PCP to {gateway}: {e}"))?;
    // The gateway checks that the request names the address it came from.
    let client = match socket.local_addr().map(|a| a.ip()) {
        Ok(IpAddr::V4(v4)) => v4.to_ipv6_mapped(),
        Ok(IpAddr::V6(v6)) => v6,
        Err(e) => return Err(format!("PCP socket: {e}")),
    };
    let mut nonce = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let request = MapRequest {
        lifetime_s: u32::try_from(config.lease.as_secs()).unwrap_or(u32::MAX),
        client,
        nonce,
        internal_port: local.port(),
        suggested_port: local.port(),
        suggested_ip: Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(),
    };
    let budget = config.search_timeout;
    let granted = exchange(&socket, gateway, &request, budget).await?;
    if granted.lifetime_s == 0 {
        return Err(format!("the PCP gateway at {gateway} granted no lifetime"));
    }
    private_router_address(granted.external.ip())?;
    Ok(PcpMapping {
        socket,
        gateway,
        request: MapRequest {
            suggested_port: granted.external.port(),
            ..request
        },
        external: granted.external,
        lease_s: granted.lifetime_s,
        budget,
    })
}

impl PcpMapping {
    /// The same request again (same nonce); a gateway that rebooted may give another port,
    /// which counts as losing this mapping.
    pub(super) async fn renew(&mut self) -> Result<(), String> {
        let granted = exchange(&self.socket, self.gateway, &self.request, self.budget).await?;
        if granted.external != self.external {
            return Err(format!(
                "the PCP gateway at {} moved the mapping to {}",
                self.gateway, granted.external
            ));
        }
        self.lease_s = granted.lifetime_s;
        Ok(())
    }

    /// Lifetime 0 deletes the mapping (RFC 6887 §15).
    pub(super) async fn remove(&mut self) -> Result<(), String> {
        let request = MapRequest {
            lifetime_s: 0,
            ..self.request
        };
        exchange(&self.socket, self.gateway, &request, self.budget)
            .await
            .map(|_| ())
    }
}

/// Sends `request` until a matching answer arrives or `budget` is spent. Answers for another
/// nonce, protocol or port (an old request's, a stranger's) are skipped; a refusal ends it.
async fn exchange(
    socket: &UdpSocket,
    gateway: Ipv4Addr,
    request: &MapRequest,
    budget: Duration,
) -> Result<MapResponse, String> {
    let bytes = encode_map(request);
    let deadline = tokio::time::Instant::now() + budget;
    let mut wait = Duration::from_millis(250);
    let mut buf = [0u8; 1100];
    loop {
        socket
            .send(&bytes)
            .await
            .map_err(|e| format!("PCP to {gateway}: {e}"))?;
        let resend_at = (tokio::time::Instant::now() + wait).min(deadline);
        loop {
            let received = match tokio::time::timeout_at(resend_at, socket.recv(&mut buf)).await {
                Err(_) => break,
                // ICMP port unreachable, and the like: nobody speaks PCP there.
                Ok(Err(e)) => return Err(format!("no PCP gateway answered at {gateway} ({e})")),
                Ok(Ok(n)) => n,
            };
            match parse_map_response(&buf[..received]) {
                Ok(answer)
                    if answer.nonce == request.nonce
                        && answer.protocol == PROTOCOL_UDP
                        && answer.internal_port == request.internal_port =>
                {
                    return Ok(answer)
                }
                Ok(_) => continue,
                Err(PcpError::Refused(why)) => {
                    return Err(format!("the PCP gateway at {gateway} refused ({why})"))
                }
                Err(e @ PcpError::Version(_)) => return Err(format!("{e} at {gateway}")),
                Err(e) => {
                    tracing::debug!(%gateway, %e, "PCP answer ignored");
                    continue;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no PCP gateway answered at {gateway}"));
        }
        wait *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> MapRequest {
        MapRequest {
            lifetime_s: 3600,
            client: Ipv4Addr::new(192, 168, 1, 20).to_ipv6_mapped(),
            nonce: [7; 12],
            internal_port: 4433,
            suggested_port: 4433,
            suggested_ip: Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(),
        }
    }

    /// What RFC 6887 §11.2 says a gateway answers to `request`, granting `external`.
    fn answer(request: &MapRequest, result: u8, external: SocketAddr) -> [u8; MAP_LEN] {
        let mut bytes = encode_map(request);
        bytes[1] = RESPONSE | OPCODE_MAP;
        bytes[3] = result;
        bytes[8..24].fill(0);
        bytes[8..12].copy_from_slice(&1234u32.to_be_bytes());
        bytes[42..44].copy_from_slice(&external.port().to_be_bytes());
        let ip = match external.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        bytes[44..60].copy_from_slice(&ip.octets());
        bytes
    }

    #[test]
    fn a_map_request_is_laid_out_as_rfc_6887_says() {
        let bytes = encode_map(&request());
        assert_eq!(&bytes[..4], &[2, 1, 0, 0]);
        assert_eq!(&bytes[4..8], &3600u32.to_be_bytes());
        assert_eq!(&bytes[8..24], &request().client.octets());
        assert_eq!(bytes[36], 17);
        assert_eq!(&bytes[40..44], &[0x11, 0x51, 0x11, 0x51]);
        assert_eq!(
            &bytes[44..60],
            &Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets()
        );
    }

    #[test]
    fn a_granted_mapping_is_read_and_refusals_and_nat_pmp_are_named() {
        let external: SocketAddr = "198.51.100.11:40000".parse().unwrap();
        let granted = parse_map_response(&answer(&request(), 0, external)).unwrap();
        assert_eq!(granted.external, external);
        assert_eq!((granted.nonce, granted.internal_port), ([7; 12], 4433));
        assert_eq!(
            parse_map_response(&answer(&request(), 8, external)),
            Err(PcpError::Refused("no resources"))
        );
        // A NAT-PMP gateway's "unsupported version": version 0, opcode 128 + 2, result 1.
        assert_eq!(
            parse_map_response(&[0, 130, 0, 1, 0, 0, 0, 9]),
            Err(PcpError::Version(0))
        );
        assert_eq!(parse_map_response(&[2, 129]), Err(PcpError::Length(2)));
        assert_eq!(
            parse_map_response(&encode_map(&request())),
            Err(PcpError::Opcode(1))
        );
    }

    proptest! {
        #[test]
        fn any_answer_parses_or_is_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse_map_response(&bytes);
        }
    }
}
