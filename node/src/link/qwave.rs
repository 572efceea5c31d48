//! Voice QoS on Windows, through the QoS2 API (qWAVE, `qwave.dll`).
//!
//! Windows ignores `IP_TOS` from applications, so the Linux way of marking ([`super::dscp`])
//! marks nothing there. qWAVE marks for us: a socket added to a *voice* flow leaves with DSCP
//! 56 (CS7), which every WMM access point still puts in its voice queue (the mark's top three
//! bits), and with the exact DSCP asked for (46, Expedited Forwarding) when the process may
//! set it (`QOSSetOutgoingDSCPValue` takes an administrator or a Network Configuration
//! Operator). An unconnected UDP socket joins a flow per destination, so each destination is
//! added the first time a datagram goes to it; all of them share one non-adaptive flow.
//! Where qWAVE is missing (Windows Server without the Quality Windows Audio Video Experience
//! service, Wine) datagrams leave unmarked and the log says so once.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::windows::io::AsRawSocket;
use std::sync::Mutex;
use windows_sys::Win32::Foundation::{GetLastError, HANDLE};
use windows_sys::Win32::NetworkManagement::QoS::{
    QOSAddSocketToFlow, QOSCloseHandle, QOSCreateHandle, QOSSetFlow, QOSSetOutgoingDSCPValue,
    QOSTrafficTypeAudioVideo, QOSTrafficTypeBackground, QOSTrafficTypeVoice, QOS_NON_ADAPTIVE_FLOW,
    QOS_TRAFFIC_TYPE, QOS_VERSION,
};
use windows_sys::Win32::Networking::WinSock::SOCKET;

/// Destinations one socket adds to its flow at most: a relay's members and their ports. Past
/// this, new destinations leave unmarked rather than grow the table without bound.
const MAX_DESTINATIONS: usize = 4096;

/// The qWAVE traffic type whose mark is nearest `dscp` from below (qWAVE marks 8, 40 or 56).
fn traffic_type(dscp: u8) -> Option<QOS_TRAFFIC_TYPE> {
    match dscp {
        0 => None,
        1..=39 => Some(QOSTrafficTypeBackground),
        40..=45 => Some(QOSTrafficTypeAudioVideo),
        _ => Some(QOSTrafficTypeVoice),
    }
}

/// One socket's voice flow. See the module documentation.
#[derive(Debug)]
pub(super) struct QosFlow {
    /// The qWAVE handle (a `HANDLE`, kept as an integer so the flow is `Send` and `Sync`).
    handle: usize,
    socket: SOCKET,
    ipv6_socket: bool,
    dscp: u8,
    traffic: QOS_TRAFFIC_TYPE,
    state: Mutex<FlowState>,
}

#[derive(Debug, Default)]
struct FlowState {
    /// 0 until the first destination made the flow.
    flow_id: u32,
    added: HashSet<SocketAddr>,
    /// Cleared when qWAVE refused the first destination: nothing is tried again.
    refused: bool,
}

impl QosFlow {
    /// A flow for `socket`'s datagrams marked `dscp`, `None` where qWAVE is not available.
    /// `socket` must outlive the flow (the link socket keeps both).
    pub(super) fn new(socket: &UdpSocket, dscp: u8) -> Option<Self> {
        let traffic = traffic_type(dscp)?;
        let version = QOS_VERSION {
            MajorVersion: 1,
            MinorVersion: 0,
        };
        let mut handle: HANDLE = std::ptr::null_mut();
        // SAFETY: both pointers are to live locals of the types the function takes.
        if unsafe { QOSCreateHandle(&version, &mut handle) } == 0 {
            // SAFETY: reads this thread's last error, set by the call above.
            let error = unsafe { GetLastError() };
            tracing::info!(
                error,
                "voice QoS: Windows' QoS service (qWAVE) is not available; voice leaves unmarked"
            );
            return None;
        }
        Some(Self {
            handle: handle as usize,
            socket: socket.as_raw_socket() as SOCKET,
            ipv6_socket: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
            dscp,
            traffic,
            state: Mutex::default(),
        })
    }

    /// Adds `destination` to the flow the first time a datagram goes to it (one look-up in a
    /// set afterwards).
    pub(super) fn reach(&self, destination: SocketAddr) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.refused
            || state.added.len() >= MAX_DESTINATIONS
            || !state.added.insert(destination)
        {
            return;
        }
        let address = socket2::SockAddr::from(match destination {
            SocketAddr::V4(v4) if self.ipv6_socket => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        });
        let first = state.flow_id == 0;
        let mut flow_id = state.flow_id;
        // SAFETY: `address` is a live socket address of its stated length, `flow_id` a live
        // u32, the handle open until drop, and the socket open as long as this flow.
        let added = unsafe {
            QOSAddSocketToFlow(
                self.handle as HANDLE,
                self.socket,
                address.as_ptr().cast(),
                self.traffic,
                QOS_NON_ADAPTIVE_FLOW,
                &mut flow_id,
            )
        } != 0;
        if !added {
            // SAFETY: reads this thread's last error, set by the call above.
            let error = unsafe { GetLastError() };
            if first {
                state.refused = true;
                tracing::info!(
                    error,
                    "voice QoS: qWAVE refused the voice flow; voice leaves unmarked"
                );
            } else {
                tracing::debug!(error, %destination, "voice QoS: qWAVE refused a destination");
            }
            return;
        }
        state.flow_id = flow_id;
        if first {
            let dscp = u32::from(self.dscp);
            // SAFETY: `dscp` is a live u32 of the size passed; no overlapped I/O.
            let exact = unsafe {
                QOSSetFlow(
                    self.handle as HANDLE,
                    flow_id,
                    QOSSetOutgoingDSCPValue,
                    std::mem::size_of::<u32>() as u32,
                    (&dscp as *const u32).cast(),
                    0,
                    std::ptr::null_mut(),
                )
            } != 0;
            if exact {
                tracing::info!(dscp = self.dscp, "voice QoS: qWAVE marks voice");
            } else {
                tracing::info!(
                    asked = self.dscp,
                    "voice QoS: qWAVE marks voice with its voice class (DSCP 56); the exact DSCP \
                     takes administrator rights or a Policy-based QoS rule"
                );
            }
        }
    }
}

impl Drop for QosFlow {
    fn drop(&mut self) {
        // SAFETY: the handle came from QOSCreateHandle and is closed once; closing it ends
        // the flow and removes the socket from it.
        unsafe {
            QOSCloseHandle(self.handle as HANDLE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dscp_takes_the_nearest_traffic_type_below() {
        assert_eq!(traffic_type(0), None);
        assert_eq!(traffic_type(8), Some(QOSTrafficTypeBackground));
        assert_eq!(traffic_type(40), Some(QOSTrafficTypeAudioVideo));
        assert_eq!(traffic_type(46), Some(QOSTrafficTypeVoice));
        assert_eq!(traffic_type(56), Some(QOSTrafficTypeVoice));
    }

    #[test]
    fn a_socket_without_qwave_or_with_it_sends_either_way() {
        // Under Wine qWAVE is a stub (no flow); on Windows the flow takes the destination.
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let flow = QosFlow::new(&sender, 46);
        if let Some(flow) = &flow {
            flow.reach(receiver.local_addr().unwrap());
            flow.reach(receiver.local_addr().unwrap());
            assert!(flow.state.lock().unwrap().added.len() == 1);
        }
        sender
            .send_to(b"voice", receiver.local_addr().unwrap())
            .unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(receiver.recv(&mut buf).unwrap(), 5);
    }
}
