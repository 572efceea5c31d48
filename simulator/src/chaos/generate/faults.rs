//! The fault phase's faults, one drawn at a time: partitions (some leaving a side without a
//! relay), loss spikes, crashes (some while holding a floor), relay crashes, leaves, edits,
//! removals and role changes, PTT storms, emergencies (some by roles that may not raise one).

use super::{Builder, Gone};
use crate::scenario::{Action, LinkModel};
use rand::seq::SliceRandom;
use rand::Rng;

/// One fault at `at` (healed by `heal_s` at the latest).
pub(super) fn fault(b: &mut Builder, at: f64, heal_s: f64, base: &LinkModel) {
    let present = b.present(at);
    let until = |b: &mut Builder| b.rng.gen_range(at + 0.5..=heal_s);
    match b.rng.gen_range(0..14) {
        0 if present.len() >= 2 => {
            let mut all: Vec<String> = b.nodes.iter().map(|n| n.name.clone()).collect();
            all.shuffle(&mut b.rng);
            let cut = b.rng.gen_range(1..all.len());
            let groups = vec![all[..cut].to_vec(), all[cut..].to_vec()];
            b.push(at, Action::Partition { groups });
            let end = until(b);
            b.push(end, Action::Heal);
        }
        1 => {
            let model = LinkModel {
                loss: b.rng.gen_range(0.05..0.25),
                latency_ms: base.latency_ms + b.rng.gen_range(0.0..150.0_f64).round(),
                ..base.clone()
            };
            b.push(
                at,
                Action::Link {
                    a: None,
                    b: None,
                    model,
                },
            );
        }
        2 => {
            // A member crashes; it comes back at the heal or earlier.
            if let Some(node) = b.pick(&present[1.min(present.len())..]) {
                b.push(at, Action::Crash { node: node.clone() });
                if b.rng.gen_bool(0.5) {
                    let back = until(b);
                    b.push(back, Action::Restart { node: node.clone() });
                    b.downs.push((node, at, back));
                } else {
                    // Faults are drawn in no time order: a removal drawn earlier but later in
                    // time keeps the member gone for good (it must not be restarted at the heal
                    // and then be picked for a probe).
                    let gone = b.gone.entry(node).or_insert((at, Gone::Crashed));
                    gone.0 = gone.0.min(at);
                }
            }
        }
        3 => {
            // A rented relay crashes and restarts (on a new port).
            let relays = b.rented_relays_up();
            if let Some(relay) = b.pick(&relays) {
                b.push(
                    at,
                    Action::Crash {
                        node: relay.clone(),
                    },
                );
                b.gone.insert(relay, (at, Gone::Crashed));
            }
        }
        4 if present.len() > 3 => {
            // A clean leave, for good.
            let candidates: Vec<String> = present[1..]
                .iter()
                .filter(|n| !b.is_admin(n))
                .cloned()
                .collect();
            if let Some(node) = b.pick(&candidates) {
                b.push(at, Action::Leave { node: node.clone() });
                b.gone.insert(node, (at, Gone::ForGood));
            }
        }
        5 => {
            let admins: Vec<String> = present.iter().filter(|n| b.is_admin(n)).cloned().collect();
            if let Some(admin) = b.pick(&admins) {
                let name = format!("x{}", b.events.len());
                b.push(at, Action::AddChannel { node: admin, name });
            }
        }
        6 if present.len() > 3 => {
            // An admin removes a member, possibly during a partition: the member must learn it.
            let admins: Vec<String> = present.iter().filter(|n| b.is_admin(n)).cloned().collect();
            let targets: Vec<String> = b
                .nodes
                .iter()
                .filter(|n| n.member && !n.admin && !n.relay && !b.removed.contains(&n.name))
                .filter(|n| !b.role_changed.contains(&n.name))
                .filter(|n| b.joins.get(&n.name).is_none_or(|j| *j < at))
                .map(|n| n.name.clone())
                .collect();
            if let (Some(admin), Some(member)) = (b.pick(&admins), b.pick(&targets)) {
                b.push(
                    at,
                    Action::RemoveMember {
                        node: admin,
                        member: member.clone(),
                    },
                );
                b.removed.insert(member.clone());
                let since = b.gone.get(&member).map_or(at, |(t, _)| t.min(at));
                b.gone.insert(member, (since, Gone::ForGood));
            }
        }
        7 => {
            // A PTT storm: several presses at once on random channels.
            for _ in 0..b.rng.gen_range(2..=5) {
                let Some(node) = b.pick(&present) else { break };
                let spoken = b.channels_spoken_by(&node);
                let Some(channel) = b.pick(&spoken) else {
                    continue;
                };
                let start = at + b.rng.gen_range(0.0..0.5);
                let duration_s = b.rng.gen_range(0.3..2.5_f64);
                let duration_s = duration_s.min(heal_s - start).max(0.1);
                b.push(
                    start,
                    Action::Ptt {
                        node,
                        channels: vec![channel],
                        duration_s,
                    },
                );
            }
        }
        9 if present.len() >= 2 => {
            // A partition that leaves one side without any relay (rented or volunteer).
            let relays: Vec<String> = b
                .nodes
                .iter()
                .filter(|n| n.rented_relay || n.relay)
                .map(|n| n.name.clone())
                .collect();
            let mut members: Vec<String> = b
                .nodes
                .iter()
                .filter(|n| !n.rented_relay && !n.relay)
                .map(|n| n.name.clone())
                .collect();
            if relays.is_empty() || members.len() < 2 {
                return;
            }
            members.shuffle(&mut b.rng);
            let cut = b.rng.gen_range(1..members.len());
            let with_relays: Vec<String> =
                relays.into_iter().chain(members[cut..].to_vec()).collect();
            let groups = vec![with_relays, members[..cut].to_vec()];
            b.push(at, Action::Partition { groups });
            let end = until(b);
            b.push(end, Action::Heal);
        }
        10 => {
            // The root admin (never crashed, removed or late) changes a member's role and
            // back, both inside the fault phase (the probes speak as the scenario's roles say).
            let admin = "m00".to_string();
            let targets: Vec<String> = present
                .iter()
                .filter(|n| !b.is_admin(n) && !b.removed.contains(*n))
                .cloned()
                .collect();
            if let Some(member) = b.pick(&targets) {
                b.role_changed.insert(member.clone());
                let Some(role) = b
                    .nodes
                    .iter()
                    .find(|n| n.name == member)
                    .map(|n| n.role.clone())
                else {
                    return;
                };
                let other = if role == "officer" {
                    "pilot"
                } else {
                    "officer"
                };
                if !b.nodes.iter().any(|n| n.role == other) {
                    // A scenario may name only roles some node has.
                    return;
                }
                let back = until(b);
                b.push(
                    at,
                    Action::SetRole {
                        node: admin.clone(),
                        member: member.clone(),
                        role: other.into(),
                    },
                );
                b.push(
                    back,
                    Action::SetRole {
                        node: admin,
                        member,
                        role,
                    },
                );
            }
        }
        11 => {
            // An emergency by a role that may not raise one: refused everywhere.
            let half = b.half_duplex();
            let pilots = b.with_role(&present, "pilot");
            if let (Some(channel), Some(node)) = (b.pick(&half), b.pick(&pilots)) {
                let duration_s = b.rng.gen_range(0.5..2.0_f64).min(heal_s - at).max(0.1);
                b.push(
                    at,
                    Action::Emergency {
                        node,
                        channel,
                        duration_s,
                    },
                );
            }
        }
        12 => {
            // A rented relay crashes before the heal and comes back only after it (on a new
            // port), while members re-plan without it.
            let relays = b.rented_relays_up();
            if let Some(relay) = b.pick(&relays) {
                b.push(
                    at,
                    Action::Crash {
                        node: relay.clone(),
                    },
                );
                b.push(
                    heal_s + 2.0,
                    Action::Restart {
                        node: relay.clone(),
                    },
                );
                // Not restarted at the heal, and not crashed again.
                b.gone.insert(relay, (at, Gone::ForGood));
            }
        }
        13 => {
            // A member crashes while it holds a half-duplex floor, and restarts later.
            let half = b.half_duplex();
            let Some(channel) = b.pick(&half) else {
                return;
            };
            let talkers: Vec<String> = present[1.min(present.len())..]
                .iter()
                .filter(|n| b.channels_spoken_by(n).contains(&channel))
                .cloned()
                .collect();
            if let Some(node) = b.pick(&talkers) {
                b.push(
                    at,
                    Action::Ptt {
                        node: node.clone(),
                        channels: vec![channel],
                        duration_s: 2.0_f64.min(heal_s - at).max(0.1),
                    },
                );
                let crash = at + 0.7;
                if crash + 0.5 < heal_s {
                    b.push(crash, Action::Crash { node: node.clone() });
                    let back = b.rng.gen_range(crash + 0.5..=heal_s);
                    b.push(back, Action::Restart { node: node.clone() });
                    b.downs.push((node, crash, back));
                }
            }
        }
        _ => {
            // An officer's emergency on a half-duplex channel, cleared by an admin.
            let half = b.half_duplex();
            let officers = b.with_role(&present, "officer");
            if let (Some(channel), Some(node)) = (b.pick(&half), b.pick(&officers)) {
                let duration_s = b.rng.gen_range(0.5..2.0_f64).min(heal_s - at).max(0.1);
                b.push(
                    at,
                    Action::Emergency {
                        node: node.clone(),
                        channel: channel.clone(),
                        duration_s,
                    },
                );
                let admins: Vec<String> =
                    present.iter().filter(|n| b.is_admin(n)).cloned().collect();
                if let Some(admin) = b.pick(&admins) {
                    let clear = (at + duration_s + 0.5).min(heal_s);
                    b.push(
                        clear,
                        Action::ClearEmergency {
                            node: admin,
                            channel,
                            raiser: node,
                        },
                    );
                }
            }
        }
    }
}
