//! Domain-separation contexts for signatures.
//!
//! Every signature Callsign makes is over `len(context) || context || message`, so a signature
//! made for one purpose (say, a charter op) can never be replayed as another (say, an invite
//! grant), even when the two message encodings happen to collide.

use std::fmt;

/// A domain-separation string bound into every signature.
///
/// Contexts are `'static` constants of the form `callsign/<purpose>/v<N>`; bump the version
/// whenever the signed message's encoding changes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SigningContext(&'static str);

impl SigningContext {
    /// Declares a context. Panics at compile time (in a `const`) if the string is not of the
    /// form `callsign/<purpose>/v<N>` or is longer than 255 bytes.
    pub const fn new(context: &'static str) -> Self {
        let bytes = context.as_bytes();
        assert!(bytes.len() <= 255, "signing context longer than 255 bytes");
        let prefix = b"callsign/";
        assert!(bytes.len() > prefix.len() + 3, "signing context too short");
        let mut i = 0;
        while i < prefix.len() {
            assert!(
                bytes[i] == prefix[i],
                "signing context must start with callsign/"
            );
            i += 1;
        }
        // Find the last '/' and require `v<digits>` after it.
        let mut slash = bytes.len() - 1;
        while bytes[slash] != b'/' {
            slash -= 1;
        }
        assert!(slash > prefix.len(), "signing context needs a purpose");
        assert!(
            bytes[slash + 1] == b'v',
            "signing context must end in /v<N>"
        );
        assert!(slash + 2 < bytes.len(), "signing context must end in /v<N>");
        let mut j = slash + 2;
        while j < bytes.len() {
            assert!(
                bytes[j].is_ascii_digit(),
                "signing context must end in /v<N>"
            );
            j += 1;
        }
        Self(context)
    }

    /// The context string.
    pub const fn as_str(&self) -> &'static str {
        self.0
    }

    /// The exact bytes that get signed for `message` under this context.
    pub(crate) fn framed(&self, message: &[u8]) -> Vec<u8> {
        let ctx = self.0.as_bytes();
        let mut framed = Vec::with_capacity(1 + ctx.len() + message.len());
        // Length fits: `new` asserts <= 255.
        framed.push(ctx.len() as u8);
        framed.extend_from_slice(ctx);
        framed.extend_from_slice(message);
        framed
    }
}

impl fmt::Debug for SigningContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningContext({:?})", self.0)
    }
}

impl fmt::Display for SigningContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Certifies a node's X25519 Noise static key under its identity.
pub const NOISE_KEY_CERT: SigningContext = SigningContext::new("callsign/noise-key-cert/v1");
/// An org admin's invite grant inside a ticket.
pub const INVITE_GRANT: SigningContext = SigningContext::new("callsign/invite-grant/v1");
/// An operation in an org charter.
pub const CHARTER_OP: SigningContext = SigningContext::new("callsign/charter-op/v1");
/// A node's presence record (who is online, what it listens to, where to reach it).
pub const PRESENCE: SigningContext = SigningContext::new("callsign/presence/v1");
/// A member's subscription at a relay (which channels it wants forwarded to it).
pub const SUBSCRIPTION: SigningContext = SigningContext::new("callsign/subscription/v1");
/// A newcomer's request to join an org with an invite grant (proves it holds its key).
pub const JOIN_REQUEST: SigningContext = SigningContext::new("callsign/join-request/v1");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_length_prefixed() {
        let framed = INVITE_GRANT.framed(b"abc");
        assert_eq!(framed[0] as usize, INVITE_GRANT.as_str().len());
        assert!(framed.ends_with(b"abc"));
    }

    #[test]
    fn framing_separates_context_from_message() {
        // Without the length prefix these two would frame identically.
        const A: SigningContext = SigningContext::new("callsign/ab/v1");
        const B: SigningContext = SigningContext::new("callsign/ab/v12");
        assert_ne!(A.framed(b"2x"), B.framed(b"x"));
    }

    #[test]
    #[should_panic(expected = "callsign/")]
    fn rejects_foreign_prefix() {
        let _ = SigningContext::new("other/thing/v1");
    }

    #[test]
    #[should_panic(expected = "/v<N>")]
    fn rejects_missing_version() {
        let _ = SigningContext::new("callsign/thing/x1");
    }
}
