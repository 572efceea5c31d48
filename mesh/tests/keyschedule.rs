//! The sender side of E2EE: per-channel keys granted only to the channel's audience, rotation on
//! membership change and on time, whisper keys for one member, and fan-out with the ACL checked
//! at the sender.

use callsign_keys::{Identity, IdentityKey};
use callsign_mesh::charter::{ChannelId, Charter, OpBody, Permissions, Priority, Role};
use callsign_mesh::presence::{PresenceBody, PresenceRecord, PresenceTable, RelayCapability};
use callsign_mesh::voice::{
    channel_deliveries, speakable, whisper_delivery, KeySchedule, KeyScheduleConfig, PendingGrant,
    WhisperError, WHISPER_KEY_BIT,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

struct Org {
    root: Identity,
    officer: Identity,
    pilot: Identity,
    recruit: Identity,
    charter: Charter,
    command: ChannelId,
    flight: ChannelId,
}

/// /Command: officers speak, pilots listen, recruits nothing. /Flight: everyone speaks and
/// whispers.
fn org() -> Org {
    let (root, officer, pilot, recruit) = (identity(1), identity(2), identity(3), identity(4));
    let (mut c, _) = Charter::create(&root, "Wing", 0).unwrap();
    let all = Permissions::LISTEN
        .union(Permissions::SPEAK)
        .union(Permissions::WHISPER);
    for name in ["officer", "pilot", "recruit"] {
        c.edit(
            &root,
            OpBody::PutRole {
                name: name.into(),
                role: Role {
                    perms: all,
                    priority: Priority::NORMAL,
                },
            },
            0,
        )
        .unwrap();
    }
    for name in ["Command", "Flight"] {
        c.edit(
            &root,
            OpBody::AddChannel {
                parent: None,
                name: name.into(),
            },
            0,
        )
        .unwrap();
    }
    let command = c.state().find("/Command").unwrap();
    let flight = c.state().find("/Flight").unwrap();
    for (role, perms) in [
        ("pilot", Permissions::LISTEN),
        ("recruit", Permissions::NONE),
    ] {
        c.edit(
            &root,
            OpBody::SetChannelAcl {
                channel: command,
                role: role.into(),
                perms: Some(perms),
            },
            0,
        )
        .unwrap();
    }
    for (who, role) in [
        (&officer, "officer"),
        (&pilot, "pilot"),
        (&recruit, "recruit"),
    ] {
        c.edit(
            &root,
            OpBody::PutMember {
                peer: who.public(),
                name: role.into(),
                roles: vec![role.into()],
            },
            0,
        )
        .unwrap();
    }
    Org {
        root,
        officer,
        pilot,
        recruit,
        charter: c,
        command,
        flight,
    }
}

fn drain(schedule: &mut KeySchedule) -> Vec<PendingGrant> {
    std::iter::from_fn(|| schedule.poll_grant()).collect()
}

fn channel_grants(grants: &[PendingGrant], channel: ChannelId) -> BTreeSet<IdentityKey> {
    grants
        .iter()
        .filter(|g| g.channels == [channel])
        .map(|g| g.peer)
        .collect()
}

fn config() -> KeyScheduleConfig {
    KeyScheduleConfig {
        rotation_interval: Duration::from_secs(600),
        activation_delay: Duration::from_millis(250),
    }
}

#[test]
fn channel_keys_go_only_to_the_channels_audience() {
    let o = org();
    let me = o.officer.public();
    let sessions: BTreeSet<_> = [&o.root, &o.pilot, &o.recruit]
        .iter()
        .map(|i| i.public())
        .collect();
    let mut keys = KeySchedule::new(me, config(), 7);
    let now = Instant::now();
    keys.update(o.charter.state(), &sessions, now);
    let grants = drain(&mut keys);
    assert_eq!(
        channel_grants(&grants, o.command),
        BTreeSet::from([o.root.public(), o.pilot.public()]),
        "the recruit must not hold the command key"
    );
    assert_eq!(channel_grants(&grants, o.flight), sessions);
    let whispers: BTreeSet<_> = grants
        .iter()
        .filter(|g| g.channels.is_empty())
        .map(|g| (g.peer, g.key.id() & WHISPER_KEY_BIT != 0))
        .collect();
    assert_eq!(whispers, sessions.iter().map(|p| (*p, true)).collect());
    // Nothing changed: nothing more to grant, no rotation.
    keys.update(o.charter.state(), &sessions, now + Duration::from_secs(1));
    assert!(drain(&mut keys).is_empty());
    assert_eq!(keys.rotations(), 0);

    // A recruit has no key for command at all: it may not speak there.
    let mut recruit = KeySchedule::new(o.recruit.public(), config(), 8);
    recruit.update(o.charter.state(), &sessions, now);
    assert!(recruit.channel_key(o.command, now).is_none());
    assert!(recruit.channel_key(o.flight, now).is_some());
}

#[test]
fn removing_a_member_rotates_and_the_removed_member_gets_no_new_key() {
    let mut o = org();
    let me = o.officer.public();
    let sessions: BTreeSet<_> = [&o.root, &o.pilot, &o.recruit]
        .iter()
        .map(|i| i.public())
        .collect();
    let mut keys = KeySchedule::new(me, config(), 7);
    let t0 = Instant::now();
    keys.update(o.charter.state(), &sessions, t0);
    drain(&mut keys);
    let old = keys.channel_key(o.flight, t0).unwrap().id();

    o.charter
        .edit(
            &o.root,
            OpBody::RemoveMember {
                peer: o.pilot.public(),
            },
            1,
        )
        .unwrap();
    let t1 = t0 + Duration::from_secs(2);
    keys.update(o.charter.state(), &sessions, t1);
    let grants = drain(&mut keys);
    assert!(grants.iter().all(|g| g.peer != o.pilot.public()));
    assert_eq!(
        channel_grants(&grants, o.flight),
        BTreeSet::from([o.root.public(), o.recruit.public()])
    );
    // The previous key seals until the grants have had time to arrive, then the new one.
    assert_eq!(keys.channel_key(o.flight, t1).unwrap().id(), old);
    let new = keys
        .channel_key(o.flight, t1 + config().activation_delay)
        .unwrap()
        .id();
    assert_ne!(new, old);
    assert!(grants.iter().any(|g| g.key.id() == new));
    // The removed member's whisper key is gone too.
    assert!(keys
        .whisper_key(&o.pilot.public(), t1 + Duration::from_secs(1))
        .is_none());
}

#[test]
fn keys_rotate_on_time_and_regrant_after_a_new_session() {
    let o = org();
    let me = o.officer.public();
    let mut sessions: BTreeSet<_> = [o.root.public()].into();
    let mut keys = KeySchedule::new(me, config(), 7);
    let t0 = Instant::now();
    keys.update(o.charter.state(), &sessions, t0);
    drain(&mut keys);
    let first = keys.channel_key(o.flight, t0).unwrap().id();
    assert_eq!(keys.poll_timeout(), Some(t0 + config().rotation_interval));

    // A peer whose session comes up gets the current key, without a rotation.
    sessions.insert(o.pilot.public());
    keys.update(o.charter.state(), &sessions, t0 + Duration::from_secs(1));
    let grants = drain(&mut keys);
    assert!(grants.iter().all(|g| g.peer == o.pilot.public()));
    let flight: Vec<_> = grants.iter().filter(|g| g.channels == [o.flight]).collect();
    assert_eq!(flight.len(), 1);
    assert_eq!(flight[0].key.id(), first);
    assert_eq!(keys.rotations(), 0);

    let later = t0 + config().rotation_interval;
    keys.update(o.charter.state(), &sessions, later);
    let grants = drain(&mut keys);
    assert!(keys.rotations() > 0);
    let rotated = keys
        .channel_key(o.flight, later + config().activation_delay)
        .unwrap()
        .id();
    assert_ne!(rotated, first);
    assert_eq!(
        channel_grants(&grants, o.flight),
        BTreeSet::from([o.root.public(), o.pilot.public()])
    );
}

fn present(table: &mut PresenceTable, who: &Identity, org: IdentityKey, listening: Vec<ChannelId>) {
    let record = PresenceRecord::sign(
        who,
        PresenceBody {
            org,
            peer: who.public(),
            seq: 1,
            issued_at_ms: 0,
            ttl_ms: 60_000,
            display_name: "x".into(),
            listening,
            relay: RelayCapability::default(),
            addrs: Vec::new(),
            relay_rtt_ms: Vec::new(),
            routes: Vec::new(),
            uplink_kbps: 0,
            linked: Vec::new(),
            mapped: Vec::new(),
            monitoring: Vec::new(),
            recording: Vec::new(),
            position: None,
        },
    )
    .unwrap();
    table.insert(record, 1, |_| true);
}

#[test]
fn fan_out_sends_one_copy_per_listener_and_checks_the_acl_at_the_sender() {
    let o = org();
    let org_key = o.root.public();
    let me = o.officer.public();
    let sessions: BTreeSet<_> = [&o.root, &o.pilot, &o.recruit]
        .iter()
        .map(|i| i.public())
        .collect();
    let mut keys = KeySchedule::new(me, config(), 7);
    let now = Instant::now();
    keys.update(o.charter.state(), &sessions, now);
    drain(&mut keys);
    let mut table = PresenceTable::new(org_key);
    present(&mut table, &o.root, org_key, vec![o.flight]);
    present(&mut table, &o.pilot, org_key, vec![o.command, o.flight]);
    // The recruit says it listens to command; the charter says it may not.
    present(&mut table, &o.recruit, org_key, vec![o.command]);
    present(&mut table, &o.officer, org_key, vec![o.command, o.flight]);

    let (allowed, denied) = speakable(o.charter.state(), &me, &[o.command, o.flight, o.command]);
    assert_eq!(allowed, vec![o.command, o.flight]);
    assert!(denied.is_empty());
    let copies = channel_deliveries(o.charter.state(), &table, &keys, &me, &allowed, now);
    let to: Vec<_> = copies.iter().map(|d| (d.peer, d.key.id())).collect();
    let command_key = keys.channel_key(o.command, now).unwrap().id();
    let flight_key = keys.channel_key(o.flight, now).unwrap().id();
    let mut expected = vec![
        (o.root.public(), flight_key),
        (o.pilot.public(), command_key),
    ];
    expected.sort();
    assert_eq!(
        to, expected,
        "one copy each; none to the recruit or to ourselves"
    );

    // The recruit asking to speak on command is refused before anything is sent.
    let (allowed, denied) = speakable(
        o.charter.state(),
        &o.recruit.public(),
        &[o.command, o.flight],
    );
    assert_eq!((allowed, denied), (vec![o.flight], vec![o.command]));

    // Whisper: to a member through a channel both share; never to a stranger.
    let (channel, delivery) =
        whisper_delivery(o.charter.state(), &keys, &me, &o.recruit.public(), now).unwrap();
    assert_eq!(channel, o.flight);
    assert!(delivery.key.id() & WHISPER_KEY_BIT != 0);
    let stranger = identity(99).public();
    assert_eq!(
        whisper_delivery(o.charter.state(), &keys, &me, &stranger, now).unwrap_err(),
        WhisperError::NotAllowed
    );
}
