//! A node's long-term identity: an ed25519 keypair, shown as a libp2p [`PeerId`].

use std::fmt;
use std::str::FromStr;

use libp2p_identity::{ed25519, PeerId};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::context::SigningContext;

/// Why a signature or a public key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature does not verify for this key, context and message.
    #[error("signature does not verify under context {context}")]
    Invalid {
        /// The context the verifier expected.
        context: SigningContext,
    },
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
    /// The signature has the wrong length.
    #[error("signature must be 64 bytes, got {0}")]
    BadLength(usize),
}

/// An ed25519 signature over a context-framed message.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Wraps raw signature bytes (not checked until verified).
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// Parses a signature from a slice of exactly 64 bytes.
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self, SignatureError> {
        <[u8; 64]>::try_from(bytes)
            .map(Self)
            .map_err(|_| SignatureError::BadLength(bytes.len()))
    }

    /// The raw signature bytes.
    pub const fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({})",
            data_encoding::HEXLOWER.encode(&self.0[..8])
        )
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl serde::de::Visitor<'_> for BytesVisitor {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                Signature::try_from_slice(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// libp2p's protobuf `PublicKey { Type = Ed25519 (1), Data = 32 bytes }` up to the key bytes.
const PEER_ID_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];

/// The public half of an [`Identity`]: verifies signatures, names a peer.
///
/// An org is also named by one of these: its root key. Held as the 32 compressed bytes (checked
/// to be a valid point on construction) so it is small and `Copy`, fit for map keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey([u8; 32]);

impl IdentityKey {
    /// Parses a compressed ed25519 public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let bytes = <[u8; 32]>::try_from(bytes).map_err(|_| SignatureError::BadPublicKey)?;
        crate::verified::decompress(&bytes).ok_or(SignatureError::BadPublicKey)?;
        Ok(Self(bytes))
    }

    /// The compressed key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    fn to_ed25519(self) -> ed25519::PublicKey {
        // Validated on construction, so this cannot fail.
        crate::verified::decompress(&self.0).expect("IdentityKey holds a valid point")
    }

    /// The libp2p peer id of this key.
    ///
    /// Built from the key bytes as libp2p defines it (an identity multihash of the key's
    /// protobuf form: type Ed25519, then the 32 bytes), without decompressing the point as
    /// `to_libp2p().to_peer_id()` would: ids are looked up on every control message, and the
    /// square root that decompression takes was a large share of a big mesh's CPU.
    pub fn peer_id(&self) -> PeerId {
        let mut bytes = [0u8; 2 + PEER_ID_PROTOBUF_PREFIX.len() + 32];
        bytes[0] = 0x00; // multihash code: identity
        bytes[1] = (PEER_ID_PROTOBUF_PREFIX.len() + 32) as u8;
        bytes[2..6].copy_from_slice(&PEER_ID_PROTOBUF_PREFIX);
        bytes[6..].copy_from_slice(&self.0);
        PeerId::from_bytes(&bytes).expect("an identity multihash of 36 bytes is a peer id")
    }

    /// The key in libp2p's form, for transports and behaviours.
    pub fn to_libp2p(&self) -> libp2p_identity::PublicKey {
        libp2p_identity::PublicKey::from(self.to_ed25519())
    }

    /// Checks that `signature` was made by this key over `message` under `context`.
    pub fn verify(
        &self,
        context: SigningContext,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        if crate::verified::verify(&self.0, &context.framed(message), &signature.0) {
            Ok(())
        } else {
            Err(SignatureError::Invalid { context })
        }
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.peer_id())
    }
}

/// Displays as the peer id, the form users see everywhere.
impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.peer_id(), f)
    }
}

/// Parses a peer id string back into a key. Only ed25519 peer ids embed their key, so only those
/// parse.
impl FromStr for IdentityKey {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let peer_id = PeerId::from_str(s).map_err(|_| SignatureError::BadPublicKey)?;
        // Only identity-multihash peer ids (code 0) carry the key itself.
        if peer_id.as_ref().code() != 0 {
            return Err(SignatureError::BadPublicKey);
        }
        let key = libp2p_identity::PublicKey::try_decode_protobuf(peer_id.as_ref().digest())
            .map_err(|_| SignatureError::BadPublicKey)?;
        key.try_into_ed25519()
            .map(|k| Self(k.to_bytes()))
            .map_err(|_| SignatureError::BadPublicKey)
    }
}

impl Serialize for IdentityKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for IdentityKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = IdentityKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 ed25519 public key bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<IdentityKey, E> {
                IdentityKey::from_bytes(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_bytes(KeyVisitor)
    }
}

/// A node's long-term ed25519 identity keypair.
#[derive(Clone)]
pub struct Identity {
    keypair: ed25519::Keypair,
}

impl Identity {
    /// Generates a fresh identity from `rng` (pass a seeded RNG for reproducible simulations).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_secret_bytes(*seed)
    }

    /// Rebuilds an identity from its 32-byte ed25519 secret seed.
    pub fn from_secret_bytes(seed: [u8; 32]) -> Self {
        let mut seed = Zeroizing::new(seed);
        // A 32-byte array is always a valid ed25519 seed.
        let secret = ed25519::SecretKey::try_from_bytes(seed.as_mut())
            .expect("32 bytes is always a valid ed25519 seed");
        Self {
            keypair: ed25519::Keypair::from(secret),
        }
    }

    /// The 32-byte secret seed, for key files.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(self.keypair.secret().as_ref());
        out
    }

    /// The public key.
    pub fn public(&self) -> IdentityKey {
        IdentityKey(self.keypair.public().to_bytes())
    }

    /// The libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.public().peer_id()
    }

    /// The keypair in libp2p's form, for the swarm and TLS.
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        libp2p_identity::Keypair::from(self.keypair.clone())
    }

    /// Signs `message` under `context`.
    pub fn sign(&self, context: SigningContext, message: &[u8]) -> Signature {
        let sig = self.keypair.sign(&context.framed(message));
        // ed25519 signatures are always 64 bytes.
        Signature::try_from_slice(&sig).expect("ed25519 signature is 64 bytes")
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{CHARTER_OP, INVITE_GRANT};
    use rand::SeedableRng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    #[test]
    fn sign_verify_round_trip() {
        let id = identity(1);
        let sig = id.sign(CHARTER_OP, b"hello");
        id.public().verify(CHARTER_OP, b"hello", &sig).unwrap();
    }

    #[test]
    fn signature_does_not_verify_under_another_context() {
        let id = identity(1);
        let sig = id.sign(CHARTER_OP, b"hello");
        assert_eq!(
            id.public().verify(INVITE_GRANT, b"hello", &sig),
            Err(SignatureError::Invalid {
                context: INVITE_GRANT
            })
        );
    }

    #[test]
    fn signature_is_not_a_plain_ed25519_signature() {
        // A raw (unframed) signature over the same bytes must not verify: contexts are mandatory.
        let id = identity(2);
        let raw = id.keypair.sign(b"hello");
        let sig = Signature::try_from_slice(&raw).unwrap();
        assert!(id.public().verify(CHARTER_OP, b"hello", &sig).is_err());
    }

    #[test]
    fn signature_rejects_other_message_and_other_key() {
        let id = identity(3);
        let sig = id.sign(CHARTER_OP, b"hello");
        assert!(id.public().verify(CHARTER_OP, b"hellp", &sig).is_err());
        assert!(identity(4)
            .public()
            .verify(CHARTER_OP, b"hello", &sig)
            .is_err());
    }

    #[test]
    fn secret_round_trip_keeps_peer_id() {
        let id = identity(5);
        let back = Identity::from_secret_bytes(*id.secret_bytes());
        assert_eq!(back.peer_id(), id.peer_id());
    }

    #[test]
    fn peer_id_string_parses_back_to_key() {
        let id = identity(6);
        let text = id.public().to_string();
        assert!(text.starts_with("12D3KooW"));
        assert_eq!(text.parse::<IdentityKey>().unwrap(), id.public());
        assert!("not-a-peer-id".parse::<IdentityKey>().is_err());
    }

    #[test]
    fn peer_id_matches_libp2p_derivation() {
        for seed in 0..32 {
            let key = identity(seed).public();
            assert_eq!(key.peer_id(), key.to_libp2p().to_peer_id());
        }
    }

    #[test]
    fn bad_public_key_bytes_are_rejected() {
        assert_eq!(
            IdentityKey::from_bytes(&[1, 2, 3]),
            Err(SignatureError::BadPublicKey)
        );
    }
}
