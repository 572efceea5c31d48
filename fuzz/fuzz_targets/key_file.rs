#![no_main]
//! Key file parsing and unlocking must never panic on any bytes.
//!
//! Random bytes almost never pass the checksum, so the input is also wrapped in a well-formed
//! header with a valid checksum, which lets the fuzzer reach the protection-scheme and KDF code.

use callsign_keys::KeyFile;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn check(bytes: &[u8]) {
    if let Ok(file) = KeyFile::parse(bytes) {
        let _ = (file.version(), file.is_encrypted());
        // Skip files whose (legal) KDF cost would make each run take seconds.
        let cheap = file
            .kdf_params()
            .is_none_or(|p| p.m_kib <= 1024 && p.t <= 2);
        if cheap {
            let _ = file.unlock(Some(b"fuzz"));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let Some((&protection, body)) = data.split_first() else {
        return;
    };
    let mut file = b"CSIGNKEY\x01".to_vec();
    file.push(protection % 3);
    file.extend_from_slice(&(body.len() as u16).to_le_bytes());
    file.extend_from_slice(body);
    let checksum = Sha256::digest(&file);
    file.extend_from_slice(&checksum);
    check(&file);
});
