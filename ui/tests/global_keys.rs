//! System-wide push-to-talk keys on a real (headless) X server: a key pressed while another
//! program's window (the game's) has the focus reaches the node as `PttDown` for its channel,
//! and its release as `PttUp`.
//! Needs `Xvfb` (scripts/setup installs it). X11 only: the Windows backend (`RegisterHotKey`)
//! needs a real desktop session (docs/windows.md).

#![cfg(target_os = "linux")]

mod common;
use callsign_mesh::charter::ChannelId;
use callsign_node::NodeCommand;
use callsign_ui::global_keys::GlobalKeys;
use common::next_command;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ConnectionExt as _, CreateWindowAux, EventMask, InputFocus, Window, WindowClass,
    KEY_PRESS_EVENT, KEY_RELEASE_EVENT,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::{COPY_DEPTH_FROM_PARENT, CURRENT_TIME};

/// An Xvfb on a display number it picks itself, stopped on drop (by SIGTERM, so it removes
/// its lock file and socket).
struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn xvfb() -> (Xvfb, String) {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "640x480x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("Xvfb runs (scripts/setup installs the xvfb package)");
    // Xvfb writes the display number it chose once it accepts connections.
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("Xvfb's display number");
    let server = Xvfb(child);
    let display = format!(":{}", line.trim());
    (server, display)
}

/// A mapped window standing in for the game, with the keyboard focus. Returns once a fake
/// press of `probe` reaches it: a fresh Xvfb accepts connections before its keyboard takes
/// input, and a key sent earlier is lost.
fn focused_game_window(conn: &RustConnection, probe: u8) -> Window {
    let screen = &conn.setup().roots[0];
    let window = conn.generate_id().unwrap();
    let events = EventMask::KEY_PRESS | EventMask::STRUCTURE_NOTIFY;
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        window,
        screen.root,
        0,
        0,
        320,
        240,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().event_mask(events),
    )
    .unwrap();
    conn.map_window(window).unwrap();
    conn.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match conn.poll_for_event().unwrap() {
            Some(Event::MapNotify(e)) if e.window == window => break,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(10)),
        }
        assert!(
            Instant::now() < deadline,
            "the game window was never mapped"
        );
    }
    conn.set_input_focus(InputFocus::PARENT, window, CURRENT_TIME)
        .unwrap()
        .check()
        .unwrap();
    loop {
        fake_key(conn, KEY_PRESS_EVENT, probe);
        fake_key(conn, KEY_RELEASE_EVENT, probe);
        let tried = Instant::now();
        while tried.elapsed() < Duration::from_millis(100) {
            match conn.poll_for_event().unwrap() {
                Some(Event::KeyPress(e)) if e.event == window && e.detail == probe => {
                    return window;
                }
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert!(Instant::now() < deadline, "the X server never took a key");
    }
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

#[test]
fn a_global_key_keys_the_node_while_another_window_has_focus() {
    let (_server, display) = xvfb();
    let (conn, _) = x11rb::connect(Some(&display)).unwrap();
    // XK_F2, XK_F3, XK_F4, XK_F5.
    let (f2, f3, f4, f5) = (
        keycode(&conn, 0xffbf),
        keycode(&conn, 0xffc0),
        keycode(&conn, 0xffc1),
        keycode(&conn, 0xffc2),
    );
    // The game has the focus and gets the keys nobody grabbed.
    let _game = focused_game_window(&conn, f4);
    // This test binary runs this one test, so nothing else reads the environment meanwhile.
    std::env::set_var("DISPLAY", &display);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut keys = GlobalKeys::start(tx, None).expect("global keys on X11");
    let flight = ChannelId(7);
    let failed = keys.bind(
        &[(eframe::egui::Key::F2, vec![flight])],
        Some(eframe::egui::Key::F5),
    );
    assert!(failed.is_empty(), "{failed:?}");

    fake_key(&conn, KEY_PRESS_EVENT, f2);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttDown(c) if c == vec![flight]));
    fake_key(&conn, KEY_RELEASE_EVENT, f2);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttUp));

    // The overlay key toggles the overlay, system-wide, and keys nothing.
    assert!(!keys.take_overlay_toggle());
    fake_key(&conn, KEY_PRESS_EVENT, f5);
    fake_key(&conn, KEY_RELEASE_EVENT, f5);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !keys.take_overlay_toggle() {
        assert!(Instant::now() < deadline, "the overlay key never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rx.try_recv().is_err());

    // A key bound to nothing does nothing; rebinding moves the channel to it.
    fake_key(&conn, KEY_PRESS_EVENT, f3);
    fake_key(&conn, KEY_RELEASE_EVENT, f3);
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err());
    assert!(keys
        .bind(&[(eframe::egui::Key::F3, vec![flight])], None)
        .is_empty());
    fake_key(&conn, KEY_PRESS_EVENT, f3);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttDown(c) if c == vec![flight]));
    fake_key(&conn, KEY_RELEASE_EVENT, f3);
    assert!(matches!(next_command(&mut rx), NodeCommand::PttUp));
}
