//! The checker's clients, and the HTTP reads it makes of the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use secretlog_schemas::ConsistencyToken;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::model::{Effect, KeyHistory, Kind, Op};
use super::{KEYS, key_name, lifecycle_key};
use crate::harness::{Node, eventually};

/// An HTTP answer, or none.
pub struct Reply {
    pub status: u16,
    pub index: Option<String>,
    pub body: Value,
}

pub fn http() -> &'static reqwest::Client {
    static C: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("http client")
    })
}

/// Like `harness::call`, but no answer is an outcome (status 0), not a panic.
pub async fn send(method: &str, url: &str, token: &str, index: Option<&str>, body: Option<Value>) -> Reply {
    send_with(method, url, token, index, false, body).await
}

/// [`send`], asking for a linearizable read (`X-Secretlog-Consistency: strong`) if `strong`.
pub async fn send_with(
    method: &str,
    url: &str,
    token: &str,
    index: Option<&str>,
    strong: bool,
    body: Option<Value>,
) -> Reply {
    let mut rb = http().request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), url);
    rb = rb.header("X-Vault-Token", token);
    if strong {
        rb = rb.header("X-Secretlog-Consistency", "strong");
    }
    if let Some(i) = index {
        rb = rb.header("X-Secretlog-Index", i);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b.to_string());
    }
    let Ok(r) = rb.send().await else { return Reply { status: 0, index: None, body: Value::Null } };
    let status = r.status().as_u16();
    let index = r.headers().get("x-secretlog-index").and_then(|v| v.to_str().ok()).map(str::to_string);
    match r.text().await {
        Ok(text) => Reply { status, index, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) },
        // The answer was cut off: as good as none.
        Err(_) => Reply { status: 0, index: None, body: Value::Null },
    }
}

fn error_of(r: &Reply) -> Option<String> {
    (!matches!(r.status, 200 | 204 | 404)).then(|| {
        let e = r.body.get("errors").map_or_else(|| r.body.to_string(), |e| e.to_string());
        // Group alike errors: drop the details in parentheses (URLs, keys).
        e.split(" (").next().unwrap_or_default().chars().take(160).collect()
    })
}

fn pick<T>(xs: &[T]) -> &T {
    &xs[rand::random::<usize>() % xs.len()]
}

/// A write of `value` to the register `key` through `url` (node `name`), recorded.
async fn write(c: usize, key: String, (name, url): &(String, String), token: &str, value: String) -> Op {
    let start = Instant::now();
    let r =
        send("POST", &format!("{url}/v1/secret/data/{key}"), token, None, Some(json!({"data": {"w": value}}))).await;
    Op {
        client: c,
        kind: Kind::Write,
        key,
        node: name.clone(),
        start,
        end: Instant::now(),
        status: r.status,
        version: r.body["data"]["version"].as_u64(),
        value: Some(value),
        error: error_of(&r),
        index: r.index,
        strong: false,
    }
}

/// Where a client's lifecycle key stands: the next step and the version it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Put a new version.
    Put,
    /// Delete this version.
    Delete(u64),
    /// Undelete it.
    Undelete(u64),
}

/// The next step of client `c`'s lifecycle through `target`, recorded, and the step after it:
/// put a version, delete it, undelete it, again. A step refused for certain is tried again; one of
/// unknown outcome ends the cycle (the checker does not judge that version).
async fn lifecycle_step(
    c: usize,
    step: Lifecycle,
    (name, url): &(String, String),
    token: &str,
    n: u64,
) -> (Op, Lifecycle) {
    let key = lifecycle_key(c);
    let (kind, endpoint, body, version, value) = match step {
        Lifecycle::Put => {
            let value = format!("{c}-{n}");
            (Kind::LifecyclePut, "data", json!({"data": {"w": value}}), None, Some(value))
        }
        Lifecycle::Delete(v) => (Kind::Delete, "delete", json!({"versions": [v]}), Some(v), None),
        Lifecycle::Undelete(v) => (Kind::Undelete, "undelete", json!({"versions": [v]}), Some(v), None),
    };
    let start = Instant::now();
    let r = send("POST", &format!("{url}/v1/secret/{endpoint}/{key}"), token, None, Some(body)).await;
    let op = Op {
        client: c,
        kind,
        key,
        node: name.clone(),
        start,
        end: Instant::now(),
        status: r.status,
        version: version.or(r.body["data"]["version"].as_u64()),
        value,
        error: error_of(&r),
        index: r.index,
        strong: false,
    };
    let next = match (op.effect(), step) {
        (Effect::Acknowledged, Lifecycle::Put) => op.version.map_or(Lifecycle::Put, Lifecycle::Delete),
        (Effect::Acknowledged, Lifecycle::Delete(v)) => Lifecycle::Undelete(v),
        (Effect::Refused, step) => step,
        _ => Lifecycle::Put,
    };
    (op, next)
}

/// One client: a loop of random writes, lifecycle steps and reads, recorded. A third of its
/// reads, at random, are strong (`X-Secretlog-Consistency: strong`, no token): checked as
/// linearizable reads.
pub async fn client(
    c: usize,
    write_targets: Vec<(String, String)>,
    read_targets: Vec<(String, String)>,
    token: String,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
) {
    let mut session = ConsistencyToken::default();
    let mut n = 0u64;
    let mut cycle = Lifecycle::Put;
    while !stop.load(Ordering::Relaxed) {
        let key = key_name(rand::random::<usize>() % KEYS);
        let dice = rand::random::<u32>() % 100;
        let op = if dice < 35 {
            n += 1;
            let op = write(c, key, pick(&write_targets), &token, format!("{c}-{n}")).await;
            if op.status == 200
                && let Some(t) = op.index.as_deref().and_then(|i| i.parse::<ConsistencyToken>().ok())
            {
                session.merge(&t);
            }
            op
        } else if dice < 60 {
            n += 1;
            let (op, next) = lifecycle_step(c, cycle, pick(&write_targets), &token, n).await;
            cycle = next;
            op
        } else {
            let (name, url) = pick(&read_targets);
            // A third of the reads are strong (linearizable): no token, the header instead.
            let strong = rand::random::<u32>() % 3 == 0;
            let index = (!strong && !session.0.is_empty()).then(|| session.to_string());
            let start = Instant::now();
            let r =
                send_with("GET", &format!("{url}/v1/secret/data/{key}"), &token, index.as_deref(), strong, None).await;
            let end = Instant::now();
            Op {
                client: c,
                kind: Kind::Read,
                key,
                node: name.clone(),
                start,
                end,
                status: r.status,
                version: r.body["data"]["metadata"]["version"].as_u64(),
                value: r.body["data"]["data"]["w"].as_str().map(str::to_string),
                index,
                error: error_of(&r),
                strong,
            }
        };
        let failed = !matches!(op.status, 200 | 204 | 404);
        ops.lock().await.push(op);
        // Pace the clients; back off a little more while a node is away.
        tokio::time::sleep(Duration::from_millis(if failed { 50 } else { 5 })).await;
    }
}

/// A burst of register writes: `writers` clients (ids from `first_client`) sending back to back,
/// with no pause, to `targets` until `stop` — so that many writes are in flight when the nemesis
/// strikes (a broker killed mid-produce: outcomes unknown, settled by barriers).
pub fn burst(
    first_client: usize,
    writers: usize,
    targets: &[(String, String)],
    token: &str,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (first_client..first_client + writers)
        .map(|c| {
            let (targets, token, stop, ops) = (targets.to_vec(), token.to_string(), stop.clone(), ops.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = key_name(rand::random::<usize>() % KEYS);
                    let op = write(c, key, pick(&targets), &token, format!("{c}-{n}")).await;
                    ops.lock().await.push(op);
                }
            })
        })
        .collect()
}

pub async fn health(url: &str) -> u16 {
    match http().get(format!("{url}/v1/sys/health")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Index of the leading writer, once exactly one leads and the other stands by.
pub async fn leader(writers: &[Node]) -> usize {
    eventually(Duration::from_secs(60), "exactly one leader writer", || async {
        let mut codes = Vec::new();
        for w in writers {
            codes.push(health(&w.url).await);
        }
        (codes.iter().filter(|c| **c == 200).count() == 1 && codes.iter().all(|c| *c == 200 || *c == 429))
            .then(|| codes.iter().position(|c| *c == 200).unwrap())
    })
    .await
}

pub async fn successes(ops: &Mutex<Vec<Op>>) -> usize {
    ops.lock().await.iter().filter(|o| o.acked_write()).count()
}

/// Writes of any kind acknowledged through a node other than `not_via`, invoked after `since`.
pub async fn successes_since(ops: &Mutex<Vec<Op>>, since: Instant, not_via: &str) -> usize {
    ops.lock()
        .await
        .iter()
        .filter(|o| o.is_write() && o.start > since && o.node != not_via && o.effect() == Effect::Acknowledged)
        .count()
}

/// Whether each version of client `c`'s lifecycle key is deleted, read from `url` once it applied
/// `index`.
pub async fn lifecycle_state(url: &str, token: &str, index: &str, c: usize) -> BTreeMap<u64, bool> {
    let key = lifecycle_key(c);
    let m = send("GET", &format!("{url}/v1/secret/metadata/{key}"), token, Some(index), None).await;
    assert_eq!(m.status, 200, "metadata of {key}: {:?}", m.body);
    m.body["data"]["versions"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(v, meta)| {
                    let deleted = meta["deletion_time"].as_str().is_some_and(|t| !t.is_empty())
                        || meta["destroyed"].as_bool() == Some(true);
                    Some((v.parse().ok()?, deleted))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `secretlog_reader_records_refused_total` of the node at `url`, by reason (empty if it does
/// not answer).
pub async fn refused_records(url: &str) -> BTreeMap<String, u64> {
    let Ok(r) = http().get(format!("{url}/metrics")).send().await else { return BTreeMap::new() };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("secretlog_reader_records_refused_total{"))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?.to_string();
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((reason, n as u64))
        })
        .collect()
}

/// Read `url`'s digest once it has applied `index`; `None` if it has not (yet).
pub async fn caught_up_digest(url: &str, token: &str, index: &ConsistencyToken) -> Option<String> {
    let r = send("GET", &format!("{url}/v1/sys/secretlog/digest"), token, None, None).await;
    if r.status != 200 {
        return None;
    }
    let applied: BTreeMap<i32, i64> = r.body["data"]["applied"]
        .as_object()?
        .iter()
        .filter_map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
        .collect();
    if !index.is_reached_by(&applied) {
        return None;
    }
    Some(format!("{}/{}", r.body["data"]["digest"], r.body["data"]["records"]))
}

/// Read every key's full history from `url`.
pub async fn final_histories(url: &str, token: &str, index: &str) -> BTreeMap<String, KeyHistory> {
    let mut keys = BTreeMap::new();
    for k in 0..KEYS {
        let key = key_name(k);
        let m = send("GET", &format!("{url}/v1/secret/metadata/{key}"), token, Some(index), None).await;
        assert_eq!(m.status, 200, "metadata of {key}: {:?}", m.body);
        let versions: Vec<u64> = m.body["data"]["versions"]
            .as_object()
            .map(|o| o.keys().filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default();
        let values: BTreeMap<u64, Option<String>> = futures::stream::iter(versions)
            .map(|v| {
                let key = key.clone();
                async move {
                    let r =
                        send("GET", &format!("{url}/v1/secret/data/{key}?version={v}"), token, Some(index), None).await;
                    let val =
                        (r.status == 200).then(|| r.body["data"]["data"]["w"].as_str().map(str::to_string)).flatten();
                    (v, val)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let max_versions = m.body["data"]["max_versions"].as_u64().unwrap_or(0);
        keys.insert(key, KeyHistory { versions: values, max_versions });
    }
    keys
}
