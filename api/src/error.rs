//! Errors: starting the API, and the answers a request can get.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Why the API did not start, or why a request failed (each maps to one HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A setting that cannot work (a non-loopback bind not allowed, a weak token, a token
    /// file that cannot be written).
    #[error("{0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// 401: no token, or the wrong one.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 400: a body that is not the JSON the endpoint takes, or names nothing we know.
    #[error("{0}")]
    BadRequest(String),
    /// 403: the charter does not let this node do it.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such channel, member or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// 409: allowed, but it would change nothing.
    #[error("{0}")]
    Conflict(String),
    /// 503: the node has stopped.
    #[error("the node has stopped")]
    NodeStopped,
}

impl From<callsign_node::runtime::NodeError> for ApiError {
    fn from(_: callsign_node::runtime::NodeError) -> Self {
        ApiError::NodeStopped
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NodeStopped => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Config(_) | ApiError::Bind { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = Json(json!({ "error": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}
