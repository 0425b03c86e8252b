//! The audit log: every decision is queued on a bounded channel and a
//! background writer commits rows in batches, so the request path never
//! waits for the database. When the queue is full decisions are dropped
//! and counted rather than slowing requests down. The same writer records
//! service-token last-used times, coalesced per batch.
//!
//! The writer wakes when a decision arrives after a quiet spell, gathers
//! for `flush_interval` without being woken per decision, then takes
//! everything queued. Identical decisions of one such batch (same app,
//! identity, policy, decision, reason and source address) become one row
//! whose `decisions` counts them, from `at_ms` (the first) to `last_at_ms`
//! (the last): a client repeating its cookie a thousand times a second
//! costs a few rows a second, not a thousand, and the log still accounts
//! for every decision. [`AuditSink::flush`] cuts the wait short.
//!
//! [`retention`] deletes rows older than `[audit] retention` (90 days by
//! default) every `purge_interval`, in batches of [`PURGE_BATCH`] rows
//! with a pause between them, on its own task: never on the request path
//! and never holding a long lock on the table.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::AuditConfig;
use crate::metrics::Metrics;
use crate::store::{AuditRecord, Storage};

/// One decision as the request path queues it: shared and static strings
/// and an address, so queuing allocates little; the writer turns it into
/// an [`AuditRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    /// App name.
    pub app: Arc<str>,
    /// Email, client id or `""`.
    pub identity: String,
    /// `anonymous`, `user` or `service_token`.
    pub identity_kind: &'static str,
    /// The deciding policy, if one matched.
    pub policy: Option<Arc<str>>,
    /// `allow`, `block`, `bypass`, `service_auth` or `deny`.
    pub decision: &'static str,
    /// `ok` or an error code of the contract.
    pub reason: &'static str,
    /// The peer address.
    pub source_ip: IpAddr,
}

enum Event {
    Decision(Decision, i64),
    Used(String, i64),
    Flush(oneshot::Sender<()>),
}

/// The sending side, cloned into request handlers.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Event>,
    flush_now: Arc<Notify>,
    metrics: Metrics,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit event")
    }
}

impl AuditSink {
    /// Queues a decision made at `at_ms`; never waits.
    pub fn record(&self, decision: Decision, at_ms: i64) {
        if self.tx.try_send(Event::Decision(decision, at_ms)).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }

    /// Queues a last-used time of a service token; never waits.
    pub fn token_used(&self, client_id: &str, at: i64) {
        let _ = self.tx.try_send(Event::Used(client_id.to_owned(), at));
    }

    /// Waits until everything queued before the call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Event::Flush(tx)).await.is_ok() {
            self.flush_now.notify_one();
            let _ = rx.await;
        }
    }
}

/// Starts the background writer; it ends when every sink is dropped,
/// after committing what was queued.
pub fn start(
    store: Arc<dyn Storage>,
    config: &AuditConfig,
    metrics: Metrics,
) -> (AuditSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let flush_now = Arc::new(Notify::new());
    let writer = Writer {
        store,
        rx,
        flush_now: flush_now.clone(),
        batch_size: config.batch_size,
        drain_limit: config.queue_capacity,
        flush_interval: config.flush_interval,
        metrics: metrics.clone(),
    };
    let handle = tokio::spawn(writer.run());
    (
        AuditSink {
            tx,
            flush_now,
            metrics,
        },
        handle,
    )
}

/// Decisions of one batch, identical ones counted together, in order of
/// first occurrence.
#[derive(Default)]
struct Batch {
    index: HashMap<Decision, usize, foldhash::fast::RandomState>,
    rows: Vec<AuditRecord>,
    /// The row of the previous decision: a client repeating itself
    /// usually makes the same decision again.
    last: Option<(Decision, usize)>,
    decisions: u64,
}

impl Batch {
    fn add(&mut self, decision: Decision, at_ms: i64) {
        self.decisions += 1;
        let row = match &self.last {
            Some((last, row)) if *last == decision => *row,
            _ => self.row_of(decision),
        };
        let row = &mut self.rows[row];
        row.decisions += 1;
        row.at_ms = row.at_ms.min(at_ms);
        row.last_at_ms = row.last_at_ms.max(at_ms);
    }

    /// The row counting `decision` (a new one with no decisions yet).
    fn row_of(&mut self, decision: Decision) -> usize {
        let row = match self.index.entry(decision.clone()) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let d = e.key();
                self.rows.push(AuditRecord {
                    id: 0,
                    at_ms: i64::MAX,
                    last_at_ms: i64::MIN,
                    decisions: 0,
                    app: d.app.to_string(),
                    identity: d.identity.clone(),
                    identity_kind: d.identity_kind.to_owned(),
                    policy: d.policy.as_deref().map(str::to_owned),
                    decision: d.decision.to_owned(),
                    reason: d.reason.to_owned(),
                    source_ip: d.source_ip.to_string(),
                });
                *e.insert(self.rows.len() - 1)
            }
        };
        self.last = Some((decision, row));
        row
    }
}

struct Writer {
    store: Arc<dyn Storage>,
    rx: mpsc::Receiver<Event>,
    flush_now: Arc<Notify>,
    batch_size: usize,
    drain_limit: usize,
    flush_interval: Duration,
    metrics: Metrics,
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Batch::default();
        let mut used: HashMap<String, i64> = HashMap::new();
        let mut waiters = Vec::new();
        // Idle: the first event after a quiet spell wakes the writer.
        while let Some(first) = self.rx.recv().await {
            take(first, &mut batch, &mut used, &mut waiters);
            if waiters.is_empty() {
                // Gather without a wake-up per decision.
                tokio::select! {
                    _ = tokio::time::sleep(self.flush_interval) => {}
                    _ = self.flush_now.notified() => {}
                }
            }
            // Everything queued by now (bounded, should producers outrun us).
            for _ in 0..self.drain_limit {
                let Ok(event) = self.rx.try_recv() else { break };
                take(event, &mut batch, &mut used, &mut waiters);
                if batch.rows.len() >= self.batch_size {
                    self.write(&mut batch, &mut used).await;
                }
            }
            self.write(&mut batch, &mut used).await;
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
        self.write(&mut batch, &mut used).await;
    }

    async fn write(&self, batch: &mut Batch, used: &mut HashMap<String, i64>) {
        if !batch.rows.is_empty() {
            let mut attempt = 0;
            loop {
                match self.store.append_audit(&batch.rows).await {
                    Ok(()) => {
                        self.metrics.audit_written.inc_by(batch.rows.len() as u64);
                        break;
                    }
                    Err(e) if attempt < 3 => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "audit write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            rows = batch.rows.len(),
                            decisions = batch.decisions,
                            "audit rows lost"
                        );
                        self.metrics.audit_dropped.inc_by(batch.decisions);
                        break;
                    }
                }
            }
            *batch = Batch::default();
        }
        if !used.is_empty() {
            let list: Vec<(String, i64)> = used.drain().collect();
            if let Err(e) = self.store.touch_service_tokens(&list).await {
                tracing::warn!(error = %e, "recording service token use failed");
            }
        }
    }
}

fn take(
    event: Event,
    batch: &mut Batch,
    used: &mut HashMap<String, i64>,
    waiters: &mut Vec<oneshot::Sender<()>>,
) {
    match event {
        Event::Decision(d, at_ms) => batch.add(d, at_ms),
        Event::Used(id, at) => {
            let e = used.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
        Event::Flush(w) => waiters.push(w),
    }
}

/// Rows deleted per statement by the retention purge.
pub const PURGE_BATCH: i64 = 2000;
/// Pause between two purge batches, so other writers get the table.
const PURGE_PAUSE: Duration = Duration::from_millis(20);

/// Deletes every audit row older than `retention` (relative to `now_ms`),
/// [`PURGE_BATCH`] rows at a time; returns how many went. Stops early
/// (keeping what was done) when `stop` turns true.
pub async fn purge_once(
    store: &dyn Storage,
    retention: Duration,
    now_ms: i64,
    metrics: &Metrics,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> crate::store::StoreResult<u64> {
    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let before = now_ms.saturating_sub(keep_ms);
    let mut total = 0;
    loop {
        let n = store.purge_audit(before, PURGE_BATCH).await?;
        total += n;
        metrics.audit_purged.inc_by(n);
        if n < PURGE_BATCH as u64 || *stop.borrow() {
            return Ok(total);
        }
        tokio::time::sleep(PURGE_PAUSE).await;
    }
}

/// The retention job: a purge every `config.purge_interval` (the first at
/// start) until `stop` turns true.
pub async fn retention(
    store: Arc<dyn Storage>,
    config: AuditConfig,
    metrics: Metrics,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(config.purge_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let now = crate::clock::now_ms();
        match purge_once(store.as_ref(), config.retention, now, &metrics, &stop).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(rows = n, retention = ?config.retention, "old audit rows purged")
            }
            Err(e) => tracing::warn!(error = %e, "audit retention purge failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(identity: &str, decision: &'static str, ip: [u8; 4]) -> Decision {
        Decision {
            app: "echo".into(),
            identity: identity.to_owned(),
            identity_kind: "user",
            policy: Some("staff".into()),
            decision,
            reason: "ok",
            source_ip: IpAddr::from(ip),
        }
    }

    #[test]
    fn identical_decisions_are_counted_in_one_row() {
        let mut batch = Batch::default();
        let a = decision("a@example.com", "allow", [10, 0, 0, 1]);
        let b = decision("b@example.com", "allow", [10, 0, 0, 1]);
        let a_elsewhere = decision("a@example.com", "allow", [10, 0, 0, 2]);
        let a_blocked = decision("a@example.com", "block", [10, 0, 0, 1]);
        batch.add(a.clone(), 1_000);
        batch.add(a.clone(), 1_005);
        batch.add(b.clone(), 1_001);
        batch.add(a.clone(), 999);
        batch.add(a_elsewhere, 1_002);
        batch.add(a_blocked, 1_003);
        batch.add(b, 1_010);
        assert_eq!(batch.decisions, 7);
        let rows: Vec<(&str, &str, &str, i64, i64, i64)> = batch
            .rows
            .iter()
            .map(|r| {
                (
                    r.identity.as_str(),
                    r.decision.as_str(),
                    r.source_ip.as_str(),
                    r.decisions,
                    r.at_ms,
                    r.last_at_ms,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("a@example.com", "allow", "10.0.0.1", 3, 999, 1_005),
                ("b@example.com", "allow", "10.0.0.1", 2, 1_001, 1_010),
                ("a@example.com", "allow", "10.0.0.2", 1, 1_002, 1_002),
                ("a@example.com", "block", "10.0.0.1", 1, 1_003, 1_003),
            ]
        );
        assert_eq!(batch.rows[0].policy.as_deref(), Some("staff"));
        assert_eq!(batch.rows[0].app, "echo");
    }
}
