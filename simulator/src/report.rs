//! What a run reports: per stream, per path, the charter, drops, and the trace hash.

use crate::network::NetworkCounts;
use callsign_mesh::voice::DropCounts;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencyReport {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// One sender → listener stream on one channel (or a whisper).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamReport {
    pub from: String,
    pub to: String,
    pub channel: String,
    pub frames_sent: u64,
    pub frames_played: u64,
    pub frames_concealed: u64,
    /// Frames the network lost on this stream (some recovered by FEC).
    pub frames_lost: u64,
    pub mouth_to_ear_ms: Option<LatencyReport>,
}

/// Totals per channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChannelStats {
    pub channel: String,
    pub frames_sent: u64,
    pub frames_played: u64,
}

/// How a pair of nodes ended up linked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathReport {
    pub a: String,
    pub b: String,
    /// `direct` (a QUIC link came up), or `none`.
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CharterReport {
    /// Every node ended with the same charter state.
    pub converged: bool,
    /// From the last charter edit to the last node applying it (virtual time).
    pub convergence_ms: Option<f64>,
    pub ops: usize,
}

/// See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// SHA-256 of the event trace (virtual times, nodes, events) and the stream counters.
    pub trace_hash: String,
    pub streams: Vec<StreamReport>,
    pub channels: Vec<ChannelStats>,
    pub paths: Vec<PathReport>,
    pub charter: CharterReport,
    /// Receive-side drops over all nodes, by reason.
    pub drops: DropCounts,
    /// What the simulated network did to datagrams. Diagnostic, outside the trace hash: it
    /// counts QUIC/TLS handshake datagrams too, whose number can differ by a few between runs
    /// because their random key material varies in encoded length.
    pub network: NetworkCounts,
    pub trace_lines: usize,
    /// The event trace, one line per event: `virtual-ms node event`.
    #[serde(skip)]
    pub trace: Vec<String>,
}

impl Report {
    /// Frames played over frames sent, over every stream.
    pub fn delivery(&self) -> f64 {
        let sent: u64 = self.streams.iter().map(|s| s.frames_sent).sum();
        let played: u64 = self.streams.iter().map(|s| s.frames_played).sum();
        played as f64 / sent.max(1) as f64
    }

    /// The stream from `from` to `to` on `channel`.
    pub fn stream(&self, from: &str, to: &str, channel: &str) -> Option<&StreamReport> {
        self.streams
            .iter()
            .find(|s| s.from == from && s.to == to && s.channel == channel)
    }
}
