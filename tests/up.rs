//! `callsign up`: two headless nodes built from `callsign keys` / `callsign org` files talk
//! over loopback QUIC; one speaks a real speech WAV by PTT script, the other logs the talker
//! and writes what it heard.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{callsign, callsign_process, flight_org, ok, speech_wav};

#[test]
fn a_scripted_talker_is_heard_and_logged_by_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    flight_org(d);

    // The pilot listens and records.
    let mut listener = callsign_process(d, "pilot", "pilot.key");
    listener
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--seconds",
            "7",
            "--output-dir",
        ])
        .arg(d.join("heard"))
        .stdout(Stdio::piped());
    let mut child = listener.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let address = first
        .strip_prefix("listening on ")
        .expect(&first)
        .to_string();

    // The root talks on /Flight from a config file and a PTT script.
    std::fs::write(
        d.join("script.txt"),
        "# at ms, action\n1500 ptt /Flight 2500\n",
    )
    .unwrap();
    std::fs::write(
        d.join("root.toml"),
        format!(
            "version = 1\nname = \"Ground\"\nlisten = \"127.0.0.1:0\"\nbootstrap = [\"{address}\"]\n\
             ptt_script = \"script.txt\"\nseconds = 5.5\ninput = '{}'\n",
            speech_wav().display()
        ),
    )
    .unwrap();
    let talker = ok(callsign(d, "root", "root.key")
        .args(["up", "--config"])
        .arg(d.join("root.toml")));
    assert!(talker.contains("transmit on /Flight"), "{talker}");

    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    let log = rest.join("\n");
    assert!(log.contains("talker-start Ground"), "{log}");
    assert!(log.contains("on /Flight"), "{log}");
    assert!(log.contains("talker-stop"), "{log}");

    let reader = hound::WavReader::open(d.join("heard/heard.wav")).unwrap();
    let loud = reader
        .into_samples::<i16>()
        .filter_map(Result::ok)
        .filter(|s| s.unsigned_abs() > 1000)
        .count();
    // Stereo samples above -30 dBFS: well over a second of speech arrived.
    assert!(loud > 48_000, "heard too little: {loud}");
}

#[test]
fn up_refuses_bad_scripts_configs_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(callsign(d, "root", "root.key").args(["keys", "new"]));
    ok(callsign(d, "root", "root.key").args(["org", "create", "Star Wing"]));
    ok(callsign(d, "root", "root.key").args(["org", "channel", "add", "/Flight"]));
    std::fs::write(d.join("bad.txt"), "100 ptt /Nowhere 500\n").unwrap();
    let out = callsign(d, "root", "root.key")
        .args(["up", "--seconds", "1", "--ptt-script"])
        .arg(d.join("bad.txt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("/Nowhere"), "{err}");

    std::fs::write(d.join("v9.toml"), "version = 9\n").unwrap();
    let out = callsign(d, "root", "root.key")
        .args(["up", "--config"])
        .arg(d.join("v9.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown version 9"));

    std::fs::write(
        d.join("announce.toml"),
        "version = 1\nannounce = [\"not an address\"]\n",
    )
    .unwrap();
    let out = callsign(d, "root", "root.key")
        .args(["up", "--config"])
        .arg(d.join("announce.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("announce address \"not an address\""), "{err}");

    // A key that is not in the charter cannot join.
    ok(callsign(d, "root", "stranger.key").args(["keys", "new"]));
    let out = callsign(d, "root", "stranger.key")
        .args(["up", "--seconds", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a member"));

    // A damaged ticket, one without a grant, and a ticket joined without a name: each says
    // what is wrong and starts nothing.
    let refused = |args: &[&str]| {
        let out = callsign(d, "stranger", "stranger.key")
            .args(["up", "--seconds", "1"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&["--ticket", "callsign1notaticket"]);
    assert!(err.contains("invite ticket"), "{err}");
    let bare = ok(callsign(d, "root", "root.key").args([
        "ticket",
        "new",
        "--addr",
        "/ip4/192.0.2.7/udp/4433/quic-v1",
    ]));
    let err = refused(&["--name", "goose", "--ticket", bare.trim()]);
    assert!(err.contains("no invite grant"), "{err}");
    ok(callsign(d, "root", "root.key").args(["org", "role", "add", "pilot", "--perm", "listen"]));
    let invite = ok(callsign(d, "root", "root.key").args(["org", "invite", "--role", "pilot"]));
    let err = refused(&["--ticket", invite.trim()]);
    assert!(err.contains("--name"), "{err}");
}
