//! Shared by the relay's test files.
// Each test file uses some of them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

/// `GET path` from the relay's metrics address: the whole response, status line first.
pub fn http_get(addr: &str, path: &str) -> String {
    http_get_with(addr, path, "")
}

/// [`http_get`] with extra header lines (each ending in `\r\n`).
pub fn http_get_with(addr: &str, path: &str, headers: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A demo org of two members that rents `relay` (when given), its charter bundle written to
/// `path`.
pub fn org_renting(
    path: &std::path::Path,
    seed: u64,
    relay: Option<callsign_keys::IdentityKey>,
) -> callsign_node::runtime::demo_org::DemoOrg {
    use callsign_mesh::charter::{OpBody, RelayInfo};
    let mut org = callsign_node::runtime::demo_org::DemoOrg::new(2, seed).unwrap();
    if let Some(relay) = relay {
        org.charter
            .edit(
                &org.root,
                OpBody::PutRelay {
                    peer: relay,
                    info: RelayInfo {
                        addrs: Vec::new(),
                        capacity: 10,
                    },
                },
                0,
            )
            .unwrap();
    }
    std::fs::write(
        path,
        callsign_mesh::charter::bundle::encode_bundle(
            &org.charter.org(),
            org.charter.dag().iter().map(|o| o.encoded.as_slice()),
        ),
    )
    .unwrap();
    org
}

/// A relay config serving `orgs` as `[[org]]` sections on any free port, each org's bundle
/// named by `charter(name)`.
pub fn orgs_config(orgs: &[&str], charter: impl Fn(&str) -> String) -> String {
    let mut text = "version = 1\nkey = \"relay.key\"\nmetrics = \"127.0.0.1:0\"\n\
                    data_dir = \"state\"\ncircuits = false\n"
        .to_string();
    for name in orgs {
        text += &format!(
            "[[org]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ncharter = \"{}\"\n",
            charter(name)
        );
    }
    text
}

/// The metrics address in the relay's `metrics on http://ADDR/metrics` line.
pub fn metrics_addr(line: &str) -> String {
    line.strip_prefix("metrics on http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not the metrics line: {line}"))
        .to_string()
}
