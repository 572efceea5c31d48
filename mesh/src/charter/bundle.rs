//! Compressed op bundles: bulk sync messages and `org export` files.
//!
//! Payload: zstd of a sequence of `len u32 | op bytes` records. The file form prefixes
//! `"CSIGNBDL" | version u8 | org key (32)`.

use callsign_keys::IdentityKey;

use super::op::MAX_OP_BYTES;

/// Magic of a bundle file.
pub const BUNDLE_MAGIC: &[u8; 8] = b"CSIGNBDL";
/// The bundle file version.
pub const BUNDLE_VERSION: u8 = 1;
/// Refuse to decompress beyond this.
pub const MAX_BUNDLE_DECOMPRESSED: usize = 256 * 1024 * 1024;

/// Why a bundle could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle file.
    #[error("not a Callsign charter bundle")]
    NotABundle,
    /// Unknown version.
    #[error("unsupported bundle version {0} (this build reads {BUNDLE_VERSION})")]
    Version(u8),
    /// Bad org key.
    #[error("bundle names an invalid org key")]
    BadOrg,
    /// zstd refused, or the output is too large.
    #[error("bundle does not decompress: {0}")]
    Compression(String),
    /// Records do not parse.
    #[error("bundle is corrupted: {0}")]
    Corrupt(String),
}

/// Compresses ops (wire form) into a payload.
pub fn compress_ops<'a>(ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut raw = Vec::new();
    for op in ops {
        raw.extend_from_slice(&(op.len() as u32).to_le_bytes());
        raw.extend_from_slice(op);
    }
    // In-memory compression of a Vec cannot fail.
    zstd::bulk::compress(&raw, 3).expect("zstd compresses in memory")
}

/// Decompresses a payload into ops (wire form), refusing more than `max` decompressed bytes.
pub fn decompress_ops(payload: &[u8], max: usize) -> Result<Vec<Vec<u8>>, BundleError> {
    use std::io::Read;
    // Streamed, so memory follows what the payload holds: a bulk decompress reserves `max`
    // up front (256 MiB for every sync message).
    let compression = |e: std::io::Error| BundleError::Compression(e.to_string());
    let decoder = zstd::stream::read::Decoder::with_buffer(payload).map_err(compression)?;
    let mut raw = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(compression)?;
    if raw.len() > max {
        return Err(BundleError::Compression(format!(
            "more than {max} bytes decompressed"
        )));
    }
    let mut ops = Vec::new();
    let mut rest = &raw[..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(BundleError::Corrupt("truncated record length".into()));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_OP_BYTES || rest.len() < 4 + len {
            return Err(BundleError::Corrupt(format!("bad record length {len}")));
        }
        ops.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    Ok(ops)
}

/// A bundle file for `org`.
pub fn encode_bundle<'a>(org: &IdentityKey, ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = BUNDLE_MAGIC.to_vec();
    out.push(BUNDLE_VERSION);
    out.extend_from_slice(&org.to_bytes());
    out.extend(compress_ops(ops));
    out
}

/// Reads a bundle file. Ops are returned unverified; ingest them into a replica.
pub fn decode_bundle(bytes: &[u8]) -> Result<(IdentityKey, Vec<Vec<u8>>), BundleError> {
    if bytes.len() < 8 || &bytes[..8] != BUNDLE_MAGIC {
        return Err(BundleError::NotABundle);
    }
    if bytes.len() < 9 + 32 {
        return Err(BundleError::Corrupt("truncated header".into()));
    }
    if bytes[8] != BUNDLE_VERSION {
        return Err(BundleError::Version(bytes[8]));
    }
    let org = IdentityKey::from_bytes(&bytes[9..41]).map_err(|_| BundleError::BadOrg)?;
    let ops = decompress_ops(&bytes[41..], MAX_BUNDLE_DECOMPRESSED)?;
    Ok((org, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_stops_at_the_limit() {
        let op = vec![7u8; 1000];
        let payload = compress_ops([&op[..], &op[..]]);
        let whole = 2 * (4 + op.len());
        assert_eq!(decompress_ops(&payload, whole), Ok(vec![op.clone(), op]));
        assert!(matches!(
            decompress_ops(&payload, whole - 1),
            Err(BundleError::Compression(_))
        ));
        assert!(matches!(
            decompress_ops(b"not zstd at all", whole),
            Err(BundleError::Compression(_))
        ));
    }
}
