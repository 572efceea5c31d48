//! Charter validity, fold, persistence and sync.

use std::time::{Duration, Instant};

use callsign_keys::{context, Identity, IdentityKey};
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::{
    Charter, CharterSync, EditError, Member, Op, OpBody, Outcome, Permissions, Priority,
    ReplicaLimits, Role, SyncConfig,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn id(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

fn org() -> (Identity, Charter) {
    let root = id(1);
    let (charter, _) = Charter::create(&root, "Wing", 0).unwrap();
    (root, charter)
}

fn add_channel(
    c: &mut Charter,
    who: &Identity,
    parent: Option<&str>,
    name: &str,
) -> Result<Op, EditError> {
    let parent = parent.map(|p| c.state().find(p).unwrap());
    c.edit(
        who,
        OpBody::AddChannel {
            parent,
            name: name.into(),
        },
        0,
    )
}

fn member(c: &mut Charter, root: &Identity, peer: IdentityKey, roles: &[&str]) {
    c.edit(
        root,
        OpBody::PutMember {
            peer,
            name: "someone".into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
        },
        0,
    )
    .unwrap();
}

fn grant_admin(c: &mut Charter, root: &Identity, peer: IdentityKey) {
    c.edit(root, OpBody::GrantAdmin { peer }, 0).unwrap();
}

fn role(c: &mut Charter, root: &Identity, name: &str, perms: Permissions) {
    c.edit(
        root,
        OpBody::PutRole {
            name: name.into(),
            role: Role {
                perms,
                priority: Priority::NORMAL,
            },
        },
        0,
    )
    .unwrap();
}

/// Copies all of `from`'s ops into a fresh replica.
fn clone_replica(from: &Charter) -> Charter {
    let mut c = Charter::new(from.org());
    let ops: Vec<Vec<u8>> = from.dag().iter().map(|o| o.encoded.clone()).collect();
    let report = c.ingest(ops);
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    c
}

#[test]
fn channel_tree_acl_inheritance_and_listeners() {
    let (root, mut c) = org();
    role(
        &mut c,
        &root,
        "pilot",
        Permissions::LISTEN.union(Permissions::SPEAK),
    );
    role(&mut c, &root, "recruit", Permissions::LISTEN);
    add_channel(&mut c, &root, None, "Command").unwrap();
    add_channel(&mut c, &root, Some("/Command"), "Flight").unwrap();
    let command = c.state().find("/Command").unwrap();
    let flight = c.state().find("/Command/Flight").unwrap();
    // Pilots may not even listen on Command; the override is inherited by Flight unless reset.
    c.edit(
        &root,
        OpBody::SetChannelAcl {
            channel: command,
            role: "pilot".into(),
            perms: Some(Permissions::NONE),
        },
        0,
    )
    .unwrap();
    c.edit(
        &root,
        OpBody::SetChannelAcl {
            channel: flight,
            role: "pilot".into(),
            perms: Some(Permissions::LISTEN.union(Permissions::SPEAK)),
        },
        0,
    )
    .unwrap();
    let pilot = id(10).public();
    let recruit = id(11).public();
    member(&mut c, &root, pilot, &["pilot"]);
    member(&mut c, &root, recruit, &["recruit"]);
    let s = c.state();
    assert!(!s.may(&pilot, command, Permissions::LISTEN));
    assert!(s.may(&pilot, flight, Permissions::SPEAK));
    assert!(s.may(&recruit, flight, Permissions::LISTEN));
    assert!(!s.may(&recruit, flight, Permissions::SPEAK));
    assert!(s.listeners(flight).contains(&pilot));
    assert!(!s.listeners(command).contains(&pilot));
    assert!(s.listeners(command).contains(&root.public()));
    assert_eq!(s.path(flight).unwrap(), "/Command/Flight");
    assert_eq!(s.priority(&pilot), Priority::NORMAL);
}

#[test]
fn forged_signature_is_rejected() {
    let (root, mut c) = org();
    let mut op = Op::sign(
        &root,
        c.org(),
        c.heads(),
        0,
        OpBody::AddChannel {
            parent: None,
            name: "A".into(),
        },
    );
    op.body = OpBody::AddChannel {
        parent: None,
        name: "B".into(),
    };
    let report = c.ingest(vec![op.encode()]);
    assert_eq!(report.rejected.len(), 1);
    assert!(
        report.rejected[0].1.contains("signature"),
        "{:?}",
        report.rejected
    );
    assert!(c.state().find("/B").is_none());
    assert_eq!(c.stats().rejected, 1);
}

#[test]
fn wrong_signing_context_is_rejected() {
    let (root, mut c) = org();
    let good = Op::sign(
        &root,
        c.org(),
        c.heads(),
        0,
        OpBody::AddChannel {
            parent: None,
            name: "A".into(),
        },
    );
    // Re-sign the same content under another purpose's context.
    let content_sig = root.sign(context::INVITE_GRANT, &good.encode());
    let mut forged = good.clone();
    forged.signature = content_sig;
    let report = c.ingest(vec![forged.encode()]);
    assert_eq!(report.rejected.len(), 1);
    assert!(report.rejected[0].1.contains("signature"));
}

#[test]
fn non_admin_op_is_rejected_with_reason() {
    let (root, mut c) = org();
    let mallory = id(66);
    member(&mut c, &root, mallory.public(), &[]);
    let op = Op::sign(
        &mallory,
        c.org(),
        c.heads(),
        0,
        OpBody::GrantAdmin {
            peer: mallory.public(),
        },
    );
    let report = c.ingest(vec![op.encode()]);
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(
        report.rejected[0].1.contains("not an admin"),
        "{:?}",
        report.rejected
    );
    assert!(!c.state().is_admin(&mallory.public()));
    assert!(matches!(c.outcome(&op.hash()), Some(Outcome::Rejected(_))));
    // Local edits get the same verdict.
    assert!(matches!(
        add_channel(&mut c, &mallory, None, "X"),
        Err(EditError::Rejected(_))
    ));
}

#[test]
fn revoked_admin_after_revocation_is_rejected_and_concurrent_ops_are_void() {
    let (root, mut c) = org();
    let alice = id(2);
    grant_admin(&mut c, &root, alice.public());
    // Fork: alice edits on a copy while root revokes her concurrently.
    let mut alice_view = clone_replica(&c);
    let concurrent = add_channel(&mut alice_view, &alice, None, "Concurrent").unwrap();
    c.edit(
        &root,
        OpBody::RevokeAdmin {
            peer: alice.public(),
        },
        0,
    )
    .unwrap();

    // Her concurrent op is valid in its causal past but void: revocation wins.
    let report = c.ingest(vec![concurrent.encode()]);
    assert!(report.rejected.is_empty());
    assert!(
        matches!(c.outcome(&concurrent.hash()), Some(Outcome::Skipped(r)) if r.contains("revoked"))
    );
    assert!(c.state().find("/Concurrent").is_none());

    // An op made after seeing the revocation is rejected outright.
    let after = Op::sign(
        &alice,
        c.org(),
        c.heads(),
        0,
        OpBody::AddChannel {
            parent: None,
            name: "After".into(),
        },
    );
    let report = c.ingest(vec![after.encode()]);
    assert_eq!(report.rejected.len(), 1);
    assert!(report.rejected[0].1.contains("not an admin"));

    // The other replica converges to the same state once it hears of the revocation.
    alice_view.ingest(c.dag().iter().map(|o| o.encoded.clone()).collect());
    assert_eq!(alice_view.state().state_hash(), c.state().state_hash());
}

#[test]
fn concurrent_grant_does_not_authorise() {
    let (root, mut c) = org();
    let bob = id(3);
    let base = clone_replica(&c);
    // Bob signs an op on the old heads, while root grants him admin on another branch.
    let bobs = Op::sign(
        &bob,
        c.org(),
        base.heads(),
        0,
        OpBody::AddChannel {
            parent: None,
            name: "Bob".into(),
        },
    );
    c.edit(&root, OpBody::GrantAdmin { peer: bob.public() }, 0)
        .unwrap();
    let report = c.ingest(vec![bobs.encode()]);
    assert_eq!(report.rejected.len(), 1, "{report:?}");
}

#[test]
fn two_admins_editing_concurrently_keep_both_edits() {
    let (root, mut c) = org();
    let alice = id(2);
    grant_admin(&mut c, &root, alice.public());
    let mut other = clone_replica(&c);
    add_channel(&mut c, &root, None, "Ground").unwrap();
    add_channel(&mut other, &alice, None, "Logistics").unwrap();
    c.ingest(other.dag().iter().map(|o| o.encoded.clone()).collect());
    other.ingest(c.dag().iter().map(|o| o.encoded.clone()).collect());
    for r in [&c, &other] {
        assert!(r.state().find("/Ground").is_some());
        assert!(r.state().find("/Logistics").is_some());
    }
    assert_eq!(c.state().state_hash(), other.state().state_hash());
    assert_eq!(c.heads().len(), 2);
}

#[test]
fn manage_permission_delegates_a_subtree() {
    let (root, mut c) = org();
    role(&mut c, &root, "lead", Permissions::LISTEN);
    add_channel(&mut c, &root, None, "Flight").unwrap();
    let flight = c.state().find("/Flight").unwrap();
    c.edit(
        &root,
        OpBody::SetChannelAcl {
            channel: flight,
            role: "lead".into(),
            perms: Some(Permissions::ALL),
        },
        0,
    )
    .unwrap();
    let lead = id(4);
    member(&mut c, &root, lead.public(), &["lead"]);
    add_channel(&mut c, &lead, Some("/Flight"), "Alpha").unwrap();
    assert!(matches!(
        add_channel(&mut c, &lead, None, "Rogue"),
        Err(EditError::Rejected(_))
    ));
}

#[test]
fn unknown_parent_beyond_the_pending_bound_is_rejected() {
    let (root, c) = org();
    let mut fresh = Charter::with_limits(
        c.org(),
        ReplicaLimits {
            max_pending: 2,
            ..Default::default()
        },
    );
    let mut source = clone_replica(&c);
    let mut ops = Vec::new();
    for i in 0..3 {
        ops.push(
            add_channel(&mut source, &root, None, &format!("c{i}"))
                .unwrap()
                .encode(),
        );
    }
    // Deliver the children without the genesis: two wait, the third overflows.
    let report = fresh.ingest(ops.clone());
    assert_eq!(fresh.pending_len(), 2);
    assert_eq!(report.rejected.len(), 1);
    assert!(report.rejected[0].1.contains("pending set is full"));
    assert!(!report.missing.is_empty());
    // Once the missing history arrives the waiting ops are placed.
    fresh.ingest(source.dag().iter().map(|o| o.encoded.clone()).collect());
    assert_eq!(fresh.pending_len(), 0);
    assert_eq!(fresh.state().state_hash(), source.state().state_hash());
}

#[test]
fn duplicate_names_and_cycles_are_skipped_not_lost() {
    let (root, mut c) = org();
    add_channel(&mut c, &root, None, "A").unwrap();
    add_channel(&mut c, &root, Some("/A"), "B").unwrap();
    assert!(matches!(
        add_channel(&mut c, &root, None, "A"),
        Err(EditError::NoEffect(_))
    ));
    let a = c.state().find("/A").unwrap();
    let b = c.state().find("/A/B").unwrap();
    assert!(matches!(
        c.edit(
            &root,
            OpBody::MoveChannel {
                channel: a,
                parent: Some(b)
            },
            0
        ),
        Err(EditError::NoEffect(_))
    ));
}

#[test]
fn log_round_trip_and_repairs() {
    let (root, mut c) = org();
    for i in 0..5 {
        add_channel(&mut c, &root, None, &format!("c{i}")).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("org.log");
    let mut log = OpLog::create(&path, c.org()).unwrap();
    log.append(c.dag().iter().map(|o| o.encoded.as_slice()))
        .unwrap();
    drop(log);
    let full = std::fs::read(&path).unwrap();

    let loaded = OpLog::open(&path).unwrap();
    assert!(loaded.repair.is_none());
    let mut back = Charter::new(loaded.log.org());
    back.ingest(loaded.ops);
    assert_eq!(back.state().state_hash(), c.state().state_hash());

    // Torn tail: cut mid-record.
    std::fs::write(&path, &full[..full.len() - 7]).unwrap();
    let loaded = OpLog::open(&path).unwrap();
    let repair = loaded.repair.unwrap();
    assert_eq!(loaded.ops.len(), 5);
    assert!(repair.reason.contains("torn"));
    assert!(repair.saved_to.exists());
    // After repair the log appends cleanly and reopens without complaint.
    let mut log = loaded.log;
    log.append([c.dag().iter().last().unwrap().encoded.as_slice()])
        .unwrap();
    drop(log);
    let loaded = OpLog::open(&path).unwrap();
    assert!(loaded.repair.is_none());
    assert_eq!(loaded.ops.len(), 6);

    // A flipped byte in the middle: everything from that record on is cut and kept aside.
    let mut damaged = full.clone();
    let at = full.len() / 2;
    damaged[at] ^= 0x10;
    std::fs::write(&path, &damaged).unwrap();
    let loaded = OpLog::open(&path).unwrap();
    let repair = loaded.repair.unwrap();
    assert!(loaded.ops.len() < 6);
    assert!(!repair.reason.is_empty());
    assert_eq!(
        std::fs::read(&repair.saved_to).unwrap(),
        damaged[damaged.len() - repair.dropped_bytes as usize..]
    );

    // A damaged header is an error, not a guess.
    let mut bad = full.clone();
    bad[12] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(OpLog::open(&path).is_err());
    bad[..8].copy_from_slice(b"CSIGNLOG");
    bad[8] = 9;
    std::fs::write(&path, &bad).unwrap();
    assert!(OpLog::open(&path)
        .err()
        .unwrap()
        .to_string()
        .contains("version 9"));
}

#[test]
fn sync_brings_a_fresh_node_up_in_one_round_trip() {
    let (root, mut c) = org();
    for i in 0..200 {
        add_channel(&mut c, &root, None, &format!("channel-{i}")).unwrap();
    }
    let org_key = c.org();
    let mut a: CharterSync<u8> = CharterSync::new(c, SyncConfig::default(), 1);
    let mut b: CharterSync<u8> = CharterSync::new(Charter::new(org_key), SyncConfig::default(), 2);
    let now = Instant::now();
    a.handle_link_up(1, now);
    b.handle_link_up(0, now);
    let mut exchanges = 0;
    loop {
        let mut moved = false;
        while let Some((_, msg)) = a.poll_transmit() {
            b.handle_message(0, msg, now);
            moved = true;
        }
        while let Some((_, msg)) = b.poll_transmit() {
            a.handle_message(1, msg, now);
            moved = true;
        }
        if !moved {
            break;
        }
        exchanges += 1;
    }
    assert!(exchanges <= 3, "{exchanges}");
    assert_eq!(
        a.charter().state().state_hash(),
        b.charter().state().state_hash()
    );
    assert_eq!(b.charter().len(), 201);
    assert!(b.poll_timeout().unwrap() > now + Duration::from_secs(10));
}

#[test]
fn sync_refuses_malformed_messages() {
    use callsign_mesh::charter::SyncMessage;
    assert!(SyncMessage::decode(&[]).is_err());
    assert!(SyncMessage::decode(&[9, 0]).is_err());
    assert!(SyncMessage::decode(&[1, 200, 200, 200]).is_err());
    let _ = Member {
        name: String::new(),
        roles: vec![],
    };
}
