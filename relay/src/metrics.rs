//! Prometheus metrics (text exposition via `prometheus-client`) fed from the node's counters:
//! [`RelayMetrics::update`] takes a [`NodeStats`] snapshot and advances each counter by what
//! changed since the last one.

use callsign_node::runtime::NodeStats;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The label of a drop counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// The forwarding-latency histogram, kept by the node in power-of-two microsecond buckets.
#[derive(Clone, Debug, Default)]
struct LatencyHistogram {
    inner: Arc<Mutex<(Vec<u64>, u64)>>,
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, sum_us) = self.inner.lock().map(|g| g.clone()).unwrap_or_default();
        let count = buckets.iter().sum();
        let last = buckets.len().saturating_sub(1);
        let bounds: Vec<(f64, u64)> = buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                // Bucket i holds times under 2^i µs; the last takes the rest. prometheus-client
                // spells the bound `f64::MAX` as `+Inf` (infinity itself would come out `inf`,
                // which the exposition format does not allow).
                let upper = if i == last {
                    f64::MAX
                } else {
                    (1u64 << i) as f64 / 1e6
                };
                (upper, *n)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(sum_us as f64 / 1e6, count, &bounds, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// See the module documentation.
pub struct RelayMetrics {
    registry: Registry,
    packets_in: Counter,
    bytes_in: Counter,
    packets_out: Counter,
    bytes_out: Counter,
    drops: Family<Reason, Counter>,
    subscriptions_refused: Counter,
    subscribers: Gauge,
    channels: Gauge,
    links: Gauge,
    audio_keys: Gauge,
    charter_ops: Gauge,
    latency: LatencyHistogram,
    last: Option<NodeStats>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("callsign_relay");
        let metrics = Self {
            packets_in: Counter::default(),
            bytes_in: Counter::default(),
            packets_out: Counter::default(),
            bytes_out: Counter::default(),
            drops: Family::default(),
            subscriptions_refused: Counter::default(),
            subscribers: Gauge::default(),
            channels: Gauge::default(),
            links: Gauge::default(),
            audio_keys: Gauge::default(),
            charter_ops: Gauge::default(),
            latency: LatencyHistogram::default(),
            last: None,
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "packets_in",
            "Voice packets received to forward",
            m.packets_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Voice bytes received to forward",
            m.bytes_in.clone(),
        );
        registry.register(
            "packets_out",
            "Voice copies sent to subscribers",
            m.packets_out.clone(),
        );
        registry.register(
            "bytes_out",
            "Voice bytes sent to subscribers",
            m.bytes_out.clone(),
        );
        registry.register("drops", "Packets not forwarded, by reason", m.drops.clone());
        registry.register(
            "subscriptions_refused",
            "Subscriptions refused (not a member, no listen right, bad signature, full)",
            m.subscriptions_refused.clone(),
        );
        registry.register(
            "subscribers",
            "Members subscribed now",
            m.subscribers.clone(),
        );
        registry.register(
            "channels",
            "Channels with at least one subscriber",
            m.channels.clone(),
        );
        registry.register("links", "Linked peers", m.links.clone());
        registry.register(
            "audio_keys_held",
            "Voice keys this relay holds (always 0: it cannot decrypt audio)",
            m.audio_keys.clone(),
        );
        registry.register("charter_ops", "Charter ops mirrored", m.charter_ops.clone());
        registry.register(
            "forward_latency_seconds",
            "From a packet's arrival at the link layer to its last copy handed to the links",
            m.latency.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Advances the metrics to `stats`.
    pub fn update(&mut self, stats: NodeStats) {
        let Some(now) = &stats.forwarding else {
            return;
        };
        let before = self.last.as_ref().and_then(|s| s.forwarding.clone());
        let (c, b) = (&now.counts, before.as_ref().map(|f| &f.counts));
        let delta = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0));
        self.packets_in
            .inc_by(delta(c.packets_in, b.map(|b| b.packets_in)));
        self.bytes_in
            .inc_by(delta(c.bytes_in, b.map(|b| b.bytes_in)));
        self.packets_out
            .inc_by(delta(c.packets_out, b.map(|b| b.packets_out)));
        self.bytes_out
            .inc_by(delta(c.bytes_out, b.map(|b| b.bytes_out)));
        let held: BTreeMap<_, u64> = b.map(|b| b.drops.clone()).unwrap_or_default();
        for (reason, n) in &c.drops {
            let label = Reason {
                reason: format!("{reason:?}").to_lowercase(),
            };
            self.drops
                .get_or_create(&label)
                .inc_by(delta(*n, held.get(reason).copied()));
        }
        self.subscriptions_refused.inc_by(delta(
            now.subscriptions_refused,
            before.as_ref().map(|f| f.subscriptions_refused),
        ));
        self.subscribers.set(now.subscribers as i64);
        self.channels.set(now.channels.len() as i64);
        self.links.set(stats.peers.len() as i64);
        self.audio_keys.set(stats.audio_keys_held as i64);
        self.charter_ops.set(stats.charter_ops as i64);
        if let Ok(mut latency) = self.latency.inner.lock() {
            *latency = (now.latency_us.clone(), now.latency_sum_us);
        }
        self.last = Some(stats);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
