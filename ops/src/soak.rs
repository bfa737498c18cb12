//! `secretlog soak`: a month in an hour. Against a running stack (what `secretlog up` wrote in
//! `stack.json`), a steady mixed load compressed in time — secrets rewritten many times over in a
//! mount with `max_versions` pruning, soft deletes and destroys, tokens created with short TTLs and
//! left to expire, a policy rewritten, reads with the root token and with tokens, token tidies, a
//! key rotation (the leader's rewrap follows), snapshots on a short schedule — while it samples
//! every node's RSS and open file descriptors, the bytes of every directory the stack writes, the
//! tokens held in state, read and write p99 and the readers' replication lag.
//!
//! It writes `soak.json` (every sample, and the verdict) and `soak.png`, and judges the run:
//! after the baseline window, every bounded series stays within `--factor` of its level at the
//! end of that window (its peak over the window's second half: see [`judge`]); the p99 of the
//! last window is within `--latency-factor` of the first's; and nothing failed that the load did not ask for. Series that grow with the log by design (the
//! Kafka log dirs, the log archive: see docs/operations.md) are reported, not bounded. A broken
//! bound is a table and a non-zero exit.
//!
//! The load generator's pieces (HTTP client, histograms, summaries, tables) are the bench's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::bench::load::{client, hist};
use crate::bench::snapshot::dir_bytes;
use crate::stack::StackFile;

/// `secretlog soak` options.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The stack's directory (its `stack.json` names the nodes; node state is under it).
    #[arg(long, env = "SECRETLOG_DATA_DIR", default_value = "./.secretlog")]
    pub data_dir: PathBuf,
    /// How long the load runs.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The baseline window: bounded series are compared with their level at its end (the peak
    /// over its second half), and the p99 of the last window of this length with the p99 of the
    /// first.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub baseline: Duration,
    /// How often every series is sampled.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Bound on every resource series after the baseline, as a multiple of its baseline value.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Bound on the last window's read and write p99, as a multiple of the first window's.
    #[arg(long, default_value_t = 1.5)]
    pub latency_factor: f64,
    /// p99 below this many ms counts as this much when judged (sub-millisecond noise is no trend).
    #[arg(long, default_value_t = 5.0)]
    pub p99_floor_ms: f64,
    /// Writes per second (puts, with a soft delete every 10th and a destroy every 25th).
    #[arg(long, default_value_t = 40)]
    pub write_rate: u64,
    /// Reads per second, spread over the readers, half with the root token, half with tokens.
    #[arg(long, default_value_t = 100)]
    pub read_rate: u64,
    /// Tokens created per second, each left to expire.
    #[arg(long, default_value_t = 2.0)]
    pub token_rate: f64,
    /// TTL of those tokens.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// Distinct secrets the writes cycle through (the live data: constant over the run).
    #[arg(long, default_value_t = 500)]
    pub secrets: u64,
    /// `max_versions` of the soak's mount: older versions are pruned.
    #[arg(long, default_value_t = 5)]
    pub max_versions: u32,
    /// The KV mount the soak writes in (enabled if missing).
    #[arg(long, default_value = "soak")]
    pub mount: String,
    /// How often the soak asks for a token tidy (the leader's own interval runs besides).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub tidy_every: Duration,
    /// How often the soak asks the replicator for a snapshot (its retention prunes them).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub snapshot_every: Duration,
    /// How often the policy the tokens hold is rewritten.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub policy_every: Duration,
    /// Rotate the key (and so start the leader's rewrap) this far into the run; `0s`: never.
    /// Default: half way.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rotate_at: Option<Duration>,
    /// Directories (as the samples name them) that are append-only by design — the Kafka log
    /// dirs, the log archive, `logs/` (node logs and audit files, unless rotated): reported, not
    /// bounded. Take `logs` out of the list when audit rotation is configured.
    #[arg(long, value_delimiter = ',', default_value = "kafka,objects/archive,logs")]
    pub grows_with_log: Vec<String>,
    /// Where `soak.json` and `soak.png` go.
    #[arg(long, default_value = "./.secretlog/soak")]
    pub out_dir: PathBuf,
}

/// One sample of every series.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// Node → resident set size, bytes.
    pub rss: BTreeMap<String, u64>,
    /// Node → open file descriptors.
    pub fds: BTreeMap<String, u64>,
    /// Directory (relative to the data dir, node state split by its subdirectories) → bytes.
    pub dirs: BTreeMap<String, u64>,
    /// Tokens in the leader's state (expired ones included, until tidied).
    pub tokens: Option<u64>,
    /// p99 of the reads and writes answered since the previous sample, ms.
    pub read_p99_ms: Option<f64>,
    pub write_p99_ms: Option<f64>,
    /// The highest replication lag any reader reports, seconds.
    pub lag_s: Option<f64>,
    /// Operations and unexpected failures so far.
    pub ops: u64,
    pub errors: u64,
}

/// One judged bound.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    pub series: String,
    pub baseline: f64,
    pub limit: Option<f64>,
    pub worst: f64,
    pub ok: bool,
    pub note: &'static str,
}

/// What the load records: latencies per sample interval and per window, and failures.
struct Recorder {
    started: Instant,
    first: Duration,
    last_from: Duration,
    inner: Mutex<Windows>,
    ops: AtomicU64,
    errors: AtomicU64,
}

struct Windows {
    read: Histogram<u64>,
    write: Histogram<u64>,
    first_read: Histogram<u64>,
    first_write: Histogram<u64>,
    last_read: Histogram<u64>,
    last_write: Histogram<u64>,
    /// Failure kind → count, with the last message seen.
    failures: BTreeMap<String, (u64, String)>,
}

impl Recorder {
    fn record(&self, write: bool, took: Duration) {
        let us = took.as_micros().max(1) as u64;
        let at = self.started.elapsed();
        let mut guard = self.inner.lock().expect("recorder lock");
        let w = &mut *guard;
        let (now, first, last) = if write {
            (&mut w.write, &mut w.first_write, &mut w.last_write)
        } else {
            (&mut w.read, &mut w.first_read, &mut w.last_read)
        };
        now.record(us).ok();
        if at < self.first {
            first.record(us).ok();
        }
        if at >= self.last_from {
            last.record(us).ok();
        }
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, kind: &str, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut w = self.inner.lock().expect("recorder lock");
        let e = w.failures.entry(kind.to_string()).or_insert((0, String::new()));
        e.0 += 1;
        e.1 = why;
    }

    /// The p99s since the last call, ms; resets the interval.
    fn take_p99(&self) -> (Option<f64>, Option<f64>) {
        let mut w = self.inner.lock().expect("recorder lock");
        let p = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0);
        let out = (p(&w.read), p(&w.write));
        w.read.reset();
        w.write.reset();
        out
    }
}

/// Everything the load tasks share.
struct Load {
    http: reqwest::Client,
    writer: String,
    readers: Vec<String>,
    replicator: Option<String>,
    root: String,
    mount: String,
    /// A token of the soak's policy living through the whole run.
    steady_token: String,
    /// The newest short-lived token, and when it was handed out.
    fresh_token: Mutex<Option<(String, Instant)>>,
    /// Their TTL: a token is used for reads only in the first half of its life.
    token_ttl: Duration,
    rec: Recorder,
}

const POLICY: &str = "soak-read";

impl Load {
    async fn send(&self, method: &str, url: String, token: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let mut rb = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).expect("a method"), url)
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Send, time it as a read or a write, and count any status outside `ok` as a failure.
    async fn op(
        &self,
        kind: &str,
        write: bool,
        method: &str,
        url: String,
        token: &str,
        body: Option<Value>,
        ok: &[u16],
    ) {
        let t = Instant::now();
        match self.send(method, url, token, body).await {
            Ok((s, _)) if ok.contains(&s) => self.rec.record(write, t.elapsed()),
            Ok((s, b)) => self.rec.fail(kind, format!("{s}: {b}")),
            Err(e) => self.rec.fail(kind, e),
        }
    }

    fn policy(&self, extra: bool) -> Value {
        let mut text = format!("path \"{}/data/*\" {{ capabilities = [\"read\"] }}\n", self.mount);
        if extra {
            text.push_str(&format!("path \"{}/metadata/*\" {{ capabilities = [\"read\", \"list\"] }}\n", self.mount));
        }
        json!({ "policy": text })
    }

    async fn create_token(&self, ttl: Duration) -> Option<String> {
        let body = json!({"policies": [POLICY], "ttl": format!("{}s", ttl.as_secs().max(1))});
        let t = Instant::now();
        match self.send("POST", format!("{}/v1/auth/token/create", self.writer), &self.root, Some(body)).await {
            Ok((200, b)) => {
                self.rec.record(true, t.elapsed());
                b["auth"]["client_token"].as_str().map(str::to_string)
            }
            Ok((s, b)) => {
                self.rec.fail("token_create", format!("{s}: {b}"));
                None
            }
            Err(e) => {
                self.rec.fail("token_create", e);
                None
            }
        }
    }
}

/// Run `f` every `every` until `cancel`, each call spawned (a slow answer does not slow the
/// rate), at most `limit` in flight.
fn every<F, Fut>(tasks: &mut tokio::task::JoinSet<()>, every: Duration, cancel: &CancellationToken, f: F)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let cancel = cancel.clone();
    let limit = Arc::new(Semaphore::new(256));
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inner = tokio::task::JoinSet::new();
        for i in 0.. {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Ok(permit) = limit.clone().acquire_owned().await else { break };
            let fut = f(i);
            inner.spawn(async move {
                fut.await;
                drop(permit);
            });
            while inner.try_join_next().is_some() {}
        }
        while inner.join_next().await.is_some() {}
    });
}

fn per_sec(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate.max(0.001))
}

/// Run the soak; an error when a bound is broken (after writing the results).
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.baseline * 2 <= args.duration, "--duration must be at least twice --baseline");
    let stack_path = args.data_dir.join("stack.json");
    let stack: StackFile = serde_json::from_slice(
        &std::fs::read(&stack_path).with_context(|| format!("reading {} (is the stack up?)", stack_path.display()))?,
    )?;
    let root = std::fs::read_to_string(&stack.root_token_file)
        .with_context(|| format!("reading the token from {}", stack.root_token_file.display()))?
        .trim()
        .to_string();
    let http = client(256)?;
    let writer = stack.writers.first().context("the stack has no writer")?.url.clone();
    let readers: Vec<String> = stack.readers.iter().map(|r| r.url.clone()).collect();
    anyhow::ensure!(!readers.is_empty(), "the stack has no reader");

    let mut load = Load {
        http,
        writer: writer.clone(),
        readers,
        replicator: stack.replicator.as_ref().map(|r| r.url.clone()),
        root: root.clone(),
        mount: args.mount.trim_matches('/').to_string(),
        steady_token: String::new(),
        fresh_token: Mutex::new(None),
        token_ttl: args.token_ttl,
        rec: Recorder {
            started: Instant::now(),
            first: args.baseline,
            last_from: args.duration - args.baseline,
            inner: Mutex::new(Windows {
                read: hist(),
                write: hist(),
                first_read: hist(),
                first_write: hist(),
                last_read: hist(),
                last_write: hist(),
                failures: BTreeMap::new(),
            }),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        },
    };
    prepare(&mut load, &args).await?;
    let load = Arc::new(load);
    println!(
        "soak: {} against {} ({} readers), sampling every {:?}; baseline {:?}",
        humantime::format_duration(args.duration),
        writer,
        load.readers.len(),
        args.sample_every,
        args.baseline
    );

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    spawn_load(&mut tasks, &load, &args, &cancel);
    let mut samples = Vec::new();
    let sampler = Sampler::new(&args.data_dir, &stack);
    let started = load.rec.started;
    let mut tick = tokio::time::interval(args.sample_every);
    let mut rotated = false;
    let rotate_at = args.rotate_at.unwrap_or(args.duration / 2);
    loop {
        tick.tick().await;
        let t = started.elapsed();
        if !rotated && !rotate_at.is_zero() && t >= rotate_at {
            rotated = true;
            load.op("rotate", true, "POST", format!("{writer}/v1/sys/rotate"), &root, None, &[200, 204]).await;
        }
        let s = sampler.sample(&load, t).await;
        samples.push(s);
        if t >= args.duration {
            break;
        }
    }
    cancel.cancel();
    while tasks.join_next().await.is_some() {}

    let (bounds, p99) = judge(&args, &samples, &load.rec);
    let failures = load.rec.inner.lock().expect("recorder lock").failures.clone();
    let ok = bounds.iter().all(|b| b.ok) && failures.is_empty();
    let results = json!({
        "started_utc": humantime::format_rfc3339_seconds(std::time::SystemTime::now() - started.elapsed()).to_string(),
        "duration_s": args.duration.as_secs_f64(),
        "baseline_s": args.baseline.as_secs_f64(),
        "factor": args.factor,
        "latency_factor": args.latency_factor,
        "load": {
            "write_rate": args.write_rate, "read_rate": args.read_rate, "token_rate": args.token_rate,
            "token_ttl_s": args.token_ttl.as_secs_f64(), "secrets": args.secrets, "max_versions": args.max_versions,
            "tidy_every_s": args.tidy_every.as_secs_f64(), "snapshot_every_s": args.snapshot_every.as_secs_f64(),
            "rotate_at_s": rotate_at.as_secs_f64(),
        },
        "ops": load.rec.ops.load(Ordering::Relaxed),
        "p99_ms": p99,
        "failures": failures.iter().map(|(k, (n, last))| (k.clone(), json!({"count": n, "last": last}))).collect::<BTreeMap<_, _>>(),
        "bounds": bounds,
        "ok": ok,
        "samples": samples,
    });
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("creating {}", args.out_dir.display()))?;
    let json_path = args.out_dir.join("soak.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&results)?)?;
    let png = args.out_dir.join("soak.png");
    crate::soak_chart::render(&results, &png)?;
    println!("{}", table(&bounds, &failures));
    println!("results: {} and {}", json_path.display(), png.display());
    if !ok {
        bail!("the soak broke a bound (see the table above and {})", json_path.display());
    }
    Ok(())
}

/// The soak's mount (with `max_versions`), its policy and the token living through the run.
async fn prepare(load: &mut Load, args: &SoakArgs) -> anyhow::Result<()> {
    let (w, root, m) = (&load.writer, &load.root, &load.mount);
    let enable = json!({"type": "kv", "options": {"version": "2"}});
    match load.send("POST", format!("{w}/v1/sys/mounts/{m}"), root, Some(enable)).await {
        Ok((200 | 204, _)) => {}
        Ok((400, b)) if b.to_string().contains("already in use") => {}
        other => bail!("enabling the mount {m}: {other:?}"),
    }
    // Every node has caught up with the log's control state (a node that just started answers
    // health before it has applied the root token): its first request must not be refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    let probes = load
        .readers
        .iter()
        .map(|r| format!("{r}/v1/sys/policies/acl"))
        .chain(load.replicator.iter().map(|r| format!("{r}/v1/sys/secretlog/snapshots")));
    for url in probes {
        loop {
            match load.send("GET", url.clone(), root, None).await {
                Ok((200, _)) => break,
                other if Instant::now() > deadline => bail!("{url} never answered the root token: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let cfg = json!({"max_versions": args.max_versions});
    match load.send("POST", format!("{w}/v1/{m}/config"), root, Some(cfg)).await {
        Ok((200 | 204, _)) => {}
        other => bail!("configuring the mount {m}: {other:?}"),
    }
    match load.send("POST", format!("{w}/v1/sys/policies/acl/{POLICY}"), root, Some(load.policy(false))).await {
        Ok((200 | 204, _)) => {}
        other => bail!("writing the policy {POLICY}: {other:?}"),
    }
    load.steady_token = load
        .create_token(args.duration + Duration::from_secs(3600))
        .await
        .context("creating the soak's long-lived token")?;
    Ok(())
}

fn spawn_load(tasks: &mut tokio::task::JoinSet<()>, load: &Arc<Load>, args: &SoakArgs, cancel: &CancellationToken) {
    let secrets = args.secrets.max(1);
    let l = load.clone();
    every(tasks, per_sec(args.write_rate as f64), cancel, move |i| {
        let l = l.clone();
        async move {
            let key = format!("k{}", i % secrets);
            let (w, m) = (&l.writer, &l.mount);
            if i % 25 == 24 {
                let url = format!("{w}/v1/{m}/destroy/{key}");
                l.op("destroy", true, "POST", url, &l.root, Some(json!({"versions": [1]})), &[200, 204]).await;
            } else if i % 10 == 9 {
                l.op("delete", true, "DELETE", format!("{w}/v1/{m}/data/{key}"), &l.root, None, &[200, 204]).await;
            } else {
                let body = json!({"data": {"v": format!("{i:016x}"), "pad": "x".repeat(48)}});
                l.op("write", true, "POST", format!("{w}/v1/{m}/data/{key}"), &l.root, Some(body), &[200]).await;
            }
        }
    });
    let l = load.clone();
    every(tasks, per_sec(args.read_rate as f64), cancel, move |i| {
        let l = l.clone();
        async move {
            let r = &l.readers[i as usize % l.readers.len()];
            let key = format!("k{}", i.wrapping_mul(2_654_435_761) % secrets);
            // Only while young: a token read with after its TTL is a 403 the load did not ask for.
            let fresh = l
                .fresh_token
                .lock()
                .expect("token lock")
                .clone()
                .filter(|(_, at)| at.elapsed() < l.token_ttl / 2)
                .map(|(t, _)| t);
            let token = match i % 4 {
                0 | 1 => l.root.clone(),
                2 => l.steady_token.clone(),
                _ => fresh.unwrap_or_else(|| l.steady_token.clone()),
            };
            // 404: never written yet, or its newest version deleted or destroyed by the load.
            l.op("read", false, "GET", format!("{r}/v1/{}/data/{key}", l.mount), &token, None, &[200, 404]).await;
        }
    });
    let (l, ttl) = (load.clone(), args.token_ttl);
    every(tasks, per_sec(args.token_rate), cancel, move |_| {
        let l = l.clone();
        async move {
            let asked = Instant::now();
            if let Some(t) = l.create_token(ttl).await {
                *l.fresh_token.lock().expect("token lock") = Some((t, asked));
            }
        }
    });
    let l = load.clone();
    every(tasks, args.policy_every, cancel, move |i| {
        let l = l.clone();
        async move {
            let url = format!("{}/v1/sys/policies/acl/{POLICY}", l.writer);
            l.op("policy", true, "POST", url, &l.root, Some(l.policy(i % 2 == 1)), &[200, 204]).await;
        }
    });
    let l = load.clone();
    every(tasks, args.tidy_every, cancel, move |_| {
        let l = l.clone();
        async move {
            let url = format!("{}/v1/auth/token/tidy", l.writer);
            l.op("tidy", true, "POST", url, &l.root, None, &[200, 202]).await;
        }
    });
    if let Some(rep) = load.replicator.clone() {
        let l = load.clone();
        every(tasks, args.snapshot_every, cancel, move |_| {
            let (l, rep) = (l.clone(), rep.clone());
            async move {
                let url = format!("{rep}/v1/sys/secretlog/snapshot");
                // A snapshot is a long call: not one of the reads or writes whose p99 is judged.
                match l.send("POST", url, &l.root, None).await {
                    Ok((200, _)) => {}
                    Ok((s, b)) => l.rec.fail("snapshot", format!("{s}: {b}")),
                    Err(e) => l.rec.fail("snapshot", e),
                }
            }
        });
    }
}

/// Where the samples come from.
struct Sampler {
    data_dir: PathBuf,
    /// Node name → pid.
    pids: Vec<(String, u32)>,
    /// Object store root on the local filesystem, when it is one.
    objects: Option<PathBuf>,
}

impl Sampler {
    fn new(data_dir: &Path, stack: &StackFile) -> Sampler {
        let pids = stack
            .writers
            .iter()
            .chain(&stack.readers)
            .chain(stack.replicator.as_ref())
            .map(|n| (n.name.clone(), n.pid))
            .collect();
        let objects = stack.object_store.as_deref().and_then(|u| u.strip_prefix("file://")).map(PathBuf::from);
        Sampler { data_dir: data_dir.to_path_buf(), pids, objects }
    }

    async fn sample(&self, load: &Load, t: Duration) -> Sample {
        let mut rss = BTreeMap::new();
        let mut fds = BTreeMap::new();
        for (name, pid) in &self.pids {
            if let Some(b) = proc_rss(*pid) {
                rss.insert(name.clone(), b);
            }
            if let Some(n) = proc_fds(*pid) {
                fds.insert(name.clone(), n);
            }
        }
        let (data_dir, names, objects) =
            (self.data_dir.clone(), self.pids.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), self.objects.clone());
        let dirs = tokio::task::spawn_blocking(move || dir_series(&data_dir, &names, objects.as_deref()))
            .await
            .unwrap_or_default();
        let tokens = match load.send("LIST", format!("{}/v1/auth/token/accessors", load.writer), &load.root, None).await
        {
            Ok((200, b)) => b["data"]["keys"].as_array().map(|k| k.len() as u64),
            Ok((404, _)) => Some(0),
            _ => None,
        };
        let mut lag: Option<f64> = None;
        for r in &load.readers {
            if let Some(v) = scrape(&load.http, r, "secretlog_reader_lag_seconds").await {
                lag = Some(lag.map_or(v, |l| l.max(v)));
            }
        }
        let (read_p99_ms, write_p99_ms) = load.rec.take_p99();
        Sample {
            t: t.as_secs_f64(),
            rss,
            fds,
            dirs,
            tokens,
            read_p99_ms,
            write_p99_ms,
            lag_s: lag,
            ops: load.rec.ops.load(Ordering::Relaxed),
            errors: load.rec.errors.load(Ordering::Relaxed),
        }
    }
}

/// A process's resident set, bytes (`VmRSS` of `/proc/PID/status`).
fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A process's open file descriptors.
fn proc_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The directory series: each node's state split by its subdirectories (SlateDB, the disk cache),
/// `kafka` and `logs` (node logs, audit files) as a whole, and the object store by its top-level
/// folders.
fn dir_series(data_dir: &Path, nodes: &[String], objects: Option<&Path>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for name in nodes {
        let dir = data_dir.join(name);
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut files = 0;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(format!("{name}/{}", e.file_name().to_string_lossy()), dir_bytes(&p));
            } else {
                files += e.metadata().map_or(0, |m| m.len());
            }
        }
        if files > 0 {
            out.insert(format!("{name}/(files)"), files);
        }
    }
    for whole in ["kafka", "logs"] {
        let dir = data_dir.join(whole);
        if dir.exists() {
            out.insert(whole.into(), dir_bytes(&dir));
        }
    }
    if let Some(objects) = objects
        && let Ok(rd) = std::fs::read_dir(objects)
    {
        for e in rd.flatten() {
            out.insert(format!("objects/{}", e.file_name().to_string_lossy()), dir_bytes(&e.path()));
        }
    }
    out
}

/// One gauge or counter from a node's `/metrics` (the sum over its labels).
async fn scrape(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let page = http.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    let values: Vec<f64> = page
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Floors below which a baseline is not taken at its word: a tiny baseline makes any wobble look
/// like a multiple.
const RSS_FLOOR: f64 = 32.0 * 1024.0 * 1024.0;
const FDS_FLOOR: f64 = 32.0;
const DIR_FLOOR: f64 = 8.0 * 1024.0 * 1024.0;
const TOKENS_FLOOR: f64 = 50.0;

/// Judge the samples: every bounded series against its level at the end of the baseline, and the
/// last window's p99 against the first's.
///
/// A series' level at the end of the baseline is its peak over the second half of the baseline
/// window, not the one sample at its end: the series a soak watches are sawtooths (tokens rise
/// between two tidies, RSS between two memtable flushes, SlateDB's directory between two
/// compactions), and one sample lands anywhere in a tooth — at its foot, it would hold the
/// series' next peak to 1.5x of its trough. Peaks compared with a peak still show growth: a
/// series whose peaks climb past the bound breaks it.
fn judge(args: &SoakArgs, samples: &[Sample], rec: &Recorder) -> (Vec<Bound>, Value) {
    let base_at = args.baseline.as_secs_f64();
    let Some(base_idx) = samples.iter().position(|s| s.t >= base_at) else { return (vec![], json!({})) };
    let base = &samples[base_idx];
    let settled = samples.iter().position(|s| s.t >= base_at / 2.0).unwrap_or(base_idx);
    let window = &samples[settled..=base_idx];
    let after = &samples[base_idx..];
    let mut bounds = Vec::new();
    let mut series = |name: String, get: &dyn Fn(&Sample) -> Option<f64>, floor: f64, exempt: bool| {
        if get(base).is_none() {
            return;
        }
        let b = window.iter().filter_map(get).fold(f64::MIN, f64::max);
        let worst = after.iter().filter_map(get).fold(b, f64::max);
        let limit = (!exempt).then(|| args.factor * b.max(floor));
        bounds.push(Bound {
            series: name,
            baseline: b,
            limit,
            worst,
            ok: limit.is_none_or(|l| worst <= l),
            note: if exempt { "append-only by design: reported, not bounded" } else { "" },
        });
    };
    for n in base.rss.keys() {
        series(format!("rss {n}"), &|s| s.rss.get(n).map(|v| *v as f64), RSS_FLOOR, false);
    }
    for n in base.fds.keys() {
        series(format!("fds {n}"), &|s| s.fds.get(n).map(|v| *v as f64), FDS_FLOOR, false);
    }
    for d in base.dirs.keys() {
        let exempt = args.grows_with_log.iter().any(|g| d == g || d.starts_with(&format!("{g}/")));
        series(format!("disk {d}"), &|s| s.dirs.get(d).map(|v| *v as f64), DIR_FLOOR, exempt);
    }
    series("tokens in state".into(), &|s| s.tokens.map(|v| v as f64), TOKENS_FLOOR, false);
    let w = rec.inner.lock().expect("recorder lock");
    let p = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0);
    for (name, first, last) in
        [("read p99 ms", &w.first_read, &w.last_read), ("write p99 ms", &w.first_write, &w.last_write)]
    {
        let (Some(f), Some(l)) = (p(first), p(last)) else { continue };
        let limit = args.latency_factor * f.max(args.p99_floor_ms);
        bounds.push(Bound { series: name.into(), baseline: f, limit: Some(limit), worst: l, ok: l <= limit, note: "" });
    }
    let p99 = json!({
        "first_read": p(&w.first_read), "last_read": p(&w.last_read),
        "first_write": p(&w.first_write), "last_write": p(&w.last_write),
    });
    (bounds, p99)
}

/// The verdict as a table: every bound, then every failure.
fn table(bounds: &[Bound], failures: &BTreeMap<String, (u64, String)>) -> comfy_table::Table {
    let mut t = crate::output::table(&["series", "baseline", "limit", "worst after baseline", "verdict"]);
    let fmt = |name: &str, v: f64| {
        if name.starts_with("rss") || name.starts_with("disk") {
            format!("{:.1} MiB", v / 1048576.0)
        } else {
            format!("{v:.1}")
        }
    };
    for b in bounds {
        t.add_row(vec![
            b.series.clone(),
            fmt(&b.series, b.baseline),
            b.limit.map_or_else(|| "-".to_string(), |l| fmt(&b.series, l)),
            fmt(&b.series, b.worst),
            if !b.ok {
                "BROKEN".to_string()
            } else if b.limit.is_none() {
                b.note.to_string()
            } else {
                "ok".to_string()
            },
        ]);
    }
    for (kind, (n, last)) in failures {
        let last: String = last.chars().take(80).collect();
        t.add_row(vec![format!("failures: {kind}"), "0".into(), "0".into(), format!("{n} ({last})"), "BROKEN".into()]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        soak: SoakArgs,
    }

    fn sample(t: f64, rss: u64, dir: u64, kafka: u64) -> Sample {
        Sample {
            t,
            rss: BTreeMap::from([("reader-a".to_string(), rss)]),
            fds: BTreeMap::from([("reader-a".to_string(), 40)]),
            dirs: BTreeMap::from([("reader-a/db".to_string(), dir), ("kafka".to_string(), kafka)]),
            tokens: Some(10),
            read_p99_ms: None,
            write_p99_ms: None,
            lag_s: None,
            ops: 0,
            errors: 0,
        }
    }

    fn recorder() -> Recorder {
        Recorder {
            started: Instant::now(),
            first: Duration::from_secs(10),
            last_from: Duration::from_secs(20),
            inner: Mutex::new(Windows {
                read: hist(),
                write: hist(),
                first_read: hist(),
                first_write: hist(),
                last_read: hist(),
                last_write: hist(),
                failures: BTreeMap::new(),
            }),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_series_past_its_bound_after_the_baseline_is_broken_and_the_log_only_reported() {
        let args = Cli::parse_from(["soak", "--baseline", "10s", "--duration", "30s"]).soak;
        let mib = 1024 * 1024;
        let samples = vec![
            sample(0.0, 10 * mib, mib, mib),
            sample(10.0, 100 * mib, 20 * mib, 2 * mib),
            sample(20.0, 140 * mib, 31 * mib, 50 * mib),
            sample(30.0, 149 * mib, 29 * mib, 90 * mib),
        ];
        let (bounds, _) = judge(&args, &samples, &recorder());
        let get = |name: &str| bounds.iter().find(|b| b.series == name).unwrap_or_else(|| panic!("{name}"));
        assert!(get("rss reader-a").ok, "149 MiB is within 1.5 x 100 MiB");
        assert!(!get("disk reader-a/db").ok, "31 MiB is past 1.5 x 20 MiB");
        assert!(get("disk kafka").ok && get("disk kafka").limit.is_none(), "the log grows by design");
        assert!(get("fds reader-a").ok);
        assert!(get("tokens in state").ok, "10 tokens: under the floor");
    }

    #[test]
    fn a_sawtooth_is_judged_by_its_peaks_and_climbing_peaks_break_the_bound() {
        let args = Cli::parse_from(["soak", "--baseline", "40s", "--duration", "80s"]).soak;
        let mib = 1024 * 1024;
        // RSS: teeth of 60 -> 100 MiB; the sample at 40 s is a foot (60 MiB), the peak before
        // it 100 MiB. Afterwards the same teeth: within the bound. Another node's peaks climb.
        let rss = [60, 100, 60, 100, 60, 100, 60, 100, 60];
        let climbing = [60, 100, 60, 100, 60, 120, 60, 140, 160];
        let samples: Vec<Sample> = (0..9)
            .map(|i| {
                let mut s = sample(i as f64 * 10.0, rss[i] * mib, mib, mib);
                s.rss.insert("reader-b".into(), climbing[i] * mib);
                s
            })
            .collect();
        let (bounds, _) = judge(&args, &samples, &recorder());
        let get = |name: &str| bounds.iter().find(|b| b.series == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(get("rss reader-a").baseline, (100 * mib) as f64, "the peak of the window's second half");
        assert!(get("rss reader-a").ok, "the same teeth after the baseline");
        assert!(!get("rss reader-b").ok, "160 MiB is past 1.5 x the 100 MiB peak");
    }

    #[test]
    fn the_first_and_last_windows_p99_are_compared_with_a_floor() {
        let args = Cli::parse_from(["soak", "--baseline", "10s", "--duration", "30s"]).soak;
        let rec = recorder();
        {
            let mut w = rec.inner.lock().unwrap();
            w.first_read.record(1000).unwrap(); // 1 ms: below the 5 ms floor
            w.last_read.record(7000).unwrap(); // 7 ms: within 1.5 x 5 ms
            w.first_write.record(10_000).unwrap();
            w.last_write.record(16_000).unwrap(); // 16 ms: past 1.5 x 10 ms
        }
        let (bounds, _) = judge(&args, &[sample(10.0, 1, 1, 1)], &rec);
        let get = |name: &str| bounds.iter().find(|b| b.series == name).unwrap();
        assert!(get("read p99 ms").ok);
        assert!(!get("write p99 ms").ok);
    }

    #[test]
    fn directories_are_split_by_node_and_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("a/g"), [0u8; 20]).unwrap();
        let series = dir_series(dir.path(), &["a".to_string()], None);
        assert_eq!(series.get("a/b"), Some(&100));
        assert_eq!(series.get("a/(files)"), Some(&20));
        assert!(proc_rss(std::process::id()).is_some_and(|b| b > 0));
        assert!(proc_fds(std::process::id()).is_some_and(|n| n > 0));
    }
}
