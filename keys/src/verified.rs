//! Per-thread memory of work already done on public keys: points decompressed and signatures
//! verified.
//!
//! Why: a mesh sees the same few dozen keys and the same signed records (presence, charter ops)
//! over and over. Decompressing a key takes a field square root and verifying a signature two
//! scalar multiplications; at 24 members these were a tenth of the simulator's CPU. Both results
//! depend only on their input bytes, so remembering them is exact: a hit requires the very same
//! bytes that were decompressed or verified before, compared in full (no hashes stand in for the
//! message). Only successes are remembered, so a forged input always takes the full check.
//!
//! Both memories are bounded and simply start over when full: losing them costs time, never
//! correctness, and nothing iterates them.

use std::cell::RefCell;
use std::collections::HashMap;

use libp2p_identity::ed25519;

/// How many decompressed keys a thread keeps (a few hundred members per org, some orgs).
const KEYS: usize = 4096;
/// How many verified signatures a thread keeps.
const SIGNATURES: usize = 2048;
/// Messages longer than this are verified every time rather than held in memory.
const MAX_MESSAGE: usize = 4096;

/// A signature that verified: under which key and over which context-framed message.
struct Verified {
    key: [u8; 32],
    framed: Box<[u8]>,
}

#[derive(Default)]
struct Memory {
    keys: HashMap<[u8; 32], ed25519::PublicKey>,
    signatures: HashMap<[u8; 64], Verified>,
}

thread_local! {
    static MEMORY: RefCell<Memory> = RefCell::new(Memory::default());
}

/// The decompressed key for `bytes`, from memory or by decompressing (and remembering) it.
pub(crate) fn decompress(bytes: &[u8; 32]) -> Option<ed25519::PublicKey> {
    if let Some(key) = MEMORY.with_borrow(|m| m.keys.get(bytes).cloned()) {
        return Some(key);
    }
    let key = ed25519::PublicKey::try_from_bytes(bytes).ok()?;
    MEMORY.with_borrow_mut(|m| {
        if m.keys.len() >= KEYS {
            m.keys.clear();
        }
        m.keys.insert(*bytes, key.clone());
    });
    Some(key)
}

/// Whether `signature` verifies under `key` over `framed`, remembering successes.
pub(crate) fn verify(key: &[u8; 32], framed: &[u8], signature: &[u8; 64]) -> bool {
    let seen = MEMORY.with_borrow(|m| {
        m.signatures
            .get(signature)
            .is_some_and(|v| v.key == *key && *v.framed == *framed)
    });
    if seen {
        return true;
    }
    let Some(public) = decompress(key) else {
        return false;
    };
    if !public.verify(framed, signature) {
        return false;
    }
    if framed.len() <= MAX_MESSAGE {
        MEMORY.with_borrow_mut(|m| {
            if m.signatures.len() >= SIGNATURES {
                m.signatures.clear();
            }
            m.signatures.insert(
                *signature,
                Verified {
                    key: *key,
                    framed: framed.into(),
                },
            );
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::PRESENCE;
    use crate::Identity;

    #[test]
    fn a_remembered_signature_does_not_vouch_for_another_message_or_key() {
        let mut rng = rand::thread_rng();
        let alice = Identity::generate(&mut rng);
        let bob = Identity::generate(&mut rng);
        let sig = alice.sign(PRESENCE, b"hello").to_bytes();
        let framed = PRESENCE.framed(b"hello");
        let alice_key = alice.public().to_bytes();
        let bob_key = bob.public().to_bytes();
        assert!(verify(&alice_key, &framed, &sig));
        // Now remembered; each changed input must still fail.
        assert!(verify(&alice_key, &framed, &sig));
        assert!(!verify(&bob_key, &framed, &sig));
        assert!(!verify(&alice_key, &PRESENCE.framed(b"hellO"), &sig));
        let mut other = sig;
        other[0] ^= 1;
        assert!(!verify(&alice_key, &framed, &other));
    }

    #[test]
    fn memory_starts_over_when_full_and_keeps_answering() {
        let mut rng = rand::thread_rng();
        let keys: Vec<[u8; 32]> = (0..KEYS + 3)
            .map(|_| Identity::generate(&mut rng).public().to_bytes())
            .collect();
        for bytes in &keys {
            assert!(decompress(bytes).is_some());
            assert!(MEMORY.with_borrow(|m| m.keys.len() <= KEYS));
        }
        // Cleared once: the first key is gone from memory but still decompresses.
        assert!(MEMORY.with_borrow(|m| !m.keys.contains_key(&keys[0])));
        assert_eq!(decompress(&keys[0]).map(|k| k.to_bytes()), Some(keys[0]));
    }
}
