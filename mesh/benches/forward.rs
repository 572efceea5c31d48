//! Forwarding-decision benchmark: what a relay's [`Forwarder`] costs per packet of a steady
//! talker on a channel with 100 and 1,000 subscribers, against working every packet's
//! audience and recipients out afresh (the member path's `forward_to` with no generation) in
//! the same process.
//!
//! Run: `cargo bench -p callsign-mesh --bench forward`. Prints numbers; asserts nothing.

use std::time::{Duration, Instant};

use callsign_keys::Identity;
use callsign_mesh::charter::{Charter, OpBody, Permissions, Priority, Role};
use callsign_mesh::forward::{Forwarder, ForwarderConfig, Subscription, SubscriptionBody};
use callsign_mesh::voice::{SenderKey, SenderShortId, VoiceFlags, VoiceHeader};
use rand::rngs::StdRng;
use rand::SeedableRng;

const PACKETS: u16 = 5_000;

fn main() {
    for members in [100, 1_000] {
        run(members);
    }
}

fn run(members: usize) {
    let mut rng = StdRng::seed_from_u64(7);
    let root = Identity::generate(&mut rng);
    let ids: Vec<Identity> = (0..members).map(|_| Identity::generate(&mut rng)).collect();
    let (mut charter, _) = Charter::create(&root, "Bench Org", 0).unwrap();
    let add = OpBody::AddChannel {
        parent: None,
        name: "ops".into(),
    };
    charter.edit(&root, add, 0).unwrap();
    let channel = charter.state().find("/ops").unwrap();
    let role = Role {
        perms: Permissions::LISTEN.union(Permissions::SPEAK),
        priority: Priority::NORMAL,
    };
    let put = OpBody::PutRole {
        name: "crew".into(),
        role,
    };
    charter.edit(&root, put, 0).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let member = OpBody::PutMember {
            peer: id.public(),
            name: format!("m{i}"),
            roles: vec!["crew".into()],
        };
        charter.edit(&root, member, 0).unwrap();
    }
    let state = charter.state().clone();
    let config = ForwarderConfig {
        max_subscribers: members,
        ..ForwarderConfig::default()
    };
    let mut forwarder = Forwarder::new(state.org, config);
    for id in &ids {
        let body = SubscriptionBody {
            org: state.org,
            subscriber: id.public(),
            seq: 1,
            channels: vec![channel],
        };
        forwarder
            .subscribe(&state, Subscription::sign(id, body).unwrap())
            .unwrap();
    }
    let talker = ids[0].public();
    let key = SenderKey::new(1, [7; 32]);
    let packets: Vec<Vec<u8>> = (0..PACKETS)
        .map(|sequence| {
            let header = VoiceHeader {
                flags: VoiceFlags::empty(),
                channels: vec![channel],
                sender: SenderShortId::of(&talker),
                sequence,
                timestamp: u32::from(sequence) * 960,
                key_id: 1,
            };
            key.seal(&header, &[0x55; 60]).unwrap()
        })
        .collect();
    let start = Instant::now();
    // A talker's packets 20 ms apart, so its rate never limits.
    let at = |i: usize| start + Duration::from_millis(20 * i as u64);
    let relay = root.public();

    // Half the packets each way, alternating in blocks so both see the same machine.
    let (mut kept, mut fresh) = (Duration::ZERO, Duration::ZERO);
    let mut copies = 0usize;
    for (block, chunk) in packets.chunks(500).enumerate() {
        let t = Instant::now();
        for (i, packet) in chunk.iter().enumerate() {
            let now = at(block * 500 + i);
            if block % 2 == 0 {
                let c = forwarder
                    .forward_copies(&state, 1, Some(&talker), packet, now, &relay)
                    .unwrap();
                copies += c.plain.len();
            } else {
                let to = forwarder
                    .forward_to(&state, None, &talker, packet, now)
                    .unwrap();
                copies += to.len();
            }
        }
        let spent = t.elapsed();
        if block % 2 == 0 {
            kept += spent;
        } else {
            fresh += spent;
        }
    }
    let per = |d: Duration| d.as_nanos() as f64 / (f64::from(PACKETS) / 2.0);
    println!(
        "{members} subscribers: {:.0} ns per packet with the relay's kept audience and \
         recipients, {:.0} ns worked out afresh; ratio {:.3} ({copies} copies decided)",
        per(kept),
        per(fresh),
        per(kept) / per(fresh)
    );
}
