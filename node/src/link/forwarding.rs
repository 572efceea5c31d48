//! A rented relay's fast path: enveloped voice that arrives on the voice plane is forwarded
//! where it is opened, in the socket's receive context, instead of crossing to the node's task
//! and the member first.
//!
//! Why: at 20 ms a packet, each crossing woke the node's task, ran the member's upkeep and its
//! timer over every linked peer, and only then sealed the copies: per packet, tens of
//! microseconds and a wake-up's latency before the first copy left. The decision is the same
//! as the member's: both paths go through the one [`Forwarder`](callsign_mesh::forward::Forwarder)
//! (shared; one rate, replay window and set of counters per sender), checked against the
//! charter the member last published ([`ForwardView`]). Until the first view arrives, and for
//! whatever arrives as QUIC datagrams, the member's path forwards.

use super::links::{CopySender, Links};
use super::plane::PlaneStats;
use bytes::Bytes;
use callsign_mesh::forward::{envelope, lock, open_envelope, ForwardView, SharedForwarder};
use libp2p::PeerId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Forwarding-latency buckets: powers of two microseconds, 1 µs to 32 ms and above.
pub const LATENCY_BUCKETS: usize = 16;

/// How long forwarded packets took from arrival at the link layer to their last copy handed to
/// the kernel, whichever path forwarded them.
#[derive(Debug, Default)]
pub struct ForwardLatency {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_us: AtomicU64,
}

impl ForwardLatency {
    /// A packet that arrived at `received_at` has all its copies sent.
    pub fn record(&self, received_at: Instant) {
        let spent = tokio::time::Instant::now()
            .into_std()
            .saturating_duration_since(received_at);
        let us = spent.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Packets per bucket (bucket `i` holds latencies below 2^i µs), and the sum in µs.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let buckets = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        (buckets, self.sum_us.load(Ordering::Relaxed))
    }
}

/// See the module documentation.
pub(crate) struct PlaneForwarder {
    forwarder: SharedForwarder,
    view: Mutex<Option<Arc<ForwardView>>>,
    copies: CopySender,
    latency: Arc<ForwardLatency>,
}

impl PlaneForwarder {
    pub(super) fn new(
        forwarder: SharedForwarder,
        copies: CopySender,
        latency: Arc<ForwardLatency>,
    ) -> Self {
        Self {
            forwarder,
            view: Mutex::new(None),
            copies,
            latency,
        }
    }

    pub(super) fn set_view(&self, view: Arc<ForwardView>) {
        *super::plane::lock(&self.view) = Some(view);
    }

    /// Forwards `payload` (an opened plane datagram's application payload) from `peer` if it is
    /// enveloped voice and a view is installed; false leaves it to the node.
    pub(super) fn forward(
        &self,
        peer: &PeerId,
        payload: &[u8],
        received_at: Instant,
        plane: &PlaneStats,
    ) -> bool {
        let Some(packet) = open_envelope(payload) else {
            return false;
        };
        let Some(view) = super::plane::lock(&self.view).clone() else {
            return false;
        };
        let copies = view.forward(&mut lock(&self.forwarder), peer, packet, received_at);
        let Ok(copies) = copies else {
            // Refused and counted by reason in the forwarder, as on the member's path.
            return true;
        };
        // A subscriber whose link just went is simply skipped.
        if !copies.plain.is_empty() {
            let frame = Links::frame_datagram(packet);
            self.copies.send(&copies.plain, &frame, plane);
        }
        if !copies.enveloped.is_empty() {
            let frame: Bytes = Links::frame_datagram(&envelope(packet));
            self.copies.send(&copies.enveloped, &frame, plane);
        }
        self.latency.record(received_at);
        true
    }
}
