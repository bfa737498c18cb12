//! The HTTP surface shared by readers and writers: Vault-style request parsing, error bodies,
//! KV v2 read handlers, health, forwarding, and the warp glue.
//!
//! Routing is done on a plain [`ApiRequest`] rather than with a tree of warp filters: Vault's API
//! needs the `LIST` method, catch-all secret paths and one error format for everything, and a
//! plain function of a plain struct is easy to test.

pub mod auth;
pub mod auth_methods;
pub mod error;
pub mod forward;
pub mod health;
pub mod key_status;
pub mod kv;
pub mod limits;
pub mod response;
pub mod route;
pub mod seal;
pub mod sys;
pub mod tls;
pub mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use warp::Filter;

use crate::config::HttpConfig;
use secretlog_state::error::NodeError;

pub use error::{ApiError, ErrorKind};
pub use limits::Limits;
pub use response::ApiResponse;
pub use route::Route;

/// A request as the handlers see it.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    /// Upper-case method; `GET ...?list=true` is rewritten to `LIST`.
    pub method: String,
    /// Path without the leading `/`, percent-decoded, e.g. `v1/secret/data/app/db`.
    pub path: String,
    /// The same path as it came on the request line: without the leading `/`, still
    /// percent-encoded. A forwarder sends this on, so the node it forwards to decodes the very
    /// bytes this one decoded (see [`forward`]).
    pub raw_path: String,
    /// The raw query string (forwarded unchanged).
    pub raw_query: String,
    pub query: HashMap<String, String>,
    pub token: Option<String>,
    /// `X-Secretlog-Index`, unparsed.
    pub index: Option<String>,
    /// `X-Secretlog-Consistency`, unparsed.
    pub consistency: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Id for logs and the response's `request_id`.
    pub request_id: String,
    /// Set when another secretlog node forwarded this request: it is never forwarded again, so
    /// two nodes with stale ideas of the leader cannot bounce a write between them.
    pub forwarded: bool,
    /// The request's [`Route`], parsed from `path` the first time [`ApiRequest::route`] asks.
    pub parsed_route: std::sync::OnceLock<Route>,
}

impl ApiRequest {
    /// Path segments after `v1/`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.strip_prefix("v1/").unwrap_or("").split('/').collect()
    }
    /// What this request is for: its path parsed once into the route table's [`Route`].
    pub fn route(&self) -> Route {
        *self.parsed_route.get_or_init(|| Route::of(&self.path))
    }
    /// Whether this request changes state (and must go to the leader writer).
    pub fn is_write(&self) -> bool {
        self.route().is_write(&self.method)
    }
    pub(crate) fn query_bool(&self, name: &str) -> Option<bool> {
        self.query.get(name).map(|v| matches!(v.as_str(), "" | "true" | "1" | "yes"))
    }
}

/// Something that answers requests (a reader node, a writer node).
pub(crate) type Handler = Arc<dyn Fn(ApiRequest) -> Pin<Box<dyn Future<Output = ApiResponse> + Send>> + Send + Sync>;

/// The [`Handler`] of a node: every request goes to `handle(node, request)`.
pub fn node_handler<N, F, Fut>(node: Arc<N>, handle: F) -> Handler
where
    N: Send + Sync + 'static,
    F: Fn(Arc<N>, ApiRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiResponse> + Send + 'static,
{
    Arc::new(move |req| Box::pin(handle(node.clone(), req)))
}

fn parse_query(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// Read a request body, refusing (413) once it grows past `max` bytes — with or without a
/// `Content-Length`.
async fn read_body<S, B>(body: S, max: u64) -> Result<Bytes, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    let mut read: u64 = 0;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| ApiError::bad_request("malformed request body"))?;
        read += chunk.remaining() as u64;
        if read > max {
            // Read the rest (dropping it), up to a bound, before answering: closing the
            // connection on a client that is still sending resets it, and the client would see
            // a reset instead of the 413 (found by the differential tests; Go's server, and so
            // Vault, answer it).
            if read > max.saturating_mul(4).max(DRAIN_MAX_BYTES) {
                return Err(ApiError::too_large());
            }
            out.clear();
            continue;
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    if read > max {
        return Err(ApiError::too_large());
    }
    Ok(out.freeze())
}

/// How much of an oversized body is read and dropped before the 413, at least.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The request's token: `X-Vault-Token`, or an `Authorization: Bearer` header.
fn token_of(headers: &warp::http::HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-vault-token")
        .or_else(|| header("authorization").and_then(|a| a.strip_prefix("Bearer ")))
        .map(str::to_string)
}

fn build_request(
    method: &warp::http::Method,
    path: &str,
    raw_query: String,
    headers: &warp::http::HeaderMap,
    body: Bytes,
) -> ApiRequest {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let query = parse_query(&raw_query);
    let mut method = method.as_str().to_ascii_uppercase();
    if method == "GET" && query.get("list").is_some_and(|v| v == "true") {
        method = "LIST".into();
    }
    let token = token_of(headers);
    let raw_path = path.trim_start_matches('/');
    ApiRequest {
        method,
        // Decoded as Vault decodes it, so `a%2F..%2Fb` is the path `a/../b` (and refused) and a
        // secret named `my key` is the same whichever way a client encodes it.
        path: percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy().into_owned(),
        raw_path: raw_path.to_string(),
        raw_query,
        query,
        token,
        index: header("x-secretlog-index"),
        consistency: header("x-secretlog-consistency"),
        content_type: header("content-type"),
        body,
        request_id: uuid::Uuid::new_v4().to_string(),
        forwarded: header(FORWARDED_HEADER).is_some(),
        parsed_route: Default::default(),
    }
}

tokio::task_local! {
    /// The peer of the connection a request came on, for the handler (the audit log) to read
    /// without a field on [`ApiRequest`].
    static REMOTE_ADDR: Option<SocketAddr>;
}

tokio::task_local! {
    /// The [`auth_methods::CLIENT_HEADER`] of the request being handled: a forwarding node's word
    /// for the client's address, checked where it is used ([`auth_methods::client_ip`]).
    static FORWARDED_CLIENT: Option<String>;
}

/// The forwarding node's word for the client address of the request being handled, unchecked.
pub(crate) fn forwarded_client() -> Option<String> {
    FORWARDED_CLIENT.try_with(Clone::clone).ok().flatten()
}

/// The remote address of the request being handled, if known.
pub(crate) fn remote_addr() -> Option<SocketAddr> {
    REMOTE_ADDR.try_with(|a| *a).ok().flatten()
}

/// How long a listener waits for a request's headers, the next request's on an idle
/// keep-alive connection included (hyper's header read timeout): idle connections close then.
pub(crate) const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Header a node adds to a request it forwards.
pub(crate) const FORWARDED_HEADER: &str = "x-secretlog-forwarded";

/// How a listener serves: the body limit, TLS, and the request limits.
#[derive(Clone)]
pub struct ServeOptions {
    /// Largest request body, bytes (413 past it).
    pub max_body: u64,
    /// TLS, when the node serves HTTPS.
    pub tls: Option<Arc<tls::ServerTls>>,
    /// How often the certificate files are checked for a replacement.
    pub tls_reload_interval: Duration,
    pub limits: Arc<Limits>,
}

impl ServeOptions {
    /// From a node's configuration: loads the certificate pair (an unusable one is an error
    /// that names the file) and builds the limits.
    pub fn new(max_body: u64, http: &HttpConfig) -> Result<Self, NodeError> {
        let tls = match (&http.tls_cert, &http.tls_key) {
            (Some(cert), Some(key)) => Some(
                tls::ServerTls::load(tls::TlsFiles { cert: cert.clone(), key: key.clone() })
                    .map_err(|e| NodeError::Config { field: "tls_cert", reason: e.to_string() })?,
            ),
            (None, None) => None,
            _ => {
                return Err(NodeError::Config {
                    field: "tls_cert",
                    reason: "--tls-cert and --tls-key go together".into(),
                });
            }
        };
        if http.rate_limit_per_token < 0.0 || !http.rate_limit_per_token.is_finite() {
            return Err(NodeError::Config {
                field: "rate_limit_per_token",
                reason: "must be a number of requests per second, 0 for no limit".into(),
            });
        }
        Ok(ServeOptions {
            max_body,
            tls,
            tls_reload_interval: Duration::from_millis(http.tls_reload_interval_ms),
            limits: Arc::new(Limits::from_config(http)),
        })
    }
}

/// Plain HTTP with only a body limit (tests, and callers that predate TLS and limits).
impl From<u64> for ServeOptions {
    fn from(max_body: u64) -> Self {
        ServeOptions {
            max_body,
            tls: None,
            tls_reload_interval: Duration::from_secs(5),
            limits: Arc::new(Limits::unlimited()),
        }
    }
}

/// Run [`serve`] in the background and return a receiver that completes when it has stopped.
///
/// warp 0.4's filter futures cannot be proven `Send` in a generic context (a higher-ranked
/// lifetime limitation), so the accept loop cannot go to `tokio::spawn`. It runs on a thread of
/// its own, driving the *current* runtime's handle; connections are still tasks on the runtime.
pub(crate) fn spawn_server(
    listener: tokio::net::TcpListener,
    handler: Handler,
    opts: impl Into<ServeOptions>,
    cancel: CancellationToken,
) -> tokio::sync::oneshot::Receiver<()> {
    let opts = opts.into();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || {
            rt.block_on(serve(listener, handler, opts, cancel));
            let _ = done_tx.send(());
        })
        .expect("spawning the HTTP accept thread");
    done_rx
}

/// The connection a request came on, put in the request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
struct ConnInfo {
    remote: SocketAddr,
}

/// Puts the [`ConnInfo`] into every request of a connection, then calls the inner service.
#[derive(Clone)]
struct WithConn<S> {
    inner: S,
    info: ConnInfo,
}

impl<S, B> hyper::service::Service<warp::http::Request<B>> for WithConn<S>
where
    S: hyper::service::Service<warp::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: warp::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.info);
        self.inner.call(req)
    }
}

/// How long a client has to finish the TLS handshake (or send its request head).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `handler` on `listener` until `cancel` fires (in-flight requests are drained), over
/// TLS when `opts` has it, behind the limits of `opts` (see [`limits`]): a request head over
/// the limit gets 431, a token over its rate 429, a full route group 503, a body over
/// `max_body` bytes 413 — each with a Vault-style `{"errors": [...]}` body.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handler: Handler,
    opts: impl Into<ServeOptions>,
    cancel: CancellationToken,
) {
    let opts = opts.into();
    let service = hyper_util::service::TowerToHyperService::new(warp::service(routes(handler, &opts)));
    let watcher = opts.tls.clone().map(|tls| tls.spawn_watcher(opts.tls_reload_interval, cancel.clone()));
    // hyper answers a head past its read buffer with a bare 431 before any filter runs; keep the
    // buffer above the configured limit so that the limit, with its Vault-style body, decides.
    let max_buf = opts.limits.max_header_bytes.saturating_add(64 * 1024).clamp(400 * 1024, 64 * 1024 * 1024);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let svc = WithConn { inner: service.clone(), info: ConnInfo { remote } };
        let tls = opts.tls.clone();
        let watch = graceful.watcher();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .max_buf_size(max_buf)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(IDLE_CONNECTION_TIMEOUT);
            // HTTP/2 (negotiated by ALPN over TLS) would refuse a header list past 16 KiB itself.
            builder.http2().max_header_list_size(u32::try_from(max_buf).unwrap_or(u32::MAX));
            let served = match tls {
                None => watch.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)).await,
                Some(tls) => match accept_tls(&tls, tcp).await {
                    Some(stream) => {
                        watch.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc)).await
                    }
                    None => return,
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    if let Some(w) = watcher {
        let _ = w.await;
    }
}

/// The TLS handshake of a new connection, with the certificate in use now. A client speaking
/// plain HTTP to the port gets a 400 that says so, as Go's server (and so Vault) answers it,
/// instead of a bare reset.
async fn accept_tls(
    tls: &tls::ServerTls,
    mut tcp: tokio::net::TcpStream,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            metrics::counter!("secretlog_tls_handshake_failures_total", "reason" => "plaintext").increment(1);
            let _ = tcp.write_all(PLAINTEXT_TO_TLS).await;
            let _ = tcp.shutdown().await;
            return None;
        }
        Ok(Ok(1)) => {}
        _ => return None,
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            metrics::counter!("secretlog_tls_handshake_failures_total", "reason" => "handshake").increment(1);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("secretlog_tls_handshake_failures_total", "reason" => "timeout").increment(1);
            None
        }
    }
}

/// Go's answer to plain HTTP on a TLS port, word for word.
const PLAINTEXT_TO_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Most body bytes read (and dropped) from a request refused before its body was read, so the
/// client sees the answer rather than a reset.
const REFUSED_DRAIN_BYTES: u64 = 1024 * 1024;

/// A refusal: counted, and answered with the request's body drained up to a bound.
async fn refuse<S, B>(reason: limits::Refusal, group: limits::RouteGroup, e: ApiError, body: S) -> warp::reply::Response
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    limits::count_refusal(reason, group);
    if reason != limits::Refusal::BodySize {
        let _ = read_body(body, REFUSED_DRAIN_BYTES).await;
    }
    ApiResponse::from(e).into_warp()
}

/// The one route of every node: limits, then the handler.
fn routes(
    handler: Handler,
    opts: &ServeOptions,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static {
    let (max_body, limits) = (opts.max_body, opts.limits.clone());
    warp::method()
        .and(warp::ext::optional::<ConnInfo>())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method: warp::http::Method, conn: Option<ConnInfo>, path: warp::path::FullPath, raw_query: String, headers: warp::http::HeaderMap, body| {
            let handler = handler.clone();
            let limits = limits.clone();
            async move {
                use limits::Refusal;
                let group = limits::RouteGroup::of(method.as_str(), path.as_str());
                let head = limits::head_size(method.as_str(), path.as_str().len() + raw_query.len() + 1, &headers);
                if let Err(e) = limits.check_head(head) {
                    return refuse(Refusal::HeaderSize, group, e, body).await;
                }
                if let Err(e) = limits.check_rate(token_of(&headers).as_deref(), Instant::now()) {
                    return refuse(Refusal::RateLimit, group, e, body).await;
                }
                let _slot = match limits.enter(group).await {
                    Ok(slot) => slot,
                    Err(e) => return refuse(Refusal::Bulkhead, group, e, body).await,
                };
                let body = match read_body(body, max_body).await {
                    Ok(b) => b,
                    Err(e) => {
                        let body = futures::stream::empty::<Result<Bytes, warp::Error>>();
                        return refuse(Refusal::BodySize, group, e, body).await;
                    }
                };
                let req = build_request(&method, path.as_str(), raw_query, &headers, body);
                let started = std::time::Instant::now();
                let route = route_label(&req);
                let method = req.method.clone();
                let client = headers.get(auth_methods::CLIENT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
                let resp = REMOTE_ADDR.scope(conn.map(|c| c.remote), FORWARDED_CLIENT.scope(client, handler(req))).await;
                metrics::histogram!("secretlog_http_request_duration_seconds", "route" => route, "method" => method.clone())
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("secretlog_http_requests_total", "route" => route, "method" => method, "code" => resp.status.to_string())
                    .increment(1);
                resp.into_warp()
            }
        })
        .recover(|rej: warp::Rejection| async move {
            let resp = if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
                ApiError::too_large()
            } else {
                ApiError::bad_request("malformed request")
            };
            Ok::<_, std::convert::Infallible>(ApiResponse::from(resp).into_warp())
        })
        .unify()
}

/// A low-cardinality label for metrics: the API area, never the secret path.
fn route_label(req: &ApiRequest) -> &'static str {
    let segs = req.segments();
    match (segs.first().copied(), segs.get(1).copied()) {
        (Some("sys"), Some("health")) => "sys/health",
        (Some("sys"), _) => "sys",
        (Some(_), Some("data")) => "kv/data",
        (Some(_), Some("metadata")) => "kv/metadata",
        (Some(_), Some("delete" | "undelete" | "destroy")) => "kv/versions",
        _ if req.path == "metrics" => "metrics",
        _ => "other",
    }
}

/// Bind a listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, secretlog_state::error::NodeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| secretlog_state::error::NodeError::Config {
        field: "listen",
        reason: format!("cannot listen on {addr}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> impl futures::Stream<Item = Result<Bytes, warp::Error>> {
        futures::stream::iter((0..n).map(move |_| Ok(Bytes::from(vec![b'x'; size]))))
    }

    #[tokio::test]
    async fn an_oversized_body_is_read_to_its_end_then_refused() {
        assert_eq!(read_body(chunks(4, 10), 40).await.unwrap().len(), 40);
        let consumed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = consumed.clone();
        let body = futures::StreamExt::inspect(chunks(8, 10), move |_| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(read_body(body, 25).await.unwrap_err().status, 413);
        assert_eq!(consumed.load(std::sync::atomic::Ordering::SeqCst), 8, "drained, so the client gets the 413");
    }

    /// A node's listener in-process: TLS with a test CA and tight limits, in front of a handler
    /// that answers health at once and holds `v1/secret/data/slow` until released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listener_serves_tls_and_refuses_past_its_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, "node");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();
        let (cert_file, key_file, ca_file) =
            (dir.path().join("c.pem"), dir.path().join("k.pem"), dir.path().join("ca.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let http = HttpConfig {
            tls_cert: Some(cert_file),
            tls_key: Some(key_file),
            tls_reload_interval_ms: 100,
            tls_ca: None,
            max_header_bytes: 4096,
            rate_limit_per_token: 0.5,
            rate_limit_burst: 2,
            max_concurrent_kv_read: 1,
            max_concurrent_kv_write: 4,
            max_concurrent_sys: 4,
            max_concurrent_auth: 4,
            bulkhead_queue: 0,
            bulkhead_queue_timeout_ms: 10,
        };
        let opts = ServeOptions::new(1024, &http).unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
        let handler: Handler = {
            let release = release.clone();
            Arc::new(move |req: ApiRequest| {
                let (release, entered_tx) = (release.clone(), entered_tx.clone());
                Box::pin(async move {
                    if req.path == "v1/secret/data/slow" {
                        let _ = entered_tx.send(());
                        release.notified().await;
                    }
                    ApiResponse::json(200, &serde_json::json!({"path": req.path}))
                })
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let plain_base = base.replace("https", "http");
        let cancel = CancellationToken::new();
        let done = spawn_server(listener, handler, opts, cancel.clone());

        let client = tls::client_builder(Some(&ca_file)).unwrap().build().unwrap();
        let get = |path: &str, token: Option<&str>| {
            let mut rb = client.get(format!("{base}/{path}"));
            if let Some(t) = token {
                rb = rb.header("x-vault-token", t);
            }
            rb.send()
        };
        assert_eq!(get("v1/sys/health", None).await.unwrap().status(), 200);
        let plain = reqwest::get(format!("{plain_base}/v1/sys/health")).await.unwrap();
        assert_eq!(plain.status(), 400);
        assert!(plain.text().await.unwrap().contains("HTTP request to an HTTPS server"));
        assert!(reqwest::get(format!("{base}/v1/sys/health")).await.is_err(), "no CA, no connection");

        // 431 with a Vault body.
        let r = client.get(format!("{base}/v1/secret/data/a")).header("x-big", "y".repeat(5000)).send().await.unwrap();
        assert_eq!(r.status(), 431);
        assert_eq!(r.text().await.unwrap(), r#"{"errors":["request header fields too large"]}"#);
        // Over HTTP/2 (ALPN) too, past h2's own default list size: the limit answers, not h2.
        let r =
            client.get(format!("{base}/v1/secret/data/a")).header("x-big", "y".repeat(20_000)).send().await.unwrap();
        assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 431));
        assert_eq!(r.text().await.unwrap(), r#"{"errors":["request header fields too large"]}"#);
        // 413.
        let r = client.post(format!("{base}/v1/secret/data/a")).body(vec![b'x'; 4096]).send().await.unwrap();
        assert_eq!(r.status(), 413);

        // 429 for token a after its burst of 2; b is unaffected.
        assert_eq!(get("v1/secret/data/a", Some("a")).await.unwrap().status(), 200);
        assert_eq!(get("v1/secret/data/a", Some("a")).await.unwrap().status(), 200);
        let r = get("v1/secret/data/a", Some("a")).await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.text().await.unwrap(), r#"{"errors":["rate limit quota exceeded"]}"#);
        assert_eq!(get("v1/secret/data/a", Some("b")).await.unwrap().status(), 200);

        // One slow read fills kv-read (1 slot, no queue): the next read gets 503, health and
        // writes answer. Nothing else is in flight when it is sent, so it takes the slot; the
        // handler says when it holds it.
        let slow = tokio::spawn(get("v1/secret/data/slow", None));
        tokio::time::timeout(Duration::from_secs(60), entered.recv())
            .await
            .expect("the slow read reached the handler within 60 s")
            .unwrap();
        let refused = get("v1/secret/data/other", None).await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(get("v1/sys/health", None).await.unwrap().status(), 200);
        let w = client.post(format!("{base}/v1/secret/data/w")).body("{}").send().await.unwrap();
        assert_eq!(w.status(), 200);
        release.notify_one();
        assert_eq!(slow.await.unwrap().unwrap().status(), 200);
        assert_eq!(get("v1/secret/data/other", None).await.unwrap().status(), 200, "the slot is free again");

        cancel.cancel();
        done.await.unwrap();
    }
}
