//! What the UI tests share: a headless harness, a bridge whose node end the test holds, and
//! a saved profile to open.
#![allow(dead_code)]

use callsign_keys::{KeyFile, NodeKeys};
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, FloorMode, OpBody, Permissions, Priority, Role,
};
use callsign_node::{NodeCommand, NodeEvent, NodeStats};
use callsign_ui::app::NodeStarter;
use callsign_ui::{NodeBridge, Profile, RadioApp};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub fn harness(app: RadioApp) -> Harness<'static, RadioApp> {
    Harness::builder()
        .with_size(eframe::egui::vec2(1100.0, 700.0))
        .build_state(|ctx, app: &mut RadioApp| app.ui(ctx), app)
}

/// Steps the UI (the node works on its own threads) until `done` or 10 s.
pub fn step_until(
    h: &mut Harness<'static, RadioApp>,
    mut done: impl FnMut(&Harness<RadioApp>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(h) {
        assert!(Instant::now() < deadline, "timed out");
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The app on a fresh profile in `dir` with the real node bridge, its first-run form filled
/// (`callsign`, and `field` with `value`: the org name or an invite ticket) and Start clicked.
pub fn first_run(
    dir: &Path,
    callsign: &str,
    field: &str,
    value: &str,
) -> Harness<'static, RadioApp> {
    let app = RadioApp::new(dir.to_path_buf(), Box::new(NodeBridge::start));
    let mut h = harness(app);
    h.step();
    type_into(&mut h, "Callsign", callsign);
    type_into(&mut h, field, value);
    h.get_by_label("Start").click();
    h
}

pub fn type_into(h: &mut Harness<'static, RadioApp>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

/// The node's end of a bridge, for tests that check what the app sends it.
pub type NodeEnds = Rc<
    RefCell<
        Option<(
            mpsc::UnboundedReceiver<NodeCommand>,
            mpsc::UnboundedSender<NodeEvent>,
        )>,
    >,
>;

pub fn channel_starter(ends: NodeEnds) -> NodeStarter {
    Box::new(move |_config, _log, _api| {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        *ends.borrow_mut() = Some((commands_rx, events_tx));
        Ok(NodeBridge::from_channels(commands, events))
    })
}

/// What the app sent since the last call, as `Debug` text (commands carry reply channels,
/// so they have no `PartialEq`), without its snapshot requests.
pub fn commands(ends: &NodeEnds) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((rx, _)) = ends.borrow_mut().as_mut() {
        while let Ok(c) = rx.try_recv() {
            // Snapshot requests (counters, charter) go out on their own schedule.
            if !matches!(
                c,
                NodeCommand::Stats(_) | NodeCommand::Charter(_) | NodeCommand::InviteAddresses(_)
            ) {
                out.push(format!("{c:?}"));
            }
        }
    }
    out
}

/// Answers the app's pending questions of where the org can be reached with `addrs`.
pub fn answer_invite_addresses(ends: &NodeEnds, addrs: &[&str]) -> usize {
    let mut answered = 0;
    if let Some((rx, _)) = ends.borrow_mut().as_mut() {
        while let Ok(c) = rx.try_recv() {
            if let NodeCommand::InviteAddresses(reply) = c {
                let _ = reply.send(addrs.iter().map(|a| a.parse().unwrap()).collect());
                answered += 1;
            }
        }
    }
    answered
}

pub fn expect(commands: &[NodeCommand]) -> Vec<String> {
    commands.iter().map(|c| format!("{c:?}")).collect()
}

/// A saved profile whose org has `/ops` and a half-duplex `/squad`, the identity unencrypted.
pub fn saved_profile(dir: &Path) -> ChannelId {
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    let (mut charter, first) = Charter::create(&keys.identity, "Wing", 0).unwrap();
    let second = charter
        .edit(
            &keys.identity,
            OpBody::AddChannel {
                parent: None,
                name: "ops".into(),
            },
            0,
        )
        .unwrap();
    let third = charter
        .edit(
            &keys.identity,
            OpBody::PutRole {
                name: "pilot".into(),
                role: Role {
                    perms: Permissions::LISTEN.union(Permissions::SPEAK),
                    priority: Priority::NORMAL,
                },
            },
            0,
        )
        .unwrap();
    // A half-duplex channel after /ops (so /ops keeps F1).
    let fourth = charter
        .edit(
            &keys.identity,
            OpBody::AddChannel {
                parent: None,
                name: "squad".into(),
            },
            0,
        )
        .unwrap();
    let squad = charter.state().find("/squad").unwrap();
    let fifth = charter
        .edit(
            &keys.identity,
            OpBody::SetChannelPolicy {
                channel: squad,
                policy: ChannelPolicy {
                    floor: FloorMode::HalfDuplex,
                    ..ChannelPolicy::default()
                },
            },
            0,
        )
        .unwrap();
    let org = charter.org();
    let profile = Profile::new("Iceman", &org, Vec::new());
    KeyFile::seal(&keys, None, &mut rand::rngs::OsRng)
        .unwrap()
        .save(&dir.join(&profile.key), false)
        .unwrap();
    let log_path = Profile::charter_log(dir, &org);
    std::fs::create_dir_all(log_path.parent().unwrap()).unwrap();
    let mut log = OpLog::create(&log_path, org).unwrap();
    log.append(
        [first, second, third, fourth, fifth]
            .iter()
            .map(|op| op.encode())
            .collect::<Vec<_>>()
            .iter()
            .map(Vec::as_slice),
    )
    .unwrap();
    profile.save(dir).unwrap();
    charter.state().find("/ops").unwrap()
}

/// Answers the app's counter requests with `stats` (the meter reads them).
pub fn answer_stats(ends: &NodeEnds, stats: &NodeStats) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((rx, _)) = ends.borrow_mut().as_mut() {
        while let Ok(c) = rx.try_recv() {
            match c {
                NodeCommand::Stats(reply) => {
                    let _ = reply.send(stats.clone());
                }
                NodeCommand::Charter(_) => {}
                other => out.push(format!("{other:?}")),
            }
        }
    }
    out
}

/// The `EditCharter` ops the app sent since the last call.
pub fn edits(ends: &NodeEnds) -> Vec<OpBody> {
    let mut out = Vec::new();
    if let Some((rx, _)) = ends.borrow_mut().as_mut() {
        while let Ok(c) = rx.try_recv() {
            if let NodeCommand::EditCharter(op) = c {
                out.push(op);
            }
        }
    }
    out
}

/// A saved profile (see [`saved_profile`]) opened on the radio stack, on a bridge whose node
/// end the test holds.
pub struct Opened {
    pub dir: tempfile::TempDir,
    /// The org's `/ops` channel.
    pub ops: ChannelId,
    pub ends: NodeEnds,
    pub h: Harness<'static, RadioApp>,
}

pub fn open_saved() -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let ops = saved_profile(dir.path());
    let ends: NodeEnds = Rc::default();
    let mut h = harness(RadioApp::new(
        dir.path().to_path_buf(),
        channel_starter(ends.clone()),
    ));
    h.step();
    Opened { dir, ops, ends, h }
}

/// The sender the test plays the node's events into.
pub fn node_events(ends: &NodeEnds) -> mpsc::UnboundedSender<NodeEvent> {
    ends.borrow().as_ref().map(|(_, e)| e.clone()).unwrap()
}

/// Steps the UI, answering its counter requests with `stats`, until `done` (or 5 s: `what`
/// never showed).
pub fn step_with_stats(
    h: &mut Harness<'static, RadioApp>,
    ends: &NodeEnds,
    stats: &NodeStats,
    what: &str,
    mut done: impl FnMut(&Harness<'static, RadioApp>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(h) {
        assert!(Instant::now() < deadline, "{what} never showed");
        answer_stats(ends, stats);
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The other member the tests hear from.
pub fn goose() -> callsign_keys::IdentityKey {
    callsign_keys::Identity::from_secret_bytes([9; 32]).public()
}

/// The node reports Goose talking on `channel`.
pub fn goose_talks(ends: &NodeEnds, channel: ChannelId) {
    node_events(ends)
        .send(NodeEvent::TalkerStarted {
            peer: goose(),
            name: "Goose".into(),
            channels: vec![channel],
            whisper: false,
        })
        .unwrap();
}

/// The next command a key sent to the node (within 5 s).
#[track_caller]
pub fn next_command(rx: &mut mpsc::UnboundedReceiver<NodeCommand>) -> NodeCommand {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(command) = rx.try_recv() {
            return command;
        }
        assert!(Instant::now() < deadline, "no command from the key");
        std::thread::sleep(Duration::from_millis(10));
    }
}
