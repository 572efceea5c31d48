//! A squad of demo members on loopback QUIC, linked, with E2EE sessions up.

use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::AudioInput;
use callsign_node::{Node, NodeConfig, NodeEvent};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Squad {
    pub org: DemoOrg,
    pub nodes: Vec<Node>,
}

pub fn config(org: &DemoOrg, i: usize, epoch: Instant, seed: u64) -> NodeConfig {
    let member = &org.members[i];
    let mut config = NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
    config.listening = org.channels_for(i);
    config.input = AudioInput::Synthetic {
        seed: seed + i as u64,
    };
    config.media_epoch = Some(epoch);
    config.seed = seed + i as u64;
    config.tap_voice = true;
    config
}

/// Starts `n` demo members, each dialing every earlier one, and waits until every pair has an
/// E2EE session and has seen the other's presence.
pub async fn squad(n: usize) -> Squad {
    let org = DemoOrg::new(n, 11).unwrap();
    let epoch = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let mut config = config(&org, i, epoch, 100);
        config.bootstrap = nodes.iter().map(|n| n.address().clone()).collect();
        nodes.push(Node::start(config).await.unwrap());
    }
    for node in &mut nodes {
        let (mut sessions, mut presences) = (0, 0);
        while sessions < n - 1 || presences < n - 1 {
            match node
                .wait_for(WAIT, |e| {
                    matches!(e, NodeEvent::SessionUp { .. } | NodeEvent::Presence { .. })
                })
                .await
            {
                Some(NodeEvent::SessionUp { .. }) => sessions += 1,
                Some(_) => presences += 1,
                None => panic!("squad did not form: {sessions} sessions, {presences} presences"),
            }
        }
    }
    // Grants are in flight right after the sessions come up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Squad { org, nodes }
}

/// Members 0 (talker) and 1 (listener) of `org`, each adjusted by `tweak(index, config)`,
/// linked, with an E2EE session each way and grants delivered.
pub async fn linked_pair(
    org: &DemoOrg,
    seed: u64,
    mut tweak: impl FnMut(usize, &mut NodeConfig),
) -> (Node, Node) {
    let epoch = Instant::now();
    let mut talker_config = config(org, 0, epoch, seed);
    tweak(0, &mut talker_config);
    let mut talker = Node::start(talker_config).await.unwrap();
    let mut listener_config = config(org, 1, epoch, seed);
    listener_config.bootstrap = vec![talker.address().clone()];
    tweak(1, &mut listener_config);
    let mut listener = Node::start(listener_config).await.unwrap();
    for node in [&mut talker, &mut listener] {
        node.wait_for(WAIT, |e| matches!(e, NodeEvent::SessionUp { .. }))
            .await
            .expect("session");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    (talker, listener)
}
