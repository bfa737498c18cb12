//! Forwarding a request to the leader writer, passing status, body and the consistency token
//! back unchanged, so a client cannot tell it talked to a reader or a standby.
//!
//! Two rules keep the forwarded request the one the client sent:
//!
//! * **The path travels as it came.** The writer must act on the very path this node decoded,
//!   so the client's own bytes ([`ApiRequest::raw_path`]) are sent on, never a re-encoding of the
//!   decoded path: re-encoded, `p%2F..%2Fzz` became `p/%2E%2E/zz`, which the URL parser resolved
//!   to `zz`, and a write the leader refuses (400, relative path) wrote `zz` instead (issue 19).
//!   A URL parser also resolves dot segments the client sent as such (`p/../zz`, `p/%2e%2e/zz`)
//!   and reads `\` as `/`; there the slash beside each dot segment, and the backslash, are sent
//!   percent-encoded — the same path once decoded, which no parser resolves — and
//!   [`Forwarder::forward`] checks that the URL decodes to the path this node acted on before
//!   anything is sent. The one path that cannot travel so, a dot segment alone (`/..`), is no
//!   route: answered 404 here, where the writer would check the token first.
//! * **A write goes out at most once** (DESIGN.md, write path, rule 7). Only a failure that proves
//!   nothing was sent — no connection (refused, DNS, TLS handshake) — moves on to the next writer.
//!   Once the request may have left (a timeout, a reset mid-request, an answer cut off), a second
//!   writer could apply it a second time, so the answer is 503 "write outcome unknown" instead.
//!   Redirects are not followed (following one sends the write again). Reads go to the next
//!   writer after any failure.

use std::borrow::Cow;
use std::time::Duration;

use secretlog_schemas::topic::{HEADER_INDEX, HEADER_TOKEN};

use super::{ApiError, ApiRequest, ApiResponse};

/// Response headers passed back from the leader (`location`: a redirect is passed back, not
/// followed).
const PASS_BACK: [&str; 4] = ["content-type", "x-secretlog-index", "retry-after", "location"];

/// Sends requests on to one of a list of writer URLs, in order, until one answers.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    targets: Vec<String>,
    timeout: Duration,
    /// Vouches for the client address of what it forwards (see [`Forwarder::vouching`]).
    keyring: Option<std::sync::Arc<secretlog_schemas::Keyring>>,
}

impl Forwarder {
    /// Forward to `targets` (and the leader the log announces), trusting the system's CAs and
    /// the one `SECRETLOG_CACERT` names, if it can be read (see [`Forwarder::trusting`]).
    pub fn new(targets: Vec<String>, timeout: Duration) -> Self {
        let builder = super::tls::client_builder(None).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the CA file for forwarding cannot be used; trusting only the system's CAs");
            reqwest::Client::builder()
        });
        let client =
            Self::configure(builder, timeout).build().expect("an HTTP client with these settings always builds");
        Forwarder {
            client,
            targets: targets.into_iter().map(|t| t.trim_end_matches('/').to_string()).collect(),
            timeout,
            keyring: None,
        }
    }

    /// The same forwarder trusting the CA certificates in `ca` (the node's `--tls-ca`) besides
    /// the system's, for writers that serve HTTPS under a private CA. `None` keeps it as it is.
    pub fn trusting(self, ca: Option<&std::path::Path>) -> Result<Self, secretlog_state::error::NodeError> {
        let Some(ca) = ca else { return Ok(self) };
        let err = |reason: String| secretlog_state::error::NodeError::Config { field: "tls_ca", reason };
        let builder = super::tls::client_builder(Some(ca)).map_err(|e| err(e.to_string()))?;
        let client = Self::configure(builder, self.timeout).build().map_err(|e| err(e.to_string()))?;
        Ok(Forwarder { client, ..self })
    }

    fn configure(builder: reqwest::ClientBuilder, timeout: Duration) -> reqwest::ClientBuilder {
        builder
            .timeout(timeout)
            .connect_timeout(Duration::from_millis(500))
            .pool_max_idle_per_host(64)
            // Idle connections are dropped before the writer's listener closes them: a write
            // sent on a connection the writer is closing that moment would have an unknown outcome.
            .pool_idle_timeout(super::IDLE_CONNECTION_TIMEOUT / 2)
            .redirect(reqwest::redirect::Policy::none())
    }

    /// The same forwarder, telling the writer the client address each request came from (the
    /// [`super::auth_methods::CLIENT_HEADER`], tagged under `keyring`), so that CIDR bounds of
    /// logins and tokens hold for requests that came through this node.
    pub fn vouching(&self, keyring: std::sync::Arc<secretlog_schemas::Keyring>) -> Forwarder {
        Forwarder { keyring: Some(keyring), ..self.clone() }
    }

    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Forward `req`, to `leader` first when the log has announced one, then to the configured
    /// writers. A writer that cannot be reached is skipped; if none answers, 503. A write that
    /// may have reached a writer without an answer coming back is not sent to another: 503
    /// "write outcome unknown".
    pub async fn forward(&self, req: &ApiRequest, leader: Option<&str>) -> ApiResponse {
        self.try_forward(req, leader).await.unwrap_or_else(|unsent| ApiError::from(unsent).into())
    }

    /// [`Forwarder::forward`], but a request that provably never left this node (no writer to
    /// send it to, or none could be connected to) comes back as [`NotSent`] instead of a 503, so
    /// that the caller may wait for a leader and send it then without breaking rule 7.
    pub async fn try_forward(&self, req: &ApiRequest, leader: Option<&str>) -> Result<ApiResponse, NotSent> {
        if req.forwarded {
            return Ok(
                ApiError::unavailable("this node is not the leader and the request was already forwarded once").into()
            );
        }
        let mut failures = Vec::new();
        let mut order: Vec<&str> = leader.into_iter().collect();
        order.extend(self.targets.iter().map(String::as_str).filter(|t| Some(*t) != leader));
        for target in order {
            let target = target.trim_end_matches('/');
            let url = match url_at(target, req) {
                Ok(url) => url,
                Err(UrlError::Target(e)) => {
                    failures.push(format!("{target}: {e}"));
                    continue;
                }
                // Only a path that is a dot segment and nothing else (`/..`) gets here: no route,
                // which is what the writer would answer once it had checked the token.
                Err(UrlError::Path) => return Ok(ApiError::no_route(&req.path).into()),
            };
            let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
            let mut rb = self.client.request(method, url).body(req.body.clone()).header(super::FORWARDED_HEADER, "1");
            if let Some(t) = &req.token {
                rb = rb.header(HEADER_TOKEN, t);
            }
            if let Some(i) = &req.index {
                rb = rb.header(HEADER_INDEX, i);
            }
            if let Some(ct) = &req.content_type {
                rb = rb.header("content-type", ct);
            }
            if let Some(client) = self.keyring.as_deref().and_then(|k| super::auth_methods::attest(k, req)) {
                rb = rb.header(super::auth_methods::CLIENT_HEADER, client);
            }
            let failed = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers: Vec<(String, String)> = PASS_BACK
                        .iter()
                        .filter_map(|h| {
                            resp.headers().get(*h).and_then(|v| v.to_str().ok()).map(|v| (h.to_string(), v.to_string()))
                        })
                        .collect();
                    match resp.bytes().await {
                        Ok(body) => return Ok(ApiResponse { status, headers, body: body.to_vec() }),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let why = describe(&failed);
            // A connect error is the one failure that proves no byte of the request left.
            if !is_read(req) && !failed.is_connect() {
                metrics::counter!("secretlog_forward_failures_total", "reason" => "outcome_unknown").increment(1);
                tracing::warn!(%target, error = %why, "forwarded write without an answer; not sent to another writer");
                return Ok(ApiError::unavailable(format!(
                    "write outcome unknown: it was forwarded to {target} and no answer came back ({why}); it was not \
                     sent to another writer"
                ))
                .into());
            }
            failures.push(format!("{target}: {why}"));
        }
        metrics::counter!("secretlog_forward_failures_total", "reason" => "unreachable").increment(1);
        Err(NotSent { failures })
    }
}

/// A forward that sent nothing: there was no writer to send it to, or none could be connected
/// to. Sending it later, to the same writer or another, cannot apply it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSent {
    /// Each writer tried and why it could not be reached; empty when none was known.
    failures: Vec<String>,
}

impl NotSent {
    /// Why nothing was sent, for the client.
    pub fn reason(&self) -> String {
        if self.failures.is_empty() {
            "no leader writer is known yet".into()
        } else {
            format!("no writer reachable to forward to ({})", self.failures.join("; "))
        }
    }
}

impl From<NotSent> for ApiError {
    fn from(unsent: NotSent) -> Self {
        ApiError::unavailable(unsent.reason())
    }
}

/// A failure to forward, with its causes (reqwest's own message says only "error sending
/// request").
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() { e.to_string() } else { causes.join(": ") }
}

/// Whether `req` changes nothing, so it may be sent to another writer after any failure.
fn is_read(req: &ApiRequest) -> bool {
    matches!(req.method.as_str(), "GET" | "HEAD" | "LIST")
}

/// Why there is no URL to send a request to.
#[derive(Debug, PartialEq, Eq)]
enum UrlError {
    /// The target is not a URL (a configuration mistake; nothing was sent).
    Target(String),
    /// The request's path would not reach the writer as this node decoded it.
    Path,
}

/// The URL of `req` at `target`: the client's raw path, with only what a URL parser would
/// resolve escaped ([`unresolvable`]), and the raw query. Checked to decode to the path this
/// node acted on, as the writer decodes it ([`super::build_request`]).
fn url_at(target: &str, req: &ApiRequest) -> Result<reqwest::Url, UrlError> {
    let base = reqwest::Url::parse(target).map_err(|e| UrlError::Target(e.to_string()))?;
    let mut text = format!("{target}/{}", unresolvable(&req.raw_path));
    if !req.raw_query.is_empty() {
        text.push('?');
        text.push_str(&req.raw_query);
    }
    let url = reqwest::Url::parse(&text).map_err(|_| UrlError::Path)?;
    let prefix = decoded(base.path());
    let expected =
        if prefix.is_empty() { Cow::Borrowed(req.path.as_str()) } else { format!("{prefix}/{}", req.path).into() };
    if decoded(url.path()) != expected {
        return Err(UrlError::Path);
    }
    Ok(url)
}

/// A request line's path as a node decodes it.
fn decoded(path: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(path.trim_start_matches('/')).decode_utf8_lossy()
}

/// Whether a raw path segment is one a URL parser resolves away: `.` or `..`, its dots literal
/// or percent-encoded in any mix (the WHATWG URL standard's single- and double-dot segments).
fn is_dot_segment(seg: &str) -> bool {
    [".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"].iter().any(|dots| seg.eq_ignore_ascii_case(dots))
}

/// `raw` as a URL parser leaves it: each dot segment joined to its neighbour by an encoded slash
/// (`p/../zz` → `p%2F../zz`) and each backslash encoded, which decodes to the same bytes.
/// A path that is a dot segment alone has no neighbour and stays as it is.
fn unresolvable(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') && !raw.split('/').any(is_dot_segment) {
        return Cow::Borrowed(raw);
    }
    let segs: Vec<&str> = raw.split('/').collect();
    let mut out = String::with_capacity(raw.len() + 16);
    for (i, seg) in segs.iter().enumerate() {
        if i > 0 {
            let join = is_dot_segment(seg) || (i == 1 && is_dot_segment(segs[0]));
            out.push_str(if join { "%2F" } else { "/" });
        }
        out.push_str(&seg.replace('\\', "%5C"));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::api::{Handler, build_request, spawn_server};

    /// A request as the listener builds it from `raw` (the request line's path).
    fn parsed(method: &str, raw: &str) -> ApiRequest {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        build_request(&method, raw, String::new(), &Default::default(), Default::default())
    }

    /// Paths a client can put on a request line, bad ones above all (the differential suite's
    /// and issue 19's).
    const PATHS: &[&str] = &[
        "/v1/secret/data/app/db",
        "/v1/secret/data/p%2F..%2Fzz",
        "/v1/secret/data/p%2F%2e%2e%2Fzz",
        "/v1/secret/data/a%2F..%2Fb",
        "/v1/secret/data/x%2F.%2Fy",
        "/v1/secret/data/p/../zz",
        "/v1/secret/data/p/./zz",
        "/v1/secret/data/p/%2e%2e/zz",
        "/v1/secret/data/p/%2E%2E/zz",
        "/v1/secret/data/p/.%2e/zz",
        "/v1/secret/data/p/%2e./zz",
        "/v1/secret/data/p/%2e/zz",
        "/v1/secret/data/p/..",
        "/v1/secret/data/..",
        "/v1/secret/data/../../x",
        "/v1/secret/../secret/data/zz",
        "/v1/./secret/data/zz",
        "/../v1/secret/data/zz",
        "/./v1/secret/data/zz",
        "/v1/secret/data/p\\..\\zz",
        "/v1/secret/data/p//zz",
        "//v1/secret/data/zz",
        "/v1/secret/data/%2Fa",
        "/v1/secret/data/dir/",
        "/v1/secret/data/",
        "/v1/secret/data/a%00b",
        "/v1/secret/data/my%20key",
        "/v1/secret/data/%C3%A9t%C3%A9",
        "/v1/secret/data/%FF",
        "/v1/secret/data/%2e%2e",
    ];

    #[test]
    fn the_url_decodes_to_the_path_the_node_acted_on() {
        for raw in PATHS {
            let req = parsed("POST", raw);
            for target in ["http://127.0.0.1:8200", "https://writer.example:8200/base"] {
                let url = url_at(target, &req).unwrap_or_else(|e| panic!("{raw} at {target}: {e:?}"));
                let there = parsed("POST", url.path());
                let want = if target.ends_with("/base") { format!("base/{}", req.path) } else { req.path.clone() };
                assert_eq!(there.path, want, "{raw} at {target} was sent as {}", url.path());
            }
        }
        // A path with nothing a URL parser resolves goes out byte for byte.
        for raw in ["/v1/secret/data/p%2F..%2Fzz", "/v1/secret/data/p//zz", "/v1/secret/data/%2e%2e%2Fx"] {
            assert_eq!(url_at("http://w:1", &parsed("POST", raw)).unwrap().path(), raw);
        }
        assert_eq!(unresolvable("v1/secret/data/p/../zz"), "v1/secret/data/p%2F../zz");
        assert_eq!(unresolvable("../v1/x/%2E"), "..%2Fv1/x%2F%2E");
        assert_eq!(unresolvable("v1/a\\b"), "v1/a%5Cb");
        // A path that is a dot segment alone cannot travel unchanged: refused, never sent.
        for raw in ["/..", "/.", "/%2e%2E"] {
            assert_eq!(url_at("http://w:1", &parsed("POST", raw)), Err(UrlError::Path), "{raw}");
        }
        assert!(matches!(url_at("not a url", &parsed("POST", "/v1/x")), Err(UrlError::Target(_))));
    }

    /// In-process HTTP listeners, stopped together at the end of a test.
    #[derive(Default)]
    struct Listeners {
        cancel: CancellationToken,
        stopped: Vec<tokio::sync::oneshot::Receiver<()>>,
    }

    impl Listeners {
        /// Serve `handler` on a loopback port; its base URL.
        async fn serve(&mut self, handler: Handler) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            self.stopped.push(spawn_server(listener, handler, 1024 * 1024, self.cancel.clone()));
            base
        }

        /// A writer that answers every request with the path it decoded; and how many it got.
        async fn echo_writer(&mut self) -> (String, Arc<AtomicUsize>) {
            let count = Arc::new(AtomicUsize::new(0));
            let c = count.clone();
            let handler: Handler = Arc::new(move |req: ApiRequest| {
                c.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move { ApiResponse::json(200, &json!({"path": req.path, "method": req.method})) })
            });
            (self.serve(handler).await, count)
        }

        async fn stop(self) {
            self.cancel.cancel();
            for s in self.stopped {
                let _ = s.await;
            }
        }
    }

    /// One HTTP/1.1 request written byte for byte (no client library in between to normalise
    /// the path): status and body.
    async fn raw_request(base: &str, method: &str, target: &str) -> (u16, String) {
        let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
             connection: close\r\n\r\n{{}}"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{answer:?}"));
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forwarded_request_reaches_the_writer_with_the_path_the_client_sent() {
        let mut listeners = Listeners::default();
        let (writer, answered) = listeners.echo_writer().await;
        let forwarder = Forwarder::new(vec![writer.clone()], Duration::from_secs(10));
        let handler: Handler = Arc::new(move |req: ApiRequest| {
            let forwarder = forwarder.clone();
            Box::pin(async move { forwarder.forward(&req, None).await })
        });
        let reader = listeners.serve(handler).await;
        for raw in PATHS {
            let direct = raw_request(&writer, "POST", raw).await;
            let forwarded = raw_request(&reader, "POST", raw).await;
            assert_eq!(forwarded, direct, "POST {raw}: through a reader, then straight to the writer");
            assert_eq!(direct.0, 200, "{raw}: {}", direct.1);
            let body: Value = serde_json::from_str(&direct.1).unwrap();
            assert_eq!(body["path"], parsed("POST", raw).path, "{raw}");
        }
        // Issue 19's request: the writer is asked about `p/../zz`, never about `zz`.
        let (_, body) = raw_request(&reader, "POST", "/v1/secret/data/p%2F..%2Fzz").await;
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["path"], "v1/secret/data/p/../zz");
        // A dot segment alone cannot travel unchanged: no route, and nothing sent.
        let before = answered.load(Ordering::SeqCst);
        let (status, body) = raw_request(&reader, "POST", "/%2e%2e").await;
        assert_eq!(
            (status, body.as_str()),
            (404, r#"{"errors":["no handler for route \"..\". route entry not found."]}"#)
        );
        assert_eq!(answered.load(Ordering::SeqCst), before);
        listeners.stop().await;
    }

    /// How the first writer a request is forwarded to fails it.
    #[derive(Debug, Clone, Copy)]
    enum Failure {
        /// Nothing listens: the connection is refused, nothing is sent.
        Refused,
        /// Reads the request, then closes the connection without a word.
        Drops,
        /// Reads the request and never answers (the forwarder's timeout ends it).
        Silent,
        /// Starts an answer and closes the connection in the middle of its body.
        CutsOff,
        /// Answers 307 to the second writer.
        Redirects,
    }

    /// A writer that fails every request as `failure` says; its URL and the connections it took.
    async fn failing_writer(failure: Failure, next: &str) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        if matches!(failure, Failure::Refused) {
            drop(listener);
            return (url, accepted);
        }
        let (count, next) = (accepted.clone(), next.to_string());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let next = next.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = match failure {
                        Failure::Refused | Failure::Drops => return,
                        Failure::Silent => return std::future::pending().await,
                        Failure::CutsOff => "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"data\":".to_string(),
                        Failure::Redirects => {
                            format!(
                                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {next}/v1/secret/data/x\r\n\
                                 content-length: 0\r\nconnection: close\r\n\r\n"
                            )
                        }
                    };
                    let _ = tcp.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, accepted)
    }

    /// DESIGN.md, write path, rule 7: a write goes to the next writer only when it provably never
    /// left; a read goes to the next writer after any failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_goes_to_a_second_writer_only_when_it_never_reached_the_first() {
        let mut listeners = Listeners::default();
        let (second, answered) = listeners.echo_writer().await;
        for failure in [Failure::Refused, Failure::Drops, Failure::Silent, Failure::CutsOff, Failure::Redirects] {
            let (first, accepted) = failing_writer(failure, &second).await;
            let forwarder = Forwarder::new(vec![first, second.clone()], Duration::from_millis(1000));
            let before = answered.load(Ordering::SeqCst);
            let write = forwarder.forward(&parsed("POST", "/v1/secret/data/x"), None).await;
            let body = String::from_utf8_lossy(&write.body).into_owned();
            match failure {
                Failure::Refused => {
                    assert_eq!(
                        (write.status, answered.load(Ordering::SeqCst)),
                        (200, before + 1),
                        "{failure:?}: {body}"
                    );
                }
                Failure::Redirects => {
                    assert_eq!(write.status, 307, "{failure:?}: the writer's answer, passed back: {body}");
                    assert_eq!(write.header("location"), Some(format!("{second}/v1/secret/data/x").as_str()));
                    assert_eq!(answered.load(Ordering::SeqCst), before, "{failure:?}: the redirect is not followed");
                }
                Failure::Drops | Failure::Silent | Failure::CutsOff => {
                    assert_eq!(write.status, 503, "{failure:?}: {body}");
                    let errors: Value = serde_json::from_slice(&write.body).unwrap();
                    let message = errors["errors"][0].as_str().unwrap();
                    assert!(message.starts_with("write outcome unknown: "), "{failure:?}: {message}");
                    assert_eq!(answered.load(Ordering::SeqCst), before, "{failure:?}: never sent to a second writer");
                    assert_eq!(accepted.load(Ordering::SeqCst), 1, "{failure:?}: sent once, and only once");
                }
            }
            // A read changes nothing: after any failure it goes on to the next writer.
            let before = answered.load(Ordering::SeqCst);
            let read = forwarder.forward(&parsed("GET", "/v1/secret/data/x"), None).await;
            match failure {
                Failure::Redirects => assert_eq!(read.status, 307),
                _ => assert_eq!((read.status, answered.load(Ordering::SeqCst)), (200, before + 1), "{failure:?}"),
            }
        }
        listeners.stop().await;
    }
}
