//! The server's side of the audit log (`docs/keyservice-api.md` "Audit log"): refusals of
//! unauthenticated callers go through the [`RefusalAggregator`] (the first of a window is
//! written at once, the rest counted and written as one `×N` row), and a one-second tick
//! writes the `×N` rows of ended windows and a signed checkpoint every
//! [`AuditPolicy::checkpoint_rows`] rows or [`AuditPolicy::checkpoint_secs`] seconds; at
//! shutdown every open window is written and a last checkpoint seals the log. Refusals of
//! authenticated callers (hosts, tokens) are never aggregated: one row each, committed before
//! the reply.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::aggregate::{source_of, Admission, AggKey, RefusalAggregator};
use super::app::{App, Peer};
use super::problem::Problem;
use crate::refusal::Refusal;
use crate::store::{AuditEntry, AuditPolicy, Store};

/// The audit state of a running server.
pub(super) struct AuditState {
    policy: AuditPolicy,
    agg: Mutex<RefusalAggregator>,
    /// The newest checkpoint row this server knows of, and when it was written or found.
    sealed: Mutex<(i64, Instant)>,
    /// Set by [`App::shutdown`]: from then on nothing is aggregated.
    stopped: AtomicBool,
}

impl AuditState {
    /// The state for `store`: its policy, and its newest checkpoint (0 if none).
    pub(super) fn new(store: &Store) -> AuditState {
        let policy = store.audit_policy();
        let row = match store.audit_latest_checkpoint() {
            Ok(cp) => cp.map(|c| c.row).unwrap_or(0),
            Err(e) => {
                tracing::warn!("audit: reading the newest checkpoint: {e}");
                0
            }
        };
        AuditState {
            policy,
            agg: Mutex::new(RefusalAggregator::new(
                (policy.refusal_window_secs as i64).saturating_mul(1000),
                policy.refusal_sources,
            )),
            sealed: Mutex::new((row, Instant::now())),
            stopped: AtomicBool::new(false),
        }
    }
}

/// Whether a refusal's actor is a caller that proved no identity: `anonymous`, or `join:HOST`
/// (someone holding a spent, expired or refused join token). These are aggregated; hosts and
/// tokens are not.
pub(super) fn unauthenticated(actor: &str) -> bool {
    actor == "anonymous" || actor.starts_with("join:")
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl App {
    /// State over `store` and its root key, with the tick of the audit log running (every
    /// second, until [`App::shutdown`]). Must be called inside a Tokio runtime.
    pub fn start(store: Store, root: crate::store::RootKey) -> Arc<App> {
        let app = Arc::new(App::new(store, root));
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(app) = weak.upgrade() else { break };
                if app.audit.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let _ = tokio::task::spawn_blocking(move || app.audit_tick(now_ms())).await;
            }
        });
        app
    }

    /// Writes the refusal's audit row, aggregated if the caller is unauthenticated and `peer`
    /// names its source (see the module documentation), and returns the problem to send: with
    /// the row's `audit_seq` when it was written now, without when it was counted, 500 if the
    /// write fails.
    pub(super) fn refuse_from(
        &self,
        peer: Option<&Peer>,
        actor: &str,
        action: &str,
        target: &str,
        refusal: Refusal,
        detail: String,
    ) -> Problem {
        let Some(outcome) = refusal.audit_outcome() else {
            return Problem::new(refusal, detail, None);
        };
        let entry = AuditEntry {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome,
            detail: detail.clone(),
        };
        if let Some(peer) =
            peer.filter(|_| unauthenticated(actor) && !self.audit.stopped.load(Ordering::SeqCst))
        {
            let key = AggKey {
                source: source_of(peer.fingerprint.as_deref(), peer.ip),
                action: entry.action.clone(),
                outcome: entry.outcome.clone(),
            };
            let (admission, closed) = self.audit.agg.lock().unwrap().admit(key, &entry, now_ms());
            self.write_aggregates(closed);
            if admission == Admission::Counted {
                return Problem::new(refusal, detail, None);
            }
        }
        match self.store.lock().unwrap().audit(entry) {
            Ok(seq) => Problem::new(refusal, detail, Some(seq)),
            Err(e) => Problem::internal(format!("audit write failed: {e}")),
        }
    }

    /// Writes `×N` rows (a failure is logged: the counts are lost, the requests were refused).
    fn write_aggregates(&self, rows: Vec<AuditEntry>) {
        if rows.is_empty() {
            return;
        }
        let mut store = self.store.lock().unwrap();
        for row in rows {
            if let Err(e) = store.audit(row) {
                tracing::error!("audit: writing an aggregated refusal row: {e}");
            }
        }
    }

    /// One tick at `now` (Unix ms): writes the `×N` rows of ended windows, then a checkpoint
    /// if [`AuditPolicy::checkpoint_rows`] rows followed the last one, or rows followed it and
    /// [`AuditPolicy::checkpoint_secs`] passed.
    pub fn audit_tick(&self, now: i64) {
        let due = self.audit.agg.lock().unwrap().due(now);
        self.write_aggregates(due);
        let p = self.audit.policy;
        self.checkpoint_if(|rows, age| {
            rows >= p.checkpoint_rows || age >= Duration::from_secs(p.checkpoint_secs)
        });
    }

    /// Stops aggregating, writes every open window's `×N` row and a last checkpoint if rows
    /// followed the newest one. Called once the accept loop ends.
    pub fn shutdown(&self) {
        self.audit.stopped.store(true, Ordering::SeqCst);
        let rows = self.audit.agg.lock().unwrap().drain();
        self.write_aggregates(rows);
        self.checkpoint_if(|_, _| true);
    }

    /// Writes a checkpoint if rows follow the newest known one and `due(rows after it, time
    /// since it)` says so.
    fn checkpoint_if(&self, due: impl Fn(i64, Duration) -> bool) {
        let mut sealed = self.audit.sealed.lock().unwrap();
        let mut store = self.store.lock().unwrap();
        let last = match store.audit_last_seq() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("audit: reading the log: {e}");
                return;
            }
        };
        let (row, at) = *sealed;
        if last <= row || !due(last - row, at.elapsed()) {
            return;
        }
        match store.audit_checkpoint(&self.root, "server") {
            Ok(cp) => *sealed = (cp.row, Instant::now()),
            Err(e) => tracing::error!("audit: writing a checkpoint: {e}"),
        }
    }
}
