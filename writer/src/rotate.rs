//! Key rotation on the leader: Vault's `POST /v1/sys/rotate` and `GET /v1/sys/key-status`,
//! `POST /v1/sys/secretlog/retire-term`, the rewrap throttle `GET|POST /v1/sys/secretlog/rewrap`,
//! and the background rewrap that moves values off older key terms.
//!
//! * **Rotate** appends `AddKeyTerm{n}` (n = one past every term in use) under the `keyring`
//!   control key and answers once this writer has *applied* it: from then on every value it seals
//!   and every record it authenticates uses term `n`. Every other node follows when it applies
//!   the record.
//! * **Rewrap** ([`rewrap`]) runs on the leader for as long as it leads: it walks the stored
//!   values under older terms, re-seals each (same plaintext, same mount/path/version binding)
//!   under the active term and queues a [`Command::Rewrap`] through the committer, so it is
//!   ordered with every other write to the secret. The event replaces a value only if it is
//!   still exactly the one read (a SHA-256 compare-and-swap, applied by every node alike), so a
//!   destroy, a delete or a newer write racing with it wins. Throttled to `rate` values per second
//!   (`--rewrap-rate` / `SECRETLOG_REWRAP_RATE`, default 500, 0 starts it paused; changed at
//!   runtime through `POST /v1/sys/secretlog/rewrap`, where 0 pauses it too).
//! * **Retire** appends `RetireKeyTerm{t}` only when no value is sealed under `t` — checked on
//!   state that includes every write this writer decided before `t` stopped being active:
//!   1. `t` is older than the active term here, so nothing decided from now on seals under it
//!      (puts seal under the active term; restores and rewraps are re-sealed or dropped by
//!      [`crate::plan`] unless under the active term);
//!   2. a *fence* — a command that appends nothing — passes through the committer: every batch
//!      decided before it (the last ones that may have sealed under `t`) has committed;
//!   3. this writer's state applies the log up to the high watermarks read after the fence;
//!   4. the per-term count (kept by the materializer with the state) of `t` is 0.
//!
//! Retiring a term makes nodes refuse to open values under it. It does **not** retire the term's
//! event-authentication key: records in Kafka, the archive and snapshots' history stay
//! verifiable, so a fresh reader or a point-in-time restore replays the whole log after any
//! retirement (see `docs/security.md`, "Key rotation").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use secretlog_node::api::auth::Identity;
use secretlog_node::api::key_status::{self, Throttle, remaining};
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse, Route};
use secretlog_node::context::ReadContext;
use secretlog_schemas::event::KEYRING_CONTROL_NAME;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::topic::HEADER_INDEX;
use secretlog_schemas::{ConsistencyToken, Operation, Rewrapped};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::committer::Pending;
use crate::config::WriterConfig;
use crate::request::Command;

/// Environment variable of `--rewrap-rate`: the rewrap rate at start (values per second; 0
/// starts the rewrap paused).
pub const REWRAP_RATE_ENV: &str = "SECRETLOG_REWRAP_RATE";
/// Default rewrap rate, values per second.
pub const DEFAULT_REWRAP_RATE: u64 = 500;
/// Most values one rewrap step reads and queues.
const REWRAP_STEP: usize = 256;

/// The rewrap rate, values per second (0: paused). One writer per process, so one setting per
/// process; it is the leader's that counts, and a new leader starts from its own `--rewrap-rate`.
static RATE: AtomicU64 = AtomicU64::new(DEFAULT_REWRAP_RATE);

/// Set the rewrap rate: at start from `--rewrap-rate`, at runtime from the rewrap endpoint.
pub fn set_rewrap_rate(rate: u64) {
    RATE.store(rate, Ordering::SeqCst);
    metrics::gauge!("secretlog_rewrap_rate").set(rate as f64);
}

/// The current rewrap rate.
pub fn rewrap_rate() -> u64 {
    RATE.load(Ordering::SeqCst)
}

/// Parse `--rewrap-rate`: a whole number of values per second, 0 meaning "start paused".
pub fn parse_rewrap_rate(text: &str) -> Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| {
        format!(
            "'{text}' is not a rewrap rate: give a whole number of values per second, 0 or more \
             (0 starts the rewrap paused; resume it with `secretlog rotate --rewrap-rate N`)"
        )
    })
}

/// Answer a read of this module's endpoints (key status, rewrap status), from this node's state.
/// The ACL lets the root token read them, and a token with `read` on `sys/key-status` the key
/// status.
pub async fn read(ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    match (req.method.as_str(), req.route()) {
        ("GET", Route::KeyStatus) => key_status::answer(ctx, req, Some(Throttle { rate: rewrap_rate() })).await,
        ("GET", Route::Rewrap) => {
            let counts = ctx.store.sealed_per_term().await?;
            let data = json!({
                "rate": rewrap_rate(),
                "paused": rewrap_rate() == 0,
                "remaining": remaining(&counts, ctx.keyring.active_term()),
            });
            Ok(ApiResponse::data(&req.request_id, data))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Answer a write to this module's endpoints. Root only: these change the cluster's keys.
pub async fn write(
    ctx: &ReadContext,
    req: &ApiRequest,
    who: &Identity,
    queue: mpsc::Sender<Pending>,
    cfg: &WriterConfig,
) -> Result<ApiResponse, ApiError> {
    if !who.is_root() {
        return Err(ApiError::permission_denied());
    }
    let timeout = Duration::from_millis(cfg.write_timeout_ms * 2 + 1000);
    match (req.method.as_str(), req.route()) {
        ("POST" | "PUT", Route::Rotate) => rotate(ctx, &queue, timeout).await,
        ("POST" | "PUT", Route::RetireTerm) => retire(ctx, req, &queue, cfg, timeout).await,
        ("POST" | "PUT", Route::Rewrap) => {
            let rate = body(req)?
                .get("rate")
                .and_then(Value::as_u64)
                .ok_or_else(|| ApiError::bad_request("missing or invalid 'rate' (values per second; 0 pauses)"))?;
            set_rewrap_rate(rate);
            tracing::info!(request_id = %req.request_id, rate, "rewrap rate set");
            Ok(ApiResponse::no_content())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn body(req: &ApiRequest) -> Result<Value, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(format!("failed to parse JSON input: {e}")))
}

/// Queue `cmd` and wait for its answer.
async fn submit(queue: &mpsc::Sender<Pending>, cmd: Command, timeout: Duration) -> Result<ApiResponse, ApiError> {
    let (tx, rx) = oneshot::channel();
    queue
        .send(Pending { mount: String::new(), cmd, reply: tx, request_id: String::new() })
        .await
        .map_err(|_| ApiError::unavailable("writer stopped"))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(_)) => Err(ApiError::unavailable("writer stopped before answering")),
        Err(_) => Err(ApiError::unavailable("outcome unknown: timed out waiting for the commit")),
    }
}

/// Wait until this writer's own state applied the position `resp` committed at.
async fn applied_here(ctx: &ReadContext, resp: &ApiResponse, timeout: Duration) -> bool {
    let Some(token) = resp.header(HEADER_INDEX).and_then(|v| v.parse::<ConsistencyToken>().ok()) else {
        return false;
    };
    ctx.materializer.wait_for(timeout, |p| token.is_reached_by(&p.applied)).await
}

/// `POST /v1/sys/rotate`: add the next key term; answer (204, as Vault) once this writer seals
/// under it.
async fn rotate(ctx: &ReadContext, queue: &mpsc::Sender<Pending>, timeout: Duration) -> Result<ApiResponse, ApiError> {
    let terms = ctx.store.key_terms().await?;
    let counts = ctx.store.sealed_per_term().await?;
    // One past every term anything knows of: the log's, this keyring's, and any stored value's
    // (a cluster reseeded from another's snapshot holds values of terms its log never added).
    let newest = terms.active().max(ctx.keyring.active_term()).max(counts.keys().copied().max().unwrap_or(1));
    let term = newest.checked_add(1).ok_or_else(|| ApiError::bad_request("no key term is left after u32::MAX"))?;
    let cmd = Command::Control { name: KEYRING_CONTROL_NAME.into(), op: Operation::AddKeyTerm { term }, body: None };
    let resp = submit(queue, cmd, timeout).await?;
    if resp.status >= 300 {
        return Ok(resp);
    }
    if !applied_here(ctx, &resp, timeout).await || ctx.keyring.active_term() < term {
        return Err(ApiError::unavailable(format!(
            "key term {term} was committed, but this writer has not applied it yet; new writes use it once it has"
        )));
    }
    metrics::counter!("secretlog_key_rotations_total").increment(1);
    tracing::info!(term, "key rotated: new writes are sealed under the new term; the rewrap moves older values");
    Ok(resp)
}

/// `POST /v1/sys/secretlog/retire-term {"term": N}`.
async fn retire(
    ctx: &ReadContext,
    req: &ApiRequest,
    queue: &mpsc::Sender<Pending>,
    cfg: &WriterConfig,
    timeout: Duration,
) -> Result<ApiResponse, ApiError> {
    let term = body(req)?
        .get("term")
        .and_then(Value::as_u64)
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| ApiError::bad_request("missing or invalid 'term' (a key term number)"))?;
    let retired = ctx.store.key_terms().await?.is_retired(term);
    if check_retire(term, ctx.keyring.active_term(), retired, values_under(ctx, term).await?)? == Retire::Already {
        return Ok(ApiResponse::no_content());
    }
    // The fence: a rewrap of nothing appends nothing, and is answered only after every batch
    // decided before it committed (the committer decides batches one at a time).
    let fence = submit(queue, Command::Rewrap { path: String::new(), values: vec![] }, timeout).await?;
    if fence.status >= 300 {
        return Ok(fence);
    }
    let marks = high_watermarks(cfg).await?;
    let caught_up = ctx
        .materializer
        .wait_for(timeout, |p| marks.iter().all(|(part, hw)| p.applied.get(part).copied().unwrap_or(0) >= hw - 1))
        .await;
    if !caught_up {
        return Err(ApiError::unavailable("this writer has not applied the log to its end yet; retry"));
    }
    check_retire(term, ctx.keyring.active_term(), false, values_under(ctx, term).await?)?;
    let cmd = Command::Control { name: KEYRING_CONTROL_NAME.into(), op: Operation::RetireKeyTerm { term }, body: None };
    let resp = submit(queue, cmd, timeout).await?;
    if resp.status < 300 && !applied_here(ctx, &resp, timeout).await {
        return Err(ApiError::unavailable(format!(
            "the retirement of key term {term} was committed, but this writer has not applied it yet"
        )));
    }
    tracing::info!(term, "key term retired: values under it are refused from now on");
    Ok(resp)
}

/// Values stored under `term` on this node.
async fn values_under(ctx: &ReadContext, term: u32) -> Result<u64, ApiError> {
    Ok(ctx.store.sealed_per_term().await?.get(&term).copied().unwrap_or(0))
}

/// What a request to retire `term` may do.
#[derive(Debug, PartialEq, Eq)]
enum Retire {
    /// Retired before: nothing to append.
    Already,
    /// Nothing refuses it (yet: the writer checks again behind its fence).
    Go,
}

/// The rules of retiring `term` while `active` is the active term and `values` values are
/// sealed under it: a 400 naming why — the term does not exist, is the active one, or still
/// seals values (how many) — or what to do.
fn check_retire(term: u32, active: u32, retired: bool, values: u64) -> Result<Retire, ApiError> {
    if term == 0 || term > active {
        return Err(ApiError::bad_request(format!("key term {term} does not exist; the active term is {active}")));
    }
    if term == active {
        return Err(ApiError::bad_request(format!(
            "key term {term} is the active term; rotate first (POST /v1/sys/rotate), let the rewrap move every value, then retire it"
        )));
    }
    if retired {
        return Ok(Retire::Already);
    }
    if values > 0 {
        return Err(ApiError::bad_request(format!(
            "key term {term} still seals {values} values; wait for the rewrap to move them (GET /v1/sys/key-status, \
             or `secretlog rotate --wait`), then retire it"
        )));
    }
    Ok(Retire::Go)
}

/// The high watermark of every partition of the topic, read now from the brokers.
async fn high_watermarks(cfg: &WriterConfig) -> Result<BTreeMap<i32, i64>, ApiError> {
    let (bootstrap, topic) = (cfg.log.bootstrap.clone(), cfg.log.topic.clone());
    tokio::task::spawn_blocking(move || {
        let n = secretlog_state::kafka::partition_count(&bootstrap, &topic, Duration::from_secs(5))?;
        let consumer: BaseConsumer =
            secretlog_state::kafka::consumer_config(&bootstrap, "secretlog-rotate-watermarks").create()?;
        (0..n)
            .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, Duration::from_secs(5))?.1)))
            .collect::<Result<BTreeMap<i32, i64>, secretlog_state::NodeError>>()
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("reading the log's end: {e}")))?
    .map_err(ApiError::from)
}

/// The background rewrap: runs on the leader until `cancel` (the end of its leadership) fires.
pub async fn rewrap(ctx: ReadContext, queue: mpsc::Sender<Pending>, cancel: CancellationToken) {
    metrics::gauge!("secretlog_rewrap_rate").set(rewrap_rate() as f64);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let pause = match rewrap_step(&ctx, &queue, &mut after, &cancel).await {
            Ok(Step::Moved { values, took }) => {
                // Throttle: `values` at `rate` per second take at least this long.
                let rate = rewrap_rate().max(1);
                Duration::from_secs_f64(values as f64 / rate as f64).saturating_sub(took)
            }
            Ok(Step::Idle) => Duration::from_millis(500),
            Err(e) => {
                tracing::warn!(errors = ?e.errors, "rewrap step failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

enum Step {
    /// Nothing to do now (nothing under older terms, paused, or a pass just ended).
    Idle,
    /// `values` were queued and answered, in `took`.
    Moved { values: usize, took: Duration },
}

async fn rewrap_step(
    ctx: &ReadContext,
    queue: &mpsc::Sender<Pending>,
    after: &mut Option<Vec<u8>>,
    cancel: &CancellationToken,
) -> Result<Step, ApiError> {
    let rate = rewrap_rate();
    let active = ctx.keyring.active_term();
    let counts = ctx.store.sealed_per_term().await?;
    if rate == 0 || remaining(&counts, active) == 0 {
        *after = None;
        return Ok(Step::Idle);
    }
    let started = Instant::now();
    let step = usize::try_from(rate).unwrap_or(usize::MAX).clamp(1, REWRAP_STEP);
    let older = |v: &[u8]| SealedValue::term_of(v).is_some_and(|t| t < active);
    // Every mount's values, those of disabled mounts too: each counts against retiring its term.
    let (values, next) = ctx.store.values_after("", after.as_deref(), step, older).await?;
    let pass_ended = next.is_none();
    *after = next;
    // Keyed by (storage id, path): the same path in two mounts is two secrets.
    let mut by_path: BTreeMap<(String, String), Vec<Rewrapped>> = BTreeMap::new();
    let n = values.len();
    for v in values {
        let sctx = SealContext { mount: &v.mount, path: &v.path, version: v.version };
        match SealedValue::decode(&v.sealed).and_then(|s| s.reseal(&ctx.keyring, &sctx)) {
            Ok(new) => by_path.entry((v.mount, v.path)).or_default().push(Rewrapped {
                version: v.version,
                replaces: Rewrapped::digest(&v.sealed),
                sealed: new.encode(),
            }),
            Err(e) => {
                tracing::error!(path = %v.path, version = v.version, error = %e, "a stored value does not open; it cannot be rewrapped");
            }
        }
    }
    let mut waiting = Vec::with_capacity(by_path.len());
    for ((mount, path), values) in by_path {
        let (tx, rx) = oneshot::channel();
        tokio::select! {
            _ = cancel.cancelled() => return Ok(Step::Idle),
            sent = queue.send(Pending { mount, cmd: Command::Rewrap { path, values }, reply: tx, request_id: String::new() }) => {
                sent.map_err(|_| ApiError::unavailable("writer stopped"))?;
            }
        }
        waiting.push(rx);
    }
    let mut failed = 0usize;
    for rx in waiting {
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(resp)) if resp.status < 300 => {}
            _ => failed += 1,
        }
    }
    metrics::counter!("secretlog_rewrap_values_total").increment(n as u64);
    if failed > 0 {
        tracing::warn!(failed, "rewrap commands not committed; the next pass retries them");
    }
    if n == 0 && pass_ended {
        // A pass found nothing more: what remains is committed but not yet applied here.
        return Ok(Step::Idle);
    }
    Ok(Step::Moved { values: n, took: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrap_rates_parse_as_whole_values_per_second_and_zero_means_paused() {
        assert_eq!(parse_rewrap_rate("500"), Ok(500));
        assert_eq!(parse_rewrap_rate(" 20 "), Ok(20));
        assert_eq!(parse_rewrap_rate("0"), Ok(0), "0 starts the rewrap paused");
        for bad in ["", "-1", "1.5", "fast", "1e3", "18446744073709551616"] {
            let why = parse_rewrap_rate(bad).unwrap_err();
            assert!(why.contains(&format!("'{bad}' is not a rewrap rate")), "{bad}: {why}");
            assert!(why.contains("whole number of values per second"), "{bad}: {why}");
        }
    }

    #[test]
    fn retiring_is_refused_for_missing_active_and_used_terms_naming_why() {
        let why = |r: Result<Retire, ApiError>| r.unwrap_err().errors.join("");
        assert!(why(check_retire(0, 2, false, 0)).contains("does not exist"));
        assert!(why(check_retire(3, 2, false, 0)).contains("does not exist; the active term is 2"));
        assert!(why(check_retire(2, 2, false, 0)).contains("is the active term"));
        assert!(why(check_retire(1, 2, false, 4210)).contains("key term 1 still seals 4210 values"));
        assert_eq!(check_retire(1, 2, false, 4210).unwrap_err().status, 400);
        assert_eq!(check_retire(1, 2, false, 0).unwrap(), Retire::Go);
        assert_eq!(check_retire(1, 3, true, 0).unwrap(), Retire::Already, "retiring again changes nothing");
    }

    #[test]
    fn every_endpoint_is_routed_here_and_nothing_else() {
        for p in ["v1/sys/rotate", "v1/sys/key-status", "v1/sys/secretlog/retire-term", "v1/sys/secretlog/rewrap"] {
            assert!(Route::of(p).is_rotation(), "{p}");
        }
        assert!(!Route::of("v1/sys/secretlog/restore").is_rotation());
        assert!(!Route::of("v1/secret/data/sys/rotate").is_rotation());
    }
}
