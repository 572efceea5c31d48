//! The secret keys one node holds.

use rand::{CryptoRng, RngCore};

use crate::identity::Identity;
use crate::noise::{NoiseKeyCert, NoiseKeypair};

/// A node's identity plus its Noise static key: everything a key file stores.
#[derive(Clone, Debug)]
pub struct NodeKeys {
    /// Long-term ed25519 identity.
    pub identity: Identity,
    /// X25519 static key for Noise sessions.
    pub noise: NoiseKeypair,
}

impl NodeKeys {
    /// Generates a fresh identity and Noise key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self {
            identity: Identity::generate(rng),
            noise: NoiseKeypair::generate(rng),
        }
    }

    /// The certificate binding the Noise key to the identity. ed25519 signing is deterministic,
    /// so this is the same every time it is issued.
    pub fn noise_cert(&self) -> NoiseKeyCert {
        NoiseKeyCert::issue(&self.identity, self.noise.public())
    }
}
