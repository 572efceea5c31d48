//! One relay process serving several orgs, on real loopback sockets: each org on its own port
//! with its own mirror, `/health` and `/metrics` per org, and a reload that stops one org and
//! starts another while the third org's member keeps its link.

mod common;

use callsign_keys::{KeyFile, NodeKeys};
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::{Node, NodeConfig, NodeEvent};
use callsign_relay::service::Relay;
use callsign_relay::RelayConfig;
use common::{http_get, http_get_with, org_renting, orgs_config};
use libp2p::{Multiaddr, PeerId};
use rand::SeedableRng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

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
    let org = |name: &str, seed| {
        org_renting(
            &dir.path().join(format!("{name}.charter")),
            seed,
            Some(relay_key),
        )
    };
    let (alpha, bravo, charlie) = (org("alpha", 21), org("bravo", 22), org("charlie", 23));
    let config = |names: &[&str]| {
        orgs_config(names, |name| format!("{name}.charter")).replacen(
            "data_dir",
            "api_token_file = \"api.token\"\ndata_dir",
            1,
        )
    };
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
    // The API names one org when there are several.
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap();
    let bearer = format!("Authorization: Bearer {}\r\n", token.trim());
    let api = |path: &'static str| {
        let bearer = bearer.clone();
        tokio::task::spawn_blocking(move || http_get_with(&metrics.to_string(), path, &bearer))
    };
    let unnamed = api("/api/v1/occupancy").await.unwrap();
    assert!(unnamed.starts_with("HTTP/1.1 400"), "{unnamed}");
    let named = api("/api/v1/occupancy?org=bravo").await.unwrap();
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");
    assert_eq!(body(&named)["org"], bravo.charter.org().to_string());
    let unknown = api("/api/v1/occupancy?org=nope").await.unwrap();
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
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
