//! Recording what a member hears: one Ogg Opus file per channel holding the received packets
//! as they are (no re-encoding), on the listener's timeline, and a JSON sidecar of talker
//! segments. Runs on the driver (never in an audio callback).
//!
//! The file's timeline starts when recording starts. Each talk spurt is anchored at the arrival
//! of its first frame and follows the sender's media timestamps from there; gaps (between
//! talkers, and lost frames) are filled with 20 ms silence frames. A file carries one voice at a
//! time: a talker who overlaps the one being written is listed in the sidecar with the frames
//! left out (`overlapped`), and a frame arriving after its slot was written is dropped (`late`).

mod ogg;

pub use ogg::{crc32, opus_packet_samples, OggOpusWriter, SILENCE_FRAME};

use callsign_keys::IdentityKey;
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The sidecar's format version.
pub const SIDECAR_VERSION: u32 = 1;

/// How far (48 kHz samples) a frame may sit ahead of its arrival on the file's timeline: a
/// jitter buffer's worth; beyond it the spurt is re-anchored where the frame arrived.
const AHEAD_OF_ARRIVAL: u32 = 48_000 / 2;

/// After this long without a frame, a talker's spurt is over (a lost END frame).
const SPURT_GAP: Duration = Duration::from_millis(200);

/// Why a recording could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One talker's spurt in the file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Segment {
    /// The talker's identity key.
    pub talker: String,
    /// Its display name.
    pub name: String,
    /// Milliseconds from the file's start to the spurt's first sample.
    pub start_ms: u64,
    /// To its last sample (written or not).
    pub end_ms: u64,
    /// Frames written to the file.
    pub frames: u64,
    /// Frames left out because another talker was being written.
    pub overlapped: u64,
}

/// The sidecar file (`<recording>.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Sidecar {
    pub version: u32,
    /// The channel's path.
    pub channel: String,
    /// Who recorded.
    pub recorded_by: String,
    /// Unix milliseconds at the file's start.
    pub started_unix_ms: u64,
    /// Length of the file's timeline.
    pub duration_ms: u64,
    pub segments: Vec<Segment>,
    /// Silence frames written into gaps.
    pub silence_frames: u64,
    /// Frames that came after their place in the file was written.
    pub late: u64,
}

/// The spurt being written: whose, and where its media timestamps sit in the file.
struct Anchor {
    talker: IdentityKey,
    timestamp: u32,
    granule: u64,
    segment: usize,
    last_seen: Instant,
}

/// One channel's recording in progress.
pub struct ChannelRecording {
    path: PathBuf,
    file: BufWriter<File>,
    ogg: Option<OggOpusWriter>,
    started: Instant,
    sidecar: Sidecar,
    anchor: Option<Anchor>,
    /// Spurts of talkers not being written (overlapping), by talker: segment index, last seen.
    others: Vec<(IdentityKey, usize, Instant)>,
}

impl ChannelRecording {
    /// Creates `<dir>/<name>.opus` (and, when finished, `<name>.opus.json`) and writes the
    /// headers.
    pub fn create(
        dir: &Path,
        name: &str,
        channel_path: &str,
        recorded_by: &str,
        started_unix_ms: u64,
        now: Instant,
    ) -> Result<Self, RecordingError> {
        let path = dir.join(format!("{name}.opus"));
        let io = |source| RecordingError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = File::create(&path).map_err(io)?;
        let serial = crc32(path.to_string_lossy().as_bytes()) ^ started_unix_ms as u32;
        let tags = vec![
            format!("TITLE={channel_path}"),
            format!("ARTIST={recorded_by}"),
            "ENCODER=callsign (received packets, not re-encoded)".to_string(),
        ];
        let (ogg, headers) = OggOpusWriter::start(serial, &tags);
        let mut file = BufWriter::new(file);
        file.write_all(&headers).map_err(io)?;
        Ok(Self {
            path: path.clone(),
            file,
            ogg: Some(ogg),
            started: now,
            sidecar: Sidecar {
                version: SIDECAR_VERSION,
                channel: channel_path.to_string(),
                recorded_by: recorded_by.to_string(),
                started_unix_ms,
                duration_ms: 0,
                segments: Vec::new(),
                silence_frames: 0,
                late: 0,
            },
            anchor: None,
            others: Vec::new(),
        })
    }

    /// The `.opus` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a received frame: `timestamp` is the sender's media timestamp, `start` whether it
    /// opens a transmission.
    pub fn frame(
        &mut self,
        talker: IdentityKey,
        name: &str,
        timestamp: u32,
        start: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), RecordingError> {
        let Some(samples) = opus_packet_samples(payload) else {
            return Ok(());
        };
        let arrival = samples_since(self.started, now);
        let written = self.ogg.as_ref().map_or(0, OggOpusWriter::granule);
        let current = self
            .anchor
            .as_ref()
            .filter(|a| now.saturating_duration_since(a.last_seen) < SPURT_GAP);
        match current {
            Some(a) if a.talker != talker => {
                self.overlap(talker, name, arrival, samples, now);
                return Ok(());
            }
            Some(_) if !start => {}
            _ => {
                // A new spurt: anchored where it arrived, or right after what is written.
                let segment = self.sidecar.segments.len();
                let granule = arrival.max(written);
                self.sidecar.segments.push(Segment {
                    talker: talker.to_string(),
                    name: name.to_string(),
                    start_ms: granule / 48,
                    end_ms: granule / 48,
                    frames: 0,
                    overlapped: 0,
                });
                self.anchor = Some(Anchor {
                    talker,
                    timestamp,
                    granule,
                    segment,
                    last_seen: now,
                });
            }
        }
        let Some(anchor) = self.anchor.as_mut() else {
            return Ok(());
        };
        anchor.last_seen = now;
        let offset = timestamp.wrapping_sub(anchor.timestamp);
        if offset > u32::MAX / 2 {
            // Before the spurt's anchor: reordered across a new anchor.
            self.sidecar.late += 1;
            return Ok(());
        }
        let mut slot = anchor.granule + u64::from(offset);
        if slot > arrival + u64::from(AHEAD_OF_ARRIVAL) {
            // The sender's clock ran ahead of ours (or lies): the file's timeline follows
            // arrival, so a jumping timestamp cannot fill the disk with silence.
            anchor.timestamp = timestamp;
            anchor.granule = arrival.max(written);
            slot = anchor.granule;
        }
        let segment = anchor.segment;
        if slot < written {
            self.sidecar.late += 1;
            return Ok(());
        }
        let silence = (slot - written) / 960;
        for _ in 0..silence {
            self.push(&SILENCE_FRAME, 960)?;
        }
        self.sidecar.silence_frames += silence;
        self.push(payload, samples)?;
        let end = self.ogg.as_ref().map_or(0, OggOpusWriter::granule);
        let seg = &mut self.sidecar.segments[segment];
        seg.frames += 1;
        seg.end_ms = end / 48;
        Ok(())
    }

    fn overlap(
        &mut self,
        talker: IdentityKey,
        name: &str,
        arrival: u64,
        samples: u32,
        now: Instant,
    ) {
        self.others
            .retain(|(_, _, seen)| now.saturating_duration_since(*seen) < SPURT_GAP);
        let index = match self.others.iter_mut().find(|(t, _, _)| *t == talker) {
            Some(entry) => {
                entry.2 = now;
                entry.1
            }
            None => {
                self.sidecar.segments.push(Segment {
                    talker: talker.to_string(),
                    name: name.to_string(),
                    start_ms: arrival / 48,
                    end_ms: arrival / 48,
                    frames: 0,
                    overlapped: 0,
                });
                let index = self.sidecar.segments.len() - 1;
                self.others.push((talker, index, now));
                index
            }
        };
        let seg = &mut self.sidecar.segments[index];
        seg.overlapped += 1;
        seg.end_ms = (arrival + u64::from(samples)) / 48;
    }

    fn push(&mut self, packet: &[u8], samples: u32) -> Result<(), RecordingError> {
        let Some(ogg) = self.ogg.as_mut() else {
            return Ok(());
        };
        if let Some(page) = ogg.push(packet, samples) {
            self.file
                .write_all(&page)
                .and_then(|()| self.file.flush())
                .map_err(|source| RecordingError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Ends the stream and writes the sidecar; returns it.
    pub fn finish(mut self) -> Result<Sidecar, RecordingError> {
        self.close()
    }

    fn close(&mut self) -> Result<Sidecar, RecordingError> {
        let io = |path: &Path, source| RecordingError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(ogg) = self.ogg.take() {
            self.sidecar.duration_ms = ogg.granule() / 48;
            let last = ogg.finish();
            self.file
                .write_all(&last)
                .and_then(|()| self.file.flush())
                .map_err(|e| io(&self.path, e))?;
            let side = sidecar_path(&self.path);
            let json = serde_json::to_vec_pretty(&self.sidecar).unwrap_or_default();
            std::fs::write(&side, json).map_err(|e| io(&side, e))?;
        }
        Ok(self.sidecar.clone())
    }
}

impl Drop for ChannelRecording {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(%e, "finishing a recording");
        }
    }
}

/// `<file>.opus.json` beside `<file>.opus`.
pub fn sidecar_path(recording: &Path) -> PathBuf {
    let mut name = recording.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn samples_since(start: Instant, now: Instant) -> u64 {
    let elapsed = now.saturating_duration_since(start);
    (elapsed.as_micros() * 48 / 1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_keys::Identity;

    fn talker(seed: u8) -> IdentityKey {
        Identity::from_secret_bytes([seed; 32]).public()
    }

    /// Frames of `who` every 20 ms from `from_ms` for `count` frames, timestamps from `ts`.
    fn spurt(
        r: &mut ChannelRecording,
        start: Instant,
        who: IdentityKey,
        from_ms: u64,
        count: u32,
        ts: u32,
    ) {
        for i in 0..count {
            let now = start + Duration::from_millis(from_ms + 20 * u64::from(i));
            r.frame(who, "t", ts + 960 * i, i == 0, &SILENCE_FRAME, now)
                .unwrap();
        }
    }

    #[test]
    fn talkers_gaps_overlaps_and_lying_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let mut r = ChannelRecording::create(dir.path(), "ch", "/ch", "me", 0, start).unwrap();
        let (a, b) = (talker(1), talker(2));
        // a talks 0.5 s from 100 ms; b overlaps from 300 ms and goes on after a stops.
        spurt(&mut r, start, a, 100, 25, 5_000);
        spurt(&mut r, start, b, 300, 10, 90_000);
        // b again alone at 1 s; then a with a timestamp that jumps 10 hours mid-spurt.
        spurt(&mut r, start, b, 1_000, 10, 200_000);
        spurt(&mut r, start, a, 1_500, 5, 7_000);
        for i in 0..5u32 {
            let now = start + Duration::from_millis(1_600 + 20 * u64::from(i));
            let ts = 7_000 + 48_000 * 36_000 + 960 * i;
            r.frame(a, "t", ts, false, &SILENCE_FRAME, now).unwrap();
        }
        // A frame from a's first spurt arriving now is late.
        r.frame(
            a,
            "t",
            5_000,
            false,
            &SILENCE_FRAME,
            start + Duration::from_millis(1_700),
        )
        .unwrap();
        let path = r.path().to_path_buf();
        let side = r.finish().unwrap();
        let spans: Vec<(u64, u64, u64, u64)> = side
            .segments
            .iter()
            .map(|s| (s.start_ms, s.end_ms, s.frames, s.overlapped))
            .collect();
        assert_eq!(spans[0], (100, 600, 25, 0));
        // b's overlapping frames are counted, not written.
        assert_eq!((spans[1].2, spans[1].3), (0, 10));
        assert_eq!(spans[2], (1_000, 1_200, 10, 0));
        assert_eq!(spans[3].0, 1_500);
        // The jump re-anchors at arrival: the file is 1.7 s long, not ten hours.
        assert_eq!(side.duration_ms, 1_700);
        assert_eq!(side.late, 1);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() < 10_000, "{} bytes", bytes.len());
        assert!(sidecar_path(&path).exists());
    }
}
