//! Sums decoded streams into interleaved stereo playback blocks.
//!
//! Per channel: volume, pan, mute, listen-only. Ducking rules lower one channel while another is
//! active (Command ducks Flight). Per source: a gain and pan override, the hook positional
//! (proximity) audio drives. The sum goes through a soft limiter, so the output never reaches
//! full scale however many people talk at once. Mixing never allocates: channel and source
//! settings are set up front, outside the playout path.

use super::dsp::{pan_gains, rms, soft_limit};
use super::{db_to_gain, AudioError};
use callsign_mesh::charter::ChannelId;
use std::collections::BTreeMap;

/// Identifies one remote sender's stream in the mixer.
pub type SourceId = u64;

/// A listener's settings for one channel.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelMix {
    /// Linear gain, 0.0–2.0.
    pub volume: f32,
    /// -1.0 (left) to 1.0 (right).
    pub pan: f32,
    pub muted: bool,
    /// Heard but never keyed: PTT on this channel is refused (see [`Mixer::may_transmit`]).
    pub listen_only: bool,
}

impl Default for ChannelMix {
    fn default() -> Self {
        Self {
            volume: 1.0,
            pan: 0.0,
            muted: false,
            listen_only: false,
        }
    }
}

/// While `when_active` has a talker, `ducked` plays `db` decibels quieter.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DuckRule {
    pub when_active: ChannelId,
    pub ducked: ChannelId,
    pub db: f32,
}

/// Per-source placement, set by positional audio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceMix {
    pub gain: f32,
    /// Replaces the channel's pan when set.
    pub pan: Option<f32>,
}

/// One decoded frame offered to the mixer.
#[derive(Clone, Copy, Debug)]
pub struct MixInput<'a> {
    pub channel: ChannelId,
    pub source: SourceId,
    pub samples: &'a [f32],
}

#[derive(Clone, Debug)]
struct ChannelState {
    mix: ChannelMix,
    active: bool,
    duck_target: f32,
    duck_gain: f32,
    next_duck_gain: f32,
}

/// Below this RMS a stream counts as silent for ducking (about -60 dBFS).
const ACTIVITY_RMS: f32 = 1e-3;

/// Per-block smoothing of duck gain changes: attack fast, release slow, so ducking neither
/// clips the first syllable of the priority talker nor pumps between words.
const DUCK_ATTACK: f32 = 0.5;
const DUCK_RELEASE: f32 = 0.1;

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Mixer {
    channels: BTreeMap<ChannelId, ChannelState>,
    sources: BTreeMap<SourceId, SourceMix>,
    rules: Vec<DuckRule>,
}

impl Mixer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_channel(&mut self, channel: ChannelId, mix: ChannelMix) {
        let mix = ChannelMix {
            volume: mix.volume.clamp(0.0, 2.0),
            pan: mix.pan.clamp(-1.0, 1.0),
            ..mix
        };
        self.channels
            .entry(channel)
            .and_modify(|state| state.mix = mix)
            .or_insert(ChannelState {
                mix,
                active: false,
                duck_target: 1.0,
                duck_gain: 1.0,
                next_duck_gain: 1.0,
            });
    }

    pub fn channel(&self, channel: ChannelId) -> ChannelMix {
        self.channels
            .get(&channel)
            .map(|state| state.mix)
            .unwrap_or_default()
    }

    pub fn remove_channel(&mut self, channel: ChannelId) {
        self.channels.remove(&channel);
    }

    /// Whether PTT may key this channel (listen-only channels refuse).
    pub fn may_transmit(&self, channel: ChannelId) -> bool {
        !self.channel(channel).listen_only
    }

    pub fn set_source(&mut self, source: SourceId, mix: SourceMix) {
        self.sources.insert(source, mix);
    }

    pub fn clear_source(&mut self, source: SourceId) {
        self.sources.remove(&source);
    }

    pub fn set_duck_rules(&mut self, rules: Vec<DuckRule>) {
        self.rules = rules;
    }

    pub fn duck_rules(&self) -> &[DuckRule] {
        &self.rules
    }

    /// Current duck gain of a channel (1.0 = not ducked).
    pub fn duck_gain(&self, channel: ChannelId) -> f32 {
        self.channels.get(&channel).map_or(1.0, |s| s.duck_gain)
    }

    /// Mixes `inputs` into `out`, interleaved stereo (`out.len() == 2 * frame`).
    pub fn mix(&mut self, inputs: &[MixInput<'_>], out: &mut [f32]) -> Result<(), AudioError> {
        let frame = out.len() / 2;
        if let Some(bad) = inputs.iter().find(|i| i.samples.len() != frame) {
            return Err(AudioError::FrameLength {
                expected: frame,
                got: bad.samples.len(),
            });
        }
        out.fill(0.0);

        let Self {
            channels,
            sources,
            rules,
        } = self;
        for state in channels.values_mut() {
            state.active = false;
            state.duck_target = 1.0;
        }
        for input in inputs {
            if let Some(state) = channels.get_mut(&input.channel) {
                if !state.mix.muted && rms(input.samples) > ACTIVITY_RMS {
                    state.active = true;
                }
            }
        }
        for rule in rules.iter() {
            let trigger_active = channels.get(&rule.when_active).is_some_and(|s| s.active);
            if rule.when_active == rule.ducked || !trigger_active {
                continue;
            }
            if let Some(state) = channels.get_mut(&rule.ducked) {
                state.duck_target = state.duck_target.min(db_to_gain(-rule.db.abs()));
            }
        }
        for state in channels.values_mut() {
            let rate = if state.duck_target < state.duck_gain {
                DUCK_ATTACK
            } else {
                DUCK_RELEASE
            };
            state.next_duck_gain = state.duck_gain + (state.duck_target - state.duck_gain) * rate;
        }

        // Each channel's duck gain is ramped across the block from the last block's value, so a
        // duck starting or ending makes no click.
        for input in inputs {
            let (mix, start_gain, end_gain) = match channels.get(&input.channel) {
                Some(state) => (state.mix, state.duck_gain, state.next_duck_gain),
                None => (ChannelMix::default(), 1.0, 1.0),
            };
            if mix.muted {
                continue;
            }
            let source = sources.get(&input.source);
            let gain = mix.volume * source.map_or(1.0, |s| s.gain);
            let (left, right) = pan_gains(source.and_then(|s| s.pan).unwrap_or(mix.pan));
            let step = (end_gain - start_gain) / frame.max(1) as f32;
            for (i, (pair, sample)) in out.chunks_exact_mut(2).zip(input.samples).enumerate() {
                let g = gain * (start_gain + step * i as f32);
                pair[0] += sample * g * left;
                pair[1] += sample * g * right;
            }
        }
        for state in channels.values_mut() {
            state.duck_gain = state.next_duck_gain;
        }

        for sample in out.iter_mut() {
            *sample = soft_limit(*sample);
        }
        Ok(())
    }
}
