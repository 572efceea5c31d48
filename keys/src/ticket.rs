//! Invite tickets: the one string a new member pastes to join an org.
//!
//! Text form: `callsign1` followed by lowercase RFC 4648 base32 (no padding) of
//!
//! ```text
//! version u8 | postcard(TicketBody) | sha256("callsign-ticket" | version | body)[..4]
//! ```
//!
//! Decoding accepts either letter case and surrounding whitespace, and checks, in order: prefix,
//! alphabet, checksum, version, body structure, multiaddrs, and the grant's signature.
//!
//! ```
//! use callsign_keys::{Identity, InviteGrant, Ticket};
//!
//! let root = Identity::generate(&mut rand::rngs::OsRng);
//! let grant = InviteGrant::issue(&root, root.public(), "pilot", 1_900_000_000, [0; 16])?;
//! let ticket = Ticket {
//!     org: root.public(),
//!     bootstrap: vec!["/ip4/203.0.113.5/udp/4433/quic-v1".parse()?],
//!     grant: Some(grant),
//! };
//! let text = ticket.encode()?;
//! assert_eq!(Ticket::decode(&text)?, ticket);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use multiaddr::Multiaddr;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::INVITE_GRANT;
use crate::identity::{Identity, IdentityKey, Signature, SignatureError};

/// Every ticket starts with this.
pub const TICKET_PREFIX: &str = "callsign1";
/// The ticket version this build writes and reads.
pub const TICKET_VERSION: u8 = 1;
/// Tickets longer than this are refused before decoding.
pub const MAX_TICKET_LEN: usize = 4096;
/// At most this many bootstrap addresses.
pub const MAX_BOOTSTRAP_ADDRS: usize = 16;
/// Role names are at most this many bytes.
pub const MAX_ROLE_LEN: usize = 64;

const CHECKSUM_LEN: usize = 4;
const CHECKSUM_DOMAIN: &[u8] = b"callsign-ticket";

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The text does not start with `callsign1`.
    #[error("not a Callsign ticket: it must start with \"{TICKET_PREFIX}\"")]
    MissingPrefix,
    /// Too long to be a ticket.
    #[error("ticket is too long ({0} characters, at most {MAX_TICKET_LEN})")]
    TooLong(usize),
    /// A character outside the base32 alphabet, or a bad length.
    #[error("ticket is damaged: invalid character or length at position {position}")]
    BadEncoding {
        /// Character offset after the prefix.
        position: usize,
    },
    /// Too short to hold version and checksum.
    #[error("ticket is too short")]
    TooShort,
    /// The checksum does not match: a typo or truncated copy.
    #[error("ticket checksum mismatch: the ticket was mistyped or cut off")]
    ChecksumMismatch,
    /// A ticket from a newer (or unknown) version.
    #[error("unsupported ticket version {found} (this build reads version {TICKET_VERSION})")]
    UnsupportedVersion {
        /// The version byte.
        found: u8,
    },
    /// Well-formed encoding, but the contents make no sense.
    #[error("ticket is malformed: {0}")]
    Malformed(String),
    /// The grant is for a different org than the ticket.
    #[error("invite grant is for org {grant_org}, but the ticket is for {ticket_org}")]
    GrantOrgMismatch {
        /// The ticket's org.
        ticket_org: IdentityKey,
        /// The grant's org.
        grant_org: IdentityKey,
    },
    /// The grant's signature does not verify.
    #[error("invite grant signature is invalid (forged or altered grant)")]
    BadGrantSignature,
}

/// An org admin's signed permission for the ticket holder to join with a role.
///
/// The signature proves who issued it; whether that issuer is an admin is a question for the
/// org charter, which this crate does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteGrant {
    /// The org the grant admits to.
    pub org: IdentityKey,
    /// The role the new member gets.
    pub role: String,
    /// Unix time (seconds) after which the grant is void.
    pub expires_at: u64,
    /// Single-use nonce: the charter records used nonces.
    pub nonce: [u8; 16],
    /// The admin who signed it.
    pub issuer: IdentityKey,
    /// `issuer`'s signature under [`INVITE_GRANT`].
    pub signature: Signature,
}

#[derive(Serialize)]
struct GrantMessage<'a> {
    org: &'a IdentityKey,
    role: &'a str,
    expires_at: u64,
    nonce: &'a [u8; 16],
    issuer: &'a IdentityKey,
}

impl InviteGrant {
    /// Signs a grant as `issuer`.
    pub fn issue(
        issuer: &Identity,
        org: IdentityKey,
        role: impl Into<String>,
        expires_at: u64,
        nonce: [u8; 16],
    ) -> Result<Self, TicketError> {
        let role = role.into();
        check_role(&role)?;
        let issuer_key = issuer.public();
        let signature = issuer.sign(
            INVITE_GRANT,
            &grant_message(&org, &role, expires_at, &nonce, &issuer_key),
        );
        Ok(Self {
            org,
            role,
            expires_at,
            nonce,
            issuer: issuer_key,
            signature,
        })
    }

    /// Checks the issuer's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.issuer.verify(
            INVITE_GRANT,
            &grant_message(
                &self.org,
                &self.role,
                self.expires_at,
                &self.nonce,
                &self.issuer,
            ),
            &self.signature,
        )
    }

    /// Whether the grant has expired at `now_unix` (seconds).
    pub fn is_expired(&self, now_unix: u64) -> bool {
        now_unix >= self.expires_at
    }
}

fn grant_message(
    org: &IdentityKey,
    role: &str,
    expires_at: u64,
    nonce: &[u8; 16],
    issuer: &IdentityKey,
) -> Vec<u8> {
    let message = GrantMessage {
        org,
        role,
        expires_at,
        nonce,
        issuer,
    };
    // Serialising plain fields into a Vec cannot fail.
    postcard::to_stdvec(&message).expect("grant message serialises")
}

fn check_role(role: &str) -> Result<(), TicketError> {
    if role.is_empty() || role.len() > MAX_ROLE_LEN {
        return Err(TicketError::Malformed(format!(
            "role name must be 1 to {MAX_ROLE_LEN} bytes"
        )));
    }
    Ok(())
}

/// The wire form. The grant's org is implied by the ticket's (and still covered by the
/// signature), which keeps a typical ticket ~50 characters shorter.
#[derive(Serialize, Deserialize)]
struct TicketBody {
    org: IdentityKey,
    bootstrap: Vec<Vec<u8>>,
    grant: Option<GrantBody>,
}

#[derive(Serialize, Deserialize)]
struct GrantBody {
    role: String,
    expires_at: u64,
    nonce: [u8; 16],
    issuer: IdentityKey,
    signature: Signature,
}

/// What a new member needs to join an org: its id, where to find it, and optionally a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The org's root key, which names it.
    pub org: IdentityKey,
    /// Addresses of members or relays to dial first.
    pub bootstrap: Vec<Multiaddr>,
    /// Permission to join with a role.
    pub grant: Option<InviteGrant>,
}

impl Ticket {
    /// Encodes the ticket as text. Fails if it breaks a limit decoding would enforce.
    pub fn encode(&self) -> Result<String, TicketError> {
        self.check()?;
        let body = TicketBody {
            org: self.org,
            bootstrap: self.bootstrap.iter().map(|a| a.to_vec()).collect(),
            grant: self.grant.as_ref().map(|g| GrantBody {
                role: g.role.clone(),
                expires_at: g.expires_at,
                nonce: g.nonce,
                issuer: g.issuer,
                signature: g.signature,
            }),
        };
        let mut bytes = vec![TICKET_VERSION];
        bytes
            .extend(postcard::to_stdvec(&body).map_err(|e| TicketError::Malformed(e.to_string()))?);
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        let text = format!(
            "{TICKET_PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        );
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong(text.len()));
        }
        Ok(text)
    }

    /// Decodes and validates a ticket (see the module docs for the checks).
    pub fn decode(text: &str) -> Result<Self, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong(text.len()));
        }
        let prefix_len = TICKET_PREFIX.len();
        // `get` rather than indexing: a multi-byte character may straddle the prefix boundary.
        let data = match (text.get(..prefix_len), text.get(prefix_len..)) {
            (Some(prefix), Some(data)) if prefix.eq_ignore_ascii_case(TICKET_PREFIX) => {
                data.to_ascii_uppercase()
            }
            _ => return Err(TicketError::MissingPrefix),
        };
        let bytes = data_encoding::BASE32_NOPAD
            .decode(data.as_bytes())
            .map_err(|e| TicketError::BadEncoding {
                position: e.position,
            })?;
        if bytes.len() < 1 + CHECKSUM_LEN {
            return Err(TicketError::TooShort);
        }
        let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(content) != sum {
            return Err(TicketError::ChecksumMismatch);
        }
        let version = content[0];
        if version != TICKET_VERSION {
            return Err(TicketError::UnsupportedVersion { found: version });
        }
        let (body, rest): (TicketBody, _) = postcard::take_from_bytes(&content[1..])
            .map_err(|e| TicketError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TicketError::Malformed(format!(
                "{} unexpected bytes after the body",
                rest.len()
            )));
        }
        let bootstrap = body
            .bootstrap
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                Multiaddr::try_from(raw).map_err(|e| {
                    TicketError::Malformed(format!("bootstrap address {}: {e}", i + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let grant = body.grant.map(|g| InviteGrant {
            org: body.org,
            role: g.role,
            expires_at: g.expires_at,
            nonce: g.nonce,
            issuer: g.issuer,
            signature: g.signature,
        });
        let ticket = Self {
            org: body.org,
            bootstrap,
            grant,
        };
        ticket.check()?;
        Ok(ticket)
    }

    fn check(&self) -> Result<(), TicketError> {
        if self.bootstrap.len() > MAX_BOOTSTRAP_ADDRS {
            return Err(TicketError::Malformed(format!(
                "{} bootstrap addresses, at most {MAX_BOOTSTRAP_ADDRS}",
                self.bootstrap.len()
            )));
        }
        if let Some(grant) = &self.grant {
            if grant.org != self.org {
                return Err(TicketError::GrantOrgMismatch {
                    ticket_org: self.org,
                    grant_org: grant.org,
                });
            }
            check_role(&grant.role)?;
            grant.verify().map_err(|_| TicketError::BadGrantSignature)?;
        }
        Ok(())
    }
}

impl fmt::Display for Ticket {
    /// The encoded text, or a placeholder if the ticket breaks a limit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encode() {
            Ok(text) => f.write_str(&text),
            Err(e) => write!(f, "<invalid ticket: {e}>"),
        }
    }
}

fn checksum(content: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(CHECKSUM_DOMAIN);
    hasher.update(content);
    let digest = hasher.finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}
