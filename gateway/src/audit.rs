//! The audit log: every decision is queued on a bounded channel and a
//! background writer commits rows in batches, so the request path never
//! waits for the database. When the queue is full rows are dropped and
//! counted rather than slowing requests down. The same writer records
//! service-token last-used times, coalesced per batch.
//!
//! [`retention`] deletes rows older than `[audit] retention` (90 days by
//! default) every `purge_interval`, in batches of [`PURGE_BATCH`] rows
//! with a pause between them, on its own task: never on the request path
//! and never holding a long lock on the table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::AuditConfig;
use crate::metrics::Metrics;
use crate::store::{AuditRecord, Storage};

enum Event {
    Row(AuditRecord),
    Used(String, i64),
    Flush(oneshot::Sender<()>),
}

/// The sending side, cloned into request handlers.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Event>,
    metrics: Metrics,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit event")
    }
}

impl AuditSink {
    /// Queues a row; never waits.
    pub fn record(&self, row: AuditRecord) {
        if self.tx.try_send(Event::Row(row)).is_err() {
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
    let writer = Writer {
        store,
        rx,
        batch_size: config.batch_size,
        flush_interval: config.flush_interval,
        metrics: metrics.clone(),
    };
    let handle = tokio::spawn(writer.run());
    (AuditSink { tx, metrics }, handle)
}

struct Writer {
    store: Arc<dyn Storage>,
    rx: mpsc::Receiver<Event>,
    batch_size: usize,
    flush_interval: Duration,
    metrics: Metrics,
}

impl Writer {
    async fn run(mut self) {
        let mut rows = Vec::with_capacity(self.batch_size);
        let mut used: HashMap<String, i64> = HashMap::new();
        let mut waiters = Vec::new();
        loop {
            let Some(first) = self.rx.recv().await else {
                break;
            };
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            let mut event = Some(first);
            loop {
                match event.take() {
                    Some(Event::Row(r)) => rows.push(r),
                    Some(Event::Used(id, at)) => {
                        let e = used.entry(id).or_insert(at);
                        *e = (*e).max(at);
                    }
                    Some(Event::Flush(w)) => {
                        waiters.push(w);
                        break;
                    }
                    None => {}
                }
                if rows.len() >= self.batch_size {
                    break;
                }
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(e)) => event = Some(e),
                    Ok(None) | Err(_) => break,
                }
            }
            self.write(&mut rows, &mut used).await;
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
        self.write(&mut rows, &mut used).await;
    }

    async fn write(&self, rows: &mut Vec<AuditRecord>, used: &mut HashMap<String, i64>) {
        if !rows.is_empty() {
            let mut attempt = 0;
            loop {
                match self.store.append_audit(rows).await {
                    Ok(()) => {
                        self.metrics.audit_written.inc_by(rows.len() as u64);
                        break;
                    }
                    Err(e) if attempt < 3 => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "audit write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, rows = rows.len(), "audit rows lost");
                        self.metrics.audit_dropped.inc_by(rows.len() as u64);
                        break;
                    }
                }
            }
            rows.clear();
        }
        if !used.is_empty() {
            let list: Vec<(String, i64)> = used.drain().collect();
            if let Err(e) = self.store.touch_service_tokens(&list).await {
                tracing::warn!(error = %e, "recording service token use failed");
            }
        }
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
