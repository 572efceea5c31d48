//! `callsign up`: a headless node that joins its org and runs until stopped (or for
//! `--seconds`), logging who talks where. Bots and tests use it without a sound card: audio in
//! from a WAV file, what it hears out to a WAV file, PTT from a script.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use callsign_api::{ApiConfig, ApiServer, ApiToken};
use callsign_keys::{IdentityKey, Ticket};
use callsign_mesh::admission::JoinRequest;
use callsign_mesh::charter::{ChannelId, CharterState, Permissions};
use callsign_mesh::path::Rung;
use callsign_mesh::topology::Route;
use callsign_node::audio::wav::read_wav;
use callsign_node::runtime::{describe_floor, AudioInput, PortMapping};
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent};
use clap::Args;
use libp2p::Multiaddr;
use serde::Deserialize;

use super::org::{data_dir, OrgStore};

#[derive(Args, Debug, Default)]
pub struct UpArgs {
    /// TOML file with any of the options below (command-line flags win); see the README.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Identity key file [default: the platform config dir]
    #[arg(long, env = "CALLSIGN_KEY")]
    pub key: Option<PathBuf>,
    /// Passphrase for an encrypted key, read from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Where charters are stored [default: the platform data dir]
    #[arg(long, env = "CALLSIGN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The org (its root peer id); may be omitted when only one org is stored.
    #[arg(long)]
    pub org: Option<String>,
    /// Name shown to others [default: our name in the charter]
    #[arg(long)]
    pub name: Option<String>,
    /// UDP address of the QUIC endpoint.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A peer to connect to (`/ip4/…/udp/…/quic-v1/p2p/…`); repeatable.
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// The addresses others should dial, instead of what the node listens on (a port forwarded
    /// on a router: `/ip4/PUBLIC/udp/PORT/quic-v1`). With no address, announce none: reachable
    /// only through relay circuits.
    #[arg(long, value_name = "MULTIADDR", num_args = 0..)]
    pub announce: Option<Vec<Multiaddr>>,
    /// Join the org of this invite ticket (`callsign1…`): dial the addresses it names and
    /// ask the org's admins to admit us under `--name`. Ignored once we are a member.
    #[arg(long, value_name = "TICKET")]
    pub ticket: Option<String>,
    /// Do not ask the home router to forward a port (UPnP IGD). Mapping is also skipped with
    /// `--announce`, which names the addresses by hand.
    #[arg(long)]
    pub no_port_mapping: bool,
    /// Channel path to listen to; repeatable [default: every channel the charter allows]
    #[arg(long = "channel", value_name = "PATH")]
    pub channels: Vec<String>,
    /// Microphone audio from this WAV file (looped) [default: silence]
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Write what the node hears to DIR/heard.wav.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Voice datagrams leave marked with this DSCP (0–63, or `off`); routers with a voice
    /// queue (WMM on home Wi-Fi) send them first [default: 46, Expedited Forwarding]
    #[arg(long, value_name = "DSCP|off", value_parser = parse_dscp)]
    pub dscp: Option<Dscp>,
    /// Where `record` writes recordings (Ogg Opus and a JSON sidecar per channel)
    /// [default: DATA_DIR/recordings]
    #[arg(long, value_name = "DIR")]
    pub recordings: Option<PathBuf>,
    /// Timed PTT actions, one per line: `AT_MS ptt /a,/b MS`, `AT_MS whisper PEER MS`,
    /// `AT_MS listen /a`, `AT_MS unlisten /a`, `AT_MS monitor /a` (hear silently),
    /// `AT_MS record /a`, `AT_MS record /a off`, `AT_MS vox /a`, `AT_MS vox off`,
    /// `AT_MS emergency /a MS`, `AT_MS clear-emergency /a PEER` or `AT_MS invite ROLE` (an
    /// admin prints `invite TICKET`: a 7-day ticket naming where the org can be reached now).
    #[arg(long)]
    pub ptt_script: Option<PathBuf>,
    /// Stop after this many seconds [default: run until Ctrl-C]
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Serve the local control API (HTTP + JSON and an event stream, docs/api.md) here.
    #[arg(long, value_name = "IP:PORT")]
    pub api: Option<SocketAddr>,
    /// Where the API's bearer token is written, mode 0600 [default: DATA_DIR/api.token]
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,
    /// Take the API's token from this environment variable instead of a random one.
    #[arg(long, value_name = "VAR")]
    pub api_token_env: Option<String>,
    /// Let --api listen beyond loopback (the token then crosses the network: add TLS).
    #[arg(long)]
    pub api_allow_remote: bool,
}

/// The `--config` file, version 1. Every field is optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct UpFile {
    version: u32,
    key: Option<PathBuf>,
    passphrase_env: Option<String>,
    data_dir: Option<PathBuf>,
    org: Option<String>,
    name: Option<String>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    bootstrap: Vec<String>,
    announce: Option<Vec<String>>,
    ticket: Option<String>,
    port_mapping: Option<bool>,
    #[serde(default)]
    channels: Vec<String>,
    input: Option<PathBuf>,
    output_dir: Option<PathBuf>,
    recordings: Option<PathBuf>,
    dscp: Option<Dscp>,
    ptt_script: Option<PathBuf>,
    seconds: Option<f64>,
    api: Option<SocketAddr>,
    api_token_file: Option<PathBuf>,
    api_token_env: Option<String>,
    api_allow_remote: Option<bool>,
}

/// The config file's multiaddrs under `key`.
fn parse_addrs(addrs: &[String], key: &str) -> Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|addr| {
            addr.parse()
                .with_context(|| format!("config {key} address {addr:?}"))
        })
        .collect()
}

fn merge(mut args: UpArgs) -> Result<UpArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let file: UpFile =
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
    if file.version != 1 {
        bail!(
            "config {}: unknown version {} (this build reads version 1)",
            path.display(),
            file.version
        );
    }
    // Relative paths in the file are relative to the file.
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: Option<PathBuf>| p.map(|p| base.join(p));
    args.key = args.key.or(rel(file.key));
    args.passphrase_env = args.passphrase_env.or(file.passphrase_env);
    args.data_dir = args.data_dir.or(rel(file.data_dir));
    args.org = args.org.or(file.org);
    args.name = args.name.or(file.name);
    args.listen = args.listen.or(file.listen);
    args.ticket = args.ticket.or(file.ticket);
    if args.bootstrap.is_empty() {
        args.bootstrap = parse_addrs(&file.bootstrap, "bootstrap")?;
    }
    if let (None, Some(announce)) = (&args.announce, file.announce) {
        args.announce = Some(parse_addrs(&announce, "announce")?);
    }
    if file.port_mapping == Some(false) {
        args.no_port_mapping = true;
    }
    if args.channels.is_empty() {
        args.channels = file.channels;
    }
    args.input = args.input.or(rel(file.input));
    args.output_dir = args.output_dir.or(rel(file.output_dir));
    args.recordings = args.recordings.or(rel(file.recordings));
    args.dscp = args.dscp.or(file.dscp);
    args.ptt_script = args.ptt_script.or(rel(file.ptt_script));
    args.seconds = args.seconds.or(file.seconds);
    args.api = args.api.or(file.api);
    args.api_token_file = args.api_token_file.or(rel(file.api_token_file));
    args.api_token_env = args.api_token_env.or(file.api_token_env);
    args.api_allow_remote |= file.api_allow_remote == Some(true);
    Ok(args)
}

/// One scripted action.
#[derive(Debug)]
enum Step {
    Ptt(Vec<ChannelId>, Duration),
    Whisper(IdentityKey, Duration),
    Listen(ChannelId),
    Unlisten(ChannelId),
    Monitor(ChannelId),
    Record(ChannelId, bool),
    Vox(Vec<ChannelId>),
    Emergency(ChannelId, Duration),
    ClearEmergency(ChannelId, IdentityKey),
    Invite(String),
}

fn channel(state: &CharterState, path: &str) -> Result<ChannelId> {
    state
        .find(path)
        .with_context(|| format!("no channel {path} in the charter"))
}

fn parse_script(text: &str, state: &CharterState) -> Result<Vec<(Duration, Step)>> {
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fail = |why: &str| anyhow::anyhow!("ptt script line {}: {why}: {line:?}", n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        let ms = |w: Option<&&str>| -> Result<Duration> {
            let w = w.ok_or_else(|| fail("missing milliseconds"))?;
            Ok(Duration::from_millis(
                w.parse()
                    .map_err(|_| fail("not a number of milliseconds"))?,
            ))
        };
        let at = ms(words.first())?;
        let channels = |w: Option<&&str>| -> Result<Vec<ChannelId>> {
            let w = w.ok_or_else(|| fail("missing channel"))?;
            w.split(',')
                .map(|p| channel(state, p).map_err(|e| fail(&e.to_string())))
                .collect()
        };
        let step = match words.get(1).copied() {
            Some("ptt") => Step::Ptt(channels(words.get(2))?, ms(words.get(3))?),
            Some("whisper") => {
                let peer = words
                    .get(2)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| fail("whisper needs a peer id"))?;
                Step::Whisper(peer, ms(words.get(3))?)
            }
            Some("listen") => Step::Listen(channels(words.get(2))?[0]),
            Some("unlisten") => Step::Unlisten(channels(words.get(2))?[0]),
            Some("monitor") => Step::Monitor(channels(words.get(2))?[0]),
            Some("record") => {
                Step::Record(channels(words.get(2))?[0], words.get(3) != Some(&"off"))
            }
            Some("vox") if words.get(2) == Some(&"off") => Step::Vox(Vec::new()),
            Some("vox") => Step::Vox(channels(words.get(2))?),
            Some("emergency") => Step::Emergency(channels(words.get(2))?[0], ms(words.get(3))?),
            Some("clear-emergency") => {
                let raiser = words
                    .get(3)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| fail("clear-emergency needs the raiser's peer id"))?;
                Step::ClearEmergency(channels(words.get(2))?[0], raiser)
            }
            Some("invite") => {
                let role = words.get(2).ok_or_else(|| fail("invite needs a role"))?;
                if !state.roles.contains_key(*role) {
                    return Err(fail("no such role in the charter"));
                }
                Step::Invite(role.to_string())
            }
            _ => return Err(fail(
                "unknown action (ptt, whisper, listen, unlisten, monitor, record, vox, emergency, \
                     clear-emergency, invite)",
            )),
        };
        steps.push((at, step));
    }
    steps.sort_by_key(|(at, _)| *at);
    Ok(steps)
}

pub fn run(args: UpArgs) -> Result<()> {
    let args = merge(args)?;
    let key_path = super::key_path(args.key.clone())?;
    let (keys, _) = super::keys::unlock(&key_path, args.passphrase_env.as_deref())?;
    let dir = data_dir(args.data_dir.clone())?;
    let ticket = args
        .ticket
        .as_deref()
        .map(Ticket::decode)
        .transpose()
        .context("invite ticket")?;
    let store = match &ticket {
        Some(ticket) => OrgStore::for_ticket(&dir, &ticket.org)?,
        None => OrgStore::select(&dir, args.org.as_deref())?,
    };
    let state = store.charter.state().clone();
    let me = keys.identity.public();
    let member = state.members.contains_key(&me) || state.is_admin(&me);
    let join = match (&ticket, member) {
        (_, true) => None,
        (None, false) => bail!(
            "{me} is not a member of org {} ({}); ask an admin to add you, or join with \
             --ticket",
            state.name,
            state.org
        ),
        (Some(ticket), false) => {
            let grant = ticket.grant.clone().context(
                "the ticket carries no invite grant: ask an admin to add you, or for a ticket \
                 with a role",
            )?;
            let name = args
                .name
                .as_deref()
                .context("--name: the name to join as")?;
            Some(JoinRequest::sign(&keys.identity, grant, name))
        }
    };
    let mut args = args;
    if let Some(ticket) = &ticket {
        args.bootstrap.extend(ticket.bootstrap.iter().cloned());
    }
    let name = args.name.clone().unwrap_or_else(|| {
        state
            .members
            .get(&me)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| "admin".into())
    });
    let listening: Vec<ChannelId> = if args.channels.is_empty() {
        state
            .channels
            .keys()
            .copied()
            .filter(|c| state.may(&me, *c, Permissions::LISTEN))
            .collect()
    } else {
        args.channels
            .iter()
            .map(|p| channel(&state, p))
            .collect::<Result<_>>()?
    };
    let script = match &args.ptt_script {
        Some(path) => parse_script(
            &std::fs::read_to_string(path)
                .with_context(|| format!("cannot read ptt script {}", path.display()))?,
            &state,
        )?,
        None => Vec::new(),
    };
    let input = match &args.input {
        Some(path) => AudioInput::Samples(read_wav(path)?),
        None => AudioInput::Silence,
    };
    let mut config = NodeConfig::new(keys, store.charter, name);
    config.listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    config.bootstrap = args.bootstrap.clone();
    config.join = join;
    config.announce = args.announce.clone();
    config.listening = listening;
    config.input = input;
    config.mdns = true;
    config.port_mapping = !args.no_port_mapping && args.announce.is_none();
    config.seed = rand::random();
    if let Some(out) = &args.output_dir {
        std::fs::create_dir_all(out)
            .with_context(|| format!("creating output directory {}", out.display()))?;
        config.output = Some(out.join("heard.wav"));
    }
    if let Some(Dscp(dscp)) = args.dscp {
        config.dscp = dscp;
    }
    config.recordings = Some(
        args.recordings
            .clone()
            .unwrap_or_else(|| dir.join("recordings")),
    );
    let api = match args.api {
        Some(addr) => Some(api_setup(&args, addr, &dir)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, store.log, script, args.seconds, state, api))
}

/// How long a ticket from the `invite` script action is good for.
const INVITE_VALID: Duration = Duration::from_secs(7 * 86_400);

/// A ticket for `role` naming where the org can be reached now (the node knows: our own
/// confirmed or mapped address, its relays, members that serve as rendezvous).
async fn invite(
    node: &Node,
    identity: &callsign_keys::Identity,
    state: &CharterState,
    role: &str,
) -> Result<String> {
    if !state.is_admin(&identity.public()) {
        bail!("only admins can invite");
    }
    let addrs = node.invite_addresses().await?;
    super::org::invite_ticket(identity, state.org, role, INVITE_VALID, addrs)
}

/// How `--api` serves: where, with which token (written where), beyond loopback or not.
struct ApiSetup {
    addr: SocketAddr,
    token: ApiToken,
    token_file: PathBuf,
    allow_remote: bool,
}

fn api_setup(args: &UpArgs, addr: SocketAddr, data_dir: &Path) -> Result<ApiSetup> {
    let token = match &args.api_token_env {
        Some(var) => ApiToken::new(
            &std::env::var(var).with_context(|| format!("--api-token-env: ${var} is not set"))?,
        )?,
        None => ApiToken::generate(),
    };
    let token_file = args
        .api_token_file
        .clone()
        .unwrap_or_else(|| data_dir.join("api.token"));
    Ok(ApiSetup {
        addr,
        token,
        token_file,
        allow_remote: args.api_allow_remote,
    })
}

/// Starts the local API beside the node and says where (and where its token is).
async fn start_api(
    setup: ApiSetup,
    node: &Node,
    identity: callsign_keys::Identity,
    name: String,
    listening: Vec<ChannelId>,
) -> Result<ApiServer> {
    setup.token.write_to(&setup.token_file)?;
    let api = ApiServer::start(
        ApiConfig {
            addr: setup.addr,
            allow_remote: setup.allow_remote,
            token: setup.token,
            identity,
            name,
            address: node.address().to_string(),
            listening,
            // `up` starts the node with the default settings.
            audio: Default::default(),
        },
        node.control(),
    )
    .await
    .context("starting the local API")?;
    println!(
        "api http://{} token-file {}",
        api.local_addr(),
        setup.token_file.display()
    );
    Ok(api)
}

async fn serve(
    config: NodeConfig,
    log: callsign_mesh::charter::log::OpLog,
    script: Vec<(Duration, Step)>,
    seconds: Option<f64>,
    state: CharterState,
    api: Option<ApiSetup>,
) -> Result<()> {
    let identity = config.keys.identity.clone();
    let (name, listening) = (config.display_name.clone(), config.listening.clone());
    let mut node = Node::start_with_log(config, Some(log))
        .await
        .context("starting the node")?;
    println!("listening on {}", node.address());
    let api = match api {
        Some(setup) => Some(start_api(setup, &node, identity.clone(), name, listening).await?),
        None => None,
    };
    let start = Instant::now();
    let stop_at = seconds.map(|s| start + Duration::from_secs_f64(s.max(0.0)));
    // Releases are scripted actions too: (when, None) means "PTT up".
    let mut plan: Vec<(Duration, Option<Step>)> = Vec::new();
    for (at, step) in script {
        if let Step::Ptt(_, length) | Step::Whisper(_, length) | Step::Emergency(_, length) = &step
        {
            plan.push((at + *length, None));
        }
        plan.push((at, Some(step)));
    }
    plan.sort_by_key(|(at, _)| *at);
    let mut plan = plan.into_iter().peekable();
    let mut removed_by = None;
    let path = |c: &ChannelId| state.path(*c).unwrap_or_else(|| c.to_string());
    let paths = |cs: &[ChannelId]| cs.iter().map(path).collect::<Vec<_>>().join(",");
    loop {
        let next_step = plan.peek().map(|(at, _)| start + *at);
        let deadline = [next_step, stop_at].into_iter().flatten().min();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sleep => {
                if stop_at.is_some_and(|s| Instant::now() >= s) {
                    break;
                }
                let command = match plan.next().map(|(_, step)| step) {
                    None => None,
                    Some(None) => Some(NodeCommand::PttUp),
                    Some(Some(Step::Ptt(channels, _))) => Some(NodeCommand::PttDown(channels)),
                    Some(Some(Step::Whisper(peer, _))) => Some(NodeCommand::WhisperDown(peer)),
                    Some(Some(Step::Listen(c))) => Some(NodeCommand::Listen(c)),
                    Some(Some(Step::Unlisten(c))) => Some(NodeCommand::Unlisten(c)),
                    Some(Some(Step::Monitor(c))) => Some(NodeCommand::Monitor(c)),
                    Some(Some(Step::Record(channel, on))) => {
                        Some(NodeCommand::Record { channel, on })
                    }
                    Some(Some(Step::Vox(channels))) => {
                        Some(NodeCommand::VoiceActivation(channels))
                    }
                    Some(Some(Step::Emergency(channel, _))) => {
                        Some(NodeCommand::Emergency(channel))
                    }
                    Some(Some(Step::ClearEmergency(channel, raiser))) => {
                        Some(NodeCommand::ClearEmergency { channel, raiser })
                    }
                    Some(Some(Step::Invite(role))) => {
                        let t = start.elapsed().as_secs_f64();
                        match invite(&node, &identity, &state, &role).await {
                            Ok(ticket) => println!("{t:8.3} invite {ticket}"),
                            Err(e) => println!("{t:8.3} warning invite: {e:#}"),
                        }
                        None
                    }
                };
                if let Some(command) = command {
                    node.command(command)?;
                }
            }
            event = node.next_event() => {
                let Some(event) = event else { break };
                if let Some(api) = &api {
                    api.publish(&event);
                }
                let t = start.elapsed().as_secs_f64();
                let line = match event {
                    NodeEvent::TalkerStarted { name, peer, channels, whisper } => {
                        let on = if whisper { "whisper".to_string() } else { paths(&channels) };
                        Some(format!("talker-start {name} ({peer}) on {on}"))
                    }
                    NodeEvent::TalkerStopped { peer } => Some(format!("talker-stop {peer}")),
                    NodeEvent::Presence { peer, name, listening, recording } => {
                        let rec = if recording.is_empty() {
                            String::new()
                        } else {
                            format!(" recording {}", paths(&recording))
                        };
                        Some(format!("presence {name} ({peer}) listening {}{rec}", paths(&listening)))
                    }
                    NodeEvent::Recording { channel, on } => {
                        let what = if on { "recording-started" } else { "recording-stopped" };
                        Some(format!("{what} {}", paths(&[channel])))
                    }
                    NodeEvent::RecordingRefused { channel, reason } => {
                        Some(format!("recording-refused {}: {reason}", paths(&[channel])))
                    }
                    NodeEvent::PresenceGone { peer } => Some(format!("presence-gone {peer}")),
                    NodeEvent::SessionUp { peer } => Some(format!("session-up {peer}")),
                    NodeEvent::LinkUp { peer, kind, remote } => {
                        Some(format!("link-up {peer} {kind:?} {remote}"))
                    }
                    NodeEvent::LinkDown { peer } => Some(format!("link-down {peer}")),
                    NodeEvent::Transmitting { channels, whisper } => Some(match whisper {
                        Some(to) => format!("transmit whisper to {to}"),
                        None => format!("transmit on {}", paths(&channels)),
                    }),
                    NodeEvent::TransmitStopped => Some("transmit-stop".into()),
                    NodeEvent::PttDenied { channels, reason } => {
                        Some(format!("ptt-denied {}: {reason}", paths(&channels)))
                    }
                    NodeEvent::CharterChanged { ops } => Some(format!("charter +{ops} ops")),
                    NodeEvent::Admitted { peer, name, role } => {
                        Some(format!("admitted {name} ({peer}) as {role}"))
                    }
                    NodeEvent::JoinRefused { reason } => Some(format!("join-refused {reason}")),
                    NodeEvent::Removed { by } => {
                        removed_by = Some(by);
                        Some(format!("removed-by {by}"))
                    }
                    NodeEvent::Floor(floor) => Some(describe_floor(
                        &floor,
                        |k| {
                            state
                                .members
                                .get(k)
                                .map_or_else(|| k.to_string(), |m| m.name.clone())
                        },
                        path,
                    )),
                    NodeEvent::RouteChanged { channel, route } => Some(match route {
                        Route::Mesh => format!("route {} mesh", path(&channel)),
                        Route::Relay(relay) => format!("route {} relay {relay}", path(&channel)),
                    }),
                    NodeEvent::SubscriptionRefused { peer, reason } => {
                        Some(format!("subscription-refused {peer}: {reason}"))
                    }
                    NodeEvent::PathRepair {
                        talker,
                        channels,
                        rung,
                    } => {
                        let name = state
                            .members
                            .get(&talker)
                            .map_or_else(|| talker.to_string(), |m| m.name.clone());
                        let on: Vec<String> = channels.iter().map(&path).collect();
                        Some(match rung {
                            Rung::Mesh => format!(
                                "unreachable {name} on {}: no frame after every repair; \
                                 off the relay, asking for direct copies",
                                on.join(",")
                            ),
                            rung => format!(
                                "path-repair {name} on {}: {}",
                                on.join(","),
                                format!("{rung:?}").to_lowercase()
                            ),
                        })
                    }
                    NodeEvent::Warning(w) => Some(format!("warning {w}")),
                    NodeEvent::Reachability { addr, reachable } => Some(format!(
                        "{} {addr}",
                        if reachable { "reachable-at" } else { "unreachable-at" }
                    )),
                    NodeEvent::PortMapping(mapping) => Some(match mapping {
                        PortMapping::Mapped { external, protocol } => {
                            format!("port-mapped {external} ({protocol})")
                        }
                        PortMapping::Lost { external, reason } => {
                            format!("port-unmapped {external}: {reason}")
                        }
                        PortMapping::Unavailable { reason } => {
                            format!("port-mapping none: {reason}")
                        }
                    }),
                    NodeEvent::VoiceSent { .. } => None,
                };
                if let Some(line) = line {
                    println!("{t:8.3} {line}");
                }
            }
        }
    }
    if let Some(api) = api {
        api.shutdown().await;
    }
    let stats = node.shutdown().await?;
    println!(
        "stopped: {} frames sent, {} streams heard, drops {}, repairs {}",
        stats.frames_encoded,
        stats.received.len(),
        serde_json::to_string(&stats.drops)?,
        serde_json::to_string(&stats.repairs)?
    );
    if let Some(by) = removed_by {
        bail!("an admin ({by}) removed this member from the org");
    }
    Ok(())
}

/// A DSCP value, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Dscp(pub Option<u8>);

impl TryFrom<String> for Dscp {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        parse_dscp(&text)
    }
}

fn parse_dscp(text: &str) -> Result<Dscp, String> {
    match text.trim() {
        "off" | "none" => Ok(Dscp(None)),
        "ef" | "EF" => Ok(Dscp(Some(46))),
        n => match n.parse::<u8>() {
            Ok(v) if v <= 63 => Ok(Dscp(Some(v))),
            _ => Err(format!("DSCP must be 0-63, `ef` or `off`, not {n:?}")),
        },
    }
}
