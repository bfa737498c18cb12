//! `POST /v1/sys/secretlog/restore`: put secrets back into a state taken from a snapshot or a
//! point-in-time rebuild (`secretlog restore`).
//!
//! Each secret becomes one [`Command::Restore`], queued like any other write: the committer
//! orders it with every other write to the same secret and appends a `RestoreSecret` (or a
//! `DeleteMetadata`, for a secret the restored state does not hold) in a Kafka transaction. So a
//! restore reaches every reader through the log, and nothing is answered before it committed.
//!
//! A full restore also carries the mount table to put back: each path whose mount differs is
//! disabled or mounted again with the record it had (same storage id, accessor and uuid), as a
//! [`Command::Mount`] queued before the secrets, so a secret of a mount disabled since the restore
//! point is reachable again under its path. Every secret names the storage id of its mount.
//!
//! Everything is checked before anything is queued — the metadata parses and agrees with the
//! values, every path is valid, every sealed value opens with this cluster's key for exactly its
//! mount, path and version — so a bad request changes nothing, and the log never carries an event
//! that would halt a reader.

use std::collections::BTreeMap;

use base64::Engine;
use secretlog_node::api::{ApiError, ApiRequest};
use secretlog_schemas::Keyring;
use secretlog_schemas::metadata::SecretMeta;
use secretlog_schemas::mount::{KV, MountRecord, normalize_mount_path};
use secretlog_schemas::path::validate_secret_path;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_state::mounts::{DefaultMount, Mounts};
use serde::{Deserialize, Serialize};

use crate::mounts::MountChange;
use crate::request::Command;

/// Most secrets in one request.
pub const MAX_SECRETS_PER_REQUEST: usize = 1000;

/// The request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub secrets: Vec<RestoredSecret>,
    /// Mounts to put back (a full restore sends the paths whose mount differs), applied before
    /// the secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<RestoredMount>,
}

/// One mount path's state to restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoredMount {
    pub path: String,
    /// The record to mount there; `null` disables what is mounted there now.
    pub record: Option<MountRecord>,
}

/// One secret's state to restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoredSecret {
    /// The storage id of the secret's mount; absent for the node's default mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    pub path: String,
    /// The secret's metadata as snapshots carry it; `null` removes the secret.
    pub metadata: Option<serde_json::Value>,
    /// Sealed value of each version that has one, base64.
    #[serde(default)]
    pub values: BTreeMap<u64, String>,
}

/// Parse and check a restore request into commands, each with the storage id it acts on (empty
/// for mount changes), mount changes first; or refuse all of it. `mounts` is the table this
/// writer applied.
pub fn parse(
    req: &ApiRequest,
    mounts: &Mounts,
    default: &DefaultMount,
    keyring: &Keyring,
) -> Result<Vec<(String, Command)>, ApiError> {
    let body: RestoreRequest = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("malformed restore request: {e}")))?;
    if body.secrets.len() + body.mounts.len() > MAX_SECRETS_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "too many secrets and mounts in one restore request: {} (at most {MAX_SECRETS_PER_REQUEST})",
            body.secrets.len() + body.mounts.len()
        )));
    }
    let mut out = mount_commands(body.mounts)?;
    // A secret is restored into a mount that is live now or mounted again by this request.
    let mut storages: std::collections::HashSet<String> =
        mounts.live(default).values().map(|r| r.storage.clone()).collect();
    for (_, cmd) in &out {
        if let Command::Mount { change: MountChange::Put(r), .. } = cmd {
            storages.insert(r.storage.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in body.secrets {
        let storage = s.mount.clone().unwrap_or_else(|| default.record.storage.clone());
        if !storages.contains(&storage) {
            return Err(ApiError::bad_request(format!(
                "restore of {:?}: its mount (storage {storage:?}) is not mounted and this request does not mount it again",
                s.path
            )));
        }
        let cmd = command(s, &storage, keyring, &mut seen)?;
        out.push((storage, cmd));
    }
    Ok(out)
}

/// The mount changes, disables before mounts (a path freed by one may be needed by another).
fn mount_commands(restored: Vec<RestoredMount>) -> Result<Vec<(String, Command)>, ApiError> {
    let mut paths = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(restored.len());
    for m in restored {
        let bad = |reason: String| ApiError::bad_request(format!("restore of mount {:?}: {reason}", m.path));
        let path = normalize_mount_path(&m.path).map_err(|e| bad(e.to_string()))?;
        if !paths.insert(path.clone()) {
            return Err(bad("listed twice".into()));
        }
        let change = match m.record {
            None => MountChange::Disable,
            Some(r) if r.kind != KV || r.version != 2 => return Err(bad("only KV version 2 mounts are served".into())),
            Some(r) if !is_storage_id(&r.storage) => return Err(bad(format!("bad storage id {:?}", r.storage))),
            Some(r) => MountChange::Put(r),
        };
        out.push((String::new(), Command::Mount { path, change }));
    }
    out.sort_by_key(|(_, c)| matches!(c, Command::Mount { change: MountChange::Put(_), .. }));
    Ok(out)
}

/// A storage id as mounts make them: `kv-` and 32 hex digits, or a default mount's path.
fn is_storage_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn command(
    s: RestoredSecret,
    mount: &str,
    keyring: &Keyring,
    seen: &mut std::collections::HashSet<(String, String)>,
) -> Result<Command, ApiError> {
    let bad = |reason: String| ApiError::bad_request(format!("restore of {:?}: {reason}", s.path));
    validate_secret_path(&s.path).map_err(|e| bad(e.to_string()))?;
    if !seen.insert((mount.to_string(), s.path.clone())) {
        return Err(bad("listed twice".into()));
    }
    let Some(metadata) = &s.metadata else {
        if !s.values.is_empty() {
            return Err(bad("values given for a secret to remove".into()));
        }
        return Ok(Command::Restore { path: s.path, metadata: None, values: vec![] });
    };
    let meta: SecretMeta = serde_json::from_value(metadata.clone()).map_err(|e| bad(format!("metadata: {e}")))?;
    let mut values = Vec::with_capacity(s.values.len());
    for (v, b64) in &s.values {
        match meta.versions.get(v) {
            Some(vm) if !vm.destroyed => {}
            _ => return Err(bad(format!("a value for version {v}, which the metadata does not hold"))),
        }
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(format!("value of version {v} is not base64: {e}")))?;
        let ctx = SealContext { mount, path: &s.path, version: *v };
        // A restore point may predate a term's retirement: its values are checked (and the plan
        // re-seals them under the active term), never served as they are.
        SealedValue::decode(&sealed)
            .and_then(|sv| sv.open_to_reseal(keyring, &ctx).map(drop))
            .map_err(|_| bad(format!("the value of version {v} does not open with this cluster's key")))?;
        values.push((*v, sealed));
    }
    let canonical = serde_json::to_vec(&meta).map_err(|_| ApiError::internal())?;
    Ok(Command::Restore { path: s.path, metadata: Some(canonical), values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_schemas::RootKey;
    use secretlog_schemas::metadata::VersionMeta;

    fn default() -> DefaultMount {
        DefaultMount::new("secret")
    }

    fn ring() -> Keyring {
        Keyring::from_root(&RootKey::from_bytes([3; 32]))
    }

    fn req(body: serde_json::Value) -> ApiRequest {
        ApiRequest {
            method: "POST".into(),
            path: "v1/sys/secretlog/restore".into(),
            body: body.to_string().into(),
            ..Default::default()
        }
    }

    fn secret(path: &str, version: u64, sealed_for: &str) -> RestoredSecret {
        secret_in("secret", path, version, sealed_for)
    }

    fn secret_in(storage: &str, path: &str, version: u64, sealed_for: &str) -> RestoredSecret {
        let mut meta = SecretMeta { current_version: version, ..Default::default() };
        meta.versions.insert(version, VersionMeta::default());
        let ctx = SealContext { mount: storage, path: sealed_for, version };
        let sealed = SealedValue::seal(&ring(), &ctx, b"{\"a\":1}").unwrap().encode();
        RestoredSecret {
            mount: (storage != "secret").then(|| storage.to_string()),
            path: path.into(),
            metadata: Some(serde_json::to_value(&meta).unwrap()),
            values: BTreeMap::from([(version, base64::engine::general_purpose::STANDARD.encode(sealed))]),
        }
    }

    #[test]
    fn a_valid_request_becomes_one_command_per_secret() {
        let body = RestoreRequest {
            mounts: vec![],
            secrets: vec![
                secret("a/b", 2, "a/b"),
                RestoredSecret { mount: None, path: "gone".into(), metadata: None, values: BTreeMap::new() },
            ],
        };
        let cmds = parse(&req(serde_json::to_value(body).unwrap()), &Mounts::default(), &default(), &ring()).unwrap();
        assert_eq!(cmds.len(), 2);
        assert!(
            matches!(&cmds[0], (m, Command::Restore { path, metadata: Some(_), values }) if m == "secret" && path == "a/b" && values.len() == 1)
        );
        assert_eq!(
            cmds[1],
            ("secret".into(), Command::Restore { path: "gone".into(), metadata: None, values: vec![] })
        );
    }

    #[test]
    fn a_value_sealed_for_another_path_or_key_is_refused() {
        let body = RestoreRequest { mounts: vec![], secrets: vec![secret("a/b", 1, "other")] };
        let err =
            parse(&req(serde_json::to_value(body).unwrap()), &Mounts::default(), &default(), &ring()).unwrap_err();
        assert_eq!(err.status, 400);
        let body = RestoreRequest { mounts: vec![], secrets: vec![secret("a/b", 1, "a/b")] };
        let other = Keyring::from_root(&RootKey::from_bytes([4; 32]));
        assert!(parse(&req(serde_json::to_value(body).unwrap()), &Mounts::default(), &default(), &other).is_err());
    }

    #[test]
    fn inconsistent_or_malformed_requests_are_refused_whole() {
        let mut s = secret("a", 1, "a");
        s.values.insert(7, s.values[&1].clone());
        let body = RestoreRequest { mounts: vec![], secrets: vec![secret("ok", 1, "ok"), s] };
        assert!(parse(&req(serde_json::to_value(body).unwrap()), &Mounts::default(), &default(), &ring()).is_err());
        let twice = RestoreRequest { mounts: vec![], secrets: vec![secret("x", 1, "x"), secret("x", 1, "x")] };
        assert!(parse(&req(serde_json::to_value(twice).unwrap()), &Mounts::default(), &default(), &ring()).is_err());
        assert!(parse(&req(serde_json::json!({"secrets": "no"})), &Mounts::default(), &default(), &ring()).is_err());
        let bad_path = RestoredSecret { mount: None, path: "../x".into(), metadata: None, values: BTreeMap::new() };
        let body = RestoreRequest { mounts: vec![], secrets: vec![bad_path] };
        assert!(parse(&req(serde_json::to_value(body).unwrap()), &Mounts::default(), &default(), &ring()).is_err());
    }

    #[test]
    fn mounts_come_back_before_their_secrets_and_a_secret_needs_its_mount() {
        let team = MountRecord::new_kv([7; 16], "team".into(), 5);
        let storage = team.storage.clone();
        let body = RestoreRequest {
            secrets: vec![secret_in(&storage, "a", 1, "a"), secret("a", 1, "a")],
            mounts: vec![
                RestoredMount { path: "team/".into(), record: Some(team.clone()) },
                RestoredMount { path: "later".into(), record: None },
            ],
        };
        let cmds = parse(&req(serde_json::to_value(&body).unwrap()), &Mounts::default(), &default(), &ring()).unwrap();
        let shape: Vec<(&str, String)> = cmds
            .iter()
            .map(|(m, c)| match c {
                Command::Mount { path, change: MountChange::Disable } => ("", format!("disable {path}")),
                Command::Mount { path, change: MountChange::Put(r) } => ("", format!("mount {path} {}", r.storage)),
                Command::Restore { path, .. } => (m.as_str(), format!("restore {path}")),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("", "disable later".into()),
                ("", format!("mount team {storage}")),
                (storage.as_str(), "restore a".into()),
                ("secret", "restore a".into()),
            ],
            "the same path in two mounts is two secrets"
        );
        // Without its mount, a secret of a storage that is not mounted is refused, naming it.
        let alone = RestoreRequest { secrets: vec![secret_in(&storage, "a", 1, "a")], mounts: vec![] };
        let err =
            parse(&req(serde_json::to_value(&alone).unwrap()), &Mounts::default(), &default(), &ring()).unwrap_err();
        assert!(err.errors[0].contains(&storage), "{:?}", err.errors);
        // A value sealed for the default mount does not open as the team mount's.
        let mut wrong = secret("a", 1, "a");
        wrong.mount = Some(storage.clone());
        let body = RestoreRequest { secrets: vec![wrong], mounts: body.mounts.clone() };
        assert!(parse(&req(serde_json::to_value(&body).unwrap()), &Mounts::default(), &default(), &ring()).is_err());
        // A mount of another engine, or listed twice, is refused.
        let mut pki = team.clone();
        pki.kind = "pki".into();
        for mounts in [
            vec![RestoredMount { path: "x".into(), record: Some(pki) }],
            vec![RestoredMount { path: "x".into(), record: None }, RestoredMount { path: "x/".into(), record: None }],
        ] {
            let body = RestoreRequest { secrets: vec![], mounts };
            assert!(
                parse(&req(serde_json::to_value(&body).unwrap()), &Mounts::default(), &default(), &ring()).is_err()
            );
        }
    }
}
