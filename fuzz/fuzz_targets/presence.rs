#![no_main]
//! Presence decoding must never panic; whatever decodes re-encodes to the same bytes.

use callsign_mesh::presence::PresenceRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = PresenceRecord::decode(data) {
        assert_eq!(record.encode(), data);
    }
});
