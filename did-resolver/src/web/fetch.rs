//! The did:web fetch over HTTPS (feature `web`): the HTTP client with its public-only DNS
//! step and same-origin redirect policy, the document and failure caches, the in-flight
//! limit and its per-site share. Everything here is I/O; the URL mapping and address
//! checks it applies are the pure parts in [`super`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{did_web_url, is_public_ip, Url, WebResolverConfig};
use crate::did::Did;
use crate::document::DidDocument;
use crate::error::ResolveError;

/// Most cached documents (and, separately, most remembered failures); beyond this expired
/// entries are dropped, then the oldest.
const MAX_CACHE_ENTRIES: usize = 1024;
/// Most redirects followed (all on the same host).
const MAX_REDIRECTS: usize = 3;
/// One site may use at most this fraction of `max_concurrent` (1/4: 4 of the default 16),
/// and at least [`SITE_SHARE_MIN`]: the DIDs fetched are named by strangers, so one silent
/// host must not hold every slot.
const SITE_SHARE_DIVISOR: usize = 4;
/// Fetches one site may always have in flight (within `max_concurrent`).
const SITE_SHARE_MIN: usize = 2;

/// Resolves `did:web` DIDs over HTTPS. Cloning shares the client and the caches.
#[derive(Clone, Debug)]
pub struct WebResolver {
    client: reqwest::Client,
    config: Arc<WebResolverConfig>,
    cache: Arc<TtlCache<DidDocument>>,
    failures: Arc<TtlCache<String>>,
    in_flight: Arc<tokio::sync::Semaphore>,
    sites: Arc<SiteSlots>,
}

/// Fetches in flight per site ([`site_of`]), each at most `share`: a stranger who names
/// `did:web:<silent-host>:<n>` DIDs (each held until the timeout) takes one site's share,
/// not every slot, so did:web senders on other sites are still resolved.
#[derive(Debug)]
struct SiteSlots {
    share: usize,
    in_flight: Mutex<HashMap<String, usize>>,
}

/// One fetch's place in its site's share, given back on drop.
struct SitePermit {
    slots: Arc<SiteSlots>,
    site: String,
}

impl SiteSlots {
    fn acquire(self: &Arc<Self>, site: &str) -> Option<SitePermit> {
        let mut map = self.in_flight.lock().ok()?;
        let n = map.entry(site.to_owned()).or_insert(0);
        if *n >= self.share {
            return None;
        }
        *n += 1;
        Some(SitePermit {
            slots: self.clone(),
            site: site.to_owned(),
        })
    }
}

impl Drop for SitePermit {
    fn drop(&mut self) {
        if let Ok(mut map) = self.slots.in_flight.lock() {
            if let Some(n) = map.get_mut(&self.site) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.site);
                }
            }
        }
    }
}

/// What shares one site's fetch slots: an IP-literal host itself, else the last two labels
/// of the host name (`a1.evil.example` and `a2.evil.example` are one site; under a public
/// suffix such as `co.uk` this groups more than one owner, which matters only while that
/// suffix has its share in flight at once). The port does not count.
fn site_of(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return host;
    }
    let mut labels = host.rsplitn(3, '.');
    match (labels.next(), labels.next()) {
        (Some(tld), Some(name)) => format!("{name}.{tld}"),
        _ => host,
    }
}

#[derive(Debug)]
struct RedirectRefused;

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("redirect to another host or scheme refused")
    }
}

impl std::error::Error for RedirectRefused {}

/// Our DNS step refused every address of a host.
#[derive(Debug)]
struct ForbiddenHost {
    host: String,
    addrs: Vec<IpAddr>,
}

impl std::fmt::Display for ForbiddenHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to non-public addresses {:?}",
            self.host, self.addrs
        )
    }
}

impl std::error::Error for ForbiddenHost {}

/// The HTTP client's DNS step: resolve, then hand over only public addresses, so the
/// address connected to is the address checked (no second lookup to rebind).
struct PublicOnlyDns;

impl reqwest::dns::Resolve for PublicOnlyDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| is_public_ip(a.ip()))
                .collect();
            if public.is_empty() {
                let addrs = all.iter().map(SocketAddr::ip).collect();
                return Err(Box::new(ForbiddenHost { host, addrs })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl WebResolver {
    /// Builds the HTTPS client.
    ///
    /// # Errors
    /// [`ResolveError::Config`] if an extra root certificate does not parse or the client
    /// cannot be built.
    pub fn new(config: WebResolverConfig) -> Result<Self, ResolveError> {
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt.previous().first().is_some_and(|first| {
                first.scheme() == attempt.url().scheme()
                    && first.host_str() == attempt.url().host_str()
                    && first.port_or_known_default() == attempt.url().port_or_known_default()
            });
            if !same_origin || attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(RedirectRefused)
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(policy)
            .no_proxy()
            .user_agent(concat!("mpc-did/", env!("CARGO_PKG_VERSION")))
            .https_only(!config.allow_http);
        if !config.allow_private_hosts {
            builder = builder.dns_resolver(Arc::new(PublicOnlyDns));
        }
        for root in &config.extra_roots {
            let cert = if root.starts_with(b"-----BEGIN") {
                reqwest::Certificate::from_pem(root)
            } else {
                reqwest::Certificate::from_der(root)
            }
            .map_err(|e| ResolveError::Config(format!("extra root certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| ResolveError::Config(error_chain(&e)))?;
        Ok(Self {
            client,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
            sites: Arc::new(SiteSlots {
                share: (config.max_concurrent / SITE_SHARE_DIVISOR).max(SITE_SHARE_MIN),
                in_flight: Mutex::default(),
            }),
            config: Arc::new(config),
            cache: Arc::default(),
            failures: Arc::default(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &WebResolverConfig {
        &self.config
    }

    /// Resolves a `did:web`.
    ///
    /// # Errors
    /// See [`ResolveError`]: invalid DID, a non-public host
    /// ([`ResolveError::ForbiddenAddress`]), too many fetches in flight
    /// ([`ResolveError::Busy`]), a failure remembered from a recent attempt
    /// ([`ResolveError::RecentlyFailed`]), transport errors (timeout, refused redirect,
    /// HTTP status, too large), invalid document, id mismatch.
    pub async fn resolve(&self, did: &str) -> Result<DidDocument, ResolveError> {
        let parsed = Did::parse(did)?;
        self.resolve_did(&parsed).await
    }

    pub(crate) async fn resolve_did(&self, did: &Did) -> Result<DidDocument, ResolveError> {
        if did.method() != "web" {
            return Err(ResolveError::UnsupportedMethod(did.method().to_owned()));
        }
        if let Some(doc) = self.cached(did.as_str()) {
            return Ok(doc);
        }
        if let Some(reason) = self.recent_failure(did.as_str()) {
            return Err(ResolveError::RecentlyFailed {
                did: did.to_string(),
                reason,
            });
        }
        // Fail fast when saturated: waiting would let a flood of stranger-named DIDs queue
        // up behind each other (and behind our own resolutions). One site gets at most its
        // share of the slots, so strangers naming one silent host cannot take them all.
        let site = did_web_url(did)
            .ok()
            .and_then(|u| u.host_str().map(site_of))
            .unwrap_or_default();
        let Some(_site_permit) = self.sites.acquire(&site) else {
            return Err(ResolveError::Busy {
                limit: self.sites.share,
            });
        };
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            return Err(ResolveError::Busy {
                limit: self.config.max_concurrent,
            });
        };
        let result = self.fetch_document(did).await;
        match &result {
            Ok(doc) => self.store(did.as_str(), doc),
            Err(e) => self.remember_failure(did.as_str(), e),
        }
        result
    }

    async fn fetch_document(&self, did: &Did) -> Result<DidDocument, ResolveError> {
        let mut url = did_web_url(did)?;
        if self.config.allow_http {
            url.set_scheme("http").map_err(|()| {
                ResolveError::Config("cannot switch URL scheme to http".to_owned())
            })?;
        }
        // An IP-literal host never reaches the DNS step, so it is checked here.
        if !self.config.allow_private_hosts {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(ip) = literal.filter(|ip| !is_public_ip(*ip)) {
                return Err(ResolveError::ForbiddenAddress {
                    url: url.to_string(),
                    reason: format!("{ip} is not a public address"),
                });
            }
        }
        let body = self.fetch(&url).await?;
        let doc = DidDocument::from_json_slice(&body).map_err(|error| ResolveError::Document {
            did: did.to_string(),
            error,
        })?;
        if doc.id != did.as_str() {
            return Err(ResolveError::IdMismatch {
                expected: did.to_string(),
                found: doc.id,
            });
        }
        Ok(doc)
    }

    async fn fetch(&self, url: &Url) -> Result<Vec<u8>, ResolveError> {
        let max = self.config.max_bytes;
        let map_err = |e: reqwest::Error| self.map_reqwest_error(url, &e);
        let mut resp = self
            .client
            .get(url.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/did+json, application/json",
            )
            .send()
            .await
            .map_err(map_err)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ResolveError::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let too_large = || ResolveError::TooLarge {
            url: url.to_string(),
            max,
        };
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        // Read chunk by chunk so a server that lies about (or omits) Content-Length cannot
        // make us buffer more than `max`.
        while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn map_reqwest_error(&self, url: &Url, e: &reqwest::Error) -> ResolveError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(f) = c.downcast_ref::<ForbiddenHost>() {
                return ResolveError::ForbiddenAddress {
                    url: url.to_string(),
                    reason: f.to_string(),
                };
            }
            cause = c.source();
        }
        if e.is_timeout() {
            ResolveError::Timeout {
                url: url.to_string(),
                secs: self.config.timeout.as_secs_f64(),
            }
        } else if e.is_redirect() {
            ResolveError::RedirectRefused {
                url: url.to_string(),
            }
        } else if e.is_builder() && url.scheme() == "http" {
            ResolveError::InsecureUrl(url.to_string())
        } else {
            ResolveError::Http {
                url: url.to_string(),
                reason: error_chain(e),
            }
        }
    }

    /// Whether [`Self::resolve`] would answer `did` without a fetch: its document is
    /// cached, or a recent failure is remembered (spec/lobby.md §7 "Lanes").
    #[must_use]
    pub fn is_settled(&self, did: &str) -> bool {
        self.cached(did).is_some() || self.recent_failure(did).is_some()
    }

    fn cached(&self, did: &str) -> Option<DidDocument> {
        self.cache.get(did, self.config.cache_ttl)
    }

    fn store(&self, did: &str, doc: &DidDocument) {
        self.cache.insert(did, doc.clone(), self.config.cache_ttl);
    }

    fn recent_failure(&self, did: &str) -> Option<String> {
        self.failures.get(did, self.config.failure_ttl)
    }

    fn remember_failure(&self, did: &str, e: &ResolveError) {
        self.failures
            .insert(did, e.to_string(), self.config.failure_ttl);
    }

    /// Drops every cached document and every remembered failure.
    pub fn clear_cache(&self) {
        self.cache.map().clear();
        self.failures.map().clear();
    }
}

impl crate::DidResolver for WebResolver {
    fn resolve(
        &self,
        did: &str,
    ) -> impl std::future::Future<Output = Result<DidDocument, ResolveError>> + Send {
        let did = did.to_owned();
        async move { WebResolver::resolve(self, &did).await }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Entries by DID that expire after a TTL, at most [`MAX_CACHE_ENTRIES`] of them (expired
/// ones are dropped first, then the oldest); a zero TTL disables it.
#[derive(Debug)]
struct TtlCache<V>(Mutex<HashMap<String, (Instant, V)>>);

impl<V> Default for TtlCache<V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone> TtlCache<V> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, V)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, did: &str, ttl: Duration) -> Option<V> {
        if ttl.is_zero() {
            return None;
        }
        self.map()
            .get(did)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, did: &str, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut map = self.map();
        if map.len() >= MAX_CACHE_ENTRIES {
            map.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        if map.len() >= MAX_CACHE_ENTRIES {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(did.to_owned(), (Instant::now(), value));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod site_tests {
    use super::*;

    #[test]
    fn sites_group_subdomains_not_ports() {
        assert_eq!(site_of("a1.Evil.example."), "evil.example");
        assert_eq!(site_of("evil.example"), "evil.example");
        assert_eq!(site_of("localhost"), "localhost");
        assert_eq!(site_of("127.0.0.2"), "127.0.0.2");
        assert_eq!(site_of("[::1]"), "[::1]");
    }

    #[test]
    fn a_site_holds_at_most_its_share() {
        let slots = Arc::new(SiteSlots {
            share: 2,
            in_flight: Mutex::default(),
        });
        let a = slots.acquire("evil.example").unwrap();
        let _b = slots.acquire("evil.example").unwrap();
        assert!(slots.acquire("evil.example").is_none());
        assert!(slots.acquire("good.example").is_some());
        drop(a);
        assert!(slots.acquire("evil.example").is_some());
    }
}
