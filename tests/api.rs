//! The local control API end to end: two real `callsign up` nodes on loopback, each serving
//! `--api`, driven only through HTTP by a real client: channels, PTT on one heard at the
//! other (its event stream in order), an admin edit that syncs, invites, and every refusal
//! (no token, wrong token, a non-admin's admin edit, malformed JSON) answered with a clear 4xx
//! while the node carries on.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{callsign, callsign_process, flight_org, ok, speech_wav};
use serde_json::{json, Value};

/// A running `callsign up` with its API; killed on drop.
struct Up {
    child: Child,
    address: String,
    api: String,
    token: String,
    /// The rest of its stdout.
    lines: mpsc::Receiver<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(d: &Path, data: &str, key: &str, extra: &[&str]) -> Up {
    let token_file = d.join(format!("{data}.token"));
    let mut cmd = callsign_process(d, data, key);
    cmd.args(["up", "--listen", "127.0.0.1:0", "--no-port-mapping"])
        .args(["--api", "127.0.0.1:0", "--api-token-file"])
        .arg(&token_file)
        .args(["--seconds", "60"])
        .args(extra)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    let first = next();
    let address = first
        .strip_prefix("listening on ")
        .expect(&first)
        .to_string();
    let second = next();
    let api = second
        .strip_prefix("api ")
        .and_then(|rest| rest.split(' ').next())
        .expect(&second)
        .to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    Up {
        child,
        address,
        api,
        token,
        lines: rx,
    }
}

/// A request's status and JSON body (4xx and 5xx included).
fn call(request: ureq::Request, body: Option<&str>) -> (u16, Value) {
    let response = match body {
        Some(text) => request
            .set("Content-Type", "application/json")
            .send_string(text),
        None => request.call(),
    };
    let response = match response {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = response.status();
    let value = response.into_json().unwrap_or(Value::Null);
    (status, value)
}

impl Up {
    fn request(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}{path}", self.api))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = call(self.request("GET", path), None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        call(self.request(method, path), Some(&body.to_string()))
    }

    /// Server-sent events, as (type, data) pairs, from a thread reading the stream.
    fn events(&self) -> mpsc::Receiver<(String, Value)> {
        let response = self.request("GET", "/v1/events").call().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut kind = String::new();
            for line in BufReader::new(response.into_reader()).lines() {
                let Ok(line) = line else { break };
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let value = serde_json::from_str(data).unwrap_or(Value::Null);
                    if tx.send((kind.clone(), value)).is_err() {
                        break;
                    }
                }
            }
        });
        rx
    }
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_drives_two_nodes_through_the_local_api_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    flight_org(d);

    let speech = speech_wav();
    let root = up(
        d,
        "root",
        "root.key",
        &["--name", "Ground", "--input", speech.to_str().unwrap()],
    );
    let pilot_node = up(
        d,
        "pilot",
        "pilot.key",
        &[
            "--bootstrap",
            &root.address,
            "--input",
            speech.to_str().unwrap(),
        ],
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("root.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }

    // No token, a wrong one, a malformed header, an unknown endpoint: refused, said why.
    let url = format!("{}/v1/status", root.api);
    let (status, body) = call(ureq::get(&url), None);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let (status, body) = call(
        ureq::get(&url).set("Authorization", &format!("Bearer {}", pilot_node.token)),
        None,
    );
    assert_eq!(status, 401, "another node's token: {body}");
    let (status, _) = call(ureq::get(&url).set("Authorization", &root.token), None);
    assert_eq!(status, 401, "no Bearer scheme");
    let (status, _) = call(root.request("GET", "/v1/nothing"), None);
    assert_eq!(status, 404);

    let status = root.get("/v1/status");
    assert_eq!(status["admin"], true);
    assert_eq!(status["org_name"], "Star Wing");
    assert_eq!(pilot_node.get("/v1/status")["admin"], false);

    let channels = pilot_node.get("/v1/channels");
    let flight = &channels["channels"][0];
    assert_eq!(flight["path"], "/Flight", "{channels}");
    assert_eq!(flight["may_speak"], true);
    assert_eq!(flight["listening"], true);

    // The root sees the pilot in its roster once presence arrives.
    wait_until(
        "the pilot in root's roster",
        Duration::from_secs(15),
        || {
            root.get("/v1/roster")["roster"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|m| m["name"] == "Maverick" && !m["link"].is_null())
                })
        },
    );

    // The example bot minds the root's node: it answers whoever stops talking on /Flight.
    let bot_path = Path::new(env!("CARGO_BIN_EXE_callsign"))
        .parent()
        .unwrap()
        .join("examples/bot");
    if !bot_path.exists() {
        // `cargo test` builds the examples; `cargo test --test api` alone does not.
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "bot"])
            .status()
            .unwrap();
        assert!(built.success());
    }
    let mut bot = std::process::Command::new(&bot_path)
        .args(["--api", &root.api, "--token-file"])
        .arg(d.join("root.token"))
        .args([
            "--channel",
            "/Flight",
            "--reply-ms",
            "1000",
            "--answers",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bot_path.display()));
    let mut bot_lines = BufReader::new(bot.stdout.take().unwrap()).lines();
    assert_eq!(bot_lines.next().unwrap().unwrap(), "listening on /Flight");

    // Key up on the pilot through its API; the root hears it (its event stream, in order).
    let events = root.events();
    let pilot_events = pilot_node.events();
    let (status, body) = pilot_node.send("POST", "/v1/ptt", &json!({"channels": ["/Flight"]}));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = call(pilot_node.request("DELETE", "/v1/ptt"), None);
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|(k, _): &(String, Value)| k == "talker-stop")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(_) => panic!("no talker-stop; events: {seen:?}"),
        }
    }
    let start = seen
        .iter()
        .position(|(k, v)| k == "talker-start" && v["name"] == "Maverick")
        .unwrap_or_else(|| panic!("no talker-start: {seen:?}"));
    assert_eq!(seen[start].1["channels"], json!(["/Flight"]));
    let stop = seen.iter().position(|(k, _)| k == "talker-stop").unwrap();
    assert!(start < stop, "{seen:?}");
    let seqs: Vec<u64> = seen.iter().filter_map(|(_, v)| v["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let stats = root.get("/v1/stats");
    let played = stats["received"][0]["frames_played"].as_u64().unwrap_or(0);
    assert!(played > 40, "root played {played} frames: {stats}");

    // The bot answered with its node's WAV, and the pilot heard the answer.
    assert_eq!(
        bot_lines.next().unwrap().unwrap(),
        "answered Maverick on /Flight"
    );
    assert!(bot.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (kind, event) = pilot_events
            .recv_timeout(left)
            .expect("the pilot hears the bot's answer");
        if kind == "talker-start" && event["name"] == "Ground" {
            assert_eq!(event["channels"], json!(["/Flight"]));
            break;
        }
    }

    // Admin edits: the root's node may, the pilot's may not; the edit syncs to the pilot.
    let (status, body) = root.send("POST", "/v1/charter/channels", &json!({"path": "/Ops"}));
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        pilot_node.send("POST", "/v1/charter/channels", &json!({"path": "/Rogue"}));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("refuses"),
        "{body}"
    );
    let (status, _) = root.send("POST", "/v1/charter/channels", &json!({"path": "/Ops"}));
    assert_eq!(status, 409, "a second /Ops");
    wait_until("/Ops at the pilot", Duration::from_secs(10), || {
        pilot_node.get("/v1/charter")["channels"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["path"] == "/Ops"))
    });

    // Links, ACLs and recording policy: admin edits too, refused to the pilot's node.
    let link = json!({"from": "/Flight", "to": "/Ops", "both": true});
    let (status, body) = pilot_node.send("POST", "/v1/charter/links", &link);
    assert_eq!(status, 403, "{body}");
    let (status, body) = root.send("POST", "/v1/charter/links", &link);
    assert_eq!(status, 200, "{body}");
    let (status, body) = root.send(
        "POST",
        "/v1/charter/recording",
        &json!({"channel": "/Ops", "policy": "forbidden"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"], "forbidden");
    let (status, body) = root.send(
        "POST",
        "/v1/charter/acl",
        &json!({"channel": "/Ops", "role": "pilot", "perms": ["listen", "teleport"]}),
    );
    assert_eq!(status, 400, "{body}");
    // Proximity voice on /Ops (admins only), and positions fed by a game.
    let proximity = json!({"channel": "/Ops", "mode": "proximity", "range_m": 30, "full_m": 2});
    let (status, body) = pilot_node.send("POST", "/v1/charter/spatial", &proximity);
    assert_eq!(status, 403, "{body}");
    let (status, body) = root.send("POST", "/v1/charter/spatial", &proximity);
    assert_eq!(status, 200, "{body}");
    let (status, body) = root.send(
        "POST",
        "/v1/charter/spatial",
        &json!({"channel": "/Ops", "mode": "proximity", "range_m": 10, "full_m": 20}),
    );
    assert_eq!(status, 400, "full volume beyond the range: {body}");
    let place = json!({"context": "game/world", "at": [1.0, 0.0, 4.5], "front": [1.0, 0.0, 0.0]});
    let (status, body) = pilot_node.send("POST", "/v1/position", &place);
    assert_eq!(status, 200, "{body}");
    let (status, body) = pilot_node.send(
        "POST",
        "/v1/position",
        &json!({"context": "game/world", "at": [0.0, 0.0, 0.0], "front": [0.0, 2.0, 0.0]}),
    );
    assert_eq!(status, 400, "front along top: {body}");
    let (status, _) = pilot_node.send("DELETE", "/v1/position", &json!({}));
    assert_eq!(status, 200);
    wait_until(
        "/Ops proximity at the pilot",
        Duration::from_secs(10),
        || {
            pilot_node.get("/v1/charter")["channels"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["path"] == "/Ops"
                            && c["spatial"]["mode"] == "proximity"
                            && c["spatial"]["range_m"] == 30.0
                    })
                })
        },
    );
    wait_until("the link at the pilot", Duration::from_secs(10), || {
        pilot_node.get("/v1/charter")["links"]
            .as_array()
            .is_some_and(|l| l.len() == 2)
    });
    // A support line from the template: pilots call, agents answer, observers listen.
    for (role, perms) in [("agent", json!(["listen"])), ("observer", json!([]))] {
        let (status, body) = root.send(
            "POST",
            "/v1/charter/roles",
            &json!({"name": role, "perms": perms}),
        );
        assert_eq!(status, 200, "{body}");
    }
    let line =
        json!({"path": "/Help", "agents": "agent", "callers": "pilot", "observers": "observer"});
    wait_until("the roles at the pilot", Duration::from_secs(10), || {
        pilot_node.get("/v1/charter")["roles"]["observer"].is_object()
    });
    let (status, body) = pilot_node.send("POST", "/v1/charter/support", &line);
    assert_eq!(status, 403, "{body}");
    let (status, body) = root.send("POST", "/v1/charter/support", &line);
    assert_eq!(status, 200, "{body}");
    let charter = root.get("/v1/charter");
    let help = charter["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/Help")
        .cloned()
        .unwrap_or_else(|| panic!("no /Help: {charter}"));
    assert_eq!(help["acl"]["pilot"], json!(["listen", "speak"]), "{help}");
    assert_eq!(
        help["acl"]["agent"],
        json!(["listen", "speak", "whisper"]),
        "{help}"
    );
    assert_eq!(help["acl"]["observer"], json!(["listen"]), "{help}");

    // Recording: refused where the charter forbids it, started where it allows it, and
    // everyone listening sees who records.
    let (status, body) = pilot_node.send("POST", "/v1/record", &json!({"channel": "/Ops"}));
    assert_eq!(status, 403, "{body}");
    let (status, body) = pilot_node.send("POST", "/v1/record", &json!({"channel": "/Flight"}));
    assert_eq!(status, 200, "{body}");
    wait_until(
        "the root sees the pilot record",
        Duration::from_secs(10),
        || {
            root.get("/v1/channels")["channels"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["path"] == "/Flight" && c["recorders"] == json!(["Maverick"]))
                })
        },
    );
    let (status, _) = pilot_node.send("DELETE", "/v1/record", &json!({"channel": "/Flight"}));
    assert_eq!(status, 200);

    // Invites: only an admin's node mints them.
    let (status, body) = root.send("POST", "/v1/invites", &json!({"role": "pilot"}));
    assert_eq!(status, 200, "{body}");
    assert!(body["ticket"].as_str().unwrap().starts_with("callsign1"));
    let (status, _) = pilot_node.send("POST", "/v1/invites", &json!({"role": "pilot"}));
    assert_eq!(status, 403);
    let (status, _) = root.send("POST", "/v1/invites", &json!({"role": "nobody"}));
    assert_eq!(status, 404);

    // Malformed requests: clear 400s; nothing changes.
    for bad in [
        "{not json",
        "{\"channels\": 5}",
        "{\"channels\": [\"/Flight\"], \"x\": 1}",
    ] {
        let (status, body) = call(
            root.request("POST", "/v1/ptt")
                .set("Content-Type", "application/json"),
            Some(bad),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let (status, _) = root.send("POST", "/v1/ptt", &json!({"channels": ["/Nowhere"]}));
    assert_eq!(status, 404);
    let (status, _) = root.send("POST", "/v1/whisper", &json!({"peer": "not-a-peer"}));
    assert_eq!(status, 400);

    // Audio settings, field by field; nonsense refused and nothing changed.
    let (status, body) = root.send("PUT", "/v1/audio", &json!({"bitrate": 32000}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = root.send(
        "PUT",
        "/v1/audio",
        &json!({"ducking": [{"when_active": "/Flight", "ducked": "/Ops", "db": 12.0}]}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = root.send("PUT", "/v1/audio", &json!({"bitrate": 1}));
    assert_eq!(status, 400, "{body}");
    let audio = root.get("/v1/audio");
    assert_eq!(audio["bitrate"], 32000, "{audio}");
    assert_eq!(audio["ducking"][0]["ducked"], "/Ops", "{audio}");

    // Both nodes carry on.
    assert_eq!(root.get("/v1/status")["admin"], true);
    assert!(pilot_node.get("/v1/roster")["roster"]
        .as_array()
        .is_some_and(|r| r.iter().any(|m| m["name"] == "Ground")));
    let log: Vec<String> = root.lines.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("talker-start Maverick")),
        "{log:?}"
    );
}

#[test]
fn the_api_refuses_a_non_loopback_address_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(callsign(d, "root", "root.key").args(["keys", "new"]));
    ok(callsign(d, "root", "root.key").args(["org", "create", "Star Wing"]));
    let refused = |api: &[&str], env: (&str, &str)| {
        let out = callsign(d, "root", "root.key")
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--no-port-mapping",
                "--seconds",
                "1",
            ])
            .args(api)
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&["--api", "0.0.0.0:0"], ("UNUSED", ""));
    assert!(err.contains("not a loopback address"), "{err}");
    let err = refused(
        &["--api", "127.0.0.1:0", "--api-token-env", "WEAK"],
        ("WEAK", "abc"),
    );
    assert!(err.contains("at least 16"), "{err}");
}
