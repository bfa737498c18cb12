//! The HTTP surface shared by readers and writers: Vault-style request parsing, error bodies,
//! KV v2 read handlers, health, forwarding, and the warp glue.
//!
//! Routing is done on a plain [`ApiRequest`] rather than with a tree of warp filters: Vault's API
//! needs the `LIST` method, catch-all secret paths and one error format for everything, and a
//! plain function of a plain struct is easy to test.

pub mod auth;
pub mod error;
pub mod forward;
pub mod health;
pub mod kv;
pub mod response;
pub mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use warp::Filter;

pub use error::ApiError;
pub use response::ApiResponse;

/// A request as the handlers see it.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    /// Upper-case method; `GET ...?list=true` is rewritten to `LIST`.
    pub method: String,
    /// Path without the leading `/`, e.g. `v1/secret/data/app/db`.
    pub path: String,
    /// The raw query string (forwarded unchanged).
    pub raw_query: String,
    pub query: HashMap<String, String>,
    pub token: Option<String>,
    /// `X-Secretlog-Index`, unparsed.
    pub index: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Id for logs and the response's `request_id`.
    pub request_id: String,
    /// Set when another secretlog node forwarded this request: it is never forwarded again, so
    /// two nodes with stale ideas of the leader cannot bounce a write between them.
    pub forwarded: bool,
}

impl ApiRequest {
    /// Path segments after `v1/`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.strip_prefix("v1/").unwrap_or("").split('/').collect()
    }
    /// Whether this request changes state (and must go to the leader writer).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
    pub fn query_bool(&self, name: &str) -> Option<bool> {
        self.query.get(name).map(|v| matches!(v.as_str(), "" | "true" | "1" | "yes"))
    }
}

/// Something that answers requests (a reader node, a writer node).
pub type Handler = Arc<dyn Fn(ApiRequest) -> Pin<Box<dyn Future<Output = ApiResponse> + Send>> + Send + Sync>;

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
    let token = header("x-vault-token")
        .or_else(|| header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_string)));
    ApiRequest {
        method,
        // Decoded as Vault decodes it, so `a%2F..%2Fb` is the path `a/../b` (and refused) and a
        // secret named `my key` is the same whichever way a client encodes it.
        path: percent_encoding::percent_decode_str(path.trim_start_matches('/')).decode_utf8_lossy().into_owned(),
        raw_query,
        query,
        token,
        index: header("x-secretlog-index"),
        content_type: header("content-type"),
        body,
        request_id: uuid::Uuid::new_v4().to_string(),
        forwarded: header(FORWARDED_HEADER).is_some(),
    }
}

tokio::task_local! {
    /// The peer of the connection a request came on, for the handler (the audit log) to read
    /// without a field on [`ApiRequest`].
    static REMOTE_ADDR: Option<SocketAddr>;
}

/// The remote address of the request being handled, if known.
pub fn remote_addr() -> Option<SocketAddr> {
    REMOTE_ADDR.try_with(|a| *a).ok().flatten()
}

/// Header a node adds to a request it forwards.
pub const FORWARDED_HEADER: &str = "x-secretlog-forwarded";

/// Run [`serve`] in the background and return a receiver that completes when it has stopped.
///
/// warp 0.4's server future cannot be proven `Send` in a generic context (a higher-ranked
/// lifetime limitation), so it cannot go to `tokio::spawn`. Its accept loop runs on a thread of
/// its own, driving the *current* runtime's handle; connections are still tasks on the runtime.
pub fn spawn_server(
    listener: tokio::net::TcpListener,
    handler: Handler,
    max_body: u64,
    cancel: CancellationToken,
) -> tokio::sync::oneshot::Receiver<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || {
            rt.block_on(serve(listener, handler, max_body, cancel));
            let _ = done_tx.send(());
        })
        .expect("spawning the HTTP accept thread");
    done_rx
}

/// Serve `handler` on `listener` until `cancel` fires (in-flight requests are drained).
/// Bodies larger than `max_body` bytes get 413 without being read.
pub async fn serve(listener: tokio::net::TcpListener, handler: Handler, max_body: u64, cancel: CancellationToken) {
    let route = warp::method()
        .and(warp::addr::remote())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method: warp::http::Method, remote: Option<SocketAddr>, path: warp::path::FullPath, raw_query: String, headers: warp::http::HeaderMap, body| {
            let handler = handler.clone();
            async move {
                let body = match read_body(body, max_body).await {
                    Ok(b) => b,
                    Err(e) => return ApiResponse::from(e).into_warp(),
                };
                let req = build_request(&method, path.as_str(), raw_query, &headers, body);
                let started = std::time::Instant::now();
                let route = route_label(&req);
                let method = req.method.clone();
                let resp = REMOTE_ADDR.scope(remote, handler(req)).await;
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
        });
    warp::serve(route).incoming(listener).graceful(cancel.cancelled_owned()).run().await;
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
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::error::ReaderError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| crate::error::ReaderError::Config {
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
}
