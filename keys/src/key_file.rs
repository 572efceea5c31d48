//! The on-disk key file: versioned, checksummed, optionally passphrase-encrypted.
//!
//! Layout (all integers little-endian; see `docs/protocol.md`):
//!
//! ```text
//! magic "CSIGNKEY" (8) | version u8 | protection u8 | body_len u16 | body | sha256(all before) (32)
//! protection 0, body: identity seed (32) | noise secret (32)
//! protection 1, body: m_kib u32 | t u32 | p u32 | salt (16) | nonce (24) | XChaCha20-Poly1305(secrets) (80)
//! ```
//!
//! The trailing checksum lets a flipped byte be reported as corruption rather than as a wrong
//! passphrase. For protection 1 the AEAD's associated data is every byte before the ciphertext,
//! so the KDF parameters cannot be swapped either.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::identity::Identity;
use crate::node_keys::NodeKeys;
use crate::noise::NoiseKeypair;
use crate::private_file;

/// File signature at offset 0.
pub const MAGIC: &[u8; 8] = b"CSIGNKEY";
/// The key file version this build writes and reads.
pub const KEY_FILE_VERSION: u8 = 1;

const HEADER_LEN: usize = 8 + 1 + 1 + 2;
const CHECKSUM_LEN: usize = 32;
const SECRETS_LEN: usize = 64;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KDF_PARAMS_LEN: usize = 12;
const ENCRYPTED_BODY_LEN: usize = KDF_PARAMS_LEN + SALT_LEN + NONCE_LEN + SECRETS_LEN + TAG_LEN;

const PROTECTION_NONE: u8 = 0;
const PROTECTION_PASSPHRASE: u8 = 1;

/// Upper bounds on KDF parameters read from a file, so a hostile file cannot make the loader
/// allocate gigabytes or spin for minutes.
const MAX_M_KIB: u32 = 1 << 20;
const MAX_T: u32 = 64;
const MAX_P: u32 = 16;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// There is no file at the path.
    #[error("no such file: {}", .0.display())]
    NotFound(PathBuf),
    /// The operating system refused.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Writing would replace an existing key.
    #[error("{} already exists; refusing to overwrite a key (use --force)", .0.display())]
    AlreadyExists(PathBuf),
    /// The file does not start with the key file signature.
    #[error("not a Callsign key file (bad signature bytes)")]
    NotAKeyFile,
    /// The file is from a newer (or unknown) format version.
    #[error("unsupported key file version {found} (this build reads version {KEY_FILE_VERSION})")]
    UnsupportedVersion {
        /// The version byte in the file.
        found: u8,
    },
    /// The file ends early.
    #[error("key file is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Length the header promises.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// Extra bytes after the checksum.
    #[error("key file is corrupted: {0} unexpected bytes after the end")]
    TrailingBytes(usize),
    /// The checksum does not match: some byte changed.
    #[error("key file is corrupted: checksum mismatch")]
    ChecksumMismatch,
    /// Unknown protection scheme byte.
    #[error("key file uses unknown protection scheme {0}")]
    UnknownProtection(u8),
    /// The body length does not fit the protection scheme.
    #[error("key file is corrupted: body is {actual} bytes, protection scheme needs {expected}")]
    BadBodyLength {
        /// Length the scheme needs.
        expected: usize,
        /// Length in the header.
        actual: usize,
    },
    /// KDF parameters out of the accepted range.
    #[error("key file has unacceptable KDF parameters: {0}")]
    BadKdfParams(String),
    /// The file is encrypted and no passphrase was given.
    #[error("key file is passphrase-protected and no passphrase was given")]
    PassphraseRequired,
    /// Decryption failed on an intact file.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// An empty passphrase would give no protection.
    #[error("passphrase is empty")]
    EmptyPassphrase,
}

/// Argon2id cost parameters for passphrase-protected key files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: RFC 9106's second recommended option, single-lane because the
    /// argon2 crate computes lanes serially.
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl KdfParams {
    fn argon2(&self) -> Result<Argon2<'static>, KeyFileError> {
        if self.m_kib > MAX_M_KIB || self.t > MAX_T || self.p > MAX_P {
            return Err(KeyFileError::BadKdfParams(format!(
                "m={} KiB t={} p={} exceeds m<={MAX_M_KIB} t<={MAX_T} p<={MAX_P}",
                self.m_kib, self.t, self.p
            )));
        }
        let params = Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| KeyFileError::BadKdfParams(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    fn derive_key(
        &self,
        passphrase: &[u8],
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        let mut key = Zeroizing::new([0u8; 32]);
        self.argon2()?
            .hash_password_into(passphrase, salt, key.as_mut())
            .map_err(|e| KeyFileError::BadKdfParams(e.to_string()))?;
        Ok(key)
    }
}

/// A parsed, checksum-verified key file whose secrets may still be locked.
#[derive(Clone, Debug)]
pub struct KeyFile {
    bytes: Vec<u8>,
}

impl KeyFile {
    /// Serialises `keys`, encrypting them under `passphrase` if one is given.
    pub fn seal<R: RngCore + CryptoRng>(
        keys: &NodeKeys,
        passphrase: Option<(&[u8], KdfParams)>,
        rng: &mut R,
    ) -> Result<Self, KeyFileError> {
        let mut secrets = Zeroizing::new([0u8; SECRETS_LEN]);
        secrets[..32].copy_from_slice(keys.identity.secret_bytes().as_ref());
        secrets[32..].copy_from_slice(keys.noise.secret_bytes().as_ref());

        let mut bytes = Vec::with_capacity(HEADER_LEN + ENCRYPTED_BODY_LEN + CHECKSUM_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.push(KEY_FILE_VERSION);
        match passphrase {
            None => {
                bytes.push(PROTECTION_NONE);
                bytes.extend_from_slice(&(SECRETS_LEN as u16).to_le_bytes());
                bytes.extend_from_slice(secrets.as_ref());
            }
            Some((passphrase, params)) => {
                if passphrase.is_empty() {
                    return Err(KeyFileError::EmptyPassphrase);
                }
                let mut salt = [0u8; SALT_LEN];
                let mut nonce = [0u8; NONCE_LEN];
                rng.fill_bytes(&mut salt);
                rng.fill_bytes(&mut nonce);
                let key = params.derive_key(passphrase, &salt)?;

                bytes.push(PROTECTION_PASSPHRASE);
                bytes.extend_from_slice(&(ENCRYPTED_BODY_LEN as u16).to_le_bytes());
                bytes.extend_from_slice(&params.m_kib.to_le_bytes());
                bytes.extend_from_slice(&params.t.to_le_bytes());
                bytes.extend_from_slice(&params.p.to_le_bytes());
                bytes.extend_from_slice(&salt);
                bytes.extend_from_slice(&nonce);
                let cipher = XChaCha20Poly1305::new(key.as_ref().into());
                let ciphertext = cipher
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: secrets.as_ref(),
                            aad: &bytes,
                        },
                    )
                    .map_err(|_| KeyFileError::BadKdfParams("encryption failed".into()))?;
                bytes.extend_from_slice(&ciphertext);
            }
        }
        let checksum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&checksum);
        Ok(Self { bytes })
    }

    /// Parses and checksum-verifies a key file without unlocking it.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyFileError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(KeyFileError::NotAKeyFile);
        }
        if bytes.len() < HEADER_LEN {
            return Err(KeyFileError::Truncated {
                expected: HEADER_LEN + CHECKSUM_LEN,
                actual: bytes.len(),
            });
        }
        let version = bytes[8];
        if version != KEY_FILE_VERSION {
            return Err(KeyFileError::UnsupportedVersion { found: version });
        }
        let body_len = u16::from_le_bytes([bytes[10], bytes[11]]) as usize;
        let expected = HEADER_LEN + body_len + CHECKSUM_LEN;
        if bytes.len() < expected {
            return Err(KeyFileError::Truncated {
                expected,
                actual: bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(KeyFileError::TrailingBytes(bytes.len() - expected));
        }
        let (content, checksum) = bytes.split_at(expected - CHECKSUM_LEN);
        if Sha256::digest(content).as_slice() != checksum {
            return Err(KeyFileError::ChecksumMismatch);
        }
        let needed = match bytes[9] {
            PROTECTION_NONE => SECRETS_LEN,
            PROTECTION_PASSPHRASE => ENCRYPTED_BODY_LEN,
            other => return Err(KeyFileError::UnknownProtection(other)),
        };
        if body_len != needed {
            return Err(KeyFileError::BadBodyLength {
                expected: needed,
                actual: body_len,
            });
        }
        Ok(Self {
            bytes: bytes.to_vec(),
        })
    }

    /// The format version of this file.
    pub fn version(&self) -> u8 {
        self.bytes[8]
    }

    /// Whether unlocking needs a passphrase.
    pub fn is_encrypted(&self) -> bool {
        self.bytes[9] == PROTECTION_PASSPHRASE
    }

    /// The KDF parameters of an encrypted file.
    pub fn kdf_params(&self) -> Option<KdfParams> {
        self.is_encrypted().then(|| {
            let word = |i: usize| {
                let at = HEADER_LEN + 4 * i;
                u32::from_le_bytes([
                    self.bytes[at],
                    self.bytes[at + 1],
                    self.bytes[at + 2],
                    self.bytes[at + 3],
                ])
            };
            KdfParams {
                m_kib: word(0),
                t: word(1),
                p: word(2),
            }
        })
    }

    /// The serialised file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Recovers the keys. `passphrase` is ignored for unencrypted files.
    pub fn unlock(&self, passphrase: Option<&[u8]>) -> Result<NodeKeys, KeyFileError> {
        let body = &self.bytes[HEADER_LEN..self.bytes.len() - CHECKSUM_LEN];
        let secrets: Zeroizing<Vec<u8>> = match self.kdf_params() {
            None => Zeroizing::new(body.to_vec()),
            Some(params) => {
                let passphrase = passphrase.ok_or(KeyFileError::PassphraseRequired)?;
                let salt = &body[KDF_PARAMS_LEN..KDF_PARAMS_LEN + SALT_LEN];
                let nonce_at = KDF_PARAMS_LEN + SALT_LEN;
                let nonce = &body[nonce_at..nonce_at + NONCE_LEN];
                let ciphertext_at = HEADER_LEN + nonce_at + NONCE_LEN;
                let key = params.derive_key(passphrase, salt)?;
                let cipher = XChaCha20Poly1305::new(key.as_ref().into());
                let plaintext = cipher
                    .decrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: &self.bytes[ciphertext_at..self.bytes.len() - CHECKSUM_LEN],
                            aad: &self.bytes[..ciphertext_at],
                        },
                    )
                    .map_err(|_| KeyFileError::WrongPassphrase)?;
                Zeroizing::new(plaintext)
            }
        };
        let mut identity = [0u8; 32];
        let mut noise = [0u8; 32];
        identity.copy_from_slice(&secrets[..32]);
        noise.copy_from_slice(&secrets[32..SECRETS_LEN]);
        Ok(NodeKeys {
            identity: Identity::from_secret_bytes(identity),
            noise: NoiseKeypair::from_secret_bytes(noise),
        })
    }

    /// Reads and verifies a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        // Named here, not by the OS: its wording differs by platform and language.
        let bytes = fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KeyFileError::NotFound(path.to_path_buf()),
            _ => e.into(),
        })?;
        Self::parse(&bytes)
    }

    /// Writes the file atomically (temp file in the same directory, fsync, rename, fsync the
    /// directory), readable by its owner only ([`crate::private_file`]: mode 0600 on Unix, an
    /// owner-only DACL on Windows). Refuses to replace an existing file unless `overwrite`.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyFileError> {
        if !overwrite && path.exists() {
            return Err(KeyFileError::AlreadyExists(path.to_path_buf()));
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        private_file::create_private_dir(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".callsign-key-")
            .tempfile_in(dir)?;
        // Before the secret is written, so it is never readable by others, not even briefly
        // (tempfile makes it 0600 on Unix already; on Windows it inherits the folder's DACL).
        private_file::restrict_file(tmp.path())?;
        tmp.write_all(&self.bytes)?;
        tmp.as_file().sync_all()?;
        if overwrite {
            tmp.persist(path).map_err(|e| KeyFileError::Io(e.error))?;
        } else {
            // No-clobber rename closes the race between the exists() check and the rename.
            tmp.persist_noclobber(path).map_err(|e| {
                if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyFileError::AlreadyExists(path.to_path_buf())
                } else {
                    KeyFileError::Io(e.error)
                }
            })?;
        }
        sync_dir(dir)?;
        Ok(())
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
