//! The materializer: consumes every partition of the mutation log, verifies each record, applies
//! it with [`crate::model::apply`], and stores the result together with the partition positions
//! in one atomic batch.
//!
//! A record that cannot be verified, decoded or applied **halts its partition** at that offset:
//! the partition is paused, the reason is published in [`Progress::halted`] (health turns 503),
//! and nothing after it in that partition is applied. It is never skipped — a skipped event is
//! silent divergence. Other partitions keep going.
//!
//! A record that verifies but that its partition's own history makes invalid is **refused**
//! (DESIGN.md, "Write path", rule 1): an epoch older than one already accepted in the partition (a
//! deposed leader's, or one sent before a barrier), or a `Put` of a version that is not the
//! secret's next (decided against a state that has since changed). Every node refuses it alike:
//! its offset is consumed, nothing else changes, and the reason is counted
//! (`secretlog_reader_records_refused_total`). The leader learns each of its records' fate —
//! accepted or refused, by event id — through [`Verdicts`], once the batch is applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use secretlog_schemas::metadata::SecretMeta;
use secretlog_schemas::{Keyring, Operation, decode_event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::NodeError;
use crate::freshness::Confirmations;
use crate::kafka::LogContext;
use crate::model::{KeyTerms, apply, apply_rewrap};
use crate::store::{ApplyBatch, LeaderRecord, PartitionState, Store, TermCounts, keys};

/// Most records applied in one atomic batch.
const MAX_BATCH: usize = 512;

/// Where the materializer is, published after every committed batch.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Next offset to apply, per partition (the consistency-token comparison point).
    pub applied: BTreeMap<i32, i64>,
    /// Last stable offset per partition (the end a `read_committed` client sees: the high
    /// watermark, or the first offset of a transaction still open), refreshed about every second.
    pub high: BTreeMap<i32, i64>,
    /// Offset after everything this node has read and applied, transaction markers included: at
    /// least `applied`, and equal to the partition's end once the node has read to it. Compared
    /// with last stable offsets (which count markers); never ahead of what is applied, and held at
    /// `applied` in a halted partition.
    pub consumed: BTreeMap<i32, i64>,
    /// Which last-stable-offset queries this node has caught up with, per partition: its
    /// staleness (see [`crate::freshness`]).
    pub confirmations: Confirmations,
    /// Halted partitions and why.
    pub halted: BTreeMap<i32, String>,
    /// Commit timestamp of the newest applied event.
    pub last_event_ms: i64,
    /// Last consumer-level error (brokers unreachable, ...), cleared by the next good batch.
    pub consumer_error: Option<String>,
    /// Number of partitions of the topic; 0 until known.
    pub partitions: i32,
    /// The newest leader the log announced (epoch and URL).
    pub leader: Option<LeaderRecord>,
    /// Set when the log was written under another root key: the node is effectively sealed.
    pub wrong_key: Option<String>,
    /// Partitions read to their end since their last applied record.
    pub at_end: std::collections::BTreeSet<i32>,
    /// The mount table as of `applied` (published with the batch that changed it, so a read that
    /// waited for a position sees the mounts enabled before it).
    pub mounts: Arc<crate::mounts::Mounts>,
    /// The audit devices enabled through the log, as of `applied` (published like `mounts`).
    pub audit_devices: Arc<crate::audit_devices::AuditDevices>,
    /// Counts the batches that changed a token, the root token or a policy: what the node knows
    /// of a token and of what its policies grant is unchanged while this is (the API caches token
    /// records and merged ACLs by it, the audit log who a token is).
    pub auth_version: u64,
}

impl Progress {
    /// Offsets between what this node consumed and the last stable offsets last queried (both
    /// count transaction markers, so a node that read to the end reads 0 — and a node that stopped
    /// reading does not, unlike a sticky end-of-partition flag).
    pub fn lag_records(&self) -> i64 {
        self.high.iter().map(|(p, end)| (end - self.consumed_at(*p)).max(0)).sum()
    }

    /// [`Progress::consumed`] of partition `p` (its applied offset if nothing was read yet).
    pub fn consumed_at(&self, p: i32) -> i64 {
        let applied = self.applied.get(&p).copied().unwrap_or(0);
        self.consumed.get(&p).copied().unwrap_or(applied).max(applied)
    }

    /// Whether this node consumed every partition of `ends` up to its offset.
    pub fn has_consumed(&self, ends: &BTreeMap<i32, i64>) -> bool {
        ends.iter().all(|(p, end)| self.consumed_at(*p) >= *end)
    }

    fn consumed_all(&self) -> BTreeMap<i32, i64> {
        (0..self.partitions).map(|p| (p, self.consumed_at(p))).collect()
    }

    /// Seconds behind: 0 when caught up, else the age of the newest applied event.
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        if self.lag_records() == 0 { 0.0 } else { ((now_ms - self.last_event_ms).max(0) as f64) / 1000.0 }
    }
}

/// Settings of a materializer.
#[derive(Debug, Clone)]
pub struct MaterializerConfig {
    pub bootstrap: String,
    pub topic: String,
    /// Name used in logs and as the (never committed) consumer group id.
    pub node_name: String,
}

/// What became of one record, as the materializer decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Applied at this position: visible to reads on this node.
    Accepted { partition: i32, offset: i64 },
    /// Consumed without effect, identically on every node, and why.
    Refused { partition: i32, offset: i64, reason: String },
    /// Its partition halted at or before it: nothing after the halt is applied.
    Halted { partition: i32, reason: String },
}

/// Waiters for the verdicts of records by event id: the leader registers each record before it
/// sends it and hears the verdict once the batch holding it is applied (after its state is
/// visible to reads). Readers register nothing; a verdict nobody waits for is dropped.
#[derive(Default)]
pub struct Verdicts {
    waiting: std::sync::Mutex<Waiters>,
}

type Waiters = std::collections::HashMap<[u8; 16], (i32, tokio::sync::oneshot::Sender<Verdict>)>;

impl Verdicts {
    /// Wait for the verdict of the record with `event_id`, bound for `partition`.
    pub fn register(&self, event_id: [u8; 16], partition: i32) -> tokio::sync::oneshot::Receiver<Verdict> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().expect("verdicts lock").insert(event_id, (partition, tx));
        rx
    }

    /// Stop waiting for `event_id`.
    pub fn forget(&self, event_id: &[u8; 16]) {
        self.waiting.lock().expect("verdicts lock").remove(event_id);
    }

    /// Tell the waiters of `decided`, and every waiter for a record of a `halted` partition (its
    /// record will not be applied while the halt lasts).
    fn resolve(&self, decided: Vec<([u8; 16], Verdict)>, halted: &BTreeMap<i32, String>) {
        let mut waiting = self.waiting.lock().expect("verdicts lock");
        if waiting.is_empty() {
            return;
        }
        for (id, v) in decided {
            if let Some((_, tx)) = waiting.remove(&id) {
                let _ = tx.send(v);
            }
        }
        if !halted.is_empty() {
            waiting.retain(|_, (p, tx)| match halted.get(p) {
                Some(reason) => {
                    let tx = std::mem::replace(tx, tokio::sync::oneshot::channel().0);
                    let _ = tx.send(Verdict::Halted { partition: *p, reason: reason.clone() });
                    false
                }
                None => true,
            });
        }
    }
}

/// A running materializer's outputs.
#[derive(Clone)]
pub struct MaterializerHandle {
    pub progress: watch::Receiver<Progress>,
    /// The verdicts of records, for the leader that appended them.
    pub verdicts: Arc<Verdicts>,
    /// Last-stable-offset queries on demand, for strong reads.
    pub ends: Arc<EndQueries>,
}

/// What one last-stable-offset query returned: the round's number and the partitions' ends, or
/// why it failed.
#[derive(Debug, Clone)]
struct EndRound {
    round: u64,
    ends: Result<Arc<BTreeMap<i32, i64>>, String>,
}

/// Queries of the partitions' last stable offsets for strong reads, shared: a read waits for the
/// first round *sent after it arrived* (so the ends it waits for include every write acknowledged
/// before it arrived), and every read that arrives while a round is out shares the next one —
/// one query per round trip, however many reads.
///
/// The rounds run one at a time on a thread of their own (`secretlog-ends`): the query blocks in
/// librdkafka, and a thread that only waits for the next wanted round hands the answer to the
/// waiting reads directly, with no task or blocking-pool hop per round. More rounds in flight
/// (each read waiting about one round trip instead of one and a half) measured worse at 16
/// connections: 1,263 strong reads/s with 4 vs 2,243 with 1 (docs/benchmarks.md), and 1.89 / 1.83
/// vs 2.00 / 2.01x etcd with 2 vs 1.
pub struct EndQueries {
    /// Rounds started so far; a round's query is sent after its number is taken.
    started: AtomicU64,
    /// Whether a read is waiting for a round not yet started.
    wanted: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
    done: watch::Sender<EndRound>,
}

impl EndQueries {
    fn new() -> Self {
        EndQueries {
            started: AtomicU64::new(0),
            wanted: std::sync::Mutex::new(false),
            wake: std::sync::Condvar::new(),
            done: watch::channel(EndRound { round: 0, ends: Err("no query yet".into()) }).0,
        }
    }

    /// The partitions' last stable offsets as a query sent after this call returned them, or why
    /// none answered within `timeout`.
    pub async fn after_now(&self, timeout: Duration) -> Result<Arc<BTreeMap<i32, i64>>, String> {
        let need = self.started.load(Ordering::SeqCst) + 1;
        let mut rx = self.done.subscribe();
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
        match tokio::time::timeout(timeout, rx.wait_for(|r| r.round >= need)).await {
            Ok(Ok(r)) => r.ends.clone(),
            Ok(Err(_)) => Err("this node stopped reading the log".into()),
            Err(_) => Err(format!("no answer from the brokers on the log's end within {} ms", timeout.as_millis())),
        }
    }

    /// Start the thread that answers rounds until `cancel`.
    fn start(self: Arc<Self>, cfg: MaterializerConfig, tx: watch::Sender<Progress>, cancel: CancellationToken) {
        let spawned =
            std::thread::Builder::new().name("secretlog-ends".into()).spawn(move || self.serve(cfg, tx, cancel));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no thread for last-stable-offset queries: strong reads will fail");
        }
    }

    /// Answer rounds until `cancel`: each round queries every partition's last stable offset at
    /// once (one request per partition leader) and feeds the answer to the node's confirmations.
    fn serve(&self, cfg: MaterializerConfig, tx: watch::Sender<Progress>, cancel: CancellationToken) {
        let client: rdkafka::consumer::BaseConsumer<LogContext> =
            match crate::kafka::consumer_config(&cfg.bootstrap, &format!("secretlog-ends-{}", cfg.node_name))
                .create_with_context(LogContext)
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "no client for last-stable-offset queries: strong reads will fail");
                    return;
                }
            };
        loop {
            {
                let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
                while !*wanted {
                    if cancel.is_cancelled() {
                        return;
                    }
                    wanted = self.wake.wait_timeout(wanted, CANCEL_CHECK).unwrap_or_else(|e| e.into_inner()).0;
                }
                *wanted = false;
            }
            let round = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let partitions = tx.borrow().partitions;
            if partitions == 0 {
                let ends = Err("this node is not yet positioned on the log".to_string());
                self.publish(EndRound { round, ends });
                continue;
            }
            let sent = Instant::now();
            let ends = query_ends(&client, &cfg.topic, partitions, QUERY_TIMEOUT);
            metrics::histogram!("secretlog_reader_end_query_seconds").record(sent.elapsed().as_secs_f64());
            match &ends {
                Ok(ends) => tx.send_modify(|p| {
                    let consumed = p.consumed_all();
                    p.confirmations.answered(sent, ends, &consumed);
                }),
                Err(why) => tx.send_modify(|p| p.confirmations.failed(Instant::now(), why.clone())),
            }
            self.publish(EndRound { round, ends: ends.map(Arc::new) });
        }
    }

    /// Publish a round's answer unless a later round answered first (any round sent after a
    /// read arrived serves it).
    fn publish(&self, answer: EndRound) {
        self.done.send_if_modified(|r| {
            let newer = answer.round > r.round;
            if newer {
                *r = answer;
            }
            newer
        });
    }
}

/// How often the query thread, while no read wants a round, checks whether the node stops.
const CANCEL_CHECK: Duration = Duration::from_millis(250);

/// How long one last-stable-offset query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Every partition's last stable offset, in one call (librdkafka sends one ListOffsets request per
/// partition leader, with the client's `read_committed` isolation level).
fn query_ends<C: rdkafka::consumer::ConsumerContext>(
    client: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, String> {
    let mut tpl = TopicPartitionList::with_capacity(partitions as usize);
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End).map_err(|e| e.to_string())?;
    }
    let answered = client.offsets_for_times(tpl, timeout).map_err(|e| format!("last-stable-offset query: {e}"))?;
    let mut ends = BTreeMap::new();
    for e in answered.elements() {
        if let Some(err) = e.error().err() {
            return Err(format!("last-stable-offset query of partition {}: {err}", e.partition()));
        }
        match e.offset() {
            Offset::Offset(o) => {
                ends.insert(e.partition(), o);
            }
            other => {
                return Err(format!("last-stable-offset query of partition {}: answered {other:?}", e.partition()));
            }
        }
    }
    if ends.len() != partitions as usize {
        return Err(format!("last-stable-offset query answered {} of {partitions} partitions", ends.len()));
    }
    Ok(ends)
}

impl MaterializerHandle {
    /// Wait until `reached(progress)` holds, up to `timeout`; whether it did. (What the progress
    /// is now: `self.progress.borrow()`, no copy.)
    pub async fn wait_for(&self, timeout: Duration, reached: impl Fn(&Progress) -> bool) -> bool {
        let mut rx = self.progress.clone();
        matches!(tokio::time::timeout(timeout, rx.wait_for(|p| reached(p))).await, Ok(Ok(_)))
    }
}

/// Start materializing `cfg.topic` into `store`. The task stops when `cancel` fires; the returned
/// join handle ends after the last batch is committed.
pub async fn spawn(
    cfg: MaterializerConfig,
    store: Arc<Store>,
    keyring: Arc<Keyring>,
    cancel: CancellationToken,
) -> Result<(MaterializerHandle, tokio::task::JoinHandle<()>), NodeError> {
    let stored = store.partitions().await?;
    let initial = Progress {
        applied: stored.iter().map(|(p, s)| (*p, s.next_offset)).collect(),
        leader: store.leader().await?,
        mounts: Arc::new(store.mounts().await?),
        audit_devices: Arc::new(store.audit_devices().await?),
        ..Default::default()
    };
    // Halts are not stored: a restarted node halts again at the same record. Until then, none.
    publish_halted(&initial);
    // The key terms this state was built with: seal under the newest, refuse the retired.
    adopt_key_terms(&keyring, &store.key_terms().await?);
    let counts = store.sealed_per_term().await?;
    if store.get_raw(keys::SEALED_PER_TERM).await?.is_none() {
        // Counted from the values (a store bootstrapped from a snapshot, or older than the
        // counts): keep the count, so later starts and batches need not count again.
        let mut batch = ApplyBatch::default();
        let encoded =
            serde_json::to_vec(&counts).map_err(|source| NodeError::Encode { what: "values per key term", source })?;
        batch.writes.insert(keys::SEALED_PER_TERM.to_vec(), Some(encoded));
        store.commit(batch).await?;
    }
    publish_term_counts(&counts, keyring.active_term());
    let (tx, rx) = watch::channel(initial);
    let verdicts = Arc::new(Verdicts::default());
    let ends = Arc::new(EndQueries::new());
    ends.clone().start(cfg.clone(), tx.clone(), cancel.clone());
    let m = Materializer { cfg, store, keyring, tx, stored, verdicts: verdicts.clone() };
    let waiters = verdicts.clone();
    let join = tokio::spawn(async move {
        if let Err(e) = m.run(cancel).await {
            tracing::error!(error = %e, "materializer stopped");
        }
        // No verdict will come any more: every waiter hears so at once.
        waiters.waiting.lock().expect("verdicts lock").clear();
    });
    Ok((MaterializerHandle { progress: rx, verdicts, ends }, join))
}

struct Materializer {
    cfg: MaterializerConfig,
    store: Arc<Store>,
    keyring: Arc<Keyring>,
    tx: watch::Sender<Progress>,
    stored: BTreeMap<i32, PartitionState>,
    verdicts: Arc<Verdicts>,
}

/// The consumer to use for a topic, positioned at the stored offsets.
fn assign(
    consumer: &StreamConsumer<LogContext>,
    topic: &str,
    partitions: i32,
    stored: &BTreeMap<i32, PartitionState>,
) -> Result<(), NodeError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions as usize);
    for p in 0..partitions {
        let offset = match stored.get(&p) {
            Some(st) => Offset::Offset(st.next_offset),
            // Not `Beginning`: that is the log start offset, which retention moves — starting
            // there would silently skip whatever Kafka already deleted.
            None => Offset::Offset(0),
        };
        tpl.add_partition_offset(topic, p, offset)?;
    }
    consumer.assign(&tpl)?;
    Ok(())
}

impl Materializer {
    async fn run(mut self, cancel: CancellationToken) -> Result<(), NodeError> {
        let group = format!("secretlog-materializer-{}", self.cfg.node_name);
        let consumer: Arc<StreamConsumer<LogContext>> =
            Arc::new(crate::kafka::consumer_config(&self.cfg.bootstrap, &group).create_with_context(LogContext)?);
        // Wait for the topic: a reader may start before the cluster or the topic exists.
        let partitions = loop {
            let (b, t) = (self.cfg.bootstrap.clone(), self.cfg.topic.clone());
            match tokio::task::spawn_blocking(move || crate::kafka::partition_count(&b, &t, Duration::from_secs(5)))
                .await?
            {
                Ok(n) => break n,
                Err(e) => {
                    self.tx.send_modify(|p| p.consumer_error = Some(e.to_string()));
                    tracing::warn!(error = %e, "waiting for the mutation topic");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        if let Some(reason) = self.cluster_mismatch().await? {
            tracing::error!(%reason, "materializer HALTED: this state belongs to another Kafka cluster");
            self.tx.send_modify(|p| {
                p.partitions = partitions;
                for part in 0..partitions {
                    p.halted.insert(part, reason.clone());
                }
            });
            return Ok(());
        }
        assign(&consumer, &self.cfg.topic, partitions, &self.stored)?;
        self.tx.send_modify(|p| {
            p.partitions = partitions;
            p.consumer_error = None;
            for part in 0..partitions {
                p.applied.entry(part).or_insert(0);
            }
        });
        tracing::info!(topic = %self.cfg.topic, partitions, "materializer positioned");
        let watermarks = tokio::spawn(refresh_watermarks(
            consumer.clone(),
            self.cfg.topic.clone(),
            partitions,
            self.tx.clone(),
            cancel.clone(),
        ));

        let mut states: BTreeMap<i32, PartitionState> =
            (0..partitions).map(|p| (p, self.stored.get(&p).copied().unwrap_or_default())).collect();
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                m = consumer.recv() => m,
            };
            let mut batch: Vec<OwnedMessage> = Vec::new();
            match first {
                Ok(m) => batch.push(m.detach()),
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    self.at_end_of_partition(p);
                    self.note_consumed(&consumer);
                    continue;
                }
                Err(e) => {
                    self.consumer_failed(&e);
                    continue;
                }
            }
            // Take whatever else is already fetched, without waiting: one poll of the queue. Not
            // `tokio::time::timeout(Duration::ZERO, ..)`, which waits for the timer's next
            // millisecond tick when the queue is empty — every batch was applied ~1 ms late, the
            // leader's own apply a fifth of a lone write's time (docs/benchmarks.md, "A batch is
            // applied when it arrives").
            let mut eofs = Vec::new();
            while batch.len() < MAX_BATCH {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m.detach()),
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => eofs.push(p),
                    Some(Err(e)) => {
                        self.consumer_failed(&e);
                        break;
                    }
                    None => break,
                }
            }
            self.apply_batch(&consumer, &mut states, batch).await?;
            for p in eofs {
                self.at_end_of_partition(p);
            }
            self.note_consumed(&consumer);
        }
        watermarks.abort();
        Ok(())
    }

    /// Offsets of one Kafka cluster mean nothing in another: a node whose state was read from
    /// another cluster (say, restarted with its old data directory after a DR promotion) must not
    /// consume — it would wait at offsets the new cluster may never reach, or skip what it holds.
    /// The first start records the cluster's id; later starts compare.
    async fn cluster_mismatch(&self) -> Result<Option<String>, NodeError> {
        let bootstrap = self.cfg.bootstrap.clone();
        let current =
            tokio::task::spawn_blocking(move || crate::kafka::cluster_id(&bootstrap, Duration::from_secs(30)))
                .await??;
        match self.store.get_raw(keys::CLUSTER).await? {
            Some(stored) if stored != current.as_bytes() => Ok(Some(format!(
                "this node's state was read from Kafka cluster {}, not {current}; start it with an empty data directory",
                String::from_utf8_lossy(&stored)
            ))),
            Some(_) => Ok(None),
            None => {
                let mut batch = ApplyBatch::default();
                batch.writes.insert(keys::CLUSTER.to_vec(), Some(current.into_bytes()));
                self.store.commit(batch).await?;
                Ok(None)
            }
        }
    }

    /// Log a consumer error and report it in the node's progress (health shows it) until a batch
    /// applies again.
    fn consumer_failed(&self, e: &rdkafka::error::KafkaError) {
        tracing::warn!(error = %e, "consumer error");
        self.tx.send_modify(|p| p.consumer_error = Some(e.to_string()));
    }

    /// The consumer has delivered everything up to the end of partition `p`. That only sets a
    /// flag for lag reporting: the applied position never moves without a record being applied
    /// (the consumer's fetch position can run ahead of what it has delivered, so adopting it
    /// would skip records).
    fn at_end_of_partition(&mut self, p: i32) {
        self.tx.send_modify(|prog| {
            prog.at_end.insert(p);
        });
    }

    /// Publish how far this node has read: the consumer's position, which steps over transaction
    /// markers. Called only when everything received so far is applied, so it is never ahead of
    /// the state; a halted partition stays at its applied offset (records received after the halt
    /// are not applied).
    fn note_consumed(&self, consumer: &StreamConsumer<LogContext>) {
        let Ok(positions) = consumer.position() else { return };
        self.tx.send_modify(|prog| {
            for e in positions.elements() {
                let p = e.partition();
                let applied = prog.applied.get(&p).copied().unwrap_or(0);
                let at = match e.offset() {
                    Offset::Offset(o) if !prog.halted.contains_key(&p) => o.max(applied),
                    _ => applied,
                };
                prog.consumed.insert(p, at);
            }
            let consumed = prog.consumed_all();
            prog.confirmations.consumed(&consumed);
        });
    }

    async fn apply_batch(
        &mut self,
        consumer: &StreamConsumer<LogContext>,
        states: &mut BTreeMap<i32, PartitionState>,
        msgs: Vec<OwnedMessage>,
    ) -> Result<(), NodeError> {
        if planted() == Some(PlantedBug::SlowApply) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let started = std::time::Instant::now();
        if let Some(ts) = msgs.first().and_then(|m| m.timestamp().to_millis()) {
            // From the producer's send to this node having it in hand: the log's part of a write.
            metrics::histogram!("secretlog_reader_fetch_delay_seconds").record((now_ms() - ts).max(0) as f64 / 1000.0);
        }
        let mut staging = Staging::new(self.tx.borrow().leader.as_ref());
        let mut newly_halted: Vec<(i32, i64, String)> = Vec::new();
        let halted: BTreeMap<i32, String> = self.tx.borrow().halted.clone();
        let mut last_event_ms = None;
        let mut applied_count = 0u64;
        let mut wrong_key = None;
        let mut decided: Vec<([u8; 16], Verdict)> = Vec::new();
        for msg in msgs {
            let (p, offset) = (msg.partition(), msg.offset());
            if halted.contains_key(&p) || newly_halted.iter().any(|(hp, _, _)| *hp == p) {
                continue;
            }
            let st = states.entry(p).or_default();
            if offset < st.next_offset {
                continue; // redelivery of something already applied
            }
            let payload = msg.payload().unwrap_or_default();
            match staging.stage(&self.store, &self.keyring, p, offset, msg.key(), payload, st).await {
                Ok(staged) => {
                    st.next_offset = offset + 1;
                    staging.batch.partitions.insert(p, *st);
                    last_event_ms = Some(staged.timestamp_ms);
                    let verdict = match staged.refused {
                        None => {
                            applied_count += 1;
                            Verdict::Accepted { partition: p, offset }
                        }
                        Some(refusal) => {
                            metrics::counter!("secretlog_reader_records_refused_total", "reason" => refusal.kind())
                                .increment(1);
                            tracing::debug!(partition = p, offset, reason = %refusal, "record refused");
                            Verdict::Refused { partition: p, offset, reason: refusal.to_string() }
                        }
                    };
                    decided.push((staged.event_id, verdict));
                }
                Err(e) => {
                    if matches!(e, NodeError::Decode { source: secretlog_schemas::DecodeError::WrongKey { .. }, .. }) {
                        wrong_key = Some(e.to_string());
                    }
                    newly_halted.push((p, offset, e.to_string()));
                }
            }
        }
        let staged_partitions: Vec<i32> = staging.batch.partitions.keys().copied().collect();
        let staged_leader = staging.leader.take();
        let staged_terms = staging.key_terms_changed.take();
        let staged_mounts = staging.mounts_changed.take();
        let staged_audit = staging.audit_changed.take();
        let staged_auth = std::mem::take(&mut staging.auth_changed);
        let staged_counts = staging.counts_changed.then(|| staging.counts.clone()).flatten();
        self.store.commit(staging.batch).await?;
        // Only once the batch is durable does the keyring follow it: a node never seals under a
        // term its stored state does not know.
        if let Some(terms) = &staged_terms {
            adopt_key_terms(&self.keyring, terms);
        }
        if let Some(counts) = &staged_counts {
            publish_term_counts(counts, self.keyring.active_term());
        }
        metrics::counter!("secretlog_reader_events_applied_total").increment(applied_count);
        for (p, offset, reason) in &newly_halted {
            tracing::error!(partition = p, offset, %reason, "partition HALTED: record rejected, nothing after it is applied");
            metrics::counter!("secretlog_reader_partition_halts_total").increment(1);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.cfg.topic, *p);
            if let Err(e) = consumer.pause(&tpl) {
                tracing::warn!(partition = p, error = %e, "could not pause halted partition");
            }
        }
        self.tx.send_modify(|prog| {
            for p in staged_partitions.iter() {
                prog.at_end.remove(p);
            }
            for (p, st) in states.iter() {
                prog.applied.insert(*p, st.next_offset);
                metrics::gauge!("secretlog_reader_applied_offset", "partition" => p.to_string())
                    .set(st.next_offset as f64);
            }
            for (p, offset, reason) in newly_halted {
                prog.halted.insert(p, format!("offset {offset}: {reason}"));
            }
            publish_halted(prog);
            if let Some(ts) = last_event_ms {
                prog.last_event_ms = ts;
            }
            prog.consumer_error = None;
            if wrong_key.is_some() {
                prog.wrong_key = wrong_key;
                crate::materializer::set_sealed(true);
            }
            if staged_leader.is_some() {
                prog.leader = staged_leader;
            }
            if let Some(m) = staged_mounts {
                prog.mounts = Arc::new(m);
            }
            if let Some(a) = staged_audit {
                prog.audit_devices = Arc::new(a);
            }
            if staged_auth {
                prog.auth_version += 1;
            }
        });
        // Only now, with the batch durable and its progress published, is any record of it
        // acknowledged: what a waiting client is told, reads on this node already see.
        let halted = self.tx.borrow().halted.clone();
        self.verdicts.resolve(decided, &halted);
        metrics::histogram!("secretlog_reader_apply_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// One atomic step being built: records verified and applied on top of the store's state and of
/// what is already staged. The materializer and the restore tools both stage records through it,
/// so a log replayed from the archive gives exactly the state a reader computes.
pub struct Staging {
    pub batch: ApplyBatch,
    metas: BTreeMap<Vec<u8>, Option<SecretMeta>>,
    /// The leader record this batch sets, if a newer epoch was seen.
    pub leader: Option<LeaderRecord>,
    /// The newest leader epoch applied before this batch.
    applied_leader_epoch: Option<u64>,
    /// The key terms as this batch leaves them, when it changed them.
    pub key_terms_changed: Option<KeyTerms>,
    /// Values per key term as this batch leaves them (loaded on first use).
    pub counts: Option<TermCounts>,
    /// Whether this batch changed `counts`.
    pub counts_changed: bool,
    /// The mount table as this batch leaves it, when it changed it.
    pub mounts_changed: Option<crate::mounts::Mounts>,
    /// The audit devices as this batch leaves them, when it changed them.
    pub audit_changed: Option<crate::audit_devices::AuditDevices>,
    /// Whether this batch changed a token, the root token or a policy.
    pub auth_changed: bool,
}

impl Staging {
    pub fn new(applied_leader: Option<&LeaderRecord>) -> Self {
        Staging {
            batch: ApplyBatch::default(),
            metas: BTreeMap::new(),
            leader: None,
            applied_leader_epoch: applied_leader.map(|l| l.epoch),
            key_terms_changed: None,
            counts: None,
            counts_changed: false,
            mounts_changed: None,
            audit_changed: None,
            auth_changed: false,
        }
    }

    /// The sealed value stored at `key` as of this batch (staged writes first).
    pub(crate) async fn stored_value(&self, store: &Store, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        match self.batch.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => store.get_committed(key).await,
        }
    }

    /// Count a value in (`+1`) or out (`-1`) of its term, and stage the counts.
    async fn count(&mut self, store: &Store, sealed: &[u8], delta: i64) -> Result<(), NodeError> {
        if self.counts.is_none() {
            // Loaded before this batch staged any value (the first value change of a batch is
            // the first need), so a recount from the store is exact.
            self.counts = Some(store.sealed_per_term().await?);
        }
        let counts = self.counts.as_mut().expect("loaded above");
        let term = secretlog_schemas::SealedValue::term_of(sealed).unwrap_or(0);
        let n = counts.entry(term).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            counts.remove(&term);
        }
        self.counts_changed = true;
        let encoded =
            serde_json::to_vec(&*counts).map_err(|source| NodeError::Encode { what: "values per key term", source })?;
        self.batch.writes.insert(keys::SEALED_PER_TERM.to_vec(), Some(encoded));
        Ok(())
    }

    /// Stage `sealed` (or its removal) at `key`, keeping the per-term counts.
    async fn set_value(
        &mut self,
        store: &Store,
        key: Vec<u8>,
        sealed: Option<Vec<u8>>,
        new_version: bool,
    ) -> Result<(), NodeError> {
        // A `Put` writes a version number never stored before (current + 1): nothing to count out.
        if !new_version && let Some(old) = self.stored_value(store, &key).await? {
            self.count(store, &old, -1).await?;
        }
        if let Some(v) = &sealed {
            self.count(store, v, 1).await?;
        }
        self.batch.writes.insert(key, sealed);
        Ok(())
    }

    async fn meta(&self, store: &Store, mkey: &[u8]) -> Result<Option<SecretMeta>, NodeError> {
        match self.metas.get(mkey) {
            Some(m) => Ok(m.clone()),
            None => match store.get_committed(mkey).await? {
                Some(b) => Ok(Some(serde_json::from_slice::<SecretMeta>(&b).map_err(|e| NodeError::Corrupt {
                    key: String::from_utf8_lossy(mkey).into_owned(),
                    reason: e.to_string(),
                })?)),
                None => Ok(None),
            },
        }
    }

    /// Verify and stage one record of `partition` at `offset`: accepted (staged) or refused (see
    /// the module comment; nothing staged). An error is a record no node can apply: it halts.
    /// `st` is the partition's position; it is not advanced here.
    #[allow(clippy::too_many_arguments)]
    pub async fn stage(
        &mut self,
        store: &Store,
        keyring: &Keyring,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        st: &mut PartitionState,
    ) -> Result<Staged, NodeError> {
        let event =
            decode_event(keyring, key, payload).map_err(|source| NodeError::Decode { partition, offset, source })?;
        let staged = |refused| Staged { timestamp_ms: event.timestamp_ms, event_id: event.event_id, refused };
        if event.writer_epoch < st.max_epoch && planted() != Some(PlantedBug::SkipEpochCheck) {
            return Ok(staged(Some(Refusal::StaleEpoch { epoch: event.writer_epoch, max_epoch: st.max_epoch })));
        }
        // Leader epochs are not records of their key's history: no revision.
        let revision_key =
            (!matches!(event.op, Operation::LeaderEpoch { .. })).then(|| keys::revision(&event.record_key()));
        let revision = match &revision_key {
            Some(k) => crate::store::decode_revision(self.stored_value(store, k).await?.as_deref()),
            None => 0,
        };
        if let Some(expected) = event.revision
            && expected != revision
            && planted() != Some(PlantedBug::NoRevisionCheck)
        {
            return Ok(staged(Some(Refusal::Revision { expected, current: revision })));
        }
        match &event.op {
            Operation::SetRootToken { token_hash } => {
                self.auth_changed = true;
                self.batch.writes.insert(keys::ROOT_TOKEN.to_vec(), Some(token_hash.to_vec()));
                tracing::info!(partition, offset, "root token hash applied");
            }
            Operation::PutPolicy { name, policy } => {
                self.auth_changed = true;
                self.batch.writes.insert(keys::policy(name), Some(policy.as_bytes().to_vec()));
            }
            Operation::DeletePolicy { name } => {
                self.auth_changed = true;
                self.batch.writes.insert(keys::policy(name), None);
            }
            Operation::PutToken { token_hash, record } => {
                self.auth_changed = true;
                crate::auth_objects::index_accessor(self, store, token_hash, Some(record)).await?;
                self.batch.writes.insert(keys::token(token_hash), Some(record.clone()));
            }
            Operation::RevokeToken { token_hash } => {
                self.auth_changed = true;
                crate::auth_objects::index_accessor(self, store, token_hash, None).await?;
                self.batch.writes.insert(keys::token(token_hash), None);
            }
            Operation::TidyToken { token_hash } => {
                let stored = self.stored_value(store, &keys::token(token_hash)).await?;
                if !crate::auth_objects::expired_by(stored.as_deref(), event.timestamp_ms) {
                    return Ok(staged(Some(Refusal::Conflict(
                        "the token was not expired (or not there) when the tidy was decided".into(),
                    ))));
                }
                self.auth_changed = true;
                crate::auth_objects::index_accessor(self, store, token_hash, None).await?;
                self.batch.writes.insert(keys::token(token_hash), None);
                metrics::counter!("secretlog_tokens_tidied_total").increment(1);
            }
            Operation::PutAuthObject { .. } | Operation::DeleteAuthObject { .. } => {
                if let Some(refusal) = crate::auth_objects::stage(self, store, &event).await? {
                    return Ok(staged(Some(refusal)));
                }
            }
            Operation::LeaderEpoch { leader_url } => {
                let newer = self.applied_leader_epoch.is_none_or(|e| event.writer_epoch > e)
                    && self.leader.as_ref().is_none_or(|l| event.writer_epoch > l.epoch);
                if newer {
                    tracing::info!(partition, offset, epoch = event.writer_epoch, leader = %leader_url, "new leader epoch");
                    let rec = LeaderRecord { epoch: event.writer_epoch, url: leader_url.clone() };
                    self.batch.writes.insert(keys::LEADER.to_vec(), serde_json::to_vec(&rec).ok());
                    self.leader = Some(rec);
                }
            }
            Operation::AddKeyTerm { .. } | Operation::RetireKeyTerm { .. } => {
                let mut terms = match &self.key_terms_changed {
                    Some(t) => t.clone(),
                    None => store.key_terms().await?,
                };
                let changed = terms.apply(&event.op, event.timestamp_ms).map_err(|source| NodeError::Apply {
                    partition,
                    offset,
                    source,
                })?;
                if changed {
                    tracing::info!(
                        partition,
                        offset,
                        op = event.op.name(),
                        active = terms.active(),
                        "key terms changed"
                    );
                    let encoded =
                        serde_json::to_vec(&terms).map_err(|source| NodeError::Encode { what: "key terms", source })?;
                    self.batch.writes.insert(keys::KEY_TERMS.to_vec(), Some(encoded));
                    self.key_terms_changed = Some(terms);
                }
            }
            Operation::PutMount { .. } | Operation::DeleteMount { .. } => {
                let mut mounts = match self.mounts_changed.take() {
                    Some(m) => m,
                    None => store.mounts().await?,
                };
                let changed = mounts.apply(&event.op).map_err(|reason| NodeError::Corrupt {
                    key: format!("mount event at partition {partition} offset {offset}"),
                    reason,
                })?;
                if let Some((path, value)) = changed {
                    tracing::info!(partition, offset, mount = %path, op = event.op.name(), "mount table changed");
                    self.batch.writes.insert(keys::mount(&path), Some(value));
                }
                self.mounts_changed = Some(mounts);
            }
            Operation::PutAuditDevice { .. } | Operation::DeleteAuditDevice { .. } => {
                let mut devices = match self.audit_changed.take() {
                    Some(d) => d,
                    None => store.audit_devices().await?,
                };
                let changed = devices.apply(&event.op).map_err(|reason| NodeError::Corrupt {
                    key: format!("audit device event at partition {partition} offset {offset}"),
                    reason,
                })?;
                if let Some((path, value)) = changed {
                    tracing::info!(partition, offset, device = %path, op = event.op.name(), "audit devices changed");
                    self.batch.writes.insert(keys::audit_device(&path), value);
                }
                self.audit_changed = Some(devices);
            }
            Operation::RewrapValues { values } => {
                let mkey = keys::meta(&event.mount, &event.path);
                let meta = self.meta(store, &mkey).await?;
                let mut stored = BTreeMap::new();
                if meta.is_some() {
                    for r in values {
                        let key = keys::value(&event.mount, &event.path, r.version);
                        if let Some(v) = self.stored_value(store, &key).await? {
                            stored.insert(r.version, v);
                        }
                    }
                }
                let replaced = apply_rewrap(meta.as_ref(), values, |v| stored.get(&v).map(Vec::as_slice));
                metrics::counter!("secretlog_rewrap_values_applied_total").increment(replaced.len() as u64);
                for (v, sealed) in replaced {
                    self.set_value(store, keys::value(&event.mount, &event.path, v), Some(sealed), false).await?;
                }
            }
            _ => {
                let mkey = keys::meta(&event.mount, &event.path);
                let current = self.meta(store, &mkey).await?;
                let effect = match apply(current.as_ref(), &event) {
                    Ok(effect) => effect,
                    Err(gap @ crate::model::ApplyError::VersionGap { .. }) => {
                        return Ok(staged(Some(Refusal::Conflict(gap.to_string()))));
                    }
                    Err(source) => return Err(NodeError::Apply { partition, offset, source }),
                };
                let new_versions = matches!(event.op, Operation::Put { .. } | Operation::PutWithDefaults { .. });
                for v in effect.remove_values {
                    self.set_value(store, keys::value(&event.mount, &event.path, v), None, false).await?;
                }
                for (v, sealed) in effect.put_values {
                    self.set_value(store, keys::value(&event.mount, &event.path, v), Some(sealed), new_versions)
                        .await?;
                }
                let encoded = match &effect.meta {
                    Some(m) => Some(
                        serde_json::to_vec(m)
                            .map_err(|source| NodeError::Encode { what: "secret metadata", source })?,
                    ),
                    None => None,
                };
                self.batch.writes.insert(mkey.clone(), encoded);
                self.metas.insert(mkey, effect.meta);
            }
        }
        st.max_epoch = st.max_epoch.max(event.writer_epoch);
        if let Some(k) = revision_key {
            // A tidied token's key is gone for good (accessors are random, never reused), so its
            // revision goes too: nothing of a token outlives its tidy. A copy of the token's
            // first record sent again after this (revision 0) would bring back the expired record
            // it carries — on every node alike, refused by every token check, tidied again by the
            // next pass — never a live token.
            let next =
                (!matches!(event.op, Operation::TidyToken { .. })).then(|| (revision + 1).to_be_bytes().to_vec());
            self.batch.writes.insert(k, next);
        }
        Ok(staged(None))
    }
}

/// One record staged: accepted unless `refused` says why not.
#[derive(Debug, Clone)]
pub struct Staged {
    pub timestamp_ms: i64,
    pub event_id: [u8; 16],
    pub refused: Option<Refusal>,
}

/// Why a verified record was refused (consumed without effect, on every node alike).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("writer epoch {epoch} is older than epoch {max_epoch} already accepted in this partition")]
    StaleEpoch { epoch: u64, max_epoch: u64 },
    #[error("decided against a state that has changed since: {0}")]
    Conflict(String),
    #[error("decided against revision {expected} of its key, which is at revision {current}")]
    Revision { expected: u64, current: u64 },
}

impl Refusal {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::StaleEpoch { .. } => "stale_epoch",
            Refusal::Conflict(_) => "conflict",
            Refusal::Revision { .. } => "revision",
        }
    }
}

/// Publish `secretlog_sealed`: 1 while this node has no usable root key (none, or not the one
/// the log was written with), else 0. Set where each cause is found — the node's keys sealed,
/// unsealed or missing (the node runtime's `Keys`) and the materializer meeting a record sealed under
/// another key — so reader, writer and replicator all report it without code of their own.
pub fn set_sealed(sealed: bool) {
    metrics::gauge!("secretlog_sealed").set(if sealed { 1.0 } else { 0.0 });
}

/// Bugs planted in tests only, never anywhere else (`SECRETLOG_TEST_PLANTED_BUG`, read only in
/// builds with the `planted-faults` feature, which only the end-to-end tests turn on); the
/// fault-injection checker must catch each.
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlantedBug {
    /// `skip-epoch-check`: records of a deposed leader (or sent before a barrier) are applied.
    SkipEpochCheck,
    /// `no-revision-check`: a record applies whatever revision it was decided against.
    NoRevisionCheck,
    /// `slow-apply`: every batch is applied 200 ms late, so a node that answers from its own
    /// state without waiting for what a client already saw acknowledged serves it stale data.
    SlowApply,
}

/// Without the `planted-faults` feature (every build but the tests') there is nothing to plant and
/// no environment variable is read.
#[cfg(not(feature = "planted-faults"))]
fn planted() -> Option<PlantedBug> {
    None
}

#[cfg(feature = "planted-faults")]
fn planted() -> Option<PlantedBug> {
    static PLANTED: std::sync::OnceLock<Option<PlantedBug>> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| {
        let bug = match std::env::var("SECRETLOG_TEST_PLANTED_BUG").ok().as_deref() {
            Some("skip-epoch-check") => Some(PlantedBug::SkipEpochCheck),
            Some("no-revision-check") => Some(PlantedBug::NoRevisionCheck),
            Some("slow-apply") => Some(PlantedBug::SlowApply),
            _ => None,
        };
        if let Some(b) = bug {
            tracing::error!(bug = ?b, "SECRETLOG_TEST_PLANTED_BUG: this node misbehaves on purpose (tests only)");
        }
        bug
    })
}

async fn refresh_watermarks(
    consumer: Arc<StreamConsumer<LogContext>>,
    topic: String,
    partitions: i32,
    tx: watch::Sender<Progress>,
    cancel: CancellationToken,
) {
    loop {
        let c = consumer.clone();
        let t = topic.clone();
        let sent = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| c.fetch_watermarks(&t, p, Duration::from_secs(2)).map(|w| (p, w)))
                .collect::<Result<BTreeMap<i32, (i64, i64)>, _>>()
        })
        .await;
        let res = match res {
            Ok(Ok(marks)) => Ok(marks),
            Ok(Err(e)) => Err(format!("last-stable-offset query: {e}")),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = &res {
            tx.send_modify(|p| p.confirmations.failed(Instant::now(), why.clone()));
        }
        if let Ok(marks) = res {
            let trimmed = trimmed_away(&tx.borrow(), &marks);
            for (p, reason) in &trimmed {
                tracing::error!(partition = p, %reason, "partition HALTED: the log no longer holds records this node has not applied");
                metrics::counter!("secretlog_reader_partition_halts_total").increment(1);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topic, *p);
                if let Err(e) = consumer.pause(&tpl) {
                    tracing::warn!(partition = p, error = %e, "could not pause halted partition");
                }
            }
            tx.send_modify(|p| {
                // Under read_committed the "high" watermark is the last stable offset.
                p.high = marks.iter().map(|(part, (_, hi))| (*part, *hi)).collect();
                p.halted.extend(trimmed);
                publish_halted(p);
                let consumed = p.consumed_all();
                let ends = p.high.clone();
                p.confirmations.answered(sent, &ends, &consumed);
            });
            let now = now_ms();
            let prog = tx.borrow();
            metrics::gauge!("secretlog_reader_lag_records").set(prog.lag_records() as f64);
            metrics::gauge!("secretlog_reader_lag_seconds").set(prog.lag_seconds(now));
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
        }
    }
}

/// Make the keyring follow the key terms the log created and retired.
fn adopt_key_terms(keyring: &Keyring, terms: &KeyTerms) {
    keyring.advance_to(terms.active());
    for t in terms.retired() {
        keyring.retire(t);
    }
    metrics::gauge!("secretlog_keyring_active_term").set(f64::from(keyring.active_term()));
}

/// Publish `secretlog_sealed_values{term}` (values each term seals on this node) and
/// `secretlog_rewrap_remaining` (values under terms older than the active one: what the rewrap
/// still has to move).
fn publish_term_counts(counts: &TermCounts, active: u32) {
    for (term, n) in counts {
        metrics::gauge!("secretlog_sealed_values", "term" => term.to_string()).set(*n as f64);
    }
    for term in 1..active {
        if !counts.contains_key(&term) {
            metrics::gauge!("secretlog_sealed_values", "term" => term.to_string()).set(0.0);
        }
    }
    let remaining: u64 = counts.iter().filter(|(t, _)| **t < active).map(|(_, n)| n).sum();
    metrics::gauge!("secretlog_rewrap_remaining").set(remaining as f64);
}

/// Publish `secretlog_reader_partitions_halted`: how many partitions are halted now. Unlike
/// `secretlog_reader_partition_halts_total` it stays up for as long as the halt lasts, and a
/// restarted node reports it again once it meets the record again.
fn publish_halted(prog: &Progress) {
    metrics::gauge!("secretlog_reader_partitions_halted").set(prog.halted.len() as f64);
}

/// Partitions whose unapplied records Kafka has already deleted (retention or DeleteRecords):
/// the log starts after this node's position, so applying on would skip events. They must halt,
/// with a reason that tells the operator what to do. A partition the consumer has read to its
/// end is exempt: nothing it has not seen can have been deleted.
fn trimmed_away(prog: &Progress, marks: &BTreeMap<i32, (i64, i64)>) -> Vec<(i32, String)> {
    marks
        .iter()
        .filter_map(|(p, (low, _))| {
            let applied = prog.applied.get(p).copied().unwrap_or(0);
            (applied < *low && !prog.at_end.contains(p) && !prog.halted.contains_key(p)).then(|| {
                (
                    *p,
                    format!(
                        "records {applied}..{low} were deleted from Kafka before this node applied them; \
                         start it from a snapshot (--object-store) or restore"
                    ),
                )
            })
        })
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(applied: &[(i32, i64)]) -> Progress {
        Progress { applied: applied.iter().copied().collect(), partitions: applied.len() as i32, ..Default::default() }
    }

    use secretlog_schemas::sealed::{SealContext, SealedValue};
    use secretlog_schemas::{Event, Rewrapped, RootKey, encode_event};

    /// Stage `ops` (partition 0) in one batch, commit it, and let the keyring follow.
    async fn stage_all(store: &Store, ring: &Keyring, ops: Vec<(&str, Operation)>, st: &mut PartitionState) {
        let mut staging = Staging::new(None);
        for (path, op) in ops {
            let mount = if op.is_control() { "" } else { "secret" };
            let e = Event {
                event_id: [1; 16],
                timestamp_ms: 1000,
                writer_epoch: 1,
                revision: None,
                mount: mount.into(),
                path: path.into(),
                op,
            };
            let offset = st.next_offset;
            staging.stage(store, ring, 0, offset, Some(&e.record_key()), &encode_event(ring, &e), st).await.unwrap();
            st.next_offset += 1;
        }
        if let Some(t) = &staging.key_terms_changed {
            adopt_key_terms(ring, t);
        }
        store.commit(staging.batch).await.unwrap();
    }

    fn seal(ring: &Keyring, version: u64) -> Vec<u8> {
        SealedValue::seal(ring, &SealContext { mount: "secret", path: "p", version }, b"{\"k\":1}").unwrap().encode()
    }

    /// A store of its own under `dir`, with a small memory cache and none on disk.
    async fn test_store(dir: &std::path::Path) -> Arc<Store> {
        let cfg =
            crate::store::StoreConfig { dir: dir.to_path_buf(), cache_memory_bytes: 1 << 20, cache_disk_bytes: 0 };
        Store::open(&cfg).await.unwrap()
    }

    /// Stage one event (partition 0) in its own batch and commit it: the refusal, if any.
    async fn stage_one(
        store: &Store,
        ring: &Keyring,
        st: &mut PartitionState,
        epoch: u64,
        revision: Option<u64>,
        op: Operation,
    ) -> Option<Refusal> {
        let mount = if op.is_control() { "" } else { "secret" };
        let e = Event {
            event_id: [2; 16],
            timestamp_ms: 1000,
            writer_epoch: epoch,
            revision,
            mount: mount.into(),
            path: "p".into(),
            op,
        };
        let mut staging = Staging::new(None);
        let offset = st.next_offset;
        let staged =
            staging.stage(store, ring, 0, offset, Some(&e.record_key()), &encode_event(ring, &e), st).await.unwrap();
        st.next_offset += 1;
        staging.batch.partitions.insert(0, *st);
        store.commit(staging.batch).await.unwrap();
        staged.refused
    }

    /// DESIGN.md, "Write path", rules 1–3: a record of an older epoch than one accepted in its
    /// partition, a record decided against another revision of its key, and a `Put` of a version
    /// that is not the next are refused — consumed, nothing changed — not a halt. A revision
    /// outlives a delete, so a record decided before the delete (or the same record sent again)
    /// never applies after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_epochs_wrong_revisions_and_version_gaps_are_refused_alike_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let ring = Keyring::from_root(&RootKey::from_bytes([6; 32]));
        let mut st = PartitionState::default();
        let put = |v| Operation::Put { version: v, sealed: seal(&ring, v) };
        let key = secretlog_schemas::topic::record_key("secret", "p");

        assert_eq!(stage_one(&store, &ring, &mut st, 5, Some(0), put(1)).await, None);
        assert_eq!(store.revision(&key).await.unwrap(), 1);
        // The same record sent again: decided against revision 0, the key is at 1.
        let again = stage_one(&store, &ring, &mut st, 5, Some(0), put(1)).await;
        assert!(matches!(again, Some(Refusal::Revision { expected: 0, current: 1 })), "{again:?}");
        // A newer epoch is accepted and raises the partition's; the older one is refused after it.
        assert_eq!(stage_one(&store, &ring, &mut st, 6, Some(1), put(2)).await, None);
        let stale = stage_one(&store, &ring, &mut st, 5, Some(2), put(3)).await;
        assert!(matches!(stale, Some(Refusal::StaleEpoch { epoch: 5, max_epoch: 6 })), "{stale:?}");
        // A version gap (an unconditional record of an older release) is a refusal, not a halt.
        let gap = stage_one(&store, &ring, &mut st, 6, None, put(9)).await;
        assert!(matches!(gap, Some(Refusal::Conflict(_))), "{gap:?}");
        assert_eq!(store.meta("secret", "p").await.unwrap().unwrap().current_version, 2, "nothing refused applied");
        assert_eq!(st.next_offset, 5, "every refused offset is consumed");

        // Deleted, the key keeps its revision: the first put, sent once more, stays refused.
        assert_eq!(stage_one(&store, &ring, &mut st, 6, Some(2), Operation::DeleteMetadata).await, None);
        assert!(store.meta("secret", "p").await.unwrap().is_none());
        assert_eq!(store.revision(&key).await.unwrap(), 3);
        let resurrect = stage_one(&store, &ring, &mut st, 6, Some(0), put(1)).await;
        assert!(matches!(resurrect, Some(Refusal::Revision { .. })), "{resurrect:?}");
        assert!(store.meta("secret", "p").await.unwrap().is_none(), "a deleted secret stays deleted");
        assert_eq!(stage_one(&store, &ring, &mut st, 6, Some(3), put(1)).await, None, "decided on the deletion");
        store.close().await.unwrap();
    }

    /// The per-term counts the materializer keeps with the state always equal a recount of the
    /// stored values — through puts, pruning, destroys, rewraps (won and lost), deletes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_term_counts_follow_every_value_change_and_match_a_recount() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let ring = Keyring::from_root(&RootKey::from_bytes([6; 32]));
        let mut st = PartitionState::default();
        let max3 = Operation::UpdateMetadata(secretlog_schemas::MetadataUpdate {
            max_versions: Some(3),
            ..Default::default()
        });
        let puts: Vec<_> = (1..=4).map(|v| ("p", Operation::Put { version: v, sealed: seal(&ring, v) })).collect();
        stage_all(&store, &ring, std::iter::once(("p", max3)).chain(puts).collect(), &mut st).await;
        // max_versions 3 pruned version 1: three values, all term 1.
        assert_eq!(store.sealed_per_term().await.unwrap(), TermCounts::from([(1, 3)]));

        stage_all(&store, &ring, vec![("keyring", Operation::AddKeyTerm { term: 2 })], &mut st).await;
        assert_eq!(ring.active_term(), 2, "the keyring follows the applied log");
        assert_eq!(store.key_terms().await.unwrap().active(), 2);
        let old3 = store.value("secret", "p", 3).await.unwrap().unwrap();
        let old4 = store.value("secret", "p", 4).await.unwrap().unwrap();
        let rw =
            |version, old: &[u8]| Rewrapped { version, replaces: Rewrapped::digest(old), sealed: seal(&ring, version) };
        let values = vec![
            rw(3, &old3),
            rw(4, b"not what is stored"), // lost its race: left alone
            rw(1, b"pruned long ago"),
        ];
        stage_all(&store, &ring, vec![("p", Operation::RewrapValues { values })], &mut st).await;
        assert_eq!(store.sealed_per_term().await.unwrap(), TermCounts::from([(1, 2), (2, 1)]));
        assert_eq!(store.value("secret", "p", 4).await.unwrap().unwrap(), old4);
        // A destroy and a rewrap of the destroyed version in one batch: the destroy wins.
        stage_all(
            &store,
            &ring,
            vec![
                ("p", Operation::DestroyVersions { versions: vec![4] }),
                ("p", Operation::RewrapValues { values: vec![rw(4, &old4)] }),
                ("p", Operation::Put { version: 5, sealed: seal(&ring, 5) }),
            ],
            &mut st,
        )
        .await;
        let counts = store.sealed_per_term().await.unwrap();
        assert_eq!(counts, store.count_per_term().await.unwrap(), "kept counts equal a recount");
        assert_eq!(counts, TermCounts::from([(2, 2)]), "v3 and v5 under term 2; v2 pruned, v4 destroyed");
        stage_all(&store, &ring, vec![("keyring", Operation::RetireKeyTerm { term: 1 })], &mut st).await;
        assert!(ring.is_retired(1));
        stage_all(&store, &ring, vec![("p", Operation::DeleteMetadata)], &mut st).await;
        assert_eq!(store.sealed_per_term().await.unwrap(), TermCounts::new());
        assert_eq!(store.count_per_term().await.unwrap(), TermCounts::new());
        store.close().await.unwrap();
    }

    #[test]
    fn a_log_trimmed_past_the_applied_position_halts_the_partition() {
        let prog = progress(&[(0, 0), (1, 40), (2, 7)]);
        let marks = BTreeMap::from([(0, (0, 10)), (1, (40, 90)), (2, (12, 30))]);
        let halted = trimmed_away(&prog, &marks);
        assert_eq!(halted.len(), 1, "{halted:?}");
        assert_eq!(halted[0].0, 2);
        assert!(halted[0].1.contains("records 7..12 were deleted"), "{}", halted[0].1);
    }

    #[test]
    fn an_empty_node_on_a_trimmed_log_halts_but_one_read_to_the_end_does_not() {
        let mut prog = progress(&[(0, 0), (1, 5)]);
        prog.at_end.insert(1);
        let marks = BTreeMap::from([(0, (3, 10)), (1, (6, 6))]);
        let halted: Vec<i32> = trimmed_away(&prog, &marks).into_iter().map(|(p, _)| p).collect();
        assert_eq!(halted, vec![0]);
        prog.halted.insert(0, "already".into());
        assert!(trimmed_away(&prog, &marks).is_empty(), "a halted partition is reported once");
    }
}
