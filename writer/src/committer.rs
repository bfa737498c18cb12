//! Group commit: the single task that decides writes and appends them.
//!
//! Requests queue on a bounded channel. The committer takes what is queued (up to `max_batch`,
//! one command per secret), decides each against the current state, seals, and appends all
//! resulting events in **one** Kafka transaction. Only after the transaction committed does any
//! client get its answer, carrying the commit position (`X-Secretlog-Index`).
//!
//! The state used for decisions is the writer's own materialized copy of the log: committed
//! writes only. A secret written by an earlier batch may not be applied yet; before deciding a
//! command on such a secret the committer waits for its materializer to reach that position — so
//! validation always sees every committed write, and writes to other secrets do not wait at all.
//!
//! **Pipelined** (opt-in). Up to `--max-transactions-in-flight` (default 1, at most
//! [`MAX_IN_FLIGHT`]) transactions are open at once, each on its own producer
//! of the ring (`crate::producer`), so a batch does not wait for the previous batch's commit
//! round. That is safe because batches in flight together never share a secret: a command on a
//! secret whose transaction is still open waits (in order, behind it) until that transaction
//! resolved, and is then decided on state that includes it if it committed. No decision
//! therefore depends on a write that might still abort, and records of one secret reach the log
//! in the order they were decided. Control events (policies, tokens, key terms) and the rotation
//! fence are *exclusive*: decided only when nothing is in flight, in a batch of their own, and
//! nothing queued behind them overtakes them.
//!
//! **Decided ahead.** While every transaction slot is taken, the next batch is decided as its
//! requests arrive (by the same rule: none of its secrets is in an open transaction, and its
//! secrets are held like an open transaction's) and waits, ready, for the first slot that frees
//! — deciding and sealing then overlap the open transaction's commit round instead of
//! following it. A ready batch is started only if nothing fenced this writer meanwhile;
//! otherwise it is answered like any batch of a fenced writer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::RngCore;
use secretlog_reader::api::kv::ReadContext;
use secretlog_reader::api::{ApiError, ApiResponse};
use secretlog_reader::materializer::now_ms;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::topic::{HEADER_INDEX, partition_for, record_key};
use secretlog_schemas::{ConsistencyToken, Event, Operation, encode_event};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::WriterError;
use crate::plan::{Planned, Reply, plan};
use crate::producer::{MAX_IN_FLIGHT, Record, TxProducer};
use crate::request::Command;

/// Set in tests only: `ack-before-commit` makes this writer answer every tenth transaction of
/// plain data writes as committed and then never commit it — the bug of a writer that
/// acknowledges before its commit and loses the commit. The fault-injection checker must report
/// the lost writes (tests/tests/it/checker). Never set it anywhere else.
const PLANTED_BUG_FOR_TESTS: &str = "SECRETLOG_TEST_PLANTED_BUG";

/// A queued write and where its answer goes.
pub struct Pending {
    pub cmd: Command,
    pub reply: oneshot::Sender<ApiResponse>,
}

/// A decided write waiting for its transaction: where its answer goes, the answer, its record key.
type Waiting = (oneshot::Sender<ApiResponse>, Reply, Vec<u8>);

/// A transaction that was in flight, back with its outcome.
struct Landed {
    waiting: Vec<Waiting>,
    /// The secrets (command paths) it held.
    paths: Vec<String>,
    records: usize,
    started: Instant,
    result: Result<Vec<(i32, i64)>, WriterError>,
}

/// A decided batch, not started yet: its records and where each answer goes.
struct Prepared {
    records: Vec<Record>,
    waiting: Vec<Waiting>,
    /// The secrets (command paths) it holds.
    paths: Vec<String>,
    /// Only plain data writes (the planted test bug applies to these only).
    data_only: bool,
}

impl Prepared {
    /// Add `more`, decided later on other secrets, to this batch.
    fn absorb(&mut self, more: Prepared) {
        self.records.extend(more.records);
        self.waiting.extend(more.waiting);
        self.paths.extend(more.paths);
        self.data_only &= more.data_only;
    }
}

impl Command {
    /// Decided only with nothing in flight, alone (see the module comment): control events and
    /// the rotation fence (a rewrap of nothing).
    fn is_exclusive(&self) -> bool {
        matches!(self, Command::Control { .. }) || matches!(self, Command::Rewrap { path, .. } if path.is_empty())
    }
}

/// Settings of the committer.
pub struct CommitterConfig {
    pub max_batch: usize,
    /// Transactions open at once, 1..=[`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    pub write_timeout: Duration,
    pub partitions: i32,
    pub epoch: u64,
}

/// The committer's state.
pub struct Committer {
    pub ctx: ReadContext,
    pub producer: TxProducer,
    pub cfg: CommitterConfig,
    /// Secrets appended but perhaps not yet applied locally: key → (partition, next offset).
    inflight: HashMap<Vec<u8>, (i32, i64)>,
    /// Secrets (command paths) of the transactions open right now, and of the batch decided
    /// ahead: no command on them is decided until their transaction resolved.
    open: HashSet<String>,
    /// Set once the producer was fenced; the node stops accepting writes.
    pub fenced: Arc<std::sync::atomic::AtomicBool>,
    /// Tests only ([`PLANTED_BUG_FOR_TESTS`]): data-write transactions decided so far, when set.
    planted: Option<u64>,
}

impl Committer {
    pub fn new(
        ctx: ReadContext,
        producer: TxProducer,
        cfg: CommitterConfig,
        fenced: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        let planted = match std::env::var(PLANTED_BUG_FOR_TESTS).ok().as_deref() {
            None | Some("") => None,
            Some("ack-before-commit") => {
                tracing::error!(
                    "{PLANTED_BUG_FOR_TESTS} set: this writer LOSES ACKNOWLEDGED WRITES on purpose (tests only)"
                );
                Some(0)
            }
            Some(other) => {
                tracing::error!(value = other, "unknown {PLANTED_BUG_FOR_TESTS} value ignored");
                None
            }
        };
        Committer { ctx, producer, cfg, inflight: HashMap::new(), open: HashSet::new(), fenced, planted }
    }

    /// Run until `cancel` fires or the channel closes. Transactions in flight then still land
    /// (their clients get the true outcome); requests still queued are answered 503 (nothing of
    /// theirs was appended).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Pending>, cancel: CancellationToken) {
        let mut carry: VecDeque<Pending> = VecDeque::new();
        let mut flights: JoinSet<Landed> = JoinSet::new();
        // The next batch, decided while every slot was taken (see "Decided ahead").
        let mut ready: Option<Prepared> = None;
        let mut closed = false;
        let slots = self.cfg.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        loop {
            while !closed && carry.len() < self.cfg.max_batch {
                match rx.try_recv() {
                    Ok(p) => carry.push_back(p),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                }
            }
            if flights.len() < slots {
                if let Some(prepared) = ready.take() {
                    self.start(prepared, &mut flights);
                    continue;
                }
                let batch = take_batch(&mut carry, &self.open, self.cfg.max_batch, flights.is_empty());
                if !batch.is_empty() {
                    if let Some(prepared) = self.prepare(batch).await {
                        self.start(prepared, &mut flights);
                    }
                    continue;
                }
            } else if !self.fenced.load(Ordering::SeqCst) {
                // Decide ahead, as requests arrive, up to a whole batch.
                let room = self.cfg.max_batch.saturating_sub(ready.as_ref().map_or(0, |r| r.waiting.len()));
                let batch = take_batch(&mut carry, &self.open, room, false);
                if !batch.is_empty() {
                    if let Some(more) = self.prepare(batch).await {
                        // Held like an open transaction's: no later command on them is decided
                        // before this batch resolved.
                        self.open.extend(more.paths.iter().cloned());
                        match ready.as_mut() {
                            Some(r) => r.absorb(more),
                            None => ready = Some(more),
                        }
                    }
                    continue;
                }
            }
            if self.fenced.load(Ordering::SeqCst)
                || (closed && carry.is_empty() && flights.is_empty() && ready.is_none())
            {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(landed) = flights.join_next(), if !flights.is_empty() => {
                    self.land(landed);
                    metrics::gauge!("secretlog_writer_transactions_in_flight").set(flights.len() as f64);
                }
                // At most a batch waits here: the rest stays in the bounded channel, so a full
                // queue still refuses writes (503) and the rewrap still waits for room.
                p = rx.recv(), if !closed && carry.len() < self.cfg.max_batch => match p {
                    Some(p) => carry.push_back(p),
                    None => closed = true,
                },
            }
        }
        while let Some(landed) = flights.join_next().await {
            self.land(landed);
        }
        // A ready batch left behind (cancelled or fenced) appended nothing: refused below.
        let unstarted = ready.map(|r| r.waiting).unwrap_or_default();
        if self.fenced.load(Ordering::SeqCst) {
            tracing::error!("fenced by a newer leader: no longer accepting writes");
        }
        rx.close();
        while let Ok(p) = rx.try_recv() {
            carry.push_back(p);
        }
        let refusal: ApiResponse = if self.fenced.load(Ordering::SeqCst) {
            ApiError::from(WriterError::Fenced).into()
        } else {
            ApiError::unavailable("writer shutting down").into()
        };
        for p in carry {
            let _ = p.reply.send(refusal.clone());
        }
        for (tx, _, _) in unstarted {
            let _ = tx.send(refusal.clone());
        }
    }

    /// Wait until the local state includes every earlier write to `key`.
    async fn wait_applied(&mut self, key: &[u8]) -> Result<(), WriterError> {
        let Some(&(p, off)) = self.inflight.get(key) else { return Ok(()) };
        let (ok, prog) = self
            .ctx
            .materializer
            .wait_for(self.cfg.write_timeout, |prog| {
                prog.applied.get(&p).is_some_and(|a| *a >= off) || prog.halted.contains_key(&p)
            })
            .await;
        if prog.halted.contains_key(&p) {
            return Err(WriterError::PartitionHalted { partition: p });
        }
        if !ok {
            return Err(WriterError::Timeout {
                what: "the writer's own state to apply the previous write",
                ms: self.cfg.write_timeout.as_millis() as u64,
            });
        }
        self.inflight.remove(key);
        Ok(())
    }

    async fn current_value(
        &self,
        path: &str,
        meta: Option<&secretlog_reader::state::SecretMeta>,
    ) -> Result<Option<Map<String, Value>>, ApiError> {
        let Some(m) = meta else { return Ok(None) };
        let Some(vm) = m.versions.get(&m.current_version) else { return Ok(None) };
        if !vm.is_live(now_ms()) {
            return Ok(None);
        }
        let Some(sealed) = self.ctx.store.value(&self.ctx.mount, path, m.current_version).await? else {
            return Ok(None);
        };
        let ctx = SealContext { mount: &self.ctx.mount, path, version: m.current_version };
        let plain = SealedValue::decode(&sealed).and_then(|s| s.open(&self.ctx.keyring, &ctx)).map_err(|e| {
            tracing::error!(path, error = %e, "current value does not open");
            ApiError::internal()
        })?;
        match serde_json::from_slice(&plain) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => Err(ApiError::internal()),
        }
    }

    /// Decide one command: the record to append and the reply to give after commit.
    async fn decide(&mut self, cmd: &Command, ts: i64) -> Result<Option<(Record, Reply, Vec<u8>)>, ApiResponse> {
        if let Command::Control { name, .. } = cmd {
            return self.decide_control(name, cmd, ts).await;
        }
        let mount = self.ctx.mount.clone();
        let path = cmd.path();
        let key = record_key(&mount, path);
        let partition = partition_for(&key, self.cfg.partitions);
        if self.ctx.materializer.progress.borrow().halted.contains_key(&partition) {
            return Err(ApiError::from(WriterError::PartitionHalted { partition }).into());
        }
        self.wait_applied(&key).await.map_err(|e| ApiResponse::from(ApiError::from(e)))?;
        let meta = self.ctx.store.meta(&mount, path).await.map_err(|e| ApiResponse::from(ApiError::from(e)))?;
        let current = match cmd {
            Command::Patch { .. } => self.current_value(path, meta.as_ref()).await.map_err(ApiResponse::from)?,
            _ => None,
        };
        match plan(cmd, meta.as_ref(), current, &self.ctx.keyring, &mount, ts).map_err(ApiResponse::from)? {
            Planned::Done { status } => Err(ApiResponse { status, headers: vec![], body: vec![] }),
            Planned::Append { op, reply } => {
                let event = self.event(path, op, ts);
                let payload = encode_event(&self.ctx.keyring, &event);
                Ok(Some((Record { key: key.clone(), payload, partition }, reply, key)))
            }
        }
    }

    /// A control event: keyed by the control object, ordered after earlier events on it.
    async fn decide_control(
        &mut self,
        name: &str,
        cmd: &Command,
        ts: i64,
    ) -> Result<Option<(Record, Reply, Vec<u8>)>, ApiResponse> {
        let key = secretlog_schemas::topic::control_key(name);
        let partition = partition_for(&key, self.cfg.partitions);
        if self.ctx.materializer.progress.borrow().halted.contains_key(&partition) {
            return Err(ApiError::from(WriterError::PartitionHalted { partition }).into());
        }
        self.wait_applied(&key).await.map_err(|e| ApiResponse::from(ApiError::from(e)))?;
        let Planned::Append { op, reply } =
            plan(cmd, None, None, &self.ctx.keyring, "", ts).map_err(ApiResponse::from)?
        else {
            return Ok(None);
        };
        let mut event = self.event(name, op, ts);
        event.mount = String::new();
        let payload = encode_event(&self.ctx.keyring, &event);
        Ok(Some((Record { key: key.clone(), payload, partition }, reply, key)))
    }

    fn event(&self, path: &str, op: Operation, ts: i64) -> Event {
        let mut event_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut event_id);
        Event {
            event_id,
            timestamp_ms: ts,
            writer_epoch: self.cfg.epoch,
            mount: self.ctx.mount.clone(),
            path: path.to_string(),
            op,
        }
    }

    /// Decide `batch`: the records to append and where each answer goes. Commands refused or
    /// needing no record are answered at once; `None` if nothing is left to append (or the
    /// writer is fenced: then every command is answered so).
    async fn prepare(&mut self, batch: Vec<Pending>) -> Option<Prepared> {
        if self.fenced.load(Ordering::SeqCst) {
            for p in batch {
                let _ = p.reply.send(ApiError::from(WriterError::Fenced).into());
            }
            return None;
        }
        let ts = now_ms();
        let data_only = batch.iter().all(|p| matches!(p.cmd, Command::Put { .. }));
        let mut records = Vec::new();
        let mut waiting = Vec::new();
        let mut paths = Vec::new();
        for p in batch {
            match self.decide(&p.cmd, ts).await {
                Ok(Some((record, reply, key))) => {
                    records.push(record);
                    waiting.push((p.reply, reply, key));
                    paths.push(p.cmd.path().to_string());
                }
                Ok(None) => {}
                Err(resp) => {
                    let _ = p.reply.send(resp);
                }
            }
        }
        (!records.is_empty()).then_some(Prepared { records, waiting, paths, data_only })
    }

    /// Start the transaction of a decided batch in `flights` — unless the writer was fenced since
    /// it was decided: then its commands are answered so and nothing is appended.
    fn start(&mut self, prepared: Prepared, flights: &mut JoinSet<Landed>) {
        let Prepared { records, waiting, paths, data_only } = prepared;
        if self.fenced.load(Ordering::SeqCst) {
            for (tx, _, _) in waiting {
                let _ = tx.send(ApiError::from(WriterError::Fenced).into());
            }
            return;
        }
        let n = records.len();
        if let Some(count) = self.planted.as_mut().filter(|_| data_only) {
            *count += 1;
            if *count % 10 == 0 {
                // TEST ONLY (PLANTED_BUG_FOR_TESTS): answer as committed, then drop the transaction.
                tracing::error!(records = n, "planted bug: transaction acknowledged and not committed");
                let applied = self.ctx.materializer.progress.borrow().applied.clone();
                for ((tx, reply, _), r) in waiting.into_iter().zip(&records) {
                    let at = applied.get(&r.partition).copied().unwrap_or(0);
                    let token = ConsistencyToken([(r.partition, at)].into_iter().collect()).to_string();
                    let _ = tx.send(answer(reply).with_header(HEADER_INDEX, token));
                }
                return;
            }
        }
        self.open.extend(paths.iter().cloned());
        let producer = self.producer.clone();
        let timeout = self.cfg.write_timeout;
        flights.spawn(async move {
            let started = Instant::now();
            let result = producer.commit(records, timeout).await;
            Landed { waiting, paths, records: n, started, result }
        });
        metrics::gauge!("secretlog_writer_transactions_in_flight").set(flights.len() as f64);
    }

    /// Answer the writes of a transaction that resolved, and release its secrets.
    fn land(&mut self, landed: Result<Landed, tokio::task::JoinError>) {
        let landed = match landed {
            Ok(l) => l,
            Err(e) => {
                // Its secrets stay held: the outcome of their transaction is unknown here, so
                // nothing more is decided on them — this writer steps down and the next leader's
                // fencing settles it.
                tracing::error!(error = %e, "a transaction task failed; stepping down");
                self.fenced.store(true, Ordering::SeqCst);
                return;
            }
        };
        let Landed { waiting, paths, records: n, started, result } = landed;
        metrics::histogram!("secretlog_writer_transaction_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("secretlog_writer_batch_size").record(n as f64);
        match result {
            Ok(positions) => {
                metrics::counter!("secretlog_writer_transactions_total", "outcome" => "committed").increment(1);
                for ((tx, reply, key), (p, off)) in waiting.into_iter().zip(positions) {
                    self.inflight.insert(key, (p, off + 1));
                    let token = ConsistencyToken([(p, off + 1)].into_iter().collect()).to_string();
                    let _ = tx.send(answer(reply).with_header(HEADER_INDEX, token));
                }
            }
            Err(e) => {
                metrics::counter!("secretlog_writer_transactions_total", "outcome" => "failed").increment(1);
                tracing::error!(error = %e, records = n, "transaction failed; every write in it is answered 503");
                if matches!(e, WriterError::Fenced) {
                    self.fenced.store(true, Ordering::SeqCst);
                }
                let api: ApiError = e.into();
                for (tx, _, _) in waiting {
                    let _ = tx.send(api.clone().into());
                }
            }
        }
        for p in &paths {
            self.open.remove(p);
        }
    }
}

/// The next batch from `carry`, in queue order: at most `max_batch` commands, one per
/// secret, none on a secret of an `open` transaction. Exclusive commands go only when
/// `nothing_open`, in a batch of exclusive commands only. A command left behind keeps its
/// place, and so does every later command on its secret and everything behind a held-back
/// exclusive command.
fn take_batch(
    carry: &mut VecDeque<Pending>,
    open: &HashSet<String>,
    max_batch: usize,
    nothing_open: bool,
) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut exclusive_batch = None;
    let mut seen = HashSet::new();
    let mut rest = VecDeque::with_capacity(carry.len());
    let mut blocked = false;
    for p in carry.drain(..) {
        let first_on_secret = seen.insert(p.cmd.path().to_string());
        let exclusive = p.cmd.is_exclusive();
        let fits = match exclusive_batch {
            None => !exclusive || nothing_open,
            Some(e) => e == exclusive,
        };
        if blocked || batch.len() >= max_batch || !fits {
            blocked |= exclusive || exclusive_batch == Some(true);
            rest.push_back(p);
        } else if first_on_secret && !open.contains(p.cmd.path()) {
            exclusive_batch = Some(exclusive);
            batch.push(p);
        } else {
            blocked |= exclusive;
            rest.push_back(p);
        }
    }
    *carry = rest;
    batch
}

/// The success answer of a committed write.
fn answer(reply: Reply) -> ApiResponse {
    match reply {
        Reply::Version(v) => ApiResponse::data(&uuid::Uuid::new_v4().to_string(), v),
        Reply::NoContent => ApiResponse::no_content(),
        Reply::Json(v) => ApiResponse::json(200, &v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &str) -> Pending {
        Pending { cmd: Command::Put { path: path.into(), data: Map::new(), cas: None }, reply: oneshot::channel().0 }
    }

    fn fence() -> Pending {
        Pending { cmd: Command::Rewrap { path: String::new(), values: vec![] }, reply: oneshot::channel().0 }
    }

    fn paths(v: &[Pending]) -> Vec<&str> {
        v.iter().map(|p| if p.cmd.is_exclusive() { "FENCE" } else { p.cmd.path() }).collect()
    }

    fn queue(v: Vec<Pending>) -> VecDeque<Pending> {
        v.into_iter().collect()
    }

    #[test]
    fn one_command_per_secret_and_none_on_an_open_secret_in_queue_order() {
        let open: HashSet<String> = ["b".to_string()].into();
        let mut carry = queue(vec![put("a"), put("b"), put("a"), put("c"), put("b")]);
        let batch = take_batch(&mut carry, &open, 10, false);
        assert_eq!(paths(&batch), ["a", "c"]);
        assert_eq!(paths(carry.make_contiguous()), ["b", "a", "b"]);
        let batch = take_batch(&mut carry, &HashSet::new(), 10, true);
        assert_eq!(paths(&batch), ["b", "a"]);
        assert_eq!(paths(carry.make_contiguous()), ["b"]);
    }

    #[test]
    fn the_batch_limit_leaves_the_rest_in_order() {
        let mut carry = queue(vec![put("a"), put("b"), put("c")]);
        assert_eq!(paths(&take_batch(&mut carry, &HashSet::new(), 2, true)), ["a", "b"]);
        assert_eq!(paths(carry.make_contiguous()), ["c"]);
    }

    #[test]
    fn an_exclusive_command_waits_for_nothing_open_goes_alone_and_holds_back_what_follows() {
        let mut carry = queue(vec![put("a"), fence(), put("b")]);
        // Something open: the writes before the fence go, the fence and everything behind it wait.
        assert_eq!(paths(&take_batch(&mut carry, &HashSet::new(), 10, false)), ["a"]);
        assert_eq!(paths(&take_batch(&mut carry, &HashSet::new(), 10, false)), Vec::<&str>::new());
        assert_eq!(paths(carry.make_contiguous()), ["FENCE", "b"]);
        // Nothing open: the fence goes, in a batch without writes.
        assert_eq!(paths(&take_batch(&mut carry, &HashSet::new(), 10, true)), ["FENCE"]);
        assert_eq!(paths(&take_batch(&mut carry, &HashSet::new(), 10, false)), ["b"]);
        assert!(carry.is_empty());
    }

    #[test]
    fn a_write_batch_stops_at_the_first_exclusive_command() {
        let mut carry = queue(vec![put("a"), fence(), put("b")]);
        assert_eq!(paths(&take_batch(&mut carry, &HashSet::new(), 10, true)), ["a"]);
        assert_eq!(paths(carry.make_contiguous()), ["FENCE", "b"]);
    }
}
