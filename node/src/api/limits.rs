//! Request limits applied in front of every handler: request-head size, per-token request rate,
//! and per-route-group concurrency (bulkheads).
//!
//! * The **rate** is a token bucket per API token, keyed by a hash of the token — the token itself
//!   is never stored. Over it: 429 with `Retry-After` and Vault's wording for its rate limit
//!   quotas, "rate limit quota exceeded": the client is sending too much.
//! * A **bulkhead** bounds the requests of one route group served at once, with a bounded queue
//!   in front (the seed's "request queues per engine"), so a flood of slow writes (Kafka down,
//!   every write waiting for its timeout) cannot take the slots reads and health need. Full:
//!   503 with `Retry-After`, as Vault answers when it sheds load ("overloaded, try again
//!   later"): the server, not this client, is out of capacity — Vault keeps 429 for "this client
//!   asks too much". Health and `/metrics` belong to no group and are never refused.
//!
//! The decisions are pure functions of the state and an `Instant` passed in, so the tests drive
//! time by hand.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, ErrorKind};
use crate::config::HttpConfig;

/// Why a request was refused before its handler ran: the `reason` label of
/// `secretlog_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    HeaderSize,
    BodySize,
    RateLimit,
    Bulkhead,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::HeaderSize => "header_size",
            Refusal::BodySize => "body_size",
            Refusal::RateLimit => "rate_limit",
            Refusal::Bulkhead => "bulkhead",
        }
    }
}

/// Count a refusal (and the group it was in).
pub(crate) fn count_refusal(reason: Refusal, group: RouteGroup) {
    metrics::counter!("secretlog_requests_refused_total", "reason" => reason.label(), "group" => group.label())
        .increment(1);
}

/// The route groups that get a bulkhead each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RouteGroup {
    /// `/v1/sys/health` and `/metrics`: never limited, so load balancers and monitoring see the
    /// node even when every other group is full.
    Health,
    KvRead,
    KvWrite,
    Sys,
    Auth,
}

impl RouteGroup {
    /// The group of a request, from its method and its path (without the leading `/`).
    pub fn of(method: &str, path: &str) -> RouteGroup {
        let path = path.trim_start_matches('/');
        if path == "metrics" || path == "v1/sys/health" {
            return RouteGroup::Health;
        }
        if path.starts_with("v1/sys/") || path == "v1/sys" {
            return RouteGroup::Sys;
        }
        if path.starts_with("v1/auth/") || path == "v1/auth" {
            return RouteGroup::Auth;
        }
        match method.to_ascii_uppercase().as_str() {
            "POST" | "PUT" | "PATCH" | "DELETE" => RouteGroup::KvWrite,
            _ => RouteGroup::KvRead,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            RouteGroup::Health => "health",
            RouteGroup::KvRead => "kv-read",
            RouteGroup::KvWrite => "kv-write",
            RouteGroup::Sys => "sys",
            RouteGroup::Auth => "auth",
        }
    }
}

/// What a token's hash is keyed by: the first 16 bytes of SHA-256(token).
pub(crate) type TokenKey = [u8; 16];

/// The rate limiter's key for a token. The token is hashed at once and never kept.
pub(crate) fn token_key(token: &str) -> TokenKey {
    let digest = Sha256::digest(token.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket { tokens: burst, at: now }
    }

    /// Refill for the time since the last look, then take one request if there is one.
    /// `Err(wait)` says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now.max(self.at);
    }
}

/// A token bucket per token key, with a bounded number of keys: past `max_keys` (after buckets
/// that have refilled, and so say nothing, are dropped), new keys share one overflow bucket, so
/// a flood of made-up tokens cannot grow memory and cannot escape the limit either.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    max_keys: usize,
    state: Mutex<RateState>,
}

#[derive(Debug)]
struct RateState {
    buckets: HashMap<TokenKey, Bucket>,
    overflow: Option<Bucket>,
}

impl RateLimiter {
    /// `rate` requests per second, `burst` at once (at least 1).
    pub fn new(rate: f64, burst: f64, max_keys: usize) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            max_keys: max_keys.max(1),
            state: Mutex::new(RateState { buckets: HashMap::new(), overflow: None }),
        }
    }

    /// Take one request for `key` at `now`; `Err(wait)` when its bucket is empty.
    pub fn check(&self, key: TokenKey, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = state.buckets.get_mut(&key) {
            return b.take(rate, burst, now);
        }
        if state.buckets.len() >= self.max_keys {
            // A bucket that has refilled is the same as no bucket: forget it.
            state.buckets.retain(|_, b| {
                let mut b = *b;
                b.refill(rate, burst, now);
                b.tokens < burst
            });
        }
        if state.buckets.len() >= self.max_keys {
            let overflow = state.overflow.get_or_insert_with(|| Bucket::full(burst, now));
            return overflow.take(rate, burst, now);
        }
        let mut b = Bucket::full(burst, now);
        let taken = b.take(rate, burst, now);
        state.buckets.insert(key, b);
        taken
    }

    /// Keys tracked now (tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).buckets.len()
    }
}

/// What a bulkhead does with a request that arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A slot is free: serve it now.
    Now,
    /// No slot, but room in the queue: wait for one (up to the queue timeout).
    Queue,
    /// No slot and a full queue: refuse at once.
    Refuse,
}

/// The bulkhead's decision, as a pure function of what it holds.
pub(crate) fn admission(free_slots: usize, queued: usize, max_queued: usize) -> Admission {
    if free_slots > 0 && queued == 0 {
        Admission::Now
    } else if queued < max_queued {
        Admission::Queue
    } else {
        Admission::Refuse
    }
}

/// At most `max_concurrent` requests of one group at once, `max_queued` more waiting up to
/// `queue_timeout` each.
#[derive(Debug)]
pub(crate) struct Bulkhead {
    slots: std::sync::Arc<Semaphore>,
    max_queued: usize,
    queued: AtomicUsize,
    queue_timeout: Duration,
}

/// Holds a bulkhead slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Bulkhead {
    pub fn new(max_concurrent: usize, max_queued: usize, queue_timeout: Duration) -> Self {
        Bulkhead {
            slots: std::sync::Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_queued,
            queued: AtomicUsize::new(0),
            queue_timeout,
        }
    }

    /// A slot, at once or after waiting in the queue; `None` when the group is full.
    pub(crate) async fn enter(&self) -> Option<Slot> {
        match admission(self.slots.available_permits(), self.queued.load(Ordering::Acquire), self.max_queued) {
            Admission::Now => {
                if let Ok(p) = self.slots.clone().try_acquire_owned() {
                    return Some(Slot(p));
                }
                // Taken between the look and the grab: fall through to the queue, if there is
                // room in it.
                if self.queued.load(Ordering::Acquire) >= self.max_queued {
                    return None;
                }
            }
            Admission::Queue => {}
            Admission::Refuse => return None,
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let waited = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Some(Slot(p)),
            _ => None,
        }
    }

    /// Requests served now (tests).
    #[cfg(test)]
    pub(crate) fn in_flight(&self, max_concurrent: usize) -> usize {
        max_concurrent.saturating_sub(self.slots.available_permits())
    }
}

/// All the limits of one listener.
#[derive(Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    rate: Option<RateLimiter>,
    kv_read: Bulkhead,
    kv_write: Bulkhead,
    sys: Bulkhead,
    auth: Bulkhead,
}

/// Most token keys the rate limiter tracks before new ones share the overflow bucket.
const MAX_RATE_KEYS: usize = 100_000;

impl Limits {
    pub(crate) fn from_config(http: &HttpConfig) -> Self {
        let queue = Duration::from_millis(http.bulkhead_queue_timeout_ms);
        let bulkhead = |n| Bulkhead::new(n, http.bulkhead_queue, queue);
        let rate = (http.rate_limit_per_token > 0.0).then(|| {
            let burst = if http.rate_limit_burst == 0 {
                http.rate_limit_per_token.ceil()
            } else {
                f64::from(http.rate_limit_burst)
            };
            RateLimiter::new(http.rate_limit_per_token, burst, MAX_RATE_KEYS)
        });
        Limits {
            max_header_bytes: http.max_header_bytes,
            rate,
            kv_read: bulkhead(http.max_concurrent_kv_read),
            kv_write: bulkhead(http.max_concurrent_kv_write),
            sys: bulkhead(http.max_concurrent_sys),
            auth: bulkhead(http.max_concurrent_auth),
        }
    }

    /// No limits at all (for callers that serve a handler without a node configuration).
    pub fn unlimited() -> Self {
        let big = || Bulkhead::new(Semaphore::MAX_PERMITS, 0, Duration::ZERO);
        Limits { max_header_bytes: usize::MAX, rate: None, kv_read: big(), kv_write: big(), sys: big(), auth: big() }
    }

    /// 431 when the request head is larger than allowed.
    pub(crate) fn check_head(&self, head_bytes: usize) -> Result<(), ApiError> {
        if head_bytes > self.max_header_bytes {
            return Err(ApiError::new(ErrorKind::HeadersTooLarge, "request header fields too large"));
        }
        Ok(())
    }

    /// 429 when `token` has spent its rate. Requests without a token are not rate-limited here
    /// (they are refused by authorization, or are health checks).
    pub(crate) fn check_rate(&self, token: Option<&str>, now: Instant) -> Result<(), ApiError> {
        let (Some(rate), Some(token)) = (&self.rate, token) else { return Ok(()) };
        rate.check(token_key(token), now).map_err(|wait| {
            let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u32;
            ApiError::new(ErrorKind::RateLimited { retry_after_secs }, "rate limit quota exceeded")
        })
    }

    /// A slot in the group's bulkhead, or 503 when it is full. Health needs none.
    pub(crate) async fn enter(&self, group: RouteGroup) -> Result<Option<Slot>, ApiError> {
        let bulkhead = match group {
            RouteGroup::Health => return Ok(None),
            RouteGroup::KvRead => &self.kv_read,
            RouteGroup::KvWrite => &self.kv_write,
            RouteGroup::Sys => &self.sys,
            RouteGroup::Auth => &self.auth,
        };
        match bulkhead.enter().await {
            Some(slot) => Ok(Some(slot)),
            None => Err(ApiError::unavailable(format!(
                "overloaded, try again later: too many {} requests in flight",
                group.label()
            ))),
        }
    }
}

/// The size of a request head as the limit counts it: request line and header lines.
pub(crate) fn head_size(method: &str, path_and_query: usize, headers: &warp::http::HeaderMap) -> usize {
    let line = method.len() + path_and_query + " HTTP/1.1\r\n".len() + 1;
    headers.iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4) + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_token_spends_its_burst_then_gets_the_rate() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(2.0, 3.0, 10);
        let k = token_key("alice");
        for _ in 0..3 {
            assert!(rl.check(k, t0).is_ok());
        }
        let wait = rl.check(k, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "one request every 1/rate s");
        assert!(rl.check(k, at(t0, 499)).is_err(), "not refilled yet");
        assert!(rl.check(k, at(t0, 500)).is_ok(), "refilled after 1/rate");
        assert!(rl.check(k, at(t0, 500)).is_err());
        // A long pause refills to the burst, not past it.
        for _ in 0..3 {
            assert!(rl.check(k, at(t0, 60_000)).is_ok());
        }
        assert!(rl.check(k, at(t0, 60_000)).is_err());
    }

    #[test]
    fn one_token_over_its_rate_leaves_another_untouched() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(1.0, 1.0, 10);
        assert!(rl.check(token_key("a"), t0).is_ok());
        assert!(rl.check(token_key("a"), t0).is_err());
        assert!(rl.check(token_key("b"), t0).is_ok(), "b has a bucket of its own");
    }

    #[test]
    fn a_clock_going_backwards_neither_refills_nor_panics() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let rl = RateLimiter::new(1.0, 1.0, 10);
        assert!(rl.check(token_key("a"), t0).is_ok());
        assert!(rl.check(token_key("a"), t0 - Duration::from_secs(5)).is_err());
        assert!(rl.check(token_key("a"), at(t0, 1000)).is_ok());
    }

    #[test]
    fn keys_are_bounded_and_extra_ones_share_an_overflow_bucket() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(1.0, 2.0, 4);
        for i in 0..4 {
            assert!(rl.check(token_key(&format!("t{i}")), t0).is_ok());
        }
        assert_eq!(rl.tracked(), 4);
        // No bucket has refilled: new tokens share one overflow bucket of burst 2.
        assert!(rl.check(token_key("x"), t0).is_ok());
        assert!(rl.check(token_key("y"), t0).is_ok());
        assert!(rl.check(token_key("z"), t0).is_err(), "a flood of new tokens is limited too");
        assert_eq!(rl.tracked(), 4, "memory stays bounded");
        // Once the tracked buckets have refilled they are forgotten and new keys get their own.
        assert!(rl.check(token_key("w"), at(t0, 5000)).is_ok());
        assert_eq!(rl.tracked(), 1);
    }

    #[test]
    fn the_limiter_keeps_hashes_not_tokens() {
        let k = token_key("hvs.very-secret-token");
        assert_eq!(k.len(), 16);
        assert!(!k.windows(4).any(|w| w == b"very"));
        assert_ne!(token_key("a"), token_key("b"));
    }

    #[test]
    fn admission_is_now_queue_or_refuse() {
        assert_eq!(admission(1, 0, 0), Admission::Now);
        assert_eq!(admission(0, 0, 0), Admission::Refuse);
        assert_eq!(admission(0, 0, 2), Admission::Queue);
        assert_eq!(admission(0, 2, 2), Admission::Refuse);
        assert_eq!(admission(1, 1, 2), Admission::Queue, "a free slot goes to the queue's head first");
    }

    #[test]
    fn routes_fall_into_their_groups() {
        assert_eq!(RouteGroup::of("GET", "v1/sys/health"), RouteGroup::Health);
        assert_eq!(RouteGroup::of("GET", "/metrics"), RouteGroup::Health);
        assert_eq!(RouteGroup::of("GET", "v1/secret/data/a"), RouteGroup::KvRead);
        assert_eq!(RouteGroup::of("LIST", "v1/secret/metadata/"), RouteGroup::KvRead);
        assert_eq!(RouteGroup::of("POST", "v1/secret/data/a"), RouteGroup::KvWrite);
        assert_eq!(RouteGroup::of("delete", "v1/secret/metadata/a"), RouteGroup::KvWrite);
        assert_eq!(RouteGroup::of("PUT", "v1/sys/policies/acl/p"), RouteGroup::Sys);
        assert_eq!(RouteGroup::of("GET", "v1/sys/seal-status"), RouteGroup::Sys);
        assert_eq!(RouteGroup::of("POST", "v1/auth/token/create"), RouteGroup::Auth);
    }

    #[tokio::test]
    async fn a_full_bulkhead_refuses_and_a_freed_slot_goes_to_the_queue() {
        let b = std::sync::Arc::new(Bulkhead::new(1, 1, Duration::from_secs(30)));
        let first = b.enter().await.expect("a free slot");
        assert_eq!(b.in_flight(1), 1);
        // The second waits in the queue...
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.enter().await.is_some() })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.queued.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "the second request never queued");
            tokio::task::yield_now().await;
        }
        // ...the third finds slot and queue full and is refused at once.
        assert!(b.enter().await.is_none());
        drop(first);
        assert!(waiter.await.unwrap(), "the queued request got the freed slot");
    }

    #[tokio::test]
    async fn a_queued_request_gives_up_after_the_queue_timeout() {
        let b = Bulkhead::new(1, 4, Duration::from_millis(20));
        let _held = b.enter().await.expect("a free slot");
        let started = Instant::now();
        assert!(b.enter().await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(b.queued.load(Ordering::Acquire), 0, "it left the queue");
    }

    #[test]
    fn limits_answer_vault_style() {
        let http = test_config();
        let l = Limits::from_config(&http);
        assert_eq!(l.check_head(100).map_err(|e| e.status), Ok(()));
        let e = l.check_head(10_000).unwrap_err();
        assert_eq!((e.status, e.errors[0].as_str()), (431, "request header fields too large"));
        let t0 = Instant::now();
        assert!(l.check_rate(Some("t"), t0).is_ok());
        assert!(l.check_rate(Some("t"), t0).is_ok());
        let e = l.check_rate(Some("t"), t0).unwrap_err();
        assert_eq!((e.status, e.errors[0].as_str(), e.retry_after), (429, "rate limit quota exceeded", Some(1)));
        assert!(l.check_rate(None, t0).is_ok(), "no token, no bucket");
    }

    fn test_config() -> HttpConfig {
        HttpConfig {
            tls_cert: None,
            tls_key: None,
            tls_reload_interval_ms: 1000,
            tls_ca: None,
            max_header_bytes: 1024,
            rate_limit_per_token: 1.0,
            rate_limit_burst: 2,
            max_concurrent_kv_read: 1,
            max_concurrent_kv_write: 1,
            max_concurrent_sys: 1,
            max_concurrent_auth: 1,
            bulkhead_queue: 0,
            bulkhead_queue_timeout_ms: 10,
        }
    }

    #[tokio::test]
    async fn a_full_group_does_not_block_another_or_health() {
        let l = Limits::from_config(&test_config());
        let _write = l.enter(RouteGroup::KvWrite).await.unwrap();
        let e = l.enter(RouteGroup::KvWrite).await.unwrap_err();
        assert_eq!(e.status, 503);
        assert_eq!(e.retry_after, Some(1));
        assert!(l.enter(RouteGroup::KvRead).await.is_ok());
        assert!(l.enter(RouteGroup::Health).await.is_ok());
    }
}
