//! Squads across real kernel NATs (see `natbed`): real `callsign up` processes in network
//! namespaces behind nftables NAT routers, one public member, no server.
//!
//! Needs root; elsewhere each test says why it did not run and passes. The full matrix of
//! NAT pairs is `cargo test --test nat -- --ignored --nocapture` (about a minute per row).

mod common;
mod natbed;

use common::success_stdout;
use natbed::{Bed, Host, Maps, Nat};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

/// One member of a squad in the bed.
struct Member {
    name: String,
    nat: Nat,
    peer: String,
}

/// What a member's `callsign up` printed, and when (seconds since it started).
struct Log {
    lines: Vec<(f64, String)>,
    /// When the process said it listens (its clock's zero, within a millisecond), seconds
    /// after the squad's start: the processes' clocks differ by this much.
    started_s: f64,
}

impl Log {
    /// How this member was linked to `peer` ("Direct", "HolePunched", "Relayed") just before
    /// `until` (seconds; the shutdown closes every link), if at all.
    fn link_to(&self, peer: &str, until: f64) -> Option<String> {
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
    fn first_heard(&self, name: &str) -> Option<f64> {
        let prefix = format!("talker-start {name} ");
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(&prefix))
            .map(|(t, _)| *t)
    }

    fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(t, l)| format!("{t:8.3} {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("callsign")
}

fn cli(dir: &Path, who: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(binary());
    cmd.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("CALLSIGN_DATA_DIR", dir.join(who))
        .env("CALLSIGN_KEY", dir.join(format!("{who}.key")));
    cmd
}

fn ok(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(success_stdout(cmd)).unwrap()
}

/// An org whose first member founds it; the others are pilots on /Flight. Every member gets
/// a key and the charter.
fn found_org(dir: &Path, layout: &[(&str, Nat)]) -> Vec<Member> {
    let members: Vec<Member> = layout
        .iter()
        .map(|(name, nat)| {
            let v: Value =
                serde_json::from_str(&ok(cli(dir, name).args(["keys", "new", "--json"]))).unwrap();
            Member {
                name: name.to_string(),
                nat: *nat,
                peer: v["peer_id"].as_str().unwrap().to_string(),
            }
        })
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
fn timed(line: String) -> (f64, String) {
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
fn read_log(
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
const TURN_MS: u64 = 1200;

/// When the `k`th of several talkers keys up, seconds after its start.
fn key_up_s(k: usize) -> f64 {
    1.0 + 1.5 * k as f64
}

/// [`run_squad`], or `None` (said on stderr) where this machine cannot host the bed.
fn squad(layout: &[(&str, Nat)], talker: &str, seconds: f64) -> Option<BTreeMap<String, Log>> {
    squad_with_routers(layout, &[], &[talker], seconds)
}

/// Whether this machine can host the bed (with miniupnpd, for routers that map); says why not
/// on stderr.
fn bed_here(routers: bool) -> bool {
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
fn squad_with_routers(
    layout: &[(&str, Nat)],
    routers: &[(&str, Maps)],
    talkers: &[&str],
    seconds: f64,
) -> Option<BTreeMap<String, Log>> {
    bed_here(!routers.is_empty())
        .then(|| run_squad(layout, routers, talkers, seconds).unwrap_or_else(|why| panic!("{why}")))
}

/// Runs the squad for `seconds`: the first member is the bootstrap everyone dials (it must be
/// reachable: public, or behind a router in `routers` that maps its port; the others dial the
/// mapped address, as a newcomer dials the address in an invite ticket; behind a router that
/// maps nothing, they dial the router's address). One talker speaks from 1 s to the end;
/// several take turns ([`key_up_s`]). Members named in `routers` have a router running
/// miniupnpd that does what its [`Maps`] says. Returns each member's log.
fn run_squad(
    layout: &[(&str, Nat)],
    routers: &[(&str, Maps)],
    talkers: &[&str],
    seconds: f64,
) -> Result<BTreeMap<String, Log>, String> {
    let mut bed = Bed::new()?;
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
        let mut up = Command::new(binary());
        up.env("HOME", d)
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("CALLSIGN_DATA_DIR", d.join(&m.name))
            .env("CALLSIGN_KEY", d.join(format!("{}.key", m.name)))
            .env(
                "RUST_LOG",
                std::env::var("NATBED_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .current_dir(d)
            .arg("up")
            .args(["--name", &m.name, "--seconds", &seconds.to_string()]);
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
    let logs: BTreeMap<String, Log> = readers
        .into_iter()
        .map(|(name, reader)| (name, reader.join().unwrap()))
        .collect();
    drop(bed);
    for (name, log) in &logs {
        eprintln!("== {name}\n{}", log.text());
    }
    let peers: BTreeMap<&str, &str> = members
        .iter()
        .map(|m| (m.name.as_str(), m.peer.as_str()))
        .collect();
    // Name peers in the logs by member name, for the reports.
    Ok(logs
        .into_iter()
        .map(|(name, log)| {
            let lines = log
                .lines
                .into_iter()
                .map(|(t, mut line)| {
                    for (member, peer) in &peers {
                        line = line.replace(peer, member);
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
        .collect())
}

/// The headline case: two members behind ordinary home routers (Linux masquerade:
/// endpoint-independent mapping, port-restricted filtering) and one public member. They link
/// through a circuit at the public member, punch a direct path, and hear each other.
#[test]
fn two_members_behind_home_nats_punch_a_direct_path_through_a_public_member() {
    let layout = [
        ("root", Nat::Public),
        ("alpha", Nat::PortRestricted),
        ("bravo", Nat::PortRestricted),
    ];
    let Some(logs) = squad(&layout, "bravo", 9.0) else {
        return;
    };
    // A direct path, on both sides. Which label a side shows depends on whether the circuit
    // was still up when the punched connection arrived ("HolePunched") or had just closed.
    for (me, them) in [("alpha", "bravo"), ("bravo", "alpha")] {
        let log = &logs[me];
        let kind = log.link_to(them, 8.5);
        assert!(
            matches!(kind.as_deref(), Some("HolePunched" | "Direct")),
            "{me} to {them}: {kind:?}\n{}",
            log.text()
        );
    }
    let alpha = &logs["alpha"];
    let heard = alpha.first_heard("bravo").expect("alpha heard bravo");
    // Bravo keys up 1 s after start; the first words arrive over the circuit or the punched
    // path, whichever is up.
    assert!(heard < 3.0, "first audio at {heard:.2} s");
    assert!(
        logs["root"].first_heard("bravo").is_some(),
        "root hears bravo too"
    );
}

/// Endpoint-dependent mapping on one side, port-restricted filtering on the other: no punch
/// can work, and the pair talks through the circuit at the public member.
#[test]
fn symmetric_and_port_restricted_members_talk_through_the_circuit() {
    let layout = [
        ("root", Nat::Public),
        ("alpha", Nat::Symmetric),
        ("bravo", Nat::PortRestricted),
    ];
    let Some(logs) = squad(&layout, "bravo", 6.0) else {
        return;
    };
    let alpha = &logs["alpha"];
    assert_eq!(
        alpha.link_to("bravo", 5.5).as_deref(),
        Some("Relayed"),
        "{}",
        alpha.text()
    );
    let heard = alpha.first_heard("bravo").expect("alpha heard bravo");
    assert!(heard < 3.0, "first audio at {heard:.2} s");
}

/// No public member and nobody forwarding a port by hand: four members behind ordinary home
/// routers (port-restricted), one of which maps ports (UPnP IGD). The others join at the
/// mapped address; a probe confirms it, so that member becomes the rendezvous through which
/// the other three punch direct paths to each other.
#[test]
fn a_squad_behind_home_nats_links_through_the_member_whose_router_maps_ports() {
    let layout = [
        ("root", Nat::PortRestricted),
        ("alpha", Nat::PortRestricted),
        ("bravo", Nat::PortRestricted),
        ("charlie", Nat::PortRestricted),
    ];
    let Some(logs) = squad_with_routers(&layout, &[("root", Maps::Upnp)], &["charlie"], 9.0) else {
        return;
    };
    let root = &logs["root"];
    assert!(
        root.lines
            .iter()
            .any(|(_, l)| l.starts_with("reachable-at /ip4/198.51.100.")),
        "the mapped address was confirmed by a probe\n{}",
        root.text()
    );
    let names = ["root", "alpha", "bravo", "charlie"];
    for (i, me) in names.iter().enumerate() {
        for them in &names[i + 1..] {
            let kind = logs[*me].link_to(them, 8.5);
            assert!(
                matches!(kind.as_deref(), Some("HolePunched" | "Direct")),
                "{me} to {them}: {kind:?}\n{}",
                logs[*me].text()
            );
        }
    }
    for me in ["root", "alpha", "bravo"] {
        let heard = logs[me].first_heard("charlie");
        // Charlie keys up 1 s after its start: first audio within 2 s of that.
        assert!(
            heard.is_some_and(|t| t < 3.0),
            "{me} heard charlie at {heard:?}\n{}",
            logs[me].text()
        );
    }
}

/// Routers that speak NAT-PMP but not UPnP (Apple's, among others), and routers that refuse:
/// the first member's router maps over NAT-PMP, so the others can join at its address; the
/// second's refuses every mapping, which it reports, and it links by hole punching instead.
#[test]
fn a_nat_pmp_router_maps_and_a_refusing_one_leaves_hole_punching() {
    let layout = [
        ("root", Nat::PortRestricted),
        ("alpha", Nat::PortRestricted),
        ("bravo", Nat::PortRestricted),
    ];
    let routers = [("root", Maps::NatPmpOnly), ("alpha", Maps::Refuses)];
    let Some(logs) = squad_with_routers(&layout, &routers, &["bravo"], 10.0) else {
        return;
    };
    let said = |who: &str, prefix: &str| {
        logs[who]
            .lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(_, l)| l.clone())
    };
    let mapped = said("root", "port-mapped ").expect("root's router mapped");
    assert!(mapped.ends_with("(NAT-PMP)"), "{mapped}");
    assert!(
        said("root", "reachable-at /ip4/198.51.100.").is_some(),
        "{}",
        logs["root"].text()
    );
    let refused = said("alpha", "port-mapping none: ").expect("alpha says why it has no mapping");
    assert!(
        refused.contains("UPnP router refused") && refused.contains("NAT-PMP router"),
        "{refused}"
    );
    for (a, b) in [("root", "alpha"), ("root", "bravo"), ("alpha", "bravo")] {
        let kind = logs[a].link_to(b, 9.5);
        assert!(
            matches!(kind.as_deref(), Some("HolePunched" | "Direct")),
            "{a} to {b}: {kind:?}\n{}",
            logs[a].text()
        );
    }
    assert!(
        logs["alpha"].first_heard("bravo").is_some(),
        "{}",
        logs["alpha"].text()
    );
}

/// Five members, one behind each kind of router: public, full cone with UPnP, full cone
/// without, port-restricted and symmetric. Each in turn invites the others (it starts first
/// and the rest dial the address its ticket would carry: its public or mapped address, or its
/// router's address when it has neither); every member talks in turn. Prints, per inviter,
/// each pair's path and when each heard each (docs/nat.md holds a copy).
#[test]
#[ignore = "about a minute of real NATs; run with --ignored --nocapture"]
fn matrix_of_five_kinds() {
    if !bed_here(true) {
        return;
    }
    let kinds: [(&str, Nat); 5] = [
        ("public", Nat::Public),
        ("cone-upnp", Nat::FullCone),
        ("cone", Nat::FullCone),
        ("restricted", Nat::PortRestricted),
        ("symmetric", Nat::Symmetric),
    ];
    let seconds = 1.0 + 1.5 * kinds.len() as f64 + 1.0;
    let mut rows = Vec::new();
    for inviter in 0..kinds.len() {
        if std::env::var("NATBED_ONLY").is_ok_and(|only| only != kinds[inviter].0) {
            continue;
        }
        let mut layout = vec![kinds[inviter]];
        layout.extend(
            kinds
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != inviter)
                .map(|(_, k)| *k),
        );
        let names: Vec<&str> = layout.iter().map(|(n, _)| *n).collect();
        let logs = match run_squad(&layout, &[("cone-upnp", Maps::Upnp)], &names, seconds) {
            Ok(logs) => logs,
            Err(why) => {
                rows.push(format!("| {} | all | failed: {why} | | |", names[0]));
                continue;
            }
        };
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                let path = logs[*a]
                    .link_to(b, seconds - 0.5)
                    .unwrap_or_else(|| "none".into());
                // On one clock: each process's times count from its own start.
                let heard = |listener: &str, talker: &str| {
                    let k = names.iter().position(|n| *n == talker).unwrap();
                    let keyed = logs[talker].started_s + key_up_s(k);
                    logs[listener]
                        .first_heard(talker)
                        .map_or("never".to_string(), |t| {
                            format!("{:.0} ms", (logs[listener].started_s + t - keyed) * 1000.0)
                        })
                };
                rows.push(format!(
                    "| {} | {a} – {b} | {path} | {} | {} |",
                    names[0],
                    heard(a, b),
                    heard(b, a)
                ));
            }
        }
    }
    println!("| inviter | pair a – b | path | a hears b after b keys up | b hears a |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

/// Every pair of NAT kinds, with a public member as the squad's bootstrap: the path each pair
/// ends up on and when the first words arrive. Prints a table (docs/nat.md holds a copy).
#[test]
#[ignore = "a minute of real NATs; run with --ignored --nocapture"]
fn matrix_of_nat_pairs() {
    let kinds: [(&str, Nat); 4] = [
        ("public", Nat::Public),
        ("full-cone", Nat::FullCone),
        ("port-restricted", Nat::PortRestricted),
        ("symmetric", Nat::Symmetric),
    ];
    let mut rows = Vec::new();
    for (i, (a_name, a)) in kinds.iter().enumerate() {
        for (b_name, b) in &kinds[i..] {
            // NATBED_ONLY=public-symmetric runs one row.
            if std::env::var("NATBED_ONLY").is_ok_and(|only| only != format!("{a_name}-{b_name}")) {
                continue;
            }
            let layout = [("root", Nat::Public), ("alpha", *a), ("bravo", *b)];
            let Some(logs) = squad(&layout, "bravo", 6.0) else {
                return;
            };
            let path = logs["alpha"]
                .link_to("bravo", 5.5)
                .unwrap_or_else(|| "none".into());
            let heard = logs["alpha"]
                .first_heard("bravo")
                .map_or("never".to_string(), |t| {
                    format!("{:.0} ms", (t - 1.0) * 1000.0)
                });
            rows.push(format!("| {a_name} | {b_name} | {path} | {heard} |"));
        }
    }
    println!("| alpha | bravo | path alpha–bravo | first audio after PTT |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
