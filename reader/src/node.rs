//! The read node: materializer + store + HTTP, started and stopped as one unit, on the node
//! runtime (`secretlog_node`); it answers reads from its own state as its read mode allows and
//! forwards writes to the leader.

use std::sync::Arc;
use std::time::Duration;

use secretlog_node::api::health::{HealthInput, Role, health};
use secretlog_node::api::kv::Freshness;
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse, ErrorKind, forward::Forwarder};
use secretlog_node::config::ReadMode;
use secretlog_node::context::ReadContext;
use secretlog_node::node::{Keys, Role as NodeRole, RunningNode, Unsealed, open_state};
use secretlog_schemas::topic::HEADER_INDEX;
use secretlog_schemas::{ConsistencyToken, Keyring};
use secretlog_state::NodeError;
use tokio_util::sync::CancellationToken;

use crate::config::{OnStale, ReaderConfig};
use crate::session::Sessions;

/// Start a reader; it runs until `cancel` fires.
pub async fn start(cfg: ReaderConfig, cancel: CancellationToken) -> Result<RunningNode, NodeError> {
    secretlog_node::telemetry::prometheus();
    secretlog_state::kafka::configure(cfg.log.kafka_config.as_deref())?;
    let listener = secretlog_node::api::bind(cfg.listen).await?;
    let addr = listener.local_addr().map_err(|e| NodeError::Config { field: "listen", reason: e.to_string() })?;
    let serve = secretlog_node::api::ServeOptions::new(cfg.max_request_bytes, &cfg.http)?;
    let keys = Keys::new("reader", &cfg.log, cancel.clone())?;
    let forwarder =
        Forwarder::new(cfg.writer_urls.clone(), Duration::from_secs(30)).trusting(cfg.http.tls_ca.as_deref())?;
    let region = cfg.region.clone();
    let name = format!("reader-{region}-{}", addr.port());
    let max_staleness =
        Duration::try_from_secs_f64(cfg.max_staleness).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
            NodeError::Config { field: "max-staleness", reason: "must be a positive number of seconds".into() }
        })?;
    let sessions = Sessions::new(cfg.session_max_tokens, SESSION_TTL);
    let node =
        Arc::new(ReaderNode { keys: keys.clone(), forwarder, region, name, cfg: cfg.clone(), max_staleness, sessions });
    let opener = node.clone();
    keys.start(move |k, c| opener.open(k, c)).await?;
    let handler = secretlog_node::node::handler(node.clone());
    tracing::info!(%addr, region = %node.region, "reader listening");
    Ok(keys.supervise(addr, listener, keys.audited(handler), serve, cancel))
}

struct ReaderNode {
    keys: Arc<Keys>,
    forwarder: Forwarder,
    region: String,
    /// The materializer's name in logs.
    name: String,
    cfg: ReaderConfig,
    max_staleness: Duration,
    /// Where the writes forwarded for each token landed (session reads).
    sessions: Sessions,
}

/// How long a session entry lives without a new write: longer than any staleness bound worth
/// having, so an entry only expires on a node that would not serve locally anyway.
const SESSION_TTL: Duration = Duration::from_secs(60);

impl NodeRole for ReaderNode {
    fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    fn health(&self, req: &ApiRequest) -> ApiResponse {
        let input = HealthInput {
            lease_left: None,
            role: Role::Reader { region: self.region.clone() },
            sealed: self.keys.sealed_reason(),
            progress: self.keys.current().map(|u| u.ctx.materializer.progress.borrow().clone()),
            max_lag_seconds: self.cfg.max_lag_seconds,
            max_staleness: Some(self.max_staleness),
            unavailable: None,
        };
        health(&input, req)
    }

    fn leader(&self) -> Option<ApiResponse> {
        let leader = self.keys.current().and_then(|u| self.leader_url(&u.ctx));
        Some(secretlog_node::api::sys::leader(false, leader.as_deref(), None))
    }

    /// Start materializing: what a reader runs while unsealed.
    async fn open(self: Arc<Self>, keyring: Arc<Keyring>, cancel: CancellationToken) -> Result<Unsealed, NodeError> {
        let (mut ctx, join) =
            open_state(&self.cfg.log, &self.cfg.data_dir, &self.name, keyring, cancel.clone()).await?;
        ctx.consistency_wait = Duration::from_millis(self.cfg.consistency_wait_ms);
        ctx.max_staleness = self.max_staleness;
        let unsealed = Unsealed::new(ctx, cancel);
        unsealed.spawn(async move {
            let _ = join.await;
        });
        Ok(unsealed)
    }

    /// A write goes to the leader; a read is answered here as its mode allows.
    async fn answer(self: Arc<Self>, unsealed: Arc<Unsealed>, req: ApiRequest) -> ApiResponse {
        let ctx = &unsealed.ctx;
        if req.is_write() {
            let forwarder = self.forwarder.vouching(ctx.keyring.clone());
            let resp = forwarder.forward(&req, self.leader_url(ctx).as_deref()).await;
            self.remember(ctx, &req, &resp);
            return resp;
        }
        match self.read(ctx, &req).await {
            Ok(r) => r,
            Err(e) => ApiResponse::from(e).with_header(secretlog_schemas::topic::HEADER_APPLIED, ctx.applied_token()),
        }
    }
}

impl ReaderNode {
    fn leader_url(&self, ctx: &ReadContext) -> Option<String> {
        ctx.materializer.progress.borrow().leader.as_ref().map(|l| l.url.clone())
    }

    /// Note where a forwarded write landed for its token's session reads: its index when
    /// accepted; when the outcome may be anything (a 5xx after the write left), that the token
    /// reads strong for a while.
    fn remember(&self, ctx: &ReadContext, req: &ApiRequest, resp: &ApiResponse) {
        let Some(token) = req.token.as_deref() else { return };
        let now = std::time::Instant::now();
        let applied = ctx.materializer.progress.borrow().applied.clone();
        if resp.status >= 500 {
            self.sessions.unknown(token, &applied, now);
            return;
        }
        let index = resp.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(HEADER_INDEX)).map(|(_, v)| v);
        if let Some(position) = index.and_then(|v| v.parse::<ConsistencyToken>().ok()) {
            self.sessions.wrote(token, &position, &applied, now);
        }
    }

    /// The consistency a read asked for, or this reader's default.
    fn mode(&self, req: &ApiRequest) -> Result<ReadMode, ApiError> {
        match req.consistency.as_deref() {
            Some(m) => m.parse().map_err(ApiError::bad_request),
            None => Ok(self.cfg.consistency),
        }
    }

    /// Wait until this node may answer `req` as its mode requires; see DESIGN.md, "Consistency".
    async fn freshness(&self, ctx: &ReadContext, req: &ApiRequest, mode: ReadMode) -> Result<Freshness, ApiError> {
        let mut position = match req.index.as_deref() {
            Some(raw) => {
                raw.parse().map_err(|e: secretlog_schemas::topic::BadToken| ApiError::bad_request(e.to_string()))?
            }
            None => ConsistencyToken::default(),
        };
        let mut strong = mode == ReadMode::Strong;
        if mode == ReadMode::Session {
            let applied = ctx.materializer.progress.borrow().applied.clone();
            let needs = self.sessions.needs(req.token.as_deref(), &applied, std::time::Instant::now());
            strong |= needs.strong;
            position.merge(&needs.position);
        }
        if strong {
            metrics::counter!("secretlog_reader_strong_reads_total").increment(1);
            return Ok(match ctx.wait_strong().await {
                Ok(()) => Freshness::Fresh,
                Err(why) => Freshness::Unconfirmed(why),
            });
        }
        if !ctx.wait_position(&position).await {
            return Ok(Freshness::Stale);
        }
        Ok(ctx.within_bound(req).await)
    }

    async fn read(&self, ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
        // The wait comes first: a client holding a fresh index may be ahead of this node on the
        // control records too (a new token). The wait is bounded, so it costs an
        // unauthenticated caller nothing but its own time.
        let mode = self.mode(req)?;
        let freshness = self.freshness(ctx, req, mode).await?;
        match ctx.authorize(req).await {
            Ok(()) => {}
            // Never deny from control state not confirmed current: a token created a moment ago
            // through another node is in the log already. Check as a strong read, then decide.
            Err(e) if e.status == 403 && mode != ReadMode::Strong => match ctx.wait_strong().await {
                Ok(()) => ctx.authorize(req).await?,
                Err(why) => {
                    tracing::info!(request_id = %req.request_id, %why, "denial not confirmed: forwarding the read");
                    return Ok(self.forwarder.forward(req, self.leader_url(ctx).as_deref()).await);
                }
            },
            Err(e) => return Err(e),
        }
        match freshness {
            Freshness::Fresh => ctx.read(req).await,
            Freshness::Stale => {
                metrics::counter!("secretlog_reader_stale_reads_total").increment(1);
                match self.cfg.on_stale {
                    OnStale::Forward => Ok(self.forwarder.forward(req, self.leader_url(ctx).as_deref()).await),
                    OnStale::Fail => Err(ApiError::new(
                        ErrorKind::NotYetApplied,
                        "this reader has not yet applied the requested index",
                    )),
                }
            }
            Freshness::Unconfirmed(why) => {
                metrics::counter!("secretlog_reader_unconfirmed_reads_total").increment(1);
                match self.cfg.on_stale {
                    OnStale::Forward => Ok(self.forwarder.forward(req, self.leader_url(ctx).as_deref()).await),
                    OnStale::Fail => Err(ApiError::unavailable(why)),
                }
            }
        }
    }
}
