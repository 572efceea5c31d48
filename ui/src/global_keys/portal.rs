//! Global push-to-talk on Wayland: the XDG desktop portal's GlobalShortcuts interface
//! (`org.freedesktop.portal.GlobalShortcuts`, through `ashpd`).
//!
//! A thread of ours runs the portal session on a small tokio runtime: it creates a session,
//! binds one shortcut per key (ids `ptt-0`, `ptt-1`, …, and `overlay`; the key we prefer is
//! only a hint, the desktop decides and may ask the user), and turns the portal's `Activated` /
//! `Deactivated` signals into presses and releases. Rebinding closes the session and binds
//! anew, since a session binds its shortcuts once. Only our one open session's shortcuts
//! carry our ids, so signals are matched by id.

use super::{deliver, Bindings};
use ashpd::desktop::global_shortcuts::{BindShortcutsOptions, GlobalShortcuts, NewShortcut};
use callsign_mesh::charter::ChannelId;
use callsign_node::NodeCommand;
use eframe::egui;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long [`PortalKeys::start`] waits for the portal to open a session.
pub const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// One shortcut to bind: id, description, preferred trigger.
type Wanted = (String, String, Option<String>);

/// A running portal session (see the module documentation).
pub struct PortalKeys {
    rebind: mpsc::UnboundedSender<Vec<Wanted>>,
    status: Arc<Mutex<Option<String>>>,
}

impl PortalKeys {
    /// Connects to the portal and opens a session, or says why not (no session bus, no
    /// portal, a portal without GlobalShortcuts) within [`CONNECT_WAIT`].
    pub(crate) fn start(
        bindings: Arc<Mutex<Bindings>>,
        commands: mpsc::UnboundedSender<NodeCommand>,
        ctx: Option<egui::Context>,
    ) -> Result<Self, String> {
        let (rebind, wanted) = mpsc::unbounded_channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let status = Arc::new(Mutex::new(None));
        let shared_status = status.clone();
        std::thread::Builder::new()
            .name("callsign-portal-keys".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(run(
                    bindings,
                    commands,
                    ctx,
                    wanted,
                    ready_tx,
                    shared_status,
                ));
            })
            .map_err(|e| e.to_string())?;
        match ready.recv_timeout(CONNECT_WAIT) {
            Ok(Ok(())) => Ok(Self { rebind, status }),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err("the desktop portal did not answer".into()),
        }
    }

    /// Binds these keys (and the overlay's) as shortcuts; returns the ids the bindings use.
    pub(crate) fn bind(
        &self,
        keys: &[(egui::Key, Vec<ChannelId>)],
        overlay: Option<egui::Key>,
    ) -> (BTreeMap<String, Vec<ChannelId>>, Option<String>) {
        let mut ids = BTreeMap::new();
        let mut wanted = Vec::new();
        for (i, (key, channels)) in keys.iter().enumerate() {
            let id = format!("ptt-{i}");
            wanted.push((
                id.clone(),
                format!("Push to talk ({})", key.name()),
                trigger(*key),
            ));
            ids.insert(id, channels.clone());
        }
        let overlay_id = overlay.map(|key| {
            wanted.push((
                "overlay".into(),
                "Show or hide the overlay".into(),
                trigger(key),
            ));
            "overlay".to_string()
        });
        let _ = self.rebind.send(wanted);
        (ids, overlay_id)
    }

    /// The keys the desktop assigned, or why it refused.
    pub fn status(&self) -> Option<String> {
        self.status.lock().ok()?.clone()
    }
}

/// An egui key as an XDG "shortcuts" trigger (keysym names: `F1`, `a`, `5`, `space`).
pub fn trigger(key: egui::Key) -> Option<String> {
    let name = key.name();
    let keysym = match key {
        egui::Key::Space => "space".to_string(),
        _ if name.len() == 1 => name.to_ascii_lowercase(),
        _ if name.starts_with('F') && name[1..].parse::<u8>().is_ok() => name.to_string(),
        _ => return None,
    };
    Some(keysym)
}

async fn run(
    bindings: Arc<Mutex<Bindings>>,
    commands: mpsc::UnboundedSender<NodeCommand>,
    ctx: Option<egui::Context>,
    mut wanted: mpsc::UnboundedReceiver<Vec<Wanted>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    status: Arc<Mutex<Option<String>>>,
) {
    let opened = async {
        // A connection of our own, on this thread's runtime: ashpd's shared one would live on
        // whichever runtime first made it.
        let connection = zbus::Connection::session().await?;
        let portal = GlobalShortcuts::with_connection(connection).await?;
        let activated = portal.receive_activated().await?;
        let deactivated = portal.receive_deactivated().await?;
        let session = portal.create_session(Default::default()).await?;
        Ok::<_, ashpd::Error>((portal, activated, deactivated, session))
    }
    .await;
    let (portal, activated, deactivated, mut session) = match opened {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let (mut activated, mut deactivated) = (Box::pin(activated), Box::pin(deactivated));
    let mut bound = false;
    let set_status = |text: String| {
        if let Ok(mut s) = status.lock() {
            *s = Some(text);
        }
    };
    loop {
        tokio::select! {
            next = wanted.recv() => {
                let Some(list) = next else { break };
                // A session binds once: a new set of keys needs a new session.
                if bound {
                    let _ = session.close().await;
                    match portal.create_session(Default::default()).await {
                        Ok(s) => session = s,
                        Err(e) => {
                            set_status(format!("the portal refused a new session: {e}"));
                            break;
                        }
                    }
                }
                let shortcuts: Vec<NewShortcut> = list
                    .iter()
                    .map(|(id, description, preferred)| {
                        NewShortcut::new(id.as_str(), description.as_str())
                            .preferred_trigger(preferred.as_deref())
                    })
                    .collect();
                bound = true;
                let answer = portal
                    .bind_shortcuts(&session, &shortcuts, None, BindShortcutsOptions::default())
                    .await
                    .and_then(|request| request.response());
                match answer {
                    Ok(bound) => {
                        let assigned: Vec<String> = bound
                            .shortcuts()
                            .iter()
                            .map(|s| format!("{}: {}", s.description(), s.trigger_description()))
                            .collect();
                        set_status(assigned.join(", "));
                    }
                    Err(e) => set_status(format!("the desktop refused the shortcuts: {e}")),
                }
            }
            Some(event) = activated.next() => {
                let command = bindings.lock().ok().and_then(|mut b| b.pressed(event.shortcut_id()));
                if !deliver(command, &commands, ctx.as_ref()) {
                    break;
                }
            }
            Some(event) = deactivated.next() => {
                let command = bindings.lock().ok().and_then(|mut b| b.released(event.shortcut_id()));
                if !deliver(command, &commands, ctx.as_ref()) {
                    break;
                }
            }
        }
    }
    let _ = session.close().await;
}
