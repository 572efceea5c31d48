//! A link whose every random byte comes from the node's seed, so a simulated run replays byte
//! for byte (only with [`LinkConfig::rng_seed`](super::LinkConfig::rng_seed); a real network
//! draws from the OS, through libp2p-tls and quinn's defaults).
//!
//! Why bytes and not only sizes: libp2p-tls signs its certificates with ECDSA, whose DER
//! signatures are 70 to 72 bytes at random, and TLS key shares and QUIC ids are random. A
//! peer's retransmission to a connection we already dropped arrives as an Initial under an id
//! we no longer know; quinn removes its header protection with keys derived from that id, and
//! whether the garbled bits pass its checks (and the packet reaches the listener, or is dropped
//! at once) depends on every byte of it. Those outcomes differed from process to process, and
//! at 25+ members they reshuffled traffic enough that a seed gave another trace.
//!
//! So in simulation: certificates are Ed25519 (deterministic signatures) with a key from the
//! seed, carrying the same libp2p extension that [`libp2p_tls::certificate::parse`] checks;
//! TLS randoms and X25519 key shares come from seeded streams; the TLS and QUIC token clocks
//! are fixed; quinn's initial destination ids, stateless-reset key and token key come from the
//! seed. Verification is the libp2p rule: exactly one self-signed certificate whose extension
//! the peer's identity key signed, and the handshake signed by the certificate's key.

use libp2p::identity::Keypair;
use libp2p::PeerId;
use quinn::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{
        ring::cipher_suite, ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom,
        SharedSecret, SupportedKxGroup,
    },
    pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
        UnixTime,
    },
    server::danger::{ClientCertVerified, ClientCertVerifier},
    sign::{CertifiedKey, SingleCertAndKey},
    CertificateError, DigitallySignedStruct, DistinguishedName, NamedGroup, SignatureScheme,
};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

/// libp2p's certificate extension (libp2p TLS spec): the identity key and its signature over
/// the certificate's key.
const P2P_EXT_OID: [u64; 9] = [1, 3, 6, 1, 4, 1, 53594, 1, 1];
const P2P_SIGNING_PREFIX: &[u8] = b"libp2p-tls-handshake:";
const ALPN: &[u8] = b"libp2p";
/// The clock TLS tickets and QUIC tokens see in simulation: fixed, so their contents never
/// depend on the wall clock (and nothing expires within a run).
const FIXED_TIME: Duration = Duration::from_secs(1_700_000_000);

/// Named streams drawn from one node seed.
#[derive(Clone, Copy)]
pub(crate) struct Seed([u8; 32]);

impl Seed {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self(seed)
    }

    /// Independent bytes per purpose: SHA-256 over the purpose and the seed.
    pub(crate) fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(purpose.as_bytes());
        context.update(&[0]);
        context.update(&self.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }

    pub(crate) fn rng(&self, purpose: &str) -> StdRng {
        StdRng::from_seed(self.derive(purpose))
    }

    /// The TLS server side: the node's seeded certificate, client certificates required.
    pub(crate) fn tls_server(
        &self,
        keypair: &Keypair,
    ) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = self.provider("tls-server");
        let certified = self.certified_key(&provider, keypair, "tls-server-certificate")?;
        let mut config = rustls::ServerConfig::builder_with_details(provider, Arc::new(FixedClock))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PeerCertificate))
            .with_cert_resolver(certified);
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The TLS client side: any peer's libp2p certificate is accepted; the dialer compares the
    /// proven peer id with the one it dialed.
    pub(crate) fn tls_client(
        &self,
        keypair: &Keypair,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        let provider = self.provider("tls-client");
        let certified = self.certified_key(&provider, keypair, "tls-client-certificate")?;
        let mut config = rustls::ClientConfig::builder_with_details(provider, Arc::new(FixedClock))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerCertificate))
            .with_client_cert_resolver(certified);
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// quinn's keys for stateless resets and address-validation tokens.
    pub(crate) fn reset_key(&self) -> Arc<ring::hmac::Key> {
        Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &self.derive("quic-reset-key"),
        ))
    }

    pub(crate) fn token_key(&self) -> Arc<ring::hkdf::Prk> {
        Arc::new(
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[])
                .extract(&self.derive("quic-token-key")),
        )
    }

    /// The destination id of each connection we dial (quinn draws it from the OS).
    pub(crate) fn initial_cids(
        &self,
    ) -> Arc<dyn Fn() -> quinn::ConnectionId + Send + Sync + 'static> {
        let rng = Mutex::new(self.rng("quic-initial-cid"));
        Arc::new(move || {
            let mut bytes = [0u8; 16];
            rng.lock()
                .unwrap_or_else(|e| e.into_inner())
                .fill_bytes(&mut bytes);
            quinn::ConnectionId::new(&bytes)
        })
    }

    /// ring's provider with libp2p's TLS 1.3 suites, X25519 only, and seeded randomness. rustls
    /// wants `'static` parts: each simulated node start leaks two small RNGs, which a real
    /// node never does.
    fn provider(&self, side: &str) -> Arc<CryptoProvider> {
        let random: &'static SeededRandom = Box::leak(Box::new(SeededRandom(Mutex::new(
            self.rng(&format!("{side}-random")),
        ))));
        let x25519: &'static SeededX25519 = Box::leak(Box::new(SeededX25519(Mutex::new(
            self.rng(&format!("{side}-x25519")),
        ))));
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ];
        provider.kx_groups = vec![x25519];
        provider.secure_random = random;
        Arc::new(provider)
    }

    /// A self-signed Ed25519 certificate with the libp2p extension, its key from the seed.
    /// Given to rustls as a resolver rather than a "single cert", which would have webpki
    /// parse it and refuse the (critical) libp2p extension it does not know.
    fn certified_key(
        &self,
        provider: &CryptoProvider,
        identity: &Keypair,
        purpose: &str,
    ) -> Result<Arc<SingleCertAndKey>, rustls::Error> {
        let general = |e: &dyn std::fmt::Display| rustls::Error::General(e.to_string());
        // PKCS#8 v1 (RFC 8410) for an Ed25519 key: a fixed prefix, then the 32-byte seed.
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&self.derive(purpose));
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| general(&e))?;

        let mut message = P2P_SIGNING_PREFIX.to_vec();
        message.extend_from_slice(&key.public_key_der());
        let signature = identity.sign(&message).map_err(|e| general(&e))?;
        let content = der_sequence(&[
            &der_octet_string(&identity.public().encode_protobuf()),
            &der_octet_string(&signature),
        ]);
        let mut extension = rcgen::CustomExtension::from_oid_content(&P2P_EXT_OID, content);
        extension.set_criticality(true);

        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.custom_extensions.push(extension);
        let certificate = params.self_signed(&key).map_err(|e| general(&e))?;
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(pkcs8))?;
        Ok(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            vec![certificate.into()],
            key,
        ))))
    }
}

fn der_length(length: usize, out: &mut Vec<u8>) {
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    der_length(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

fn der_sequence(items: &[&[u8]]) -> Vec<u8> {
    let length = items.iter().map(|i| i.len()).sum();
    let mut out = vec![0x30];
    der_length(length, &mut out);
    for item in items {
        out.extend_from_slice(item);
    }
    out
}

#[derive(Debug)]
struct FixedClock;

impl rustls::time_provider::TimeProvider for FixedClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(FIXED_TIME))
    }
}

/// quinn's clock for address-validation tokens, fixed like [`FixedClock`].
pub(crate) struct FixedTokenClock;

impl quinn::TimeSource for FixedTokenClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + FIXED_TIME
    }
}

#[derive(Debug)]
struct SeededRandom(Mutex<StdRng>);

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill_bytes(buf);
        Ok(())
    }
}

#[derive(Debug)]
struct SeededX25519(Mutex<StdRng>);

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut secret = [0u8; 32];
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill_bytes(&mut secret);
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Box::new(X25519Share { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Share {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl ActiveKeyExchange for X25519Share {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer_pub_key
            .try_into()
            .map_err(|_| rustls::PeerMisbehaved::InvalidKeyShare)?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// The libp2p certificate rule, for both sides of a handshake.
#[derive(Debug)]
struct PeerCertificate;

/// Certificates that passed the libp2p rule, by their exact DER bytes, process-wide.
///
/// Why: checking the rule costs an Ed25519 verification (the identity key's signature over the
/// certificate key), rustls asks twice per handshake side, and a simulated operation makes
/// hundreds of handshakes among a few dozen seeded certificates: these checks were a few
/// percent of its CPU. The result depends only on the bytes, which a hit compares in full.
/// Bounded; starts over when full.
static VERIFIED: LazyLock<Mutex<HashMap<Vec<u8>, PeerId>>> = LazyLock::new(Default::default);
const VERIFIED_MAX: usize = 1024;

impl PeerCertificate {
    fn verify(
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
    ) -> Result<PeerId, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let der: &[u8] = end_entity.as_ref();
        let remembered = |v: &HashMap<Vec<u8>, PeerId>| v.get(der).copied();
        if let Some(peer) = remembered(&VERIFIED.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(peer);
        }
        let peer = libp2p_tls::certificate::parse(end_entity)?.peer_id();
        let mut verified = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(der.to_vec(), peer);
        Ok(peer)
    }

    /// The handshake signature, by the key of a certificate that passes the libp2p rule
    /// (checked again here: rustls does not promise to call the certificate check first).
    fn verify_signature(
        message: &[u8],
        certificate: &CertificateDer,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::verify(certificate, &[])?;
        // webpki would refuse the certificate itself (the libp2p extension is critical and
        // unknown to it), so it gets only the key.
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let key = SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw);
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &key,
            signed,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn schemes() -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _server_name: &ServerName,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::verify(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::verify_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for PeerCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::verify(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::verify_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

/// Connection ids drawn from the node's seed (simulation only, with
/// [`LinkConfig::rng_seed`]). quinn's default draws them from the OS, and they decide more than
/// names: a peer that closes a connection during its handshake sends an Initial under our id,
/// and when we have already dropped that connection the packet looks like a new one, whose
/// keys come from that id. Whether such a packet is dropped at once or starts (and fails) a
/// connection attempt then varied from process to process, and with it libp2p's connection
/// numbering, so a seed did not replay.
pub(crate) struct SeededCids {
    rng: StdRng,
}

impl SeededCids {
    const LEN: usize = 8;

    pub(crate) fn new(seed: Seed) -> Self {
        Self {
            rng: seed.rng("quic-connection-ids"),
        }
    }
}

impl quinn::ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut bytes = [0u8; Self::LEN];
        self.rng.fill_bytes(&mut bytes);
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_of(seed: Seed, identity: &Keypair) -> CertificateDer<'static> {
        let provider = seed.provider("test");
        let certified = seed
            .certified_key(&provider, identity, "test-certificate")
            .expect("certificate");
        let resolver: &dyn rustls::client::ResolvesClientCert = certified.as_ref();
        resolver
            .resolve(&[], &[SignatureScheme::ED25519])
            .expect("a certificate")
            .cert[0]
            .clone()
    }

    #[test]
    fn a_seeded_certificate_proves_the_identity_and_is_the_same_for_a_seed() {
        let identity = Keypair::generate_ed25519();
        let seed = Seed::new([7; 32]);
        let first = certificate_of(seed, &identity);
        let parsed = libp2p_tls::certificate::parse(&first).expect("a libp2p certificate");
        assert_eq!(parsed.peer_id(), identity.public().to_peer_id());
        assert_eq!(
            first,
            certificate_of(seed, &identity),
            "same seed, same bytes"
        );
        assert_ne!(first, certificate_of(Seed::new([8; 32]), &identity));
    }

    #[test]
    fn a_tampered_certificate_is_refused() {
        let seed = Seed::new([7; 32]);
        let identity = Keypair::generate_ed25519();
        let genuine = certificate_of(seed, &identity);
        // Verified once, so remembered: the forgery must not ride on that.
        let peer = PeerCertificate::verify(&genuine, &[]).expect("genuine");
        assert_eq!(peer, identity.public().to_peer_id());
        let mut bytes = genuine.to_vec();
        // One byte of the identity's signature in the libp2p extension, which ends the signed
        // part, just before the certificate's algorithm (7 bytes) and signature (67).
        let at = bytes.len() - 74 - 10;
        bytes[at] ^= 0x01;
        let forged = CertificateDer::from(bytes);
        assert!(PeerCertificate::verify(&forged, &[]).is_err());
    }

    #[test]
    fn the_handshake_must_be_signed_by_the_certificates_key() {
        let seed = Seed::new([9; 32]);
        let identity = Keypair::generate_ed25519();
        let provider = seed.provider("test");
        let certified = seed
            .certified_key(&provider, &identity, "test-certificate")
            .expect("certificate");
        let resolver: &dyn rustls::client::ResolvesClientCert = certified.as_ref();
        let key = resolver
            .resolve(&[], &[SignatureScheme::ED25519])
            .expect("a certificate");
        let signer = key
            .key
            .choose_scheme(&[SignatureScheme::ED25519])
            .expect("ed25519");
        let signature = signer.sign(b"transcript").expect("signed");
        // rustls builds these only by parsing: scheme, then a u16-length-prefixed signature.
        let mut wire = vec![0x08, 0x07];
        wire.extend_from_slice(&(signature.len() as u16).to_be_bytes());
        wire.extend_from_slice(&signature);
        let signed = <DigitallySignedStruct as rustls::internal::msgs::codec::Codec>::read(
            &mut rustls::internal::msgs::codec::Reader::init(&wire),
        )
        .expect("a signed struct");
        let certificate = &key.cert[0];
        PeerCertificate::verify_signature(b"transcript", certificate, &signed).unwrap();
        assert!(PeerCertificate::verify_signature(b"transcripT", certificate, &signed).is_err());
        let other = certificate_of(Seed::new([10; 32]), &identity);
        assert!(PeerCertificate::verify_signature(b"transcript", &other, &signed).is_err());
    }

    #[test]
    fn seeded_streams_differ_by_purpose() {
        let seed = Seed::new([1; 32]);
        assert_ne!(seed.derive("a"), seed.derive("b"));
        assert_eq!(seed.derive("a"), Seed::new([1; 32]).derive("a"));
    }
}
