//! The Kafka producers of the leader writer.
//!
//! **The hot path: [`LogProducer`]**, one idempotent producer (`acks=all`, `enable.idempotence`
//! set explicitly: librdkafka defaults it off), no transaction: one replicated produce per batch
//! of records, several batches in flight. What a record's delivery report says is only where it
//! landed; whether it counts is the leader's own materializer's verdict (`crate::committer`).
//!
//! **Transactions stay for what must land all or nothing** ([`TxProducer`]: `secretlog reseed`)
//! and for fencing: a new leader calls `init_transactions` on every transactional id ever used
//! ([`Fencers::fence`]) so that no open transaction of a dead producer holds the
//! read_committed consumers at its last stable offset.
//!
//! [`TxProducer`]: a batch of records is one transaction; it either commits, or every record in
//! it is reported failed. A commit whose outcome is unknown is reported as a failure too.
//!
//! **A ring of [`PRODUCERS`] transactional producers.** A Kafka producer has at most one open
//! transaction, and once `EndTxn` returns the coordinator is still writing the commit markers:
//! until it is done the *same* transactional id cannot add a partition to its next transaction
//! (librdkafka is answered `CONCURRENT_TRANSACTIONS` and retries ~20 ms later). So each
//! transaction takes the producer of the ring that finished longest ago, and the committer may
//! run up to [`MAX_IN_FLIGHT`] transactions at once (on disjoint secrets; see `crate::committer`).
//! Measured against the local three-broker cluster (one record per transaction, one partition,
//! one after another): 31 ms per transaction with one producer, 14 ms with two, 12 ms with three
//! (docs/benchmarks.md, "Writes: the transaction round").
//!
//! Every producer of the ring has its own `transactional.id`, derived from the logical writer's
//! (`<id>`, `<id>.1`, `<id>.2`): a new leader's `init_transactions` on **all** of them fences
//! every producer of the previous leader before it writes anything. The ring's size is a
//! constant, not a setting, so that every leader fences the same ids.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use secretlog_state::kafka::LogContext;

use crate::error::WriterError;

/// How long past the write timeout a timed-out commit is resumed before the producer gives up.
const RESOLVE_LIMIT: Duration = Duration::from_secs(60);

/// One record of a transaction.
#[derive(Clone)]
pub struct Record {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub partition: i32,
}

/// How many transactional producers the leader rotates through (see the module comment). Were
/// it ever made larger, a new leader must still fence the ids an older, smaller ring used — they
/// are a prefix of the new ring's, so it does.
pub const PRODUCERS: usize = 4;

/// Transactions open at once, at most: one fewer than the ring, so the producer a transaction
/// takes always finished its previous one at least a whole commit ago.
pub const MAX_IN_FLIGHT: usize = PRODUCERS - 1;
const _: () = assert!(MAX_IN_FLIGHT >= 1 && MAX_IN_FLIGHT < PRODUCERS, "a rested producer is always free");

/// The `transactional.id` of producer `index` of the ring of the logical writer `base`.
pub fn ring_transactional_id(base: &str, index: usize) -> String {
    if index == 0 { base.to_string() } else { format!("{base}.{index}") }
}

/// The ring of transactional producers bound to the mutation topic.
#[derive(Clone)]
pub struct TxProducer {
    ring: Arc<Vec<FutureProducer<LogContext>>>,
    /// Indexes of the producers without an open transaction, the one that finished longest ago
    /// first.
    idle: Arc<Mutex<VecDeque<usize>>>,
    topic: String,
}

/// Producer settings for the leader writer.
pub fn producer_config(bootstrap: &str, transactional_id: &str, txn_timeout_ms: u64) -> ClientConfig {
    let mut c = secretlog_state::kafka::client_config(bootstrap);
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

/// How often [`serve_deliveries`] serves the delivery reports itself.
const DELIVERY_POLL: Duration = Duration::from_millis(1);

/// Wait for `deliveries` (the delivery reports of a transaction's records), serving `producer`'s
/// reports every [`DELIVERY_POLL`] meanwhile, then until none is left, or `deadline` passed.
///
/// rdkafka's own polling thread (one per producer) serves them too, but measured against the
/// local cluster it sometimes does so only when its 100 ms wait times out: a few transactions
/// in a hundred took ~100 ms longer, the report sitting unserved — and `commit_transaction`'s
/// flush waits until every report was served. Serving them here too bounds that to about a
/// millisecond; every report still goes to the same callback, whichever thread serves it. Each
/// serve is a non-blocking `poll` (a blocking one with a timeout under a second spins: rdkafka
/// rounds the remaining wait down to whole milliseconds). Measured in docs/benchmarks.md,
/// "A write's 100 ms tail".
///
/// With `drain`, it then also waits until the producer has nothing outstanding at all (a
/// transaction's commit flushes every report); without, it returns as soon as its own reports
/// are in — the idempotent producer is shared by every batch in flight, and under steady load it
/// is never empty.
async fn serve_deliveries<F: Future + Unpin>(
    producer: &FutureProducer<LogContext>,
    mut deliveries: F,
    deadline: Instant,
    drain: bool,
) -> F::Output {
    let delivered = loop {
        tokio::select! {
            d = &mut deliveries => break d,
            _ = tokio::time::sleep(DELIVERY_POLL) => producer.poll(Duration::ZERO),
        }
    };
    while drain && producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() > 0 {
            tokio::time::sleep(DELIVERY_POLL).await;
        }
    }
    delivered
}

/// Settings of the leader's idempotent producer: every record replicated (`acks=all`) before its
/// delivery report, re-sends deduplicated by the broker, order kept per partition with up to five
/// requests in flight. `message_timeout_ms` bounds how long librdkafka retries a record.
pub fn idempotent_config(bootstrap: &str, message_timeout_ms: u64) -> ClientConfig {
    let mut c = secretlog_state::kafka::client_config(bootstrap);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", message_timeout_ms.to_string())
        .set("linger.ms", LINGER_MS)
        // Small produce requests, answered one by one: never held back for coalescing.
        .set("socket.nagle.disable", "true")
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000");
    c
}

/// How long the idempotent producer holds a record for more to batch with it. Not 0: with
/// `linger.ms=0` librdkafka's broker threads spin while a partition's five requests are in
/// flight and more records wait (docs/benchmarks.md, "Acknowledged on apply").
const LINGER_MS: &str = "1";

/// How long [`LogProducer::send_now`] holds librdkafka's flushing state at most.
const SEND_NOW_WINDOW_MS: i32 = 1;

/// The leader's idempotent producer, bound to the mutation topic.
#[derive(Clone)]
pub struct LogProducer {
    producer: FutureProducer<LogContext>,
    topic: String,
}

impl LogProducer {
    pub fn new(bootstrap: &str, message_timeout_ms: u64, topic: &str) -> Result<Self, WriterError> {
        let producer = idempotent_config(bootstrap, message_timeout_ms)
            .create_with_context(LogContext)
            .map_err(|source| WriterError::Kafka { step: "creating the producer", source })?;
        Ok(LogProducer { producer, topic: topic.to_string() })
    }

    /// Append `records`; each one's (partition, offset) or why its delivery failed. A failed
    /// delivery says nothing about the record: it may still land (DESIGN.md, rule 4).
    pub async fn send(&self, records: &[Record], timeout: Duration) -> Vec<Result<(i32, i64), String>> {
        let deadline = Instant::now() + timeout;
        let mut futures = Vec::with_capacity(records.len());
        let mut results: Vec<Option<Result<(i32, i64), String>>> = Vec::with_capacity(records.len());
        for r in records {
            let rec = FutureRecord::to(&self.topic).key(&r.key).payload(&r.payload).partition(r.partition);
            match self.producer.send_result(rec) {
                Ok(f) => {
                    futures.push(f);
                    results.push(None);
                }
                Err((e, _)) => results.push(Some(Err(format!("enqueue: {e}")))),
            }
        }
        if !futures.is_empty() && self.producer.in_flight_count() as usize <= futures.len() {
            self.send_now();
        }
        let delivered = serve_deliveries(&self.producer, join_all(futures), deadline, false).await;
        let mut delivered = delivered.into_iter();
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| match delivered.next() {
                    Some(Ok(Ok(d))) => Ok((d.partition, d.offset)),
                    Some(Ok(Err((e, _)))) => Err(e.to_string()),
                    Some(Err(_)) | None => Err("delivery cancelled".into()),
                })
            })
            .collect()
    }

    /// Append one record to partition `partition` of another topic (the election topic's
    /// claims): its offset, or why its delivery failed.
    pub async fn append_to(
        &self,
        topic: &str,
        partition: i32,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<i64, String> {
        let rec = FutureRecord::<[u8], [u8]>::to(topic).payload(payload).partition(partition);
        match self.producer.send(rec, timeout).await {
            Ok(d) => Ok(d.offset),
            Err((e, _)) => Err(e.to_string()),
        }
    }

    /// Have librdkafka send what it holds now rather than when [`LINGER_MS`] has passed.
    ///
    /// Called when a batch's records are all enqueued and nothing else is outstanding: the
    /// batch is whole, so lingering only delays it (a lone write waited ~1 ms, a third of its
    /// replicated produce). `rd_kafka_flush` is librdkafka's one way to say so: while it runs,
    /// the broker threads treat the linger as over; it is woken at once and sends the records
    /// in one request. It blocks (polling delivery reports, which go to the same callback as
    /// everywhere else) until they are delivered or [`SEND_NOW_WINDOW_MS`] passed, so it runs on
    /// a blocking thread; the window need only outlast the broker thread's wake-up.
    /// Measured in docs/benchmarks.md, "A batch is sent when it is whole".
    fn send_now(&self) {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            // SAFETY: `native_ptr` is the handle of the producer `producer` keeps alive for the
            // whole call; librdkafka's flush may be called from any thread.
            unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), SEND_NOW_WINDOW_MS) };
        });
    }

    /// Whether librdkafka reports the producer unusable (a fatal idempotence error).
    pub fn fatal_error(&self) -> Option<String> {
        self.producer.client().fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"))
    }
}

/// The transactional ids a leader fences before it writes: every producer of the ring earlier
/// releases used on the hot path, and `secretlog reseed`'s for `topic`.
pub fn transactional_ids_ever_used(base: &str, topic: &str) -> Vec<String> {
    (0..PRODUCERS).map(|i| ring_transactional_id(base, i)).chain([format!("secretlog-reseed-{topic}")]).collect()
}

/// One transactional producer per id of `ids`, created (connecting to the brokers) but not
/// initialized, so that [`Fencers::fence`] later takes one round to the coordinator instead of
/// waiting for new clients to connect first (about half a second, measured).
///
/// Plain producers, not rdkafka's threaded ones: an idle threaded producer's polling thread costs
/// about 1 % of a core (its 100 ms poll spins through its last millisecond, rdkafka rounding the
/// wait down to whole milliseconds). Nothing polls these but [`Fencers::drain`], called now and
/// then while they wait, and the `init_transactions` that uses them.
pub struct Fencers {
    producers: Vec<rdkafka::producer::BaseProducer<FenceContext>>,
    timeout: Duration,
}

/// The fencers' client context: errors logged as every client's ([`LogContext`]); they send
/// nothing, so there is no delivery report to handle.
#[derive(Clone, Default)]
pub struct FenceContext;

impl rdkafka::ClientContext for FenceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        rdkafka::ClientContext::error(&LogContext, error, reason)
    }
}

impl rdkafka::producer::ProducerContext for FenceContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl Fencers {
    pub fn new(bootstrap: &str, ids: &[String], timeout: Duration) -> Result<Self, WriterError> {
        let producers = ids
            .iter()
            .map(|id| {
                producer_config(bootstrap, id, timeout.as_millis() as u64)
                    .create_with_context(FenceContext)
                    .map_err(|source| WriterError::Kafka { step: "creating the producer", source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Fencers { producers, timeout })
    }

    /// Serve what the waiting producers queued (errors, logs), without blocking.
    pub fn drain(&self) {
        for p in &self.producers {
            // At most one event a call; an idle producer queues a few at most between calls.
            for _ in 0..16 {
                p.poll(Duration::ZERO);
            }
        }
    }

    /// Fence every id: `init_transactions` on each (all at once, on blocking threads), so the
    /// broker aborts any transaction a dead producer left open and refuses that producer from
    /// here on. Nothing is written. The producers are closed afterwards, off the caller's path.
    pub async fn fence(self) -> Result<(), WriterError> {
        let timeout = self.timeout;
        let inits = self.producers.into_iter().map(|p| {
            tokio::task::spawn_blocking(move || {
                let r = p.init_transactions(timeout);
                (r, p)
            })
        });
        let mut first_error = None;
        let mut done = Vec::new();
        for res in join_all(inits).await {
            match res {
                Ok((r, p)) => {
                    done.push(p);
                    if let Err(source) = r {
                        first_error.get_or_insert(WriterError::Kafka { step: "init_transactions", source });
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(WriterError::NotReady(format!("fencing task failed: {e}")));
                }
            }
        }
        tokio::task::spawn_blocking(move || drop(done));
        first_error.map_or(Ok(()), Err)
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

impl TxProducer {
    pub fn new(bootstrap: &str, transactional_id: &str, txn_timeout_ms: u64, topic: &str) -> Result<Self, WriterError> {
        let ring = (0..PRODUCERS)
            .map(|i| {
                producer_config(bootstrap, &ring_transactional_id(transactional_id, i), txn_timeout_ms)
                    .create_with_context(LogContext)
                    .map_err(|source| WriterError::Kafka { step: "creating the producer", source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TxProducer {
            ring: Arc::new(ring),
            idle: Arc::new(Mutex::new((0..PRODUCERS).collect())),
            topic: topic.to_string(),
        })
    }

    /// Register every producer of the ring, fencing any previous holder of each id and aborting
    /// its open transaction. Blocks (on blocking threads, all at once) up to `timeout`.
    pub async fn init(&self, timeout: Duration) -> Result<(), WriterError> {
        let inits =
            self.ring.iter().cloned().map(|p| tokio::task::spawn_blocking(move || p.init_transactions(timeout)));
        for res in join_all(inits).await {
            res?.map_err(|source| WriterError::Kafka { step: "init_transactions", source })?;
        }
        Ok(())
    }

    /// Append `records` in one transaction, on the idle producer of the ring that finished
    /// longest ago. Returns each record's (partition, offset) only once the transaction
    /// committed. At most [`MAX_IN_FLIGHT`] commits may run at once.
    pub async fn commit(&self, records: Vec<Record>, timeout: Duration) -> Result<Vec<(i32, i64)>, WriterError> {
        let index = self.idle.lock().expect("producer ring lock").pop_front().ok_or(WriterError::RingExhausted)?;
        let result = self.commit_on(&self.ring[index], records, timeout).await;
        self.idle.lock().expect("producer ring lock").push_back(index);
        result
    }

    async fn commit_on(
        &self,
        producer: &FutureProducer<LogContext>,
        records: Vec<Record>,
        timeout: Duration,
    ) -> Result<Vec<(i32, i64)>, WriterError> {
        let deadline = Instant::now() + timeout;
        producer.begin_transaction().map_err(|e| self.failed("begin", e))?;
        let mut futures = Vec::with_capacity(records.len());
        for r in &records {
            let rec = FutureRecord::to(&self.topic).key(&r.key).payload(&r.payload).partition(r.partition);
            match producer.send_result(rec) {
                Ok(f) => futures.push(f),
                Err((e, _)) => {
                    Self::abort(producer).await;
                    return Err(self.failed("enqueue", e));
                }
            }
        }
        let delivered = serve_deliveries(producer, join_all(futures), deadline, true).await;
        let mut positions = Vec::with_capacity(records.len());
        let mut failure = None;
        for res in delivered {
            match res {
                Ok(Ok(d)) => positions.push((d.partition, d.offset)),
                Ok(Err((e, _))) => failure = Some(e),
                Err(_) => failure = Some(KafkaError::Canceled),
            }
        }
        if let Some(source) = failure {
            Self::abort(producer).await;
            return Err(WriterError::Kafka { step: "delivering a record", source });
        }
        // Commit; retry while the error says retrying is safe. A commit that timed out is still in
        // progress inside librdkafka (every later `begin_transaction` would be refused as
        // conflicting with it), so it is resumed until it resolves either way — the clients'
        // own timeouts answer them meanwhile — and only if it cannot be resolved at all does
        // this producer give up, as fenced: the node steps down and the next leader's
        // `init_transactions` settles the transaction.
        let give_up = deadline + RESOLVE_LIMIT;
        loop {
            let p = producer.clone();
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            let res = tokio::task::spawn_blocking(move || p.commit_transaction(left)).await?;
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
                    Self::abort(producer).await;
                    let source = KafkaError::Transaction(t);
                    return Err(WriterError::Kafka { step: "commit (the transaction was aborted)", source });
                }
                Err(e) => return Err(self.failed("commit", e)),
            }
        }
    }

    fn failed(&self, step: &'static str, source: KafkaError) -> WriterError {
        if is_fatal(&source) {
            tracing::error!(step, error = %source, "producer fenced or failed fatally");
            WriterError::Fenced
        } else {
            WriterError::Kafka { step, source }
        }
    }

    async fn abort(producer: &FutureProducer<LogContext>) {
        let p = producer.clone();
        let res = tokio::task::spawn_blocking(move || p.abort_transaction(Duration::from_secs(10))).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "abort_transaction failed");
        }
    }
}
