//! The replicator node: archiver, snapshot schedule, and a small HTTP surface (health with the
//! archive lag, metrics, on-demand snapshots).

use std::sync::Arc;
use std::time::Duration;

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
}

/// Start the replicator; it runs until `cancel` fires.
pub async fn start(cfg: ReplicatorConfig, cancel: CancellationToken) -> Result<RunningNode, ReplicatorError> {
    secretlog_reader::telemetry::prometheus();
    let listener = secretlog_reader::api::bind(cfg.listen).await?;
    let addr = listener.local_addr().map_err(|e| ReplicatorError::Objects(e.to_string()))?;
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
    });
    if let Some(ctx) = node.ctx.clone() {
        let (n, c) = (node.clone(), cancel.clone());
        background.spawn(async move {
            let (_, prog) = ctx.materializer.wait_for(Duration::from_secs(3600), |p| p.partitions > 0).await;
            if prog.partitions == 0 {
                return;
            }
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
    Ok(supervise("replicator", addr, listener, handler, 64 * 1024, cancel, background, store))
}

impl ReplicatorNode {
    async fn snapshot(&self) -> Result<secretlog_schemas::archive::Manifest, ReplicatorError> {
        let ctx = self.ctx.as_ref().ok_or_else(|| ReplicatorError::Objects("sealed".into()))?;
        let _one = self.snapshot_lock.lock().await;
        let m =
            crate::snapshot::create(&ctx.store, &self.objects, &self.cfg.log.bootstrap, &self.cfg.log.topic).await?;
        crate::snapshot::apply_retention(
            &self.objects,
            self.cfg.keep_snapshots,
            Duration::from_secs(self.cfg.keep_snapshots_secs),
        )
        .await?;
        Ok(m)
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
