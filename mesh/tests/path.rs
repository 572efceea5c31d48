//! The voice path checks and repairs itself (`callsign_mesh::path`): paths broken on purpose
//! — a subscription the relay forgot, a relay that forwards nothing to one listener, a floor
//! view that differs between members — are repaired by the listeners' ladder, in virtual time.

mod common;

use callsign_mesh::charter::{ChannelPolicy, FloorMode, OpBody};
use callsign_mesh::floor::FloorEvent;
use callsign_mesh::member::{Command, Event, Input};
use callsign_mesh::path::RepairCounts;
use callsign_mesh::topology::Route;
use common::net::{org, Net, ROOT};
use std::time::Duration;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Four members and a rented relay (index 4); `/ops` goes through it above 2 listeners.
fn relayed() -> (common::net::Org, Net) {
    let org = org(4, true, 2);
    let mut net = Net::new(&org, 1);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(4));
    for i in 0..4 {
        assert_eq!(
            net.members[i].routes().get(&org.channel),
            Some(&Route::Relay(net.keys[4])),
            "member {i} routes /ops through the relay"
        );
    }
    (org, net)
}

fn counts(net: &Net, i: usize) -> RepairCounts {
    net.members[i].path().counts().clone()
}

#[test]
fn a_subscription_the_relay_forgot_is_sent_again() {
    let (org, mut net) = relayed();
    let relay = 4;
    // The relay loses member 3's subscription; the member still counts itself subscribed.
    net.members[relay]
        .forwarder()
        .expect("a relay forwards")
        .remove(&net.keys[3]);
    net.talk(2, org.channel, 100);
    net.run_for(secs(1));
    let heard = net.heard(3, 2);
    // One bound (300 ms plus the round trip) without frames, then the first rung.
    assert!(heard >= 75, "member 3 heard {heard} of 100");
    let repairs = counts(&net, 3);
    assert_eq!(repairs.resubscribe, 1, "{repairs:?}");
    assert_eq!(repairs.recovered, 1);
    // The first rung also asks the talker for direct copies, whichever repairs the path.
    assert_eq!((repairs.direct_copy, repairs.key, repairs.mesh), (1, 0, 0));
    for listener in [0, 1] {
        assert_eq!(net.heard(listener, 2), 100, "member {listener}");
        assert_eq!(counts(&net, listener), RepairCounts::default());
    }
}

#[test]
fn a_relay_that_forwards_nothing_to_a_listener_is_bypassed_by_direct_copies() {
    let (org, mut net) = relayed();
    let (relay, deaf) = (4, 3);
    net.blackholed.insert((relay, deaf));
    net.talk(2, org.channel, 150);
    net.run_for(secs(1));
    let heard = net.heard(deaf, 2);
    // The first rung (resubscribe, and direct copies from the talker), then every frame.
    assert!(heard >= 125, "member {deaf} heard {heard} of 150");
    let repairs = counts(&net, deaf);
    assert_eq!(
        (repairs.resubscribe, repairs.key, repairs.direct_copy),
        (1, 0, 1)
    );
    assert_eq!(repairs.recovered, 1, "{repairs:?}");
    let talker = counts(&net, 2);
    assert_eq!((talker.served_key, talker.served_direct_copy), (0, 1));
    // The next talker's frames are missed for one bound, then its direct copies come.
    net.talk(1, org.channel, 50);
    net.run_for(secs(1));
    assert!(net.heard(deaf, 1) >= 30, "heard {}", net.heard(deaf, 1));
}

#[test]
fn a_listener_cut_off_from_everything_but_control_falls_back_to_the_mesh_and_says_so() {
    let (org, mut net) = relayed();
    let deaf = 3;
    // No datagram reaches member 3 from anyone: no rung can help, and it says so.
    for from in 0..5 {
        net.blackholed.insert((from, deaf));
    }
    net.talk(2, org.channel, 100);
    let repairs = counts(&net, deaf);
    assert!(repairs.mesh >= 1, "{repairs:?}");
    assert_eq!(
        net.members[deaf].path().unreachable().collect::<Vec<_>>(),
        vec![&net.keys[2]]
    );
    assert_eq!(
        net.members[deaf].routes().get(&org.channel),
        Some(&Route::Mesh),
        "the channel left the relay"
    );
    // Connectivity returns: the next frames play and the talker is no longer unreachable.
    net.blackholed.clear();
    net.talk(2, org.channel, 50);
    net.run_for(secs(1));
    assert!(net.heard(deaf, 2) >= 45, "heard {}", net.heard(deaf, 2));
    assert_eq!(net.members[deaf].path().unreachable().count(), 0);
}

#[test]
fn a_member_that_granted_itself_away_from_the_arbiter_is_heard_by_those_following_it() {
    let (org, mut net) = relayed();
    let (relay, cut) = (4, 3);
    let policy = ChannelPolicy {
        floor: FloorMode::HalfDuplex,
        mesh_threshold: 2,
        ..ChannelPolicy::default()
    };
    net.input(
        ROOT,
        Input::Command(Command::EditCharter(OpBody::SetChannelPolicy {
            channel: org.channel,
            policy,
        })),
    );
    net.run_for(secs(2));
    // Member 3 loses the relay, the arbiter: it applies the members' rule, the others follow
    // the arbiter, which never hears member 3's claim.
    net.cut.insert((cut, relay));
    net.unlink(cut, relay);
    net.run_for(secs(3));
    assert_eq!(net.members[cut].floor().arbiter(org.channel), None);
    assert_eq!(
        net.members[0].floor().arbiter(org.channel),
        Some(net.keys[relay])
    );
    net.talk(cut, org.channel, 100);
    net.run_for(secs(1));
    // One floor view: the talker on air held it everywhere, though the arbiter never heard it.
    for i in 0..4 {
        let held = net.events[i].iter().any(|e| {
            matches!(e, Event::Floor(FloorEvent::Holder { holder: Some(h), .. }) if *h == net.keys[cut])
        });
        assert!(held, "member {i} never saw the talker hold the floor");
    }
    for listener in [0, 1, 2] {
        let heard = net.heard(listener, cut);
        assert!(heard >= 90, "member {listener} heard {heard} of 100");
    }
    let drops: u64 = (0..3).map(|i| net.members[i].floor_drops()).sum();
    assert!(drops <= 5 * 3, "{drops} floor drops");
}

#[test]
fn a_listener_stays_at_the_relay_a_channel_left_while_the_new_one_is_silent() {
    use callsign_mesh::member::LEAVE_OVERLAP;
    // Two regions, each near one of the channel's two preferred relays (they cascade).
    let org = common::net::org_with_relays(4, 2, 2);
    let (relay_a, relay_b, listener, talker) = (4, 5, 3, 0);
    let mut net = Net::new(&org, 2);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(1));
    let (a, b) = (net.peers[relay_a], net.peers[relay_b]);
    let ms = Duration::from_millis;
    for i in 0..4 {
        let (near, far) = if i == listener { (b, a) } else { (a, b) };
        net.input(i, Input::Rtts(vec![(near, ms(10)), (far, ms(180))]));
    }
    net.run_for(secs(5));
    let route = |net: &Net| net.members[listener].routes().get(&org.channel).copied();
    assert_eq!(route(&net), Some(Route::Relay(net.keys[relay_b])));
    // The listener moves next to relay A, which forwards it nothing; the channel moves there
    // (at its next plan), and the talker talks at once.
    net.blackholed.insert((relay_a, listener));
    net.input(listener, Input::Rtts(vec![(a, ms(10)), (b, ms(180))]));
    let patience = net.now + secs(15);
    while route(&net) != Some(Route::Relay(net.keys[relay_a])) && net.now < patience {
        net.run_for(ms(20));
    }
    // Two seconds of talk, all within the overlap.
    let frames = 100;
    assert!(LEAVE_OVERLAP >= Duration::from_millis(20 * u64::from(frames)));
    net.talk(talker, org.channel, frames);
    assert_eq!(route(&net), Some(Route::Relay(net.keys[relay_a])), "stayed");
    // Relay B kept forwarding through the overlap: nothing was missed.
    let heard = net.heard(listener, talker);
    assert!(
        heard + 2 >= usize::from(frames),
        "heard {heard} of {frames}"
    );
    // The overlap over, the silent relay is found out and the path repaired (another
    // talker: the test's frames count from 0 on every press, and a repeat is a replay).
    net.run_for(secs(1));
    let next = 1;
    net.talk(next, org.channel, 100);
    let heard = net.heard(listener, next);
    assert!(heard >= 75, "heard {heard} of 100 after the overlap");
    assert!(counts(&net, listener).recovered >= 1);
}
