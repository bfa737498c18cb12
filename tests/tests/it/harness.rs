//! The test harness: one real three-broker Kafka cluster per test run, a fresh topic per test,
//! and real node processes (the `secretlog-it` binary, built from the operator CLI's main.rs).
//!
//! The cluster is `KAFKA_BOOTSTRAP_SERVERS` when set; otherwise the harness starts one, on the
//! backend `SECRETLOG_TEST_BACKEND` names ([`backend`]):
//!
//! - `local` (the default): the local cluster of `secretlog_ops::kafka` (three broker JVMs),
//!   started *attached*: its brokers die with this test process however it ends, so nothing is
//!   left running after the test command exits. moto's S3 server runs as a local process.
//! - `containers`: the three brokers and moto's S3 server as Docker containers, started through
//!   `testcontainers` from the local images (crate::containers), removed when the process exits.
//!   The end-to-end tests run against them unchanged; the SASL and TLS listeners of the local
//!   cluster are not there, and the tests that need them fail saying so.
//! - `auto`: `containers` when a Docker engine answers and has the images, else `local`.
//!
//! Tests that kill brokers take the cluster exclusively ([`exclusive`]) and kill them through
//! [`BrokerFaults`], on either backend; all others share it ([`shared`]), so fault injection never
//! disturbs a test that is not about faults.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use secretlog_ops::kafka::{KafkaConfig, LocalKafka, ensure_topic};

use crate::containers::ContainerKafka;
use secretlog_ops::process;
use serde_json::{Value, json};

/// Where the harness runs the brokers and the S3 server (`SECRETLOG_TEST_BACKEND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Broker JVMs and `moto_server` as local processes.
    Local,
    /// Docker containers, through testcontainers.
    Containers,
}

/// The backend of this run: `SECRETLOG_TEST_BACKEND` = `local` (also when unset), `containers`,
/// or `auto` (`containers` when Docker answers and has the images, else `local`).
pub fn backend() -> Backend {
    static B: OnceLock<Backend> = OnceLock::new();
    *B.get_or_init(|| match std::env::var("SECRETLOG_TEST_BACKEND").unwrap_or_default().as_str() {
        "" | "local" => Backend::Local,
        "containers" => Backend::Containers,
        "auto" => {
            let b = if crate::containers::available() { Backend::Containers } else { Backend::Local };
            eprintln!("[harness] SECRETLOG_TEST_BACKEND=auto: {b:?}");
            b
        }
        other => panic!("SECRETLOG_TEST_BACKEND={other:?}: expected local, containers or auto"),
    })
}

/// The cluster of this test run.
pub struct Cluster {
    pub bootstrap: String,
    /// Present when the harness started the brokers itself as local processes.
    pub local: Option<LocalKafka>,
    /// Present when the harness started the brokers itself as containers.
    pub containers: Option<ContainerKafka>,
}

impl Cluster {
    /// The brokers, to kill and restart (fault tests); `None` for an external cluster.
    pub fn brokers(&self) -> Option<&dyn Brokers> {
        match (&self.local, &self.containers) {
            (Some(k), _) => Some(k),
            (None, Some(c)) => Some(c),
            (None, None) => None,
        }
    }

    /// The local cluster's SASL_PLAINTEXT listener (SASL/PLAIN) and its user's password;
    /// `None` for an external cluster. The containers backend has no such listener: the test
    /// fails, saying so, rather than passing without testing anything.
    pub fn sasl(&self) -> Option<(String, String)> {
        self.no_auth_listeners_in_containers();
        let k = self.local.as_ref()?;
        let password = secretlog_ops::kafka::config::sasl_password(k.config()).expect("the SASL password");
        Some((k.config().sasl_bootstrap_servers(), password))
    }

    /// The local cluster's SSL listener, its SASL_SSL listener and the CA certificate (PEM file)
    /// that signed the brokers' certificate; `None` for an external cluster. As [`Cluster::sasl`],
    /// fails on the containers backend.
    pub fn ssl(&self) -> Option<(String, String, PathBuf)> {
        self.no_auth_listeners_in_containers();
        let c = self.local.as_ref()?.config();
        Some((c.ssl_bootstrap_servers(), c.sasl_ssl_bootstrap_servers(), c.ssl_ca_file()))
    }

    fn no_auth_listeners_in_containers(&self) {
        assert!(
            self.containers.is_none(),
            "the containers backend runs PLAINTEXT listeners only: this test needs the local cluster's \
             SASL/TLS listeners (run it with SECRETLOG_TEST_BACKEND=local)"
        );
    }
}

/// Kill and restart brokers, whichever backend runs them.
pub trait Brokers: Sync {
    /// A crash: SIGKILL, not a clean shutdown; returns once the broker is down.
    fn kill_broker(&self, node: u32) -> Result<(), String>;
    /// Start a killed broker again, on the same address and with its data.
    fn restart_broker(&self, node: u32) -> Result<(), String>;
    /// Block until all three brokers take acks=all writes.
    fn wait_ready(&self, timeout: Duration) -> Result<(), String>;
}

impl Brokers for LocalKafka {
    fn kill_broker(&self, node: u32) -> Result<(), String> {
        LocalKafka::kill_broker(self, node).map_err(|e| e.to_string())
    }
    fn restart_broker(&self, node: u32) -> Result<(), String> {
        LocalKafka::restart_broker(self, node).map_err(|e| e.to_string())
    }
    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        LocalKafka::wait_ready(self, timeout).map_err(|e| e.to_string())
    }
}

impl Brokers for ContainerKafka {
    fn kill_broker(&self, node: u32) -> Result<(), String> {
        ContainerKafka::kill_broker(self, node)
    }
    fn restart_broker(&self, node: u32) -> Result<(), String> {
        ContainerKafka::restart_broker(self, node)
    }
    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        ContainerKafka::wait_ready(self, timeout)
    }
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static FAULTS: RwLock<()> = RwLock::new(());

fn start_cluster() -> Cluster {
    if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        && !b.is_empty()
    {
        return Cluster { bootstrap: b, local: None, containers: None };
    }
    if backend() == Backend::Containers {
        let started = Instant::now();
        let k = ContainerKafka::start();
        k.wait_ready(Duration::from_secs(240)).expect("three-broker Kafka in containers ready");
        eprintln!(
            "[harness] three-broker Kafka in containers ready at {} in {:?}",
            k.bootstrap_servers(),
            started.elapsed()
        );
        return Cluster { bootstrap: k.bootstrap_servers(), local: None, containers: Some(k) };
    }
    // `SECRETLOG_IT_KAFKA_DIR` (with `SECRETLOG_IT_KAFKA_PORT`) lets two test runs share a
    // machine without sharing a cluster directory.
    let root = std::env::var_os("SECRETLOG_IT_KAFKA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kafka"));
    // Left over from an earlier run (its brokers died with it): start clean.
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("creating the test cluster's directory");
    let mut cfg = KafkaConfig::new(&root);
    cfg.base_port = std::env::var("SECRETLOG_IT_KAFKA_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(29092);
    cfg.heap = "512m".into();
    let started = Instant::now();
    let k = LocalKafka::start_attached(cfg).expect("starting the local three-broker Kafka cluster");
    k.wait_ready(Duration::from_secs(240)).expect("local Kafka cluster ready");
    eprintln!("[harness] three-broker Kafka ready at {} in {:?}", k.bootstrap_servers(), started.elapsed());
    Cluster { bootstrap: k.bootstrap_servers(), local: Some(k), containers: None }
}

/// The cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(start_cluster)
}

/// Share the cluster with other non-fault tests.
pub fn shared() -> (&'static Cluster, RwLockReadGuard<'static, ()>) {
    let c = cluster();
    (c, FAULTS.read().unwrap_or_else(|e| e.into_inner()))
}

/// Have the cluster to yourself (to kill brokers). `None` when the cluster is external.
pub fn exclusive() -> Option<(&'static Cluster, RwLockWriteGuard<'static, ()>)> {
    let c = cluster();
    let guard = FAULTS.write().unwrap_or_else(|e| e.into_inner());
    c.brokers()?;
    Some((c, guard))
}

/// Kills brokers for a fault test and brings them back when dropped — also when the test panics,
/// so one failing fault test cannot take the shared cluster down for the tests after it.
pub struct BrokerFaults<'a> {
    kafka: &'a dyn Brokers,
    down: Vec<u32>,
}

impl<'a> BrokerFaults<'a> {
    pub fn new(kafka: &'a dyn Brokers) -> Self {
        BrokerFaults { kafka, down: Vec::new() }
    }

    pub fn kill(&mut self, node: u32) {
        self.kafka.kill_broker(node).unwrap_or_else(|e| panic!("killing broker {node}: {e}"));
        self.down.push(node);
    }

    /// Restart every killed broker and wait for a healthy cluster.
    pub fn heal(&mut self) {
        if self.down.is_empty() {
            return;
        }
        for node in self.down.drain(..) {
            if let Err(e) = self.kafka.restart_broker(node) {
                eprintln!("[harness] restarting broker {node}: {e}");
            }
        }
        if let Err(e) = self.kafka.wait_ready(Duration::from_secs(180)) {
            eprintln!("[harness] cluster not healthy after healing: {e}");
        }
    }
}

impl Drop for BrokerFaults<'_> {
    fn drop(&mut self) {
        if !self.down.is_empty() {
            self.heal();
        }
    }
}

/// A topic of the test's own.
pub async fn fresh_topic(bootstrap: &str, name: &str, partitions: i32) -> String {
    let topic = format!("it.{name}.{:08x}", rand::random::<u32>());
    ensure_topic(bootstrap, &topic, partitions).await.expect("creating the test topic");
    topic
}

/// A port nobody listens on right now, chosen below Linux's ephemeral range (32768+) so that an
/// outgoing connection (Kafka clients open many) cannot take it between now and the node's bind.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20000 + rand::random::<u16>() % 9000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-28999")
}

/// Poll `f` until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node process.
pub struct Node {
    pub name: String,
    pub url: String,
    pub log: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// A command the node is started through (e.g. `ip netns exec <ns>`); empty: none.
    prefix: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Start the process.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("node log");
        let bin = env!("CARGO_BIN_EXE_secretlog-it");
        let mut cmd = Command::new(self.prefix.first().map_or(bin, String::as_str));
        if !self.prefix.is_empty() {
            cmd.args(&self.prefix[1..]).arg(bin);
        }
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("SECRETLOG_ROOT_KEY")
            .env("RUST_LOG", "info,rdkafka=warn,slatedb=warn,foyer=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(process::spawn_attached(cmd).expect("spawning a node"));
    }

    /// Start the node through `prefix` (e.g. `ip netns exec <ns>`, which execs the node, so the
    /// pid stays the node's), answering at `url`.
    pub fn with_prefix(mut self, prefix: Vec<String>, url: String) -> Self {
        self.prefix = prefix;
        self.url = url;
        self
    }

    /// The process id, while the node runs (to signal it, e.g. SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::terminate(&mut c, Duration::from_secs(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The last lines of the node's log; if the node panicked, the lines up to the panic and its
    /// message instead of the backtrace that follows it.
    pub fn log_tail(&self) -> String {
        let tail = process::tail_file(&self.log, 400);
        let lines: Vec<&str> = tail.lines().collect();
        match lines.iter().rposition(|l| l.contains("panicked at")) {
            Some(at) => {
                let end =
                    lines[at..].iter().position(|l| l.starts_with("stack backtrace")).map_or(lines.len(), |e| at + e);
                lines[at.saturating_sub(25)..end].join("\n")
            }
            None => lines[lines.len().saturating_sub(30)..].join("\n"),
        }
    }

    /// Wait until `/v1/sys/health` answers `code`.
    pub async fn wait_health(&self, code: u16, timeout: Duration) -> Value {
        let url = format!("{}/v1/sys/health", self.url);
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match client().get(&url).send().await {
                Ok(r) if r.status().as_u16() == code => return r.json().await.unwrap_or_default(),
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not at health {code} after {timeout:?} (last: {last})\n--- log ---\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options of a test stack.
pub struct StackOpts {
    pub name: &'static str,
    pub partitions: i32,
    pub readers: usize,
    /// Writers besides the first (they join the election and stand by).
    pub standbys: usize,
    pub reader_args: Vec<String>,
    /// Extra environment of the writers (e.g. a test-only switch).
    pub writer_env: Vec<(String, String)>,
    /// Extra environment of the readers.
    pub reader_env: Vec<(String, String)>,
}

impl Default for StackOpts {
    fn default() -> Self {
        StackOpts {
            name: "stack",
            partitions: 3,
            readers: 2,
            standbys: 0,
            reader_args: vec![],
            writer_env: vec![],
            reader_env: vec![],
        }
    }
}

/// A writer and readers on a topic of their own.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub bootstrap: String,
    pub topic: String,
    pub root_key_file: PathBuf,
    /// The first writer: the leader once the stack has started.
    pub writer: Node,
    /// Further writers, standing by.
    pub standbys: Vec<Node>,
    pub readers: Vec<Node>,
    pub token: String,
    /// Environment every node of this stack gets on top of the defaults.
    extra_env: Vec<(String, String)>,
}

impl Stack {
    pub async fn start(cluster: &Cluster, opts: StackOpts) -> Stack {
        Stack::start_with_env(cluster, opts, Vec::new()).await
    }

    /// A stack whose every node also gets `extra_env` (later entries win, so it can replace
    /// `KAFKA_BOOTSTRAP_SERVERS`).
    pub async fn start_with_env(cluster: &Cluster, opts: StackOpts, extra_env: Vec<(String, String)>) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix(&format!("it-{}-", opts.name))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let topic = fresh_topic(&cluster.bootstrap, opts.name, opts.partitions).await;
        let root_key_file = dir.path().join("root.key");
        secretlog_ops::stack::ensure_root_key(&root_key_file).expect("root key");
        let envs = vec![
            ("KAFKA_BOOTSTRAP_SERVERS".to_string(), cluster.bootstrap.clone()),
            ("SECRETLOG_ROOT_KEY_FILE".to_string(), root_key_file.display().to_string()),
            ("SECRETLOG_TOPIC".to_string(), topic.clone()),
            ("SECRETLOG_CACHE_DISK_MB".to_string(), "16".to_string()),
            ("SECRETLOG_CACHE_MEMORY_MB".to_string(), "16".to_string()),
        ]
        .into_iter()
        .chain(extra_env.iter().cloned())
        .collect::<Vec<_>>();
        let token_file = dir.path().join("root-token");
        let writer_envs: Vec<(String, String)> = envs.iter().chain(&opts.writer_env).cloned().collect();
        let writer_node = |i: usize| {
            let port = free_port();
            let name = if i == 0 { "writer".to_string() } else { format!("writer-{i}") };
            node(
                dir.path(),
                &name,
                port,
                &writer_envs,
                vec![
                    "writer".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--data-dir".into(),
                    dir.path().join(&name).display().to_string(),
                    "--root-token-file".into(),
                    token_file.display().to_string(),
                    "--transactional-id".into(),
                    format!("{topic}-writer"),
                ],
            )
        };
        let mut writer = writer_node(0);
        writer.spawn();
        writer.wait_health(200, Duration::from_secs(90)).await;
        let token = std::fs::read_to_string(&token_file).expect("root token file").trim().to_string();
        let mut standbys = Vec::new();
        for i in 1..=opts.standbys {
            let mut w = writer_node(i);
            w.spawn();
            w.wait_health(429, Duration::from_secs(60)).await;
            standbys.push(w);
        }
        let writer_urls: Vec<String> =
            std::iter::once(writer.url.clone()).chain(standbys.iter().map(|w| w.url.clone())).collect();
        let mut readers = Vec::new();
        for i in 0..opts.readers {
            let port = free_port();
            let name = format!("reader-{i}");
            let mut args = vec![
                "reader".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--region".into(),
                format!("region-{i}"),
                "--data-dir".into(),
                dir.path().join(&name).display().to_string(),
                "--writer-url".into(),
                writer_urls.join(","),
            ];
            args.extend(opts.reader_args.iter().cloned());
            let reader_envs: Vec<(String, String)> = envs.iter().chain(&opts.reader_env).cloned().collect();
            let mut r = node(dir.path(), &name, port, &reader_envs, args);
            r.spawn();
            readers.push(r);
        }
        for r in &readers {
            r.wait_health(473, Duration::from_secs(60)).await;
        }
        Stack {
            dir,
            bootstrap: cluster.bootstrap.clone(),
            topic,
            root_key_file,
            writer,
            standbys,
            readers,
            token,
            extra_env,
        }
    }

    /// A reader node spec sharing this stack's settings, started (for extra readers).
    pub fn new_reader(&self, name: &str, extra_env: &[(&str, &str)]) -> Node {
        self.spawn_role("reader", name, extra_env, vec!["--writer-url".into(), self.writer.url.clone()])
    }

    /// Start a `role` node named `name` with this stack's environment plus `extra_env`, listening
    /// on a free port, its data under the stack's directory, with `args` after those.
    fn spawn_role(&self, role: &str, name: &str, extra_env: &[(&str, &str)], args: Vec<String>) -> Node {
        let port = free_port();
        let mut envs = self.envs();
        envs.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut argv = vec![
            role.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            self.dir.path().join(name).display().to_string(),
        ];
        argv.extend(args);
        let mut n = node(self.dir.path(), name, port, &envs, argv);
        n.spawn();
        n
    }
}

impl Stack {
    /// Write `data` to `path` through the leader writer; the write must succeed. Returns its
    /// consistency index.
    pub async fn put(&self, path: &str, data: Value) -> String {
        let a = call(
            "POST",
            &format!("{}/v1/secret/data/{path}", self.writer.url),
            Some(&self.token),
            None,
            Some(json!({ "data": data })),
        )
        .await;
        assert_eq!(a.status, 200, "write {path}: {:?}", a.body);
        a.index.expect("a committed write carries its index")
    }

    /// The environment every node of this stack shares.
    fn envs(&self) -> Vec<(String, String)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS".to_string(), self.bootstrap.clone()),
            ("SECRETLOG_ROOT_KEY_FILE".to_string(), self.root_key_file.display().to_string()),
            ("SECRETLOG_TOPIC".to_string(), self.topic.clone()),
            ("SECRETLOG_CACHE_DISK_MB".to_string(), "16".to_string()),
        ]
        .into_iter()
        .chain(self.extra_env.iter().cloned())
        .collect()
    }

    /// A writer joining this stack (a standby while the stack's leader leads), started.
    pub fn new_writer(&self, name: &str, extra_env: &[(&str, &str)]) -> Node {
        let token_file = self.dir.path().join(format!("{name}-root-token"));
        let args = vec![
            "--root-token-file".into(),
            token_file.display().to_string(),
            "--transactional-id".into(),
            format!("{}-writer", self.topic),
        ];
        self.spawn_role("writer", name, extra_env, args)
    }

    /// A replicator archiving into `objects` (a `file://` or `s3://` URL), started.
    pub fn new_replicator(&self, objects: &str, extra_env: &[(&str, &str)]) -> Node {
        let args = vec![
            "--object-store".into(),
            objects.to_string(),
            "--segment-max-records".into(),
            "50".into(),
            "--snapshot-interval-secs".into(),
            "0".into(),
        ];
        self.spawn_role("replicator", "replicator", extra_env, args)
    }
}

impl Node {
    /// Whether the process has exited (and its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

/// A node spec (not started) logging to `dir/name.log`, at `http://127.0.0.1:port`.
pub fn node(dir: &Path, name: &str, port: u16, envs: &[(String, String)], args: Vec<String>) -> Node {
    Node {
        name: name.to_string(),
        url: format!("http://127.0.0.1:{port}"),
        log: dir.join(format!("{name}.log")),
        args,
        envs: envs.to_vec(),
        prefix: Vec::new(),
        child: None,
    }
}

/// A shared HTTP client.
pub fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"))
}

/// An answer, with what tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub index: Option<String>,
    pub body: Value,
}

/// Send a request with the token (and optional consistency index).
pub async fn call(method: &str, url: &str, token: Option<&str>, index: Option<&str>, body: Option<Value>) -> Answer {
    try_call(method, url, token, index, body).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`call`], with a failure to get any answer (refused, timed out, cut) returned as such: for
/// clients of a node under faults, where no answer is an outcome the test records.
pub async fn try_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    index: Option<&str>,
    body: Option<Value>,
) -> Result<Answer, reqwest::Error> {
    let mut rb = client().request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), url);
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if let Some(i) = index {
        rb = rb.header("X-Secretlog-Index", i);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b.to_string());
    }
    let r = rb.send().await?;
    let status = r.status().as_u16();
    let index = r.headers().get("x-secretlog-index").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer { status, index, body })
}
