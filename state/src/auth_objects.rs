//! Applying auth-method events: `PutAuthObject` and `DeleteAuthObject` (mounts of `sys/auth`,
//! AppRole roles and secret ids, userpass users), and the accessor index of tokens.
//!
//! What a node derives here is derived identically everywhere, from the event and the state its
//! own partition built: every object of an auth mount is keyed by the mount's one control object
//! (`auth/<mount>`), so the mount, its roles, their role-id index and their secret ids change in
//! one order on every node. A token's accessor index entry lives and dies with the token's own
//! record (both keyed by `token/<accessor>`).
//!
//! Refusals are deterministic skips, as for every record (see the materializer): an object
//! written into a mount that is not (or no longer) enabled, a secret id for a role that is gone,
//! or a conditional change (`replaces`) whose stored record is no longer the one decided against.

use secretlog_schemas::auth::{AppRoleRecord, AuthObjectKind, control_name};
use secretlog_schemas::{Event, Operation, Rewrapped};
use serde::Deserialize;

use crate::error::NodeError;
use crate::materializer::{Refusal, Staging};
use crate::store::{Store, keys};

/// The storage key of an auth object.
pub(crate) fn object_key(mount: &str, kind: AuthObjectKind, name: &str) -> Vec<u8> {
    match kind {
        AuthObjectKind::Mount => keys::auth_mount(mount),
        _ => keys::auth_object(mount, kind.name(), name),
    }
}

/// The role-id index entry of an AppRole role id.
pub fn role_id_key(mount: &str, role_id: &str) -> Vec<u8> {
    keys::auth_object(mount, "role-id", role_id)
}

/// Stage an auth-object event, or say why every node refuses it.
pub async fn stage(staging: &mut Staging, store: &Store, event: &Event) -> Result<Option<Refusal>, NodeError> {
    let (mount, kind, name, replaces, record) = match &event.op {
        Operation::PutAuthObject { mount, kind, name, record, replaces } => {
            (mount, *kind, name, replaces, Some(record))
        }
        Operation::DeleteAuthObject { mount, kind, name, replaces } => (mount, *kind, name, replaces, None),
        _ => return Ok(None),
    };
    let refuse =
        |why: &str| Ok(Some(Refusal::Conflict(format!("{} {name:?} of auth mount {mount:?}: {why}", kind.name()))));
    if event.path != control_name(mount) {
        // Keyed by another control object, it would be ordered apart from the mount's history.
        return refuse("the event is not keyed by its auth mount");
    }
    if kind != AuthObjectKind::Mount && staging.stored_value(store, &keys::auth_mount(mount)).await?.is_none() {
        return refuse("the auth mount is not enabled");
    }
    if kind == AuthObjectKind::SecretId && record.is_some() {
        let role = name.split_once('/').map_or("", |(role, _)| role);
        if staging.stored_value(store, &object_key(mount, AuthObjectKind::AppRoleRole, role)).await?.is_none() {
            return refuse("its role does not exist");
        }
    }
    let key = object_key(mount, kind, name);
    let stored = staging.stored_value(store, &key).await?;
    if let Some(expected) = replaces {
        let matches = stored.as_deref().is_some_and(|s| Rewrapped::digest(s) == *expected);
        if !matches {
            return refuse("it changed since the write was decided");
        }
    }
    match (kind, record) {
        (AuthObjectKind::AppRoleRole, _) => {
            let old_id =
                stored.as_deref().and_then(|s| serde_json::from_slice::<AppRoleRecord>(s).ok()).map(|r| r.role_id);
            let new_id = record.and_then(|r| serde_json::from_slice::<AppRoleRecord>(r).ok()).map(|r| r.role_id);
            if let Some(old) = old_id.filter(|o| Some(o) != new_id.as_ref()) {
                // Only this role's own entry: another role may hold the id now.
                let index = role_id_key(mount, &old);
                if staging.stored_value(store, &index).await?.as_deref() == Some(name.as_bytes()) {
                    staging.batch.writes.insert(index, None);
                }
            }
            if let Some(new) = new_id {
                staging.batch.writes.insert(role_id_key(mount, &new), Some(name.as_bytes().to_vec()));
            }
            if record.is_none() {
                remove_prefix(
                    staging,
                    store,
                    &keys::auth_object(mount, AuthObjectKind::SecretId.name(), &format!("{name}/")),
                )
                .await?;
            }
        }
        (AuthObjectKind::Mount, None) => remove_prefix(staging, store, &keys::auth_objects(mount)).await?,
        _ => {}
    }
    staging.batch.writes.insert(key, record.cloned());
    tracing::debug!(mount, kind = kind.name(), name, removed = record.is_none(), "auth object applied");
    Ok(None)
}

/// Remove every key under `prefix`, stored or staged in this batch.
async fn remove_prefix(staging: &mut Staging, store: &Store, prefix: &[u8]) -> Result<(), NodeError> {
    let mut gone: Vec<Vec<u8>> = store.scan(prefix).await?.into_iter().map(|(k, _)| k).collect();
    gone.extend(
        staging
            .batch
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone()),
    );
    for k in gone {
        staging.batch.writes.insert(k, None);
    }
    Ok(())
}

/// The part of a token record the accessor index needs.
#[derive(Deserialize)]
struct Accessor {
    #[serde(default)]
    accessor: String,
}

fn accessor_of(record: &[u8]) -> Option<String> {
    serde_json::from_slice::<Accessor>(record).ok().map(|a| a.accessor).filter(|a| !a.is_empty())
}

/// The part of a token record a tidy needs.
#[derive(Deserialize)]
struct Expiry {
    #[serde(default)]
    expire_ms: Option<i64>,
}

/// Whether a stored token `record` had expired by `at_ms` (a tidy event's timestamp). A token
/// without an expiry, an unreadable record and no record at all are not expired: a tidy of them
/// is refused.
pub(crate) fn expired_by(record: Option<&[u8]>, at_ms: i64) -> bool {
    record.and_then(|r| serde_json::from_slice::<Expiry>(r).ok()).and_then(|e| e.expire_ms).is_some_and(|e| e <= at_ms)
}

/// Keep `c/accessor/<accessor>` with the token it names: set by a `PutToken` (`record`), removed
/// by a `RevokeToken` (`None`) along with the token.
pub(crate) async fn index_accessor(
    staging: &mut Staging,
    store: &Store,
    token_hash: &[u8; 32],
    record: Option<&[u8]>,
) -> Result<(), NodeError> {
    match record {
        Some(r) => {
            if let Some(acc) = accessor_of(r) {
                staging.batch.writes.insert(keys::accessor(&acc), Some(token_hash.to_vec()));
            }
        }
        None => {
            let stored = staging.stored_value(store, &keys::token(token_hash)).await?;
            if let Some(acc) = stored.as_deref().and_then(accessor_of) {
                staging.batch.writes.insert(keys::accessor(&acc), None);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use secretlog_schemas::{Keyring, RootKey, encode_event};

    use super::*;
    use crate::store::PartitionState;

    async fn test_store(dir: &std::path::Path) -> Arc<Store> {
        let cfg =
            crate::store::StoreConfig { dir: dir.to_path_buf(), cache_memory_bytes: 1 << 20, cache_disk_bytes: 0 };
        Store::open(&cfg).await.unwrap()
    }

    /// Stage one control event under `path` in its own batch and commit it: the refusal, if any.
    async fn apply(
        store: &Store,
        ring: &Keyring,
        st: &mut PartitionState,
        path: &str,
        op: Operation,
    ) -> Option<Refusal> {
        let e = Event {
            event_id: [3; 16],
            timestamp_ms: 1000,
            writer_epoch: 1,
            revision: None,
            mount: String::new(),
            path: path.into(),
            op,
        };
        let mut staging = Staging::new(None);
        let staged = staging
            .stage(store, ring, 0, st.next_offset, Some(&e.record_key()), &encode_event(ring, &e), st)
            .await
            .unwrap();
        st.next_offset += 1;
        staging.batch.partitions.insert(0, *st);
        store.commit(staging.batch).await.unwrap();
        staged.refused
    }

    fn put(kind: AuthObjectKind, name: &str, record: &[u8], replaces: Option<[u8; 32]>) -> Operation {
        Operation::PutAuthObject {
            mount: "approle/".into(),
            kind,
            name: name.into(),
            record: record.to_vec(),
            replaces,
        }
    }

    fn del(kind: AuthObjectKind, name: &str, replaces: Option<[u8; 32]>) -> Operation {
        Operation::DeleteAuthObject { mount: "approle/".into(), kind, name: name.into(), replaces }
    }

    fn role(id: &str) -> Vec<u8> {
        serde_json::to_vec(&AppRoleRecord { role_id: id.into(), bind_secret_id: true, ..Default::default() }).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_objects_need_their_mount_and_role_and_go_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let ring = Keyring::from_root(&RootKey::from_bytes([7; 32]));
        let mut st = PartitionState::default();
        let ctl = control_name("approle/");
        use AuthObjectKind::*;

        // Nothing goes into a mount that is not enabled, nor under another control object.
        assert!(apply(&store, &ring, &mut st, &ctl, put(AppRoleRole, "web", &role("r1"), None)).await.is_some());
        assert!(apply(&store, &ring, &mut st, "auth/other/", put(Mount, "", b"{}", None)).await.is_some());
        assert_eq!(apply(&store, &ring, &mut st, &ctl, put(Mount, "", b"{}", None)).await, None);
        assert_eq!(apply(&store, &ring, &mut st, &ctl, put(AppRoleRole, "web", &role("r1"), None)).await, None);
        assert_eq!(store.get_raw(&role_id_key("approle/", "r1")).await.unwrap().as_deref(), Some(&b"web"[..]));
        // A secret id needs its role.
        assert!(apply(&store, &ring, &mut st, &ctl, put(SecretId, "api/aa", b"{\"n\":1}", None)).await.is_some());
        assert_eq!(apply(&store, &ring, &mut st, &ctl, put(SecretId, "web/aa", b"{\"n\":2}", None)).await, None);

        // A conditional change applies only over the record it was decided against.
        let stale = Some(Rewrapped::digest(b"{\"n\":1}"));
        assert!(apply(&store, &ring, &mut st, &ctl, put(SecretId, "web/aa", b"{\"n\":1}", stale)).await.is_some());
        let current = Some(Rewrapped::digest(b"{\"n\":2}"));
        assert_eq!(apply(&store, &ring, &mut st, &ctl, put(SecretId, "web/aa", b"{\"n\":1}", current)).await, None);
        assert!(apply(&store, &ring, &mut st, &ctl, del(SecretId, "web/aa", current)).await.is_some(), "taken already");

        // A new role id moves the index; the role's delete takes its secret ids and its index.
        assert_eq!(apply(&store, &ring, &mut st, &ctl, put(AppRoleRole, "web", &role("r2"), None)).await, None);
        assert_eq!(store.get_raw(&role_id_key("approle/", "r1")).await.unwrap(), None);
        assert_eq!(apply(&store, &ring, &mut st, &ctl, del(AppRoleRole, "web", None)).await, None);
        assert_eq!(store.get_raw(&role_id_key("approle/", "r2")).await.unwrap(), None);
        assert!(store.scan(&keys::auth_objects("approle/")).await.unwrap().is_empty());

        // Disabling the mount removes everything under it, and nothing of a mount beside it.
        assert_eq!(apply(&store, &ring, &mut st, &ctl, put(AppRoleRole, "db", &role("r3"), None)).await, None);
        let other = Operation::PutAuthObject {
            mount: "approle2/".into(),
            kind: Mount,
            name: String::new(),
            record: b"{}".to_vec(),
            replaces: None,
        };
        assert_eq!(apply(&store, &ring, &mut st, &control_name("approle2/"), other).await, None);
        assert_eq!(apply(&store, &ring, &mut st, &ctl, del(Mount, "", None)).await, None);
        assert!(store.scan(&keys::auth_objects("approle/")).await.unwrap().is_empty());
        assert_eq!(store.get_raw(&keys::auth_mount("approle/")).await.unwrap(), None);
        assert!(store.get_raw(&keys::auth_mount("approle2/")).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_accessor_index_lives_and_dies_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let ring = Keyring::from_root(&RootKey::from_bytes([8; 32]));
        let mut st = PartitionState::default();
        let hash = [9u8; 32];
        let record = br#"{"accessor":"acc1","policies":[]}"#.to_vec();
        assert_eq!(
            apply(&store, &ring, &mut st, "token/acc1", Operation::PutToken { token_hash: hash, record }).await,
            None
        );
        assert_eq!(store.get_raw(&keys::accessor("acc1")).await.unwrap(), Some(hash.to_vec()));
        assert_eq!(
            apply(&store, &ring, &mut st, "token/acc1", Operation::RevokeToken { token_hash: hash }).await,
            None
        );
        assert_eq!(store.get_raw(&keys::accessor("acc1")).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tidy_drops_an_expired_token_whole_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let ring = Keyring::from_root(&RootKey::from_bytes([8; 32]));
        let mut st = PartitionState::default();
        // `apply` stamps its events at 1000 ms: the first token expired before, the second after.
        let (dead, live) = ([1u8; 32], [2u8; 32]);
        let dead_rec = br#"{"accessor":"dead","policies":[],"expire_ms":999}"#.to_vec();
        let live_rec = br#"{"accessor":"live","policies":[],"expire_ms":1001}"#.to_vec();
        let forever = br#"{"accessor":"forever","policies":[]}"#.to_vec();
        for (name, hash, record) in
            [("token/dead", dead, dead_rec), ("token/live", live, live_rec), ("token/forever", [3; 32], forever)]
        {
            assert_eq!(
                apply(&store, &ring, &mut st, name, Operation::PutToken { token_hash: hash, record }).await,
                None
            );
        }
        let rev = |name: &str| keys::revision(&secretlog_schemas::topic::control_key(name));
        assert!(store.get_raw(&rev("token/dead")).await.unwrap().is_some());

        assert_eq!(apply(&store, &ring, &mut st, "token/dead", Operation::TidyToken { token_hash: dead }).await, None);
        assert_eq!(store.get_raw(&keys::token(&dead)).await.unwrap(), None);
        assert_eq!(store.get_raw(&keys::accessor("dead")).await.unwrap(), None);
        assert_eq!(store.get_raw(&rev("token/dead")).await.unwrap(), None, "nothing of the token is left");

        for (name, hash) in [("token/live", live), ("token/forever", [3; 32]), ("token/gone", [4; 32])] {
            let refused = apply(&store, &ring, &mut st, name, Operation::TidyToken { token_hash: hash }).await;
            assert!(matches!(refused, Some(Refusal::Conflict(_))), "{name}: {refused:?}");
        }
        assert!(store.get_raw(&keys::token(&live)).await.unwrap().is_some());
        assert!(store.get_raw(&keys::accessor("live")).await.unwrap().is_some());
        assert!(store.get_raw(&keys::accessor("forever")).await.unwrap().is_some());
    }

    #[test]
    fn expiry_is_judged_at_the_events_time_only() {
        assert!(expired_by(Some(br#"{"expire_ms":10}"#), 10));
        assert!(!expired_by(Some(br#"{"expire_ms":11}"#), 10));
        assert!(!expired_by(Some(br#"{"expire_ms":null}"#), i64::MAX));
        assert!(!expired_by(Some(b"not json"), i64::MAX));
        assert!(!expired_by(None, i64::MAX));
    }
}
