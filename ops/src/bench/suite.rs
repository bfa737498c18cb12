//! `secretlog bench suite` (issues #9 and #4): every benchmark scenario in one run, against a
//! stack and a peer it starts itself, with one table, `results.json` and `bench.png`.
//!
//! The run:
//! 1. starts a stack with the code `secretlog up --detach` runs ([`crate::stack::up`]: three Kafka
//!    brokers, two writers, readers in two regions, the replicator) in `--work-dir`;
//! 2. **writes** at 1/16/64 clients and **reads** at 1/16/64/256 connections (plain and token
//!    reads), each measured on secretlog and at once after on a three-member etcd cluster, with
//!    ratios — that is `bench peer etcd` ([`super::etcd::run`]), called as is;
//! 3. **replication lag** at a fixed write rate, write start → visible and acknowledged → visible
//!    ([`super::load::measure_lag`]);
//! 4. **failover**: `kill -9` of the leader writer under a write load, time to the next
//!    acknowledged write, several rounds (the killed writer is restarted between rounds and
//!    stands by), then a check that every acknowledged write is readable;
//! 5. **reader memory**: a real reader process whose store holds N secrets (built in-process the
//!    way `bench snapshot` builds its source, sealed under the stack's key), consuming the stack's
//!    topic; its VmRSS idle, under reads over all N keys, and its peak;
//! 6. stops the stack, then **snapshot** create and bootstrap at N secrets
//!    ([`super::snapshot::run`]).
//!
//! Absolute numbers on a shared machine are noise; the load average is recorded at every phase,
//! and the ratios secretlog/etcd come from measurements made back to back in the same minute.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use secretlog_schemas::ConsistencyToken;
use secretlog_schemas::keyring::{Keyring, RootKey};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::load::{LoadArgs, client};
use super::peer::PeerArgs;
use crate::stack::{StackFile, UpArgs};

/// Options of `bench suite`.
#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Directory that receives `results.json` and `bench.png`.
    #[arg(long, default_value = "docs/bench")]
    pub dir: PathBuf,
    /// A smoke run of a few minutes: 2 s per measurement, 2,000 keys, 2 failover rounds, 20,000
    /// secrets for snapshots and 50,000 for reader memory (each can still be set below).
    #[arg(long)]
    pub quick: bool,
    /// Only redraw `bench.png` and print the table from the `results.json` in `--dir`.
    #[arg(long)]
    pub replot: bool,
    /// Directory for the stack, the etcd members and the snapshot stores (emptied first; a stack
    /// left running there by an interrupted run is stopped).
    #[arg(long, default_value = "./target/bench-suite")]
    pub work_dir: PathBuf,
    /// Port of the first writer (the second listens on the next one).
    #[arg(long, default_value_t = 8250)]
    pub writer_port: u16,
    /// Port of the first reader (the second and the memory reader on the next ones).
    #[arg(long, default_value_t = 8350)]
    pub reader_port: u16,
    /// Port of the replicator.
    #[arg(long, default_value_t = 8450)]
    pub replicator_port: u16,
    /// First port of the stack's Kafka brokers (43 ports from here: controllers 10, SASL 20, SSL 30 and SASL_SSL 40 above).
    #[arg(long, default_value_t = 29092)]
    pub kafka_port: u16,
    /// Keys preloaded into both systems for the reads (default 50,000; quick 2,000).
    #[arg(long)]
    pub keys: Option<usize>,
    /// Writes per second of the lag measurement (default 200; quick 100). Keep it below what the
    /// writer sustains here (see the writes at 64 clients): past it, queueing is measured, not lag.
    #[arg(long)]
    pub lag_rate: Option<u64>,
    /// Leader kills (default 5; quick 2).
    #[arg(long)]
    pub failover_rounds: Option<usize>,
    /// Secrets of the snapshot measurement (default 1,000,000; quick 20,000).
    #[arg(long)]
    pub snapshot_secrets: Option<usize>,
    /// Secrets held by the reader whose memory is measured (default 1,000,000; quick 50,000).
    #[arg(long)]
    pub memory_secrets: Option<usize>,
    /// The etcd binary (Debian's `etcd-server`).
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,
}

/// Writes before the first measurement. Fresh broker JVMs are still compiling their hot paths:
/// in one evening, 5 s of warm-up left a stack at 28 / 245 / 781 writes/s at 1 / 16 / 64 clients,
/// where the same binary on a stack warmed by a few minutes of writes did 115 / 513 / 1,705. The
/// suite measures the steady state; the warm-up is in `results.json` (`plan.warm_up_seconds`).
const WARM_UP_SECONDS: u64 = 30;

/// What a run measures, once defaults and `--quick` are applied.
#[derive(Debug, Clone, serde::Serialize)]
struct Plan {
    seconds: u64,
    /// Unmeasured writes before the first measurement, at the highest client count.
    warm_up_seconds: u64,
    lag_seconds: u64,
    value_bytes: usize,
    keys: usize,
    clients: Vec<usize>,
    connections: Vec<usize>,
    lag_rate: u64,
    failover_rounds: usize,
    failover_clients: usize,
    snapshot_secrets: usize,
    memory_secrets: usize,
    memory_read_connections: usize,
}

impl Plan {
    fn new(args: &LoadArgs, s: &SuiteArgs) -> Plan {
        let q = s.quick;
        Plan {
            seconds: if q { 2 } else { args.seconds },
            warm_up_seconds: if q { 2 } else { WARM_UP_SECONDS },
            lag_seconds: if q { 5 } else { args.seconds.max(15) },
            value_bytes: args.value_bytes,
            keys: s.keys.unwrap_or(if q { 2_000 } else { 50_000 }),
            clients: vec![1, 16, 64],
            connections: vec![1, 16, 64, 256],
            lag_rate: s.lag_rate.unwrap_or(if q { 100 } else { 200 }),
            failover_rounds: s.failover_rounds.unwrap_or(if q { 2 } else { 5 }),
            failover_clients: 8,
            snapshot_secrets: s.snapshot_secrets.unwrap_or(if q { 20_000 } else { 1_000_000 }),
            memory_secrets: s.memory_secrets.unwrap_or(if q { 50_000 } else { 1_000_000 }),
            memory_read_connections: 16,
        }
    }
}

/// Run the suite (or only redraw its chart).
pub(super) async fn run(args: &LoadArgs, suite: &SuiteArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&suite.dir).with_context(|| format!("creating {}", suite.dir.display()))?;
    let results_path = suite.dir.join("results.json");
    let chart_path = suite.dir.join("bench.png");
    let results = if suite.replot {
        let bytes = std::fs::read(&results_path).with_context(|| format!("reading {}", results_path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", results_path.display()))?
    } else {
        let results = measure(args, suite).await?;
        std::fs::write(&results_path, serde_json::to_vec_pretty(&results)?)?;
        results
    };
    println!("{}", table(&results));
    println!(
        "ratio = secretlog / etcd, measured back to back in this run: ops/s above 1 and latency below 1 favour \
         secretlog. reads_linearizable: etcd linearizable reads beside secretlog token reads (a weaker guarantee)."
    );
    crate::chart::render(&results, &chart_path)?;
    println!("wrote {} and {}", results_path.display(), chart_path.display());
    Ok(())
}

/// Load averages (1, 5, 15 min) now, tagged with the phase about to start or just ended.
fn load(phase: &str) -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let f: Vec<f64> = text.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    json!({ "phase": phase, "load1": f.first(), "load5": f.get(1), "load15": f.get(2) })
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let etcd = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()));
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_mb": kb_field(&meminfo, "MemTotal:").map(|kb| kb / 1024),
        "etcd": etcd,
    })
}

/// A `/proc/*/status`-style field in kB.
fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// VmRSS and VmHWM of a process, MB.
fn rss_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let f = |k| kb_field(&status, k).map(|kb| kb as f64 / 1024.0).context("no memory figures in /proc status");
    Ok((f("VmRSS:")?, f("VmHWM:")?))
}

/// The stack the suite started, and the processes it started beside it. Dropping it stops them
/// all, however the run ends (an interrupted run leaves the detached stack: the next run, or
/// `secretlog down --data-dir <work-dir>/stack`, stops it).
struct Started {
    dir: PathBuf,
    children: Vec<Child>,
    stopped: bool,
}

impl Started {
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for c in self.children.iter_mut().rev() {
            crate::process::terminate(c, Duration::from_secs(20));
        }
        if let Err(e) = crate::stack::down(&self.dir) {
            eprintln!("stopping the bench stack in {}: {e:#}", self.dir.display());
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run every scenario; the whole result document.
async fn measure(args: &LoadArgs, suite: &SuiteArgs) -> anyhow::Result<Value> {
    let plan = Plan::new(args, suite);
    let work = &suite.work_dir;
    let stack_dir = work.join("stack");
    if stack_dir.join("stack.json").exists() {
        eprintln!("stopping the stack a previous run left in {}", stack_dir.display());
        crate::stack::down(&stack_dir)?;
    }
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(&stack_dir)?;
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut loads = vec![load("start")];

    let mut started = Started { dir: stack_dir.clone(), children: Vec::new(), stopped: false };
    crate::stack::up(UpArgs {
        data_dir: stack_dir.clone(),
        writer_port: suite.writer_port,
        reader_port: suite.reader_port,
        replicator_port: suite.replicator_port,
        kafka_port: suite.kafka_port,
        regions: vec!["east".into(), "west".into()],
        topic: secretlog_schemas::topic::MUTATIONS_TOPIC.into(),
        partitions: secretlog_schemas::topic::DEFAULT_PARTITIONS,
        detach: true,
    })
    .await
    .context("starting the stack")?;
    started.dir = stack_dir.canonicalize()?;
    let stack: StackFile = serde_json::from_slice(&std::fs::read(started.dir.join("stack.json"))?)?;
    let token = std::fs::read_to_string(&stack.root_token_file)?.trim().to_string();
    let value = "v".repeat(plan.value_bytes);
    let mut bench = args.clone();
    bench.writer = stack.writers[0].url.clone();
    bench.reader = stack.readers[0].url.clone();
    bench.token_file = stack.root_token_file.clone();
    bench.seconds = plan.seconds;
    loads.push(load("stack up"));

    // Not measured: the first transactions of fresh broker JVMs and producers (WARM_UP_SECONDS).
    let warm_clients = plan.clients.iter().copied().max().unwrap_or(16);
    eprintln!("== warm-up: {} s of writes at {warm_clients} clients (not measured)", plan.warm_up_seconds);
    let mut warm = bench.clone();
    warm.seconds = plan.warm_up_seconds;
    super::load::measure_writes(&warm, &token, &value, warm_clients).await.context("warm-up writes")?;

    eprintln!("== writes and reads, secretlog and etcd");
    let peer_out = work.join("peer-etcd.jsonl");
    bench.out = Some(peer_out.clone());
    let peer = peer_args(&plan, suite, &work.join("etcd"))?;
    super::etcd::run(&bench, &peer, &token, &value).await.context("writes and reads beside etcd")?;
    let peer_rows: Vec<Value> = std::fs::read_to_string(&peer_out)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("reading the peer rows back")?;
    loads.push(load("after writes and reads"));

    eprintln!("== replication lag at {} writes/s", plan.lag_rate);
    bench.seconds = plan.lag_seconds;
    let lag = super::load::measure_lag(&bench, &token, &value, plan.lag_rate).await?;
    println!("{}", super::load::table(&lag));
    loads.push(load("after lag"));

    eprintln!("== failover: kill -9 the leader writer, {} rounds", plan.failover_rounds);
    let failover = failover(&stack, &mut started, &token, &plan).await.context("failover")?;
    loads.push(load("after failover"));

    eprintln!("== reader memory at {} secrets", plan.memory_secrets);
    let memory = memory(&stack, &mut started, suite.reader_port + 2, &token, &plan).await.context("reader memory")?;
    loads.push(load("after reader memory"));
    started.stop();

    eprintln!("== snapshot create and bootstrap at {} secrets (stack stopped)", plan.snapshot_secrets);
    let snap_dir = work.join("snapshot");
    std::fs::create_dir_all(&snap_dir)?;
    let snapshot = super::snapshot::run(&[plan.snapshot_secrets], plan.value_bytes, &snap_dir).await?;
    std::fs::remove_dir_all(&snap_dir).ok();
    loads.push(load("end"));

    Ok(json!({
        "suite": "secretlog bench suite",
        "version": env!("CARGO_PKG_VERSION"),
        "started_utc": started_at,
        "finished_utc": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "quick": suite.quick,
        "machine": machine(),
        "load": loads,
        "plan": plan,
        "peer_etcd": peer_rows,
        "lag": lag,
        "failover": failover,
        "memory": memory,
        "snapshot": snapshot,
    }))
}

/// The options of `bench peer etcd` for this plan, parsed as the command line would be (so every
/// option this suite does not set keeps the default `bench peer` gives it).
fn peer_args(plan: &Plan, suite: &SuiteArgs, etcd_dir: &Path) -> anyhow::Result<PeerArgs> {
    #[derive(clap::Parser)]
    struct Peer {
        #[command(flatten)]
        args: PeerArgs,
    }
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let argv = [
        "peer".to_string(),
        "etcd".into(),
        "--runs".into(),
        "writes,serializable,linearizable".into(),
        "--clients".into(),
        list(&plan.clients),
        "--connections".into(),
        list(&plan.connections),
        "--keys".into(),
        plan.keys.to_string(),
        "--etcd-bin".into(),
        suite.etcd_bin.display().to_string(),
        "--etcd-dir".into(),
        etcd_dir.display().to_string(),
    ];
    Ok(<Peer as clap::Parser>::try_parse_from(argv)?.args)
}

// --- failover ----------------------------------------------------------------------------------

/// One write of the failover load and its answer.
struct Write {
    key: String,
    value: u64,
    started: Instant,
    done: Instant,
    /// Version and consistency index, when acknowledged.
    acked: Option<(u64, String)>,
}

/// `clients` writers through a reader (which forwards to whichever writer leads), recording every
/// answer.
struct Load {
    writes: Arc<Mutex<Vec<Write>>>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(url: &str, token: &str, clients: usize) -> anyhow::Result<Load> {
        let (writes, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let http = client(clients)?;
        let mut tasks = tokio::task::JoinSet::new();
        let run = format!("{:08x}", rand::random::<u32>());
        for c in 0..clients {
            let (writes, stop, http, url, token, run) =
                (writes.clone(), stop.clone(), http.clone(), url.to_string(), token.to_string(), run.clone());
            tasks.spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("bench/failover/{run}/c{c}/k{}", i % 40), (c as u64) << 32 | i);
                    let started = Instant::now();
                    let resp = http
                        .post(format!("{url}/v1/secret/data/{key}"))
                        .header("X-Vault-Token", &token)
                        .json(&json!({"data": {"v": value}}))
                        .send()
                        .await;
                    let acked = match resp {
                        Ok(r) if r.status().is_success() => {
                            let index =
                                r.headers().get("x-secretlog-index").and_then(|v| v.to_str().ok()).map(String::from);
                            let body: Value = r.json().await.unwrap_or_default();
                            body["data"]["version"].as_u64().zip(index)
                        }
                        _ => None,
                    };
                    let failed = acked.is_none();
                    writes.lock().await.push(Write { key, value, started, done: Instant::now(), acked });
                    if failed {
                        // While there is no leader, back off a little, as a client would.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    i += 1;
                }
            });
        }
        Ok(Load { writes, stop, tasks })
    }

    async fn acked(&self) -> usize {
        self.writes.lock().await.iter().filter(|w| w.acked.is_some()).count()
    }

    /// Wait until `more` writes past the current count are acknowledged.
    async fn wait_for(&self, more: usize, what: &str) -> anyhow::Result<()> {
        let target = self.acked().await + more;
        poll(Duration::from_secs(90), what, || async { (self.acked().await >= target).then_some(()) }).await
    }

    async fn stop(mut self) -> Vec<Write> {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        std::mem::take(&mut *self.writes.lock().await)
    }
}

/// Poll `f` every 50 ms until it gives a value, or fail after `limit` naming `what`.
async fn poll<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(http: &reqwest::Client, url: &str) -> u16 {
    match http.get(format!("{url}/v1/sys/health")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// A writer of the stack: where it answers, and the process that runs it now.
struct WriterProc {
    name: String,
    url: String,
    pid: u32,
}

/// Kill the leader writer `rounds` times under a write load through a reader; each round, the
/// time from the kill to the first acknowledged write sent after it. The killed writer is started
/// again (same arguments, same data directory) and must come back as a standby before the next
/// round. At the end every key's newest acknowledged version must be readable with its value.
async fn failover(stack: &StackFile, started: &mut Started, token: &str, plan: &Plan) -> anyhow::Result<Value> {
    let http = client(4)?;
    let mut writers: Vec<WriterProc> =
        stack.writers.iter().map(|w| WriterProc { name: w.name.clone(), url: w.url.clone(), pid: w.pid }).collect();
    let through = &stack.readers[0].url;
    let load = Load::start(through, token, plan.failover_clients)?;
    let mut rounds = Vec::new();
    for round in 0..plan.failover_rounds {
        load.wait_for(100, "steady writes before the kill").await?;
        let leader = poll(Duration::from_secs(90), "exactly one leader writer", || async {
            let (a, b) = (health(&http, &writers[0].url).await, health(&http, &writers[1].url).await);
            match (a, b) {
                (200, 429) => Some(0),
                (429, 200) => Some(1),
                _ => None,
            }
        })
        .await?;
        let standby = 1 - leader;
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", writers[leader].pid))
            .with_context(|| format!("reading the command line of {}", writers[leader].name))?;
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let killed_at = Instant::now();
        crate::process::signal(writers[leader].pid, libc::SIGKILL)?;
        let promoted = poll(Duration::from_secs(90), "the standby to lead", || async {
            (health(&http, &writers[standby].url).await == 200).then(Instant::now)
        })
        .await?;
        let first = poll(Duration::from_secs(90), "an acknowledged write after the kill", || async {
            let writes = load.writes.lock().await;
            writes.iter().filter(|w| w.acked.is_some() && w.started > killed_at).map(|w| w.done).min()
        })
        .await?;
        let secs = (first - killed_at).as_secs_f64();
        eprintln!("round {}: {} killed, next acknowledged write after {secs:.2} s", round + 1, writers[leader].name);
        rounds.push(json!({
            "killed": writers[leader].name,
            "failover_secs": secs,
            "standby_leading_secs": (promoted - killed_at).as_secs_f64(),
        }));
        // Back as a standby, with the arguments and data directory it had.
        let (child, _) = crate::stack::spawn_node(
            &started.dir,
            &writers[leader].name,
            argv.get(1..).unwrap_or_default(),
            &stack.root_key_file,
            &stack.kafka_bootstrap,
            true,
        )?;
        writers[leader].pid = child.id();
        started.children.push(child);
        let url = writers[leader].url.clone();
        poll(Duration::from_secs(120), "the restarted writer to stand by", || async {
            (health(&http, &url).await == 429).then_some(())
        })
        .await?;
    }
    load.wait_for(50, "writes after the last round").await?;
    let writes = load.stop().await;
    let lost = lost_writes(&http, through, token, &writes).await?;
    let acked = writes.iter().filter(|w| w.acked.is_some()).count();
    let mut times: Vec<f64> = rounds.iter().filter_map(|r| r["failover_secs"].as_f64()).collect();
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "rounds": rounds,
        "clients": plan.failover_clients,
        "through": "reader-east (forwards writes to the leader)",
        "min_secs": times.first(),
        "median_secs": times.get(times.len() / 2),
        "max_secs": times.last(),
        "acknowledged": acked,
        "refused": writes.len() - acked,
        "acknowledged_lost": lost,
    }))
}

/// How many keys' newest acknowledged write is not readable, at its version and with its value,
/// from the reader at `url` once it has applied every acknowledged position.
async fn lost_writes(http: &reqwest::Client, url: &str, token: &str, writes: &[Write]) -> anyhow::Result<usize> {
    let mut position = ConsistencyToken::default();
    let mut newest: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for w in writes {
        if let Some((version, index)) = &w.acked {
            position.merge(&index.parse().map_err(|e| anyhow::anyhow!("bad X-Secretlog-Index {index}: {e}"))?);
            let e = newest.entry(w.key.as_str()).or_insert((*version, w.value));
            if *version > e.0 {
                *e = (*version, w.value);
            }
        }
    }
    let position = position.to_string();
    let mut lost = 0;
    for (key, (version, value)) in newest {
        let resp = http
            .get(format!("{url}/v1/secret/data/{key}?version={version}"))
            .header("X-Vault-Token", token)
            .header("X-Secretlog-Index", &position)
            .send()
            .await?;
        let body: Value = if resp.status().is_success() { resp.json().await? } else { Value::Null };
        if body["data"]["data"]["v"] != value {
            lost += 1;
        }
    }
    Ok(lost)
}

// --- reader memory -----------------------------------------------------------------------------

/// Start a reader whose store already holds `plan.memory_secrets` secrets (`bench/memory/k<i>`),
/// on the stack's topic, and measure its memory idle, under reads over every key, and at peak.
async fn memory(
    stack: &StackFile,
    started: &mut Started,
    port: u16,
    token: &str,
    plan: &Plan,
) -> anyhow::Result<Value> {
    let n = plan.memory_secrets;
    let name = "reader-memory";
    let data_dir = started.dir.join(name);
    let key = RootKey::from_file(&stack.root_key_file).context("the stack's root key")?;
    let keyring = Keyring::from_root(&key);
    let filling = Instant::now();
    {
        let store = secretlog_state::store::Store::open(&super::snapshot::store_config(&data_dir)).await?;
        let path = |i: usize| format!("bench/memory/k{i}");
        super::snapshot::fill(&store, &keyring, n, plan.value_bytes, &path, false).await?;
        store.close().await?;
    }
    let fill_secs = filling.elapsed().as_secs_f64();
    let url = format!("http://127.0.0.1:{port}");
    let writer_urls: Vec<&str> = stack.writers.iter().map(|w| w.url.as_str()).collect();
    let argv: Vec<String> = [
        "reader",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--region",
        "memory",
        "--data-dir",
        &data_dir.display().to_string(),
        "--writer-url",
        &writer_urls.join(","),
        "--topic",
        &stack.topic,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (child, _) =
        crate::stack::spawn_node(&started.dir, name, &argv, &stack.root_key_file, &stack.kafka_bootstrap, true)?;
    let pid = child.id();
    started.children.push(child);
    let starting = Instant::now();
    // Caught up: it answers a write made now (through the stack's reader, forwarded to the leader)
    // at that write's position, and it serves the last of its own secrets.
    let marker = client(1)?
        .post(format!("{}/v1/secret/data/bench/memory-marker", stack.readers[0].url))
        .header("X-Vault-Token", token)
        .json(&json!({"data": {"v": "m"}}))
        .send()
        .await?;
    let index = marker.headers().get("x-secretlog-index").and_then(|v| v.to_str().ok()).map(String::from);
    let index = index.context("the marker write returned no X-Secretlog-Index")?;
    let http = client(2)?;
    let last = format!("{url}/v1/secret/data/bench/memory/k{}", n.saturating_sub(1));
    poll(Duration::from_secs(600), "the memory reader to catch up", || async {
        let marker = http
            .get(format!("{url}/v1/secret/data/bench/memory-marker"))
            .header("X-Vault-Token", token)
            .header("X-Secretlog-Index", &index)
            .send()
            .await;
        let own = http.get(&last).header("X-Vault-Token", token).send().await;
        (matches!(marker, Ok(r) if r.status().is_success()) && matches!(own, Ok(r) if r.status().is_success()))
            .then_some(())
    })
    .await?;
    let ready_secs = starting.elapsed().as_secs_f64();
    let (idle, _) = rss_mb(pid)?;
    let reads = super::load::measure_reads_under(
        &url,
        "bench/memory",
        plan.seconds.max(5),
        token,
        n,
        None,
        plan.memory_read_connections,
    )
    .await?;
    let (loaded, peak) = rss_mb(pid)?;
    let (east, east_peak) = rss_mb(stack.readers[0].pid)?;
    Ok(json!({
        "secrets": n,
        "value_bytes": plan.value_bytes,
        "fill_secs": fill_secs,
        "ready_secs": ready_secs,
        "store_bytes": super::snapshot::dir_bytes(&data_dir),
        "rss_idle_mb": idle,
        "rss_under_reads_mb": loaded,
        "rss_peak_mb": peak,
        "reads": reads,
        "cache": "reader defaults: 64 MiB memory cache, 256 MiB disk cache",
        "reader_east": { "keys": plan.keys, "rss_mb": east, "rss_peak_mb": east_peak },
    }))
}

// --- the table ---------------------------------------------------------------------------------

/// One figure group of a row: the values joined with " / ".
fn joined(values: &[Option<f64>], digits: &[usize]) -> String {
    values
        .iter()
        .zip(digits)
        .map(|(v, d)| v.map_or("-".to_string(), |x| format!("{x:.d$}", d = *d)))
        .collect::<Vec<_>>()
        .join(" / ")
}

const DIST: &[&str] = &["ops_per_sec", "p50_ms", "p99_ms", "p999_ms"];

fn dist(v: &Value) -> Vec<Option<f64>> {
    DIST.iter().map(|k| v[*k].as_f64()).collect()
}

/// A summary's ops/s and latencies, and its failed operations if there were any.
fn dist_cell(v: &Value) -> String {
    let text = joined(&dist(v), &[0, 2, 2, 2]);
    match v["errors"].as_u64() {
        Some(e) if e > 0 => format!("{text} ({e} failed)"),
        _ => text,
    }
}

/// The one table of a run: a row per scenario and concurrency, secretlog's figures, etcd's and
/// their ratio where etcd has one.
pub(super) fn table(r: &Value) -> comfy_table::Table {
    let mut t = crate::output::table(&["scenario", "at", "figures", "secretlog", "etcd", "ratio s/e"]);
    let r2 = [2, 2, 2, 2];
    let dist_fig = "ops/s · p50 · p99 · p99.9 ms";
    // A figure etcd has no counterpart of in this run.
    let own = |t: &mut comfy_table::Table, [scenario, at, figures, value]: [String; 4]| {
        t.add_row(vec![scenario, at, figures, value, "-".into(), "-".into()]);
    };
    for row in r["peer_etcd"].as_array().into_iter().flatten() {
        let scenario = row["scenario"].as_str().unwrap_or("").trim_start_matches("peer_etcd_");
        let (scenario, at) = match scenario {
            "writes" => ("acknowledged writes", "clients"),
            "reads_linearizable" => ("reads: token (etcd: linearizable)", "conn."),
            "reads_serializable" => ("reads: local (etcd: serializable)", "conn."),
            other => (other, ""),
        };
        let q = &row["ratio"];
        t.add_row(vec![
            scenario.to_string(),
            format!("{} {at}", row["concurrency"]),
            dist_fig.to_string(),
            dist_cell(&row["secretlog"]),
            dist_cell(&row["etcd"]),
            joined(&DIST.iter().map(|k| q[*k].as_f64()).collect::<Vec<_>>(), &r2),
        ]);
    }
    for l in r["lag"].as_array().into_iter().flatten() {
        let name = match l["scenario"].as_str() {
            Some("ack_to_visible") => "replication lag: acknowledged → visible on reader",
            _ => "write start → visible on reader",
        };
        own(&mut t, [name.to_string(), format!("{} writes/s", l["concurrency"]), dist_fig.to_string(), dist_cell(l)]);
    }
    let f = &r["failover"];
    if f.is_object() {
        own(
            &mut t,
            [
                "failover: kill -9 leader writer → next acknowledged write".into(),
                format!("{} rounds", f["rounds"].as_array().map_or(0, Vec::len)),
                "s min / median / max".into(),
                joined(&[f["min_secs"].as_f64(), f["median_secs"].as_f64(), f["max_secs"].as_f64()], &[2, 2, 2]),
            ],
        );
        own(
            &mut t,
            [
                "failover: writes under the kills".into(),
                format!("{} clients", f["clients"]),
                "acknowledged / refused / acknowledged lost".into(),
                format!("{} / {} / {}", f["acknowledged"], f["refused"], f["acknowledged_lost"]),
            ],
        );
    }
    let m = &r["memory"];
    if m.is_object() {
        own(
            &mut t,
            [
                "reader memory (VmRSS)".into(),
                format!("{} secrets", m["secrets"]),
                "MB idle / under reads / peak".into(),
                joined(
                    &[m["rss_idle_mb"].as_f64(), m["rss_under_reads_mb"].as_f64(), m["rss_peak_mb"].as_f64()],
                    &[0, 0, 0],
                ),
            ],
        );
        own(
            &mut t,
            [
                format!("reads from that reader, {} conn.", r["plan"]["memory_read_connections"]),
                format!("{} secrets", m["secrets"]),
                dist_fig.to_string(),
                dist_cell(&m["reads"]),
            ],
        );
    }
    for s in r["snapshot"].as_array().into_iter().flatten() {
        own(
            &mut t,
            [
                "snapshot create / bootstrap".into(),
                format!("{} secrets", s["secrets"]),
                "s create / s bootstrap / MB".into(),
                joined(
                    &[
                        s["create_secs"].as_f64(),
                        s["bootstrap_secs"].as_f64(),
                        s["snapshot_bytes"].as_f64().map(|b| b / 1e6),
                    ],
                    &[2, 2, 0],
                ),
            ],
        );
    }
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A results document shaped like a real run's, with made-up figures.
    pub(crate) fn sample() -> Value {
        let s = |name: &str, c: usize, ops: f64, p50: f64| {
            json!({"scenario": name, "concurrency": c, "ops": 1, "errors": 0, "seconds": 1.0, "ops_per_sec": ops,
                   "p50_ms": p50, "p99_ms": p50 * 3.0, "p999_ms": p50 * 5.0, "max_ms": p50 * 6.0})
        };
        let mut peer = Vec::new();
        for (run, cs, sops, eops) in [
            ("writes", vec![1, 16, 64], 20.0, 500.0),
            ("reads_serializable", vec![1, 16, 64, 256], 10_000.0, 2_500.0),
            ("reads_linearizable", vec![1, 16, 64, 256], 8_000.0, 1_500.0),
        ] {
            for c in cs {
                let k = (c as f64).sqrt();
                let (a, b) = (s(run, c, sops * k, 1.0 * k), s(run, c, eops * k, 0.5 * k));
                let ratio = json!({"ops_per_sec": sops / eops, "p50_ms": 2.0, "p99_ms": 2.0, "p999_ms": 2.0});
                peer.push(json!({"scenario": format!("peer_etcd_{run}"), "concurrency": c, "secretlog": a,
                                 "etcd": b, "ratio": ratio}));
            }
        }
        json!({
            "started_utc": "2026-11-23T13:00:00Z", "quick": true, "machine": {"cpus": 2},
            "load": [{"phase": "start", "load1": 5.0, "load5": 4.0, "load15": 3.0},
                     {"phase": "end", "load1": 7.5, "load5": 6.0, "load15": 4.0}],
            "plan": {"memory_read_connections": 16, "keys": 2000},
            "peer_etcd": peer,
            "lag": [s("write_to_visible", 200, 199.0, 80.0), s("ack_to_visible", 200, 199.0, 6.0)],
            "failover": {"rounds": [{"failover_secs": 2.1}, {"failover_secs": 2.9}], "clients": 8,
                         "min_secs": 2.1, "median_secs": 2.9, "max_secs": 2.9, "acknowledged": 900,
                         "refused": 40, "acknowledged_lost": 0},
            "memory": {"secrets": 50000, "rss_idle_mb": 120.0, "rss_under_reads_mb": 180.0, "rss_peak_mb": 190.0,
                       "reads": s("reads", 16, 9000.0, 1.5), "reader_east": {"keys": 2000, "rss_mb": 100.0}},
            "snapshot": [{"secrets": 20000, "create_secs": 0.3, "bootstrap_secs": 0.4, "snapshot_bytes": 9.0e6}],
        })
    }

    #[test]
    fn the_table_has_a_row_per_measurement_and_etcd_only_where_it_was_measured() {
        let t = table(&sample()).to_string();
        assert_eq!(table(&sample()).row_count(), 11 + 2 + 2 + 2 + 1);
        assert!(t.contains("20 / 1.00 / 3.00 / 5.00"), "secretlog writes at 1 client:\n{t}");
        assert!(t.contains("500 / 0.50 / 1.50 / 2.50"), "etcd writes at 1 client:\n{t}");
        assert!(t.contains("0.04 / 2.00 / 2.00 / 2.00"), "ratio of the writes:\n{t}");
        assert!(t.contains("replication lag: acknowledged → visible on reader"));
        assert!(t.contains("2.10 / 2.90 / 2.90"), "failover min/median/max:\n{t}");
        assert!(t.contains("900 / 40 / 0"));
    }

    #[test]
    fn the_peer_run_is_bench_peer_etcd_at_the_plans_concurrencies() {
        let plan = Plan {
            seconds: 2,
            warm_up_seconds: 2,
            lag_seconds: 5,
            value_bytes: 64,
            keys: 1234,
            clients: vec![1, 16],
            connections: vec![1, 256],
            lag_rate: 100,
            failover_rounds: 1,
            failover_clients: 8,
            snapshot_secrets: 10,
            memory_secrets: 10,
            memory_read_connections: 16,
        };
        let suite = SuiteArgs {
            dir: "d".into(),
            quick: true,
            replot: false,
            work_dir: "w".into(),
            writer_port: 1,
            reader_port: 2,
            replicator_port: 3,
            kafka_port: 4,
            keys: None,
            lag_rate: None,
            failover_rounds: None,
            snapshot_secrets: None,
            memory_secrets: None,
            etcd_bin: "/usr/bin/etcd".into(),
        };
        let p = peer_args(&plan, &suite, Path::new("/tmp/e")).unwrap();
        assert_eq!(p.system, crate::bench::peer::PeerSystem::Etcd);
        assert_eq!((p.clients, p.connections, p.keys), (vec![1, 16], vec![1, 256], 1234));
        assert_eq!(p.runs.len(), 3);
        assert_eq!(p.etcd_dir.as_deref(), Some(Path::new("/tmp/e")));
        assert!(!p.no_preload);
    }

    #[test]
    fn memory_figures_come_from_proc() {
        let (rss, hwm) = rss_mb(std::process::id()).unwrap();
        assert!(rss > 0.0 && hwm >= rss, "{rss} {hwm}");
        assert_eq!(kb_field("VmRSS:\t  1234 kB\n", "VmRSS:"), Some(1234));
        assert!(load("x")["load1"].as_f64().is_some());
    }
}
