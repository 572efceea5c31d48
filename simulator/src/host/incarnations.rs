//! A node's counters over its incarnations: a restarted node starts its own from zero, and the
//! report wants the run's.

use callsign_node::runtime::NodeStats;

/// The counters of every incarnation so far: the finished ones' and the current one's.
pub(super) fn so_far(total: &Option<NodeStats>, current: NodeStats) -> NodeStats {
    match total {
        Some(acc) => merge(acc.clone(), current),
        None => current,
    }
}

/// Adds a later incarnation's counters to the earlier ones'.
pub(super) fn merge(mut acc: NodeStats, next: NodeStats) -> NodeStats {
    for sent in next.sent {
        match acc
            .sent
            .iter_mut()
            .find(|s| s.to == sent.to && s.channel == sent.channel)
        {
            Some(s) => s.frames_sent += sent.frames_sent,
            None => acc.sent.push(sent),
        }
    }
    for heard in next.received {
        match acc
            .received
            .iter_mut()
            .find(|r| r.from == heard.from && r.channel == heard.channel)
        {
            Some(r) => {
                // Latency percentiles cannot be summed: keep the larger sample's.
                if heard.frames_played > r.frames_played {
                    r.mouth_to_ear_ms = heard.mouth_to_ear_ms;
                }
                r.frames_played += heard.frames_played;
                r.frames_concealed += heard.frames_concealed;
                r.frames_fec += heard.frames_fec;
                r.frames_dred += heard.frames_dred;
                r.frames_lost += heard.frames_lost;
            }
            None => acc.received.push(heard),
        }
    }
    for (acc_once, next_once) in [
        (&mut acc.sent_once, next.sent_once),
        (&mut acc.heard_once, next.heard_once),
    ] {
        for once in next_once {
            match acc_once.iter_mut().find(|o| o.peer == once.peer) {
                Some(o) => {
                    o.frames += once.frames;
                    o.concealed += once.concealed;
                }
                None => acc_once.push(once),
            }
        }
    }
    acc.drops.add(&next.drops);
    acc.ptt_denied += next.ptt_denied;
    acc.frames_encoded += next.frames_encoded;
    acc.floor_drops += next.floor_drops;
    acc.repairs.add(&next.repairs);
    acc.unreachable = next.unreachable;
    acc.charter_hash = next.charter_hash;
    acc.charter_ops = next.charter_ops;
    acc.peers = next.peers;
    acc.floor = next.floor;
    acc.routes = next.routes;
    acc.audio_keys_held = acc.audio_keys_held.max(next.audio_keys_held);
    acc.forwarding = match (acc.forwarding.take(), next.forwarding) {
        (Some(mut a), Some(b)) => {
            let (x, y) = (&mut a.counts, &b.counts);
            x.packets_in += y.packets_in;
            x.bytes_in += y.bytes_in;
            x.packets_out += y.packets_out;
            x.bytes_out += y.bytes_out;
            x.resubscribed += y.resubscribed;
            for (reason, n) in &y.drops {
                *x.drops.entry(*reason).or_default() += n;
            }
            a.subscriptions_refused += b.subscriptions_refused;
            a.subscribers = b.subscribers;
            a.channels = b.channels;
            Some(a)
        }
        (a, b) => a.or(b),
    };
    acc
}
