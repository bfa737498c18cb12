//! `secretlog bench snapshot`: how long a snapshot of N secrets takes to create, and how long a
//! new reader takes to bootstrap from it — the replicator's and the reader's own code paths
//! ([`secretlog_replicator::snapshot::create`], [`secretlog_state::bootstrap::bootstrap_if_empty`]),
//! run in this process against a real SlateDB store and a real object store.
//!
//! The source state is built by applying `Put` events through the materializer's pure `apply`
//! (values sealed with a real key), written straight into SlateDB: preloading a million secrets
//! through Kafka transactions would take most of an hour on a small machine and measure the
//! writer, not snapshots.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use secretlog_schemas::keyring::{Keyring, RootKey};
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::{Event, Operation};
use secretlog_state::model::apply;
use secretlog_state::objects::Objects;
use secretlog_state::store::{ApplyBatch, PartitionState, Store, StoreConfig, keys};
use serde_json::{Value, json};

const TOPIC: &str = "bench.snapshot";
const BATCH: usize = 10_000;

pub(super) fn store_config(dir: &Path) -> StoreConfig {
    StoreConfig { dir: dir.to_path_buf(), cache_memory_bytes: 64 << 20, cache_disk_bytes: 0 }
}

/// Fill `store` with `secrets` secrets of one version each, the `i`-th at `path_of(i)`, sealed under
/// `keyring` as the writer seals them. With `at_offsets`, partition 0 is recorded as applied up to
/// offset `secrets` (a snapshot's source needs a log position); without, no log position is
/// recorded, so a reader started on the store consumes its topic from the start, on top of it.
pub(super) async fn fill(
    store: &Store,
    keyring: &Keyring,
    secrets: usize,
    value_bytes: usize,
    path_of: &(dyn Fn(usize) -> String + Sync),
    at_offsets: bool,
) -> anyhow::Result<()> {
    let pb = crate::dr::bar(secrets as u64, "building source state");
    let plaintext = serde_json::to_vec(&json!({ "v": "x".repeat(value_bytes) }))?;
    let mut next = 0usize;
    while next < secrets {
        let mut batch = ApplyBatch::default();
        let end = (next + BATCH).min(secrets);
        for i in next..end {
            let path = path_of(i);
            let ctx = SealContext { mount: "secret", path: &path, version: 1 };
            let sealed = SealedValue::seal(keyring, &ctx, &plaintext)?.encode();
            let event = Event {
                event_id: rand::random(),
                timestamp_ms: secretlog_state::materializer::now_ms(),
                writer_epoch: 1,
                revision: None,
                mount: "secret".into(),
                path: path.clone(),
                op: Operation::Put { version: 1, sealed },
            };
            let effect = apply(None, &event)?;
            for (v, sealed) in effect.put_values {
                batch.writes.insert(keys::value("secret", &path, v), Some(sealed));
            }
            batch.writes.insert(keys::meta("secret", &path), effect.meta.map(|m| serde_json::to_vec(&m)).transpose()?);
        }
        if at_offsets {
            batch.partitions.insert(0, PartitionState { next_offset: end as i64, max_epoch: 1 });
        }
        store.commit(batch).await?;
        pb.set_position(end as u64);
        next = end;
    }
    pb.finish_and_clear();
    Ok(())
}

/// Bytes of every file under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Bytes of the files under `dir` by SlateDB directory: `wal` (write-ahead log SSTs, garbage once
/// flushed into the tree and past the collector's minimum age) apart from everything else.
fn store_bytes_by_kind(dir: &Path) -> (u64, u64) {
    fn walk(dir: &Path, in_wal: bool, out: &mut (u64, u64)) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let wal = in_wal || e.file_name() == "wal";
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), wal, out),
                Ok(m) if wal => out.0 += m.len(),
                Ok(m) => out.1 += m.len(),
                Err(_) => {}
            }
        }
    }
    let mut out = (0, 0);
    walk(dir, false, &mut out);
    out
}

/// Keys plus values in `store`, by what they are: secret metadata (`s/`), sealed values (`v/`),
/// key revisions (`c/rev/`), the rest of the control state (`c/`), partition positions (`o/`).
async fn logical_bytes(store: &Store) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for (name, prefix) in
        [("metadata", &b"s/"[..]), ("values", b"v/"), ("revisions", b"c/rev/"), ("control", b"c/"), ("offsets", b"o/")]
    {
        let rows = store.scan(prefix).await?;
        let mut bytes: u64 = rows.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        if name == "control" {
            // `c/rev/` is counted on its own.
            let revs: u64 =
                rows.iter().filter(|(k, _)| k.starts_with(b"c/rev/")).map(|(k, v)| (k.len() + v.len()) as u64).sum();
            bytes -= revs;
        }
        out.insert(name.into(), json!(bytes));
    }
    Ok(Value::Object(out))
}

/// Run the scenario for each size; one JSON result per size.
pub(super) async fn run(sizes: &[usize], value_bytes: usize, work: &Path) -> anyhow::Result<Vec<Value>> {
    let keyring = Keyring::from_root(&RootKey::generate());
    let mut out = Vec::new();
    for &n in sizes {
        let dir = tempfile::Builder::new().prefix(&format!("bench-snapshot-{n}-")).tempdir_in(work)?;
        let source = Store::open(&store_config(&dir.path().join("source"))).await?;
        let path = |i: usize| format!("bench/{:02}/k{i:08}", i % 97);
        fill(&source, &keyring, n, value_bytes, &path, true).await.context("building the source state")?;
        let objects_dir = dir.path().join("objects");
        let objects = Objects::open(&format!("file://{}", objects_dir.display()))?;

        let started = Instant::now();
        let manifest = secretlog_replicator::snapshot::create(&source, &objects, "bench", TOPIC).await?;
        let create_secs = started.elapsed().as_secs_f64();
        let snapshot_bytes = dir_bytes(&objects_dir.join("snapshots"));

        let target = Store::open(&store_config(&dir.path().join("target"))).await?;
        let started = Instant::now();
        let id = secretlog_state::bootstrap::bootstrap_if_empty(&target, &objects, "bench", TOPIC).await?;
        let bootstrap_secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(id.as_deref() == Some(manifest.id.as_str()), "bootstrap did not pick the new snapshot");
        let (a, b) = (source.digest().await?, target.digest().await?);
        anyhow::ensure!(a == b, "bootstrapped state differs from its source ({} vs {})", a.0, b.0);
        let logical = logical_bytes(&source).await?;
        source.close().await?;
        target.close().await?;
        // What the live data costs on disk: SlateDB's files (WAL and SSTs, as the store left them
        // on close) over the secrets they hold, and where the logical bytes go.
        let (wal_bytes, tree_bytes) = store_bytes_by_kind(&dir.path().join("source"));
        let store_bytes = wal_bytes + tree_bytes;
        let r = json!({
            "scenario": "snapshot",
            "secrets": n,
            "values": manifest.values,
            "value_bytes": value_bytes,
            "snapshot_bytes": snapshot_bytes,
            "store_bytes": store_bytes,
            "store_bytes_per_secret": store_bytes as f64 / n.max(1) as f64,
            "store_wal_bytes": wal_bytes,
            "store_tree_bytes": tree_bytes,
            "store_tree_bytes_per_secret": tree_bytes as f64 / n.max(1) as f64,
            "logical_bytes": logical,
            "create_secs": create_secs,
            "bootstrap_secs": bootstrap_secs,
            "create_secrets_per_sec": n as f64 / create_secs,
            "bootstrap_secrets_per_sec": n as f64 / bootstrap_secs,
        });
        tracing::info!(result = %r, "snapshot benchmark");
        out.push(r);
    }
    Ok(out)
}

/// The results as a table.
pub(super) fn table(results: &[Value]) -> comfy_table::Table {
    let mut t = crate::output::table(&[
        "secrets",
        "snapshot MB",
        "store B/secret",
        "create s",
        "bootstrap s",
        "create/s",
        "bootstrap/s",
    ]);
    for r in results {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        t.add_row(vec![
            r["secrets"].to_string(),
            format!("{:.1}", f("snapshot_bytes") / 1e6),
            format!("{:.0}", f("store_bytes_per_secret")),
            format!("{:.2}", f("create_secs")),
            format!("{:.2}", f("bootstrap_secs")),
            format!("{:.0}", f("create_secrets_per_sec")),
            format!("{:.0}", f("bootstrap_secrets_per_sec")),
        ]);
    }
    t
}
