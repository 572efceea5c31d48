//! The real node runtime inside a turmoil simulation: QUIC over simulated sockets, charter,
//! presence, E2EE and voice in virtual time, with 40 ms one-way latency; and the same run twice
//! gives the same event trace.

use callsign_node::link::LinkSocket;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::{AudioInput, NodeStats, StreamChannel};
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(org: &DemoOrg, i: usize, socket: Arc<LinkSocket>) -> NodeConfig {
    let member = &org.members[i];
    let mut config = NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
    config.listening = org.channels_for(i);
    config.input = AudioInput::Synthetic { seed: i as u64 };
    config.socket = Some(socket);
    config.tcp_fallback = false;
    config.unix_time_ms = Some(1_700_000_000_000);
    config.seed = i as u64;
    config
}

/// What one simulated run produced.
struct Run {
    officer: NodeStats,
    pilot: NodeStats,
    /// The pilot's events with their virtual time (variant and subject only: key material and
    /// connection ids are random by design).
    trace: Vec<String>,
}

fn simulate(org: Arc<DemoOrg>) -> Run {
    let mut sim = turmoil::Builder::new()
        .min_message_latency(Duration::from_millis(40))
        .max_message_latency(Duration::from_millis(40))
        .simulation_duration(Duration::from_secs(30))
        .rng_seed(3)
        .build();
    let stats: Arc<Mutex<Vec<(usize, NodeStats)>>> = Arc::default();
    let trace: Arc<Mutex<Vec<String>>> = Arc::default();

    let (a_org, a_stats) = (org.clone(), stats.clone());
    sim.client("officer", async move {
        let socket = LinkSocket::bind_turmoil("0.0.0.0:4433".parse().unwrap()).await?;
        let mut node = Node::start(config(&a_org, 0, socket)).await?;
        node.wait_for(Duration::from_secs(10), |e| {
            matches!(e, NodeEvent::SessionUp { .. })
        })
        .await
        .ok_or("no session")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        node.command(NodeCommand::PttDown(vec![a_org.flight]))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.command(NodeCommand::PttUp)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let final_stats = node.shutdown().await?;
        a_stats.lock().unwrap().push((0, final_stats));
        Ok(())
    });
    let (b_org, b_stats, b_trace) = (org.clone(), stats.clone(), trace.clone());
    sim.client("pilot", async move {
        let socket = LinkSocket::bind_turmoil("0.0.0.0:4433".parse().unwrap()).await?;
        let mut c = config(&b_org, 1, socket);
        let officer = b_org.members[0].keys.identity.peer_id();
        c.bootstrap = vec![format!(
            "/ip4/{}/udp/4433/quic-v1/p2p/{officer}",
            turmoil::lookup("officer")
        )
        .parse()?];
        let mut node = Node::start(c).await?;
        let end = tokio::time::Instant::now() + Duration::from_secs(7);
        while let Ok(Some(event)) = tokio::time::timeout_at(end, node.next_event()).await {
            let kind = format!("{event:?}");
            let kind: String = kind.chars().take_while(|c| c.is_alphanumeric()).collect();
            b_trace
                .lock()
                .unwrap()
                .push(format!("{:?} {kind}", turmoil::sim_elapsed()));
        }
        let final_stats = node.shutdown().await?;
        b_stats.lock().unwrap().push((1, final_stats));
        Ok(())
    });
    sim.run().unwrap();
    let mut stats = std::mem::take(&mut *stats.lock().unwrap());
    stats.sort_by_key(|(i, _)| *i);
    let mut stats = stats.into_iter().map(|(_, s)| s);
    let trace = std::mem::take(&mut *trace.lock().unwrap());
    Run {
        officer: stats.next().expect("officer stats"),
        pilot: stats.next().expect("pilot stats"),
        trace,
    }
}

#[test]
fn two_nodes_talk_in_virtual_time_and_replay_exactly() {
    let org = Arc::new(DemoOrg::new(2, 21).unwrap());
    let wall = std::time::Instant::now();
    let first = simulate(org.clone());
    let wall = wall.elapsed();
    let flight = StreamChannel::Channel(org.flight);
    let sent: u64 = first
        .officer
        .sent
        .iter()
        .filter(|s| s.channel == flight)
        .map(|s| s.frames_sent)
        .sum();
    let played: u64 = first
        .pilot
        .received
        .iter()
        .filter(|s| s.channel == flight)
        .map(|s| s.frames_played)
        .sum();
    assert!(sent >= 95, "{sent}");
    assert!(played * 100 >= sent * 98, "{played}/{sent}");
    let rtt = first.officer.peers[0].rtt.expect("rtt");
    assert!(
        (Duration::from_millis(75)..=Duration::from_millis(95)).contains(&rtt),
        "virtual RTT {rtt:?}"
    );
    for kind in [
        "LinkUp",
        "Presence",
        "SessionUp",
        "TalkerStarted",
        "TalkerStopped",
    ] {
        assert!(
            first.trace.iter().any(|t| t.ends_with(kind)),
            "{kind} missing from {:?}",
            first.trace
        );
    }

    let second = simulate(org);
    assert_eq!(
        first.trace, second.trace,
        "same scenario, same virtual-time trace"
    );
    assert_eq!(first.pilot.received, second.pilot.received);
    assert_eq!(first.officer.sent, second.officer.sent);
    eprintln!(
        "two nodes, 8 s virtual: wall {wall:?}, {played}/{sent} frames, rtt {rtt:?}, trace {:?}",
        first.trace
    );
}
