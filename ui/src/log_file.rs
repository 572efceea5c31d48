//! Where the desktop app writes its log: a file, because on Windows the app has no console
//! (it is a GUI-subsystem program, so no console window opens beside it) and a player who
//! reports a problem needs something to attach. The settings show the path.
//!
//! `%LOCALAPPDATA%\Callsign\callsign-gui\data\logs\callsign-gui.log` on Windows,
//! `~/.local/share/callsign-gui/logs/callsign-gui.log` on Linux; `CALLSIGN_GUI_LOG` overrides.
//! A log over [`MAX_BYTES`] at start is moved to `callsign-gui.log.1` (one old log is kept).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The size above which the log starts afresh.
pub const MAX_BYTES: u64 = 8 << 20;

static PATH: OnceLock<PathBuf> = OnceLock::new();

/// The log file's path by default (`None`: no home directory).
pub fn default_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CALLSIGN_GUI_LOG") {
        return Some(PathBuf::from(path));
    }
    directories::ProjectDirs::from("org", "Callsign", "callsign-gui")
        .map(|d| d.data_local_dir().join("logs").join("callsign-gui.log"))
}

/// Opens the log at `path` for appending (rotating an oversized one first) and remembers the
/// path for [`path`].
pub fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let _ = PATH.set(path.to_path_buf());
    Ok(file)
}

/// The file this process logs to, once [`open`] has opened it.
pub fn path() -> Option<&'static Path> {
    PATH.get().map(PathBuf::as_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_log_is_kept_once_and_a_fresh_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("callsign-gui.log");
        drop(open(&path).unwrap());
        std::fs::write(&path, vec![b'x'; MAX_BYTES as usize + 1]).unwrap();
        use std::io::Write;
        writeln!(open(&path).unwrap(), "fresh").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "fresh\n");
        let old = dir.path().join("logs").join("callsign-gui.log.1");
        assert_eq!(std::fs::metadata(old).unwrap().len(), MAX_BYTES + 1);
    }
}
