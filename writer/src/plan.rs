//! Deciding a write against the current state: CAS, existence, the next version number — and
//! turning it into the event that will be appended.
//!
//! The state comes from the writer's own materializer, which runs the reader crate's code, so
//! what is checked here is exactly what every reader will compute.

use secretlog_node::api::ApiError;
use secretlog_node::api::response::vault_time;
use secretlog_schemas::metadata::SecretMeta;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::{Event, Keyring, MetadataUpdate, Operation};
use secretlog_state::model;
use serde_json::{Map, Value, json};

use secretlog_schemas::event::MAX_CUSTOM_METADATA;
use secretlog_schemas::mount::KvConfig;

use crate::request::{Command, MetadataPatch, merge_patch};

/// What a command turns into.
#[derive(Debug)]
pub enum Planned {
    /// Append this operation; answer with `reply` once it committed.
    Append { op: Operation, reply: Reply },
    /// Nothing to append (e.g. deleting what does not exist); answer now, as Vault does.
    Done { status: u16 },
}

/// The answer to send after commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200 with the new version's metadata (writes and patches).
    Version(Value),
    /// 204.
    NoContent,
    /// 200 with this whole body.
    Json(Value),
}

const CAS_MISMATCH: &str = "check-and-set parameter did not match the current version";
const CAS_REQUIRED: &str = "check-and-set parameter required for this call";

/// Vault's rule: a write needs `cas` when its secret or its mount requires it.
fn check_cas(meta: Option<&SecretMeta>, mount: &KvConfig, cas: Option<i64>) -> Result<(), ApiError> {
    let current = meta.map_or(0, |m| m.current_version);
    match cas {
        Some(c) if u64::try_from(c).ok() != Some(current) => Err(ApiError::bad_request(CAS_MISMATCH)),
        None if mount.cas_required || meta.is_some_and(|m| m.cas_required) => Err(ApiError::bad_request(CAS_REQUIRED)),
        _ => Ok(()),
    }
}

/// A new version sealed under `mount` (the storage id). When the mount sets KV defaults
/// (`<mount>/config`), the event carries them (`PutWithDefaults`), so every node applies the
/// same ones; the secret's own settings win over them.
fn seal_put(
    keyring: &Keyring,
    mount: &str,
    defaults: &KvConfig,
    path: &str,
    meta: Option<&SecretMeta>,
    data: &Map<String, Value>,
    ts: i64,
) -> Result<Planned, ApiError> {
    let version = meta.map_or(0, |m| m.current_version) + 1;
    let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(data).map_err(|_| ApiError::internal())?);
    let sealed = SealedValue::seal(keyring, &SealContext { mount, path, version }, &plaintext).map_err(|e| {
        tracing::error!(error = %e, "sealing failed");
        ApiError::internal()
    })?;
    let dva = meta.map_or(0, |m| m.delete_version_after_secs);
    let dva = if dva > 0 { dva } else { defaults.delete_version_after_secs };
    let deletion = (dva > 0).then(|| ts + dva as i64 * 1000);
    let reply = Reply::Version(json!({
        "created_time": vault_time(Some(ts)),
        "custom_metadata": meta.and_then(|m| m.custom_metadata.clone()),
        "deletion_time": vault_time(deletion),
        "destroyed": false,
        "version": version,
    }));
    let sealed = sealed.encode();
    let op = if defaults.max_versions == 0 && defaults.delete_version_after_secs == 0 {
        Operation::Put { version, sealed }
    } else {
        Operation::PutWithDefaults {
            version,
            sealed,
            max_versions: defaults.max_versions,
            delete_version_after_secs: defaults.delete_version_after_secs,
        }
    };
    Ok(Planned::Append { op, reply })
}

/// The metadata update a `PATCH metadata/:path` makes of `meta`: its fields as given, and the
/// custom metadata merged key by key into the current one.
fn patch_metadata(meta: &SecretMeta, patch: &MetadataPatch) -> Result<MetadataUpdate, ApiError> {
    let custom_metadata = if patch.custom_metadata.is_empty() {
        None
    } else {
        let mut merged = meta.custom_metadata.clone().unwrap_or_default();
        for (k, v) in &patch.custom_metadata {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        if merged.len() > MAX_CUSTOM_METADATA {
            return Err(ApiError::bad_request(format!(
                "1 error occurred:\n\t* custom_metadata validation failed: payload must contain at most \
                 {MAX_CUSTOM_METADATA} keys, provided {}\n\n",
                merged.len()
            )));
        }
        (meta.custom_metadata.as_ref() != Some(&merged)).then_some(merged)
    };
    Ok(MetadataUpdate {
        max_versions: patch.max_versions.filter(|n| *n != meta.max_versions),
        cas_required: patch.cas_required.filter(|b| *b != meta.cas_required),
        delete_version_after_secs: patch.delete_version_after_secs.filter(|s| *s != meta.delete_version_after_secs),
        custom_metadata,
    })
}

/// Append `op` only if it changes the secret: deleting what is deleted (or does not exist),
/// undeleting what is live, destroying what is destroyed answer 204 and append nothing, as in
/// Vault — decided by the very function every node applies events with.
fn changing(meta: Option<&SecretMeta>, op: Operation, ts: i64) -> Result<Planned, ApiError> {
    let Some(m) = meta else { return Ok(Planned::Done { status: 204 }) };
    let probe = Event {
        event_id: [0; 16],
        timestamp_ms: ts,
        writer_epoch: 0,
        revision: None,
        mount: String::new(),
        path: String::new(),
        op,
    };
    match model::apply(Some(m), &probe) {
        Ok(effect) if effect.meta.as_ref() == Some(m) && effect.remove_values.is_empty() => {
            Ok(Planned::Done { status: 204 })
        }
        Ok(_) => Ok(Planned::Append { op: probe.op, reply: Reply::NoContent }),
        Err(e) => {
            tracing::error!(error = %e, "a version operation does not apply to the current state");
            Err(ApiError::internal())
        }
    }
}

/// The values of a restore, each sealed under the active key term: a state taken before a
/// rotation carries values of older terms (perhaps retired since); they are re-sealed here, so a
/// restore never brings back a term the rewrap has moved everything off.
fn values_under_active_term(
    keyring: &Keyring,
    mount: &str,
    path: &str,
    values: &[(u64, Vec<u8>)],
) -> Result<Vec<(u64, Vec<u8>)>, ApiError> {
    let active = keyring.active_term();
    values
        .iter()
        .map(|(version, sealed)| {
            if SealedValue::term_of(sealed) == Some(active) {
                return Ok((*version, sealed.clone()));
            }
            let ctx = SealContext { mount, path, version: *version };
            SealedValue::decode(sealed).and_then(|s| s.reseal(keyring, &ctx)).map(|s| (*version, s.encode())).map_err(
                |e| {
                    tracing::error!(path, version, error = %e, "a restored value does not re-seal");
                    ApiError::internal()
                },
            )
        })
        .collect()
}

/// Decide `cmd` against `meta`. For a patch, `current` is the opened value of the current
/// version (`None` if there is no live current version). `mount` is the storage id of the mount
/// the secret lives in, `defaults` that mount's KV settings.
pub fn plan(
    cmd: &Command,
    meta: Option<&SecretMeta>,
    current: Option<Map<String, Value>>,
    keyring: &Keyring,
    mount: &str,
    defaults: &KvConfig,
    ts: i64,
) -> Result<Planned, ApiError> {
    let exists = meta.is_some_and(|m| m.current_version > 0);
    match cmd {
        Command::Put { path, data, cas } => {
            check_cas(meta, defaults, *cas)?;
            seal_put(keyring, mount, defaults, path, meta, data, ts)
        }
        Command::Patch { path, patch, cas } => {
            // A secret that never had a version: Vault answers 404 with no body at all.
            if !exists {
                return Ok(Planned::Done { status: 404 });
            }
            let Some(mut merged) = current else { return Err(ApiError::not_found()) };
            check_cas(meta, defaults, *cas)?;
            merge_patch(&mut merged, patch);
            seal_put(keyring, mount, defaults, path, meta, &merged, ts)
        }
        Command::PatchMetadata { patch, .. } => {
            let Some(m) = meta else { return Err(ApiError::not_found()) };
            let update = patch_metadata(m, patch)?;
            if update == MetadataUpdate::default() {
                return Ok(Planned::Done { status: 204 });
            }
            Ok(Planned::Append { op: Operation::UpdateMetadata(update), reply: Reply::NoContent })
        }
        Command::Mount { .. } | Command::AuditDevice { .. } => {
            tracing::error!("a mount or audit-device change reached the secret planner; the committer decides those");
            Err(ApiError::internal())
        }
        Command::DeleteLatest { .. } => match meta {
            Some(m) if exists => changing(meta, Operation::DeleteVersions { versions: vec![m.current_version] }, ts),
            _ => Ok(Planned::Done { status: 204 }),
        },
        Command::DeleteVersions { versions, .. } => {
            changing(meta, Operation::DeleteVersions { versions: versions.clone() }, ts)
        }
        Command::UndeleteVersions { versions, .. } => {
            changing(meta, Operation::UndeleteVersions { versions: versions.clone() }, ts)
        }
        Command::DestroyVersions { versions, .. } => {
            changing(meta, Operation::DestroyVersions { versions: versions.clone() }, ts)
        }
        // No field given (or only `delete_version_after: null`): Vault changes nothing, not even
        // `updated_time`, and creates no metadata.
        Command::UpdateMetadata { update, .. } if *update == MetadataUpdate::default() => {
            Ok(Planned::Done { status: 204 })
        }
        Command::UpdateMetadata { update, .. } => {
            Ok(Planned::Append { op: Operation::UpdateMetadata(update.clone()), reply: Reply::NoContent })
        }
        Command::DeleteMetadata { .. } if meta.is_some() => {
            Ok(Planned::Append { op: Operation::DeleteMetadata, reply: Reply::NoContent })
        }
        Command::DeleteMetadata { .. } => Ok(Planned::Done { status: 204 }),
        Command::Restore { path, metadata: Some(metadata), values } => Ok(Planned::Append {
            op: Operation::RestoreSecret {
                metadata: metadata.clone(),
                values: values_under_active_term(keyring, mount, path, values)?,
            },
            reply: Reply::NoContent,
        }),
        Command::Restore { metadata: None, .. } if meta.is_some() => {
            Ok(Planned::Append { op: Operation::DeleteMetadata, reply: Reply::NoContent })
        }
        Command::Restore { metadata: None, .. } => Ok(Planned::Done { status: 204 }),
        Command::Rewrap { values, .. } => {
            // Only values sealed under the term that is active *now*: once a newer term is
            // active here, nothing decided from then on appends a seal under an older one — the
            // fact a key-term retirement relies on (see `crate::rotate`). A rewrap that lost that
            // race is simply done again by the next pass.
            let active = keyring.active_term();
            let held = |v: u64| meta.and_then(|m| m.versions.get(&v)).is_some_and(|vm| !vm.destroyed);
            let values: Vec<_> = values
                .iter()
                .filter(|r| held(r.version) && SealedValue::term_of(&r.sealed) == Some(active))
                .cloned()
                .collect();
            if values.is_empty() {
                return Ok(Planned::Done { status: 204 });
            }
            Ok(Planned::Append { op: Operation::RewrapValues { values }, reply: Reply::NoContent })
        }
        Command::Control { op, body, .. } => {
            Ok(Planned::Append { op: op.clone(), reply: body.clone().map_or(Reply::NoContent, Reply::Json) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_schemas::RootKey;

    fn ring() -> Keyring {
        Keyring::from_root(&RootKey::from_bytes([9; 32]))
    }
    fn meta(current: u64, cas_required: bool) -> SecretMeta {
        SecretMeta { current_version: current, cas_required, ..Default::default() }
    }
    fn put(cas: Option<i64>) -> Command {
        Command::Put { path: "p".into(), data: Map::new(), cas }
    }

    #[test]
    fn cas_rules() {
        let r = ring();
        let status = |c: &Command, m: Option<&SecretMeta>| match plan(c, m, None, &r, "secret", &KvConfig::default(), 1)
        {
            Ok(_) => 200,
            Err(e) => e.status,
        };
        assert_eq!(status(&put(Some(0)), None), 200, "cas=0 creates");
        assert_eq!(status(&put(Some(0)), Some(&meta(1, false))), 400, "cas=0 refuses an existing secret");
        assert_eq!(status(&put(Some(1)), Some(&meta(1, false))), 200);
        assert_eq!(status(&put(Some(2)), Some(&meta(1, false))), 400);
        assert_eq!(status(&put(None), Some(&meta(1, true))), 400, "cas_required");
        assert_eq!(status(&put(Some(1)), Some(&meta(1, true))), 200);
    }

    #[test]
    fn a_mount_that_requires_cas_refuses_a_put_without_it() {
        let r = ring();
        let required = KvConfig { cas_required: true, ..Default::default() };
        let status = |c: &Command, m: Option<&SecretMeta>| match plan(c, m, None, &r, "kv-1", &required, 1) {
            Ok(_) => 200,
            Err(e) => e.status,
        };
        assert_eq!(status(&put(None), None), 400);
        assert_eq!(plan(&put(None), None, None, &r, "kv-1", &required, 1).unwrap_err().errors, vec![CAS_REQUIRED]);
        assert_eq!(status(&put(Some(0)), None), 200);
        assert_eq!(status(&put(Some(1)), Some(&meta(1, false))), 200);
    }

    #[test]
    fn a_put_carries_the_mount_defaults_only_when_the_mount_sets_some() {
        let r = ring();
        let Planned::Append { op, .. } = plan(&put(None), None, None, &r, "kv-1", &KvConfig::default(), 1).unwrap()
        else {
            panic!()
        };
        assert!(matches!(op, Operation::Put { version: 1, .. }), "{op:?}");
        let defaults = KvConfig { max_versions: 2, delete_version_after_secs: 60, ..Default::default() };
        let Planned::Append { op, reply: Reply::Version(v) } =
            plan(&put(None), Some(&meta(3, false)), None, &r, "kv-1", &defaults, 1000).unwrap()
        else {
            panic!()
        };
        assert!(
            matches!(op, Operation::PutWithDefaults { version: 4, max_versions: 2, delete_version_after_secs: 60, .. }),
            "{op:?}"
        );
        assert_eq!(v["deletion_time"], vault_time(Some(61_000)), "the mount's delete_version_after applies");
        // The secret's own setting wins.
        let own = SecretMeta { delete_version_after_secs: 10, ..meta(3, false) };
        let Planned::Append { reply: Reply::Version(v), .. } =
            plan(&put(None), Some(&own), None, &r, "kv-1", &defaults, 1000).unwrap()
        else {
            panic!()
        };
        assert_eq!(v["deletion_time"], vault_time(Some(11_000)));
    }

    #[test]
    fn a_metadata_patch_merges_custom_metadata_and_needs_the_secret() {
        let mut m = meta(1, false);
        m.custom_metadata = Some([("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into());
        let patch = MetadataPatch {
            delete_version_after_secs: Some(3600),
            custom_metadata: [("a".to_string(), None), ("c".into(), Some("3".into()))].into(),
            ..Default::default()
        };
        let cmd = Command::PatchMetadata { path: "p".into(), patch };
        let Planned::Append { op: Operation::UpdateMetadata(u), .. } =
            plan(&cmd, Some(&m), None, &ring(), "secret", &KvConfig::default(), 1).unwrap()
        else {
            panic!()
        };
        assert_eq!(u.custom_metadata, Some([("b".to_string(), "2".to_string()), ("c".into(), "3".into())].into()));
        assert_eq!((u.delete_version_after_secs, u.max_versions, u.cas_required), (Some(3600), None, None));
        assert_eq!(plan(&cmd, None, None, &ring(), "secret", &KvConfig::default(), 1).unwrap_err().status, 404);
        let noop = Command::PatchMetadata { path: "p".into(), patch: MetadataPatch::default() };
        assert!(matches!(
            plan(&noop, Some(&m), None, &ring(), "secret", &KvConfig::default(), 1).unwrap(),
            Planned::Done { status: 204 }
        ));
    }

    #[test]
    fn put_takes_the_next_version_and_seals() {
        let r = ring();
        let data = serde_json::json!({"password":"hunter2"}).as_object().unwrap().clone();
        let cmd = Command::Put { path: "p".into(), data, cas: None };
        let Planned::Append { op: Operation::Put { version, sealed }, reply: Reply::Version(v) } =
            plan(&cmd, Some(&meta(4, false)), None, &r, "secret", &KvConfig::default(), 1000).unwrap()
        else {
            panic!("expected a put")
        };
        assert_eq!(version, 5);
        assert_eq!(v["version"], 5);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "value must be sealed");
    }

    #[test]
    fn patch_needs_a_live_current_version() {
        let cmd = Command::Patch { path: "p".into(), patch: Map::new(), cas: None };
        // Never written: 404 with no body, as Vault.
        assert!(matches!(
            plan(&cmd, None, None, &ring(), "secret", &KvConfig::default(), 1).unwrap(),
            Planned::Done { status: 404 }
        ));
        // Written, current version deleted: 404 with Vault's error list.
        let m = meta(2, false);
        assert_eq!(plan(&cmd, Some(&m), None, &ring(), "secret", &KvConfig::default(), 1).unwrap_err().status, 404);
    }

    #[test]
    fn version_operations_that_change_nothing_append_nothing() {
        let r = ring();
        let mut m = meta(2, false);
        for v in 1..=2 {
            m.versions.insert(v, secretlog_schemas::metadata::VersionMeta { created_ms: 1, ..Default::default() });
        }
        m.versions.get_mut(&1).unwrap().destroyed = true;
        let appends = |cmd: Command| {
            matches!(plan(&cmd, Some(&m), None, &r, "secret", &KvConfig::default(), 5).unwrap(), Planned::Append { .. })
        };
        let p = || "p".to_string();
        assert!(!appends(Command::DeleteVersions { path: p(), versions: vec![1, 7] }), "destroyed, missing");
        assert!(!appends(Command::DeleteVersions { path: p(), versions: vec![] }));
        assert!(!appends(Command::UndeleteVersions { path: p(), versions: vec![2] }), "already live");
        assert!(!appends(Command::DestroyVersions { path: p(), versions: vec![1] }), "already destroyed");
        assert!(appends(Command::DeleteVersions { path: p(), versions: vec![2] }));
        assert!(appends(Command::DeleteLatest { path: p() }));
        assert!(appends(Command::DestroyVersions { path: p(), versions: vec![1, 2] }));
    }

    #[test]
    fn a_metadata_update_without_fields_appends_nothing() {
        let empty = Command::UpdateMetadata { path: "p".into(), update: MetadataUpdate::default() };
        for m in [None, Some(&meta(1, false))] {
            assert!(matches!(
                plan(&empty, m, None, &ring(), "secret", &KvConfig::default(), 1).unwrap(),
                Planned::Done { status: 204 }
            ));
        }
        let some = Command::UpdateMetadata {
            path: "p".into(),
            update: MetadataUpdate { max_versions: Some(0), ..Default::default() },
        };
        assert!(matches!(
            plan(&some, None, None, &ring(), "secret", &KvConfig::default(), 1).unwrap(),
            Planned::Append { .. }
        ));
    }

    #[test]
    fn a_negative_cas_never_matches() {
        let status = plan(&put(Some(-1)), None, None, &ring(), "secret", &KvConfig::default(), 1).unwrap_err();
        assert_eq!(status.errors, vec![CAS_MISMATCH]);
    }

    fn sealed(r: &Keyring, version: u64) -> Vec<u8> {
        SealedValue::seal(r, &SealContext { mount: "secret", path: "p", version }, b"{}").unwrap().encode()
    }

    #[test]
    fn a_rewrap_appends_only_values_under_the_active_term_of_held_versions() {
        let r = ring();
        let mut m = meta(3, false);
        for v in 1..=3 {
            m.versions.insert(v, secretlog_schemas::metadata::VersionMeta { created_ms: 1, ..Default::default() });
        }
        m.versions.get_mut(&2).unwrap().destroyed = true;
        let old = sealed(&r, 1);
        r.advance_to(2);
        let rw = |version: u64, sealed: Vec<u8>| secretlog_schemas::Rewrapped { version, replaces: [0; 32], sealed };
        let cmd = Command::Rewrap {
            path: "p".into(),
            values: vec![rw(1, sealed(&r, 1)), rw(2, sealed(&r, 2)), rw(3, old.clone()), rw(9, sealed(&r, 9))],
        };
        let Planned::Append { op: Operation::RewrapValues { values }, .. } =
            plan(&cmd, Some(&m), None, &r, "secret", &KvConfig::default(), 1).unwrap()
        else {
            panic!("expected a rewrap")
        };
        assert_eq!(
            values.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1],
            "destroyed, old term, missing dropped"
        );
        let stale = Command::Rewrap { path: "p".into(), values: vec![rw(3, old)] };
        assert!(matches!(
            plan(&stale, Some(&m), None, &r, "secret", &KvConfig::default(), 1).unwrap(),
            Planned::Done { status: 204 }
        ));
        assert!(matches!(
            plan(&cmd, None, None, &r, "secret", &KvConfig::default(), 1).unwrap(),
            Planned::Done { status: 204 }
        ));
    }

    #[test]
    fn a_restore_of_values_under_an_older_term_reseals_them() {
        let r = ring();
        let old = sealed(&r, 1);
        r.advance_to(2);
        r.retire(1);
        let cmd = Command::Restore { path: "p".into(), metadata: Some(b"{}".to_vec()), values: vec![(1, old.clone())] };
        let Planned::Append { op: Operation::RestoreSecret { values, .. }, .. } =
            plan(&cmd, None, None, &r, "secret", &KvConfig::default(), 1).unwrap()
        else {
            panic!("expected a restore")
        };
        assert_eq!(SealedValue::term_of(&values[0].1), Some(2));
        let ctx = SealContext { mount: "secret", path: "p", version: 1 };
        assert_eq!(&SealedValue::decode(&values[0].1).unwrap().open(&r, &ctx).unwrap()[..], b"{}");
    }

    #[test]
    fn deletes_of_missing_secrets_append_nothing() {
        for cmd in [
            Command::DeleteLatest { path: "p".into() },
            Command::DestroyVersions { path: "p".into(), versions: vec![1] },
            Command::DeleteMetadata { path: "p".into() },
        ] {
            assert!(matches!(
                plan(&cmd, None, None, &ring(), "secret", &KvConfig::default(), 1).unwrap(),
                Planned::Done { status: 204 }
            ));
        }
    }
}
