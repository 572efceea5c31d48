//! Five replicas, random edits, random delivery with duplicates and partitions: same state.

use std::time::{Duration, Instant};

use callsign_keys::Identity;
use callsign_mesh::charter::{
    Charter, CharterSync, OpBody, Permissions, Priority, Role, SyncConfig, SyncMessage,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

const N: usize = 5;

#[derive(Clone, Debug)]
enum Step {
    /// Node `node` makes edit `kind` with small parameters.
    Edit { node: usize, kind: u8, a: u8, b: u8 },
    /// Deliver the in-flight message at this index (modulo the queue length).
    Deliver(usize),
    /// Deliver it but keep a copy (duplicate delivery).
    Duplicate(usize),
    /// Split the network into {0,1} and {2,3,4} (messages across are dropped), or heal.
    Partition(bool),
    /// Let time pass: periodic announcements.
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..N, 0u8..9, any::<u8>(), any::<u8>()).prop_map(|(node, kind, a, b)| Step::Edit { node, kind, a, b }),
        6 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Duplicate),
        1 => any::<bool>().prop_map(Step::Partition),
        1 => Just(Step::Tick),
    ]
}

fn body(
    state: &callsign_mesh::charter::CharterState,
    ids: &[Identity],
    kind: u8,
    a: u8,
    b: u8,
) -> OpBody {
    let channels: Vec<_> = state.channels.keys().copied().collect();
    let pick = |x: u8| (!channels.is_empty()).then(|| channels[x as usize % channels.len()]);
    let role_name = format!("r{}", a % 3);
    match kind {
        0 | 1 => OpBody::AddChannel {
            parent: pick(a).filter(|_| b % 2 == 0),
            name: format!("c{}", b % 6),
        },
        2 => match pick(a) {
            Some(channel) => OpBody::RenameChannel {
                channel,
                name: format!("c{}", b % 6),
            },
            None => OpBody::AddChannel {
                parent: None,
                name: "x".into(),
            },
        },
        3 => match pick(a) {
            Some(channel) => OpBody::MoveChannel {
                channel,
                parent: pick(b).filter(|_| b % 3 != 0),
            },
            None => OpBody::AddChannel {
                parent: None,
                name: "y".into(),
            },
        },
        4 => match pick(a) {
            Some(channel) => OpBody::RemoveChannel { channel },
            None => OpBody::AddChannel {
                parent: None,
                name: "z".into(),
            },
        },
        5 => OpBody::PutRole {
            name: role_name,
            role: Role {
                perms: Permissions::parse_list(if b % 2 == 0 {
                    "listen"
                } else {
                    "listen,speak,manage"
                })
                .unwrap(),
                priority: Priority::new(b % 5).unwrap(),
            },
        },
        6 => OpBody::PutMember {
            peer: ids[(a as usize % 2) + 3].public(),
            name: format!("m{b}"),
            roles: vec![role_name],
        },
        7 => match pick(a) {
            Some(channel) => OpBody::SetChannelAcl {
                channel,
                role: role_name,
                perms: (b % 3 != 0).then_some(Permissions::ALL),
            },
            None => OpBody::AddChannel {
                parent: None,
                name: "w".into(),
            },
        },
        _ => {
            let peer = ids[1 + a as usize % 2].public();
            if b % 2 == 0 {
                OpBody::GrantAdmin { peer }
            } else {
                OpBody::RevokeAdmin { peer }
            }
        }
    }
}

fn run(steps: Vec<Step>) {
    let ids: Vec<Identity> = (0..N as u64)
        .map(|i| Identity::generate(&mut StdRng::seed_from_u64(100 + i)))
        .collect();
    let (mut genesis, _) = Charter::create(&ids[0], "Org", 0).unwrap();
    // Nodes 1 and 2 start as admins, 3 and 4 as members with a managing role.
    genesis
        .edit(
            &ids[0],
            OpBody::GrantAdmin {
                peer: ids[1].public(),
            },
            0,
        )
        .unwrap();
    genesis
        .edit(
            &ids[0],
            OpBody::GrantAdmin {
                peer: ids[2].public(),
            },
            0,
        )
        .unwrap();
    genesis
        .edit(
            &ids[0],
            OpBody::PutRole {
                name: "r0".into(),
                role: Role {
                    perms: Permissions::ALL,
                    priority: Priority::NORMAL,
                },
            },
            0,
        )
        .unwrap();
    for m in 3..N {
        genesis
            .edit(
                &ids[0],
                OpBody::PutMember {
                    peer: ids[m].public(),
                    name: format!("m{m}"),
                    roles: vec!["r0".into()],
                },
                0,
            )
            .unwrap();
    }
    let history: Vec<Vec<u8>> = genesis.dag().iter().map(|o| o.encoded.clone()).collect();
    let now = Instant::now();
    let config = SyncConfig {
        announce_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let mut nodes: Vec<CharterSync<usize>> = (0..N)
        .map(|i| {
            let mut c = Charter::new(ids[0].public());
            c.ingest(history.clone());
            CharterSync::new(c, config, i as u64)
        })
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        for j in (0..N).filter(|&j| j != i) {
            node.handle_link_up(j, now);
        }
    }
    let mut wire: Vec<(usize, usize, SyncMessage)> = Vec::new();
    let mut partitioned = false;
    let mut clock = now;
    let side = |n: usize| n < 2;
    let drain = |nodes: &mut Vec<CharterSync<usize>>,
                 wire: &mut Vec<(usize, usize, SyncMessage)>| {
        for (i, node) in nodes.iter_mut().enumerate() {
            while let Some((to, msg)) = node.poll_transmit() {
                wire.push((i, to, msg));
            }
        }
    };
    for s in steps {
        drain(&mut nodes, &mut wire);
        match s {
            Step::Edit { node, kind, a, b } => {
                let body = body(nodes[node].charter().state(), &ids, kind, a, b);
                let _ = nodes[node].edit(&ids[node], body, 0);
            }
            Step::Deliver(i) | Step::Duplicate(i) if !wire.is_empty() => {
                let i = i % wire.len();
                let (from, to, msg) = if matches!(s, Step::Duplicate(_)) {
                    wire[i].clone()
                } else {
                    wire.remove(i)
                };
                if !(partitioned && side(from) != side(to)) {
                    nodes[to].handle_message(from, msg, clock);
                }
            }
            Step::Partition(p) => partitioned = p,
            Step::Tick => {
                clock += Duration::from_secs(2);
                for node in nodes.iter_mut() {
                    node.handle_timeout(clock);
                }
            }
            _ => {}
        }
    }
    // Heal and let anti-entropy finish: announcements then full delivery, until quiet.
    for _ in 0..6 {
        clock += Duration::from_secs(2);
        for node in nodes.iter_mut() {
            node.handle_timeout(clock);
        }
        loop {
            drain(&mut nodes, &mut wire);
            if wire.is_empty() {
                break;
            }
            for (from, to, msg) in std::mem::take(&mut wire) {
                nodes[to].handle_message(from, msg, clock);
            }
        }
    }
    let first = nodes[0].charter().state().state_hash();
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.charter().heads(),
            nodes[0].charter().heads(),
            "node {i} heads differ"
        );
        assert_eq!(
            node.charter().state().state_hash(),
            first,
            "node {i} state differs"
        );
        assert_eq!(node.charter().pending_len(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn five_replicas_converge(steps in prop::collection::vec(step(), 1..120)) {
        run(steps);
    }
}

/// Arrival order alone: the same op set ingested in shuffled orders, with duplicates, folds to
/// the same state.
#[test]
fn arrival_order_does_not_matter() {
    use rand::seq::SliceRandom;
    let ids: Vec<Identity> = (0..3u64)
        .map(|i| Identity::generate(&mut StdRng::seed_from_u64(i)))
        .collect();
    let (mut a, _) = Charter::create(&ids[0], "Org", 0).unwrap();
    a.edit(
        &ids[0],
        OpBody::GrantAdmin {
            peer: ids[1].public(),
        },
        0,
    )
    .unwrap();
    let mut b = Charter::new(a.org());
    b.ingest(a.dag().iter().map(|o| o.encoded.clone()).collect());
    for i in 0..30 {
        let _ = a.edit(
            &ids[0],
            OpBody::AddChannel {
                parent: None,
                name: format!("a{}", i % 7),
            },
            0,
        );
        let _ = b.edit(
            &ids[1],
            OpBody::AddChannel {
                parent: None,
                name: format!("a{}", i % 5),
            },
            0,
        );
    }
    let mut all: Vec<Vec<u8>> = a
        .dag()
        .iter()
        .chain(b.dag().iter())
        .map(|o| o.encoded.clone())
        .collect();
    let mut reference = None;
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..5 {
        all.shuffle(&mut rng);
        let mut with_dups = all.clone();
        with_dups.extend(all.iter().take(10).cloned());
        let mut r = Charter::new(a.org());
        // One op at a time, so ops regularly wait for parents.
        for op in with_dups {
            r.ingest(vec![op]);
        }
        assert_eq!(r.pending_len(), 0);
        let h = r.state().state_hash();
        assert_eq!(*reference.get_or_insert(h), h);
    }
}
