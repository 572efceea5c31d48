#![no_main]
//! Floor message decoding must never panic; whatever decodes survives a round trip.

use callsign_mesh::floor::FloorMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = FloorMessage::decode(data) {
        assert_eq!(FloorMessage::decode(&message.encode()), Ok(message));
    }
});
