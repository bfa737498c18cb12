//! Group commit: the single task that decides writes and appends them.
//!
//! Requests queue on a bounded channel. The committer takes everything queued (up to
//! `max_batch`, one command per secret), decides each against the current state, seals, and
//! appends all resulting events in **one** Kafka transaction. Only after the transaction committed
//! does any client get its answer, carrying the commit position (`X-Secretlog-Index`).
//!
//! The state used for decisions is the writer's own materialized copy of the log. A secret
//! written by the previous batch may not be applied yet; before deciding a command on such a
//! secret the committer waits for its materializer to reach that position — so validation
//! always sees every committed write, and writes to other secrets do not wait at all.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
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
use tokio_util::sync::CancellationToken;

use crate::error::WriterError;
use crate::plan::{Planned, Reply, plan};
use crate::producer::{Record, TxProducer};
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

/// Settings of the committer.
pub struct CommitterConfig {
    pub max_batch: usize,
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
        Committer { ctx, producer, cfg, inflight: HashMap::new(), fenced, planted }
    }

    /// Run until `cancel` fires or the channel closes. Requests still queued at shutdown are
    /// answered 503 (nothing of theirs was appended).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Pending>, cancel: CancellationToken) {
        let mut carry: VecDeque<Pending> = VecDeque::new();
        loop {
            if carry.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    p = rx.recv() => match p {
                        Some(p) => carry.push_back(p),
                        None => break,
                    },
                }
            }
            while carry.len() < self.cfg.max_batch {
                match rx.try_recv() {
                    Ok(p) => carry.push_back(p),
                    Err(_) => break,
                }
            }
            // One command per secret per transaction: a later command on the same secret is
            // decided in the next batch, against the state the earlier one produced.
            let mut batch = Vec::new();
            let mut keys = HashSet::new();
            let mut rest = VecDeque::new();
            for p in carry.drain(..) {
                if batch.len() < self.cfg.max_batch && keys.insert(p.cmd.path().to_string()) {
                    batch.push(p);
                } else {
                    rest.push_back(p);
                }
            }
            carry = rest;
            self.process(batch).await;
            if self.fenced.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::error!("fenced by a newer leader: no longer accepting writes");
                break;
            }
        }
        rx.close();
        while let Ok(p) = rx.try_recv() {
            let _ = p.reply.send(ApiError::unavailable("writer shutting down").into());
        }
        for p in carry {
            let _ = p.reply.send(ApiError::unavailable("writer shutting down").into());
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

    async fn process(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        if self.fenced.load(std::sync::atomic::Ordering::SeqCst) {
            for p in batch {
                let _ = p.reply.send(ApiError::from(WriterError::Fenced).into());
            }
            return;
        }
        let ts = now_ms();
        let data_only = batch.iter().all(|p| matches!(p.cmd, Command::Put { .. }));
        let mut records = Vec::new();
        let mut waiting = Vec::new();
        for p in batch {
            match self.decide(&p.cmd, ts).await {
                Ok(Some((record, reply, key))) => {
                    records.push(record);
                    waiting.push((p.reply, reply, key));
                }
                Ok(None) => {}
                Err(resp) => {
                    let _ = p.reply.send(resp);
                }
            }
        }
        if records.is_empty() {
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
        let started = Instant::now();
        let result = self.producer.commit(records, self.cfg.write_timeout).await;
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
                    self.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let api: ApiError = e.into();
                for (tx, _, _) in waiting {
                    let _ = tx.send(api.clone().into());
                }
            }
        }
    }
}

/// The success answer of a committed write.
fn answer(reply: Reply) -> ApiResponse {
    match reply {
        Reply::Version(v) => ApiResponse::data(&uuid::Uuid::new_v4().to_string(), v),
        Reply::NoContent => ApiResponse::no_content(),
        Reply::Json(v) => ApiResponse::json(200, &v),
    }
}
