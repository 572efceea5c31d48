//! Squads across real kernel NATs (see `natbed`): real `callsign up` processes in network
//! namespaces behind nftables NAT routers, one public member, no server.
//!
//! Needs root; elsewhere each test says why it did not run and passes. The full matrix of
//! NAT pairs is `cargo test --test nat -- --ignored --nocapture` (about a minute per row).

// Network namespaces and nftables: Linux only.
#![cfg(target_os = "linux")]

mod common;
mod natbed;

use natbed::squad::{
    bed_here, key_up_s, run_invite, run_squad, run_squad_on, squad, squad_with_routers,
};
use natbed::{Bed, Maps, Nat};

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

/// The inviter's own router filters strangers and maps nothing, so its own address in its
/// ticket lets nobody in; but its node also names the public member it is linked to. A
/// newcomer behind a port-restricted router and one behind a symmetric one start with that
/// ticket alone (`callsign up --ticket`): the public member passes their requests on to the
/// inviter, who admits them; as members they reach the inviter through a circuit at the
/// public member (punching a direct path where the NATs allow) and hear it.
#[test]
fn newcomers_join_from_the_ticket_of_an_inviter_nobody_can_reach() {
    if !bed_here(false) {
        return;
    }
    let (logs, tickets) = run_invite(
        ("root", Nat::PortRestricted),
        &[("anchor", Nat::Public)],
        &[("goose", Nat::PortRestricted), ("maverick", Nat::Symmetric)],
        &[],
        4.0,
        8.0,
    )
    .unwrap_or_else(|why| panic!("{why}"));
    assert!(tickets.iter().all(|t| t.starts_with("callsign1")));
    assert!(logs["root"]
        .lines
        .iter()
        .any(|(_, l)| l.starts_with("admitted goose")));
    for (newcomer, paths) in [
        ("goose", &["HolePunched", "Direct"][..]),
        ("maverick", &["Relayed"][..]),
    ] {
        let log = &logs[newcomer];
        let admitted = log
            .lines
            .iter()
            .find(|(_, l)| l.starts_with(&format!("admitted {newcomer} ")))
            .map(|(t, _)| *t);
        assert!(
            admitted.is_some_and(|t| t < 2.0),
            "{newcomer} admitted at {admitted:?}\n{}",
            log.text()
        );
        let path = log.link_to("root", 6.0);
        assert!(
            path.as_deref().is_some_and(|p| paths.contains(&p)),
            "{newcomer} to root: {path:?}\n{}",
            log.text()
        );
        assert!(
            log.first_heard("root").is_some(),
            "{newcomer} heard root\n{}",
            log.text()
        );
    }
}

/// The squad of the acceptance: four members behind ordinary home routers
/// (port-restricted), one of which maps ports (UPnP), nobody forwarding a port by hand. Its
/// member invites the three others: each starts with nothing but a ticket it minted (which
/// names the mapped address), is admitted, and the four link (in through the mapped port to
/// the inviter, punched between the others) and hear the inviter.
#[test]
fn a_squad_behind_home_nats_joins_from_tickets_of_the_member_whose_router_maps() {
    if !bed_here(true) {
        return;
    }
    let (logs, _) = run_invite(
        ("root", Nat::PortRestricted),
        &[],
        &[
            ("alpha", Nat::PortRestricted),
            ("bravo", Nat::PortRestricted),
            ("charlie", Nat::PortRestricted),
        ],
        &[("root", Maps::Upnp)],
        4.0,
        8.0,
    )
    .unwrap_or_else(|why| panic!("{why}"));
    let newcomers = ["alpha", "bravo", "charlie"];
    for (i, me) in newcomers.iter().enumerate() {
        let log = &logs[*me];
        assert!(
            log.lines
                .iter()
                .any(|(t, l)| *t < 1.0 && l.starts_with(&format!("admitted {me} "))),
            "{me} admitted\n{}",
            log.text()
        );
        // Newcomers stop 1.5 s before the inviter: look just before.
        let until = 8.0 - 1.5 - 0.5;
        assert_eq!(
            log.link_to("root", until).as_deref(),
            Some("Mapped"),
            "{me}\n{}",
            log.text()
        );
        for them in &newcomers[i + 1..] {
            let kind = log.link_to(them, until);
            assert!(
                matches!(kind.as_deref(), Some("HolePunched" | "Direct")),
                "{me} to {them}: {kind:?}\n{}",
                log.text()
            );
        }
        assert!(
            log.first_heard("root").is_some(),
            "{me} heard root\n{}",
            log.text()
        );
    }
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

/// Two members behind symmetric NATs, which no IPv4 punch gets through, on networks that
/// also carry IPv6: no NAT there, only each home router's stateful firewall (replies in,
/// nothing new). Their one socket takes both families; each offers its global IPv6 address
/// in the punch, and the simultaneous dial opens both firewalls: a direct IPv6 path where
/// IPv4 alone would stay on the circuit.
#[test]
fn members_behind_symmetric_nats_punch_a_direct_ipv6_path() {
    if !bed_here(false) {
        return;
    }
    let layout = [
        ("root", Nat::Public),
        ("alpha", Nat::Symmetric),
        ("bravo", Nat::Symmetric),
    ];
    let logs = Bed::dual_stack()
        .and_then(|bed| run_squad_on(bed, &layout, &[], &["bravo"], 6.0))
        .unwrap_or_else(|why| panic!("{why}"));
    for (me, them) in [("alpha", "bravo"), ("bravo", "alpha")] {
        let log = &logs[me];
        let kind = log.link_to(them, 5.5);
        let addr = log.link_addr(them, 5.5).unwrap_or_default();
        assert!(
            matches!(kind.as_deref(), Some("HolePunched" | "Direct"))
                && addr.starts_with("/ip6/2001:db8:"),
            "{me} to {them}: {kind:?} {addr}\n{}\n== {them}\n{}",
            log.text(),
            logs[them].text()
        );
    }
    let heard = logs["alpha"]
        .first_heard("bravo")
        .expect("alpha heard bravo");
    assert!(heard < 3.0, "first audio at {heard:.2} s");
}

/// No public member and nobody forwarding a port by hand: four members behind ordinary home
/// routers (port-restricted), one of which maps ports (UPnP IGD). The others join at the
/// mapped address (a `Mapped` path at both ends); a probe confirms it, so that member becomes
/// the rendezvous through which the other three punch direct paths to each other.
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
            // In through root's mapped port (both ends say so), punched between the others.
            let expected: &[&str] = if *me == "root" {
                &["Mapped"]
            } else {
                &["HolePunched", "Direct"]
            };
            for (a, b) in [(me, them), (them, me)] {
                let kind = logs[*a].link_to(b, 8.5);
                assert!(
                    kind.as_deref().is_some_and(|k| expected.contains(&k)),
                    "{a} to {b}: {kind:?}\n{}",
                    logs[*a].text()
                );
            }
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

/// Routers that speak PCP and NAT-PMP but not UPnP, and routers that refuse: the first
/// member's router maps over PCP (asked before NAT-PMP, which the same port answers), so the
/// others can join at its address; the second's refuses every mapping over all three, which
/// it reports, and it links by hole punching instead.
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
    assert!(mapped.ends_with("(PCP)"), "{mapped}");
    assert!(
        said("root", "reachable-at /ip4/198.51.100.").is_some(),
        "{}",
        logs["root"].text()
    );
    let refused = said("alpha", "port-mapping none: ").expect("alpha says why it has no mapping");
    assert!(
        refused.contains("UPnP router refused")
            && refused.contains("PCP gateway")
            && refused.contains("NAT-PMP router"),
        "{refused}"
    );
    // Into root's mapped port once it is mapped (the others dialed its router's address
    // before, and punched): a direct path either way.
    for (a, b) in [("root", "alpha"), ("root", "bravo"), ("alpha", "bravo")] {
        let kind = logs[a].link_to(b, 9.5);
        assert!(
            matches!(kind.as_deref(), Some("HolePunched" | "Direct" | "Mapped")),
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

/// One member behind each kind of router, by name ("cone-upnp": its router maps over UPnP).
const FIVE_KINDS: [(&str, Nat); 5] = [
    ("public", Nat::Public),
    ("cone-upnp", Nat::FullCone),
    ("cone", Nat::FullCone),
    ("restricted", Nat::PortRestricted),
    ("symmetric", Nat::Symmetric),
];

/// Five members, one behind each kind of router: public, full cone with UPnP, full cone
/// without, port-restricted and symmetric, already in the charter. Each reachable one in turn
/// is the bootstrap (it starts first and the rest dial its public or mapped address); every
/// member talks in turn. Prints, per bootstrap, each pair's path and when each heard each
/// (docs/nat.md holds a copy). Real tickets, and inviters nobody can reach: `matrix_of_invites`.
#[test]
#[ignore = "about a minute of real NATs; run with --ignored --nocapture"]
fn matrix_of_five_kinds() {
    if !bed_here(true) {
        return;
    }
    let kinds = FIVE_KINDS;
    let seconds = 1.0 + 1.5 * kinds.len() as f64 + 1.0;
    let mut rows = Vec::new();
    // Inviters others can reach: for one behind a router that filters and maps nothing, the
    // newcomers must reach another member its ticket names (`matrix_of_invites`); here they
    // would dial its router's address, which lets nobody in.
    for inviter in 0..3 {
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

/// Real invites, inviter × newcomer: an inviter behind each kind of router, with one public
/// member online, mints one ticket per newcomer; a newcomer behind each kind of router joins
/// with nothing but its ticket. Prints, per pair: when the newcomer was admitted (after its
/// start), its path to the inviter, and when it heard the inviter after the inviter keyed up
/// (docs/nat.md holds a copy).
#[test]
#[ignore = "about a minute of real NATs; run with --ignored --nocapture"]
fn matrix_of_invites() {
    if !bed_here(true) {
        return;
    }
    let kinds = FIVE_KINDS;
    let talk_s = 4.0;
    let mut rows = Vec::new();
    for (inviter_kind, inviter_nat) in kinds {
        if std::env::var("NATBED_ONLY").is_ok_and(|only| only != inviter_kind) {
            continue;
        }
        let newcomers: Vec<(String, Nat)> = kinds
            .iter()
            .map(|(kind, nat)| (format!("new-{kind}"), *nat))
            .collect();
        let newcomer_refs: Vec<(&str, Nat)> = newcomers
            .iter()
            .map(|(n, nat)| (n.as_str(), *nat))
            .collect();
        let mut routers = vec![("new-cone-upnp", Maps::Upnp)];
        if inviter_kind == "cone-upnp" {
            routers.push(("inviter", Maps::Upnp));
        }
        let result = run_invite(
            ("inviter", inviter_nat),
            &[("anchor", Nat::Public)],
            &newcomer_refs,
            &routers,
            talk_s,
            8.0,
        );
        let logs = match result {
            Ok((logs, _)) => logs,
            Err(why) => {
                rows.push(format!("| {inviter_kind} | all | failed: {why} | | |"));
                continue;
            }
        };
        let keyed = logs["inviter"].started_s + talk_s;
        for (name, _) in &newcomers {
            let log = &logs[name];
            let admitted = log
                .lines
                .iter()
                .find(|(_, l)| l.starts_with(&format!("admitted {name} ")))
                .map_or("never".to_string(), |(t, _)| {
                    format!("{:.0} ms", t * 1000.0)
                });
            // Newcomers run until 1.5 s before the inviter's end (their own clocks start about
            // 1 s later): just before they stop.
            let path = log
                .link_to("inviter", 8.0 - 1.5 - 0.5)
                .unwrap_or_else(|| "none".into());
            let heard = log.first_heard("inviter").map_or("never".to_string(), |t| {
                format!("{:.0} ms", (log.started_s + t - keyed) * 1000.0)
            });
            rows.push(format!(
                "| {inviter_kind} | {} | {admitted} | {path} | {heard} |",
                name.trim_start_matches("new-")
            ));
        }
    }
    println!("| inviter | newcomer | admitted after start | path to inviter | hears inviter after key-up |");
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
