//! Pairwise sessions: the XX handshake with identity-certified static keys, sender key grants,
//! and every way a peer could lie or a message could be damaged.

use callsign_keys::NodeKeys;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::e2ee::{PairSession, SenderKeyGrant, SessionError, GRANT_VERSION};
use callsign_mesh::voice::{SenderKey, SenderShortId, VoiceFlags, VoiceHeader};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn keys(seed: u64) -> NodeKeys {
    NodeKeys::generate(&mut StdRng::seed_from_u64(seed))
}

/// Runs the handshake to completion: (initiator, responder).
fn pair(a: &NodeKeys, b: &NodeKeys) -> (PairSession, PairSession) {
    let (mut init, m1) = PairSession::initiate(a, b.identity.public()).unwrap();
    let mut resp = PairSession::respond(b, a.identity.public()).unwrap();
    let m2 = resp.handle_handshake(&m1).unwrap().expect("message 2");
    let m3 = init.handle_handshake(&m2).unwrap().expect("message 3");
    assert_eq!(resp.handle_handshake(&m3).unwrap(), None);
    (init, resp)
}

#[test]
fn handshake_proves_both_identities() {
    let (a, b) = (keys(1), keys(2));
    let (init, resp) = pair(&a, &b);
    assert!(init.is_established() && resp.is_established());
    assert_eq!(init.remote(), Some(b.identity.public()));
    assert_eq!(resp.remote(), Some(a.identity.public()));
}

#[test]
fn a_granted_sender_key_opens_the_senders_voice() {
    let (a, b) = (keys(1), keys(2));
    let (mut init, mut resp) = pair(&a, &b);
    let key = SenderKey::generate(7, &mut StdRng::seed_from_u64(9));
    let sealed = init.grant(&a, &key, vec![ChannelId(4)]).unwrap();
    assert!(
        !sealed.windows(32).any(|w| w == key.secret()),
        "key sent in the clear"
    );
    let grant = resp.accept_grant(&sealed).unwrap();
    assert_eq!(grant.sender, a.identity.public());
    assert_eq!(grant.channels, vec![ChannelId(4)]);
    let header = VoiceHeader {
        flags: VoiceFlags::START,
        channels: vec![ChannelId(4)],
        sender: SenderShortId(1),
        sequence: 1,
        timestamp: 960,
        key_id: 0,
    };
    let packet = key.seal(&header, b"opus").unwrap();
    assert_eq!(grant.sender_key().open(&packet).unwrap().1, b"opus");
    // Grants flow both ways on one session.
    let back = SenderKey::generate(1, &mut StdRng::seed_from_u64(10));
    let sealed = resp.grant(&b, &back, vec![ChannelId(4)]).unwrap();
    assert_eq!(
        init.accept_grant(&sealed).unwrap().sender,
        b.identity.public()
    );
}

#[test]
fn the_wrong_peer_is_refused_on_both_sides() {
    let (a, b, c) = (keys(1), keys(2), keys(3));
    // A expects C but B answers: A refuses B's certificate in message 2.
    let (mut a_side, m1) = PairSession::initiate(&a, c.identity.public()).unwrap();
    let mut b_side = PairSession::respond(&b, a.identity.public()).unwrap();
    let m2 = b_side.handle_handshake(&m1).unwrap().unwrap();
    assert!(matches!(
        a_side.handle_handshake(&m2),
        Err(SessionError::WrongPeer { .. })
    ));
    assert!(!a_side.is_established());

    // B expects C but A connects: B refuses A's certificate in message 3.
    let (mut a_side, m1) = PairSession::initiate(&a, b.identity.public()).unwrap();
    let mut b_side = PairSession::respond(&b, c.identity.public()).unwrap();
    let m2 = b_side.handle_handshake(&m1).unwrap().unwrap();
    let m3 = a_side.handle_handshake(&m2).unwrap().unwrap();
    assert!(matches!(
        b_side.handle_handshake(&m3),
        Err(SessionError::WrongPeer { .. })
    ));
    assert!(!b_side.is_established() && b_side.remote().is_none());
}

#[test]
fn a_peer_cannot_grant_a_key_in_anothers_name() {
    let (a, b, c) = (keys(1), keys(2), keys(3));
    let (mut init, mut resp) = pair(&a, &b);
    let forged = SenderKeyGrant {
        sender: c.identity.public(),
        key_id: 1,
        key: [9; 32],
        channels: vec![ChannelId(1)],
    };
    let mut plain = vec![GRANT_VERSION];
    plain.extend(postcard::to_stdvec(&forged).unwrap());
    let sealed = init.seal(&plain).unwrap();
    assert_eq!(resp.accept_grant(&sealed), Err(SessionError::ForeignGrant));
    let sealed = init.seal(&[9, 1, 2]).unwrap();
    assert!(matches!(
        resp.accept_grant(&sealed),
        Err(SessionError::Malformed(_))
    ));
}

#[test]
fn damaged_messages_fail_and_out_of_order_use_is_refused() {
    let (a, b) = (keys(1), keys(2));
    let (mut init, m1) = PairSession::initiate(&a, b.identity.public()).unwrap();
    assert_eq!(init.seal(b"too early"), Err(SessionError::State));
    let mut resp = PairSession::respond(&b, a.identity.public()).unwrap();
    let mut m2 = resp.handle_handshake(&m1).unwrap().unwrap();
    let last = m2.len() - 1;
    m2[last] ^= 1;
    assert!(matches!(
        init.handle_handshake(&m2),
        Err(SessionError::Noise(_))
    ));
    // A failed session stays failed.
    assert!(init.handle_handshake(&m1).is_err());

    let (mut init, mut resp) = pair(&a, &b);
    let mut msg = init.seal(b"hello").unwrap();
    msg[0] ^= 1;
    assert!(resp.open(&msg).is_err());
    assert!(init.handle_handshake(b"late handshake").is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5)) {
        let (a, b) = (keys(1), keys(2));
        let mut resp = PairSession::respond(&b, a.identity.public()).unwrap();
        for m in &messages {
            let _ = resp.handle_handshake(m);
            let _ = resp.accept_grant(m);
        }
        prop_assert!(!resp.is_established());
    }
}
