//! QUIC settings and the TLS glue: libp2p-tls certificates carry the PeerId, so each side of a
//! handshake verifies the other's identity; dials pin the PeerId they expect.

use super::LinkError;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::rustls::pki_types::CertificateDer;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use std::sync::Arc;
use std::time::Duration;

/// Link settings.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Ping frames sent on an otherwise idle connection (keeps NAT mappings open too).
    pub keep_alive: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// A handshake that takes longer fails.
    pub handshake_timeout: Duration,
    /// Incoming datagrams buffered per connection before the oldest are dropped.
    pub datagram_receive_buffer: usize,
    /// Incoming datagrams queued for the application (all peers) before new ones are dropped.
    pub datagram_queue: usize,
    /// Seeds quinn's endpoint RNG (connection ids, packet-number skipping, path challenges) so
    /// a simulated run replays exactly. `None` (the default, and the only safe choice on a
    /// real network) draws from the OS.
    pub rng_seed: Option<[u8; 32]>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            datagram_receive_buffer: 256 * 1024,
            datagram_queue: 4096,
            rng_seed: None,
        }
    }
}

impl LinkConfig {
    pub(crate) fn endpoint(&self) -> quinn::EndpointConfig {
        let mut endpoint = quinn::EndpointConfig::default();
        endpoint.rng_seed(self.rng_seed);
        if let Some(seed) = self.rng_seed {
            endpoint.cid_generator(move || Box::new(SeededCids::new(seed)));
        }
        endpoint
    }

    fn transport(&self) -> Result<Arc<TransportConfig>, LinkError> {
        let mut transport = TransportConfig::default();
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        transport.max_concurrent_bidi_streams(VarInt::from_u32(256));
        transport.datagram_receive_buffer_size(Some(self.datagram_receive_buffer));
        transport.datagram_send_buffer_size(self.datagram_receive_buffer);
        transport.keep_alive_interval(Some(self.keep_alive));
        transport.max_idle_timeout(Some(
            IdleTimeout::try_from(self.idle_timeout)
                .map_err(|_| LinkError::Config("idle timeout too large".into()))?,
        ));
        transport.allow_spin(false);
        Ok(Arc::new(transport))
    }

    pub(crate) fn server(&self, keypair: &Keypair) -> Result<quinn::ServerConfig, LinkError> {
        let tls = libp2p_tls::make_server_config(keypair)
            .map_err(|e| LinkError::Config(format!("tls certificate: {e}")))?;
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| LinkError::Config(format!("tls for quic: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(self.transport()?);
        // Peers roam (Wi-Fi to wired, NAT rebinding); migration keeps the link.
        server.migration(true);
        Ok(server)
    }

    /// A client config that accepts any peer's libp2p certificate; the dialer compares the
    /// proven peer id with the one it dialed ([`remote_peer_id`]).
    pub(crate) fn client(&self, keypair: &Keypair) -> Result<quinn::ClientConfig, LinkError> {
        let tls = libp2p_tls::make_client_config(keypair, None)
            .map_err(|e| LinkError::Config(format!("tls certificate: {e}")))?;
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| LinkError::Config(format!("tls for quic: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport()?);
        Ok(client)
    }
}

/// The PeerId proven by the remote's certificate.
pub(crate) fn remote_peer_id(connection: &quinn::Connection) -> Result<PeerId, LinkError> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| LinkError::Handshake("peer presented no certificate".into()))?;
    let certificates = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| LinkError::Handshake("unexpected certificate type".into()))?;
    let first = certificates
        .first()
        .ok_or_else(|| LinkError::Handshake("empty certificate chain".into()))?;
    let certificate = libp2p_tls::certificate::parse(first)
        .map_err(|e| LinkError::Handshake(format!("bad libp2p certificate: {e}")))?;
    Ok(certificate.peer_id())
}

/// Connection ids drawn from the node's seed (simulation only, with
/// [`LinkConfig::rng_seed`]). quinn's default draws them from the OS, and they decide more than
/// names: a peer that closes a connection during its handshake sends an Initial under our id,
/// and when we have already dropped that connection the packet looks like a new one, whose
/// keys come from that id. Whether such a packet is dropped at once or starts (and fails) a
/// connection attempt then varied from process to process, and with it libp2p's connection
/// numbering, so a seed did not replay.
struct SeededCids {
    rng: rand::rngs::StdRng,
}

impl SeededCids {
    const LEN: usize = 8;

    fn new(mut seed: [u8; 32]) -> Self {
        // Another stream than the endpoint RNG's, which draws from the same seed.
        seed[31] ^= 0xc1;
        Self {
            rng: rand::SeedableRng::from_seed(seed),
        }
    }
}

impl quinn::ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut bytes = [0u8; Self::LEN];
        rand::RngCore::fill_bytes(&mut self.rng, &mut bytes);
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}
