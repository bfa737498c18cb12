//! Token tidy: expired tokens leave every node's state through the log (Vault's
//! `auth/token/tidy`), so the token records, their accessors and their key revisions do not
//! pile up for as long as the cluster lives.
//!
//! Why through the log and decided by the leader: a node's own clock never removes state. The
//! leader scans its applied state, names each token expired by its clock in a `TidyToken` event
//! keyed by that token's control object (so it is ordered with the token's renewals and its
//! revocation, and decided against the key's revision like every other record), and every node
//! applies it only if the stored record had expired by the event's timestamp — the same answer
//! on every node, whatever their clocks say.
//!
//! One tidier runs per leadership term: it wakes every `--token-tidy-interval-secs` (0: only on
//! request) or when `POST /v1/auth/token/tidy` asks, which answers at once, as Vault does: 202
//! with the warning "Tidy operation successfully started in the background", or 200 with "Tidy
//! operation already in progress." while a pass runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use secretlog_node::api::{ApiError, ApiRequest, ApiResponse};
use secretlog_node::context::ReadContext;
use secretlog_schemas::Operation;
use secretlog_state::materializer::now_ms;
use secretlog_state::store::keys;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::committer::Pending;
use crate::request::Command;

/// Tidies queued at once: a pass of any size goes through the committer in exclusive batches of
/// at most this many, without filling its queue.
const TIDY_CHUNK: usize = 256;

/// The leader's tidier: woken by its interval or by a request; one pass at a time.
#[derive(Debug, Default)]
pub struct Tidier {
    wake: Notify,
    running: AtomicBool,
}

/// One expired token found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expired {
    hash: [u8; 32],
    accessor: String,
}

impl Tidier {
    /// Answer `POST auth/token/tidy`: start a pass in the background, as Vault does.
    pub fn request(&self, req: &ApiRequest) -> ApiResponse {
        let body = |warning: &str| crate::auth::warning_body(req, warning);
        if self.running.load(Ordering::SeqCst) {
            return ApiResponse::json(200, &body("Tidy operation already in progress."));
        }
        self.wake.notify_one();
        ApiResponse::json(202, &body("Tidy operation successfully started in the background"))
    }

    /// Run passes until `cancel` (the end of this leadership term): every `interval` (`None`:
    /// only when asked) and whenever a request wakes it.
    pub async fn run(
        self: Arc<Self>,
        ctx: ReadContext,
        queue: mpsc::Sender<Pending>,
        interval: Option<Duration>,
        cancel: CancellationToken,
    ) {
        loop {
            let timer = async {
                match interval {
                    Some(i) => tokio::time::sleep(i).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = timer => {}
            }
            self.running.store(true, Ordering::SeqCst);
            match pass(&ctx, &queue, &cancel).await {
                Ok((found, tidied)) => {
                    tracing::info!(found, tidied, "token tidy pass done");
                }
                Err(e) => tracing::warn!(errors = ?e.errors, "token tidy pass failed; the next pass tries again"),
            }
            self.running.store(false, Ordering::SeqCst);
        }
    }
}

/// Every token in the applied state that has expired by `now_ms`.
async fn expired_tokens(ctx: &ReadContext, now_ms: i64) -> Result<Vec<Expired>, ApiError> {
    let mut out = Vec::new();
    for (key, value) in ctx.store.scan(keys::TOKEN_PREFIX).await? {
        if let Some(e) = expired(&key, &value, now_ms) {
            out.push(e);
        }
    }
    Ok(out)
}

/// The token stored under `key` with `record`, if it had expired by `now_ms`.
fn expired(key: &[u8], record: &[u8], now_ms: i64) -> Option<Expired> {
    let hex = key.strip_prefix(keys::TOKEN_PREFIX)?;
    let hash: [u8; 32] = hex::decode(hex).ok()?.try_into().ok()?;
    let record: secretlog_schemas::auth::TokenRecord = serde_json::from_slice(record).ok()?;
    // The same judgement every node makes when it applies the tidy (at the event's later time).
    (record.expire_ms.is_some_and(|e| e <= now_ms) && !record.accessor.is_empty())
        .then_some(Expired { hash, accessor: record.accessor })
}

/// One pass: find the expired tokens and tidy them; how many were found and how many tidied (a
/// token revoked or tidied meanwhile is refused by the log, and not counted).
async fn pass(
    ctx: &ReadContext,
    queue: &mpsc::Sender<Pending>,
    cancel: &CancellationToken,
) -> Result<(usize, usize), ApiError> {
    let found = expired_tokens(ctx, now_ms()).await?;
    metrics::counter!("secretlog_token_tidy_passes_total").increment(1);
    let mut tidied = 0;
    for chunk in found.chunks(TIDY_CHUNK) {
        let mut waiting = Vec::with_capacity(chunk.len());
        for e in chunk {
            let (tx, rx) = oneshot::channel();
            let cmd = Command::Control {
                name: format!("token/{}", e.accessor),
                op: Operation::TidyToken { token_hash: e.hash },
                body: None,
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok((found.len(), tidied)),
                sent = queue.send(Pending { mount: String::new(), cmd, reply: tx, request_id: String::new() }) => {
                    sent.map_err(|_| ApiError::unavailable("writer stopped"))?;
                }
            }
            waiting.push(rx);
        }
        for rx in waiting {
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(30), rx).await
                && resp.status < 300
            {
                tidied += 1;
            }
        }
    }
    metrics::counter!("secretlog_token_tidy_tokens_total").increment(tidied as u64);
    Ok((found.len(), tidied))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hash: [u8; 32]) -> Vec<u8> {
        keys::token(&hash)
    }

    #[test]
    fn a_token_is_expired_once_its_expiry_has_passed_and_never_without_one() {
        let rec = |expire_ms: Option<i64>| {
            let r = secretlog_schemas::auth::TokenRecord { accessor: "acc".into(), expire_ms, ..Default::default() };
            serde_json::to_vec(&r).unwrap()
        };
        assert_eq!(
            expired(&key([1; 32]), &rec(Some(100)), 100),
            Some(Expired { hash: [1; 32], accessor: "acc".into() })
        );
        assert_eq!(expired(&key([1; 32]), &rec(Some(101)), 100), None);
        assert_eq!(expired(&key([1; 32]), &rec(None), i64::MAX), None, "no expiry: never tidied");
        assert_eq!(expired(b"c/token/zz", &rec(Some(1)), 100), None, "not a token key");
        assert_eq!(expired(&key([1; 32]), b"{", 100), None, "unreadable: left alone");
    }

    #[test]
    fn a_request_starts_a_pass_or_says_one_is_running() {
        let t = Tidier::default();
        let req = ApiRequest { request_id: "r".into(), ..ApiRequest::default() };
        let resp = t.request(&req);
        assert_eq!(resp.status, 202);
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["warnings"][0], "Tidy operation successfully started in the background");
        t.running.store(true, Ordering::SeqCst);
        let resp = t.request(&req);
        assert_eq!(resp.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["warnings"][0], "Tidy operation already in progress.");
    }
}
