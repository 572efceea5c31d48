//! Channel templates: presets for common shapes, stamped out with `DefinePreset` +
//! `ApplyPreset` so every node folds the same channels and ACLs.

use std::collections::BTreeMap;

use super::model::{ChannelPolicy, Permissions, Preset, PresetChannel};

/// Who does what on a support line.
#[derive(Clone, Debug)]
pub struct SupportRoles<'a> {
    /// Answer calls: listen, speak and whisper (to coach or hand over privately).
    pub agents: &'a str,
    /// Call in: listen and speak.
    pub callers: &'a str,
    /// Listen only (supervisors, trainees); they show in the roster.
    pub observers: &'a str,
}

/// A support line: one open channel named `name` where callers and agents talk, observers only
/// listen, and every other role of the charter (`all_roles`) has no access at all, so the line
/// stays private whatever the parent grants.
pub fn support_line<'r>(
    name: &str,
    roles: &SupportRoles<'_>,
    all_roles: impl IntoIterator<Item = &'r String>,
) -> Preset {
    let mut acl: BTreeMap<String, Permissions> = all_roles
        .into_iter()
        .map(|r| (r.clone(), Permissions::NONE))
        .collect();
    acl.insert(roles.observers.to_string(), Permissions::LISTEN);
    acl.insert(
        roles.callers.to_string(),
        Permissions::LISTEN.union(Permissions::SPEAK),
    );
    acl.insert(
        roles.agents.to_string(),
        Permissions::LISTEN
            .union(Permissions::SPEAK)
            .union(Permissions::WHISPER),
    );
    Preset {
        channels: vec![PresetChannel {
            name: name.to_string(),
            parent: None,
            acl,
            policy: ChannelPolicy::default(),
        }],
    }
}
