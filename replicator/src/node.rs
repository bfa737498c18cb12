//! The replicator node: archiver, snapshot schedule, and a small HTTP surface (health with the
//! archive lag, metrics, on-demand snapshots).

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use secretlog_reader::api::kv::ReadContext;
use secretlog_reader::api::{ApiError, ApiRequest, ApiResponse, Handler};
use secretlog_reader::materializer::now_ms;
use secretlog_reader::node::{RunningNode, load_keyring, metrics_response, open_state, sealed_response, supervise};
use secretlog_reader::objects::Objects;
use serde_json::json;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::archive::ArchiveStatus;
use crate::config::ReplicatorConfig;
use crate::error::ReplicatorError;

struct ReplicatorNode {
    cfg: ReplicatorConfig,
    ctx: Option<ReadContext>,
    sealed: Option<String>,
    objects: Objects,
    archive: watch::Receiver<ArchiveStatus>,
    /// One snapshot at a time.
    snapshot_lock: Mutex<()>,
    /// The Kafka cluster's id, once known (snapshots and the archive are tied to it).
    cluster: std::sync::OnceLock<String>,
}

/// Start the replicator; it runs until `cancel` fires.
pub async fn start(cfg: ReplicatorConfig, cancel: CancellationToken) -> Result<RunningNode, ReplicatorError> {
    secretlog_reader::telemetry::prometheus();
    secretlog_reader::kafka::configure(cfg.log.kafka_config.as_deref())?;
    let listener = secretlog_reader::api::bind(cfg.listen).await?;
    let addr = listener.local_addr().map_err(|e| ReplicatorError::Objects(e.to_string()))?;
    let serve = secretlog_reader::api::ServeOptions::new(64 * 1024, &cfg.http)?;
    let audit = secretlog_reader::audit::Auditor::from_config(&cfg.log, "replicator")?;
    let objects = Objects::open(&cfg.object_store_url())?;
    let mut log = cfg.log.clone();
    log.object_store = Some(cfg.object_store_url());
    let mut background = tokio::task::JoinSet::new();
    let (status_tx, status_rx) = watch::channel(ArchiveStatus::default());
    let (ctx, sealed) = match load_keyring(&log) {
        Ok(keyring) => {
            let (ctx, join) = open_state(&log, &cfg.data_dir, "replicator", keyring, cancel.clone()).await?;
            background.spawn(async move {
                let _ = join.await;
            });
            (Some(ctx), None)
        }
        Err(reason) => {
            tracing::error!(%reason, "no usable root key: the replicator is SEALED");
            (None, Some(reason))
        }
    };
    let node = Arc::new(ReplicatorNode {
        cfg: cfg.clone(),
        ctx,
        sealed,
        objects,
        archive: status_rx,
        snapshot_lock: Mutex::new(()),
        cluster: std::sync::OnceLock::new(),
    });
    {
        let (n, c) = (node.clone(), cancel.clone());
        background.spawn(async move { n.publish_newest_snapshot(c).await });
    }
    if let Some(ctx) = node.ctx.clone() {
        let (n, c) = (node.clone(), cancel.clone());
        background.spawn(async move {
            let (_, prog) = ctx.materializer.wait_for(Duration::from_secs(3600), |p| p.partitions > 0).await;
            if prog.partitions == 0 {
                return;
            }
            let cluster = match n.claim_store().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "the archive cannot start");
                    status_tx.send_modify(|s| s.last_error = Some(e.to_string()));
                    return;
                }
            };
            let _ = n.cluster.set(cluster);
            let res = crate::archive::run(
                &n.cfg.log.bootstrap,
                &n.cfg.log.topic,
                prog.partitions,
                n.objects.clone(),
                n.cfg.segment_max_records,
                Duration::from_millis(n.cfg.segment_flush_ms),
                status_tx,
                c,
            )
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "archiver stopped");
            }
        });
        if cfg.snapshot_interval_secs > 0 {
            let (n, c) = (node.clone(), cancel.clone());
            background.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(n.cfg.snapshot_interval_secs));
                every.tick().await;
                loop {
                    tokio::select! {
                        _ = c.cancelled() => return,
                        _ = every.tick() => {}
                    }
                    if let Err(e) = n.snapshot().await {
                        tracing::error!(error = %e, "scheduled snapshot failed");
                    }
                }
            });
        }
    }
    let handler: Handler = {
        let node = node.clone();
        Arc::new(move |req| {
            let node = node.clone();
            Box::pin(async move { node.handle(req).await })
        })
    };
    tracing::info!(%addr, objects = %node.objects.url, "replicator listening");
    let store = node.ctx.as_ref().map(|c| c.store.clone());
    let audit = audit.map(|a| a.with_context(node.ctx.clone()));
    Ok(supervise("replicator", addr, listener, handler, audit, serve, cancel, background, store))
}

impl ReplicatorNode {
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

    async fn snapshot(&self) -> Result<secretlog_schemas::archive::Manifest, ReplicatorError> {
        let ctx = self.ctx.as_ref().ok_or_else(|| ReplicatorError::Objects("sealed".into()))?;
        let _one = self.snapshot_lock.lock().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let cluster = loop {
            match self.cluster.get() {
                Some(c) => break c,
                None if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                None => return Err(ReplicatorError::Objects("the Kafka cluster id is not known yet".into())),
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
            secretlog_reader::kafka::cluster_id(&bootstrap, Duration::from_secs(60))
        })
        .await
        .map_err(|e| ReplicatorError::Objects(e.to_string()))??;
        let owner = json!({ "cluster": cluster, "topic": self.cfg.log.topic });
        let path = self.objects.path("cluster.json");
        match self.objects.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| ReplicatorError::Objects(e.to_string()))?;
                let found: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if found != owner {
                    return Err(ReplicatorError::Objects(format!(
                        "{} belongs to {found}, not to {owner}: give this cluster its own object store prefix",
                        self.objects.url
                    )));
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.objects
                    .store
                    .put(&path, object_store::PutPayload::from(owner.to_string().into_bytes()))
                    .await
                    .map_err(|e| ReplicatorError::Objects(e.to_string()))?;
            }
            Err(e) => return Err(ReplicatorError::Objects(e.to_string())),
        }
        Ok(cluster)
    }

    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        match req.path.as_str() {
            "v1/sys/health" => return self.health(),
            "metrics" => return metrics_response(),
            _ => {}
        }
        let Some(ctx) = &self.ctx else { return sealed_response() };
        // An `X-Secretlog-Index` makes a snapshot (or digest) include that write.
        match ctx.wait_for_index(&req).await {
            Ok(secretlog_reader::api::kv::Freshness::Fresh) => {}
            Ok(_) => return ApiError::new(412, "the replicator has not yet applied the requested index").into(),
            Err(e) => return e.into(),
        }
        if let Err(e) = ctx.authorize(&req).await {
            return e.into();
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "v1/sys/secretlog/digest") => ctx.read(&req).await.unwrap_or_else(ApiResponse::from),
            ("POST" | "PUT", "v1/sys/secretlog/snapshot") => match self.snapshot().await {
                Ok(m) => ApiResponse::data(&req.request_id, serde_json::to_value(&m).unwrap_or_default()),
                Err(e) => ApiError::unavailable(format!("snapshot failed: {e}")).into(),
            },
            ("GET" | "LIST", "v1/sys/secretlog/snapshots") => {
                match secretlog_reader::bootstrap::list_snapshots(&self.objects).await {
                    Ok(list) => ApiResponse::data(&req.request_id, json!({ "snapshots": list })),
                    Err(e) => ApiError::unavailable(e.to_string()).into(),
                }
            }
            _ => ApiError::unsupported_path().into(),
        }
    }

    fn health(&self) -> ApiResponse {
        let status = self.archive.borrow().clone();
        let lag = status.lag_seconds(now_ms());
        let progress = self.ctx.as_ref().map(|c| c.materializer.progress.borrow().clone());
        let problem = self
            .sealed
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
                "sealed": self.sealed.is_some(),
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
