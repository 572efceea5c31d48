//! callsign-api: the local control API of one running node, for bots, dashboards and
//! overlays: HTTP + JSON requests and a server-sent event stream (docs/api.md).
//!
//! It owns the HTTP server (`axum`), the bearer token that guards it ([`ApiToken`]: random,
//! in a 0600 file), and a view of the node's events (roster, talkers, numbered events). It
//! talks to the node only through [`callsign_node::NodeControl`] commands and the events its
//! owner hands to [`ApiServer::publish`].
//!
//! It must not make protocol decisions (the charter, checked by the node, is the authority:
//! admin edits are signed by this node's key and refused unless the charter allows them), and
//! must not serve beyond loopback unless told to.

mod audio;
mod edits;
mod error;
mod routes;
mod server;
mod spatial;
mod token;
mod view;

pub use error::ApiError;
pub use server::{ApiConfig, ApiServer};
pub use token::{ApiToken, MIN_TOKEN_LEN};
pub use view::{ApiEvent, RosterEntry};
