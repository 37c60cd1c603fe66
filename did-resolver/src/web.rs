//! `did:web` (W3C CCG "did:web Method Specification", §3.2 "Read (Resolve)").
//!
//! DID → URL: `did:web:example.com` → `https://example.com/.well-known/did.json`;
//! `did:web:example.com:user:alice` → `https://example.com/user/alice/did.json`;
//! a port is percent-encoded: `did:web:localhost%3A8443` → `https://localhost:8443/.well-known/did.json`.
//!
//! The fetch is HTTPS only (rustls, webpki roots plus optional extra roots), with a total
//! timeout, a response size limit, no redirects to another host or scheme, and a TTL cache.
//! Plain HTTP exists only with [`WebResolverConfig::allow_http`], for local tests.
//!
//! A did:web is named by whoever sends us a message, so resolving one is a request made on
//! a stranger's behalf (spec/identity.md §3.3). The resolver therefore connects only to
//! public addresses: an IP-literal host and every address a host name resolves to are
//! checked ([`is_public_ip`]) and only checked addresses are connected to (our own DNS
//! step inside the HTTP client, so a name that rebinds to 127.0.0.1 is refused too),
//! unless [`WebResolverConfig::allow_private_hosts`] is set for tests. Failures are
//! remembered for [`WebResolverConfig::failure_ttl`] (a second attempt fails at once), and
//! at most [`WebResolverConfig::max_concurrent`] fetches run at a time (more fail at once
//! with [`ResolveError::Busy`]). No proxy from the environment is used: a proxy would
//! resolve the host itself, past these checks.
//!
//! The fetch ([`WebResolver`]) is behind the default feature `web` (reqwest, tokio); the
//! URL mapping ([`did_web_url`], [`did_from_domain`]), the address check
//! ([`is_public_ip`]) and [`WebResolverConfig`] are pure and always there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub use url::Url;

#[cfg(feature = "web")]
mod fetch;
#[cfg(feature = "web")]
pub use fetch::WebResolver;

use crate::did::Did;
use crate::document::MAX_DOCUMENT_BYTES;
use crate::error::ResolveError;

/// did:web resolver settings.
#[derive(Clone, Debug)]
pub struct WebResolverConfig {
    /// Total time for one fetch (connect, TLS, request, body). Default 5 s.
    pub timeout: Duration,
    /// Largest response body accepted. Default 64 KiB.
    pub max_bytes: usize,
    /// How long a resolved document is reused. Default 5 minutes; zero disables the cache.
    pub cache_ttl: Duration,
    /// How long a failed resolution is remembered: within it the same DID fails at once
    /// with [`ResolveError::RecentlyFailed`] and nothing is fetched. Default 30 s; zero
    /// disables.
    pub failure_ttl: Duration,
    /// Most fetches in flight at once; a resolution beyond it fails at once with
    /// [`ResolveError::Busy`]. Default 16.
    pub max_concurrent: usize,
    /// Fetch `http://` instead of `https://`. For local testing only.
    pub allow_http: bool,
    /// Connect to loopback, private, link-local and other non-public addresses
    /// ([`is_public_ip`]). For local testing only: off, a stranger's did:web cannot make
    /// us reach services on our host or network.
    pub allow_private_hosts: bool,
    /// Extra trusted root certificates (DER, or PEM text), added to the webpki roots.
    /// Default: the process's [`crate::trust::extra_roots`].
    pub extra_roots: Vec<Vec<u8>>,
}

impl Default for WebResolverConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_bytes: MAX_DOCUMENT_BYTES,
            cache_ttl: Duration::from_secs(300),
            failure_ttl: Duration::from_secs(30),
            max_concurrent: 16,
            allow_http: false,
            allow_private_hosts: false,
            // The process's extra roots (`mpc-did --ca-cert`): one trust setting everywhere.
            extra_roots: crate::trust::extra_roots(),
        }
    }
}

impl WebResolverConfig {
    /// This configuration with loopback/private hosts allowed (local tests; see
    /// [`Self::allow_private_hosts`]).
    #[must_use]
    pub fn allowing_private_hosts(mut self) -> Self {
        self.allow_private_hosts = true;
        self
    }
}

/// Whether `ip` is a globally routable unicast address: not unspecified, loopback, private
/// (RFC 1918, ULA `fc00::/7`), shared (CGNAT `100.64.0.0/10`), link-local, multicast,
/// broadcast, documentation, benchmarking or reserved, nor an IPv6 form embedding such an
/// IPv4 address (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4).
#[must_use]
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", includes 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224) // multicast 224/4, reserved 240/4, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated), including :: and ::1.
    if seg[..6].iter().all(|s| *s == 0) {
        return seg[6] != 0 && is_public_v4(embedded_v4(seg[6], seg[7]));
    }
    // NAT64 well-known prefix 64:ff9b::/96 carries an IPv4 address.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(seg[6], seg[7]));
    }
    // 6to4 2002::/16 carries an IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        return is_public_v4(embedded_v4(seg[1], seg[2]));
    }
    !((seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (seg[0] & 0xff00) == 0xff00 // multicast
        || (seg[0] == 0x64 && seg[1] == 0xff9b) // local-use NAT64 64:ff9b:1::/48
        || (seg[0] == 0x100 && seg[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (seg[0] == 0x2001 && seg[1] < 0x200) // IETF protocol assignments incl. Teredo
        || (seg[0] == 0x2001 && seg[1] == 0xdb8)) // documentation
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

fn invalid(reason: impl Into<String>) -> ResolveError {
    ResolveError::InvalidMethodSpecificId {
        method: "web",
        reason: reason.into(),
    }
}

/// The HTTPS URL of a did:web's document (did:web spec §3.2 steps 1–6).
///
/// # Errors
/// [`ResolveError::UnsupportedMethod`] if not did:web; [`ResolveError::InvalidMethodSpecificId`]
/// for an invalid host, port or path segment (empty, `.`/`..`).
pub fn did_web_url(did: &Did) -> Result<Url, ResolveError> {
    if did.method() != "web" {
        return Err(ResolveError::UnsupportedMethod(did.method().to_owned()));
    }
    let mut segments = did.method_specific_id().split(':');
    let domain = segments.next().unwrap_or_default();
    // Only the port separator may be percent-encoded in the domain segment.
    let (host, port) = match domain
        .split_once("%3A")
        .or_else(|| domain.split_once("%3a"))
    {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || host.starts_with(['.', '-'])
        || host.ends_with('-')
        || host.contains("..")
    {
        return Err(invalid(format!("invalid host {host:?}")));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0 && !p.to_string().is_empty())
                .ok_or_else(|| invalid(format!("invalid port {p:?}")))?,
        ),
    };
    let path: Vec<&str> = segments.collect();
    for seg in &path {
        if seg.is_empty() || *seg == "." || *seg == ".." {
            return Err(invalid(format!("invalid path segment {seg:?}")));
        }
        // Percent-encoded '/', '.', '?' or '#' would change the URL's meaning: refuse.
        let lower = seg.to_ascii_lowercase();
        if ["%2f", "%2e", "%3f", "%23", "%5c"]
            .iter()
            .any(|p| lower.contains(p))
        {
            return Err(invalid(format!(
                "path segment {seg:?} encodes a reserved character"
            )));
        }
    }
    let authority = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let path = if path.is_empty() {
        "/.well-known/did.json".to_owned()
    } else {
        format!("/{}/did.json", path.join("/"))
    };
    let url = Url::parse(&format!("https://{authority}{path}"))
        .map_err(|e| invalid(format!("cannot form URL: {e}")))?;
    Ok(url)
}

/// The did:web for a `domain[:port][/path…]` string, e.g. `example.com:8443/user/alice` →
/// `did:web:example.com%3A8443:user:alice`.
///
/// # Errors
/// [`ResolveError::InvalidMethodSpecificId`] if the result is not a valid did:web.
pub fn did_from_domain(domain: &str) -> Result<Did, ResolveError> {
    let trimmed = domain.trim_end_matches('/');
    let (authority, path) = match trimmed.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (trimmed, None),
    };
    let mut msi = authority.to_ascii_lowercase().replacen(':', "%3A", 1);
    if let Some(p) = path {
        for seg in p.split('/') {
            msi.push(':');
            msi.push_str(seg);
        }
    }
    let did = Did::parse(&format!("did:web:{msi}"))
        .map_err(|e| invalid(format!("{domain:?} does not make a valid DID: {e}")))?;
    did_web_url(&did)?;
    Ok(did)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn url(did: &str) -> Result<String, ResolveError> {
        did_web_url(&Did::parse(did).unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn url_mapping_follows_the_spec_examples() {
        // did:web spec §3.2 examples.
        assert_eq!(
            url("did:web:w3c-ccg.github.io").unwrap(),
            "https://w3c-ccg.github.io/.well-known/did.json"
        );
        assert_eq!(
            url("did:web:w3c-ccg.github.io:user:alice").unwrap(),
            "https://w3c-ccg.github.io/user/alice/did.json"
        );
        assert_eq!(
            url("did:web:example.com%3A3000:user:alice").unwrap(),
            "https://example.com:3000/user/alice/did.json"
        );
        assert_eq!(
            url("did:web:localhost%3A8443").unwrap(),
            "https://localhost:8443/.well-known/did.json"
        );
    }

    #[test]
    fn url_mapping_rejects_bad_forms() {
        for bad in [
            "did:web:exa%41mple.com",
            "did:web:example.com%3A",
            "did:web:example.com%3A99999",
            "did:web:example.com%3Aabc",
            "did:web:example.com::x",
            "did:web:example.com:..",
            "did:web:example.com:a%2Fb",
            "did:web:-example.com",
            "did:web:example..com",
        ] {
            assert!(url(bad).is_err(), "{bad} should be rejected");
        }
        assert!(matches!(
            url("did:key:z6Mk"),
            Err(ResolveError::UnsupportedMethod(_))
        ));
    }

    #[test]
    fn did_from_domain_forms() {
        assert_eq!(
            did_from_domain("example.com").unwrap().as_str(),
            "did:web:example.com"
        );
        assert_eq!(
            did_from_domain("Example.com:8443/user/alice")
                .unwrap()
                .as_str(),
            "did:web:example.com%3A8443:user:alice"
        );
        assert!(did_from_domain("exa mple.com").is_err());
        assert!(did_from_domain("example.com//x").is_err());
    }
}
