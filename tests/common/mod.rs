//! Helpers shared by the end-to-end tests of the `callsign` binary.
// Each test binary uses some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::cargo::CommandCargoExt;
use assert_cmd::Command;

/// Runs `cmd`, asserts it succeeded (showing its stderr if not) and returns its stdout.
pub fn success_stdout(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `callsign` with its home, config, data dir (`dir/data`) and key (`dir/key`) in `dir`.
pub fn callsign(dir: &Path, data: &str, key: &str) -> Command {
    let mut cmd = Command::cargo_bin("callsign").unwrap();
    cmd.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("CALLSIGN_CONFIG_DIR", dir.join("config"))
        .env("CALLSIGN_DATA_DIR", dir.join(data))
        .env("CALLSIGN_KEY", dir.join(key));
    cmd
}

/// [`callsign`] as a `std` command, for a process that keeps running.
pub fn callsign_process(dir: &Path, data: &str, key: &str) -> std::process::Command {
    let mut cmd = std::process::Command::cargo_bin("callsign").unwrap();
    cmd.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("CALLSIGN_CONFIG_DIR", dir.join("config"))
        .env("CALLSIGN_DATA_DIR", dir.join(data))
        .env("CALLSIGN_KEY", dir.join(key));
    cmd
}

/// Runs `cmd`, asserts it succeeded and returns its stdout as text.
pub fn ok(cmd: &mut Command) -> String {
    String::from_utf8(success_stdout(cmd)).unwrap()
}

/// Real speech (espeak-ng), 16 kHz mono.
pub fn speech_wav() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node/tests/data/speech-16k.wav")
}

/// The two-member org the end-to-end tests run: a root (key `root.key`, data `root`) and a
/// pilot "Maverick" (`pilot.key`, data `pilot`) who may listen and speak on `/Flight`, the
/// charter exported by the root and imported by the pilot. Returns the pilot's peer id.
pub fn flight_org(d: &Path) -> String {
    let new_key = |key: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&ok(callsign(d, "root", key).args(["keys", "new", "--json"])))
                .unwrap();
        v["peer_id"].as_str().unwrap().to_string()
    };
    new_key("root.key");
    let pilot = new_key("pilot.key");
    let root = || callsign(d, "root", "root.key");
    ok(root().args(["org", "create", "Star Wing"]));
    ok(root().args(["org", "role", "add", "pilot", "--perm", "listen,speak"]));
    ok(root().args(["org", "channel", "add", "/Flight"]));
    ok(root().args([
        "org", "member", "add", &pilot, "--role", "pilot", "--name", "Maverick",
    ]));
    let bundle = d.join("org.bundle");
    ok(root().args(["org", "export"]).arg(&bundle));
    ok(callsign(d, "pilot", "pilot.key")
        .args(["org", "import"])
        .arg(&bundle));
    pilot
}
