//! Shared by the member tests.

pub mod net;
