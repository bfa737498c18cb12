//! Forwarding a request to the leader writer, passing status, body and the consistency token
//! back unchanged, so a client cannot tell it talked to a reader or a standby.

use std::time::Duration;

use secretlog_schemas::topic::{HEADER_INDEX, HEADER_TOKEN};

use super::{ApiError, ApiRequest, ApiResponse};

/// Response headers passed back from the leader.
const PASS_BACK: [&str; 3] = ["content-type", "x-secretlog-index", "retry-after"];

/// Sends requests on to one of a list of writer URLs, in order, until one answers.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    targets: Vec<String>,
    timeout: Duration,
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
        }
    }

    /// The same forwarder trusting the CA certificates in `ca` (the node's `--tls-ca`) besides
    /// the system's, for writers that serve HTTPS under a private CA. `None` keeps it as it is.
    pub fn trusting(self, ca: Option<&std::path::Path>) -> Result<Self, crate::error::ReaderError> {
        let Some(ca) = ca else { return Ok(self) };
        let err = |reason: String| crate::error::ReaderError::Config { field: "tls_ca", reason };
        let builder = super::tls::client_builder(Some(ca)).map_err(|e| err(e.to_string()))?;
        let client = Self::configure(builder, self.timeout).build().map_err(|e| err(e.to_string()))?;
        Ok(Forwarder { client, ..self })
    }

    fn configure(builder: reqwest::ClientBuilder, timeout: Duration) -> reqwest::ClientBuilder {
        builder.timeout(timeout).connect_timeout(Duration::from_millis(500)).pool_max_idle_per_host(64)
    }

    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Forward `req`, to `leader` first when the log has announced one, then to the configured
    /// writers. A writer that cannot be reached is skipped; if none answers, 503.
    pub async fn forward(&self, req: &ApiRequest, leader: Option<&str>) -> ApiResponse {
        if req.forwarded {
            return ApiError::unavailable("this node is not the leader and the request was already forwarded once")
                .into();
        }
        let mut failures = Vec::new();
        let mut order: Vec<&str> = leader.into_iter().collect();
        order.extend(self.targets.iter().map(String::as_str).filter(|t| Some(*t) != leader));
        for target in order {
            let target = target.trim_end_matches('/');
            let encoded: String = req
                .path
                .split('/')
                .map(|seg| percent_encoding::utf8_percent_encode(seg, percent_encoding::NON_ALPHANUMERIC).to_string())
                .collect::<Vec<_>>()
                .join("/");
            let mut url = format!("{target}/{encoded}");
            if !req.raw_query.is_empty() {
                url.push('?');
                url.push_str(&req.raw_query);
            }
            let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
            let mut rb = self.client.request(method, &url).body(req.body.clone()).header(super::FORWARDED_HEADER, "1");
            if let Some(t) = &req.token {
                rb = rb.header(HEADER_TOKEN, t);
            }
            if let Some(i) = &req.index {
                rb = rb.header(HEADER_INDEX, i);
            }
            if let Some(ct) = &req.content_type {
                rb = rb.header("content-type", ct);
            }
            match rb.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers: Vec<(String, String)> = PASS_BACK
                        .iter()
                        .filter_map(|h| {
                            resp.headers().get(*h).and_then(|v| v.to_str().ok()).map(|v| (h.to_string(), v.to_string()))
                        })
                        .collect();
                    match resp.bytes().await {
                        Ok(body) => return ApiResponse { status, headers, body: body.to_vec() },
                        Err(e) => failures.push(format!("{target}: {e}")),
                    }
                }
                Err(e) => failures.push(format!(
                    "{target}: {}",
                    if e.is_timeout() { "timed out".to_string() } else { e.to_string() }
                )),
            }
        }
        metrics::counter!("secretlog_forward_failures_total").increment(1);
        if failures.is_empty() {
            return ApiError::unavailable("no leader writer is known yet").into();
        }
        ApiError::unavailable(format!("no writer reachable to forward to ({})", failures.join("; "))).into()
    }
}
