//! A radio-check bot on the local API (docs/api.md): it listens on a channel through its
//! node's event stream and, each time someone else stops talking there, keys up on the same
//! channel and plays its node's input (`callsign up --input answer.wav`) for a while.
//!
//! ```sh
//! callsign up --input answer.wav --api 127.0.0.1:7070 --api-token-file bot.token &
//! cargo run --example bot -- --api http://127.0.0.1:7070 --token-file bot.token --channel /Flight
//! ```
//!
//! Options: `--reply-ms MS` (how long it answers, default 2000), `--answers N` (stop after N).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::{json, Value};

struct Options {
    api: String,
    token: String,
    channel: String,
    reply: Duration,
    answers: Option<u32>,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut api, mut token_file, mut channel) = (None, None, None);
    let (mut reply, mut answers) = (Duration::from_millis(2000), None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--api" => api = Some(value()?),
            "--token-file" => token_file = Some(value()?),
            "--channel" => channel = Some(value()?),
            "--reply-ms" => {
                let ms = value()?.parse().map_err(|e| format!("--reply-ms: {e}"))?;
                reply = Duration::from_millis(ms);
            }
            "--answers" => answers = Some(value()?.parse().map_err(|e| format!("--answers: {e}"))?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let token_file = token_file.ok_or("--token-file is required")?;
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("reading {token_file}: {e}"))?
        .trim()
        .to_string();
    Ok(Options {
        api: api.ok_or("--api is required")?,
        token,
        channel: channel.ok_or("--channel is required")?,
        reply,
        answers,
    })
}

fn request(o: &Options, method: &str, path: &str) -> ureq::Request {
    ureq::request(method, &format!("{}{path}", o.api))
        .set("Authorization", &format!("Bearer {}", o.token))
}

fn run(o: &Options) -> Result<(), String> {
    let me: Value = request(o, "GET", "/v1/status")
        .call()
        .map_err(|e| format!("status: {e}"))?
        .into_json()
        .map_err(|e| e.to_string())?;
    let me = me["peer"].as_str().unwrap_or_default().to_string();
    request(o, "POST", "/v1/listen")
        .send_json(json!({ "channel": o.channel }))
        .map_err(|e| format!("listen on {}: {e}", o.channel))?;
    let stream = request(o, "GET", "/v1/events")
        .call()
        .map_err(|e| format!("events: {e}"))?;
    println!("listening on {}", o.channel);
    // Who talks where, from talker-start (talker-stop names only the peer).
    let mut talking: BTreeMap<String, bool> = BTreeMap::new();
    let mut answered = 0;
    for line in BufReader::new(stream.into_reader()).lines() {
        let line = line.map_err(|e| format!("event stream: {e}"))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let event: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        let peer = event["peer"].as_str().unwrap_or_default().to_string();
        match event["type"].as_str() {
            Some("talker-start") if peer != me => {
                let here = event["channels"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c == o.channel.as_str()));
                talking.insert(peer, here);
            }
            Some("talker-stop") if talking.remove(&peer) == Some(true) => {
                let name = event["name"].as_str().unwrap_or("someone");
                request(o, "POST", "/v1/ptt")
                    .send_json(json!({ "channels": [o.channel] }))
                    .map_err(|e| format!("ptt: {e}"))?;
                std::thread::sleep(o.reply);
                request(o, "DELETE", "/v1/ptt")
                    .call()
                    .map_err(|e| format!("ptt up: {e}"))?;
                answered += 1;
                println!("answered {name} on {}", o.channel);
                if o.answers.is_some_and(|n| answered >= n) {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    Err("the node's event stream ended".into())
}

fn main() {
    let result = options().and_then(|o| run(&o));
    if let Err(e) = result {
        eprintln!("bot: {e}");
        std::process::exit(1);
    }
}
