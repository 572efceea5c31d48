//! Floor control on a simulated network of sans-IO `FloorControl`s: every message goes through
//! its wire form and arrives after a fixed one-way latency, in virtual time (`floor/net.rs`).

#[path = "floor/net.rs"]
mod net;

use callsign_mesh::charter::{ChannelId, Priority};
use callsign_mesh::floor::{FloorConfig, FloorError, FloorEvent, FloorMessage, LocalFloor};
use net::{Net, A, B, C, D, RELAY, ROOT};
use std::time::Duration;
fn crossing_presses(arbiter: bool) {
    let mut net = Net::in_mode(40, arbiter);
    let pressed = net.now - net.start;
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(5));
    net.press(B).unwrap();
    net.run_for(Duration::from_millis(300));
    // In mesh mode the earlier press wins; the arbiter serves arrival order, and A's request
    // (sent 5 ms earlier over the same latency) arrives first too.
    net.assert_one_talker(A);
    assert_eq!(net.state(B), LocalFloor::Queued(1));
    let grant = net.granted_at(A).unwrap() - pressed;
    assert!(
        grant <= Duration::from_millis(90),
        "press to grant {grant:?}"
    );
    // A releases: B, already acknowledged, takes over within a one-way trip.
    net.release(A);
    let released = net.now;
    net.run_for(Duration::from_millis(300));
    net.assert_one_talker(B);
    let handover = net.start + net.granted_at(B).unwrap() - released;
    assert!(
        handover <= Duration::from_millis(90),
        "handover {handover:?}"
    );
    net.release(B);
    net.run_for(Duration::from_millis(300));
    for (i, node) in net.nodes.iter().enumerate() {
        assert_eq!(node.holder(net.channel), None, "node {i}");
        assert_eq!(net.state(i), LocalFloor::Idle);
    }
}

#[test]
fn crossing_presses_end_with_one_talker_in_mesh_mode() {
    crossing_presses(false);
}

#[test]
fn crossing_presses_end_with_one_talker_with_an_arbiter() {
    crossing_presses(true);
}

fn preemption_and_emergency(arbiter: bool) {
    let mut net = Net::in_mode(20, arbiter);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(200));
    net.assert_one_talker(A);
    // Priority 3 pre-empts priority 2; A is told by whom.
    net.press(C).unwrap();
    net.run_for(Duration::from_millis(200));
    net.assert_one_talker(C);
    assert!(net.events[A].iter().any(|(_, e)| *e
        == FloorEvent::Preempted {
            channel: net.channel,
            by: net.keys[C]
        }));
    // Only a priority-4 role may raise an emergency.
    assert_eq!(net.emergency(A), Err(FloorError::NoEmergency));
    net.emergency(D).unwrap();
    net.run_for(Duration::from_millis(200));
    net.assert_one_talker(D);
    for i in 0..6 {
        assert!(
            net.events[i].iter().any(|(_, e)| *e
                == FloorEvent::EmergencyRaised {
                    channel: net.channel,
                    by: net.keys[D]
                }),
            "node {i} alerted"
        );
        assert_eq!(net.nodes[i].emergencies(net.channel), vec![net.keys[D]]);
    }
    // Nothing pre-empts an emergency: not priority 3, not the admin's own emergency.
    net.press(C).unwrap();
    net.emergency(ROOT).unwrap();
    net.run_for(Duration::from_millis(200));
    net.assert_one_talker(D);
    assert_eq!(net.state(ROOT), LocalFloor::Queued(1));
    assert_eq!(net.state(C), LocalFloor::Queued(2));
    // The emergency talker releases: the admin's emergency is next; then the admin clears D's.
    net.release(D);
    net.run_for(Duration::from_millis(200));
    net.assert_one_talker(ROOT);
    net.nodes[ROOT]
        .clear_emergency(&net.state, net.channel, net.keys[D], net.now)
        .unwrap();
    net.collect();
    net.run_for(Duration::from_millis(200));
    for i in 0..6 {
        assert_eq!(net.nodes[i].emergencies(net.channel), vec![net.keys[ROOT]]);
    }
    assert_eq!(
        net.nodes[A].clear_emergency(&net.state, net.channel, net.keys[ROOT], net.now),
        Err(FloorError::NotAdmin)
    );
    net.release(ROOT);
    net.run_for(Duration::from_millis(200));
    net.assert_one_talker(C);
}

#[test]
fn priority_preempts_and_emergency_is_never_preempted_in_mesh_mode() {
    preemption_and_emergency(false);
}

#[test]
fn priority_preempts_and_emergency_is_never_preempted_with_an_arbiter() {
    preemption_and_emergency(true);
}

fn holder_lost(arbiter: bool) {
    let mut net = Net::in_mode(20, arbiter);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(100));
    net.press(B).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.state(B), LocalFloor::Queued(1));
    net.drop_node(A);
    net.run_for(Duration::from_millis(100));
    net.assert_one_talker(B);
}

#[test]
fn a_lost_holder_frees_the_floor_for_the_queue_in_mesh_mode() {
    holder_lost(false);
}

#[test]
fn a_lost_holder_frees_the_floor_for_the_queue_with_an_arbiter() {
    holder_lost(true);
}

fn holder_goes_silent(arbiter: bool) {
    let mut net = Net::in_mode(20, arbiter);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(100));
    net.press(B).unwrap();
    // Heartbeats keep a holder that sends no audio.
    net.run_for(Duration::from_secs(5));
    net.assert_one_talker(A);
    // A's process hangs (no more messages) but its links have not timed out.
    net.cut.insert(A);
    let silent = net.now;
    net.run_for(Duration::from_millis(2600));
    net.assert_one_talker(B);
    let taken = net.start + net.granted_at(B).unwrap() - silent;
    assert!(taken <= Duration::from_millis(2600), "{taken:?}");
}

#[test]
fn a_silent_holder_loses_the_floor_in_mesh_mode() {
    holder_goes_silent(false);
}

#[test]
fn a_silent_holder_loses_the_floor_with_an_arbiter() {
    holder_goes_silent(true);
}

#[test]
fn talk_time_is_limited_per_priority() {
    let mut config = FloorConfig::default();
    config.max_talk[2] = Some(Duration::from_secs(2));
    let mut net = Net::new(20, config);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(100));
    net.press(B).unwrap();
    net.run_for(Duration::from_millis(2500));
    assert!(net.events[A]
        .iter()
        .any(|(_, e)| matches!(e, FloorEvent::Revoked { .. })));
    net.assert_one_talker(B);
}

#[test]
fn claims_beyond_the_role_and_foreign_rulings_are_refused() {
    let mut net = Net::new(20, FloorConfig::default());
    let channel = net.channel;
    let forged = FloorMessage::Claim {
        channel,
        claim: callsign_mesh::floor::Claim {
            rev: 1,
            request: Some(callsign_mesh::floor::FloorRequest {
                priority: Priority::HIGH,
                stamp: 1,
                emergency: false,
            }),
            emergency: None,
        },
        seen: None,
    };
    let (a, relay) = (net.keys[A], net.keys[RELAY]);
    let now = net.now;
    assert_eq!(
        net.nodes[B].handle_message(&net.state, a, forged.clone(), now),
        Err(FloorError::Unauthorised)
    );
    // The relay has no speak right at all.
    assert_eq!(
        net.nodes[B].handle_message(&net.state, relay, forged, now),
        Err(FloorError::Unauthorised)
    );
    let ruling = FloorMessage::Decision {
        channel,
        decision: callsign_mesh::floor::Decision::default(),
    };
    assert_eq!(
        net.nodes[B].handle_message(&net.state, a, ruling, now),
        Err(FloorError::Unauthorised)
    );
    let clear = FloorMessage::ClearEmergency {
        channel,
        raiser: net.keys[D],
        raised: 1,
    };
    assert_eq!(
        net.nodes[B].handle_message(&net.state, a, clear, now),
        Err(FloorError::Unauthorised)
    );
    assert_eq!(net.nodes[B].holder(channel), None);
    net.run_for(Duration::from_millis(100));
}

mod decode {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the decoder; what decodes survives a round trip.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(message) = FloorMessage::decode(&bytes) {
                prop_assert_eq!(FloorMessage::decode(&message.encode()), Ok(message));
            }
        }

        /// A valid message with one byte changed decodes to something valid or is refused.
        #[test]
        fn damaged_claims(at in any::<prop::sample::Index>(), to in any::<u8>(), rev in any::<u32>()) {
            let message = FloorMessage::Claim {
                channel: ChannelId(rev.into()),
                claim: callsign_mesh::floor::Claim {
                    rev,
                    request: Some(callsign_mesh::floor::FloorRequest {
                        priority: Priority::NORMAL,
                        stamp: u64::from(rev) << 12,
                        emergency: false,
                    }),
                    emergency: None,
                },
                seen: Some(rev / 2),
            };
            let mut bytes = message.encode();
            let i = at.index(bytes.len());
            bytes[i] = to;
            if let Ok(decoded) = FloorMessage::decode(&bytes) {
                prop_assert_eq!(FloorMessage::decode(&decoded.encode()), Ok(decoded));
            }
        }
    }
}

#[test]
fn a_silent_arbiter_hands_back_to_the_members_rule() {
    let mut net = Net::in_mode(20, true);
    // The relay's process hangs: no rulings, no heartbeats, links still up.
    net.cut.insert(RELAY);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(500));
    assert_eq!(
        net.state(A),
        LocalFloor::Pending,
        "still waiting for a ruling"
    );
    net.run_for(Duration::from_millis(2000));
    net.assert_one_talker(A);
    net.press(B).unwrap();
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.state(B), LocalFloor::Queued(1));
    // The relay comes back: its ruling (rebuilt from the members' claims) takes over again.
    net.cut.remove(&RELAY);
    for node in 0..6 {
        if node != RELAY {
            let key = net.keys[node];
            net.nodes[RELAY].peer_down(&key, net.now);
            net.nodes[RELAY].peer_up(key);
            let relay = net.keys[RELAY];
            net.nodes[node].peer_down(&relay, net.now);
            net.nodes[node].peer_up(relay);
        }
    }
    net.collect();
    net.run_for(Duration::from_millis(300));
    net.assert_one_talker(A);
    assert_eq!(net.nodes[A].arbiter(net.channel), Some(net.keys[RELAY]));
}

#[test]
fn a_grant_made_before_the_preemptors_claim_arrived_goes_back_to_the_queue() {
    let mut net = Net::in_mode(20, false);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(200));
    net.assert_one_talker(A);
    net.press(B).unwrap();
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.state(B), LocalFloor::Queued(1));
    // C pre-empts A, but its claim reaches B long after A's release does: B, alone in its
    // view, is granted for a moment.
    net.slow.insert((C, B), Duration::from_millis(200));
    net.press(C).unwrap();
    net.run_for(Duration::from_millis(400));
    net.assert_one_talker(C);
    assert_eq!(
        net.state(B),
        LocalFloor::Queued(1),
        "B still presses and waits its turn"
    );
    net.release(C);
    net.run_for(Duration::from_millis(400));
    net.assert_one_talker(B);
    assert_eq!(net.state(B), LocalFloor::Granted);
}

#[test]
fn a_member_that_let_one_press_time_out_is_not_waited_for_again_until_it_speaks() {
    let mut net = Net::in_mode(20, false);
    // D's process is gone but its links have not timed out (a lost goodbye).
    net.cut.insert(D);
    net.press(A).unwrap();
    net.run_for(Duration::from_secs(1));
    let first = net.granted_at(A).unwrap();
    assert!(
        first >= Duration::from_millis(750),
        "{first:?}: waited on D"
    );
    net.release(A);
    net.run_for(Duration::from_secs(1));
    // A's next press waits only for the members that answer: one round trip.
    let pressed = net.now - net.start;
    net.press(A).unwrap();
    net.run_for(Duration::from_secs(1));
    let waited = net.granted_at(A).unwrap() - pressed;
    assert!(waited < Duration::from_millis(200), "{waited:?}");
    net.assert_one_talker(A);
    // D comes back and answers A's claims: it is waited for again, and the floor still has
    // one talker everywhere.
    net.release(A);
    net.run_for(Duration::from_secs(1));
    net.cut.remove(&D);
    net.press(C).unwrap();
    net.run_for(Duration::from_secs(1));
    net.assert_one_talker(C);
}

#[test]
fn crossing_presses_whose_claims_are_lost_still_end_with_one_talker() {
    // A lossy path: A's and B's first claims to each other are lost, and B's first answer to
    // A too. QUIC would retransmit them only after a probe timeout; the pending requests
    // repeat their claims to whoever has not acknowledged them instead.
    let mut net = Net::in_mode(80, false);
    net.lose.insert((A, B), 1);
    net.lose.insert((B, A), 2);
    let pressed = net.now - net.start;
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(30));
    net.press(B).unwrap();
    net.run_for(Duration::from_secs(2));
    net.assert_one_talker(A);
    assert!(
        !net.events[B].iter().any(|(_, e)| *e
            == FloorEvent::Granted {
                channel: net.channel
            }),
        "B was granted too: {:?}",
        net.events[B]
    );
    let grant = net.granted_at(A).unwrap() - pressed;
    assert!(
        grant < FloorConfig::default().ack_timeout,
        "press to grant {grant:?}"
    );
}

#[test]
fn a_release_lost_on_the_way_is_repeated_until_everyone_has_it() {
    // A holds the floor and B waits; A's release to C is lost. QUIC would retransmit it only
    // after a probe timeout (doubling with each loss in a burst), and C would follow A and
    // drop B's audio as out of turn until then (chaos seed 817: 1 s). The release is repeated
    // to whoever has not acknowledged it instead.
    let mut net = Net::in_mode(80, false);
    net.press(A).unwrap();
    net.run_for(Duration::from_secs(1));
    net.press(B).unwrap();
    net.run_for(Duration::from_secs(1));
    net.assert_one_talker(A);
    net.lose.insert((A, C), 1);
    net.release(A);
    // One resend interval plus a trip.
    net.run_for(FloorConfig::default().claim_resend() + Duration::from_millis(100));
    net.assert_one_talker(B);
}

/// Samples every live node's holder every 10 ms for `span`: how long any of them named
/// `holder`, and whether all of them named it throughout.
fn named_for(net: &mut Net, holder: Option<usize>, span: Duration) -> (Duration, bool) {
    let step = Duration::from_millis(10);
    let want = holder.map(|h| net.keys[h]);
    let (mut named, mut always) = (Duration::ZERO, true);
    let end = net.now + span;
    while net.now < end {
        net.run_for(step);
        let views: Vec<_> = (0..net.nodes.len())
            .filter(|i| !net.cut.contains(i))
            .map(|i| net.nodes[i].holder(net.channel))
            .collect();
        if views.contains(&want) {
            named += step;
        }
        always &= views.iter().all(|v| *v == want);
    }
    (named, always)
}

#[test]
fn a_queued_claim_whose_talker_hung_long_ago_leads_only_for_a_heartbeat() {
    let mut net = Net::in_mode(20, false);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(100));
    net.press(B).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.state(B), LocalFloor::Queued(1));
    // B's process hangs (its links stay up) while A talks on for three seconds.
    net.cut.insert(B);
    net.run_for(Duration::from_secs(3));
    net.assert_one_talker(A);
    // A releases: B's claim comes to lead everywhere, but B was last heard 3 s ago.
    net.release(A);
    let heartbeat = FloorConfig::default().heartbeat();
    let (named, _) = named_for(&mut net, Some(B), Duration::from_secs(3));
    assert!(
        named <= heartbeat + Duration::from_millis(100),
        "B named holder for {named:?}"
    );
    for i in [A, C, D] {
        assert_eq!(net.nodes[i].holder(net.channel), None, "node {i}");
    }
}

#[test]
fn a_talker_granted_after_a_long_queue_keeps_the_floor() {
    let mut net = Net::in_mode(20, false);
    net.press(A).unwrap();
    net.run_for(Duration::from_millis(100));
    net.press(B).unwrap();
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.state(B), LocalFloor::Queued(1));
    net.release(A);
    // B says it holds the floor at once: nobody takes it for silent, not for a moment.
    net.run_for(Duration::from_millis(60));
    let (_, always) = named_for(&mut net, Some(B), Duration::from_secs(3));
    assert!(always, "every view names B throughout");
    net.assert_one_talker(B);
}
