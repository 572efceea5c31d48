//! How fast the simulator runs the real node stack: the 8-node, 60-second `wing-8` scenario,
//! virtual seconds per wall second. Run with `cargo bench -p callsign-sim --bench wall`.

use callsign_sim::{run, Scenario};
use std::path::Path;
use std::time::Instant;

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/wing-8.toml");
    let text = std::fs::read_to_string(&path).expect("wing-8 scenario");
    let scenario = Scenario::parse(&text).expect("valid scenario");
    let mut best = f64::MAX;
    for round in 0..3 {
        let wall = Instant::now();
        let report = run(&scenario, None).expect("run");
        let secs = wall.elapsed().as_secs_f64();
        best = best.min(secs);
        println!(
            "round {round}: {} nodes, {:.0} s virtual in {secs:.2} s wall ({:.1}x), delivery {:.3}, hash {}",
            scenario.nodes.len(),
            scenario.duration_s,
            scenario.duration_s / secs,
            report.delivery(),
            &report.trace_hash[..16]
        );
    }
    println!(
        "best: {best:.2} s wall for {:.0} s virtual = {:.1}x real time (target: under 60 s wall)",
        scenario.duration_s,
        scenario.duration_s / best
    );
}
