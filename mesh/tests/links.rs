//! Channel links, conferences, monitors and recording policy in the charter.

use callsign_keys::Identity;
use callsign_mesh::charter::{
    ChannelId, Charter, CharterState, OpBody, Permissions, Priority, RecordingPolicy, Role,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn id(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

/// An org with channels a..e at the top level, and a member role that may only listen.
fn org(names: &[&str]) -> (Identity, Charter, Vec<ChannelId>) {
    let root = id(1);
    let (mut c, _) = Charter::create(&root, "Links", 0).unwrap();
    let mut ids = Vec::new();
    for name in names {
        c.edit(
            &root,
            OpBody::AddChannel {
                parent: None,
                name: (*name).into(),
            },
            0,
        )
        .unwrap();
        ids.push(c.state().find(name).unwrap());
    }
    c.edit(
        &root,
        OpBody::PutRole {
            name: "member".into(),
            role: Role {
                perms: Permissions::LISTEN,
                priority: Priority::NORMAL,
            },
        },
        0,
    )
    .unwrap();
    (root, c, ids)
}

fn link(c: &mut Charter, who: &Identity, from: ChannelId, to: ChannelId) {
    c.edit(
        who,
        OpBody::LinkChannel {
            from,
            to,
            linked: true,
        },
        0,
    )
    .unwrap();
}

fn everywhere(_: ChannelId) -> bool {
    true
}

#[test]
fn a_cycle_of_links_reaches_each_channel_once() {
    let (root, mut c, ids) = org(&["a", "b", "c", "d"]);
    let [a, b, cc, d] = ids[..] else { panic!() };
    // a → b → c → a, and c → d.
    link(&mut c, &root, a, b);
    link(&mut c, &root, b, cc);
    link(&mut c, &root, cc, a);
    link(&mut c, &root, cc, d);
    let s = c.state();
    assert_eq!(s.reach(&[a], 8, everywhere), vec![a, b, cc, d]);
    assert_eq!(s.reach(&[d], 8, everywhere), vec![d], "links are one way");
    // Keyed twice, reached once.
    assert_eq!(s.reach(&[b, b, a], 8, everywhere), vec![b, a, cc, d]);
    // A refused hop carries nothing further.
    assert_eq!(s.reach(&[a], 8, |ch| ch != b), vec![a]);
    // The header bound holds.
    assert_eq!(s.reach(&[a], 2, everywhere), vec![a, b]);
}

#[test]
fn a_conference_is_heard_as_one_and_dies_with_its_channels() {
    let (root, mut c, ids) = org(&["a", "b", "c", "d"]);
    let [a, b, cc, d] = ids[..] else { panic!() };
    c.edit(
        &root,
        OpBody::SetConference {
            name: "brief".into(),
            channels: vec![a, b, cc],
        },
        0,
    )
    .unwrap();
    let s = c.state();
    let mut all = vec![a, b, cc];
    all.sort();
    for keyed in [a, b, cc] {
        let mut got = s.reach(&[keyed], 8, everywhere);
        assert_eq!(got[0], keyed, "the keyed channel comes first");
        got.sort();
        assert_eq!(got, all);
    }
    assert_eq!(s.reach(&[d], 8, everywhere), vec![d]);
    c.edit(&root, OpBody::RemoveChannel { channel: b }, 0)
        .unwrap();
    c.edit(&root, OpBody::RemoveChannel { channel: cc }, 0)
        .unwrap();
    // One channel left is no conference.
    assert!(c.state().conferences.is_empty());
}

#[test]
fn only_managers_link_and_removed_channels_take_their_links() {
    let (root, mut c, ids) = org(&["a", "b"]);
    let [a, b] = ids[..] else { panic!() };
    let someone = id(7);
    c.edit(
        &root,
        OpBody::PutMember {
            peer: someone.public(),
            name: "someone".into(),
            roles: vec!["member".into()],
        },
        0,
    )
    .unwrap();
    let refused = c.edit(
        &someone,
        OpBody::LinkChannel {
            from: a,
            to: b,
            linked: true,
        },
        0,
    );
    assert!(refused.is_err(), "a listener cannot link channels");
    let to_itself = c.edit(
        &root,
        OpBody::LinkChannel {
            from: a,
            to: a,
            linked: true,
        },
        0,
    );
    assert!(to_itself.is_err());
    link(&mut c, &root, a, b);
    assert!(c.state().links.contains(&(a, b)));
    c.edit(&root, OpBody::RemoveChannel { channel: b }, 0)
        .unwrap();
    assert!(c.state().links.is_empty());
}

#[test]
fn monitors_hear_without_listen_and_recording_policy_inherits() {
    let (root, mut c, ids) = org(&["net"]);
    let net = ids[0];
    c.edit(
        &root,
        OpBody::AddChannel {
            parent: Some(net),
            name: "sub".into(),
        },
        0,
    )
    .unwrap();
    let sub = c.state().find("/net/sub").unwrap();
    c.edit(
        &root,
        OpBody::PutRole {
            name: "staff".into(),
            role: Role {
                perms: Permissions::MONITOR,
                priority: Priority::NORMAL,
            },
        },
        0,
    )
    .unwrap();
    let staff = id(9);
    c.edit(
        &root,
        OpBody::PutMember {
            peer: staff.public(),
            name: "staff".into(),
            roles: vec!["staff".into()],
        },
        0,
    )
    .unwrap();
    let s: &CharterState = c.state();
    assert!(s.may_hear(&staff.public(), net));
    assert!(!s.may(&staff.public(), net, Permissions::LISTEN));
    assert!(s.listeners(net).contains(&staff.public()));
    assert_eq!(s.recording_policy(sub), RecordingPolicy::Notice);
    c.edit(
        &root,
        OpBody::SetRecording {
            channel: net,
            policy: Some(RecordingPolicy::Forbidden),
        },
        0,
    )
    .unwrap();
    assert_eq!(c.state().recording_policy(sub), RecordingPolicy::Forbidden);
    assert_eq!(
        Permissions::parse_list("listen,monitor").unwrap(),
        Permissions::LISTEN.union(Permissions::MONITOR)
    );
}
