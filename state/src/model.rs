//! The KV v2 state model and the one function that applies an event to it.
//!
//! This is *the* definition of what the log means. Readers use it to materialize; the writer uses
//! the same code (through its own materializer) to validate requests, so a CAS or a
//! `max_versions` check on the writer is decided on exactly the state every reader computes.

use std::collections::BTreeMap;

use secretlog_schemas::metadata::{SecretMeta, VersionMeta};
use secretlog_schemas::{Event, MetadataUpdate, Operation, Rewrapped};
use serde::{Deserialize, Serialize};

/// Versions kept when neither the secret nor the mount sets `max_versions` (Vault's default).
pub(crate) const DEFAULT_MAX_VERSIONS: u32 = 10;

/// What applying one event to one secret changes in storage.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// The new metadata; `None` removes the secret.
    pub meta: Option<SecretMeta>,
    /// Sealed values to store, by version.
    pub put_values: Vec<(u64, Vec<u8>)>,
    /// Versions whose sealed value must be removed.
    pub remove_values: Vec<u64>,
}

/// An event that cannot be applied to the current state. Like a decode error, it halts the
/// partition: the log and this state disagree, and guessing would diverge silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event for {path} writes version {got}, but the current version is {current}")]
    VersionGap { path: String, current: u64, got: u64 },
    #[error("control operation {op} applied as a secret mutation")]
    NotASecretOperation { op: &'static str },
    #[error("restore of {path} is invalid: {reason}")]
    InvalidRestore { path: String, reason: String },
    #[error("a rewrap of {path} is applied with the values it replaces ([`apply_rewrap`]), not by `apply`")]
    RewrapWithoutValues { path: String },
    #[error("retiring key term {term}, but the active term is {active}: the active term cannot be retired")]
    RetireActiveTerm { term: u32, active: u32 },
}

/// Apply a secret event to the secret's current metadata. Pure: same inputs, same effect, on
/// every node.
pub fn apply(current: Option<&SecretMeta>, event: &Event) -> Result<Effect, ApplyError> {
    let ts = event.timestamp_ms;
    let mut meta = current.cloned();
    let mut effect = Effect::default();
    match &event.op {
        Operation::Put { version, sealed } | Operation::PutWithDefaults { version, sealed, .. } => {
            // The mount's defaults, as the writer decided them: a secret's own setting wins.
            let (mount_keep, mount_dva) = match &event.op {
                Operation::PutWithDefaults { max_versions, delete_version_after_secs, .. } => {
                    (*max_versions, *delete_version_after_secs)
                }
                _ => (0, 0),
            };
            let m = meta.get_or_insert_with(|| SecretMeta { created_ms: ts, ..Default::default() });
            if *version != m.current_version + 1 {
                return Err(ApplyError::VersionGap {
                    path: event.path.clone(),
                    current: m.current_version,
                    got: *version,
                });
            }
            let dva = if m.delete_version_after_secs > 0 { m.delete_version_after_secs } else { mount_dva };
            let deletion_ms = scheduled_deletion(dva, ts);
            m.versions.insert(*version, VersionMeta { created_ms: ts, deletion_ms, destroyed: false });
            m.current_version = *version;
            m.updated_ms = ts;
            effect.put_values.push((*version, sealed.clone()));
            // Vault's rule: once the current version reaches `keep`, the oldest version kept is
            // `current - keep + 1` (never lowered, e.g. after `max_versions` was raised), and
            // every older one is removed. `oldest_version` stays 0 until then.
            let keep = u64::from(match (m.max_versions, mount_keep) {
                (0, 0) => DEFAULT_MAX_VERSIONS,
                (0, mount) => mount,
                (own, _) => own,
            });
            if m.current_version >= keep {
                let oldest = m.current_version - keep + 1;
                if oldest > m.oldest_version {
                    let kept = m.versions.split_off(&oldest);
                    effect.remove_values.extend(std::mem::replace(&mut m.versions, kept).into_keys());
                    m.oldest_version = oldest;
                }
            }
        }
        Operation::DeleteVersions { versions } => {
            if let Some(m) = meta.as_mut() {
                for v in versions {
                    if let Some(vm) = m.versions.get_mut(v)
                        && !vm.destroyed
                        && !vm.is_deleted(ts)
                    {
                        vm.deletion_ms = Some(ts);
                    }
                }
                // As in Vault, `updated_time` tells when the secret was last written or its
                // metadata changed; deleting, undeleting and destroying versions leave it.
            }
        }
        Operation::UndeleteVersions { versions } => {
            if let Some(m) = meta.as_mut() {
                for v in versions {
                    if let Some(vm) = m.versions.get_mut(v)
                        && !vm.destroyed
                    {
                        // With `delete_version_after` set, an undeleted version is scheduled
                        // for deletion again, from now (Vault's rule).
                        vm.deletion_ms = scheduled_deletion(m.delete_version_after_secs, ts);
                    }
                }
            }
        }
        Operation::DestroyVersions { versions } => {
            if let Some(m) = meta.as_mut() {
                for v in versions {
                    if let Some(vm) = m.versions.get_mut(v)
                        && !vm.destroyed
                    {
                        vm.destroyed = true;
                        effect.remove_values.push(*v);
                    }
                }
            }
        }
        Operation::UpdateMetadata(u) => {
            let m = meta.get_or_insert_with(|| SecretMeta { created_ms: ts, ..Default::default() });
            update_metadata(m, u);
            m.updated_ms = ts;
        }
        Operation::DeleteMetadata => {
            if let Some(m) = meta.take() {
                effect.remove_values.extend(m.versions.keys().copied());
            }
        }
        Operation::RestoreSecret { metadata, values } => {
            let invalid = |reason: String| ApplyError::InvalidRestore { path: event.path.clone(), reason };
            let restored: SecretMeta = serde_json::from_slice(metadata).map_err(|e| invalid(e.to_string()))?;
            for (v, _) in values {
                match restored.versions.get(v) {
                    Some(vm) if !vm.destroyed => {}
                    _ => return Err(invalid(format!("a value for version {v}, which the metadata does not hold"))),
                }
            }
            let kept: std::collections::BTreeSet<u64> = values.iter().map(|(v, _)| *v).collect();
            if let Some(old) = meta.as_ref() {
                effect.remove_values.extend(old.versions.keys().copied().filter(|v| !kept.contains(v)));
            }
            effect.put_values.extend(values.iter().cloned());
            meta = Some(restored);
        }
        Operation::RewrapValues { .. } => {
            return Err(ApplyError::RewrapWithoutValues { path: event.path.clone() });
        }
        // Every secret operation is matched above; what is left is control state.
        op => {
            return Err(ApplyError::NotASecretOperation { op: op.name() });
        }
    }
    effect.meta = meta;
    Ok(effect)
}

/// Apply a rewrap: each entry replaces the stored value of its version only if the version is
/// still held (not destroyed, not pruned, not removed) and its stored value is still exactly the
/// one the rewrap read. `stored(version)` gives the sealed value stored now. Anything that
/// reached the secret before the rewrap wins; so does a newer term (a value the rewrap read
/// under term 1 and someone re-sealed since is left alone). Returns the values to store.
pub(crate) fn apply_rewrap<'a>(
    meta: Option<&SecretMeta>,
    values: &[Rewrapped],
    stored: impl Fn(u64) -> Option<&'a [u8]>,
) -> Vec<(u64, Vec<u8>)> {
    let Some(m) = meta else { return Vec::new() };
    values
        .iter()
        .filter(|r| m.versions.get(&r.version).is_some_and(|vm| !vm.destroyed))
        .filter(|r| stored(r.version).is_some_and(|old| r.replaces_value(old)))
        .map(|r| (r.version, r.sealed.clone()))
        .collect()
}

/// The key terms the log created and retired (`c/keyring`). Term 1 exists from the start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTerms {
    /// Terms added by `AddKeyTerm`, with when (the event's commit time) and, once retired, when.
    pub terms: BTreeMap<u32, TermInfo>,
}

/// One key term's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermInfo {
    pub added_ms: i64,
    pub retired_ms: Option<i64>,
}

impl KeyTerms {
    /// The newest term: new values are sealed under it.
    pub fn active(&self) -> u32 {
        self.terms.keys().next_back().copied().unwrap_or(1).max(1)
    }

    /// Whether `term` was retired.
    pub fn is_retired(&self, term: u32) -> bool {
        self.terms.get(&term).is_some_and(|t| t.retired_ms.is_some())
    }

    /// Retired terms.
    pub fn retired(&self) -> impl Iterator<Item = u32> + '_ {
        self.terms.iter().filter(|(_, t)| t.retired_ms.is_some()).map(|(t, _)| *t)
    }

    /// Apply `AddKeyTerm` or `RetireKeyTerm` at `ts`; whether anything changed. Adding a term no
    /// newer than the active one changes nothing (two rotations racing add it once); retiring
    /// the active term is refused (the writer never appends it, so the log and this state
    /// disagree and the partition halts).
    pub fn apply(&mut self, op: &Operation, ts: i64) -> Result<bool, ApplyError> {
        match op {
            Operation::AddKeyTerm { term } if *term > self.active() => {
                self.terms.insert(*term, TermInfo { added_ms: ts, retired_ms: None });
                Ok(true)
            }
            Operation::RetireKeyTerm { term } if *term >= self.active() => {
                Err(ApplyError::RetireActiveTerm { term: *term, active: self.active() })
            }
            Operation::RetireKeyTerm { term } if *term > 0 && !self.is_retired(*term) => {
                let info = self.terms.entry(*term).or_default();
                info.retired_ms = Some(ts);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// When a version written (or undeleted) at `ts` is to be soft-deleted: `delete_version_after`
/// later, or never when that is 0.
fn scheduled_deletion(delete_version_after_secs: u64, ts: i64) -> Option<i64> {
    (delete_version_after_secs > 0).then(|| ts.saturating_add((delete_version_after_secs as i64).saturating_mul(1000)))
}

fn update_metadata(m: &mut SecretMeta, u: &MetadataUpdate) {
    if let Some(v) = u.max_versions {
        m.max_versions = v;
    }
    if let Some(v) = u.cas_required {
        m.cas_required = v;
    }
    if let Some(v) = u.delete_version_after_secs {
        m.delete_version_after_secs = v;
    }
    if let Some(cm) = &u.custom_metadata {
        // An empty map clears it; Vault shows no custom metadata as `null`.
        m.custom_metadata = (!cm.is_empty()).then(|| cm.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, op: Operation) -> Event {
        Event {
            event_id: [0; 16],
            timestamp_ms: ts,
            writer_epoch: 1,
            revision: None,
            mount: "secret".into(),
            path: "p".into(),
            op,
        }
    }
    fn put(v: u64) -> Operation {
        Operation::Put { version: v, sealed: vec![v as u8] }
    }
    fn run(ops: Vec<Operation>) -> (Option<SecretMeta>, Vec<Effect>) {
        let mut meta = None;
        let mut effects = vec![];
        for (i, op) in ops.into_iter().enumerate() {
            let e = apply(meta.as_ref(), &ev(1000 * (i as i64 + 1), op)).unwrap();
            meta = e.meta.clone();
            effects.push(e);
        }
        (meta, effects)
    }

    fn rewrapped(version: u64, old: &[u8], new: u8) -> Rewrapped {
        Rewrapped { version, replaces: Rewrapped::digest(old), sealed: vec![new] }
    }

    #[test]
    fn a_rewrap_replaces_only_the_exact_value_it_read() {
        let (m, _) = run(vec![put(1), put(2), put(3), Operation::DestroyVersions { versions: vec![2] }]);
        let stored = BTreeMap::from([(1u64, vec![1u8]), (3, vec![9])]);
        let get = |v: u64| stored.get(&v).map(Vec::as_slice);
        let values = vec![
            rewrapped(1, &[1], 0xA1), // still exactly what was read: replaced
            rewrapped(2, &[2], 0xA2), // destroyed since: the destroy wins
            rewrapped(3, &[3], 0xA3), // changed since (a restore, a newer seal): the change wins
            rewrapped(7, &[7], 0xA7), // never existed
        ];
        assert_eq!(apply_rewrap(m.as_ref(), &values, get), vec![(1, vec![0xA1])]);
        assert!(apply_rewrap(None, &values, get).is_empty(), "a removed secret is not brought back");
        // `apply` alone cannot decide it.
        let e = ev(5, Operation::RewrapValues { values });
        assert!(matches!(apply(m.as_ref(), &e), Err(ApplyError::RewrapWithoutValues { .. })));
    }

    #[test]
    fn key_terms_are_added_forward_and_retired_below_the_active_term() {
        let mut k = KeyTerms::default();
        assert_eq!(k.active(), 1);
        assert_eq!(
            k.apply(&Operation::RetireKeyTerm { term: 1 }, 5),
            Err(ApplyError::RetireActiveTerm { term: 1, active: 1 })
        );
        assert!(k.apply(&Operation::AddKeyTerm { term: 2 }, 10).unwrap());
        assert!(!k.apply(&Operation::AddKeyTerm { term: 2 }, 11).unwrap(), "added once");
        assert!(!k.apply(&Operation::AddKeyTerm { term: 1 }, 12).unwrap(), "never backwards");
        assert_eq!(k.active(), 2);
        assert!(k.apply(&Operation::RetireKeyTerm { term: 1 }, 20).unwrap());
        assert!(!k.apply(&Operation::RetireKeyTerm { term: 1 }, 21).unwrap(), "retired once");
        assert!(k.is_retired(1) && !k.is_retired(2));
        assert_eq!(k.terms[&1], TermInfo { added_ms: 0, retired_ms: Some(20) });
        assert_eq!(k.terms[&2], TermInfo { added_ms: 10, retired_ms: None });
        assert!(k.apply(&Operation::RetireKeyTerm { term: 2 }, 30).is_err());
    }

    #[test]
    fn a_restore_replaces_the_whole_state_and_drops_values_it_does_not_hold() {
        let (now, _) = run(vec![put(1), put(2), put(3)]);
        let (then, _) = run(vec![put(1)]);
        let then = then.unwrap();
        let restore =
            Operation::RestoreSecret { metadata: serde_json::to_vec(&then).unwrap(), values: vec![(1, vec![1])] };
        let e = apply(now.as_ref(), &ev(9000, restore)).unwrap();
        assert_eq!(e.meta.as_ref(), Some(&then));
        assert_eq!(e.put_values, vec![(1, vec![1])]);
        assert_eq!(e.remove_values, vec![2, 3]);
        // After it, writing goes on from the restored version.
        let next = apply(e.meta.as_ref(), &ev(10_000, put(2))).unwrap();
        assert_eq!(next.meta.unwrap().current_version, 2);
    }

    #[test]
    fn a_restore_with_a_value_the_metadata_does_not_hold_is_refused() {
        let (then, _) = run(vec![put(1)]);
        let restore = Operation::RestoreSecret {
            metadata: serde_json::to_vec(&then.unwrap()).unwrap(),
            values: vec![(2, vec![2])],
        };
        assert!(matches!(apply(None, &ev(1, restore)), Err(ApplyError::InvalidRestore { .. })));
        let garbage = Operation::RestoreSecret { metadata: b"{".to_vec(), values: vec![] };
        assert!(matches!(apply(None, &ev(1, garbage)), Err(ApplyError::InvalidRestore { .. })));
    }

    #[test]
    fn puts_create_consecutive_versions() {
        let (m, fx) = run(vec![put(1), put(2)]);
        let m = m.unwrap();
        assert_eq!(m.current_version, 2);
        assert_eq!(m.created_ms, 1000);
        assert_eq!(m.updated_ms, 2000);
        assert_eq!(fx[1].put_values, vec![(2, vec![2])]);
    }

    #[test]
    fn a_version_gap_is_refused() {
        let (m, _) = run(vec![put(1)]);
        let err = apply(m.as_ref(), &ev(5, put(3))).unwrap_err();
        assert_eq!(err, ApplyError::VersionGap { path: "p".into(), current: 1, got: 3 });
        assert!(apply(None, &ev(5, put(2))).is_err());
    }

    #[test]
    fn max_versions_prunes_oldest() {
        let update = Operation::UpdateMetadata(MetadataUpdate { max_versions: Some(2), ..Default::default() });
        let (m, fx) = run(vec![update, put(1), put(2), put(3)]);
        let m = m.unwrap();
        assert_eq!(m.versions.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(m.oldest_version, 2);
        assert_eq!(fx[3].remove_values, vec![1]);
    }

    #[test]
    fn oldest_version_follows_vaults_rule() {
        let max = |n| Operation::UpdateMetadata(MetadataUpdate { max_versions: Some(n), ..Default::default() });
        let oldest = |ops| run(ops).0.map(|m| (m.oldest_version, m.versions.keys().copied().collect::<Vec<_>>()));
        assert_eq!(oldest(vec![max(2), put(1)]), Some((0, vec![1])));
        assert_eq!(oldest(vec![max(2), put(1), put(2)]), Some((1, vec![1, 2])), "set once current reaches max");
        assert_eq!(oldest(vec![max(1), put(1)]), Some((1, vec![1])));
        // Lowered after five writes: the next write keeps only the last two.
        let five: Vec<_> = (1..=5).map(put).chain([max(2), put(6)]).collect();
        assert_eq!(oldest(five), Some((5, vec![5, 6])));
        // Raised again: never lowered.
        assert_eq!(oldest(vec![max(1), put(1), put(2), max(5), put(3), put(4), put(5)]), Some((2, vec![2, 3, 4, 5])));
    }

    #[test]
    fn default_max_versions_is_ten() {
        let (m, _) = run((1..=12).map(put).collect());
        let m = m.unwrap();
        assert_eq!(m.versions.len(), 10);
        assert_eq!(m.oldest_version, 3);
    }

    #[test]
    fn delete_undelete_destroy() {
        let (m, fx) = run(vec![
            put(1),
            put(2),
            Operation::DeleteVersions { versions: vec![1, 2, 9] },
            Operation::UndeleteVersions { versions: vec![2] },
            Operation::DestroyVersions { versions: vec![1] },
            Operation::UndeleteVersions { versions: vec![1] },
        ]);
        let m = m.unwrap();
        assert!(m.versions[&1].destroyed);
        assert_eq!(m.versions[&1].deletion_ms, Some(3000), "destroyed versions cannot be undeleted");
        assert!(m.versions[&2].is_live(i64::MAX));
        assert_eq!(fx[4].remove_values, vec![1]);
    }

    #[test]
    fn version_operations_leave_updated_time() {
        let (m, _) = run(vec![
            put(1),
            Operation::DeleteVersions { versions: vec![1] },
            Operation::UndeleteVersions { versions: vec![1] },
            Operation::DestroyVersions { versions: vec![1] },
        ]);
        assert_eq!(m.unwrap().updated_ms, 1000, "only writes and metadata updates move updated_time");
    }

    #[test]
    fn undelete_schedules_deletion_again() {
        let update =
            Operation::UpdateMetadata(MetadataUpdate { delete_version_after_secs: Some(60), ..Default::default() });
        let (m, _) = run(vec![
            update,
            put(1),
            Operation::DeleteVersions { versions: vec![1] },
            Operation::UndeleteVersions { versions: vec![1] },
        ]);
        assert_eq!(m.unwrap().versions[&1].deletion_ms, Some(4000 + 60_000), "scheduled from the undelete");
    }

    #[test]
    fn empty_custom_metadata_clears_it() {
        let set = Operation::UpdateMetadata(MetadataUpdate {
            custom_metadata: Some(BTreeMap::from([("k".into(), "v".into())])),
            ..Default::default()
        });
        let clear =
            Operation::UpdateMetadata(MetadataUpdate { custom_metadata: Some(BTreeMap::new()), ..Default::default() });
        let (m, _) = run(vec![set, clear]);
        assert_eq!(m.unwrap().custom_metadata, None);
    }

    #[test]
    fn delete_version_after_schedules_deletion() {
        let update =
            Operation::UpdateMetadata(MetadataUpdate { delete_version_after_secs: Some(60), ..Default::default() });
        let (m, _) = run(vec![update, put(1)]);
        let v = &m.unwrap().versions[&1];
        assert_eq!(v.deletion_ms, Some(2000 + 60_000));
        assert!(v.is_live(2000 + 59_999));
        assert!(!v.is_live(2000 + 60_000));
    }

    #[test]
    fn delete_metadata_removes_everything() {
        let (m, fx) = run(vec![put(1), put(2), Operation::DeleteMetadata]);
        assert!(m.is_none());
        assert_eq!(fx[2].remove_values, vec![1, 2]);
        // And a new write starts again at version 1.
        assert!(apply(None, &ev(9, put(1))).is_ok());
    }

    #[test]
    fn metadata_update_keeps_unset_fields() {
        let a = Operation::UpdateMetadata(MetadataUpdate {
            cas_required: Some(true),
            custom_metadata: Some(BTreeMap::from([("k".into(), "v".into())])),
            ..Default::default()
        });
        let b = Operation::UpdateMetadata(MetadataUpdate { max_versions: Some(3), ..Default::default() });
        let (m, _) = run(vec![a, b]);
        let m = m.unwrap();
        assert!(m.cas_required);
        assert_eq!(m.max_versions, 3);
        assert_eq!(m.custom_metadata.unwrap()["k"], "v");
        assert_eq!(m.current_version, 0);
    }
}
