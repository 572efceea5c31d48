//! The channels this node records, each to its own file (see [`crate::recording`]). The member
//! decides whether a channel may be recorded (the charter's policy) and announces it; this
//! writes what it plays.

use crate::recording::{ChannelRecording, RecordingError, Sidecar};
use callsign_mesh::charter::ChannelId;
use callsign_mesh::voice::{ReceivedFrame, VoiceFlags};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// See the module documentation.
pub(crate) struct Recorder {
    dir: Option<PathBuf>,
    active: BTreeMap<ChannelId, ChannelRecording>,
}

impl Recorder {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            active: BTreeMap::new(),
        }
    }

    /// Whether nothing is being recorded (the common case, checked for every played frame).
    pub(crate) fn is_idle(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether recordings have somewhere to go.
    pub(crate) fn can_record(&self) -> bool {
        self.dir.is_some()
    }

    /// Opens `<dir>/<channel path>-<unix ms>.opus`.
    pub(crate) fn start(
        &mut self,
        channel: ChannelId,
        path: &str,
        recorded_by: &str,
        unix_ms: u64,
        now: Instant,
    ) -> Result<PathBuf, RecordingError> {
        let Some(dir) = &self.dir else {
            return Err(RecordingError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("no recordings folder configured"),
            });
        };
        if let Some(open) = self.active.get(&channel) {
            return Ok(open.path().to_path_buf());
        }
        let stem: String = path
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("{stem}-{unix_ms}");
        let recording = ChannelRecording::create(dir, &name, path, recorded_by, unix_ms, now)?;
        let file = recording.path().to_path_buf();
        self.active.insert(channel, recording);
        Ok(file)
    }

    /// Closes a channel's recording, if one runs.
    pub(crate) fn stop(&mut self, channel: ChannelId) -> Option<Result<Sidecar, RecordingError>> {
        self.active.remove(&channel).map(ChannelRecording::finish)
    }

    /// Writes a played frame to the recordings of its channels (never a whisper: it is ours).
    pub(crate) fn frame(
        &mut self,
        frame: &ReceivedFrame,
        name: &str,
        now: Instant,
    ) -> Vec<(ChannelId, RecordingError)> {
        let mut errors = Vec::new();
        if frame.whisper {
            return errors;
        }
        let start = frame.header.flags.contains(VoiceFlags::START);
        for channel in &frame.channels {
            if let Some(recording) = self.active.get_mut(channel) {
                if let Err(e) = recording.frame(
                    frame.sender,
                    name,
                    frame.header.timestamp,
                    start,
                    &frame.payload,
                    now,
                ) {
                    errors.push((*channel, e));
                }
            }
        }
        errors
    }
}
