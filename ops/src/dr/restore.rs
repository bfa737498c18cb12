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
//!
//! Secrets are keyed by their mount's storage id as well as their path, so every mount is
//! restored, not only the default one. A full restore also puts the mount table back: a mount
//! disabled since the restore point is mounted again with the record it had (its secrets are
//! reachable again under its path), and one enabled since is disabled (its secrets stay stored,
//! as a disable leaves them). A `--prefix` restore leaves mounts as they are and restores the
//! paths under the prefix in every mount that is live now.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use secretlog_schemas::ConsistencyToken;
use secretlog_schemas::archive::SnapshotData;
use secretlog_schemas::mount::MountRecord;
use secretlog_state::bootstrap::fetch_snapshot;
use secretlog_state::mounts::{DefaultMount, Mounts};
use secretlog_state::store::keys::MOUNT_PREFIX;
use secretlog_writer::restore::{RestoreRequest, RestoredMount, RestoredSecret};
use serde_json::{Value, json};

use super::rebuild::{PointArgs, under};
use super::{StoreArgs, emit, find_snapshot};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub point: PointArgs,
    /// Restore only secrets under this path, in every mount live now (selective restore);
    /// others, and the mounts themselves, are left untouched.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// The nodes' default mount (their `--mount`).
    #[arg(long, env = "SECRETLOG_MOUNT", default_value = "secret")]
    pub mount: String,
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

/// A secret: its mount's storage id and its path.
type SecretKey = (String, String);

/// Secrets of `data` under `prefix` in the mounts whose storage ids are in `storages`.
pub fn by_path(data: &SnapshotData, prefix: &str, storages: &BTreeSet<String>) -> BTreeMap<SecretKey, SecretState> {
    let mut out: BTreeMap<SecretKey, SecretState> = BTreeMap::new();
    for (mount, path, meta) in data.secrets.iter().filter(|s| under(&s.1, prefix) && storages.contains(&s.0)) {
        // As this release stores it, so a restore point taken by an earlier release (every field
        // written out) compares equal to the same live state.
        let meta = secretlog_schemas::metadata::SecretMeta::canonical(meta.as_bytes())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| meta.clone());
        out.insert((mount.clone(), path.clone()), (meta, BTreeMap::new()));
    }
    for (mount, path, v, sealed) in &data.values {
        if let Some(s) = out.get_mut(&(mount.clone(), path.clone())) {
            s.1.insert(*v, sealed.clone());
        }
    }
    out
}

/// The mounts live in `data`'s state, by path, with the default mount at `default` unless it was
/// disabled.
pub fn live_mounts(data: &SnapshotData, default: &DefaultMount) -> anyhow::Result<BTreeMap<String, MountRecord>> {
    let stored = data.control.iter().filter_map(|(k, v)| {
        let path = k.strip_prefix(MOUNT_PREFIX)?;
        Some((String::from_utf8_lossy(path).into_owned(), v.clone()))
    });
    let mounts = Mounts::from_stored(stored).map_err(|e| anyhow::anyhow!("the mount table: {e}"))?;
    Ok(mounts.live(default).into_iter().map(|(p, r)| (p.to_string(), r.clone())).collect())
}

/// The mount changes that turn `current` into `target`: disable what `target` does not mount,
/// mount (again) what differs.
pub fn diff_mounts(
    target: &BTreeMap<String, MountRecord>,
    current: &BTreeMap<String, MountRecord>,
) -> Vec<RestoredMount> {
    let gone =
        current.keys().filter(|p| !target.contains_key(*p)).map(|p| RestoredMount { path: p.clone(), record: None });
    let put = target
        .iter()
        .filter(|(p, r)| current.get(*p) != Some(*r))
        .map(|(p, r)| RestoredMount { path: p.clone(), record: Some(r.clone()) });
    gone.chain(put).collect()
}

/// What must be sent to turn `current` into `target`: changed or missing secrets with their
/// state, secrets to remove with none. Equal secrets are left out.
pub fn diff(
    target: &BTreeMap<SecretKey, SecretState>,
    current: &BTreeMap<SecretKey, SecretState>,
) -> Vec<RestoredSecret> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for ((mount, path), state) in target {
        if current.get(&(mount.clone(), path.clone())) == Some(state) {
            continue;
        }
        out.push(RestoredSecret {
            mount: Some(mount.clone()),
            path: path.clone(),
            metadata: serde_json::from_str(&state.0).ok(),
            values: state.1.iter().map(|(v, s)| (*v, b64.encode(s))).collect(),
        });
    }
    for (mount, path) in current.keys().filter(|k| !target.contains_key(*k)) {
        out.push(RestoredSecret {
            mount: Some(mount.clone()),
            path: path.clone(),
            metadata: None,
            values: BTreeMap::new(),
        });
    }
    out
}

/// Send `secrets` to the writer's restore endpoint in chunks; returns the merged commit position.
/// The mount changes go with the first chunk, so the writer mounts before it restores.
pub async fn send(
    writer: &str,
    token: &str,
    mounts: Vec<RestoredMount>,
    secrets: Vec<RestoredSecret>,
) -> anyhow::Result<ConsistencyToken> {
    let http = super::http(Duration::from_secs(120))?;
    let pb = super::bar(secrets.len() as u64, "restoring");
    let mut index = ConsistencyToken::default();
    let mut chunk: Vec<RestoredSecret> = Vec::new();
    let mut bytes = 0usize;
    let mut mounts = Some(mounts).filter(|m| !m.is_empty());
    let mut rest = secrets.into_iter().peekable();
    while rest.peek().is_some() || !chunk.is_empty() || mounts.is_some() {
        if let Some(s) = rest.next_if(|_| chunk.len() < 200 && bytes < 256 * 1024) {
            bytes += s.values.values().map(String::len).sum::<usize>() + 512;
            chunk.push(s);
            continue;
        }
        let n = chunk.len() as u64;
        let body = RestoreRequest { secrets: std::mem::take(&mut chunk), mounts: mounts.take().unwrap_or_default() };
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
    let target_data = rebuilt.export(&args.prefix).await?;
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
    let current_data = fetch_snapshot(&objects, &current_manifest).await?;
    let default = DefaultMount::new(&args.mount);
    let target_mounts = live_mounts(&target_data, &default)?;
    let current_mounts = live_mounts(&current_data, &default)?;
    // A full restore puts the mount table back and restores the mounts live then; a selective
    // one restores under the prefix in the mounts live now.
    let (mounts, live) = if args.prefix.is_empty() {
        (diff_mounts(&target_mounts, &current_mounts), &target_mounts)
    } else {
        (Vec::new(), &current_mounts)
    };
    let storages: BTreeSet<String> = live.values().map(|r| r.storage.clone()).collect();
    let target = by_path(&target_data, &args.prefix, &storages);
    let current = by_path(&current_data, &args.prefix, &storages);
    let changes = diff(&target, &current);
    let removed = changes.iter().filter(|c| c.metadata.is_none()).count();
    let restored = changes.len() - removed;
    let mounted: Vec<&str> = mounts.iter().filter(|m| m.record.is_some()).map(|m| m.path.as_str()).collect();
    let disabled: Vec<&str> = mounts.iter().filter(|m| m.record.is_none()).map(|m| m.path.as_str()).collect();
    let by_mount = |secrets: &BTreeMap<SecretKey, SecretState>| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for (storage, _) in secrets.keys() {
            let path = live.iter().find(|(_, r)| &r.storage == storage).map_or(storage.as_str(), |(p, _)| p);
            *n.entry(path.to_string()).or_default() += 1;
        }
        n
    };
    let mut report = json!({
        "snapshot": m.id,
        "bound": format!("{:?}", args.point.bound()?),
        "prefix": args.prefix,
        "replayed_records": rebuilt.replayed.values().sum::<u64>(),
        "positions": rebuilt.positions.iter().map(|(p, s)| (p.to_string(), json!(s.next_offset))).collect::<serde_json::Map<_, _>>(),
        "secrets_in_target": target.len(),
        "secrets_in_target_by_mount": by_mount(&target),
        "mounts_restored": mounted,
        "mounts_disabled": disabled,
        "restored": restored,
        "removed": removed,
        "unchanged": target.len().saturating_sub(restored),
        "safety_snapshot": safety,
        "compared_with": current_manifest.id,
        "dry_run": args.dry_run,
    });
    if !args.dry_run {
        let index = send(&args.writer, &token, mounts.clone(), changes).await?;
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
            "mounts_restored",
            "mounts_disabled",
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

    fn data(secrets: &[(&str, &str, &str, &[(u64, u8)])]) -> SnapshotData {
        let mut d = SnapshotData::default();
        for (mount, path, meta, values) in secrets {
            d.secrets.push((mount.to_string(), path.to_string(), meta.to_string()));
            for (v, b) in values.iter() {
                d.values.push((mount.to_string(), path.to_string(), *v, vec![*b]));
            }
        }
        d
    }

    fn storages(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_diff_sends_changed_and_missing_secrets_and_removes_extra_ones_under_the_prefix() {
        let target = data(&[
            ("secret", "a/x", "{}", &[(1, 1)]),
            ("secret", "a/y", "{}", &[(1, 1)]),
            ("secret", "b/z", "{}", &[(1, 1)]),
        ]);
        let current = data(&[
            ("secret", "a/x", "{}", &[(1, 1)]),
            ("secret", "a/y", "{}", &[(1, 2)]),
            ("secret", "a/new", "{}", &[]),
            ("secret", "b/q", "{}", &[]),
        ]);
        let s = storages(&["secret"]);
        let changes = diff(&by_path(&target, "a", &s), &by_path(&current, "a", &s));
        let paths: Vec<(&str, bool)> = changes.iter().map(|c| (c.path.as_str(), c.metadata.is_some())).collect();
        assert_eq!(paths, vec![("a/y", true), ("a/new", false)], "b/ is outside the prefix; a/x is unchanged");
        let all = diff(&by_path(&target, "", &s), &by_path(&current, "", &s));
        assert_eq!(all.len(), 4, "{all:?}");
    }

    #[test]
    fn one_path_in_two_mounts_is_two_secrets_and_only_the_given_mounts_are_compared() {
        let target = data(&[("secret", "x", "{}", &[(1, 1)]), ("kv-team", "x", "{}", &[(1, 1)])]);
        let current = data(&[
            ("secret", "x", "{}", &[(1, 1)]),
            ("kv-team", "x", "{}", &[(1, 2)]),
            ("kv-later", "y", "{}", &[(1, 1)]),
        ]);
        let s = storages(&["secret", "kv-team"]);
        let changes = diff(&by_path(&target, "", &s), &by_path(&current, "", &s));
        let keys: Vec<(Option<&str>, &str)> = changes.iter().map(|c| (c.mount.as_deref(), c.path.as_str())).collect();
        assert_eq!(keys, vec![(Some("kv-team"), "x")], "kv-later is not restored: its mount is not in the target");
    }

    #[test]
    fn the_mount_table_comes_back_from_the_control_records() {
        let team = MountRecord::new_kv([1; 16], "team".into(), 1);
        let later = MountRecord::new_kv([2; 16], "later".into(), 2);
        let mut tuned = team.clone();
        tuned.description = "tuned".into();
        let table = |entries: &[(&str, Option<&MountRecord>)]| {
            let mut d = SnapshotData::default();
            d.control.push((b"c/policy/x".to_vec(), b"{}".to_vec()));
            for (p, r) in entries {
                let key = [MOUNT_PREFIX, p.as_bytes()].concat();
                d.control.push((key, r.map(MountRecord::encode).unwrap_or_default()));
            }
            d
        };
        let default = DefaultMount::new("secret");
        let target = live_mounts(&table(&[("team", Some(&team))]), &default).unwrap();
        assert_eq!(target.keys().collect::<Vec<_>>(), ["secret", "team"]);
        // Since then: the default mount and team disabled, later enabled.
        let current =
            live_mounts(&table(&[("secret", None), ("team", None), ("later", Some(&later))]), &default).unwrap();
        let restored = diff_mounts(&target, &current);
        let changes: Vec<(&str, Option<&str>)> =
            restored.iter().map(|m| (m.path.as_str(), m.record.as_ref().map(|r| r.description.as_str()))).collect();
        assert_eq!(
            changes,
            vec![("later", None), ("secret", Some("key/value secret storage")), ("team", Some("team"))]
        );
        // A tune since then is undone; an equal table changes nothing.
        let current = live_mounts(&table(&[("team", Some(&tuned))]), &default).unwrap();
        assert_eq!(diff_mounts(&target, &current).len(), 1);
        assert!(diff_mounts(&target, &target).is_empty());
    }
}
