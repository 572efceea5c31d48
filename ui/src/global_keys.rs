//! Push-to-talk keys that work while another window (the game) has focus, through the
//! `global-hotkey` crate.
//!
//! A thread of ours takes the crate's key events and sends `PttDown`/`PttUp` straight to the
//! node, so keying works even while the window is minimised and egui draws nothing; it also
//! asks egui to repaint so the TX light follows.
//!
//! Platform limits: Windows and macOS (which asks for the accessibility permission) grab keys
//! system-wide. On Linux only X11 can: under Wayland there is no protocol for global keys, so
//! they work only while an X11 (XWayland) window has focus, and not at all in a Wayland-native
//! session without `DISPLAY`. Without them, the window's own keys still work while it has
//! focus.

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

/// What a held key transmits on, and what is held now.
#[derive(Default)]
struct Bindings {
    channels: BTreeMap<u32, Vec<ChannelId>>,
    held: Option<u32>,
    /// The hotkey id that shows and hides the overlay.
    overlay: Option<u32>,
    /// Overlay toggles not yet taken by the app.
    overlay_presses: u32,
}

/// See the module documentation.
pub struct GlobalKeys {
    manager: GlobalHotKeyManager,
    registered: Vec<HotKey>,
    bindings: Arc<Mutex<Bindings>>,
    stop: Arc<AtomicBool>,
}

/// Why global keys are not available here.
pub fn unavailable_reason() -> Option<&'static str> {
    if cfg!(target_os = "linux") && std::env::var_os("DISPLAY").is_none() {
        return Some(if std::env::var_os("WAYLAND_DISPLAY").is_some() {
            "Wayland has no global keys (they need X11): keys work while this window has focus"
        } else {
            "no X11 display: keys work while this window has focus"
        });
    }
    None
}

impl GlobalKeys {
    /// Starts listening; key events go to the node through `commands`, and `ctx` repaints.
    pub fn start(
        commands: UnboundedSender<NodeCommand>,
        ctx: Option<egui::Context>,
    ) -> Result<Self, String> {
        if let Some(reason) = unavailable_reason() {
            return Err(reason.into());
        }
        let manager = GlobalHotKeyManager::new().map_err(|e| e.to_string())?;
        let bindings = Arc::new(Mutex::new(Bindings::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (bindings.clone(), stop.clone());
        std::thread::Builder::new()
            .name("callsign-global-keys".into())
            .spawn(move || {
                let events = GlobalHotKeyEvent::receiver();
                while !stopped.load(Ordering::Relaxed) {
                    let Ok(event) = events.recv_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    let command = {
                        let Ok(mut b) = shared.lock() else { return };
                        match event.state {
                            HotKeyState::Pressed if b.overlay == Some(event.id) => {
                                b.overlay_presses += 1;
                                None
                            }
                            HotKeyState::Pressed if b.held.is_none() => {
                                let channels = b.channels.get(&event.id).cloned();
                                channels.map(|c| {
                                    b.held = Some(event.id);
                                    NodeCommand::PttDown(c)
                                })
                            }
                            HotKeyState::Released if b.held == Some(event.id) => {
                                b.held = None;
                                Some(NodeCommand::PttUp)
                            }
                            _ => None,
                        }
                    };
                    if let Some(command) = command {
                        if commands.send(command).is_err() {
                            return;
                        }
                    }
                    if let Some(ctx) = &ctx {
                        ctx.request_repaint();
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            manager,
            registered: Vec::new(),
            bindings,
            stop,
        })
    }

    /// Whether the overlay key was pressed an odd number of times since the last call
    /// (`Some(true)`: flip the overlay).
    pub fn take_overlay_toggle(&self) -> Option<bool> {
        let mut b = self.bindings.lock().ok()?;
        let presses = std::mem::take(&mut b.overlay_presses);
        (presses % 2 == 1).then_some(true)
    }

    /// Replaces the bound keys: each key transmits on its channels, and `overlay` shows and
    /// hides the overlay. Returns the keys that could not be grabbed (another program holds
    /// them, or no global key exists for them).
    pub fn bind(
        &mut self,
        keys: &[(egui::Key, Vec<ChannelId>)],
        overlay: Option<egui::Key>,
    ) -> Vec<String> {
        let _ = self.manager.unregister_all(&self.registered);
        self.registered.clear();
        let mut channels = BTreeMap::new();
        let mut failed = Vec::new();
        for (key, on) in keys {
            let Some(code) = code_for(*key) else {
                failed.push(key.name().to_string());
                continue;
            };
            let hotkey = HotKey::new(None, code);
            match self.manager.register(hotkey) {
                Ok(()) => {
                    self.registered.push(hotkey);
                    channels.insert(hotkey.id(), on.clone());
                }
                Err(_) => failed.push(key.name().to_string()),
            }
        }
        let mut overlay_id = None;
        if let Some(key) = overlay {
            match code_for(key).map(|code| HotKey::new(None, code)) {
                Some(hotkey) if self.manager.register(hotkey).is_ok() => {
                    self.registered.push(hotkey);
                    overlay_id = Some(hotkey.id());
                }
                _ => failed.push(key.name().to_string()),
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
        let _ = self.manager.unregister_all(&self.registered);
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
