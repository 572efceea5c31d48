//! `callsign org import`: a bundle is verified in memory and written only if it applies, so a
//! failed import leaves no trace on disk.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::bundle::decode_bundle;
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::Charter;

use super::{stored_orgs, OrgStore};

pub(super) fn import(dir: &Path, file: &Path, as_new_org: bool) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (org, ops) =
        decode_bundle(&bytes).with_context(|| format!("cannot import {}", file.display()))?;
    let path = OrgStore::path(dir, &org);
    // Everything is verified in memory first: a bundle that fails leaves no trace on disk.
    let (mut charter, log) = if path.exists() {
        let store = OrgStore::open(&path)?;
        (store.charter, Some(store.log))
    } else {
        (Charter::new(org), None)
    };
    let offered = ops.len();
    let report = charter.ingest(ops);
    let summary = format!(
        "{} of {offered} ops ({} already known, {} rejected, {} waiting for history)",
        report.added.len(),
        report.duplicates,
        report.rejected.len(),
        charter.pending_len()
    );
    for (hash, reason) in report.rejected.iter().take(10) {
        match hash {
            Some(h) => eprintln!("  rejected {h:?}: {reason}"),
            None => eprintln!("  rejected: {reason}"),
        }
    }
    if report.added.is_empty() {
        if offered > 0 && report.duplicates == offered {
            println!("org {org} is up to date: all {offered} ops of the bundle are already known");
            return Ok(());
        }
        bail!(
            "cannot import {}: it applied nothing to org {org}: {summary}",
            file.display()
        );
    }
    if log.is_none() && !as_new_org {
        let stored = stored_orgs(dir);
        if !stored.is_empty() {
            let stored: Vec<String> = stored.iter().map(|k| k.to_string()).collect();
            bail!(
                "{} is org {:?} ({org}), which is not stored here; this data dir holds {}. \
                 Pass --as-new-org to store it beside them",
                file.display(),
                charter.state().name,
                stored.join(", ")
            );
        }
    }
    let added: Vec<&[u8]> = report
        .added
        .iter()
        .filter_map(|h| charter.dag().get(h).map(|o| o.encoded.as_slice()))
        .collect();
    match log {
        Some(mut log) => log.append(added)?,
        None => write_new_log(&path, org, added)?,
    }
    println!(
        "imported {summary} into org {:?} ({org})",
        charter.state().name
    );
    Ok(())
}

/// Writes a whole new log beside `path` and renames it into place, so a failure part-way
/// leaves no log for an org that was never stored.
fn write_new_log(path: &Path, org: IdentityKey, ops: Vec<&[u8]>) -> Result<()> {
    let mut partial = path.as_os_str().to_os_string();
    partial.push(".importing");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let written = OpLog::create(&partial, org)
        .and_then(|mut log| log.append(ops))
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            std::fs::rename(&partial, path)
                .with_context(|| format!("cannot move the new log to {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.context("cannot store the imported charter")
}
