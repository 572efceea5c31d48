#![no_main]
//! Charter op, sync message and bundle decoders must never panic.

use callsign_mesh::charter::bundle::{decode_bundle, decompress_ops};
use callsign_mesh::charter::{Op, SyncMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = Op::decode(data) {
        assert_eq!(op.encode(), data, "decoded ops are canonical");
    }
    if let Ok(SyncMessage::Bundle { data, .. }) = SyncMessage::decode(data) {
        let _ = decompress_ops(&data, 1 << 20);
    }
    let _ = decode_bundle(data);
});
