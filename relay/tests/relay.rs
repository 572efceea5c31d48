//! The relay process's service on real loopback sockets: eight demo members whose channels
//! outgrow the mesh route them through it, their voice crosses it, a stranger's subscription is
//! refused, `/metrics` and `/health` answer, and a graceful shutdown sends members back to the
//! mesh at once.

mod common;

use callsign_keys::{KeyFile, NodeKeys};
use callsign_mesh::charter::bundle::encode_bundle;
use callsign_mesh::charter::{OpBody, RelayInfo};
use callsign_mesh::topology::Route;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::{AudioInput, StreamChannel};
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent};
use callsign_relay::service::Relay;
use callsign_relay::RelayConfig;
use common::{http_get, http_get_with};
use rand::SeedableRng;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Whether a thread of this process may take real-time priority (tried on a thread of its own).
#[cfg(target_os = "linux")]
fn realtime_permitted() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: pid 0 is this short-lived thread; `param` is a live sched_param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) == 0 }
    })
    .join()
    .unwrap_or(false)
}

/// Relays read on a real-time thread on Linux only (`link::read_thread`).
#[cfg(not(target_os = "linux"))]
fn realtime_permitted() -> bool {
    false
}

/// The value of an un-labelled metric line `name value`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_route_a_large_channel_through_the_relay_and_fall_back_when_it_stops() {
    let n = 8;
    let mut org = DemoOrg::new(n, 5).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(99);
    let relay_keys = NodeKeys::generate(&mut rng);
    let relay_key = relay_keys.identity.public();
    org.charter
        .edit(
            &org.root,
            OpBody::PutRelay {
                peer: relay_key,
                info: RelayInfo {
                    addrs: Vec::new(),
                    capacity: 100,
                },
            },
            0,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("org.charter"),
        encode_bundle(
            &org.charter.org(),
            org.charter.dag().iter().map(|o| o.encoded.as_slice()),
        ),
    )
    .unwrap();
    KeyFile::seal(&relay_keys, None, &mut rng)
        .unwrap()
        .save(&dir.path().join("relay.key"), false)
        .unwrap();
    let config_path = dir.path().join("relay.toml");
    std::fs::write(
        &config_path,
        "version = 1\nkey = \"relay.key\"\nlisten = \"127.0.0.1:0\"\n\
         metrics = \"127.0.0.1:0\"\ndata_dir = \"state\"\napi_token_file = \"api.token\"\n\
         [org]\ncharter = \"org.charter\"\n",
    )
    .unwrap();
    let relay = Relay::start(&RelayConfig::load(&config_path).unwrap())
        .await
        .unwrap();
    let relay_addr = relay.address().clone();
    let metrics = relay.metrics_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Reloads are tested with several orgs (tests/orgs.rs); here the sender just stays.
    let (_reload, reloads) = tokio::sync::mpsc::unbounded_channel();
    let relay_task = tokio::spawn(relay.run(
        async {
            let _ = stopped.await;
        },
        reloads,
    ));

    let epoch = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let member = &org.members[i];
        let mut config = NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
        config.listening = org.channels_for(i);
        config.input = AudioInput::Synthetic { seed: i as u64 };
        config.media_epoch = Some(epoch);
        config.seed = 40 + i as u64;
        config.bootstrap = std::iter::once(relay_addr.clone())
            .chain(nodes.iter().map(|n| n.address().clone()))
            .collect();
        nodes.push(Node::start(config).await.unwrap());
    }
    // Eight listeners on flight, threshold six: every member routes it through the relay.
    let on_relay = |e: &NodeEvent| {
        matches!(e, NodeEvent::RouteChanged { channel, route: Route::Relay(r) }
            if *channel == org.flight && *r == relay_key)
    };
    for node in &mut nodes {
        assert!(node.wait_for(WAIT, on_relay).await.is_some());
    }
    // Key grants follow the sessions; give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The officer simulcasts: /command (its listeners are few: the mesh) and /flight (the
    // relay). Each listener hears the frame once, whichever way it came.
    nodes[0]
        .command(NodeCommand::PttDown(vec![org.command, org.flight]))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[0].command(NodeCommand::PttUp).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let talker = nodes[0].identity();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let stats = node.stats().await.unwrap();
        let heard = stats
            .received
            .iter()
            .filter(|r| r.from == talker)
            .map(|r| r.frames_played)
            .max()
            .unwrap_or_else(|| panic!("member {i} heard nothing: {stats:?}"));
        assert!(heard >= 50, "member {i}: {stats:?}");
        assert!(
            stats
                .received
                .iter()
                .any(|r| r.channel == StreamChannel::Channel(org.flight)),
            "member {i} did not hear /flight"
        );
    }
    let sender = nodes[0].stats().await.unwrap();
    assert!(sender
        .routes
        .contains(&(org.flight, Route::Relay(relay_key))));

    // A stranger (no member) asks for the channel: refused.
    let stranger_keys = NodeKeys::generate(&mut rng);
    let mut config = NodeConfig::new(stranger_keys, org.charter.clone(), "stranger");
    config.bootstrap = vec![relay_addr.clone()];
    let mut stranger = Node::start(config).await.unwrap();
    assert!(stranger
        .wait_for(WAIT, |e| matches!(e, NodeEvent::LinkUp { .. }))
        .await
        .is_some());
    stranger
        .command(NodeCommand::Subscribe {
            relay: relay_key,
            channels: vec![org.flight],
        })
        .unwrap();

    // A stranger sprays the relay's port with datagrams that are neither QUIC nor the
    // plane's: dropped unread, and counted by reason.
    let port = relay_addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Udp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let spray = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in 0..5u8 {
        spray.send_to(&[n; 40], ("127.0.0.1", port)).unwrap();
    }

    // Metrics and health (the metrics follow the node once a second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = tokio::task::spawn_blocking(move || http_get(&metrics.to_string(), "/metrics"))
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let out = metric(&text, "callsign_relay_packets_out_total{org=\"default\"}");
    let packets_in = metric(&text, "callsign_relay_packets_in_total{org=\"default\"}");
    assert!(packets_in >= 60.0 && out >= 7.0 * 60.0, "{text}");
    // Members send on the voice plane once their links are up: the relay forwards those
    // where they arrive, not through its node's task.
    let fast = metric(
        &text,
        "callsign_relay_packets_in_fast_path_total{org=\"default\"}",
    );
    assert!(fast >= 0.9 * packets_in && fast <= packets_in, "{text}");
    assert_eq!(
        metric(
            &text,
            "callsign_relay_subscriptions_refused_total{org=\"default\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "callsign_relay_audio_keys_held{org=\"default\"}"),
        0.0
    );
    // Members repairing their voice path subscribe again: counted (none needed here).
    metric(&text, "callsign_relay_resubscribed_total{org=\"default\"}");
    assert_eq!(
        metric(
            &text,
            "callsign_relay_drops_total{org=\"default\",reason=\"not_quic\"}"
        ),
        5.0,
        "{text}"
    );
    // What the kernel dropped before the relay read it is exported too (`metric` panics
    // without the series; its count depends on the machine's load).
    metric(
        &text,
        "callsign_relay_drops_total{org=\"default\",reason=\"socket_overflow\"}",
    );
    // The relay runs as this test does: real-time where this process may take it.
    assert_eq!(
        metric(
            &text,
            "callsign_relay_voice_thread_realtime{org=\"default\"}"
        ),
        if realtime_permitted() { 1.0 } else { 0.0 }
    );
    // The exposition format spells the last bucket `+Inf`, and it counts every observation.
    let inf = metric(
        &text,
        "callsign_relay_forward_latency_seconds_bucket{le=\"+Inf\",org=\"default\"}",
    );
    assert_eq!(
        inf,
        metric(
            &text,
            "callsign_relay_forward_latency_seconds_count{org=\"default\"}"
        ),
        "{text}"
    );
    assert!(inf > 0.0, "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let health = tokio::task::spawn_blocking(move || http_get(&metrics.to_string(), "/health"))
        .await
        .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(health.contains(&format!("\"subscribers\":{n}")), "{health}");
    // The read-only API: occupancy per channel, for a bearer of the token only.
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap();
    let (refused, occupancy) = tokio::task::spawn_blocking(move || {
        let addr = metrics.to_string();
        let bearer = format!("Authorization: Bearer {}\r\n", token.trim());
        (
            http_get_with(
                &addr,
                "/api/v1/occupancy",
                "Authorization: Bearer wrong\r\n",
            ),
            http_get_with(&addr, "/api/v1/occupancy", &bearer),
        )
    })
    .await
    .unwrap();
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(occupancy.starts_with("HTTP/1.1 200"), "{occupancy}");
    let body: serde_json::Value =
        serde_json::from_str(occupancy.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let flight = body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/flight")
        .unwrap_or_else(|| panic!("{body}"))
        .clone();
    assert_eq!(flight["subscribers"], n, "{body}");
    assert!(flight["packets"].as_u64().unwrap() >= 60, "{body}");
    let missing = tokio::task::spawn_blocking(move || http_get(&metrics.to_string(), "/nope"))
        .await
        .unwrap();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    // A graceful stop closes the links at once: members go back to the mesh.
    stop.send(()).unwrap();
    let final_stats = relay_task.await.unwrap().unwrap();
    assert_eq!(final_stats["default"].audio_keys_held, 0);
    let stopped_at = Instant::now();
    let on_mesh = |e: &NodeEvent| matches!(e, NodeEvent::RouteChanged { channel, route: Route::Mesh } if *channel == org.flight);
    for node in &mut nodes {
        assert!(node
            .wait_for(Duration::from_secs(5), on_mesh)
            .await
            .is_some());
    }
    eprintln!(
        "members back on the mesh {} ms after the relay stopped",
        stopped_at.elapsed().as_millis()
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
    stranger.shutdown().await.unwrap();
}
