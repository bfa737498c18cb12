//! `secretlog bench`: load against a running stack, measured on the client side.
//!
//! Scenarios (each prints a table and, with `--out`, appends JSON):
//! * `writes` — acknowledged writes/s and latency at N concurrent clients (each client writes its
//!   own keys, so no CAS conflicts; every write is a Kafka transaction commit before the answer);
//! * `reads` — reads/s and latency at N keep-alive connections against one reader, over a key
//!   set preloaded through the writer;
//! * `lag` — at a fixed write rate, two delays per write, both ending when a reader answers it
//!   (the read carries the write's consistency index, so the reader answers the moment it has
//!   applied the write): from sending the write (`write_to_visible`, the client's view, which
//!   includes the write's own commit), and from the writer's acknowledgement
//!   (`ack_to_visible`: how far the reader trails the leader's commit, replication lag proper);
//! * `snapshot` — snapshot create and reader bootstrap time at N secrets (needs no stack; see
//!   `bench/snapshot.rs`);
//! * `peer etcd` — writes and reads side by side with a three-member etcd cluster the run starts
//!   on loopback, through the same client and closed loop, with ratios secretlog/etcd (see
//!   `bench/etcd.rs`);
//! * `peer openbao` — the same against OpenBao in dev mode (`bao server -dev`, in memory), which
//!   speaks the same API, so both get identical requests (see `bench/openbao.rs`);
//! * `suite` — all of the above that issue #9 asks for in one run, against a stack and an etcd
//!   cluster it starts itself, plus writer failover and reader memory; one table, `results.json`
//!   and `bench.png` (see `bench/suite.rs`).
//!
//! Absolute numbers on a shared 2-core machine are noise; compare runs side by side.
//!
//! Layout (files under `ops/src/bench/`): this one is the command line and its dispatch only.
//! The dependencies go one way, down, and nothing below imports this module:
//! * `suite.rs` runs `bench peer etcd` and `bench snapshot` as they are: it uses `etcd.rs`,
//!   `snapshot.rs` and `load.rs`;
//! * `etcd.rs` and `openbao.rs`, the peers (neither uses the other), use `peer.rs` — what every
//!   peer shares: its options, the pairing with secretlog and the side-by-side table — and
//!   `load.rs`;
//! * `peer.rs` uses `load.rs`: the measuring primitives every scenario and peer is built from;
//! * `snapshot.rs` and `load.rs` use nothing else of `bench`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

mod etcd;
pub(crate) mod load;
mod openbao;
mod peer;
pub(crate) mod snapshot;
pub(crate) mod suite;

pub use load::LoadArgs;
pub use peer::{PeerArgs, PeerRun, PeerSystem};
pub use suite::SuiteArgs;

use load::{
    append_results, measure_lag, measure_reads, measure_reads_at_rate, measure_writes, preload, table,
    wait_for_preloaded,
};

/// The options of `secretlog bench`: those every scenario shares, and the scenario.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// What to measure.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Acknowledged writes at each concurrency.
    Writes {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
    },
    /// Reads at each number of connections, over `keys` preloaded secrets.
    Reads {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        connections: Vec<usize>,
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Skip preloading (the keys already exist from an earlier run).
        #[arg(long)]
        no_preload: bool,
        /// Offered reads per second, in an open loop (each connection sends when its next read
        /// is due, answered or not): latency at a fixed load, measured from the send and from
        /// the time the read was due. Without it, each connection reads as fast as it is
        /// answered (a closed loop: the rate the node can sustain).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
    },
    /// Write-to-visible and acknowledged-to-visible latency at a fixed write rate.
    Lag {
        #[arg(long, default_value_t = 500)]
        rate: u64,
    },
    /// Snapshot create and bootstrap time at each number of secrets (runs in-process; needs no
    /// running stack).
    Snapshot {
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        secrets: Vec<usize>,
        /// Directory for the temporary stores and object store.
        #[arg(long, default_value = "./.secretlog/bench")]
        work_dir: PathBuf,
    },
    /// Writes and reads side by side with a peer system started for the run, each figure with
    /// its ratio secretlog/peer.
    Peer(PeerArgs),
    /// Every scenario of issue #9 in one run against a stack and a three-member etcd cluster it
    /// starts itself (the options above that name a running stack are not used): one table, and
    /// `results.json` and `bench.png` in `--dir`.
    Suite(SuiteArgs),
}

/// Run the chosen scenario.
pub async fn run(bench: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs { load: args, scenario } = bench;
    if let Scenario::Snapshot { secrets, work_dir } = &scenario {
        std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
        let results = snapshot::run(secrets, args.value_bytes, work_dir).await?;
        println!("{}", snapshot::table(&results));
        return append_results(args.out.as_deref(), &results);
    }
    if let Scenario::Suite(suite_args) = &scenario {
        return suite::run(&args, suite_args).await;
    }
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token from {}", args.token_file.display()))?
        .trim()
        .to_string();
    let value = "v".repeat(args.value_bytes);
    let mut results = Vec::new();
    match &scenario {
        Scenario::Writes { clients } => {
            for &c in clients {
                results.push(measure_writes(&args, &token, &value, c).await?);
            }
        }
        Scenario::Reads { connections, keys, no_preload, rate } => {
            if !no_preload {
                preload(&args.writer, &token, *keys, &value).await?;
            }
            wait_for_preloaded(&args.reader, &token, *keys).await?;
            for &c in connections {
                results.push(match rate {
                    Some(rate) => measure_reads_at_rate(&args, &token, *keys, c, *rate).await?,
                    None => measure_reads(&args, &token, *keys, None, c).await?,
                });
            }
        }
        Scenario::Peer(peer) => {
            return match peer.system {
                PeerSystem::Etcd => etcd::run(&args, peer, &token, &value).await,
                PeerSystem::Openbao => openbao::run(&args, peer, &token, &value).await,
            };
        }
        Scenario::Snapshot { .. } | Scenario::Suite(_) => {
            unreachable!("the snapshot and suite scenarios return before the token is read")
        }
        Scenario::Lag { rate } => results.extend(measure_lag(&args, &token, &value, *rate).await?),
    }
    println!("{}", table(&results));
    for r in results.iter().filter(|r| r.get("p99_from_due_ms").is_some()) {
        println!(
            "open loop at {}/s over {} connections: p50 / p99 from when each read was due {:.2} / {:.2} ms",
            r["offered_per_sec"],
            r["concurrency"],
            r["p50_from_due_ms"].as_f64().unwrap_or(0.0),
            r["p99_from_due_ms"].as_f64().unwrap_or(0.0)
        );
    }
    append_results(args.out.as_deref(), &results)
}
