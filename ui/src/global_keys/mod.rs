//! Push-to-talk keys that work while another window (the game) has focus.
//!
//! Two backends:
//! - X11, Windows and macOS: the `global-hotkey` crate grabs the keys. A thread of ours takes
//!   its key events.
//! - Wayland: the XDG GlobalShortcuts portal ([`portal`], through `ashpd`). The desktop asks the
//!   user to confirm the shortcuts once, and may assign other keys than the ones we prefer; the
//!   settings show what it assigned.
//!
//! Either way, presses go as `PttDown`/`PttUp` straight to the node, so keying works even while
//! the window is minimised and egui draws nothing, and egui is asked to repaint so the TX light
//! follows. The overlay's key toggles the overlay.
//!
//! Where neither works (a Wayland session whose desktop has no GlobalShortcuts portal, and no
//! XWayland display; or no display at all), the window's own keys still work while it has
//! focus. macOS asks for the accessibility permission.

#[cfg(target_os = "linux")]
pub mod portal;

use callsign_mesh::charter::ChannelId;
use callsign_node::NodeCommand;
use eframe::egui;
use global_hotkey::hotkey::{Code, HotKey};
use global_hotkey::{GlobalHotKeyEvent, GlobalHotKeyManager, HotKeyState};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// What each bound key transmits on, which one is held, and the overlay key's presses. Keys
/// are named by the backend's ids (a hotkey's number, a portal shortcut's id).
#[derive(Default)]
pub(crate) struct Bindings {
    channels: BTreeMap<String, Vec<ChannelId>>,
    held: Option<String>,
    /// The key that shows and hides the overlay.
    overlay: Option<String>,
    /// Overlay toggles not yet taken by the app.
    overlay_presses: u32,
}

impl Bindings {
    /// A key went down: the command to send, if any.
    pub(crate) fn pressed(&mut self, id: &str) -> Option<NodeCommand> {
        if self.overlay.as_deref() == Some(id) {
            self.overlay_presses += 1;
            return None;
        }
        if self.held.is_some() {
            return None;
        }
        let channels = self.channels.get(id).cloned()?;
        self.held = Some(id.to_string());
        Some(NodeCommand::PttDown(channels))
    }

    /// A key went up: the command to send, if any.
    pub(crate) fn released(&mut self, id: &str) -> Option<NodeCommand> {
        if self.held.as_deref() != Some(id) {
            return None;
        }
        self.held = None;
        Some(NodeCommand::PttUp)
    }
}

/// Sends what a key event asks for, and repaints.
pub(crate) fn deliver(
    command: Option<NodeCommand>,
    commands: &UnboundedSender<NodeCommand>,
    ctx: Option<&egui::Context>,
) -> bool {
    if let Some(command) = command {
        if commands.send(command).is_err() {
            return false;
        }
    }
    if let Some(ctx) = ctx {
        ctx.request_repaint();
    }
    true
}

enum Backend {
    Hotkeys {
        manager: GlobalHotKeyManager,
        registered: Vec<HotKey>,
    },
    #[cfg(target_os = "linux")]
    Portal(portal::PortalKeys),
}

/// See the module documentation.
pub struct GlobalKeys {
    backend: Backend,
    bindings: Arc<Mutex<Bindings>>,
    stop: Arc<AtomicBool>,
}

/// Why key grabs (the `global-hotkey` backend) are not available here.
pub fn unavailable_reason() -> Option<&'static str> {
    if cfg!(target_os = "linux") && std::env::var_os("DISPLAY").is_none() {
        return Some(if std::env::var_os("WAYLAND_DISPLAY").is_some() {
            "this Wayland desktop offers no global shortcuts portal and there is no XWayland \
             display: keys work while this window has focus"
        } else {
            "no X11 display: keys work while this window has focus"
        });
    }
    None
}

impl GlobalKeys {
    /// Starts listening; key events go to the node through `commands`, and `ctx` repaints. In
    /// a Wayland session the GlobalShortcuts portal is tried first (waiting up to
    /// [`portal::CONNECT_WAIT`] for it), then X11 key grabs through XWayland.
    pub fn start(
        commands: UnboundedSender<NodeCommand>,
        ctx: Option<egui::Context>,
    ) -> Result<Self, String> {
        let bindings = Arc::new(Mutex::new(Bindings::default()));
        let stop = Arc::new(AtomicBool::new(false));
        #[cfg(target_os = "linux")]
        let mut portal_failure = None;
        #[cfg(target_os = "linux")]
        if std::env::var_os("WAYLAND_DISPLAY").is_some() {
            match portal::PortalKeys::start(bindings.clone(), commands.clone(), ctx.clone()) {
                Ok(portal) => {
                    return Ok(Self {
                        backend: Backend::Portal(portal),
                        bindings,
                        stop,
                    })
                }
                Err(reason) => {
                    tracing::info!(%reason, "no global shortcuts portal; trying X11 key grabs");
                    portal_failure = Some(reason);
                }
            }
        }
        if let Some(reason) = unavailable_reason() {
            #[cfg(target_os = "linux")]
            if let Some(portal) = portal_failure {
                return Err(format!("{reason} (portal: {portal})"));
            }
            return Err(reason.into());
        }
        let manager = GlobalHotKeyManager::new().map_err(|e| e.to_string())?;
        let (shared, stopped) = (bindings.clone(), stop.clone());
        std::thread::Builder::new()
            .name("callsign-global-keys".into())
            .spawn(move || {
                let events = GlobalHotKeyEvent::receiver();
                while !stopped.load(Ordering::Relaxed) {
                    let Ok(event) = events.recv_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    let id = event.id.to_string();
                    let command = {
                        let Ok(mut b) = shared.lock() else { return };
                        match event.state {
                            HotKeyState::Pressed => b.pressed(&id),
                            HotKeyState::Released => b.released(&id),
                        }
                    };
                    if !deliver(command, &commands, ctx.as_ref()) {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            backend: Backend::Hotkeys {
                manager,
                registered: Vec::new(),
            },
            bindings,
            stop,
        })
    }

    /// Which mechanism carries the keys, for the settings.
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Hotkeys { .. } if cfg!(target_os = "linux") => "X11 key grabs",
            Backend::Hotkeys { .. } => "system hotkeys",
            #[cfg(target_os = "linux")]
            Backend::Portal(_) => "the Wayland GlobalShortcuts portal",
        }
    }

    /// What the desktop made of the shortcuts (the portal assigns the keys), if it said.
    pub fn assigned(&self) -> Option<String> {
        match &self.backend {
            Backend::Hotkeys { .. } => None,
            #[cfg(target_os = "linux")]
            Backend::Portal(portal) => portal.status(),
        }
    }

    /// Whether the overlay key was pressed an odd number of times since the last call (flip
    /// the overlay).
    pub fn take_overlay_toggle(&self) -> bool {
        self.bindings
            .lock()
            .is_ok_and(|mut b| std::mem::take(&mut b.overlay_presses) % 2 == 1)
    }

    /// Replaces the bound keys: each key transmits on its channels, and `overlay` shows and
    /// hides the overlay. Returns the keys that could not be grabbed (another program holds
    /// them, or no global key exists for them). The portal answers later: see
    /// [`Self::assigned`].
    pub fn bind(
        &mut self,
        keys: &[(egui::Key, Vec<ChannelId>)],
        overlay: Option<egui::Key>,
    ) -> Vec<String> {
        let mut channels = BTreeMap::new();
        let mut overlay_id = None;
        let mut failed = Vec::new();
        match &mut self.backend {
            Backend::Hotkeys {
                manager,
                registered,
            } => {
                let _ = manager.unregister_all(registered);
                registered.clear();
                let wanted = keys
                    .iter()
                    .map(|(k, on)| (*k, Some(on)))
                    .chain(overlay.map(|k| (k, None)));
                for (key, on) in wanted {
                    let hotkey = code_for(key).map(|code| HotKey::new(None, code));
                    match hotkey {
                        Some(hotkey) if manager.register(hotkey).is_ok() => {
                            registered.push(hotkey);
                            let id = hotkey.id().to_string();
                            match on {
                                Some(on) => {
                                    channels.insert(id, on.clone());
                                }
                                None => overlay_id = Some(id),
                            }
                        }
                        _ => failed.push(key.name().to_string()),
                    }
                }
            }
            #[cfg(target_os = "linux")]
            Backend::Portal(portal) => {
                let (ids, overlay) = portal.bind(keys, overlay);
                channels = ids;
                overlay_id = overlay;
            }
        }
        if let Ok(mut b) = self.bindings.lock() {
            b.channels = channels;
            b.overlay = overlay_id;
        }
        failed
    }
}

impl Drop for GlobalKeys {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        match &self.backend {
            Backend::Hotkeys {
                manager,
                registered,
            } => {
                let _ = manager.unregister_all(registered);
            }
            // The portal's session closes with its connection.
            #[cfg(target_os = "linux")]
            Backend::Portal(_) => {}
        }
    }
}

/// The physical key for an egui key, for the keys a push-to-talk binding plausibly uses.
pub fn code_for(key: egui::Key) -> Option<Code> {
    use egui::Key as K;
    let name = key.name();
    let code = match key {
        K::A
        | K::B
        | K::C
        | K::D
        | K::E
        | K::F
        | K::G
        | K::H
        | K::I
        | K::J
        | K::K
        | K::L
        | K::M
        | K::N
        | K::O
        | K::P
        | K::Q
        | K::R
        | K::S
        | K::T
        | K::U
        | K::V
        | K::W
        | K::X
        | K::Y
        | K::Z => format!("Key{name}"),
        K::Num0
        | K::Num1
        | K::Num2
        | K::Num3
        | K::Num4
        | K::Num5
        | K::Num6
        | K::Num7
        | K::Num8
        | K::Num9 => format!("Digit{name}"),
        K::Space => "Space".into(),
        K::Insert => "Insert".into(),
        K::Home => "Home".into(),
        K::End => "End".into(),
        K::PageUp => "PageUp".into(),
        K::PageDown => "PageDown".into(),
        K::Delete => "Delete".into(),
        K::Backtick => "Backquote".into(),
        // F1–F35 share their names.
        _ if name.starts_with('F') && name[1..].parse::<u8>().is_ok() => name.to_string(),
        _ => return None,
    };
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_to_talk_keys_map_to_physical_keys() {
        assert_eq!(code_for(egui::Key::F1), Some(Code::F1));
        assert_eq!(code_for(egui::Key::F12), Some(Code::F12));
        assert_eq!(code_for(egui::Key::V), Some(Code::KeyV));
        assert_eq!(code_for(egui::Key::Num4), Some(Code::Digit4));
        assert_eq!(code_for(egui::Key::Backtick), Some(Code::Backquote));
        assert_eq!(code_for(egui::Key::Enter), None);
    }
}
