//! Voice packets: seal/open round trip, tamper and forgery detection, hostile bytes, and the
//! replay window.

use callsign_mesh::charter::ChannelId;
use callsign_mesh::voice::{
    ReplayWindow, SenderKey, SenderShortId, VoiceFlags, VoiceHeader, VoicePacketError,
};
use proptest::prelude::*;
use rand::SeedableRng;

fn header(channels: &[u64]) -> VoiceHeader {
    VoiceHeader {
        flags: VoiceFlags::START.union(VoiceFlags::FEC),
        channels: channels.iter().copied().map(ChannelId).collect(),
        sender: SenderShortId(0xC0FFEE),
        sequence: 513,
        timestamp: 48_000 * 7,
        key_id: 0,
    }
}

fn key(id: u16, seed: u64) -> SenderKey {
    SenderKey::generate(id, &mut rand::rngs::StdRng::seed_from_u64(seed))
}

#[test]
fn seal_then_open_round_trips_header_and_payload() {
    let k = key(3, 1);
    let packet = k.seal(&header(&[10, 20]), b"opus frame bytes").unwrap();
    let (h, payload) = k.open(&packet).unwrap();
    assert_eq!(payload, b"opus frame bytes");
    assert_eq!(h.key_id, 3);
    assert_eq!(h.channels, vec![ChannelId(10), ChannelId(20)]);
    assert!(h.flags.contains(VoiceFlags::FEC) && !h.flags.contains(VoiceFlags::END));
    // Relays read the header without the key.
    let (clear, len) = VoiceHeader::parse(&packet).unwrap();
    assert_eq!(clear, h);
    assert_eq!(len, 3 + 16 + 12);
    // The payload is not in the clear.
    assert!(!packet.windows(10).any(|w| w == b"opus frame"));
}

#[test]
fn every_flipped_bit_fails_authentication_or_parsing() {
    let k = key(1, 2);
    let packet = k.seal(&header(&[5]), b"secret voice").unwrap();
    for i in 0..packet.len() {
        for bit in 0..8 {
            let mut bad = packet.clone();
            bad[i] ^= 1 << bit;
            assert!(k.open(&bad).is_err(), "flip at byte {i} bit {bit} accepted");
        }
    }
    for len in 0..packet.len() {
        assert!(
            k.open(&packet[..len]).is_err(),
            "truncated to {len} accepted"
        );
    }
}

#[test]
fn another_key_cannot_open_or_forge() {
    let sender = key(1, 3);
    let outsider = key(1, 4);
    let packet = sender.seal(&header(&[5]), b"voice").unwrap();
    assert_eq!(
        outsider.open(&packet),
        Err(VoicePacketError::Authentication)
    );
    let forged = outsider.seal(&header(&[5]), b"fake").unwrap();
    assert_eq!(sender.open(&forged), Err(VoicePacketError::Authentication));
    // A packet naming another key id is refused before decryption.
    let rotated = key(2, 3).seal(&header(&[5]), b"voice").unwrap();
    assert_eq!(sender.open(&rotated), Err(VoicePacketError::Authentication));
}

#[test]
fn malformed_headers_are_refused_with_reasons() {
    let k = key(1, 5);
    let mut packet = k.seal(&header(&[5]), b"x").unwrap();
    packet[0] = 2;
    assert_eq!(
        VoiceHeader::parse(&packet),
        Err(VoicePacketError::UnknownVersion(2))
    );
    packet[0] = 1;
    packet[1] = 0x80;
    assert_eq!(
        VoiceHeader::parse(&packet),
        Err(VoicePacketError::UnknownFlags(0x80))
    );
    packet[1] = 0;
    packet[2] = 0;
    assert_eq!(
        VoiceHeader::parse(&packet),
        Err(VoicePacketError::ChannelCount(0))
    );
    packet[2] = 9;
    assert_eq!(
        VoiceHeader::parse(&packet),
        Err(VoicePacketError::ChannelCount(9))
    );
    assert!(matches!(
        k.seal(&header(&[]), b"x"),
        Err(VoicePacketError::ChannelCount(0))
    ));
    assert!(matches!(
        k.seal(&header(&[5]), &[0u8; 2000]),
        Err(VoicePacketError::PayloadTooLarge(2000))
    ));
}

#[test]
fn replay_window_accepts_once_reorders_and_wraps() {
    let mut w = ReplayWindow::new();
    assert!(w.accept(10));
    assert!(!w.accept(10), "replay");
    assert!(w.accept(12));
    assert!(w.accept(11), "late but inside the window");
    assert!(!w.accept(11));
    // Far behind the window: refused.
    for s in 13..2000u16 {
        assert!(w.accept(s));
    }
    assert!(!w.accept(20));
    // Across the 16-bit wrap.
    let mut w = ReplayWindow::new();
    for i in 0..100u16 {
        assert!(w.accept(65_500u16.wrapping_add(i)));
    }
    assert!(!w.accept(65_510));
    assert!(w.check(100));
    // check does not record.
    assert!(w.check(200) && w.check(200));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let k = key(1, 6);
        let _ = VoiceHeader::parse(&bytes);
        prop_assert!(k.open(&bytes).is_err());
    }

    #[test]
    fn replay_window_matches_a_set(seqs in prop::collection::vec(0u16..3000, 1..400)) {
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut highest: Option<u16> = None;
        for s in seqs {
            let fresh = !seen.contains(&s);
            let in_window = highest.is_none_or(|h| s > h || u64::from(h - s) < ReplayWindow::SIZE);
            let accepted = w.accept(s);
            prop_assert_eq!(accepted, fresh && in_window, "seq {}", s);
            if accepted {
                seen.insert(s);
                highest = Some(highest.map_or(s, |h| h.max(s)));
            }
        }
    }
}
