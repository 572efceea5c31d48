#![no_main]
//! Control message decoding must never panic; whatever decodes survives a round trip.

use callsign_mesh::control::ControlMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ControlMessage::decode(data) {
        assert_eq!(ControlMessage::decode(&message.encode()), Ok(message));
    }
});
