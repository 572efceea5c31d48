//! End-to-end tests of `callsign org`: a charter built, shown, exported, imported and repaired.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

fn callsign(dir: &Path, key: &str) -> Command {
    let mut cmd = Command::cargo_bin("callsign").unwrap();
    cmd.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("CALLSIGN_CONFIG_DIR", dir.join("config"))
        .env("CALLSIGN_DATA_DIR", dir.join("data"))
        .env("CALLSIGN_KEY", dir.join(key));
    cmd
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn peer_id(dir: &Path, key: &str) -> String {
    let v: Value =
        serde_json::from_str(&ok(callsign(dir, key).args(["keys", "new", "--json"]))).unwrap();
    v["peer_id"].as_str().unwrap().to_string()
}

fn build_org(dir: &Path) -> String {
    peer_id(dir, "root.key");
    ok(callsign(dir, "root.key").args(["org", "create", "Star Wing"]));
    ok(callsign(dir, "root.key").args([
        "org",
        "role",
        "add",
        "officer",
        "--perm",
        "listen,speak,manage",
        "--priority",
        "3",
    ]));
    ok(callsign(dir, "root.key").args(["org", "role", "add", "pilot", "--perm", "listen"]));
    ok(callsign(dir, "root.key").args([
        "org",
        "channel",
        "add",
        "/Command",
        "--speak",
        "officer",
        "--half-duplex",
    ]));
    ok(callsign(dir, "root.key").args([
        "org",
        "channel",
        "add",
        "/Command/Flight",
        "--speak",
        "pilot",
        "officer",
    ]));
    let pilot = peer_id(dir, "pilot.key");
    ok(callsign(dir, "root.key").args([
        "org", "member", "add", &pilot, "--role", "pilot", "--name", "Maverick",
    ]));
    pilot
}

#[test]
fn build_show_export_import() {
    let dir = tempfile::tempdir().unwrap();
    let pilot = build_org(dir.path());
    let show: Value = serde_json::from_str(&ok(
        callsign(dir.path(), "root.key").args(["org", "show", "--json"])
    ))
    .unwrap();
    assert_eq!(show["name"], "Star Wing");
    let paths: Vec<&str> = show["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/Command", "/Command/Flight"]);
    assert_eq!(show["channels"][0]["floor"], "half-duplex");
    assert_eq!(show["channels"][1]["acl"]["pilot"], "listen,speak");
    assert_eq!(show["members"][0][1], pilot.as_str());

    // Links, recording policy and conferences, from the CLI.
    let root = || callsign(dir.path(), "root.key");
    ok(root().args(["org", "channel", "link", "/Command/Flight", "/Command"]));
    ok(root().args(["org", "channel", "recording", "/Command", "forbidden"]));
    let refused = failed(root().args(["org", "channel", "recording", "/Command", "maybe"]));
    assert!(refused.contains("unknown recording policy"), "{refused}");
    let edited: Value = serde_json::from_str(&ok(root().args(["org", "show", "--json"]))).unwrap();
    assert_eq!(
        edited["links"],
        serde_json::json!([["/Command/Flight", "/Command"]])
    );
    assert_eq!(edited["channels"][0]["recording"], "forbidden");
    assert_eq!(edited["channels"][1]["recording"], "forbidden", "inherited");
    ok(root().args(["org", "channel", "unlink", "/Command/Flight", "/Command"]));
    ok(root().args(["org", "channel", "recording", "/Command", "inherit"]));

    let bundle = dir.path().join("org.bundle");
    ok(callsign(dir.path(), "root.key")
        .args(["org", "export"])
        .arg(&bundle));
    let other = tempfile::tempdir().unwrap();
    let out = ok(callsign(other.path(), "x.key")
        .args(["org", "import"])
        .arg(&bundle));
    assert!(out.contains("imported 14 of 14"), "{out}");
    let again: Value = serde_json::from_str(&ok(
        callsign(other.path(), "x.key").args(["org", "show", "--json"])
    ))
    .unwrap();
    assert_eq!(again, show);
    // Importing twice adds nothing and says so.
    let out = ok(callsign(other.path(), "x.key")
        .args(["org", "import"])
        .arg(&bundle));
    assert!(
        out.contains("up to date") && out.contains("all 14 ops"),
        "{out}"
    );
}

/// The files under `dir`'s data dir, so a failed command can be shown to have left none.
fn data_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.join("data")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

fn failed(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn import_refuses_a_bundle_that_applies_nothing_or_names_another_org() {
    let a = tempfile::tempdir().unwrap();
    build_org(a.path());
    let bundle_a = a.path().join("a.bundle");
    ok(callsign(a.path(), "root.key")
        .args(["org", "export"])
        .arg(&bundle_a));
    let b = tempfile::tempdir().unwrap();
    peer_id(b.path(), "root.key");
    ok(callsign(b.path(), "root.key").args(["org", "create", "Rogue Squadron"]));
    let bundle_b = b.path().join("b.bundle");
    ok(callsign(b.path(), "root.key")
        .args(["org", "export"])
        .arg(&bundle_b));

    // A's ops under B's org key (bytes 9..41 of the header): every op is refused.
    let mut forged = std::fs::read(&bundle_a).unwrap();
    let b_key = std::fs::read(&bundle_b).unwrap()[9..41].to_vec();
    forged[9..41].copy_from_slice(&b_key);
    let forged_path = a.path().join("forged.bundle");
    std::fs::write(&forged_path, &forged).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let err = failed(
        callsign(empty.path(), "x.key")
            .args(["org", "import"])
            .arg(&forged_path),
    );
    assert!(
        err.contains("applied nothing") && err.contains("10 rejected"),
        "{err}"
    );
    assert_eq!(data_files(empty.path()), Vec::<String>::new());
    // Into the real B it applies nothing either, and B's log is untouched.
    let before = data_files(b.path());
    let log_before = std::fs::read(&before[0]).unwrap();
    let err = failed(
        callsign(b.path(), "root.key")
            .args(["org", "import"])
            .arg(&forged_path),
    );
    assert!(err.contains("applied nothing"), "{err}");
    assert_eq!(data_files(b.path()), before);
    assert_eq!(std::fs::read(&before[0]).unwrap(), log_before);

    // Another org's bundle is refused by name unless asked for, and then both orgs are there.
    let err = failed(
        callsign(b.path(), "root.key")
            .args(["org", "import"])
            .arg(&bundle_a),
    );
    assert!(
        err.contains("\"Star Wing\"") && err.contains("--as-new-org"),
        "{err}"
    );
    assert_eq!(data_files(b.path()), before);
    ok(callsign(b.path(), "root.key").args(["org", "show"]));
    let out = ok(callsign(b.path(), "root.key")
        .args(["org", "import", "--as-new-org"])
        .arg(&bundle_a));
    assert!(out.contains("imported 10 of 10"), "{out}");
    assert_eq!(data_files(b.path()).len(), 2);
    let err = failed(callsign(b.path(), "root.key").args(["org", "show"]));
    assert!(err.contains("--org"), "{err}");
}

#[test]
fn non_admin_edit_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    build_org(dir.path());
    let out = callsign(dir.path(), "pilot.key")
        .args(["org", "channel", "add", "/Rogue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not an admin"), "{stderr}");
}

#[test]
fn corrupt_bundle_and_damaged_log() {
    let dir = tempfile::tempdir().unwrap();
    build_org(dir.path());
    let bundle = dir.path().join("org.bundle");
    ok(callsign(dir.path(), "root.key")
        .args(["org", "export"])
        .arg(&bundle));
    let mut bytes = std::fs::read(&bundle).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&bundle, &bytes).unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = callsign(other.path(), "x.key")
        .args(["org", "import"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: cannot import"));
    assert_eq!(data_files(other.path()), Vec::<String>::new());

    // Tear the log's last record: the tool warns, keeps the rest, and still works.
    let orgs = dir.path().join("data/orgs");
    let log = std::fs::read_dir(&orgs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let full = std::fs::read(&log).unwrap();
    std::fs::write(&log, &full[..full.len() - 5]).unwrap();
    let out = callsign(dir.path(), "root.key")
        .args(["org", "show", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("torn"),
        "{stderr}"
    );
    let show: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        show["members"].as_array().unwrap().is_empty(),
        "the torn member op is gone"
    );
}
