//! The relay's configuration file (TOML, `version = 1`). Relative paths are resolved against
//! the file's directory.
//!
//! One org (the original form):
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
//! voice_priority = "realtime"       # or "normal": see below
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
//! # org_packets_per_second = 2000   # all the org's senders together (default: no limit)
//! # link_packets_per_second = 1000  # voice-plane datagrams per link, before decryption
//! # handshakes_per_second = 50      # QUIC Initial packets per source address
//! # handshake_burst = 200
//! ```
//!
//! `voice_priority`: each org's socket is read, and its voice forwarded, on a thread of its own.
//! With `"realtime"` (the default) that thread runs at the lowest real-time priority while it
//! is not busy, so other work on the machine does not hold up a packet's copies; it returns to
//! normal priority while it uses more than half a core (a flood). Real-time needs
//! `CAP_SYS_NICE` or `LimitRTPRIO=1`; without either the relay logs so and runs at normal
//! priority. See `callsign_node::link::priority`.
//!
//! Several orgs in one process (hosting: TeamSpeak's "virtual servers"), each on its own port
//! with its own charter mirror (`data_dir/<name>`) and limits (the top-level `[limits]` are the
//! default for each). `SIGHUP` re-reads the file and starts or stops orgs that were added or
//! removed (or whose section changed) without touching the others.
//!
//! ```toml
//! version = 1
//! key = "relay.key"
//! metrics = "127.0.0.1:9464"
//! data_dir = "state"
//!
//! [[org]]
//! name = "alpha"
//! listen = "0.0.0.0:4433"
//! charter = "alpha.charter"
//!
//! [[org]]
//! name = "bravo"
//! listen = "0.0.0.0:4434"
//! charter = "bravo.charter"
//! limits = { max_subscribers = 200, org_packets_per_second = 1500 }
//! ```

use callsign_mesh::rate::Rate;
use callsign_node::link::ReadPriority;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The only version this code reads.
pub const CONFIG_VERSION: u32 = 1;

/// The name the one org of the original form goes by in metrics and `/health`.
pub const DEFAULT_ORG_NAME: &str = "default";

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

/// The file as written; [`RelayConfig`] is what it means.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    version: u32,
    key: PathBuf,
    #[serde(default)]
    passphrase_env: Option<String>,
    #[serde(default)]
    listen: Option<SocketAddr>,
    metrics: SocketAddr,
    data_dir: PathBuf,
    #[serde(default = "yes")]
    circuits: bool,
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default)]
    api_token_file: Option<PathBuf>,
    #[serde(default)]
    api_token_env: Option<String>,
    #[serde(default)]
    voice_priority: ReadPriority,
    /// `[org]` (one) or `[[org]]` (several), told apart by hand: serde's untagged enums
    /// would swallow the field errors an operator needs to see.
    org: toml::Value,
    #[serde(default)]
    limits: Limits,
}

/// One org as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgSection {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    charter: Option<PathBuf>,
    #[serde(default)]
    limits: Option<Limits>,
}

/// See the module documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayConfig {
    pub key: PathBuf,
    pub passphrase_env: Option<String>,
    pub metrics: SocketAddr,
    pub circuits: bool,
    pub bootstrap: Vec<String>,
    /// Where the read-only API's bearer token is written at start (mode 0600). Without it,
    /// `/api/v1/` answers 404.
    pub api_token_file: Option<PathBuf>,
    /// Take the API's token from this environment variable instead of a random one.
    pub api_token_env: Option<String>,
    /// The priority each org's read thread forwards voice at.
    pub voice_priority: ReadPriority,
    /// The orgs served, in the file's order; names and ports are distinct.
    pub orgs: Vec<OrgConfig>,
    /// Whether the file used the original one-org form (`listen` and `[org]`).
    pub single: bool,
}

/// One org the relay serves.
#[derive(Clone, Debug, PartialEq)]
pub struct OrgConfig {
    /// Its label in metrics, `/health` and the API.
    pub name: String,
    pub listen: SocketAddr,
    /// A charter bundle (`callsign org export`), read when the mirror is empty and merged on
    /// every start.
    pub charter: Option<PathBuf>,
    /// Its charter mirror.
    pub data_dir: PathBuf,
    pub limits: Limits,
}

fn yes() -> bool {
    true
}

/// Forwarding limits, per org.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_subscribers: usize,
    /// Per sender.
    pub packets_per_second: u32,
    pub burst: u32,
    pub max_packet: usize,
    /// All the org's senders together, after each one's own limit. `None`: no org limit.
    pub org_packets_per_second: Option<u32>,
    /// Voice-plane datagrams per link, dropped before decryption above it. Generous by
    /// default (ten senders' worth), because a link from a cascading relay carries many.
    pub link_packets_per_second: Option<u32>,
    /// QUIC Initial packets per source address (a handshake sends one to three).
    pub handshakes_per_second: u32,
    pub handshake_burst: u32,
    /// QUIC connections open at once; a handshake beyond them is refused, and the member
    /// retries. Members whose ordered control has been quiet have their links parked (QUIC
    /// closed, voice kept: `node::link::Links::park`), so this bounds memory, not members.
    pub quic_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let d = callsign_mesh::forward::ForwarderConfig::default();
        Self {
            max_subscribers: d.max_subscribers,
            packets_per_second: d.packets_per_second,
            burst: d.burst,
            max_packet: d.max_packet,
            org_packets_per_second: None,
            link_packets_per_second: None,
            handshakes_per_second: 50,
            handshake_burst: 200,
            quic_connections: 128,
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
            // A second's worth of burst.
            org_rate: self.org_packets_per_second.map(|r| Rate::new(r, r)),
        }
    }

    /// Each link's voice-plane rate: `link_packets_per_second`, or ten senders' worth.
    pub fn link_rate(&self) -> Rate {
        let per_second = self
            .link_packets_per_second
            .unwrap_or(self.packets_per_second.saturating_mul(10));
        Rate::new(per_second, per_second.max(self.burst))
    }

    /// Each source address's rate of QUIC Initial packets.
    pub fn handshake_rate(&self) -> Rate {
        Rate::new(self.handshakes_per_second, self.handshake_burst)
    }

    fn check(&self) -> Result<(), String> {
        if self.max_subscribers == 0
            || self.packets_per_second == 0
            || self.max_packet < 64
            || self.org_packets_per_second == Some(0)
            || self.link_packets_per_second == Some(0)
            || self.handshakes_per_second == 0
            || self.handshake_burst == 0
            || self.quic_connections == 0
        {
            return Err(
                "limits: max_subscribers, packets_per_second, org_packets_per_second, \
                        link_packets_per_second, handshakes_per_second, handshake_burst and \
                        quic_connections must be positive, max_packet at least 64"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Org names label metrics and paths: short, lowercase, no punctuation but `-` and `_`.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
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
        if let Some(file) = &mut config.api_token_file {
            *file = base.join(&*file);
        }
        for org in &mut config.orgs {
            org.data_dir = base.join(&org.data_dir);
            if let Some(charter) = &mut org.charter {
                *charter = base.join(&*charter);
            }
        }
        Ok(config)
    }

    /// Parses and checks TOML text (paths stay as written).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let nowhere = PathBuf::from("<config>");
        let invalid = |message: String| ConfigError::Invalid {
            path: nowhere.clone(),
            message,
        };
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
            None => return Err(invalid(format!("missing `version = {CONFIG_VERSION}`"))),
        }
        let file: RelayFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: nowhere.clone(),
            message: e.to_string(),
        })?;
        debug_assert_eq!(file.version, CONFIG_VERSION);
        file.limits.check().map_err(&invalid)?;
        for addr in &file.bootstrap {
            if addr.parse::<libp2p::Multiaddr>().is_err() {
                return Err(invalid(format!("bootstrap: {addr:?} is not a multiaddr")));
            }
        }
        let section_error = |e: toml::de::Error| invalid(format!("org: {e}"));
        let (orgs, single) = match &file.org {
            toml::Value::Table(_) => {
                let org: OrgSection = file.org.clone().try_into().map_err(section_error)?;
                let listen = match (file.listen, org.listen) {
                    (Some(l), None) | (None, Some(l)) => l,
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "listen: set it once, at the top or in [org]".into(),
                        ))
                    }
                    (None, None) => return Err(invalid("missing `listen`".into())),
                };
                let name = org.name.clone().unwrap_or_else(|| DEFAULT_ORG_NAME.into());
                let org = OrgConfig {
                    name,
                    listen,
                    charter: org.charter.clone(),
                    // The original form's mirror stays where it always was.
                    data_dir: file.data_dir.clone(),
                    limits: org.limits.clone().unwrap_or_else(|| file.limits.clone()),
                };
                (vec![org], true)
            }
            toml::Value::Array(_) => {
                let sections: Vec<OrgSection> =
                    file.org.clone().try_into().map_err(section_error)?;
                if file.listen.is_some() {
                    return Err(invalid(
                        "listen: with [[org]], each org has its own listen".into(),
                    ));
                }
                let mut orgs = Vec::new();
                for (i, org) in sections.iter().enumerate() {
                    let name = org.name.clone().ok_or_else(|| {
                        invalid(format!("[[org]] number {}: missing name", i + 1))
                    })?;
                    let listen = org
                        .listen
                        .ok_or_else(|| invalid(format!("org {name:?}: missing listen")))?;
                    orgs.push(OrgConfig {
                        data_dir: file.data_dir.join(&name),
                        name,
                        listen,
                        charter: org.charter.clone(),
                        limits: org.limits.clone().unwrap_or_else(|| file.limits.clone()),
                    });
                }
                (orgs, false)
            }
            _ => return Err(invalid("org: expected [org] or [[org]] sections".into())),
        };
        if orgs.is_empty() {
            return Err(invalid("no org: add an [[org]] section".into()));
        }
        let mut names = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for org in &orgs {
            if !valid_name(&org.name) {
                return Err(invalid(format!(
                    "org name {:?}: use 1 to 32 of a-z, 0-9, - and _",
                    org.name
                )));
            }
            if !names.insert(org.name.clone()) {
                return Err(invalid(format!("org {:?} is listed twice", org.name)));
            }
            // Port 0 (any free port) may repeat.
            if org.listen.port() != 0 && !ports.insert(org.listen) {
                return Err(invalid(format!(
                    "org {:?}: {} is another org's listen address",
                    org.name, org.listen
                )));
            }
            org.limits
                .check()
                .map_err(|e| invalid(format!("org {:?}: {e}", org.name)))?;
        }
        Ok(Self {
            key: file.key,
            passphrase_env: file.passphrase_env,
            metrics: file.metrics,
            circuits: file.circuits,
            bootstrap: file.bootstrap,
            api_token_file: file.api_token_file,
            api_token_env: file.api_token_env,
            voice_priority: file.voice_priority,
            orgs,
            single,
        })
    }

    /// The org called `name`.
    pub fn org(&self, name: &str) -> Option<&OrgConfig> {
        self.orgs.iter().find(|o| o.name == name)
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

    const MANY: &str = r#"
        version = 1
        key = "relay.key"
        metrics = "127.0.0.1:9464"
        data_dir = "state"
        [limits]
        packets_per_second = 80
        [[org]]
        name = "alpha"
        listen = "0.0.0.0:4433"
        charter = "alpha.charter"
        [[org]]
        name = "bravo"
        listen = "0.0.0.0:4434"
        limits = { max_subscribers = 20, org_packets_per_second = 500 }
    "#;

    #[test]
    fn a_minimal_file_parses_with_default_limits() {
        let c = RelayConfig::parse(GOOD).unwrap();
        assert!(c.circuits && c.single);
        let [org] = &c.orgs[..] else { panic!("{c:?}") };
        assert_eq!(org.name, DEFAULT_ORG_NAME);
        assert_eq!(org.limits, Limits::default());
        assert_eq!(org.charter.as_deref(), Some(Path::new("org.charter")));
        assert_eq!(org.data_dir, Path::new("state"));
        assert_eq!(org.listen, "0.0.0.0:4433".parse().unwrap());
        assert_eq!(c.voice_priority, ReadPriority::Realtime);
        let normal = GOOD.replace("[org]", "voice_priority = \"normal\"\n[org]");
        let c = RelayConfig::parse(&normal).unwrap();
        assert_eq!(c.voice_priority, ReadPriority::Normal);
    }

    #[test]
    fn several_orgs_each_get_a_port_a_mirror_and_limits() {
        let c = RelayConfig::parse(MANY).unwrap();
        assert!(!c.single);
        let (alpha, bravo) = (c.org("alpha").unwrap(), c.org("bravo").unwrap());
        assert_eq!(alpha.data_dir, Path::new("state/alpha"));
        assert_eq!(bravo.data_dir, Path::new("state/bravo"));
        // The top-level [limits] are each org's default; an org's own replace them.
        assert_eq!(alpha.limits.packets_per_second, 80);
        assert_eq!(bravo.limits.packets_per_second, 100);
        assert_eq!(bravo.limits.max_subscribers, 20);
        let forwarder = bravo.limits.forwarder();
        assert_eq!(forwarder.org_rate, Some(Rate::new(500, 500)));
        assert_eq!(alpha.limits.forwarder().org_rate, None);
        assert_eq!(alpha.limits.link_rate(), Rate::new(800, 800));
        assert_eq!(bravo.charter, None);
    }

    #[test]
    fn the_deploy_examples_parse() {
        let c = RelayConfig::parse(include_str!("../../deploy/relay.toml")).unwrap();
        assert_eq!(c.orgs[0].data_dir, Path::new("/var/lib/callsign-relay"));
        assert_eq!(c.orgs[0].limits, Limits::default());
        let c = RelayConfig::parse(include_str!("../../deploy/relay-hosting.toml")).unwrap();
        assert_eq!(c.orgs.len(), 2);
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
                GOOD.replace("listen = \"0.0.0.0:4433\"", ""),
                "missing `listen`",
            ),
            (
                format!("{GOOD}\n[limits]\nmax_subscribers = 0"),
                "max_subscribers",
            ),
            (GOOD.replace("data_dir", "dta_dir"), "unknown field"),
            (GOOD.replace("charter", "chartr"), "unknown field `chartr`"),
            (
                GOOD.replace("[org]", "bootstrap = [\"x\"]\n[org]"),
                "not a multiaddr",
            ),
            ("version = ".to_string(), "<config>"),
            (
                GOOD.replace("[org]", "voice_priority = \"highest\"\n[org]"),
                "unknown variant `highest`",
            ),
            (MANY.replace("\"bravo\"", "\"alpha\""), "listed twice"),
            (MANY.replace("4434", "4433"), "another org's listen"),
            (MANY.replace("name = \"bravo\"", ""), "missing name"),
            (MANY.replace("\"bravo\"", "\"Bravo!\""), "org name"),
            (
                MANY.replace("org_packets_per_second = 500", "org_packets_per_second = 0"),
                "org \"bravo\": limits",
            ),
            (
                MANY.replace("data_dir", "listen = \"0.0.0.0:1\"\ndata_dir"),
                "each org has its own listen",
            ),
        ];
        for (text, want) in cases {
            let err = RelayConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
