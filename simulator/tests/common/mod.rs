//! Shared by the scenario test files.

use callsign_sim::Scenario;
use std::path::Path;

/// An example scenario by name (`examples/scenarios/<name>.toml`).
pub fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/scenarios")
        .join(format!("{name}.toml"));
    Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
}
