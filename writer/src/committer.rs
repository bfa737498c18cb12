//! Group commit: the single task that decides writes and appends them.
//!
//! Requests queue on a bounded channel. The committer takes what is queued (up to `max_batch`,
//! one command per secret), decides each against the current state, seals, and appends the batch
//! through the idempotent producer (`crate::producer::LogProducer`): one replicated produce, no
//! transaction. **A write is acknowledged when it is applied** (DESIGN.md, "Write path"): each
//! record is registered with the writer's own materializer by event id before it is sent, and its
//! client is answered only with the materializer's verdict — *accepted* (applied, visible to reads
//! on this node; the answer carries its position as `X-Secretlog-Index`), *refused* (consumed
//! without effect by every node: a retryable 503), or, when neither can be known, 503 "outcome
//! unknown" — never a guess.
//!
//! **One unresolved record per secret.** A command on a secret whose record is not resolved yet
//! waits, in order, behind it, and is then decided on state that includes it if it was accepted.
//! A secret is a path in a mount's storage id ([`Pending::mount`]): the same path in two mounts
//! is two secrets.
//! No decision therefore depends on a write that might still be refused, and records of one
//! secret reach the log in the order they were decided; every `Put` is conditional on the version
//! it was decided against, so a record that lands out of turn is refused everywhere alike. Up to
//! `--max-batches-in-flight` batches are in flight at once, on disjoint secrets. Control events
//! (policies, tokens, key terms, mounts) and the rotation fence are *exclusive*: decided only when
//! nothing is in flight, in a batch of their own, and nothing queued behind them overtakes them. A
//! mount change is decided on the mount table this writer applied (`crate::mounts::decide`), and a
//! secret command on the mount table too: the storage id it was parsed for must still be mounted.
//!
//! **Barriers.** A failed delivery report says nothing of its record: librdkafka may still deliver
//! it. The committer then stops deciding, lets the batches in flight resolve, and writes a
//! barrier — a leader-epoch record with the barrier sequence bumped — into every partition. Once
//! the barrier is applied, a record still without a verdict can never be accepted (a record of
//! the older sequence after the barrier is refused by the epoch rule), so it is answered refused;
//! one accepted before it, accepted. A barrier that cannot be written ends the term: pending
//! writes are answered "outcome unknown" and the node claims leadership anew.
//!
//! **Deposed.** A newer leader's epoch record, applied by this node's materializer, stops the
//! committer at once: every record it still sends is refused by every node, and it answers its
//! clients from their verdicts.
//!
//! **Decided ahead.** While every slot is taken, the next batch is decided as its requests
//! arrive (by the same rule: none of its secrets has an unresolved record, and its secrets are
//! held like an in-flight batch's) and waits, ready, for the first slot that frees — deciding and
//! sealing then overlap the produce round instead of following it. A ready batch is started only
//! if nothing deposed this writer meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::RngCore;
use secretlog_node::api::response::Envelope;
use secretlog_node::api::{ApiError, ApiResponse};
use secretlog_node::context::ReadContext;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::topic::{HEADER_INDEX, partition_for, record_key};
use secretlog_schemas::{ConsistencyToken, Event, Operation, encode_event};
use secretlog_state::materializer::now_ms;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use secretlog_state::materializer::Verdict;

use crate::error::WriterError;
use crate::plan::{Planned, Reply, plan};
use crate::producer::{LogProducer, Record};
use crate::request::Command;
use secretlog_schemas::mount::KvConfig;

/// Most batches in flight at once (`--max-batches-in-flight`).
pub const MAX_IN_FLIGHT: usize = 64;

/// Set in tests only, never anywhere else; the fault-injection checker (tests/tests/it/checker)
/// must catch each:
/// * `ack-before-commit`: every tenth batch of plain data writes is answered as written and never
///   sent — a writer that acknowledges and loses the write;
/// * `ack-before-apply`: writes are answered once delivered, before the materializer applied them
///   — a client that writes and reads back may see the previous version.
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
const PLANTED_BUG_FOR_TESTS: &str = "SECRETLOG_TEST_PLANTED_BUG";

/// Set in tests only, never anywhere else: `N` makes the committer send again, once, the exact
/// bytes of the first record of every `N`th accepted batch (while fewer than [`RESEND_PENDING`]
/// copies wait), from the flight of the first later batch holding a record of the same key, once
/// that batch landed — a
/// record re-sent after its key changed, as librdkafka may re-send one after a message timeout.
/// Every node must refuse it by its per-key revision (DESIGN.md, write path, rule 3); the
/// fault-injection checker (tests/tests/it/checker) runs with it, and with the revision check
/// planted away must see an acknowledged write undone.
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
const RESEND_FOR_TESTS: &str = "SECRETLOG_TEST_RESEND";

/// Set in tests only, never anywhere else: `N` makes the committer hold back every `N`th batch of
/// plain data writes instead of sending it, treat its delivery as failed, and send its exact
/// bytes once the barrier that resolved it is written — a produce delayed past the barrier (a
/// request stuck behind a slow broker, a retry after a timeout; Jepsen's analysis of Kafka's
/// transaction protocol saw delayed produces land in a later transaction). The barrier answers
/// its writes "write refused", so every node must refuse the late records by the epoch rule
/// (DESIGN.md, write path); with that check planted away (`skip-epoch-check`) the checker sees a
/// refused write's value in the log.
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
const LATE_DELIVERY_FOR_TESTS: &str = "SECRETLOG_TEST_LATE_DELIVERY";

/// The test hooks the environment asks for ([`PLANTED_BUG_FOR_TESTS`], [`RESEND_FOR_TESTS`],
/// [`LATE_DELIVERY_FOR_TESTS`]), in builds with the `planted-faults` feature, which only the
/// end-to-end tests turn on.
#[cfg(feature = "planted-faults")]
fn planted_faults() -> TestHooks {
    let planted = match std::env::var(PLANTED_BUG_FOR_TESTS).ok().as_deref() {
        Some("ack-before-commit") => {
            tracing::error!(
                "{PLANTED_BUG_FOR_TESTS} set: this writer LOSES ACKNOWLEDGED WRITES on purpose (tests only)"
            );
            Some(Planted::AckBeforeCommit(0))
        }
        Some("ack-before-apply") => {
            tracing::error!(
                "{PLANTED_BUG_FOR_TESTS} set: this writer ACKNOWLEDGES BEFORE APPLYING on purpose (tests only)"
            );
            Some(Planted::AckBeforeApply)
        }
        _ => None,
    };
    let resend = std::env::var(RESEND_FOR_TESTS).ok().and_then(|n| n.parse().ok()).filter(|n| *n > 0).map(|every| {
        tracing::error!("{RESEND_FOR_TESTS}={every}: this writer SENDS RECORDS TWICE on purpose (tests only)");
        Resend { every, accepted: 0, pending: Vec::new() }
    });
    let late =
        std::env::var(LATE_DELIVERY_FOR_TESTS).ok().and_then(|n| n.parse().ok()).filter(|n| *n > 0).map(|every| {
            tracing::error!(
                "{LATE_DELIVERY_FOR_TESTS}={every}: this writer SENDS RECORDS AFTER THEIR BARRIER on purpose (tests only)"
            );
            Late { every, batches: 0, held: Vec::new() }
        });
    TestHooks { planted, resend, late }
}

/// Release builds: no test hook, and no environment variable read.
#[cfg(not(feature = "planted-faults"))]
fn planted_faults() -> TestHooks {
    TestHooks::default()
}

/// The test hooks that are on (all off outside the end-to-end tests).
#[derive(Default)]
struct TestHooks {
    planted: Option<Planted>,
    resend: Option<Resend>,
    late: Option<Late>,
}

/// The state of the late-delivery test hook ([`LATE_DELIVERY_FOR_TESTS`]).
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
struct Late {
    every: u64,
    /// Batches of plain data writes started so far.
    batches: u64,
    /// Records held back, sent once the barrier that resolves them is written.
    held: Vec<Record>,
}

/// The state of the re-send test hook ([`RESEND_FOR_TESTS`]).
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
struct Resend {
    every: u64,
    /// Batches accepted so far (their first record accepted).
    accepted: u64,
    /// The copies waiting for a later batch on their key.
    pending: Vec<Record>,
}

/// Copies the re-send hook keeps at most ([`RESEND_FOR_TESTS`]).
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
const RESEND_PENDING: usize = 16;

/// Which planted bug is on.
#[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planted {
    /// `ack-before-commit`; counts the data-write batches decided so far.
    AckBeforeCommit(u64),
    AckBeforeApply,
}

/// A queued write and where its answer goes.
pub struct Pending {
    /// The storage id of the mount a secret command acts in (see `secretlog_schemas::mount`);
    /// empty for control commands.
    pub mount: String,
    pub cmd: Command,
    pub reply: oneshot::Sender<ApiResponse>,
    /// The id of the request it answers (its audit entries carry it), for the answer's
    /// `request_id`; empty for the writer's own commands.
    pub request_id: String,
}

impl Pending {
    /// What this command holds while unresolved: its secret (mount and path), or its control
    /// object.
    fn key(&self) -> String {
        open_key(&self.mount, self.cmd.path())
    }
}

/// The key of a secret (or control object) in the committer's open set: the same path in two
/// mounts is two secrets.
fn open_key(mount: &str, path: &str) -> String {
    format!("{mount}\0{path}")
}

/// A decided write waiting for its verdict: where its answer goes, the answer (already bound to
/// its request's id, [`for_request`]), its record key.
type Waiting = (oneshot::Sender<ApiResponse>, Answer, Vec<u8>);

/// The body of a write's success answer, bound to its request: a version's metadata is wrapped
/// in the envelope carrying the request's id ([`for_request`]), so no answer can leave with an id
/// other than the one its audit entries record.
#[derive(Debug)]
enum Answer {
    NoContent,
    Json(Value),
}

/// A decided command: its record, the record's event id, the answer to give once it is
/// accepted, its record key.
type Decided = (Record, [u8; 16], Reply, Vec<u8>);

/// What became of one record of a batch.
enum Outcome {
    /// Applied at this offset of this partition.
    Accepted(i32, i64),
    /// Consumed without effect everywhere.
    Refused(String),
    /// Delivered at this position, but no verdict within the write timeout (the materializer is
    /// behind or its partition halted): the record may still be applied.
    Unknown { at: (i32, i64), why: String },
    /// Its delivery failed: it may or may not be in the log. Resolved by a barrier.
    Undelivered { event_id: [u8; 16], verdict: oneshot::Receiver<Verdict>, why: String },
}

/// A batch that was in flight, back with the outcome of each record.
struct Landed {
    waiting: Vec<Waiting>,
    /// The secrets (command paths) it held.
    paths: Vec<String>,
    started: Instant,
    outcomes: Vec<Outcome>,
    /// Tests only ([`RESEND_FOR_TESTS`]): a copy of the batch's first record.
    first: Option<Record>,
}

/// A write whose record's delivery failed, waiting for the next barrier.
struct Unresolved {
    waiting: Waiting,
    path: String,
    event_id: [u8; 16],
    verdict: oneshot::Receiver<Verdict>,
}

/// A decided batch, not started yet: its records (with their event ids) and where each answer
/// goes.
struct Prepared {
    records: Vec<(Record, [u8; 16])>,
    waiting: Vec<Waiting>,
    /// The commands (with their mounts and request ids), to decide again if a barrier comes
    /// before the batch is sent.
    cmds: Vec<(String, Command, String)>,
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
        self.cmds.extend(more.cmds);
        self.paths.extend(more.paths);
        self.data_only &= more.data_only;
    }
}

impl Command {
    /// Decided only with nothing in flight, alone (see the module comment): control events and
    /// the rotation fence (a rewrap of nothing).
    fn is_exclusive(&self) -> bool {
        matches!(self, Command::Control { .. } | Command::Mount { .. } | Command::AuditDevice { .. })
            || matches!(self, Command::Rewrap { path, .. } if path.is_empty())
    }
}

/// Settings of the committer.
pub struct CommitterConfig {
    pub max_batch: usize,
    /// Batches in flight at once, 1..=[`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    pub write_timeout: Duration,
    pub partitions: i32,
    /// This leader's epoch (`crate::epoch`), barrier sequence 0.
    pub epoch: u64,
    /// The URL the leader-epoch records (and so barriers) announce.
    pub leader_url: String,
}

/// Why the committer stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Cancelled, or its queue closed.
    Shutdown,
    /// A newer leader's epoch was applied: this node no longer leads.
    Deposed,
    /// A barrier could not be written, or the producer failed: this node must claim anew.
    Reclaim(String),
}

/// The committer's state.
pub struct Committer {
    pub ctx: ReadContext,
    pub producer: LogProducer,
    pub cfg: CommitterConfig,
    /// The epoch records carry now: `cfg.epoch` plus the barriers written since.
    epoch: u64,
    /// Secrets whose outcome was unknown, with the position their record was delivered at: a
    /// command on one is decided only once the local state has passed it.
    inflight: HashMap<Vec<u8>, (i32, i64)>,
    /// Secrets (command paths) with an unresolved record (in flight, decided ahead, or waiting
    /// for a barrier): no command on them is decided until it resolved.
    open: HashSet<String>,
    /// Writes whose delivery failed, resolved by the next barrier.
    unresolved: Vec<Unresolved>,
    /// Set once this writer is deposed; the node stops accepting writes.
    pub fenced: Arc<std::sync::atomic::AtomicBool>,
    /// Tests only ([`PLANTED_BUG_FOR_TESTS`]).
    planted: Option<Planted>,
    /// Tests only ([`RESEND_FOR_TESTS`]).
    resend: Option<Resend>,
    /// Tests only ([`LATE_DELIVERY_FOR_TESTS`]).
    late: Option<Late>,
}

impl Committer {
    pub fn new(
        ctx: ReadContext,
        producer: LogProducer,
        cfg: CommitterConfig,
        fenced: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        let TestHooks { planted, resend, late } = planted_faults();
        let epoch = cfg.epoch;
        Committer {
            ctx,
            producer,
            cfg,
            epoch,
            inflight: HashMap::new(),
            open: HashSet::new(),
            unresolved: Vec::new(),
            fenced,
            planted,
            resend,
            late,
        }
    }

    /// Whether a newer leader's epoch has been applied here.
    fn deposed(&self) -> bool {
        let newer = self
            .ctx
            .materializer
            .progress
            .borrow()
            .leader
            .as_ref()
            .is_some_and(|l| crate::epoch::is_later_leader(self.epoch, l.epoch));
        if newer && !self.fenced.swap(true, Ordering::SeqCst) {
            tracing::error!(epoch = self.epoch, "a newer leader's epoch is in the log: deposed, deciding nothing more");
        }
        newer || self.fenced.load(Ordering::SeqCst)
    }

    /// Run until `cancel` fires, the channel closes, this writer is deposed or it must claim
    /// leadership anew. Batches in flight then still resolve (their clients get the true
    /// outcome); requests still queued are answered 503 (nothing of theirs was appended).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Pending>, cancel: CancellationToken) -> Stopped {
        let mut carry: VecDeque<Pending> = VecDeque::new();
        let mut flights: JoinSet<Landed> = JoinSet::new();
        // The next batch, decided while every slot was taken (see "Decided ahead").
        let mut ready: Option<Prepared> = None;
        let mut closed = false;
        let mut stopped = Stopped::Shutdown;
        let slots = self.cfg.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        let mut progress = self.ctx.materializer.progress.clone();
        loop {
            if self.deposed() {
                stopped = Stopped::Deposed;
                break;
            }
            if let Some(why) = self.producer.fatal_error() {
                tracing::error!(error = %why, "the producer failed fatally; claiming leadership anew");
                stopped = Stopped::Reclaim(format!("producer failed: {why}"));
                break;
            }
            // A delivery failed: nothing more is started until a barrier resolved it.
            if !self.unresolved.is_empty() {
                if !flights.is_empty() {
                    if let Some(landed) = flights.join_next().await {
                        self.land(landed);
                    }
                    continue;
                }
                // A batch decided ahead carries the epoch the barrier supersedes: decided again
                // after it, in its place at the front of the queue.
                if let Some(r) = ready.take() {
                    for p in &r.paths {
                        self.open.remove(p);
                    }
                    for ((mount, cmd, request_id), (reply, _, _)) in r.cmds.into_iter().zip(r.waiting).rev() {
                        carry.push_front(Pending { mount, cmd, reply, request_id });
                    }
                }
                if let Err(why) = self.barrier(&cancel).await {
                    stopped = Stopped::Reclaim(why);
                    break;
                }
                self.send_held_back().await;
                continue;
            }
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
            } else {
                // Decide ahead, as requests arrive, up to a whole batch.
                let room = self.cfg.max_batch.saturating_sub(ready.as_ref().map_or(0, |r| r.waiting.len()));
                let batch = take_batch(&mut carry, &self.open, room, false);
                if !batch.is_empty() {
                    if let Some(more) = self.prepare(batch).await {
                        // Held like an in-flight batch's: no later command on them is decided
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
            if closed && carry.is_empty() && flights.is_empty() && ready.is_none() {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(landed) = flights.join_next(), if !flights.is_empty() => {
                    self.land(landed);
                    metrics::gauge!("secretlog_writer_batches_in_flight").set(flights.len() as f64);
                }
                // At most a batch waits here: the rest stays in the bounded channel, so a full
                // queue still refuses writes (503) and the rewrap still waits for room.
                p = rx.recv(), if !closed && carry.len() < self.cfg.max_batch => match p {
                    Some(p) => carry.push_back(p),
                    None => closed = true,
                },
                // A newer leader's epoch may arrive while nothing else happens.
                r = progress.changed() => if r.is_err() {
                    stopped = Stopped::Reclaim("the writer's materializer stopped".into());
                    break;
                },
            }
        }
        while let Some(landed) = flights.join_next().await {
            self.land(landed);
        }
        // Writes whose delivery failed and that no barrier resolved: their records may still
        // land — or, once a newer epoch is in every partition, never. Answered from what is known.
        for u in std::mem::take(&mut self.unresolved) {
            let resp = match self.verdict_now(u.verdict, &u.event_id) {
                Some(Verdict::Accepted { partition, offset }) => accepted(u.waiting.1, partition, offset),
                _ => outcome_unknown("its delivery failed and the writer stopped leading before it was resolved"),
            };
            let _ = u.waiting.0.send(resp);
        }
        // A ready batch left behind appended nothing: refused below.
        let unstarted = ready.map(|r| r.waiting).unwrap_or_default();
        rx.close();
        while let Ok(p) = rx.try_recv() {
            carry.push_back(p);
        }
        let refusal: ApiResponse = match &stopped {
            Stopped::Deposed => ApiError::from(WriterError::Fenced).into(),
            Stopped::Reclaim(why) => ApiError::unavailable(format!("writer re-taking leadership: {why}")).into(),
            Stopped::Shutdown => ApiError::unavailable("writer shutting down").into(),
        };
        for p in carry {
            let _ = p.reply.send(refusal.clone());
        }
        for (tx, _, _) in unstarted {
            let _ = tx.send(refusal.clone());
        }
        stopped
    }

    /// The verdict already decided for a record, if any; stops waiting for it otherwise.
    fn verdict_now(&self, mut rx: oneshot::Receiver<Verdict>, event_id: &[u8; 16]) -> Option<Verdict> {
        match rx.try_recv() {
            Ok(v) => Some(v),
            Err(_) => {
                self.ctx.materializer.verdicts.forget(event_id);
                None
            }
        }
    }

    /// Write a barrier into every partition (DESIGN.md, rule 4) and answer every write whose
    /// delivery failed: accepted if its record was applied before the barrier of its partition,
    /// refused otherwise (a record of the older sequence is refused after the barrier). Err: no
    /// barrier could be written within the write timeout; the writes stay unresolved.
    async fn barrier(&mut self, cancel: &CancellationToken) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.write_timeout;
        let mut last = String::new();
        while Instant::now() < deadline && !cancel.is_cancelled() {
            let Some(next) = crate::epoch::next_barrier(self.epoch) else {
                return Err("barrier sequence used up".into());
            };
            self.epoch = next;
            metrics::counter!("secretlog_writer_barriers_total").increment(1);
            tracing::warn!(epoch = next, pending = self.unresolved.len(), "a delivery failed: writing a barrier");
            let records = epoch_records(&self.ctx.keyring, self.cfg.partitions, &self.cfg.leader_url, next);
            let outcomes = send_and_await(&self.producer, &self.ctx, records, self.cfg.write_timeout).await;
            let mut all_accepted = true;
            for o in outcomes {
                match o {
                    Outcome::Accepted(..) => {}
                    Outcome::Refused(why) | Outcome::Unknown { why, .. } | Outcome::Undelivered { why, .. } => {
                        all_accepted = false;
                        last = why;
                    }
                }
            }
            if self.deposed() {
                return Err("deposed while writing a barrier".into());
            }
            if all_accepted {
                for u in std::mem::take(&mut self.unresolved) {
                    let resp = match self.verdict_now(u.verdict, &u.event_id) {
                        Some(Verdict::Accepted { partition, offset }) => accepted(u.waiting.1, partition, offset),
                        Some(Verdict::Halted { reason, .. }) => outcome_unknown(&reason),
                        _ => refused("its delivery failed and a barrier showed it was not applied"),
                    };
                    self.open.remove(&u.path);
                    let _ = u.waiting.0.send(resp);
                }
                return Ok(());
            }
            tracing::warn!(error = %last, "barrier not written yet; retrying");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("no barrier could be written: {last}"))
    }

    /// Tests only ([`LATE_DELIVERY_FOR_TESTS`]): send the records held back, now that a barrier
    /// resolved their writes, before anything else is decided. No verdict is awaited: every node
    /// must refuse them by their epoch.
    async fn send_held_back(&mut self) {
        let Some(late) = self.late.as_mut().filter(|l| !l.held.is_empty()) else { return };
        let held = std::mem::take(&mut late.held);
        let at = self.producer.send(&held, self.cfg.write_timeout).await;
        tracing::warn!(?at, "test hook ({LATE_DELIVERY_FOR_TESTS}): records sent after their barrier");
    }

    /// Wait until the local state includes every earlier write to `key`.
    async fn wait_applied(&mut self, key: &[u8]) -> Result<(), WriterError> {
        let Some(&(p, off)) = self.inflight.get(key) else { return Ok(()) };
        let ok = self
            .ctx
            .materializer
            .wait_for(self.cfg.write_timeout, |prog| {
                prog.applied.get(&p).is_some_and(|a| *a >= off) || prog.halted.contains_key(&p)
            })
            .await;
        if self.ctx.materializer.progress.borrow().halted.contains_key(&p) {
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
        mount: &str,
        path: &str,
        meta: Option<&secretlog_schemas::metadata::SecretMeta>,
    ) -> Result<Option<Map<String, Value>>, ApiError> {
        let Some(m) = meta else { return Ok(None) };
        let Some(vm) = m.versions.get(&m.current_version) else { return Ok(None) };
        if !vm.is_live(now_ms()) {
            return Ok(None);
        }
        let Some(sealed) = self.ctx.store.value(mount, path, m.current_version).await? else {
            return Ok(None);
        };
        let ctx = SealContext { mount, path, version: m.current_version };
        let plain = SealedValue::decode(&sealed).and_then(|s| s.open(&self.ctx.keyring, &ctx)).map_err(|e| {
            tracing::error!(path, error = %e, "current value does not open");
            ApiError::internal()
        })?;
        match serde_json::from_slice(&plain) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => Err(ApiError::internal()),
        }
    }

    /// The KV settings of the live mount whose storage id is `mount`; 404 if none is live any
    /// more (disabled after the request was parsed). Rewraps and restores act on stored values
    /// whatever is mounted, with no mount defaults.
    fn mount_defaults(&self, mount: &str, cmd: &Command) -> Result<KvConfig, ApiResponse> {
        if matches!(cmd, Command::Rewrap { .. } | Command::Restore { .. }) {
            return Ok(KvConfig::default());
        }
        let mounts = self.ctx.mounts();
        let live = mounts.live(&self.ctx.default_mount);
        match live.values().find(|r| r.storage == mount) {
            Some(r) => Ok(r.kv.clone()),
            None => Err(ApiError::new(
                secretlog_state::ErrorKind::NotFound,
                "the mount of this path was disabled before the write was decided",
            )
            .into()),
        }
    }

    /// Decide one command: the record to append and the reply to give after commit.
    async fn decide(&mut self, mount: &str, cmd: &Command, ts: i64) -> Result<Option<Decided>, ApiResponse> {
        match cmd {
            Command::Control { name, op, body } => {
                let reply = body.clone().map_or(Reply::NoContent, Reply::Json);
                return self.decide_control(name, op.clone(), reply, ts).await;
            }
            Command::Mount { path, change } => {
                // Decided on the table this writer applied: with nothing in flight (a mount change
                // is exclusive), every earlier mount change is in it.
                let mounts = self.ctx.mounts();
                let op =
                    crate::mounts::decide(&mounts, &self.ctx.default_mount, path, change).map_err(ApiResponse::from)?;
                let Some(op) = op else { return Err(ApiResponse::no_content()) };
                return self.decide_control(crate::mounts::CONTROL_NAME, op, Reply::NoContent, ts).await;
            }
            Command::AuditDevice { path, change } => {
                // Decided on the table this writer applied, like a mount change (exclusive too).
                let devices = self.ctx.audit_devices();
                let op = crate::audit_devices::decide(&devices, path, change).map_err(ApiResponse::from)?;
                let Some(op) = op else { return Err(ApiResponse::no_content()) };
                return self.decide_control(crate::audit_devices::CONTROL_NAME, op, Reply::NoContent, ts).await;
            }
            _ => {}
        }
        let defaults = self.mount_defaults(mount, cmd)?;
        let mount = mount.to_string();
        let path = cmd.path();
        let key = record_key(&mount, path);
        let partition = partition_for(&key, self.cfg.partitions);
        if self.ctx.materializer.progress.borrow().halted.contains_key(&partition) {
            return Err(ApiError::from(WriterError::PartitionHalted { partition }).into());
        }
        self.wait_applied(&key).await.map_err(|e| ApiResponse::from(ApiError::from(e)))?;
        let meta = self.ctx.store.meta(&mount, path).await.map_err(|e| ApiResponse::from(ApiError::from(e)))?;
        let current = match cmd {
            Command::Patch { .. } => {
                self.current_value(&mount, path, meta.as_ref()).await.map_err(ApiResponse::from)?
            }
            _ => None,
        };
        match plan(cmd, meta.as_ref(), current, &self.ctx.keyring, &mount, &defaults, ts).map_err(ApiResponse::from)? {
            Planned::Done { status } => Err(ApiResponse { status, headers: vec![], body: vec![] }),
            Planned::Append { op, reply } => {
                let mut event = self.event(&mount, path, op, ts);
                event.revision = Some(self.revision(&key).await?);
                let payload = encode_event(&self.ctx.keyring, &event);
                Ok(Some((Record { key: key.clone(), payload, partition }, event.event_id, reply, key)))
            }
        }
    }

    /// A control event: keyed by the control object, ordered after earlier events on it.
    async fn decide_control(
        &mut self,
        name: &str,
        op: Operation,
        reply: Reply,
        ts: i64,
    ) -> Result<Option<Decided>, ApiResponse> {
        let key = secretlog_schemas::topic::control_key(name);
        let partition = partition_for(&key, self.cfg.partitions);
        if self.ctx.materializer.progress.borrow().halted.contains_key(&partition) {
            return Err(ApiError::from(WriterError::PartitionHalted { partition }).into());
        }
        self.wait_applied(&key).await.map_err(|e| ApiResponse::from(ApiError::from(e)))?;
        let mut event = self.event("", name, op, ts);
        event.revision = Some(self.revision(&key).await?);
        let payload = encode_event(&self.ctx.keyring, &event);
        Ok(Some((Record { key: key.clone(), payload, partition }, event.event_id, reply, key)))
    }

    /// The revision of `key` on the applied state: what its next record is conditional on.
    async fn revision(&self, key: &[u8]) -> Result<u64, ApiResponse> {
        self.ctx.store.revision(key).await.map_err(|e| ApiResponse::from(ApiError::from(e)))
    }

    fn event(&self, mount: &str, path: &str, op: Operation, ts: i64) -> Event {
        let mut event_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut event_id);
        Event {
            event_id,
            timestamp_ms: ts,
            writer_epoch: self.epoch,
            revision: None,
            mount: mount.to_string(),
            path: path.to_string(),
            op,
        }
    }

    /// Decide `batch`: the records to append and where each answer goes. Commands refused or
    /// needing no record are answered at once; `None` if nothing is left to append (or the
    /// writer is fenced: then every command is answered so).
    async fn prepare(&mut self, batch: Vec<Pending>) -> Option<Prepared> {
        if self.deposed() {
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
        let mut cmds = Vec::new();
        for p in batch {
            match self.decide(&p.mount, &p.cmd, ts).await {
                Ok(Some((record, event_id, reply, key))) => {
                    records.push((record, event_id));
                    paths.push(p.key());
                    waiting.push((p.reply, for_request(reply, &p.request_id), key));
                    cmds.push((p.mount, p.cmd, p.request_id));
                }
                Ok(None) => {}
                Err(resp) => {
                    let _ = p.reply.send(resp);
                }
            }
        }
        (!records.is_empty()).then_some(Prepared { records, waiting, cmds, paths, data_only })
    }

    /// Send a decided batch and wait for its verdicts in `flights` — unless this writer was
    /// deposed since it was decided: then its commands are answered so and nothing is appended.
    fn start(&mut self, prepared: Prepared, flights: &mut JoinSet<Landed>) {
        let Prepared { records, waiting, paths, data_only, cmds } = prepared;
        if self.deposed() {
            for (tx, _, _) in waiting {
                let _ = tx.send(ApiError::from(WriterError::Fenced).into());
            }
            for p in &paths {
                self.open.remove(p);
            }
            return;
        }
        let n = records.len();
        if let Some(Planted::AckBeforeCommit(count)) = self.planted.as_mut().filter(|_| data_only) {
            *count += 1;
            if *count % 10 == 0 {
                // TEST ONLY (PLANTED_BUG_FOR_TESTS): answer as written, then drop the batch.
                tracing::error!(records = n, "planted bug: batch acknowledged and never sent");
                let applied = self.ctx.materializer.progress.borrow().applied.clone();
                for ((tx, reply, _), (r, _)) in waiting.into_iter().zip(&records) {
                    let at = applied.get(&r.partition).copied().unwrap_or(0);
                    let _ = tx.send(accepted(reply, r.partition, at - 1));
                }
                for p in &paths {
                    self.open.remove(p);
                }
                return;
            }
        }
        self.open.extend(paths.iter().cloned());
        if let Some(late) = self.late.as_mut().filter(|_| data_only) {
            late.batches += 1;
            if late.batches % late.every == 0 {
                // TEST ONLY (LATE_DELIVERY_FOR_TESTS): not sent; its delivery "failed", so a
                // barrier resolves it, and its bytes are sent after that barrier.
                let verdicts = &self.ctx.materializer.verdicts;
                let outcomes = records
                    .iter()
                    .map(|(r, id)| Outcome::Undelivered {
                        event_id: *id,
                        verdict: verdicts.register(*id, r.partition),
                        why: format!("test hook ({LATE_DELIVERY_FOR_TESTS}): delivery held back"),
                    })
                    .collect();
                late.held.extend(records.into_iter().map(|(r, _)| r));
                let started = Instant::now();
                flights.spawn(async move { Landed { waiting, paths, started, outcomes, first: None } });
                return;
            }
        }
        // TEST ONLY (RESEND_FOR_TESTS): keep the first record's bytes; send the pending copies of
        // keys this batch holds again once it landed.
        let (first, again) = match self.resend.as_mut().filter(|_| !cmds.iter().any(|(_, c, _)| c.is_exclusive())) {
            Some(r) => {
                let (due, wait) = std::mem::take(&mut r.pending)
                    .into_iter()
                    .partition(|p: &Record| records.iter().any(|(rec, _)| rec.key == p.key));
                r.pending = wait;
                (records.first().map(|(rec, _)| rec.clone()), due)
            }
            None => (None, Vec::new()),
        };
        let producer = self.producer.clone();
        let ctx = self.ctx.clone();
        let timeout = self.cfg.write_timeout;
        let ack_before_apply = self.planted == Some(Planted::AckBeforeApply);
        flights.spawn(async move {
            let started = Instant::now();
            let outcomes = if ack_before_apply {
                // TEST ONLY (PLANTED_BUG_FOR_TESTS): accepted as soon as delivered.
                let (records, _): (Vec<Record>, Vec<_>) = records.into_iter().unzip();
                producer
                    .send(&records, timeout)
                    .await
                    .into_iter()
                    .map(|d| match d {
                        Ok((p, off)) => Outcome::Accepted(p, off),
                        Err(why) => Outcome::Refused(why),
                    })
                    .collect()
            } else {
                send_and_await(&producer, &ctx, records, timeout).await
            };
            if !again.is_empty() {
                // TEST ONLY (RESEND_FOR_TESTS): no verdict awaited; every node must refuse them.
                let at = producer.send(&again, timeout).await;
                tracing::warn!(?at, "test hook ({RESEND_FOR_TESTS}): records sent again");
            }
            Landed { waiting, paths, started, outcomes, first }
        });
        metrics::gauge!("secretlog_writer_batches_in_flight").set(flights.len() as f64);
    }

    /// Answer the writes of a batch that resolved, and release its secrets — except those whose
    /// delivery failed: they wait for the barrier.
    fn land(&mut self, landed: Result<Landed, tokio::task::JoinError>) {
        let landed = match landed {
            Ok(l) => l,
            Err(e) => {
                // Its secrets stay held: their outcome is unknown here, so nothing more is decided
                // on them — this writer steps down and the next leader's epoch settles them.
                tracing::error!(error = %e, "a batch task failed; stepping down");
                self.fenced.store(true, Ordering::SeqCst);
                return;
            }
        };
        let Landed { waiting, paths, started, outcomes, first } = landed;
        if let Some(r) = self.resend.as_mut()
            && let Some(first) = first
            && matches!(outcomes.first(), Some(Outcome::Accepted(..)))
        {
            r.accepted += 1;
            if r.accepted % r.every == 0 && r.pending.len() < RESEND_PENDING {
                r.pending.push(first);
            }
        }
        metrics::histogram!("secretlog_writer_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("secretlog_writer_batch_size").record(waiting.len() as f64);
        for (((tx, reply, key), path), outcome) in waiting.into_iter().zip(paths).zip(outcomes) {
            let label = match outcome {
                Outcome::Accepted(p, off) => {
                    let _ = tx.send(accepted(reply, p, off));
                    "accepted"
                }
                Outcome::Refused(why) => {
                    let _ = tx.send(refused(&why));
                    "refused"
                }
                Outcome::Unknown { at, why } => {
                    // Decided again only once the local state passed its record.
                    self.inflight.insert(key, (at.0, at.1 + 1));
                    let _ = tx.send(outcome_unknown(&why));
                    "unknown"
                }
                Outcome::Undelivered { event_id, verdict, why } => {
                    tracing::warn!(error = %why, "a record's delivery failed; its write waits for a barrier");
                    self.unresolved.push(Unresolved { waiting: (tx, reply, key), path, event_id, verdict });
                    continue;
                }
            };
            metrics::counter!("secretlog_writer_writes_total", "outcome" => label).increment(1);
            self.open.remove(&path);
        }
    }
}

/// One `LeaderEpoch` record of `epoch` for every partition, naming `leader_url`: a new leader's
/// first records, and a barrier.
pub fn epoch_records(
    keyring: &secretlog_schemas::Keyring,
    partitions: i32,
    leader_url: &str,
    epoch: u64,
) -> Vec<(Record, [u8; 16])> {
    (0..partitions)
        .map(|p| {
            let mut event_id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut event_id);
            let event = Event {
                event_id,
                timestamp_ms: now_ms(),
                writer_epoch: epoch,
                revision: None,
                mount: String::new(),
                path: secretlog_schemas::topic::leader_epoch_name(p),
                op: Operation::LeaderEpoch { leader_url: leader_url.to_string() },
            };
            (Record { key: event.record_key(), payload: encode_event(keyring, &event), partition: p }, event_id)
        })
        .collect()
}

/// Register every record with the materializer, send them, and wait for each one's verdict up to
/// `timeout` after sending.
async fn send_and_await(
    producer: &LogProducer,
    ctx: &ReadContext,
    records: Vec<(Record, [u8; 16])>,
    timeout: Duration,
) -> Vec<Outcome> {
    let verdicts = &ctx.materializer.verdicts;
    let (records, ids): (Vec<Record>, Vec<[u8; 16]>) = records.into_iter().unzip();
    // Registered before sending: a verdict can never come before its waiter.
    let receivers: Vec<_> = records.iter().zip(&ids).map(|(r, id)| verdicts.register(*id, r.partition)).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let sent = Instant::now();
    let delivered = producer.send(&records, timeout).await;
    let produced = Instant::now();
    // Where a write's time goes: the replicated produce, then the leader's own apply.
    metrics::histogram!("secretlog_writer_produce_seconds").record((produced - sent).as_secs_f64());
    let waits = delivered.into_iter().zip(receivers).zip(ids).map(|((d, rx), id)| async move {
        match d {
            Err(why) => Outcome::Undelivered { event_id: id, verdict: rx, why },
            Ok(at) => match tokio::time::timeout_at(deadline, rx).await.inspect(|_| {
                metrics::histogram!("secretlog_writer_apply_wait_seconds").record(produced.elapsed().as_secs_f64())
            }) {
                Ok(Ok(Verdict::Accepted { partition, offset })) => Outcome::Accepted(partition, offset),
                Ok(Ok(Verdict::Refused { reason, .. })) => Outcome::Refused(reason),
                Ok(Ok(Verdict::Halted { reason, .. })) => Outcome::Unknown { at, why: reason },
                Ok(Err(_)) => Outcome::Unknown { at, why: "the writer's materializer stopped".into() },
                Err(_) => {
                    verdicts.forget(&id);
                    Outcome::Unknown {
                        at,
                        why: "not applied by the writer's own state within the write timeout".into(),
                    }
                }
            },
        }
    });
    futures::future::join_all(waits).await
}

/// Append `records` and wait until the local materializer accepted every one (the leader's own
/// epoch records and root token): their positions, or why not.
pub async fn append_accepted(
    producer: &LogProducer,
    ctx: &ReadContext,
    records: Vec<(Record, [u8; 16])>,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, String> {
    send_and_await(producer, ctx, records, timeout)
        .await
        .into_iter()
        .map(|o| match o {
            Outcome::Accepted(p, off) => Ok((p, off)),
            Outcome::Refused(why) => Err(format!("refused: {why}")),
            Outcome::Unknown { why, .. } => Err(why),
            Outcome::Undelivered { event_id, why, .. } => {
                ctx.materializer.verdicts.forget(&event_id);
                Err(format!("not delivered: {why}"))
            }
        })
        .collect()
}

/// The answer to a write accepted at `offset` of `partition`, with its position.
fn accepted(reply: Answer, partition: i32, offset: i64) -> ApiResponse {
    let token = ConsistencyToken([(partition, offset + 1)].into_iter().collect()).to_string();
    answer(reply).with_header(HEADER_INDEX, token)
}

/// A write every node refused: nothing changed; the client may retry.
fn refused(why: &str) -> ApiResponse {
    ApiError::unavailable(format!("write refused, nothing changed; retry: {why}")).into()
}

/// A write whose outcome cannot be known yet (DESIGN.md, rule 4): never called refused.
fn outcome_unknown(why: &str) -> ApiResponse {
    ApiError::unavailable(format!("write outcome unknown: {why}")).into()
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
        let first_on_secret = seen.insert(p.key());
        let exclusive = p.cmd.is_exclusive();
        let fits = match exclusive_batch {
            None => !exclusive || nothing_open,
            Some(e) => e == exclusive,
        };
        if blocked || batch.len() >= max_batch || !fits {
            blocked |= exclusive || exclusive_batch == Some(true);
            rest.push_back(p);
        } else if first_on_secret && !open.contains(&p.key()) {
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

/// `reply` answering the request `request_id`: a version's metadata in the Vault envelope
/// carrying that id, so the answer and the request's audit entries name the same request.
fn for_request(reply: Reply, request_id: &str) -> Answer {
    match reply {
        Reply::Version(v) => match serde_json::to_value(Envelope::new(request_id, v)) {
            Ok(body) => Answer::Json(body),
            Err(_) => Answer::NoContent,
        },
        Reply::NoContent => Answer::NoContent,
        Reply::Json(v) => Answer::Json(v),
    }
}

/// The success answer of a committed write.
fn answer(answer: Answer) -> ApiResponse {
    match answer {
        Answer::NoContent => ApiResponse::no_content(),
        Answer::Json(v) => ApiResponse::json(200, &v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &str) -> Pending {
        Pending {
            mount: "secret".into(),
            cmd: Command::Put { path: path.into(), data: Map::new(), cas: None },
            reply: oneshot::channel().0,
            request_id: String::new(),
        }
    }

    fn fence() -> Pending {
        Pending {
            mount: "secret".into(),
            cmd: Command::Rewrap { path: String::new(), values: vec![] },
            reply: oneshot::channel().0,
            request_id: String::new(),
        }
    }

    fn paths(v: &[Pending]) -> Vec<&str> {
        v.iter().map(|p| if p.cmd.is_exclusive() { "FENCE" } else { p.cmd.path() }).collect()
    }

    fn queue(v: Vec<Pending>) -> VecDeque<Pending> {
        v.into_iter().collect()
    }

    #[test]
    fn one_command_per_secret_and_none_on_an_open_secret_in_queue_order() {
        let open: HashSet<String> = [open_key("secret", "b")].into();
        let mut carry = queue(vec![put("a"), put("b"), put("a"), put("c"), put("b")]);
        let batch = take_batch(&mut carry, &open, 10, false);
        assert_eq!(paths(&batch), ["a", "c"]);
        assert_eq!(paths(carry.make_contiguous()), ["b", "a", "b"]);
        let batch = take_batch(&mut carry, &HashSet::new(), 10, true);
        assert_eq!(paths(&batch), ["b", "a"]);
        assert_eq!(paths(carry.make_contiguous()), ["b"]);
    }

    #[test]
    fn the_same_path_in_two_mounts_is_two_secrets() {
        let mut other = put("a");
        other.mount = "kv-01".into();
        let open: HashSet<String> = [open_key("kv-01", "b")].into();
        let mut b = put("b");
        b.mount = "kv-01".into();
        let mut carry = queue(vec![put("a"), other, put("b"), b]);
        let batch = take_batch(&mut carry, &open, 10, false);
        assert_eq!(
            batch.iter().map(|p| (p.mount.as_str(), p.cmd.path())).collect::<Vec<_>>(),
            [("secret", "a"), ("kv-01", "a"), ("secret", "b")]
        );
        assert_eq!(carry.len(), 1, "kv-01's b is open");
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
