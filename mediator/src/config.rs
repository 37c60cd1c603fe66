//! Mediator configuration: a TOML file, then command-line flags (flags win).
//! Defaults and meaning of every limit: spec/mediator.md §6.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where queues live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded sled database under the data directory.
    Sled,
    /// A Redis server (`redis://...`), shared by every instance with the same prefix.
    Redis(String),
}

impl std::str::FromStr for StoreConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sled" {
            Ok(Self::Sled)
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(Self::Redis(s.to_owned()))
        } else {
            Err(format!(
                "unknown store {s:?}: use sled or redis://host:port"
            ))
        }
    }
}

/// Everything a mediator instance needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Socket address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Base URL clients reach this mediator at (behind a TLS proxy: the https URL).
    /// Default: `http://` + the bound address.
    pub public_url: Option<String>,
    /// Data directory (sled database).
    pub data: PathBuf,
    /// `sled` or `redis://host:port[/db]`.
    pub store: String,
    /// Key prefix in Redis; instances sharing queues use the same prefix.
    pub redis_prefix: String,
    /// Limits.
    pub limits: Limits,
    /// Who may obtain a mediation grant.
    pub mediation: MediationPolicy,
    /// Let did:web resolution of senders reach loopback/private/link-local addresses.
    /// Off by default: a sender names its did:web, so resolving it must not probe our
    /// network (spec/identity.md §3.3). For local tests only.
    pub allow_private_did_web: bool,
    /// Built-in TLS: PEM certificate chain (leaf first). With `tls_key`, the public port
    /// speaks HTTPS/WSS itself, no proxy needed; both files are reloaded on SIGHUP and when
    /// they change on disk (spec/mediator.md §10).
    pub tls_cert: Option<PathBuf>,
    /// Built-in TLS: PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Operator listener: `/metrics` (and `/metrics/relay`, `/metrics/stun`), `/healthz`,
    /// `/readyz`. Never on the public port. Default `127.0.0.1:0` (loopback, a free port
    /// printed at start); the shipped config uses `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Allow `admin_listen` on an address reachable from outside (neither loopback nor
    /// private). Off: such an address is refused at start, because the operator listener
    /// has no connection limit and `/metrics` shows queue totals (spec/mediator.md §7).
    pub admin_public: bool,
    /// Addresses of reverse proxies whose `X-Forwarded-For` is believed (the client is the
    /// right-most address not itself a trusted proxy). Connections from anywhere else are
    /// counted by their own address, and their `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Log format on stderr: `text` (key=value) or `json` (one object per line).
    pub log_format: String,
    /// STUN Binding service (UDP and TCP) on this address, e.g. `0.0.0.0:3478`; empty: off.
    /// The shipped config turns it on (clients learn their public address from it).
    pub stun: String,
    /// Seconds the store may stay unwritable (disk full, sled or Redis errors) before the
    /// process exits with status 75 for its supervisor to restart it; 0: never exit.
    pub storage_fatal_secs: u64,
    /// `[relay]`: the relay's limits, client verification and mesh (`mesh_config.rs`).
    pub relay: crate::mesh_config::RelaySettings,
}

/// Resource limits, all enforced and exported as `mpcdid_mediator_limit{name=...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest DIDComm message accepted (HTTP body or WebSocket frame).
    pub max_message_bytes: u64,
    /// Messages waiting per mediated DID.
    pub max_queue_messages: u64,
    /// Bytes waiting per mediated DID.
    pub max_queue_bytes: u64,
    /// Sustained messages per second per connection.
    pub rate_per_connection: u64,
    /// Burst allowance per connection.
    pub rate_burst: u64,
    /// Concurrent connections (HTTP and WebSocket).
    pub max_connections: u64,
    /// Length of the kernel's queue of connections waiting for `accept` (the kernel caps
    /// it at `net.core.somaxconn`). When many clients connect at once a short queue drops
    /// their SYNs and each waits a 1 s retransmission (spec/mediator.md §6).
    pub listen_backlog: u64,
    /// Concurrent requests on one HTTP/2 connection (HTTP/1.1 serves one at a time).
    pub max_streams_per_connection: u64,
    /// Seconds without a request or frame before a connection is closed.
    pub idle_timeout_secs: u64,
    /// Most messages in one `delivery`.
    pub max_delivery_batch: u64,
    /// Live pushes not yet acknowledged per WebSocket before pushing pauses.
    pub max_inflight: u64,
    /// Milliseconds a live session waits after an arrival before pushing, so that messages
    /// arriving together share one `delivery` (0: push at once).
    pub live_coalesce_ms: u64,
    /// Recipient keys per mediated DID.
    pub max_keys_per_did: u64,
    /// Seconds graceful shutdown waits for open connections.
    pub drain_timeout_secs: u64,
    /// Concurrent connections from one source address (an IPv4 address or an IPv6 /64);
    /// behind a trusted proxy, concurrent WebSockets of one client (`X-Forwarded-For`);
    /// 0: no per-source limit (spec/mediator.md §6.1).
    pub max_connections_per_ip: u64,
    /// Seconds a request body may take to arrive once its headers are in; a slower client
    /// gets `408` and the connection is closed (spec/mediator.md §6.1).
    pub body_timeout_secs: u64,
    /// Bytes of unfinished request bodies one connection may hold in the mediator's memory
    /// at once (HTTP/2 streams); at least `max_message_bytes` is always allowed.
    pub max_body_bytes_per_connection: u64,
    /// Bytes of unfinished request bodies all connections of one source address may hold
    /// at once (at least `max_body_bytes_per_connection`); for a direct peer counted only
    /// where `max_connections_per_ip` is (not with 0), behind a trusted proxy per client
    /// (`X-Forwarded-For`); 0: none.
    pub max_body_bytes_per_source: u64,
    /// Seconds a WebSocket may stay open without an authenticated request (or, for an
    /// anonymous sender, without a stored forward); pings do not count.
    pub ws_auth_timeout_secs: u64,
    /// Entries in one `recipient-update` (Coordinate Mediation 2.0).
    pub max_updates_per_request: u64,
    /// Messages one source address may have waiting, unacknowledged, in one recipient's
    /// queue; 0: no per-source quota (spec/mediator.md §6.1).
    pub max_queued_per_source: u64,
    /// Bytes one source address may have waiting, unacknowledged, in one recipient's
    /// queue (with `max_queued_per_source` 0 there is no per-source quota at all); 0: no
    /// byte quota (spec/mediator.md §6.1).
    pub max_queued_bytes_per_source: u64,
    /// Seconds after which this instance asks the store whether what a source queued is
    /// still waiting (acknowledgements made through another instance are not seen here).
    pub source_quota_secs: u64,
    /// Sustained DIDComm messages per second from one client address (an IPv4 address or
    /// an IPv6 /64; behind a trusted proxy, the `X-Forwarded-For` client), over all its
    /// connections; 0: no per-address rate (spec/mediator.md §6.1).
    pub rate_per_ip: u64,
    /// Sustained authenticated requests per second from one DID, over all its connections
    /// and addresses; 0: no per-DID rate.
    pub rate_per_did: u64,
}

/// Mediation grant policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediationPolicy {
    /// If non-empty, only these DIDs are granted mediation; everyone else gets
    /// `mediate-deny`.
    pub allow: Vec<String>,
    /// DIDs always denied.
    pub deny: Vec<String>,
}

/// Smallest `max_message_bytes` accepted: below it not even a packed mediation request or
/// a small forward fits.
pub const MIN_MESSAGE_BYTES: u64 = 16 * 1024;

impl Limits {
    /// Limits whose value would refuse everything of its kind, or mean something other
    /// than "off" where a reader would expect it to.
    fn validate(&self) -> Result<(), String> {
        let d = Self::default();
        for (name, v, default) in [
            ("max_connections", self.max_connections, d.max_connections),
            (
                "max_queue_messages",
                self.max_queue_messages,
                d.max_queue_messages,
            ),
            (
                "max_keys_per_did",
                self.max_keys_per_did,
                d.max_keys_per_did,
            ),
            (
                "max_updates_per_request",
                self.max_updates_per_request,
                d.max_updates_per_request,
            ),
            ("rate_burst", self.rate_burst, d.rate_burst),
        ] {
            if v == 0 {
                return Err(format!(
                    "limits.{name} = 0 would refuse every request of its kind (0 does not \
                     mean \"no limit\" here): set at least 1 (default {default})"
                ));
            }
        }
        if self.rate_per_connection == 0 {
            return Err(format!(
                "limits.rate_per_connection = 0 refuses every request of a connection after \
                 its first rate_burst (unlike rate_per_ip = 0, it does not turn the limit off): \
                 set a rate, e.g. {} (the default), or a very large one for no practical limit",
                d.rate_per_connection
            ));
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(format!(
                "limits.max_message_bytes = {} is below {MIN_MESSAGE_BYTES}: no real DIDComm \
                 message would fit; set at least {MIN_MESSAGE_BYTES} (default {})",
                self.max_message_bytes, d.max_message_bytes
            ));
        }
        if self.max_queue_bytes < self.max_message_bytes {
            return Err(format!(
                "limits.max_queue_bytes = {} is below max_message_bytes = {}: a message of \
                 the allowed size could never be queued; raise max_queue_bytes (default {})",
                self.max_queue_bytes, self.max_message_bytes, d.max_queue_bytes
            ));
        }
        Ok(())
    }
}

/// Loopback, private (RFC 1918, IPv6 ULA) or link-local: not reachable from the Internet.
/// An unspecified address (`0.0.0.0`, `::`) binds every interface, so it is not internal.
fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_queue_messages: 10_000,
            max_queue_bytes: 100 * 1024 * 1024,
            rate_per_connection: 1_000,
            rate_burst: 2_000,
            max_connections: 20_000,
            listen_backlog: 4_096,
            max_streams_per_connection: 256,
            idle_timeout_secs: 300,
            max_delivery_batch: 100,
            max_inflight: 1_000,
            live_coalesce_ms: 2,
            max_keys_per_did: 100,
            drain_timeout_secs: 10,
            max_connections_per_ip: 1_000,
            body_timeout_secs: 10,
            max_body_bytes_per_connection: 4 * 1024 * 1024,
            max_body_bytes_per_source: 64 * 1024 * 1024,
            ws_auth_timeout_secs: 30,
            max_updates_per_request: 100,
            max_queued_per_source: 500,
            max_queued_bytes_per_source: 10 * 1024 * 1024,
            source_quota_secs: 600,
            rate_per_ip: 2_000,
            rate_per_did: 500,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            data: PathBuf::from("mediator-data"),
            store: "sled".into(),
            redis_prefix: "mpcdid:".into(),
            limits: Limits::default(),
            mediation: MediationPolicy::default(),
            allow_private_did_web: false,
            tls_cert: None,
            tls_key: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_public: false,
            trusted_proxies: Vec::new(),
            log_format: "text".into(),
            stun: String::new(),
            storage_fatal_secs: 60,
            relay: crate::mesh_config::RelaySettings::default(),
        }
    }
}

impl Config {
    /// Parses a TOML configuration file's text.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key, or a value of the wrong type.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The parsed `store` setting.
    ///
    /// # Errors
    /// Neither `sled` nor a `redis://` URL.
    pub fn store_config(&self) -> Result<StoreConfig, String> {
        self.store.parse()
    }

    /// Limits as `(name, value)` pairs for `/metrics`.
    #[must_use]
    pub fn limit_gauges(&self) -> Vec<(&'static str, u64)> {
        let l = &self.limits;
        vec![
            ("max_message_bytes", l.max_message_bytes),
            ("max_queue_messages", l.max_queue_messages),
            ("max_queue_bytes", l.max_queue_bytes),
            ("rate_per_connection", l.rate_per_connection),
            ("rate_burst", l.rate_burst),
            ("max_connections", l.max_connections),
            ("listen_backlog", l.listen_backlog),
            ("max_streams_per_connection", l.max_streams_per_connection),
            ("idle_timeout_secs", l.idle_timeout_secs),
            ("max_delivery_batch", l.max_delivery_batch),
            ("max_inflight", l.max_inflight),
            ("live_coalesce_ms", l.live_coalesce_ms),
            ("max_keys_per_did", l.max_keys_per_did),
            ("max_connections_per_ip", l.max_connections_per_ip),
            ("body_timeout_secs", l.body_timeout_secs),
            (
                "max_body_bytes_per_connection",
                l.max_body_bytes_per_connection,
            ),
            ("max_body_bytes_per_source", l.max_body_bytes_per_source),
            ("ws_auth_timeout_secs", l.ws_auth_timeout_secs),
            ("max_updates_per_request", l.max_updates_per_request),
            ("max_queued_per_source", l.max_queued_per_source),
            ("max_queued_bytes_per_source", l.max_queued_bytes_per_source),
            ("source_quota_secs", l.source_quota_secs),
            ("rate_per_ip", l.rate_per_ip),
            ("rate_per_did", l.rate_per_did),
        ]
    }

    /// Checks what TOML types cannot: URLs, paths, pairs of settings, addresses and limits
    /// that would make no sense (spec/mediator.md §6 "Refused settings"). Each error names
    /// the setting and what to write instead.
    ///
    /// # Errors
    /// The first invalid setting, as a sentence for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(u) = &self.public_url {
            let parsed = url::Url::parse(u).map_err(|e| {
                format!("public_url {u:?} is not a URL ({e}): write e.g. \"https://mediator.example.org\"")
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!(
                    "public_url {u:?} must start with https:// (or http:// for local tests)"
                ));
            }
            if parsed.host_str().is_none_or(str::is_empty)
                || parsed.query().is_some()
                || parsed.fragment().is_some()
                || u.chars().any(char::is_whitespace)
            {
                return Err(format!(
                    "public_url {u:?} must be a plain base URL (scheme, host, optional port and \
                     path; no spaces, query or fragment)"
                ));
            }
        }
        self.store_config()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err("tls_cert and tls_key go together: set both or neither".into())
            }
            _ => {}
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format {:?}: use \"text\" or \"json\"",
                self.log_format
            ));
        }
        self.stun_addr()?;
        if self.admin_listen.port() != 0 && self.admin_listen == self.listen {
            return Err(format!(
                "admin_listen {} is the public listen address: give the operator listener its \
                 own address (e.g. 127.0.0.1:9090)",
                self.admin_listen
            ));
        }
        self.validate_addresses()?;
        self.limits.validate()
    }

    /// Listen addresses and trusted proxies.
    fn validate_addresses(&self) -> Result<(), String> {
        if !self.admin_public && !is_internal(self.admin_listen.ip()) {
            return Err(format!(
                "admin_listen {} is reachable from outside: the operator listener (/metrics, \
                 /healthz, /readyz) has no connection limit and shows queue totals; bind it to \
                 loopback or a private address (e.g. 127.0.0.1:9090), or set admin_public = \
                 true if a firewall keeps strangers out",
                self.admin_listen
            ));
        }
        if self.listen.ip().is_unspecified() && self.public_url.is_none() {
            return Err(format!(
                "listen {} binds every interface, but public_url is not set: invitations \
                 would name http://{}; set public_url to the URL clients use (e.g. \
                 \"https://mediator.example.org\")",
                self.listen, self.listen
            ));
        }
        for ip in &self.trusted_proxies {
            if let std::net::IpAddr::V6(v6) = ip {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Err(format!(
                        "trusted_proxies entry {ip} is an IPv4-mapped address, which never \
                         matches (peers are compared in their IPv4 form): write \"{v4}\""
                    ));
                }
            }
        }
        Ok(())
    }

    /// The parsed `stun` setting (`None`: off).
    ///
    /// # Errors
    /// Not empty and not a socket address.
    pub fn stun_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.stun.trim().is_empty() {
            return Ok(None);
        }
        self.stun.trim().parse().map(Some).map_err(|_| {
            format!(
                "stun {:?} is not an address: write e.g. \"0.0.0.0:3478\", or \"\" for no STUN",
                self.stun
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example_config() {
        let text = include_str!("../deploy/mediator.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.limits.max_message_bytes, 1024 * 1024);
        assert_eq!(c.store_config().unwrap(), StoreConfig::Sled);
        c.validate().unwrap();
        assert_eq!(
            c.stun_addr().unwrap(),
            Some("0.0.0.0:3478".parse().unwrap())
        );
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    fn validation_names_the_setting() {
        for (toml, needle) in [
            ("public_url = \"ftp://x y\"", "public_url"),
            ("public_url = \"ftp://x\"", "https://"),
            ("public_url = \"https://x/?a=1\"", "plain base URL"),
            ("tls_cert = \"/c.pem\"", "tls_key"),
            ("log_format = \"xml\"", "log_format"),
            ("stun = \"everywhere\"", "stun"),
            ("store = \"mysql://x\"", "unknown store"),
            // Audit #18 L2: settings that used to be accepted and made no sense.
            ("admin_listen = \"0.0.0.0:9090\"", "admin_public"),
            ("admin_listen = \"[::]:9090\"", "admin_listen"),
            ("admin_listen = \"203.0.113.7:9090\"", "admin_listen"),
            ("listen = \"0.0.0.0:8080\"", "public_url"),
            ("listen = \"[::]:8080\"", "public_url"),
            ("trusted_proxies = [\"::ffff:10.0.0.5\"]", "\"10.0.0.5\""),
            (
                "[limits]\nrate_per_connection = 0",
                "limits.rate_per_connection",
            ),
            ("[limits]\nrate_burst = 0", "limits.rate_burst"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            (
                "[limits]\nmax_message_bytes = 0",
                "limits.max_message_bytes",
            ),
            (
                "[limits]\nmax_message_bytes = 1000",
                "limits.max_message_bytes",
            ),
            (
                "[limits]\nmax_queue_messages = 0",
                "limits.max_queue_messages",
            ),
            ("[limits]\nmax_queue_bytes = 0", "limits.max_queue_bytes"),
            ("[limits]\nmax_keys_per_did = 0", "limits.max_keys_per_did"),
            (
                "[limits]\nmax_updates_per_request = 0",
                "limits.max_updates_per_request",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
            assert!(err.contains(needle), "{toml}: {err}");
        }
        Config::default().validate().unwrap();
        // What stays allowed: an internal operator address, a public one by explicit
        // choice, every interface with a public_url, a plain IPv4 or IPv6 proxy.
        for toml in [
            "admin_listen = \"10.1.2.3:9090\"",
            "admin_listen = \"[fd00::1]:9090\"",
            "admin_listen = \"0.0.0.0:9090\"\nadmin_public = true",
            "listen = \"0.0.0.0:443\"\npublic_url = \"https://m.example.org\"",
            "trusted_proxies = [\"10.0.0.5\", \"fd00::5\"]",
            "[limits]\nrate_per_ip = 0\nrate_per_did = 0\nmax_queued_per_source = 0",
        ] {
            let c = Config::from_toml(toml).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{toml}: {e}"));
        }
    }

    #[test]
    fn rejects_unknown_keys_and_stores() {
        assert!(Config::from_toml("lisen = \"1.2.3.4:5\"").is_err());
        assert!("mysql://x".parse::<StoreConfig>().is_err());
        assert_eq!(
            "redis://127.0.0.1:6379".parse::<StoreConfig>().unwrap(),
            StoreConfig::Redis("redis://127.0.0.1:6379".into())
        );
    }
}
