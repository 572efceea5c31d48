//! The routing view: what a member feeds the topology rule from the charter and presence, and
//! that members with the same view agree.

use callsign_keys::{Identity, IdentityKey};
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, CharterState, OpBody, Permissions, Priority, RelayInfo, Role,
};
use callsign_mesh::presence::{PresenceBody, PresenceRecord, PresenceTable, RelayCapability};
use callsign_mesh::routing::RoutingView;
use callsign_mesh::topology::{Route, TopologyConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

struct Org {
    state: CharterState,
    members: Vec<Identity>,
    relays: Vec<IdentityKey>,
    ops: ChannelId,
}

/// `n` members who all speak and listen on /ops (threshold `threshold`), and two rented relays.
fn org(n: usize, threshold: u8) -> Org {
    let root = identity(1);
    let (mut c, _) = Charter::create(&root, "Wing", 0).unwrap();
    c.edit(
        &root,
        OpBody::PutRole {
            name: "member".into(),
            role: Role {
                perms: Permissions::LISTEN.union(Permissions::SPEAK),
                priority: Priority::NORMAL,
            },
        },
        0,
    )
    .unwrap();
    c.edit(
        &root,
        OpBody::AddChannel {
            parent: None,
            name: "ops".into(),
        },
        0,
    )
    .unwrap();
    let ops = c.state().find("/ops").unwrap();
    c.edit(
        &root,
        OpBody::SetChannelPolicy {
            channel: ops,
            policy: ChannelPolicy {
                mesh_threshold: threshold,
                ..ChannelPolicy::default()
            },
        },
        0,
    )
    .unwrap();
    let members: Vec<Identity> = (0..n as u64).map(|i| identity(100 + i)).collect();
    for (i, m) in members.iter().enumerate() {
        c.edit(
            &root,
            OpBody::PutMember {
                peer: m.public(),
                name: format!("m{i}"),
                roles: vec!["member".into()],
            },
            0,
        )
        .unwrap();
    }
    let relays: Vec<IdentityKey> = [7, 8].iter().map(|s| identity(*s).public()).collect();
    for relay in &relays {
        c.edit(
            &root,
            OpBody::PutRelay {
                peer: *relay,
                info: RelayInfo {
                    addrs: Vec::new(),
                    capacity: 100,
                },
            },
            0,
        )
        .unwrap();
    }
    Org {
        state: c.state().clone(),
        members,
        relays,
        ops,
    }
}

/// What a member advertises.
#[derive(Default, Clone)]
struct Says {
    rtt: Vec<(IdentityKey, u32)>,
    routes: Vec<(ChannelId, IdentityKey)>,
    relay: RelayCapability,
    uplink_kbps: u32,
}

fn table(org: &Org, says: impl Fn(usize) -> Says) -> PresenceTable {
    let mut table = PresenceTable::new(org.state.org);
    for (i, m) in org.members.iter().enumerate() {
        let s = says(i);
        let record = PresenceRecord::sign(
            m,
            PresenceBody {
                org: org.state.org,
                peer: m.public(),
                seq: 1,
                issued_at_ms: 0,
                ttl_ms: 60_000,
                display_name: format!("m{i}"),
                listening: vec![org.ops],
                relay: s.relay,
                addrs: Vec::new(),
                relay_rtt_ms: s.rtt,
                routes: s.routes,
                uplink_kbps: s.uplink_kbps,
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
    table
}

fn route(org: &Org, table: &PresenceTable, me: usize, linked: &[IdentityKey]) -> Route {
    let linked: BTreeSet<IdentityKey> = linked.iter().copied().collect();
    let local = org.members[me].public();
    RoutingView {
        state: &org.state,
        presence: table,
        local: &local,
        listening: &[org.ops],
        linked: &linked,
        current: &BTreeMap::new(),
    }
    .route(&TopologyConfig::default(), org.ops)
}

#[test]
fn past_the_threshold_every_member_picks_the_relay_nearest_the_listeners() {
    let (small, large) = (org(6, 6), org(8, 6));
    let none = table(&small, |_| Says::default());
    assert_eq!(route(&small, &none, 0, &small.relays), Route::Mesh);
    // relays[1] is nearer for most listeners (the median decides, not one member's view).
    let rtts = |i: usize| Says {
        rtt: {
            let mut v = vec![
                (large.relays[0], if i == 0 { 5 } else { 80 }),
                (large.relays[1], 30),
            ];
            v.sort();
            v
        },
        ..Says::default()
    };
    let t = table(&large, rtts);
    for me in 0..8 {
        assert_eq!(
            route(&large, &t, me, &large.relays),
            Route::Relay(large.relays[1]),
            "member {me}"
        );
    }
    // A relay we are not linked to is no candidate for us.
    assert_eq!(
        route(&large, &t, 0, &large.relays[..1]),
        Route::Relay(large.relays[0])
    );
    assert_eq!(route(&large, &t, 0, &[]), Route::Mesh);
}

#[test]
fn the_incumbent_is_what_most_listeners_use_and_holds_within_the_hysteresis() {
    let o = org(8, 6);
    // relays[0] is slightly nearer (40 vs 45 ms) but most listeners use relays[1].
    let says = |i: usize| Says {
        rtt: {
            let mut v = vec![(o.relays[0], 40), (o.relays[1], 45)];
            v.sort();
            v
        },
        routes: if i < 5 {
            vec![(o.ops, o.relays[1])]
        } else {
            vec![(o.ops, o.relays[0])]
        },
        ..Says::default()
    };
    let t = table(&o, says);
    for me in 0..8 {
        assert_eq!(route(&o, &t, me, &o.relays), Route::Relay(o.relays[1]));
    }
}

#[test]
fn a_public_volunteer_serves_when_no_relay_is_rented_and_a_weak_uplink_needs_one_early() {
    let o = org(8, 6);
    let volunteer = o.members[3].public();
    let says = |i: usize| Says {
        relay: RelayCapability {
            public: i == 3,
            spare_uplink_kbps: if i == 3 { 1000 } else { 0 },
        },
        ..Says::default()
    };
    let t = table(&o, says);
    // Member 0 is linked to the volunteer only (no rented relay reachable); the volunteer
    // itself counts as its own candidate.
    assert_eq!(route(&o, &t, 0, &[volunteer]), Route::Relay(volunteer));
    assert_eq!(route(&o, &t, 3, &[]), Route::Relay(volunteer));
    // Four listeners are within the threshold, but a speaker with 100 kbit/s cannot send four
    // 40 kbit/s streams.
    let small = org(4, 6);
    let weak = table(&small, |i| Says {
        uplink_kbps: if i == 2 { 100 } else { 0 },
        ..Says::default()
    });
    assert_eq!(
        route(&small, &weak, 0, &small.relays),
        Route::Relay(small.relays[0].min(small.relays[1]))
    );
    let strong = table(&small, |_| Says {
        uplink_kbps: 1000,
        ..Says::default()
    });
    assert_eq!(route(&small, &strong, 0, &small.relays), Route::Mesh);
}

#[test]
fn an_earlier_channel_claims_a_volunteers_room_first_and_a_later_one_never_displaces_it() {
    // The volunteer has room for 10 listeners; /ops has 8. Eight members say they use it for
    // another channel too. Only a channel before /ops (in id order) counts against its room,
    // so channels competing for one volunteer settle instead of moving on and off together.
    let o = org(8, 6);
    let volunteer = o.members[3].public();
    assert!(o.ops.0 > 0 && o.ops.0 < u64::MAX);
    let with_other = |other: ChannelId| {
        table(&o, move |i| Says {
            relay: RelayCapability {
                public: i == 3,
                spare_uplink_kbps: if i == 3 { 400 } else { 0 },
            },
            routes: vec![(other, volunteer)],
            ..Says::default()
        })
    };
    let later = with_other(ChannelId(u64::MAX));
    assert_eq!(route(&o, &later, 0, &[volunteer]), Route::Relay(volunteer));
    let earlier = with_other(ChannelId(0));
    assert_eq!(route(&o, &earlier, 0, &[volunteer]), Route::Mesh);
}
