//! System-wide push-to-talk keys on a real (headless) X server: a key pressed while no window
//! of ours has focus reaches the node as `PttDown` for its channel, and its release as `PttUp`.
//! Needs `Xvfb` (scripts/setup installs it).

use callsign_mesh::charter::ChannelId;
use callsign_node::NodeCommand;
use callsign_ui::global_keys::GlobalKeys;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt as _, KEY_PRESS_EVENT, KEY_RELEASE_EVENT};
use x11rb::protocol::xtest::ConnectionExt as _;

/// An Xvfb on a free display number, stopped on drop.
struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn xvfb() -> (Xvfb, String) {
    let number = (90..140)
        .find(|n| {
            !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .expect("a free X display number");
    let display = format!(":{number}");
    let child = Command::new("Xvfb")
        .args([
            display.as_str(),
            "-screen",
            "0",
            "640x480x24",
            "-nolisten",
            "tcp",
        ])
        .spawn()
        .expect("Xvfb runs (scripts/setup installs the xvfb package)");
    let server = Xvfb(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while x11rb::connect(Some(&display)).is_err() {
        assert!(Instant::now() < deadline, "Xvfb {display} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, display)
}

/// The keycode the server maps to `keysym`.
fn keycode(conn: &impl Connection, keysym: u32) -> u8 {
    let setup = conn.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let map = conn
        .get_keyboard_mapping(min, max - min + 1)
        .unwrap()
        .reply()
        .unwrap();
    let per = usize::from(map.keysyms_per_keycode);
    let index = map
        .keysyms
        .chunks(per)
        .position(|syms| syms.contains(&keysym))
        .expect("the key is in the server's keymap");
    min + index as u8
}

fn fake_key(conn: &impl Connection, kind: u8, code: u8) {
    let root = conn.setup().roots[0].root;
    conn.xtest_fake_input(kind, code, 0, root, 0, 0, 0)
        .unwrap()
        .check()
        .unwrap();
    conn.flush().unwrap();
}

fn next_command(rx: &mut tokio::sync::mpsc::UnboundedReceiver<NodeCommand>) -> NodeCommand {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(command) = rx.try_recv() {
            return command;
        }
        assert!(Instant::now() < deadline, "no command from the global key");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_global_key_keys_the_node_while_another_window_has_focus() {
    let (_server, display) = xvfb();
    // This test binary runs this one test, so nothing else reads the environment meanwhile.
    std::env::set_var("DISPLAY", &display);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut keys = GlobalKeys::start(tx, None).expect("global keys on X11");
    let flight = ChannelId(7);
    let failed = keys.bind(&[(eframe::egui::Key::F2, vec![flight])]);
    assert!(failed.is_empty(), "{failed:?}");

    let (conn, _) = x11rb::connect(Some(&display)).unwrap();
    // XK_F2.
    let f2 = keycode(&conn, 0xffbf);
    fake_key(&conn, KEY_PRESS_EVENT, f2);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttDown(c) if c == vec![flight]));
    fake_key(&conn, KEY_RELEASE_EVENT, f2);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttUp));

    // A key bound to nothing does nothing; rebinding moves the channel to it.
    let f3 = keycode(&conn, 0xffc0);
    fake_key(&conn, KEY_PRESS_EVENT, f3);
    fake_key(&conn, KEY_RELEASE_EVENT, f3);
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err());
    assert!(keys
        .bind(&[(eframe::egui::Key::F3, vec![flight])])
        .is_empty());
    fake_key(&conn, KEY_PRESS_EVENT, f3);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttDown(c) if c == vec![flight]));
    fake_key(&conn, KEY_RELEASE_EVENT, f3);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttUp));
}
