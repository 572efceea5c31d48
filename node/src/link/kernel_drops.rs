//! Datagrams the kernel dropped for a socket before anyone read them: its receive buffer was
//! full (a flood, or a reader held up). The node never sees these, so its own counters cannot
//! tell an operator about them; Linux counts them per socket, in the last column (`drops`) of
//! `/proc/net/udp` and `/proc/net/udp6`, on the line with the socket's inode.
//!
//! Read when counters are snapshot (a relay: once a second), never per datagram.
//!
//! Other systems keep no per-socket count an unprivileged process can read (Windows has only
//! system-wide UDP error totals), so there [`KernelDrops::of`] answers `None` and the count
//! stays 0: "not on this platform", not "nothing dropped".

use std::net::UdpSocket;

/// Where to find one socket's kernel drop count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelDrops {
    #[cfg(target_os = "linux")]
    inode: u64,
}

impl KernelDrops {
    /// For `socket` (or a duplicate of it: both name one socket, one inode); `None` off Linux
    /// or if `fstat` fails.
    #[cfg(target_os = "linux")]
    pub(crate) fn of(socket: &UdpSocket) -> Option<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: fstat on a descriptor we borrow, into a zeroed stat it fills.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(socket.as_raw_fd(), &mut stat) } != 0 {
            return None;
        }
        Some(Self {
            inode: stat.st_ino as u64,
        })
    }

    /// Not on this platform (see the module documentation).
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn of(_socket: &UdpSocket) -> Option<Self> {
        None
    }

    /// The socket's drops so far; `None` if no table lists it (it is closed, or `/proc` is not
    /// mounted).
    #[cfg(target_os = "linux")]
    pub(crate) fn read(&self) -> Option<u64> {
        ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
            let table = std::fs::read_to_string(path).ok()?;
            drops_in(&table, self.inode)
        })
    }

    /// Never made off Linux.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn read(&self) -> Option<u64> {
        None
    }
}

/// The `drops` column of the row whose `inode` column is `inode`, in a `/proc/net/udp` table
/// (a header line, then per socket: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode
/// ref pointer drops`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn drops_in(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let columns: Vec<&str> = row.split_whitespace().collect();
        if columns.len() < 13 || columns[9].parse::<u64>().ok()? != inode {
            return None;
        }
        columns.last()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_found_by_its_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20 371: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4411 2 0000000000000000 0\n\
            \x20 372: 0100007F:A1B3 00000000:0000 07 00000000:00034000 00:00000000 00000000     0        0 4412 2 0000000000000000 17\n";
        assert_eq!(drops_in(table, 4412), Some(17));
        assert_eq!(drops_in(table, 4411), Some(0));
        assert_eq!(drops_in(table, 9), None);
        assert_eq!(drops_in("header only\n", 4412), None);
        assert_eq!(drops_in("h\n short row 4412\n", 4412), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_socket_that_is_not_read_counts_what_the_kernel_dropped() {
        let quiet = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket2 = socket2::SockRef::from(&quiet);
        socket2.set_recv_buffer_size(4096).unwrap();
        let drops = KernelDrops::of(&quiet).unwrap();
        assert_eq!(drops.read(), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            sender
                .send_to(&[0u8; 200], quiet.local_addr().unwrap())
                .unwrap();
        }
        // The buffer holds a few datagrams; the kernel dropped the rest.
        assert!(drops.read().unwrap() > 100, "{:?}", drops.read());
        // A duplicate descriptor is the same socket.
        let twin = quiet.try_clone().unwrap();
        assert_eq!(KernelDrops::of(&twin).unwrap().read(), drops.read());
    }
}
