//! The harness's containers backend (issue #25): the three KRaft brokers and moto's S3 server as
//! Docker containers, started through `testcontainers` from the generic images that
//! `scripts/compose-local build` makes (`secretlog-local/kafka`, `secretlog-local/moto`; see
//! compose/local/), on a Docker network of this test process. Selected with
//! `SECRETLOG_TEST_BACKEND=containers` (or `auto`, see [`crate::harness::backend`]).
//!
//! The tests and the node processes run on the host, so every broker has two listeners: INTERNAL
//! (`<container>:9092` on the Docker network, between brokers) and EXTERNAL, published on a fixed
//! host port and advertised as `127.0.0.1:<port>`. The ports are `SECRETLOG_IT_CONTAINER_PORT`
//! (27100 unless set) and the next two; moto's servers take ports from base+10 on. A broker keeps
//! its host port and its data across a kill and a start (the container is not removed), so the
//! clients reconnect to it as to a restarted local broker.
//!
//! It keeps its address on the Docker network too: Docker hands a restarted container the lowest
//! free address, so two brokers killed and started in another order swap addresses, and a broker
//! that had connected to one by name goes on talking to the other (same port, the wrong node) and
//! never resolves the name again (seen: ISR stuck at one broker for minutes). So the network
//! has a subnet of ours (Docker pins addresses only on such networks) and a broker's start puts
//! it back on its first address.
//!
//! testcontainers version: 0.15, the last whose client drives the `docker` CLI (which negotiates
//! the engine's API version); later ones speak to the engine through bollard at a fixed API
//! version newer than Debian bookworm's engine (API 1.41) accepts. testcontainers-rs has no
//! reaper container (no "ryuk"), so cleanup is ours: a container is removed (`docker rm -f -v`,
//! testcontainers' drop) when its handle drops; the brokers live in a static, never dropped, so
//! an `atexit` hook removes every container still registered and the network when the test
//! process exits, passed or failed. A process killed outright (SIGKILL) leaves its containers:
//! the next run removes every `secretlog-it-<pid>-*` container and network whose process is gone
//! before it starts anything.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use testcontainers::clients::Cli;

use testcontainers::{Container, GenericImage, RunnableImage};

const KAFKA_IMAGE: (&str, &str) = ("secretlog-local/kafka", "4.1.1");
const MOTO_IMAGE: (&str, &str) = ("secretlog-local/moto", "5.2.1");

/// What names every container and network of the containers backend: `secretlog-it-<pid>`.
const PREFIX: &str = "secretlog-it-";

/// The first host port of the containers backend (`SECRETLOG_IT_CONTAINER_PORT` overrides it).
const DEFAULT_BASE_PORT: u16 = 27100;

/// The brokers' ports inside their containers.
const INTERNAL_PORT: u16 = 9092;
const CONTROLLER_PORT: u16 = 9093;
const EXTERNAL_PORT: u16 = 9094;

/// Every container this process started and has not removed yet; what the exit hook removes.
static LIVE: Mutex<Vec<Container<'static, GenericImage>>> = Mutex::new(Vec::new());

/// This process's containers and network are named after it.
fn run_name() -> String {
    format!("{PREFIX}{}", std::process::id())
}

fn base_port() -> u16 {
    std::env::var("SECRETLOG_IT_CONTAINER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_BASE_PORT)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("running docker {}: {e}", args.join(" ")))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_string()
}

/// Whether a Docker engine answers here and has both images (what `auto` asks).
pub fn available() -> bool {
    let answers = Command::new("docker").args(["info"]).output().is_ok_and(|o| o.status.success());
    answers && missing_images().is_empty()
}

fn missing_images() -> Vec<String> {
    [KAFKA_IMAGE, MOTO_IMAGE]
        .iter()
        .map(|(name, tag)| format!("{name}:{tag}"))
        .filter(|image| !docker(&["image", "inspect", "--format", "{{.Id}}", image]).status.success())
        .collect()
}

/// The testcontainers client, made once: after checking that Docker and the images are here,
/// removing what dead runs left behind and registering the exit hook.
fn cli() -> &'static Cli {
    static CLI: OnceLock<Cli> = OnceLock::new();
    CLI.get_or_init(|| {
        let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
        assert!(
            info.status.success(),
            "SECRETLOG_TEST_BACKEND=containers, but no Docker engine answers (scripts/bootstrap --docker starts one): {}",
            text(&info)
        );
        let missing = missing_images();
        assert!(
            missing.is_empty(),
            "the containers backend needs the local images {missing:?}: build them with `scripts/compose-local build` \
             (no image registry is reachable here, so nothing can be pulled)"
        );
        remove_leftovers();
        // SAFETY: registering a plain `extern "C" fn` that takes no arguments.
        let registered = unsafe { libc::atexit(remove_all_at_exit) };
        assert_eq!(registered, 0, "registering the containers' exit hook");
        Cli::default()
    })
}

/// The pid in a `secretlog-it-<pid>[-...]` name.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Remove the containers and networks of runs whose process is gone (killed before its exit hook).
fn remove_leftovers() {
    let ours = std::process::id();
    let dead = |name: &str| {
        owner_pid(name).is_some_and(|pid| pid != ours && !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let out = docker(&["ps", "-a", "--filter", &format!("name={PREFIX}"), "--format", "{{.ID}} {{.Names}}"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((id, name)) = line.split_once(' ')
            && dead(name)
        {
            eprintln!("[containers] removing {name}, left by a test run that is gone");
            let _ = docker(&["rm", "-f", "-v", id]);
        }
    }
    let out = docker(&["network", "ls", "--filter", &format!("name={PREFIX}"), "--format", "{{.Name}}"]);
    for name in String::from_utf8_lossy(&out.stdout).lines().filter(|n| dead(n)) {
        eprintln!("[containers] removing network {name}, left by a test run that is gone");
        let _ = docker(&["network", "rm", name]);
    }
}

/// The exit hook: remove every container still registered (testcontainers' drop), then the network.
extern "C" fn remove_all_at_exit() {
    // Nothing may unwind out of an `extern "C"` function.
    let _ = std::panic::catch_unwind(|| {
        let left = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
        if !left.is_empty() {
            eprintln!("[containers] removing {} container(s) of this run", left.len());
        }
        // Each in its own thread: a broker takes a moment to remove.
        std::thread::scope(|s| {
            for c in left {
                s.spawn(move || drop(c));
            }
        });
        let network = run_name();
        let listed = docker(&["network", "ls", "--filter", &format!("name={network}"), "--format", "{{.Name}}"]);
        if String::from_utf8_lossy(&listed.stdout).lines().any(|n| n == network) {
            let out = docker(&["network", "rm", &network]);
            if !out.status.success() {
                eprintln!("[containers] removing network {network}: {}", text(&out));
            }
        }
    });
}

/// This run's Docker network, created on first use with a subnet of its own (10.213.N.0/24, the
/// first free one), so a container's address can be pinned (`docker network connect --ip`).
fn network() -> &'static str {
    static NET: OnceLock<String> = OnceLock::new();
    NET.get_or_init(|| {
        cli(); // Docker checked and dead runs' leftovers removed first.
        let name = run_name();
        let start = std::process::id() % 200;
        let mut last = String::new();
        for n in (0..50).map(|i| (start + i) % 250 + 1) {
            let subnet = format!("10.213.{n}.0/24");
            let out = docker(&["network", "create", "--subnet", &subnet, &name]);
            if out.status.success() {
                return name;
            }
            last = text(&out);
        }
        panic!("creating the containers' network {name}: no free 10.213.N.0/24 subnet; last: {last}")
    })
}

/// Start `image` as container `name` on this run's network, `host_port` published to
/// `container_port`; registered for removal at exit. Returns the container's id.
fn run(image: GenericImage, name: &str, host_port: u16, container_port: u16) -> String {
    // Ours, with its subnet, before testcontainers would create one without.
    let image = RunnableImage::from(image)
        .with_network(network())
        .with_container_name(name)
        .with_mapped_port((host_port, container_port));
    let container = cli().run(image);
    let id = container.id().to_string();
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(container);
    id
}

/// Remove one container now (testcontainers' drop: `docker rm -f -v`).
fn remove(id: &str) {
    let container = {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().position(|c| c.id() == id).map(|i| live.swap_remove(i))
    };
    drop(container);
}

/// Whether a port is free on the host, for Docker to publish it (on every address).
fn port_free(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn running(id: &str) -> bool {
    let out = docker(&["inspect", "--format", "{{.State.Running}}", id]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
}

/// A container's address on this run's network.
fn address(id: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", network());
    let out = docker(&["inspect", "--format", &format, id]);
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && !ip.is_empty(), "the address of container {id}: {}", text(&out));
    ip
}

fn logs_tail(id: &str) -> String {
    text(&docker(&["logs", "--tail", "30", id]))
}

/// Three KRaft brokers (broker and controller each) in containers.
pub struct ContainerKafka {
    bootstrap: String,
    /// Container ids of nodes 1, 2, 3.
    ids: Vec<String>,
    /// Their addresses on the network, which a start gives back (see the module's comment).
    addresses: Vec<String>,
}

impl ContainerKafka {
    /// Start the three brokers (not waiting for them: see [`ContainerKafka::wait_ready`]).
    pub fn start() -> ContainerKafka {
        // Docker checked, and what dead runs left (maybe on these very ports) removed, first.
        cli();
        let base = base_port();
        let ports: Vec<u16> = (0..3).map(|i| base + i).collect();
        for &p in &ports {
            assert!(
                port_free(p),
                "host port {p} of the containers backend is taken (SECRETLOG_IT_CONTAINER_PORT moves them)"
            );
        }
        let names: Vec<String> = (1..=3).map(|n| format!("{}-kafka-{n}", run_name())).collect();
        let voters =
            names.iter().enumerate().map(|(i, n)| format!("{}@{n}:{CONTROLLER_PORT}", i + 1)).collect::<Vec<_>>();
        let cluster_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let mut ids = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let node = i + 1;
            let port = ports[i];
            // The settings of the local cluster (secretlog_ops::kafka::config), as the image takes
            // them: KAFKA_FOO_BAR becomes foo.bar (compose/local/kafka/entrypoint.sh).
            let env = [
                ("CLUSTER_ID", cluster_id.clone()),
                ("KAFKA_NODE_ID", node.to_string()),
                ("KAFKA_PROCESS_ROLES", "broker,controller".into()),
                (
                    "KAFKA_LISTENERS",
                    format!("INTERNAL://:{INTERNAL_PORT},CONTROLLER://:{CONTROLLER_PORT},EXTERNAL://:{EXTERNAL_PORT}"),
                ),
                (
                    "KAFKA_ADVERTISED_LISTENERS",
                    format!("INTERNAL://{name}:{INTERNAL_PORT},EXTERNAL://127.0.0.1:{port}"),
                ),
                (
                    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                    "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT".into(),
                ),
                ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER".into()),
                ("KAFKA_INTER_BROKER_LISTENER_NAME", "INTERNAL".into()),
                ("KAFKA_CONTROLLER_QUORUM_VOTERS", voters.join(",")),
                ("KAFKA_LOG_DIRS", "/var/lib/kafka/data".into()),
                ("KAFKA_NUM_PARTITIONS", "6".into()),
                ("KAFKA_DEFAULT_REPLICATION_FACTOR", "3".into()),
                ("KAFKA_MIN_INSYNC_REPLICAS", "2".into()),
                ("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE", "false".into()),
                ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3".into()),
                ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "3".into()),
                ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "2".into()),
                ("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "3".into()),
                ("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "2".into()),
                ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false".into()),
                ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0".into()),
                ("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000".into()),
                ("KAFKA_BROKER_SESSION_TIMEOUT_MS", "3000".into()),
                ("KAFKA_BROKER_HEARTBEAT_INTERVAL_MS", "500".into()),
                ("KAFKA_CONTROLLER_QUORUM_FETCH_TIMEOUT_MS", "2000".into()),
                ("KAFKA_CONTROLLER_QUORUM_ELECTION_TIMEOUT_MS", "1000".into()),
                ("KAFKA_CONTROLLER_QUORUM_ELECTION_BACKOFF_MAX_MS", "1000".into()),
                ("KAFKA_REPLICA_LAG_TIME_MAX_MS", "10000".into()),
                ("KAFKA_NUM_NETWORK_THREADS", "2".into()),
                ("KAFKA_NUM_IO_THREADS", "4".into()),
                ("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "12".into()),
                ("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "12".into()),
                ("KAFKA_HEAP_OPTS", "-Xms512m -Xmx512m".into()),
            ];
            let image = env
                .into_iter()
                .fold(GenericImage::new(KAFKA_IMAGE.0, KAFKA_IMAGE.1), |image, (k, v)| image.with_env_var(k, v));
            ids.push(run(image, name, port, EXTERNAL_PORT));
        }
        let addresses = ids.iter().map(|id| address(id)).collect();
        let bootstrap = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        ContainerKafka { bootstrap, ids, addresses }
    }

    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.clone()
    }

    fn id(&self, node: u32) -> Result<&str, String> {
        self.ids
            .get((node as usize).wrapping_sub(1))
            .map(String::as_str)
            .ok_or_else(|| format!("no broker {node} (nodes are 1, 2, 3)"))
    }

    /// Block until the cluster takes acks=all writes (secretlog_ops::kafka::probe); fails fast
    /// with its log when a broker's container is not running.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        // rdkafka's futures need a runtime: our own, on a thread of its own, so this works from
        // plain code and from inside a test's runtime alike.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("tokio runtime: {e}"))?;
                rt.block_on(async {
                    loop {
                        for (i, id) in self.ids.iter().enumerate() {
                            if !running(id) {
                                return Err(format!(
                                    "broker {} is not running; its log ends:\n{}",
                                    i + 1,
                                    logs_tail(id)
                                ));
                            }
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        let attempt = left.clamp(Duration::from_secs(1), Duration::from_secs(5));
                        let last = match secretlog_ops::kafka::probe(&self.bootstrap, attempt).await {
                            Ok(()) => return Ok(()),
                            Err(e) => e,
                        };
                        if Instant::now() >= deadline {
                            return Err(format!("brokers in containers not ready after {timeout:?}: {last}"));
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("readiness thread panicked".into()))
        })
    }

    /// SIGKILL the broker's container (a crash, as `kill -9` of a local broker) and wait until it
    /// is down. The container stays, with its data and its published port.
    pub fn kill_broker(&self, node: u32) -> Result<(), String> {
        let id = self.id(node)?;
        let out = docker(&["kill", "--signal", "KILL", id]);
        if !out.status.success() && running(id) {
            return Err(format!("docker kill: {}", text(&out)));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while running(id) {
            if Instant::now() > deadline {
                return Err(format!("broker {node}'s container still runs 30 s after SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Start a killed broker's container again (testcontainers' `start`) and wait until it runs;
    /// wait for it to rejoin with [`ContainerKafka::wait_ready`]. No-op if it runs.
    pub fn restart_broker(&self, node: u32) -> Result<(), String> {
        let id = self.id(node)?;
        if running(id) {
            return Ok(());
        }
        // Back on its own address before it starts, not on whichever is free.
        let ip = &self.addresses[node as usize - 1];
        let out = docker(&["network", "disconnect", "--force", network(), id]);
        if !out.status.success() {
            return Err(format!("docker network disconnect: {}", text(&out)));
        }
        let out = docker(&["network", "connect", "--ip", ip, network(), id]);
        if !out.status.success() {
            return Err(format!("docker network connect --ip {ip}: {}", text(&out)));
        }
        {
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            let container = live.iter().find(|c| c.id() == id).ok_or_else(|| format!("broker {node} was removed"))?;
            container.start();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !running(id) {
            if Instant::now() > deadline {
                return Err(format!("broker {node}'s container not running 60 s after start:\n{}", logs_tail(id)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// moto's S3 server in a container, removed when dropped.
pub struct MotoContainer {
    id: String,
    /// `http://127.0.0.1:<published port>`.
    pub endpoint: String,
}

impl MotoContainer {
    /// Start one (not waiting for it to answer).
    pub fn start() -> MotoContainer {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let base = base_port() + 10;
        let port = (0..90)
            .map(|_| base + NEXT.fetch_add(1, Ordering::Relaxed) % 90)
            .find(|&p| port_free(p))
            .unwrap_or_else(|| panic!("no free host port in {base}-{} for moto", base + 89));
        let name = format!("{}-s3-{port}", run_name());
        let id = run(GenericImage::new(MOTO_IMAGE.0, MOTO_IMAGE.1), &name, port, 5000);
        MotoContainer { id, endpoint: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for MotoContainer {
    fn drop(&mut self) {
        remove(&self.id);
    }
}
