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
    // Also feed the bytes as a payload and the first bytes as header fields.
    if let Ok((header, _)) = VoiceHeader::parse(data) {
        let packet = key.seal(&header, data).unwrap();
        assert_eq!(key.open(&packet).unwrap().1, data);
    }
});
