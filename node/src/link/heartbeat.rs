//! Relay heartbeats on the voice plane (`link::plane`): the relay's side sends an empty
//! datagram on every link it had nothing else for; the member's side ([`Watchdog`]) closes a
//! link whose peer promised heartbeats and went silent, so members fail over from a dead relay
//! in about half a second without QUIC keep-alives on every link.
//!
//! The promise ([`Heartbeat`]) is fast only where it matters: on a link that carried voice
//! either way in the last [`Heartbeat::active`], a datagram at least every
//! [`Heartbeat::every`]; on a quiet one, every [`Heartbeat::quiet`]. Members are quiet most of
//! the time, and beating every quiet link eight times a second cost an idle relay most of its
//! CPU (1,000 idle members: 8,000 datagrams a second). A member that keys up expects the fast
//! beat from then on, and the relay, hearing its voice, beats fast again, so a relay that died
//! in the quiet is found within half a second of the next word spoken through it.

use super::links::{Links, State, ANNOUNCE_EVERY, KIND_HEARTBEAT, KIND_PLANE_READY};
use super::plane::{PlaneLink, PlaneReceivers, SealedBatch};
use super::socket::canonical;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a relay promises the peers on its links (`LinkConfig::plane_heartbeat`), announced in
/// its plane-ready datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The longest gap between datagrams on a link with recent voice.
    pub every: Duration,
    /// The longest gap on a quiet link (no shorter than `every`).
    pub quiet: Duration,
    /// How long after the last voice datagram either way a link counts as having voice.
    pub active: Duration,
}

impl Heartbeat {
    /// A peer that announced only an interval (or a relay with no quiet rate): always fast.
    pub fn constant(every: Duration) -> Self {
        Self {
            every,
            quiet: every,
            active: Duration::ZERO,
        }
    }

    /// The gap this end keeps to on a link whose last voice was `voice_ms` (`u64::MAX`: never)
    /// at `now_ms`.
    fn gap(&self, now_ms: u64, voice_ms: u64) -> Duration {
        if voice_within(now_ms, voice_ms, self.active) {
            self.every
        } else {
            self.quiet_gap()
        }
    }

    /// The gap on a quiet link; a promise whose quiet gap is no longer than `every` is always
    /// fast.
    fn quiet_gap(&self) -> Duration {
        self.quiet.max(self.every)
    }
}

/// Whether voice at `voice_ms` (`u64::MAX`: never) was less than `window` before `now_ms`.
fn voice_within(now_ms: u64, voice_ms: u64, window: Duration) -> bool {
    voice_ms != u64::MAX && (now_ms.saturating_sub(voice_ms) as u128) < window.as_millis()
}

/// How often the heartbeat task follows each link's QUIC address. Only a QUIC migration
/// without plane datagrams from the new address needs it (an authenticated plane datagram moves
/// the destination at once), and locking every connection at every other look took 1.3 % of a
/// relay's CPU while it forwarded a talker to 100 members.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// When the heartbeat looks at the links: the next look, and when one last followed the
/// links' QUIC addresses. Kept in the registry, because two paths look: the heartbeat task on
/// its timer, and a relay's copies of a packet ([`Looks::due_soon`]), which look on the way
/// when the next look is near. While a relay forwards voice it is awake every 20 ms anyway, so
/// the looks ride along, and on a socket read by a thread of its own ([`ThreadLooks`]) nothing
/// else wakes for them.
#[derive(Debug, Default)]
pub(super) struct Looks {
    /// ms on the `Links` clock; `None` before the first look.
    next_ms: Option<u64>,
    followed_ms: Option<u64>,
    /// Tells the task that a look was taken without it, so it sleeps until the new next one.
    moved: Arc<tokio::sync::Notify>,
}

impl Looks {
    /// Whether a look is due within a quarter of a fast gap of `now_ms`: early enough that a
    /// packet path 20 ms apart catches it before the timer would.
    pub(super) fn due_soon(&self, promise: &Heartbeat, now_ms: u64) -> bool {
        let slack = promise.every.as_millis().min(u128::from(u64::MAX)) as u64 / 4;
        self.next_ms
            .is_some_and(|next| now_ms.saturating_add(slack) >= next)
    }
}

/// Looks at every link at `now_ms`: an empty datagram into `batch` for each plane link that
/// carried nothing for its gap (the promise's `every` where voice went either way lately,
/// `quiet` elsewhere) less half of `every`; in QUIC for a peer that has not taken up the plane.
/// Once every [`FOLLOW_EVERY`] it also follows each link's QUIC address (a migration), which
/// the relay's sends read without asking quinn. Schedules the next look ([`next_look`]).
pub(super) fn look(
    state: &mut State,
    promise: &Heartbeat,
    now_ms: u64,
    beat: &Bytes,
    batch: &mut SealedBatch,
) {
    // quinn's address needs its connection's lock: once a second is enough.
    let follow = state
        .looks
        .followed_ms
        .is_none_or(|at| u128::from(now_ms.saturating_sub(at)) >= FOLLOW_EVERY.as_millis());
    if follow {
        state.looks.followed_ms = Some(now_ms);
    }
    let mut earliest_ms = u64::MAX;
    let planes = state.planes();
    // Each link's times load while the ones before are looked at.
    for (_, link) in planes {
        link.prefetch_times();
    }
    // Connections without a plane are not among them: their other end keeps no `Watchdog`.
    for (quic, link) in planes {
        let due = beat_due(promise, now_ms, link.last_sent_ms(), link.last_voice_ms());
        if link.is_ready() {
            if let Some(quic) = quic.as_ref().filter(|_| follow) {
                link.destination(canonical(quic.remote_address()));
            }
            if due {
                batch.push(link, beat, link.last_destination());
                link.sent_at(now_ms);
            }
        } else if let Some(quic) = quic {
            // A peer that has not taken up the plane hears it in QUIC, with the announcement
            // again now and then (it may have been lost).
            if due {
                link.sent_at(now_ms);
                let _ = quic.send_datagram(beat.clone());
            }
            if link.should_announce(tokio::time::Instant::now(), ANNOUNCE_EVERY) {
                let _ = quic.send_datagram(announcement(Some(*promise)));
            }
        }
        let deadline = gap_ends_ms(promise, now_ms, link.last_sent_ms(), link.last_voice_ms());
        earliest_ms = earliest_ms.min(deadline);
    }
    state.looks.next_ms = Some(next_look(promise, now_ms, earliest_ms));
}

/// The empty datagram a heartbeat is.
pub(super) fn beat() -> Bytes {
    Links::frame(KIND_HEARTBEAT, &[])
}

/// Looks if a look is due at `now_ms` on the `Links` clock ([`look`]) and sends its beats; the
/// next look's time. `None`: there is nothing to look for (the registry promises no heartbeat).
fn look_if_due(
    now_ms: u64,
    state: &Mutex<State>,
    plane: &PlaneReceivers,
    beat: &Bytes,
) -> Option<u64> {
    let (next, batch, socket) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let promise = state.heartbeat?;
        // The first look comes half a fast gap in.
        let first = now_ms.saturating_add(promise.every.as_millis() as u64 / 2);
        let next = *state.looks.next_ms.get_or_insert(first);
        if next > now_ms {
            // Not due yet, or taken on a packet's way meanwhile.
            return Some(next);
        }
        let mut batch = SealedBatch::with_capacity(0, beat.len());
        look(&mut state, &promise, now_ms, beat, &mut batch);
        (
            state.looks.next_ms.unwrap_or(first),
            batch,
            state.socket.clone(),
        )
    };
    if let Some(socket) = socket {
        let n = batch.send(&socket);
        plane
            .stats()
            .heartbeats_sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    Some(next)
}

/// The heartbeat task: [`look`]s whenever the next look is due and nothing else took it
/// first. Ends with the registry. A socket read on a thread of its own looks there instead
/// ([`ThreadLooks`]).
pub(super) async fn send_heartbeats(
    epoch: tokio::time::Instant,
    state: std::sync::Weak<Mutex<State>>,
    plane: Arc<PlaneReceivers>,
) {
    let beat = beat();
    let moved = match state.upgrade() {
        Some(state) => state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .looks
            .moved
            .clone(),
        None => return,
    };
    loop {
        let next = {
            let Some(state) = state.upgrade() else { return };
            let Some(next) = look_if_due(Links::clock_ms(epoch), &state, &plane, &beat) else {
                return;
            };
            next
        };
        tokio::select! {
            biased;
            _ = moved.notified() => continue,
            _ = tokio::time::sleep_until(epoch + Duration::from_millis(next)) => {}
        }
    }
}

/// The heartbeat's looks, for a socket read on a thread of its own (`link::read_thread`): the
/// thread waits for the next look as it waits for datagrams, and looks itself.
///
/// Why: the task's timer woke a forwarding relay's runtime about twenty times a second
/// (each look taken on a packet's way told the task to sleep anew, and its timer still fired
/// now and then), most of what woke the runtime while voice flowed. On the thread, a look due
/// while voice flows rides along on a packet's way as before, and one due in the quiet costs
/// a return from `poll`, not a runtime's wake-up.
#[cfg(target_os = "linux")]
pub(crate) struct ThreadLooks {
    epoch: tokio::time::Instant,
    state: std::sync::Weak<Mutex<State>>,
    plane: Arc<PlaneReceivers>,
    beat: Bytes,
}

#[cfg(target_os = "linux")]
impl ThreadLooks {
    pub(super) fn new(
        epoch: tokio::time::Instant,
        state: std::sync::Weak<Mutex<State>>,
        plane: Arc<PlaneReceivers>,
    ) -> Self {
        Self {
            epoch,
            state,
            plane,
            beat: beat(),
        }
    }

    /// Looks if a look is due; how long until the next one. `None`: none is to come (the
    /// registry is gone, or promises no heartbeat).
    ///
    /// Called on every wake-up, so the clock is read once: after a look the wait counts from
    /// before it, later by the look's own time, well inside the eighth of a fast gap
    /// [`next_look`] leaves for a late look.
    pub(crate) fn look(&self) -> Option<Duration> {
        let state = self.state.upgrade()?;
        let now_ms = Links::clock_ms(self.epoch);
        let next = look_if_due(now_ms, &state, &self.plane, &self.beat)?;
        Some(Duration::from_millis(next.saturating_sub(now_ms)))
    }
}

/// A look taken on a packet's way: the task sleeps until the next one.
pub(super) fn looked_without_task(state: &State) {
    state.looks.moved.notify_one();
}

/// Whether a look at `now_ms` beats a link last sent on at `sent_ms` (`u64::MAX`: never) with
/// voice last at `voice_ms`: once it has been quiet for its gap less half a fast gap, so a
/// look that comes no later than half a fast gap before the gap runs out finds it in time.
fn beat_due(promise: &Heartbeat, now_ms: u64, sent_ms: u64, voice_ms: u64) -> bool {
    let gap = promise.gap(now_ms, voice_ms);
    let early = gap.saturating_sub(promise.every / 2).as_millis();
    sent_ms == u64::MAX || u128::from(now_ms.saturating_sub(sent_ms)) >= early
}

/// When the gap of a link last sent on at `sent_ms` with voice last at `voice_ms` runs out.
fn gap_ends_ms(promise: &Heartbeat, now_ms: u64, sent_ms: u64, voice_ms: u64) -> u64 {
    let gap = promise.gap(now_ms, voice_ms);
    sent_ms.saturating_add(gap.as_millis() as u64)
}

/// When to look again after a look at `now_ms` that left `earliest_ms` as the first moment a
/// link's gap runs out: an eighth of a fast gap before it (for a late timer), but no sooner
/// than half a fast gap (no link still has its gap running out sooner: the look beat those)
/// and no later than a fast gap less that eighth, because a quiet link whose peer starts
/// talking expects the fast beat from then on.
///
/// Why not a look every half fast gap, as before: while a relay forwards a talker, voice
/// stands in for the beat on every link but the talker's, and the looks themselves, each a
/// wake-up walking every link, were most of what the heartbeat cost.
fn next_look(promise: &Heartbeat, now_ms: u64, earliest_ms: u64) -> u64 {
    let every = promise.every.as_millis().min(u128::from(u64::MAX / 4)) as u64;
    let margin = every / 8;
    let soonest = now_ms.saturating_add((every / 2).max(1));
    let latest = now_ms.saturating_add(every - margin).max(soonest);
    earliest_ms.saturating_sub(margin).clamp(soonest, latest)
}

/// The plane announcement, with the heartbeat this end promises: empty (none), or `every`,
/// `quiet` and `active` in ms (u16 each, big-endian; docs/protocol.md).
pub(super) fn announcement(heartbeat: Option<Heartbeat>) -> Bytes {
    match heartbeat {
        Some(promise) => {
            let ms = |d: Duration| d.as_millis().clamp(1, u128::from(u16::MAX)) as u16;
            let mut body = [0u8; 6];
            body[..2].copy_from_slice(&ms(promise.every).to_be_bytes());
            body[2..4].copy_from_slice(&ms(promise.quiet).to_be_bytes());
            body[4..].copy_from_slice(&ms(promise.active).to_be_bytes());
            Links::frame(KIND_PLANE_READY, &body)
        }
        None => Links::frame(KIND_PLANE_READY, &[]),
    }
}

/// The promise in an announcement's body: empty (none), an interval alone (an older relay:
/// always fast), or all three; a zero interval promises nothing. Any other length is
/// malformed.
pub(super) fn parse_announcement(body: &[u8]) -> Result<Option<Heartbeat>, ()> {
    let ms = |pair: &[u8]| Duration::from_millis(u64::from(u16::from_be_bytes([pair[0], pair[1]])));
    let promise = match body.len() {
        0 => return Ok(None),
        2 => Heartbeat::constant(ms(body)),
        6 => Heartbeat {
            every: ms(&body[..2]),
            quiet: ms(&body[2..4]),
            active: ms(&body[4..]),
        },
        _ => return Err(()),
    };
    Ok((!promise.every.is_zero()).then_some(promise))
}

/// Fewer ms of voice than the peer's `active` window for this end to expect the fast beat: the
/// peer's window starts when it sent or heard the voice, up to a path's delay earlier.
const ACTIVE_MARGIN: Duration = Duration::from_secs(1);

/// Watches a link whose peer promised heartbeats: anything authentic on the plane, or any QUIC
/// packet, is a word from it; [`SILENT_BEATS`](super::plane::SILENT_BEATS) of the gaps it
/// promised without one and the link is dead.
pub(super) struct Watchdog {
    plane: Option<Arc<PlaneLink>>,
    epoch: tokio::time::Instant,
    /// QUIC packets received when last looked.
    quic_packets: u64,
    silence: Silence,
    every: Option<Duration>,
    next: Option<tokio::time::Instant>,
}

impl Watchdog {
    pub(super) fn new(plane: Option<Arc<PlaneLink>>, epoch: tokio::time::Instant) -> Self {
        Self {
            plane,
            epoch,
            quic_packets: 0,
            silence: Silence::default(),
            every: None,
            next: None,
        }
    }

    /// Waits for the next look, every fast interval once the peer has promised one (its
    /// announcement arrives on this link's loop, which then calls this again).
    pub(super) async fn tick(&mut self) {
        let every = self
            .plane
            .as_ref()
            .and_then(|p| p.peer_heartbeat())
            .map(|p| p.every);
        if every != self.every {
            self.every = every;
            self.next = None;
        }
        let Some(every) = every else {
            // Until the peer's announcement is in, look once per announcement interval: its
            // plane datagrams may start without it (they reach the socket, not this loop), and
            // then this end asks for it again (`missed_announcement`).
            let announced = self.plane.as_ref().is_none_or(|p| p.peer_announced());
            if !announced {
                return tokio::time::sleep(ANNOUNCE_EVERY).await;
            }
            return std::future::pending().await;
        };
        let next = *self
            .next
            .get_or_insert_with(|| tokio::time::Instant::now() + every);
        tokio::time::sleep_until(next).await;
        self.next = Some(next + every);
    }

    /// The peer uses the plane, so it set it up, but its announcement never reached us: we do
    /// not know what heartbeat it promised and cannot tell when it goes silent (a relay that
    /// crashed would then hold the link until QUIC's idle timeout, and members routed through
    /// it heard nothing for 30 s: chaos seed 5022). A heartbeat in QUIC makes it announce again.
    pub(super) fn missed_announcement(&self) -> bool {
        self.plane
            .as_ref()
            .is_some_and(|p| p.is_ready() && !p.peer_announced())
    }

    /// Whether the peer has now been silent too long (on a parked link, `connection` is
    /// `None`: only the plane counts).
    pub(super) fn silent(&mut self, connection: Option<&quinn::Connection>) -> bool {
        let Some(plane) = &self.plane else {
            return false;
        };
        let Some(promise) = plane.peer_heartbeat() else {
            return false;
        };
        let packets = connection.map_or(self.quic_packets, |c| c.stats().udp_rx.datagrams);
        let heard = plane.take_heard() || packets != self.quic_packets;
        self.quic_packets = packets;
        let now_ms = Links::clock_ms(self.epoch);
        self.silence
            .look(&promise, now_ms, heard, plane.last_voice_ms())
    }
}

/// The watchdog's arithmetic, apart from the link it reads: when the peer was last heard, and
/// since when this end expects the fast beat.
#[derive(Debug, Default)]
struct Silence {
    /// The look that last heard the peer (or the first look), ms on the `Links` clock.
    heard_ms: Option<u64>,
    /// Since when the link has had voice (this end's view), if it has.
    active_since_ms: Option<u64>,
}

impl Silence {
    /// One look at `now_ms`: `heard` if a word came since the last, `voice_ms` the link's last
    /// voice datagram either way. True once the peer has been silent for
    /// [`SILENT_BEATS`](super::plane::SILENT_BEATS) of the gaps it promised.
    fn look(&mut self, promise: &Heartbeat, now_ms: u64, heard: bool, voice_ms: u64) -> bool {
        if heard || self.heard_ms.is_none() {
            self.heard_ms = Some(now_ms);
        }
        let window = promise.active.saturating_sub(ACTIVE_MARGIN);
        let active = promise.quiet_gap() > promise.every && voice_within(now_ms, voice_ms, window);
        self.active_since_ms = match (active, self.active_since_ms) {
            (false, _) => None,
            (true, None) => Some(now_ms),
            (true, since) => since,
        };
        let heard_ms = self.heard_ms.unwrap_or(now_ms);
        // Voice just began: the peer beats fast once it knows, so count from then, not from
        // its last quiet beat.
        let (gap, since) = match self.active_since_ms {
            Some(since) => (promise.every, heard_ms.max(since)),
            None => (promise.quiet_gap(), heard_ms),
        };
        let silent_for = u128::from(now_ms.saturating_sub(since));
        silent_for >= gap.as_millis() * u128::from(super::plane::SILENT_BEATS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMISE: Heartbeat = Heartbeat {
        every: Duration::from_millis(125),
        quiet: Duration::from_millis(500),
        active: Duration::from_secs(3),
    };
    const NEVER: u64 = u64::MAX;

    /// Looks every 125 ms from `from` to `to` (ms), hearing the peer at the looks `heard`
    /// picks and with voice last at `voice`; the first look at which the link is dead.
    fn dead_at(
        silence: &mut Silence,
        (from, to): (u64, u64),
        heard: impl Fn(u64) -> bool,
        voice: impl Fn(u64) -> u64,
    ) -> Option<u64> {
        (from..=to)
            .step_by(125)
            .find(|&now| silence.look(&PROMISE, now, heard(now), voice(now)))
    }

    /// What [`run_looks`] saw.
    struct Looked {
        /// Looks the timer made.
        timer: u64,
        /// Looks taken on a forwarded packet's way ([`Looks::due_soon`]).
        on_packets: u64,
        /// Each link's longest gap between datagrams (ms; the first counted from `voice_from`).
        longest: Vec<u64>,
    }

    /// Runs the relay's looks for `seconds` over links that each get voice sent to them
    /// (`sent_voice[i]`) or heard from them (`heard_voice[i]`) every 20 ms from `voice_from`
    /// ms until `voice_until`, or neither. As in the relay, a packet it forwards takes a look
    /// due soon with it.
    fn run_looks(
        seconds: u64,
        (voice_from, voice_until): (u64, u64),
        sent_voice: &[bool],
        heard_voice: &[bool],
    ) -> Looked {
        let n = sent_voice.len();
        let (mut sent, mut voice) = (vec![u64::MAX; n], vec![u64::MAX; n]);
        let mut looked = Looked {
            timer: 0,
            on_packets: 0,
            longest: vec![0u64; n],
        };
        let send = |sent: &mut Vec<u64>, longest: &mut Vec<u64>, i: usize, now: u64| {
            if sent[i] != u64::MAX && now >= voice_from {
                longest[i] = longest[i].max(now - sent[i].max(voice_from));
            }
            sent[i] = now;
        };
        let mut looks = Looks {
            next_ms: Some(PROMISE.every.as_millis() as u64 / 2),
            ..Looks::default()
        };
        for now in 0..seconds * 1000 {
            let mut forwarded = false;
            if now % 20 == 0 && (voice_from..voice_until).contains(&now) {
                for i in 0..n {
                    if sent_voice[i] {
                        send(&mut sent, &mut looked.longest, i, now);
                        forwarded = true;
                    }
                    if sent_voice[i] || heard_voice[i] {
                        voice[i] = now;
                    }
                }
            }
            let on_packet = forwarded && looks.due_soon(&PROMISE, now);
            if on_packet || looks.next_ms == Some(now) {
                match on_packet {
                    true => looked.on_packets += 1,
                    false => looked.timer += 1,
                }
                let mut earliest = u64::MAX;
                for i in 0..n {
                    if beat_due(&PROMISE, now, sent[i], voice[i]) {
                        send(&mut sent, &mut looked.longest, i, now);
                    }
                    earliest = earliest.min(gap_ends_ms(&PROMISE, now, sent[i], voice[i]));
                }
                looks.next_ms = Some(next_look(&PROMISE, now, earliest));
            }
        }
        looked
    }

    #[test]
    fn looks_come_as_the_gaps_need_them_and_no_gap_runs_over() {
        // A talker's relay: voice goes out on three links and comes in on the fourth, which
        // only the heartbeat keeps. Every half fast gap (the old schedule) would be 160 looks;
        // they all ride on the packets the relay forwards, and the timer never wakes it.
        let talk = [true, true, true, false];
        let looked = run_looks(10, (0, u64::MAX), &talk, &talk.map(|s| !s));
        assert!(
            looked.longest.iter().all(|&gap| gap <= 125),
            "{:?}",
            looked.longest
        );
        assert_eq!(looked.timer, 0);
        assert!(looked.on_packets <= 160, "{} looks", looked.on_packets);
        // Quiet links: the quiet gap holds, and the timer's looks stay within the fast gap.
        let looked = run_looks(10, (0, u64::MAX), &[false; 3], &[false; 3]);
        assert!(
            looked.longest.iter().all(|&gap| gap <= 500),
            "{:?}",
            looked.longest
        );
        assert!((80..=115).contains(&looked.timer), "{} looks", looked.timer);
        // A quiet link whose peer starts talking has the fast beat from its first word: no
        // gap from then on is longer than a fast one.
        for from in [3_000, 3_013, 3_070] {
            let looked = run_looks(6, (from, u64::MAX), &[false, false], &[false, true]);
            assert!(
                looked.longest[1] <= 125,
                "talking from {from}: {:?}",
                looked.longest
            );
        }
        // Relayed voice that stops: the timer takes over and the links that had it keep the
        // fast beat for as long as they count as active.
        let looked = run_looks(7, (0, 5_010), &[true, true], &[false, false]);
        assert!(
            looked.longest.iter().all(|&gap| gap <= 125),
            "{:?}",
            looked.longest
        );
        assert!(looked.timer >= 15, "{} timer looks", looked.timer);
    }

    #[test]
    fn a_look_is_never_sooner_than_half_a_fast_gap_nor_later_than_most_of_one() {
        assert_eq!(next_look(&PROMISE, 1000, 1010), 1062);
        assert_eq!(next_look(&PROMISE, 1000, 1100), 1085);
        assert_eq!(next_look(&PROMISE, 1000, u64::MAX), 1110);
        let tiny = Heartbeat::constant(Duration::from_millis(1));
        assert_eq!(next_look(&tiny, 1000, 1000), 1001);
    }

    #[test]
    fn the_announcement_round_trips_and_an_older_one_means_always_fast() {
        let body = announcement(Some(PROMISE));
        assert_eq!(parse_announcement(&body[2..]), Ok(Some(PROMISE)));
        assert_eq!(parse_announcement(&announcement(None)[2..]), Ok(None));
        assert_eq!(
            parse_announcement(&125u16.to_be_bytes()),
            Ok(Some(Heartbeat::constant(Duration::from_millis(125))))
        );
        assert_eq!(parse_announcement(&[0, 0]), Ok(None));
        assert_eq!(parse_announcement(&[1, 2, 3]), Err(()));
    }

    #[test]
    fn a_relay_beats_fast_only_after_voice() {
        assert_eq!(PROMISE.gap(10_000, NEVER), PROMISE.quiet);
        assert_eq!(PROMISE.gap(10_000, 8_000), PROMISE.every);
        assert_eq!(PROMISE.gap(10_000, 7_000), PROMISE.quiet);
        let old = Heartbeat::constant(Duration::from_millis(125));
        assert_eq!(old.gap(10_000, NEVER), old.every);
    }

    #[test]
    fn a_quiet_link_dies_after_four_quiet_gaps_and_one_with_voice_after_four_fast_ones() {
        // Heard at 0, then nothing: quiet, dead two seconds on.
        let mut quiet = Silence::default();
        let at = dead_at(&mut quiet, (0, 5_000), |t| t == 0, |_| NEVER);
        assert_eq!(at, Some(2_000));
        // Voice until 1 s, heard until then: fast, dead half a second after the last word.
        let mut active = Silence::default();
        let at = dead_at(&mut active, (0, 5_000), |t| t <= 1_000, |t| t.min(1_000));
        assert_eq!(at, Some(1_500));
        // Beats every 500 ms while quiet keep a link up.
        let mut beating = Silence::default();
        let at = dead_at(&mut beating, (0, 20_000), |t| t % 500 == 0, |_| NEVER);
        assert_eq!(at, None);
    }

    #[test]
    fn keying_up_on_a_quiet_link_expects_the_fast_beat_from_then_on() {
        // Quiet beats until 4 s (last at 4,000); this end talks from 4,250 and nothing comes
        // back: dead half a second after the first look that saw the voice, not at once for
        // the quiet gap already passed.
        let mut silence = Silence::default();
        let at = dead_at(
            &mut silence,
            (0, 10_000),
            |t| t <= 4_000 && t % 500 == 0,
            |t| if t >= 4_250 { t } else { NEVER },
        );
        assert_eq!(at, Some(4_750));
        // The relay answers the voice with fast beats: the link stays up.
        let mut answered = Silence::default();
        let at = dead_at(
            &mut answered,
            (0, 10_000),
            |t| if t < 4_250 { t % 500 == 0 } else { true },
            |t| if t >= 4_250 { t } else { NEVER },
        );
        assert_eq!(at, None);
    }
}
