//! Positional and proximity audio: where members are, how loud and from which side a talker
//! sounds to a listener, and who is within a proximity channel's reach.
//!
//! Coordinates are a game's, in metres, left-handed as Mumble's Link plugins give them: X to
//! the right, Y up, Z forward. A member's [`Position`] has a point, the direction it faces
//! (`front`) and its up (`top`), and a [`ContextId`]: the game, world and server it plays in.
//! Only members in the same context are placed relative to each other.
//!
//! A channel's [`Spatial`] settings (in the charter) say how distance sounds:
//! - [`SpatialMode::Positional`]: every listener of the channel hears every talker, placed by
//!   direction and attenuated by distance; beyond `range` the gain stays at its edge value.
//! - [`SpatialMode::Proximity`]: the channel's audience is everyone within `range` in the same
//!   context. Each receiver decides with [`ProximityGate`] (entering at `range`, leaving past
//!   `range + band`, so someone at the edge does not flicker); senders skip listeners whose
//!   announced position is clearly out of reach ([`Spatial::sender_reach_m`]).
//!
//! Everything here is arithmetic on values the caller passes in: no clock, no I/O.

use crate::charter::ChannelId;
use callsign_keys::IdentityKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Names a game context (game, world, server): the first eight bytes of SHA-256 of
/// `callsign/context/v1` and the text the game gives. Members in different contexts are never
/// placed relative to each other.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct ContextId(pub u64);

impl ContextId {
    /// The context named `text`.
    pub fn of(text: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"callsign/context/v1\0");
        hash.update(text.as_bytes());
        let digest = hash.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }
}

/// A point in a context: what other members learn of a member's position (voice packets carry
/// it sealed; presence carries it rounded to decimetres).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// The game context.
    pub context: ContextId,
    /// Metres, X right, Y up, Z forward.
    pub at: [f32; 3],
}

/// Bytes of a [`Point`] on the wire: context u64 BE, then x, y, z as f32 BE.
pub const POINT_LEN: usize = 20;

impl Point {
    /// The wire form (see [`POINT_LEN`]).
    pub fn to_bytes(&self) -> [u8; POINT_LEN] {
        let mut out = [0u8; POINT_LEN];
        out[..8].copy_from_slice(&self.context.0.to_be_bytes());
        for (i, v) in self.at.iter().enumerate() {
            out[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// Reads the wire form; `None` for a wrong length or a coordinate that is not finite.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != POINT_LEN {
            return None;
        }
        let context = ContextId(u64::from_be_bytes(bytes[..8].try_into().ok()?));
        let mut at = [0f32; 3];
        for (i, v) in at.iter_mut().enumerate() {
            *v = f32::from_be_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().ok()?);
        }
        at.iter()
            .all(|v| v.is_finite())
            .then_some(Self { context, at })
    }

    /// Distance in metres to `other`, or `None` in another context.
    pub fn distance(&self, other: &Point) -> Option<f32> {
        (self.context == other.context).then(|| length(sub(other.at, self.at)))
    }

    /// Rounded to decimetres, as presence carries it.
    pub fn to_decimetres(&self) -> (ContextId, [i32; 3]) {
        // `as` saturates: a point beyond ±214 km is announced at the edge.
        (self.context, self.at.map(|v| (v * 10.0).round() as i32))
    }

    /// From presence's decimetres.
    pub fn from_decimetres(context: ContextId, at: [i32; 3]) -> Self {
        Self {
            context,
            at: at.map(|v| v as f32 / 10.0),
        }
    }
}

/// Where a member is and which way it faces.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The game context.
    pub context: ContextId,
    /// Metres, X right, Y up, Z forward.
    pub at: [f32; 3],
    /// The direction the member faces (need not be unit length).
    pub front: [f32; 3],
    /// The member's up (need not be unit length, nor exactly square to `front`).
    pub top: [f32; 3],
}

/// Why a position was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PositionError {
    /// NaN or infinite.
    #[error("position coordinates must be finite numbers")]
    NotFinite,
    /// `front` or `top` is zero, or they point the same way.
    #[error("front and top must be non-zero and not parallel")]
    Degenerate,
}

impl Position {
    /// A member at `at` facing +Z with +Y up.
    pub fn facing_forward(context: ContextId, at: [f32; 3]) -> Self {
        Self {
            context,
            at,
            front: [0.0, 0.0, 1.0],
            top: [0.0, 1.0, 0.0],
        }
    }

    /// Checks the numbers: finite, and an orientation that names a direction.
    pub fn check(&self) -> Result<(), PositionError> {
        let all = self.at.iter().chain(&self.front).chain(&self.top);
        if !all.into_iter().all(|v| v.is_finite() && v.abs() < 1e9) {
            return Err(PositionError::NotFinite);
        }
        if length(cross(self.top, self.front)) < 1e-6 {
            return Err(PositionError::Degenerate);
        }
        Ok(())
    }

    /// The point others learn.
    pub fn point(&self) -> Point {
        Point {
            context: self.context,
            at: self.at,
        }
    }

    /// Where `talker` is as heard from here: its distance and azimuth (radians, 0 ahead,
    /// positive to the right, ±π behind), or `None` in another context. Height counts in the
    /// distance, not in the direction.
    pub fn bearing(&self, talker: &Point) -> Option<(f32, f32)> {
        if talker.context != self.context {
            return None;
        }
        let offset = sub(talker.at, self.at);
        let distance = length(offset);
        // Left-handed: right = top × front. Front is re-derived square to top, so a listener
        // looking down still hears left as left.
        let top = normalise(self.top);
        let right = normalise(cross(top, self.front));
        let front = cross(right, top);
        let x = dot(offset, right);
        let z = dot(offset, front);
        let azimuth = if x.abs() < 1e-6 && z.abs() < 1e-6 {
            0.0
        } else {
            x.atan2(z)
        };
        Some((distance, azimuth))
    }
}

/// How a positioned channel's audience is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SpatialMode {
    /// Listeners hear every talker, placed by direction and distance.
    Positional,
    /// Listeners hear only talkers within range in the same context.
    Proximity,
}

/// How gain falls with distance between `full` and `range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Falloff {
    /// Amplitude falls in a straight line from 1 at `full` to 0 at `range`: silence at the
    /// edge, so nobody pops in or out of a proximity channel.
    Linear,
    /// Amplitude `reference / distance` (6 dB per doubling, as sound in open air) with the
    /// reference distance `full`, at least 1 m; held at its `range` value beyond.
    Inverse,
}

/// A channel's positional settings (charter op `SetSpatial`). Distances in centimetres, so
/// the signed op has one canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Spatial {
    /// Positional or proximity.
    pub mode: SpatialMode,
    /// Beyond this, a proximity channel's talker is out of reach and a positional one stays at
    /// its edge gain.
    pub range_cm: u32,
    /// Full volume within this.
    pub full_cm: u32,
    /// How gain falls between the two.
    pub falloff: Falloff,
}

/// Least hysteresis band of a proximity channel, metres.
const MIN_BAND_M: f32 = 1.0;
/// The band as a share of the range.
const BAND_SHARE: f32 = 0.05;
/// How far a member may have moved since its presence last said where it was: presence
/// republishes after 2 m of movement, at most twice a second, so 8 m covers a sprint (senders
/// would rather send a frame the receiver drops than miss one it would play).
pub const PRESENCE_SLACK_M: f32 = 8.0;
/// Movement that makes a member announce its position again, metres.
pub const PRESENCE_STEP_M: f32 = 2.0;
/// How far left or right a talker at 90° is panned (1.0 would be one ear only, which is
/// tiring on headphones): an interaural level difference of 16 dB.
pub const PAN_SPREAD: f32 = 0.8;
/// Attenuation of a talker straight behind, dB: with equal-power panning front and back sound
/// alike, and this is the cue that tells them apart.
pub const REAR_DB: f32 = 3.0;
/// Longest range accepted, centimetres (100 km).
pub const MAX_RANGE_CM: u32 = 10_000_000;

/// Why spatial settings were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpatialError {
    /// Zero, or beyond [`MAX_RANGE_CM`].
    #[error("range must be between 1 cm and 100 km")]
    Range,
    /// `full` reaches past `range`.
    #[error("full-volume distance must be less than the range")]
    Full,
}

/// The one of `all` whose name is `text` (any case), or an error listing the names.
fn by_name<T: Copy>(
    what: &str,
    text: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, String> {
    let text = text.trim().to_ascii_lowercase();
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            format!("unknown {what} {text:?} ({})", names.join(", "))
        })
}

impl std::str::FromStr for SpatialMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        by_name(
            "spatial mode",
            text,
            &[Self::Positional, Self::Proximity],
            Self::name,
        )
    }
}

impl std::str::FromStr for Falloff {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        by_name("falloff", text, &[Self::Linear, Self::Inverse], Self::name)
    }
}

impl SpatialMode {
    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Positional => "positional",
            Self::Proximity => "proximity",
        }
    }
}

impl Falloff {
    /// The falloff's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Inverse => "inverse",
        }
    }
}

/// How a talker sounds to a listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    /// Not placed (no position on one side, or another context on a positional channel): the
    /// channel's own volume and pan.
    Unplaced,
    /// Not heard (a proximity channel's talker out of reach, in another context, or unplaced).
    Silent,
    /// Linear gain and pan (-1 left, +1 right).
    Placed {
        /// Amplitude, 0.0–1.0 (times the rear cue).
        gain: f32,
        /// Equal-power pan position.
        pan: f32,
    },
}

impl Spatial {
    /// Settings from metres, checked.
    pub fn from_metres(
        mode: SpatialMode,
        range_m: f64,
        full_m: f64,
        falloff: Falloff,
    ) -> Result<Self, SpatialError> {
        let cm = |m: f64| {
            (m.is_finite() && m >= 0.0 && m * 100.0 <= f64::from(MAX_RANGE_CM))
                .then(|| (m * 100.0).round() as u32)
        };
        let spatial = Self {
            mode,
            range_cm: cm(range_m).ok_or(SpatialError::Range)?,
            full_cm: cm(full_m).ok_or(SpatialError::Full)?,
            falloff,
        };
        spatial.check()?;
        Ok(spatial)
    }

    /// Checks the numbers.
    pub fn check(&self) -> Result<(), SpatialError> {
        if self.range_cm == 0 || self.range_cm > MAX_RANGE_CM {
            return Err(SpatialError::Range);
        }
        if self.full_cm >= self.range_cm {
            return Err(SpatialError::Full);
        }
        Ok(())
    }

    /// Range in metres.
    pub fn range_m(&self) -> f32 {
        self.range_cm as f32 / 100.0
    }

    /// Full-volume distance in metres.
    pub fn full_m(&self) -> f32 {
        self.full_cm as f32 / 100.0
    }

    /// The hysteresis band of a proximity channel: someone in reach stays in reach until this
    /// far past the range. 5 % of the range, at least a metre.
    pub fn band_m(&self) -> f32 {
        (self.range_m() * BAND_SHARE).max(MIN_BAND_M)
    }

    /// How far from a talker a listener's announced position may be and still get its frames:
    /// the range, the band and [`PRESENCE_SLACK_M`].
    pub fn sender_reach_m(&self) -> f32 {
        self.range_m() + self.band_m() + PRESENCE_SLACK_M
    }

    /// Amplitude at `distance` metres (1.0 within `full`).
    pub fn gain_at(&self, distance: f32) -> f32 {
        let (full, range) = (self.full_m(), self.range_m());
        let d = distance.clamp(full, range);
        match self.falloff {
            Falloff::Linear => 1.0 - (d - full) / (range - full),
            Falloff::Inverse => {
                let reference = full.max(1.0);
                reference / d.max(reference)
            }
        }
    }

    /// How `talker` sounds to `listener` on a channel with these settings. Proximity reach is
    /// the [`ProximityGate`]'s question; here a proximity talker past the range is placed at
    /// the edge gain.
    pub fn place(&self, listener: Option<&Position>, talker: Option<&Point>) -> Placement {
        let bearing = listener.zip(talker).and_then(|(l, t)| l.bearing(t));
        match (bearing, self.mode) {
            (None, SpatialMode::Positional) => Placement::Unplaced,
            (None, SpatialMode::Proximity) => Placement::Silent,
            (Some((distance, azimuth)), _) => {
                let behind = (-azimuth.cos()).max(0.0);
                let rear = 10f32.powf(-REAR_DB * behind / 20.0);
                Placement::Placed {
                    gain: self.gain_at(distance) * rear,
                    pan: PAN_SPREAD * azimuth.sin(),
                }
            }
        }
    }
}

/// A receiver's view of who is within reach on its proximity channels, with hysteresis: a
/// talker enters at the range and leaves only past the range plus the band.
#[derive(Clone, Debug, Default)]
pub struct ProximityGate {
    inside: BTreeMap<(IdentityKey, ChannelId), bool>,
}

impl ProximityGate {
    /// A gate with nobody in reach.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `talker`, at `distance` metres (`None`: unplaced or in another context), is heard
    /// on `channel`; remembers the answer for the hysteresis.
    pub fn admit(
        &mut self,
        talker: IdentityKey,
        channel: ChannelId,
        spatial: &Spatial,
        distance: Option<f32>,
    ) -> bool {
        let was_inside = self
            .inside
            .get(&(talker, channel))
            .copied()
            .unwrap_or(false);
        let inside = match distance {
            None => false,
            Some(d) if was_inside => d <= spatial.range_m() + spatial.band_m(),
            Some(d) => d <= spatial.range_m(),
        };
        if inside {
            self.inside.insert((talker, channel), true);
        } else {
            self.inside.remove(&(talker, channel));
        }
        inside
    }
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn length(a: [f32; 3]) -> f32 {
    dot(a, a).sqrt()
}

fn normalise(a: [f32; 3]) -> [f32; 3] {
    let l = length(a);
    if l < 1e-12 {
        a
    } else {
        a.map(|v| v / l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ContextId {
        ContextId::of("game/world-1")
    }

    fn listener() -> Position {
        Position::facing_forward(ctx(), [0.0, 0.0, 0.0])
    }

    fn at(x: f32, z: f32) -> Point {
        Point {
            context: ctx(),
            at: [x, 0.0, z],
        }
    }

    #[test]
    fn bearings_follow_the_listener_frame() {
        let l = listener();
        let deg = |p: Point| l.bearing(&p).unwrap().1.to_degrees();
        assert!(deg(at(0.0, 5.0)).abs() < 1e-3);
        assert!((deg(at(5.0, 0.0)) - 90.0).abs() < 1e-3);
        assert!((deg(at(-5.0, 0.0)) + 90.0).abs() < 1e-3);
        assert!((deg(at(0.0, -5.0)).abs() - 180.0).abs() < 1e-3);
        // Turned to face +X, a talker at +X is ahead and one at +Z is to the left.
        let turned = Position {
            front: [1.0, 0.0, 0.0],
            ..l
        };
        assert!(turned.bearing(&at(5.0, 0.0)).unwrap().1.abs() < 1e-3);
        assert!((turned.bearing(&at(0.0, 5.0)).unwrap().1.to_degrees() + 90.0).abs() < 1e-3);
        // Another context has no bearing.
        let elsewhere = Point {
            context: ContextId::of("game/world-2"),
            at: [0.0, 0.0, 1.0],
        };
        assert_eq!(l.bearing(&elsewhere), None);
    }

    #[test]
    fn points_round_trip_and_refuse_nonsense() {
        let p = at(1.5, -2.25);
        assert_eq!(Point::from_bytes(&p.to_bytes()), Some(p));
        let mut bad = p.to_bytes();
        bad[8..12].copy_from_slice(&f32::NAN.to_be_bytes());
        assert_eq!(Point::from_bytes(&bad), None);
        assert_eq!(Point::from_bytes(&bad[..19]), None);
        let degenerate = Position {
            top: [0.0, 0.0, 2.0],
            ..listener()
        };
        assert_eq!(degenerate.check(), Err(PositionError::Degenerate));
    }

    #[test]
    fn gate_has_hysteresis() {
        let spatial = Spatial {
            mode: SpatialMode::Proximity,
            range_cm: 2000,
            full_cm: 0,
            falloff: Falloff::Linear,
        };
        let talker = {
            use rand::SeedableRng;
            callsign_keys::Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(3))
                .public()
        };
        let mut gate = ProximityGate::new();
        let ch = ChannelId(1);
        assert!(!gate.admit(talker, ch, &spatial, Some(20.5)));
        assert!(gate.admit(talker, ch, &spatial, Some(19.9)));
        // Inside the band: stays in.
        assert!(gate.admit(talker, ch, &spatial, Some(20.9)));
        assert!(!gate.admit(talker, ch, &spatial, Some(21.1)));
        assert!(!gate.admit(talker, ch, &spatial, Some(20.9)));
        assert!(!gate.admit(talker, ch, &spatial, None));
    }
}
