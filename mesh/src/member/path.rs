//! The voice path's check and repair ([`crate::path`]) within the member: announcing when we
//! are on air, hearing others' announcements, climbing the repair ladder when a talker on air
//! stays silent to us, and serving the rungs listeners ask of us.

use super::{Event, Member, Role};
use crate::charter::{ChannelId, Permissions};
use crate::control::ControlMessage;
use crate::path::{PathMessage, Repair, Rung};
use crate::topology::Route;
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use std::time::{Duration, Instant};

/// The round trip assumed to a talker whose link has not measured one yet.
const UNMEASURED_RTT: Duration = Duration::from_millis(100);

impl Member {
    /// Our frame carries `channels` now (empty: we went off air). Tells every linked member
    /// that hears them, and those that heard the previous set, when it changed.
    pub(super) fn note_on_air(&mut self, channels: &[ChannelId], now: Instant) {
        // Called for every frame: nothing is allocated unless the announcement is due.
        let Some(announced) = self.path.transmitting(channels, now) else {
            return;
        };
        let before = self.path.announced_before();
        let state = self.sync.charter().state();
        let to: Vec<PeerId> = self
            .peers
            .keys()
            .filter_map(|p| Some((*p, *self.members.get(p)?)))
            .filter(|(_, identity)| {
                self.presence.get(identity).is_some_and(|r| {
                    announced
                        .iter()
                        .chain(before.iter())
                        .any(|c| r.hears(state, *c))
                })
            })
            .map(|(p, _)| p)
            .collect();
        let message = ControlMessage::Path(
            PathMessage::Talking {
                channels: announced,
            }
            .encode(),
        );
        for peer in to {
            self.send_now(peer, message.clone());
        }
    }

    /// A newly linked member learns at once that we are on air.
    pub(super) fn tell_on_air(&mut self, peer: PeerId) {
        if self.path.announced().is_empty() {
            return;
        }
        let channels = self.path.announced().to_vec();
        self.send_now(
            peer,
            ControlMessage::Path(PathMessage::Talking { channels }.encode()),
        );
    }

    /// A path message from member `from` on link `peer`.
    pub(super) fn path_message(
        &mut self,
        peer: PeerId,
        from: IdentityKey,
        body: &[u8],
        now: Instant,
    ) {
        let message = match PathMessage::decode(body) {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!(%peer, %e, "bad path message");
                return;
            }
        };
        let state = self.sync.charter().state();
        match message {
            PathMessage::Talking { channels } => {
                // The floor's view first: where it holds the floor in its own view.
                let half: Vec<ChannelId> = state
                    .channels
                    .keys()
                    .copied()
                    .filter(|c| self.floor.is_half_duplex(*c))
                    .collect();
                for channel in half {
                    let on = channels.contains(&channel);
                    self.floor.set_on_air(channel, from, on, now);
                }
                let state = self.sync.charter().state();
                // Only what the charter lets it say there and us hear there is owed to us.
                let heard: Vec<ChannelId> = channels
                    .into_iter()
                    .filter(|c| {
                        self.listening.binary_search(c).is_ok()
                            && state.may(&from, *c, Permissions::SPEAK)
                    })
                    .collect();
                let rtt = self.rtt_to(&peer);
                self.path.talking(from, heard, rtt, now);
            }
            PathMessage::Repair { channels, rung } => {
                // A listener may ask only for what it may hear of us.
                if !channels
                    .iter()
                    .any(|c| state.may(&from, *c, Permissions::LISTEN))
                {
                    tracing::debug!(%peer, "path repair for channels it may not hear");
                    return;
                }
                tracing::debug!(%peer, ?rung, "a listener hears none of our frames");
                self.path.serve(from, rung, now);
                // The answer: where we are on air now (nowhere: the listener stops waiting).
                // It also tells the listener we are alive, which its next rung requires.
                let channels = self.path.announced().to_vec();
                self.send_now(
                    peer,
                    ControlMessage::Path(PathMessage::Talking { channels }.encode()),
                );
                if rung == Rung::Key {
                    // Granted again on the next flush, over the pair session.
                    self.schedule.session_restarted(&from);
                    self.keys_dirty = true;
                }
            }
        }
    }

    fn rtt_to(&self, peer: &PeerId) -> Duration {
        self.links
            .get(peer)
            .and_then(|l| l.rtt)
            .unwrap_or(UNMEASURED_RTT)
    }

    /// Climbs the ladder for every talker whose frames did not come in time.
    pub(super) fn path_timeouts(&mut self, now: Instant) {
        if self.role != Role::Member {
            return;
        }
        let repairs = {
            let links = &self.links;
            self.path.handle_timeout(now, |talker| {
                links
                    .get(&talker.peer_id())
                    .and_then(|l| l.rtt)
                    .unwrap_or(UNMEASURED_RTT)
            })
        };
        for repair in repairs {
            self.repair(repair, now);
        }
    }

    fn repair(&mut self, repair: Repair, now: Instant) {
        let Repair {
            talker,
            channels,
            rung,
        } = repair;
        tracing::debug!(%talker, ?channels, ?rung, "deaf to a talker on air: repairing");
        self.emit(Event::PathRepair {
            talker,
            channels: channels.clone(),
            rung,
        });
        let relays: Vec<IdentityKey> = channels
            .iter()
            .filter_map(|c| match self.routes.get(c) {
                Some(Route::Relay(relay)) if *relay != self.local => Some(*relay),
                _ => None,
            })
            .collect();
        for relay in &relays {
            self.close_if_unanswered(relay.peer_id(), now);
        }
        match rung {
            Rung::Resubscribe | Rung::DirectCopy => {
                // Whatever the relay holds of us, it gets our subscription again (an answer
                // is due within the next rung, or the link is closed); a relay we lost is
                // dialed again where it was last seen; and the talker sends us copies of its
                // own meanwhile.
                for relay in relays {
                    self.subscribed.remove(&relay);
                }
                self.dial_relays();
                self.replan(now);
                self.ask_talker(talker, channels, Rung::DirectCopy);
            }
            Rung::Key => self.ask_talker(talker, channels, rung),
            Rung::Mesh => {
                // Off the relay: routes now leave these channels to the mesh, our presence
                // says so (talkers then send us direct), and direct copies keep coming.
                self.replan(now);
                self.announce_presence(now);
                self.ask_talker(talker, channels, Rung::DirectCopy);
            }
        }
    }

    /// A relay that has not answered our last ordered request within the path's bound while
    /// the path through it is deaf is gone, whatever the link layer still believes (a crash
    /// whose heartbeat promise never reached us holds the link until QUIC's idle timeout,
    /// 30 s: chaos seed 5022): the link is closed, and the relay dialed where it is now.
    fn close_if_unanswered(&mut self, peer: PeerId, now: Instant) {
        let bound = self.path.bound();
        let stuck = self
            .peers
            .get(&peer)
            .and_then(|c| c.in_flight())
            .is_some_and(|(_, sent)| now >= sent + bound);
        if stuck {
            tracing::debug!(%peer, "relay unanswering while its path is deaf: closing the link");
            self.path.count_closed_link();
            self.outputs.push_back(super::Output::CloseLink(peer));
        }
    }

    fn ask_talker(&mut self, talker: IdentityKey, channels: Vec<ChannelId>, rung: Rung) {
        let peer = talker.peer_id();
        if self.peers.contains_key(&peer) {
            let message = PathMessage::Repair { channels, rung };
            self.send_now(peer, ControlMessage::Path(message.encode()));
        }
    }
}
