//! The address book in virtual time: candidates from peers' observations become announced
//! addresses only when a probe from a fresh port reaches them; a sole (possibly lying) witness
//! never confirms its own report; failed probes expire and are retried.

use callsign_mesh::reachability::{
    is_beyond_local_network, may_probe, parse_probe, probe_datagram, AddressBook, Observation,
    ProbeRequest, ReachabilityConfig, ReachabilityEvent,
};
use proptest::prelude::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn book() -> AddressBook<u8> {
    AddressBook::new(ReachabilityConfig::default(), 7)
}

#[test]
fn a_sole_witness_is_not_asked_to_confirm_its_own_report() {
    let t0 = Instant::now();
    let mut book = book();
    book.link_up(1, t0);
    book.observed(1, addr("198.51.100.11:5000"), t0);
    assert_eq!(book.poll_request(), None, "only the reporter is linked");
    // A second member links: it may probe what the first reported.
    book.link_up(2, t0);
    let (prober, request) = book.poll_request().expect("a probe request");
    assert_eq!(prober, 2);
    assert_eq!(request.addr, addr("198.51.100.11:5000"));
    assert!(!book.is_reachable());
    book.probe_received(&request.nonce, t0 + Duration::from_millis(40));
    assert_eq!(
        book.poll_event(),
        Some(ReachabilityEvent::Confirmed(addr("198.51.100.11:5000")))
    );
    assert_eq!(
        book.confirmed().collect::<Vec<_>>(),
        [addr("198.51.100.11:5000")]
    );
}

#[test]
fn the_sole_witness_may_probe_an_address_our_socket_is_bound_to() {
    let t0 = Instant::now();
    let mut book = book();
    // A public member with one peer: the peer sees it where it listens, which no report
    // could fake, so the peer may check that strangers get in.
    book.set_bound([addr("198.51.100.2:4433")], t0);
    book.link_up(1, t0);
    book.observed(1, addr("198.51.100.2:4433"), t0);
    let (prober, request) = book.poll_request().expect("a probe request");
    assert_eq!((prober, request.addr), (1, addr("198.51.100.2:4433")));
    book.probe_received(&request.nonce, t0 + Duration::from_millis(10));
    assert!(book.is_reachable());
    // Another address from the same sole witness is still its word alone.
    book.observed(1, addr("198.51.100.9:4433"), t0);
    assert_eq!(book.poll_request(), None);
}

#[test]
fn two_witnesses_let_either_probe() {
    let t0 = Instant::now();
    let mut book = book();
    book.observed(1, addr("198.51.100.10:4433"), t0);
    book.observed(2, addr("198.51.100.10:4433"), t0);
    assert_eq!(book.poll_request(), None, "nobody linked yet");
    book.link_up(1, t0);
    let (prober, _) = book.poll_request().expect("a probe request");
    assert_eq!(prober, 1);
}

#[test]
fn a_probe_that_never_arrives_marks_the_address_unreachable_then_retries() {
    let t0 = Instant::now();
    let config = ReachabilityConfig::default();
    let mut book = book();
    book.link_up(1, t0);
    book.link_up(2, t0);
    book.observed(1, addr("198.51.100.11:5000"), t0);
    let (prober, first) = book.poll_request().unwrap();
    let deadline = book.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + config.probe_timeout);
    // Said at once, it may have crossed the request: no evidence the link works.
    book.heard_from(&prober, t0);
    // The prober's link works (it spoke well after the request): the probe's absence is an
    // answer.
    book.heard_from(&prober, deadline - config.probe_timeout / 2);
    book.handle_timeout(deadline);
    assert_eq!(
        book.poll_event(),
        Some(ReachabilityEvent::Unreachable(addr("198.51.100.11:5000")))
    );
    // A late probe with the old nonce confirms nothing.
    book.probe_received(&first.nonce, deadline + Duration::from_millis(1));
    assert!(!book.is_reachable());
    assert_eq!(book.poll_request(), None);
    let retry = book.poll_timeout().unwrap();
    assert_eq!(retry, deadline + config.retry_after);
    book.handle_timeout(retry);
    let (_, second) = book.poll_request().expect("retried");
    assert_ne!(second.nonce, first.nonce);
}

#[test]
fn a_probe_whose_prober_stays_silent_is_asked_again_not_failed() {
    // Chaos seed 130494: a partition cut the prober off before its link timed out; the probe
    // never came, and a public member concluded it was unreachable for a minute, so it
    // offered no circuits after the heal.
    let t0 = Instant::now();
    let config = ReachabilityConfig::default();
    let mut book = book();
    book.set_bound([addr("198.51.100.2:4433")], t0);
    book.link_up(1, t0);
    book.observed(1, addr("198.51.100.2:4433"), t0);
    let (_, first) = book.poll_request().unwrap();
    let mut deadline = t0 + config.probe_timeout;
    // What it said right after the request may have crossed it.
    book.heard_from(&1, t0 + Duration::from_millis(10));
    book.handle_timeout(deadline);
    assert_eq!(book.poll_event(), None, "no answer is not a failure");
    let (prober, again) = book.poll_request().expect("asked again at once");
    assert_eq!(prober, 1);
    assert_ne!(again.nonce, first.nonce);
    // The partition heals: the probe gets in.
    book.probe_received(&again.nonce, deadline + Duration::from_millis(100));
    assert!(book.is_reachable());
    // A prober that never speaks: the third silent probe counts as a failure after all.
    let mut book = AddressBook::new(config.clone(), 8);
    book.link_up(1, t0);
    book.link_up(2, t0);
    book.observed(1, addr("198.51.100.11:5000"), t0);
    deadline = t0;
    for _ in 0..callsign_mesh::reachability::MAX_UNANSWERED {
        assert!(book.poll_request().is_some());
        assert_eq!(book.poll_event(), None);
        deadline += config.probe_timeout;
        book.handle_timeout(deadline);
    }
    assert_eq!(
        book.poll_event(),
        Some(ReachabilityEvent::Unreachable(addr("198.51.100.11:5000")))
    );
    assert_eq!(book.poll_request(), None);
}

#[test]
fn a_confirmed_address_is_reprobed_and_lost_when_the_reprobe_fails() {
    let t0 = Instant::now();
    let config = ReachabilityConfig::default();
    let mut book = book();
    book.link_up(1, t0);
    book.link_up(2, t0);
    book.observed(1, addr("198.51.100.11:5000"), t0);
    let (_, request) = book.poll_request().unwrap();
    book.probe_received(&request.nonce, t0);
    let _ = book.poll_event();
    let reprobe = book.poll_timeout().unwrap();
    assert_eq!(reprobe, t0 + config.reconfirm_after);
    book.handle_timeout(reprobe);
    let (prober, _) = book.poll_request().expect("a re-probe");
    assert!(
        book.is_reachable(),
        "still announced while the re-probe runs"
    );
    book.heard_from(&prober, reprobe + config.probe_timeout);
    book.handle_timeout(reprobe + config.probe_timeout);
    assert_eq!(
        book.poll_event(),
        Some(ReachabilityEvent::Lost(addr("198.51.100.11:5000")))
    );
    assert!(!book.is_reachable());
}

#[test]
fn a_prober_that_leaves_is_replaced() {
    let t0 = Instant::now();
    let mut book = book();
    book.link_up(1, t0);
    book.link_up(2, t0);
    book.link_up(3, t0);
    book.observed(1, addr("198.51.100.11:5000"), t0);
    let (prober, first) = book.poll_request().unwrap();
    book.link_down(&prober, t0);
    let (again, second) = book.poll_request().expect("asked of another");
    assert_ne!(again, prober);
    assert_ne!(again, 1, "still not the sole witness");
    assert_ne!(first.nonce, second.nonce);
}

#[test]
fn observations_beyond_the_limit_evict_the_stalest_unconfirmed() {
    let t0 = Instant::now();
    let config = ReachabilityConfig {
        max_candidates: 2,
        ..ReachabilityConfig::default()
    };
    let mut book = AddressBook::new(config, 1);
    book.observed(1, addr("198.51.100.1:1"), t0);
    book.observed(1, addr("198.51.100.2:2"), t0 + Duration::from_secs(1));
    book.observed(1, addr("198.51.100.3:3"), t0 + Duration::from_secs(2));
    let left: Vec<_> = book.candidates().collect();
    assert_eq!(left, [addr("198.51.100.2:2"), addr("198.51.100.3:3")]);
    // Unspecified addresses and port 0 are no candidates.
    book.observed(1, addr("0.0.0.0:5"), t0);
    book.observed(1, addr("198.51.100.9:0"), t0);
    assert_eq!(book.candidates().count(), 2);
}

#[test]
fn a_confirmed_lan_address_is_announced_but_makes_no_rendezvous() {
    let t0 = Instant::now();
    let mut book = book();
    book.link_up(1, t0);
    book.link_up(2, t0);
    book.observed(1, addr("192.168.1.20:5000"), t0);
    let (_, request) = book.poll_request().unwrap();
    book.probe_received(&request.nonce, t0);
    assert_eq!(
        book.confirmed().collect::<Vec<_>>(),
        [addr("192.168.1.20:5000")]
    );
    assert!(!book.is_reachable(), "reachable from the LAN only");
    for (local, beyond) in [
        ("10.1.2.3:1", false),
        ("100.64.0.1:1", false),
        ("127.0.0.1:1", false),
        ("169.254.1.1:1", false),
        ("[fd00::1]:1", false),
        ("[fe80::1]:1", false),
        ("[::ffff:192.168.0.1]:1", false),
        ("198.51.100.7:1", true),
        ("[2001:db8::7]:1", true),
    ] {
        assert_eq!(is_beyond_local_network(&addr(local)), beyond, "{local}");
    }
}

#[test]
fn a_port_mapping_is_probed_by_any_member_and_confirmed_only_by_the_probe() {
    let t0 = Instant::now();
    let mut book = book();
    book.link_up(1, t0);
    // Our router says it forwards this address to us; nobody has reported it, so the one
    // linked member may check it.
    book.mapped(addr("198.51.100.12:5000"), t0);
    assert!(!book.is_reachable(), "a mapping alone is not announced");
    let (prober, request) = book.poll_request().expect("a probe of the mapping");
    assert_eq!(prober, 1);
    assert_eq!(request.addr, addr("198.51.100.12:5000"));
    book.probe_received(&request.nonce, t0 + Duration::from_millis(30));
    assert_eq!(
        book.poll_event(),
        Some(ReachabilityEvent::Confirmed(addr("198.51.100.12:5000")))
    );
    assert!(book.is_reachable());
    // Removed (shutdown, lease lost): no longer announced.
    book.unmapped(&addr("198.51.100.12:5000"), t0 + Duration::from_secs(1));
    assert_eq!(
        book.poll_event(),
        Some(ReachabilityEvent::Lost(addr("198.51.100.12:5000")))
    );
    assert!(!book.is_reachable());
    assert_eq!(book.candidates().count(), 0);
}

#[test]
fn a_mapping_retries_an_address_whose_probe_failed_and_survives_eviction() {
    let t0 = Instant::now();
    let config = ReachabilityConfig::default();
    let mut book = AddressBook::new(config.clone(), 3);
    book.link_up(1, t0);
    book.link_up(2, t0);
    // Peer 1 sees us here, but the NAT filters strangers: the probe never arrives.
    book.observed(1, addr("198.51.100.13:5000"), t0);
    let (prober, _) = book.poll_request().expect("a probe");
    let t1 = t0 + config.probe_timeout;
    book.heard_from(&prober, t1);
    book.handle_timeout(t1);
    assert_eq!(
        book.poll_event(),
        Some(ReachabilityEvent::Unreachable(addr("198.51.100.13:5000")))
    );
    // Then the router maps the port: probed again at once, not after `retry_after`.
    book.mapped(addr("198.51.100.13:5000"), t1);
    let (_, request) = book.poll_request().expect("a fresh probe");
    book.probe_received(&request.nonce, t1);
    assert!(book.is_reachable());
    // Unmapped while a peer still sees us there: probed again rather than dropped.
    book.unmapped(&addr("198.51.100.13:5000"), t1);
    assert!(
        book.poll_request().is_some(),
        "re-probed without the mapping"
    );
    // A flood of lying observations cannot evict a mapping.
    let mut book = AddressBook::new(config.clone(), 4);
    book.mapped(addr("198.51.100.14:5000"), t0);
    for port in 0..(config.max_candidates as u16 * 2) {
        book.observed(9, SocketAddr::from(([198, 51, 100, 99], 6000 + port)), t0);
    }
    assert!(book.candidates().any(|a| a == addr("198.51.100.14:5000")));
}

#[test]
fn probes_go_only_to_the_requesters_own_ip() {
    assert!(may_probe(
        &addr("198.51.100.11:6000"),
        &addr("198.51.100.11:5000")
    ));
    assert!(may_probe(
        &addr("[::ffff:198.51.100.11]:6000"),
        &addr("198.51.100.11:5000")
    ));
    assert!(!may_probe(
        &addr("192.0.2.1:6000"),
        &addr("198.51.100.11:5000")
    ));
    assert!(!may_probe(
        &addr("198.51.100.11:0"),
        &addr("198.51.100.11:5000")
    ));
}

#[test]
fn probe_datagrams_round_trip_and_quic_is_never_mistaken_for_one() {
    let nonce = [9u8; 16];
    assert_eq!(parse_probe(&probe_datagram(&nonce)), Some(nonce));
    // A QUIC short-header packet (fixed bit set), a truncated probe, a probe with a tail.
    let mut quic = probe_datagram(&nonce).to_vec();
    quic[0] = 0x40;
    assert_eq!(parse_probe(&quic), None);
    assert_eq!(parse_probe(&probe_datagram(&nonce)[..20]), None);
    let mut long = probe_datagram(&nonce).to_vec();
    long.push(0);
    assert_eq!(parse_probe(&long), None);
}

proptest! {
    #[test]
    fn reachability_messages_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = ProbeRequest::decode(&bytes);
        let _ = Observation::decode(&bytes);
        let _ = parse_probe(&bytes);
    }

    #[test]
    fn reachability_messages_round_trip(port in 1u16.., a in any::<[u8; 4]>(), nonce in any::<[u8; 16]>()) {
        let addr = SocketAddr::from((a, port));
        let request = ProbeRequest { addr, nonce };
        prop_assert_eq!(ProbeRequest::decode(&request.encode()).unwrap(), request);
        let seen = Observation { addr };
        prop_assert_eq!(Observation::decode(&seen.encode()).unwrap(), seen);
    }
}

#[test]
fn only_a_direct_quic_address_has_a_socket_address() {
    use callsign_mesh::member::quic_socket_addr;
    let direct: multiaddr::Multiaddr = "/ip4/198.51.100.11/udp/4433/quic-v1".parse().unwrap();
    assert_eq!(quic_socket_addr(&direct), Some(addr("198.51.100.11:4433")));
    let v6: multiaddr::Multiaddr = "/ip6/2001:db8::2/udp/4433/quic-v1".parse().unwrap();
    assert_eq!(quic_socket_addr(&v6), Some(addr("[2001:db8::2]:4433")));
    // A circuit through a relay at that address is not the relay's socket address.
    let circuit: multiaddr::Multiaddr =
        "/ip4/198.51.100.11/udp/4433/quic-v1/p2p/12D3KooWBJS661uaqn5bVnRH2Y3ZE7nyXwcTzUvFsTMGQ1CVJcrB/p2p-circuit"
            .parse()
            .unwrap();
    assert_eq!(quic_socket_addr(&circuit), None);
    let tcp: multiaddr::Multiaddr = "/ip4/198.51.100.11/tcp/4433".parse().unwrap();
    assert_eq!(quic_socket_addr(&tcp), None);
}
