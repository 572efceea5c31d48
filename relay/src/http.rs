//! `/metrics` (Prometheus text, every series labelled by org), `/health` (all orgs),
//! `/health/<org>` (one) and the read-only API (`/api/v1/occupancy[?org=<name>]`, behind a
//! bearer token) over HTTP/1.1 (hyper). An org is healthy while its node answers its stats
//! within [`STALE_AFTER`]; `/health` is `200` while every org is, `503` otherwise.

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
use std::collections::BTreeMap;
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
    pub peer_id: String,
    /// The read-only API's token; `None`: the API is off.
    pub api_token: Option<ApiToken>,
    /// Each org served, by name.
    pub orgs: BTreeMap<String, OrgStatus>,
    /// The configuration's original one-org form: `/health` also names the org at the top.
    pub single: bool,
}

/// One org's part of the status.
pub struct OrgStatus {
    /// The org's key.
    pub org: String,
    /// Where members reach it (multiaddr).
    pub address: String,
    /// When its node last answered.
    pub seen: Option<Instant>,
    pub links: usize,
    pub subscribers: usize,
    pub occupancy: Occupancy,
}

impl OrgStatus {
    fn fresh(&self) -> bool {
        self.seen.is_some_and(|t| t.elapsed() < STALE_AFTER)
    }

    fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "status": if self.fresh() { "ok" } else { "stalled" },
            "org": self.org,
            "address": self.address,
            "links": self.links,
            "subscribers": self.subscribers,
        })
    }
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
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
            let fresh = !status.orgs.is_empty() && status.orgs.values().all(OrgStatus::fresh);
            let mut body = serde_json::json!({
                "status": if fresh { "ok" } else { "stalled" },
                "peer_id": status.peer_id,
                "links": status.orgs.values().map(|o| o.links).sum::<usize>(),
                "subscribers": status.orgs.values().map(|o| o.subscribers).sum::<usize>(),
                "orgs": status.orgs.iter()
                    .map(|(name, org)| (name.clone(), org.health()))
                    .collect::<serde_json::Map<_, _>>(),
            });
            if let (true, Some(org)) = (status.single, status.orgs.values().next()) {
                body["org"] = org.org.clone().into();
            }
            text(code(fresh), "application/json", format!("{body}\n"))
        }
        path if path.starts_with("/health/") => match status.orgs.get(&path["/health/".len()..]) {
            Some(org) => text(
                code(org.fresh()),
                "application/json",
                format!("{}\n", org.health()),
            ),
            None => text(StatusCode::NOT_FOUND, "text/plain", "no such org\n".into()),
        },
        "/api/v1/occupancy" => occupancy(request, &status),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /health, /health/<org> or /api/v1/occupancy\n".into(),
        ),
    }
}

/// Subscribers and packet rates per channel of one org (`?org=<name>`, which may be left out
/// when the relay serves one), for a bearer of the API's token.
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
    let named = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("org="));
    let org = match (named, status.orgs.len()) {
        (Some(name), _) => status.orgs.get(name),
        (None, 1) => status.orgs.values().next(),
        (None, _) => {
            let names: Vec<&String> = status.orgs.keys().collect();
            let why = format!("this relay serves several orgs: add ?org=<name>, one of {names:?}");
            return json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": why }));
        }
    };
    let Some(org) = org else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "no such org" }),
        );
    };
    json(
        StatusCode::OK,
        serde_json::json!({
            "org": org.org,
            "subscribers": org.occupancy.subscribers,
            "channels": org.occupancy.channels,
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
