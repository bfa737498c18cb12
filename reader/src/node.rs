//! A read node: materializer + store + HTTP, started and stopped as one unit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secretlog_schemas::{Keyring, RootKey};
use tokio_util::sync::CancellationToken;

use crate::api::health::{HealthInput, Role, health};
use crate::api::kv::{Freshness, ReadContext};
use crate::api::{ApiError, ApiRequest, ApiResponse, Handler, forward::Forwarder};
use crate::audit::Auditor;
use crate::config::{LogConfig, OnStale, ReaderConfig};
use crate::error::ReaderError;
use crate::materializer::{self, MaterializerConfig};
use crate::store::{Store, StoreConfig};

/// A started node (reader or writer).
pub struct RunningNode {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub cancel: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Wait until the node has shut down (after `cancel`).
    pub async fn wait(self) {
        let _ = self.join.await;
    }
}

/// Serve `handler` until `cancel` fires; then let the node's background tasks finish and close
/// its store, in that order, so the last applied batch is flushed before the process exits.
/// With an `audit` device every request and answer goes through it first (see [`crate::audit`]).
#[allow(clippy::too_many_arguments)]
pub fn supervise(
    role: &'static str,
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    handler: Handler,
    audit: Option<Auditor>,
    max_body: u64,
    cancel: CancellationToken,
    mut background: tokio::task::JoinSet<()>,
    store: Option<Arc<Store>>,
) -> RunningNode {
    let handler = match audit {
        Some(a) => Arc::new(a).wrap(handler),
        None => handler,
    };
    let server = crate::api::spawn_server(listener, handler, max_body, cancel.clone());
    let join = tokio::spawn(async move {
        let _ = server.await;
        while background.join_next().await.is_some() {}
        if let Some(store) = store
            && let Err(e) = store.close().await
        {
            tracing::warn!(error = %e, "closing the store");
        }
        tracing::info!(role, "stopped");
    });
    RunningNode { addr, cancel, join }
}

/// Load the keyring, or say why the node is sealed; either way `secretlog_sealed` says so (the
/// materializer raises it later if the log turns out to be sealed under another key).
pub fn load_keyring(log: &LogConfig) -> Result<Arc<Keyring>, String> {
    let keyring = RootKey::load(log.root_key_file.as_deref())
        .map(|k| Arc::new(Keyring::from_root(&k)))
        .map_err(|e| e.to_string());
    crate::telemetry::set_sealed(keyring.is_err());
    keyring
}

/// Open the store and start the materializer for a node.
pub async fn open_state(
    log: &LogConfig,
    data_dir: &std::path::Path,
    node_name: &str,
    keyring: Arc<Keyring>,
    cancel: CancellationToken,
) -> Result<(ReadContext, tokio::task::JoinHandle<()>), ReaderError> {
    let store = Store::open(&StoreConfig {
        dir: data_dir.to_path_buf(),
        cache_memory_bytes: log.cache_memory_mb * 1024 * 1024,
        cache_disk_bytes: log.cache_disk_mb * 1024 * 1024,
    })
    .await?;
    if let Some(url) = &log.object_store {
        let objects = crate::objects::Objects::open(url)?;
        if store.partitions().await?.is_empty() {
            let bootstrap = log.bootstrap.clone();
            let cluster =
                tokio::task::spawn_blocking(move || crate::kafka::cluster_id(&bootstrap, Duration::from_secs(60)))
                    .await
                    .map_err(|e| ReaderError::Storage(e.to_string()))??;
            crate::bootstrap::bootstrap_if_empty(&store, &objects, &cluster, &log.topic).await?;
        }
    }
    let (handle, join) = materializer::spawn(
        MaterializerConfig {
            bootstrap: log.bootstrap.clone(),
            topic: log.topic.clone(),
            node_name: node_name.to_string(),
        },
        store.clone(),
        keyring.clone(),
        cancel,
    )
    .await?;
    Ok((
        ReadContext {
            store,
            keyring,
            materializer: handle,
            mount: log.mount.clone(),
            consistency_wait: Duration::from_secs(2),
        },
        join,
    ))
}

/// Answer for every API path of a sealed node.
pub fn sealed_response() -> ApiResponse {
    ApiError::new(503, "Vault is sealed").into()
}

/// Render `/metrics`.
pub fn metrics_response() -> ApiResponse {
    let text = crate::telemetry::prometheus().map(|h| h.render()).unwrap_or_default();
    ApiResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/plain; version=0.0.4".into())],
        body: text.into_bytes(),
    }
}

/// Start a reader; it runs until `cancel` fires.
pub async fn start(cfg: ReaderConfig, cancel: CancellationToken) -> Result<RunningNode, ReaderError> {
    crate::telemetry::prometheus();
    let listener = crate::api::bind(cfg.listen).await?;
    let addr = listener.local_addr().map_err(|e| ReaderError::Config { field: "listen", reason: e.to_string() })?;
    let audit = Auditor::from_config(&cfg.log, "reader")?;
    let forwarder = Forwarder::new(cfg.writer_urls.clone(), Duration::from_secs(30));
    let region = cfg.region.clone();
    let (ctx, mat_join, sealed) = match load_keyring(&cfg.log) {
        Ok(keyring) => {
            let (mut ctx, join) = open_state(
                &cfg.log,
                &cfg.data_dir,
                &format!("reader-{region}-{}", addr.port()),
                keyring,
                cancel.clone(),
            )
            .await?;
            ctx.consistency_wait = Duration::from_millis(cfg.consistency_wait_ms);
            (Some(ctx), Some(join), None)
        }
        Err(reason) => {
            tracing::error!(%reason, "no usable root key: this reader is SEALED and serves nothing");
            (None, None, Some(reason))
        }
    };
    let node = Arc::new(ReaderNode { ctx, sealed, forwarder, region, cfg: cfg.clone() });
    let handler: Handler = {
        let node = node.clone();
        Arc::new(move |req| {
            let node = node.clone();
            Box::pin(async move { node.handle(req).await })
        })
    };
    tracing::info!(%addr, region = %node.region, "reader listening");
    let mut background = tokio::task::JoinSet::new();
    if let Some(j) = mat_join {
        background.spawn(async move {
            let _ = j.await;
        });
    }
    let store = node.ctx.as_ref().map(|c| c.store.clone());
    let audit = audit.map(|a| a.with_context(node.ctx.clone()));
    Ok(supervise("reader", addr, listener, handler, audit, cfg.max_request_bytes, cancel, background, store))
}

struct ReaderNode {
    ctx: Option<ReadContext>,
    sealed: Option<String>,
    forwarder: Forwarder,
    region: String,
    cfg: ReaderConfig,
}

impl ReaderNode {
    fn leader_url(&self, ctx: &ReadContext) -> Option<String> {
        ctx.materializer.progress.borrow().leader.as_ref().map(|l| l.url.clone())
    }

    /// Why the node serves nothing: no key, or a key that does not match the log's.
    fn sealed_reason(&self) -> Option<String> {
        self.sealed
            .clone()
            .or_else(|| self.ctx.as_ref().and_then(|c| c.materializer.progress.borrow().wrong_key.clone()))
    }

    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        match req.path.as_str() {
            "v1/sys/health" => {
                let input = HealthInput {
                    role: Role::Reader { region: self.region.clone() },
                    sealed: self.sealed_reason(),
                    progress: self.ctx.as_ref().map(|c| c.materializer.progress.borrow().clone()),
                    max_lag_seconds: self.cfg.max_lag_seconds,
                    unavailable: None,
                };
                return health(&input, &req);
            }
            "metrics" => return metrics_response(),
            _ => {}
        }
        let Some(ctx) = &self.ctx else { return sealed_response() };
        if self.sealed_reason().is_some() {
            return sealed_response();
        }
        if req.is_write() {
            return self.forwarder.forward(&req, self.leader_url(ctx).as_deref()).await;
        }
        match self.read(ctx, &req).await {
            Ok(r) => r,
            Err(e) => ApiResponse::from(e).with_header(secretlog_schemas::topic::HEADER_APPLIED, ctx.applied_token()),
        }
    }

    async fn read(&self, ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
        // The wait comes first: a client holding a fresh index may be ahead of this node on the
        // control records too (a new token). The wait is bounded, so it costs an
        // unauthenticated caller nothing but its own time.
        let freshness = ctx.wait_for_index(req).await?;
        ctx.authorize(req).await?;
        if freshness == Freshness::Stale {
            metrics::counter!("secretlog_reader_stale_reads_total").increment(1);
            return match self.cfg.on_stale {
                OnStale::Forward => Ok(self.forwarder.forward(req, self.leader_url(ctx).as_deref()).await),
                OnStale::Fail => Err(ApiError::new(412, "this reader has not yet applied the requested index")),
            };
        }
        ctx.read(req).await
    }
}
