//! The one shape of every versioned wire form in this crate: a version byte, then the postcard
//! body, nothing after it. Each message type keeps its own version number, size bound and
//! checks (canonical form, signatures, bounds); this module only frames and parses, so every
//! parser refuses the same things the same way.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a versioned wire form did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Empty, or longer than the message type allows.
    #[error("{0} bytes")]
    Size(usize),
    /// The version byte is not the one this build reads.
    #[error("unknown version {0}")]
    Version(u8),
    /// The body does not parse, or bytes follow it.
    #[error("{0}")]
    Malformed(String),
}

/// `version | postcard(value)`.
pub fn encode<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Plain owned data into a Vec: postcard fails only on types it cannot represent (maps with
    // non-string keys are fine, unsized sequences are not), which no message here has.
    out.extend(postcard::to_stdvec(value).unwrap_or_default());
    out
}

/// Parses `version | postcard(T)` of at most `max_bytes` bytes in all; never panics.
pub fn decode<T: DeserializeOwned>(
    version: u8,
    max_bytes: usize,
    bytes: &[u8],
) -> Result<T, WireError> {
    if bytes.len() > max_bytes {
        return Err(WireError::Size(bytes.len()));
    }
    match bytes.split_first() {
        None => Err(WireError::Size(0)),
        Some((v, body)) if *v == version => {
            let (value, rest) =
                postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(WireError::Malformed("trailing bytes".into()))
            }
        }
        Some((v, _)) => Err(WireError::Version(*v)),
    }
}

/// Maps [`WireError`] into a message type's own error enum, whose `Size`, `Version` and
/// `Malformed` variants carry the same data.
macro_rules! wire_error_into {
    ($error:ident) => {
        impl From<$crate::wire::WireError> for $error {
            fn from(e: $crate::wire::WireError) -> Self {
                match e {
                    $crate::wire::WireError::Size(n) => Self::Size(n),
                    $crate::wire::WireError::Version(v) => Self::Version(v),
                    $crate::wire::WireError::Malformed(m) => Self::Malformed(m),
                }
            }
        }
    };
}
pub(crate) use wire_error_into;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let bytes = encode(3, &(7u16, String::from("x")));
        assert_eq!(decode::<(u16, String)>(3, 64, &bytes), Ok((7, "x".into())));
        assert_eq!(
            decode::<(u16, String)>(4, 64, &bytes),
            Err(WireError::Version(3))
        );
        assert_eq!(decode::<u8>(3, 64, &[]), Err(WireError::Size(0)));
        assert_eq!(decode::<u8>(3, 2, &[3, 1, 1]), Err(WireError::Size(3)));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<(u16, String)>(3, 64, &trailing),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode::<(u16, String)>(3, 64, &bytes[..2]),
            Err(WireError::Malformed(_))
        ));
    }
}
