//! A recording HTTP proxy in front of a server, so that a test driving a third-party client (the
//! `bao` CLI, Vault Agent) can say exactly which requests the client made and what it was
//! answered — the client itself only prints its own interpretation.
//!
//! It forwards every request unchanged (method, path, query, headers, body) and adds nothing:
//! the client talks to the server as it would without the proxy. Redirects are answers, passed
//! back, not followed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One request the client made, and the answer it got.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub content_type: Option<String>,
    pub body: String,
    pub status: u16,
    pub response: String,
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.target)?;
        if let Some(ct) = &self.content_type {
            write!(f, " [{ct}]")?;
        }
        if !self.body.is_empty() {
            write!(f, " {}", redact(&self.body))?;
        }
        write!(f, " -> {} {}", self.status, short(&redact(&self.response), 600))
    }
}

/// Drop the request id, which is random and makes two answers look different.
fn redact(s: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.remove("request_id");
            serde_json::Value::Object(m).to_string()
        }
        _ => s.trim_end().to_string(),
    }
}

fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}… ({} bytes)", &s[..cut], s.len())
}

/// A running proxy; stops when dropped.
pub struct Recorder {
    /// Where clients connect (`http://127.0.0.1:port`).
    pub url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Start a proxy on a free loopback port forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the recording proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("proxy client");
        let upstream = upstream.trim_end_matches('/').to_string();
        let task = tokio::spawn({
            let log = log.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { continue };
                    let (http, upstream, log) = (http.clone(), upstream.clone(), log.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            forward(http.clone(), upstream.clone(), log.clone(), req)
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            }
        });
        Recorder { url, log, task }
    }

    /// The exchanges since the last call.
    pub fn take(&self) -> Vec<Exchange> {
        std::mem::take(&mut *self.log.lock().expect("recorder log"))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Not forwarded: hop-by-hop headers, and `accept-encoding` (Go's client asks for gzip on its
/// own and decompresses transparently; without it both servers answer in clear, readable here).
const HOP_BY_HOP: [&str; 6] =
    ["host", "connection", "content-length", "transfer-encoding", "keep-alive", "accept-encoding"];

async fn forward(
    http: reqwest::Client,
    upstream: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let target = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("a method hyper parsed");
    let mut rb = http.request(method, format!("{upstream}{target}"));
    for (k, v) in &parts.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            rb = rb.header(k.as_str(), v.as_bytes());
        }
    }
    if !body.is_empty() {
        rb = rb.body(body.to_vec());
    }
    let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut exchange = Exchange {
        method: parts.method.to_string(),
        target,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 502,
        response: String::new(),
    };
    let resp = match rb.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let mut out = Response::builder().status(status);
            for (k, v) in r.headers() {
                if !HOP_BY_HOP.contains(&k.as_str()) {
                    out = out.header(k.as_str(), v.as_bytes());
                }
            }
            let bytes = r.bytes().await.unwrap_or_default();
            exchange.status = status;
            exchange.response = String::from_utf8_lossy(&bytes).into_owned();
            out.body(Full::new(bytes)).expect("a response from valid parts")
        }
        Err(e) => {
            exchange.response = format!("(proxy: upstream unreachable: {e})");
            Response::builder().status(502).body(Full::new(Bytes::new())).expect("an empty 502")
        }
    };
    log.lock().expect("recorder log").push(exchange);
    Ok(resp)
}
