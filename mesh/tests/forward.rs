//! The relay's forwarding rule: signed subscriptions checked against the charter, one copy per
//! subscriber, and every kind of bad packet dropped and counted, all without a sender key.

use callsign_keys::{Identity, IdentityKey};
use callsign_mesh::charter::{
    ChannelId, Charter, CharterState, OpBody, Permissions, Priority, RelayInfo, Role,
};
use callsign_mesh::forward::{
    lock, ForwardDrop, ForwardView, Forwarder, ForwarderConfig, SharedForwarder, Subscription,
    SubscriptionBody, SubscriptionError,
};
use callsign_mesh::voice::{SenderKey, SenderShortId, VoiceFlags, VoiceHeader};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Org {
    state: CharterState,
    /// officer, pilot, recruit, stranger, root, two rented relays.
    ids: Vec<Identity>,
    command: ChannelId,
    flight: ChannelId,
}

/// /command: officers speak, pilots listen, recruits nothing. /flight: everyone speaks.
fn org() -> Org {
    let ids: Vec<Identity> = (0..7)
        .map(|i| Identity::generate(&mut StdRng::seed_from_u64(40 + i)))
        .collect();
    let root = &ids[4];
    let (mut c, _) = Charter::create(root, "Wing", 0).unwrap();
    let all = Permissions::LISTEN.union(Permissions::SPEAK);
    let mut channels = Vec::new();
    for name in ["command", "flight"] {
        c.edit(
            root,
            OpBody::AddChannel {
                parent: None,
                name: name.into(),
            },
            0,
        )
        .unwrap();
        channels.push(c.state().find(&format!("/{name}")).unwrap());
    }
    for (i, role) in ["officer", "pilot", "recruit"].iter().enumerate() {
        let perms = Role {
            perms: all,
            priority: Priority::NORMAL,
        };
        c.edit(
            root,
            OpBody::PutRole {
                name: (*role).into(),
                role: perms,
            },
            0,
        )
        .unwrap();
        let on_command = [all, Permissions::LISTEN, Permissions::NONE][i];
        let acl = OpBody::SetChannelAcl {
            channel: channels[0],
            role: (*role).into(),
            perms: Some(on_command),
        };
        c.edit(root, acl, 0).unwrap();
        let member = OpBody::PutMember {
            peer: ids[i].public(),
            name: (*role).into(),
            roles: vec![(*role).into()],
        };
        c.edit(root, member, 0).unwrap();
    }
    for relay in &ids[5..] {
        let put = OpBody::PutRelay {
            peer: relay.public(),
            info: RelayInfo {
                addrs: Vec::new(),
                capacity: 10,
            },
        };
        c.edit(root, put, 0).unwrap();
    }
    Org {
        state: c.state().clone(),
        ids,
        command: channels[0],
        flight: channels[1],
    }
}

fn subscription(org: &Org, who: usize, seq: u64, channels: Vec<ChannelId>) -> Subscription {
    let body = SubscriptionBody {
        org: org.state.org,
        subscriber: org.ids[who].public(),
        seq,
        channels,
    };
    let signed = Subscription::sign(&org.ids[who], body).unwrap();
    Subscription::decode(&signed.encode()).unwrap()
}

fn packet(
    from: &IdentityKey,
    channels: Vec<ChannelId>,
    sequence: u16,
    flags: VoiceFlags,
) -> Vec<u8> {
    let header = VoiceHeader {
        flags,
        channels,
        sender: SenderShortId::of(from),
        sequence,
        timestamp: u32::from(sequence) * 960,
        key_id: 1,
    };
    SenderKey::new(1, [7; 32])
        .seal(&header, &[0x55; 60])
        .unwrap()
}

fn forwarder(org: &Org) -> Forwarder {
    let mut f = Forwarder::new(org.state.org, ForwarderConfig::default());
    for (who, channels) in [
        (0, vec![org.command, org.flight]),
        (1, vec![org.command]),
        (2, vec![org.flight]),
    ] {
        f.subscribe(&org.state, subscription(org, who, 1, channels))
            .unwrap();
    }
    f
}

#[test]
fn subscriptions_are_signed_and_checked_against_the_charter() {
    let org = org();
    let mut f = forwarder(&org);
    assert_eq!(f.subscribers(org.command), 2);
    assert_eq!(f.subscribers(org.flight), 2);
    // The recruit may not hear /command.
    assert_eq!(
        f.subscribe(&org.state, subscription(&org, 2, 2, vec![org.command])),
        Err(SubscriptionError::NotAllowed(org.command))
    );
    // Nor may a stranger hear anything.
    assert!(f
        .subscribe(&org.state, subscription(&org, 3, 1, vec![org.flight]))
        .is_err());
    // Older or equal sequence numbers lose.
    assert_eq!(
        f.subscribe(&org.state, subscription(&org, 1, 1, vec![org.flight])),
        Err(SubscriptionError::Stale)
    );
    // A forged signature, a changed byte, another version: refused.
    let mut forged = Subscription::sign(
        &org.ids[3],
        SubscriptionBody {
            org: org.state.org,
            subscriber: org.ids[3].public(),
            seq: 9,
            channels: vec![org.flight],
        },
    )
    .unwrap();
    forged.body.subscriber = org.ids[1].public();
    assert_eq!(
        Subscription::decode(&forged.encode()),
        Err(SubscriptionError::BadSignature)
    );
    let mut bytes = subscription(&org, 1, 5, vec![org.flight]).encode();
    bytes[0] = 2;
    assert_eq!(
        Subscription::decode(&bytes),
        Err(SubscriptionError::Version(2))
    );
    // An empty list unsubscribes.
    f.subscribe(&org.state, subscription(&org, 1, 3, Vec::new()))
        .unwrap();
    assert_eq!(f.subscribers(org.command), 1);
}

#[test]
fn a_simulcast_packet_goes_once_to_each_subscriber_and_never_back() {
    let org = org();
    let mut f = forwarder(&org);
    let officer = org.ids[0].public();
    let bytes = packet(
        &officer,
        vec![org.command, org.flight],
        1,
        VoiceFlags::START,
    );
    let now = Instant::now();
    let to = f.forward(&org.state, &officer, &bytes, now).unwrap();
    let mut expect = vec![org.ids[1].public(), org.ids[2].public()];
    expect.sort();
    assert_eq!(to, expect);
    // The bytes forwarded are the sender's: a subscriber with the sender key opens them.
    let (header, payload) = SenderKey::new(1, [7; 32]).open(&bytes).unwrap();
    assert_eq!((header.sequence, payload.len()), (1, 60));
    assert_eq!(f.counts().packets_out, 2);
}

#[test]
fn bad_packets_are_dropped_and_counted_by_reason() {
    let org = org();
    let mut f = forwarder(&org);
    let now = Instant::now();
    let [officer, pilot, _, stranger] = [0, 1, 2, 3].map(|i| org.ids[i].public());
    let flight = vec![org.flight];
    let cases = [
        (
            stranger,
            packet(&stranger, flight.clone(), 1, VoiceFlags::START),
            ForwardDrop::Stranger,
        ),
        // The header names the officer, the link is the pilot's.
        (
            pilot,
            packet(&officer, flight.clone(), 1, VoiceFlags::START),
            ForwardDrop::Stranger,
        ),
        (
            pilot,
            packet(&pilot, vec![org.command], 1, VoiceFlags::START),
            ForwardDrop::Unauthorised,
        ),
        (
            pilot,
            packet(&pilot, flight.clone(), 2, VoiceFlags::WHISPER),
            ForwardDrop::Whisper,
        ),
        (pilot, vec![1, 0, 9], ForwardDrop::Malformed),
        (pilot, vec![1; 4000], ForwardDrop::Oversize),
    ];
    for (from, bytes, reason) in cases {
        assert_eq!(f.forward(&org.state, &from, &bytes, now), Err(reason));
    }
    let good = packet(&pilot, flight.clone(), 3, VoiceFlags::START);
    assert!(f.forward(&org.state, &pilot, &good, now).is_ok());
    assert_eq!(
        f.forward(&org.state, &pilot, &good, now),
        Err(ForwardDrop::Duplicate)
    );
    // With the officer gone and the pilot moved to /flight, /command has nobody to go to.
    f.remove(&officer);
    let lonely = packet(&officer, vec![org.command], 1, VoiceFlags::START);
    f.subscribe(&org.state, subscription(&org, 1, 2, vec![org.flight]))
        .unwrap();
    assert_eq!(
        f.forward(&org.state, &officer, &lonely, now),
        Err(ForwardDrop::NoSubscribers)
    );
    assert_eq!(f.counts().drops.values().sum::<u64>(), 8);
}

#[test]
fn each_sender_is_held_to_its_rate() {
    let org = org();
    let config = ForwarderConfig::default();
    let mut f = Forwarder::new(org.state.org, config.clone());
    f.subscribe(&org.state, subscription(&org, 1, 1, vec![org.flight]))
        .unwrap();
    let officer = org.ids[0].public();
    let start = Instant::now();
    let mut refused = 0;
    for seq in 0..(config.burst + 20) as u16 {
        let bytes = packet(&officer, vec![org.flight], seq, VoiceFlags::empty());
        if f.forward(&org.state, &officer, &bytes, start) == Err(ForwardDrop::RateLimited) {
            refused += 1;
        }
    }
    assert_eq!(refused, 20);
    // A second later the bucket has refilled.
    let later = start + Duration::from_secs(1);
    let bytes = packet(&officer, vec![org.flight], 500, VoiceFlags::empty());
    assert!(f.forward(&org.state, &officer, &bytes, later).is_ok());
}

#[test]
fn an_org_over_its_rate_is_throttled_after_each_senders_own_limit() {
    let org = org();
    let config = ForwarderConfig {
        org_rate: Some(callsign_mesh::rate::Rate::new(30, 30)),
        ..ForwarderConfig::default()
    };
    let mut f = Forwarder::new(org.state.org, config);
    f.subscribe(&org.state, subscription(&org, 2, 1, vec![org.flight]))
        .unwrap();
    let (officer, pilot) = (org.ids[0].public(), org.ids[1].public());
    let start = Instant::now();
    // The officer floods 200 packets at once: its own burst (50) passes its bucket, and the
    // org's 30 of those are forwarded; the rest are the officer's drops or the org's.
    let mut outcomes = BTreeMap::new();
    for seq in 0..200u16 {
        let bytes = packet(&officer, vec![org.flight], seq, VoiceFlags::empty());
        let outcome = f.forward(&org.state, &officer, &bytes, start).map(|_| ());
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    assert_eq!(outcomes.get(&Ok(())), Some(&30));
    assert_eq!(outcomes.get(&Err(ForwardDrop::RateLimited)), Some(&150));
    assert_eq!(outcomes.get(&Err(ForwardDrop::OrgRateLimited)), Some(&20));
    // The org's bucket refills at 30 a second whoever sends.
    let later = start + Duration::from_millis(100);
    let sent = (0..10u16)
        .filter(|seq| {
            let bytes = packet(&pilot, vec![org.flight], *seq, VoiceFlags::empty());
            f.forward(&org.state, &pilot, &bytes, later).is_ok()
        })
        .count();
    assert_eq!(sent, 3);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let org = org();
        let mut f = forwarder(&org);
        let _ = f.forward(&org.state, &org.ids[0].public(), &bytes, Instant::now());
        let _ = Subscription::decode(&bytes);
    }
}

#[test]
fn a_simulcast_frame_sent_per_channel_reaches_each_subscriber_once() {
    let org = org();
    let mut f = forwarder(&org);
    let officer = org.ids[0].public();
    let (pilot, recruit) = (org.ids[1].public(), org.ids[2].public());
    // The officer listens to both channels; the pilot only /command, the recruit only /flight.
    f.subscribe(&org.state, subscription(&org, 0, 2, Vec::new()))
        .unwrap();
    f.subscribe(
        &org.state,
        subscription(&org, 1, 2, vec![org.command, org.flight]),
    )
    .unwrap();
    let now = Instant::now();
    for seq in [10, 11] {
        let command = packet(&officer, vec![org.command], seq, VoiceFlags::empty());
        let flight = packet(&officer, vec![org.flight], seq, VoiceFlags::empty());
        // The pilot hears both channels but gets the frame once; the recruit gets /flight's.
        assert_eq!(
            f.forward(&org.state, &officer, &command, now),
            Ok(vec![pilot])
        );
        assert_eq!(
            f.forward(&org.state, &officer, &flight, now),
            Ok(vec![recruit])
        );
        // Each packet again is a duplicate.
        assert_eq!(
            f.forward(&org.state, &officer, &flight, now),
            Err(ForwardDrop::Duplicate)
        );
    }
}

#[test]
fn relays_cascade_one_hop_and_never_back() {
    let org = org();
    let (officer, pilot, recruit) = (
        org.ids[0].public(),
        org.ids[1].public(),
        org.ids[2].public(),
    );
    let (here, there) = (org.ids[5].public(), org.ids[6].public());
    // At relay `here`: the pilot, and the other relay (a relay needs no listen right).
    let mut f = Forwarder::new(org.state.org, ForwarderConfig::default());
    f.subscribe(&org.state, subscription(&org, 1, 1, vec![org.command]))
        .unwrap();
    f.subscribe(&org.state, subscription(&org, 6, 1, vec![org.command]))
        .unwrap();
    let now = Instant::now();
    // From a member: to the member subscribers and the relay.
    let from_officer = packet(&officer, vec![org.command], 1, VoiceFlags::empty());
    let mut both = vec![pilot, there];
    both.sort();
    assert_eq!(
        f.forward(&org.state, &officer, &from_officer, now),
        Ok(both)
    );
    // From the other relay: to members only, and checked as the member it names.
    let relayed = packet(&officer, vec![org.command], 2, VoiceFlags::empty());
    assert_eq!(
        f.forward(&org.state, &there, &relayed, now),
        Ok(vec![pilot])
    );
    let not_allowed = packet(&recruit, vec![org.command], 1, VoiceFlags::empty());
    assert_eq!(
        f.forward(&org.state, &there, &not_allowed, now),
        Err(ForwardDrop::Unauthorised)
    );
    let nobody = packet(
        &org.ids[3].public(),
        vec![org.flight],
        1,
        VoiceFlags::empty(),
    );
    assert_eq!(
        f.forward(&org.state, &there, &nobody, now),
        Err(ForwardDrop::Stranger)
    );
    // A relay is no member: it may not speak through another relay itself.
    let own = packet(&here, vec![org.flight], 1, VoiceFlags::empty());
    assert_eq!(
        f.forward(&org.state, &here, &own, now),
        Err(ForwardDrop::Stranger)
    );
}

#[test]
fn the_audience_is_kept_per_charter_generation_and_redone_when_subscriptions_change() {
    let org = org();
    let mut f = forwarder(&org);
    let (officer, pilot, recruit) = (
        org.ids[0].public(),
        org.ids[1].public(),
        org.ids[2].public(),
    );
    let now = Instant::now();
    let keys = |to: Result<std::sync::Arc<[callsign_mesh::forward::Recipient]>, ForwardDrop>| {
        to.unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r.peer, r.key.peer_id());
                assert!(!r.relay);
                r.key
            })
            .collect::<Vec<_>>()
    };
    let flight = |seq| packet(&officer, vec![org.flight], seq, VoiceFlags::empty());
    let to = f.forward_to(&org.state, Some(1), &officer, &flight(1), now);
    assert_eq!(keys(to), vec![recruit]);
    // A new subscription counts at once, within the same generation.
    f.subscribe(
        &org.state,
        subscription(&org, 1, 2, vec![org.command, org.flight]),
    )
    .unwrap();
    let to = f.forward_to(&org.state, Some(1), &officer, &flight(2), now);
    let mut both = vec![pilot, recruit];
    both.sort();
    assert_eq!(keys(to), both);
    // The charter drops the recruit: the next generation's audience has it gone.
    let mut changed = org.state.clone();
    changed.members.remove(&recruit);
    let to = f.forward_to(&changed, Some(2), &officer, &flight(3), now);
    assert_eq!(keys(to), vec![pilot]);
    // A link going takes its subscriber with it.
    f.remove(&pilot);
    assert_eq!(
        f.forward_to(&changed, Some(2), &officer, &flight(4), now),
        Err(ForwardDrop::NoSubscribers)
    );
}

/// Relay 5's shared forwarder (the member path's [`forwarder`]) with relay 6 cascading from it
/// on /flight, and its view at generation 7 naming the members and relay 6.
fn relay_view(org: &Org) -> (SharedForwarder, ForwardView, IdentityKey) {
    let shared = std::sync::Arc::new(std::sync::Mutex::new(forwarder(org)));
    let (here, there) = (org.ids[5].public(), org.ids[6].public());
    // The other rented relay cascades: it subscribes at this one for /flight.
    lock(&shared)
        .subscribe(&org.state, subscription(org, 6, 1, vec![org.flight]))
        .unwrap();
    let senders: BTreeMap<_, _> = org.ids[..3]
        .iter()
        .chain(&org.ids[6..])
        .map(|i| (i.public().peer_id(), i.public()))
        .collect();
    let view = ForwardView::new(org.state.clone(), 7, senders, here);
    (shared, view, there)
}

#[test]
fn the_view_forwards_as_the_member_would_and_splits_relays_from_members() {
    let org = org();
    let (shared, view, there) = relay_view(&org);
    assert_eq!(view.generation(), 7);
    let (officer, pilot) = (org.ids[0].public(), org.ids[1].public());
    let now = Instant::now();
    let flight = |seq| packet(&officer, vec![org.flight], seq, VoiceFlags::empty());
    let copies = view
        .forward(&mut lock(&shared), &officer.peer_id(), &flight(1), now)
        .unwrap();
    assert_eq!(copies.plain[..], [org.ids[2].public().peer_id()]);
    assert_eq!(copies.enveloped[..], [there.peer_id()]);
    // The same packet again is a replay, whichever path sees it: one forwarder.
    assert_eq!(
        view.forward(&mut lock(&shared), &officer.peer_id(), &flight(1), now),
        Err(ForwardDrop::Duplicate)
    );
    // A peer the view does not name is a stranger, counted as the member's path counts it.
    let stranger = org.ids[3].public().peer_id();
    assert_eq!(
        view.forward(&mut lock(&shared), &stranger, &flight(2), now),
        Err(ForwardDrop::Stranger)
    );
    // What a fellow relay sends goes to members only (one hop between relays).
    let relayed = packet(&pilot, vec![org.flight], 1, VoiceFlags::empty());
    let copies = view
        .forward(&mut lock(&shared), &there.peer_id(), &relayed, now)
        .unwrap();
    let mut members = vec![officer.peer_id(), org.ids[2].public().peer_id()];
    members.sort();
    let mut plain = copies.plain.to_vec();
    plain.sort();
    assert_eq!((plain, copies.enveloped.to_vec()), (members, Vec::new()));
    let counts = lock(&shared).counts().clone();
    assert_eq!(counts.packets_in, 4);
    assert_eq!(counts.drops.get(&ForwardDrop::Stranger), Some(&1));
    assert_eq!(counts.drops.get(&ForwardDrop::Duplicate), Some(&1));
}

#[test]
fn a_talkers_recipients_are_reused_only_for_the_same_link_and_channels() {
    let org = org();
    let (shared, view, there) = relay_view(&org);
    let officer = org.ids[0].public();
    let (pilot, recruit) = (org.ids[1].public().peer_id(), org.ids[2].public().peer_id());
    let now = Instant::now();
    let on = |channels: Vec<ChannelId>, seq| packet(&officer, channels, seq, VoiceFlags::empty());
    let forward = |from: &IdentityKey, packet: Vec<u8>| {
        let copies = view
            .forward(&mut lock(&shared), &from.peer_id(), &packet, now)
            .unwrap();
        // In key order; compared as sets of peers.
        let mut plain = copies.plain.to_vec();
        plain.sort();
        (plain, copies.enveloped.to_vec())
    };
    let direct = (vec![recruit], vec![there.peer_id()]);
    assert_eq!(forward(&officer, on(vec![org.flight], 1)), direct);
    assert_eq!(forward(&officer, on(vec![org.flight], 2)), direct);
    // The same talker's next frame through the fellow relay goes to members only.
    assert_eq!(
        forward(&there, on(vec![org.flight], 3)),
        (vec![recruit], Vec::new())
    );
    // Another talker's frame through the same relay is worked out for that talker.
    let pilot_key = org.ids[1].public();
    let relayed = packet(&pilot_key, vec![org.flight], 1, VoiceFlags::empty());
    let mut members = vec![officer.peer_id(), recruit];
    members.sort();
    assert_eq!(forward(&there, relayed), (members, Vec::new()));
    assert_eq!(forward(&officer, on(vec![org.flight], 4)), direct);
    // On /command instead: its listener, and no relay subscribes there.
    assert_eq!(
        forward(&officer, on(vec![org.command], 5)),
        (vec![pilot], Vec::new())
    );
    assert_eq!(forward(&officer, on(vec![org.flight], 6)), direct);
}
