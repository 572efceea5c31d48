//! `callsign-relay bench`: speakers send voice-sized packets to a forwarder that copies each
//! to every other subscriber, over real loopback sockets, twice in one run:
//!
//! 1. the baseline, a plain UDP forwarder (`callsign-relay udp-forward`, a child process: one
//!    blocking socket, `recv_from` then one `send_to` per subscriber, no checks);
//! 2. the relay itself (`callsign-relay run`, a child process from a generated config): QUIC
//!    links with TLS, signed subscriptions checked against a charter, enveloped voice packets
//!    sealed with a real sender key, checked and forwarded as in production (on the voice
//!    plane: sealed per link, copies batched into `sendmmsg`).
//!
//! Each child's CPU time (`/proc/<pid>/schedstat`) and peak memory (`VmHWM`) are read around
//! the measurement, so the parent's own work (the subscribers) does not count. The relay is
//! measured once it has parked its members' idle links (`RELAY_PARK_AFTER` after the last
//! subscription), as it runs for the rest of an op. Reported:
//! copies delivered per second, copies per CPU-second of the forwarder ("per core"), the
//! forwarder's CPU share, sender-to-subscriber latency p50/p99, and the relay/baseline ratios.
//! Latency runs from the speaker's send to the moment the subscriber's socket reader took the
//! copy: the baseline's `recv` returning, the relay subscriber's link layer opening it (its
//! `received_at`), so the bench's own task scheduling after that counts on neither side.
//!
//! With `--orgs N` ([`orgs`]) the relay serves N orgs at once instead, measured quiet and then
//! with the first org flooding, and the report is per org.

mod baseline;
mod orgs;
mod process;
mod relayed;

pub use process::udp_forward;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Subscribers to the channel (the speakers among them).
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// Members talking at once.
    #[arg(long, default_value_t = 1)]
    pub speakers: usize,
    /// Packets per second per speaker (a 20 ms Opus talker sends 50).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Seconds measured (after every subscriber is in).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Opus payload bytes (24 kb/s at 20 ms is 60).
    #[arg(long, default_value_t = 60)]
    pub payload: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Without `--orgs`: measure both forwarders this many times, alternating; the report's
    /// ratios are the medians over rounds, as one round's machine noise (±0.05 to ±0.2 in the
    /// ratio) is larger than most changes worth measuring (see also `--together`).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Serve this many orgs from one relay process (each with `--subscribers` members and
    /// `--speakers` speakers), quiet and then with the first org flooding; no baseline.
    #[arg(long, default_value_t = 1)]
    pub orgs: usize,
    /// With `--orgs`: the flooding org's speakers send this many times `--member-limit`.
    #[arg(long, default_value_t = 20)]
    pub flood: u32,
    /// With `--orgs`: what the first org is flooded with.
    #[arg(long, value_enum, default_value_t = FloodKind::Voice)]
    pub flood_with: FloodKind,
    /// With `--orgs`: packets per second the relay lets each member send.
    #[arg(long, default_value_t = 100)]
    pub member_limit: u32,
    /// Run the forwarder under test on a core of its own and the bench's clients on the others
    /// (Linux, two cores or more), for both forwarders alike: the clients' work then never
    /// interrupts the forwarder's, and rounds spread less. For comparing changes; the
    /// headline figures are measured without it, as they always were, so they stay comparable.
    #[arg(long)]
    pub pin: bool,
    /// With `--pin`: the core the forwarders run on (the last one the bench may use).
    #[arg(skip)]
    pub forwarder_cpu: Option<usize>,
    /// Without `--orgs`: in each round both forwarders forward at the same time, each for its
    /// own clients, so whatever slows the machine for a while (a neighbour on the host, the
    /// clock) weighs on both alike instead of on one round's turn. Their latencies then
    /// include each other's load: for comparing changes by their ratios.
    #[arg(long)]
    pub together: bool,
    /// The relay's `voice_priority` (the production default: real-time while not busy; see
    /// `callsign_node::link::priority`). `normal` for comparing.
    #[arg(long, value_enum, default_value_t = VoicePriority::Realtime)]
    pub voice_priority: VoicePriority,
    /// With `--together`: where both forwarders' clients wait for each other before speaking.
    #[arg(skip)]
    start: Option<Arc<tokio::sync::Barrier>>,
}

/// `--flood-with`: what the first org's port gets in the flood run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloodKind {
    /// Its own members' speakers send `--flood` times their limit: authentic voice, refused
    /// above each member's rate.
    Voice,
    /// A stranger sends datagrams as fast as one core can, from one socket on another
    /// loopback address: junk, forged voice-plane datagrams, QUIC short headers for no
    /// connection and QUIC Initials that do not open, in turn (`orgs::garbage`). Its own
    /// members talk as in the quiet run.
    Garbage,
}

/// `--voice-priority`, as written in the relay's config.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoicePriority {
    Realtime,
    Normal,
}

impl VoicePriority {
    fn config_line(self) -> &'static str {
        match self {
            Self::Realtime => "voice_priority = \"realtime\"\n",
            Self::Normal => "voice_priority = \"normal\"\n",
        }
    }
}

impl BenchOptions {
    /// Waits until the other forwarder's clients are ready too (`--together`).
    async fn ready(&self) {
        if let Some(start) = &self.start {
            start.wait().await;
        }
    }
}

/// One forwarder's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub forwarder: &'static str,
    pub packets_sent: u64,
    pub copies_expected: u64,
    pub copies_delivered: u64,
    pub copies_per_second: f64,
    /// Copies per second of the forwarder's CPU time.
    pub copies_per_cpu_second: f64,
    /// The forwarder's CPU use over the measurement, percent of one core.
    pub cpu_percent: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    /// The forwarder's peak resident memory, KiB.
    pub peak_rss_kib: u64,
    /// The relay's own forwarding latency (a packet's arrival at its link layer to its last
    /// copy handed to the kernel): the mean, and p99 as the upper bound of its power-of-two
    /// histogram bucket; the baseline has none.
    pub inside_mean_us: Option<u64>,
    pub inside_p99_us: Option<u64>,
    /// The relay's CPU with every subscriber linked and nobody talking, ms per second; the
    /// baseline has no links.
    pub idle_cpu_ms_per_s: Option<f64>,
    /// Seconds from the relay's members' first dials until all of them subscribed: more than
    /// `limits.quic_connections` join in waves, as links go quiet and are parked.
    pub joined_s: Option<f64>,
}

/// One round's ratios.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Round {
    pub efficiency_ratio: f64,
    /// Each forwarder's CPU per copy delivered, µs: which side a round's noise fell on.
    pub baseline_cpu_per_copy_us: f64,
    pub relay_cpu_per_copy_us: f64,
    pub added_latency_p50_us: i64,
    pub added_latency_p99_us: i64,
}

impl Round {
    fn of(baseline: &Measurement, relay: &Measurement) -> Self {
        Self {
            efficiency_ratio: relay.copies_per_cpu_second
                / baseline.copies_per_cpu_second.max(1e-9),
            baseline_cpu_per_copy_us: 1e6 / baseline.copies_per_cpu_second.max(1e-9),
            relay_cpu_per_copy_us: 1e6 / relay.copies_per_cpu_second.max(1e-9),
            added_latency_p50_us: relay.latency_p50_us as i64 - baseline.latency_p50_us as i64,
            added_latency_p99_us: relay.latency_p99_us as i64 - baseline.latency_p99_us as i64,
        }
    }
}

/// Both runs and their ratios: with several rounds, each ratio is its median over them, and
/// `baseline` and `relay` are the round with the median efficiency.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub subscribers: usize,
    pub speakers: usize,
    pub rate: u32,
    pub seconds: f64,
    /// The core both forwarders ran on alone (`--pin`).
    pub forwarder_cpu: Option<usize>,
    /// Both forwarders forwarded at the same time (`--together`).
    pub together: bool,
    pub rounds: Vec<Round>,
    pub baseline: Measurement,
    pub relay: Measurement,
    /// relay / baseline, copies per CPU-second.
    pub efficiency_ratio: f64,
    /// relay − baseline, latency p50 and p99, µs.
    pub added_latency_p50_us: i64,
    pub added_latency_p99_us: i64,
}

/// Runs both measurements and prints the report.
pub fn run(mut options: BenchOptions) -> Result<()> {
    if options.subscribers < 2 || options.speakers == 0 || options.speakers > options.subscribers {
        bail!("need at least 2 subscribers and 1 to subscribers speakers");
    }
    if options.rate == 0 || options.seconds <= 0.0 {
        bail!("rate and seconds must be positive");
    }
    if options.orgs == 0 || options.member_limit == 0 || options.rounds == 0 {
        bail!("orgs, member-limit and rounds must be positive");
    }
    if options.pin {
        // Before the runtime starts its threads: they inherit the clients' cores.
        options.forwarder_cpu = Some(process::pin_apart()?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if options.orgs > 1 {
        let report = runtime.block_on(orgs::measure(&options))?;
        if options.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            orgs::print(&report);
        }
        return Ok(());
    }
    let mut measured = Vec::new();
    for _ in 0..options.rounds {
        let (baseline, relay) = if options.together {
            let both = BenchOptions {
                start: Some(Arc::new(tokio::sync::Barrier::new(2))),
                ..options.clone()
            };
            runtime.block_on(async {
                tokio::try_join!(baseline::measure(&both), relayed::measure(&both))
            })?
        } else {
            let baseline = runtime.block_on(baseline::measure(&options))?;
            (baseline, runtime.block_on(relayed::measure(&options))?)
        };
        measured.push((Round::of(&baseline, &relay), baseline, relay));
    }
    let rounds: Vec<Round> = measured.iter().map(|(round, _, _)| *round).collect();
    let median = |value: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    // The round with the median ratio: the middle one once sorted by it (at least one ran).
    measured.sort_by(|a, b| a.0.efficiency_ratio.total_cmp(&b.0.efficiency_ratio));
    let (median_round, baseline, relay) = measured.swap_remove(measured.len() / 2);
    let efficiency_ratio = median_round.efficiency_ratio;
    let report = BenchReport {
        subscribers: options.subscribers,
        speakers: options.speakers,
        rate: options.rate,
        seconds: options.seconds,
        forwarder_cpu: options.forwarder_cpu,
        together: options.together,
        efficiency_ratio,
        added_latency_p50_us: median(|r| r.added_latency_p50_us as f64) as i64,
        added_latency_p99_us: median(|r| r.added_latency_p99_us as f64) as i64,
        rounds,
        baseline,
        relay,
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &BenchReport) {
    let pinned = r
        .forwarder_cpu
        .map(|cpu| format!("; forwarders alone on core {cpu}"))
        .unwrap_or_default();
    let pinned = match r.together {
        true => format!("{pinned}; both forwarders at once"),
        false => pinned,
    };
    println!(
        "{} subscribers, {} speaker(s) at {} packets/s, {} s{pinned}",
        r.subscribers, r.speakers, r.rate, r.seconds
    );
    for m in [&r.baseline, &r.relay] {
        println!(
            "  {:<9} delivered {}/{} copies ({:.0}/s); {:.0} copies per CPU-second; CPU {:.1} %; \
             latency p50 {} µs, p99 {} µs; peak RSS {} KiB",
            m.forwarder,
            m.copies_delivered,
            m.copies_expected,
            m.copies_per_second,
            m.copies_per_cpu_second,
            m.cpu_percent,
            m.latency_p50_us,
            m.latency_p99_us,
            m.peak_rss_kib
        );
    }
    if let (Some(mean), Some(p99)) = (r.relay.inside_mean_us, r.relay.inside_p99_us) {
        let p99 = match p99 {
            u64::MAX => "beyond the histogram's last bound".to_string(),
            p99 => format!("≤ {p99} µs"),
        };
        println!("  inside the relay, arrival to last copy sent: mean {mean} µs, p99 {p99}");
    }
    if let Some(idle) = r.relay.idle_cpu_ms_per_s {
        println!("  relay idle (everyone linked, nobody talking): {idle:.1} ms CPU per second");
    }
    if let Some(joined) = r.relay.joined_s {
        let per = r.relay.peak_rss_kib as f64 / r.subscribers.max(1) as f64;
        println!("  relay: everyone subscribed {joined:.1} s after the first dial; peak RSS {per:.1} KiB per subscriber");
    }
    if r.rounds.len() > 1 {
        for (n, round) in r.rounds.iter().enumerate() {
            println!(
                "  round {}: relay / baseline {:.3} (CPU per copy: udp {:.2} µs, relay {:.2} µs); \
                 added latency p50 {} µs, p99 {} µs",
                n + 1,
                round.efficiency_ratio,
                round.baseline_cpu_per_copy_us,
                round.relay_cpu_per_copy_us,
                round.added_latency_p50_us,
                round.added_latency_p99_us
            );
        }
        println!(
            "  (the lines above the rounds are the round with the median ratio; below, medians)"
        );
    }
    println!(
        "  relay / baseline, copies per CPU-second: {:.3}; added latency p50 {} µs, p99 {} µs",
        r.efficiency_ratio, r.added_latency_p50_us, r.added_latency_p99_us
    );
}

/// Send times by (speaker, sequence), nanoseconds since `start`.
struct SendTimes {
    start: Instant,
    at: Vec<AtomicU64>,
}

impl SendTimes {
    fn new(speakers: usize) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            at: (0..speakers * 65536).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn sent(&self, speaker: usize, seq: u16) {
        let ns = self.start.elapsed().as_nanos() as u64;
        self.at[speaker * 65536 + usize::from(seq)].store(ns, Ordering::Relaxed);
    }

    /// From the send to `arrived`: when the subscriber's socket reader took the datagram.
    fn latency_us(&self, speaker: usize, seq: u16, arrived: Instant) -> Option<u64> {
        let sent = self
            .at
            .get(speaker * 65536 + usize::from(seq))?
            .load(Ordering::Relaxed);
        let now = arrived.saturating_duration_since(self.start).as_nanos() as u64;
        (sent > 0).then(|| now.saturating_sub(sent) / 1000)
    }
}

/// What the subscribers heard.
#[derive(Default)]
struct Heard {
    copies: u64,
    latencies_us: Vec<u64>,
}

impl Heard {
    fn merge(&mut self, other: Heard) {
        self.copies += other.copies;
        self.latencies_us.extend(other.latencies_us);
    }

    fn quantile(&mut self, q: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        self.latencies_us.sort_unstable();
        let at = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[at]
    }
}

#[allow(clippy::too_many_arguments)]
fn measurement(
    forwarder: &'static str,
    options: &BenchOptions,
    sent: u64,
    mut heard: Heard,
    cpu: Duration,
    elapsed: Duration,
    peak_rss_kib: u64,
) -> Measurement {
    let cpu_s = cpu.as_secs_f64().max(1e-9);
    Measurement {
        forwarder,
        packets_sent: sent,
        copies_expected: sent * (options.subscribers as u64 - 1),
        copies_delivered: heard.copies,
        copies_per_second: heard.copies as f64 / elapsed.as_secs_f64(),
        copies_per_cpu_second: heard.copies as f64 / cpu_s,
        cpu_percent: 100.0 * cpu_s / elapsed.as_secs_f64(),
        latency_p50_us: heard.quantile(0.5),
        latency_p99_us: heard.quantile(0.99),
        peak_rss_kib,
        inside_mean_us: None,
        inside_p99_us: None,
        idle_cpu_ms_per_s: None,
        joined_s: None,
    }
}

/// Paces `speakers` at `rate` for `seconds`, calling `send(speaker, seq)`; returns packets sent.
async fn speak(options: &BenchOptions, mut send: impl FnMut(usize, u16)) -> u64 {
    let period = Duration::from_secs_f64(1.0 / f64::from(options.rate));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (options.seconds * f64::from(options.rate)).round() as u64;
    let mut sent = 0;
    for n in 0..total {
        tick.tick().await;
        for speaker in 0..options.speakers {
            send(speaker, n as u16);
            sent += 1;
        }
    }
    // Let the last copies arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sent
}
