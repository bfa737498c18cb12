//! What every node runs on: [`Keys`], the root-key state every node shares: sealed, or unsealed with what runs while it holds the key.
//!
//! A node holds the key for one *unsealed lifetime* ([`Unsealed`]): from the moment it gets the
//! key (at start from `SECRETLOG_ROOT_KEY` or a key file, or at runtime from enough Shamir
//! shares through `/v1/sys/unseal`) until `/v1/sys/seal` or shutdown. The lifetime owns the
//! [`ReadContext`] (store, keyring, materializer), the audit device that HMACs under the key,
//! and the tasks that run meanwhile (the materializer; a writer's election campaign) under one
//! cancellation token. Sealing cancels the token, waits for the tasks, closes the store and
//! drops the lifetime, so the keyring (zeroized on drop) leaves memory.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use secretlog_schemas::{Keyring, RootKey};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroize;

use crate::api::seal::{SealStatus, UnsealRequest, authorize_seal, parse_unseal};
use crate::api::{ApiError, ApiRequest, ApiResponse, Handler, Route, node_handler};
use crate::audit::Auditor;
use crate::config::LogConfig;
use crate::context::ReadContext;
use crate::unseal::{SealConfig, Unsealer};
use secretlog_state::error::NodeError;
use secretlog_state::materializer::{self, MaterializerConfig};
use secretlog_state::store::{Store, StoreConfig};

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

/// Open the store and start the materializer for a node.
pub async fn open_state(
    log: &LogConfig,
    data_dir: &std::path::Path,
    node_name: &str,
    keyring: Arc<Keyring>,
    cancel: CancellationToken,
) -> Result<(ReadContext, tokio::task::JoinHandle<()>), NodeError> {
    let store = Store::open(&StoreConfig {
        dir: data_dir.to_path_buf(),
        cache_memory_bytes: log.cache_memory_mb * 1024 * 1024,
        cache_disk_bytes: log.cache_disk_mb * 1024 * 1024,
    })
    .await?;
    store.track_absent_keys();
    if let Some(url) = &log.object_store {
        let objects = secretlog_state::objects::Objects::open(url)?;
        if store.partitions().await?.is_empty() {
            let bootstrap = log.bootstrap.clone();
            let cluster = tokio::task::spawn_blocking(move || {
                secretlog_state::kafka::cluster_id(&bootstrap, Duration::from_secs(60))
            })
            .await??;
            secretlog_state::bootstrap::bootstrap_if_empty(&store, &objects, &cluster, &log.topic).await?;
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
            default_mount: Arc::new(secretlog_state::mounts::DefaultMount::new(&log.mount)),
            consistency_wait: Duration::from_secs(2),
            max_staleness: Duration::from_secs(10),
            auth: Arc::default(),
        },
        join,
    ))
}

/// Answer for every API path of a sealed node.
pub(crate) fn sealed_response() -> ApiResponse {
    ApiError::new(crate::api::ErrorKind::Sealed, "Vault is sealed").into()
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

/// What a node adds to the runtime: how it reports its health (and the leader), how it opens its
/// state for an unsealed lifetime, and how it answers a request once the opening steps every node
/// shares have passed ([`serve`]).
pub trait Role: Send + Sync + 'static {
    /// Its root-key state.
    fn keys(&self) -> &Arc<Keys>;
    /// `sys/health` as this node answers it.
    fn health(&self, req: &ApiRequest) -> ApiResponse;
    /// `GET sys/leader`, if this node answers it.
    fn leader(&self) -> Option<ApiResponse> {
        None
    }
    /// Start its state for one unsealed lifetime.
    fn open(
        self: Arc<Self>,
        keyring: Arc<Keyring>,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Unsealed, NodeError>> + Send;
    /// Answer a request from the unsealed lifetime (the role's own steps: the consistency wait,
    /// authorization, staleness, then the route's handler).
    fn answer(self: Arc<Self>, unsealed: Arc<Unsealed>, req: ApiRequest) -> impl Future<Output = ApiResponse> + Send;
}

/// The handler of a node: every request goes through [`serve`].
pub fn handler<R: Role>(node: Arc<R>) -> Handler {
    node_handler(node, serve)
}

/// The opening steps every node runs on a request, in one order, by its [`Route`]: health,
/// metrics and `sys/leader` (no token, answered while sealed); then the seal endpoints, and
/// nothing while sealed ([`Keys::open_request`]); then the role's answer.
pub async fn serve<R: Role>(node: Arc<R>, mut req: ApiRequest) -> ApiResponse {
    match req.route() {
        Route::Health => return node.health(&req),
        Route::Metrics => return metrics_response(),
        Route::Leader if req.method == "GET" => {
            if let Some(resp) = node.leader() {
                return resp;
            }
        }
        _ => {}
    }
    let keys = node.keys().clone();
    let opener = node.clone();
    let unsealed = match keys.open_request(&mut req, move |k, c| opener.open(k, c)).await {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    node.answer(unsealed, req).await
}

/// What a node runs while it holds the root key: the state it answers from, the audit device
/// that HMACs under the key, and the tasks that stop when it seals.
pub struct Unsealed {
    pub ctx: ReadContext,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    auditor: Option<Arc<Auditor>>,
}

impl Unsealed {
    /// A lifetime around `ctx`; `cancel` is the token [`Keys`] handed to the opener.
    pub fn new(ctx: ReadContext, cancel: CancellationToken) -> Self {
        Unsealed { ctx, cancel, tasks: Mutex::new(JoinSet::new()), auditor: None }
    }

    /// Cancelled when the node seals or shuts down.
    pub(crate) fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Run `task` for this lifetime: sealing waits for it to end (it should end on the token).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).spawn(task);
    }
}

/// Why opening a lifetime did not unseal the node.
#[derive(Debug)]
enum OpenError {
    /// The key is not the one the init record names.
    Mismatch,
    ShuttingDown,
    Failed(NodeError),
}

/// A node's root-key state: sealed, or unsealed with an [`Unsealed`] lifetime. Also answers the
/// seal endpoints (`sys/seal-status`, `sys/unseal`, `sys/seal`) for the node that holds it.
pub struct Keys {
    role: &'static str,
    log: LogConfig,
    /// The init record, when the node may be unsealed with shares.
    unsealer: Mutex<Option<Unsealer>>,
    seal: Option<SealConfig>,
    current: RwLock<Option<Arc<Unsealed>>>,
    why_sealed: RwLock<String>,
    /// Serialises unsealing and sealing.
    transition: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    /// The audit device while sealed (no key: it writes placeholders instead of HMACs).
    sealed_auditor: Option<Arc<Auditor>>,
}

/// What opens a lifetime: given the keyring and the lifetime's token, start the node's state.
pub trait Opener: FnOnce(Arc<Keyring>, CancellationToken) -> Self::Fut {
    type Fut: Future<Output = Result<Unsealed, NodeError>>;
}
impl<F, Fut> Opener for F
where
    F: FnOnce(Arc<Keyring>, CancellationToken) -> Fut,
    Fut: Future<Output = Result<Unsealed, NodeError>>,
{
    type Fut = Fut;
}

impl Keys {
    /// A sealed node's key state. `shutdown` is the node's token: lifetimes are its children.
    pub fn new(role: &'static str, log: &LogConfig, shutdown: CancellationToken) -> Result<Arc<Keys>, NodeError> {
        let seal = log.seal_config.as_deref().map(SealConfig::load).transpose()?;
        let sealed_auditor = Some(Auditor::from_config(log, role)?).filter(Auditor::has_own_devices).map(Arc::new);
        let why = match &seal {
            Some(c) => format!("waiting for {} of {} key shares (PUT /v1/sys/unseal)", c.threshold, c.shares),
            None => "no root key".to_string(),
        };
        secretlog_state::materializer::set_sealed(true);
        Ok(Arc::new(Keys {
            role,
            log: log.clone(),
            unsealer: Mutex::new(seal.clone().map(Unsealer::new)),
            seal,
            current: RwLock::new(None),
            why_sealed: RwLock::new(why),
            transition: tokio::sync::Mutex::new(()),
            shutdown,
            sealed_auditor,
        }))
    }

    /// Unseal with the key given at start (`SECRETLOG_ROOT_KEY` or a key file), if any; without
    /// one the node stays sealed. A key that does not match the init record leaves it sealed too.
    pub async fn start(&self, open: impl Opener) -> Result<(), NodeError> {
        let key = match RootKey::load(self.log.root_key_file.as_deref()) {
            Ok(key) => key,
            Err(e) if self.seal.is_some() => {
                tracing::warn!(role = self.role, key = %e, why = %self.why_sealed(), "SEALED until unsealed with key shares");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(reason = %e, role = self.role, "no usable root key: this node is SEALED and serves nothing");
                *self.why_sealed.write().unwrap_or_else(|e| e.into_inner()) = e.to_string();
                return Ok(());
            }
        };
        match self.unseal_with(key, open).await {
            Ok(()) => Ok(()),
            Err(OpenError::Mismatch) => {
                let why = "the root key given does not match the init record's key check";
                tracing::error!(role = self.role, "{why}: this node is SEALED");
                *self.why_sealed.write().unwrap_or_else(|e| e.into_inner()) = why.into();
                Ok(())
            }
            Err(OpenError::ShuttingDown) => Ok(()),
            Err(OpenError::Failed(e)) => Err(e),
        }
    }

    /// The current lifetime, while unsealed.
    pub fn current(&self) -> Option<Arc<Unsealed>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn why_sealed(&self) -> String {
        self.why_sealed.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the node serves nothing: no key, or a key that does not match the log's.
    pub fn sealed_reason(&self) -> Option<String> {
        match self.current() {
            None => Some(self.why_sealed()),
            Some(u) => u.ctx.materializer.progress.borrow().wrong_key.clone(),
        }
    }

    async fn unseal_with(&self, key: RootKey, open: impl Opener) -> Result<(), OpenError> {
        let _t = self.transition.lock().await;
        if self.shutdown.is_cancelled() {
            return Err(OpenError::ShuttingDown);
        }
        if self.current().is_some() {
            return Ok(());
        }
        let keyring = Arc::new(Keyring::from_root(&key));
        drop(key);
        if self.seal.as_ref().is_some_and(|c| !c.matches(&keyring)) {
            return Err(OpenError::Mismatch);
        }
        // The lifetime's own audit device: it HMACs under this key and forgets it on seal.
        let auditor = Auditor::from_config(&self.log, self.role).map_err(OpenError::Failed)?;
        let cancel = self.shutdown.child_token();
        let mut unsealed = match open(keyring, cancel.clone()).await {
            Ok(u) => u,
            Err(e) => {
                cancel.cancel();
                return Err(OpenError::Failed(e));
            }
        };
        let auditor = Arc::new(auditor.with_context(Some(unsealed.ctx.clone())));
        // Devices enabled through the log are opened as the node applies them (not only when a
        // request first meets them), so a device this node cannot open is reported at once.
        unsealed.spawn(auditor.clone().follow_the_log(unsealed.ctx.clone(), unsealed.cancel_token()));
        unsealed.auditor = Some(auditor);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(unsealed));
        secretlog_state::materializer::set_sealed(false);
        tracing::info!(role = self.role, "unsealed");
        Ok(())
    }

    /// Seal: stop what runs while unsealed, close the store and drop the lifetime (and with it
    /// the keyring). `false` if the node was sealed already.
    pub async fn seal(&self, why: &str) -> bool {
        let _t = self.transition.lock().await;
        let Some(u) = self.current.write().unwrap_or_else(|e| e.into_inner()).take() else { return false };
        *self.why_sealed.write().unwrap_or_else(|e| e.into_inner()) = why.to_string();
        if let Some(un) = self.unsealer.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            un.reset();
        }
        secretlog_state::materializer::set_sealed(true);
        u.cancel.cancel();
        let mut tasks = std::mem::take(&mut *u.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
        if let Err(e) = u.ctx.store.close().await {
            tracing::warn!(error = %e, "closing the store");
        }
        drop(u);
        if self.shutdown.is_cancelled() {
            tracing::info!(role = self.role, "the root key and the state opened with it are dropped");
        } else {
            tracing::warn!(role = self.role, why, "SEALED: the root key and the state opened with it are dropped");
        }
        true
    }

    fn status(&self) -> ApiResponse {
        let current = self.current();
        let unsealer = self.unsealer.lock().unwrap_or_else(|e| e.into_inner());
        let mut status = SealStatus::of(current.is_none(), unsealer.as_ref());
        status.cluster_id = current.map(|u| crate::api::seal::cluster_id(&u.ctx.keyring));
        ApiResponse::json(200, &status.body())
    }

    /// The opening steps every node runs on a request, in this order, once the paths it answers
    /// before anything else (health, metrics, `sys/leader`) are done: the seal endpoints, then
    /// nothing while sealed — no key, or a key the log's records were not written under. `Ok` is
    /// the lifetime to serve from; `Err` the answer already decided.
    pub async fn open_request(&self, req: &mut ApiRequest, open: impl Opener) -> Result<Arc<Unsealed>, ApiResponse> {
        if let Some(resp) = self.answer(req, open).await {
            return Err(resp);
        }
        match self.current() {
            Some(u) if u.ctx.materializer.progress.borrow().wrong_key.is_none() => Ok(u),
            _ => Err(sealed_response()),
        }
    }

    /// Answer the seal endpoints; `None` for any other path. `open` starts the node's state once
    /// enough shares are in.
    pub async fn answer(&self, req: &mut ApiRequest, open: impl Opener) -> Option<ApiResponse> {
        let (get, put) = (req.method == "GET", matches!(req.method.as_str(), "PUT" | "POST"));
        Some(match req.route() {
            Route::SealStatus if get => self.status(),
            Route::Unseal if put => self.unseal_api(req, open).await,
            Route::Seal if put => self.seal_api(req).await,
            Route::SealStatus | Route::Unseal | Route::Seal => ApiError::method_not_allowed().into(),
            _ => return None,
        })
    }

    async fn unseal_api(&self, req: &mut ApiRequest, open: impl Opener) -> ApiResponse {
        let body = std::mem::take(&mut req.body);
        let parsed = parse_unseal(&body);
        if let Ok(mut b) = body.try_into_mut() {
            b.as_mut().zeroize();
        }
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        if self.current().is_some() {
            return self.status();
        }
        let key = {
            let mut guard = self.unsealer.lock().unwrap_or_else(|e| e.into_inner());
            let Some(u) = guard.as_mut() else {
                return ApiError::bad_request(
                    "this node has no init record (--seal-config): it takes its root key from SECRETLOG_ROOT_KEY or a key file",
                )
                .into();
            };
            match parsed {
                UnsealRequest::Reset => {
                    u.reset();
                    tracing::info!(request_id = %req.request_id, "unseal progress reset");
                    None
                }
                UnsealRequest::Share(text) => match u.submit(&text) {
                    Ok(None) => {
                        tracing::info!(request_id = %req.request_id, progress = u.progress(), threshold = u.config().threshold, "unseal share accepted");
                        None
                    }
                    Ok(Some(key)) => Some(key),
                    Err(e) => {
                        tracing::warn!(request_id = %req.request_id, error = %e, "unseal share refused");
                        return ApiError::from(e).into();
                    }
                },
            }
        };
        let Some(key) = key else { return self.status() };
        match self.unseal_with(key, open).await {
            Ok(()) => self.status(),
            Err(OpenError::Mismatch) => ApiError::from(crate::unseal::UnsealError::WrongKey).into(),
            Err(OpenError::ShuttingDown) => ApiError::unavailable("shutting down").into(),
            Err(OpenError::Failed(e)) => {
                tracing::error!(error = %e, "the key was reconstructed but the node could not start: still sealed");
                // What failed is in the log; the client learns whether to retry, not the detail.
                if e.is_transient() {
                    ApiError::unavailable(
                        "unsealing could not start the node yet (Kafka unavailable); submit the shares again",
                    )
                } else {
                    ApiError::internal()
                }
                .into()
            }
        }
    }

    async fn seal_api(&self, req: &ApiRequest) -> ApiResponse {
        let Some(u) = self.current() else { return sealed_response() };
        if let Err(e) = authorize_seal(&u.ctx, req).await {
            return e.into();
        }
        drop(u);
        tracing::warn!(request_id = %req.request_id, "sealing on request");
        self.seal("sealed through /v1/sys/seal").await;
        ApiResponse::no_content()
    }

    /// `inner` behind the audit device of the moment: the lifetime's (HMACs under the key) while
    /// unsealed, the sealed one otherwise.
    pub fn audited(self: &Arc<Self>, inner: Handler) -> Handler {
        let keys = self.clone();
        Arc::new(move |req| {
            let auditor = keys.current().and_then(|u| u.auditor.clone()).or_else(|| keys.sealed_auditor.clone());
            let inner = inner.clone();
            Box::pin(async move {
                match auditor {
                    Some(a) => a.wrap(inner)(req).await,
                    None => inner(req).await,
                }
            })
        })
    }

    /// Serve `handler` (already [`Keys::audited`]) until `cancel` fires, then seal — which stops
    /// the lifetime's tasks and closes the store after the last request was answered.
    pub fn supervise(
        self: &Arc<Self>,
        addr: SocketAddr,
        listener: tokio::net::TcpListener,
        handler: Handler,
        opts: impl Into<crate::api::ServeOptions>,
        cancel: CancellationToken,
    ) -> RunningNode {
        // SIGHUP reopens the audit files (logrotate); the handler is in place before the node
        // serves, so no SIGHUP from then on takes the default action (exit).
        let hangup = crate::audit::reopen_on_hangup(cancel.clone());
        let server = crate::api::spawn_server(listener, handler, opts, cancel.clone());
        let keys = self.clone();
        let join = tokio::spawn(async move {
            let _ = server.await;
            let _ = hangup.await;
            keys.seal("shutting down").await;
            tracing::info!(role = keys.role, "stopped");
        });
        RunningNode { addr, cancel, join }
    }
}
