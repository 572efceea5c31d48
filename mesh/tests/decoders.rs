//! Decoders of untrusted bytes never panic, and refuse what they cannot vouch for.

use callsign_mesh::admission::JoinRequest;
use callsign_mesh::charter::bundle::{decode_bundle, decompress_ops};
use callsign_mesh::charter::{Op, SyncMessage};
use proptest::prelude::*;

proptest! {
    #[test]
    fn op_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Op::decode(&bytes);
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&bytes);
        let _ = Op::decode(&versioned);
    }

    #[test]
    fn sync_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&bytes);
        if let Ok(SyncMessage::Bundle { data, .. }) = SyncMessage::decode(&versioned) {
            let _ = decompress_ops(&data, 1 << 20);
        }
    }

    #[test]
    fn join_request_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
        let _ = JoinRequest::decode(&bytes);
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&bytes);
        let _ = JoinRequest::decode(&versioned);
    }

    #[test]
    fn bundle_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_bundle(&bytes);
        let mut framed = b"CSIGNBDL\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode_bundle(&framed);
    }
}
