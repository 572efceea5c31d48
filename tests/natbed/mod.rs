//! A NAT test bed of real kernel parts: Linux network namespaces joined by veth pairs to a
//! bridge that plays the internet, and nftables NAT in each home router's namespace. Hosts run
//! real `callsign up` processes.
//!
//! Addresses come only from the documentation ranges: the internet is 198.51.100.0/24, each
//! home network a /28 of 203.0.113.0/24.
//!
//! A home router may also run miniupnpd (Debian's `miniupnpd-nftables`: UPnP IGD, NAT-PMP and
//! PCP), which maps ports on request ([`Bed::host_mapping`]). miniupnpd refuses to map
//! when its WAN address is in a reserved range, which the documentation ranges are, unless a
//! STUN check shows nothing filters in front of it; the bed's internet therefore answers STUN
//! binding requests at 198.51.100.2:3478 (a few lines below, from a thread inside the
//! internet's namespace). Every namespace is named after this process, and
//! everything (processes, namespaces and the veths in them) is removed on drop, also when a
//! test fails. Needs root, `ip` (iproute2) and `nft` (nftables); [`Bed::new`] says why not.

pub mod squad;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the bed's internet answers STUN (for miniupnpd's own reachability check).
const STUN_SERVER: &str = "198.51.100.2";

/// How a host reaches the internet (RFC 4787 terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// On the bridge with a public address.
    Public,
    /// Endpoint-independent mapping and filtering: anyone may send to a mapped port.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering: Linux masquerade,
    /// most home routers.
    PortRestricted,
    /// Endpoint-dependent mapping (a new port per destination): masquerade with random ports.
    Symmetric,
}

/// What a home router running miniupnpd does when asked to map a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Maps {
    /// Maps over UPnP IGD, NAT-PMP and PCP.
    Upnp,
    /// Maps over NAT-PMP and PCP only (UPnP off, as on Apple's routers).
    NatPmpOnly,
    /// Answers every protocol and refuses every mapping (its firewall will not take one).
    Refuses,
}

/// A host of the bed: the namespace it lives in and its own address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Where the internet sees it: its router's WAN address (its own when public).
    pub public: Ipv4Addr,
}

/// The bed. Dropping it stops every process started in it and deletes its namespaces.
pub struct Bed {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    next: u8,
    /// miniupnpd configurations and logs.
    scratch: tempfile::TempDir,
    /// Stops the STUN responder, once one runs.
    stun: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    /// IPv6 beside IPv4: the internet is 2001:db8::/64 (routed by its namespace), home
    /// network `i` is 2001:db8:i::/64.
    ipv6: bool,
}

static BEDS: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<(), String> {
    run_input(args, None)
}

fn run_input(args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut command = Command::new(args[0]);
    command
        .args(&args[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Bed {
    /// Whether this machine can host a bed: root, `ip` (iproute2) and `nft` (nftables).
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the NAT test bed needs root (network namespaces)".into());
        }
        for tool in ["ip", "nft"] {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(tool).exists());
            if !found {
                return Err(format!(
                    "the NAT test bed needs `{tool}` (scripts/setup installs it)"
                ));
            }
        }
        Ok(())
    }

    /// A new, empty internet; `Err` says why this machine cannot host one (not root, no
    /// `ip` or `nft`).
    pub fn new() -> Result<Self, String> {
        Self::available()?;
        let prefix = format!(
            "cs{}x{}",
            std::process::id() % 100_000,
            BEDS.fetch_add(1, Ordering::Relaxed)
        );
        let mut bed = Self {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            next: 0,
            scratch: tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?,
            stun: None,
            ipv6: false,
        };
        let inet = bed.namespace("inet")?;
        bed.ns(&inet, &["ip", "link", "add", "br0", "type", "bridge"])?;
        bed.ns(&inet, &["ip", "link", "set", "br0", "up"])?;
        bed.ns(
            &inet,
            &[
                "ip",
                "addr",
                "add",
                &format!("{STUN_SERVER}/24"),
                "dev",
                "br0",
            ],
        )?;
        Ok(bed)
    }

    /// A bed whose internet and home networks carry IPv6 too (the documentation prefix
    /// 2001:db8::/32): hosts get global addresses, home routers route them with a stateful
    /// firewall and translate only IPv4.
    pub fn dual_stack() -> Result<Self, String> {
        let mut bed = Self::new()?;
        bed.ipv6 = true;
        let inet = format!("{}-inet", bed.prefix);
        bed.ns(&inet, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        bed.ns(
            &inet,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "2001:db8::1/64",
                "dev",
                "br0",
                "nodad",
            ],
        )?;
        Ok(bed)
    }

    /// Gives `dev` in `ns` the IPv6 address `cidr`, usable at once (no duplicate detection).
    fn addr6(&self, ns: &str, cidr: &str, dev: &str) -> Result<(), String> {
        self.ns(ns, &["ip", "-6", "addr", "add", cidr, "dev", dev, "nodad"])
    }

    /// Whether this machine can run a UPnP router in the bed (miniupnpd installed).
    pub fn upnp_available() -> Result<(), String> {
        Self::available()?;
        if Path::new("/usr/sbin/miniupnpd").exists() {
            Ok(())
        } else {
            Err(
                "the UPnP router needs miniupnpd (scripts/setup installs miniupnpd-nftables)"
                    .into(),
            )
        }
    }

    /// Answers STUN binding requests on the internet (started once, stopped on drop).
    fn start_stun(&mut self) -> Result<(), String> {
        if self.stun.is_some() {
            return Ok(());
        }
        let netns = PathBuf::from("/run/netns").join(format!("{}-inet", self.prefix));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let socket = enter_namespace(&netns).and_then(|()| {
                let socket = UdpSocket::bind((STUN_SERVER, 3478))
                    .map_err(|e| format!("STUN socket: {e}"))?;
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
                Ok(socket)
            });
            let socket = match socket {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Some(reply) = stun_binding_response(&buf[..n], from) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }
        });
        ready
            .recv()
            .map_err(|_| "the STUN thread died".to_string())??;
        self.stun = Some((stop, thread));
        Ok(())
    }

    fn namespace(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}-{name}", self.prefix);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        self.ns(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ns(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Plugs `ns` into the internet bridge as `wan` with `addr`.
    fn plug(&mut self, ns: &str, addr: Ipv4Addr) -> Result<(), String> {
        let inet = format!("{}-inet", self.prefix);
        let outside = format!("{}w{}", self.prefix, self.next);
        run(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", "wan", "netns", ns,
        ])?;
        run(&["ip", "link", "set", &outside, "netns", &inet])?;
        self.ns(&inet, &["ip", "link", "set", &outside, "master", "br0"])?;
        self.ns(&inet, &["ip", "link", "set", &outside, "up"])?;
        self.ns(
            ns,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", "wan"],
        )?;
        self.ns(ns, &["ip", "link", "set", "wan", "up"])?;
        if self.ipv6 {
            let wan6 = format!("2001:db8::{:x}", 0x10 + u16::from(self.next));
            self.addr6(ns, &format!("{wan6}/64"), "wan")?;
            self.ns(
                ns,
                &["ip", "-6", "route", "add", "default", "via", "2001:db8::1"],
            )?;
        }
        Ok(())
    }

    /// A host behind `nat` (its own router namespace unless public).
    pub fn host(&mut self, name: &str, nat: Nat) -> Result<Host, String> {
        self.add_host(name, nat, None)
    }

    /// A host behind `nat` whose router runs miniupnpd doing what `maps` says; returns once
    /// the router answers.
    pub fn host_mapping(&mut self, name: &str, nat: Nat, maps: Maps) -> Result<Host, String> {
        Self::upnp_available()?;
        if nat == Nat::Public {
            return Err("a public host has no router".into());
        }
        self.start_stun()?;
        self.add_host(name, nat, Some(maps))
    }

    fn add_host(&mut self, name: &str, nat: Nat, maps: Option<Maps>) -> Result<Host, String> {
        self.next += 1;
        let i = self.next;
        if i > 14 {
            return Err("the bed holds at most 14 hosts".into());
        }
        let public = Ipv4Addr::new(198, 51, 100, 10 + i);
        let host = self.namespace(name)?;
        if nat == Nat::Public {
            self.plug(&host, public)?;
            return Ok(Host {
                ns: host,
                addr: public,
                public,
            });
        }
        let router = self.namespace(&format!("{name}-r"))?;
        self.plug(&router, public)?;
        let gateway = Ipv4Addr::new(203, 0, 113, 16 * i + 1);
        let addr = Ipv4Addr::new(203, 0, 113, 16 * i + 2);
        run(&[
            "ip", "link", "add", "lan", "netns", &router, "type", "veth", "peer", "name", "eth0",
            "netns", &host,
        ])?;
        self.ns(
            &router,
            &["ip", "addr", "add", &format!("{gateway}/28"), "dev", "lan"],
        )?;
        self.ns(&router, &["ip", "link", "set", "lan", "up"])?;
        self.ns(
            &host,
            &["ip", "addr", "add", &format!("{addr}/28"), "dev", "eth0"],
        )?;
        self.ns(&host, &["ip", "link", "set", "eth0", "up"])?;
        self.ns(
            &host,
            &["ip", "route", "add", "default", "via", &gateway.to_string()],
        )?;
        self.ns(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        if self.ipv6 {
            // A /64 per home, routed to the router's WAN address by the internet: the host's
            // global address, behind only its router's firewall.
            let i = u16::from(i);
            let gateway6 = Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1);
            let addr6 = Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 2);
            self.ns(
                &router,
                &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            )?;
            self.addr6(&router, &format!("{gateway6}/64"), "lan")?;
            self.addr6(&host, &format!("{addr6}/64"), "eth0")?;
            self.ns(
                &host,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &gateway6.to_string(),
                ],
            )?;
            let inet = format!("{}-inet", self.prefix);
            self.ns(
                &inet,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    &format!("2001:db8:{i:x}::/64"),
                    "via",
                    &format!("2001:db8::{:x}", 0x10 + i),
                ],
            )?;
        }
        let rules = match nat {
            Nat::PortRestricted => "oifname \"wan\" masquerade".to_string(),
            Nat::Symmetric => "oifname \"wan\" masquerade random".to_string(),
            // Masquerade maps one port per socket (port preserved); whatever arrives on the
            // WAN goes to the one host behind it: endpoint-independent filtering.
            Nat::FullCone => "oifname \"wan\" masquerade".to_string(),
            Nat::Public => unreachable!(),
        };
        let inbound = if nat == Nat::FullCone {
            format!(
                " chain pre {{\n  type nat hook prerouting priority -100;\n  iifname \"wan\" meta l4proto 17 dnat to {addr}\n }}\n"
            )
        } else {
            String::new()
        };
        // Protocols are given by number (17 UDP, 58 ICMPv6): nft resolves names through
        // /etc/protocols, which a minimal system (no `netbase`) does not have.
        // A home router's firewall: from the WAN, only replies (and, behind a full cone, what
        // the NAT maps to the host). Dropping the rest in `input` matters: a stray packet to
        // the router's own port would otherwise leave a conntrack entry that makes the NAT
        // pick another port for the host's next flow (real routers drop it too).
        let table = format!(
            "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  {rules}\n }}\n{inbound}}}\n\
             table inet filter {{\n chain input {{\n  type filter hook input priority 0;\n  \
             iifname \"wan\" ct state established,related accept\n  \
             iifname \"wan\" meta l4proto 58 accept\n  iifname \"wan\" drop\n }}\n \
             chain forward {{\n  type filter hook forward priority 0;\n  \
             iifname \"wan\" ct state established,related accept\n  \
             iifname \"wan\" ct status dnat accept\n  iifname \"wan\" drop\n }}\n}}\n"
        );
        run_input(
            &["ip", "netns", "exec", &router, "nft", "-f", "-"],
            Some(&table),
        )?;
        if let Some(maps) = maps {
            self.start_miniupnpd(&router, name, gateway, maps)?;
        }
        Ok(Host {
            ns: host,
            addr,
            public,
        })
    }

    /// miniupnpd in `router`, mapping for its home network behind `gateway`. Its rules go in
    /// a table of their own: a forward chain accepting what it maps, and DNAT/SNAT chains.
    fn start_miniupnpd(
        &mut self,
        router: &str,
        name: &str,
        gateway: Ipv4Addr,
        maps: Maps,
    ) -> Result<(), String> {
        let table =
            "table inet upnp {\n chain forward {\n  type filter hook forward priority -5;\n  \
                     jump miniupnpd\n }\n chain miniupnpd {\n }\n chain prerouting {\n  \
                     type nat hook prerouting priority -100;\n  jump prerouting_miniupnpd\n }\n \
                     chain prerouting_miniupnpd {\n }\n chain postrouting {\n  \
                     type nat hook postrouting priority 99;\n  jump postrouting_miniupnpd\n }\n \
                     chain postrouting_miniupnpd {\n }\n}\n";
        run_input(
            &["ip", "netns", "exec", router, "nft", "-f", "-"],
            Some(table),
        )?;
        let [a, b, c, d] = gateway.octets();
        let home = Ipv4Addr::new(a, b, c, d & 0xf0);
        let config = self.scratch.path().join(format!("{name}-miniupnpd.conf"));
        let upnp = if maps == Maps::NatPmpOnly {
            "no"
        } else {
            "yes"
        };
        let allow = format!("allow 1024-65535 {home}/28 1024-65535\n");
        std::fs::write(
            &config,
            format!(
                "ext_ifname=wan\nlistening_ip=lan\nenable_upnp={upnp}\nenable_natpmp=yes\n\
                 ext_perform_stun=yes\next_stun_host={STUN_SERVER}\next_stun_port=3478\n\
                 upnp_table_name=upnp\nupnp_nat_table_name=upnp\nsecure_mode=yes\n\
                 system_uptime=no\nlease_file={}\n\
                 uuid=3d3cec3a-8cf0-11e0-98ee-00000000{:04x}\n\
                 {allow}deny 0-65535 0.0.0.0/0 0-65535\n",
                self.scratch.path().join(format!("{name}-leases")).display(),
                self.next
            ),
        )
        .map_err(|e| format!("miniupnpd config: {e}"))?;
        let log = self.scratch.path().join(format!("{name}-miniupnpd.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", router, "/usr/sbin/miniupnpd", "-d", "-f"])
            .arg(&config)
            // Its own pid file: the default one is shared by every router (and test) on the
            // machine, and a second miniupnpd refuses to start beside it.
            .arg("-P")
            .arg(self.scratch.path().join(format!("{name}-miniupnpd.pid")))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("miniupnpd: {e}"))?;
        self.children.push(child);
        // It checks its WAN with STUN first, then listens; a node asking before that would
        // find no router.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Listening for NAT-PMP") {
                if !text.contains("Port forwarding is now enabled") {
                    return Err(format!("miniupnpd will not map ports:\n{text}"));
                }
                if maps == Maps::Refuses {
                    // Its firewall table gone, every mapping fails at once (UPnP error 501,
                    // NAT-PMP result 3), as on a router whose firewall will not take the rule.
                    // (Permission rules that deny everything refuse too, but miniupnpd then
                    // searches all 65535 ports per request, a minute of CPU each, which
                    // starved the members sharing this machine.)
                    run(&[
                        "ip", "netns", "exec", router, "nft", "delete", "table", "inet", "upnp",
                    ])?;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("miniupnpd did not start:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the UPnP router of `name` logged (for failure messages).
    pub fn upnp_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.scratch.path().join(format!("{name}-miniupnpd.log")))
            .unwrap_or_default()
    }

    /// Starts `program` in `host`'s namespace; it is killed when the bed drops.
    pub fn spawn(&mut self, host: &Host, command: Command) -> Result<&mut Child, String> {
        let program = command.get_program().to_owned();
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", &host.ns]).arg(program);
        wrapped.args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped.stdin(Stdio::null()).stdout(Stdio::piped());
        let child = wrapped.spawn().map_err(|e| format!("spawn: {e}"))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_namespace(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: setns on a namespace file we hold open; it changes only this thread's network
    // namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A STUN (RFC 5389) binding success response to `request` from `from`, carrying
/// XOR-MAPPED-ADDRESS; `None` for anything that is not a binding request. CHANGE-REQUEST is
/// ignored: the answer always comes from where the request went, as a router's firewall wants.
fn stun_binding_response(request: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    if request.len() < 20 || request[0..2] != [0x00, 0x01] {
        return None;
    }
    let SocketAddr::V4(from) = from else {
        return None;
    };
    let cookie: [u8; 4] = request[4..8].try_into().ok()?;
    let mut reply = vec![0x01, 0x01, 0x00, 12];
    reply.extend_from_slice(&request[4..20]);
    let port = from.port() ^ u16::from_be_bytes([cookie[0], cookie[1]]);
    let ip = u32::from(*from.ip()) ^ u32::from_be_bytes(cookie);
    reply.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
    reply.extend_from_slice(&port.to_be_bytes());
    reply.extend_from_slice(&ip.to_be_bytes());
    Some(reply)
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.stun.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still running in it (a grandchild) goes first, then the namespace and
            // with it its veth ends.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
