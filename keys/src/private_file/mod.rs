//! Files and directories only their owner may read: key files, the local API's token.
//!
//! Unix: mode 0600 for files, 0700 for directories. Windows: a protected DACL (nothing
//! inherited from the parent) with one entry granting the current user full access, so other
//! accounts on the machine cannot read the secret. Elsewhere (the browser build) there is no
//! file system to protect and the calls say so.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as platform;

#[cfg(windows)]
#[allow(unsafe_code)]
mod windows;
#[cfg(windows)]
use windows as platform;

#[cfg(not(any(unix, windows)))]
mod platform {
    use std::io;
    use std::path::Path;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "owner-only files are not on this platform",
        )
    }
    pub(super) fn restrict_file(_: &Path) -> io::Result<()> {
        Err(unsupported())
    }
    pub(super) fn restrict_dir(_: &Path) -> io::Result<()> {
        Err(unsupported())
    }
    pub(super) fn owner_only(_: &Path) -> io::Result<bool> {
        Err(unsupported())
    }
}

use std::io;
use std::path::Path;

/// Makes the existing file at `path` readable and writable by its owner only. Call it before
/// writing the secret, so it is never readable by others, not even briefly.
pub fn restrict_file(path: &Path) -> io::Result<()> {
    platform::restrict_file(path)
}

/// Creates `dir` and its missing parents; the directories it creates are open to their owner
/// only. An existing directory is left as it is (it may be shared on purpose).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => platform::restrict_dir(dir),
        // Another process made it meanwhile.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether only the owner may access `path` (Unix: no group or other permission bits;
/// Windows: a DACL, inherited entries included, whose every entry grants the current user).
pub fn owner_only(path: &Path) -> io::Result<bool> {
    platform::owner_only(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_file_is_owner_only_and_a_plain_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        assert!(!owner_only(&path).unwrap());
        restrict_file(&path).unwrap();
        assert!(owner_only(&path).unwrap());
        // Still the owner's to read and write.
        std::fs::write(&path, "y").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y");
    }

    #[test]
    fn made_directories_are_owner_only_and_what_is_made_inside_inherits_it() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a").join("b");
        create_private_dir(&inner).unwrap();
        assert!(owner_only(&dir.path().join("a")).unwrap());
        assert!(owner_only(&inner).unwrap());
        let file = inner.join("f");
        std::fs::write(&file, "x").unwrap();
        // Windows passes the directory's one entry on to the file; Unix modes are not
        // inherited (the file is 0644 less the umask).
        assert_eq!(owner_only(&file).unwrap(), cfg!(windows));
    }
}
