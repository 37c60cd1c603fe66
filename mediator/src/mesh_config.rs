//! The `[relay]` section of the mediator's configuration: the relay's limits, client
//! verification and the mesh of instances (spec/rendezvous.md §4.5, §4.7). Kept apart from
//! `config.rs` so the relay's settings live in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use mpc_did_rendezvous::relay::{FRAME_HEADER_LEN, MAX_FRAME_LEN};

use crate::config::StoreConfig;
use crate::mesh::MeshConfig;
use crate::services::relay::RelayServiceConfig;

/// `[relay]`: limits of the relay service (defaults = spec/rendezvous.md §4.5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// Most simultaneous relay connections.
    pub max_clients: u64,
    /// Most relay connections from one IPv4 address or IPv6 /64 (behind a reverse proxy in
    /// `trusted_proxies`, the client `X-Forwarded-For` names).
    pub max_clients_per_ip: u64,
    /// Per-client sustained send rate, wire bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Per-client burst above the rate, bytes.
    pub burst_bytes: u64,
    /// Per-client outgoing queue, bytes (all senders together).
    pub max_queue_bytes: u64,
    /// Per-client outgoing queue, frames.
    pub max_queue_frames: u64,
    /// Bytes of one sender's packets that may wait in receivers' queues before the relay
    /// stops reading that sender for a while (backpressure, spec/rendezvous.md §4.5).
    pub max_backlog_bytes: u64,
    /// Only DIDs with a mediation grant here may use the relay (`derper --verify-clients`).
    pub verify_clients: bool,
    /// `[relay.mesh]`: forward to clients connected to other instances.
    pub mesh: MeshSettings,
}

/// `[relay.mesh]`: instances sharing a Redis store forward relay packets to each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshSettings {
    /// Address this instance accepts links from the other instances on (a private
    /// network address); unset: no mesh.
    pub listen: Option<SocketAddr>,
    /// Address the other instances dial (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// File holding the shared mesh key (≥ 32 bytes; surrounding whitespace is ignored),
    /// the same on every instance, readable only by the mediator.
    pub key_file: Option<PathBuf>,
    /// Seconds a presence entry lives in Redis unless refreshed (every third of it).
    pub presence_ttl_secs: u64,
    /// Accept a `listen` address that is neither loopback nor private (e.g. `0.0.0.0`):
    /// only behind a firewall or VPN that keeps strangers off the mesh port.
    pub allow_public_listen: bool,
}

impl Default for RelaySettings {
    fn default() -> Self {
        let d = RelayServiceConfig::default();
        RelaySettings {
            max_clients: d.max_clients as u64,
            max_clients_per_ip: d.max_clients_per_source as u64,
            rate_bytes_per_sec: d.rate_bytes_per_sec,
            burst_bytes: d.burst_bytes,
            max_queue_bytes: d.max_queue_bytes as u64,
            max_queue_frames: d.max_queue_frames as u64,
            max_backlog_bytes: d.max_backlog_bytes as u64,
            verify_clients: false,
            mesh: MeshSettings::default(),
        }
    }
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            listen: None,
            advertise: None,
            key_file: None,
            presence_ttl_secs: 30,
            allow_public_listen: false,
        }
    }
}

fn size(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl RelaySettings {
    /// The relay service's configuration; `store` and `redis_prefix` are the mediator's
    /// (the mesh keeps its presence table in the same Redis).
    ///
    /// # Errors
    /// A message naming the setting to fix: a mesh without a Redis store or without a key,
    /// an unreadable or short key, an address other instances cannot dial, a zero limit, a
    /// burst or queue smaller than one relay frame.
    pub fn service_config(
        &self,
        store: &StoreConfig,
        redis_prefix: &str,
    ) -> Result<RelayServiceConfig, String> {
        for (name, v) in [
            ("max_clients", self.max_clients),
            ("max_clients_per_ip", self.max_clients_per_ip),
            ("rate_bytes_per_sec", self.rate_bytes_per_sec),
            ("burst_bytes", self.burst_bytes),
            ("max_queue_bytes", self.max_queue_bytes),
            ("max_queue_frames", self.max_queue_frames),
            ("max_backlog_bytes", self.max_backlog_bytes),
        ] {
            if v == 0 {
                return Err(format!("relay.{name} must be at least 1"));
            }
        }
        // A client's token bucket never holds more than the burst, and its queue never more
        // than max_queue_bytes: below one full frame, larger packets are refused for ever.
        let frame = (MAX_FRAME_LEN + FRAME_HEADER_LEN) as u64;
        for (name, v) in [
            ("burst_bytes", self.burst_bytes),
            ("max_queue_bytes", self.max_queue_bytes),
        ] {
            if v < frame {
                return Err(format!(
                    "relay.{name} = {v} is below one relay frame ({frame} bytes): packets larger \
                     than it would never pass; set at least {frame} (default {})",
                    if name == "burst_bytes" {
                        Self::default().burst_bytes
                    } else {
                        Self::default().max_queue_bytes
                    }
                ));
            }
        }
        let mesh = match self.mesh.listen {
            None => None,
            Some(listen) => {
                let StoreConfig::Redis(url) = store else {
                    return Err(
                        "relay.mesh needs the instances' shared Redis: set store = \"redis://host:port\""
                            .into(),
                    );
                };
                let Some(path) = &self.mesh.key_file else {
                    return Err("relay.mesh.key_file is not set: every instance needs the same mesh key (e.g. `openssl rand -hex 32 > mesh.key`)".into());
                };
                let raw = std::fs::read(path).map_err(|e| {
                    format!("relay.mesh.key_file: cannot read {}: {e}", path.display())
                })?;
                let key = Zeroizing::new(raw.trim_ascii().to_vec());
                let m = MeshConfig {
                    listen,
                    advertise: self.mesh.advertise,
                    key,
                    redis_url: url.clone(),
                    prefix: redis_prefix.to_owned(),
                    presence_ttl: Duration::from_secs(self.mesh.presence_ttl_secs.max(3)),
                    allow_public_listen: self.mesh.allow_public_listen,
                };
                m.validate()?;
                Some(m)
            }
        };
        Ok(RelayServiceConfig {
            max_clients: size(self.max_clients),
            max_clients_per_source: size(self.max_clients_per_ip),
            rate_bytes_per_sec: self.rate_bytes_per_sec,
            burst_bytes: self.burst_bytes,
            max_queue_bytes: size(self.max_queue_bytes),
            max_queue_frames: size(self.max_queue_frames),
            max_backlog_bytes: size(self.max_backlog_bytes),
            verify_clients: self.verify_clients,
            mesh,
            ..RelayServiceConfig::default()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mesh_needs_redis_and_a_long_enough_key() {
        let mut r = RelaySettings::default();
        assert!(r
            .service_config(&StoreConfig::Sled, "p:")
            .unwrap()
            .mesh
            .is_none());
        r.mesh.listen = Some("127.0.0.1:0".parse().unwrap());
        let e = r.service_config(&StoreConfig::Sled, "p:").unwrap_err();
        assert!(e.contains("store = \"redis://"), "{e}");
        let redis = StoreConfig::Redis("redis://127.0.0.1:1".into());
        assert!(r
            .service_config(&redis, "p:")
            .unwrap_err()
            .contains("key_file"));
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("mesh.key");
        std::fs::write(&key, "short\n").unwrap();
        r.mesh.key_file = Some(key.clone());
        assert!(r
            .service_config(&redis, "p:")
            .unwrap_err()
            .contains("at least 32"));
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        // A public or wildcard listener needs the explicit opt-in (audit 18 M4).
        for public in ["0.0.0.0:7001", "203.0.113.5:7001", "[2001:db8::1]:7001"] {
            r.mesh.listen = Some(public.parse().unwrap());
            r.mesh.advertise = Some("10.0.0.1:7001".parse().unwrap());
            let e = r.service_config(&redis, "p:").unwrap_err();
            assert!(e.contains("allow_public_listen"), "{e}");
        }
        for private in [
            "10.1.2.3:7001",
            "192.168.1.1:7001",
            "100.64.0.9:7001",
            "[fd00::1]:7001",
        ] {
            r.mesh.listen = Some(private.parse().unwrap());
            assert!(r.service_config(&redis, "p:").is_ok(), "{private}");
        }
        r.mesh.advertise = None;
        r.mesh.allow_public_listen = true;
        // 0.0.0.0 cannot be dialled by the others: an advertise address is needed.
        r.mesh.listen = Some("0.0.0.0:7001".parse().unwrap());
        assert!(r
            .service_config(&redis, "p:")
            .unwrap_err()
            .contains("advertise"));
        r.mesh.advertise = Some("127.0.0.1:7001".parse().unwrap());
        let c = r.service_config(&redis, "p:").unwrap();
        assert_eq!(c.mesh.unwrap().key.len(), 64);
        r.max_queue_frames = 0;
        assert!(r.service_config(&redis, "p:").is_err());
        // Audit #18 L2: a burst (or queue) below one frame passed only small packets, for
        // ever.
        for (burst, queue, key) in [
            (1000, 1 << 20, "relay.burst_bytes"),
            (1 << 20, 1000, "relay.max_queue_bytes"),
        ] {
            let r = RelaySettings {
                burst_bytes: burst,
                max_queue_bytes: queue,
                ..RelaySettings::default()
            };
            let e = r.service_config(&StoreConfig::Sled, "p:").unwrap_err();
            assert!(e.contains(key) && e.contains("one relay frame"), "{e}");
        }
        RelaySettings::default()
            .service_config(&StoreConfig::Sled, "p:")
            .unwrap();
    }

    /// Every limit of the relay service is a `[relay]` key of the config file, carried
    /// into the service (spec/rendezvous.md §4.5); an unknown key is refused.
    #[test]
    fn relay_limits_come_from_the_config_file() {
        let c = crate::config::Config::from_toml(
            "[relay]\nmax_backlog_bytes = 12345\nmax_queue_frames = 77\nburst_bytes = 99999\n",
        )
        .unwrap();
        let s = c.relay.service_config(&StoreConfig::Sled, "").unwrap();
        assert_eq!(
            (s.max_backlog_bytes, s.max_queue_frames, s.burst_bytes),
            (12345, 77, 99999)
        );
        let zero = crate::config::Config::from_toml("[relay]\nmax_backlog_bytes = 0\n").unwrap();
        assert!(zero
            .relay
            .service_config(&StoreConfig::Sled, "")
            .unwrap_err()
            .contains("relay.max_backlog_bytes"));
        assert!(crate::config::Config::from_toml("[relay]\nmax_backlog = 1\n").is_err());
    }
}
