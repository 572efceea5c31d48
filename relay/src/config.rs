//! The relay's configuration file (TOML, `version = 1`). Relative paths are resolved against
//! the file's directory.
//!
//! ```toml
//! version = 1
//! key = "relay.key"                 # identity key file (`callsign-relay key relay.key`)
//! # passphrase_env = "RELAY_PASSPHRASE"
//! listen = "0.0.0.0:4433"           # QUIC, UDP
//! metrics = "127.0.0.1:9464"        # HTTP: /metrics, /health and /api/v1/occupancy
//! # api_token_file = "api.token"    # a random bearer token for /api/v1/ (0600), made at start
//! # api_token_env = "RELAY_API_TOKEN" # or the token from this variable
//! data_dir = "state"                # the charter mirror
//! circuits = true                   # relay v2 circuits for members behind NATs
//! bootstrap = []                    # members to dial at start (multiaddrs)
//!
//! [org]
//! charter = "org.charter"           # `callsign org export`, read when the mirror is empty
//!
//! [limits]
//! max_subscribers = 1000
//! packets_per_second = 100          # per sender
//! burst = 50
//! max_packet = 1368
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The only version this code reads.
pub const CONFIG_VERSION: u32 = 1;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path}: unknown config version {version} (this relay reads version {CONFIG_VERSION})"
    )]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// See the module documentation.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub version: u32,
    pub key: PathBuf,
    #[serde(default)]
    pub passphrase_env: Option<String>,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default = "yes")]
    pub circuits: bool,
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Where the read-only API's bearer token is written at start (mode 0600). Without it,
    /// `/api/v1/` answers 404.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Take the API's token from this environment variable instead of a random one.
    #[serde(default)]
    pub api_token_env: Option<String>,
    pub org: OrgSection,
    #[serde(default)]
    pub limits: Limits,
}

fn yes() -> bool {
    true
}

/// The org whose charter the relay mirrors.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrgSection {
    /// A charter bundle (`callsign org export`), read when the mirror is empty and merged on
    /// every start.
    #[serde(default)]
    pub charter: Option<PathBuf>,
}

/// Forwarding limits.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_subscribers: usize,
    pub packets_per_second: u32,
    pub burst: u32,
    pub max_packet: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let d = callsign_mesh::forward::ForwarderConfig::default();
        Self {
            max_subscribers: d.max_subscribers,
            packets_per_second: d.packets_per_second,
            burst: d.burst,
            max_packet: d.max_packet,
        }
    }
}

impl Limits {
    /// The forwarder's settings.
    pub fn forwarder(&self) -> callsign_mesh::forward::ForwarderConfig {
        callsign_mesh::forward::ForwarderConfig {
            max_packet: self.max_packet,
            packets_per_second: self.packets_per_second,
            burst: self.burst,
            max_subscribers: self.max_subscribers,
        }
    }
}

impl RelayConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Version { version, .. } => ConfigError::Version {
                path: path.to_path_buf(),
                version,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.key = base.join(&config.key);
        config.data_dir = base.join(&config.data_dir);
        if let Some(file) = &mut config.api_token_file {
            *file = base.join(&*file);
        }
        if let Some(charter) = &mut config.org.charter {
            *charter = base.join(&*charter);
        }
        Ok(config)
    }

    /// Parses and checks TOML text (paths stay as written).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let nowhere = PathBuf::from("<config>");
        // The version first, so a future file gets a clear error rather than a field error.
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let versioned: Versioned = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: nowhere.clone(),
            message: e.to_string(),
        })?;
        match versioned.version {
            Some(CONFIG_VERSION) => {}
            Some(version) => {
                return Err(ConfigError::Version {
                    path: nowhere,
                    version,
                })
            }
            None => {
                return Err(ConfigError::Invalid {
                    path: nowhere,
                    message: format!("missing `version = {CONFIG_VERSION}`"),
                })
            }
        }
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: nowhere.clone(),
            message: e.to_string(),
        })?;
        let limits = &config.limits;
        if limits.max_subscribers == 0 || limits.packets_per_second == 0 || limits.max_packet < 64 {
            return Err(ConfigError::Invalid {
                path: nowhere,
                message: "limits: max_subscribers and packets_per_second must be positive, \
                          max_packet at least 64"
                    .into(),
            });
        }
        for addr in &config.bootstrap {
            if addr.parse::<libp2p::Multiaddr>().is_err() {
                return Err(ConfigError::Invalid {
                    path: nowhere,
                    message: format!("bootstrap: {addr:?} is not a multiaddr"),
                });
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        version = 1
        key = "relay.key"
        listen = "0.0.0.0:4433"
        metrics = "127.0.0.1:9464"
        data_dir = "state"
        [org]
        charter = "org.charter"
    "#;

    #[test]
    fn a_minimal_file_parses_with_default_limits() {
        let c = RelayConfig::parse(GOOD).unwrap();
        assert!(c.circuits);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.org.charter.as_deref(), Some(Path::new("org.charter")));
    }

    #[test]
    fn the_deploy_example_parses() {
        let c = RelayConfig::parse(include_str!("../../deploy/relay.toml")).unwrap();
        assert_eq!(c.data_dir, Path::new("/var/lib/callsign-relay"));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn bad_files_get_a_reason() {
        let cases = [
            (
                GOOD.replace("version = 1", "version = 2"),
                "unknown config version 2",
            ),
            (GOOD.replace("version = 1", ""), "missing `version = 1`"),
            (
                GOOD.replace("listen = \"0.0.0.0:4433\"", "listen = \"nowhere\""),
                "listen",
            ),
            (
                format!("{GOOD}\n[limits]\nmax_subscribers = 0"),
                "max_subscribers",
            ),
            (GOOD.replace("data_dir", "dta_dir"), "unknown field"),
            (
                GOOD.replace("[org]", "bootstrap = [\"x\"]\n[org]"),
                "not a multiaddr",
            ),
            ("version = ".to_string(), "<config>"),
        ];
        for (text, want) in cases {
            let err = RelayConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
