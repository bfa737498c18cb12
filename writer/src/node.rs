//! A writer node: the leader path (fence, catch up, bootstrap the root token, then commit
//! writes) or, with `--forward-to`, a standby that forwards writes; both serve reads from their
//! own materialized state.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secretlog_node::api::forward::Forwarder;
use secretlog_node::api::health::{HealthInput, Role, health};
use secretlog_node::api::kv::Freshness;
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse, Route as ApiRoute};
use secretlog_node::config::ReadMode;
use secretlog_node::context::ReadContext;
use secretlog_node::node::{Keys, Role as NodeRole, RunningNode, Unsealed, open_state};
use secretlog_schemas::topic::HEADER_INDEX;
use secretlog_schemas::{Event, Keyring, Operation, encode_event};
use secretlog_state::NodeError;
use secretlog_state::materializer::now_ms;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::committer::{Committer, CommitterConfig, Pending, Stopped};
use crate::config::WriterConfig;
use crate::election::ElectionConfig;
use crate::error::WriterError;
use crate::producer::{LogProducer, Record};
use crate::route::{Destination, Standing};

/// Where the node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterState {
    /// Not yet accepting writes, and why.
    Starting(String),
    /// The leader: accepting writes.
    Active,
    /// Not the leader: forwarding writes to the leader the log announced.
    Standby,
    /// Fenced by a newer leader.
    Fenced,
}

struct WriterNode {
    cfg: WriterConfig,
    /// The root key: sealed, or unsealed with the state and the election campaign it runs.
    keys: Arc<Keys>,
    /// A watch channel, so that writes held while no leader can take them wake when it changes.
    state: watch::Sender<WriterState>,
    fenced: Arc<AtomicBool>,
    /// When this node last became the leader (unix ms), for `sys/leader`'s `active_time`.
    active_since_ms: AtomicI64,
    queue: RwLock<Option<mpsc::Sender<Pending>>>,
    /// Tidies expired tokens while this node leads (see `crate::tidy`).
    tidier: Arc<crate::tidy::Tidier>,
    forwarder: Forwarder,
    /// The URL announced in the log when this writer leads.
    advertise: String,
    /// The materializer's name in logs.
    name: String,
    /// While it holds, the leader answers reads from its own state (`crate::election`).
    lease: Arc<crate::election::Lease>,
    /// The producers of this node's next term, made while it stands by ([`Ready`]).
    ready: std::sync::Mutex<Option<Ready>>,
}

/// The producers a term starts with, made before the election is won. A producer made at the
/// takeover waits about half a second for its producer id — librdkafka asks for one as the
/// client starts, finds no broker connected yet and retries on a 500 ms timer — and a takeover
/// needed such waits in a row (fencing and claiming, then the epoch records): measured on a
/// `secretlog up` stack, 1.19 s from elected to accepting writes, 0.61 s of it fencing and
/// claiming and 0.54 s the epoch records; with them ready, 0.12 s. A standby keeps one set ready,
/// connected and holding its producer id.
struct Ready {
    /// The term's log producer; it also appends the term's claim to the election topic.
    log: LogProducer,
    /// The producers that fence every transactional id ever used.
    fencers: crate::producer::Fencers,
}

impl Ready {
    fn new(cfg: &WriterConfig) -> Result<Ready, WriterError> {
        let log = &cfg.log;
        // No transaction of an earlier producer may stay open: it would hold every read_committed
        // consumer (this node's materializer too) at its last stable offset.
        let ids = crate::producer::transactional_ids_ever_used(&cfg.transactional_id, &log.topic);
        let fence_timeout = Duration::from_millis(cfg.transaction_timeout_ms.max(5000) * 2);
        Ok(Ready {
            log: LogProducer::new(&log.bootstrap, cfg.write_timeout_ms, &log.topic)?,
            fencers: crate::producer::Fencers::new(&log.bootstrap, &ids, fence_timeout)?,
        })
    }

    /// Still usable: the log producer has not failed fatally while it waited.
    fn usable(&self) -> bool {
        self.log.fatal_error().is_none()
    }
}

/// Start a writer; it runs until `cancel` fires.
pub async fn start(cfg: WriterConfig, cancel: CancellationToken) -> Result<RunningNode, WriterError> {
    secretlog_node::telemetry::prometheus();
    secretlog_state::kafka::configure(cfg.log.kafka_config.as_deref())?;
    crate::rotate::set_rewrap_rate(cfg.rewrap_rate);
    let listener = secretlog_node::api::bind(cfg.listen).await?;
    let addr = listener.local_addr().map_err(|e| WriterError::NotReady(e.to_string()))?;
    let serve = secretlog_node::api::ServeOptions::new(cfg.log_max_request_bytes(), &cfg.http)?;
    let keys = Keys::new("writer", &cfg.log, cancel.clone())?;
    let advertise = cfg.advertise_url.clone().unwrap_or_else(|| format!("{}://{addr}", cfg.http.scheme()));
    let node = Arc::new(WriterNode {
        cfg: cfg.clone(),
        keys: keys.clone(),
        name: format!("writer-{}", addr.port()),
        advertise,
        state: watch::Sender::new(WriterState::Standby),
        fenced: Arc::new(AtomicBool::new(false)),
        active_since_ms: AtomicI64::new(0),
        queue: RwLock::new(None),
        tidier: Arc::default(),
        lease: Arc::default(),
        ready: std::sync::Mutex::new(None),
        forwarder: Forwarder::new(vec![], Duration::from_millis(cfg.write_timeout_ms + 5000))
            .trusting(cfg.http.tls_ca.as_deref())?,
    });
    let opener = node.clone();
    keys.start(move |k, c| opener.open(k, c)).await?;
    let handler = secretlog_node::node::handler(node.clone());
    tracing::info!(%addr, advertise = %node.advertise, "writer listening");
    Ok(keys.supervise(addr, listener, keys.audited(handler), serve, cancel))
}

impl WriterConfig {
    fn log_max_request_bytes(&self) -> u64 {
        (self.max_value_bytes as u64) * 2 + 64 * 1024
    }
}

impl NodeRole for WriterNode {
    fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    fn health(&self, req: &ApiRequest) -> ApiResponse {
        health(&self.health_input(), req)
    }

    fn leader(&self) -> Option<ApiResponse> {
        Some(self.leader_status())
    }

    /// What a writer runs while unsealed: its materializer and its election campaign. Sealing
    /// cancels both — a leader steps down and leaves the group, so another writer takes over.
    async fn open(self: Arc<Self>, keyring: Arc<Keyring>, cancel: CancellationToken) -> Result<Unsealed, NodeError> {
        let (ctx, join) = open_state(&self.cfg.log, &self.cfg.data_dir, &self.name, keyring, cancel.clone()).await?;
        let unsealed = Unsealed::new(ctx.clone(), cancel.clone());
        unsealed.spawn(async move {
            let _ = join.await;
        });
        unsealed.spawn(self.campaign(ctx, cancel));
        Ok(unsealed)
    }

    /// A write is decided here (or forwarded to the leader); a read is answered from this node's
    /// state as its lease allows.
    async fn answer(self: Arc<Self>, unsealed: Arc<Unsealed>, req: ApiRequest) -> ApiResponse {
        let ctx = &unsealed.ctx;
        let resp = if req.is_write() { self.write(ctx, req).await } else { self.read(ctx, &req).await };
        resp.unwrap_or_else(ApiResponse::from)
    }
}

impl WriterNode {
    /// Take part in the election for as long as the node is unsealed: lead while elected, step
    /// down at once when deposed, leave the group when sealed or shut down.
    async fn campaign(self: Arc<Self>, ctx: ReadContext, cancel: CancellationToken) {
        let log = &self.cfg.log;
        let election = ElectionConfig {
            bootstrap: log.bootstrap.clone(),
            topic: self.election_topic(),
            group_id: format!("{}.election", self.cfg.transactional_id),
            session_timeout_ms: self.cfg.election_session_timeout_ms,
            heartbeat_interval_ms: self.cfg.election_heartbeat_ms,
        };
        // Made first, so that they connect while the election topic is made and joined: a writer
        // alone is elected at once, and its first term starts with them.
        self.prepare_next_term();
        while let Err(e) = crate::election::ensure_election_topic(&election.bootstrap, &election.topic).await {
            tracing::warn!(error = %e, "cannot create the election topic yet; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let (mut elected, join) = match crate::election::spawn(election, self.lease.clone(), cancel.clone()) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot join the leader election");
                self.set_state(WriterState::Starting(e.to_string()));
                return;
            }
        };
        let mut drain = tokio::time::interval(Duration::from_secs(10));
        loop {
            self.prepare_next_term();
            let won = loop {
                tokio::select! {
                    _ = cancel.cancelled() => break false,
                    r = elected.wait_for(|e| *e) => break r.is_ok(),
                    _ = drain.tick() => self.drain_ready(),
                }
            };
            if !won {
                break;
            }
            // Elected: from now on a write waits for this node's own term instead of going to the
            // leader it replaces.
            self.set_state(WriterState::Starting("elected; taking leadership".into()));
            let term = cancel.child_token();
            let leading = {
                let (n, t, c) = (self.clone(), term.clone(), ctx.clone());
                tokio::spawn(async move { n.lead(c, t).await })
            };
            tokio::select! {
                _ = cancel.cancelled() => tracing::info!("shutting down: stepping down as leader"),
                _ = elected.wait_for(|e| !*e) => {
                    if cancel.is_cancelled() {
                        tracing::info!("shutting down: stepping down as leader");
                    } else {
                        tracing::warn!("deposed: stepping down");
                    }
                }
            }
            term.cancel();
            let _ = leading.await;
            *self.queue.write().expect("queue lock") = None;
            self.fenced.store(false, Ordering::SeqCst);
            self.set_state(WriterState::Standby);
            metrics::gauge!("secretlog_writer_is_leader").set(0.0);
            if cancel.is_cancelled() {
                break;
            }
        }
        // Sealed or shutting down: no next term to be ready for. (Closing a client blocks until
        // its threads end.)
        if let Some(ready) = self.ready.lock().expect("ready lock").take() {
            tokio::task::spawn_blocking(move || drop(ready));
        }
        let _ = join.await;
    }

    /// Make the next term's producers now, unless a usable set is ready ([`Ready`]).
    fn prepare_next_term(&self) {
        let mut ready = self.ready.lock().expect("ready lock");
        if ready.as_ref().is_some_and(Ready::usable) {
            return;
        }
        *ready = match Ready::new(&self.cfg) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the next term's producers ahead; the takeover will");
                None
            }
        };
    }

    /// Serve what the ready producers queued while they wait ([`crate::producer::Fencers::drain`]).
    fn drain_ready(&self) {
        if let Some(r) = self.ready.lock().expect("ready lock").as_ref() {
            r.fencers.drain();
        }
    }

    /// The producers made ahead for this term, or new ones.
    fn take_ready(&self) -> Result<Ready, WriterError> {
        match self.ready.lock().expect("ready lock").take().filter(Ready::usable) {
            Some(r) => Ok(r),
            None => Ready::new(&self.cfg),
        }
    }

    /// Lead until `term` ends, retrying leadership setup while it fails.
    async fn lead(self: Arc<Self>, ctx: ReadContext, term: CancellationToken) {
        while !term.is_cancelled() {
            match self.become_leader(&ctx, term.clone()).await {
                Ok(()) => break,
                Err(WriterError::Fenced) => {
                    // Someone else was elected and fenced us; never fight back with a new
                    // producer. Wait for the election to depose us.
                    self.set_state(WriterState::Fenced);
                    term.cancelled().await;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take leadership yet; retrying");
                    self.set_state(WriterState::Starting(e.to_string()));
                    tokio::select! {
                        _ = term.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }

    /// The one-partition topic the writers elect their leader on and append their claims to.
    fn election_topic(&self) -> String {
        format!("{}.election", self.cfg.log.topic)
    }

    fn set_state(&self, s: WriterState) {
        let active = s == WriterState::Active;
        let changed = self.state.send_if_modified(|now| {
            let changed = *now != s;
            *now = s;
            changed
        });
        if changed {
            self.active_since_ms.store(if active { now_ms() } else { 0 }, Ordering::SeqCst);
        }
    }
    fn state(&self) -> WriterState {
        self.state.borrow().clone()
    }

    /// Fence the previous leader, read the log to its end, publish the root token if the log has
    /// none, then start committing.
    async fn become_leader(self: &Arc<Self>, ctx: &ReadContext, cancel: CancellationToken) -> Result<(), WriterError> {
        let began = std::time::Instant::now();
        let log = &self.cfg.log;
        // The partitions this node's materializer is positioned on, or (not positioned yet) the
        // topic's, asked of the brokers.
        let positioned = ctx.materializer.progress.borrow().partitions;
        let partitions = if positioned > 0 {
            positioned
        } else {
            let (b, t) = (log.bootstrap.clone(), log.topic.clone());
            tokio::task::spawn_blocking(move || secretlog_state::kafka::partition_count(&b, &t, Duration::from_secs(5)))
                .await
                .map_err(|e| WriterError::NotReady(e.to_string()))??
        };
        self.set_state(WriterState::Starting("fencing the previous leader".into()));
        // The epoch comes from the log: the offset of this claim, above every epoch applied here.
        // Claimed while the fencing runs: a takeover waits for the slower of the two, not both.
        let write_timeout = Duration::from_millis(self.cfg.write_timeout_ms);
        let election_topic = self.election_topic();
        let Ready { log: producer, fencers } = self.take_ready()?;
        let fencing_from = std::time::Instant::now();
        let ((fenced, fence_took), (claim, claim_took)) = tokio::join!(
            async {
                let r = fencers.fence().await;
                (r, fencing_from.elapsed())
            },
            async {
                let r = crate::election::claim(&producer, &election_topic, &self.advertise, write_timeout).await;
                (r, fencing_from.elapsed())
            },
        );
        fenced?;
        let claim = claim?;
        let stored = ctx.store.partitions().await?;
        let highest = stored.values().map(|s| s.max_epoch).max().unwrap_or(0);
        let epoch = crate::epoch::from_claim(claim, highest);
        // One leader-epoch record in every partition: it fences older leaders in the log itself
        // (their later records are refused everywhere), and once the local materializer has
        // accepted these records it has applied everything before them — only then are writes
        // decided.
        self.set_state(WriterState::Starting("writing the leader epoch and reading the log to its end".into()));
        let records = crate::committer::epoch_records(&ctx.keyring, partitions, &self.advertise, epoch);
        let catching_up_from = std::time::Instant::now();
        // Cancellable: a node sealed (or stopped) while catching up steps down at once.
        let catch_up = crate::committer::append_accepted(&producer, ctx, records, Duration::from_secs(120));
        tokio::select! {
            r = catch_up => r.map_err(|why| WriterError::NotReady(format!("leader epoch {epoch} not accepted: {why}")))?,
            _ = cancel.cancelled() => return Err(WriterError::NotReady("stepping down".into())),
        };
        let catch_up_took = catching_up_from.elapsed();
        if ctx.store.root_token_hash().await?.is_none() {
            let token = crate::token::load_or_create(&self.cfg.root_token_path())?;
            let op = Operation::SetRootToken { token_hash: ctx.keyring.token_hash(&token) };
            let event = self.control_event(ctx, "root-token".into(), op, epoch);
            let key = event.record_key();
            let partition = secretlog_schemas::topic::partition_for(&key, partitions);
            let payload = encode_event(&ctx.keyring, &event);
            let record = (Record { key, payload, partition }, event.event_id);
            // Only lead once this node's own state knows the token: a client reading the token
            // file the moment the writer is healthy must not be refused.
            let applied = crate::committer::append_accepted(&producer, ctx, vec![record], Duration::from_secs(60));
            tokio::select! {
                r = applied => r.map_err(|why| WriterError::NotReady(format!("publishing the root token: {why}")))?,
                _ = cancel.cancelled() => return Err(WriterError::NotReady("stepping down".into())),
            };
            tracing::info!(file = %self.cfg.root_token_path().display(), "root token published (hash only); the token is in the file");
        }
        let (tx, rx) = mpsc::channel(4096);
        let committer = Committer::new(
            ctx.clone(),
            producer,
            CommitterConfig {
                max_batch: self.cfg.max_batch,
                max_in_flight: self.cfg.max_in_flight,
                write_timeout: Duration::from_millis(self.cfg.write_timeout_ms),
                partitions,
                epoch,
                leader_url: self.advertise.clone(),
            },
            self.fenced.clone(),
        );
        let rewrap = tokio::spawn(crate::rotate::rewrap(ctx.clone(), tx.clone(), cancel.child_token()));
        let tidy_every =
            (self.cfg.token_tidy_interval_secs > 0).then(|| Duration::from_secs(self.cfg.token_tidy_interval_secs));
        let tidy = tokio::spawn(self.tidier.clone().run(ctx.clone(), tx.clone(), tidy_every, cancel.child_token()));
        *self.queue.write().expect("queue lock") = Some(tx);
        self.set_state(WriterState::Active);
        metrics::gauge!("secretlog_writer_epoch").set(epoch as f64);
        metrics::gauge!("secretlog_writer_is_leader").set(1.0);
        // Where a takeover's time goes, after the election: fencing the transactional ids and
        // claiming the epoch (at once), then the epoch records applied here.
        tracing::info!(
            epoch,
            partitions,
            took_ms = began.elapsed().as_millis() as u64,
            fence_ms = fence_took.as_millis() as u64,
            claim_ms = claim_took.as_millis() as u64,
            catch_up_ms = catch_up_took.as_millis() as u64,
            "leader: accepting writes"
        );
        let stopped = committer.run(rx, cancel).await;
        rewrap.abort();
        tidy.abort();
        *self.queue.write().expect("queue lock") = None;
        metrics::gauge!("secretlog_writer_is_leader").set(0.0);
        match stopped {
            Stopped::Shutdown => Ok(()),
            Stopped::Deposed => Err(WriterError::Fenced),
            Stopped::Reclaim(why) => {
                self.fenced.store(false, Ordering::SeqCst);
                Err(WriterError::NotReady(why))
            }
        }
    }

    fn control_event(&self, _ctx: &ReadContext, name: String, op: Operation, epoch: u64) -> Event {
        let mut event_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut event_id);
        Event {
            event_id,
            timestamp_ms: now_ms(),
            writer_epoch: epoch,
            revision: None,
            mount: String::new(),
            path: name,
            op,
        }
    }

    fn health_input(&self) -> HealthInput {
        let state = if self.fenced.load(Ordering::SeqCst) { WriterState::Fenced } else { self.state() };
        let lease_left = self.lease.left().filter(|_| state == WriterState::Active);
        let (role, unavailable) = match state {
            WriterState::Active => (Role::ActiveWriter, None),
            WriterState::Standby => (Role::StandbyWriter { leader: self.leader_url() }, None),
            WriterState::Starting(why) => (Role::ActiveWriter, Some(format!("starting: {why}"))),
            WriterState::Fenced => (Role::StandbyWriter { leader: None }, Some("fenced by a newer leader".into())),
        };
        HealthInput {
            role,
            sealed: self.keys.sealed_reason(),
            progress: self.keys.current().map(|u| u.ctx.materializer.progress.borrow().clone()),
            max_lag_seconds: 30.0,
            max_staleness: None,
            unavailable,
            lease_left,
        }
    }

    /// `sys/leader` (unauthenticated, as in Vault): this node while it leads, otherwise the
    /// leader the log announced.
    fn leader_status(&self) -> ApiResponse {
        let leading = !self.fenced.load(Ordering::SeqCst) && self.state() == WriterState::Active;
        if leading {
            let since = self.active_since_ms.load(Ordering::SeqCst);
            return secretlog_node::api::sys::leader(true, Some(&self.advertise), Some(since));
        }
        secretlog_node::api::sys::leader(false, self.leader_url().as_deref(), None)
    }

    /// The leader the log announced, unless that is this node.
    fn leader_url(&self) -> Option<String> {
        let unsealed = self.keys.current()?;
        let url = unsealed.ctx.materializer.progress.borrow().leader.as_ref().map(|l| l.url.clone())?;
        (url != self.advertise).then_some(url)
    }

    async fn write(&self, ctx: &ReadContext, req: ApiRequest) -> Result<ApiResponse, ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.leader_wait_ms);
        let mut unreachable_epoch = None;
        loop {
            match self.route_write(ctx, deadline, unreachable_epoch, req.forwarded).await? {
                Destination::Here => break,
                Destination::Forward(leader) => {
                    match self.forwarder.vouching(ctx.keyring.clone()).try_forward(&req, Some(&leader.url)).await {
                        Ok(resp) => return Ok(resp),
                        // Nothing left this node: it may wait for the next leader and go there.
                        Err(unsent) => {
                            tracing::info!(leader = %leader.url, epoch = leader.epoch, reason = %unsent.reason(),
                            "the announced leader cannot be reached; holding the write for its successor");
                            unreachable_epoch = Some(leader.epoch);
                        }
                    }
                }
                Destination::Wait(why) => return Err(ApiError::unavailable(why)),
            }
        }
        // A write carrying an index (say, the first use of a token just created) is decided on
        // state that includes it: the writer's own copy applies its commits a moment after them.
        ctx.wait_for_index(&req).await?;
        let timeout = Duration::from_millis(self.cfg.write_timeout_ms * 2 + 1000);
        if secretlog_node::api::auth_methods::is_login(ctx, &req).await? {
            // No token: the login is what gets one.
            let app = crate::auth_methods::Appender { ctx, queue: self.write_queue()?, timeout };
            return crate::auth_methods::write(&app, &req, None).await;
        }
        let who = secretlog_node::api::auth::authorize(ctx, &req).await?;
        let method = req.method.as_str();
        let (mount, cmd) = match req.route() {
            ApiRoute::AuthMount | ApiRoute::AuthMethod => {
                let app = crate::auth_methods::Appender { ctx, queue: self.write_queue()?, timeout };
                return crate::auth_methods::write(&app, &req, Some(&who)).await;
            }
            // Only the leader tidies (its committer takes the tidies); the answer comes at once.
            ApiRoute::TokenTidy if matches!(method, "POST" | "PUT") => {
                self.write_queue()?;
                return Ok(self.tidier.request(&req));
            }
            ApiRoute::Restore => {
                let cmds = crate::restore::parse(&req, &ctx.mounts(), &ctx.default_mount, &ctx.keyring)?;
                return self.restore(&req, cmds).await;
            }
            r if r.is_rotation() => {
                return crate::rotate::write(ctx, &req, &who, self.write_queue()?, &self.cfg).await;
            }
            ApiRoute::Mount if matches!(method, "POST" | "PUT" | "DELETE") => {
                (String::new(), crate::mounts::parse(&req)?)
            }
            ApiRoute::AuditDevice if matches!(method, "POST" | "PUT" | "DELETE") => {
                (String::new(), crate::audit_devices::parse(&req)?)
            }
            _ => match crate::auth::handle(ctx, &req, &who).await? {
                Some(crate::auth::Outcome::Answer(resp)) => return Ok(resp),
                Some(crate::auth::Outcome::Command(cmd)) => (String::new(), cmd),
                None => crate::request::parse_on(&req, &ctx.mounts(), &ctx.default_mount, self.cfg.max_value_bytes)?,
            },
        };
        let queue = self.write_queue()?;
        let (tx, rx) = oneshot::channel();
        queue
            .try_send(Pending { mount, cmd, reply: tx, request_id: req.request_id.clone() })
            .map_err(|_| ApiError::unavailable("write queue full"))?;
        let timeout = Duration::from_millis(self.cfg.write_timeout_ms * 2 + 1000);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(ApiError::unavailable("writer stopped before answering")),
            Err(_) => Err(ApiError::unavailable("write outcome unknown: timed out waiting for the commit")),
        }
    }

    /// Where a write goes: here, or to the leader the log announced. While neither can take it,
    /// wait — on the node's state and the materializer's progress, up to `deadline` — then 503
    /// saying what it waited for (see `crate::route`).
    async fn route_write(
        &self,
        ctx: &ReadContext,
        deadline: tokio::time::Instant,
        unreachable: Option<u64>,
        forwarded: bool,
    ) -> Result<Destination, ApiError> {
        let (mut state, mut progress) = (self.state.subscribe(), ctx.materializer.progress.clone());
        let routed = crate::route::until_routed(&mut state, &mut progress, deadline, |state, announced| {
            let node = Standing {
                state,
                fenced: self.fenced.load(Ordering::SeqCst),
                accepting: self.queue.read().expect("queue lock").is_some(),
                me: &self.advertise,
                forwarded,
            };
            crate::route::route(node, announced, unreachable)
        })
        .await;
        routed.map_err(|why| {
            metrics::counter!("secretlog_writer_leader_wait_expired_total").increment(1);
            ApiError::unavailable(format!(
                "no leader writer could take the write within {} ms: {why}",
                self.cfg.leader_wait_ms
            ))
        })
    }

    /// The committer's queue, if this node may take writes now.
    fn write_queue(&self) -> Result<mpsc::Sender<Pending>, ApiError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(WriterError::Fenced.into());
        }
        let queue = self.queue.read().expect("queue lock").clone();
        queue.ok_or_else(|| {
            let why = match self.state() {
                WriterState::Starting(w) => w,
                other => format!("{other:?}"),
            };
            ApiError::unavailable(format!("writer not ready: {why}"))
        })
    }

    /// Queue every secret of a restore and answer once all committed: 200 with counts and the
    /// merged commit position, or the first failure (secrets before it may have committed; a
    /// restore is idempotent, so the operator runs it again).
    async fn restore(
        &self,
        req: &ApiRequest,
        cmds: Vec<(String, crate::request::Command)>,
    ) -> Result<ApiResponse, ApiError> {
        let queue = self.write_queue()?;
        let mounts = cmds.iter().filter(|(_, c)| matches!(c, crate::request::Command::Mount { .. })).count();
        let total = cmds.len() - mounts;
        let mut waiting = Vec::with_capacity(cmds.len());
        for (mount, cmd) in cmds {
            let (tx, rx) = oneshot::channel();
            queue
                .send(Pending { mount, cmd, reply: tx, request_id: req.request_id.clone() })
                .await
                .map_err(|_| ApiError::unavailable("writer stopped before the restore was queued"))?;
            waiting.push(rx);
        }
        let timeout = Duration::from_millis(self.cfg.write_timeout_ms * 4 + 5000);
        let mut index = secretlog_schemas::ConsistencyToken::default();
        let mut changed = 0usize;
        for rx in waiting {
            let resp = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(_)) => return Err(ApiError::unavailable("writer stopped before answering")),
                Err(_) => {
                    return Err(ApiError::unavailable("restore outcome unknown: timed out waiting for the commit"));
                }
            };
            if resp.status >= 300 {
                return Ok(resp);
            }
            if let Some((_, v)) = resp.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(HEADER_INDEX)) {
                changed += 1;
                if let Ok(t) = v.parse::<secretlog_schemas::ConsistencyToken>() {
                    index.merge(&t);
                }
            }
        }
        tracing::info!(secrets = total, mounts, changed, "restore committed");
        let mut resp = ApiResponse::data(
            &req.request_id,
            serde_json::json!({ "secrets": total, "mounts": mounts, "appended": changed }),
        );
        if !index.0.is_empty() {
            resp.headers.push((HEADER_INDEX.to_string(), index.to_string()));
        }
        Ok(resp)
    }

    async fn read(&self, ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
        let mut freshness = ctx.wait_for_index(req).await?;
        let strong = match req.consistency.as_deref() {
            Some(m) => m.parse::<ReadMode>().map_err(ApiError::bad_request)? == ReadMode::Strong,
            None => false,
        };
        let active = self.state() == WriterState::Active;
        if freshness == Freshness::Fresh && !(active && self.lease.left().is_some()) {
            // The leader answers from its own state within its lease: it acknowledged nothing it
            // had not applied, it stops leading when it applies a newer epoch, and no other
            // writer can have been elected while the lease holds. A leader whose lease lapsed
            // (its group membership unconfirmed for half a session) reads as strongly as it
            // answers: it confirms the log's end first. A standby vouches for its state only as
            // a reader does.
            freshness = if strong || active {
                match ctx.wait_strong().await {
                    Ok(()) => Freshness::Fresh,
                    Err(why) if active => Freshness::Unconfirmed(format!(
                        "this leader's lease has lapsed (its group membership is unconfirmed) and {why}"
                    )),
                    Err(why) => Freshness::Unconfirmed(why),
                }
            } else {
                ctx.within_bound(req).await
            };
        }
        ctx.authorize(req).await?;
        match freshness {
            Freshness::Fresh => {}
            Freshness::Stale => {
                return Err(ApiError::new(
                    secretlog_state::ErrorKind::NotYetApplied,
                    "this node has not yet applied the requested index",
                ));
            }
            Freshness::Unconfirmed(why) => return Err(ApiError::unavailable(why)),
        }
        if req.route().is_rotation() {
            return crate::rotate::read(ctx, req).await;
        }
        ctx.read(req).await
    }
}
