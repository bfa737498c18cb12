//! The replicator node: archiver, snapshot schedule, and a small HTTP surface (health with the
//! archive lag, metrics, on-demand snapshots, and the seal endpoints).
//!
//! The replicator needs the root key: its materializer authenticates every record (the
//! event-authentication key derives from it) and builds the state snapshots are taken from, and
//! tokens are checked as keyed hashes. So it is sealed and unsealed like readers and writers
//! ([`Keys`]): started with `--seal-config` and no key it serves only health (503), seal-status
//! and unseal, and starts materializing, archiving and snapshotting once key holders unsealed
//! it; `PUT /v1/sys/seal` stops all three and drops the key again.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse, Route};
use secretlog_node::config::LogConfig;
use secretlog_node::context::ReadContext;
use secretlog_node::node::{Keys, Role as NodeRole, RunningNode, Unsealed, open_state};
use secretlog_schemas::Keyring;
use secretlog_state::NodeError;
use secretlog_state::materializer::now_ms;
use secretlog_state::objects::Objects;
use serde_json::json;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::archive::ArchiveStatus;
use crate::config::ReplicatorConfig;
use crate::error::ReplicatorError;

struct ReplicatorNode {
    cfg: ReplicatorConfig,
    /// `cfg.log` with the object store the replicator writes to (a node with an empty disk
    /// starts from the newest snapshot there).
    log: LogConfig,
    /// Sealed, or unsealed with the state, archiver and snapshot schedule of the lifetime.
    keys: Arc<Keys>,
    objects: Objects,
    archive: watch::Receiver<ArchiveStatus>,
    archive_tx: watch::Sender<ArchiveStatus>,
    /// One snapshot at a time.
    snapshot_lock: Mutex<()>,
    /// The Kafka cluster's id, once known (snapshots and the archive are tied to it).
    cluster: std::sync::OnceLock<String>,
}

/// Start the replicator; it runs until `cancel` fires.
pub async fn start(cfg: ReplicatorConfig, cancel: CancellationToken) -> Result<RunningNode, ReplicatorError> {
    secretlog_node::telemetry::prometheus();
    secretlog_state::kafka::configure(cfg.log.kafka_config.as_deref())?;
    let listener = secretlog_node::api::bind(cfg.listen).await?;
    let addr = listener.local_addr().map_err(ReplicatorError::Listener)?;
    let serve = secretlog_node::api::ServeOptions::new(64 * 1024, &cfg.http)?;
    let objects = Objects::open(&cfg.object_store_url())?;
    let mut log = cfg.log.clone();
    log.object_store = Some(cfg.object_store_url());
    let keys = Keys::new("replicator", &log, cancel.clone())?;
    let (archive_tx, archive) = watch::channel(ArchiveStatus::default());
    let node = Arc::new(ReplicatorNode {
        cfg: cfg.clone(),
        log,
        keys: keys.clone(),
        objects,
        archive,
        archive_tx,
        snapshot_lock: Mutex::new(()),
        cluster: std::sync::OnceLock::new(),
    });
    let opener = node.clone();
    keys.start(move |k, c| opener.open(k, c)).await?;
    let handler = secretlog_node::node::handler(node.clone());
    tracing::info!(%addr, objects = %node.objects.url, "replicator listening");
    Ok(keys.supervise(addr, listener, keys.audited(handler), serve, cancel))
}

impl NodeRole for ReplicatorNode {
    fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    fn health(&self, _req: &ApiRequest) -> ApiResponse {
        self.health_response()
    }

    async fn open(self: Arc<Self>, keyring: Arc<Keyring>, cancel: CancellationToken) -> Result<Unsealed, NodeError> {
        self.open_lifetime(keyring, cancel).await
    }

    async fn answer(self: Arc<Self>, unsealed: Arc<Unsealed>, req: ApiRequest) -> ApiResponse {
        self.answer_unsealed(&unsealed.ctx, req).await
    }
}

impl ReplicatorNode {
    /// What the replicator runs while unsealed: the materializer, the archiver, the snapshot
    /// schedule and the report of the newest snapshot — all stopped by sealing.
    async fn open_lifetime(
        self: Arc<Self>,
        keyring: Arc<Keyring>,
        cancel: CancellationToken,
    ) -> Result<Unsealed, NodeError> {
        let (ctx, join) = open_state(&self.log, &self.cfg.data_dir, "replicator", keyring, cancel.clone()).await?;
        let unsealed = Unsealed::new(ctx.clone(), cancel.clone());
        unsealed.spawn(async move {
            let _ = join.await;
        });
        {
            let (n, c) = (self.clone(), cancel.clone());
            unsealed.spawn(async move { n.publish_newest_snapshot(c).await });
        }
        {
            let (n, c, ctx) = (self.clone(), cancel.clone(), ctx.clone());
            unsealed.spawn(async move { n.archive(ctx, c).await });
        }
        if self.cfg.snapshot_interval_secs > 0 {
            let (n, c) = (self.clone(), cancel);
            unsealed.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(n.cfg.snapshot_interval_secs));
                every.tick().await;
                loop {
                    tokio::select! {
                        _ = c.cancelled() => return,
                        _ = every.tick() => {}
                    }
                    if let Err(e) = n.snapshot(&ctx).await {
                        tracing::error!(error = %e, "scheduled snapshot failed");
                    }
                }
            });
        }
        Ok(unsealed)
    }

    /// Archive the log once the materializer knows its partitions, until `cancel` (seal or
    /// shutdown); the next unsealed lifetime resumes after the newest segment in the store.
    async fn archive(&self, ctx: ReadContext, cancel: CancellationToken) {
        let partitions = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ctx.materializer.wait_for(Duration::from_secs(3600), |p| p.partitions > 0) => {
                ctx.materializer.progress.borrow().partitions
            }
        };
        if partitions == 0 {
            return;
        }
        // Kafka or object storage being unreachable at start is an outage like any other: keep
        // trying (health reports it meanwhile). Only a store owned by another cluster is final.
        let cluster = loop {
            let claimed = tokio::select! {
                _ = cancel.cancelled() => return,
                claimed = self.claim_store() => claimed,
            };
            match claimed {
                Ok(c) => break c,
                Err(e @ ReplicatorError::ForeignStore(_)) => {
                    tracing::error!(error = %e, "the archive cannot start");
                    self.archive_tx.send_modify(|s| s.last_error = Some(e.to_string()));
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the archive cannot start yet; retrying");
                    self.archive_tx.send_modify(|s| s.last_error = Some(e.to_string()));
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        self.archive_tx.send_modify(|s| s.last_error = None);
        let _ = self.cluster.set(cluster);
        let res = crate::archive::run(
            &self.cfg.log.bootstrap,
            &self.cfg.log.topic,
            partitions,
            self.objects.clone(),
            self.cfg.segment_max_records,
            Duration::from_millis(self.cfg.segment_flush_ms),
            &self.archive_tx,
            cancel,
        )
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "archiver stopped");
        }
    }

    /// Report the newest snapshot already in object storage (retrying while storage is
    /// unreachable), under the snapshot lock so a snapshot written meanwhile is not reported
    /// older than it is.
    async fn publish_newest_snapshot(&self, cancel: CancellationToken) {
        loop {
            let res = {
                let _one = self.snapshot_lock.lock().await;
                crate::snapshot::publish_newest(&self.objects, &self.cfg.log.topic).await
            };
            match res {
                Ok(newest) => {
                    tracing::info!(newest_snapshot_ms = ?newest, "newest snapshot in object storage");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot list snapshots yet; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn snapshot(&self, ctx: &ReadContext) -> Result<secretlog_schemas::archive::Manifest, ReplicatorError> {
        let _one = self.snapshot_lock.lock().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let cluster = loop {
            match self.cluster.get() {
                Some(c) => break c,
                None if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                None => return Err(ReplicatorError::NoClusterId),
            }
        };
        let m = crate::snapshot::create(&ctx.store, &self.objects, cluster, &self.cfg.log.topic).await?;
        crate::snapshot::apply_retention(
            &self.objects,
            self.cfg.keep_snapshots,
            Duration::from_secs(self.cfg.keep_snapshots_secs),
        )
        .await?;
        Ok(m)
    }

    /// Tie the object store prefix to this Kafka cluster and topic (`cluster.json`), or refuse if
    /// it already belongs to another: the archive's object names are offsets, and another
    /// cluster's offsets would silently overwrite or shadow them.
    async fn claim_store(&self) -> Result<String, ReplicatorError> {
        let bootstrap = self.cfg.log.bootstrap.clone();
        let cluster = tokio::task::spawn_blocking(move || {
            secretlog_state::kafka::cluster_id(&bootstrap, Duration::from_secs(60))
        })
        .await??;
        let owner = json!({ "cluster": cluster, "topic": self.cfg.log.topic });
        let path = self.objects.path("cluster.json");
        match self.objects.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let found: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if found != owner {
                    return Err(ReplicatorError::ForeignStore(format!(
                        "{} belongs to {found}, not to {owner}: give this cluster its own object store prefix",
                        self.objects.url
                    )));
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.objects.store.put(&path, object_store::PutPayload::from(owner.to_string().into_bytes())).await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(cluster)
    }

    /// The replicator's own steps once unsealed: the consistency wait, authorization (catching
    /// up with the log once before refusing a token it does not know), then the snapshot routes.
    async fn answer_unsealed(&self, ctx: &ReadContext, req: ApiRequest) -> ApiResponse {
        // An `X-Secretlog-Index` makes a snapshot (or digest) include that write. The wait comes
        // first (the index may carry the token just created) but a caller learns whether it was
        // met only once authorized, as on a reader.
        let fresh = match ctx.wait_for_index(&req).await {
            Ok(f) => f == secretlog_node::api::kv::Freshness::Fresh,
            Err(e) => return e.into(),
        };
        if let Err(e) = ctx.authorize(&req).await {
            if e.status != 403 {
                return e.into();
            }
            // A token this node does not know (yet): a replicator that started or fell behind
            // moments ago may not have applied it. Catch up with the log's end as of now and
            // decide once more.
            if let Err(why) = catch_up(ctx).await {
                return ApiError::unavailable(format!(
                    "this replicator cannot tell yet whether the token is valid: {why}"
                ))
                .into();
            }
            if let Err(e) = ctx.authorize(&req).await {
                return e.into();
            }
        }
        if !fresh {
            return ApiError::new(
                secretlog_state::ErrorKind::NotYetApplied,
                "the replicator has not yet applied the requested index",
            )
            .into();
        }
        match (req.method.as_str(), req.route()) {
            ("GET", Route::Digest) => ctx.read(&req).await.unwrap_or_else(ApiResponse::from),
            ("POST" | "PUT", Route::Snapshot) => match self.snapshot(ctx).await {
                Ok(m) => ApiResponse::data(&req.request_id, serde_json::to_value(&m).unwrap_or_default()),
                Err(e) => ApiError::unavailable(format!("snapshot failed: {e}")).into(),
            },
            ("GET" | "LIST", Route::Snapshots) => {
                match secretlog_state::bootstrap::list_snapshots(&self.objects).await {
                    Ok(list) => ApiResponse::data(&req.request_id, json!({ "snapshots": list })),
                    Err(e) => ApiError::unavailable(e.to_string()).into(),
                }
            }
            _ => ApiError::unsupported_path().into(),
        }
    }

    fn health_response(&self) -> ApiResponse {
        let status = self.archive.borrow().clone();
        let lag = status.lag_seconds(now_ms());
        let progress = self.keys.current().map(|u| u.ctx.materializer.progress.borrow().clone());
        let sealed = self.keys.sealed_reason();
        let problem = sealed
            .clone()
            .map(|s| format!("sealed: {s}"))
            .or_else(|| {
                progress
                    .as_ref()
                    .filter(|p| !p.halted.is_empty())
                    .map(|p| format!("{} partition(s) halted", p.halted.len()))
            })
            .or_else(|| status.last_error.clone().map(|e| format!("object store: {e}")));
        metrics::gauge!("secretlog_archive_lag_seconds").set(lag);
        let code = if problem.is_some() { 503 } else { 200 };
        ApiResponse::json(
            code,
            &json!({
                "initialized": true,
                "sealed": sealed.is_some(),
                "secretlog": {
                    "role": "replicator",
                    "problem": problem,
                    "object_store": self.objects.url,
                    "archive": status,
                    "archive_lag_seconds": lag,
                    "applied": progress.as_ref().map(|p| p.applied.clone()),
                    "halted": progress.as_ref().map(|p| p.halted.clone()),
                }
            }),
        )
    }
}

/// How long a replicator tries to catch up with the log before it decides on a token it does not
/// know: its API serves operators (snapshots, digests), who can wait for a right answer.
const CATCH_UP_FOR_A_TOKEN: Duration = Duration::from_secs(15);

/// Consume up to the log's end as of now (each attempt asks the brokers anew), within
/// [`CATCH_UP_FOR_A_TOKEN`]; the last attempt's reason if it could not.
async fn catch_up(ctx: &secretlog_node::context::ReadContext) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_FOR_A_TOKEN;
    loop {
        match ctx.wait_strong().await {
            Ok(()) => return Ok(()),
            Err(why) if tokio::time::Instant::now() >= deadline => return Err(why),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
