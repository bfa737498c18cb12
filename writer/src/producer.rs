//! The transactional Kafka producer of the leader writer.
//!
//! `acks=all`, idempotence on (set explicitly: librdkafka defaults it off), one
//! `transactional.id` for the logical writer so that a new leader's `init_transactions` fences
//! the previous one. A batch of records is one transaction; it either commits, or every record in
//! it is reported failed. A commit whose outcome is unknown is reported as a failure too — the
//! client gets a 5xx, never a false success.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use secretlog_reader::kafka::LogContext;

use crate::error::WriterError;

/// How long past the write timeout a timed-out commit is resumed before the producer gives up.
const RESOLVE_LIMIT: Duration = Duration::from_secs(60);

/// One record of a transaction.
pub struct Record {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub partition: i32,
}

/// A transactional producer bound to the mutation topic.
#[derive(Clone)]
pub struct TxProducer {
    producer: FutureProducer<LogContext>,
    topic: String,
}

/// Producer settings for the leader writer.
pub fn producer_config(bootstrap: &str, transactional_id: &str, txn_timeout_ms: u64) -> ClientConfig {
    let mut c = secretlog_reader::kafka::client_config(bootstrap);
    c.set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("transaction.timeout.ms", txn_timeout_ms.to_string())
        .set("message.timeout.ms", txn_timeout_ms.to_string())
        .set("linger.ms", "0")
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000");
    c
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

impl TxProducer {
    pub fn new(bootstrap: &str, transactional_id: &str, txn_timeout_ms: u64, topic: &str) -> Result<Self, WriterError> {
        let producer: FutureProducer<LogContext> = producer_config(bootstrap, transactional_id, txn_timeout_ms)
            .create_with_context(LogContext)
            .map_err(|e| WriterError::Transaction(format!("creating producer: {e}")))?;
        Ok(TxProducer { producer, topic: topic.to_string() })
    }

    /// Register as the transactional producer, fencing any previous holder of the id and
    /// aborting its open transaction. Blocks (on a blocking thread) up to `timeout`.
    pub async fn init(&self, timeout: Duration) -> Result<(), WriterError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(timeout))
            .await
            .map_err(|e| WriterError::Transaction(e.to_string()))?
            .map_err(|e| WriterError::Transaction(format!("init_transactions: {e}")))
    }

    /// Append `records` in one transaction. Returns each record's (partition, offset) only once
    /// the transaction committed.
    pub async fn commit(&self, records: Vec<Record>, timeout: Duration) -> Result<Vec<(i32, i64)>, WriterError> {
        let deadline = Instant::now() + timeout;
        self.producer.begin_transaction().map_err(|e| self.failed("begin", e))?;
        let mut futures = Vec::with_capacity(records.len());
        for r in &records {
            let rec = FutureRecord::to(&self.topic).key(&r.key).payload(&r.payload).partition(r.partition);
            match self.producer.send_result(rec) {
                Ok(f) => futures.push(f),
                Err((e, _)) => {
                    self.abort().await;
                    return Err(self.failed("enqueue", e));
                }
            }
        }
        let mut positions = Vec::with_capacity(records.len());
        let mut failure = None;
        for res in join_all(futures).await {
            match res {
                Ok(Ok(d)) => positions.push((d.partition, d.offset)),
                Ok(Err((e, _))) => failure = Some(e.to_string()),
                Err(_) => failure = Some("delivery cancelled".into()),
            }
        }
        if let Some(f) = failure {
            self.abort().await;
            return Err(WriterError::Transaction(format!("record not delivered: {f}")));
        }
        // Commit; retry while the error says retrying is safe. A commit that timed out is still in
        // progress inside librdkafka (every later `begin_transaction` would be refused as
        // conflicting with it), so it is resumed until it resolves either way — the clients'
        // own timeouts answer them meanwhile — and only if it cannot be resolved at all does
        // this producer give up, as fenced: the node steps down and the next leader's
        // `init_transactions` settles the transaction.
        let give_up = deadline + RESOLVE_LIMIT;
        loop {
            let p = self.producer.clone();
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            let res = tokio::task::spawn_blocking(move || p.commit_transaction(left))
                .await
                .map_err(|e| WriterError::Transaction(e.to_string()))?;
            match res {
                Ok(()) => return Ok(positions),
                Err(KafkaError::Transaction(t)) if t.is_retriable() && Instant::now() < deadline => continue,
                Err(KafkaError::Transaction(t)) if t.is_retriable() && Instant::now() < give_up => {
                    tracing::warn!(error = %t, "transaction commit still unresolved past the write timeout; resuming it");
                    continue;
                }
                Err(KafkaError::Transaction(t)) if t.is_retriable() => {
                    tracing::error!(error = %t, limit = ?RESOLVE_LIMIT, "transaction commit unresolved; giving up leadership so a new producer settles it");
                    return Err(WriterError::Fenced);
                }
                Err(KafkaError::Transaction(t)) if t.txn_requires_abort() => {
                    self.abort().await;
                    return Err(WriterError::Transaction(format!("commit failed, transaction aborted: {t}")));
                }
                Err(e) => return Err(self.failed("commit", e)),
            }
        }
    }

    fn failed(&self, step: &str, e: KafkaError) -> WriterError {
        if is_fatal(&e) {
            tracing::error!(step, error = %e, "producer fenced or failed fatally");
            WriterError::Fenced
        } else {
            WriterError::Transaction(format!("{step}: {e}"))
        }
    }

    async fn abort(&self) {
        let p = self.producer.clone();
        let res = tokio::task::spawn_blocking(move || p.abort_transaction(Duration::from_secs(10))).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "abort_transaction failed");
        }
    }
}
