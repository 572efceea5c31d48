//! Helpers shared by the end-to-end tests of the `callsign` binary.

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
