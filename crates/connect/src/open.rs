//! Opening paths (spec/session.md §7.5): direct checks in rounds (TCP host, QUIC host,
//! QUIC punched, TCP punched) picked by [`crate::select`], raced against the relay
//! (spec/rendezvous.md §6.4): the relay is attached when no check has opened a path after a
//! short head start, and the upgrade (`keep`) moves the session to a direct path later.

use super::*;

impl Connector {
    /// Connect `handle` to the peer: direct candidates first, then the peer's relay
    /// candidates; with `relay_only`, the relay or nothing. When the peer has a relay
    /// candidate, the direct checks get `head_start`: if none of them has opened a path by
    /// then, they are dropped and the relay carries the session at once (happy eyeballs,
    /// spec/rendezvous.md §6.4); the upgrade of [`keep_path`] tries them again a moment
    /// later. A check that opened a path in time keeps its round going (settle, hello).
    pub(crate) async fn connect_path(
        &self,
        handle: &SessionHandle,
        peer: &str,
        remote: &[Candidate],
        relay_only: bool,
        deadline: tokio::time::Instant,
        head_start: Duration,
    ) -> Result<PathInfo, ConnectError> {
        let started = Instant::now();
        let has_direct = remote.iter().any(|c| select::rank(c).is_some());
        let relays: Vec<String> = remote.iter().filter_map(|c| c.relay_url.clone()).collect();
        let mut why = Vec::new();
        if !relay_only && has_direct {
            // Leave time for the relay when direct candidates do not answer: one full round
            // of checks (3 s) and an attach.
            let direct_deadline = if relays.is_empty() {
                deadline
            } else {
                deadline.min(tokio::time::Instant::now() + DIRECT_BUDGET)
            };
            let (opened_tx, opened) = tokio::sync::watch::channel(false);
            let direct = self.direct_path(handle, remote, direct_deadline, Some(opened_tx));
            tokio::pin!(direct);
            // Meanwhile the relay connection is made ready (a foreign relay is dialled and
            // authenticated now rather than after the checks).
            let warm = async {
                for url in &relays {
                    let _ = self.relay_connection(url).await;
                }
                std::future::pending::<()>().await;
            };
            let head = async {
                tokio::time::sleep(head_start).await;
                if *opened.borrow() {
                    std::future::pending::<()>().await;
                }
            };
            let raced = if relays.is_empty() || self.inner.relay.is_none() {
                Some(direct.await)
            } else {
                tokio::select! {
                    r = &mut direct => Some(r),
                    () = head => None,
                    () = warm => None,
                }
            };
            match raced {
                Some(Ok(p)) => {
                    tracing::info!(
                        "path to {peer}: {p} after {} ms of checks",
                        started.elapsed().as_millis()
                    );
                    return Ok(p);
                }
                Some(Err(e)) => {
                    tracing::info!(
                        "no direct path to {peer} ({e}) after {} ms; trying the relay",
                        started.elapsed().as_millis()
                    );
                    why.push(e);
                }
                None => {
                    tracing::info!(
                        "no direct path to {peer} opened within {} ms; the relay now, direct \
                         paths again in the background",
                        head_start.as_millis()
                    );
                    why.push(PathError::DirectTimedOut);
                }
            }
        }
        for url in &relays {
            // A relay stream fails as a whole when the relay reports an overload on its
            // connection; a fresh stream a moment later usually works.
            for attempt in 0..3u64 {
                match self.relay_path(handle, peer, url).await {
                    Ok(()) => {
                        tracing::info!(
                            "path to {peer}: relay {url} after {} ms",
                            started.elapsed().as_millis()
                        );
                        return Ok(PathInfo::Relayed { relay: url.clone() });
                    }
                    Err(e) => {
                        why.push(PathError::Relay {
                            url: url.clone(),
                            source: Box::new(e),
                        });
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                    }
                }
            }
        }
        if why.is_empty() {
            why.push(PathError::NoCandidate);
        }
        Err(ConnectError::NoPath {
            peer: peer.to_owned(),
            reason: PathError::All(why),
        })
    }

    /// A direct path (spec/session.md §7.5): TCP to the peer's host candidates and QUIC to
    /// its host and server-reflexive QUIC candidates, checked all at once and in rounds until
    /// `deadline`; the best that works (TCP host, QUIC host, QUIC punched, TCP punched)
    /// carries the session. `opened` is set once any check has opened a path.
    pub(crate) async fn direct_path(
        &self,
        handle: &SessionHandle,
        remote: &[Candidate],
        deadline: tokio::time::Instant,
        opened: Option<tokio::sync::watch::Sender<bool>>,
    ) -> Result<PathInfo, PathError> {
        let quic = self.inner.quic.as_ref().map(|q| q.endpoint.clone());
        let own = quic.as_ref().map(QuicEndpoint::local_addr);
        let punch_port = self.inner.tcp_punch.as_ref().map(|(port, _)| *port);
        let targets: Vec<(u8, Candidate)> = remote
            .iter()
            .filter_map(|c| {
                let r = select::rank(c)?;
                if c.transport == Transport::Quic
                    && !own.is_some_and(|o| quic::is_quic_target(c, o))
                {
                    return None;
                }
                // Simultaneous open only works when we announced a mapping too.
                if tcp_punch::is_tcp_punch_target(c) && punch_port.is_none() {
                    return None;
                }
                Some((r, c.clone()))
            })
            .take(MAX_DIRECT_CHECKS)
            .collect();
        if targets.is_empty() {
            return Err(PathError::NoDirectCandidate);
        }
        let settle = self.inner.config.upgrade.settle;
        let rounds = async {
            let mut pause = Duration::from_millis(20);
            loop {
                let last = match one_round(
                    handle,
                    &targets,
                    quic.as_ref(),
                    punch_port,
                    settle,
                    opened.as_ref(),
                )
                .await
                {
                    Ok(p) => return Ok(p),
                    // No candidate answered at all: another round now would fail the same
                    // way (the relay, or the upgrade's backoff, takes over).
                    Err((e, false)) => return Err(e),
                    // A path opened but the session did not connect on it (e.g. the peer
                    // had not processed the handshake yet): try again shortly.
                    Err((e, true)) => e,
                };
                if tokio::time::Instant::now() + pause > deadline {
                    return Err(last);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        };
        tokio::time::timeout_at(deadline, rounds)
            .await
            .unwrap_or_else(|_| Err(PathError::DirectTimedOut))
    }

    /// Open a path to `peer` through the relay at `url` (ours, or the peer's).
    pub(crate) async fn relay_path(
        &self,
        handle: &SessionHandle,
        peer: &str,
        url: &str,
    ) -> Result<(), PathError> {
        let conn = self.relay_connection(url).await?;
        let mut stream = conn
            .open_stream(self.relay_peer(peer).await?)
            .map_err(PathError::RelayIo)?;
        // The peer answers only after our hello, so whatever this stream already holds are
        // records of an earlier relay path (kept by the relay client while no stream was
        // open); they would fail to authenticate here and cost the new path.
        drain_stale(&mut stream).await;
        path::send_hello(&mut stream, &handle.path_id())
            .await
            .map_err(PathError::RelayIo)?;
        let info = PathInfo::Relayed {
            relay: url.to_owned(),
        };
        handle
            .attach_path_as(Box::new(stream), Some(info))
            .await
            .map_err(PathError::Attach)?;
        let mut st = handle.watch_state();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            st.wait_for(|s| *s != SessionState::Connecting),
        )
        .await;
        if handle.state() == SessionState::Connected {
            Ok(())
        } else {
            Err(PathError::RelayNoAnswer {
                state: handle.state(),
            })
        }
    }

    /// How the relay names `peer`: the Ed25519 key it authenticates with (the first
    /// authentication key of its DID document), which is also how the relay labels the
    /// packets it sends.
    pub(crate) async fn relay_peer(&self, peer: &str) -> Result<PeerAddr, PathError> {
        use mpc_did_resolver::DidResolver as _;
        let doc = self
            .inner
            .agent
            .client()
            .resolver()
            .resolve(peer)
            .await
            .map_err(PathError::Resolve)?;
        doc.authentication_methods()
            .iter()
            .find_map(|m| match m.key {
                mpc_did_resolver::PublicKey::Ed25519(k) => Some(PeerAddr::Key(k)),
                _ => None,
            })
            .ok_or_else(|| PathError::NoRelayKey {
                peer: peer.to_owned(),
            })
    }

    pub(crate) async fn relay_connection(
        &self,
        url: &str,
    ) -> Result<Arc<mpc_did_rendezvous::net::RelayConnection>, PathError> {
        let Some((setup, _, home)) = &self.inner.relay else {
            return Err(PathError::NoRelayIdentity);
        };
        let link = if setup.url == url {
            Arc::clone(home)
        } else {
            let mut foreign = self.inner.foreign_relays.lock().await;
            match foreign.get(url) {
                Some(l) => Arc::clone(l),
                None => {
                    let dial = RelayDial {
                        url: url.to_owned(),
                        identity: setup.identity.clone(),
                        expected_relay: None,
                        extra_roots: Vec::new(),
                    };
                    // Streams we open name the peers allowed to answer.
                    let link = Arc::new(
                        RelayLink::connect(dial, true, Backoff::default())
                            .await
                            .map_err(PathError::RelayConnect)?,
                    );
                    tokio::spawn(events::forward_relay_events(
                        link.subscribe(),
                        self.inner.events.clone(),
                    ));
                    foreign.insert(url.to_owned(), Arc::clone(&link));
                    link
                }
            }
        };
        // A relay that restarted comes back within seconds: wait for the link's re-dial
        // rather than failing the path at once (spec/rendezvous.md §7.3).
        link.connection(RELAY_WAIT)
            .await
            .ok_or_else(|| PathError::RelayDown {
                url: url.to_owned(),
            })
    }
}

/// How long opening a relay path waits for a relay link that is re-dialling.
pub(crate) const RELAY_WAIT: Duration = Duration::from_secs(5);

/// Most direct-path checks in one round.
pub(crate) const MAX_DIRECT_CHECKS: usize = 16;
/// How long the first connection tries direct paths before the relay when the peer has a
/// relay candidate: one round of checks (3 s each, in parallel) plus an attach.
pub(crate) const DIRECT_BUDGET: Duration = Duration::from_secs(6);
/// The direct checks' head start over the relay when nothing better is known
/// (spec/rendezvous.md §6.4): a QUIC Initial lost before the peer punched is re-sent after
/// ~300 ms, a crossing TCP SYN pair gets through at once.
pub(crate) const RELAY_HEAD_START: Duration = Duration::from_millis(500);
/// A direct check (TCP connect, QUIC handshake) without an answer after this has failed
/// (spec/rendezvous.md §5.3).
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a freshly attached path may take to carry the peer's first record.
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// One round of direct checks: all at once, selection by rank (spec/session.md §7.5), then
/// the path hello on the winner; if the session does not connect on it, the next success.
/// The error says why and whether any path opened at all (worth another round).
pub(crate) async fn one_round(
    handle: &SessionHandle,
    targets: &[(u8, Candidate)],
    quic: Option<&QuicEndpoint>,
    punch_port: Option<u16>,
    settle: Duration,
    opened_signal: Option<&tokio::sync::watch::Sender<bool>>,
) -> Result<PathInfo, (PathError, bool)> {
    let started = Instant::now();
    let mut checks = tokio::task::JoinSet::new();
    for (i, (_, c)) in targets.iter().enumerate() {
        let (c, q) = (c.clone(), quic.cloned());
        checks.spawn(async move { (i, open_direct(&c, q.as_ref(), punch_port).await) });
    }
    let mut sel = Selection::new(targets.iter().map(|t| t.0).collect(), settle);
    let mut opened: HashMap<usize, (path::BoxPath, PathInfo)> = HashMap::new();
    let mut why = Vec::new();
    let order = loop {
        let done = match sel.decide(Instant::now()) {
            Decision::Take(order) => break order,
            Decision::NothingWorked => return Err((PathError::All(why), false)),
            Decision::Wait(Some(t)) => tokio::select! {
                d = checks.join_next() => d,
                () = tokio::time::sleep_until(t.into()) => continue,
            },
            Decision::Wait(None) => checks.join_next().await,
        };
        match done {
            Some(Ok((i, r))) => {
                sel.on_result(i, r.is_ok(), Instant::now());
                match r {
                    Ok(p) => {
                        tracing::debug!(
                            "check {} opened after {} ms",
                            p.1,
                            started.elapsed().as_millis()
                        );
                        if let Some(s) = opened_signal {
                            s.send_replace(true);
                        }
                        opened.insert(i, p);
                    }
                    Err(e) => {
                        tracing::debug!(
                            "check failed after {} ms: {e}",
                            started.elapsed().as_millis()
                        );
                        why.push(e);
                    }
                }
            }
            // Checks do not panic; a set that ran dry without a decision has nothing.
            Some(Err(_)) | None => return Err((PathError::All(why), false)),
        }
    };
    // Checks still running cannot win any more.
    checks.abort_all();
    for i in order {
        let Some((mut p, info)) = opened.remove(&i) else {
            continue;
        };
        // The hello is the nomination: the acceptor attaches whatever path names its session.
        match path::send_hello(&mut p, &handle.path_id()).await {
            Ok(()) => {
                handle
                    .attach_path_as(p, Some(info.clone()))
                    .await
                    .map_err(|e| (PathError::Attach(e), false))?;
                if connected_soon(handle).await {
                    return Ok(info);
                }
                why.push(PathError::NoAnswer { info });
            }
            Err(source) => why.push(PathError::Hello { info, source }),
        }
    }
    Err((PathError::All(why), true))
}

/// Connected only once the peer's first record authenticates on the new path (spec §7.3);
/// a listener that does not know the session drops it.
pub(crate) async fn connected_soon(handle: &SessionHandle) -> bool {
    let mut st = handle.watch_state();
    let _ = tokio::time::timeout(
        CONNECT_WAIT,
        st.wait_for(|s| *s != SessionState::Connecting),
    )
    .await;
    handle.state() == SessionState::Connected
}

/// One direct check: a TCP connection to a host candidate, or a QUIC connection (after a
/// punch datagram that opens our NAT towards it) with one stream opened on it.
pub(crate) async fn open_direct(
    c: &Candidate,
    quic: Option<&QuicEndpoint>,
    punch_port: Option<u16>,
) -> Result<(path::BoxPath, PathInfo), PathError> {
    let addr = c.addr;
    match (c.transport, quic) {
        (Transport::Tcp, _) if tcp_punch::is_tcp_punch_target(c) => {
            let port = punch_port.ok_or(PathError::Unsupported {
                addr,
                transport: c.transport,
            })?;
            let tcp = tcp_punch::punch(port, addr, tcp_punch::PUNCH_TIMEOUT)
                .await
                .map_err(|source| match source.kind() {
                    std::io::ErrorKind::TimedOut => PathError::TcpTimedOut { addr },
                    _ => PathError::Tcp { addr, source },
                })?;
            Ok((Box::new(tcp), PathInfo::Direct { remote: Some(addr) }))
        }
        (Transport::Tcp, _) => {
            let tcp = tokio::time::timeout(CHECK_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| PathError::TcpTimedOut { addr })?
                .map_err(|source| PathError::Tcp { addr, source })?;
            tcp.set_nodelay(true)
                .map_err(|source| PathError::Tcp { addr, source })?;
            Ok((Box::new(tcp), PathInfo::Direct { remote: Some(addr) }))
        }
        (Transport::Quic, Some(q)) => {
            let _ = q.punch(addr).await;
            let conn = tokio::time::timeout(CHECK_TIMEOUT, q.connect(addr))
                .await
                .map_err(|_| PathError::QuicTimedOut {
                    addr,
                    after: CHECK_TIMEOUT,
                })?
                .map_err(|e| PathError::Quic {
                    addr,
                    source: Box::new(e),
                })?;
            let (send, recv) = conn.open_bi().await.map_err(|e| PathError::Quic {
                addr,
                source: Box::new(e),
            })?;
            let p = QuicPath::new(conn, send, recv);
            Ok((Box::new(p), PathInfo::Quic { remote: addr }))
        }
        _ => Err(PathError::Unsupported {
            addr,
            transport: c.transport,
        }),
    }
}

pub(crate) fn relay_addr(url: &str) -> Option<SocketAddr> {
    url::Url::parse(url)
        .ok()?
        .socket_addrs(|| Some(443))
        .ok()?
        .into_iter()
        .next()
}

pub(crate) fn host_candidates(local: SocketAddr, agent: &Agent) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out = vec![SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        local.port(),
    )];
    // The interface that routes towards our mediator is the one peers elsewhere can
    // reach (a UDP "connect" sends nothing; it only picks the route).
    let mediator_host = url::Url::parse(&agent.client().info.http)
        .ok()
        .and_then(|u| u.socket_addrs(|| Some(443)).ok())
        .and_then(|a| a.into_iter().next());
    if let Some(target) = mediator_host {
        if let Ok(sock) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
            if sock.connect(target).is_ok() {
                if let Ok(l) = sock.local_addr() {
                    let a = SocketAddr::new(l.ip(), local.port());
                    if !l.ip().is_loopback() && !out.contains(&a) {
                        out.insert(0, a);
                    }
                }
            }
        }
    }
    out
}
