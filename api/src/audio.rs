//! `GET` and `PUT /v1/audio`: the user's audio settings in JSON (milliseconds, channel paths),
//! changed field by field.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use callsign_mesh::charter::CharterState;
use callsign_node::audio::mixer::DuckRule;
use callsign_node::runtime::AudioSettings;
use callsign_node::NodeCommand;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::routes::{resolve, Body};
use crate::server::Shared;
use crate::ApiError;

/// "While `when_active` has a talker, `ducked` plays `db` quieter."
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ducking {
    when_active: String,
    ducked: String,
    db: f32,
}

/// The settings as clients see them; in a `PUT`, every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AudioJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    noise_suppression: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agc: Option<bool>,
    /// Echo cancellation (runs while input and output are sound cards).
    #[serde(skip_serializing_if = "Option::is_none")]
    echo_cancellation: Option<bool>,
    /// Opus bitrate, bits per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    bitrate: Option<u32>,
    /// Voice activation opens at this speech probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    vad_threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jitter_min_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jitter_max_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ducking: Option<Vec<Ducking>>,
}

impl AudioJson {
    fn of(settings: &AudioSettings, charter: &CharterState) -> Self {
        let path = |c| charter.path(c).unwrap_or_else(|| c.to_string());
        Self {
            noise_suppression: Some(settings.noise_suppression),
            agc: Some(settings.agc),
            echo_cancellation: Some(settings.echo_cancellation),
            bitrate: Some(settings.bitrate),
            vad_threshold: Some(settings.vad_threshold),
            jitter_min_ms: Some(settings.jitter_min.as_millis() as u64),
            jitter_max_ms: Some(settings.jitter_max.as_millis() as u64),
            ducking: Some(
                settings
                    .ducking
                    .iter()
                    .map(|rule| Ducking {
                        when_active: path(rule.when_active),
                        ducked: path(rule.ducked),
                        db: rule.db,
                    })
                    .collect(),
            ),
        }
    }

    /// `settings` with the fields this request names changed.
    fn apply_to(
        self,
        mut settings: AudioSettings,
        charter: &CharterState,
    ) -> Result<AudioSettings, ApiError> {
        if let Some(v) = self.noise_suppression {
            settings.noise_suppression = v;
        }
        if let Some(v) = self.agc {
            settings.agc = v;
        }
        if let Some(v) = self.echo_cancellation {
            settings.echo_cancellation = v;
        }
        if let Some(v) = self.bitrate {
            settings.bitrate = v;
        }
        if let Some(v) = self.vad_threshold {
            settings.vad_threshold = v;
        }
        if let Some(ms) = self.jitter_min_ms {
            settings.jitter_min = Duration::from_millis(ms);
        }
        if let Some(ms) = self.jitter_max_ms {
            settings.jitter_max = Duration::from_millis(ms);
        }
        if let Some(rules) = self.ducking {
            settings.ducking = rules
                .iter()
                .map(|rule| {
                    Ok(DuckRule {
                        when_active: resolve(charter, &rule.when_active)?,
                        ducked: resolve(charter, &rule.ducked)?,
                        db: rule.db,
                    })
                })
                .collect::<Result<_, ApiError>>()?;
        }
        settings
            .validate()
            .map_err(|e| ApiError::BadRequest(format!("audio settings refused: {e}")))?;
        Ok(settings)
    }
}

pub(crate) async fn get_audio(State(s): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let charter = s.control.charter().await?;
    let settings = s.audio().clone();
    Ok(Json(to_value(AudioJson::of(&settings, &charter))))
}

pub(crate) async fn put_audio(
    State(s): State<Arc<Shared>>,
    Body(change): Body<AudioJson>,
) -> Result<Json<Value>, ApiError> {
    let charter = s.control.charter().await?;
    let settings = change.apply_to(s.audio().clone(), &charter)?;
    s.control.command(NodeCommand::SetAudio(settings.clone()))?;
    *s.audio() = settings.clone();
    Ok(Json(to_value(AudioJson::of(&settings, &charter))))
}

fn to_value(audio: AudioJson) -> Value {
    serde_json::to_value(audio).unwrap_or(Value::Null)
}
