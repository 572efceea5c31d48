#![no_main]
//! What a relay reads from the network must never panic it: subscriptions (whatever decodes
//! survives a round trip) and datagrams, enveloped or bare, through the forwarder with a real
//! charter, from a member and from the org's root.

use callsign_keys::{Identity, IdentityKey};
use callsign_mesh::charter::{Charter, CharterState, OpBody};
use callsign_mesh::forward::{open_envelope, Forwarder, Subscription};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Instant;

fn org() -> &'static (CharterState, IdentityKey) {
    static ORG: OnceLock<(CharterState, IdentityKey)> = OnceLock::new();
    ORG.get_or_init(|| {
        let root = Identity::from_secret_bytes([7; 32]);
        let member = Identity::from_secret_bytes([8; 32]).public();
        let (mut charter, _) = Charter::create(&root, "fuzz", 0).unwrap();
        charter
            .edit(&root, OpBody::AddChannel { parent: None, name: "ops".into() }, 0)
            .unwrap();
        charter
            .edit(
                &root,
                OpBody::PutMember { peer: member, name: "m".into(), roles: Vec::new() },
                0,
            )
            .unwrap();
        (charter.state().clone(), member)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(subscription) = Subscription::decode(data) {
        assert_eq!(Subscription::decode(&subscription.encode()), Ok(subscription));
    }
    let (state, member) = org();
    let mut forwarder = Forwarder::new(state.org, Default::default());
    let now = Instant::now();
    for from in [member, &state.org] {
        if let Some(packet) = open_envelope(data) {
            let _ = forwarder.forward(state, from, packet, now);
        }
        let _ = forwarder.forward(state, from, data, now);
    }
});
