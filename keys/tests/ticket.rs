//! Tickets: round trips, damage, forged grants.

use callsign_keys::{
    Identity, InviteGrant, Multiaddr, Ticket, TicketError, MAX_BOOTSTRAP_ADDRS, TICKET_PREFIX,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

fn addrs() -> Vec<Multiaddr> {
    vec![
        "/ip4/192.0.2.7/udp/4433/quic-v1".parse().unwrap(),
        "/ip6/2001:db8::1/udp/4433/quic-v1".parse().unwrap(),
        "/dns4/relay.example.org/tcp/4001".parse().unwrap(),
    ]
}

fn granted_ticket() -> (Identity, Ticket) {
    let root = identity(1);
    let grant = InviteGrant::issue(&root, root.public(), "pilot", 1_900_000_000, [7; 16]).unwrap();
    let ticket = Ticket {
        org: root.public(),
        bootstrap: addrs(),
        grant: Some(grant),
    };
    (root, ticket)
}

#[test]
fn round_trip_with_grant() {
    let (_, ticket) = granted_ticket();
    let text = ticket.encode().unwrap();
    assert!(text.starts_with(TICKET_PREFIX));
    assert!(text[TICKET_PREFIX.len()..]
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    assert_eq!(Ticket::decode(&text).unwrap(), ticket);
    // Upper case (as from a QR code) and surrounding whitespace are accepted.
    assert_eq!(
        Ticket::decode(&format!("  {}\n", text.to_uppercase())).unwrap(),
        ticket
    );
}

#[test]
fn round_trip_without_grant_or_addresses() {
    let ticket = Ticket {
        org: identity(2).public(),
        bootstrap: vec![],
        grant: None,
    };
    assert_eq!(Ticket::decode(&ticket.encode().unwrap()).unwrap(), ticket);
}

#[test]
fn missing_prefix() {
    let (_, ticket) = granted_ticket();
    let text = ticket.encode().unwrap();
    assert_eq!(
        Ticket::decode(&text.replacen("callsign1", "callsign2", 1)),
        Err(TicketError::MissingPrefix)
    );
    assert_eq!(Ticket::decode(""), Err(TicketError::MissingPrefix));
    // A multi-byte character across the prefix boundary is an error, not a panic.
    assert_eq!(Ticket::decode("callsigné"), Err(TicketError::MissingPrefix));
}

#[test]
fn every_single_character_typo_is_caught() {
    let (_, ticket) = granted_ticket();
    let text = ticket.encode().unwrap();
    let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
    for at in TICKET_PREFIX.len()..text.len() {
        let original = text.as_bytes()[at] as char;
        // One substitution per position keeps the test fast; the checksum is position-agnostic.
        let replacement = alphabet.chars().find(|&c| c != original).unwrap();
        let mut typo = text.clone();
        typo.replace_range(at..at + 1, &replacement.to_string());
        let err = Ticket::decode(&typo).unwrap_err();
        assert!(
            matches!(
                err,
                TicketError::ChecksumMismatch | TicketError::BadEncoding { .. }
            ),
            "typo at {at}: {err:?}"
        );
    }
}

#[test]
fn truncation_is_caught() {
    let (_, ticket) = granted_ticket();
    let text = ticket.encode().unwrap();
    for len in TICKET_PREFIX.len()..text.len() {
        assert!(Ticket::decode(&text[..len]).is_err(), "len {len}");
    }
}

#[test]
fn bad_characters_are_located() {
    let (_, ticket) = granted_ticket();
    let mut text = ticket.encode().unwrap();
    text.replace_range(12..13, "1");
    assert_eq!(
        Ticket::decode(&text),
        Err(TicketError::BadEncoding { position: 3 })
    );
}

/// Re-encodes raw ticket bytes with a valid checksum, as an attacker (or a future version) would.
fn encode_raw(content: &[u8]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"callsign-ticket");
    hasher.update(content);
    let digest = hasher.finalize();
    let mut bytes = content.to_vec();
    bytes.extend_from_slice(&digest[..4]);
    format!(
        "callsign1{}",
        data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase()
    )
}

fn raw_content(text: &str) -> Vec<u8> {
    let bytes = data_encoding::BASE32_NOPAD
        .decode(text[9..].to_uppercase().as_bytes())
        .unwrap();
    bytes[..bytes.len() - 4].to_vec()
}

#[test]
fn unknown_version_is_named() {
    let (_, ticket) = granted_ticket();
    let mut content = raw_content(&ticket.encode().unwrap());
    content[0] = 2;
    let err = Ticket::decode(&encode_raw(&content)).unwrap_err();
    assert_eq!(err, TicketError::UnsupportedVersion { found: 2 });
    assert!(err.to_string().contains("version 2"));
}

#[test]
fn forged_grant_signature_is_refused() {
    let (_, ticket) = granted_ticket();
    let mut forged = ticket.clone();
    // Elevate the role without re-signing.
    forged.grant.as_mut().unwrap().role = "officer".into();
    assert_eq!(forged.encode(), Err(TicketError::BadGrantSignature));

    // An attacker who writes the bytes directly gets past the checksum but not the signature.
    let content = raw_content(&ticket.encode().unwrap());
    let needle = b"pilot";
    let at = content
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut tampered = content.clone();
    tampered[at..at + needle.len()].copy_from_slice(b"admin");
    assert_eq!(
        Ticket::decode(&encode_raw(&tampered)),
        Err(TicketError::BadGrantSignature)
    );

    // A grant signed by someone else, claiming to be from the root, fails too.
    let impostor = identity(9);
    let mut grant =
        InviteGrant::issue(&impostor, ticket.org, "pilot", 1_900_000_000, [1; 16]).unwrap();
    grant.issuer = ticket.org;
    let forged = Ticket {
        grant: Some(grant),
        ..ticket
    };
    assert_eq!(forged.encode(), Err(TicketError::BadGrantSignature));
}

#[test]
fn grant_for_another_org_is_refused() {
    let (root, ticket) = granted_ticket();
    let other_org = identity(3).public();
    let grant = InviteGrant::issue(&root, other_org, "pilot", 1_900_000_000, [7; 16]).unwrap();
    let mixed = Ticket {
        grant: Some(grant),
        ..ticket
    };
    assert!(matches!(
        mixed.encode(),
        Err(TicketError::GrantOrgMismatch { .. })
    ));
}

#[test]
fn limits_are_enforced() {
    let org = identity(4).public();
    let too_many = Ticket {
        org,
        bootstrap: vec!["/ip4/192.0.2.1/udp/1/quic-v1".parse().unwrap(); MAX_BOOTSTRAP_ADDRS + 1],
        grant: None,
    };
    assert!(matches!(too_many.encode(), Err(TicketError::Malformed(_))));
    assert!(InviteGrant::issue(&identity(4), org, "", 0, [0; 16]).is_err());
    assert!(matches!(
        Ticket::decode(&format!("callsign1{}", "a".repeat(5000))),
        Err(TicketError::TooLong(_))
    ));
}

#[test]
fn expiry_is_reported_against_the_given_clock() {
    let (_, ticket) = granted_ticket();
    let grant = ticket.grant.unwrap();
    assert!(!grant.is_expired(1_899_999_999));
    assert!(grant.is_expired(1_900_000_000));
}

fn arb_multiaddr() -> impl Strategy<Value = Multiaddr> {
    (any::<[u8; 4]>(), any::<u16>(), prop::bool::ANY).prop_map(|(ip, port, quic)| {
        let ip = std::net::Ipv4Addr::from(ip);
        let text = if quic {
            format!("/ip4/{ip}/udp/{port}/quic-v1")
        } else {
            format!("/ip4/{ip}/tcp/{port}")
        };
        text.parse().unwrap()
    })
}

proptest! {
    #[test]
    fn ticket_round_trips(
        org_seed in any::<u64>(),
        bootstrap in prop::collection::vec(arb_multiaddr(), 0..=MAX_BOOTSTRAP_ADDRS),
        grant in prop::option::of(("[a-z][a-z0-9-]{0,30}", any::<u64>(), any::<[u8; 16]>())),
    ) {
        let root = identity(org_seed);
        let grant = grant.map(|(role, expires_at, nonce)| {
            InviteGrant::issue(&root, root.public(), role, expires_at, nonce).unwrap()
        });
        let ticket = Ticket { org: root.public(), bootstrap, grant };
        let text = ticket.encode().unwrap();
        prop_assert_eq!(Ticket::decode(&text).unwrap(), ticket);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = Ticket::decode(&text);
        let _ = Ticket::decode(&format!("callsign1{text}"));
    }

    #[test]
    fn arbitrary_checksummed_bytes_never_panic(mut content in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Some(first) = content.first_mut() {
            *first = 1;
        }
        let _ = Ticket::decode(&encode_raw(&content));
    }
}
