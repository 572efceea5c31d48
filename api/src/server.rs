//! The HTTP server: binding (loopback unless asked), bearer-token checks, and the event hub
//! the node's owner feeds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use callsign_keys::Identity;
use callsign_mesh::charter::ChannelId;
use callsign_node::runtime::AudioSettings;
use callsign_node::{NodeControl, NodeEvent};
use tokio::sync::{broadcast, oneshot};

use crate::view::{ApiEvent, View};
use crate::{routes, ApiError, ApiToken};

/// How many events a slow event-stream client may fall behind before it is told it missed
/// some (`lagged`).
const EVENT_BACKLOG: usize = 1024;

/// What the API serves and how.
pub struct ApiConfig {
    /// Where to listen. Loopback unless `allow_remote`.
    pub addr: SocketAddr,
    /// Accept a non-loopback `addr` (the token then crosses a network in clear text: only
    /// behind something that adds TLS).
    pub allow_remote: bool,
    pub token: ApiToken,
    /// The node's identity: it signs invite grants (the node signs charter edits itself).
    pub identity: Identity,
    /// Our display name.
    pub name: String,
    /// Where others dial this node.
    pub address: String,
    /// The channels the node listens on at start.
    pub listening: Vec<ChannelId>,
    /// The audio settings the node started with.
    pub audio: AudioSettings,
}

/// State shared by the handlers.
pub(crate) struct Shared {
    pub control: NodeControl,
    pub token: ApiToken,
    pub identity: Identity,
    pub name: String,
    pub address: String,
    pub view: Mutex<View>,
    pub listening: Mutex<BTreeSet<ChannelId>>,
    pub audio: Mutex<AudioSettings>,
    pub events: broadcast::Sender<ApiEvent>,
}

impl Shared {
    pub fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn audio(&self) -> std::sync::MutexGuard<'_, AudioSettings> {
        self.audio.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn listening(&self) -> std::sync::MutexGuard<'_, BTreeSet<ChannelId>> {
        self.listening.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running API. The node's owner hands it every event ([`ApiServer::publish`]); dropping
/// it (or [`ApiServer::shutdown`]) stops serving.
pub struct ApiServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: ApiConfig, control: NodeControl) -> Result<Self, ApiError> {
        if !config.addr.ip().is_loopback() && !config.allow_remote {
            return Err(ApiError::Config(format!(
                "refusing to serve the API on {}: it is not a loopback address (allow it \
                 explicitly, and put TLS in front: the token would cross the network in clear)",
                config.addr
            )));
        }
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ApiError::Bind {
                addr: config.addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: config.addr,
            source,
        })?;
        let charter = control.charter().await?;
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let shared = Arc::new(Shared {
            control,
            token: config.token,
            identity: config.identity,
            name: config.name,
            address: config.address,
            view: Mutex::new(View::new(charter)),
            listening: Mutex::new(config.listening.into_iter().collect()),
            audio: Mutex::new(config.audio),
            events,
        });
        let app = routes::router(shared.clone()).layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("local API stopped: {e}");
            }
        });
        tracing::info!(%local_addr, "local API listening");
        Ok(Self {
            shared,
            local_addr,
            stop: Some(stop),
            task,
        })
    }

    /// Where it listens (the port, when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Takes one of the node's events: updates the roster and talkers and sends it to every
    /// event-stream client. A charter change also refreshes the channel names.
    pub fn publish(&self, event: &NodeEvent) {
        let api_event = self.shared.view().take(event);
        if matches!(event, NodeEvent::CharterChanged { .. }) {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Ok(charter) = shared.control.charter().await {
                    shared.view().charter = Some(charter);
                }
            });
        }
        if let Some(api_event) = api_event {
            // No client listening is fine.
            let _ = self.shared.events.send(api_event);
        }
    }

    /// Stops serving and waits for open requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Every request must carry `Authorization: Bearer <token>`.
async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing bearer token"))?
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized("malformed Authorization header"))?;
    if !shared.token.matches(presented.trim()) {
        return Err(ApiError::Unauthorized("wrong bearer token"));
    }
    Ok(next.run(request).await)
}
