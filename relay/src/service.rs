//! Runs the relay: unlocks its key, opens the charter mirror, starts the node in relay mode
//! (forwarding, relay v2 circuits, charter sync; no keys, no presence), serves `/metrics`,
//! `/health` and the read-only API, and on shutdown says goodbye to every link before it exits.

use crate::config::RelayConfig;
use crate::http::{serve, Status};
use crate::metrics::RelayMetrics;
use crate::store::{CharterStore, StoreError};
use callsign_api::ApiToken;
use callsign_keys::{KeyFile, KeyFileError, NodeKeys};
use callsign_mesh::charter::CharterState;
use callsign_node::runtime::{NodeError, NodeStats};
use callsign_node::{Node, NodeConfig, NodeEvent};
use libp2p::Multiaddr;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the metrics follow the node's counters.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("key file {path}: {source}")]
    Key { path: String, source: KeyFileError },
    #[error("the key file is encrypted: set passphrase_env and that variable")]
    Passphrase,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("node: {0}")]
    Node(#[from] NodeError),
    #[error("metrics address {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The read-only API's token cannot be had (a weak or unset token, an unwritable file).
    #[error("API token: {0}")]
    Api(String),
}

/// Unlocks the relay's key file; the passphrase, if any, comes from the variable `env`.
pub fn unlock(path: &Path, env: Option<&str>) -> Result<NodeKeys, RelayError> {
    let key_error = |source| RelayError::Key {
        path: path.display().to_string(),
        source,
    };
    let file = KeyFile::load(path).map_err(key_error)?;
    let passphrase = env.and_then(|var| std::env::var(var).ok());
    if file.is_encrypted() && passphrase.is_none() {
        return Err(RelayError::Passphrase);
    }
    file.unlock(passphrase.as_deref().map(str::as_bytes))
        .map_err(key_error)
}

/// A started relay.
pub struct Relay {
    node: Node,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    metrics_addr: SocketAddr,
}

impl Relay {
    /// Starts from `config` (inside a tokio runtime).
    pub async fn start(config: &RelayConfig) -> Result<Self, RelayError> {
        let keys = unlock(&config.key, config.passphrase_env.as_deref())?;
        let store = CharterStore::open(
            &config.data_dir,
            config.org.charter.as_deref(),
            keys.identity.public(),
        )?;
        if let Some(repair) = &store.repaired {
            tracing::warn!(%repair, "charter log repaired");
        }
        let org = store.charter.org();
        tracing::info!(%org, imported = store.imported, ops = store.charter.len(), "charter");
        let mut node_config = NodeConfig::new(keys, store.charter, "relay");
        node_config.listen = config.listen;
        node_config.bootstrap = config
            .bootstrap
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .collect();
        node_config.relay_circuits = config.circuits;
        // Voice over TCP rides members' control streams, which a relay does not forward.
        node_config.tcp_fallback = false;
        node_config.seed = rand::random();
        node_config.serve_as_relay(config.limits.forwarder());
        let listener = tokio::net::TcpListener::bind(config.metrics)
            .await
            .map_err(|source| RelayError::Metrics {
                addr: config.metrics,
                source,
            })?;
        let metrics_addr = listener
            .local_addr()
            .map_err(|source| RelayError::Metrics {
                addr: config.metrics,
                source,
            })?;
        let api_token = api_token(config)?;
        let node = Node::start_with_log(node_config, Some(store.log)).await?;
        let status = Arc::new(Mutex::new(Status {
            metrics: RelayMetrics::new(),
            seen: None,
            peer_id: node.peer_id().to_string(),
            org: org.to_string(),
            links: 0,
            subscribers: 0,
            api_token,
            occupancy: Default::default(),
        }));
        let (stop, stopped) = watch::channel(false);
        let http = tokio::spawn(serve(listener, status.clone(), stopped));
        Ok(Self {
            node,
            status,
            stop,
            http,
            metrics_addr,
        })
    }

    /// Where members reach the relay (QUIC).
    pub fn address(&self) -> &Multiaddr {
        self.node.address()
    }

    /// Where `/metrics` and `/health` answer.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Runs until `shutdown` completes (or the node stops), then closes every link and the
    /// HTTP endpoints, and returns the final counters.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<NodeStats, RelayError> {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        tokio::pin!(shutdown);
        // The channel names for the API, fetched again only when the charter changes.
        let mut charter: Option<CharterState> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = poll.tick() => match self.node.stats().await {
                    Ok(stats) => {
                        if charter.is_none() {
                            charter = self.node.control().charter().await.ok();
                        }
                        self.follow(stats, charter.as_ref());
                    }
                    Err(_) => break,
                },
                event = self.node.next_event() => match event {
                    None => break,
                    Some(event) => {
                        if matches!(event, NodeEvent::CharterChanged { .. }) {
                            charter = None;
                        }
                        log_event(event);
                    }
                },
            }
        }
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        let result = self.node.shutdown().await;
        let _ = self.http.await;
        Ok(result?)
    }

    fn follow(&self, stats: NodeStats, charter: Option<&CharterState>) {
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        let now = Instant::now();
        status.seen = Some(now);
        status.occupancy.update(&stats, charter, now);
        status.links = stats.peers.len();
        status.subscribers = stats.forwarding.as_ref().map_or(0, |f| f.subscribers);
        status.metrics.update(stats);
    }
}

/// The read-only API's token, written to its file (0600) at start; `None` without a file.
fn api_token(config: &RelayConfig) -> Result<Option<ApiToken>, RelayError> {
    let Some(file) = &config.api_token_file else {
        return Ok(None);
    };
    let token = match &config.api_token_env {
        Some(var) => {
            let value = std::env::var(var)
                .map_err(|_| RelayError::Api(format!("api_token_env: ${var} is not set")))?;
            ApiToken::new(&value).map_err(|e| RelayError::Api(e.to_string()))?
        }
        None => ApiToken::generate(),
    };
    token
        .write_to(file)
        .map_err(|e| RelayError::Api(e.to_string()))?;
    tracing::info!(file = %file.display(), "API token written");
    Ok(Some(token))
}

fn log_event(event: NodeEvent) {
    match event {
        NodeEvent::LinkUp { peer, kind, .. } => tracing::info!(%peer, ?kind, "link up"),
        NodeEvent::LinkDown { peer } => tracing::info!(%peer, "link down"),
        NodeEvent::SubscriptionRefused { peer, reason } => {
            tracing::warn!(%peer, %reason, "subscription refused")
        }
        NodeEvent::CharterChanged { ops } => tracing::info!(ops, "charter changed"),
        NodeEvent::Warning(w) => tracing::warn!("{w}"),
        NodeEvent::Reachability { addr, reachable } => {
            tracing::info!(%addr, reachable, "reachability")
        }
        _ => {}
    }
}
