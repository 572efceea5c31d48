//! Key files: round trips, every kind of damage, and the write rules.

use callsign_keys::{KdfParams, KeyFile, KeyFileError, NodeKeys, KEY_FILE_VERSION};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Cheap parameters: the tests are about the format, not the KDF's cost.
const FAST: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};

fn keys(seed: u64) -> NodeKeys {
    NodeKeys::generate(&mut StdRng::seed_from_u64(seed))
}

fn sealed(passphrase: Option<&[u8]>) -> (NodeKeys, Vec<u8>) {
    let keys = keys(1);
    let file = KeyFile::seal(
        &keys,
        passphrase.map(|p| (p, FAST)),
        &mut StdRng::seed_from_u64(2),
    )
    .unwrap();
    (keys, file.as_bytes().to_vec())
}

fn assert_same(a: &NodeKeys, b: &NodeKeys) {
    assert_eq!(a.identity.peer_id(), b.identity.peer_id());
    assert_eq!(a.noise.public(), b.noise.public());
}

#[test]
fn plain_round_trip() {
    let (keys, bytes) = sealed(None);
    let file = KeyFile::parse(&bytes).unwrap();
    assert_eq!(file.version(), KEY_FILE_VERSION);
    assert!(!file.is_encrypted());
    assert_same(&file.unlock(None).unwrap(), &keys);
}

#[test]
fn encrypted_round_trip() {
    let (keys, bytes) = sealed(Some(b"correct horse"));
    let file = KeyFile::parse(&bytes).unwrap();
    assert!(file.is_encrypted());
    assert_eq!(file.kdf_params(), Some(FAST));
    assert_same(&file.unlock(Some(b"correct horse")).unwrap(), &keys);
    // The secrets are not in the file in the clear.
    let secret = keys.identity.secret_bytes();
    assert!(!bytes.windows(32).any(|w| w == secret.as_ref()));
}

#[test]
fn wrong_passphrase_is_named() {
    let (_, bytes) = sealed(Some(b"correct horse"));
    let file = KeyFile::parse(&bytes).unwrap();
    assert!(matches!(
        file.unlock(Some(b"battery staple")),
        Err(KeyFileError::WrongPassphrase)
    ));
    assert!(matches!(
        file.unlock(None),
        Err(KeyFileError::PassphraseRequired)
    ));
}

#[test]
fn empty_passphrase_is_refused() {
    let err = KeyFile::seal(&keys(1), Some((b"", FAST)), &mut StdRng::seed_from_u64(2));
    assert!(matches!(err, Err(KeyFileError::EmptyPassphrase)));
}

#[test]
fn every_truncation_is_an_error() {
    for passphrase in [None, Some(&b"pw"[..])] {
        let (_, bytes) = sealed(passphrase);
        for len in 0..bytes.len() {
            let err = KeyFile::parse(&bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeyFileError::Truncated { .. } | KeyFileError::NotAKeyFile
                ),
                "len {len}: {err}"
            );
        }
    }
}

#[test]
fn every_flipped_byte_is_detected_before_decryption() {
    for passphrase in [None, Some(&b"pw"[..])] {
        let (_, bytes) = sealed(passphrase);
        for at in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= bit;
                match KeyFile::parse(&damaged) {
                    Ok(_) => panic!("flip at {at} went unnoticed"),
                    Err(KeyFileError::WrongPassphrase) => {
                        panic!("flip at {at} looked like a bad passphrase")
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

#[test]
fn unknown_version_is_named() {
    let (_, mut bytes) = sealed(None);
    bytes[8] = 9;
    match KeyFile::parse(&bytes) {
        Err(e @ KeyFileError::UnsupportedVersion { found: 9 }) => {
            assert!(e.to_string().contains("version 9"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let (_, mut bytes) = sealed(None);
    bytes.push(0);
    assert!(matches!(
        KeyFile::parse(&bytes),
        Err(KeyFileError::TrailingBytes(1))
    ));
}

#[test]
fn hostile_kdf_parameters_are_refused_without_running_the_kdf() {
    let (_, bytes) = sealed(Some(b"pw"));
    let mut hostile = bytes[..bytes.len() - 32].to_vec();
    hostile[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let checksum = {
        use sha2::Digest;
        sha2::Sha256::digest(&hostile)
    };
    hostile.extend_from_slice(&checksum);
    let file = KeyFile::parse(&hostile).unwrap();
    assert!(matches!(
        file.unlock(Some(b"pw")),
        Err(KeyFileError::BadKdfParams(_))
    ));
}

#[test]
fn save_is_private_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/identity.key");
    let (_, bytes) = sealed(None);
    let file = KeyFile::parse(&bytes).unwrap();
    file.save(&path, false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Only its owner may read it (Windows: a protected DACL with the user alone), nor list
    // the directory made for it; the test's own directory was not made private.
    use callsign_keys::private_file::owner_only;
    assert!(owner_only(&path).unwrap());
    assert!(owner_only(path.parent().unwrap()).unwrap());
    assert!(!owner_only(dir.path()).unwrap() || cfg!(unix));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let other = KeyFile::seal(&keys(5), None, &mut StdRng::seed_from_u64(6)).unwrap();
    assert!(matches!(
        other.save(&path, false),
        Err(KeyFileError::AlreadyExists(_))
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "refused save changed the file"
    );

    other.save(&path, true).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), other.as_bytes());
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn load_reports_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.key");
    match KeyFile::load(&path) {
        Err(e @ KeyFileError::NotFound(_)) => {
            assert_eq!(e.to_string(), format!("no such file: {}", path.display()))
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(file) = KeyFile::parse(&bytes) {
            let _ = file.unlock(Some(b"pw"));
        }
    }

    #[test]
    fn arbitrary_bytes_after_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = b"CSIGNKEY\x01".to_vec();
        bytes.extend(tail);
        if let Ok(file) = KeyFile::parse(&bytes) {
            let _ = file.unlock(Some(b"pw"));
        }
    }
}
