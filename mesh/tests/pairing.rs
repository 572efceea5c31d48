//! Pair session starts and restarts in virtual time: whatever either side loses (a link
//! restart, a message lost with its connection, a crossing restart on both sides), the two end
//! up with one established session, and stale messages of older attempts change nothing.

use callsign_keys::NodeKeys;
use callsign_mesh::pairing::{Pairing, PairingConfig, PairingStep};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

fn keys(seed: u64) -> NodeKeys {
    NodeKeys::generate(&mut StdRng::seed_from_u64(seed))
}

/// An initiator (a) and a responder (b) and the ordered channel between them.
struct Pair {
    a: NodeKeys,
    b: NodeKeys,
    init: Pairing,
    resp: Pairing,
    to_b: VecDeque<Vec<u8>>,
    to_a: VecDeque<Vec<u8>>,
    now: Instant,
    established: (u32, u32),
}

impl Pair {
    fn new() -> Self {
        let (a, b) = (keys(1), keys(2));
        let now = Instant::now();
        let (init, first) =
            Pairing::initiate(&a, b.identity.public(), 1000, PairingConfig::default(), now);
        let (resp, none) = Pairing::respond(a.identity.public(), PairingConfig::default(), false);
        assert!(none.send.is_empty());
        let mut pair = Self {
            a,
            b,
            init,
            resp,
            to_b: VecDeque::new(),
            to_a: VecDeque::new(),
            now,
            established: (0, 0),
        };
        pair.sent_by_a(first);
        pair
    }

    fn sent_by_a(&mut self, step: PairingStep) {
        self.established.0 += u32::from(step.established);
        self.to_b.extend(step.send);
    }

    fn sent_by_b(&mut self, step: PairingStep) {
        self.established.1 += u32::from(step.established);
        self.to_a.extend(step.send);
    }

    /// Delivers everything in flight, both ways, until quiet; the clock moves 10 ms a hop.
    fn settle(&mut self) {
        for _ in 0..32 {
            if self.to_a.is_empty() && self.to_b.is_empty() {
                return;
            }
            self.now += Duration::from_millis(10);
            if let Some(body) = self.to_b.pop_front() {
                let step = self.resp.handle(&self.b, &body, self.now);
                self.sent_by_b(step);
            }
            if let Some(body) = self.to_a.pop_front() {
                let step = self.init.handle(&self.a, &body, self.now);
                self.sent_by_a(step);
            }
        }
        panic!("the handshake never settles");
    }

    /// Lets `d` pass and runs the initiator's timer.
    fn wait(&mut self, d: Duration) {
        self.now += d;
        let step = self.init.handle_timeout(&self.a, self.now);
        self.sent_by_a(step);
    }

    fn both_established(&self) -> bool {
        self.init.is_established() && self.resp.is_established()
    }

    /// Both sessions carry a grant: they are the same session.
    fn sessions_match(&mut self) -> bool {
        let key = callsign_mesh::voice::SenderKey::generate(3, &mut StdRng::seed_from_u64(4));
        let a = self.a.clone();
        let Some(sealed) = self.init.session().and_then(|s| {
            s.grant(&a, &key, vec![callsign_mesh::charter::ChannelId(1)])
                .ok()
        }) else {
            return false;
        };
        self.resp
            .session()
            .is_some_and(|s| s.accept_grant(&sealed).is_ok())
    }
}

#[test]
fn a_clean_start_establishes_both_sides_once() {
    let mut p = Pair::new();
    p.settle();
    assert!(p.both_established());
    assert_eq!(p.established, (1, 1));
    assert!(p.sessions_match());
    assert_eq!(p.init.poll_timeout(), None, "nothing left to retry");
}

#[test]
fn a_responder_that_lost_its_state_mid_handshake_gets_a_new_start() {
    let mut p = Pair::new();
    // Message 1 reaches the responder, which then restarts before message 3 arrives.
    let m1 = p.to_b.pop_front().unwrap();
    let step = p.resp.handle(&p.b, &m1, p.now);
    p.sent_by_b(step);
    let (resp, step) = Pairing::respond(p.a.identity.public(), PairingConfig::default(), true);
    p.resp = resp;
    p.now += Duration::from_secs(1);
    p.sent_by_b(step);
    p.settle();
    assert!(p.both_established());
    assert!(p.sessions_match());
}

#[test]
fn a_responder_restart_after_establishment_renews_the_session() {
    let mut p = Pair::new();
    p.settle();
    p.now += Duration::from_secs(5);
    let (resp, step) = Pairing::respond(p.a.identity.public(), PairingConfig::default(), true);
    p.resp = resp;
    p.sent_by_b(step);
    p.settle();
    assert!(p.both_established());
    assert_eq!(p.established, (2, 2));
    assert!(p.sessions_match());
}

#[test]
fn an_initiator_restart_replaces_the_responders_session() {
    let mut p = Pair::new();
    p.settle();
    p.now += Duration::from_secs(5);
    let (init, step) = Pairing::initiate(
        &p.a,
        p.b.identity.public(),
        5000,
        PairingConfig::default(),
        p.now,
    );
    p.init = init;
    p.sent_by_a(step);
    p.settle();
    assert!(p.both_established());
    assert!(p.sessions_match());
}

#[test]
fn crossing_restarts_on_both_sides_converge() {
    // What a hole punch beside a relay circuit caused: both sides restart at once, the
    // initiator's new first message and the responder's "start again" cross, and a reply to
    // the superseded attempt is still on its way.
    let mut p = Pair::new();
    let m1 = p.to_b.pop_front().unwrap();
    let step = p.resp.handle(&p.b, &m1, p.now);
    p.sent_by_b(step); // message 2 of attempt 1000 now in flight to a
    p.now += Duration::from_secs(1);
    let (init, step) = Pairing::initiate(
        &p.a,
        p.b.identity.public(),
        2000,
        PairingConfig::default(),
        p.now,
    );
    p.init = init;
    p.sent_by_a(step);
    let (resp, step) = Pairing::respond(p.a.identity.public(), PairingConfig::default(), true);
    p.resp = resp;
    p.sent_by_b(step);
    p.settle();
    assert!(p.both_established());
    assert!(p.sessions_match());
}

#[test]
fn a_lost_first_message_is_retried_on_the_timer() {
    let mut p = Pair::new();
    p.to_b.clear();
    p.settle();
    assert!(!p.both_established());
    let due = p.init.poll_timeout().expect("retry scheduled");
    assert_eq!(due - p.now, PairingConfig::default().retry_after);
    p.wait(PairingConfig::default().retry_after);
    p.settle();
    assert!(p.both_established());
}

#[test]
fn a_stale_reply_changes_nothing() {
    let mut p = Pair::new();
    let m1 = p.to_b.pop_front().unwrap();
    let step = p.resp.handle(&p.b, &m1, p.now);
    let stale_m2 = step.send[0].clone();
    p.sent_by_b(step);
    p.settle();
    assert!(p.both_established());
    // The same reply again (an older attempt's, replayed): ignored by the initiator.
    let again = p.init.handle(&p.a, &stale_m2, p.now);
    assert_eq!(again, PairingStep::default());
    assert!(p.sessions_match());
}

proptest! {
    #[test]
    fn garbage_never_panics_either_side(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut p = Pair::new();
        let _ = p.resp.handle(&p.b, &bytes, p.now);
        let _ = p.init.handle(&p.a, &bytes, p.now);
        // And the pair still comes up afterwards (the timer covers whatever the garbage broke).
        p.settle();
        p.wait(Duration::from_secs(4));
        p.settle();
        prop_assert!(p.both_established());
    }
}
