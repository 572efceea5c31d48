//! The app's line to its node: commands go out on a channel, events come back on another, and
//! the node runs on its own tokio runtime threads, so the UI thread never waits for it. When
//! the user turned it on, the local control API runs beside the node on the same runtime.

use crate::UiError;
use callsign_api::{ApiConfig, ApiServer};
use callsign_mesh::charter::log::OpLog;
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent};
use tokio::sync::mpsc;

/// See the module documentation.
pub struct NodeBridge {
    commands: mpsc::UnboundedSender<NodeCommand>,
    events: mpsc::UnboundedReceiver<NodeEvent>,
    /// Where others dial the node, once known.
    pub address: Option<String>,
    /// The local control API: where it serves, or why it does not (`None`: not asked for).
    pub api: Option<Result<std::net::SocketAddr, String>>,
    // Dropped last: stopping it stops the node.
    _runtime: Option<tokio::runtime::Runtime>,
}

impl NodeBridge {
    /// Starts a node from `config` (appending charter ops to `log`) on a runtime of its own,
    /// and the local control API beside it if `api` asks (an API that cannot start is
    /// reported in [`NodeBridge::api`]; the node runs anyway).
    pub fn start(config: NodeConfig, log: OpLog, api: Option<ApiConfig>) -> Result<Self, UiError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("callsign-node")
            .enable_all()
            .build()?;
        let mut node = runtime.block_on(Node::start_with_log(config, Some(log)))?;
        let address = Some(node.address().to_string());
        let server = api.map(|mut api| {
            api.address = node.address().to_string();
            runtime
                .block_on(ApiServer::start(api, node.control()))
                .map_err(|e| e.to_string())
        });
        let api = server
            .as_ref()
            .map(|s| s.as_ref().map(ApiServer::local_addr).map_err(Clone::clone));
        if let Some(Err(e)) = &api {
            tracing::warn!("local API not started: {e}");
        }
        let server = server.and_then(Result::ok);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, mut commands_rx) = mpsc::unbounded_channel::<NodeCommand>();
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    event = node.next_event() => match event {
                        Some(event) => {
                            if let Some(server) = &server {
                                server.publish(&event);
                            }
                            // The app may be gone; the node keeps running until told.
                            let _ = events_tx.send(event);
                        }
                        None => break,
                    },
                    command = commands_rx.recv() => match command {
                        Some(command) => {
                            if node.command(command).is_err() {
                                break;
                            }
                        }
                        None => {
                            let _ = node.shutdown().await;
                            break;
                        }
                    },
                }
            }
        });
        Ok(Self {
            commands,
            events,
            address,
            api,
            _runtime: Some(runtime),
        })
    }

    /// A bridge to a node the caller drives through the far ends of these channels (a node
    /// embedded elsewhere, or a test standing in the node's place at this boundary).
    pub fn from_channels(
        commands: mpsc::UnboundedSender<NodeCommand>,
        events: mpsc::UnboundedReceiver<NodeEvent>,
    ) -> Self {
        Self {
            commands,
            events,
            address: None,
            api: None,
            _runtime: None,
        }
    }

    /// A sender of commands for another thread of the app (the global keys).
    pub fn commands(&self) -> mpsc::UnboundedSender<NodeCommand> {
        self.commands.clone()
    }

    /// Sends a command; a stopped node is reported by the next frame's lack of events.
    pub fn command(&self, command: NodeCommand) {
        let _ = self.commands.send(command);
    }

    /// The next event, if one is waiting.
    pub fn try_event(&mut self) -> Option<NodeEvent> {
        self.events.try_recv().ok()
    }
}
