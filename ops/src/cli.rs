//! The `secretlog` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::kafka::{KafkaConfig, LocalKafka, ensure_topic};
use crate::stack::{self, UpArgs};

#[derive(Parser)]
#[command(
    name = "secretlog",
    version,
    about = "secretlog: a secret store whose source of truth is a replicated Kafka log"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the local stack keeps its files.
#[derive(Debug, Clone, clap::Args)]
struct DataDir {
    /// Directory of the local stack: Kafka data, node state, logs, keys, `stack.json`.
    #[arg(long, env = "SECRETLOG_DATA_DIR", default_value = "./.secretlog")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole local stack: Kafka, two writers, readers in two regions.
    Up(UpArgs),
    /// Stop a stack started with `up --detach`.
    Down {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Health, role and lag of every node of the local stack.
    Status {
        #[command(flatten)]
        dir: DataDir,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage the local three-broker Kafka cluster.
    Kafka {
        #[command(subcommand)]
        action: KafkaCmd,
    },
    /// Measure a running stack: acknowledged writes, reads, write-to-visible lag.
    Bench(crate::bench::BenchArgs),
    /// A month in an hour: steady mixed load against a running stack while every node's RSS,
    /// file descriptors, disk per directory, p99 and lag are sampled; fails when one grows.
    Soak(crate::soak::SoakArgs),
    /// Snapshots in object storage: list, create, verify (--deep restores into an isolated store).
    Snapshot {
        #[command(subcommand)]
        action: crate::dr::snapshot::SnapshotCmd,
    },
    /// Restore the running cluster to a snapshot or a point in time after it (all, or a prefix).
    Restore(crate::dr::restore::RestoreArgs),
    /// Seed a fresh Kafka cluster from the newest snapshot and the log archive (region loss).
    Reseed(crate::dr::reseed::ReseedArgs),
    /// Make a DR site the primary, once the old primary is gone.
    Promote(crate::dr::promote::PromoteArgs),
    /// Run a DR drill on the local stack: lose the primary, recover, measure RTO and RPO.
    Drill(crate::dr::drill::DrillArgs),
    /// Audit devices of running nodes: reopen their files (after logrotate).
    Audit {
        #[command(subcommand)]
        action: crate::audit::AuditCmd,
    },
    /// Rotate the root key's term: new writes use a new key term; older values are rewrapped.
    Rotate(crate::rotate::RotateArgs),
    /// Retire a key term no value is sealed under any more.
    RetireTerm(crate::rotate::RetireArgs),
    /// Create a root key split into Shamir shares (default 5, threshold 3).
    Init(crate::seal::InitArgs),
    /// Submit a key share to a sealed node (--addr), or reconstruct the key file from enough shares.
    Unseal(crate::seal::UnsealArgs),
    /// Run a writer node.
    Writer(secretlog_writer::WriterConfig),
    /// Run a reader node.
    Reader(secretlog_reader::config::ReaderConfig),
    /// Run the replicator: log archive and snapshots in object storage.
    Replicator(secretlog_replicator::ReplicatorConfig),
}

#[derive(Subcommand)]
enum KafkaCmd {
    /// Start three brokers on 127.0.0.1:19092-19094 (detached) and create the mutation topic.
    Up {
        #[command(flatten)]
        dir: DataDir,
        /// Topic to create.
        #[arg(long, default_value = secretlog_schemas::topic::MUTATIONS_TOPIC)]
        topic: String,
    },
    /// Stop the brokers started by `kafka up`.
    Down {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Which brokers run.
    Status {
        #[command(flatten)]
        dir: DataDir,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the broker jars into the cache (with Maven, once per machine) and print their
    /// directory: the class path `kafka up` runs, and what compose/kafka's image copies.
    Jars,
    /// Create the mutation topic on a running cluster (RF 3, min ISR 2, no unclean election), as
    /// `kafka up` does on its own brokers; a topic that exists is left alone.
    CreateTopic {
        /// Brokers of the cluster.
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:19092")]
        bootstrap_servers: String,
        /// Topic to create.
        #[arg(long, default_value = secretlog_schemas::topic::MUTATIONS_TOPIC)]
        topic: String,
        /// Partitions of a topic created here.
        #[arg(long, default_value_t = secretlog_schemas::topic::DEFAULT_PARTITIONS)]
        partitions: i32,
    },
}

/// Entry point of the `secretlog` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    secretlog_node::telemetry::init_logging();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn until_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Run a started node until SIGTERM or Ctrl-C, then drain it.
async fn until_stopped(node: secretlog_node::node::RunningNode, cancel: CancellationToken) -> anyhow::Result<()> {
    until_signal().await;
    cancel.cancel();
    node.wait().await;
    Ok(())
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Up(args) => stack::up(args).await,
        Cmd::Down { dir } => stack::down(&dir.data_dir),
        Cmd::Status { dir, json } => crate::status::status(&dir.data_dir, json).await,
        Cmd::Bench(args) => crate::bench::run(args).await,
        Cmd::Soak(args) => crate::soak::run(args).await,
        Cmd::Snapshot { action } => crate::dr::snapshot::run(action).await,
        Cmd::Restore(args) => crate::dr::restore::run(args).await,
        Cmd::Reseed(args) => crate::dr::reseed::run(args).await,
        Cmd::Promote(args) => crate::dr::promote::run(args).await,
        Cmd::Drill(args) => crate::dr::drill::run(args).await,
        Cmd::Audit { action } => crate::audit::run(action),
        Cmd::Rotate(args) => crate::rotate::rotate(args).await,
        Cmd::RetireTerm(args) => crate::rotate::retire(args).await,
        Cmd::Init(args) => crate::seal::init(args),
        Cmd::Unseal(args) => crate::seal::unseal(args).await,
        Cmd::Writer(cfg) => {
            let cancel = CancellationToken::new();
            until_stopped(secretlog_writer::node::start(cfg, cancel.clone()).await?, cancel).await
        }
        Cmd::Replicator(cfg) => {
            let cancel = CancellationToken::new();
            until_stopped(secretlog_replicator::node::start(cfg, cancel.clone()).await?, cancel).await
        }
        Cmd::Reader(cfg) => {
            let cancel = CancellationToken::new();
            until_stopped(secretlog_reader::node::start(cfg, cancel.clone()).await?, cancel).await
        }
        Cmd::Kafka { action } => match action {
            KafkaCmd::Up { dir: DataDir { data_dir }, topic } => {
                std::fs::create_dir_all(&data_dir)?;
                let spinner = crate::output::spinner("starting three Kafka brokers");
                let cfg = KafkaConfig::new(&data_dir);
                let k = LocalKafka::start_detached(cfg.clone())?;
                spinner.set_message("waiting for acks=all produce to succeed");
                k.wait_ready(Duration::from_secs(240))?;
                spinner.set_message(format!("creating topic {topic}"));
                ensure_topic(&k.bootstrap_servers(), &topic, secretlog_schemas::topic::DEFAULT_PARTITIONS).await?;
                spinner.finish_and_clear();
                println!("Kafka is up: {}", k.bootstrap_servers());
                println!("export KAFKA_BOOTSTRAP_SERVERS={}", k.bootstrap_servers());
                println!(
                    "Also: SASL_PLAINTEXT {} · SSL {} · SASL_SSL {} (brokers' CA: {}; see docs/operations.md)",
                    cfg.sasl_bootstrap_servers(),
                    cfg.ssl_bootstrap_servers(),
                    cfg.sasl_ssl_bootstrap_servers(),
                    cfg.ssl_ca_file().display()
                );
                Ok(())
            }
            KafkaCmd::Jars => {
                let cfg = KafkaConfig::new(".");
                crate::kafka::ensure_jars(&cfg)?;
                println!("{}", cfg.libs_dir().display());
                Ok(())
            }
            KafkaCmd::CreateTopic { bootstrap_servers, topic, partitions } => {
                ensure_topic(&bootstrap_servers, &topic, partitions).await?;
                println!("topic {topic} is there on {bootstrap_servers}");
                Ok(())
            }
            KafkaCmd::Down { dir: DataDir { data_dir } } => {
                crate::kafka::stop_detached(&KafkaConfig::new(&data_dir))?;
                println!("Kafka stopped.");
                Ok(())
            }
            KafkaCmd::Status { dir: DataDir { data_dir }, json } => {
                let cfg = KafkaConfig::new(&data_dir);
                let st = LocalKafka::status(&cfg);
                if json {
                    let v: Vec<_> = st
                        .iter()
                        .map(|b| serde_json::json!({"node": b.node, "port": b.port, "pid": b.pid, "running": b.pid.is_some()}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let mut t = crate::output::table(&["node", "port", "pid", "state"]);
                    for b in &st {
                        t.add_row(vec![
                            b.node.to_string(),
                            b.port.to_string(),
                            b.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                            if b.pid.is_some() { "running".into() } else { "stopped".to_string() },
                        ]);
                    }
                    println!("{t}");
                }
                Ok(())
            }
        },
    }
}
