//! A real three-broker Apache Kafka (KRaft, combined broker+controller nodes) on loopback,
//! without Docker, for development, tests and CI.
//!
//! The broker jars come from Maven (see [`config`]); each node is a plain `java ... kafka.Kafka`
//! process with its own directory under `<data_dir>/kafka/node-N`. The cluster is configured the
//! way secretlog needs Kafka in production (RF=3, min.insync.replicas=2, no unclean election), so
//! failure tests against it mean something: one dead broker is tolerated, two stop writes.

mod client;
pub mod config;
mod process;
mod tls;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use client::{ensure_topic, probe};
pub use config::{DEFAULT_BASE_PORT, KAFKA_VERSION, KafkaConfig, NODE_IDS, ensure_jars};
use process::{Mode, Node, kill_pid, live_pid, terminate};

/// How long a node may take from spawn to an open client port (JVM start, KRaft election,
/// catching up on metadata) on a slow 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a port may take to be released by a broker that just died.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(5);
/// Grace period for a clean shutdown before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How often state is polled while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Lines of `broker.log` quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// Everything that can go wrong running the local cluster, with the facts needed to act on it.
// Field names (node, pid, port, command, log_tail, timeout...) are the facts themselves; each
// variant's doc says when it happens.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A file-system operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot work (e.g. ports out of range).
    #[error("bad Kafka config: {reason}")]
    BadConfig { reason: String },
    /// A program (mvn, java) could not be started at all.
    #[error("cannot run `{command}`{}: {source}", for_node(.node))]
    Spawn {
        node: Option<u32>,
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper command (jar fetch, storage format) ran and failed.
    #[error("`{command}`{} failed with {status}:\n{output_tail}", for_node(.node))]
    Command { node: Option<u32>, command: String, status: String, output_tail: String },
    /// A broker JVM exited while we waited for it.
    #[error("broker {node} exited with {status}; last lines of {}:\n{log_tail}", log.display())]
    BrokerExited { node: u32, status: String, log: PathBuf, log_tail: String },
    /// A broker stayed alive but did not open its client port in time.
    #[error("broker {node} did not open port {port} within {timeout:?}; last lines of {}:\n{log_tail}", log.display())]
    StartTimeout { node: u32, port: u16, timeout: Duration, log: PathBuf, log_tail: String },
    /// Another process holds a port a node needs.
    #[error("port {port} needed by node {node} is already in use by another process")]
    PortInUse { node: u32, port: u16 },
    /// A broker from a pid file is running where an attached cluster should start.
    #[error("node {node} is already running as pid {pid} (a detached cluster? run `secretlog kafka down`)")]
    AlreadyRunning { node: u32, pid: u32 },
    /// A node id outside 1..=3.
    #[error("no node {node}: nodes are 1, 2 and 3")]
    UnknownNode { node: u32 },
    /// A node that should be running is not.
    #[error("broker {node} is not running")]
    NotRunning { node: u32 },
    /// Sending a signal failed (not counting "already gone").
    #[error("cannot send signal {signal} to pid {pid} (node {node}): {source}")]
    Signal {
        node: u32,
        pid: u32,
        signal: i32,
        #[source]
        source: std::io::Error,
    },
    /// A process survived SIGKILL for longer than `timeout` (stuck in the kernel?).
    #[error("pid {pid} (node {node}) still exists {timeout:?} after SIGKILL")]
    StillRunning { node: u32, pid: u32, timeout: Duration },
    /// A readiness or topic wait ran out of time.
    #[error("{what}: not done after {timeout:?}; last problem: {last_error}")]
    Timeout { what: String, timeout: Duration, last_error: String },
    /// The Kafka client reported an error.
    #[error("Kafka client error during {op}: {source}")]
    Client {
        op: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Topic creation was refused by the cluster.
    #[error("creating topic {topic}: {code}")]
    Topic { topic: String, code: String },
    /// The cluster's CA or broker certificate could not be made.
    #[error("cannot make the local cluster's TLS certificates: {source}")]
    Tls {
        #[source]
        source: rcgen::Error,
    },
    /// An internal helper thread panicked or could not run.
    #[error("internal error: {0}")]
    Internal(String),
}

impl KafkaError {
    pub(crate) fn io(what: &str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        KafkaError::Io { what: what.to_string(), path: path.as_ref().to_path_buf(), source }
    }
}

/// One node as seen by [`LocalKafka::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    /// Node id (1..=3).
    pub node: u32,
    /// Client port of the node.
    pub port: u16,
    /// Pid of the node's JVM if its pid file names a live broker of this data dir.
    pub pid: Option<u32>,
    /// Whether the client port accepts TCP connections right now.
    pub answering: bool,
}

/// Outcome of looking at a node.
enum Liveness {
    Alive,
    Exited(String),
    Gone,
}

/// A running local cluster. Attached clusters are killed when this value is dropped (and by the
/// kernel when the process dies); detached ones keep running until [`LocalKafka::stop`] or
/// [`stop_detached`].
pub struct LocalKafka {
    cfg: KafkaConfig,
    mode: Mode,
    nodes: Mutex<Vec<Node>>,
    stopped: bool,
}

impl LocalKafka {
    /// Detached: brokers survive this process (used by `secretlog kafka up`). Idempotent: nodes
    /// whose pid files name live brokers of this data dir are reused, missing ones are started.
    pub fn start_detached(cfg: KafkaConfig) -> Result<LocalKafka, KafkaError> {
        Self::start(cfg, Mode::Detached)
    }

    /// Attached: every broker is started with `prctl(PR_SET_PDEATHSIG, SIGKILL)` from one
    /// dedicated, never-exiting thread, so the brokers die with this process even if it panics or
    /// is killed. Used by the test harness and `secretlog up`.
    pub fn start_attached(cfg: KafkaConfig) -> Result<LocalKafka, KafkaError> {
        Self::start(cfg, Mode::Attached)
    }

    fn start(cfg: KafkaConfig, mode: Mode) -> Result<LocalKafka, KafkaError> {
        cfg.check_ports()?;
        config::ensure_jars(&cfg)?;
        let mut nodes: Vec<Node> = NODE_IDS.iter().map(|_| Node::default()).collect();
        let mut to_start = Vec::new();
        for &n in &NODE_IDS {
            if let Some(pid) = live_pid(&cfg, n) {
                if mode == Mode::Attached {
                    return Err(KafkaError::AlreadyRunning { node: n, pid });
                }
                tracing::info!(node = n, pid, "reusing running broker");
                nodes[idx(n)].pid = Some(pid);
            } else {
                to_start.push(n);
            }
        }
        let kafka = LocalKafka { cfg, mode, nodes: Mutex::new(nodes), stopped: false };
        if to_start.is_empty() {
            return Ok(kafka);
        }
        kafka.prepare(&to_start)?;
        let started = Instant::now();
        let spawned = to_start.iter().try_for_each(|&n| kafka.spawn_node(n));
        let result = spawned.and_then(|()| kafka.wait_ports(&to_start, START_TIMEOUT));
        if let Err(e) = result {
            // Leave no half-started cluster behind.
            for &n in &to_start {
                let _ = kafka.kill_broker(n);
            }
            return Err(e);
        }
        tracing::info!(elapsed = ?started.elapsed(), "local Kafka nodes {to_start:?} are up");
        Ok(kafka)
    }

    /// Directories, config files, cluster id and storage format for `nodes`.
    fn prepare(&self, nodes: &[u32]) -> Result<(), KafkaError> {
        let cfg = &self.cfg;
        let sasl_password = config::sasl_password(cfg)?;
        let tls = tls::broker_tls(cfg)?;
        for &n in nodes {
            for port in cfg.ports(n) {
                if !process::port_free(port, PORT_RELEASE_WAIT) {
                    return Err(KafkaError::PortInUse { node: n, port });
                }
            }
            let dir = cfg.node_dir(n);
            fs::create_dir_all(&dir).map_err(|e| KafkaError::io("create", &dir, e))?;
            let props = config::render_server_properties(cfg, n, &sasl_password, &tls);
            config::write_atomic_mode(&cfg.properties_file(n), props.as_bytes(), 0o600)?;
        }
        config::write_atomic(&cfg.log4j_file(), config::render_log4j2().as_bytes())?;
        let cluster_id = config::cluster_id(cfg)?;
        process::format_storage(cfg, nodes, &cluster_id)
    }

    /// Start node `n` (in this cluster's mode) and record its pid; does not wait.
    fn spawn_node(&self, n: u32) -> Result<(), KafkaError> {
        let cfg = &self.cfg;
        let log_path = cfg.broker_log(n);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| KafkaError::io("open", &log_path, e))?;
        let _ = std::io::Write::write_all(
            &mut log,
            format!("==== secretlog: starting node {n} ({:?}) ====\n", self.mode).as_bytes(),
        );
        let log_err = log.try_clone().map_err(|e| KafkaError::io("dup", &log_path, e))?;
        let mut cmd = process::java_command(&self.cfg);
        cmd.arg("kafka.Kafka")
            .arg(cfg.properties_file(n))
            .current_dir(cfg.node_dir(n))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let command = process::describe(&cmd);
        let child =
            process::spawn(self.mode, cmd).map_err(|e| KafkaError::Spawn { node: Some(n), command, source: e })?;
        let pid = child.id();
        tracing::info!(node = n, pid, port = cfg.client_port(n), "started broker");
        {
            let mut nodes = self.lock();
            nodes[idx(n)] = Node { pid: Some(pid), child: Some(child) };
        }
        config::write_atomic(&cfg.pid_file(n), format!("{pid}\n").as_bytes())
    }

    /// Wait until every node in `nodes` accepts connections on its client port.
    fn wait_ports(&self, nodes: &[u32], timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<u32> = nodes.to_vec();
        loop {
            for &n in &pending {
                self.check_alive(n)?;
            }
            pending.retain(|&n| !process::port_answers(self.cfg.client_port(n)));
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let n = pending[0];
                return Err(KafkaError::StartTimeout {
                    node: n,
                    port: self.cfg.client_port(n),
                    timeout,
                    log: self.cfg.broker_log(n),
                    log_tail: process::tail_file(&self.cfg.broker_log(n), LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Ok if node `n` is alive; otherwise why not (with its log tail).
    fn check_alive(&self, n: u32) -> Result<(), KafkaError> {
        match self.liveness(n) {
            Liveness::Alive => Ok(()),
            Liveness::Exited(status) => Err(KafkaError::BrokerExited {
                node: n,
                status,
                log: self.cfg.broker_log(n),
                log_tail: process::tail_file(&self.cfg.broker_log(n), LOG_TAIL_LINES),
            }),
            Liveness::Gone => Err(KafkaError::NotRunning { node: n }),
        }
    }

    fn liveness(&self, n: u32) -> Liveness {
        let mut nodes = self.lock();
        let node = &mut nodes[idx(n)];
        if let Some(child) = node.child.as_mut() {
            return match child.try_wait() {
                Ok(None) => Liveness::Alive,
                Ok(Some(status)) => {
                    *node = Node::default();
                    Liveness::Exited(status.to_string())
                }
                Err(e) => Liveness::Exited(format!("unknown status ({e})")),
            };
        }
        match node.pid {
            Some(pid) if process::proc_alive(pid, &self.cfg.properties_file(n)) => Liveness::Alive,
            _ => Liveness::Gone,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094` (for the configured base port).
    pub fn bootstrap_servers(&self) -> String {
        self.cfg.bootstrap_servers()
    }

    /// The configuration this cluster runs with (paths of logs, ports).
    pub fn config(&self) -> &KafkaConfig {
        &self.cfg
    }

    /// Block until the cluster can take secretlog's writes: all three brokers registered and
    /// unfenced, every partition of every topic with its full replica set in sync, and a produce
    /// with acks=all to a probe topic (RF=3, min.insync.replicas=2) acknowledged on every
    /// partition. Fails fast if one of our brokers is not running.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        let bootstrap = self.bootstrap_servers();
        // rdkafka's futures need a runtime; run our own on a scoped thread so this works the same
        // from plain code and from inside a caller's tokio runtime.
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| KafkaError::Internal(format!("cannot build tokio runtime: {e}")))?;
                rt.block_on(async {
                    loop {
                        for &n in &NODE_IDS {
                            self.check_alive(n)?;
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        let attempt = left.clamp(Duration::from_secs(1), Duration::from_secs(5));
                        let last_error = match client::probe(&bootstrap, attempt).await {
                            Ok(()) => return Ok(()),
                            Err(e) => e,
                        };
                        if Instant::now() >= deadline {
                            return Err(KafkaError::Timeout {
                                what: "local Kafka readiness".into(),
                                timeout,
                                last_error,
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
            });
            worker.join().unwrap_or_else(|_| Err(KafkaError::Internal("readiness thread panicked".into())))
        })
    }

    /// SIGKILL one broker (a crash, not a clean shutdown) and wait until its process is gone.
    pub fn kill_broker(&self, node: u32) -> Result<(), KafkaError> {
        check_node(node)?;
        let (pid, child) = {
            let mut nodes = self.lock();
            let n = &mut nodes[idx(node)];
            (n.pid.take(), n.child.take())
        };
        let _ = fs::remove_file(self.cfg.pid_file(node));
        match (pid, child) {
            (_, Some(mut child)) => {
                let pid = child.id();
                if let Ok(None) = child.try_wait() {
                    process::signal(pid, libc::SIGKILL).map_err(|e| KafkaError::Signal {
                        node,
                        pid,
                        signal: libc::SIGKILL,
                        source: e,
                    })?;
                }
                child.wait().map_err(|e| KafkaError::Signal { node, pid, signal: libc::SIGKILL, source: e })?;
                Ok(())
            }
            (Some(pid), None) => kill_pid(&self.cfg, node, pid),
            (None, None) => Ok(()),
        }
    }

    /// Start a killed broker again (same mode as the cluster) and return once its client port
    /// answers; wait for it to rejoin the ISR with [`LocalKafka::wait_ready`]. No-op if running.
    pub fn restart_broker(&self, node: u32) -> Result<(), KafkaError> {
        check_node(node)?;
        if matches!(self.liveness(node), Liveness::Alive) {
            return Ok(());
        }
        for port in self.cfg.ports(node) {
            if !process::port_free(port, PORT_RELEASE_WAIT) {
                return Err(KafkaError::PortInUse { node, port });
            }
        }
        self.spawn_node(node)?;
        self.wait_ports(&[node], START_TIMEOUT)
    }

    /// SIGTERM all brokers, wait up to 20 s for a clean shutdown, then SIGKILL; returns when no
    /// broker process of this cluster is left.
    pub fn stop(mut self) -> Result<(), KafkaError> {
        self.stopped = true;
        let mut nodes = std::mem::take(&mut *self.lock());
        terminate(&self.cfg, &mut nodes)
    }

    /// Per node: id, client port, pid if a live broker of this data dir is recorded, and whether
    /// the port answers. Works from any process (reads pid files and `/proc`).
    pub fn status(cfg: &KafkaConfig) -> Vec<BrokerStatus> {
        NODE_IDS
            .iter()
            .map(|&n| BrokerStatus {
                node: n,
                port: cfg.client_port(n),
                pid: live_pid(cfg, n),
                answering: process::port_answers(cfg.client_port(n)),
            })
            .collect()
    }
}

impl Drop for LocalKafka {
    /// Attached brokers must not outlive their owner; detached ones are meant to.
    fn drop(&mut self) {
        if self.stopped || self.mode != Mode::Attached {
            return;
        }
        for &n in &NODE_IDS {
            let _ = self.kill_broker(n);
        }
    }
}

/// `secretlog kafka down` for a detached cluster: stop the brokers named by the pid files under
/// `data_dir` (SIGTERM, up to 20 s grace, then SIGKILL). Nothing running is not an error.
pub fn stop_detached(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let mut nodes: Vec<Node> = NODE_IDS.iter().map(|&n| Node { pid: live_pid(cfg, n), child: None }).collect();
    terminate(cfg, &mut nodes)
}

/// " for node N" when the error concerns one node.
fn for_node(node: &Option<u32>) -> String {
    node.map(|n| format!(" for node {n}")).unwrap_or_default()
}

fn check_node(node: u32) -> Result<(), KafkaError> {
    if NODE_IDS.contains(&node) { Ok(()) } else { Err(KafkaError::UnknownNode { node }) }
}

fn idx(node: u32) -> usize {
    (node - 1) as usize
}
