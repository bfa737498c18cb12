//! Issue #9: a Jepsen-style fault-injection checker.
//!
//! Concurrent clients write and read a small key space — writes to either writer or through a
//! reader (forwarded to the leader), reads on a random reader carrying the client's session
//! token — while a nemesis kills the leader writer, kills a Kafka broker, pauses a reader with
//! SIGSTOP and kills a reader. Every operation is recorded; afterwards the final state is read
//! back and [`check`], a pure function over the history and that state, looks for lost
//! acknowledged writes, versions given twice, real-time order broken, stale reads, writes that
//! landed twice and readers that did not converge. The `planted_*` tests feed `check` histories
//! with a known bug and assert it is reported, so a green run means something.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use secretlog_schemas::ConsistencyToken;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::harness::{BrokerFaults, Node, Stack, StackOpts, eventually, exclusive};

/// Keys the clients share.
const KEYS: usize = 20;
/// Concurrent clients.
const CLIENTS: usize = 6;
/// Set on every key before the load, so that no acknowledged version is pruned.
const MAX_VERSIONS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Write,
    Read,
}

/// One client operation and its outcome.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub kind: Kind,
    pub key: String,
    /// Which node the client talked to.
    pub node: String,
    pub start: Instant,
    pub end: Instant,
    /// HTTP status; 0 when there was no answer (connection refused, timeout).
    pub status: u16,
    /// Write: the version acknowledged. Read: the version seen.
    pub version: Option<u64>,
    /// Write: the (unique) value written. Read: the value seen.
    pub value: Option<String>,
    /// Write: the consistency token answered. Read: the session token sent.
    pub index: Option<String>,
    /// The error answered, if any (for the report).
    pub error: Option<String>,
}

impl Op {
    fn acked_write(&self) -> bool {
        self.kind == Kind::Write && self.status == 200
    }
}

/// One key's history as the cluster holds it after the load.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    /// Retained versions and their value (`None`: listed in metadata but unreadable).
    pub versions: BTreeMap<u64, Option<String>>,
    pub max_versions: u64,
}

/// What the cluster holds after the load.
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    pub keys: BTreeMap<String, KeyHistory>,
    /// Each reader's state digest (`None`: could not be read, or not caught up).
    pub digests: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged write's version is not in the key's history (and was not pruned).
    LostWrite { key: String, version: u64, value: String },
    /// An acknowledged write's version holds another value.
    WrongValue { key: String, version: u64, expected: String, found: Option<String> },
    /// Two acknowledged writes were given the same version.
    DuplicateVersion { key: String, version: u64, values: Vec<String> },
    /// A write that completed before another started got a version that is not lower.
    RealTimeOrder { key: String, earlier: (u64, String), later: (u64, String) },
    /// A read with the client's session token saw an older version than the client wrote.
    StaleRead { client: usize, key: String, node: String, required: u64, seen: Option<u64> },
    /// A read saw a (version, value) that the final history does not hold.
    ReadNotInHistory { key: String, version: u64, value: Option<String>, history: Option<String> },
    /// One written value is present more than once.
    DuplicateValue { value: String, at: Vec<(String, u64)> },
    /// A value in the history that no client wrote to this key.
    PhantomValue { key: String, version: u64, value: Option<String> },
    /// Readers disagree on the state digest (or one never caught up).
    Diverged { digests: Vec<(String, Option<String>)> },
    /// A status the API should not give for this operation.
    UnexpectedStatus { kind: Kind, key: String, node: String, status: u16 },
}

/// Whether `version` of a key is gone only because max_versions pruned it.
fn pruned(h: &KeyHistory, version: u64) -> bool {
    let oldest = h.versions.keys().next().copied().unwrap_or(u64::MAX);
    version < oldest && h.versions.len() as u64 >= h.max_versions.max(1)
}

/// Check a recorded history against the final state. Pure: no I/O, no clock.
pub fn check(history: &[Op], fin: &FinalState) -> Vec<Violation> {
    let mut out = Vec::new();
    let empty = KeyHistory::default();
    let hist = |key: &str| fin.keys.get(key).unwrap_or(&empty);

    for o in history {
        let ok = match o.kind {
            // 200, or an indeterminate failure (no answer, 5xx).
            Kind::Write => o.status == 200 || o.status == 0 || o.status >= 500,
            // Absent before its first write: 404. 412: neither the reader nor the leader it
            // forwarded to had applied the session token within the wait — a refusal, no data.
            Kind::Read => matches!(o.status, 0 | 200 | 404 | 412) || o.status >= 500,
        };
        if !ok {
            out.push(Violation::UnexpectedStatus {
                kind: o.kind,
                key: o.key.clone(),
                node: o.node.clone(),
                status: o.status,
            });
        }
    }

    // 1. No acknowledged write lost, and its version holds exactly its value.
    let acked: Vec<&Op> = history.iter().filter(|o| o.acked_write()).collect();
    for o in &acked {
        let (Some(v), Some(val)) = (o.version, o.value.as_ref()) else {
            out.push(Violation::LostWrite {
                key: o.key.clone(),
                version: 0,
                value: o.value.clone().unwrap_or_default(),
            });
            continue;
        };
        let h = hist(&o.key);
        match h.versions.get(&v) {
            Some(Some(found)) if found == val => {}
            Some(found) => out.push(Violation::WrongValue {
                key: o.key.clone(),
                version: v,
                expected: val.clone(),
                found: found.clone(),
            }),
            None if pruned(h, v) => {}
            None => out.push(Violation::LostWrite { key: o.key.clone(), version: v, value: val.clone() }),
        }
    }

    // 2. Per key: versions distinct, and increasing in real-time order.
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in &acked {
        if o.version.is_some() {
            by_key.entry(o.key.as_str()).or_default().push(o);
        }
    }
    for (key, writes) in &by_key {
        let mut per_version: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for w in writes {
            per_version.entry(w.version.unwrap()).or_default().push(w.value.clone().unwrap_or_default());
        }
        for (version, values) in per_version.into_iter().filter(|(_, v)| v.len() > 1) {
            out.push(Violation::DuplicateVersion { key: key.to_string(), version, values });
        }
        // For each write, the highest-versioned write that ended before it started.
        let mut by_end: Vec<&&Op> = writes.iter().collect();
        by_end.sort_by_key(|o| o.end);
        let mut by_start: Vec<&&Op> = writes.iter().collect();
        by_start.sort_by_key(|o| o.start);
        let mut i = 0;
        let mut best: Option<&Op> = None;
        for b in by_start {
            while i < by_end.len() && by_end[i].end < b.start {
                if best.is_none_or(|x| by_end[i].version > x.version) {
                    best = Some(by_end[i]);
                }
                i += 1;
            }
            if let Some(a) = best
                && a.version >= b.version
            {
                out.push(Violation::RealTimeOrder {
                    key: key.to_string(),
                    earlier: (a.version.unwrap(), a.value.clone().unwrap_or_default()),
                    later: (b.version.unwrap(), b.value.clone().unwrap_or_default()),
                });
            }
        }
    }

    // 3. Reads carrying the session token see the client's own writes (or later ones); and
    //    what a read saw is in the final history.
    let mut per_client: HashMap<usize, Vec<&Op>> = HashMap::new();
    for o in history {
        per_client.entry(o.client).or_default().push(o);
    }
    for ops in per_client.values_mut() {
        ops.sort_by_key(|o| o.start);
        let mut own: HashMap<&str, u64> = HashMap::new();
        for o in ops.iter() {
            match o.kind {
                Kind::Write if o.status == 200 => {
                    if let Some(v) = o.version {
                        let e = own.entry(o.key.as_str()).or_insert(0);
                        *e = (*e).max(v);
                    }
                }
                Kind::Write => {}
                Kind::Read => {
                    let required = if o.index.is_some() { own.get(o.key.as_str()).copied().unwrap_or(0) } else { 0 };
                    let seen = match o.status {
                        200 => o.version,
                        404 => None,
                        _ => continue,
                    };
                    if required > 0 && seen.is_none_or(|s| s < required) {
                        out.push(Violation::StaleRead {
                            client: o.client,
                            key: o.key.clone(),
                            node: o.node.clone(),
                            required,
                            seen,
                        });
                    }
                    if let Some(v) = seen {
                        let h = hist(&o.key);
                        match h.versions.get(&v) {
                            Some(found) if *found == o.value => {}
                            None if pruned(h, v) => {}
                            found => out.push(Violation::ReadNotInHistory {
                                key: o.key.clone(),
                                version: v,
                                value: o.value.clone(),
                                history: found.cloned().flatten(),
                            }),
                        }
                    }
                }
            }
        }
    }

    // 4. All readers converge on one state.
    let first = fin.digests.first().and_then(|(_, d)| d.clone());
    if fin.digests.iter().any(|(_, d)| d.is_none() || *d != first) {
        out.push(Violation::Diverged { digests: fin.digests.clone() });
    }

    // 5. Every value present at most once, and only where some client wrote it (acknowledged or
    //    not: failed writes may be present or absent, but never twice).
    let written: HashMap<&str, &str> = history
        .iter()
        .filter(|o| o.kind == Kind::Write)
        .filter_map(|o| o.value.as_deref().map(|v| (v, o.key.as_str())))
        .collect();
    let mut at: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (key, h) in &fin.keys {
        for (v, val) in &h.versions {
            match val.as_deref() {
                Some(val) if written.get(val) == Some(&key.as_str()) => {
                    at.entry(val.to_string()).or_default().push((key.clone(), *v));
                }
                _ => out.push(Violation::PhantomValue { key: key.clone(), version: *v, value: val.clone() }),
            }
        }
    }
    for (value, at) in at.into_iter().filter(|(_, a)| a.len() > 1) {
        out.push(Violation::DuplicateValue { value, at });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The e2e run.

/// An HTTP answer, or none.
struct Reply {
    status: u16,
    index: Option<String>,
    body: Value,
}

fn http() -> &'static reqwest::Client {
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
async fn send(method: &str, url: &str, token: &str, index: Option<&str>, body: Option<Value>) -> Reply {
    let mut rb = http().request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), url);
    rb = rb.header("X-Vault-Token", token);
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

fn key_name(i: usize) -> String {
    format!("chk/k{i:02}")
}

fn pick<T>(xs: &[T]) -> &T {
    &xs[rand::random::<usize>() % xs.len()]
}

/// One client: a loop of random writes and reads, recorded.
async fn client(
    c: usize,
    write_targets: Vec<(String, String)>,
    read_targets: Vec<(String, String)>,
    token: String,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
) {
    let mut session = ConsistencyToken::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = key_name(rand::random::<usize>() % KEYS);
        let op = if rand::random::<bool>() {
            n += 1;
            let value = format!("{c}-{n}");
            let (name, url) = pick(&write_targets);
            let start = Instant::now();
            let r =
                send("POST", &format!("{url}/v1/secret/data/{key}"), &token, None, Some(json!({"data": {"w": value}})))
                    .await;
            let end = Instant::now();
            if r.status == 200
                && let Some(t) = r.index.as_deref().and_then(|i| i.parse::<ConsistencyToken>().ok())
            {
                session.merge(&t);
            }
            Op {
                client: c,
                kind: Kind::Write,
                key,
                node: name.clone(),
                start,
                end,
                status: r.status,
                version: r.body["data"]["version"].as_u64(),
                value: Some(value),
                error: error_of(&r),
                index: r.index,
            }
        } else {
            let (name, url) = pick(&read_targets);
            let index = (!session.0.is_empty()).then(|| session.to_string());
            let start = Instant::now();
            let r = send("GET", &format!("{url}/v1/secret/data/{key}"), &token, index.as_deref(), None).await;
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
            }
        };
        let failed = !matches!(op.status, 200 | 404);
        ops.lock().await.push(op);
        // Pace the clients; back off a little more while a node is away.
        tokio::time::sleep(Duration::from_millis(if failed { 50 } else { 5 })).await;
    }
}

async fn health(url: &str) -> u16 {
    match http().get(format!("{url}/v1/sys/health")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Index of the leading writer, once exactly one leads and the other stands by.
async fn leader(writers: &[Node]) -> usize {
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

async fn successes(ops: &Mutex<Vec<Op>>) -> usize {
    ops.lock().await.iter().filter(|o| o.acked_write()).count()
}

/// Read `url`'s digest once it has applied `index`; `None` if it has not (yet).
async fn caught_up_digest(url: &str, token: &str, index: &ConsistencyToken) -> Option<String> {
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
async fn final_histories(url: &str, token: &str, index: &str) -> BTreeMap<String, KeyHistory> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_finds_no_violation_under_faults() {
    let Some((cluster, _guard)) = exclusive() else {
        eprintln!("external cluster: broker faults are not injected");
        return;
    };
    let kafka = cluster.local.as_ref().expect("local cluster");
    let began = Instant::now();
    let s = Stack::start(
        cluster,
        StackOpts { name: "checker", partitions: 3, readers: 2, standbys: 1, reader_args: vec![] },
    )
    .await;
    let Stack { writer, standbys, mut readers, token, .. } = s;
    let mut writers = vec![writer];
    writers.extend(standbys);
    let leader_url = writers[0].url.clone();
    for k in 0..KEYS {
        let key = key_name(k);
        let r = send(
            "POST",
            &format!("{leader_url}/v1/secret/metadata/{key}"),
            &token,
            None,
            Some(json!({"max_versions": MAX_VERSIONS})),
        )
        .await;
        assert_eq!(r.status, 204, "max_versions on {key}: {:?}", r.body);
    }

    // The load.
    let named = |ns: &[Node]| ns.iter().map(|n| (n.name.clone(), n.url.clone())).collect::<Vec<_>>();
    let read_targets = named(&readers);
    let write_targets: Vec<(String, String)> = named(&writers).into_iter().chain(read_targets.clone()).collect();
    let ops = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client(
                c,
                write_targets.clone(),
                read_targets.clone(),
                token.clone(),
                stop.clone(),
                ops.clone(),
            ))
        })
        .collect();
    eventually(Duration::from_secs(30), "steady writes before the faults", || async {
        (successes(&ops).await >= 30).then_some(())
    })
    .await;

    // The nemesis: two rounds of leader kill, broker kill, reader pause, reader kill, a few
    // seconds apart. A killed broker is restarted after 5 s; the cluster's recovery (replicas
    // back in sync, slow on a loaded machine) is awaited in the background, and before the next
    // broker is killed, so that never more than one broker is down.
    let mut faults: Vec<String> = Vec::new();
    let mut note = |what: String| {
        eprintln!("[checker] +{:>5.1}s nemesis: {what}", load_started.elapsed().as_secs_f64());
        faults.push(what);
    };
    let pause = |secs: u64| tokio::time::sleep(Duration::from_secs(secs));
    let mut brokers = Some(BrokerFaults::new(kafka));
    let mut healing: Option<tokio::task::JoinHandle<(BrokerFaults<'static>, u32, Duration, Duration)>> = None;
    for round in 0..2 {
        let l = leader(&writers).await;
        note(format!("kill -9 leader {}", writers[l].name));
        writers[l].kill9();
        writers[1 - l].wait_health(200, Duration::from_secs(30)).await;
        writers[l].restart();
        // Normally standing by; a broker fault may have moved leadership meanwhile.
        let now = leader(&writers).await;
        note(format!("{} restarted; {} leads", writers[l].name, writers[now].name));

        if let Some(h) = healing.take() {
            let (b, broker, restarted, ready) = h.await.expect("healing the broker");
            note(format!(
                "broker {broker} was restarted at +{:.1}s, cluster ready at +{:.1}s",
                restarted.as_secs_f64(),
                ready.as_secs_f64()
            ));
            brokers = Some(b);
        }
        pause(4).await;
        let broker = if round == 0 { 2 } else { 3 };
        note(format!("kill -9 broker {broker}"));
        let mut down = brokers.take().expect("no broker fault under way");
        tokio::task::block_in_place(|| down.kill(broker));
        healing = Some(tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_secs(5));
            let restarted = load_started.elapsed();
            down.heal();
            (down, broker, restarted, load_started.elapsed())
        }));

        pause(4).await;
        let r = &readers[round % readers.len()];
        let pid = r.pid().expect("reader running");
        note(format!("SIGSTOP {}", r.name));
        secretlog_ops::process::signal(pid, libc::SIGSTOP).expect("SIGSTOP");
        pause(2).await;
        secretlog_ops::process::signal(pid, libc::SIGCONT).expect("SIGCONT");
        note(format!("SIGCONT {}", r.name));

        pause(4).await;
        let i = (round + 1) % readers.len();
        note(format!("kill -9 {}", readers[i].name));
        readers[i].kill9();
        pause(1).await;
        readers[i].restart();
        readers[i].wait_health(473, Duration::from_secs(60)).await;
        note(format!("{} restarted", readers[i].name));
        pause(4).await;
    }
    // At least a minute of load in all (the faults take longer on a loaded machine).
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(load_started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    let load_time = load_started.elapsed();
    let history = Arc::try_unwrap(ops).expect("clients stopped").into_inner();
    if let Some(h) = healing.take() {
        let (_, broker, restarted, ready) = h.await.expect("healing the broker");
        note(format!(
            "broker {broker} was restarted at +{:.1}s, cluster ready at +{:.1}s",
            restarted.as_secs_f64(),
            ready.as_secs_f64()
        ));
    }
    let injected = faults.iter().filter(|f| !f.contains("restarted") && !f.starts_with("SIGCONT")).count();

    // Everyone healthy and caught up.
    leader(&writers).await;
    for r in &readers {
        r.wait_health(473, Duration::from_secs(60)).await;
    }
    let mut all = ConsistencyToken::default();
    for o in history.iter().filter(|o| o.acked_write()) {
        if let Some(t) = o.index.as_deref().and_then(|i| i.parse::<ConsistencyToken>().ok()) {
            all.merge(&t);
        }
    }
    // Converged: every reader past every acknowledged write, the same digest twice in a row
    // (an unacknowledged write may still land late).
    let converge_deadline = Instant::now() + Duration::from_secs(60);
    let mut previous: Option<Vec<(String, Option<String>)>> = None;
    let digests = loop {
        let mut ds = Vec::new();
        for r in &readers {
            ds.push((r.name.clone(), caught_up_digest(&r.url, &token, &all).await));
        }
        let agree = ds.iter().all(|(_, d)| d.is_some() && *d == ds[0].1);
        if agree && previous.as_ref() == Some(&ds) {
            break ds;
        }
        if Instant::now() > converge_deadline {
            break ds;
        }
        previous = Some(ds);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_str = all.to_string();
    let fin = FinalState { keys: final_histories(&readers[0].url, &token, &all_str).await, digests };

    let violations = check(&history, &fin);
    // What the nodes logged that a reader of this report should know about.
    for n in writers.iter().chain(&readers) {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("librdkafka") && !l.contains("kafka client error") && !l.contains("consumer error"))
            .filter(|l| ["ERROR", "panicked", "atal", "deposed", "fenced", "leadership"].iter().any(|w| l.contains(w)))
            .collect();
        eprintln!("[checker] {}: {} notable log lines", n.name, notable.len());
        for l in notable.iter().take(8) {
            eprintln!("[checker]   {}", l.chars().take(300).collect::<String>());
        }
    }
    let writes: Vec<&Op> = history.iter().filter(|o| o.kind == Kind::Write).collect();
    let acked = writes.iter().filter(|o| o.status == 200).count();
    let reads = history.len() - writes.len();
    let reads_ok = history.iter().filter(|o| o.kind == Kind::Read && matches!(o.status, 200 | 404)).count();
    let present_failed = writes
        .iter()
        .filter(|o| o.status != 200)
        .filter(|o| {
            fin.keys.get(&o.key).is_some_and(|h| h.versions.values().any(|v| v.as_deref() == o.value.as_deref()))
        })
        .count();
    let mut errors: BTreeMap<(Kind, u16, &str), (usize, f64)> = BTreeMap::new();
    for o in history.iter().filter(|o| o.error.is_some()) {
        let e = errors
            .entry((o.kind, o.status, o.error.as_deref().unwrap()))
            .or_insert((0, (o.start - load_started).as_secs_f64()));
        e.0 += 1;
    }
    for ((kind, status, error), (n, first)) in &errors {
        eprintln!("[checker] {n:>4} x {kind:?} {status} (first at +{first:.1}s): {error}");
    }
    let mut failed_by: BTreeMap<(u16, &str), usize> = BTreeMap::new();
    for o in writes.iter().filter(|o| o.status != 200) {
        *failed_by.entry((o.status, o.node.as_str())).or_default() += 1;
    }
    eprintln!("[checker] failed writes by (status, node): {failed_by:?}");
    let mut timeline: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for o in &writes {
        let e = timeline.entry((o.start - load_started).as_secs() / 5 * 5).or_default();
        if o.status == 200 { e.0 += 1 } else { e.1 += 1 }
    }
    eprintln!("[checker] writes (acked, failed) per 5 s from the load's start: {timeline:?}");
    eprintln!(
        "[checker] SUMMARY ops={} writes={} acked={} failed={} (of which present={present_failed}) reads={reads} \
         reads_ok={reads_ok} faults={injected} violations={} load={load_time:.1?} total={:.1?}",
        history.len(),
        writes.len(),
        acked,
        writes.len() - acked,
        violations.len(),
        began.elapsed()
    );
    for v in violations.iter().take(30) {
        eprintln!("[checker] VIOLATION {v:?}");
    }
    assert!(violations.is_empty(), "{} violations, first: {:?}", violations.len(), violations.first());
    assert!(acked >= 100, "too few acknowledged writes ({acked}) for the check to mean much");
}

// ---------------------------------------------------------------------------------------------
// The checker can fail: planted histories.

/// A small, valid history and its final state: two clients, one key.
fn clean() -> (Vec<Op>, FinalState) {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let w = |client, value: &str, start, end, version| Op {
        client,
        kind: Kind::Write,
        key: "k".into(),
        node: "writer".into(),
        start: at(start),
        end: at(end),
        status: 200,
        version: Some(version),
        value: Some(value.into()),
        index: Some(format!("0:{version}")),
        error: None,
    };
    let r = |client, start, end, version: u64, value: &str| Op {
        client,
        kind: Kind::Read,
        key: "k".into(),
        node: "reader-0".into(),
        start: at(start),
        end: at(end),
        status: 200,
        version: Some(version),
        value: Some(value.into()),
        index: Some("0:1".into()),
        error: None,
    };
    let history = vec![
        w(0, "0-1", 0, 10, 1),
        w(1, "1-1", 5, 20, 2), // overlaps 0-1
        r(0, 25, 30, 2, "1-1"),
        w(0, "0-2", 30, 40, 3),
        r(1, 45, 50, 3, "0-2"),
        // Failed, absent.
        Op { status: 503, version: None, index: None, ..w(1, "1-2", 50, 60, 0) },
        // Failed (no answer), yet applied: allowed.
        Op { status: 0, version: None, index: None, ..w(1, "1-3", 60, 70, 0) },
    ];
    let versions =
        [(1, "0-1"), (2, "1-1"), (3, "0-2"), (4, "1-3")].into_iter().map(|(v, s)| (v, Some(s.to_string()))).collect();
    let fin = FinalState {
        keys: [("k".to_string(), KeyHistory { versions, max_versions: 0 })].into_iter().collect(),
        digests: vec![("reader-0".into(), Some("d".into())), ("reader-1".into(), Some("d".into()))],
    };
    (history, fin)
}

#[test]
fn planted_clean_history_passes() {
    let (h, f) = clean();
    assert_eq!(check(&h, &f), vec![]);
}

#[test]
fn planted_lost_acknowledged_write_is_reported() {
    let (h, mut f) = clean();
    f.keys.get_mut("k").unwrap().versions.remove(&3);
    let v = check(&h, &f);
    assert!(v.contains(&Violation::LostWrite { key: "k".into(), version: 3, value: "0-2".into() }), "{v:?}");
    // Overwritten with another value is caught too.
    let (h, mut f) = clean();
    f.keys.get_mut("k").unwrap().versions.insert(3, Some("1-1".into()));
    let v = check(&h, &f);
    assert!(v.iter().any(|x| matches!(x, Violation::WrongValue { version: 3, .. })), "{v:?}");
}

#[test]
fn planted_pruned_version_is_not_a_loss() {
    let (h, mut f) = clean();
    let k = f.keys.get_mut("k").unwrap();
    k.versions.remove(&1);
    k.max_versions = 3;
    assert_eq!(check(&h, &f), vec![]);
}

#[test]
fn planted_duplicated_version_is_reported() {
    let (mut h, mut f) = clean();
    // A second acknowledged write, overlapping 0-2, answered with version 3 as well.
    let mut dup = h[3].clone();
    dup.client = 1;
    dup.value = Some("1-9".into());
    h.push(dup);
    f.keys.get_mut("k").unwrap().versions.insert(5, Some("1-9".into()));
    let v = check(&h, &f);
    assert!(v.iter().any(|x| matches!(x, Violation::DuplicateVersion { version: 3, .. })), "{v:?}");
}

#[test]
fn planted_stale_read_is_reported() {
    let (mut h, f) = clean();
    // Client 0 wrote v3 (0-2), then read v2 with its token.
    let mut stale = h[2].clone();
    stale.start = h[3].end + Duration::from_millis(1);
    stale.end = stale.start + Duration::from_millis(5);
    h.push(stale);
    let v = check(&h, &f);
    assert!(v.iter().any(|x| matches!(x, Violation::StaleRead { client: 0, required: 3, seen: Some(2), .. })), "{v:?}");
    // A 404 after one's own write is stale too.
    let (mut h, f) = clean();
    let mut gone = h[4].clone();
    gone.status = 404;
    gone.version = None;
    gone.value = None;
    h.push(gone);
    let v = check(&h, &f);
    assert!(v.iter().any(|x| matches!(x, Violation::StaleRead { client: 1, seen: None, .. })), "{v:?}");
}

#[test]
fn planted_real_time_order_break_is_reported() {
    let (mut h, f) = clean();
    // 0-2 started after 1-1 ended, but got a lower version... swap the versions in the answers.
    h[1].version = Some(3);
    h[3].version = Some(2);
    let v = check(&h, &f);
    assert!(v.iter().any(|x| matches!(x, Violation::RealTimeOrder { .. })), "{v:?}");
}

#[test]
fn planted_failed_write_present_twice_is_reported() {
    let (h, mut f) = clean();
    f.keys.get_mut("k").unwrap().versions.insert(5, Some("1-3".into()));
    let v = check(&h, &f);
    assert!(v.iter().any(|x| matches!(x, Violation::DuplicateValue { value, .. } if value == "1-3")), "{v:?}");
}

#[test]
fn planted_divergence_and_phantom_are_reported() {
    let (h, mut f) = clean();
    f.digests[1].1 = Some("other".into());
    f.keys.get_mut("k").unwrap().versions.insert(5, Some("nobody".into()));
    let v = check(&h, &f);
    assert!(v.iter().any(|x| matches!(x, Violation::Diverged { .. })), "{v:?}");
    assert!(v.iter().any(|x| matches!(x, Violation::PhantomValue { version: 5, .. })), "{v:?}");
}
