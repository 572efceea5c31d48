//! A NAT test bed of real kernel parts: Linux network namespaces joined by veth pairs to a
//! bridge that plays the internet, and nftables NAT in each home router's namespace. Hosts run
//! real `callsign up` processes.
//!
//! Addresses come only from the documentation ranges: the internet is 198.51.100.0/24, each
//! home network a /28 of 203.0.113.0/24. Every namespace is named after this process, and
//! everything (processes, namespaces and the veths in them) is removed on drop, also when a
//! test fails. Needs root, `ip` (iproute2) and `nft` (nftables); [`Bed::new`] says why not.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

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

/// A host of the bed: the namespace it lives in and its own address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// The bed. Dropping it stops every process started in it and deletes its namespaces.
pub struct Bed {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    next: u8,
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
        };
        let inet = bed.namespace("inet")?;
        bed.ns(&inet, &["ip", "link", "add", "br0", "type", "bridge"])?;
        bed.ns(&inet, &["ip", "link", "set", "br0", "up"])?;
        Ok(bed)
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
        self.ns(ns, &["ip", "link", "set", "wan", "up"])
    }

    /// A host behind `nat` (its own router namespace unless public).
    pub fn host(&mut self, name: &str, nat: Nat) -> Result<Host, String> {
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
                " chain pre {{\n  type nat hook prerouting priority -100;\n  iifname \"wan\" meta l4proto udp dnat to {addr}\n }}\n"
            )
        } else {
            String::new()
        };
        // A home router's firewall: from the WAN, only replies (and, behind a full cone, what
        // the NAT maps to the host). Dropping the rest in `input` matters: a stray packet to
        // the router's own port would otherwise leave a conntrack entry that makes the NAT
        // pick another port for the host's next flow (real routers drop it too).
        let table = format!(
            "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  {rules}\n }}\n{inbound}}}\n\
             table inet filter {{\n chain input {{\n  type filter hook input priority 0;\n  \
             iifname \"wan\" ct state established,related accept\n  iifname \"wan\" drop\n }}\n \
             chain forward {{\n  type filter hook forward priority 0;\n  \
             iifname \"wan\" ct state established,related accept\n  \
             iifname \"wan\" ct status dnat accept\n  iifname \"wan\" drop\n }}\n}}\n"
        );
        run_input(
            &["ip", "netns", "exec", &router, "nft", "-f", "-"],
            Some(&table),
        )?;
        Ok(Host { ns: host, addr })
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

impl Drop for Bed {
    fn drop(&mut self) {
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
