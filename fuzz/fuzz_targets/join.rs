#![no_main]
//! Join requests come from strangers: decoding must never panic, and whatever decodes is
//! checked against a real charter without panicking (and almost always refused).

use callsign_keys::Identity;
use callsign_mesh::admission::{admit, JoinRequest};
use callsign_mesh::charter::Charter;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn charter() -> &'static Charter {
    static CHARTER: OnceLock<Charter> = OnceLock::new();
    CHARTER.get_or_init(|| {
        let root = Identity::from_secret_bytes([1; 32]);
        Charter::create(&root, "Fuzz Wing", 0).expect("genesis").0
    })
}

fuzz_target!(|data: &[u8]| {
    for bytes in [data.to_vec(), [&[1u8][..], data].concat()] {
        if let Ok(request) = JoinRequest::decode(&bytes) {
            assert_eq!(JoinRequest::decode(&request.encode()).ok(), Some(request.clone()));
            let _ = admit(charter().state(), &request, 1_000);
        }
    }
});
