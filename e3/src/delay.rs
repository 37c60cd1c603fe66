//! A user-space delay line: emulated propagation delay without `netem`.
//!
//! This kernel has no `sch_netem`, so latency is added the way a user-space WAN emulator
//! does it: iptables sends every non-loopback packet a namespace receives to an NFQUEUE, and
//! a thread inside that namespace holds each packet for the configured time before it gives
//! the kernel its ACCEPT verdict. Packets are released in arrival order, so the line delays
//! but never reorders, drops or alters traffic; the kernel keeps the packet itself, only its
//! metadata crosses netlink (copy range 0), and a segmentation-offloaded packet is queued
//! whole (`NFQA_CFG_F_GSO`), not cut into one queue entry per segment.
//!
//! **Ingress only.** A host's access link of one-way latency `d` is emulated by holding what
//! the host *receives* for `2·d`: between hosts `a` and `b` the round-trip time is
//! `2·(a + b)`, as with `d` each way on both links. Holding on the sending side instead
//! (as this line did until December 2026) keeps packets the sender's kernel still counts
//! against the socket: TCP small queues then allow only about a millisecond of the flow's
//! pacing rate below the socket, and every TCP flow was capped near 200 kB/s at a 35 ms hold
//! (issue 17, README "MPyC between emulated regions") — an artefact of the emulator that a
//! real path does not have, and one that UDP (QUIC, WireGuard's tunnel) never hit. A received
//! packet has left its sender's accounting when it crossed the veth pair.
//!
//! Failure modes are chosen so that a broken delay line shows up as *less* delay, never as
//! lost packets: the rule uses `--queue-bypass` (no listener → packets pass) and the queue is
//! fail-open (kernel queue full → packets pass).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{E3Error, Netns};

/// NFQUEUE number the delay line uses inside its namespace (queues are per namespace).
const QUEUE: u16 = 7;
/// How many packets the kernel may hold for us before fail-open lets them pass undelayed.
const KERNEL_QUEUE_LEN: u32 = 100_000;
/// Longest sleep between polls of the queue: bounds how late a packet can be released.
const TICK: Duration = Duration::from_micros(250);

/// The iptables rule that diverts a namespace's traffic to the queue: everything it
/// receives (INPUT) except loopback (see the module docs for why not what it sends).
fn rules() -> [[String; 8]; 1] {
    let q = QUEUE.to_string();
    let rule = |chain: &str, dir: &str| {
        [
            chain.to_owned(),
            "!".to_owned(),
            dir.to_owned(),
            "lo".to_owned(),
            "-j".to_owned(),
            "NFQUEUE".to_owned(),
            "--queue-num".to_owned(),
            q.clone(),
        ]
    };
    [rule("INPUT", "-i")]
}

fn iptables(ns: &Netns, op: &str, rule: &[String]) -> Result<(), E3Error> {
    let mut args = vec!["iptables", op];
    args.extend(rule.iter().map(String::as_str));
    args.push("--queue-bypass");
    ns.exec(&args)
}

/// Emulates an access link of one-way latency `one_way` (loopback excluded): every packet
/// the namespace receives is held for `2·one_way`. Between two hosts with delay lines `a` and
/// `b` the round-trip time is therefore `2·(a + b)`, like two access links of one-way latency
/// `a` and `b` (module docs: why on ingress only).
///
/// Dropping it removes the rules, releases every held packet and stops the thread.
#[derive(Debug)]
pub struct DelayLine {
    ns: Netns,
    one_way: Duration,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Result<Result<Stats, E3Error>, E3Error>>>,
}

/// What a delay line did over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets held and released.
    pub packets: u64,
    /// The largest number held at once.
    pub max_held: usize,
}

impl DelayLine {
    /// The emulated access link's one-way latency (received packets are held twice that).
    #[must_use]
    pub fn one_way(&self) -> Duration {
        self.one_way
    }

    /// How many packets the line holds right now (tests wait on it instead of sleeping).
    #[must_use]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Stop the line (as drop does) and report what it did.
    ///
    /// # Errors
    /// [`E3Error::Io`] when the queue failed while running.
    pub fn finish(mut self) -> Result<Stats, E3Error> {
        self.shutdown().unwrap_or(Ok(Stats::default()))
    }

    /// Once: `finish` runs it and then drop would again (the rules are gone by then).
    fn shutdown(&mut self) -> Option<Result<Stats, E3Error>> {
        let thread = self.thread.take()?;
        for rule in rules() {
            if let Err(e) = iptables(&self.ns, "-D", &rule) {
                tracing::warn!("delay line in {}: removing rule: {e}", self.ns.name());
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        Some(match thread.join() {
            Ok(Ok(run)) => run,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(E3Error::Io(std::io::Error::other(
                "delay line thread panicked",
            ))),
        })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.shutdown() {
            tracing::warn!("delay line in {}: {e}", self.ns.name());
        }
    }
}

impl Netns {
    /// Emulate an access link of one-way latency `one_way` for this namespace (what it
    /// receives, except loopback, is held `2·one_way`): see [`DelayLine`]. One delay line per
    /// namespace.
    ///
    /// # Errors
    /// [`E3Error::Io`] when the queue cannot be bound (no `nfnetlink_queue` in the kernel,
    /// or a second line in the same namespace), [`E3Error::Command`] when a rule cannot be
    /// added.
    pub fn delay(&self, one_way: Duration) -> Result<DelayLine, E3Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let held = Arc::new(AtomicUsize::new(0));
        let held_count = Arc::clone(&held);
        let thread = self.spawn(move || {
            let queue = match open_queue() {
                Ok(q) => {
                    let _ = ready_tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(Stats::default());
                }
            };
            run(queue, one_way * 2, &flag, &held_count)
        })?;
        let opened = ready_rx.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "delay line thread ended before opening its queue",
            ))
        });
        let mut line = DelayLine {
            ns: self.clone(),
            one_way,
            stop,
            held,
            thread: Some(thread),
        };
        if let Err(e) = opened {
            line.stop.store(true, Ordering::Relaxed);
            if let Some(t) = line.thread.take() {
                let _ = t.join();
            }
            return Err(E3Error::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "NFQUEUE {QUEUE} in {}: {e} (is nfnetlink_queue available?)",
                    self.name()
                ),
            )));
        }
        for rule in rules() {
            // On error `line` drops: the rules added so far are removed, the thread stops.
            iptables(self, "-A", &rule)?;
        }
        Ok(line)
    }
}

fn open_queue() -> std::io::Result<nfq::Queue> {
    let mut q = nfq::Queue::open()?;
    q.bind(QUEUE)?;
    q.set_copy_range(QUEUE, 0)?;
    q.set_queue_max_len(QUEUE, KERNEL_QUEUE_LEN)?;
    q.set_fail_open(QUEUE, true)?;
    // GSO packets whole: one queue entry (and one netlink message) per 64 KiB burst rather
    // than per segment, so a fast sender does not overflow the socket and fail open.
    q.set_recv_gso(QUEUE, true)?;
    q.set_nonblocking(true);
    Ok(q)
}

fn accept(queue: &mut nfq::Queue, mut msg: nfq::Message) -> Result<(), E3Error> {
    msg.set_verdict(nfq::Verdict::Accept);
    queue.verdict(msg).map_err(E3Error::Io)
}

/// The line itself: take packets as they come, release each once its time is due, in order.
fn run(
    mut queue: nfq::Queue,
    one_way: Duration,
    stop: &AtomicBool,
    held_count: &AtomicUsize,
) -> Result<Stats, E3Error> {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut stats = Stats::default();
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let mut failed = None;
        loop {
            match queue.recv() {
                Ok(msg) => held.push_back((Instant::now() + one_way, msg)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(E3Error::Io(e));
        }
        stats.max_held = stats.max_held.max(held.len());
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, msg)) = held.pop_front() {
                accept(&mut queue, msg)?;
                stats.packets += 1;
            }
        }
        held_count.store(held.len(), Ordering::Relaxed);
        let wait = held.front().map_or(TICK, |(due, _)| {
            due.saturating_duration_since(now).min(TICK)
        });
        std::thread::sleep(wait);
    };
    // Stopping (or failing): nothing held may be lost.
    while let Some((_, msg)) = held.pop_front() {
        accept(&mut queue, msg)?;
        stats.packets += 1;
    }
    let _ = queue.unbind(QUEUE);
    result.map(|()| stats)
}
