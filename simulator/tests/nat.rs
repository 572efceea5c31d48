//! The NAT matrix of docs/nat.md in the simulator: the same pairs as the kernel test bed
//! (`tests/nat.rs`), on routers that translate addresses ([`callsign_sim::nat`]).

use callsign_sim::{run, Report, Scenario};

/// A squad of `members` (name, NAT kind, UPnP router); the first is everyone's bootstrap (the
/// ticket's address), and `talker` keys up at 1 s for 2 s.
fn squad(members: &[(&str, &str, bool)], talker: &str) -> Report {
    let mut toml = String::from(
        "version = 1\nname = \"nat-matrix\"\nseed = 5\nduration_s = 5\n\n[link]\nlatency_ms = 15\n\n\
         [[channel]]\nname = \"squad\"\nspeak = [\"member\"]\n",
    );
    for (i, (name, nat, upnp)) in members.iter().enumerate() {
        toml += &format!(
            "\n[[node]]\nname = \"{name}\"\nrole = \"member\"\nadmin = {}\nnat = \"{nat}\"\nupnp = {upnp}\n",
            i == 0
        );
    }
    toml += &format!(
        "\n[[event]]\nat_s = 1.0\nkind = \"ptt\"\nnode = \"{talker}\"\nchannels = [\"squad\"]\nduration_s = 2.0\n"
    );
    let scenario = Scenario::parse(&toml).unwrap();
    run(&scenario, None).unwrap()
}

/// Whether `to` played nearly all of what `from` said.
fn heard(report: &Report, from: &str, to: &str) -> bool {
    report
        .stream(from, to, "squad")
        .is_some_and(|s| s.frames_sent > 0 && s.frames_played * 100 >= s.frames_sent * 95)
}

/// Behind a public member (the rendezvous), every pair of NAT kinds links and hears the other:
/// directly when one side can be reached unasked (public, full cone); by a hole punched over a
/// circuit on the public member when both NATs keep one public port per host
/// (port-restricted); through that circuit when either NAT is symmetric (a port per
/// destination, so the address the public member saw is the wrong one). The same path kinds
/// as the kernel test bed's (`tests/nat.rs`).
#[test]
fn every_pair_of_nat_kinds_links_through_a_public_member() {
    let kinds = ["none", "full-cone", "port-restricted", "symmetric"];
    let mut rows = Vec::new();
    for (i, a) in kinds.iter().enumerate() {
        for b in &kinds[i..] {
            let report = squad(
                &[
                    ("hq", "none", false),
                    ("alpha", a, false),
                    ("bravo", b, false),
                ],
                "bravo",
            );
            let path = report
                .path("alpha", "bravo")
                .expect("alpha and bravo linked");
            let reachable = |k: &str| matches!(k, "none" | "full-cone");
            let expected = if reachable(a) || reachable(b) {
                "direct"
            } else if *a == "symmetric" || *b == "symmetric" {
                "relayed"
            } else {
                "hole-punched"
            };
            rows.push(format!(
                "| {a} | {b} | {} | {:?} ms |",
                path.kind, path.first_audio_ms
            ));
            assert_eq!(path.kind, expected, "{a} × {b}: {path:?}");
            assert!(heard(&report, "bravo", "alpha"), "{a} × {b}");
            assert!(
                path.first_audio_ms.is_some_and(|ms| ms < 2000),
                "{a} × {b}: {path:?}"
            );
        }
    }
    eprintln!("{}", rows.join("\n"));
}

/// The kernel bed's five kinds (`tests/nat.rs`, `matrix_of_five_kinds`): public, full cone
/// with UPnP, full cone, port-restricted and symmetric, the public member first (everyone's
/// bootstrap). Every pair links; only port-restricted against symmetric stays on a circuit;
/// the links into the UPnP member's mapped port are `mapped` at either end, as in the bed.
#[test]
fn five_kinds_link_as_on_the_kernel_bed() {
    let report = squad(
        &[
            ("public", "none", false),
            ("cone-upnp", "full-cone", true),
            ("cone", "full-cone", false),
            ("restricted", "port-restricted", false),
            ("symmetric", "symmetric", false),
        ],
        "symmetric",
    );
    let names = ["public", "cone-upnp", "cone", "restricted", "symmetric"];
    let mut rows = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let path = report.path(a, b).expect("linked");
            rows.push(format!("| {a} – {b} | {} |", path.kind));
            let expected: &[&str] = match (*a, *b) {
                ("restricted", "symmetric") => &["relayed"],
                ("cone-upnp", _) | (_, "cone-upnp") => &["mapped", "direct"],
                _ => &["direct", "hole-punched"],
            };
            assert!(
                expected.contains(&path.kind.as_str()),
                "{a} – {b}: {path:?}"
            );
        }
    }
    for me in ["public", "cone-upnp", "cone", "restricted"] {
        assert!(heard(&report, "symmetric", me), "{me}");
    }
    eprintln!("{}", rows.join("\n"));
}

/// Four members behind port-restricted NATs, one of whose routers maps ports over UPnP: the
/// others join at its mapped address (a `mapped` path), it becomes the rendezvous, and everyone
/// hears the talker with nobody forwarding a port by hand.
#[test]
fn a_squad_behind_port_restricted_nats_links_through_the_member_whose_router_maps() {
    let report = squad(
        &[
            ("root", "port-restricted", true),
            ("alpha", "port-restricted", false),
            ("bravo", "port-restricted", false),
            ("charlie", "port-restricted", false),
        ],
        "charlie",
    );
    // In through root's mapped port: both ends call it that (root once the other says where
    // it reached it, the others from root's presence or because they dialed its mapping).
    for other in ["alpha", "bravo", "charlie"] {
        assert_eq!(
            report.path("root", other).unwrap().kind,
            "mapped",
            "{other}"
        );
    }
    for me in ["root", "alpha", "bravo"] {
        assert!(heard(&report, "charlie", me), "{me}");
    }
}

/// Nobody reachable: the first member sits behind a port-restricted NAT that maps nothing, so
/// the address its ticket carries lets no newcomer in, and nobody links (docs/nat.md, "What
/// cannot work").
#[test]
fn nobody_links_when_the_inviter_cannot_be_reached() {
    let report = squad(
        &[
            ("root", "port-restricted", false),
            ("alpha", "port-restricted", false),
            ("bravo", "full-cone", false),
        ],
        "bravo",
    );
    assert!(report
        .path("root", "alpha")
        .is_none_or(|p| p.kind == "none"));
    assert!(!heard(&report, "bravo", "root"));
    assert!(report.network.nat_filtered > 0);
}

/// The kernel bed's inviter × newcomer matrix (`tests/nat.rs`, `matrix_of_invites`): an
/// inviter behind each of the five kinds is up with one public member it dialed; a newcomer
/// behind each kind dials both (the addresses its ticket names) and must hear the inviter. The path kinds
/// are the bed's: direct (dialed, in through a mapping, or punched) whenever one side can be
/// reached unasked or both keep one public port per host, the circuit through the public
/// member only when a symmetric NAT faces a port-restricted or symmetric one.
#[test]
fn inviter_by_newcomer_links_as_on_the_kernel_bed() {
    let kinds = [
        ("public", "none", false),
        ("cone-upnp", "full-cone", true),
        ("cone", "full-cone", false),
        ("restricted", "port-restricted", false),
        ("symmetric", "symmetric", false),
    ];
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for (inviter, inviter_nat, inviter_upnp) in kinds {
        for (newcomer, newcomer_nat, newcomer_upnp) in kinds {
            let report = squad(
                &[
                    ("anchor", "none", false),
                    ("inviter", inviter_nat, inviter_upnp),
                    ("newcomer", newcomer_nat, newcomer_upnp),
                ],
                "inviter",
            );
            let path = report
                .path("inviter", "newcomer")
                .expect("inviter and newcomer linked");
            rows.push(format!(
                "| {inviter} | {newcomer} | {} | {:?} ms |",
                path.kind, path.first_audio_ms
            ));
            let reachable = |nat: &str| matches!(nat, "none" | "full-cone");
            let expected: &[&str] = if reachable(inviter_nat) || reachable(newcomer_nat) {
                if inviter_upnp || newcomer_upnp {
                    &["direct", "mapped", "hole-punched"]
                } else {
                    &["direct", "hole-punched"]
                }
            } else if inviter_nat == "symmetric" || newcomer_nat == "symmetric" {
                &["relayed"]
            } else {
                &["hole-punched"]
            };
            let in_time = path.first_audio_ms.is_some_and(|ms| ms < 2000);
            if !expected.contains(&path.kind.as_str())
                || !heard(&report, "inviter", "newcomer")
                || !in_time
            {
                wrong.push(format!("{inviter} × {newcomer}: {path:?}"));
            }
        }
    }
    eprintln!("{}", rows.join("\n"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
