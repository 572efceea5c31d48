//! `callsign org show`: the charter's state as a tree (text) or one JSON object.

use anyhow::Result;
use callsign_mesh::charter::{ChannelId, CharterState, FloorMode};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct ChannelView {
    path: String,
    id: String,
    floor: &'static str,
    mesh_threshold: u8,
    acl: BTreeMap<String, String>,
    recording: &'static str,
    /// `positional 50 m` / `proximity 20 m`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    spatial: Option<String>,
}

#[derive(Serialize)]
struct OrgView {
    org: String,
    name: String,
    admins: Vec<String>,
    roles: BTreeMap<String, (String, u8)>,
    channels: Vec<ChannelView>,
    members: Vec<(String, String, Vec<String>)>,
    relays: Vec<(String, u32)>,
    presets: Vec<String>,
    /// `(from, to)`: listeners of `to` hear the talkers of `from`.
    links: Vec<(String, String)>,
    conferences: BTreeMap<String, Vec<String>>,
}

pub(super) fn show(state: &CharterState, json: bool) -> Result<()> {
    let mut channels = Vec::new();
    let mut stack: Vec<ChannelId> = state.children(None).into_iter().rev().collect();
    while let Some(id) = stack.pop() {
        let ch = &state.channels[&id];
        channels.push(ChannelView {
            path: state.path(id).unwrap_or_default(),
            id: id.to_string(),
            floor: match ch.policy.floor {
                FloorMode::Open => "open",
                FloorMode::HalfDuplex => "half-duplex",
            },
            mesh_threshold: ch.policy.mesh_threshold,
            acl: ch
                .acl
                .iter()
                .map(|(r, p)| (r.clone(), p.to_string()))
                .collect(),
            recording: state.recording_policy(id).name(),
            spatial: state.spatial.get(&id).map(|s| {
                format!(
                    "{} {} m ({} from {} m)",
                    s.mode.name(),
                    s.range_m(),
                    s.falloff.name(),
                    s.full_m()
                )
            }),
        });
        stack.extend(state.children(Some(id)).into_iter().rev());
    }
    let view = OrgView {
        org: state.org.to_string(),
        name: state.name.clone(),
        admins: std::iter::once(state.org)
            .chain(state.admins.iter().copied())
            .map(|k| k.to_string())
            .collect(),
        roles: state
            .roles
            .iter()
            .map(|(n, r)| (n.clone(), (r.perms.to_string(), r.priority.level())))
            .collect(),
        channels,
        members: state
            .members
            .iter()
            .map(|(k, m)| (m.name.clone(), k.to_string(), m.roles.clone()))
            .collect(),
        relays: state
            .relays
            .iter()
            .map(|(k, r)| (k.to_string(), r.capacity))
            .collect(),
        presets: state.presets.keys().cloned().collect(),
        links: state
            .links
            .iter()
            .map(|(from, to)| {
                let path = |c| state.path(c).unwrap_or_default();
                (path(*from), path(*to))
            })
            .collect(),
        conferences: state
            .conferences
            .iter()
            .map(|(name, cs)| {
                let paths = cs.iter().filter_map(|c| state.path(*c)).collect();
                (name.clone(), paths)
            })
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!("org {:?} ({})", view.name, view.org);
    println!("admins: {}", view.admins.join(", "));
    println!("roles:");
    for (name, (perms, prio)) in &view.roles {
        println!("  {name}: {perms} (priority {prio})");
    }
    println!("channels:");
    for ch in &view.channels {
        let depth = ch.path.matches('/').count();
        let acl: Vec<String> = ch.acl.iter().map(|(r, p)| format!("{r}={p}")).collect();
        println!(
            "  {}{}{}{}{}{}",
            "  ".repeat(depth - 1),
            ch.path.rsplit('/').next().unwrap_or_default(),
            if ch.floor == "half-duplex" {
                " [half-duplex]"
            } else {
                ""
            },
            if ch.recording == "notice" {
                String::new()
            } else {
                format!(" [recording {}]", ch.recording)
            },
            ch.spatial
                .as_ref()
                .map(|s| format!(" [{s}]"))
                .unwrap_or_default(),
            if acl.is_empty() {
                String::new()
            } else {
                format!("  ({})", acl.join(", "))
            }
        );
    }
    println!("members:");
    for (name, peer, roles) in &view.members {
        println!("  {name} {peer} [{}]", roles.join(", "));
    }
    if !view.relays.is_empty() {
        println!("relays:");
        for (peer, capacity) in &view.relays {
            println!("  {peer} (capacity {capacity})");
        }
    }
    if !view.presets.is_empty() {
        println!("presets: {}", view.presets.join(", "));
    }
    for (from, to) in &view.links {
        println!("link: {from} -> {to}");
    }
    for (name, paths) in &view.conferences {
        println!("conference {name}: {}", paths.join(", "));
    }
    Ok(())
}
