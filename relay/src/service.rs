//! Runs the relay: unlocks its key, and for each org it serves opens the charter mirror and
//! starts a node in relay mode (forwarding, relay v2 circuits, charter sync; no keys, no
//! presence) on the org's own port; serves `/metrics`, `/health` and the read-only API for all
//! of them; applies a re-read configuration (orgs added, removed or changed) without touching
//! the orgs that stayed; and on shutdown says goodbye to every link before it exits.
//!
//! Orgs share the process, not their state: each has its own socket, node, charter mirror,
//! queues and limits, so one org's flood meets its own limits (`config::Limits`) and its own
//! queue, and the others' links never notice a reload.

use crate::config::{OrgConfig, RelayConfig};
use crate::http::{serve, OrgStatus, Status};
use crate::metrics::RelayMetrics;
use crate::store::{CharterStore, StoreError};
use callsign_api::ApiToken;
use callsign_keys::{KeyFile, KeyFileError, NodeKeys};
use callsign_mesh::charter::CharterState;
use callsign_node::link::LinkSocket;
use callsign_node::runtime::{NodeError, NodeStats};
use callsign_node::{Node, NodeConfig, NodeEvent};
use libp2p::Multiaddr;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
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
    /// One org could not start.
    #[error("org {org}: {source}")]
    Org {
        org: String,
        source: Box<RelayError>,
    },
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

/// One org being served: its node runs on a single-threaded runtime on a thread of its own
/// until told to stop, so a busy org's work queues behind its own and orgs spread over the
/// host's cores. Why one thread: with two workers, every forwarded packet woke the other
/// worker several times over (about 40 context switches per packet); one thread took 25–30 %
/// fewer CPU-seconds per copy, with no more latency (`callsign-relay bench`, 2-core machine).
struct ServedOrg {
    config: OrgConfig,
    address: Multiaddr,
    stop: oneshot::Sender<()>,
    done: oneshot::Receiver<Result<NodeStats, NodeError>>,
    thread: std::thread::JoinHandle<()>,
}

/// A started relay.
pub struct Relay {
    keys: NodeKeys,
    config: RelayConfig,
    orgs: BTreeMap<String, ServedOrg>,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    metrics_addr: SocketAddr,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    /// Orgs that could not start, with why.
    pub failed: Vec<(String, String)>,
}

impl Relay {
    /// Starts every org in `config` (inside a tokio runtime); fails if any cannot start.
    pub async fn start(config: &RelayConfig) -> Result<Self, RelayError> {
        let keys = unlock(&config.key, config.passphrase_env.as_deref())?;
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
        let status = Arc::new(Mutex::new(Status {
            metrics: RelayMetrics::new(),
            peer_id: keys.identity.peer_id().to_string(),
            api_token: api_token(config)?,
            orgs: BTreeMap::new(),
            single: config.single,
        }));
        let mut orgs = BTreeMap::new();
        for org in &config.orgs {
            let served = start_org(&keys, config, org, &status).await?;
            orgs.insert(org.name.clone(), served);
        }
        let (stop, stopped) = watch::channel(false);
        let http = tokio::spawn(serve(listener, status.clone(), stopped));
        Ok(Self {
            keys,
            config: config.clone(),
            orgs,
            status,
            stop,
            http,
            metrics_addr,
        })
    }

    /// Where members reach the first org (QUIC).
    pub fn address(&self) -> &Multiaddr {
        let first = &self.config.orgs[0].name;
        &self.orgs[first].address
    }

    /// Where members reach each org, by name.
    pub fn addresses(&self) -> Vec<(String, Multiaddr)> {
        self.orgs
            .iter()
            .map(|(name, org)| (name.clone(), org.address.clone()))
            .collect()
    }

    /// Where `/metrics` and `/health` answer.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Runs until `shutdown` completes (or every org's node stops), applying each
    /// configuration that arrives on `reloads` (see [`Relay::reload`]); then closes every link
    /// and the HTTP endpoints, and returns each org's final counters.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut reloads: mpsc::UnboundedReceiver<RelayConfig>,
    ) -> Result<BTreeMap<String, NodeStats>, RelayError> {
        tokio::pin!(shutdown);
        let mut watch = tokio::time::interval(POLL_INTERVAL);
        let mut reloading = true;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                config = reloads.recv(), if reloading => match config {
                    Some(config) => {
                        let done = self.reload(&config).await;
                        tracing::info!(?done.started, ?done.stopped, ?done.failed, "reloaded");
                    }
                    None => reloading = false,
                },
                _ = watch.tick() => {
                    for (name, org) in &self.orgs {
                        if org.thread.is_finished() {
                            tracing::error!(org = %name, "the org's node stopped");
                        }
                    }
                    if self.orgs.values().all(|o| o.thread.is_finished()) {
                        break;
                    }
                }
            }
        }
        tracing::info!("shutting down");
        let mut last = BTreeMap::new();
        let names: Vec<String> = self.orgs.keys().cloned().collect();
        for name in names {
            if let Some(stats) = self.stop_org(&name).await? {
                last.insert(name, stats);
            }
        }
        let _ = self.stop.send(true);
        let _ = self.http.await;
        Ok(last)
    }

    /// Applies a re-read configuration: stops the orgs it no longer lists or whose section
    /// changed, then starts the new and changed ones. Orgs whose section is the same are not
    /// touched: their links stay up. Settings of the relay itself (key, metrics address,
    /// circuits, bootstrap, API, voice priority) take a restart; a change to them is logged and ignored.
    pub async fn reload(&mut self, config: &RelayConfig) -> Reloaded {
        let mut done = Reloaded::default();
        let itself = |c: &RelayConfig| {
            (
                c.key.clone(),
                c.passphrase_env.clone(),
                c.metrics,
                c.circuits,
                c.bootstrap.clone(),
                c.api_token_file.clone(),
                c.api_token_env.clone(),
                c.voice_priority,
            )
        };
        if itself(config) != itself(&self.config) {
            tracing::warn!(
                "key, metrics, circuits, bootstrap, API and voice priority settings take a restart"
            );
        }
        let stale: Vec<String> = self
            .orgs
            .iter()
            .filter(|(name, served)| config.org(name) != Some(&served.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            match self.stop_org(&name).await {
                Ok(_) => done.stopped.push(name),
                Err(e) => done.failed.push((name, e.to_string())),
            }
        }
        for org in &config.orgs {
            if self.orgs.contains_key(&org.name) {
                continue;
            }
            match start_org(&self.keys, &self.config, org, &self.status).await {
                Ok(served) => {
                    tracing::info!(org = %org.name, address = %served.address, "org started");
                    self.orgs.insert(org.name.clone(), served);
                    done.started.push(org.name.clone());
                }
                Err(e) => {
                    tracing::error!(org = %org.name, %e, "org did not start");
                    done.failed.push((org.name.clone(), e.to_string()));
                }
            }
        }
        self.config.orgs = config.orgs.clone();
        done
    }

    /// Stops one org's node (goodbyes to its links) and forgets its status and metrics.
    async fn stop_org(&mut self, name: &str) -> Result<Option<NodeStats>, RelayError> {
        let Some(org) = self.orgs.remove(name) else {
            return Ok(None);
        };
        let _ = org.stop.send(());
        let result = org.done.await;
        let _ = tokio::task::spawn_blocking(move || org.thread.join()).await;
        if let Ok(mut status) = self.status.lock() {
            status.orgs.remove(name);
            status.metrics.remove(name);
        }
        match result {
            Ok(stats) => Ok(Some(stats?)),
            // The thread panicked: nothing to report, and nothing left running.
            Err(_) => Ok(None),
        }
    }
}

/// Opens `org`'s mirror, starts its node and the task that serves it.
async fn start_org(
    keys: &NodeKeys,
    relay: &RelayConfig,
    org: &OrgConfig,
    status: &Arc<Mutex<Status>>,
) -> Result<ServedOrg, RelayError> {
    let store = CharterStore::open(
        &org.data_dir,
        org.charter.as_deref(),
        keys.identity.public(),
    )
    .map_err(|e| RelayError::Org {
        org: org.name.clone(),
        source: Box::new(e.into()),
    })?;
    if let Some(repair) = &store.repaired {
        tracing::warn!(org = %org.name, %repair, "charter log repaired");
    }
    let org_key = store.charter.org();
    tracing::info!(org = %org.name, key = %org_key, imported = store.imported,
        ops = store.charter.len(), "charter");
    let mut node_config = NodeConfig::new(keys.clone(), store.charter, "relay");
    node_config.listen = org.listen;
    node_config.bootstrap = relay
        .bootstrap
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .collect();
    node_config.relay_circuits = relay.circuits;
    // Voice over TCP rides members' control streams, which a relay does not forward.
    node_config.tcp_fallback = false;
    node_config.seed = rand::random();
    node_config.serve_as_relay(org.limits.forwarder());
    node_config.link.plane_rate = Some(org.limits.link_rate());
    node_config.link.handshake_rate = Some(org.limits.handshake_rate());
    node_config.link.max_connections = Some(org.limits.quic_connections);
    let org_error = |source: RelayError| RelayError::Org {
        org: org.name.clone(),
        source: Box::new(source),
    };
    if let Ok(mut status) = status.lock() {
        status.orgs.insert(
            org.name.clone(),
            OrgStatus {
                org: org_key.to_string(),
                address: String::new(),
                seen: None,
                links: 0,
                subscribers: 0,
                occupancy: Default::default(),
            },
        );
    }
    let (ready, started) = oneshot::channel::<Result<Multiaddr, NodeError>>();
    let (stop, stopped) = oneshot::channel();
    let (finished, done) = oneshot::channel();
    let (name, shared, log) = (org.name.clone(), status.clone(), store.log);
    let priority = relay.voice_priority;
    let thread = std::thread::Builder::new()
        .name(format!("org {}", org.name))
        .spawn(move || {
            // Sockets and timers only: with the process and signal drivers too, every
            // wake-up of a forwarding relay also looked for exited children.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(NodeError::Task(format!("runtime: {e}"))));
                    return;
                }
            };
            runtime.block_on(async move {
                // Read on a thread of its own: voice is forwarded there, without waking this
                // runtime for each packet.
                match LinkSocket::bind_tokio_read_apart(
                    node_config.listen,
                    node_config.dscp,
                    priority,
                ) {
                    Ok(socket) => node_config.socket = Some(socket),
                    Err(e) => {
                        let _ = ready.send(Err(NodeError::Link(e.into())));
                        return;
                    }
                }
                let node = match Node::start_with_log(node_config, Some(log)).await {
                    Ok(node) => node,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(node.address().clone()));
                let _ = finished.send(serve_org(name, node, shared, stopped).await);
            });
        })
        .map_err(|e| org_error(RelayError::Node(NodeError::Task(format!("thread: {e}")))))?;
    let started = started
        .await
        .unwrap_or_else(|_| Err(NodeError::Task("the org's thread ended".into())));
    let address = match started {
        Ok(address) => address,
        Err(e) => {
            let _ = thread.join();
            if let Ok(mut status) = status.lock() {
                status.orgs.remove(&org.name);
            }
            return Err(org_error(e.into()));
        }
    };
    if let Ok(mut status) = status.lock() {
        if let Some(entry) = status.orgs.get_mut(&org.name) {
            entry.address = address.to_string();
        }
    }
    Ok(ServedOrg {
        config: org.clone(),
        address,
        stop,
        done,
        thread,
    })
}

/// Follows one org's node (stats into the status once a second, events into the log) until
/// told to stop or the node stops; then shuts it down.
async fn serve_org(
    name: String,
    mut node: Node,
    status: Arc<Mutex<Status>>,
    mut stop: oneshot::Receiver<()>,
) -> Result<NodeStats, NodeError> {
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    // The channel names for the API, fetched again only when the charter changes.
    let mut charter: Option<CharterState> = None;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = poll.tick() => match node.stats().await {
                Ok(stats) => {
                    if charter.is_none() {
                        charter = node.control().charter().await.ok();
                    }
                    follow(&status, &name, stats, charter.as_ref());
                }
                Err(_) => break,
            },
            event = node.next_event() => match event {
                None => break,
                Some(event) => {
                    if matches!(event, NodeEvent::CharterChanged { .. }) {
                        charter = None;
                    }
                    log_event(&name, event);
                }
            },
        }
    }
    node.shutdown().await
}

fn follow(status: &Mutex<Status>, name: &str, stats: NodeStats, charter: Option<&CharterState>) {
    let Ok(mut status) = status.lock() else {
        return;
    };
    let status = &mut *status;
    let Some(org) = status.orgs.get_mut(name) else {
        return;
    };
    let now = Instant::now();
    org.seen = Some(now);
    org.occupancy.update(&stats, charter, now);
    org.links = stats.peers.len();
    org.subscribers = stats.forwarding.as_ref().map_or(0, |f| f.subscribers);
    status.metrics.update(name, &stats);
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

fn log_event(org: &str, event: NodeEvent) {
    match event {
        NodeEvent::LinkUp { peer, kind, .. } => tracing::info!(org, %peer, ?kind, "link up"),
        NodeEvent::LinkDown { peer } => tracing::info!(org, %peer, "link down"),
        NodeEvent::SubscriptionRefused { peer, reason } => {
            tracing::warn!(org, %peer, %reason, "subscription refused")
        }
        NodeEvent::CharterChanged { ops } => tracing::info!(org, ops, "charter changed"),
        NodeEvent::Warning(w) => tracing::warn!(org, "{w}"),
        NodeEvent::Reachability { addr, reachable } => {
            tracing::info!(org, %addr, reachable, "reachability")
        }
        _ => {}
    }
}
