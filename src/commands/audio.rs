//! `callsign audio`: list sound devices; run a file through the voice path offline.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use callsign_node::audio::codec::EncoderConfig;
use callsign_node::audio::impairment::ImpairmentConfig;
use callsign_node::audio::jitter::JitterConfig;
use callsign_node::audio::loopback::{run_loopback, LoopbackConfig};
use callsign_node::audio::wav::{read_wav, WavSink};
use callsign_node::audio::FrameDuration;
use clap::{Args, Subcommand};

/// Audio commands.
#[derive(Subcommand, Debug)]
pub enum AudioCommand {
    /// List input and output devices.
    Devices(DevicesArgs),
    /// Encode a WAV file, pass it through simulated loss/jitter, the jitter buffer and the
    /// decoder, and write what a listener would hear.
    Loopback(LoopbackArgs),
    /// Measure the echo canceller in a synthetic room: far-end speech from a loudspeaker
    /// echoes into the microphone, then the near end talks over it. Prints ERLE and writes the
    /// near end's output for PESQ scoring (scripts/echo-bench).
    Echo(EchoArgs),
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Far-end speech (what the loudspeaker plays), any WAV.
    #[arg(long)]
    pub far: PathBuf,
    /// Near-end speech (the local talker), any WAV.
    #[arg(long)]
    pub near: PathBuf,
    /// Directory for near.wav (the near end as it went in), microphone.wav (near end plus
    /// echo, uncancelled), double-talk.wav and near-alone.wav (what the canceller let through),
    /// 48 kHz mono.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Loudspeaker-to-microphone delay, ms.
    #[arg(long, default_value_t = 50.0)]
    pub delay_ms: f64,
    /// Reverberation time of the room, ms.
    #[arg(long, default_value_t = 200.0)]
    pub rt60_ms: f64,
    /// Echo return loss (echo level below the far end), dB.
    #[arg(long, default_value_t = 6.0, allow_negative_numbers = true)]
    pub erl_db: f64,
    /// The microphone's noise floor, dBFS.
    #[arg(long, default_value_t = -70.0, allow_negative_numbers = true)]
    pub noise_dbfs: f64,
    /// Seconds of far end alone before the near end talks.
    #[arg(long, default_value_t = 10.0)]
    pub far_only_s: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds into the far-end-only phase at which the echo path changes to another room's
    /// (someone moved the laptop); re-convergence is reported.
    #[arg(long)]
    pub move_at_s: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LoopbackArgs {
    /// Input WAV (any rate, any channel count; converted to 48 kHz mono).
    #[arg(long)]
    pub input: PathBuf,
    /// Output WAV (48 kHz mono, 16-bit).
    #[arg(long)]
    pub output: PathBuf,
    /// Random loss: a fraction (0.05) or a percentage (5%).
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    pub loss: f64,
    /// Gilbert–Elliott burst loss "P,R": chance per packet of entering / leaving the lossy state.
    #[arg(long, value_name = "P,R", value_parser = parse_burst)]
    pub burst_loss: Option<(f64, f64)>,
    /// Jitter: standard deviation of the one-way delay, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Base one-way latency in milliseconds.
    #[arg(long, default_value_t = 40.0)]
    pub latency_ms: f64,
    /// Chance that a packet is held back behind later ones: fraction or percentage.
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    pub reorder: f64,
    /// Opus bitrate in bits per second (6000–64000).
    #[arg(long, default_value_t = 24_000)]
    pub bitrate: u32,
    /// Frame size in milliseconds: 10, 20, 40 or 60.
    #[arg(long, default_value_t = 20, value_parser = parse_frame)]
    pub frame_ms: u32,
    /// Turn loss protection (in-band FEC and DRED) off (on by default).
    #[arg(long)]
    pub no_fec: bool,
    /// Run the libopus 1.3-era path instead, to compare: FEC always on, no DRED, no added
    /// bitrate, classic PLC, no speech enhancement.
    #[arg(long)]
    pub legacy: bool,
    /// Protect with in-band FEC only, without DRED.
    #[arg(long)]
    pub no_dred: bool,
    /// Discontinuous transmission: near-silent frames shrink to a few bytes.
    #[arg(long)]
    pub dtx: bool,
    /// Encoder complexity 0–10.
    #[arg(long, default_value_t = 9)]
    pub complexity: u8,
    /// Seed of the impairment model; the same seed gives the same output bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the stats as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_probability(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent, 100.0),
        None => (text, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    let p = value / scale;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!(
            "{text:?} is outside 0–1; write a fraction (0.05) or a percentage (5%)"
        ));
    }
    Ok(p)
}

fn parse_burst(text: &str) -> Result<(f64, f64), String> {
    let (p, r) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?}: expected P,R, e.g. 0.02,0.3"))?;
    let (p, r) = (parse_probability(p)?, parse_probability(r)?);
    if r == 0.0 {
        return Err("R must be above 0, or the loss burst never ends".into());
    }
    Ok((p, r))
}

fn parse_frame(text: &str) -> Result<u32, String> {
    let ms: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    FrameDuration::from_ms(ms)
        .map(|_| ms)
        .ok_or_else(|| format!("{ms} ms: frames are 10, 20, 40 or 60 ms"))
}

pub fn run(cmd: AudioCommand) -> Result<()> {
    match cmd {
        AudioCommand::Devices(args) => devices(args),
        AudioCommand::Loopback(args) => loopback(args),
        AudioCommand::Echo(args) => echo(args),
    }
}

#[cfg(feature = "device-audio")]
fn devices(args: DevicesArgs) -> Result<()> {
    let (host, devices) = callsign_node::audio::device::list_devices()
        .context("no sound system available (no ALSA devices, or running headless)")?;
    if args.json {
        let report = serde_json::json!({ "host": host, "devices": devices });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if devices.is_empty() {
        println!("{host}: no audio devices (no sound card or sound server on this machine)");
        println!("headless use still works: `callsign audio loopback` and WAV input/output");
        return Ok(());
    }
    println!("{host}:");
    for d in &devices {
        let format = match (d.sample_rate, d.channels) {
            (Some(rate), Some(ch)) => format!("{rate} Hz, {ch} ch"),
            _ => "format unavailable".into(),
        };
        println!(
            "  {:6} {}{} ({format})",
            if d.input { "input" } else { "output" },
            d.name,
            if d.is_default { " [default]" } else { "" },
        );
    }
    Ok(())
}

#[cfg(not(feature = "device-audio"))]
fn devices(_args: DevicesArgs) -> Result<()> {
    bail!("this build has no device audio (rebuild with the `device-audio` feature); WAV input and output still work")
}

fn loopback(args: LoopbackArgs) -> Result<()> {
    let frame = FrameDuration::from_ms(args.frame_ms).context("frame size")?;
    if !args.jitter_ms.is_finite() || args.jitter_ms < 0.0 || args.jitter_ms > 1000.0 {
        bail!("--jitter-ms must be between 0 and 1000");
    }
    if !args.latency_ms.is_finite() || args.latency_ms < 0.0 || args.latency_ms > 5000.0 {
        bail!("--latency-ms must be between 0 and 5000");
    }
    let input = read_wav(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let config = LoopbackConfig {
        encoder: EncoderConfig {
            bitrate: args.bitrate,
            frame,
            fec: !args.no_fec,
            dtx: args.dtx,
            complexity: args.complexity,
            dred: !args.no_dred,
            ..EncoderConfig::default()
        },
        jitter: JitterConfig {
            frame,
            ..JitterConfig::default()
        },
        impairment: ImpairmentConfig {
            latency: Duration::from_secs_f64(args.latency_ms / 1e3),
            jitter: Duration::from_secs_f64(args.jitter_ms / 1e3),
            loss: args.loss,
            burst: args.burst_loss,
            reorder: args.reorder,
        },
        seed: args.seed,
        legacy: args.legacy,
    };
    let (output, report) = run_loopback(&input, &config).context("loopback failed")?;
    let mut sink = WavSink::create(&args.output, 1)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    sink.write(&output)?;
    sink.finish()
        .with_context(|| format!("cannot write {}", args.output.display()))?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let r = &report.receiver;
    println!("frames               {}", report.frames);
    println!(
        "lost in network      {} ({:.1}%)",
        report.lost_in_network,
        100.0 * report.lost_in_network as f64 / report.frames.max(1) as f64
    );
    println!("decoded              {}", r.decoded);
    println!("recovered by FEC     {}", r.recovered_fec);
    println!("concealed            {}", r.concealed);
    println!("late                 {}", r.jitter.late);
    println!("duplicates           {}", r.jitter.duplicates);
    println!("jitter target        {:.1} ms", r.jitter.target_delay_ms);
    println!(
        "mean playout delay   {:.1} ms",
        report.mean_playout_delay_ms
    );
    println!(
        "bitrate              {:.1} kb/s",
        report.bytes_sent as f64 * 8.0 / (report.frames.max(1) as f64 * frame.millis() as f64)
    );
    Ok(())
}

fn echo(args: EchoArgs) -> Result<()> {
    use callsign_node::audio::echo_room::{run_echo_room, RoomConfig};
    let config = RoomConfig {
        delay_ms: args.delay_ms,
        rt60_ms: args.rt60_ms,
        erl_db: args.erl_db,
        far_only_s: args.far_only_s,
        seed: args.seed,
        moved_at_s: args.move_at_s,
        noise_dbfs: args.noise_dbfs,
        ..RoomConfig::default()
    };
    if let Some(at) = config.moved_at_s {
        if !(0.0..=config.far_only_s - config.settle_s).contains(&at) {
            bail!(
                "--move-at-s must leave --far-only-s at least {} s after the move",
                config.settle_s
            );
        }
    }
    if !(0.0..=500.0).contains(&config.delay_ms) || !(1.0..=2000.0).contains(&config.rt60_ms) {
        bail!("--delay-ms must be 0–500 and --rt60-ms 1–2000");
    }
    if !config.erl_db.is_finite() || !(config.settle_s..=120.0).contains(&config.far_only_s) {
        bail!("--erl-db must be a number and --far-only-s between 2 and 120");
    }
    if !(-120.0..=0.0).contains(&config.noise_dbfs) {
        bail!("--noise-dbfs must be between -120 and 0");
    }
    let far = read_wav(&args.far).with_context(|| format!("reading {}", args.far.display()))?;
    let near = read_wav(&args.near).with_context(|| format!("reading {}", args.near.display()))?;
    let (output, report) = run_echo_room(&far, &near, &config);
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    for (name, samples) in [
        ("near.wav", &near),
        ("microphone.wav", &output.microphone),
        ("double-talk.wav", &output.double_talk),
        ("near-alone.wav", &output.near_alone),
    ] {
        let path = args.out_dir.join(name);
        let mut sink = WavSink::create(&path, 1)
            .with_context(|| format!("cannot create {}", path.display()))?;
        sink.write(samples)?;
        sink.finish()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "ERLE {:.1} dB after {} s (whole far-end-only phase {:.1} dB); reached 20 dB at {}; \
             added latency {:.1} ms; echo path delay found {} ms; linear stage ERLE {}",
            report.erle_db,
            config.settle_s,
            report.erle_whole_db,
            report
                .converged_s
                .map_or("never".into(), |s| format!("{s:.2} s")),
            report.added_latency_ms,
            report.delay_ms.map_or("-".into(), |d| d.to_string()),
            report
                .linear_erle_db
                .map_or("-".into(), |db| format!("{db:.1} dB")),
        );
        if let Some(db) = report.moved_erle_db {
            println!(
                "after the move: reached 20 dB again {} later; ERLE {db:.1} dB after {} s; \
                 started over {} time(s)",
                report
                    .reconverged_s
                    .map_or("never".into(), |s| format!("{s:.2} s")),
                config.settle_s,
                report.path_restarts,
            );
        }
    }
    Ok(())
}
