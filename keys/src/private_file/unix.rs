//! Owner-only files on Unix: permission bits. Compiled on Unix only (`#[cfg(unix)] mod unix`
//! in `private_file`); Windows has `windows.rs`.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub(super) fn restrict_file(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
}

pub(super) fn restrict_dir(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(0o700))
}

pub(super) fn owner_only(path: &Path) -> io::Result<bool> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o077 == 0)
}
