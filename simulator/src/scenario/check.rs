//! Parsing a scenario file and checking it: version, ranges, and that every event names nodes,
//! channels and roles the scenario has.

use super::*;

fn check_model(m: &LinkModel, what: &str) -> Result<(), ScenarioError> {
    let prob = |x: f64| (0.0..=1.0).contains(&x);
    let bad = |field: &str| ScenarioError::Invalid(format!("{what}: {field} out of range"));
    if !(m.latency_ms >= 0.0 && m.latency_ms <= 10_000.0) {
        return Err(bad("latency_ms"));
    }
    if !(m.jitter_ms >= 0.0 && m.jitter_ms <= 10_000.0) {
        return Err(bad("jitter_ms"));
    }
    for (name, v) in [
        ("loss", m.loss),
        ("reorder", m.reorder),
        ("duplicate", m.duplicate),
    ] {
        if !prob(v) {
            return Err(bad(name));
        }
    }
    if let Some(b) = m.burst {
        if !(prob(b.p) && prob(b.r) && prob(b.bad_loss)) {
            return Err(bad("burst"));
        }
    }
    if !(m.bandwidth_kbps >= 0.0 && m.queue_ms >= 0.0 && m.reorder_ms >= 0.0) {
        return Err(bad("bandwidth_kbps/queue_ms/reorder_ms"));
    }
    Ok(())
}

impl Scenario {
    /// Parses and checks a scenario file.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version = toml::from_str(text)?;
        if version.version != SCENARIO_VERSION {
            return Err(ScenarioError::Version(version.version));
        }
        let scenario: Scenario = toml::from_str(text)?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        if !(self.duration_s > 0.0 && self.duration_s <= 3600.0) {
            return invalid("duration_s must be in (0, 3600]".into());
        }
        if self
            .measure_from_s
            .is_some_and(|m| !(m >= 0.0 && m <= self.duration_s))
        {
            return invalid("measure_from_s must be within the run".into());
        }
        if self.nodes.len() < 2 || self.nodes.len() > 64 {
            return invalid("2 to 64 nodes".into());
        }
        let names: BTreeSet<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        if names.len() != self.nodes.len() {
            return invalid("node names must be unique".into());
        }
        let channels: BTreeSet<&str> = self.channels.iter().map(|c| c.name.as_str()).collect();
        if channels.len() != self.channels.len() || channels.is_empty() {
            return invalid("channel names must be unique, and at least one".into());
        }
        let node = |n: &str| {
            if names.contains(n) {
                Ok(())
            } else {
                Err(ScenarioError::Invalid(format!("unknown node {n:?}")))
            }
        };
        let channel = |c: &str| {
            if channels.contains(c) {
                Ok(())
            } else {
                Err(ScenarioError::Invalid(format!("unknown channel {c:?}")))
            }
        };
        if let Some((role, level)) = self.priorities.iter().find(|(_, l)| **l > 4) {
            return invalid(format!("role {role:?}: priority {level} is above 4"));
        }
        check_model(&self.link, "link")?;
        for pair in &self.pairs {
            node(&pair.a)?;
            node(&pair.b)?;
            check_model(&pair.model, "pair")?;
        }
        for n in &self.nodes {
            for c in n.listen.iter().flatten().chain(&n.monitor) {
                channel(c)?;
            }
        }
        for c in &self.channels {
            for to in &c.links {
                channel(to)?;
                if *to == c.name {
                    return invalid(format!("channel {to:?} links to itself"));
                }
            }
        }
        for conference in &self.conferences {
            for c in &conference.channels {
                channel(c)?;
            }
        }
        for c in &self.channels {
            for r in &c.relays {
                node(r)?;
                if !self.nodes.iter().any(|n| n.name == *r && n.rented_relay) {
                    return invalid(format!("channel {:?}: {r:?} is no rented relay", c.name));
                }
            }
        }
        for e in &self.events {
            if !(e.at_s >= 0.0 && e.at_s <= self.duration_s) {
                return invalid(format!("event at {} s is outside the run", e.at_s));
            }
            match &e.action {
                Action::Ptt {
                    node: n,
                    channels: cs,
                    duration_s,
                } => {
                    node(n)?;
                    for c in cs {
                        channel(c)?;
                    }
                    if duration_s.is_nan() || *duration_s <= 0.0 {
                        return invalid("ptt duration_s must be positive".into());
                    }
                }
                Action::Whisper { node: n, to, .. } => {
                    node(n)?;
                    node(to)?;
                }
                Action::Move { node: n, to, .. } => {
                    node(n)?;
                    if !to.iter().all(|v| v.is_finite()) {
                        return invalid("move: coordinates must be finite".into());
                    }
                }
                Action::Walk {
                    node: n,
                    to,
                    duration_s,
                } => {
                    node(n)?;
                    if !to.iter().all(|v| v.is_finite())
                        || duration_s.is_nan()
                        || *duration_s <= 0.0
                    {
                        return invalid("walk: finite coordinates, positive duration_s".into());
                    }
                    if self.position_at(n, e.at_s).is_none() {
                        return invalid(format!("walk: {n:?} has no position to walk from"));
                    }
                }
                Action::Partition { groups } => {
                    for n in groups.iter().flatten() {
                        node(n)?;
                    }
                }
                Action::Heal => {}
                Action::Link { a, b, model } => {
                    if a.is_some() != b.is_some() {
                        return invalid("a link change names both a and b, or neither".into());
                    }
                    for n in a.iter().chain(b.iter()) {
                        node(n)?;
                    }
                    check_model(model, "link event")?;
                }
                Action::AddChannel { node: n, .. }
                | Action::Crash { node: n }
                | Action::Restart { node: n }
                | Action::Join { node: n }
                | Action::Leave { node: n } => node(n)?,
                Action::RemoveMember { node: n, member } => {
                    node(n)?;
                    node(member)?;
                }
                Action::SetRole {
                    node: n,
                    member,
                    role,
                } => {
                    node(n)?;
                    node(member)?;
                    if !self.nodes.iter().any(|s| s.role == *role) {
                        return invalid(format!("set-role: no node has role {role}"));
                    }
                }
                Action::Emergency {
                    node: n,
                    channel: c,
                    duration_s,
                } => {
                    node(n)?;
                    channel(c)?;
                    if duration_s.is_nan() || *duration_s <= 0.0 {
                        return invalid("emergency duration_s must be positive".into());
                    }
                }
                Action::ClearEmergency {
                    node: n,
                    channel: c,
                    raiser,
                } => {
                    node(n)?;
                    node(raiser)?;
                    channel(c)?;
                }
                Action::Listen {
                    node: n,
                    channel: c,
                }
                | Action::Unlisten {
                    node: n,
                    channel: c,
                } => {
                    node(n)?;
                    channel(c)?;
                }
                Action::Subscribe {
                    node: n,
                    relay,
                    channels,
                } => {
                    node(n)?;
                    node(relay)?;
                    for c in channels {
                        channel(c)?;
                    }
                }
            }
        }
        Ok(())
    }
}
