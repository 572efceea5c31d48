//! The real node runtime inside a turmoil simulation: QUIC over simulated sockets, charter,
//! presence, E2EE and voice in virtual time, with 40 ms one-way latency.

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

#[test]
fn two_nodes_talk_in_virtual_time() {
    let wall = std::time::Instant::now();
    let org = Arc::new(DemoOrg::new(2, 21).unwrap());
    let mut sim = turmoil::Builder::new()
        .min_message_latency(Duration::from_millis(40))
        .max_message_latency(Duration::from_millis(40))
        .simulation_duration(Duration::from_secs(30))
        .rng_seed(3)
        .build();
    let results: Arc<Mutex<Vec<(usize, NodeStats)>>> = Arc::default();

    let (a_org, a_results) = (org.clone(), results.clone());
    sim.client("officer", {
        let (org, results) = (a_org, a_results);
        async move {
            let socket = LinkSocket::bind_turmoil("0.0.0.0:4433".parse().unwrap()).await?;
            let mut node = Node::start(config(&org, 0, socket)).await?;
            node.wait_for(Duration::from_secs(10), |e| {
                matches!(e, NodeEvent::SessionUp { .. })
            })
            .await
            .ok_or("no session")?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            node.command(NodeCommand::PttDown(vec![org.flight]))?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            node.command(NodeCommand::PttUp)?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            results.lock().unwrap().push((0, node.shutdown().await?));
            Ok(())
        }
    });
    let (b_org, b_results) = (org.clone(), results.clone());
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
        let talker = node
            .wait_for(Duration::from_secs(10), |e| {
                matches!(e, NodeEvent::TalkerStarted { .. })
            })
            .await;
        assert!(matches!(talker, Some(NodeEvent::TalkerStarted { .. })), "{talker:?}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        b_results.lock().unwrap().push((1, node.shutdown().await?));
        Ok(())
    });
    sim.run().unwrap();

    let results = results.lock().unwrap();
    let officer = &results.iter().find(|(i, _)| *i == 0).expect("officer stats").1;
    let pilot = &results.iter().find(|(i, _)| *i == 1).expect("pilot stats").1;
    let flight = StreamChannel::Channel(org.flight);
    let sent: u64 = officer
        .sent
        .iter()
        .filter(|s| s.channel == flight)
        .map(|s| s.frames_sent)
        .sum();
    let played: u64 = pilot
        .received
        .iter()
        .filter(|s| s.channel == flight)
        .map(|s| s.frames_played)
        .sum();
    assert!(sent >= 95, "{sent}");
    assert!(played * 100 >= sent * 98, "{played}/{sent}");
    let rtt = officer.peers[0].rtt.expect("rtt");
    assert!(
        (Duration::from_millis(75)..=Duration::from_millis(95)).contains(&rtt),
        "virtual RTT {rtt:?}"
    );
    eprintln!(
        "two nodes, ~9 s virtual: wall {:?}, {played}/{sent} frames, rtt {rtt:?}",
        wall.elapsed()
    );
}
