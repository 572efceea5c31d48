//! The app beside two more members of the demo org, one of them talking on /flight: what
//! `docs/screenshot.png` shows. Run it under Xvfb and capture the screen:
//!
//! ```sh
//! Xvfb :99 -screen 0 1280x640x24 & DISPLAY=:99 cargo run -p callsign-ui --example demo &
//! sleep 15; export DISPLAY=:99
//! # Open the audio settings and the org admin window, drag it right, show its roles.
//! xdotool mousemove 42 189 click 1; xdotool mousemove 324 12 click 1; sleep 1
//! xdotool mousemove 705 187 mousedown 1 mousemove 835 190 mouseup 1; sleep 1
//! xdotool mousemove 646 219 click 1; sleep 1
//! xwd -root -display :99 | convert xwd:- docs/screenshot.png
//! ```
//!
//! With `CALLSIGN_DEMO_OVERLAY=1` the in-game overlay shows too, over the window's right side
//! (`docs/overlay.png`). Xvfb has no window manager to keep it on top, so raise it first:
//! `xdotool search --name "Callsign overlay" windowraise`, then capture as above.

use callsign_keys::KeyFile;
use callsign_mesh::charter::log::OpLog;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::AudioInput;
use callsign_node::{Node, NodeCommand, NodeConfig};
use callsign_ui::Profile;
use std::time::Duration;

fn main() -> eframe::Result {
    let org = DemoOrg::new(3, 7).expect("demo org");
    let dir = std::env::temp_dir().join(format!("callsign-gui-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The other two members run on a runtime of their own; the pilot keeps talking on /flight.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let addrs: Vec<String> = runtime.block_on(async {
        let mut nodes: Vec<Node> = Vec::new();
        for i in 1..3 {
            let member = &org.members[i];
            let mut config =
                NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
            config.listening = org.channels_for(i);
            config.input = AudioInput::Synthetic { seed: i as u64 };
            config.bootstrap = nodes.iter().map(|n| n.address().clone()).collect();
            nodes.push(Node::start(config).await.expect("node"));
        }
        let addrs = nodes.iter().map(|n| n.address().to_string()).collect();
        let flight = org.flight;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let _ = nodes[0].command(NodeCommand::PttDown(vec![flight]));
            // Hold the nodes (and the transmission) for the life of the process.
            std::future::pending::<()>().await;
            drop(nodes);
        });
        addrs
    });
    // The app's profile: the demo officer (the org's founder).
    let me = &org.members[0];
    let mut profile = Profile::new(&me.name, &org.charter.org(), addrs);
    profile.listen = "127.0.0.1:0".parse().expect("address");
    // Xvfb has no sound card: the pilots' audio is synthetic, ours silent.
    profile.audio.input = callsign_ui::profile::NO_DEVICE.into();
    profile.audio.output = callsign_ui::profile::NO_DEVICE.into();
    if std::env::var_os("CALLSIGN_DEMO_OVERLAY").is_some() {
        profile.overlay.shown = true;
        profile.overlay.at = [940.0, 70.0];
    }
    KeyFile::seal(&me.keys, None, &mut rand::rngs::OsRng)
        .expect("key")
        .save(&dir.join(&profile.key), false)
        .expect("key file");
    let log_path = Profile::charter_log(&dir, &org.charter.org());
    std::fs::create_dir_all(log_path.parent().expect("dir")).expect("dir");
    let mut log = OpLog::create(&log_path, org.charter.org()).expect("log");
    let ops: Vec<Vec<u8>> = org
        .charter
        .dag()
        .iter()
        .map(|o| o.encoded.clone())
        .collect();
    log.append(ops.iter().map(Vec::as_slice)).expect("ops");
    profile.save(&dir).expect("profile");
    let result = callsign_ui::run_window(dir, [1280.0, 640.0]);
    drop(runtime);
    result
}
