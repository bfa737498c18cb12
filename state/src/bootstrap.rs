//! Snapshots in object storage, as readers use them: find the newest, verify it file by file
//! against its manifest, and install it into an empty store — so a new reader starts from a
//! snapshot and consumes only the tail of the log, even when Kafka's retention has already
//! deleted the records before it.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use secretlog_schemas::archive::{Manifest, SnapshotData, check_format, decode_snapshot, verify_file};
use secretlog_schemas::metadata::SecretMeta;

use crate::error::NodeError;
use crate::objects::Objects;
use crate::store::{ApplyBatch, PartitionState, Store, keys};

fn storage(e: object_store::Error) -> NodeError {
    NodeError::Objects(e)
}

/// Every snapshot's manifest, oldest first. Directories without a manifest (an interrupted
/// snapshot) are not snapshots.
pub async fn list_snapshots(objects: &Objects) -> Result<Vec<Manifest>, NodeError> {
    let listed = objects.store.list_with_delimiter(Some(&objects.path("snapshots"))).await.map_err(storage)?;
    let mut out = Vec::new();
    for dir in listed.common_prefixes {
        let Some(id) = dir.filename() else { continue };
        match read_manifest(objects, id).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => {}
            Err(e) => tracing::warn!(snapshot = id, error = %e, "unreadable manifest"),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The manifest of snapshot `id`, if it is complete.
pub(crate) async fn read_manifest(objects: &Objects, id: &str) -> Result<Option<Manifest>, NodeError> {
    match objects.store.get(&objects.path(&format!("snapshots/{id}/manifest.json"))).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(storage)?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| NodeError::Corrupt { key: format!("snapshots/{id}/manifest.json"), reason: e.to_string() })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(storage(e)),
    }
}

/// Fetch and verify every file of a snapshot; a corrupted or missing file is named, with the
/// expected and actual checksum.
pub async fn fetch_snapshot(objects: &Objects, m: &Manifest) -> Result<SnapshotData, NodeError> {
    check_format(m).map_err(|e| NodeError::Corrupt { key: m.id.clone(), reason: e.to_string() })?;
    let mut files = BTreeMap::new();
    for f in &m.files {
        let path = objects.path(&format!("snapshots/{}/{}", m.id, f.name));
        let bytes = objects
            .store
            .get(&path)
            .await
            .map_err(|e| NodeError::Corrupt { key: path.to_string(), reason: format!("cannot read: {e}") })?
            .bytes()
            .await
            .map_err(storage)?;
        verify_file(f, &bytes).map_err(|e| NodeError::Corrupt { key: path.to_string(), reason: e.to_string() })?;
        files.insert(f.name.clone(), bytes.to_vec());
    }
    decode_snapshot(&files).map_err(|e| NodeError::Corrupt { key: m.id.clone(), reason: e.to_string() })
}

/// Write a snapshot's state and positions into `store` in one batch.
pub async fn install(store: &Store, m: &Manifest, data: SnapshotData) -> Result<u64, NodeError> {
    let mut batch = ApplyBatch::default();
    for (mount, path, meta) in data.secrets {
        // As this release stores it (a snapshot may come from an earlier one).
        let stored = SecretMeta::canonical(meta.as_bytes()).unwrap_or_else(|| meta.into_bytes());
        batch.writes.insert(keys::meta(&mount, &path), Some(stored));
    }
    for (mount, path, version, sealed) in data.values {
        batch.writes.insert(keys::value(&mount, &path, version), Some(sealed));
    }
    for (k, v) in data.control {
        batch.writes.insert(k, Some(v));
    }
    let n = batch.writes.len() as u64;
    for (p, pos) in &m.partitions {
        batch.partitions.insert(*p, PartitionState { next_offset: pos.next_offset, max_epoch: pos.max_epoch });
    }
    store.commit(batch).await?;
    Ok(n)
}

/// Bootstrap an empty store from the newest snapshot of `topic` on Kafka cluster `cluster`, if
/// there is one (a snapshot's offsets mean nothing on another cluster). Returns its id.
pub async fn bootstrap_if_empty(
    store: &Store,
    objects: &Objects,
    cluster: &str,
    topic: &str,
) -> Result<Option<String>, NodeError> {
    if !store.partitions().await?.is_empty() {
        return Ok(None);
    }
    let all = list_snapshots(objects).await?;
    let snapshots: Vec<Manifest> = all.iter().filter(|m| m.topic == topic && m.cluster == cluster).cloned().collect();
    if snapshots.is_empty() && !all.is_empty() {
        tracing::warn!(
            cluster,
            topic,
            found = all.len(),
            "no snapshot of this cluster and topic; replaying the log from its start"
        );
    }
    let Some(m) = snapshots.last() else { return Ok(None) };
    let started = std::time::Instant::now();
    let data = fetch_snapshot(objects, m).await?;
    let n = install(store, m, data).await?;
    tracing::info!(snapshot = %m.id, records = n, took_ms = started.elapsed().as_millis() as u64, "bootstrapped from snapshot");
    Ok(Some(m.id.clone()))
}

/// Delete every object under `rel` (used by retention).
pub async fn delete_prefix(objects: &Objects, rel: &str) -> Result<(), NodeError> {
    let metas: Vec<_> =
        objects.store.list(Some(&objects.path(rel))).map_ok(|m| m.location).try_collect().await.map_err(storage)?;
    for p in metas {
        objects.store.delete(&p).await.map_err(storage)?;
    }
    Ok(())
}
