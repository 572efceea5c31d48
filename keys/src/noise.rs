//! The X25519 static key a node uses in Noise handshakes, and the certificate binding it to the
//! node's identity.
//!
//! Noise authenticates the static key, not the identity; the [`NoiseKeyCert`] is what lets a
//! peer conclude "this Noise session is with peer P".

use std::fmt;

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::context::NOISE_KEY_CERT;
use crate::identity::{Identity, IdentityKey, Signature, SignatureError};

/// An X25519 public key used as a Noise static key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NoisePublicKey([u8; 32]);

impl NoisePublicKey {
    /// Wraps raw X25519 public key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes, as snow expects them.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Standard base64, the form WireGuard users know for X25519 keys.
    pub fn to_base64(&self) -> String {
        data_encoding::BASE64.encode(&self.0)
    }
}

impl fmt::Debug for NoisePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoisePublicKey({})", self.to_base64())
    }
}

impl fmt::Display for NoisePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// An X25519 static keypair for Noise (snow).
#[derive(Clone)]
pub struct NoiseKeypair {
    secret: StaticSecret,
}

impl NoiseKeypair {
    /// Generates a fresh keypair from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self {
            secret: StaticSecret::random_from_rng(rng),
        }
    }

    /// Rebuilds a keypair from its 32 secret bytes.
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        Self {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The 32 secret bytes, for key files and for snow's `local_private_key`.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> NoisePublicKey {
        NoisePublicKey(PublicKey::from(&self.secret).to_bytes())
    }
}

impl fmt::Debug for NoiseKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoiseKeypair({})", self.public())
    }
}

/// An identity's signature over its Noise static public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseKeyCert {
    /// Who vouches for the key.
    pub identity: IdentityKey,
    /// The certified Noise static key.
    pub noise_key: NoisePublicKey,
    /// `identity`'s signature under [`NOISE_KEY_CERT`].
    pub signature: Signature,
}

impl NoiseKeyCert {
    /// Certifies `noise_key` as belonging to `identity`.
    pub fn issue(identity: &Identity, noise_key: NoisePublicKey) -> Self {
        let identity_key = identity.public();
        let signature = identity.sign(NOISE_KEY_CERT, &Self::message(&identity_key, &noise_key));
        Self {
            identity: identity_key,
            noise_key,
            signature,
        }
    }

    /// Checks the signature. A peer must also check that `identity` is who it expected.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.identity.verify(
            NOISE_KEY_CERT,
            &Self::message(&self.identity, &self.noise_key),
            &self.signature,
        )
    }

    fn message(identity: &IdentityKey, noise_key: &NoisePublicKey) -> [u8; 64] {
        let mut msg = [0u8; 64];
        msg[..32].copy_from_slice(&identity.to_bytes());
        msg[32..].copy_from_slice(noise_key.as_bytes());
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn cert_verifies_and_binds_both_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let id = Identity::generate(&mut rng);
        let other = Identity::generate(&mut rng);
        let noise = NoiseKeypair::generate(&mut rng);
        let cert = NoiseKeyCert::issue(&id, noise.public());
        cert.verify().unwrap();

        let mut swapped_key = cert.clone();
        swapped_key.noise_key = NoiseKeypair::generate(&mut rng).public();
        assert!(swapped_key.verify().is_err());

        let mut swapped_identity = cert.clone();
        swapped_identity.identity = other.public();
        assert!(swapped_identity.verify().is_err());
    }

    #[test]
    fn cert_signature_is_context_separated() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let id = Identity::generate(&mut rng);
        let noise = NoiseKeypair::generate(&mut rng);
        let msg = NoiseKeyCert::message(&id.public(), &noise.public());
        let forged = NoiseKeyCert {
            identity: id.public(),
            noise_key: noise.public(),
            signature: id.sign(crate::context::CHARTER_OP, &msg),
        };
        assert!(forged.verify().is_err());
    }

    #[test]
    fn secret_round_trip() {
        let noise = NoiseKeypair::generate(&mut rand::rngs::StdRng::seed_from_u64(9));
        let back = NoiseKeypair::from_secret_bytes(*noise.secret_bytes());
        assert_eq!(back.public(), noise.public());
    }
}
