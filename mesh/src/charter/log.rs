//! The append-only op log on disk: the one place `mesh/` does file I/O (blocking `std::fs`,
//! no sockets, no clock), so every runtime persists charters the same way.
//!
//! Layout (see `docs/protocol.md`):
//!
//! ```text
//! header: "CSIGNLOG" | version u8 | org key (32) | crc32(header so far) u32
//! record: len u32 | crc32(op bytes) u32 | op bytes (wire form)
//! ```
//!
//! On open, the first damaged or torn record ends the log: the bytes from there on are moved to
//! a `.corrupt-<offset>` file beside the log (so nothing is destroyed), the log is truncated, and
//! the repair is reported. Sync fetches the lost ops again from peers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use callsign_keys::IdentityKey;

use super::op::MAX_OP_BYTES;

const MAGIC: &[u8; 8] = b"CSIGNLOG";
/// The log format version.
pub const LOG_VERSION: u8 = 1;
const HEADER_LEN: usize = 8 + 1 + 32 + 4;

/// Why a log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The OS refused.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Not a log file, or its header is damaged (the org cannot be known, so no repair).
    #[error("not a Callsign charter log, or its header is damaged")]
    BadHeader,
    /// Unknown version.
    #[error("unsupported charter log version {0} (this build reads {LOG_VERSION})")]
    Version(u8),
    /// The log is for another org.
    #[error("log belongs to org {found}, expected {expected}")]
    WrongOrg {
        /// Org in the file.
        found: IdentityKey,
        /// Org asked for.
        expected: IdentityKey,
    },
    /// Refusing to replace an existing log.
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
}

/// A repair made while opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRepair {
    /// Records kept.
    pub kept_records: usize,
    /// Bytes cut from the tail.
    pub dropped_bytes: u64,
    /// What was wrong.
    pub reason: String,
    /// Where the cut bytes were saved.
    pub saved_to: PathBuf,
}

/// An open op log.
pub struct OpLog {
    file: File,
    org: IdentityKey,
}

/// A log opened with its contents.
pub struct LoadedLog {
    /// The log, positioned for appends.
    pub log: OpLog,
    /// Ops in the order they were appended (wire form).
    pub ops: Vec<Vec<u8>>,
    /// Set if a damaged tail was cut.
    pub repair: Option<LogRepair>,
}

impl OpLog {
    /// Creates a new, empty log for `org`; refuses to replace an existing file.
    pub fn create(path: &Path, org: IdentityKey) -> Result<Self, LogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => LogError::Exists(path.to_path_buf()),
                _ => LogError::Io(e),
            })?;
        let mut header = MAGIC.to_vec();
        header.push(LOG_VERSION);
        header.extend_from_slice(&org.to_bytes());
        header.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
        file.write_all(&header)?;
        file.sync_all()?;
        Ok(Self { file, org })
    }

    /// Opens a log, cutting a damaged tail (see the module docs).
    pub fn open(path: &Path) -> Result<LoadedLog, LogError> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(LogError::BadHeader);
        }
        if bytes[8] != LOG_VERSION {
            return Err(LogError::Version(bytes[8]));
        }
        let crc = u32::from_le_bytes([bytes[41], bytes[42], bytes[43], bytes[44]]);
        if crc32fast::hash(&bytes[..41]) != crc {
            return Err(LogError::BadHeader);
        }
        let org = IdentityKey::from_bytes(&bytes[9..41]).map_err(|_| LogError::BadHeader)?;

        let mut ops = Vec::new();
        let mut at = HEADER_LEN;
        let mut damage = None;
        while at < bytes.len() {
            let rest = &bytes[at..];
            if rest.len() < 8 {
                damage = Some("torn record header".to_string());
                break;
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len == 0 || len > MAX_OP_BYTES {
                damage = Some(format!("record length {len} out of range"));
                break;
            }
            if rest.len() < 8 + len {
                damage = Some("torn record".to_string());
                break;
            }
            let op = &rest[8..8 + len];
            if crc32fast::hash(op) != crc {
                damage = Some("record checksum mismatch".to_string());
                break;
            }
            ops.push(op.to_vec());
            at += 8 + len;
        }

        let repair = match damage {
            None => None,
            Some(reason) => {
                let saved_to = sidecar_path(path, at);
                std::fs::write(&saved_to, &bytes[at..])?;
                file.set_len(at as u64)?;
                file.sync_all()?;
                tracing::warn!(
                    log = %path.display(),
                    offset = at,
                    %reason,
                    saved_to = %saved_to.display(),
                    "charter log had a damaged tail; cut it"
                );
                Some(LogRepair {
                    kept_records: ops.len(),
                    dropped_bytes: (bytes.len() - at) as u64,
                    reason,
                    saved_to,
                })
            }
        };
        file.seek(SeekFrom::End(0))?;
        Ok(LoadedLog {
            log: Self { file, org },
            ops,
            repair,
        })
    }

    /// The org this log belongs to.
    pub fn org(&self) -> IdentityKey {
        self.org
    }

    /// Appends ops and fsyncs before returning, so an acknowledged edit survives a crash.
    pub fn append<'a>(&mut self, ops: impl IntoIterator<Item = &'a [u8]>) -> Result<(), LogError> {
        let mut buf = Vec::new();
        for op in ops {
            buf.extend_from_slice(&(op.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(op).to_le_bytes());
            buf.extend_from_slice(op);
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.file.seek(SeekFrom::End(0))?;
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        Ok(())
    }
}

fn sidecar_path(path: &Path, offset: usize) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{offset}"));
    path.with_file_name(name)
}
