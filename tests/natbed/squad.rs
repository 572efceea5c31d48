//! Squads of real `callsign up` processes in the bed: founding the org, starting members
//! behind their routers, and reading what each printed.

use super::{Bed, Host, Maps, Nat};
use crate::common::success_stdout;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

/// One member of a squad in the bed.
pub struct Member {
    pub name: String,
    pub nat: Nat,
    pub peer: String,
}

/// What a member's `callsign up` printed, and when (seconds since it started).
pub struct Log {
    pub lines: Vec<(f64, String)>,
    /// When the process said it listens (its clock's zero, within a millisecond), seconds
    /// after the squad's start: the processes' clocks differ by this much.
    pub started_s: f64,
}

impl Log {
    /// How this member was linked to `peer` ("Direct", "HolePunched", "Relayed") just before
    /// `until` (seconds; the shutdown closes every link), if at all.
    pub fn link_to(&self, peer: &str, until: f64) -> Option<String> {
        let mut kind = None;
        for (_, line) in self.lines.iter().filter(|(t, _)| *t < until) {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("link-up"), Some(p), Some(k)) if p == peer => kind = Some(k.to_string()),
                (Some("link-down"), Some(p), _) if p == peer => kind = None,
                _ => {}
            }
        }
        kind
    }

    /// When this member first heard `name` talk.
    pub fn first_heard(&self, name: &str) -> Option<f64> {
        let prefix = format!("talker-start {name} ");
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(&prefix))
            .map(|(t, _)| *t)
    }

    /// Where this member's last link to `peer` before `until` went ("/ip6/…" or "/ip4/…").
    pub fn link_addr(&self, peer: &str, until: f64) -> Option<String> {
        let mut addr = None;
        for (_, line) in self.lines.iter().filter(|(t, _)| *t < until) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["link-up", p, _, a, ..] if *p == peer => addr = Some(a.to_string()),
                ["link-down", p, ..] if *p == peer => addr = None,
                _ => {}
            }
        }
        addr
    }

    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(t, l)| format!("{t:8.3} {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("callsign")
}

pub fn cli(dir: &Path, who: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(binary());
    cmd.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("CALLSIGN_CONFIG_DIR", dir.join("config"))
        .env("CALLSIGN_DATA_DIR", dir.join(who))
        .env("CALLSIGN_KEY", dir.join(format!("{who}.key")));
    cmd
}

pub fn ok(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(success_stdout(cmd)).unwrap()
}

/// A new key for `name`, who is behind `nat`.
fn keys(dir: &Path, name: &str, nat: Nat) -> Member {
    let v: Value =
        serde_json::from_str(&ok(cli(dir, name).args(["keys", "new", "--json"]))).unwrap();
    Member {
        name: name.to_string(),
        nat,
        peer: v["peer_id"].as_str().unwrap().to_string(),
    }
}

/// An org whose first member founds it; the others are pilots on /Flight. Every member gets
/// a key and the charter.
pub fn found_org(dir: &Path, layout: &[(&str, Nat)]) -> Vec<Member> {
    let members: Vec<Member> = layout
        .iter()
        .map(|(name, nat)| keys(dir, name, *nat))
        .collect();
    let root = &members[0].name;
    ok(cli(dir, root).args(["org", "create", "Wing"]));
    ok(cli(dir, root).args(["org", "role", "add", "pilot", "--perm", "listen,speak"]));
    ok(cli(dir, root).args(["org", "channel", "add", "/Flight"]));
    for m in &members[1..] {
        ok(cli(dir, root).args([
            "org", "member", "add", &m.peer, "--role", "pilot", "--name", &m.name,
        ]));
    }
    let bundle = dir.join("org.bundle");
    ok(cli(dir, root).args(["org", "export"]).arg(&bundle));
    for m in &members[1..] {
        ok(cli(dir, &m.name).args(["org", "import"]).arg(&bundle));
    }
    members
}

/// `   1.234 event words` as (1.234, "event words"); an untimed line at 0.
pub fn timed(line: String) -> (f64, String) {
    let trimmed = line.trim_start();
    let (t, rest) = trimmed.split_once(' ').unwrap_or(("", trimmed));
    match t.parse::<f64>() {
        Ok(t) => (t, rest.trim_start().to_string()),
        Err(_) => (0.0, line),
    }
}

/// Collects what is left of a member's output, after the `first` lines already read.
/// `started_s` is `None` while the first line ("listening on …") is still unread: the reader
/// notes when it arrives.
pub fn read_log(
    reader: impl BufRead + Send + 'static,
    first: Vec<(f64, String)>,
    started_s: Option<f64>,
    squad_start: std::time::Instant,
) -> JoinHandle<Log> {
    std::thread::spawn(move || {
        let mut lines = first;
        let mut started_s = started_s;
        for line in reader.lines().map_while(Result::ok) {
            started_s.get_or_insert_with(|| squad_start.elapsed().as_secs_f64());
            lines.push(timed(line));
        }
        Log {
            lines,
            started_s: started_s.unwrap_or_default(),
        }
    })
}

/// How long each of several talkers keys up, taking turns.
pub const TURN_MS: u64 = 1200;

/// When the `k`th of several talkers keys up, seconds after its start.
pub fn key_up_s(k: usize) -> f64 {
    1.0 + 1.5 * k as f64
}

/// [`run_squad`], or `None` (said on stderr) where this machine cannot host the bed.
pub fn squad(layout: &[(&str, Nat)], talker: &str, seconds: f64) -> Option<BTreeMap<String, Log>> {
    squad_with_routers(layout, &[], &[talker], seconds)
}

/// Whether this machine can host the bed (with miniupnpd, for routers that map); says why not
/// on stderr.
pub fn bed_here(routers: bool) -> bool {
    let available = if routers {
        Bed::upnp_available()
    } else {
        Bed::available()
    };
    if let Err(why) = &available {
        eprintln!("skipped: {why}");
    }
    available.is_ok()
}

/// [`run_squad`] with routers that map, or `None` where this machine cannot host the bed.
pub fn squad_with_routers(
    layout: &[(&str, Nat)],
    routers: &[(&str, Maps)],
    talkers: &[&str],
    seconds: f64,
) -> Option<BTreeMap<String, Log>> {
    bed_here(!routers.is_empty())
        .then(|| run_squad(layout, routers, talkers, seconds).unwrap_or_else(|why| panic!("{why}")))
}

/// `callsign up` for member `name` of the squad in `d`, for `seconds`.
fn up_command(d: &Path, name: &str, seconds: f64) -> Command {
    let mut up = Command::new(binary());
    up.env("HOME", d)
        .env("XDG_CONFIG_HOME", d.join("config"))
        .env("CALLSIGN_CONFIG_DIR", d.join("config"))
        .env("CALLSIGN_DATA_DIR", d.join(name))
        .env("CALLSIGN_KEY", d.join(format!("{name}.key")))
        .env(
            "RUST_LOG",
            std::env::var("NATBED_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .current_dir(d)
        .arg("up")
        .args(["--name", name, "--seconds", &seconds.to_string()]);
    up
}

/// Waits for every member's process to end, stops the bed, prints the logs (on stderr) and
/// returns them with peers named by member name, for the reports.
fn finish(
    bed: Bed,
    readers: BTreeMap<String, JoinHandle<Log>>,
    members: &[Member],
) -> BTreeMap<String, Log> {
    let logs: BTreeMap<String, Log> = readers
        .into_iter()
        .map(|(name, reader)| (name, reader.join().unwrap()))
        .collect();
    drop(bed);
    for (name, log) in &logs {
        eprintln!("== {name}\n{}", log.text());
    }
    logs.into_iter()
        .map(|(name, log)| {
            let lines = log
                .lines
                .into_iter()
                .map(|(t, mut line)| {
                    for m in members {
                        line = line.replace(&m.peer, &m.name);
                    }
                    (t, line)
                })
                .collect();
            (
                name,
                Log {
                    lines,
                    started_s: log.started_s,
                },
            )
        })
        .collect()
}

/// Runs the squad for `seconds`: the first member is the bootstrap everyone dials (it must be
/// reachable: public, or behind a router in `routers` that maps its port; the others dial the
/// mapped address, as a newcomer dials the address in an invite ticket; behind a router that
/// maps nothing, they dial the router's address). One talker speaks from 1 s to the end;
/// several take turns ([`key_up_s`]). Members named in `routers` have a router running
/// miniupnpd that does what its [`Maps`] says. Returns each member's log.
pub fn run_squad(
    layout: &[(&str, Nat)],
    routers: &[(&str, Maps)],
    talkers: &[&str],
    seconds: f64,
) -> Result<BTreeMap<String, Log>, String> {
    run_squad_on(Bed::new()?, layout, routers, talkers, seconds)
}

/// [`run_squad`] on a bed of the caller's (a dual-stack one, say).
pub fn run_squad_on(
    mut bed: Bed,
    layout: &[(&str, Nat)],
    routers: &[(&str, Maps)],
    talkers: &[&str],
    seconds: f64,
) -> Result<BTreeMap<String, Log>, String> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let members = found_org(d, layout);
    let hosts: Vec<Host> = members
        .iter()
        .map(|m| match routers.iter().find(|(name, _)| *name == m.name) {
            Some((_, maps)) => bed.host_mapping(&m.name, m.nat, *maps),
            None => bed.host(&m.name, m.nat),
        })
        .collect::<Result<_, _>>()?;
    let speech = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/tests/data/speech-16k.wav");
    for (k, talker) in talkers.iter().enumerate() {
        let length_ms = if talkers.len() == 1 {
            ((seconds - 1.5) * 1000.0) as u64
        } else {
            TURN_MS
        };
        std::fs::write(
            d.join(format!("talk-{talker}.txt")),
            format!(
                "{} ptt /Flight {length_ms}\n",
                (key_up_s(k) * 1000.0) as u64
            ),
        )
        .unwrap();
    }
    let mut readers = BTreeMap::new();
    let mut bootstrap = String::new();
    let squad_start = std::time::Instant::now();
    for (i, (m, host)) in members.iter().zip(&hosts).enumerate() {
        let mut up = up_command(d, &m.name, seconds);
        if i == 0 && m.nat == Nat::Public {
            up.args(["--listen", &format!("{}:4433", host.addr)]);
        } else if i == 0 {
            up.args(["--listen", "0.0.0.0:4433"]);
        } else {
            up.args(["--listen", "0.0.0.0:5000", "--bootstrap", &bootstrap]);
        }
        if talkers.contains(&m.name.as_str()) {
            up.arg("--input")
                .arg(&speech)
                .args(["--ptt-script", &format!("talk-{}.txt", m.name)]);
        }
        let child = bed.spawn(host, up)?;
        let mut started_s = None;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first_lines = Vec::new();
        if i == 0 {
            let mut first = String::new();
            out.read_line(&mut first).map_err(|e| e.to_string())?;
            started_s = Some(squad_start.elapsed().as_secs_f64());
            bootstrap = first
                .trim()
                .strip_prefix("listening on ")
                .ok_or_else(|| format!("first member said: {first}"))?
                .to_string();
            let maps = routers.iter().any(|(name, maps)| {
                *name == m.name && matches!(maps, Maps::Upnp | Maps::NatPmpOnly)
            });
            if m.nat != Nat::Public && !maps {
                // Behind a router that maps nothing: the address a user would put in a ticket.
                bootstrap = format!("/ip4/{}/udp/4433/quic-v1/p2p/{}", host.public, m.peer);
            } else if m.nat != Nat::Public {
                // Behind its router: the others dial the port the router mapped.
                let external = loop {
                    let mut line = String::new();
                    if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                        return Err(format!(
                            "{} ended before its router mapped a port\n{}",
                            m.name,
                            bed.upnp_log(&m.name)
                        ));
                    }
                    let (t, line) = timed(line.trim_end().to_string());
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["port-mapped", external, ..] => {
                            let external = external.to_string();
                            first_lines.push((t, line));
                            break external;
                        }
                        ["port-mapping", ..] => {
                            return Err(format!("{}: {line}\n{}", m.name, bed.upnp_log(&m.name)))
                        }
                        _ => first_lines.push((t, line)),
                    }
                };
                let external: std::net::SocketAddr =
                    external.parse().map_err(|e| format!("{external}: {e}"))?;
                bootstrap = format!(
                    "/ip4/{}/udp/{}/quic-v1/p2p/{}",
                    external.ip(),
                    external.port(),
                    m.peer
                );
            }
        }
        readers.insert(
            m.name.clone(),
            read_log(out, first_lines, started_s, squad_start),
        );
    }
    Ok(finish(bed, readers, &members))
}

/// A real invite. The `online` members (already in the org; the first is public, the others
/// dial it) run; the inviter (the org's founder, an admin) starts and dials the first of them,
/// a squad-mate it knows from an earlier session (with none, newcomers reach the inviter
/// itself: its router maps its port), and at 1 s prints a ticket per newcomer
/// (`invite pilot`: its node names where the org can be reached now). Each newcomer then
/// starts with nothing but its ticket (`callsign up --ticket`), as a new user pasting it would, and routers in
/// `routers` map ports. The inviter talks from `talk_s` (its clock) to the end. Returns each
/// process's log, peers named by member name, and the tickets.
pub fn run_invite(
    inviter: (&str, Nat),
    online: &[(&str, Nat)],
    newcomers: &[(&str, Nat)],
    routers: &[(&str, Maps)],
    talk_s: f64,
    seconds: f64,
) -> Result<(BTreeMap<String, Log>, Vec<String>), String> {
    // Someone the inviter can dial: a public member, or nobody (its router maps its port).
    assert!(online.first().is_none_or(|(_, nat)| *nat == Nat::Public));
    let mut bed = Bed::new()?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut layout = vec![inviter];
    layout.extend_from_slice(online);
    let mut members = found_org(d, &layout);
    members.extend(newcomers.iter().map(|(name, nat)| keys(d, name, *nat)));
    let mut host = |m: &Member| match routers.iter().find(|(name, _)| *name == m.name) {
        Some((_, maps)) => bed.host_mapping(&m.name, m.nat, *maps),
        None => bed.host(&m.name, m.nat),
    };
    let hosts: Vec<Host> = members.iter().map(&mut host).collect::<Result<_, _>>()?;
    let speech = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/tests/data/speech-16k.wav");
    let mut readers = BTreeMap::new();
    let squad_start = std::time::Instant::now();
    // Starts member `i`; reads on until it printed `count` lines starting with `word`, and
    // returns where it listens and the rest of those lines.
    let mut start = |bed: &mut Bed, i: usize, mut up: Command, word: &str, count: usize| {
        let m: &Member = &members[i];
        // Behind a router: every address (so the router is asked to map the port, as for a
        // user); public: its own.
        let listen = if m.nat == Nat::Public {
            format!("{}:4433", hosts[i].addr)
        } else {
            "0.0.0.0:4433".to_string()
        };
        let child = bed.spawn(&hosts[i], {
            up.args(["--listen", &listen]);
            up
        })?;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).map_err(|e| e.to_string())?;
        let started_s = squad_start.elapsed().as_secs_f64();
        let address = first
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("{} said: {first}", m.name))?
            .to_string();
        let mut lines = Vec::new();
        let mut found = Vec::new();
        while found.len() < count {
            let mut line = String::new();
            if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("{} ended before it said {word}", m.name));
            }
            let (t, line) = timed(line.trim_end().to_string());
            if let Some(rest) = line.strip_prefix(&format!("{word} ")) {
                found.push(rest.to_string());
            }
            lines.push((t, line));
        }
        readers.insert(
            m.name.clone(),
            read_log(out, lines, Some(started_s), squad_start),
        );
        Ok::<_, String>((address, found))
    };
    let n_online = online.len();
    let mut anchor = String::new();
    for (k, (name, _)) in online.iter().enumerate() {
        let mut up = up_command(d, name, seconds);
        if k > 0 {
            up.args(["--bootstrap", &anchor]);
        }
        let (address, _) = start(&mut bed, 1 + k, up, "", 0)?;
        if k == 0 {
            anchor = address;
        }
    }
    // One ticket per newcomer: a ticket admits once.
    let script = "1000 invite pilot\n".repeat(newcomers.len())
        + &format!(
            "{} ptt /Flight {}\n",
            (talk_s * 1000.0) as u64,
            ((seconds - talk_s - 0.5) * 1000.0) as u64
        );
    std::fs::write(d.join("inviter.txt"), script).unwrap();
    let mut up = up_command(d, &members[0].name, seconds);
    if !anchor.is_empty() {
        up.args(["--bootstrap", &anchor]);
    }
    up.arg("--input")
        .arg(&speech)
        .args(["--ptt-script", "inviter.txt"]);
    let (_, tickets) = start(&mut bed, 0, up, "invite", newcomers.len())?;
    for (i, ticket) in (n_online + 1..members.len()).zip(&tickets) {
        let mut up = up_command(d, &members[i].name, seconds - 1.5);
        up.args(["--ticket", ticket]);
        start(&mut bed, i, up, "", 0)?;
    }
    Ok((finish(bed, readers, &members), tickets))
}
