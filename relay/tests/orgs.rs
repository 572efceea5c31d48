//! One relay process serving several orgs, on real loopback sockets: each org on its own port
//! with its own mirror, `/health` and `/metrics` per org, and a reload that stops one org and
//! starts another while the third org's member keeps its link.

mod common;

use callsign_keys::{IdentityKey, KeyFile, NodeKeys};
use callsign_mesh::charter::bundle::encode_bundle;
use callsign_mesh::charter::{OpBody, RelayInfo};
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::{Node, NodeConfig, NodeEvent};
use callsign_relay::service::Relay;
use callsign_relay::RelayConfig;
use common::http_get;
use libp2p::{Multiaddr, PeerId};
use rand::SeedableRng;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A two-member demo org that rents `relay`, its bundle written to `dir/<name>.charter`.
fn org_renting(dir: &Path, name: &str, seed: u64, relay: IdentityKey) -> DemoOrg {
    let mut org = DemoOrg::new(2, seed).unwrap();
    org.charter
        .edit(
            &org.root,
            OpBody::PutRelay {
                peer: relay,
                info: RelayInfo {
                    addrs: Vec::new(),
                    capacity: 10,
                },
            },
            0,
        )
        .unwrap();
    std::fs::write(
        dir.join(format!("{name}.charter")),
        encode_bundle(
            &org.charter.org(),
            org.charter.dag().iter().map(|o| o.encoded.as_slice()),
        ),
    )
    .unwrap();
    org
}

fn config(orgs: &[&str]) -> String {
    let mut text = "version = 1\nkey = \"relay.key\"\nmetrics = \"127.0.0.1:0\"\n\
                    data_dir = \"state\"\ncircuits = false\n"
        .to_string();
    for name in orgs {
        text += &format!(
            "[[org]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ncharter = \"{name}.charter\"\n"
        );
    }
    text
}

async fn member(org: &DemoOrg, relay: &Multiaddr) -> Node {
    let keys = org.members[0].keys.clone();
    let mut config = NodeConfig::new(keys, org.charter.clone(), "member");
    config.bootstrap = vec![relay.clone()];
    Node::start(config).await.unwrap()
}

async fn get(metrics: SocketAddr, path: &'static str) -> String {
    tokio::task::spawn_blocking(move || http_get(&metrics.to_string(), path))
        .await
        .unwrap()
}

fn body(response: &str) -> serde_json::Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap()
}

/// Polls `/health` until `done` holds for its body.
async fn health_until(metrics: SocketAddr, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let health = body(&get(metrics, "/health").await);
        if done(&health) {
            return;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_share_a_relay_and_a_reload_leaves_the_others_links_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let relay_keys = NodeKeys::generate(&mut rng);
    let relay_key = relay_keys.identity.public();
    let relay_peer: PeerId = relay_key.peer_id();
    KeyFile::seal(&relay_keys, None, &mut rng)
        .unwrap()
        .save(&dir.path().join("relay.key"), false)
        .unwrap();
    let alpha = org_renting(dir.path(), "alpha", 21, relay_key);
    let bravo = org_renting(dir.path(), "bravo", 22, relay_key);
    let charlie = org_renting(dir.path(), "charlie", 23, relay_key);
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config(&["alpha", "bravo"])).unwrap();
    let relay = Relay::start(&RelayConfig::load(&path).unwrap())
        .await
        .unwrap();
    let addresses = relay.addresses();
    assert_eq!(addresses.len(), 2);
    // Two orgs, two ports, one identity.
    assert_ne!(addresses[0].1, addresses[1].1);
    let metrics = relay.metrics_addr();
    let (reload, reloads) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(
        async {
            let _ = stopped.await;
        },
        reloads,
    ));
    let mut at_alpha = member(&alpha, &addresses[0].1).await;
    let mut at_bravo = member(&bravo, &addresses[1].1).await;
    let linked = |e: &NodeEvent| matches!(e, NodeEvent::LinkUp { peer, .. } if *peer == relay_peer);
    assert!(at_alpha.wait_for(WAIT, linked).await.is_some());
    assert!(at_bravo.wait_for(WAIT, linked).await.is_some());
    health_until(metrics, |h| {
        h["status"] == "ok" && h["orgs"]["alpha"]["links"] == 1 && h["orgs"]["bravo"]["links"] == 1
    })
    .await;
    let health = body(&get(metrics, "/health").await);
    assert_eq!(
        health["orgs"]["alpha"]["org"],
        alpha.charter.org().to_string()
    );
    assert_eq!(
        health["orgs"]["bravo"]["org"],
        bravo.charter.org().to_string()
    );
    assert!(get(metrics, "/health/alpha")
        .await
        .starts_with("HTTP/1.1 200"));
    let text = get(metrics, "/metrics").await;
    for org in ["alpha", "bravo"] {
        let line = format!("callsign_relay_links{{org=\"{org}\"}} 1");
        assert!(text.contains(&line), "{line} in\n{text}");
    }

    // Bravo leaves the file, charlie joins; alpha's section is untouched.
    std::fs::write(&path, config(&["alpha", "charlie"])).unwrap();
    reload.send(RelayConfig::load(&path).unwrap()).unwrap();
    let unlinked = |e: &NodeEvent| matches!(e, NodeEvent::LinkDown { peer } if *peer == relay_peer);
    // Bravo's member is told goodbye at once.
    assert!(at_bravo
        .wait_for(Duration::from_secs(5), unlinked)
        .await
        .is_some());
    health_until(metrics, |h| {
        h["orgs"].get("charlie").is_some() && h["orgs"].get("bravo").is_none()
    })
    .await;
    let charlie_addr: Multiaddr = body(&get(metrics, "/health/charlie").await)["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut at_charlie = member(&charlie, &charlie_addr).await;
    assert!(at_charlie.wait_for(WAIT, linked).await.is_some());
    health_until(metrics, |h| {
        h["status"] == "ok" && h["orgs"]["charlie"]["links"] == 1
    })
    .await;
    // Alpha's member never lost its link.
    assert!(at_alpha
        .wait_for(Duration::from_millis(500), unlinked)
        .await
        .is_none());
    assert!(get(metrics, "/health/bravo")
        .await
        .starts_with("HTTP/1.1 404"));
    let text = get(metrics, "/metrics").await;
    assert!(!text.contains("org=\"bravo\""), "{text}");
    assert!(
        text.contains("callsign_relay_links{org=\"alpha\"} 1"),
        "{text}"
    );

    stop.send(()).unwrap();
    let last = relay_task.await.unwrap().unwrap();
    assert_eq!(last.keys().collect::<Vec<_>>(), ["alpha", "charlie"]);
    assert!(last.values().all(|s| s.audio_keys_held == 0));
    for node in [at_alpha, at_bravo, at_charlie] {
        node.shutdown().await.unwrap();
    }
}
