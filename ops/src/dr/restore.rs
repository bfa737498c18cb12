//! `secretlog restore`: put the running cluster back to a snapshot, or to any point in time
//! after one (snapshot + log archive), for every secret or only under a path prefix.
//!
//! 1. rebuild the target state in a scratch store ([`super::rebuild`]);
//! 2. take a safety snapshot of the current state (through the replicator);
//! 3. compare, and send every secret that differs to the leader writer's restore endpoint, which
//!    appends it to the log like any write — so every reader converges, and the restore itself
//!    can be undone by restoring the safety snapshot.
//!
//! Secrets outside `--prefix` are never sent, so they are left exactly as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use secretlog_reader::bootstrap::fetch_snapshot;
use secretlog_schemas::ConsistencyToken;
use secretlog_schemas::archive::SnapshotData;
use secretlog_writer::restore::{RestoreRequest, RestoredSecret};
use serde_json::{Value, json};

use super::rebuild::{PointArgs, under};
use super::{StoreArgs, emit, find_snapshot};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub point: PointArgs,
    /// Restore only secrets under this path (selective restore); others are left untouched.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Leader writer URL (a standby forwards to the leader).
    #[arg(long, default_value = "http://127.0.0.1:8200")]
    pub writer: String,
    /// Replicator URL, for the safety snapshot.
    #[arg(long, default_value = "http://127.0.0.1:8400")]
    pub replicator: String,
    /// File holding the token.
    #[arg(long, default_value = "./.secretlog/root-token")]
    pub token_file: PathBuf,
    /// Show what would change (against the newest snapshot); change nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not take a safety snapshot first (not recommended).
    #[arg(long)]
    pub skip_safety_snapshot: bool,
    #[arg(long)]
    pub json: bool,
}

/// One secret's state: metadata JSON and sealed values by version.
type SecretState = (String, BTreeMap<u64, Vec<u8>>);

/// Secrets of `data` under `prefix`, by path.
pub fn by_path(data: &SnapshotData, prefix: &str) -> BTreeMap<String, SecretState> {
    let mut out: BTreeMap<String, SecretState> = BTreeMap::new();
    for (_, path, meta) in data.secrets.iter().filter(|s| under(&s.1, prefix)) {
        out.insert(path.clone(), (meta.clone(), BTreeMap::new()));
    }
    for (_, path, v, sealed) in &data.values {
        if let Some(s) = out.get_mut(path) {
            s.1.insert(*v, sealed.clone());
        }
    }
    out
}

/// What must be sent to turn `current` into `target`: changed or missing secrets with their
/// state, secrets to remove with none. Equal secrets are left out.
pub fn diff(target: &BTreeMap<String, SecretState>, current: &BTreeMap<String, SecretState>) -> Vec<RestoredSecret> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (path, state) in target {
        if current.get(path) == Some(state) {
            continue;
        }
        out.push(RestoredSecret {
            path: path.clone(),
            metadata: serde_json::from_str(&state.0).ok(),
            values: state.1.iter().map(|(v, s)| (*v, b64.encode(s))).collect(),
        });
    }
    for path in current.keys().filter(|p| !target.contains_key(*p)) {
        out.push(RestoredSecret { path: path.clone(), metadata: None, values: BTreeMap::new() });
    }
    out
}

/// Send `secrets` to the writer's restore endpoint in chunks; returns the merged commit position.
pub async fn send(writer: &str, token: &str, secrets: Vec<RestoredSecret>) -> anyhow::Result<ConsistencyToken> {
    let http = super::http(Duration::from_secs(120))?;
    let pb = super::bar(secrets.len() as u64, "restoring");
    let mut index = ConsistencyToken::default();
    let mut chunk: Vec<RestoredSecret> = Vec::new();
    let mut bytes = 0usize;
    let mut rest = secrets.into_iter().peekable();
    while rest.peek().is_some() || !chunk.is_empty() {
        if let Some(s) = rest.next_if(|_| chunk.len() < 200 && bytes < 256 * 1024) {
            bytes += s.values.values().map(String::len).sum::<usize>() + 512;
            chunk.push(s);
            continue;
        }
        let n = chunk.len() as u64;
        let body = RestoreRequest { secrets: std::mem::take(&mut chunk) };
        bytes = 0;
        let r = http
            .post(format!("{writer}/v1/sys/secretlog/restore"))
            .header("X-Vault-Token", token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("sending the restore to the writer at {writer}"))?;
        let status = r.status();
        let idx = r.headers().get("x-secretlog-index").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = r.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "the writer refused the restore: {status} {text} (secrets before this chunk were restored; running the same restore again is safe)"
            );
        }
        if let Some(t) = idx.and_then(|i| i.parse::<ConsistencyToken>().ok()) {
            index.merge(&t);
        }
        pb.inc(n);
    }
    pb.finish_and_clear();
    Ok(index)
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let objects = args.store.objects()?;
    let keyring = args.store.keyring()?;
    let rebuilt = args.point.rebuild(&objects, &keyring).await?;
    let m = rebuilt.snapshot.clone();
    let target = by_path(&rebuilt.export(&args.prefix).await?, &args.prefix);
    let token = super::read_token(&args.token_file)?;

    // The current state: a safety snapshot taken now (or, for a dry run, the newest one).
    let (safety, current_manifest) = if args.dry_run || args.skip_safety_snapshot {
        (None, find_snapshot(&objects, "latest").await?)
    } else {
        let pb = crate::output::spinner("taking a safety snapshot of the current state");
        let r = super::http(Duration::from_secs(600))?
            .post(format!("{}/v1/sys/secretlog/snapshot", args.replicator))
            .header("X-Vault-Token", &token)
            .send()
            .await
            .with_context(|| format!("safety snapshot: asking the replicator at {}", args.replicator))?;
        pb.finish_and_clear();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("safety snapshot refused ({status} {}); nothing was restored", body["errors"]);
        }
        let id = body["data"]["id"].as_str().unwrap_or_default().to_string();
        let sm = find_snapshot(&objects, &id).await?;
        (Some(id), sm)
    };
    let current = by_path(&fetch_snapshot(&objects, &current_manifest).await?, &args.prefix);
    let changes = diff(&target, &current);
    let removed = changes.iter().filter(|c| c.metadata.is_none()).count();
    let restored = changes.len() - removed;
    let mut report = json!({
        "snapshot": m.id,
        "bound": format!("{:?}", args.point.bound()?),
        "prefix": args.prefix,
        "replayed_records": rebuilt.replayed.values().sum::<u64>(),
        "positions": rebuilt.positions.iter().map(|(p, s)| (p.to_string(), json!(s.next_offset))).collect::<serde_json::Map<_, _>>(),
        "secrets_in_target": target.len(),
        "restored": restored,
        "removed": removed,
        "unchanged": target.len().saturating_sub(restored),
        "safety_snapshot": safety,
        "compared_with": current_manifest.id,
        "dry_run": args.dry_run,
    });
    if !args.dry_run {
        let index = send(&args.writer, &token, changes).await?;
        report["index"] = json!(index.to_string());
    }
    emit(args.json, &report, || {
        let mut t = crate::output::table(&["", ""]);
        for k in [
            "snapshot",
            "bound",
            "prefix",
            "replayed_records",
            "secrets_in_target",
            "restored",
            "removed",
            "unchanged",
            "safety_snapshot",
            "index",
        ] {
            let v = &report[k];
            t.add_row(vec![k.to_string(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())]);
        }
        println!("{t}");
        if args.dry_run {
            println!("Dry run: nothing was changed (compared with snapshot {}).", current_manifest.id);
        } else if let Some(s) = &safety {
            println!("To undo: secretlog restore --snapshot {s}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(secrets: &[(&str, &str, &[(u64, u8)])]) -> SnapshotData {
        let mut d = SnapshotData::default();
        for (path, meta, values) in secrets {
            d.secrets.push(("secret".into(), path.to_string(), meta.to_string()));
            for (v, b) in values.iter() {
                d.values.push(("secret".into(), path.to_string(), *v, vec![*b]));
            }
        }
        d
    }

    #[test]
    fn the_diff_sends_changed_and_missing_secrets_and_removes_extra_ones_under_the_prefix() {
        let target = data(&[("a/x", "{}", &[(1, 1)]), ("a/y", "{}", &[(1, 1)]), ("b/z", "{}", &[(1, 1)])]);
        let current =
            data(&[("a/x", "{}", &[(1, 1)]), ("a/y", "{}", &[(1, 2)]), ("a/new", "{}", &[]), ("b/q", "{}", &[])]);
        let changes = diff(&by_path(&target, "a"), &by_path(&current, "a"));
        let paths: Vec<(&str, bool)> = changes.iter().map(|c| (c.path.as_str(), c.metadata.is_some())).collect();
        assert_eq!(paths, vec![("a/y", true), ("a/new", false)], "b/ is outside the prefix; a/x is unchanged");
        let all = diff(&by_path(&target, ""), &by_path(&current, ""));
        assert_eq!(all.len(), 4, "{all:?}");
    }
}
