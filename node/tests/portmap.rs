//! Port mapping against routers that misbehave: a "router" on loopback (a real SSDP socket, a
//! real HTTP server, a real NAT-PMP socket) that answers with garbage, points at nonsense, or
//! at nothing. The mapper reports why it has no mapping, and never panics. (A real router that maps is in
//! the NAT test bed: `tests/nat.rs` at the workspace root, miniupnpd in a namespace.)

use callsign_mesh::member::PortMapping;
use callsign_node::link::portmap::{PortMapConfig, PortMapper};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

/// An HTTP server on loopback answering every request with `body`; returns its port.
fn http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A search responder on loopback that answers every M-SEARCH with `reply`; returns where it
/// listens.
fn ssdp_responder(reply: Vec<u8>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&reply, from);
        }
    });
    addr
}

fn gateway_at(location: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n\
         ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
         USN: uuid:00000000-0000-0000-0000-000000000000::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
         LOCATION: {location}\r\n\r\n"
    )
    .into_bytes()
}

/// Where no NAT-PMP router listens (a loopback address of its own).
const NO_NATPMP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Runs a mapper against the UPnP router at `ssdp` and the NAT-PMP one at `natpmp`, and
/// returns its first report.
async fn first_report(ssdp: SocketAddr, natpmp: Ipv4Addr) -> PortMapping {
    let config = PortMapConfig {
        ssdp,
        natpmp_gateway: Some(natpmp),
        search_timeout: Duration::from_millis(500),
        ..PortMapConfig::default()
    };
    let mut mapper = PortMapper::start("127.0.0.1:47000".parse().unwrap(), config);
    let report = tokio::time::timeout(Duration::from_secs(10), mapper.recv())
        .await
        .expect("the mapper reports within its timeouts");
    tokio::time::timeout(Duration::from_secs(5), mapper.stop())
        .await
        .expect("stopping is prompt");
    report
}

fn reason(report: PortMapping) -> String {
    match report {
        PortMapping::Unavailable { reason } => reason,
        other => panic!("expected no mapping, got {other:?}"),
    }
}

#[tokio::test]
async fn a_router_answering_the_search_with_garbage_gives_no_mapping() {
    let ssdp = ssdp_responder(b"\xff\x00\x13 not http at all \r\n\r\n".to_vec());
    let why = reason(first_report(ssdp, NO_NATPMP).await);
    assert!(why.starts_with("no UPnP router answered"), "{why}");
}

#[tokio::test]
async fn a_router_whose_description_is_nonsense_gives_no_mapping() {
    let http = http_server("<html><body>this is a login page, not a device</body></html>");
    let ssdp = ssdp_responder(gateway_at(&format!("http://127.0.0.1:{http}/rootDesc.xml")));
    let why = reason(first_report(ssdp, NO_NATPMP).await);
    assert!(why.starts_with("no UPnP router answered"), "{why}");
}

#[tokio::test]
async fn a_router_pointing_at_nothing_gives_no_mapping() {
    // A port nothing listens on: the description cannot be fetched.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ssdp = ssdp_responder(gateway_at(&format!(
        "http://127.0.0.1:{closed}/rootDesc.xml"
    )));
    let why = reason(first_report(ssdp, NO_NATPMP).await);
    assert!(why.starts_with("no UPnP router answered"), "{why}");
}

#[tokio::test]
async fn no_router_at_all_gives_no_mapping() {
    // Nothing answers at this address (a bound socket that never replies).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let why = reason(first_report(silent.local_addr().unwrap(), NO_NATPMP).await);
    assert!(why.starts_with("no UPnP router answered"), "{why}");
    assert!(
        why.contains("no NAT-PMP router answered at 127.0.0.3"),
        "{why}"
    );
}

#[tokio::test]
async fn a_nat_pmp_router_answering_garbage_gives_no_mapping() {
    // NAT-PMP has a fixed port; this router has a loopback address of its own.
    let router = UdpSocket::bind("127.0.0.2:5351").unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = router.recv_from(&mut buf) {
            // Version 7, a made-up opcode, three bytes: nothing a client should take.
            let _ = router.send_to(&[7, 3, 0], from);
        }
    });
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let why = reason(first_report(silent.local_addr().unwrap(), Ipv4Addr::new(127, 0, 0, 2)).await);
    assert!(
        why.contains("the NAT-PMP router at 127.0.0.2 refused (unsupported nat-pmp version"),
        "{why}"
    );
}
