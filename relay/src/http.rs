//! `/metrics` (Prometheus text), `/health` and the read-only API (`/api/v1/occupancy`, behind
//! a bearer token) over HTTP/1.1 (hyper). Health is `200` while the node answers its stats
//! within [`STALE_AFTER`], `503` otherwise.

use crate::metrics::RelayMetrics;
use crate::occupancy::Occupancy;
use bytes::Bytes;
use callsign_api::ApiToken;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A relay whose node has not answered for this long is unhealthy.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// What the endpoints show, updated by the service.
pub struct Status {
    pub metrics: RelayMetrics,
    /// When the node last answered.
    pub seen: Option<Instant>,
    pub peer_id: String,
    pub org: String,
    pub links: usize,
    pub subscribers: usize,
    /// The read-only API's token; `None`: the API is off.
    pub api_token: Option<ApiToken>,
    pub occupancy: Occupancy,
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn answer(request: &Request<Incoming>, status: &Mutex<Status>) -> Response<Full<Bytes>> {
    let Ok(status) = status.lock() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "poisoned\n".into(),
        );
    };
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            status.metrics.render(),
        ),
        "/health" => {
            let fresh = status.seen.is_some_and(|t| t.elapsed() < STALE_AFTER);
            let body = serde_json::json!({
                "status": if fresh { "ok" } else { "stalled" },
                "peer_id": status.peer_id,
                "org": status.org,
                "links": status.links,
                "subscribers": status.subscribers,
            });
            let code = if fresh {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, "application/json", format!("{body}\n"))
        }
        "/api/v1/occupancy" => occupancy(request, &status),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /health or /api/v1/occupancy\n".into(),
        ),
    }
}

/// Subscribers and packet rates per channel, for a bearer of the API's token.
fn occupancy(request: &Request<Incoming>, status: &Status) -> Response<Full<Bytes>> {
    let json = |code: StatusCode, body: serde_json::Value| {
        text(code, "application/json", format!("{body}\n"))
    };
    let Some(token) = &status.api_token else {
        let why = "the API is off: set api_token_file in the relay's config";
        return json(StatusCode::NOT_FOUND, serde_json::json!({ "error": why }));
    };
    let presented = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| token.matches(p.trim())) {
        let mut refused = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "missing or wrong bearer token" }),
        );
        refused.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return refused;
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "org": status.org,
            "subscribers": status.occupancy.subscribers,
            "channels": status.occupancy.channels,
        }),
    )
}

/// Serves until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Mutex<Status>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%e, "metrics listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &status);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%e, "metrics connection");
            }
        });
    }
}
