//! `bench --orgs N`: one relay process serving N orgs, each with its own members, speakers and
//! channel, run twice from the same setup: quiet (every speaker at the bench's rate), then with
//! the first org's speakers flooding at `--flood` times the per-member limit. Reported per org:
//! delivery and latency in both runs, so whether one org's flood reaches the others shows.

use super::relayed::{bench_setup, run, Run};
use super::BenchOptions;
use anyhow::Result;
use serde::Serialize;

/// One org in one run.
#[derive(Debug, Clone, Serialize)]
pub struct OrgMeasurement {
    pub org: String,
    pub packets_sent: u64,
    pub copies_expected: u64,
    pub copies_delivered: u64,
    pub delivery_percent: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
}

/// One run of all the orgs.
#[derive(Debug, Clone, Serialize)]
pub struct OrgsRun {
    pub orgs: Vec<OrgMeasurement>,
    /// The relay's CPU use, percent of one core.
    pub cpu_percent: f64,
    pub peak_rss_kib: u64,
    /// Packets the relay dropped, as `org/reason` → count.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// Both runs.
#[derive(Debug, Clone, Serialize)]
pub struct OrgsReport {
    pub orgs: usize,
    pub subscribers_per_org: usize,
    pub speakers_per_org: usize,
    pub rate: u32,
    pub seconds: f64,
    /// Packets per second each member may send (the relay's per-member limit).
    pub member_limit: u32,
    /// The flooding org's speakers send this many times `member_limit`.
    pub flood_factor: u32,
    pub quiet: OrgsRun,
    pub flood: OrgsRun,
}

fn summarise(options: &BenchOptions, names: &[String], mut run: Run) -> OrgsRun {
    let subscribers = options.subscribers as u64;
    let orgs = run
        .orgs
        .iter_mut()
        .zip(names)
        .map(|(org, name)| {
            let expected = org.sent * (subscribers - 1);
            OrgMeasurement {
                org: name.clone(),
                packets_sent: org.sent,
                copies_expected: expected,
                copies_delivered: org.heard.copies,
                delivery_percent: 100.0 * org.heard.copies as f64 / expected.max(1) as f64,
                latency_p50_us: org.heard.quantile(0.5),
                latency_p99_us: org.heard.quantile(0.99),
            }
        })
        .collect();
    OrgsRun {
        orgs,
        cpu_percent: 100.0 * run.cpu.as_secs_f64() / run.elapsed.as_secs_f64(),
        peak_rss_kib: run.peak_rss_kib,
        drops: run
            .drops
            .into_iter()
            .map(|((org, reason), n)| (format!("{org}/{reason}"), n))
            .collect(),
    }
}

pub(super) async fn measure(options: &BenchOptions) -> Result<OrgsReport> {
    let limit = options.member_limit;
    // All the bench's members share one source address: its handshake limit is lifted.
    let limits = format!(
        "packets_per_second = {limit}\nburst = {}\n\
         handshakes_per_second = 100000\nhandshake_burst = 100000",
        (limit / 2).max(1)
    );
    let setup = bench_setup(
        options.orgs,
        options.subscribers,
        &limits,
        options.voice_priority,
    )?;
    let names: Vec<String> = setup.orgs.iter().map(|o| o.name.clone()).collect();
    let quiet = summarise(options, &names, run(options, &setup, |_| 1).await?);
    // The first org's speakers each send flood × limit packets a second.
    let flood_per_tick = (u64::from(options.flood) * u64::from(limit))
        .div_ceil(u64::from(options.rate))
        .max(1) as usize;
    let flood = summarise(
        options,
        &names,
        run(
            options,
            &setup,
            |org| if org == 0 { flood_per_tick } else { 1 },
        )
        .await?,
    );
    Ok(OrgsReport {
        orgs: options.orgs,
        subscribers_per_org: options.subscribers,
        speakers_per_org: options.speakers,
        rate: options.rate,
        seconds: options.seconds,
        member_limit: limit,
        flood_factor: options.flood,
        quiet,
        flood,
    })
}

pub(super) fn print(r: &OrgsReport) {
    println!(
        "{} orgs on one relay, {} subscribers and {} speaker(s) each at {} packets/s, {} s; \
         member limit {} packets/s; org0 floods at {}x",
        r.orgs,
        r.subscribers_per_org,
        r.speakers_per_org,
        r.rate,
        r.seconds,
        r.member_limit,
        r.flood_factor
    );
    for (label, run) in [("quiet", &r.quiet), ("flood", &r.flood)] {
        println!(
            "  {label}: relay CPU {:.1} %, peak RSS {} KiB",
            run.cpu_percent, run.peak_rss_kib
        );
        for m in &run.orgs {
            println!(
                "    {:<6} sent {:>6}, delivered {}/{} copies ({:.2} %), latency p50 {} µs, p99 {} µs",
                m.org,
                m.packets_sent,
                m.copies_delivered,
                m.copies_expected,
                m.delivery_percent,
                m.latency_p50_us,
                m.latency_p99_us
            );
        }
        if !run.drops.is_empty() {
            let drops: Vec<String> = run.drops.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("    drops: {}", drops.join(", "));
        }
    }
    for (quiet, flood) in r.quiet.orgs.iter().zip(&r.flood.orgs).skip(1) {
        println!(
            "  {} under org0's flood: delivery {:.2} %, p99 {:.2}x its quiet p99",
            flood.org,
            flood.delivery_percent,
            flood.latency_p99_us as f64 / quiet.latency_p99_us.max(1) as f64
        );
    }
}
