//! The Extensible Evaluation Environment: emulated Internet topologies on one Linux machine.
//!
//! This crate owns the network-namespace plumbing that tests and evaluations use to put
//! parties behind real NATs: a "public" namespace with a bridge (the Internet; the mediator
//! runs there), and per party either a public address on that bridge or a home namespace
//! behind its own NAT namespace (iptables MASQUERADE, endpoint-independent or symmetric
//! mapping, as measured in `shared/FACTS.md`). It does not touch the host's own network:
//! every address lives inside namespaces it creates, and [`Topology`] deletes them on drop,
//! also when a test panics.
//!
//! ```text
//!             public namespace: br0 198.51.100.1/24 (+ .2 for RFC 5780 tests)
//!        ┌──────────────┬───────────────────────┬─────────────────────┐
//!   p1 198.51.100.11  p2 198.51.100.12      p3 host 198.51.100.103   ...
//!   [NAT a: EIM]       [NAT b: symmetric]     (no NAT)
//!   192.0.2.17/28      192.0.2.33/28
//!   home a .18         home b .34
//! ```
//!
//! Code runs inside a namespace either as a process ([`Netns::command`], `ip netns exec`) or
//! on a thread that entered it ([`Netns::run`]): sockets created there stay in that
//! namespace, so a test can bind them inside and use them from its async runtime.
//!
//! It also owns the evaluation's workloads ([`workload`]: our MPyC programs under `examples/`
//! at fixed sizes, shared with the benches) and the `mpc-did-e3` binary that runs the
//! evaluation matrix over these topologies (spec/e3.md §4; plain MPyC, `--ssl`, WireGuard,
//! sessions on each path kind — direct, punched behind EIM NATs, relayed behind symmetric
//! ones — and per-message DIDComm, direct and through the mediator). It does not implement
//! any of the protocols it measures: the binary drives the project's own crates and the
//! real tools (WireGuard, the `mpc-did-mediator` binary).
//!
//! Needs root, `ip` (iproute2) and `iptables`; [`check_available`] says what is missing.
//! This kernel has no `netem`: [`Netns::delay`] adds latency in user space instead (a
//! [`DelayLine`] holding each packet in an NFQUEUE).
//!
//! ```no_run
//! use mpc_did_e3::{NatKind, Topology};
//! let topo = Topology::builder().host("alice", NatKind::EndpointIndependent).build()?;
//! let sock = topo.host("alice").unwrap().ns.run(|| std::net::UdpSocket::bind("0.0.0.0:0"))??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

mod delay;
pub mod workload;
pub use delay::{DelayLine, Stats as DelayStats};

/// What can go wrong building or using a topology.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E3Error {
    /// Not root, or `ip`/`iptables` missing.
    #[error("network namespaces unavailable: {0}")]
    Unavailable(String),
    /// A setup command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line that failed.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A topology the address plan cannot hold (names, counts).
    #[error("bad topology: {0}")]
    Topology(String),
    /// Entering a namespace or spawning a process failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How a host reaches the public network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// A public address directly on the bridge.
    None,
    /// NAT with endpoint-independent mapping (MASQUERADE + drop of unsolicited NEW):
    /// UDP hole punching works.
    EndpointIndependent,
    /// NAT with address-and-port-dependent ("symmetric") mapping (MASQUERADE
    /// --random-fully): hole punching fails, a relay is needed.
    Symmetric,
}

/// A network namespace this crate created.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace's name (as `ip netns` knows it).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(&self.name).arg(program);
        c
    }

    /// Run `f` on a fresh thread that has entered this namespace, and return its result.
    /// Sockets `f` creates belong to the namespace for their whole life.
    ///
    /// # Errors
    /// [`E3Error::Io`] if the namespace cannot be entered or the thread panicked.
    pub fn run<F, R>(&self, f: F) -> Result<R, E3Error>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(format!("/var/run/netns/{}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(std::io::Error::from)?;
                Ok(f())
            })
            .join()
            .map_err(|_| E3Error::Io(std::io::Error::other("thread in namespace panicked")))?
        })
    }

    /// Run `f` on a new thread inside this namespace and return at once; the thread (for
    /// example one running a tokio runtime with a server) lives until `f` returns.
    ///
    /// # Errors
    /// [`E3Error::Io`] if the namespace file cannot be opened or the thread not spawned.
    pub fn spawn<F, R>(&self, f: F) -> Result<std::thread::JoinHandle<Result<R, E3Error>>, E3Error>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = File::open(format!("/var/run/netns/{}", self.name))?;
        Ok(std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(std::io::Error::from)?;
                Ok(f())
            })?)
    }

    /// Run a setup command inside the namespace, failing with its stderr.
    ///
    /// # Errors
    /// [`E3Error::Command`] when it exits non-zero.
    pub fn exec(&self, args: &[&str]) -> Result<(), E3Error> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        ip_cmd(&full)
    }
}

/// A party's machine in the topology.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace the party's processes run in.
    pub ns: Netns,
    /// The host's own address (private behind a NAT, public otherwise).
    pub addr: Ipv4Addr,
    /// Its NAT, if any.
    pub nat: Option<Nat>,
}

/// A NAT in front of a host.
#[derive(Debug, Clone)]
pub struct Nat {
    /// The namespace the NAT's iptables rules live in.
    pub ns: Netns,
    /// The NAT's public address.
    pub wan: Ipv4Addr,
    /// Its mapping and filtering behaviour.
    pub kind: NatKind,
}

impl Host {
    /// The address the public network sees this host's traffic come from.
    #[must_use]
    pub fn public_ip(&self) -> Ipv4Addr {
        self.nat.as_ref().map_or(self.addr, |n| n.wan)
    }
}

/// Builds a [`Topology`].
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    hosts: Vec<(String, NatKind)>,
}

impl TopologyBuilder {
    /// Add a host named `name` (ASCII letters/digits, at most 8) reaching the public network
    /// through `nat`.
    #[must_use]
    pub fn host(mut self, name: &str, nat: NatKind) -> Self {
        self.hosts.push((name.to_owned(), nat));
        self
    }

    /// For tests: [`build`](Self::build), or `None` (after saying why on stderr) when this
    /// environment cannot make namespaces and [`required`] is not set; panics when they are
    /// required but unavailable, or when building fails.
    ///
    /// # Panics
    /// As said: a test that must run does not silently pass.
    #[must_use]
    pub fn build_or_skip(self) -> Option<Topology> {
        if let Err(e) = check_available() {
            assert!(!required(), "MPC_DID_REQUIRE_NETNS=1 but {e}");
            eprintln!("skipped: {e}");
            return None;
        }
        match self.build() {
            Ok(t) => Some(t),
            Err(e) => panic!("building the e3 topology failed: {e}"),
        }
    }

    /// Create the namespaces, links, addresses, routes and NAT rules.
    ///
    /// # Errors
    /// [`E3Error::Unavailable`] without root/iproute2/iptables, [`E3Error::Topology`] for
    /// bad names or more than 14 hosts, [`E3Error::Command`] if a setup step fails (the
    /// namespaces created so far are deleted).
    pub fn build(self) -> Result<Topology, E3Error> {
        check_available()?;
        sweep_stale();
        if self.hosts.len() > 14 {
            return Err(E3Error::Topology("at most 14 hosts".into()));
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "e3-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut topo = Topology {
            created: Vec::new(),
            public: Netns {
                name: format!("{prefix}-pub"),
            },
            hosts: BTreeMap::new(),
        };
        topo.add_ns(&topo.public.clone())?;
        let public = topo.public.clone();
        public.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        public.exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "br0"])?;
        public.exec(&["ip", "addr", "add", "198.51.100.2/24", "dev", "br0"])?;
        public.exec(&["ip", "link", "set", "br0", "up"])?;

        for (k, (name, kind)) in self.hosts.into_iter().enumerate() {
            if name.is_empty()
                || name.len() > 8
                || !name.bytes().all(|b| b.is_ascii_alphanumeric())
                || topo.hosts.contains_key(&name)
            {
                return Err(E3Error::Topology(format!("host name {name:?}")));
            }
            let k = u8::try_from(k + 1).map_err(|_| E3Error::Topology("too many".into()))?;
            let host = topo.add_host(&prefix, k, &name, kind)?;
            topo.hosts.insert(name, host);
        }
        Ok(topo)
    }
}

/// An emulated Internet; dropping it deletes every namespace it created.
#[derive(Debug)]
pub struct Topology {
    created: Vec<String>,
    public: Netns,
    hosts: BTreeMap<String, Host>,
}

impl Topology {
    /// Start describing a topology.
    #[must_use]
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The public network's namespace (run the mediator here).
    #[must_use]
    pub fn public(&self) -> &Netns {
        &self.public
    }

    /// The public namespace's primary address.
    pub const PUBLIC_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// A second address in the public namespace (RFC 5780 OTHER-ADDRESS tests).
    pub const PUBLIC_ADDR2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

    /// A host by name.
    #[must_use]
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    fn add_ns(&mut self, ns: &Netns) -> Result<(), E3Error> {
        ip_cmd(&["netns", "add", &ns.name])?;
        self.created.push(ns.name.clone());
        ns.exec(&["ip", "link", "set", "lo", "up"])
    }

    fn add_host(
        &mut self,
        prefix: &str,
        k: u8,
        name: &str,
        kind: NatKind,
    ) -> Result<Host, E3Error> {
        let home = Netns {
            name: format!("{prefix}-{name}"),
        };
        self.add_ns(&home)?;
        let port = format!("p{k}");
        let public = self.public.name.clone();
        if kind == NatKind::None {
            let addr = Ipv4Addr::new(198, 51, 100, 100 + k);
            ip_cmd(&[
                "link", "add", "eth0", "netns", &home.name, "type", "veth", "peer", "name", &port,
                "netns", &public,
            ])?;
            self.public
                .exec(&["ip", "link", "set", &port, "master", "br0"])?;
            self.public.exec(&["ip", "link", "set", &port, "up"])?;
            home.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            home.exec(&["ip", "link", "set", "eth0", "up"])?;
            return Ok(Host {
                ns: home,
                addr,
                nat: None,
            });
        }

        let nat = Netns {
            name: format!("{prefix}-nat-{name}"),
        };
        self.add_ns(&nat)?;
        let wan = Ipv4Addr::new(198, 51, 100, 10 + k);
        let gw = Ipv4Addr::new(192, 0, 2, 16 * k + 1);
        let addr = Ipv4Addr::new(192, 0, 2, 16 * k + 2);
        ip_cmd(&[
            "link", "add", "wan", "netns", &nat.name, "type", "veth", "peer", "name", &port,
            "netns", &public,
        ])?;
        self.public
            .exec(&["ip", "link", "set", &port, "master", "br0"])?;
        self.public.exec(&["ip", "link", "set", &port, "up"])?;
        ip_cmd(&[
            "link", "add", "lan", "netns", &nat.name, "type", "veth", "peer", "name", "eth0",
            "netns", &home.name,
        ])?;
        nat.exec(&["ip", "addr", "add", &format!("{wan}/24"), "dev", "wan"])?;
        nat.exec(&["ip", "addr", "add", &format!("{gw}/28"), "dev", "lan"])?;
        nat.exec(&["ip", "link", "set", "wan", "up"])?;
        nat.exec(&["ip", "link", "set", "lan", "up"])?;
        home.exec(&["ip", "addr", "add", &format!("{addr}/28"), "dev", "eth0"])?;
        home.exec(&["ip", "link", "set", "eth0", "up"])?;
        home.exec(&["ip", "route", "add", "default", "via", &gw.to_string()])?;
        nat.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let mut masq = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ];
        if kind == NatKind::Symmetric {
            masq.push("--random-fully");
        }
        nat.exec(&masq)?;
        // Without dropping unsolicited NEW packets on the WAN side, a peer's first punch
        // packet creates a conntrack entry that collides with the mapping (FACTS.md).
        for chain in ["INPUT", "FORWARD"] {
            nat.exec(&[
                "iptables",
                "-A",
                chain,
                "-i",
                "wan",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "DROP",
            ])?;
        }
        Ok(Host {
            ns: home,
            addr,
            nat: Some(Nat { ns: nat, wan, kind }),
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            if let Err(e) = ip_cmd(&["netns", "del", name]) {
                tracing::warn!("cleanup of namespace {name} failed: {e}");
            }
        }
    }
}

/// Whether the environment can build topologies (root, `ip`, `iptables`).
///
/// # Errors
/// [`E3Error::Unavailable`] naming what is missing.
pub fn check_available() -> Result<(), E3Error> {
    if !rustix::process::geteuid().is_root() {
        return Err(E3Error::Unavailable("needs root".into()));
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(E3Error::Unavailable(format!(
                "`{tool}` not found (apt-get install iproute2 iptables)"
            )));
        }
    }
    Ok(())
}

/// Whether tests must fail (not skip) when namespaces are unavailable: `test.sh` sets
/// `MPC_DID_REQUIRE_NETNS=1` when it runs as root.
#[must_use]
pub fn required() -> bool {
    std::env::var("MPC_DID_REQUIRE_NETNS").as_deref() == Ok("1")
}

/// Delete namespaces left by earlier processes of ours that died without cleaning up
/// (`kill -9`): names are `e3-<pid>-...`, and a pid that is no longer running owns nothing.
pub fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("e3-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip_cmd(&["netns", "del", &name]);
        }
    }
}

fn ip_cmd(args: &[&str]) -> Result<(), E3Error> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(E3Error::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
