//! Liveness and readiness (spec/mediator.md §7.1): a background probe writes to the store
//! every [`PROBE_INTERVAL`] (sled: a write and a flush to disk, and a fresh file in the data
//! directory with fsync; Redis: a `SET`), and each
//! service (relay, STUN) is watched while it runs. `/readyz` reports both; a store that
//! stays unwritable for `storage_fatal_secs` makes the process exit with status
//! [`EXIT_STORAGE`] so its supervisor (systemd `Restart=on-failure`) starts it afresh —
//! sled does not recover from an I/O error without reopening the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::AnyStore;

/// How often the store is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Exit status when the store stayed unwritable past `storage_fatal_secs` (EX_TEMPFAIL).
pub const EXIT_STORAGE: i32 = 75;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Health {
    /// The last probe's failure, and since when the store has been failing.
    storage: Mutex<Option<(String, Instant)>>,
    /// Services and whether each still runs.
    services: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    /// Set once the first probe has run.
    probed: AtomicBool,
    /// Set when the storage has failed for too long and the process must exit.
    fatal: AtomicBool,
}

/// One readiness report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// All checks pass.
    pub ready: bool,
    /// `ok`, or what the last store probe failed with.
    pub storage: String,
    /// Each service: `up` or `stopped`.
    pub services: serde_json::Map<String, serde_json::Value>,
}

impl Health {
    /// Registers a running service; the returned flag is cleared when it stops.
    pub fn service(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(true));
        if let Ok(mut s) = self.services.lock() {
            s.push((name, flag.clone()));
        }
        flag
    }

    /// The current report.
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        let storage = match self.storage.lock().ok().and_then(|s| s.clone()) {
            Some((e, _)) => e,
            None if self.probed.load(Ordering::Relaxed) => "ok".to_owned(),
            None => "not probed yet".to_owned(),
        };
        let mut ready = storage == "ok";
        let mut services = serde_json::Map::new();
        if let Ok(s) = self.services.lock() {
            for (name, up) in s.iter() {
                let up = up.load(Ordering::Relaxed);
                ready &= up;
                services.insert(
                    (*name).to_owned(),
                    serde_json::Value::from(if up { "up" } else { "stopped" }),
                );
            }
        }
        Readiness {
            ready,
            storage,
            services,
        }
    }

    /// Whether the storage failed for longer than allowed.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    fn record(&self, result: Result<(), String>, fatal_after: Option<Duration>) {
        let Ok(mut s) = self.storage.lock() else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some((e, since)) = s.take() {
                    tracing::info!(failed_for_ms = since.elapsed().as_millis() as u64, previous_error = %e, "store writable again");
                }
            }
            Err(e) => {
                let since = match s.as_ref() {
                    Some((_, since)) => *since,
                    None => {
                        tracing::error!(error = %e, "store not writable: /readyz reports not ready");
                        Instant::now()
                    }
                };
                if fatal_after.is_some_and(|d| since.elapsed() >= d) {
                    self.fatal.store(true, Ordering::Relaxed);
                }
                *s = Some((format!("store not writable: {e}"), since));
            }
        }
        self.probed.store(true, Ordering::Relaxed);
    }

    /// Probes `store` until `stop`; when the storage has failed for `fatal_after`, cancels
    /// `fatal` (the binary then exits with [`EXIT_STORAGE`]).
    pub(crate) async fn probe_loop(
        self: Arc<Self>,
        store: Arc<crate::core::Core>,
        fatal_after: Option<Duration>,
        stop: CancellationToken,
        fatal: CancellationToken,
    ) {
        loop {
            let r = tokio::time::timeout(PROBE_INTERVAL * 5, probe(&store)).await;
            let r = r.unwrap_or_else(|_| Err("probe timed out".to_owned()));
            self.record(r, fatal_after);
            if self.is_fatal() {
                tracing::error!(
                    "store unwritable for longer than storage_fatal_secs: exiting for the supervisor to restart"
                );
                fatal.cancel();
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }
}

async fn probe(core: &crate::core::Core) -> Result<(), String> {
    core.store.probe().await.map_err(|e| e.to_string())?;
    if matches!(core.store, AnyStore::Sled(_)) {
        // sled may still have room in the pages it already holds; a new file page shows a
        // full disk (or a read-only remount) at once.
        let path = core.config.data.join(".readiness-probe");
        let stamp = crate::store::now_ms().to_be_bytes();
        let dir = core.config.data.clone();
        tokio::task::spawn_blocking(move || {
            // A new file while the previous one still holds its page, then renamed over
            // it: each probe needs one free page.
            let fresh = path.with_extension("new");
            let mut f = std::fs::File::create(&fresh)?;
            std::io::Write::write_all(&mut f, &stamp)?;
            f.sync_all()?;
            std::fs::rename(&fresh, &path)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("data directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_storage_and_services() {
        let h = Health::default();
        assert!(!h.readiness().ready, "not ready before the first probe");
        h.record(Ok(()), None);
        assert!(h.readiness().ready);
        let relay = h.service("relay");
        assert_eq!(h.readiness().services["relay"], "up");
        h.record(Err("No space left on device".into()), Some(Duration::ZERO));
        let r = h.readiness();
        assert!(!r.ready);
        assert!(r.storage.contains("No space left"), "{}", r.storage);
        assert!(h.is_fatal());
        h.record(Ok(()), None);
        assert!(h.readiness().ready);
        relay.store(false, Ordering::Relaxed);
        assert!(!h.readiness().ready);
        assert_eq!(h.readiness().services["relay"], "stopped");
    }
}
