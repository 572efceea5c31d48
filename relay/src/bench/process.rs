//! The forwarders under test run as child processes, so their CPU time and memory are theirs
//! alone: the plain UDP forwarder's loop, and `Measured`, a child we read from `/proc`.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The baseline forwarder's loop (`callsign-relay udp-forward`).
pub fn udp_forward(to: &[u16]) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    println!("udp-forward on {}", socket.local_addr()?);
    std::io::stdout().flush()?;
    let targets: Vec<SocketAddr> = to
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        for target in &targets {
            if *target != from {
                let _ = socket.send_to(&buf[..n], target);
            }
        }
    }
}

/// Keeps this process (and the threads it starts from now on) off the last core it may use,
/// and returns that core, for the forwarders (`--pin`).
#[cfg(target_os = "linux")]
pub(super) fn pin_apart() -> Result<usize> {
    // SAFETY: sched_{get,set}affinity on this thread with a zeroed, properly sized set; the
    // CPU_* helpers only touch the set.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the CPU affinity");
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .collect();
        let Some((&forwarder, clients)) = cpus.split_last().filter(|(_, rest)| !rest.is_empty())
        else {
            bail!(
                "--pin needs two cores or more; this process may use {}",
                cpus.len()
            );
        };
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in clients {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, size, &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning the clients");
        }
        Ok(forwarder)
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn pin_apart() -> Result<usize> {
    bail!("--pin is for Linux")
}

/// Starts `command` on `cpu` alone.
#[cfg(target_os = "linux")]
fn pin_child(command: &mut Command, cpu: usize) -> Result<()> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and makes one system call
    // (async-signal-safe) on a set built on its own stack.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            match libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pin_child(_: &mut Command, _: usize) -> Result<()> {
    bail!("--pin is for Linux")
}

/// A child process we measure; killed when dropped.
pub(super) struct Measured {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Measured {
    /// Runs our own binary with `args`; under `CALLSIGN_BENCH_WRAP` if set (a profiler such
    /// as `perf record -g --`, or `env LD_PRELOAD=…/libheaptrack_preload.so
    /// DUMP_HEAPTRACK_OUTPUT=FILE`, split at spaces): CPU time and memory are then read off the
    /// wrapper, which is the forwarder itself only when it execs it (`env`). On `cpu` alone if
    /// given (`--pin`).
    pub(super) fn spawn(args: &[String], cpu: Option<usize>) -> Result<Self> {
        let exe = std::env::current_exe().context("finding our own binary")?;
        let wrap = std::env::var("CALLSIGN_BENCH_WRAP").unwrap_or_default();
        let mut command = match wrap.split_whitespace().collect::<Vec<_>>().split_first() {
            Some((program, wrap_args)) => {
                let mut command = Command::new(program);
                command.args(wrap_args).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        if let Some(cpu) = cpu {
            pin_child(&mut command, cpu)?;
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the forwarder")?;
        if let Some(cpu) = cpu {
            // What the kernel says, not what we asked: a pin that did not take would compare
            // the forwarders on a machine other than the one reported.
            let allowed = status_field(child.id(), "Cpus_allowed_list");
            if allowed.as_deref() != Some(cpu.to_string().as_str()) {
                let _ = child.kill();
                bail!("the forwarder runs on cores {allowed:?}, not on core {cpu} alone");
            }
        }
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The first stdout line that starts with `prefix`, without it.
    pub(super) fn line(&self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(_) => break,
            }
        }
        bail!("the forwarder never printed {prefix:?}")
    }

    /// CPU time so far, over all the child's threads.
    pub(super) fn cpu(&self) -> Result<Duration> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut ns = 0u64;
        for task in
            std::fs::read_dir(&tasks).context("reading the forwarder's threads (Linux /proc)")?
        {
            let path = task?.path().join("schedstat");
            // A thread that just exited has no file any more.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            ns += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("unexpected schedstat {text:?}"))?;
        }
        Ok(Duration::from_nanos(ns))
    }

    /// Peak resident memory, KiB.
    pub(super) fn peak_rss_kib(&self) -> u64 {
        status_field(self.child.id(), "VmHWM")
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// The value of one `/proc/<pid>/status` line (`name:` stripped, trimmed).
fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        Some(value.trim().to_owned())
    })
}

impl Drop for Measured {
    /// Asks the child to stop (SIGTERM: the relay shuts down gracefully, so a heap profiler
    /// preloaded through `CALLSIGN_BENCH_WRAP` writes its data), and kills it if it has not
    /// within five seconds.
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; it only sends a signal.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
