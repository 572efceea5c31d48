//! Prometheus metrics (text exposition via `prometheus-client`) fed from each org's node
//! counters: [`RelayMetrics::update`] takes an org's [`NodeStats`] snapshot and advances that
//! org's series (label `org`) by what changed since the last one.
//!
//! Drops are one family labelled by org and reason: the forwarder's reasons (`stranger`,
//! `ratelimited`, `orgratelimited`, ...), the voice plane's (`plane_rate_limited`,
//! `plane_unauthentic`, ...) the socket's (`handshake_rate_limited`, `not_quic`,
//! `socket_overflow`: dropped by the kernel before it was read) and the transport's
//! (`connection_limit`).

use callsign_node::link::ReadPriorityNow;
use callsign_node::runtime::NodeStats;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The label of an org's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Org {
    org: String,
}

/// The labels of a drop counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Drop {
    org: String,
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

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// See the module documentation.
pub struct RelayMetrics {
    registry: Registry,
    packets_in: Family<Org, Counter>,
    bytes_in: Family<Org, Counter>,
    packets_fast: Family<Org, Counter>,
    packets_out: Family<Org, Counter>,
    bytes_out: Family<Org, Counter>,
    drops: Family<Drop, Counter>,
    subscriptions_refused: Family<Org, Counter>,
    resubscribed: Family<Org, Counter>,
    subscribers: Family<Org, Gauge>,
    channels: Family<Org, Gauge>,
    links: Family<Org, Gauge>,
    audio_keys: Family<Org, Gauge>,
    charter_ops: Family<Org, Gauge>,
    voice_realtime: Family<Org, Gauge>,
    latency: Family<Org, LatencyHistogram>,
    /// Each org's last snapshot's drop counts by reason, and the snapshot's other counters.
    last: BTreeMap<String, Snapshot>,
}

/// The cumulative counters of one snapshot, by name.
type Snapshot = BTreeMap<String, u64>;

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("callsign_relay");
        let metrics = Self {
            packets_in: Family::default(),
            bytes_in: Family::default(),
            packets_fast: Family::default(),
            packets_out: Family::default(),
            bytes_out: Family::default(),
            drops: Family::default(),
            subscriptions_refused: Family::default(),
            resubscribed: Family::default(),
            subscribers: Family::default(),
            channels: Family::default(),
            links: Family::default(),
            audio_keys: Family::default(),
            charter_ops: Family::default(),
            voice_realtime: Family::default(),
            latency: Family::default(),
            last: BTreeMap::new(),
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
            "packets_in_fast_path",
            "Of the voice packets received, those handled where the voice plane opened them",
            m.packets_fast.clone(),
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
        registry.register(
            "drops",
            "Packets not forwarded or not let in, by reason",
            m.drops.clone(),
        );
        registry.register(
            "subscriptions_refused",
            "Subscriptions refused (not a member, no listen right, bad signature, full)",
            m.subscriptions_refused.clone(),
        );
        registry.register(
            "resubscribed",
            "Subscriptions sent again for the channels already held: members repairing their \
             voice path (the first rung of the repair ladder) or restarting their session",
            m.resubscribed.clone(),
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
            "voice_thread_realtime",
            "1 while the thread forwarding voice runs at real-time priority (voice_priority)",
            m.voice_realtime.clone(),
        );
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

    /// Advances `org`'s series to `stats`.
    pub fn update(&mut self, org: &str, stats: &NodeStats) {
        let Some(now) = &stats.forwarding else {
            return;
        };
        let label = Org { org: org.into() };
        let mut counters: Snapshot = BTreeMap::new();
        let c = &now.counts;
        counters.insert("packets_in".into(), c.packets_in);
        counters.insert("bytes_in".into(), c.bytes_in);
        counters.insert("packets_out".into(), c.packets_out);
        counters.insert("packets_fast".into(), now.links.plane.forwarded);
        counters.insert("bytes_out".into(), c.bytes_out);
        counters.insert("refused".into(), now.subscriptions_refused);
        counters.insert("resubscribed".into(), c.resubscribed);
        for (reason, n) in &c.drops {
            counters.insert(format!("drop:{reason:?}").to_lowercase(), *n);
        }
        let plane = &now.links.plane;
        for (reason, n) in [
            ("plane_rate_limited", plane.rate_limited),
            ("plane_unauthentic", plane.unauthentic),
            ("plane_replayed", plane.replayed),
            ("plane_unknown_link", plane.unknown_link),
            ("plane_malformed", plane.malformed),
            ("queue_full", now.links.queue_full),
            ("link_malformed", now.links.malformed),
            ("handshake_rate_limited", now.socket.handshakes_limited),
            ("not_quic", now.socket.garbage),
            ("socket_overflow", now.socket.kernel_drops),
            ("quic_queue_full", now.socket.quic_queue_full),
            ("connection_limit", now.links.refused),
        ] {
            counters.insert(format!("drop:{reason}"), n);
        }
        let before = self.last.remove(org).unwrap_or_default();
        let delta =
            |name: &str| counters[name].saturating_sub(before.get(name).copied().unwrap_or(0));
        self.packets_in
            .get_or_create(&label)
            .inc_by(delta("packets_in"));
        self.bytes_in
            .get_or_create(&label)
            .inc_by(delta("bytes_in"));
        self.packets_out
            .get_or_create(&label)
            .inc_by(delta("packets_out"));
        self.packets_fast
            .get_or_create(&label)
            .inc_by(delta("packets_fast"));
        self.bytes_out
            .get_or_create(&label)
            .inc_by(delta("bytes_out"));
        self.subscriptions_refused
            .get_or_create(&label)
            .inc_by(delta("refused"));
        self.resubscribed
            .get_or_create(&label)
            .inc_by(delta("resubscribed"));
        for name in counters.keys() {
            if let Some(reason) = name.strip_prefix("drop:") {
                let drop = Drop {
                    org: org.into(),
                    reason: reason.into(),
                };
                self.drops.get_or_create(&drop).inc_by(delta(name));
            }
        }
        self.subscribers
            .get_or_create(&label)
            .set(now.subscribers as i64);
        self.channels
            .get_or_create(&label)
            .set(now.channels.len() as i64);
        self.links
            .get_or_create(&label)
            .set(stats.peers.len() as i64);
        self.audio_keys
            .get_or_create(&label)
            .set(stats.audio_keys_held as i64);
        self.charter_ops
            .get_or_create(&label)
            .set(stats.charter_ops as i64);
        let realtime = now.socket.read_priority == ReadPriorityNow::Realtime;
        self.voice_realtime
            .get_or_create(&label)
            .set(i64::from(realtime));
        if let Ok(mut latency) = self.latency.get_or_create(&label).inner.lock() {
            *latency = (now.latency_us.clone(), now.latency_sum_us);
        }
        self.last.insert(org.into(), counters);
    }

    /// Forgets `org` (no longer served): its series leave the exposition.
    pub fn remove(&mut self, org: &str) {
        let label = Org { org: org.into() };
        for family in [
            &self.packets_in,
            &self.bytes_in,
            &self.packets_fast,
            &self.packets_out,
            &self.bytes_out,
            &self.subscriptions_refused,
            &self.resubscribed,
        ] {
            family.remove(&label);
        }
        for family in [
            &self.subscribers,
            &self.channels,
            &self.links,
            &self.audio_keys,
            &self.charter_ops,
            &self.voice_realtime,
        ] {
            family.remove(&label);
        }
        self.latency.remove(&label);
        if let Some(last) = self.last.remove(org) {
            for name in last.keys() {
                if let Some(reason) = name.strip_prefix("drop:") {
                    self.drops.remove(&Drop {
                        org: org.into(),
                        reason: reason.into(),
                    });
                }
            }
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
