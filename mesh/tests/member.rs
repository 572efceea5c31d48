//! The member's whole protocol on a simulated network of sans-IO `Member`s, in virtual time
//! (`common::net`). No sockets, no sleeps: each test takes milliseconds of CPU.

mod common;

use callsign_keys::{IdentityKey, InviteGrant, NodeKeys};
use callsign_mesh::admission::JoinRequest;
use callsign_mesh::charter::sync::SyncMessage;
use callsign_mesh::charter::{ChannelId, OpBody};
use callsign_mesh::control::ControlMessage;
use callsign_mesh::member::{
    Command, DialCondition, Event, Input, LinkKind, LinkUp, Output, Role as MemberRole,
};
use callsign_mesh::topology::Route;
use common::net::{org, org_with_relays, Net, ROOT};
use libp2p_identity::PeerId;
use rand::SeedableRng;
use std::time::Duration;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Members `0..n` listen at 198.51.100.(i+1):4433, which their presence records announce.
fn announce_addresses(net: &mut Net, n: usize) {
    for i in 0..n {
        let listening = vec![format!("/ip4/198.51.100.{}/udp/4433/quic-v1", i + 1)
            .parse()
            .unwrap()];
        net.input(
            i,
            Input::Addresses {
                listening,
                external: Vec::new(),
            },
        );
    }
}

#[test]
fn linked_members_pair_up_and_hear_each_other() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2]);
    net.run_for(secs(1));
    for i in 0..3 {
        assert_eq!(
            net.sessions(i).len(),
            2,
            "member {i} paired with both others"
        );
    }
    net.talk(1, org.channel, 50);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 50);
    assert_eq!(net.heard(2, 1), 50);
    assert_eq!(net.heard(1, 1), 0, "nobody hears itself");
}

#[test]
fn a_charter_edit_reaches_members_not_linked_to_its_author_by_gossip() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    // A line: 0 — 1 — 2.
    net.link(0, 1);
    net.link(1, 2);
    net.run_for(secs(1));
    let body = OpBody::AddChannel {
        parent: None,
        name: "logistics".into(),
    };
    net.input(ROOT, Input::Command(Command::EditCharter(body)));
    net.run_for(secs(1));
    let hash = net.members[0].state().state_hash();
    for i in 1..3 {
        assert_eq!(net.members[i].state().state_hash(), hash, "member {i}");
        assert!(net.members[i].state().find("/logistics").is_some());
    }
    assert!(net.events[2]
        .iter()
        .any(|e| matches!(e, Event::CharterChanged { ops: 1 })));
}

#[test]
fn members_heard_of_through_presence_are_dialed_by_the_lower_peer_id() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.link(1, 2);
    // Presence carries addresses: members announce their listeners.
    announce_addresses(&mut net, 3);
    net.run_for(secs(3));
    assert!(net.linked(0, 2), "0 and 2 found each other through 1");
    net.run_for(secs(1));
    assert_eq!(net.sessions(0).len(), 2);
    assert_eq!(net.sessions(2).len(), 2);
}

/// A link that carried nothing for `LINK_QUIET` (QUIC backed off through an outage and may
/// not try again before its idle timeout) gets a fresh connection dialed beside it, at both
/// ends, where the member is now; and it is counted. A rented relay's link is left to its
/// heartbeats.
#[test]
fn a_quiet_link_gets_a_fresh_connection_dialed_beside_it() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    announce_addresses(&mut net, 2);
    net.link(0, 1);
    net.run_for(secs(2));
    let peer = net.peers[1];
    net.members[0].handle_input(net.now, Input::LinkQuiet(peer));
    let mut dialed = None;
    while let Some(output) = net.members[0].poll_output() {
        if let Output::Dial {
            peer: Some(p),
            addrs,
            condition,
        } = output
        {
            if p == peer {
                dialed = Some((addrs, condition));
            }
        }
    }
    let (addrs, condition) = dialed.expect("a fresh dial");
    assert_eq!(condition, DialCondition::Always, "beside the quiet link");
    assert!(
        addrs.iter().any(|a| a
            .to_string()
            .starts_with("/ip4/198.51.100.2/udp/4433/quic-v1")),
        "{addrs:?}"
    );
    assert_eq!(net.members[0].path().counts().quiet_links, 1);
}

/// A link that drops while both members are still online (two crossing connections each
/// closed by the other end, say) is dialed again at once by the lower peer id, to the
/// addresses and circuits in the other's presence record, and dialed back by the other a
/// moment later if that did not link them: not left until the next presence round.
#[test]
fn a_member_whose_link_drops_while_still_online_is_linked_again() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    announce_addresses(&mut net, 2);
    net.link(0, 1);
    net.run_for(secs(2));
    let (low, high) = if net.peers[0] < net.peers[1] {
        (0, 1)
    } else {
        (1, 0)
    };
    // Both ends lose the link; the harness does not dial for them this time.
    net.links.clear();
    let dials = |net: &mut Net, me: usize, other: usize| {
        let peer = net.peers[other];
        net.members[me].handle_input(net.now, Input::LinkDown(peer));
        let mut dialed = Vec::new();
        while let Some(output) = net.members[me].poll_output() {
            if let Output::Dial {
                peer: Some(p),
                addrs,
                ..
            } = output
            {
                if p == peer {
                    dialed.extend(addrs);
                }
            }
        }
        dialed
    };
    let from_low = dials(&mut net, low, high);
    let from_high = dials(&mut net, high, low);
    let high_addr = format!("/ip4/198.51.100.{}/udp/4433/quic-v1", high + 1);
    assert!(
        from_low
            .iter()
            .any(|a| a.to_string().starts_with(&high_addr)),
        "the lower peer id dials at once: {from_low:?}"
    );
    assert!(from_high.is_empty(), "the other waits: {from_high:?}");
    // Its dial went nowhere (say a NAT dropped it): the other dials back.
    net.run_for(secs(2));
    assert!(net.linked(0, 1), "linked again by the dial back");
}

#[test]
fn a_lost_ordered_request_restarts_the_session_and_voice_resumes() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    assert_eq!(net.sessions(0).len(), 1);
    // The next ordered request 0 sends is lost: 0 starts its control with 1 over.
    net.fail_next_ordered.insert(0);
    net.input(0, Input::Command(Command::Unlisten(org.channel)));
    net.input(0, Input::Command(Command::Listen(org.channel)));
    net.run_for(secs(2));
    let ups = net.events[0]
        .iter()
        .filter(|e| matches!(e, Event::SessionUp { .. }))
        .count();
    assert_eq!(ups, 2, "the session came up again");
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 25);
}

#[test]
fn requests_that_fail_as_they_are_sent_restart_control_at_a_bounded_rate() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    assert_eq!(net.sessions(0).len(), 1);
    // From now on every ordered request 0 sends to 1 fails the moment it is sent (a parked
    // link whose peer no longer answers a dial). The member must not loop in zero time.
    let peer = net.peers[1];
    let mut restarts = Vec::new();
    let mut ordered = 0;
    net.members[0].handle_input(net.now, Input::Command(Command::Unlisten(org.channel)));
    let end = net.now + secs(3);
    while net.now < end && ordered < 10_000 {
        let mut failed = Vec::new();
        while let Some(output) = net.members[0].poll_output() {
            if let Output::Control {
                peer: to,
                ordered: Some(token),
                ..
            } = output
            {
                if to == peer {
                    failed.push(token);
                }
            }
        }
        ordered += failed.len();
        if failed.is_empty() {
            net.now = net.members[0].poll_timeout().min(end);
            net.members[0].handle_input(net.now, Input::Timeout);
            continue;
        }
        restarts.push(net.now);
        for token in failed {
            net.members[0].handle_input(net.now, Input::ControlFailed(peer, token));
        }
    }
    assert!(ordered < 10_000, "looped: {ordered} requests");
    restarts.dedup();
    // One start per gap at most: about six in three seconds, not thousands in one instant.
    assert!(
        (3..=8).contains(&restarts.len()),
        "{} starts at {restarts:?}",
        restarts.len()
    );
    for pair in restarts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(500),
            "{restarts:?}"
        );
    }
}

#[test]
fn a_restarted_peer_gets_a_new_session_and_old_keys_are_dropped() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    net.talk(0, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(net.heard(1, 0), 10);
    // Member 0 restarts: a fresh machine with the same keys, and 1 sees a second connection.
    let mut fresh = Net::new(&org, 0);
    net.members[0] = fresh.members.remove(0);
    net.input(
        1,
        Input::LinkUp(LinkUp {
            peer: net.peers[0],
            kind: LinkKind::Direct,
            remote: Some(Net::addr(0)),
            circuit: None,
            dialed: None,
            restarted: true,
            resumed: false,
            beside_circuit: false,
            rtt: None,
        }),
    );
    let up = LinkUp {
        peer: net.peers[1],
        kind: LinkKind::Direct,
        remote: Some(Net::addr(1)),
        circuit: None,
        dialed: None,
        restarted: false,
        resumed: false,
        beside_circuit: false,
        rtt: None,
    };
    net.input(0, Input::LinkUp(up));
    net.run_for(secs(2));
    net.played[1].clear();
    net.talk(0, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(
        net.heard(1, 0),
        10,
        "the restarted sender's new key reached 1"
    );
}

/// Chaos seed 454: a direct dial replaced a circuit. The dialer saw the two connections
/// overlap and kept its session (a punched path carries on); the other side saw the circuit
/// close before the direct link came up, and started afresh. As a fresh responder it must ask
/// the initiator to start again, or it never holds a session, never grants its keys, and the
/// other side hears nothing from it.
#[test]
fn a_link_that_looked_new_to_one_side_only_gets_a_new_session() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    let (initiator, responder) = if net.peers[0] < net.peers[1] {
        (0, 1)
    } else {
        (1, 0)
    };
    let up = |peer, kind, addr| LinkUp {
        peer,
        kind,
        remote: Some(addr),
        circuit: None,
        dialed: None,
        restarted: false,
        resumed: false,
        beside_circuit: false,
        rtt: None,
    };
    let kept = LinkUp {
        beside_circuit: true,
        ..up(
            net.peers[responder],
            LinkKind::HolePunched,
            Net::addr(responder),
        )
    };
    net.input(initiator, Input::LinkUp(kept));
    net.input(responder, Input::LinkDown(net.peers[initiator]));
    let fresh = up(net.peers[initiator], LinkKind::Direct, Net::addr(initiator));
    net.input(responder, Input::LinkUp(fresh));
    net.run_for(secs(2));
    net.talk(responder, org.channel, 10);
    net.talk(initiator, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(net.heard(initiator, responder), 10, "the fresh side's keys");
    assert_eq!(net.heard(responder, initiator), 10);
}

#[test]
fn a_busy_channel_moves_to_the_rented_relay_which_forwards_what_it_cannot_open() {
    // Four members and a relay; the channel goes to the relay above 2 listeners.
    let org = org(4, true, 2);
    let relay = 4;
    let mut net = Net::new(&org, 1);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(1));
    // Members dial the relay the charter lists.
    for i in 0..4 {
        assert!(net.linked(i, relay), "member {i} linked to the relay");
    }
    net.run_for(secs(3));
    for i in 0..4 {
        assert_eq!(
            net.members[i].routes().get(&org.channel),
            Some(&Route::Relay(net.keys[relay])),
            "member {i} routes /ops through the relay"
        );
    }
    net.talk(2, org.channel, 50);
    net.run_for(secs(1));
    for listener in [0, 1, 3] {
        let heard = net.heard(listener, 2);
        assert!(heard >= 50, "member {listener} heard {heard} of 50");
    }
    assert!(
        net.forwarded[relay] >= 100,
        "the relay forwarded the frames"
    );
    assert_eq!(net.members[relay].role(), MemberRole::Relay);
    assert_eq!(net.members[relay].receiver().keys_held(), 0, "no audio key");
    assert!(net.played[relay].is_empty());
}

#[test]
fn periodic_presence_and_heads_on_relay_links_are_announcements_and_nothing_else_is() {
    let org = org(4, true, 2);
    let relay = 4;
    let mut net = Net::new(&org, 1);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(80));
    let count = |from: usize, to: usize| {
        let (mut presence, mut heads) = (0, 0);
        for (f, t, message) in &net.announced {
            if (*f, *t) != (from, to) {
                continue;
            }
            match message {
                ControlMessage::Presence(_) => presence += 1,
                ControlMessage::Sync(body) => match SyncMessage::decode(body) {
                    Ok(SyncMessage::Heads { .. }) => heads += 1,
                    other => panic!("{from} announced {other:?} to {to}"),
                },
                other => panic!("{from} announced {other:?} to {to}"),
            }
        }
        (presence, heads)
    };
    for i in 0..4 {
        // Presence every 10 s, heads every 15 s (jittered by a quarter), after the first of
        // each, which goes reliably as the link comes up.
        let (presence, heads) = count(i, relay);
        assert!(
            presence >= 5,
            "member {i} announced its presence {presence} times"
        );
        assert!(heads >= 2, "member {i} announced its heads {heads} times");
        // The relay announces its heads every minute (45 to 75 s apart).
        assert!(
            count(relay, i).1 >= 1,
            "the relay announced its heads to {i}"
        );
        for j in (0..4).filter(|j| *j != i) {
            assert_eq!(
                count(i, j),
                (0, 0),
                "{i} → {j}: control between members stays ordered"
            );
        }
    }
    // What went as announcements kept the relay's view: it still forwards to everyone.
    net.talk(2, org.channel, 50);
    net.run_for(secs(1));
    for listener in [0, 1, 3] {
        assert!(
            net.heard(listener, 2) >= 50,
            "member {listener} heard the talker"
        );
    }
}

#[test]
fn when_the_relay_goes_the_channel_falls_back_to_the_mesh() {
    let org = org(4, true, 2);
    let relay = 4;
    let mut net = Net::new(&org, 1);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(4));
    assert_eq!(
        net.members[0].routes().get(&org.channel),
        Some(&Route::Relay(net.keys[relay]))
    );
    for i in 0..4 {
        net.unlink(i, relay);
    }
    // The relay is unreachable now: redials go nowhere.
    net.peers[relay] = PeerId::random();
    net.run_for(Duration::from_millis(500));
    assert_eq!(
        net.members[0].routes().get(&org.channel),
        Some(&Route::Mesh)
    );
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    for listener in [0, 2, 3] {
        assert_eq!(net.heard(listener, 1), 25, "member {listener}");
    }
}

#[test]
fn a_removed_member_loses_the_audio_and_its_control() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2]);
    net.run_for(secs(1));
    let removed = org.ids[2].public();
    net.input(
        ROOT,
        Input::Command(Command::EditCharter(OpBody::RemoveMember { peer: removed })),
    );
    net.run_for(secs(1));
    net.played[2].clear();
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 25);
    assert_eq!(net.heard(2, 1), 0, "the removed member hears nothing");
}

#[test]
fn a_member_removed_while_cut_off_learns_it_when_back_and_nothing_newer() {
    let org = org(4, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(1));
    for i in 0..3 {
        net.unlink(i, 3);
    }
    let removed = org.ids[3].public();
    net.input(
        ROOT,
        Input::Command(Command::EditCharter(OpBody::RemoveMember { peer: removed })),
    );
    net.input(
        ROOT,
        Input::Command(Command::EditCharter(OpBody::AddChannel {
            parent: None,
            name: "after".into(),
        })),
    );
    net.run_for(secs(1));
    assert!(!net.members[3].is_removed());
    assert_eq!(net.members[1].state().channels.len(), 2);

    // Back in touch with a member that applied the removal (not its author): its first
    // sync message is answered with the removal, and it stops.
    net.link(1, 3);
    net.run_for(secs(1));
    let removed_by: Vec<&IdentityKey> = net.events[3]
        .iter()
        .filter_map(|e| match e {
            Event::Removed { by } => Some(by),
            _ => None,
        })
        .collect();
    assert_eq!(removed_by, [&org.ids[0].public()]);
    assert!(net.members[3].is_removed());
    assert!(!net.members[3].state().members.contains_key(&removed));
    assert_eq!(
        net.members[3].state().channels.len(),
        1,
        "the removed member learns its removal and not the charter after it"
    );
    net.talk(3, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(net.heard(1, 3), 0);
}

#[test]
fn ptt_where_the_charter_refuses_is_denied_at_the_sender() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    let unknown = ChannelId(999);
    net.input(1, Input::Command(Command::PttDown(vec![unknown])));
    assert!(net.events[1]
        .iter()
        .any(|e| matches!(e, Event::PttDenied { .. })));
    assert_eq!(net.transmit[1], None);
}

#[test]
fn garbage_from_the_network_is_dropped_without_harm() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    let peer = net.peers[1];
    for bytes in [vec![], vec![1], vec![1, 200, 3], vec![0xff; 300]] {
        net.input(0, Input::Control(peer, bytes.clone()));
        let input = Input::Datagram {
            peer,
            bytes: &bytes,
            received_at: net.now,
        };
        net.input(0, input);
    }
    net.talk(1, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 10, "the link still works");
}

#[test]
fn a_newcomer_with_an_invite_is_admitted_by_an_admin_and_hears_the_squad() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2]);
    net.run_for(secs(1));
    let keys = NodeKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(99));
    let grant = InviteGrant::issue(
        &org.ids[ROOT],
        org.charter.org(),
        "member",
        u64::MAX,
        [7; 16],
    )
    .unwrap();
    let join = JoinRequest::sign(&keys.identity, grant, "goose");
    let newcomer = net.add(&org, &keys, join);
    assert_eq!(net.members[newcomer].role(), MemberRole::Joining);
    // It reaches only member 1, who is no admin (the root's router filters strangers, say):
    // member 1 checks the request and passes it on to the root, and syncs the newcomer the
    // charter that admits it.
    net.link(newcomer, 1);
    net.run_for(secs(2));
    assert_eq!(net.members[newcomer].role(), MemberRole::Member);
    assert!(net.events[ROOT]
        .iter()
        .any(|e| matches!(e, Event::Admitted { name, .. } if name == "goose")));
    let hash = net.members[ROOT].state().state_hash();
    assert_eq!(net.members[newcomer].state().state_hash(), hash);
    assert!(
        !net.events[newcomer]
            .iter()
            .any(|e| matches!(e, Event::JoinRefused { .. })),
        "no refusal on the way in"
    );
    // Its links made while joining start over as a member's: sessions, keys, voice. As a
    // member it may now reach the root (here directly; through a circuit at member 1 when
    // the root's router filters it).
    net.link(newcomer, ROOT);
    net.run_for(secs(2));
    net.talk(ROOT, org.channel, 25);
    net.run_for(secs(1));
    assert_eq!(net.heard(newcomer, ROOT), 25, "the newcomer hears the root");
    net.talk(newcomer, org.channel, 25);
    net.run_for(secs(1));
    assert_eq!(net.heard(1, newcomer), 25, "member 1 hears the newcomer");
}

#[test]
fn a_join_request_waits_at_a_member_until_an_admin_links_and_a_bad_one_is_refused_there() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[1, 2]);
    net.run_for(secs(1));
    let grant = |nonce: u8, expires_at: u64| {
        InviteGrant::issue(
            &org.ids[ROOT],
            org.charter.org(),
            "member",
            expires_at,
            [nonce; 16],
        )
        .unwrap()
    };
    let keys = NodeKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(97));
    let newcomer = net.add(
        &org,
        &keys,
        JoinRequest::sign(&keys.identity, grant(9, u64::MAX), "goose"),
    );
    let expired_keys = NodeKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(96));
    let expired = net.add(
        &org,
        &expired_keys,
        JoinRequest::sign(&expired_keys.identity, grant(10, 1), "late"),
    );
    // A second newcomer with goose's ticket waits at member 2.
    let twin_keys = NodeKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(95));
    let twin = net.add(
        &org,
        &twin_keys,
        JoinRequest::sign(&twin_keys.identity, grant(9, u64::MAX), "twin"),
    );
    net.link(newcomer, 1);
    net.link(expired, 2);
    net.link(twin, 2);
    net.run_for(secs(2));
    // No admin online: the request waits at member 1.
    assert_eq!(net.members[newcomer].role(), MemberRole::Joining);
    // Member 2 checked the expired one itself and says why.
    assert!(net.events[expired]
        .iter()
        .any(|e| matches!(e, Event::JoinRefused { reason } if reason.contains("expired"))));
    // The root comes online and links to member 1 only: it gets the waiting request.
    net.link(ROOT, 1);
    net.run_for(secs(3));
    assert_eq!(net.members[newcomer].role(), MemberRole::Member);
    assert_eq!(net.members[expired].role(), MemberRole::Joining);
    // The ticket is used now: member 2 tells the twin that waited with it.
    assert_eq!(net.members[twin].role(), MemberRole::Joining);
    assert!(net.events[twin]
        .iter()
        .any(|e| matches!(e, Event::JoinRefused { reason } if reason.contains("used"))));
    let state = net.members[ROOT].state();
    assert!(state.members.contains_key(&keys.identity.public()));
    assert!(!state.members.contains_key(&expired_keys.identity.public()));
}

#[test]
fn an_invite_from_a_non_admin_admits_nobody() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2]);
    net.run_for(secs(1));
    let keys = NodeKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(98));
    // Member 1 signs an invite it has no right to issue.
    let grant =
        InviteGrant::issue(&org.ids[1], org.charter.org(), "member", u64::MAX, [8; 16]).unwrap();
    let newcomer = net.add(
        &org,
        &keys,
        JoinRequest::sign(&keys.identity, grant, "mallory"),
    );
    net.link(newcomer, ROOT);
    net.run_for(secs(2));
    assert_eq!(net.members[newcomer].role(), MemberRole::Joining);
    assert!(net.events[newcomer]
        .iter()
        .any(|e| matches!(e, Event::JoinRefused { .. })));
    assert!(!net.members[ROOT]
        .state()
        .members
        .contains_key(&keys.identity.public()));
}

#[test]
fn members_use_their_nearest_relay_and_the_relays_cascade() {
    // Two regions of two members, each near one of the channel's two preferred relays.
    let org = org_with_relays(4, 2, 2);
    let (near_a, near_b, relay_a, relay_b) = ([0, 1], [2, 3], 4, 5);
    let mut net = Net::new(&org, 2);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(1));
    assert!(
        net.linked(relay_a, relay_b),
        "rented relays link to each other"
    );
    let (a, b) = (net.peers[relay_a], net.peers[relay_b]);
    let ms = Duration::from_millis;
    for (members, near, far) in [(near_a, a, b), (near_b, b, a)] {
        for i in members {
            net.input(i, Input::Rtts(vec![(near, ms(10)), (far, ms(180))]));
        }
    }
    net.run_for(secs(5));
    for (members, relay) in [(near_a, relay_a), (near_b, relay_b)] {
        for i in members {
            let route = net.members[i].routes().get(&org.channel).copied();
            assert_eq!(route, Some(Route::Relay(net.keys[relay])), "member {i}");
        }
    }
    // The org's root talks: it is no `members` entry, and its frames cross both relays too.
    net.talk(ROOT, org.channel, 50);
    net.run_for(secs(1));
    for listener in [1, 2, 3] {
        let heard = net.heard(listener, ROOT);
        assert!(heard >= 50, "member {listener} heard {heard} of 50");
    }
    // The far region's copies came through both relays, one hop between them.
    assert!(net.forwarded[relay_a] >= 50 && net.forwarded[relay_b] >= 50);
    net.talk(3, org.channel, 50);
    net.run_for(secs(1));
    for listener in [0, 1, 2] {
        let heard = net.heard(listener, 3);
        assert!(heard >= 50, "member {listener} heard {heard} of 50 from 3");
    }
}

#[test]
fn a_member_whose_role_is_taken_and_given_back_hears_its_channels_again() {
    use callsign_mesh::charter::{Permissions, Priority, Role};
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2]);
    net.run_for(secs(1));
    let edit = |net: &mut Net, body: OpBody| {
        net.input(ROOT, Input::Command(Command::EditCharter(body)));
        net.run_for(secs(1));
    };
    let role = Role {
        perms: Permissions::default(),
        priority: Priority::NORMAL,
    };
    edit(
        &mut net,
        OpBody::PutRole {
            name: "benched".into(),
            role,
        },
    );
    let member = |roles: &str| OpBody::PutMember {
        peer: org.ids[2].public(),
        name: "m2".into(),
        roles: vec![roles.into()],
    };
    edit(&mut net, member("benched"));
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    assert_eq!(net.heard(2, 1), 0, "no listen right, nothing heard");
    edit(&mut net, member("member"));
    net.run_for(secs(2));
    net.played[2].clear();
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    assert!(
        net.heard(2, 1) >= 24,
        "heard {} of 25 once the role is back",
        net.heard(2, 1)
    );
}
