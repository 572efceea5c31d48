//! `callsign org`: create and edit the local replica of an org charter.
//!
//! Each org's charter lives in `<data dir>/orgs/<org peer id>.log`; edits are signed with the
//! local identity, applied, and fsynced to the log before the command reports success.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use callsign_keys::{Identity, IdentityKey, InviteGrant, Multiaddr, Ticket};
use callsign_mesh::charter::bundle::encode_bundle;
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, CharterState, FloorMode, OpBody, Permissions, Priority,
    RecordingPolicy, RelayInfo, Role,
};
use clap::{Args, Subcommand};

mod import;
mod show;
use rand::RngCore;
use show::show;

/// Options shared by every `org` command.
#[derive(Args, Debug)]
pub struct OrgArgs {
    /// The org (its root peer id); may be omitted when only one org is stored.
    #[arg(long, global = true)]
    pub org: Option<String>,
    /// Where charters are stored [default: the platform data dir, e.g. ~/.local/share/callsign]
    #[arg(long, global = true, env = "CALLSIGN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Identity key that signs edits [default: the platform config dir]
    #[arg(long, global = true, env = "CALLSIGN_KEY")]
    pub key: Option<PathBuf>,
    /// Passphrase for an encrypted key, read from this environment variable.
    #[arg(long, global = true, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    #[command(subcommand)]
    pub command: OrgCommand,
}

/// Org commands.
#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Found a new org with the local identity as its root.
    Create {
        /// Display name.
        name: String,
    },
    /// Show the channel tree, roles, members, relays and presets.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Channel commands.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Role commands.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Member commands.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Admin commands.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Rented relay commands.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Operation preset commands.
    #[command(subcommand)]
    Preset(PresetCommand),
    /// Make an invite ticket granting a role.
    Invite {
        /// Role the invitee gets.
        #[arg(long)]
        role: String,
        /// How long the invite is valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// Bootstrap address to include (repeatable).
        #[arg(long = "addr", value_name = "MULTIADDR")]
        addrs: Vec<Multiaddr>,
    },
    /// Write every op of the charter to a compressed bundle file.
    Export {
        /// Output file.
        file: PathBuf,
    },
    /// Verify and merge a bundle file into the local charter (creating it if new).
    ///
    /// Exits 1, changing nothing on disk, when the bundle is unreadable or none of its new ops
    /// apply, or when it belongs to an org not stored here while another one is (see
    /// `--as-new-org`).
    Import {
        /// Input file.
        file: PathBuf,
        /// Store the bundle's org beside the orgs already here (otherwise a bundle of an org that
        /// is not stored here is refused, so that a wrong file does not make every later command
        /// ask for `--org`).
        #[arg(long)]
        as_new_org: bool,
    },
}

/// `org channel`.
#[derive(Subcommand, Debug)]
pub enum ChannelCommand {
    /// Add a channel, e.g. `/Command/Flight`; its parent must exist.
    Add {
        /// Channel path.
        path: String,
        /// Roles that may speak (and listen) here.
        #[arg(long, num_args = 1..)]
        speak: Vec<String>,
        /// Roles that may listen here.
        #[arg(long, num_args = 1..)]
        listen: Vec<String>,
        /// One talker at a time, by priority.
        #[arg(long)]
        half_duplex: bool,
    },
    /// Remove a channel and its subtree.
    Remove {
        /// Channel path.
        path: String,
    },
    /// Link FROM into TO: listeners of TO hear FROM's talkers (one way; link back for both).
    Link { from: String, to: String },
    /// Remove the link FROM -> TO.
    Unlink { from: String, to: String },
    /// Set a channel's recording policy: allowed, notice, forbidden, or inherit.
    Recording { path: String, policy: String },
    /// Make a channel positional (talkers placed by where they are in the game) or proximity
    /// (heard only within range), or plain again with `off`.
    Spatial {
        path: String,
        /// positional, proximity, or off.
        mode: String,
        /// Metres: beyond this a proximity talker is out of reach.
        #[arg(long, default_value_t = 50.0)]
        range: f64,
        /// Metres of full volume.
        #[arg(long, default_value_t = 2.0)]
        full: f64,
        /// How volume falls from full to the range: linear (to silence) or inverse.
        #[arg(long, default_value = "linear")]
        falloff: String,
    },
    /// Define (or with fewer than two channels, remove) a conference: channels heard as one.
    Conference {
        name: String,
        #[arg(num_args = 0..)]
        paths: Vec<String>,
    },
}

/// `org role`.
#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Add or update a role.
    Add {
        /// Role name.
        name: String,
        /// Permissions everywhere unless a channel overrides: listen,speak,whisper,manage.
        #[arg(long, default_value = "listen")]
        perm: String,
        /// Floor priority 0 (none) to 4 (emergency).
        #[arg(long, default_value_t = 2)]
        priority: u8,
    },
}

/// `org member`.
#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add or update a member.
    Add {
        /// The member's peer id.
        peer_id: String,
        /// Roles (repeatable).
        #[arg(long = "role", num_args = 1..)]
        roles: Vec<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a member.
    Remove {
        /// The member's peer id.
        peer_id: String,
    },
}

/// `org admin`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Make a peer an admin.
    Grant {
        /// Peer id.
        peer_id: String,
    },
    /// Revoke a peer's admin rights.
    Revoke {
        /// Peer id.
        peer_id: String,
    },
}

/// `org relay`.
#[derive(Subcommand, Debug)]
pub enum RelayCommand {
    /// Register a rented relay.
    Add {
        /// The relay's peer id.
        peer_id: String,
        /// Its address (repeatable).
        #[arg(long = "addr", value_name = "MULTIADDR", required = true)]
        addrs: Vec<Multiaddr>,
        /// Subscribers it serves.
        #[arg(long, default_value_t = 200)]
        capacity: u32,
    },
}

/// `org preset`.
#[derive(Subcommand, Debug)]
pub enum PresetCommand {
    /// Capture an existing channel subtree (names, ACLs, policies) as a preset.
    Define {
        /// Preset name.
        name: String,
        /// Root of the subtree to capture.
        #[arg(long)]
        from: String,
    },
    /// Stamp out a preset's channels.
    Apply {
        /// Preset name.
        name: String,
        /// Parent channel path [default: top level]
        #[arg(long)]
        under: Option<String>,
    },
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn data_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir),
        None => Ok(
            directories::ProjectDirs::from("org", "Callsign", "callsign")
                .context("cannot find a home directory; pass --data-dir")?
                .data_dir()
                .to_path_buf(),
        ),
    }
}

/// A charter replica with its log.
pub(crate) struct OrgStore {
    pub(crate) charter: Charter,
    pub(crate) log: OpLog,
}

impl OrgStore {
    fn path(dir: &Path, org: &IdentityKey) -> PathBuf {
        dir.join("orgs").join(format!("{org}.log"))
    }

    fn open(path: &Path) -> Result<Self> {
        let loaded = OpLog::open(path)
            .with_context(|| format!("cannot open charter log {}", path.display()))?;
        if let Some(repair) = &loaded.repair {
            eprintln!(
                "warning: {}: {}; cut {} bytes (saved to {}); kept {} ops. Sync restores the rest.",
                path.display(),
                repair.reason,
                repair.dropped_bytes,
                repair.saved_to.display(),
                repair.kept_records
            );
        }
        let mut charter = Charter::new(loaded.log.org());
        let report = charter.ingest(loaded.ops);
        if !report.missing.is_empty() {
            eprintln!(
                "warning: {} ops in the log wait for missing history",
                charter.pending_len()
            );
        }
        Ok(Self {
            charter,
            log: loaded.log,
        })
    }

    /// The store for the org an invite ticket names, created empty if we have none (sync
    /// fills it once we link).
    pub(crate) fn for_ticket(dir: &Path, org: &IdentityKey) -> Result<Self> {
        let path = Self::path(dir, org);
        if !path.exists() {
            OpLog::create(&path, *org)
                .with_context(|| format!("cannot create charter log {}", path.display()))?;
        }
        Self::open(&path)
    }

    /// Finds the store for `--org`, or the only one.
    pub(crate) fn select(dir: &Path, org: Option<&str>) -> Result<Self> {
        if let Some(org) = org {
            let key: IdentityKey = org
                .parse()
                .map_err(|_| anyhow!("{org:?} is not an ed25519 peer id"))?;
            let path = Self::path(dir, &key);
            if !path.exists() {
                bail!("no charter for org {org} in {}", dir.display());
            }
            return Self::open(&path);
        }
        let orgs = stored_orgs(dir);
        match orgs.as_slice() {
            [] => bail!(
                "no org yet in {}: run `callsign org create NAME` or `callsign org import FILE`",
                dir.display()
            ),
            [org] => Self::open(&Self::path(dir, org)),
            _ => bail!(
                "{} orgs stored in {}; choose one with --org PEER_ID",
                orgs.len(),
                dir.join("orgs").display()
            ),
        }
    }

    fn edit(&mut self, author: &Identity, body: OpBody) -> Result<()> {
        let op = self.charter.edit(author, body, unix_ms())?;
        self.log
            .append([op.encode().as_slice()])
            .context("cannot write charter log")?;
        Ok(())
    }
}

/// A ticket granting `role` for `valid`, signed by `admin`, naming `bootstrap`.
pub(crate) fn invite_ticket(
    admin: &Identity,
    org: IdentityKey,
    role: &str,
    valid: Duration,
    bootstrap: Vec<Multiaddr>,
) -> Result<String> {
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let expires_at = unix_ms() / 1000 + valid.as_secs();
    let grant = InviteGrant::issue(admin, org, role.to_string(), expires_at, nonce)?;
    let ticket = Ticket {
        org,
        bootstrap,
        grant: Some(grant),
    };
    Ok(ticket.encode()?)
}

fn identity(args: &OrgArgs) -> Result<Identity> {
    let path = super::key_path(args.key.clone())?;
    let (keys, _) = super::keys::unlock(&path, args.passphrase_env.as_deref())?;
    Ok(keys.identity)
}

fn channel(state: &CharterState, path: &str) -> Result<ChannelId> {
    state.find(path).ok_or_else(|| anyhow!("no channel {path}"))
}

fn parent_and_name(path: &str) -> Result<(Option<&str>, &str)> {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, name)) if !name.is_empty() => {
            Ok(((!parent.is_empty()).then_some(parent), name))
        }
        None if !trimmed.is_empty() => Ok((None, trimmed)),
        _ => bail!("{path:?} is not a channel path like /Command/Flight"),
    }
}

fn peer(text: &str) -> Result<IdentityKey> {
    text.parse()
        .map_err(|_| anyhow!("{text:?} is not an ed25519 peer id"))
}

pub fn run(args: OrgArgs) -> Result<()> {
    let dir = data_dir(args.data_dir.clone())?;
    if let OrgCommand::Create { name } = &args.command {
        let root = identity(&args)?;
        let path = OrgStore::path(&dir, &root.public());
        let (charter, op) = Charter::create(&root, name, unix_ms())?;
        let mut log = OpLog::create(&path, charter.org()).context("cannot create org")?;
        log.append([op.encode().as_slice()])?;
        println!("created org {name:?}: {}", charter.org());
        println!("charter: {}", path.display());
        return Ok(());
    }
    if let OrgCommand::Import { file, as_new_org } = &args.command {
        return import::import(&dir, file, *as_new_org);
    }
    let mut store = OrgStore::select(&dir, args.org.as_deref())?;
    match &args.command {
        OrgCommand::Create { .. } | OrgCommand::Import { .. } => unreachable!("handled above"),
        OrgCommand::Show { json } => show(store.charter.state(), *json)?,
        OrgCommand::Export { file } => {
            let bundle = encode_bundle(
                &store.charter.org(),
                store.charter.dag().iter().map(|o| o.encoded.as_slice()),
            );
            std::fs::write(file, &bundle)
                .with_context(|| format!("cannot write {}", file.display()))?;
            println!(
                "exported {} ops ({} bytes) to {}",
                store.charter.len(),
                bundle.len(),
                file.display()
            );
        }
        OrgCommand::Invite {
            role,
            expires,
            addrs,
        } => {
            let me = identity(&args)?;
            if !store.charter.state().roles.contains_key(role) {
                bail!("the org has no role {role:?}");
            }
            if !store.charter.state().is_admin(&me.public()) {
                bail!("only admins can invite");
            }
            let org = store.charter.org();
            println!(
                "{}",
                invite_ticket(&me, org, role, *expires, addrs.clone())?
            );
        }
        command => {
            let me = identity(&args)?;
            let body = edit_body(store.charter.state(), command)?;
            let extra = channel_acl_edits(command);
            store.edit(&me, body)?;
            if let Some((path, acl, floor)) = extra {
                let id = channel(store.charter.state(), path)?;
                for (role, perms) in acl {
                    store.edit(
                        &me,
                        OpBody::SetChannelAcl {
                            channel: id,
                            role,
                            perms: Some(perms),
                        },
                    )?;
                }
                if floor {
                    store.edit(
                        &me,
                        OpBody::SetChannelPolicy {
                            channel: id,
                            policy: ChannelPolicy {
                                floor: FloorMode::HalfDuplex,
                                ..Default::default()
                            },
                        },
                    )?;
                }
            }
            println!("ok ({} ops)", store.charter.len());
        }
    }
    Ok(())
}

/// The ACL and floor edits that follow `channel add`.
fn channel_acl_edits(command: &OrgCommand) -> Option<(&str, BTreeMap<String, Permissions>, bool)> {
    let OrgCommand::Channel(ChannelCommand::Add {
        path,
        speak,
        listen,
        half_duplex,
    }) = command
    else {
        return None;
    };
    let mut acl = BTreeMap::new();
    for role in listen {
        acl.insert(role.clone(), Permissions::LISTEN);
    }
    for role in speak {
        acl.insert(role.clone(), Permissions::LISTEN.union(Permissions::SPEAK));
    }
    Some((path, acl, *half_duplex))
}

fn edit_body(state: &CharterState, command: &OrgCommand) -> Result<OpBody> {
    Ok(match command {
        OrgCommand::Channel(ChannelCommand::Add { path, .. }) => {
            let (parent, name) = parent_and_name(path)?;
            let parent = parent.map(|p| channel(state, p)).transpose()?;
            OpBody::AddChannel {
                parent,
                name: name.to_string(),
            }
        }
        OrgCommand::Channel(ChannelCommand::Remove { path }) => OpBody::RemoveChannel {
            channel: channel(state, path)?,
        },
        OrgCommand::Channel(ChannelCommand::Link { from, to })
        | OrgCommand::Channel(ChannelCommand::Unlink { from, to }) => OpBody::LinkChannel {
            from: channel(state, from)?,
            to: channel(state, to)?,
            linked: matches!(command, OrgCommand::Channel(ChannelCommand::Link { .. })),
        },
        OrgCommand::Channel(ChannelCommand::Recording { path, policy }) => OpBody::SetRecording {
            channel: channel(state, path)?,
            policy: match policy.as_str() {
                "inherit" => None,
                other => Some(RecordingPolicy::parse(other).map_err(|e| anyhow!(e))?),
            },
        },
        OrgCommand::Channel(ChannelCommand::Spatial {
            path,
            mode,
            range,
            full,
            falloff,
        }) => OpBody::SetSpatial {
            channel: channel(state, path)?,
            spatial: match mode.as_str() {
                "off" => None,
                mode => Some(callsign_mesh::spatial::Spatial::from_metres(
                    mode.parse().map_err(|e: String| anyhow!(e))?,
                    *range,
                    *full,
                    falloff.parse().map_err(|e: String| anyhow!(e))?,
                )?),
            },
        },
        OrgCommand::Channel(ChannelCommand::Conference { name, paths }) => OpBody::SetConference {
            name: name.clone(),
            channels: paths
                .iter()
                .map(|p| channel(state, p))
                .collect::<Result<_>>()?,
        },
        OrgCommand::Role(RoleCommand::Add {
            name,
            perm,
            priority,
        }) => OpBody::PutRole {
            name: name.clone(),
            role: Role {
                perms: Permissions::parse_list(perm).map_err(|e| anyhow!(e))?,
                priority: Priority::new(*priority)
                    .ok_or_else(|| anyhow!("priority must be 0 to 4"))?,
            },
        },
        OrgCommand::Member(MemberCommand::Add {
            peer_id,
            roles,
            name,
        }) => {
            let mut roles = roles.clone();
            roles.sort();
            roles.dedup();
            for role in &roles {
                if !state.roles.contains_key(role) {
                    bail!("the org has no role {role:?}");
                }
            }
            OpBody::PutMember {
                peer: peer(peer_id)?,
                name: name.clone().unwrap_or_else(|| {
                    peer_id
                        .chars()
                        .rev()
                        .take(6)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect()
                }),
                roles,
            }
        }
        OrgCommand::Member(MemberCommand::Remove { peer_id }) => OpBody::RemoveMember {
            peer: peer(peer_id)?,
        },
        OrgCommand::Admin(AdminCommand::Grant { peer_id }) => OpBody::GrantAdmin {
            peer: peer(peer_id)?,
        },
        OrgCommand::Admin(AdminCommand::Revoke { peer_id }) => OpBody::RevokeAdmin {
            peer: peer(peer_id)?,
        },
        OrgCommand::Relay(RelayCommand::Add {
            peer_id,
            addrs,
            capacity,
        }) => OpBody::PutRelay {
            peer: peer(peer_id)?,
            info: RelayInfo {
                addrs: addrs.iter().map(|a| a.to_vec()).collect(),
                capacity: *capacity,
            },
        },
        OrgCommand::Preset(PresetCommand::Define { name, from }) => OpBody::DefinePreset {
            name: name.clone(),
            preset: state
                .preset_of(channel(state, from)?)
                .context("no such channel")?,
        },
        OrgCommand::Preset(PresetCommand::Apply { name, under }) => {
            if !state.presets.contains_key(name) {
                bail!("no preset {name:?}");
            }
            OpBody::ApplyPreset {
                name: name.clone(),
                parent: under.as_deref().map(|p| channel(state, p)).transpose()?,
            }
        }
        _ => unreachable!("not an edit"),
    })
}

/// The orgs with a log in `dir`.
pub(super) fn stored_orgs(dir: &Path) -> Vec<IdentityKey> {
    let mut orgs: Vec<IdentityKey> = std::fs::read_dir(dir.join("orgs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    orgs.sort_by_key(|k| k.to_string());
    orgs
}
