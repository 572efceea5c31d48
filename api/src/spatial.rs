//! Positional audio through the API: a game (or a small plugin reading it) feeds this member's
//! position, and admins make channels positional or proximity.

use axum::extract::State;
use axum::Json;
use callsign_mesh::charter::OpBody;
use callsign_mesh::spatial::{ContextId, Falloff, Position, Spatial, SpatialMode};
use callsign_node::NodeCommand;
use serde::Deserialize;
use serde_json::json;

use crate::routes::{edit, resolve, Answer, ApiState, Body};
use crate::ApiError;

/// `POST /v1/position`: where this member is. Metres, X right, Y up, Z forward (Mumble Link's
/// axes); `context` names the game, world and server (members in different contexts are not
/// placed relative to each other).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PositionBody {
    context: String,
    at: [f32; 3],
    #[serde(default = "forward")]
    front: [f32; 3],
    #[serde(default = "up")]
    top: [f32; 3],
}

fn forward() -> [f32; 3] {
    [0.0, 0.0, 1.0]
}

fn up() -> [f32; 3] {
    [0.0, 1.0, 0.0]
}

pub(crate) async fn set_position(State(s): ApiState, Body(body): Body<PositionBody>) -> Answer {
    let position = Position {
        context: ContextId::of(&body.context),
        at: body.at,
        front: body.front,
        top: body.top,
    };
    position
        .check()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    s.control
        .command(NodeCommand::SetPosition(Some(position)))?;
    Ok(Json(json!({ "context": body.context, "at": body.at })))
}

/// `DELETE /v1/position`: nowhere (positional channels play us unplaced, proximity channels
/// reach nobody).
pub(crate) async fn clear_position(State(s): ApiState) -> Answer {
    s.control.command(NodeCommand::SetPosition(None))?;
    Ok(Json(json!({ "position": null })))
}

/// `POST /v1/charter/spatial`: `mode` null makes the channel plain again.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpatialBody {
    channel: String,
    mode: Option<String>,
    #[serde(default)]
    range_m: f64,
    #[serde(default)]
    full_m: f64,
    #[serde(default)]
    falloff: Option<String>,
}

pub(crate) async fn set_spatial(State(s): ApiState, Body(body): Body<SpatialBody>) -> Answer {
    let charter = s.control.charter().await?;
    let channel = resolve(&charter, &body.channel)?;
    let spatial = match &body.mode {
        None => None,
        Some(mode) => {
            let mode: SpatialMode = mode.parse().map_err(ApiError::BadRequest)?;
            let falloff: Falloff = body
                .falloff
                .as_deref()
                .unwrap_or("linear")
                .parse()
                .map_err(ApiError::BadRequest)?;
            Some(
                Spatial::from_metres(mode, body.range_m, body.full_m, falloff)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?,
            )
        }
    };
    edit(&s, OpBody::SetSpatial { channel, spatial }).await?;
    Ok(Json(
        json!({ "channel": body.channel, "spatial": describe(spatial) }),
    ))
}

/// A channel's spatial settings as the API shows them.
pub(crate) fn describe(spatial: Option<Spatial>) -> serde_json::Value {
    match spatial {
        None => serde_json::Value::Null,
        Some(s) => json!({
            "mode": s.mode.name(),
            "range_m": s.range_m(),
            "full_m": s.full_m(),
            "falloff": s.falloff.name(),
        }),
    }
}
