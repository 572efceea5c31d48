#![no_main]
//! Ticket decoding must never panic, and whatever decodes must re-encode to an equal ticket.
//!
//! Random text almost never passes the checksum, so the input is also wrapped as a ticket body
//! with a valid checksum, which lets the fuzzer explore the body decoder.

use callsign_keys::Ticket;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn check(text: &str) {
    if let Ok(ticket) = Ticket::decode(text) {
        let again = ticket.encode().expect("a decoded ticket re-encodes");
        assert_eq!(
            Ticket::decode(&again).expect("re-encoded ticket decodes"),
            ticket
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    let mut content = vec![1u8];
    content.extend_from_slice(data);
    let mut hasher = Sha256::new();
    hasher.update(b"callsign-ticket");
    hasher.update(&content);
    content.extend_from_slice(&hasher.finalize()[..4]);
    let text = format!("callsign1{}", data_encoding::BASE32_NOPAD.encode(&content));
    check(&text);
});
