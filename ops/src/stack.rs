//! `secretlog up`: the whole stack on one machine — Kafka (reused or started), the mutation
//! topic, two writers, two readers in two regions — supervised until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use secretlog_schemas::RootKey;
use secretlog_schemas::topic::{DEFAULT_PARTITIONS, MUTATIONS_TOPIC};
use serde::Serialize;

use crate::kafka::{KafkaConfig, LocalKafka, ensure_topic};
use crate::process;

/// `secretlog up` options.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Directory for everything the stack writes: Kafka data, node state, logs, keys.
    #[arg(long, env = "SECRETLOG_DATA_DIR", default_value = "./.secretlog")]
    pub data_dir: PathBuf,
    /// Port of the first writer; the second listens on the next port.
    #[arg(long, default_value_t = 8200)]
    pub writer_port: u16,
    /// Port of the first reader; the others listen on the following ports.
    #[arg(long, default_value_t = 8300)]
    pub reader_port: u16,
    /// Port of the replicator.
    #[arg(long, default_value_t = 8400)]
    pub replicator_port: u16,
    /// First port of the local Kafka cluster, when the stack starts one: brokers on this port and
    /// the next two, controllers 10 above, SASL_PLAINTEXT 20, SSL 30 and SASL_SSL 40 above.
    #[arg(long, default_value_t = crate::kafka::DEFAULT_BASE_PORT)]
    pub kafka_port: u16,
    /// Regions to start one reader each in.
    #[arg(long, value_delimiter = ',', default_value = "east,west")]
    pub regions: Vec<String>,
    /// Mutation topic.
    #[arg(long, env = "SECRETLOG_TOPIC", default_value = MUTATIONS_TOPIC)]
    pub topic: String,
    /// Partitions of the mutation topic when the stack creates it (an existing topic keeps its
    /// own). One by default: each partition a batch of writes touches costs the brokers a produce
    /// request and every node a fetch (docs/benchmarks.md, "One partition"); more partitions spread
    /// the partition leaders over the brokers and make a halt (per partition) smaller.
    #[arg(long, env = "SECRETLOG_PARTITIONS", default_value_t = DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(i32).range(1..=64))]
    pub partitions: i32,
    /// Start the stack, print where it is, and exit, leaving it running (Kafka detached).
    /// Stop it later with `secretlog down`.
    #[arg(long)]
    pub detach: bool,
}

/// `DIR/stack.json`: where everything is, for scripts and for the other commands.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StackFile {
    pub kafka_bootstrap: String,
    pub topic: String,
    pub writers: Vec<NodeEntry>,
    pub readers: Vec<NodeEntry>,
    pub replicator: Option<NodeEntry>,
    pub root_token_file: PathBuf,
    pub root_key_file: PathBuf,
    pub object_store: Option<String>,
    /// Whether `secretlog up` started Kafka itself (and will stop it).
    pub kafka_started_by_stack: bool,
}

/// One node of the stack.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub url: String,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub log: PathBuf,
}

/// A node process the stack supervises.
struct NodeProc {
    entry: NodeEntry,
    child: Child,
    expect: u16,
}

/// Create the development root key file (mode 0600) once.
pub fn ensure_root_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        RootKey::from_file(path).with_context(|| format!("existing root key {}", path.display()))?;
        return Ok(());
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = RootKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(key.to_hex().as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub(crate) fn spawn_node(
    dir: &Path,
    name: &str,
    args: &[String],
    root_key: &Path,
    bootstrap: &str,
    attached: bool,
) -> anyhow::Result<(Child, PathBuf)> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let exe = std::env::current_exe().context("locating the secretlog binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("SECRETLOG_ROOT_KEY_FILE", root_key)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env_remove("SECRETLOG_ROOT_KEY")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.envs(audit_env(&logs, name, |var| std::env::var_os(var).is_some()));
    let child = if attached { process::spawn_attached(cmd) } else { process::spawn_detached(cmd) }
        .with_context(|| format!("starting {name}"))?;
    Ok((child, log_path))
}

/// Bytes at which `secretlog up` rotates each node's audit file, and rotated files kept: a local
/// stack's audit trail stays under 1 GiB a node (under read load an audited node writes some
/// 40 MB a second, and an unrotated file once filled this machine's disk).
const UP_AUDIT_MAX_BYTES: u64 = 256 << 20;
const UP_AUDIT_KEEP: u32 = 3;

/// The audit settings of a node `secretlog up` starts: every node audits to a file next to its log,
/// rotated by size — each unless the caller's environment (`is_set`) says otherwise.
fn audit_env(logs: &Path, name: &str, is_set: impl Fn(&str) -> bool) -> Vec<(&'static str, std::ffi::OsString)> {
    let defaults = [
        ("SECRETLOG_AUDIT_FILE", logs.join(format!("audit-{name}.log")).into_os_string()),
        ("SECRETLOG_AUDIT_MAX_BYTES", UP_AUDIT_MAX_BYTES.to_string().into()),
        ("SECRETLOG_AUDIT_KEEP", UP_AUDIT_KEEP.to_string().into()),
    ];
    defaults.into_iter().filter(|(var, _)| !is_set(var)).collect()
}

/// Poll a node's health until it answers `expect`, or fail naming the node and its log.
async fn wait_healthy(client: &reqwest::Client, node: &mut NodeProc, deadline: Instant) -> anyhow::Result<()> {
    let url = format!("{}/v1/sys/health", node.entry.url);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(status) = node.child.try_wait()? {
            bail!(
                "{} exited ({status}) during start; last lines of {}:\n{}",
                node.entry.name,
                node.entry.log.display(),
                process::tail_file(&node.entry.log, 20)
            );
        }
        match client.get(&url).send().await {
            Ok(r) if r.status().as_u16() == node.expect => return Ok(()),
            Ok(r) => {
                let code = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                last = format!("health {code}: {}", body["secretlog"]["problem"].as_str().unwrap_or(""));
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{} not healthy in time ({last}); see {}", node.entry.name, node.entry.log.display())
}

/// Run the stack until a signal arrives (or, with `--detach`, until it is up).
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let spinner = crate::output::spinner("starting Kafka");
    let (bootstrap, kafka) = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => (b, None),
        _ => {
            let mut cfg = KafkaConfig::new(&dir);
            cfg.base_port = args.kafka_port;
            let running = LocalKafka::status(&cfg).iter().all(|b| b.pid.is_some());
            let k = if running || args.detach {
                LocalKafka::start_detached(cfg)?
            } else {
                LocalKafka::start_attached(cfg)?
            };
            spinner.set_message("waiting for Kafka to accept acks=all writes");
            k.wait_ready(Duration::from_secs(240))?;
            let started = !running && !args.detach;
            (k.bootstrap_servers(), Some((k, started)))
        }
    };
    spinner.set_message(format!("creating topic {}", args.topic));
    ensure_topic(&bootstrap, &args.topic, args.partitions).await?;
    let root_key = dir.join("root.key");
    ensure_root_key(&root_key)?;
    let token_file = dir.join("root-token");
    let attached = !args.detach;
    let objects_url = format!("file://{}", dir.join("objects").display());

    let client = secretlog_node::api::tls::client_builder(None)?.timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut nodes: Vec<NodeProc> = Vec::new();
    let writer_urls: Vec<String> = (0..2).map(|i| format!("http://127.0.0.1:{}", args.writer_port + i)).collect();
    for i in 0..2u16 {
        let name = format!("writer-{}", i + 1);
        let port = args.writer_port + i;
        let a = vec![
            "writer".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.join(&name).display().to_string(),
            "--root-token-file".into(),
            token_file.display().to_string(),
            "--topic".into(),
            args.topic.clone(),
        ];
        spinner.set_message(format!("starting {name}"));
        let (child, log) = spawn_node(&dir, &name, &a, &root_key, &bootstrap, attached)?;
        let url = format!("http://127.0.0.1:{port}");
        let mut node = NodeProc {
            entry: NodeEntry { name, url, pid: child.id(), region: None, log },
            child,
            expect: if i == 0 { 200 } else { 429 },
        };
        wait_healthy(&client, &mut node, deadline).await?;
        nodes.push(node);
    }
    for (i, region) in args.regions.iter().enumerate() {
        let name = format!("reader-{region}");
        let port = args.reader_port + i as u16;
        let a = vec![
            "reader".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--region".into(),
            region.clone(),
            "--data-dir".into(),
            dir.join(&name).display().to_string(),
            "--writer-url".into(),
            writer_urls.join(","),
            "--topic".into(),
            args.topic.clone(),
        ];
        spinner.set_message(format!("starting {name}"));
        let (child, log) = spawn_node(&dir, &name, &a, &root_key, &bootstrap, attached)?;
        let mut node = NodeProc {
            entry: NodeEntry {
                name,
                url: format!("http://127.0.0.1:{port}"),
                pid: child.id(),
                region: Some(region.clone()),
                log,
            },
            child,
            expect: 473,
        };
        wait_healthy(&client, &mut node, deadline).await?;
        nodes.push(node);
    }
    spinner.set_message("starting the replicator");
    let rport = args.replicator_port;
    let a = vec![
        "replicator".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{rport}"),
        "--data-dir".into(),
        dir.join("replicator").display().to_string(),
        "--object-store".into(),
        objects_url.clone(),
        "--topic".into(),
        args.topic.clone(),
    ];
    let (child, log) = spawn_node(&dir, "replicator", &a, &root_key, &bootstrap, attached)?;
    let mut rep = NodeProc {
        entry: NodeEntry {
            name: "replicator".into(),
            url: format!("http://127.0.0.1:{rport}"),
            pid: child.id(),
            region: None,
            log,
        },
        child,
        expect: 200,
    };
    wait_healthy(&client, &mut rep, deadline).await?;
    let replicator = rep.entry.clone();
    nodes.push(rep);
    spinner.finish_and_clear();

    let stack = StackFile {
        kafka_bootstrap: bootstrap.clone(),
        topic: args.topic.clone(),
        writers: nodes.iter().filter(|n| n.entry.name.starts_with("writer")).map(|n| n.entry.clone()).collect(),
        readers: nodes.iter().filter(|n| n.entry.region.is_some()).map(|n| n.entry.clone()).collect(),
        root_token_file: token_file.clone(),
        root_key_file: root_key.clone(),
        replicator: Some(replicator),
        object_store: Some(objects_url.clone()),
        kafka_started_by_stack: kafka.as_ref().is_some_and(|(_, started)| *started),
    };
    let stack_path = dir.join("stack.json");
    std::fs::write(&stack_path, serde_json::to_vec_pretty(&stack)?)?;
    crate::output::print_stack(&stack, &stack_path);
    if args.detach {
        println!("detached: stop it with `secretlog down --data-dir {}`", dir.display());
        return Ok(());
    }
    println!("Ctrl-C stops everything.");
    supervise(&mut nodes).await;
    println!("stopping...");
    for node in nodes.iter_mut().rev() {
        process::terminate(&mut node.child, Duration::from_secs(20));
    }
    if let Some((k, true)) = kafka {
        k.stop()?;
    }
    let _ = std::fs::remove_file(&stack_path);
    println!("stopped.");
    Ok(())
}

/// Wait for Ctrl-C or SIGTERM, reporting any node that exits meanwhile.
async fn supervise(nodes: &mut [NodeProc]) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let mut reported = vec![false; nodes.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                for (i, n) in nodes.iter_mut().enumerate() {
                    if !reported[i] && let Ok(Some(status)) = n.child.try_wait() {
                        reported[i] = true;
                        eprintln!("!! {} exited ({status}); see {}", n.entry.name, n.entry.log.display());
                    }
                }
            }
        }
    }
}

/// `secretlog down`: stop a detached stack started with `secretlog up --detach`.
pub fn down(data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.canonicalize().with_context(|| format!("{}", data_dir.display()))?;
    let stack_path = dir.join("stack.json");
    if let Ok(bytes) = std::fs::read(&stack_path) {
        let stack: StackFile = serde_json::from_slice(&bytes)?;
        for n in stack.replicator.iter().chain(stack.readers.iter()).chain(stack.writers.iter()).rev() {
            process::terminate_pid(n.pid, &n.name, Duration::from_secs(20));
        }
        let _ = std::fs::remove_file(&stack_path);
    }
    crate::kafka::stop_detached(&KafkaConfig::new(&dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_audits_to_a_rotated_file_unless_the_environment_says_otherwise() {
        let logs = Path::new("/data/logs");
        let env = audit_env(logs, "reader-east", |_| false);
        let get = |var: &str| env.iter().find(|(v, _)| *v == var).map(|(_, val)| val.to_string_lossy().into_owned());
        assert_eq!(get("SECRETLOG_AUDIT_FILE").as_deref(), Some("/data/logs/audit-reader-east.log"));
        assert_eq!(get("SECRETLOG_AUDIT_MAX_BYTES").as_deref(), Some("268435456"));
        assert_eq!(get("SECRETLOG_AUDIT_KEEP").as_deref(), Some("3"));

        // A caller's own setting is left to the node (it inherits the environment).
        let env = audit_env(logs, "writer-1", |var| var == "SECRETLOG_AUDIT_MAX_BYTES");
        let vars: Vec<&str> = env.iter().map(|(v, _)| *v).collect();
        assert_eq!(vars, ["SECRETLOG_AUDIT_FILE", "SECRETLOG_AUDIT_KEEP"]);
    }
}
