//! Chaos: generated scenarios are valid and reproducible, and a fixed small batch of seeds
//! keeps every invariant (the long batch is `callsign sim chaos --seeds 1000`, see
//! docs/scenarios.md).

use callsign_sim::chaos::{generate, run_seed, ProbeTarget};
use callsign_sim::Scenario;

#[test]
fn generated_scenarios_are_valid_files_and_the_same_for_a_seed() {
    let mut sizes = std::collections::BTreeSet::new();
    for seed in 0..300 {
        let (scenario, plan) = generate(seed);
        let text = toml::to_string(&scenario).unwrap();
        let parsed = Scenario::parse(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        assert_eq!(parsed, scenario, "seed {seed} survives its file form");
        assert_eq!(
            generate(seed).0,
            scenario,
            "seed {seed} generates one scenario"
        );
        assert!(plan.heal_s < scenario.measure_from_s.unwrap());
        // Removed members stay gone (seed 194 once restarted one at the heal and whispered
        // to it).
        for probe in &plan.probes {
            let whispered = match &probe.target {
                ProbeTarget::Whisper(to) => Some(to),
                ProbeTarget::Channel(_) | ProbeTarget::Simulcast(_) => None,
            };
            for name in std::iter::once(&probe.talker).chain(whispered) {
                assert!(
                    !plan.removed.contains(name),
                    "seed {seed}: probe with {name}"
                );
            }
        }
        sizes.insert(scenario.nodes.iter().filter(|n| n.member).count());
    }
    assert!(sizes.contains(&3) && sizes.contains(&30), "{sizes:?}");
}

fn keep_every_invariant(seeds: &[u64]) {
    for &seed in seeds {
        let run = run_seed(seed);
        assert!(
            run.violations.is_empty(),
            "seed {seed} (replay: callsign sim chaos --seed {seed}): {:#?}",
            run.violations
        );
    }
}

#[test]
fn a_small_batch_keeps_every_invariant() {
    // Determinism is checked by `callsign sim chaos` in child processes (tests/sim.rs).
    keep_every_invariant(&[1, 2, 3]);
}

/// Seeds of the long batch that found bugs, each small enough to run here. The generator has
/// changed since the first four were found, so they now make other scenarios (kept as more
/// coverage): 259 (a member relay restarted its session with a member and forgot its
/// subscription), 363 (a dial back to a restarted member went to the addresses of its first
/// presence record), 353 (a NAT-held dial completed late and replaced live links, flapping
/// the floor) and 91 (two members linked through a rented relay's circuit never tried a
/// direct link, and fell apart when the relay crashed). Under today's generator: 120083 (a
/// member restarted on a new port; a peer kept its link to the old run for 18 s, because only
/// the restarted member's first record was compared with the address the link went to),
/// 130494 (the only public member's probe was lost with a partition; it took itself for
/// unreachable for a minute and offered no circuits after the heal).
#[test]
fn seeds_that_found_bugs_keep_every_invariant() {
    keep_every_invariant(&[259, 363, 353, 91, 120083, 130494]);
}

/// The larger seeds of the long batch that found bugs (20 to 30 members: a minute or more in
/// a debug build, so not in every CI run; `cargo test --release -p callsign-sim --test chaos
/// -- --ignored`): 454 (a fresh responder waited forever for an initiator that kept its
/// session), 490 (loss-based congestion control starved a relay's floor rulings on a long
/// lossy path), 817 (a floor release lost in a burst), 866 (members found a restarted relay
/// 12 s late), 947 (crossing dials replaced each other; then the floor check counted the first
/// seconds, before links to symmetric-NAT members existed), 130390 (a member that left behind
/// a partition kept its connection to the only member relay until QUIC's idle timeout, and
/// the circuit handshakes sent to it held every admission slot: no circuit opened for 20 s),
/// 130975 (a member relay's link, silent through a 12 s partition, was left to QUIC's backed-off
/// retransmissions and died 8 s after the heal; the talker behind it went unheard).
#[test]
#[ignore = "slow in debug builds: run with --release -- --ignored"]
fn large_seeds_that_found_bugs_keep_every_invariant() {
    keep_every_invariant(&[454, 490, 817, 866, 947, 130390, 130975]);
}

#[test]
fn the_delivery_bar_follows_the_base_links_own_loss() {
    use callsign_sim::chaos::{min_delivery, MIN_DELIVERY};
    use callsign_sim::scenario::Burst;
    let (mut scenario, _) = generate(1);
    scenario.link.loss = 0.0;
    scenario.link.burst = None;
    scenario.link.reorder = 0.0;
    assert_eq!(min_delivery(&scenario, 125), MIN_DELIVERY);
    // 2 % held back by 30 ms: as late as lost for the jitter buffer, like 2 % loss below.
    scenario.link.reorder = 0.02;
    scenario.link.reorder_ms = 30.0;
    let reordered = min_delivery(&scenario, 125);
    assert!((0.85..0.90).contains(&reordered), "{reordered}");
    // Held back by nothing: nothing overtakes it.
    scenario.link.reorder_ms = 0.0;
    assert_eq!(min_delivery(&scenario, 125), MIN_DELIVERY);
    scenario.link.reorder = 0.0;
    // 2 % uniform: 96 % through two hops, less four deviations over 125 frames.
    scenario.link.loss = 0.02;
    let uniform = min_delivery(&scenario, 125);
    assert!((0.85..0.90).contains(&uniform), "{uniform}");
    // 1.6 % uniform plus bursts 12 % of the time: about 13 % lost per hop, and bursty.
    scenario.link.loss = 0.016;
    scenario.link.burst = Some(Burst {
        p: 0.04,
        r: 0.3,
        bad_loss: 1.0,
    });
    let bar = min_delivery(&scenario, 125);
    assert!((0.3..0.45).contains(&bar), "{bar}");
    // A listener cut off for a second (50 of 125 frames) fails on a clean or a 2 % link.
    scenario.link.loss = 0.02;
    scenario.link.burst = None;
    assert!(min_delivery(&scenario, 125) > 75.0 / 125.0);
}
