//! Relay heartbeats on the voice plane (`link::plane`): the relay's side sends an empty
//! datagram on every link it had nothing else for; the member's side ([`Watchdog`]) closes a
//! link whose peer promised heartbeats and went silent, so members fail over from a dead relay
//! in about half a second without QUIC keep-alives on every link.

use super::links::{Links, State, ANNOUNCE_EVERY, KIND_HEARTBEAT, KIND_PLANE_READY};
use super::plane::{PlaneLink, PlaneReceivers, SealedBatch};
use super::socket::canonical;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An empty datagram on each link that carried nothing for half a heartbeat interval, looked
/// at twice an interval so no link goes longer than one without a datagram (a link quiet since
/// just after a look is beaten at the second look after, half an interval later than that):
/// on the plane where the peer has it, else in QUIC. Once an interval it also follows each
/// link's QUIC address (a migration), which the relay's sends read without asking quinn.
/// Ends with the registry.
pub(super) async fn send_heartbeats(
    epoch: tokio::time::Instant,
    state: std::sync::Weak<Mutex<State>>,
    plane: Arc<PlaneReceivers>,
) {
    let beat = Links::frame(KIND_HEARTBEAT, &[]);
    let mut looks = 0u32;
    loop {
        let every = {
            let Some(state) = state.upgrade() else { return };
            let state = state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(every) = state.heartbeat else { return };
            every
        };
        // Each look walks every link: while voice flows to them all, that is the whole cost.
        let step = every / 2;
        tokio::time::sleep(step).await;
        let quiet_ms = (every - step).as_millis() as u64;
        let now_ms = Links::clock_ms(epoch);
        let Some(state) = state.upgrade() else { return };
        // quinn's address needs its connection's lock: once an interval is enough.
        let follow = looks % 2 == 0;
        looks = looks.wrapping_add(1);
        let mut batch = SealedBatch::with_capacity(0, beat.len());
        let socket = {
            let state = state.lock().unwrap_or_else(|e| e.into_inner());
            for connection in state.peers.values().flatten() {
                match &connection.plane {
                    Some(link) if link.is_ready() => {
                        if follow {
                            link.destination(canonical(connection.quic.remote_address()));
                        }
                        if link.quiet_for(now_ms, quiet_ms) {
                            batch.push(link, &beat, link.last_destination());
                            link.sent_at(now_ms);
                        }
                    }
                    // A peer that has not taken up the plane hears it in QUIC, with the
                    // announcement again now and then (it may have been lost).
                    Some(link) => {
                        if link.quiet_for(now_ms, quiet_ms) {
                            link.sent_at(now_ms);
                            let _ = connection.quic.send_datagram(beat.clone());
                        }
                        if link.should_announce(tokio::time::Instant::now(), ANNOUNCE_EVERY) {
                            let _ = connection.quic.send_datagram(announcement(Some(every)));
                        }
                    }
                    // No plane, no watchdog at the other end (`Watchdog`).
                    None => {}
                }
            }
            state.socket.clone()
        };
        if let Some(socket) = socket {
            let n = batch.send(&socket);
            plane
                .stats()
                .heartbeats_sent
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// The plane announcement, with the heartbeat this end promises.
pub(super) fn announcement(heartbeat: Option<Duration>) -> Bytes {
    match heartbeat {
        Some(every) => {
            let ms = every.as_millis().clamp(1, u128::from(u16::MAX)) as u16;
            Links::frame(KIND_PLANE_READY, &ms.to_be_bytes())
        }
        None => Links::frame(KIND_PLANE_READY, &[]),
    }
}

/// Watches a link whose peer promised heartbeats: anything authentic on the plane, or any QUIC
/// packet, is a word from it; [`SILENT_BEATS`](super::plane::SILENT_BEATS) intervals without
/// one and the link is dead.
pub(super) struct Watchdog {
    plane: Option<Arc<PlaneLink>>,
    /// QUIC packets received when last looked.
    quic_packets: u64,
    silent: u32,
    every: Option<Duration>,
    next: Option<tokio::time::Instant>,
}

impl Watchdog {
    pub(super) fn new(plane: Option<Arc<PlaneLink>>) -> Self {
        Self {
            plane,
            quic_packets: 0,
            silent: 0,
            every: None,
            next: None,
        }
    }

    /// Waits for the next look, every heartbeat interval once the peer has promised one (its
    /// announcement arrives on this link's loop, which then calls this again).
    pub(super) async fn tick(&mut self) {
        let every = self.plane.as_ref().and_then(|p| p.peer_heartbeat());
        if every != self.every {
            self.every = every;
            self.next = None;
        }
        let Some(every) = every else {
            return std::future::pending().await;
        };
        let next = *self
            .next
            .get_or_insert_with(|| tokio::time::Instant::now() + every);
        tokio::time::sleep_until(next).await;
        self.next = Some(next + every);
    }

    /// Whether the peer has now been silent too long.
    pub(super) fn silent(&mut self, connection: &quinn::Connection) -> bool {
        let Some(plane) = &self.plane else {
            return false;
        };
        if self.every.is_none() {
            return false;
        }
        let packets = connection.stats().udp_rx.datagrams;
        let heard = plane.take_heard() || packets != self.quic_packets;
        self.quic_packets = packets;
        self.silent = if heard { 0 } else { self.silent + 1 };
        self.silent >= super::plane::SILENT_BEATS
    }
}
