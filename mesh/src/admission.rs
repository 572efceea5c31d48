//! Joining with an invite ticket: the newcomer's signed [`JoinRequest`] carries an admin's
//! [`InviteGrant`]; an online admin checks it with [`admit`] and, if it holds, signs the
//! [`OpBody::AdmitMember`] op that makes the newcomer a member.
//!
//! What is checked: the newcomer's signature (it holds the key it joins as), the grant's
//! signature, that the grant is for this org, that its issuer is an admin now, that it has not
//! expired, that its role exists, and that its nonce has not admitted anyone yet. The charter
//! records used nonces, so a ticket admits once however many admins see it.

use crate::charter::{CharterState, OpBody};
use crate::wire::WireError;
use callsign_keys::context::JOIN_REQUEST;
use callsign_keys::{Identity, IdentityKey, InviteGrant, Signature};
use serde::{Deserialize, Serialize};

/// Wire version of a join request.
pub const JOIN_VERSION: u8 = 1;
/// Join requests larger than this are refused unread.
pub const MAX_JOIN_BYTES: usize = 1024;
const MAX_NAME: usize = 64;

/// A newcomer's request to join with a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The admin's grant from the ticket.
    pub grant: InviteGrant,
    /// Who joins.
    pub joiner: IdentityKey,
    /// The name it wants to be known by.
    pub name: String,
    /// `joiner`'s signature over the grant's signature and the name, under [`JOIN_REQUEST`].
    pub signature: Signature,
}

/// Why a join request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    /// Not a join request this code reads.
    #[error("malformed join request: {0}")]
    Malformed(String),
    /// An unknown version.
    #[error("unknown join request version {0}")]
    Version(u8),
    /// The newcomer's signature does not verify.
    #[error("the join request's signature does not verify")]
    BadSignature,
    /// The grant's signature does not verify.
    #[error("the invite grant's signature does not verify (forged or altered)")]
    BadGrant,
    /// For another org.
    #[error("the invite is for another org")]
    OtherOrg,
    /// Its issuer is not (or no longer) an admin.
    #[error("the invite's issuer is not an admin")]
    NotAdmin,
    /// Past its expiry.
    #[error("the invite expired")]
    Expired,
    /// The role is not in the charter.
    #[error("the invite's role {0:?} does not exist")]
    NoRole(String),
    /// The nonce admitted someone already.
    #[error("the invite was used already")]
    Used,
    /// The newcomer is a member already.
    #[error("already a member")]
    AlreadyMember,
    /// The name is empty, too long or has control characters.
    #[error("the name must be 1 to 64 bytes without control characters")]
    BadName,
}

fn signed_bytes(grant: &InviteGrant, name: &str) -> Vec<u8> {
    let mut out = grant.signature.to_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

impl JoinRequest {
    /// `identity` asks to join with `grant` as `name`.
    pub fn sign(identity: &Identity, grant: InviteGrant, name: &str) -> Self {
        let signature = identity.sign(JOIN_REQUEST, &signed_bytes(&grant, name));
        Self {
            grant,
            joiner: identity.public(),
            name: name.to_string(),
            signature,
        }
    }

    /// The wire form: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(JOIN_VERSION, self)
    }

    /// Parses the wire form (the signatures are checked by [`admit`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, AdmitError> {
        crate::wire::decode(JOIN_VERSION, MAX_JOIN_BYTES, bytes).map_err(|e| match e {
            WireError::Version(v) => AdmitError::Version(v),
            WireError::Size(n) => AdmitError::Malformed(format!("{n} bytes")),
            WireError::Malformed(m) => AdmitError::Malformed(m),
        })
    }
}

/// Checks `request` against the charter at Unix time `now_unix` (seconds); on success, the op
/// an admin signs to admit the newcomer.
pub fn admit(
    state: &CharterState,
    request: &JoinRequest,
    now_unix: u64,
) -> Result<OpBody, AdmitError> {
    let grant = &request.grant;
    request
        .joiner
        .verify(
            JOIN_REQUEST,
            &signed_bytes(grant, &request.name),
            &request.signature,
        )
        .map_err(|_| AdmitError::BadSignature)?;
    grant.verify().map_err(|_| AdmitError::BadGrant)?;
    if grant.org != state.org {
        return Err(AdmitError::OtherOrg);
    }
    // Before the grant's checks: a member's request that arrives after the op that admitted
    // it (over another link, or passed on) would otherwise read "used already".
    if state.members.contains_key(&request.joiner) {
        return Err(AdmitError::AlreadyMember);
    }
    if !state.is_admin(&grant.issuer) {
        return Err(AdmitError::NotAdmin);
    }
    if grant.is_expired(now_unix) {
        return Err(AdmitError::Expired);
    }
    if !state.roles.contains_key(&grant.role) {
        return Err(AdmitError::NoRole(grant.role.clone()));
    }
    if state.used_invites.contains(&grant.nonce) {
        return Err(AdmitError::Used);
    }
    let name = request.name.trim();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(AdmitError::BadName);
    }
    Ok(OpBody::AdmitMember {
        peer: request.joiner,
        name: name.to_string(),
        role: grant.role.clone(),
        invite: grant.nonce,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charter::{Charter, Permissions, Priority, Role};

    fn org() -> (Identity, Charter) {
        let root = Identity::from_secret_bytes([1; 32]);
        let (mut charter, _) = Charter::create(&root, "Wing", 0).unwrap();
        charter
            .edit(
                &root,
                OpBody::PutRole {
                    name: "pilot".into(),
                    role: Role {
                        perms: Permissions::LISTEN,
                        priority: Priority::NORMAL,
                    },
                },
                1,
            )
            .unwrap();
        (root, charter)
    }

    fn grant(issuer: &Identity, org: IdentityKey, role: &str, nonce: u8) -> InviteGrant {
        InviteGrant::issue(issuer, org, role, 1_000, [nonce; 16]).unwrap()
    }

    #[test]
    fn a_valid_invite_admits_once() {
        let (root, mut charter) = org();
        let newcomer = Identity::from_secret_bytes([2; 32]);
        let request =
            JoinRequest::sign(&newcomer, grant(&root, charter.org(), "pilot", 7), "Goose");
        let decoded = JoinRequest::decode(&request.encode()).unwrap();
        assert_eq!(decoded, request);
        let op = admit(charter.state(), &decoded, 500).unwrap();
        charter.edit(&root, op, 2).unwrap();
        let state = charter.state();
        assert_eq!(state.members[&newcomer.public()].roles, vec!["pilot"]);
        // The same ticket again, by someone else: used.
        let other = Identity::from_secret_bytes([3; 32]);
        let again = JoinRequest::sign(&other, grant(&root, charter.org(), "pilot", 7), "Mav");
        assert_eq!(admit(state, &again, 500), Err(AdmitError::Used));
        // The member again, with a fresh ticket: nothing to do.
        let twice = JoinRequest::sign(&newcomer, grant(&root, charter.org(), "pilot", 8), "G");
        assert_eq!(admit(state, &twice, 500), Err(AdmitError::AlreadyMember));
    }

    #[test]
    fn bad_requests_are_refused_with_their_reason() {
        let (root, charter) = org();
        let state = charter.state();
        let newcomer = Identity::from_secret_bytes([2; 32]);
        let stranger = Identity::from_secret_bytes([4; 32]);
        let ok = grant(&root, charter.org(), "pilot", 1);
        let cases = [
            (
                JoinRequest::sign(&newcomer, grant(&stranger, charter.org(), "pilot", 1), "G"),
                AdmitError::NotAdmin,
            ),
            (
                JoinRequest::sign(&newcomer, grant(&root, stranger.public(), "pilot", 1), "G"),
                AdmitError::OtherOrg,
            ),
            (
                JoinRequest::sign(&newcomer, grant(&root, charter.org(), "admiral", 1), "G"),
                AdmitError::NoRole("admiral".into()),
            ),
            (
                JoinRequest::sign(&newcomer, ok.clone(), "\u{7}"),
                AdmitError::BadName,
            ),
        ];
        for (request, want) in cases {
            assert_eq!(admit(state, &request, 500), Err(want));
        }
        assert_eq!(
            admit(state, &JoinRequest::sign(&newcomer, ok.clone(), "G"), 1_000),
            Err(AdmitError::Expired)
        );
        // A grant altered after signing (another role), and a request signed by someone else.
        let mut altered = JoinRequest::sign(&newcomer, ok.clone(), "G");
        altered.grant.expires_at += 1;
        altered.signature = newcomer.sign(JOIN_REQUEST, &signed_bytes(&altered.grant, "G"));
        assert_eq!(admit(state, &altered, 500), Err(AdmitError::BadGrant));
        let mut forged = JoinRequest::sign(&newcomer, ok, "G");
        forged.joiner = stranger.public();
        assert_eq!(admit(state, &forged, 500), Err(AdmitError::BadSignature));
        // Garbage on the wire.
        assert!(matches!(
            JoinRequest::decode(&[]),
            Err(AdmitError::Malformed(_))
        ));
        assert_eq!(JoinRequest::decode(&[9, 1, 2]), Err(AdmitError::Version(9)));
        assert!(matches!(
            JoinRequest::decode(&[JOIN_VERSION, 0xff, 0xff]),
            Err(AdmitError::Malformed(_))
        ));
    }
}
