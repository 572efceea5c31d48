//! Pairwise end-to-end sessions: how a sender's voice key reaches each listener.
//!
//! Two members run a Noise `XX` handshake (X25519, ChaCha20-Poly1305, BLAKE2s) over a reliable
//! link stream. Each side's handshake payload is its [`NoiseKeyCert`], the identity's signature
//! over its Noise static key; a side accepts the session only if the certificate verifies, names
//! the identity it expected on that link, and certifies the static key the handshake proved. The
//! established session then carries [`SenderKeyGrant`]s: a sender's current voice key and the
//! channels it speaks on. A grant is accepted only for the session's own remote, so no member can
//! hand out a key in another's name.
//!
//! Sans-IO: bytes in, bytes out; the caller moves them over a stream in order (Noise transport
//! messages are numbered and must not be lost or reordered).

use crate::charter::ChannelId;
use crate::voice::SenderKey;
use callsign_keys::{IdentityKey, NodeKeys, NoiseKeyCert};
use serde::{Deserialize, Serialize};

/// The Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake so a session for another protocol or version cannot be replayed here.
const PROLOGUE: &[u8] = b"callsign/pair-session/v1";
/// Version byte of a sender key grant's plaintext.
pub const GRANT_VERSION: u8 = 1;
const MAX_MESSAGE: usize = 65_535;

/// Why a session step failed. A failed session must be dropped and started again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// The Noise layer refused a message (corrupt, replayed, out of order, wrong key).
    #[error("noise: {0}")]
    Noise(String),
    /// The peer's certificate is missing, malformed or its signature does not verify.
    #[error("peer's noise key certificate is invalid")]
    BadCertificate,
    /// The certificate is valid but for someone other than the peer expected on this link.
    #[error("session peer is {actual:?}, expected {expected:?}")]
    WrongPeer {
        /// Who the link says the peer is.
        expected: IdentityKey,
        /// Who the certificate says it is.
        actual: IdentityKey,
    },
    /// The certificate does not certify the static key the handshake proved.
    #[error("certificate names another noise key than the handshake proved")]
    KeyMismatch,
    /// Transport messages before the handshake finished, or handshake messages after.
    #[error("session is not in the right state for this message")]
    State,
    /// A grant with an unknown version or shape.
    #[error("malformed sender key grant: {0}")]
    Malformed(String),
    /// A grant for a sender other than the session's peer.
    #[error("grant is for another sender than this session's peer")]
    ForeignGrant,
}

fn noise_err(e: snow::Error) -> SessionError {
    SessionError::Noise(e.to_string())
}

/// A sender's voice key as handed to one listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeyGrant {
    /// Whose key this is (must be the session's peer).
    pub sender: IdentityKey,
    /// The key id packets will carry.
    pub key_id: u16,
    /// The key.
    pub key: [u8; 32],
    /// Channels the receiver may hear this sender on with this key.
    pub channels: Vec<ChannelId>,
}

impl SenderKeyGrant {
    /// The voice key to open this sender's packets.
    pub fn sender_key(&self) -> SenderKey {
        SenderKey::new(self.key_id, self.key)
    }
}

enum State {
    Handshake(Box<snow::HandshakeState>),
    Transport(Box<snow::TransportState>),
    Failed,
}

/// One end of a pairwise session. See the module documentation.
pub struct PairSession {
    state: State,
    local_cert: Vec<u8>,
    expected: IdentityKey,
    remote: Option<IdentityKey>,
}

impl std::fmt::Debug for PairSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairSession")
            .field("expected", &self.expected)
            .field("established", &self.is_established())
            .finish_non_exhaustive()
    }
}

impl PairSession {
    fn new(local: &NodeKeys, expected: IdentityKey, initiator: bool) -> Result<Self, SessionError> {
        let params = NOISE_PATTERN
            .parse()
            .map_err(|e: snow::Error| SessionError::Noise(e.to_string()))?;
        let secret = local.noise.secret_bytes();
        let builder = snow::Builder::new(params)
            .local_private_key(&secret[..])
            .prologue(PROLOGUE);
        let handshake = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(noise_err)?;
        Ok(Self {
            state: State::Handshake(Box::new(handshake)),
            local_cert: postcard::to_stdvec(&local.noise_cert())
                .map_err(|e| SessionError::Malformed(e.to_string()))?,
            expected,
            remote: None,
        })
    }

    /// Starts a session toward `expected` (the identity the link proved); returns the first
    /// handshake message to send.
    pub fn initiate(
        local: &NodeKeys,
        expected: IdentityKey,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let mut session = Self::new(local, expected, true)?;
        let first = session.write_handshake(false)?;
        Ok((session, first))
    }

    /// Waits for `expected` to start a session.
    pub fn respond(local: &NodeKeys, expected: IdentityKey) -> Result<Self, SessionError> {
        Self::new(local, expected, false)
    }

    /// True once the handshake completed and the peer proved its identity.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Transport(_))
    }

    /// The verified peer identity, once established.
    pub fn remote(&self) -> Option<IdentityKey> {
        self.remote.filter(|_| self.is_established())
    }

    fn write_handshake(&mut self, with_cert: bool) -> Result<Vec<u8>, SessionError> {
        let State::Handshake(handshake) = &mut self.state else {
            return Err(SessionError::State);
        };
        let mut out = vec![0u8; MAX_MESSAGE];
        let payload: &[u8] = if with_cert { &self.local_cert } else { &[] };
        let n = handshake
            .write_message(payload, &mut out)
            .map_err(noise_err)?;
        out.truncate(n);
        Ok(out)
    }

    fn check_certificate(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        let State::Handshake(handshake) = &self.state else {
            return Err(SessionError::State);
        };
        let cert: NoiseKeyCert =
            postcard::from_bytes(payload).map_err(|_| SessionError::BadCertificate)?;
        cert.verify().map_err(|_| SessionError::BadCertificate)?;
        if cert.identity != self.expected {
            return Err(SessionError::WrongPeer {
                expected: self.expected,
                actual: cert.identity,
            });
        }
        if handshake.get_remote_static() != Some(&cert.noise_key.as_bytes()[..]) {
            return Err(SessionError::KeyMismatch);
        }
        self.remote = Some(cert.identity);
        Ok(())
    }

    /// Processes one handshake message from the peer; returns the reply to send, if any. Any
    /// error leaves the session failed.
    pub fn handle_handshake(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        let result = self.step(message);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        let State::Handshake(handshake) = &mut self.state else {
            return Err(SessionError::State);
        };
        let mut payload = vec![0u8; MAX_MESSAGE];
        let n = handshake
            .read_message(message, &mut payload)
            .map_err(noise_err)?;
        if n > 0 {
            self.check_certificate(&payload[..n])?;
        }
        let reply = match &self.state {
            State::Handshake(h) if h.is_my_turn() && !h.is_handshake_finished() => {
                Some(self.write_handshake(true)?)
            }
            _ => None,
        };
        let finished = matches!(&self.state, State::Handshake(h) if h.is_handshake_finished());
        if finished {
            if self.remote.is_none() {
                return Err(SessionError::BadCertificate);
            }
            let State::Handshake(h) = std::mem::replace(&mut self.state, State::Failed) else {
                return Err(SessionError::State);
            };
            self.state = State::Transport(Box::new(h.into_transport_mode().map_err(noise_err)?));
        }
        Ok(reply)
    }

    /// Encrypts `plaintext` for the peer.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let State::Transport(transport) = &mut self.state else {
            return Err(SessionError::State);
        };
        let mut out = vec![0u8; plaintext.len() + 16];
        let n = transport
            .write_message(plaintext, &mut out)
            .map_err(noise_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Decrypts a message from the peer.
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let State::Transport(transport) = &mut self.state else {
            return Err(SessionError::State);
        };
        let mut out = vec![0u8; ciphertext.len()];
        let n = transport
            .read_message(ciphertext, &mut out)
            .map_err(noise_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Seals our sender key (and the channels it is for) for the peer.
    pub fn grant(
        &mut self,
        local: &NodeKeys,
        key: &SenderKey,
        channels: Vec<ChannelId>,
    ) -> Result<Vec<u8>, SessionError> {
        let grant = SenderKeyGrant {
            sender: local.identity.public(),
            key_id: key.id(),
            key: *key.secret(),
            channels,
        };
        let mut plain = crate::wire::encode(GRANT_VERSION, &grant);
        let sealed = self.seal(&plain);
        // The plaintext held the key; wipe it.
        zeroize::Zeroize::zeroize(&mut plain);
        sealed
    }

    /// Opens a grant from the peer; refuses grants naming any sender but the peer itself.
    pub fn accept_grant(&mut self, message: &[u8]) -> Result<SenderKeyGrant, SessionError> {
        let mut plain = self.open(message)?;
        let result = crate::wire::decode::<SenderKeyGrant>(GRANT_VERSION, usize::MAX, &plain)
            .map_err(|e| SessionError::Malformed(e.to_string()));
        zeroize::Zeroize::zeroize(&mut plain);
        let grant = result?;
        if Some(grant.sender) != self.remote {
            return Err(SessionError::ForeignGrant);
        }
        Ok(grant)
    }
}
