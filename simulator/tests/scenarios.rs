//! The scenario suite: each example scenario runs on the real node stack in virtual time and
//! its report is checked; runs replay exactly from their seed.

use callsign_sim::{run, Report, Scenario, TraceEvent};
use std::path::Path;

mod common;
use common::scenario;

fn show(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap()
}

#[test]
fn lan_squad_hears_everything() {
    let report = run(&scenario("lan-squad"), None).unwrap();
    eprintln!("{}", show(&report));
    assert!(report.delivery() >= 0.99, "{}", show(&report));
    for to in ["bravo", "charlie", "delta"] {
        let s = report.stream("alpha", to, "squad").expect("alpha's stream");
        assert!(s.frames_sent >= 70, "{s:?}");
        let p50 = s.mouth_to_ear_ms.expect("latency").p50;
        assert!(p50 <= 60.0, "{s:?}");
    }
    let whisper = report.stream("delta", "bravo", "whisper").expect("whisper");
    assert!(whisper.frames_played * 100 >= whisper.frames_sent * 98);
    assert!(report.stream("delta", "alpha", "whisper").is_none());
    assert!(report.paths.iter().all(|p| p.kind == "direct"));
    assert!(report.charter.converged);
}

fn check_impaired(name: &str, min_delivery: f64) -> Report {
    let report = run(&scenario(name), None).unwrap();
    eprintln!(
        "{name}: delivery {:.3}, network {:?}",
        report.delivery(),
        report.network
    );
    assert!(
        report.delivery() >= min_delivery,
        "{name}: {}",
        show(&report)
    );
    // Every member heard alpha's two transmissions and bravo's one.
    for to in ["bravo", "charlie", "delta"] {
        let s = report.stream("alpha", to, "squad").expect("stream");
        assert!(s.frames_sent >= 280, "{s:?}");
    }
    assert!(report.charter.converged);
    assert_eq!(
        report.drops.auth + report.drops.acl + report.drops.malformed,
        0
    );
    report
}

#[test]
fn five_percent_uniform_loss() {
    // A missing frame counts as played only when the next packet's LBRR or a later packet's
    // DRED rebuilt it; quiet frames carry no LBRR and are concealed (and counted so).
    let r = check_impaired("loss-5pct", 0.96);
    assert!(r.network.lost > 50, "{:?}", r.network);
}

#[test]
fn gilbert_elliott_bursts_averaging_ten_percent() {
    let r = check_impaired("burst-10pct", 0.85);
    let lost = r.network.lost as f64 / r.network.sent as f64;
    assert!((0.06..=0.14).contains(&lost), "network loss {lost}");
    let concealed: u64 = r.streams.iter().map(|s| s.frames_concealed).sum();
    assert!(concealed > 0);
}

#[test]
fn twenty_percent_reordering() {
    check_impaired("reorder-20pct", 0.95);
}

#[test]
fn eighty_ms_with_thirty_ms_jitter() {
    let r = check_impaired("jitter-80ms", 0.90);
    let s = r.stream("alpha", "bravo", "squad").unwrap();
    let p50 = s.mouth_to_ear_ms.unwrap().p50;
    // Latency plus an adaptive jitter buffer: above the one-way delay, below a second.
    assert!((80.0..=400.0).contains(&p50), "{s:?}");
}

#[test]
fn partition_with_concurrent_charter_edits_then_heal() {
    let report = run(&scenario("partition-charter"), None).unwrap();
    eprintln!("{}", show(&report));
    assert!(report.charter.converged, "{}", show(&report));
    // Genesis + role + channel + acl + 4 members + 2 admins, then both edits.
    assert_eq!(report.charter.ops, 12);
    assert!(report.charter.convergence_ms.is_some());
    // During the partition bravo reached only alpha; after healing delta reached everyone.
    let during = report.stream("bravo", "alpha", "squad").unwrap();
    assert!(during.frames_played * 100 >= during.frames_sent * 95);
    let cut = report.stream("bravo", "charlie", "squad").unwrap();
    assert!(cut.frames_played * 2 < cut.frames_sent, "{cut:?}");
    for to in ["alpha", "bravo", "charlie"] {
        let s = report.stream("delta", to, "squad").unwrap();
        assert!(s.frames_played * 100 >= s.frames_sent * 95, "{s:?}");
    }
    assert!(report.network.partitioned > 0);
}

/// Every scenario of the suite.
const SUITE: [&str; 10] = [
    "lan-squad",
    "relay-failover",
    "loss-5pct",
    "burst-10pct",
    "reorder-20pct",
    "jitter-80ms",
    "partition-charter",
    "crash-restart",
    "nat-full-cone",
    "nat-symmetric",
];

#[test]
fn each_scenario_replays_from_its_seed_and_another_seed_differs() {
    for name in SUITE {
        let s = scenario(name);
        let a = run(&s, None).unwrap();
        let b = run(&s, None).unwrap();
        assert_eq!(a.trace, b.trace, "{name}");
        assert_eq!(a.trace_hash, b.trace_hash, "{name}");
        assert_eq!(
            (&a.streams, &a.paths, &a.charter, &a.drops, &a.network),
            (&b.streams, &b.paths, &b.charter, &b.drops, &b.network),
            "{name}"
        );
        let c = run(&s, Some(s.seed + 1)).unwrap();
        assert_ne!(a.trace_hash, c.trace_hash, "{name}");
    }
}

/// Both of `a` and `b`'s streams on squad to each other played at least 98 % of their frames.
fn assert_both_ways_played(report: &Report, a: &str, b: &str) {
    for (from, to) in [(a, b), (b, a)] {
        let s = report.stream(from, to, "squad").unwrap();
        assert!(s.frames_played * 100 >= s.frames_sent * 98, "{s:?}");
    }
}

#[test]
fn full_cone_members_link_directly_once_they_have_sent_anything() {
    let report = run(&scenario("nat-full-cone"), None).unwrap();
    eprintln!("{}", show(&report));
    let path = report.path("alpha", "bravo").unwrap();
    assert_eq!(path.kind, "direct", "{path:?}");
    assert_both_ways_played(&report, "alpha", "bravo");
    assert!(path.first_audio_ms.is_some_and(|ms| ms < 100), "{path:?}");
}

#[test]
fn symmetric_nats_on_both_sides_talk_through_a_member_relay() {
    let report = run(&scenario("nat-symmetric"), None).unwrap();
    eprintln!("{}", show(&report));
    let path = report.path("alpha", "bravo").unwrap();
    assert_eq!(path.kind, "relayed", "{path:?}");
    assert!(
        report.network.nat_filtered > 0,
        "the direct attempts were filtered"
    );
    for (from, to) in [("alpha", "bravo"), ("bravo", "alpha")] {
        let s = report.stream(from, to, "squad").unwrap();
        assert!(s.frames_sent >= 95, "{s:?}");
    }
    assert_both_ways_played(&report, "alpha", "bravo");
    for to in ["alpha", "bravo"] {
        assert_eq!(report.path("hq", to).unwrap().kind, "direct");
    }
    assert_eq!(report.drops.auth + report.drops.malformed, 0);
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/lan-squad.toml"),
    )
    .unwrap();
    let cases = [
        (
            good.replace("version = 1", "version = 2"),
            "unknown scenario version 2",
        ),
        (
            good.replace("node = \"alpha\"", "node = \"zulu\""),
            "unknown node \"zulu\"",
        ),
        (
            good.replace("latency_ms = 2", "latency_ms = 2\nloss = 1.5"),
            "loss out of range",
        ),
        (
            good.replace("channels = [\"squad\"]", "channels = [\"nowhere\"]"),
            "unknown channel",
        ),
        (
            good.replace("duration_s = 8", "duration_s = -1"),
            "duration_s",
        ),
        ("version = 1\nname = [".to_string(), "does not parse"),
    ];
    for (text, want) in cases {
        let err = Scenario::parse(&text).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
}

#[test]
fn a_crashed_member_restarts_and_hears_again_and_a_late_joiner_is_heard() {
    let report = run(&scenario("crash-restart"), None).unwrap();
    eprintln!("{}", show(&report));
    // Both of alpha's transmissions reached bravo (before the crash and after the restart).
    let ab = report.stream("alpha", "bravo", "squad").unwrap();
    assert!(ab.frames_sent >= 120, "{ab:?}");
    assert!(ab.frames_played * 100 >= ab.frames_sent * 95, "{ab:?}");
    // The late joiner heard alpha's second transmission; the restarted bravo reaches delta.
    let ad = report.stream("alpha", "delta", "squad").unwrap();
    assert!(ad.frames_played >= 70, "{ad:?}");
    let bd = report.stream("bravo", "delta", "squad").unwrap();
    assert!(bd.frames_played * 100 >= bd.frames_sent * 95, "{bd:?}");
    // charlie left before bravo's last transmission: nothing was sent to it.
    assert!(report.stream("bravo", "charlie", "squad").is_none());
    assert!(report.network.partitioned > 0, "the crash silenced bravo");
    assert!(report.events.iter().any(|r| r.node == "bravo"
        && matches!(&r.event, TraceEvent::SessionUp { peer } if peer == "alpha")));
}

#[test]
fn links_carry_talkers_once_and_monitors_stay_unseen() {
    let report = run(&scenario("links"), None).unwrap();
    eprintln!("{}", show(&report));
    let heard = [
        // The one-way bridge alpha → command.
        ("a1", "a2", "alpha"),
        ("a1", "cmd", "command"),
        ("a1", "guest", "command"),
        // The cycle east → west → north → east, from two of its channels.
        ("e1", "w1", "west"),
        ("e1", "n1", "north"),
        ("e1", "all", "east"),
        ("e1", "all", "west"),
        ("e1", "all", "north"),
        ("w1", "n1", "north"),
        ("w1", "e1", "east"),
        ("w1", "all", "west"),
        // The conference, both ways.
        ("e1", "w1", "debrief"),
        ("w1", "e1", "brief"),
        // The monitor hears ops.
        ("o1", "o2", "ops"),
        ("o1", "staff", "ops"),
    ];
    for (from, to, channel) in heard {
        let s = report
            .stream(from, to, channel)
            .unwrap_or_else(|| panic!("{from} -> {to} on {channel} missing"));
        assert!(
            s.frames_sent >= 45 && s.frames_played * 100 >= s.frames_sent * 95,
            "{s:?}"
        );
    }
    let silent = |from: &str, to: &str| {
        report
            .streams
            .iter()
            .filter(|s| s.from == from && s.to == to)
            .all(|s| s.frames_played == 0)
    };
    // One way: command's talker is not heard on alpha.
    assert!(silent("cmd", "a1") && silent("cmd", "a2"));
    // The guest may not speak on command: hush's link into it is not crossed.
    assert!(silent("guest", "cmd"));
    // The monitor never transmits.
    assert!(report.streams.iter().all(|s| s.from != "staff"));
    // Nobody hears themselves through the cycle, and no second copy of a frame arrived.
    assert!(
        report.heard_themselves.is_empty(),
        "{:?}",
        report.heard_themselves
    );
    assert_eq!(report.drops.replay, 0);
    for s in &report.streams {
        assert!(s.frames_played <= s.frames_sent, "{s:?}");
    }
    // The monitor is in no node's roster of ops; the listeners are.
    for (node, roster) in &report.rosters {
        let ops = roster.get("ops").cloned().unwrap_or_default();
        assert!(!ops.contains("staff"), "{node} shows staff on ops: {ops:?}");
        if !["o1", "o2"].contains(&node.as_str()) {
            assert!(ops.contains("o1") && ops.contains("o2"), "{node}: {ops:?}");
        }
    }
    assert!(report.charter.converged);
}

#[test]
fn links_and_monitors_hold_through_a_relay_behind_nats() {
    let report = run(&scenario("links-relay"), None).unwrap();
    eprintln!("{}", show(&report));
    let relay = report.relays.iter().find(|r| r.node == "r0").expect("r0");
    assert!(
        relay.packets_out > 0 && relay.audio_keys_held == 0,
        "{relay:?}"
    );
    // a0 keys alpha, heard on command through the relay; c3 keys command, heard on alpha.
    for (from, to, channel) in [
        ("a0", "a1", "alpha"),
        ("a0", "c0", "command"),
        ("a0", "c8", "command"),
        ("c3", "a0", "alpha"),
        ("c3", "c5", "command"),
        ("c4", "staff", "ops"),
    ] {
        let s = report
            .stream(from, to, channel)
            .unwrap_or_else(|| panic!("{from} -> {to} on {channel} missing"));
        assert!(s.frames_played * 100 >= s.frames_sent * 90, "{s:?}");
    }
    assert!(report.heard_themselves.is_empty());
    assert!(report
        .rosters
        .values()
        .all(|r| !r.get("ops").is_some_and(|ops| ops.contains("staff"))));
}

#[test]
fn proximity_reaches_exactly_those_in_range_with_hysteresis() {
    let s = scenario("proximity");
    let report = run(&s, None).unwrap();
    let played = |from: &str, to: &str, ch: &str| {
        report.stream(from, to, ch).map_or(0, |st| st.frames_played)
    };
    let placed = |from: &str, to: &str, ch: &str| {
        report
            .stream(from, to, ch)
            .and_then(|st| st.placed)
            .unwrap_or_else(|| panic!("{from} → {to} on {ch} not placed: {}", show(&report)))
    };
    // In reach all along: bravo and delta hear all of alpha's 20 s (1000 frames, less the
    // first ones while keys settle).
    let full = played("alpha", "bravo", "squad");
    assert!(full >= 950, "{}", show(&report));
    assert!(played("alpha", "delta", "squad") + 10 >= full);
    // Gain and direction are the model's: bravo at 5 m, alpha to its left; delta at 19 m with
    // alpha straight behind (3 dB rear cue).
    let b = placed("alpha", "bravo", "squad");
    let want = 20.0 * (1.0f32 - 3.0 / 18.0).log10();
    assert!(
        (b.max_gain_db - want).abs() < 0.5 && (b.min_gain_db - want).abs() < 0.5,
        "{b:?}"
    );
    assert!((b.last_pan + 0.8).abs() < 0.01, "{b:?}");
    let d = placed("alpha", "delta", "squad");
    let want = 20.0 * (1.0f32 - 17.0 / 18.0).log10() - 3.0;
    assert!(
        (d.max_gain_db - want).abs() < 0.5 && d.last_pan.abs() < 0.01,
        "{d:?}"
    );
    // Out of reach, another world, no position: nothing played, and alpha sent them nothing
    // (their presence said where they were).
    for far in ["charlie", "echo", "foxtrot"] {
        assert_eq!(played("alpha", far, "squad"), 0, "{far}: {}", show(&report));
        assert!(
            report
                .stream("alpha", far, "squad")
                .is_none_or(|st| st.frames_sent == 0),
            "{far} was sent frames: {}",
            show(&report)
        );
    }
    // The walker misses the 9 s between leaving at 21 m and re-entering at 20 m: 450 frames,
    // ± 15 (its position is set every 100 ms, frames are 20 ms). Without hysteresis it
    // would miss 500.
    let walker = played("alpha", "walker", "squad");
    let missed = full as i64 - walker as i64;
    eprintln!(
        "proximity: alpha→bravo {full} frames, walker missed {missed}; walker {w:?}",
        w = report
            .stream("alpha", "walker", "squad")
            .and_then(|st| st.placed)
    );
    assert!(
        (missed - 450).abs() <= 15,
        "walker missed {missed} frames: {}",
        show(&report)
    );
    assert!(report.drops.out_of_range > 0);
    // Loudest at 15 m (alpha behind it), silent at the edge of reach.
    let w = placed("alpha", "walker", "squad");
    let want = 20.0 * (1.0f32 - 13.0 / 18.0).log10() - 3.0;
    assert!(
        (w.max_gain_db - want).abs() < 0.5 && w.min_gain_db < -30.0,
        "{w:?}"
    );
    // Positional radio: everyone hears bravo; in-world listeners placed by distance,
    // echo (another world) and foxtrot (no position) unplaced at full gain.
    for to in ["alpha", "charlie", "delta", "echo", "foxtrot", "walker"] {
        assert!(
            played("bravo", to, "radio") >= 90,
            "{to}: {}",
            show(&report)
        );
    }
    let a = placed("bravo", "alpha", "radio");
    assert!(
        (a.max_gain_db - 0.0).abs() < 0.5 && (a.last_pan - 0.8).abs() < 0.01,
        "{a:?}"
    );
    let c = placed("bravo", "charlie", "radio");
    // Charlie: bravo 30.4 m away, behind and a little right.
    let distance = (25.0f32 + 900.0).sqrt();
    let want = 20.0 * (5.0 / distance).log10() - 3.0 * 30.0 / distance;
    assert!((c.max_gain_db - want).abs() < 0.5, "{c:?}");
    for unplaced in ["echo", "foxtrot"] {
        assert!(report
            .stream("bravo", unplaced, "radio")
            .unwrap()
            .placed
            .is_none());
    }
    assert!(s.position_at("walker", 9.0).unwrap().at[2] == 20.0);
}
