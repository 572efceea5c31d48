//! The receive pipeline against a real charter: ACL at the receiver, replay and simulcast
//! de-duplication, authentication, unknown senders, key rotation overlap.

use callsign_keys::{Identity, IdentityKey, NodeKeys};
use callsign_mesh::charter::{ChannelId, Charter, OpBody, Permissions, Priority, Role};
use callsign_mesh::e2ee::SenderKeyGrant;
use callsign_mesh::voice::{
    DropReason, SenderKey, SenderShortId, VoiceFlags, VoiceHeader, VoiceReceiver,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

struct Org {
    charter: Charter,
    flight: ChannelId,
    command: ChannelId,
}

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

/// Root org with /Flight (pilots speak) and /Command (observers listen only), and members.
fn org(root: &Identity, pilot: IdentityKey, observer: IdentityKey, listener: IdentityKey) -> Org {
    let (mut c, _) = Charter::create(root, "Wing", 0).unwrap();
    let mut edit = |body| {
        c.edit(root, body, 0).unwrap();
    };
    for (name, perms) in [
        ("pilot", Permissions::LISTEN.union(Permissions::SPEAK)),
        ("observer", Permissions::LISTEN),
    ] {
        edit(OpBody::PutRole {
            name: name.into(),
            role: Role {
                perms,
                priority: Priority::NORMAL,
            },
        });
    }
    edit(OpBody::AddChannel {
        parent: None,
        name: "Flight".into(),
    });
    edit(OpBody::AddChannel {
        parent: None,
        name: "Command".into(),
    });
    for (peer, role) in [
        (pilot, "pilot"),
        (observer, "observer"),
        (listener, "pilot"),
    ] {
        edit(OpBody::PutMember {
            peer,
            name: role.into(),
            roles: vec![role.into()],
        });
    }
    let flight = c.state().find("/Flight").unwrap();
    let command = c.state().find("/Command").unwrap();
    // Nobody but admins speaks on Command.
    c.edit(
        root,
        OpBody::SetChannelAcl {
            channel: command,
            role: "pilot".into(),
            perms: Some(Permissions::LISTEN),
        },
        0,
    )
    .unwrap();
    Org {
        charter: c,
        flight,
        command,
    }
}

fn grant(sender: &Identity, key: &SenderKey, channels: Vec<ChannelId>) -> SenderKeyGrant {
    SenderKeyGrant {
        sender: sender.public(),
        key_id: key.id(),
        key: *key.secret(),
        channels,
    }
}

fn packet(sender: &Identity, key: &SenderKey, channels: Vec<ChannelId>, seq: u16) -> Vec<u8> {
    let header = VoiceHeader {
        flags: VoiceFlags::empty(),
        channels,
        sender: SenderShortId::of(&sender.public()),
        sequence: seq,
        timestamp: u32::from(seq) * 960,
        key_id: 0,
    };
    key.seal(&header, &[seq as u8; 40]).unwrap()
}

#[test]
fn the_receive_pipeline_plays_once_and_counts_every_drop() {
    let root = identity(1);
    let (pilot, observer) = (identity(2), identity(3));
    let me = NodeKeys::generate(&mut StdRng::seed_from_u64(4));
    let org = org(
        &root,
        pilot.public(),
        observer.public(),
        me.identity.public(),
    );
    let state = org.charter.state();
    let listening = {
        let mut l = vec![org.flight, org.command];
        l.sort();
        l
    };
    let mut rx = VoiceReceiver::new(me.identity.public());
    let pilot_key = SenderKey::generate(1, &mut StdRng::seed_from_u64(5));
    let observer_key = SenderKey::generate(1, &mut StdRng::seed_from_u64(6));

    // No grant yet: unknown sender.
    let p = packet(&pilot, &pilot_key, vec![org.flight], 1);
    assert_eq!(
        rx.receive(state, &listening, &p),
        Err(DropReason::UnknownSender)
    );
    rx.add_grant(&grant(&pilot, &pilot_key, vec![org.flight]));
    let frame = rx.receive(state, &listening, &p).unwrap();
    assert_eq!(frame.sender, pilot.public());
    assert_eq!(frame.channels, vec![org.flight]);
    assert_eq!(frame.payload, vec![1u8; 40]);
    // The same frame again (replay or a second path): refused.
    assert_eq!(rx.receive(state, &listening, &p), Err(DropReason::Replay));

    // Simulcast to Flight and Command: the pilot may not speak on Command, so only Flight plays.
    let s = packet(&pilot, &pilot_key, vec![org.flight, org.command], 2);
    assert_eq!(
        rx.receive(state, &listening, &s).unwrap().channels,
        vec![org.flight]
    );
    // Only Command: the receiver's ACL check drops it.
    let c = packet(&pilot, &pilot_key, vec![org.command], 3);
    assert_eq!(rx.receive(state, &listening, &c), Err(DropReason::Acl));

    // A listen-only member who sends anyway is dropped at the receiver.
    rx.add_grant(&grant(&observer, &observer_key, vec![org.flight]));
    let o = packet(&observer, &observer_key, vec![org.flight], 1);
    assert_eq!(rx.receive(state, &listening, &o), Err(DropReason::Acl));

    // Tampered: authentication fails, and the replay window did not move.
    let mut t = packet(&pilot, &pilot_key, vec![org.flight], 4);
    let last = t.len() - 1;
    t[last] ^= 1;
    assert_eq!(rx.receive(state, &listening, &t), Err(DropReason::Auth));
    assert!(rx
        .receive(
            state,
            &listening,
            &packet(&pilot, &pilot_key, vec![org.flight], 4)
        )
        .is_ok());

    // A channel we do not listen to.
    let only_command = [org.command];
    let f = packet(&pilot, &pilot_key, vec![org.flight], 5);
    assert_eq!(
        rx.receive(state, &only_command, &f),
        Err(DropReason::NotListening)
    );

    assert_eq!(
        rx.receive(state, &listening, b"\x01garbage"),
        Err(DropReason::Malformed)
    );

    let d = rx.drops();
    assert_eq!(
        (
            d.unknown_sender,
            d.replay,
            d.acl,
            d.auth,
            d.not_listening,
            d.malformed
        ),
        (1, 1, 2, 1, 1, 1)
    );
}

#[test]
fn a_rotation_keeps_the_previous_key_for_packets_in_flight() {
    let root = identity(1);
    let pilot = identity(2);
    let me = identity(4);
    let org = org(&root, pilot.public(), identity(3).public(), me.public());
    let state = org.charter.state();
    let listening = [org.flight];
    let mut rx = VoiceReceiver::new(me.public());
    let keys: Vec<SenderKey> = (1..=3)
        .map(|id| SenderKey::generate(id, &mut StdRng::seed_from_u64(10 + u64::from(id))))
        .collect();
    rx.add_grant(&grant(&pilot, &keys[0], vec![org.flight]));
    rx.add_grant(&grant(&pilot, &keys[1], vec![org.flight]));
    // Old and new both open during the overlap.
    assert!(rx
        .receive(
            state,
            &listening,
            &packet(&pilot, &keys[0], vec![org.flight], 1)
        )
        .is_ok());
    assert!(rx
        .receive(
            state,
            &listening,
            &packet(&pilot, &keys[1], vec![org.flight], 1)
        )
        .is_ok());
    // A third rotation retires the first key.
    rx.add_grant(&grant(&pilot, &keys[2], vec![org.flight]));
    let stale = packet(&pilot, &keys[0], vec![org.flight], 2);
    assert_eq!(
        rx.receive(state, &listening, &stale),
        Err(DropReason::UnknownSender)
    );
    // A member removed from the org can no longer be heard.
    rx.remove_sender(&pilot.public());
    let gone = packet(&pilot, &keys[2], vec![org.flight], 3);
    assert_eq!(
        rx.receive(state, &listening, &gone),
        Err(DropReason::UnknownSender)
    );
}
