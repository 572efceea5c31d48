//! The user's profile: `profile.toml` (version 1) in the app's directory, beside the identity
//! key file and the org's charter log (`orgs/<org>.log`).
//!
//! ```toml
//! version = 1
//! name = "Maverick"
//! key = "identity.key"
//! org = "12D3KooW…"          # the org's root key
//! listen = "0.0.0.0:47123"   # a port chosen at first run, so invite tickets stay valid
//! bootstrap = []              # multiaddrs to dial at start (from an invite ticket)
//! invite = "callsign1…"        # the ticket we joined with, until an admin admits us
//! api = "127.0.0.1:7070"      # the local control API (docs/api.md); absent: off
//! [hotkeys]                   # channel path → key (egui key names: F1, Space, A…)
//! "/flight" = "F2"
//! [audio]                     # all optional; these are the defaults
//! input = "default"           # "default", "none" (silent) or a device name
//! output = "default"
//! voice_activation = "/flight" # transmit there on speech instead of push-to-talk (absent: PTT)
//! noise_suppression = true
//! agc = false
//! bitrate = 24000
//! vad_threshold = 0.6
//! jitter_min_ms = 10
//! jitter_max_ms = 400
//! ducking = [{ when = "/command", duck = "/flight", db = 12.0 }]
//! ```

use crate::UiError;
use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_node::audio::mixer::DuckRule;
use callsign_node::audio::Device;
use callsign_node::runtime::AudioSettings;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The only profile version this app reads.
pub const PROFILE_VERSION: u32 = 1;
const FILE: &str = "profile.toml";

/// See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub version: u32,
    pub name: String,
    /// The identity key file, relative to the profile directory.
    pub key: PathBuf,
    /// The org's root key.
    pub org: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Channel path → key name.
    #[serde(default)]
    pub hotkeys: BTreeMap<String, String>,
    #[serde(default)]
    pub audio: AudioProfile,
    /// The invite ticket we joined with, kept until an admin admits us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
    /// Where the local control API listens (loopback; its token in `api.token` beside the
    /// profile); `None`: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<SocketAddr>,
    /// The in-game overlay.
    #[serde(default)]
    pub overlay: OverlayProfile,
}

/// The in-game overlay's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlayProfile {
    /// Shown now.
    pub shown: bool,
    /// Top-left corner on the screen, points.
    pub at: [f32; 2],
    /// The key that shows and hides it (an egui key name).
    pub key: String,
}

impl Default for OverlayProfile {
    fn default() -> Self {
        Self {
            shown: false,
            at: [24.0, 24.0],
            key: "F10".into(),
        }
    }
}

/// The user's sound settings (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioProfile {
    pub input: String,
    pub output: String,
    pub voice_activation: Option<String>,
    pub noise_suppression: bool,
    pub agc: bool,
    /// Echo cancellation while both input and output are sound cards.
    pub echo_cancellation: bool,
    pub bitrate: u32,
    pub vad_threshold: f32,
    pub jitter_min_ms: u64,
    pub jitter_max_ms: u64,
    pub ducking: Vec<DuckingRule>,
}

/// While `when` has a talker, `duck` plays `db` decibels quieter (channel paths).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuckingRule {
    pub when: String,
    pub duck: String,
    pub db: f32,
}

/// The device names that are not a device.
pub const DEFAULT_DEVICE: &str = "default";
pub const NO_DEVICE: &str = "none";

impl Default for AudioProfile {
    fn default() -> Self {
        let node = AudioSettings::default();
        Self {
            input: DEFAULT_DEVICE.into(),
            output: DEFAULT_DEVICE.into(),
            voice_activation: None,
            noise_suppression: node.noise_suppression,
            agc: node.agc,
            echo_cancellation: node.echo_cancellation,
            bitrate: node.bitrate,
            vad_threshold: node.vad_threshold,
            jitter_min_ms: node.jitter_min.as_millis() as u64,
            jitter_max_ms: node.jitter_max.as_millis() as u64,
            ducking: Vec::new(),
        }
    }
}

impl AudioProfile {
    /// The node's settings, with ducking rules' paths resolved by `channel` (rules naming a
    /// channel that no longer exists are skipped).
    pub fn settings(&self, channel: impl Fn(&str) -> Option<ChannelId>) -> AudioSettings {
        AudioSettings {
            noise_suppression: self.noise_suppression,
            agc: self.agc,
            echo_cancellation: self.echo_cancellation,
            bitrate: self.bitrate,
            vad_threshold: self.vad_threshold,
            jitter_min: Duration::from_millis(self.jitter_min_ms),
            jitter_max: Duration::from_millis(self.jitter_max_ms),
            ducking: self
                .ducking
                .iter()
                .filter_map(|r| {
                    Some(DuckRule {
                        when_active: channel(&r.when)?,
                        ducked: channel(&r.duck)?,
                        db: r.db,
                    })
                })
                .collect(),
        }
    }

    /// A device setting as the node takes it: `None` for no device.
    pub fn device(name: &str) -> Option<Device> {
        match name {
            NO_DEVICE => None,
            DEFAULT_DEVICE | "" => Some(Device::Default),
            name => Some(Device::Named(name.to_string())),
        }
    }
}

impl Profile {
    /// A new profile for `org`.
    pub fn new(name: &str, org: &IdentityKey, bootstrap: Vec<String>) -> Self {
        Self {
            version: PROFILE_VERSION,
            name: name.to_string(),
            key: PathBuf::from("identity.key"),
            org: org.to_string(),
            // One port for good: the addresses in our invite tickets outlive a restart.
            listen: SocketAddr::from((
                [0, 0, 0, 0],
                rand::Rng::gen_range(&mut rand::thread_rng(), 40_000..60_000),
            )),
            bootstrap,
            hotkeys: BTreeMap::new(),
            audio: AudioProfile::default(),
            invite: None,
            overlay: OverlayProfile::default(),
            api: None,
        }
    }

    /// The platform's config directory for the app (`CALLSIGN_GUI_DIR` overrides).
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CALLSIGN_GUI_DIR") {
            return Some(PathBuf::from(dir));
        }
        directories::ProjectDirs::from("org", "Callsign", "callsign-gui")
            .map(|d| d.config_dir().to_path_buf())
    }

    /// The profile in `dir`, `None` on first run.
    pub fn load(dir: &Path) -> Result<Option<Self>, UiError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let fail = |message: String| UiError::Profile {
            path: path.display().to_string(),
            message,
        };
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let versioned: Versioned = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        match versioned.version {
            Some(PROFILE_VERSION) => {}
            Some(v) => return Err(fail(format!("unknown profile version {v}"))),
            None => return Err(fail("missing `version`".into())),
        }
        let profile: Self = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        profile.org_key().map_err(fail)?;
        Ok(Some(profile))
    }

    /// Writes the profile to `dir` (whole file replaced).
    pub fn save(&self, dir: &Path) -> Result<(), UiError> {
        std::fs::create_dir_all(dir)?;
        let text = toml::to_string_pretty(self).map_err(|e| UiError::Profile {
            path: dir.join(FILE).display().to_string(),
            message: e.to_string(),
        })?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        Ok(())
    }

    pub fn org_key(&self) -> Result<IdentityKey, String> {
        self.org
            .parse()
            .map_err(|_| format!("org {:?} is not a peer id", self.org))
    }

    /// Where the org's charter log lives.
    pub fn charter_log(dir: &Path, org: &IdentityKey) -> PathBuf {
        dir.join("orgs").join(format!("{org}.log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_keys::Identity;

    #[test]
    fn round_trips_and_refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Profile::load(dir.path()).unwrap(), None);
        let org = Identity::from_secret_bytes([3; 32]).public();
        let mut profile = Profile::new("Maverick", &org, vec![]);
        profile.hotkeys.insert("/flight".into(), "F2".into());
        profile.audio.voice_activation = Some("/flight".into());
        profile.audio.ducking.push(DuckingRule {
            when: "/command".into(),
            duck: "/flight".into(),
            db: 12.0,
        });
        profile.save(dir.path()).unwrap();
        assert_eq!(Profile::load(dir.path()).unwrap(), Some(profile));
        let path = dir.path().join(FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        for (bad, want) in [
            (
                text.replace("version = 1", "version = 7"),
                "unknown profile version 7",
            ),
            (text.replace("version = 1", ""), "missing `version`"),
            (text.replace(&org.to_string(), "nobody"), "not a peer id"),
            ("version = ".to_string(), "profile"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = Profile::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
