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
