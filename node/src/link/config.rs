//! QUIC settings and the TLS glue: libp2p-tls certificates carry the PeerId, so each side of a
//! handshake verifies the other's identity; dials pin the PeerId they expect.

use super::seeded::{FixedTokenClock, Seed, SeededCids};
use super::window::VoiceWindowConfig;
use super::LinkError;
use callsign_mesh::rate::Rate;
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
    /// `keep_alive` on links this node dials to its org's rented relays
    /// ([`super::Links::set_rented_relay`]). Such a link needs QUIC's pings only to stay open:
    /// the relay's plane heartbeats tell this end it is alive, and this end's periodic presence
    /// on the plane tells the relay and keeps the NAT mapping. Each ping costs the relay two
    /// wake-ups, a receive and an acknowledgement; at one every 5 s they were 4 % of its CPU
    /// while it forwarded a talker to 100 members.
    pub relay_keep_alive: Duration,
    /// `idle_timeout` on those links (QUIC takes the smaller of the two ends').
    pub relay_idle_timeout: Duration,
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
    /// Bytes per second the congestion window always allows, however lossy the path
    /// (`link::window`): enough for about twenty voice streams.
    pub min_send_rate: u64,
    /// A relay's promise to its peers (`link::plane`, `link::heartbeat`): a voice-plane
    /// heartbeat on every link it has sent nothing on for the promised gap, so they notice
    /// within a few of these that it is gone. `None` for members.
    pub plane_heartbeat: Option<super::Heartbeat>,
    /// Streams a peer may have open to us at once. quinn keeps state for each from the start
    /// (about 80 bytes), so a relay with a thousand links takes fewer.
    pub max_streams: u32,
    /// Voice-plane datagrams each link may send us, checked before they are decrypted
    /// (`link::plane`). `None`: no limit.
    pub plane_rate: Option<Rate>,
    /// QUIC Initial packets each source address may send us, checked before quinn sees them
    /// (`link::socket`). `None`: no limit.
    pub handshake_rate: Option<Rate>,
    /// A parked link (`Links::park`: QUIC closed, the voice plane kept) whose peer sent nothing
    /// on the plane for this long is down. The end without a heartbeat of its own (a member)
    /// sends one on a parked link every third of it, so its peer (a relay, which beats anyway)
    /// hears it and its NAT keeps the mapping.
    pub parked_silence: Duration,
    /// QUIC connections open at once (dialed and accepted); a handshake that would pass it is
    /// refused at once, and the peer dials again later. `None`: no limit.
    pub max_connections: Option<usize>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            relay_keep_alive: Duration::from_secs(20),
            relay_idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            datagram_receive_buffer: 256 * 1024,
            datagram_queue: 4096,
            rng_seed: None,
            min_send_rate: 125_000,
            plane_heartbeat: None,
            max_streams: 256,
            plane_rate: None,
            handshake_rate: None,
            parked_silence: Duration::from_secs(30),
            max_connections: None,
        }
    }
}

impl LinkConfig {
    pub(crate) fn endpoint(&self) -> quinn::EndpointConfig {
        let mut endpoint = quinn::EndpointConfig::default();
        endpoint.rng_seed(self.rng_seed);
        // Every QUIC packet to us keeps the fixed bit, so a datagram with it clear is the voice
        // plane's or a probe (`link::socket`), never QUIC.
        endpoint.grease_quic_bit(false);
        if let Some(seed) = self.seed() {
            endpoint.cid_generator(move || Box::new(SeededCids::new(seed)));
            endpoint.reset_key(seed.reset_key());
        }
        endpoint
    }

    fn transport(&self) -> Result<Arc<TransportConfig>, LinkError> {
        self.transport_with(self.keep_alive, self.idle_timeout)
    }

    fn transport_with(
        &self,
        keep_alive: Duration,
        idle_timeout: Duration,
    ) -> Result<Arc<TransportConfig>, LinkError> {
        let mut transport = TransportConfig::default();
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        transport.max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams));
        transport.datagram_receive_buffer_size(Some(self.datagram_receive_buffer));
        transport.datagram_send_buffer_size(self.datagram_receive_buffer);
        transport.keep_alive_interval(Some(keep_alive));
        transport.max_idle_timeout(Some(
            IdleTimeout::try_from(idle_timeout)
                .map_err(|_| LinkError::Config("idle timeout too large".into()))?,
        ));
        transport.allow_spin(false);
        transport
            .congestion_controller_factory(Arc::new(VoiceWindowConfig::new(self.min_send_rate)));
        Ok(Arc::new(transport))
    }

    fn seed(&self) -> Option<Seed> {
        self.rng_seed.map(Seed::new)
    }

    pub(crate) fn server(&self, keypair: &Keypair) -> Result<quinn::ServerConfig, LinkError> {
        let tls = match self.seed() {
            Some(seed) => seed.tls_server(keypair).map_err(|e| e.to_string()),
            None => libp2p_tls::make_server_config(keypair).map_err(|e| e.to_string()),
        }
        .map_err(|e| LinkError::Config(format!("tls certificate: {e}")))?;
        let crypto = Arc::new(
            QuicServerConfig::try_from(tls)
                .map_err(|e| LinkError::Config(format!("tls for quic: {e}")))?,
        );
        let mut server = match self.seed() {
            Some(seed) => {
                let mut server = quinn::ServerConfig::new(crypto, seed.token_key());
                server.time_source(Arc::new(FixedTokenClock));
                server
            }
            None => quinn::ServerConfig::with_crypto(crypto),
        };
        server.transport_config(self.transport()?);
        // Peers roam (Wi-Fi to wired, NAT rebinding); migration keeps the link.
        server.migration(true);
        Ok(server)
    }

    /// A client config that accepts any peer's libp2p certificate; the dialer compares the
    /// proven peer id with the one it dialed ([`remote_peer_id`]).
    pub(crate) fn client(&self, keypair: &Keypair) -> Result<quinn::ClientConfig, LinkError> {
        let tls = match self.seed() {
            Some(seed) => seed.tls_client(keypair).map_err(|e| e.to_string()),
            None => libp2p_tls::make_client_config(keypair, None).map_err(|e| e.to_string()),
        }
        .map_err(|e| LinkError::Config(format!("tls certificate: {e}")))?;
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| LinkError::Config(format!("tls for quic: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport()?);
        if let Some(seed) = self.seed() {
            client.initial_dst_cid_provider(seed.initial_cids());
        }
        Ok(client)
    }

    /// `client` (from [`LinkConfig::client`]) for dials to a rented relay: the same TLS, with
    /// [`LinkConfig::relay_keep_alive`] and [`LinkConfig::relay_idle_timeout`].
    pub(crate) fn client_to_relay(
        &self,
        client: &quinn::ClientConfig,
    ) -> Result<quinn::ClientConfig, LinkError> {
        let mut client = client.clone();
        client
            .transport_config(self.transport_with(self.relay_keep_alive, self.relay_idle_timeout)?);
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
