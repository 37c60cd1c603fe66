//! Negotiation (spec/session.md §2): `propose`/`accept`/`handshake`, trickled
//! `candidates` and `close` on a DIDComm thread per session, routed by [`dispatch`].

use super::*;

impl Connector {
    /// Propose a secure session to `peer` and connect its path (we dial).
    ///
    /// # Errors
    /// The peer declines, does not answer in time, the handshake fails, or none of its
    /// candidates can be reached.
    pub async fn propose(
        &self,
        peer: &str,
        binding: &Binding,
    ) -> Result<Established, ConnectError> {
        let start = Instant::now();
        let me = self.inner.agent.did().to_owned();
        let mut sid = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut sid);
        let sid_hex = hex::encode(sid);
        let (proposer, body) =
            Proposer::new(sid, &binding.mpc_session_id, binding.roster_hash, &me, peer);
        let mut rx = self.open_thread(&sid_hex);
        let result = async {
            let propose = message(&sid_hex, PROPOSE_TYPE, &body, None)?;
            // Both at once (spec/rendezvous.md §6.4): the acceptor keeps candidates that
            // arrive before the proposal (orphans), so their order does not matter.
            let (sent, cands) = tokio::join!(
                self.inner.agent.send_signed(peer, propose),
                self.send_candidates(peer, &sid_hex)
            );
            sent?;
            cands?;

            let mut remote = Vec::new();
            let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
            let proposed = Instant::now();
            let accept: AcceptBody = loop {
                let m = self
                    .next(&mut rx, deadline, peer, "accept the proposal")
                    .await?;
                match kind(&m) {
                    Some("accept") if signed_by(&m, peer) => break body_of(&m, peer)?,
                    Some("candidates") => remote.extend(candidates_of(&m)),
                    Some("close") => return Err(closed(&m, peer)),
                    _ => tracing::debug!("ignored {} from {:?}", m.message.type_, m.sender),
                }
            };
            // One DIDComm round trip through the mediators: an upper bound for the direct
            // round trip the checks need, added to their head start over the relay.
            let round_trip = proposed.elapsed();
            tracing::info!(
                "secure session {sid_hex}: {peer} accepted after {} ms",
                round_trip.as_millis()
            );
            let (session, hs) = proposer
                .on_accept(&accept, SessionConfig::default(), 0)
                .map_err(|e| self.handshake_failed(peer, &sid_hex, &e.to_string()))?;
            let handshake = message(&new_id(), HANDSHAKE_TYPE, &hs, Some(&sid_hex))?;
            // Sent while the checks start (spec/rendezvous.md §6.4): a path that opens before
            // the acceptor has the handshake waits at its router until the session is
            // registered (spec/session.md §7.5).
            let hs_sent = self.inner.agent.send(peer, handshake);
            tokio::pin!(hs_sent);
            let mut hs_done = false;
            let handle = SessionHandle::spawn(session, self.inner.config.driver.clone());
            // The acceptor's candidates may still be on their way.
            while remote.is_empty() {
                let m = tokio::select! {
                    m = self.next(&mut rx, deadline, peer, "send its candidates") => m?,
                    r = &mut hs_sent, if !hs_done => {
                        r?;
                        hs_done = true;
                        continue;
                    }
                };
                match kind(&m) {
                    Some("candidates") => remote.extend(candidates_of(&m)),
                    Some("close") => return Err(closed(&m, peer)),
                    _ => tracing::debug!("ignored {} from {peer}", m.message.type_),
                }
            }
            remote.sort_by_key(|c: &Candidate| std::cmp::Reverse(c.priority));
            let shared = RemoteCandidates::new(remote.clone());
            let (_, closed_rx) = mpsc::channel(1);
            let thread = std::mem::replace(&mut rx, closed_rx);
            self.follow(&sid_hex, peer, &handle, &shared, thread);
            // Half the DIDComm round trip: it runs through the mediator and two agents, so it
            // over-estimates the direct round trip the checks need.
            let head_start = (RELAY_HEAD_START + round_trip / 2).min(Duration::from_millis(1500));
            let checks_from = Instant::now();
            let path = {
                let opening = self.connect_path(
                    &handle,
                    peer,
                    &remote,
                    self.inner.config.force_relay,
                    deadline,
                    head_start,
                );
                tokio::pin!(opening);
                loop {
                    tokio::select! {
                        p = &mut opening => break p,
                        r = &mut hs_sent, if !hs_done => {
                            r?;
                            hs_done = true;
                        }
                    }
                }
            };
            if !hs_done {
                hs_sent.await?;
            }
            let path = path?;
            tracing::info!(
                "secure session {sid_hex} with {peer} up on {path} after {} ms \
                 (negotiation {} ms, path {} ms)",
                start.elapsed().as_millis(),
                checks_from.duration_since(start).as_millis(),
                checks_from.elapsed().as_millis()
            );
            tokio::spawn(keep_path(
                self.clone(),
                handle.clone(),
                peer.to_owned(),
                shared,
            ));
            Ok(Established {
                handle,
                peer: peer.to_owned(),
                session_id: sid_hex.clone(),
                path,
                setup: start.elapsed(),
                remote,
                proposer: true,
            })
        }
        .await;
        if let Err(e) = &result {
            self.given_up(peer, &sid_hex, e).await;
        }
        self.record(result)
    }

    /// Wait for `peer`'s proposal for `binding`, accept it, and wait until the peer has
    /// connected the path.
    ///
    /// # Errors
    /// No proposal in time, a proposal for another binding (declined with `close` code 1),
    /// or a failed handshake.
    pub async fn accept(&self, peer: &str, binding: &Binding) -> Result<Established, ConnectError> {
        let me = self.inner.agent.did().to_owned();
        let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
        let proposal = self.wait_proposal(peer, binding, deadline).await?;
        let start = Instant::now();
        let body: ProposeBody = body_of(&proposal, peer)?;
        let sid_hex = body.session_id.clone();
        let mut rx = self.open_thread(&sid_hex);
        let result = async {
            let (acceptor, accept) = match Acceptor::on_propose(
                &body,
                &binding.mpc_session_id,
                binding.roster_hash,
                &me,
                peer,
            ) {
                Ok(a) => a,
                Err(e) => {
                    // Another MPC session, roster or suite: declined (code 1); a
                    // malformed proposal (not lowercase hex of the stated length, an
                    // over-long field) is a handshake failure (code 2), spec §2.
                    let code = if mpc_did_session::messages::is_decline(&e) {
                        1
                    } else {
                        2
                    };
                    self.send_close(peer, &sid_hex, code, &e.to_string()).await;
                    return Err(ConnectError::Handshake {
                        peer: peer.to_owned(),
                        reason: e.to_string(),
                    });
                }
            };
            // The proposer may reach us through our relay as soon as it has our accept: let
            // it through (our relay connection accepts only peers we named).
            if let Some((_, _, link)) = &self.inner.relay {
                match self.relay_peer(peer).await {
                    Ok(addr) => link.allow_peer(&addr),
                    Err(e) => tracing::debug!("cannot name {peer} to our relay: {e}"),
                }
            }
            let accept = message(&new_id(), ACCEPT_TYPE, &accept, Some(&proposal.message.id))?;
            let mut remote = Vec::new();
            // The proposer's candidates usually came with its proposal (they are sent at
            // once): punch them before our accept leaves, so the proposer's first QUIC
            // Initial, sent when the accept reaches it, finds our NAT open. A lost Initial
            // costs a retransmission and, in quinn, reads as congestion (spec/rendezvous.md
            // §6.4 item 3).
            let mut early = Vec::new();
            while let Ok(m) = rx.try_recv() {
                if m.sender.as_deref() != Some(peer) || !m.meta.authenticated {
                    tracing::warn!(sender = ?m.sender, "dropped a negotiation message not from {peer}");
                } else if kind(&m) == Some("candidates") {
                    let more = candidates_of(&m);
                    self.punch_early(&more);
                    remote.extend(more);
                } else {
                    early.push(m);
                }
            }
            let mut early = early.into_iter();
            // Candidates that arrive while our accept is on its way are punched at once too.
            let sends = async {
                let (sent, cands) = tokio::join!(
                    self.inner.agent.send_signed(peer, accept),
                    self.send_candidates(peer, &sid_hex)
                );
                sent?;
                cands
            };
            tokio::pin!(sends);
            let mut sends_done = false;
            let hs: HandshakeBody = loop {
                let m = match early.next() {
                    Some(m) => m,
                    None => tokio::select! {
                        m = self.next(&mut rx, deadline, peer, "complete the handshake") => m?,
                        r = &mut sends, if !sends_done => {
                            r?;
                            sends_done = true;
                            continue;
                        }
                    },
                };
                match kind(&m) {
                    Some("handshake") => break body_of(&m, peer)?,
                    Some("candidates") => {
                        let more = candidates_of(&m);
                        // Punch now, before the handshake: the proposer starts its checks
                        // as soon as it has our accept, and its first QUIC Initial / SYN
                        // then finds our NAT open (spec/rendezvous.md §6.4).
                        self.punch_early(&more);
                        remote.extend(more);
                    }
                    Some("close") => return Err(closed(&m, peer)),
                    _ => {}
                }
            };
            if !sends_done {
                sends.await?;
            }
            let session = acceptor
                .on_handshake(&hs, SessionConfig::default(), 0)
                .map_err(|e| self.handshake_failed(peer, &sid_hex, &e.to_string()))?;
            let handle = SessionHandle::spawn(session, self.inner.config.driver.clone());
            self.inner.router.register(&handle);
            let shared = RemoteCandidates::new(remote.clone());
            let (_, closed_rx) = mpsc::channel(1);
            let thread = std::mem::replace(&mut rx, closed_rx);
            self.follow(&sid_hex, peer, &handle, &shared, thread);
            if let Some(q) = &self.inner.quic {
                tokio::spawn(quic::punch_while_relayed(
                    q.endpoint.clone(),
                    handle.clone(),
                    Arc::clone(&shared),
                    q.setup.punch_interval,
                ));
                if let Some((port, _)) = &self.inner.tcp_punch {
                    tokio::spawn(tcp_punch::punch_while_relayed(
                        self.inner.router.clone(),
                        *port,
                        handle.clone(),
                        Arc::clone(&shared),
                        q.setup.punch_interval,
                    ));
                }
            }
            if let Some((setup, _, link)) = &self.inner.relay {
                match self.relay_peer(peer).await {
                    Ok(addr) => {
                        tokio::spawn(serve_relay_paths(
                            Arc::clone(link),
                            handle.clone(),
                            addr,
                            setup.url.clone(),
                        ));
                    }
                    Err(e) => tracing::warn!("no relay path possible with {peer}: {e}"),
                }
            }
            let mut state = handle.watch_state();
            let connected = tokio::time::timeout_at(
                deadline,
                state.wait_for(|s| *s == SessionState::Connected),
            )
            .await;
            if !matches!(connected, Ok(Ok(_))) {
                return Err(ConnectError::Timeout {
                    peer: peer.to_owned(),
                    what: "connect the data path".into(),
                    secs: self.inner.config.handshake_timeout.as_secs(),
                });
            }
            let path = handle
                .path()
                .current
                .unwrap_or(PathInfo::Direct { remote: None });
            Ok(Established {
                handle,
                peer: peer.to_owned(),
                session_id: sid_hex.clone(),
                path,
                setup: start.elapsed(),
                remote,
                proposer: false,
            })
        }
        .await;
        if let Err(e) = &result {
            self.given_up(peer, &sid_hex, e).await;
        }
        self.record(result)
    }

    /// A proposal or acceptance that failed: a timeout is told to the peer (`close` code
    /// 3, spec §2 "Driver timers"; handshake failures and declines were told where they
    /// happened), and the secure session is forgotten.
    async fn given_up(&self, peer: &str, sid: &str, e: &ConnectError) {
        if let ConnectError::Timeout { what, .. } = e {
            self.send_close(peer, sid, 3, &format!("no answer in time: {what}"))
                .await;
        }
        self.forget(sid);
    }

    /// After establishment, keep the negotiation thread open for the session's life:
    /// trickled `candidates` from `peer` add to `shared` (and wake the upgrade, §7.5).
    pub(crate) fn follow(
        &self,
        sid: &str,
        peer: &str,
        handle: &SessionHandle,
        shared: &Arc<RemoteCandidates>,
        mut rx: mpsc::Receiver<Inbound>,
    ) {
        if let Ok(mut r) = self.inner.remotes.lock() {
            r.insert(sid.to_owned(), Arc::clone(shared));
        }
        let (this, sid, peer, handle, shared) = (
            Arc::downgrade(&self.inner),
            sid.to_owned(),
            peer.to_owned(),
            handle.clone(),
            Arc::clone(shared),
        );
        tokio::spawn(async move {
            let ended = handle.ended();
            tokio::pin!(ended);
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) if m.sender.as_deref() == Some(peer.as_str())
                            && m.meta.authenticated
                            && kind(&m) == Some("candidates") =>
                        {
                            if shared.add(candidates_of(&m)) {
                                tracing::info!("secure session {sid}: {peer} announced new candidates");
                            }
                        }
                        // spec §2: "`close` ends the secure session (both its control
                        // state and its transport)", also once it is up.
                        Some(m) if m.sender.as_deref() == Some(peer.as_str())
                            && m.meta.authenticated
                            && kind(&m) == Some("close") =>
                        {
                            let ConnectError::Closed { code, reason, .. } = closed(&m, &peer) else {
                                continue;
                            };
                            tracing::info!("secure session {sid}: {peer} closed it (code {code}: {reason})");
                            handle.closed_by_peer(code, &reason).await;
                            break;
                        }
                        Some(m) => tracing::debug!("secure session {sid}: ignored {} from {:?}", m.message.type_, m.sender),
                        None => break,
                    },
                    state = &mut ended => {
                        // A session the driver failed (a protocol error, no path for too
                        // long) is told to the peer: DIDComm `close` code 4 (spec §5.3).
                        if let (SessionState::Failed(why), Some(inner)) = (state, this.upgrade()) {
                            Connector { inner }.send_close(&peer, &sid, 4, &why).await;
                        }
                        break;
                    }
                }
            }
            if let Some(inner) = this.upgrade() {
                if let Ok(mut t) = inner.threads.lock() {
                    t.remove(&sid);
                }
                if let Ok(mut r) = inner.remotes.lock() {
                    r.remove(&sid);
                }
            }
        });
    }

    pub(crate) fn forget(&self, sid: &str) {
        self.close_thread(sid);
        if let Ok(mut r) = self.inner.remotes.lock() {
            r.remove(sid);
        }
    }

    pub(crate) fn record(
        &self,
        r: Result<Established, ConnectError>,
    ) -> Result<Established, ConnectError> {
        if let (Ok(e), Ok(mut list)) = (&r, self.inner.sessions.lock()) {
            list.push(e.clone());
        }
        if let Ok(e) = &r {
            tokio::spawn(crate::events::watch_session(
                e.handle.clone(),
                e.peer.clone(),
                self.inner.events.clone(),
            ));
        }
        r
    }

    pub(crate) fn open_thread(&self, sid: &str) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(32);
        if let Ok(mut t) = self.inner.threads.lock() {
            // Messages that came before the thread existed (the proposer's `candidates`
            // overtake our acceptance of its `propose`) are delivered first.
            if let Ok(mut o) = self.inner.orphans.lock() {
                for m in o.take_all(|m| session_of(m).as_deref() == Some(sid)) {
                    let _ = tx.try_send(m);
                }
            }
            t.insert(sid.to_owned(), tx);
        }
        rx
    }

    pub(crate) fn close_thread(&self, sid: &str) {
        if let Ok(mut t) = self.inner.threads.lock() {
            t.remove(sid);
        }
    }

    /// The next negotiation message from `peer` (others are dropped: spec §2, the
    /// authenticated sender must be the expected peer).
    pub(crate) async fn next(
        &self,
        rx: &mut mpsc::Receiver<Inbound>,
        deadline: tokio::time::Instant,
        peer: &str,
        what: &str,
    ) -> Result<Inbound, ConnectError> {
        loop {
            let m = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| ConnectError::Timeout {
                    peer: peer.to_owned(),
                    what: what.to_owned(),
                    secs: self.inner.config.handshake_timeout.as_secs(),
                })?
                .ok_or(ConnectError::Agent(AgentError::Stopped))?;
            if m.sender.as_deref() == Some(peer) && m.meta.authenticated {
                return Ok(m);
            }
            tracing::warn!(sender = ?m.sender, "dropped a negotiation message not from {peer}");
        }
    }

    pub(crate) async fn wait_proposal(
        &self,
        peer: &str,
        binding: &Binding,
        deadline: tokio::time::Instant,
    ) -> Result<Inbound, ConnectError> {
        loop {
            let notified = self.inner.new_proposal.notified();
            if let Some(p) = self.take_proposal(peer, binding) {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ConnectError::Timeout {
                    peer: peer.to_owned(),
                    what: "propose a session".into(),
                    secs: self.inner.config.handshake_timeout.as_secs(),
                });
            }
        }
    }

    pub(crate) fn take_proposal(&self, peer: &str, binding: &Binding) -> Option<Inbound> {
        let mut list = self.inner.proposals.lock().ok()?;
        // An MPC run binds its sessions to `<MPC session>/<attempt>/<attempt>` (spec/lobby.md
        // §8): a proposal of the same MPC session for other attempts is stale, never answered.
        if let Some((mpc, _)) = binding.mpc_session_id.split_once('/') {
            list.retain(peer, |m| {
                let id = m
                    .message
                    .body
                    .get("mpc_session_id")
                    .and_then(|v| v.as_str());
                let stale = id.is_some_and(|id| {
                    id != binding.mpc_session_id
                        && id.split_once('/').is_some_and(|(m, _)| m == mpc)
                });
                if stale {
                    tracing::info!("discarded a proposal of another attempt from {peer}");
                }
                !stale
            });
        }
        list.take_first(peer, |m| {
            signed_by(m, peer)
                && m.message
                    .body
                    .get("mpc_session_id")
                    .and_then(|v| v.as_str())
                    == Some(binding.mpc_session_id.as_str())
        })
    }

    pub(crate) async fn send_candidates(&self, peer: &str, sid: &str) -> Result<(), ConnectError> {
        let cands: Vec<serde_json::Value> = self
            .inner
            .candidates
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let c = Candidate::new(
                    CandidateKind::Host,
                    Transport::Tcp,
                    *a,
                    u16::try_from(i).unwrap_or(u16::MAX),
                    None,
                );
                serde_json::to_value(c).ok()
            })
            .collect();
        let mut cands = cands;
        if let Some(q) = &self.inner.quic {
            cands.extend(
                q.candidates
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok()),
            );
        }
        if let Some((_, c)) = &self.inner.tcp_punch {
            cands.extend(serde_json::to_value(c).ok());
        }
        if let Some((setup, addr, _)) = &self.inner.relay {
            if let Ok(v) = serde_json::to_value(Candidate::relay(Transport::Tcp, *addr, &setup.url))
            {
                cands.push(v);
            }
        }
        let body = CandidatesBody {
            session_id: sid.to_owned(),
            candidates: cands,
            end_of_candidates: true,
        };
        let m = message(&new_id(), CANDIDATES_TYPE, &body, Some(sid))?;
        self.inner.agent.send(peer, m).await?;
        Ok(())
    }

    /// The acceptor's first punches, as soon as it knows the proposer's candidates: QUIC
    /// punch datagrams now and twice more 100 ms apart, and one TCP simultaneous-open
    /// attempt per TCP server-reflexive candidate (its SYN opens our NAT; the proposer's
    /// SYN, sent once it has our accept, then completes the connection).
    pub(crate) fn punch_early(&self, remote: &[Candidate]) {
        if let Some(q) = &self.inner.quic {
            let own = q.endpoint.local_addr();
            let targets: Vec<SocketAddr> = remote
                .iter()
                .filter(|c| quic::is_quic_target(c, own))
                .map(|c| c.addr)
                .take(16)
                .collect();
            if !targets.is_empty() {
                let endpoint = q.endpoint.clone();
                tokio::spawn(async move {
                    for _ in 0..3 {
                        for a in &targets {
                            let _ = endpoint.punch(*a).await;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
            }
        }
        if let Some((port, _)) = &self.inner.tcp_punch {
            for c in remote
                .iter()
                .filter(|c| tcp_punch::is_tcp_punch_target(c))
                .take(8)
            {
                tokio::spawn(tcp_punch::punch_and_route(
                    *port,
                    c.addr,
                    self.inner.router.clone(),
                ));
            }
        }
    }

    pub(crate) async fn send_close(&self, peer: &str, sid: &str, code: u16, reason: &str) {
        let body = CloseBody {
            session_id: sid.to_owned(),
            code,
            reason: truncate_utf8(reason, MAX_CLOSE_REASON).to_owned(),
        };
        if let Ok(m) = message(&new_id(), CLOSE_TYPE, &body, Some(sid)) {
            if let Err(e) = self.inner.agent.send(peer, m).await {
                tracing::debug!("could not send close to {peer}: {e}");
            }
        }
    }

    pub(crate) fn handshake_failed(&self, peer: &str, sid: &str, reason: &str) -> ConnectError {
        let (this, peer_s, sid_s, reason_s) = (
            self.clone(),
            peer.to_owned(),
            sid.to_owned(),
            reason.to_owned(),
        );
        tokio::spawn(async move { this.send_close(&peer_s, &sid_s, 2, &reason_s).await });
        ConnectError::Handshake {
            peer: peer.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Route negotiation messages: proposals wait for `accept`, the rest go to their thread.
///
/// Anyone who knows our DID can send these (spec/security.md §11), so a message without an
/// authenticated sender (and a `propose` not signed by it, spec/session.md §2) is dropped
/// here, and what is held for later — proposals nobody has asked for yet, messages for a
/// session not yet known — is held per sender ([`crate::held`]): a stranger's flood evicts
/// only its own, never a roster member's proposal waiting for `accept`.
pub(crate) async fn dispatch(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Inbound>) {
    while let Some(m) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { break };
        let count = |f: &dyn Fn(&mut NegotiationStats)| {
            if let Ok(mut s) = inner.negotiation.lock() {
                f(&mut s);
            }
        };
        count(&|s| s.received += 1);
        let sender = match m.sender.clone() {
            Some(s) if m.meta.authenticated => s,
            _ => {
                tracing::debug!(
                    "dropped a negotiation message ({}) without an authenticated sender",
                    m.message.type_
                );
                count(&|s| s.unauthenticated += 1);
                continue;
            }
        };
        if kind(&m) == Some("propose") {
            if !signed_by(&m, &sender) {
                tracing::debug!("dropped a propose from {sender} not signed by it");
                count(&|s| s.unauthenticated += 1);
                continue;
            }
            if let Ok(mut p) = inner.proposals.lock() {
                match p.push(&sender, m) {
                    held::Pushed::Kept => {}
                    held::Pushed::KeptDropping(who) => {
                        tracing::debug!("dropped the oldest unclaimed proposal from {who}");
                        count(&|s| s.evicted += 1);
                    }
                    held::Pushed::Refused => {
                        tracing::debug!("unclaimed proposals full: dropped one from {sender}");
                        count(&|s| s.evicted += 1);
                    }
                }
            }
            inner.new_proposal.notify_waiters();
            continue;
        }
        let Some(sid) = session_of(&m) else {
            continue;
        };
        let Ok(threads) = inner.threads.lock() else {
            break;
        };
        match threads.get(&sid) {
            Some(tx) => {
                let _ = tx.try_send(m);
            }
            // Perhaps for a session we are about to accept: kept for a while (bounded).
            None => {
                if let Ok(mut o) = inner.orphans.lock() {
                    if o.push(&sender, m) != held::Pushed::Kept {
                        tracing::debug!(
                            "negotiation message for an unknown session dropped (from {sender} or the largest sender)"
                        );
                        count(&|s| s.evicted += 1);
                    }
                }
            }
        }
    }
}

pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

pub(crate) fn message<T: serde::Serialize>(
    id: &str,
    type_: &str,
    body: &T,
    thid: Option<&str>,
) -> Result<Message, ConnectError> {
    let body = serde_json::to_value(body)
        .map_err(|e| ConnectError::Io(std::io::Error::other(e.to_string())))?;
    let mut m = Message::new(id, type_, body);
    m.thid = thid.map(str::to_owned);
    Ok(m)
}

/// Longest `close` reason sent, in bytes (spec §2: "text ≤ 256 bytes").
pub(crate) const MAX_CLOSE_REASON: usize = 256;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Negotiation messages for sessions not (yet) known, kept at most (spec/session.md §2).
pub(crate) const MAX_ORPHANS: usize = 64;
/// Of those, from one sender: a proposer sends one `candidates` with its `propose`, and
/// may trickle a few more before the acceptor takes the proposal.
pub(crate) const MAX_ORPHANS_PER_SENDER: usize = 8;
/// Proposals nobody has taken yet, kept at most (spec/session.md §2).
pub(crate) const MAX_PROPOSALS: usize = 256;
/// Of those, from one sender: a peer proposes once per secure session; several MPC
/// sessions (or attempts, of which stale ones are discarded) may wait at once.
pub(crate) const MAX_PROPOSALS_PER_SENDER: usize = 8;

pub(crate) fn session_of(m: &Inbound) -> Option<String> {
    m.message
        .body
        .get("session_id")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

pub(crate) fn kind(m: &Inbound) -> Option<&str> {
    m.message
        .type_
        .strip_prefix(PROTOCOL_URI)
        .and_then(|s| s.strip_prefix('/'))
}

pub(crate) fn signed_by(m: &Inbound, did: &str) -> bool {
    m.meta
        .sign_from
        .as_deref()
        .is_some_and(|kid| kid.split('#').next() == Some(did))
}

pub(crate) fn body_of<T: serde::de::DeserializeOwned>(
    m: &Inbound,
    peer: &str,
) -> Result<T, ConnectError> {
    serde_json::from_value(m.message.body.clone()).map_err(|e| ConnectError::Handshake {
        peer: peer.to_owned(),
        reason: format!("malformed {}: {e}", m.message.type_),
    })
}

pub(crate) fn candidates_of(m: &Inbound) -> Vec<Candidate> {
    let Ok(body) = serde_json::from_value::<CandidatesBody>(m.message.body.clone()) else {
        return Vec::new();
    };
    if body.check().is_err() {
        return Vec::new();
    }
    body.candidates
        .into_iter()
        .filter_map(|c| serde_json::from_value(c).ok())
        .collect()
}

pub(crate) fn closed(m: &Inbound, peer: &str) -> ConnectError {
    let body: CloseBody = serde_json::from_value(m.message.body.clone()).unwrap_or(CloseBody {
        session_id: String::new(),
        code: 4,
        reason: "malformed close".into(),
    });
    ConnectError::Closed {
        peer: peer.to_owned(),
        code: body.code,
        reason: body.reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // spec §2: a `close` reason is "text ≤ 256 bytes"; cut on a character boundary.
    #[test]
    fn close_reasons_are_cut_to_256_bytes_on_a_character_boundary() {
        assert_eq!(truncate_utf8("short", MAX_CLOSE_REASON), "short");
        let long = "é".repeat(200); // 400 bytes
        let cut = truncate_utf8(&long, MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 256);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(200)); // a boundary falls inside a character
        let cut = truncate_utf8(&odd, MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 255);
    }
}
