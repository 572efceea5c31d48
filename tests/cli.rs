//! End-to-end tests of the `callsign` binary: key files and tickets, good and bad.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use callsign_keys::{Identity, InviteGrant, Ticket};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

const PASSPHRASE: &str = "correct horse battery staple";

fn callsign(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("callsign").unwrap();
    // Keep the default key path and data inside the test's directory, on every platform.
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("CALLSIGN_CONFIG_DIR", home.join("config"))
        .env("CALLSIGN_DATA_DIR", home.join("data"))
        .env_remove("CALLSIGN_KEY")
        .env("PW", PASSPHRASE)
        .env("WRONG_PW", "not the passphrase");
    cmd
}

/// Runs and expects failure with a single human-readable line naming `needle`.
fn assert_clean_failure(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].to_lowercase().contains(needle),
        "expected {needle:?} in {stderr}"
    );
}

fn json(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn new_key(home: &Path, name: &str, encrypted: bool) -> (PathBuf, Value) {
    let path = home.join(name);
    let mut cmd = callsign(home);
    cmd.args(["keys", "new", "--json", "--out"]).arg(&path);
    if encrypted {
        cmd.args(["--passphrase-env", "PW"]);
    }
    let report = json(&mut cmd);
    (path, report)
}

#[test]
fn new_then_show_reports_the_same_identity() {
    let home = tempfile::tempdir().unwrap();
    for encrypted in [false, true] {
        let (path, created) = new_key(home.path(), &format!("k{encrypted}"), encrypted);
        let mut show = callsign(home.path());
        show.args(["keys", "show", "--json"]).arg(&path);
        if encrypted {
            show.args(["--passphrase-env", "PW"]);
        }
        let shown = json(&mut show);
        assert_eq!(shown["peer_id"], created["peer_id"]);
        assert_eq!(shown["noise_public_key"], created["noise_public_key"]);
        assert_eq!(shown["key_file_version"], 1);
        assert_eq!(shown["encrypted"], encrypted);
        assert!(shown["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    }
}

#[test]
fn default_key_path_is_in_the_config_dir() {
    let home = tempfile::tempdir().unwrap();
    let created = json(callsign(home.path()).args(["keys", "new", "--json"]));
    let path = PathBuf::from(created["path"].as_str().unwrap());
    assert!(path.starts_with(home.path().join("config")), "{path:?}");
    let shown = json(callsign(home.path()).args(["keys", "show", "--json"]));
    assert_eq!(shown["peer_id"], created["peer_id"]);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let home = tempfile::tempdir().unwrap();
    let (path, _) = new_key(home.path(), "k", false);
    let before = std::fs::read(&path).unwrap();
    assert_clean_failure(
        callsign(home.path())
            .args(["keys", "new", "--out"])
            .arg(&path),
        "already exists",
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    callsign(home.path())
        .args(["keys", "new", "--force", "--out"])
        .arg(&path)
        .assert()
        .success();
    assert_ne!(std::fs::read(&path).unwrap(), before);
}

/// Damages a key file copy, checks `keys show` fails cleanly and leaves the file alone.
fn assert_bad_key_file(damage: impl Fn(&mut Vec<u8>), needle: &str) {
    let home = tempfile::tempdir().unwrap();
    let (path, _) = new_key(home.path(), "k", true);
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    assert_clean_failure(
        callsign(home.path())
            .args(["keys", "show", "--passphrase-env", "PW"])
            .arg(&path),
        needle,
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "file changed");
}

#[test]
fn wrong_passphrase() {
    let home = tempfile::tempdir().unwrap();
    let (path, _) = new_key(home.path(), "k", true);
    let before = std::fs::read(&path).unwrap();
    assert_clean_failure(
        callsign(home.path())
            .args(["keys", "show", "--passphrase-env", "WRONG_PW"])
            .arg(&path),
        "wrong passphrase",
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn missing_passphrase_without_terminal() {
    let home = tempfile::tempdir().unwrap();
    let (path, _) = new_key(home.path(), "k", true);
    assert_clean_failure(
        callsign(home.path()).args(["keys", "show"]).arg(&path),
        "passphrase-protected",
    );
    assert_clean_failure(
        callsign(home.path())
            .args(["keys", "show", "--passphrase-env", "UNSET_VAR_FOR_TEST"])
            .arg(&path),
        "unset_var_for_test",
    );
}

#[test]
fn truncated_key_file() {
    assert_bad_key_file(|b| b.truncate(b.len() - 10), "truncated");
}

#[test]
fn flipped_byte_in_key_file() {
    assert_bad_key_file(|b| b[40] ^= 0x04, "checksum");
}

#[test]
fn unknown_key_file_version() {
    assert_bad_key_file(|b| b[8] = 7, "version 7");
}

#[test]
fn not_a_key_file() {
    assert_bad_key_file(
        |b| *b = b"hello, world\n".to_vec(),
        "not a callsign key file",
    );
}

#[test]
fn missing_key_file() {
    let home = tempfile::tempdir().unwrap();
    assert_clean_failure(
        callsign(home.path())
            .args(["keys", "show"])
            .arg(home.path().join("absent.key")),
        "no such file",
    );
}

fn make_ticket(home: &Path, role: &str) -> String {
    let (path, _) = new_key(home, "org.key", false);
    let stdout = common::success_stdout(
        callsign(home)
            .args(["ticket", "new", "--key"])
            .arg(&path)
            .args([
                "--addr",
                "/ip4/203.0.113.5/udp/4433/quic-v1",
                "--role",
                role,
                "--expires-in",
                "2d",
            ]),
    );
    String::from_utf8(stdout).unwrap().trim().to_string()
}

#[test]
fn ticket_new_then_decode() {
    let home = tempfile::tempdir().unwrap();
    let ticket = make_ticket(home.path(), "pilot");
    assert!(ticket.starts_with("callsign1"));
    let decoded = json(callsign(home.path()).args(["ticket", "decode", &ticket, "--json"]));
    assert_eq!(decoded["bootstrap"][0], "/ip4/203.0.113.5/udp/4433/quic-v1");
    assert_eq!(decoded["grant"]["role"], "pilot");
    assert_eq!(decoded["grant"]["expired"], false);
    assert_eq!(decoded["grant"]["issuer_is_org_root"], true);
    assert_eq!(decoded["grant"]["issuer"], decoded["org"]);

    // Standard input works too, for tickets too long to paste into a shell.
    let via_stdin = json(
        callsign(home.path())
            .args(["ticket", "decode", "-", "--json"])
            .write_stdin(format!("{ticket}\n")),
    );
    assert_eq!(via_stdin["org"], decoded["org"]);
}

#[test]
fn bad_ticket_checksum() {
    let home = tempfile::tempdir().unwrap();
    let ticket = make_ticket(home.path(), "pilot");
    // Swap one character in the middle for another valid base32 character.
    let mut typo = ticket.clone().into_bytes();
    let at = typo.len() / 2;
    typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_clean_failure(
        callsign(home.path()).args(["ticket", "decode", &typo]),
        "checksum",
    );
}

#[test]
fn not_a_ticket() {
    let home = tempfile::tempdir().unwrap();
    assert_clean_failure(
        callsign(home.path()).args(["ticket", "decode", "hello"]),
        "must start with",
    );
}

/// The checksummed content of a ticket (version byte and body).
fn ticket_content(ticket: &str) -> Vec<u8> {
    let mut bytes = data_encoding::BASE32_NOPAD
        .decode(ticket["callsign1".len()..].to_uppercase().as_bytes())
        .unwrap();
    bytes.truncate(bytes.len() - 4);
    bytes
}

/// Re-encodes edited content with a fresh, valid checksum, as an attacker would.
fn reencode(mut content: Vec<u8>) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"callsign-ticket");
    hasher.update(&content);
    content.extend_from_slice(&hasher.finalize()[..4]);
    format!(
        "callsign1{}",
        data_encoding::BASE32_NOPAD.encode(&content).to_lowercase()
    )
}

#[test]
fn forged_grant_signature() {
    let home = tempfile::tempdir().unwrap();
    // A recruit edits their invite to say "admin" and fixes up the checksum.
    let mut content = ticket_content(&make_ticket(home.path(), "pilot"));
    let at = content.windows(5).position(|w| w == b"pilot").unwrap();
    content[at..at + 5].copy_from_slice(b"admin");
    assert_clean_failure(
        callsign(home.path()).args(["ticket", "decode", &reencode(content)]),
        "signature is invalid",
    );

    // A grant signed by someone other than the issuer it names fails the same way.
    let mut rng = StdRng::seed_from_u64(42);
    let root = Identity::generate(&mut rng);
    let impostor = Identity::generate(&mut rng);
    let honest = InviteGrant::issue(&root, root.public(), "officer", u64::MAX, [3; 16]).unwrap();
    let forged =
        InviteGrant::issue(&impostor, root.public(), "officer", u64::MAX, [3; 16]).unwrap();
    let text = Ticket {
        org: root.public(),
        bootstrap: vec![],
        grant: Some(honest.clone()),
    }
    .encode()
    .unwrap();
    let mut content = ticket_content(&text);
    let sig = honest.signature.to_bytes();
    let at = content.windows(64).position(|w| w == sig).unwrap();
    content[at..at + 64].copy_from_slice(&forged.signature.to_bytes());
    assert_clean_failure(
        callsign(home.path()).args(["ticket", "decode", &reencode(content)]),
        "signature is invalid",
    );
}

#[test]
fn unknown_ticket_version() {
    let home = tempfile::tempdir().unwrap();
    let mut content = ticket_content(&make_ticket(home.path(), "pilot"));
    content[0] = 2;
    assert_clean_failure(
        callsign(home.path()).args(["ticket", "decode", &reencode(content)]),
        "version 2",
    );
}

#[test]
fn help_everywhere() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["keys", "--help"],
        vec!["keys", "new", "--help"],
        vec!["keys", "show", "--help"],
        vec!["ticket", "--help"],
        vec!["ticket", "new", "--help"],
        vec!["ticket", "decode", "--help"],
    ] {
        callsign(home.path()).args(&args).assert().success();
    }
}
