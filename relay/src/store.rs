//! The relay's charter mirror: an op log in the data directory, first filled from a bundle an
//! admin exported (`callsign org export`), kept current by sync with the members afterwards.
//! The relay starts only if the charter rents it: members link to relays the charter lists.

use callsign_keys::IdentityKey;
use callsign_mesh::charter::bundle::{decode_bundle, BundleError};
use callsign_mesh::charter::log::{LogError, OpLog};
use callsign_mesh::charter::Charter;
use std::path::{Path, PathBuf};

/// Why the mirror could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("charter log {path}: {source}")]
    Log { path: PathBuf, source: LogError },
    #[error("cannot read charter bundle {path}: {source}")]
    ReadBundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("charter bundle {path}: {source}")]
    Bundle { path: PathBuf, source: BundleError },
    #[error("charter bundle {path} is for org {bundle}, but the mirror holds org {held}")]
    WrongOrg {
        path: PathBuf,
        bundle: IdentityKey,
        held: IdentityKey,
    },
    #[error("no charter yet: set [org] charter to a bundle exported by an admin")]
    Empty,
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "org {org} does not rent this relay ({relay}); an admin runs \
         `callsign org relay add {relay} --addr <multiaddr>` and exports the charter again"
    )]
    NotRented {
        org: IdentityKey,
        relay: IdentityKey,
    },
}

/// The opened mirror.
pub struct CharterStore {
    pub charter: Charter,
    pub log: OpLog,
    /// Ops the bundle added to the log on this start.
    pub imported: usize,
    /// A damaged tail the log cut on open (sync restores what it held).
    pub repaired: Option<String>,
}

const LOG_FILE: &str = "charter.log";

impl CharterStore {
    /// Opens (or creates from `bundle`) the mirror in `data_dir`, and checks that the charter
    /// rents `relay`.
    pub fn open(
        data_dir: &Path,
        bundle: Option<&Path>,
        relay: IdentityKey,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let log_path = data_dir.join(LOG_FILE);
        let log_error = |source| StoreError::Log {
            path: log_path.clone(),
            source,
        };
        let bundle = match bundle {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| StoreError::ReadBundle {
                    path: path.to_path_buf(),
                    source,
                })?;
                let (org, ops) = decode_bundle(&bytes).map_err(|source| StoreError::Bundle {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path.to_path_buf(), org, ops))
            }
            None => None,
        };
        let (mut charter, mut log, repaired) = if log_path.exists() {
            let loaded = OpLog::open(&log_path).map_err(log_error)?;
            let mut charter = Charter::new(loaded.log.org());
            charter.ingest(loaded.ops);
            let repaired = loaded.repair.map(|r| {
                format!(
                    "{}: cut {} bytes (saved to {}), kept {} ops",
                    r.reason,
                    r.dropped_bytes,
                    r.saved_to.display(),
                    r.kept_records
                )
            });
            (charter, loaded.log, repaired)
        } else {
            let Some((_, org, _)) = &bundle else {
                return Err(StoreError::Empty);
            };
            let log = OpLog::create(&log_path, *org).map_err(log_error)?;
            (Charter::new(*org), log, None)
        };
        let mut imported = 0;
        if let Some((path, org, ops)) = bundle {
            if org != charter.org() {
                return Err(StoreError::WrongOrg {
                    path,
                    bundle: org,
                    held: charter.org(),
                });
            }
            let report = charter.ingest(ops);
            let added: Vec<&[u8]> = report
                .added
                .iter()
                .filter_map(|h| charter.dag().get(h).map(|o| o.encoded.as_slice()))
                .collect();
            imported = added.len();
            log.append(added).map_err(log_error)?;
        }
        if !charter.state().relays.contains_key(&relay) {
            return Err(StoreError::NotRented {
                org: charter.org(),
                relay,
            });
        }
        Ok(Self {
            charter,
            log,
            imported,
            repaired,
        })
    }
}
