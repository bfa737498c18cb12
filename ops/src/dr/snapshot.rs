//! `secretlog snapshot list|create|verify`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use object_store::ObjectStoreExt;
use secretlog_schemas::archive::{Manifest, check_format, decode_snapshot};
use secretlog_schemas::metadata::SecretMeta;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_state::bootstrap::{install, list_snapshots};
use secretlog_state::materializer::now_ms;
use secretlog_state::store::{Store, StoreConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{StoreArgs, emit, find_snapshot};

/// Snapshot age past which `list` and `status` warn (the SOAR runbook's freshness check).
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCmd {
    /// Every snapshot in the object store, oldest first, with its age and counts.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Ask the replicator for a snapshot now.
    Create {
        /// Replicator URL.
        #[arg(long, default_value = "http://127.0.0.1:8400")]
        replicator: String,
        /// File holding the token.
        #[arg(long, default_value = "./.secretlog/root-token")]
        token_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a snapshot: every file's checksum and row count against the manifest; with
    /// `--deep`, restore it into an isolated scratch store and check counts, that every value
    /// opens with the key, and that each `--require`d path is there.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Snapshot id, or `latest`.
        #[arg(default_value = "latest")]
        id: String,
        #[arg(long)]
        deep: bool,
        /// A secret path that must exist and open (repeatable; implies --deep).
        #[arg(long = "require", value_name = "PATH")]
        required: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::List { store, json } => list(&store, json).await,
        SnapshotCmd::Create { replicator, token_file, json } => create(&replicator, &token_file, json).await,
        SnapshotCmd::Verify { store, id, deep, required, json } => {
            let report = verify(&store, &id, deep || !required.is_empty(), &required).await?;
            emit(json, &report, || print_report(&report))?;
            if report["ok"] != true {
                bail!("snapshot {} failed verification", report["id"].as_str().unwrap_or(&id));
            }
            Ok(())
        }
    }
}

fn age(created_ms: i64) -> Duration {
    Duration::from_millis((now_ms() - created_ms).max(0) as u64)
}

fn human_age(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

async fn list(store: &StoreArgs, as_json: bool) -> anyhow::Result<()> {
    let objects = store.objects()?;
    let all = list_snapshots(&objects).await?;
    let rows: Vec<Value> = all
        .iter()
        .map(|m| {
            let a = age(m.created_ms);
            json!({
                "id": m.id,
                "created_ms": m.created_ms,
                "age_seconds": a.as_secs(),
                "stale": a > STALE_AFTER,
                "secrets": m.secrets,
                "values": m.values,
                "bytes": m.files.iter().map(|f| f.bytes).sum::<u64>(),
                "offsets": m.partitions.iter().map(|(p, s)| (p.to_string(), json!(s.next_offset))).collect::<serde_json::Map<_, _>>(),
                "format_version": m.format_version,
                "producer_version": m.producer_version,
            })
        })
        .collect();
    emit(as_json, &json!({ "object_store": objects.url, "snapshots": rows }), || {
        let mut t = crate::output::table(&["id", "age", "secrets", "values", "MB", "offsets"]);
        for r in &rows {
            let stale = if r["stale"] == true { " (STALE)" } else { "" };
            t.add_row(vec![
                r["id"].as_str().unwrap_or("").to_string(),
                format!("{}{stale}", human_age(Duration::from_secs(r["age_seconds"].as_u64().unwrap_or(0)))),
                r["secrets"].to_string(),
                r["values"].to_string(),
                format!("{:.2}", r["bytes"].as_f64().unwrap_or(0.0) / 1e6),
                r["offsets"]
                    .as_object()
                    .map(|o| o.iter().map(|(p, v)| format!("{p}:{v}")).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
            ]);
        }
        println!("Snapshots in {}", objects.url);
        println!("{t}");
        if rows.is_empty() {
            println!("(none yet: `secretlog snapshot create`, or wait for the replicator's schedule)");
        } else if rows.last().is_some_and(|r| r["stale"] == true) {
            println!("WARNING: the newest snapshot is older than 24 h");
        }
    })
}

async fn create(replicator: &str, token_file: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let token = super::read_token(token_file)?;
    let pb = crate::output::spinner("creating a snapshot");
    let r = super::http(Duration::from_secs(600))?
        .post(format!("{replicator}/v1/sys/secretlog/snapshot"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .with_context(|| format!("asking the replicator at {replicator}"))?;
    pb.finish_and_clear();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the replicator refused: {status} {}", body["errors"]);
    }
    let m = &body["data"];
    emit(as_json, m, || {
        println!(
            "snapshot {} created: {} secrets, {} values",
            m["id"].as_str().unwrap_or(""),
            m["secrets"],
            m["values"]
        );
    })
}

/// Check every file (all of them, not just up to the first bad one); with `deep`, restore into
/// an isolated scratch store and open every value.
pub async fn verify(store: &StoreArgs, id: &str, deep: bool, required: &[String]) -> anyhow::Result<Value> {
    let objects = store.objects()?;
    let m = find_snapshot(&objects, id).await?;
    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = check_format(&m) {
        problems.push(format!("manifest: {e}"));
    }
    let mut files = Vec::new();
    let mut contents = std::collections::BTreeMap::new();
    for f in &m.files {
        let path = objects.path(&format!("snapshots/{}/{}", m.id, f.name));
        let (actual, ok, problem) = match objects.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let actual = hex::encode(Sha256::digest(&bytes));
                match secretlog_schemas::archive::verify_file(f, &bytes) {
                    Ok(()) => {
                        contents.insert(f.name.clone(), bytes.to_vec());
                        (Some(actual), true, None)
                    }
                    Err(e) => (Some(actual), false, Some(e.to_string())),
                }
            }
            Err(e) => (None, false, Some(format!("cannot read {path}: {e}"))),
        };
        if let Some(p) = &problem {
            problems.push(format!("{}: {p}", f.name));
        }
        files.push(json!({
            "name": f.name, "ok": ok, "expected_sha256": f.sha256, "actual_sha256": actual,
            "rows": f.rows, "problem": problem,
        }));
    }
    let mut report = json!({
        "id": m.id,
        "object_store": objects.url,
        "age_seconds": age(m.created_ms).as_secs(),
        "files": files,
    });
    if deep && problems.is_empty() {
        report["deep"] = deep_check(store, &m, &contents, required, &mut problems).await?;
    }
    report["ok"] = json!(problems.is_empty());
    report["problems"] = json!(problems);
    Ok(report)
}

/// Restore into a scratch store; count; open every value; look for the required paths.
async fn deep_check(
    store: &StoreArgs,
    m: &Manifest,
    contents: &std::collections::BTreeMap<String, Vec<u8>>,
    required: &[String],
    problems: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let keyring = store.keyring()?;
    let data = decode_snapshot(contents)?;
    let scratch = tempfile::Builder::new().prefix("verify-").tempdir_in(std::env::temp_dir())?;
    let db = Store::open(&StoreConfig {
        dir: scratch.path().to_path_buf(),
        cache_memory_bytes: 16 << 20,
        cache_disk_bytes: 0,
    })
    .await?;
    install(&db, m, data.clone()).await?;
    let (secrets, values) = (data.secrets.len() as u64, data.values.len() as u64);
    if secrets != m.secrets {
        problems.push(format!("{secrets} secrets restored, manifest says {}", m.secrets));
    }
    if values != m.values {
        problems.push(format!("{values} values restored, manifest says {}", m.values));
    }
    let pb = super::bar(values, "opening values");
    let mut unopened = 0u64;
    for (i, (mount, path, version, sealed)) in data.values.iter().enumerate() {
        let ctx = SealContext { mount, path, version: *version };
        if SealedValue::decode(sealed).and_then(|s| s.open(&keyring, &ctx).map(drop)).is_err() {
            unopened += 1;
            if unopened <= 5 {
                problems.push(format!("{mount}/{path} version {version} does not open with the key"));
            }
        }
        if i % 1024 == 0 {
            pb.set_position(i as u64);
        }
    }
    pb.finish_and_clear();
    let mut found = Vec::new();
    for path in required {
        let meta: Option<SecretMeta> = db.meta("secret", path).await?;
        let status = match meta {
            None => "missing",
            Some(m) => match db.value("secret", path, m.current_version).await? {
                Some(sealed) => {
                    let ctx = SealContext { mount: "secret", path, version: m.current_version };
                    if SealedValue::decode(&sealed).and_then(|s| s.open(&keyring, &ctx).map(drop)).is_ok() {
                        "ok"
                    } else {
                        "does not open"
                    }
                }
                None => "no live value",
            },
        };
        if status != "ok" {
            problems.push(format!("required path {path}: {status}"));
        }
        found.push(json!({ "path": path, "status": status }));
    }
    db.close().await?;
    Ok(json!({ "secrets": secrets, "values": values, "values_unopened": unopened, "required": found }))
}

fn print_report(r: &Value) {
    println!("Snapshot {} in {}", r["id"].as_str().unwrap_or(""), r["object_store"].as_str().unwrap_or(""));
    let mut t = crate::output::table(&["file", "ok", "expected sha256", "actual sha256", "problem"]);
    for f in r["files"].as_array().into_iter().flatten() {
        t.add_row(vec![
            f["name"].as_str().unwrap_or("").to_string(),
            if f["ok"] == true { "yes".into() } else { "NO".into() },
            f["expected_sha256"].as_str().unwrap_or("").chars().take(16).collect(),
            f["actual_sha256"].as_str().unwrap_or("-").chars().take(16).collect(),
            f["problem"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!("{t}");
    if let Some(d) = r.get("deep") {
        println!(
            "Deep check (restored into an isolated store): {} secrets, {} values, {} not opening with the key",
            d["secrets"], d["values"], d["values_unopened"]
        );
        for q in d["required"].as_array().into_iter().flatten() {
            println!("  required {}: {}", q["path"].as_str().unwrap_or(""), q["status"].as_str().unwrap_or(""));
        }
    }
    if r["ok"] == true {
        println!("OK");
    } else {
        for p in r["problems"].as_array().into_iter().flatten() {
            println!("PROBLEM: {}", p.as_str().unwrap_or(""));
        }
    }
}
