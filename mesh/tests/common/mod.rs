//! Shared by the member tests.

// Each test binary uses part of the helpers.
#[allow(dead_code)]
pub mod net;
