//! The endpoints (docs/api.md describes each): reads from the node and the view, commands to
//! the node, charter edits the node signs, invites, and the event stream.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequest, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use callsign_keys::{IdentityKey, InviteGrant, Ticket};
use callsign_mesh::charter::{ChannelId, CharterState, EditError, OpBody, Permissions};
use callsign_node::NodeCommand;
use futures::Stream;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::server::Shared;
use crate::ApiError;

pub(crate) type ApiState = State<Arc<Shared>>;
pub(crate) type Answer = Result<Json<Value>, ApiError>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/stats", get(stats))
        .route("/v1/channels", get(channels))
        .route("/v1/roster", get(roster))
        .route("/v1/listen", post(listen))
        .route("/v1/unlisten", post(unlisten))
        .route("/v1/ptt", post(ptt_down).delete(ptt_up))
        .route("/v1/whisper", post(whisper))
        .route("/v1/charter", get(charter))
        .route(
            "/v1/charter/channels",
            post(add_channel).delete(remove_channel),
        )
        .route("/v1/charter/members", post(put_member))
        .route("/v1/charter/roles", post(crate::edits::put_role))
        .route("/v1/charter/acl", post(crate::edits::set_acl))
        .route(
            "/v1/charter/links",
            post(crate::edits::link).delete(crate::edits::unlink),
        )
        .route("/v1/charter/conferences", post(crate::edits::conference))
        .route("/v1/charter/support", post(crate::edits::support))
        .route(
            "/v1/charter/recording",
            post(crate::edits::recording_policy),
        )
        .route("/v1/charter/spatial", post(crate::spatial::set_spatial))
        .route(
            "/v1/position",
            post(crate::spatial::set_position).delete(crate::spatial::clear_position),
        )
        .route("/v1/monitor", post(crate::edits::monitor))
        .route(
            "/v1/record",
            post(crate::edits::record_start).delete(crate::edits::record_stop),
        )
        .route("/v1/invites", post(invite))
        .route(
            "/v1/audio",
            get(crate::audio::get_audio).put(crate::audio::put_audio),
        )
        .route("/v1/events", get(events))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(shared)
}

/// A JSON body whose refusal is our clear 400, not the framework's plain text.
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(body)| Body(body))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

async fn status(State(s): ApiState) -> Answer {
    let charter = s.control.charter().await?;
    let me = s.identity.public();
    Ok(Json(json!({
        "peer": me.to_string(),
        "name": s.name,
        "address": s.address,
        "org": charter.org.to_string(),
        "org_name": charter.name,
        "admin": charter.is_admin(&me),
        "member": charter.members.contains_key(&me) || charter.is_admin(&me),
    })))
}

async fn stats(State(s): ApiState) -> Answer {
    let stats = s.control.stats().await?;
    serde_json::to_value(&stats)
        .map(Json)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn channels(State(s): ApiState) -> Answer {
    let charter = s.control.charter().await?;
    let me = s.identity.public();
    let listening = s.listening().clone();
    let view = s.view();
    let mut list: Vec<Value> = charter
        .channels
        .keys()
        .filter_map(|id| {
            let perms = charter.effective_permissions(&me, *id);
            Some(json!({
                "id": id.to_string(),
                "path": charter.path(*id)?,
                "may_listen": perms.contains(Permissions::LISTEN),
                "may_speak": perms.contains(Permissions::SPEAK),
                "half_duplex": charter.channels[id].policy.floor != Default::default(),
                "listening": listening.contains(id),
                "listeners": view.listeners_on(*id),
                "talkers": view.talkers_on(*id),
                "recorders": view.recorders_on(*id),
            }))
        })
        .collect();
    list.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Ok(Json(json!({ "channels": list })))
}

async fn roster(State(s): ApiState) -> Answer {
    let stats = s.control.stats().await?;
    let roster = s.view().roster();
    let entries: Vec<Value> = roster
        .into_iter()
        .map(|entry| {
            // Links are reported by libp2p peer id, which is the same text.
            let link = stats.peers.iter().find(|p| p.peer == entry.peer);
            json!({
                "peer": entry.peer,
                "name": entry.name,
                "listening": entry.listening,
                "talking": entry.talking,
                "link": link.map(|l| l.kind),
                "rtt_ms": link.and_then(|l| l.rtt).map(|r| r.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    Ok(Json(json!({ "roster": entries })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelBody {
    /// A path (`/Command/Flight`) or an id (16 hex digits).
    pub(crate) channel: String,
}

/// The channel `text` names: a path, or an id in hex.
pub(crate) fn resolve(charter: &CharterState, text: &str) -> Result<ChannelId, ApiError> {
    let found = if text.starts_with('/') {
        charter.find(text)
    } else {
        u64::from_str_radix(text, 16)
            .ok()
            .map(ChannelId)
            .filter(|id| charter.channels.contains_key(id))
    };
    found.ok_or_else(|| ApiError::NotFound(format!("no channel {text}")))
}

/// `channel` resolved, if this node holds `perms` there.
pub(crate) fn allowed(
    s: &Shared,
    charter: &CharterState,
    text: &str,
    perms: Permissions,
    what: &str,
) -> Result<ChannelId, ApiError> {
    let id = resolve(charter, text)?;
    if !charter.may(&s.identity.public(), id, perms) {
        return Err(ApiError::Forbidden(format!(
            "the charter does not let this node {what} on {text}"
        )));
    }
    Ok(id)
}

async fn listen(State(s): ApiState, Body(body): Body<ChannelBody>) -> Answer {
    let charter = s.control.charter().await?;
    let id = allowed(&s, &charter, &body.channel, Permissions::LISTEN, "listen")?;
    s.control.command(NodeCommand::Listen(id))?;
    s.listening().insert(id);
    Ok(Json(json!({ "listening": body.channel })))
}

async fn unlisten(State(s): ApiState, Body(body): Body<ChannelBody>) -> Answer {
    let charter = s.control.charter().await?;
    let id = resolve(&charter, &body.channel)?;
    s.control.command(NodeCommand::Unlisten(id))?;
    s.listening().remove(&id);
    Ok(Json(json!({ "unlistened": body.channel })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PttBody {
    /// One channel, or several at once (simulcast).
    channels: Vec<String>,
}

async fn ptt_down(State(s): ApiState, Body(body): Body<PttBody>) -> Answer {
    if body.channels.is_empty() {
        return Err(ApiError::BadRequest("name at least one channel".into()));
    }
    let charter = s.control.charter().await?;
    let ids = body
        .channels
        .iter()
        .map(|c| allowed(&s, &charter, c, Permissions::SPEAK, "speak"))
        .collect::<Result<Vec<_>, _>>()?;
    s.control.command(NodeCommand::PttDown(ids))?;
    Ok(Json(json!({ "transmitting": body.channels })))
}

async fn ptt_up(State(s): ApiState) -> Answer {
    s.control.command(NodeCommand::PttUp)?;
    Ok(Json(json!({ "transmitting": [] })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhisperBody {
    /// The member's peer id.
    peer: String,
}

fn peer(text: &str) -> Result<IdentityKey, ApiError> {
    IdentityKey::from_str(text).map_err(|_| ApiError::BadRequest(format!("not a peer id: {text}")))
}

async fn whisper(State(s): ApiState, Body(body): Body<WhisperBody>) -> Answer {
    let to = peer(&body.peer)?;
    let charter = s.control.charter().await?;
    if !charter.members.contains_key(&to) && !charter.is_admin(&to) {
        return Err(ApiError::NotFound(format!("{to} is not a member")));
    }
    s.control.command(NodeCommand::WhisperDown(to))?;
    Ok(Json(json!({ "whispering_to": body.peer })))
}

async fn charter(State(s): ApiState) -> Answer {
    let charter = s.control.charter().await?;
    let channels: Vec<Value> = charter
        .channels
        .iter()
        .filter_map(|(id, ch)| {
            Some(json!({
                "id": id.to_string(),
                "path": charter.path(*id)?,
                "half_duplex": ch.policy.floor != Default::default(),
                "mesh_threshold": ch.policy.mesh_threshold,
                "acl": ch.acl.iter().map(|(role, p)| (role.clone(), json!(p.names())))
                    .collect::<serde_json::Map<_, _>>(),
                "recording": charter.recording_policy(*id).name(),
                "spatial": crate::spatial::describe(charter.spatial.get(id).copied()),
            }))
        })
        .collect();
    let roles: serde_json::Map<String, Value> = charter
        .roles
        .iter()
        .map(|(name, role)| {
            let role = json!({"perms": role.perms.names(), "priority": role.priority.level()});
            (name.clone(), role)
        })
        .collect();
    let members: Vec<Value> = charter
        .members
        .iter()
        .map(|(peer, m)| {
            json!({"peer": peer.to_string(), "name": m.name, "roles": m.roles,
                   "admin": charter.is_admin(peer)})
        })
        .collect();
    Ok(Json(json!({
        "org": charter.org.to_string(),
        "name": charter.name,
        "hash": charter.state_hash().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "admins": charter.admins.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "channels": channels,
        "roles": roles,
        "members": members,
        "links": charter.links.iter()
            .map(|(from, to)| json!({"from": charter.path(*from), "to": charter.path(*to)}))
            .collect::<Vec<_>>(),
        "conferences": charter.conferences.iter()
            .map(|(name, cs)| (name.clone(), json!(cs.iter().map(|c| charter.path(*c)).collect::<Vec<_>>())))
            .collect::<serde_json::Map<_, _>>(),
    })))
}

/// Signs and applies an edit with the node's key; the charter decides whether it may.
pub(crate) async fn edit(s: &Shared, body: OpBody) -> Result<(), ApiError> {
    match s.control.try_edit_charter(body).await? {
        Ok(()) => Ok(()),
        Err(EditError::Rejected(why)) => Err(ApiError::Forbidden(format!(
            "the charter refuses this node's edit: {why}"
        ))),
        Err(EditError::NoEffect(why)) => Err(ApiError::Conflict(format!(
            "the edit would change nothing: {why}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChannel {
    /// The new channel's path; its parent must exist (`/Ops/Alpha` under `/Ops`).
    path: String,
}

/// Where a new channel goes: its path without a trailing slash, its (existing) parent and its
/// name.
pub(crate) struct NewPlace<'a> {
    pub(crate) path: &'a str,
    pub(crate) parent: Option<ChannelId>,
    pub(crate) name: &'a str,
}

/// Reads `path` as the place of a channel to create: 400 if it is no path, 404 if its parent
/// does not exist, 409 if the channel does.
pub(crate) fn new_place<'a>(
    charter: &CharterState,
    path: &'a str,
) -> Result<NewPlace<'a>, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed
        .rsplit_once('/')
        .filter(|(_, name)| !name.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("not a channel path: {path}")))?;
    let parent = match parent {
        "" => None,
        p => Some(resolve(charter, p)?),
    };
    if charter.find(trimmed).is_some() {
        return Err(ApiError::Conflict(format!("{trimmed} exists")));
    }
    Ok(NewPlace {
        path: trimmed,
        parent,
        name,
    })
}

async fn add_channel(State(s): ApiState, Body(body): Body<NewChannel>) -> Answer {
    let charter = s.control.charter().await?;
    let NewPlace {
        path: trimmed,
        parent,
        name,
    } = new_place(&charter, &body.path)?;
    edit(
        &s,
        OpBody::AddChannel {
            parent,
            name: name.to_string(),
        },
    )
    .await?;
    Ok(Json(json!({ "added": trimmed })))
}

async fn remove_channel(State(s): ApiState, Body(body): Body<ChannelBody>) -> Answer {
    let charter = s.control.charter().await?;
    let channel = resolve(&charter, &body.channel)?;
    edit(&s, OpBody::RemoveChannel { channel }).await?;
    Ok(Json(json!({ "removed": body.channel })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutMember {
    peer: String,
    name: String,
    roles: Vec<String>,
}

async fn put_member(State(s): ApiState, Body(body): Body<PutMember>) -> Answer {
    let peer = peer(&body.peer)?;
    let mut roles = body.roles;
    roles.sort();
    roles.dedup();
    edit(
        &s,
        OpBody::PutMember {
            peer,
            name: body.name.clone(),
            roles,
        },
    )
    .await?;
    Ok(Json(json!({ "member": body.peer, "name": body.name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    role: String,
    /// How long the ticket admits, seconds [default: 7 days].
    expires_s: Option<u64>,
}

/// How long an invite is good for unless the request says.
const INVITE_VALID: Duration = Duration::from_secs(7 * 86_400);

async fn invite(State(s): ApiState, Body(body): Body<InviteBody>) -> Answer {
    let charter = s.control.charter().await?;
    if !charter.is_admin(&s.identity.public()) {
        return Err(ApiError::Forbidden(
            "only an admin's node can invite".into(),
        ));
    }
    if !charter.roles.contains_key(&body.role) {
        return Err(ApiError::NotFound(format!("no role {}", body.role)));
    }
    let valid = body.expires_s.map_or(INVITE_VALID, Duration::from_secs);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let grant = InviteGrant::issue(
        &s.identity,
        charter.org,
        body.role.clone(),
        (now + valid).as_secs(),
        nonce,
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ticket = Ticket {
        org: charter.org,
        bootstrap: s.control.invite_addresses().await?,
        grant: Some(grant),
    }
    .encode()
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(json!({ "ticket": ticket, "role": body.role })))
}

/// Server-sent events: each of the node's events as `event: <type>`, `id: <seq>`, `data:
/// <json>`, in order; `lagged` says how many a slow client missed.
async fn events(State(s): ApiState) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = s.events.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => Event::default()
                .event(event.kind)
                .id(event.seq.to_string())
                .json_data(&event)
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(json!({ "missed": missed }).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
