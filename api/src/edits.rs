//! Endpoints for the charter's roles, ACLs, links, conferences, support lines and recording
//! policy (edits this node signs; the charter decides whether its author may), and for
//! hearing: monitoring a channel silently and recording it.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use callsign_mesh::charter::templates::{support_line, SupportRoles};
use callsign_mesh::charter::{OpBody, Permissions, Priority, RecordingPolicy, Role};
use callsign_node::NodeCommand;
use serde::Deserialize;
use serde_json::json;

use crate::routes::{
    allowed, edit, new_place, resolve, Answer, ApiState, Body, ChannelBody, NewPlace,
};
use crate::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    name: String,
    /// Permission names (`listen`, `speak`, `whisper`, `manage`, `monitor`).
    perms: Vec<String>,
    /// Floor priority 0–4 [default: 2].
    priority: Option<u8>,
}

fn perms(names: &[String]) -> Result<Permissions, ApiError> {
    Permissions::parse_list(&names.join(",")).map_err(ApiError::BadRequest)
}

pub(crate) async fn put_role(State(s): ApiState, Body(body): Body<RoleBody>) -> Answer {
    let priority = Priority::new(body.priority.unwrap_or(2))
        .ok_or_else(|| ApiError::BadRequest("priority is 0 to 4".into()))?;
    let role = Role {
        perms: perms(&body.perms)?,
        priority,
    };
    edit(
        &s,
        OpBody::PutRole {
            name: body.name.clone(),
            role,
        },
    )
    .await?;
    Ok(Json(json!({ "role": body.name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclBody {
    channel: String,
    role: String,
    /// The role's permissions there, or `null` to inherit from the parent again.
    perms: Option<Vec<String>>,
}

pub(crate) async fn set_acl(State(s): ApiState, Body(body): Body<AclBody>) -> Answer {
    let charter = s.control.charter().await?;
    let channel = resolve(&charter, &body.channel)?;
    let perms = body.perms.as_deref().map(perms).transpose()?;
    edit(
        &s,
        OpBody::SetChannelAcl {
            channel,
            role: body.role.clone(),
            perms,
        },
    )
    .await?;
    Ok(Json(json!({ "channel": body.channel, "role": body.role })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkBody {
    /// Whose talkers are carried.
    from: String,
    /// Whose listeners hear them.
    to: String,
    /// Also the other way [default: false].
    #[serde(default)]
    both: bool,
}

async fn set_link(s: &crate::server::Shared, body: &LinkBody, linked: bool) -> Answer {
    let charter = s.control.charter().await?;
    let from = resolve(&charter, &body.from)?;
    let to = resolve(&charter, &body.to)?;
    let mut pairs = vec![(from, to)];
    if body.both {
        pairs.push((to, from));
    }
    for (from, to) in pairs {
        edit(s, OpBody::LinkChannel { from, to, linked }).await?;
    }
    Ok(Json(json!({
        "from": body.from, "to": body.to, "both": body.both, "linked": linked
    })))
}

pub(crate) async fn link(State(s): ApiState, Body(body): Body<LinkBody>) -> Answer {
    set_link(&s, &body, true).await
}

pub(crate) async fn unlink(State(s): ApiState, Body(body): Body<LinkBody>) -> Answer {
    set_link(&s, &body, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConferenceBody {
    name: String,
    /// Its channels; fewer than two removes the conference.
    channels: Vec<String>,
}

pub(crate) async fn conference(State(s): ApiState, Body(body): Body<ConferenceBody>) -> Answer {
    let charter = s.control.charter().await?;
    let channels = body
        .channels
        .iter()
        .map(|c| resolve(&charter, c))
        .collect::<Result<Vec<_>, _>>()?;
    edit(
        &s,
        OpBody::SetConference {
            name: body.name.clone(),
            channels,
        },
    )
    .await?;
    Ok(Json(
        json!({ "conference": body.name, "channels": body.channels }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordingPolicyBody {
    channel: String,
    /// `allowed`, `notice`, `forbidden`, or `null` to inherit.
    policy: Option<String>,
}

pub(crate) async fn recording_policy(
    State(s): ApiState,
    Body(body): Body<RecordingPolicyBody>,
) -> Answer {
    let charter = s.control.charter().await?;
    let channel = resolve(&charter, &body.channel)?;
    let policy = body
        .policy
        .as_deref()
        .map(RecordingPolicy::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    edit(&s, OpBody::SetRecording { channel, policy }).await?;
    Ok(Json(json!({
        "channel": body.channel,
        "policy": charter_policy_name(&s, channel).await?,
    })))
}

async fn charter_policy_name(
    s: &crate::server::Shared,
    channel: callsign_mesh::charter::ChannelId,
) -> Result<&'static str, ApiError> {
    Ok(s.control.charter().await?.recording_policy(channel).name())
}

pub(crate) async fn monitor(State(s): ApiState, Body(body): Body<ChannelBody>) -> Answer {
    let charter = s.control.charter().await?;
    let id = allowed(&s, &charter, &body.channel, Permissions::MONITOR, "monitor")?;
    s.control.command(NodeCommand::Monitor(id))?;
    s.listening().insert(id);
    Ok(Json(json!({ "monitoring": body.channel })))
}

/// How long a record request waits for the node's answer.
const RECORD_ANSWER: Duration = Duration::from_secs(2);

pub(crate) async fn record_start(State(s): ApiState, Body(body): Body<ChannelBody>) -> Answer {
    let charter = s.control.charter().await?;
    let id = resolve(&charter, &body.channel)?;
    if charter.recording_policy(id) == RecordingPolicy::Forbidden {
        return Err(ApiError::Forbidden(format!(
            "the charter forbids recording {}",
            body.channel
        )));
    }
    let path = charter.path(id).unwrap_or_default();
    // Subscribe before asking, so the answer cannot slip past.
    let mut events = s.events.subscribe();
    s.control.command(NodeCommand::Record {
        channel: id,
        on: true,
    })?;
    let answer = tokio::time::timeout(RECORD_ANSWER, async {
        while let Ok(event) = events.recv().await {
            if event.fields.get("channel").and_then(|c| c.as_str()) != Some(path.as_str()) {
                continue;
            }
            match event.kind {
                "recording" if event.fields["on"] == true => return Ok(()),
                "recording-refused" => {
                    let why = event.fields["reason"].as_str().unwrap_or("").to_string();
                    return Err(why);
                }
                _ => {}
            }
        }
        Err("the node stopped".to_string())
    })
    .await;
    match answer {
        Ok(Ok(())) => Ok(Json(json!({ "recording": path }))),
        Ok(Err(why)) => Err(ApiError::Conflict(format!("not recording {path}: {why}"))),
        Err(_) => Err(ApiError::Conflict(format!(
            "the node did not confirm recording {path}"
        ))),
    }
}

pub(crate) async fn record_stop(State(s): ApiState, Body(body): Body<ChannelBody>) -> Answer {
    let charter = s.control.charter().await?;
    let id = resolve(&charter, &body.channel)?;
    s.control.command(NodeCommand::Record {
        channel: id,
        on: false,
    })?;
    Ok(Json(json!({ "stopped": body.channel })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SupportBody {
    /// The line's path; its parent must exist (`/Support/Line 1`).
    path: String,
    agents: String,
    callers: String,
    observers: String,
}

/// A support line from the template (`callsign_mesh::charter::templates::support_line`).
pub(crate) async fn support(State(s): ApiState, Body(body): Body<SupportBody>) -> Answer {
    let charter = s.control.charter().await?;
    let NewPlace {
        path: trimmed,
        parent,
        name,
    } = new_place(&charter, &body.path)?;
    for role in [&body.agents, &body.callers, &body.observers] {
        if !charter.roles.contains_key(role) {
            return Err(ApiError::NotFound(format!(
                "no role {role:?} in the charter"
            )));
        }
    }
    let roles = SupportRoles {
        agents: &body.agents,
        callers: &body.callers,
        observers: &body.observers,
    };
    let preset = support_line(name, &roles, charter.roles.keys());
    let preset_name: String = format!("support {name}").chars().take(64).collect();
    edit(
        &s,
        OpBody::DefinePreset {
            name: preset_name.clone(),
            preset,
        },
    )
    .await?;
    edit(
        &s,
        OpBody::ApplyPreset {
            name: preset_name,
            parent,
        },
    )
    .await?;
    Ok(Json(json!({ "support_line": trimmed })))
}
