#![no_main]
//! Voice packet parsing and opening must never panic; anything that opens must re-seal to the
//! same bytes (the format has one encoding).

use callsign_mesh::voice::{SenderKey, VoiceHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SenderKey::new(1, [7; 32]);
    let _ = VoiceHeader::parse(data);
    if let Ok((header, payload)) = key.open(data) {
        assert_eq!(key.seal(&header, &payload).unwrap(), data);
    }
    // Also feed the bytes as a payload under a header parsed from their start: whatever seals
    // (payloads over the Opus maximum are refused) must open to the same bytes.
    if let Ok((header, _)) = VoiceHeader::parse(data) {
        if let Ok(packet) = key.seal(&header, data) {
            assert_eq!(key.open(&packet).unwrap().1, data);
        }
    }
});
