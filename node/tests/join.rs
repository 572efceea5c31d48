//! Joining with an invite on real nodes over loopback QUIC: a newcomer with only a ticket (the
//! org's key, an admin's address and grant) is admitted by the admin, receives the charter,
//! and hears the channel; a used or expired invite is refused with its reason.

mod common;

use callsign_keys::{InviteGrant, NodeKeys};
use callsign_mesh::admission::JoinRequest;
use callsign_mesh::charter::Charter;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::{AudioInput, StreamChannel};
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::squad::{config, WAIT};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A node that holds nothing but the ticket's parts.
async fn newcomer(org: &DemoOrg, admin: &Node, grant: InviteGrant, seed: u64) -> (Node, NodeKeys) {
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    let mut config = NodeConfig::new(keys.clone(), Charter::new(org.charter.org()), "Goose");
    config.join = Some(JoinRequest::sign(&keys.identity, grant, "Goose"));
    config.bootstrap = vec![admin.address().clone()];
    config.seed = seed;
    (Node::start(config).await.unwrap(), keys)
}

#[tokio::test]
async fn a_newcomer_with_an_invite_is_admitted_and_hears_the_channel() {
    let org = DemoOrg::new(1, 21).unwrap();
    let epoch = Instant::now();
    let mut admin_config = config(&org, 0, epoch, 300);
    admin_config.input = AudioInput::Synthetic { seed: 3 };
    let mut admin = Node::start(admin_config).await.unwrap();
    let grant = InviteGrant::issue(
        &org.root,
        org.charter.org(),
        "pilot",
        unix_now() + 3600,
        [7; 16],
    )
    .unwrap();
    let (mut goose, keys) = newcomer(&org, &admin, grant.clone(), 301).await;
    let me = keys.identity.public();
    let admitted = admin
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Admitted { .. }))
        .await;
    assert!(
        matches!(&admitted, Some(NodeEvent::Admitted { peer, name, role }) if *peer == me && name == "Goose" && role == "pilot"),
        "{admitted:?}"
    );
    let joined = goose
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Admitted { .. }))
        .await;
    assert!(
        matches!(&joined, Some(NodeEvent::Admitted { peer, .. }) if *peer == me),
        "{joined:?}"
    );
    goose
        .wait_for(WAIT, |e| matches!(e, NodeEvent::SessionUp { .. }))
        .await
        .expect("an E2EE session with the admin");
    // Same charter on both.
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, g) = (admin.stats().await.unwrap(), goose.stats().await.unwrap());
        if a.charter_hash == g.charter_hash {
            break;
        }
        assert!(Instant::now() < deadline, "charters never converged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The admin talks on /flight; the newcomer, now a pilot, hears it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin
        .command(NodeCommand::PttDown(vec![org.flight]))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    admin.command(NodeCommand::PttUp).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let heard: u64 = goose
        .stats()
        .await
        .unwrap()
        .received
        .iter()
        .filter(|r| {
            r.from == org.members[0].keys.identity.public()
                && r.channel == StreamChannel::Channel(org.flight)
        })
        .map(|r| r.frames_played)
        .sum();
    assert!(heard > 30, "the newcomer played {heard} frames");

    // The same invite again, for someone else: used.
    let (mut maverick, _) = newcomer(&org, &admin, grant, 302).await;
    let refused = maverick
        .wait_for(WAIT, |e| matches!(e, NodeEvent::JoinRefused { .. }))
        .await;
    assert!(
        matches!(&refused, Some(NodeEvent::JoinRefused { reason }) if reason.contains("used")),
        "{refused:?}"
    );
    // An expired invite.
    let stale = InviteGrant::issue(
        &org.root,
        org.charter.org(),
        "pilot",
        unix_now() - 1,
        [8; 16],
    )
    .unwrap();
    let (mut iceman, _) = newcomer(&org, &admin, stale, 303).await;
    let refused = iceman
        .wait_for(WAIT, |e| matches!(e, NodeEvent::JoinRefused { .. }))
        .await;
    assert!(
        matches!(&refused, Some(NodeEvent::JoinRefused { reason }) if reason.contains("expired")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_newcomer_started_before_any_admin_is_admitted_once_one_comes_up() {
    let org = DemoOrg::new(1, 22).unwrap();
    // The admin's address, before it runs: a port free now.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_keys = org.members[0].keys.clone();
    let address: libp2p::Multiaddr = format!(
        "/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{}",
        admin_keys.identity.public().peer_id()
    )
    .parse()
    .unwrap();
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    let grant = InviteGrant::issue(
        &org.root,
        org.charter.org(),
        "pilot",
        unix_now() + 60,
        [9; 16],
    )
    .unwrap();
    let mut config = NodeConfig::new(keys.clone(), Charter::new(org.charter.org()), "Goose");
    config.join = Some(JoinRequest::sign(&keys.identity, grant, "Goose"));
    config.bootstrap = vec![address];
    config.presence_interval = Duration::from_millis(500);
    // The first dial gives up before the admin comes up: only a redial can find it.
    config.link.handshake_timeout = Duration::from_millis(400);
    let mut goose = Node::start(config).await.unwrap();
    // Nobody answers for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut admin_config = NodeConfig::new(admin_keys, org.charter.clone(), "officer-0");
    admin_config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let _admin = Node::start(admin_config).await.unwrap();
    let joined = goose
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Admitted { .. }))
        .await;
    assert!(
        matches!(&joined, Some(NodeEvent::Admitted { peer, .. }) if *peer == keys.identity.public()),
        "{joined:?}"
    );
}
