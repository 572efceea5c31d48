//! Callsign's keys: who a node is and how it proves it.
//!
//! This crate owns:
//! - [`Identity`] / [`IdentityKey`]: a node's ed25519 identity, shown as a libp2p `PeerId`, and
//!   signatures that always carry a [`SigningContext`] so they cannot be replayed across purposes;
//! - [`NoiseKeypair`] and [`NoiseKeyCert`]: the X25519 static key for Noise sessions, certified
//!   by the identity;
//! - [`KeyFile`]: the versioned, checksummed, optionally passphrase-encrypted key file;
//! - [`Ticket`] and [`InviteGrant`]: the copy-pastable invite;
//! - [`private_file`]: files only their owner may read (mode bits on Unix, a DACL on Windows).
//!
//! ```
//! use callsign_keys::{context, Identity};
//!
//! let alice = Identity::generate(&mut rand::rngs::OsRng);
//! let signature = alice.sign(context::CHARTER_OP, b"add channel Flight");
//! assert!(alice.public().verify(context::CHARTER_OP, b"add channel Flight", &signature).is_ok());
//! // The same signature means nothing under another purpose.
//! assert!(alice.public().verify(context::INVITE_GRANT, b"add channel Flight", &signature).is_err());
//! ```
//!
//! It must not: touch the network, read the wall clock (callers pass times in), or know about
//! charters, channels or audio. Every parser here is fed untrusted bytes and must return an
//! error, never panic.

// Unsafe only in `private_file`'s Windows module, which calls the Win32 security API.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod context;
mod identity;
mod key_file;
mod node_keys;
mod noise;
pub mod private_file;
mod ticket;
mod verified;

pub use context::SigningContext;
pub use identity::{Identity, IdentityKey, Signature, SignatureError};
pub use key_file::{KdfParams, KeyFile, KeyFileError, KEY_FILE_VERSION};
pub use libp2p_identity::PeerId;
pub use multiaddr::Multiaddr;
pub use node_keys::NodeKeys;
pub use noise::{NoiseKeyCert, NoiseKeypair, NoisePublicKey};
pub use ticket::{
    InviteGrant, Ticket, TicketError, MAX_BOOTSTRAP_ADDRS, MAX_ROLE_LEN, MAX_TICKET_LEN,
    TICKET_PREFIX, TICKET_VERSION,
};
