//! Presence records: signing, canonical decoding, damage and forgery, and the table's
//! membership, freshness and expiry rules.

use callsign_keys::{Identity, IdentityKey};
use callsign_mesh::charter::ChannelId;
use callsign_mesh::presence::{
    link_tag, PresenceBody, PresenceError, PresenceRecord, PresenceTable, PresenceUpdate,
    RelayCapability,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

fn body(org: IdentityKey, seq: u64, issued_at_ms: u64) -> PresenceBody {
    PresenceBody {
        org,
        peer: org, // replaced by the signer
        seq,
        issued_at_ms,
        ttl_ms: 30_000,
        display_name: "Bravo-2".into(),
        listening: vec![ChannelId(9), ChannelId(3), ChannelId(9)],
        relay: RelayCapability {
            public: true,
            spare_uplink_kbps: 800,
        },
        addrs: vec![b"/ip4/203.0.113.5/udp/4433/quic-v1".to_vec()],
        relay_rtt_ms: vec![(org, 40)],
        routes: vec![(ChannelId(9), org)],
        uplink_kbps: 512,
        linked: Vec::new(),
        mapped: Vec::new(),
        monitoring: Vec::new(),
        recording: Vec::new(),
        position: None,
    }
}

#[test]
fn mapped_addresses_must_be_among_the_addresses() {
    let org = identity(1).public();
    let me = identity(2);
    let mut flagged = body(org, 1, 1_000);
    flagged.mapped = vec![0];
    let record = PresenceRecord::sign(&me, flagged).unwrap();
    assert_eq!(
        record.body.mapped_addrs().collect::<Vec<_>>(),
        [b"/ip4/203.0.113.5/udp/4433/quic-v1".as_slice()]
    );
    for mapped in [vec![1], vec![0, 0]] {
        let mut bad = body(org, 1, 1_000);
        bad.mapped = mapped;
        assert!(matches!(
            PresenceRecord::sign(&me, bad),
            Err(PresenceError::Bounds(_))
        ));
    }
}

#[test]
fn signed_records_round_trip_and_normalise_channels() {
    let org = identity(1).public();
    let me = identity(2);
    let mut placed = body(org, 1, 1_000);
    placed.position = Some((
        callsign_mesh::spatial::ContextId::of("world"),
        [120, -5, 3_000],
    ));
    let record = PresenceRecord::sign(&me, placed).unwrap();
    assert_eq!(record.body.peer, me.public());
    assert_eq!(record.body.listening, vec![ChannelId(3), ChannelId(9)]);
    let bytes = record.encode();
    assert_eq!(bytes[0], 6);
    assert_eq!(PresenceRecord::decode(&bytes).unwrap(), record);
}

/// Chaos seed 119: in a squad where most members are reachable rendezvous, a member linked to
/// more than 16 of them could not sign its record and was never heard of again. It names the
/// 16 nearest.
#[test]
fn a_member_linked_to_many_rendezvous_names_the_nearest_sixteen() {
    let org = identity(1).public();
    let me = identity(2);
    let mut many = body(org, 1, 1_000);
    many.relay_rtt_ms = (0..28u64)
        .map(|i| (identity(100 + i).public(), 100 - i as u32))
        .collect();
    let record = PresenceRecord::sign(&me, many).unwrap();
    assert_eq!(record.body.relay_rtt_ms.len(), 16);
    assert!(record.body.relay_rtt_ms.iter().all(|(_, rtt)| *rtt <= 88));
    assert!(record.body.relay_rtt_ms.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(PresenceRecord::decode(&record.encode()).unwrap(), record);
}

#[test]
fn a_record_names_its_linked_peers_by_tag_and_refuses_unsorted_tags() {
    let org = identity(1).public();
    let me = identity(2);
    let (near, far) = (identity(3).peer_id(), identity(4).peer_id());
    let mut linked = body(org, 1, 1_000);
    linked.linked = vec![link_tag(&near), link_tag(&near)];
    let record = PresenceRecord::sign(&me, linked).unwrap();
    assert_eq!(record.body.linked.len(), 1, "sign sorts and dedups");
    assert!(record.linked_to(&near));
    assert!(!record.linked_to(&far));

    // A peer's hand-made record with tags out of order is refused, signature or not.
    let mut unsorted = record.clone();
    unsorted.body.linked = vec![2, 1];
    assert!(matches!(
        PresenceRecord::decode(&unsorted.encode()),
        Err(PresenceError::Bounds(_))
    ));
}

#[test]
fn damaged_forged_and_unknown_records_are_refused() {
    let org = identity(1).public();
    let me = identity(2);
    let bytes = PresenceRecord::sign(&me, body(org, 1, 1_000))
        .unwrap()
        .encode();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(
            PresenceRecord::decode(&bad).is_err(),
            "flip at {i} accepted"
        );
    }
    for len in 0..bytes.len() {
        assert!(PresenceRecord::decode(&bytes[..len]).is_err());
    }
    for version in [5, 7] {
        let mut other = bytes.clone();
        other[0] = version;
        assert_eq!(
            PresenceRecord::decode(&other),
            Err(PresenceError::Version(version))
        );
    }
    // Someone else's signature on my body.
    let mut forged = PresenceRecord::sign(&identity(3), body(org, 1, 1_000)).unwrap();
    forged.body.peer = me.public();
    assert_eq!(
        PresenceRecord::decode(&forged.encode()),
        Err(PresenceError::BadSignature)
    );
    // Bounds are checked on both sides.
    let mut long = body(org, 1, 0);
    long.display_name = "x".repeat(65);
    assert!(matches!(
        PresenceRecord::sign(&me, long),
        Err(PresenceError::Bounds(_))
    ));
    let mut forever = body(org, 1, 0);
    forever.ttl_ms = u32::MAX;
    assert!(matches!(
        PresenceRecord::sign(&me, forever),
        Err(PresenceError::Bounds(_))
    ));
}

#[test]
fn the_table_keeps_the_newest_unexpired_member_record() {
    let org = identity(1).public();
    let (a, b, stranger) = (identity(2), identity(3), identity(4));
    let members = [a.public(), b.public()];
    let is_member = |p: &IdentityKey| members.contains(p);
    let mut table = PresenceTable::new(org);

    let a1 = PresenceRecord::sign(&a, body(org, 1, 1_000)).unwrap();
    let a2 = PresenceRecord::sign(&a, body(org, 2, 2_000)).unwrap();
    assert_eq!(
        table.insert(a1.clone(), 1_500, is_member),
        PresenceUpdate::Joined
    );
    assert_eq!(
        table.insert(a2.clone(), 2_500, is_member),
        PresenceUpdate::Updated
    );
    assert_eq!(
        table.judge(&a1.body, 2_500, is_member),
        PresenceUpdate::Stale
    );
    assert!(table.holds(&a2.encode()) && table.holds(&a1.encode()));
    let a3 = PresenceRecord::sign(&a, body(org, 3, 2_000)).unwrap();
    assert!(!table.holds(&a3.encode()), "a newer record is news");
    assert!(
        !table.holds(&[3, 0xff]) && !table.holds(&[]),
        "garbage is for decode to refuse"
    );
    assert_eq!(table.insert(a1, 2_500, is_member), PresenceUpdate::Stale);
    assert_eq!(table.get(&a.public()).unwrap().body.seq, 2);

    let s = PresenceRecord::sign(&stranger, body(org, 1, 2_000)).unwrap();
    assert_eq!(table.insert(s, 2_500, is_member), PresenceUpdate::NotMember);
    let other_org = PresenceRecord::sign(&b, body(identity(9).public(), 1, 2_000)).unwrap();
    assert_eq!(
        table.insert(other_org, 2_500, is_member),
        PresenceUpdate::NotMember
    );
    let old = PresenceRecord::sign(&b, body(org, 1, 0)).unwrap();
    assert_eq!(
        table.insert(old, 40_000, is_member),
        PresenceUpdate::Expired
    );

    let b1 = PresenceRecord::sign(&b, body(org, 1, 10_000)).unwrap();
    let b1_bytes = b1.encode();
    assert_eq!(table.insert(b1, 10_000, is_member), PresenceUpdate::Joined);
    assert_eq!(table.listeners(ChannelId(3)).count(), 2);
    assert_eq!(table.listeners(ChannelId(4)).count(), 0);

    // a2 expires at 32 000; b1 at 40 000.
    assert_eq!(table.expire(35_000, is_member), vec![a.public()]);
    assert!(
        !table.holds(&a2.encode()),
        "an expired record is no longer held"
    );
    assert!(table.holds(&b1_bytes));
    assert_eq!(table.present().count(), 1);
    // A member removed from the charter leaves at once.
    assert_eq!(table.expire(35_000, |p| *p != b.public()), vec![b.public()]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = PresenceRecord::decode(&bytes);
    }
}
