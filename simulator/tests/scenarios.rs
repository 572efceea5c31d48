//! The scenario suite: each example scenario runs on the real node stack in virtual time and
//! its report is checked; runs replay exactly from their seed.

use callsign_sim::{run, Report, Scenario};
use std::path::Path;

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/scenarios")
        .join(format!("{name}.toml"));
    Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

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
