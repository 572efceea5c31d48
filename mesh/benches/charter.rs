//! Charter benchmarks: fold time of a 10,000-op charter, and the bytes sync needs to bring a
//! fresh node up to date compared with the on-disk log size.
//!
//! Run: `cargo bench -p callsign-mesh --bench charter`. Prints numbers; asserts nothing.

use std::time::Instant;

use callsign_keys::Identity;
use callsign_mesh::charter::{
    ChannelId, Charter, CharterSync, Op, OpBody, OpHash, Permissions, Priority, Role, SyncConfig,
    SyncMessage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const OPS: usize = 10_000;

/// A realistic history: four admins writing concurrently (each on its own chain, merging all
/// heads every five ops), a mix of channel, ACL, role, member and policy ops. Ops are signed
/// directly and ingested once, so building does not fold 10,000 times.
fn build() -> Charter {
    let mut rng = StdRng::seed_from_u64(1);
    let ids: Vec<Identity> = (0..4).map(|_| Identity::generate(&mut rng)).collect();
    let (mut root, _) = Charter::create(&ids[0], "Bench Org", 0).unwrap();
    for admin in &ids[1..] {
        root.edit(
            &ids[0],
            OpBody::GrantAdmin {
                peer: admin.public(),
            },
            0,
        )
        .unwrap();
    }
    for r in 0..8 {
        root.edit(
            &ids[0],
            OpBody::PutRole {
                name: format!("role{r}"),
                role: Role {
                    perms: Permissions::LISTEN.union(Permissions::SPEAK),
                    priority: Priority::NORMAL,
                },
            },
            0,
        )
        .unwrap();
    }
    let org = root.org();
    let mut heads: Vec<Vec<OpHash>> = vec![root.heads(); 4];
    let mut channels: Vec<ChannelId> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut n = 0u64;
    while root.len() + ops.len() < OPS {
        for (i, author) in ids.iter().enumerate() {
            for _ in 0..5 {
                n += 1;
                let pick = |rng: &mut StdRng| channels[rng.gen_range(0..channels.len())];
                let roll = if channels.is_empty() {
                    0
                } else {
                    rng.gen_range(0..10)
                };
                let body = match roll {
                    0..=3 if channels.len() < 500 => OpBody::AddChannel {
                        parent: (!channels.is_empty() && rng.gen_bool(0.7)).then(|| pick(&mut rng)),
                        name: format!("ch{n}"),
                    },
                    0..=4 => OpBody::SetChannelAcl {
                        channel: pick(&mut rng),
                        role: format!("role{}", rng.gen_range(0..8)),
                        perms: Some(Permissions::LISTEN),
                    },
                    5 | 6 => OpBody::PutMember {
                        peer: Identity::generate(&mut rng).public(),
                        name: format!("member{n}"),
                        roles: vec![format!("role{}", rng.gen_range(0..8))],
                    },
                    7 => OpBody::RenameChannel {
                        channel: pick(&mut rng),
                        name: format!("renamed{n}"),
                    },
                    _ => OpBody::SetChannelPolicy {
                        channel: pick(&mut rng),
                        policy: Default::default(),
                    },
                };
                let is_add = matches!(body, OpBody::AddChannel { .. });
                let op = Op::sign(author, org, heads[i].clone(), n, body);
                let hash = op.hash();
                if is_add {
                    channels.push(ChannelId(hash.prefix_u64()));
                }
                heads[i] = vec![hash];
                ops.push(op);
            }
        }
        // Merge: each writer's next op has every writer's latest op as a parent.
        let all: Vec<OpHash> = heads.iter().flatten().copied().collect();
        for h in heads.iter_mut() {
            *h = all.clone();
        }
    }
    let report = root.ingest(ops.iter().map(Op::encode).collect());
    assert!(
        report.rejected.is_empty(),
        "{:?}",
        &report.rejected[..report.rejected.len().min(3)]
    );
    root
}

fn main() {
    let started = Instant::now();
    let mut charter = build();
    println!(
        "built a {}-op charter ({} channels, {} members) in {:.1?}",
        charter.len(),
        charter.state().channels.len(),
        charter.state().members.len(),
        started.elapsed()
    );

    // Fold: the median of several runs.
    let mut times = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        charter.refold();
        times.push(t.elapsed());
    }
    times.sort();
    let fold = times[times.len() / 2];
    println!(
        "fold: median {:.2} ms over {} runs (target < 100 ms)",
        fold.as_secs_f64() * 1e3,
        times.len()
    );

    // Ingest from scratch (decode + signature checks + fold), as when loading the log.
    let encoded: Vec<Vec<u8>> = charter.dag().iter().map(|o| o.encoded.clone()).collect();
    let t = Instant::now();
    let mut fresh = Charter::new(charter.org());
    fresh.ingest(encoded.clone());
    println!(
        "ingest all ops into an empty replica: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Sync to a fresh node, counting every byte on the wire both ways.
    let log_bytes: usize = 45 + encoded.iter().map(|o| o.len() + 8).sum::<usize>();
    let org = charter.org();
    let mut a: CharterSync<u8> = CharterSync::new(charter, SyncConfig::default(), 1);
    let mut b: CharterSync<u8> = CharterSync::new(Charter::new(org), SyncConfig::default(), 2);
    let now = Instant::now();
    a.handle_link_up(1, now);
    b.handle_link_up(0, now);
    let mut wire = 0usize;
    let mut messages = 0usize;
    let t = Instant::now();
    loop {
        let mut moved = false;
        while let Some((_, msg)) = a.poll_transmit() {
            let bytes = msg.encode();
            wire += bytes.len();
            messages += 1;
            b.handle_message(0, SyncMessage::decode(&bytes).unwrap(), now);
            moved = true;
        }
        while let Some((_, msg)) = b.poll_transmit() {
            let bytes = msg.encode();
            wire += bytes.len();
            messages += 1;
            a.handle_message(1, SyncMessage::decode(&bytes).unwrap(), now);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(
        a.charter().state().state_hash(),
        b.charter().state().state_hash()
    );
    println!(
        "sync to a fresh node: {wire} bytes in {messages} messages, {:.1?}; log is {log_bytes} bytes; ratio {:.2} (target < 2)",
        t.elapsed(),
        wire as f64 / log_bytes as f64
    );
}
