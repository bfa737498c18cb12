//! `secretlog bench peer etcd` (issue #9): secretlog side by side with a three-member etcd
//! cluster on loopback, which the run starts on free ports with temporary data dirs and kills at
//! the end.
//!
//! Both systems are driven by the same closed loop and HTTP client as the `writes` and `reads`
//! scenarios ([`super::load`]), with the same stored document, keys and concurrency. Each
//! scenario and concurrency is measured on secretlog and at once after on etcd, so both see the
//! same machine; every figure is reported with its ratio secretlog/etcd from the same run.
//! etcd is spoken to over its HTTP/JSON gRPC gateway (`POST /v3/kv/put`, `POST /v3/kv/range`,
//! keys and values base64), the same transport secretlog's clients use.
//!
//! What is paired:
//! * **writes** — secretlog: an acknowledged write to the leader writer (one idempotent
//!   produce, acks=all, answered once the leader applied it); etcd: a put to the raft leader (committed by a
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
use serde_json::{Value, json};

use super::load::{LoadArgs, client, closed_loop, read_key, summary, write_key};
use super::peer::{Peer, PeerArgs, PeerRun, PeerSystem, run_pairs};

// --- etcd as a peer ----------------------------------------------------------------------------

/// Run `bench peer etcd`: start the cluster, measure each pair, print the table, append JSON
/// lines.
pub(super) async fn run(args: &LoadArgs, peer: &PeerArgs, token: &str, value: &str) -> anyhow::Result<()> {
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
pub(super) struct EtcdCluster {
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
    use crate::bench::peer::{pair, peer_table};

    #[test]
    fn a_row_holds_both_summaries_and_their_ratios() {
        let h = {
            let mut h = crate::bench::load::hist();
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
        let zero = summary("etcd_writes", 16, 0, 5, 1.0, &crate::bench::load::hist());
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
