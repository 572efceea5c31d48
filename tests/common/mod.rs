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
        .env("CALLSIGN_DATA_DIR", dir.join(data))
        .env("CALLSIGN_KEY", dir.join(key));
    cmd
}

/// [`callsign`] as a `std` command, for a process that keeps running.
pub fn callsign_process(dir: &Path, data: &str, key: &str) -> std::process::Command {
    let mut cmd = std::process::Command::cargo_bin("callsign").unwrap();
    cmd.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
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
