//! Snapshots: the replicator's own materialized state, exported from one SlateDB snapshot (so
//! state and partition offsets agree exactly), written as Arrow files plus a manifest, the
//! manifest last. Retention keeps the newest N and everything younger than T, and never the
//! last one.

use std::time::Duration;

use object_store::{ObjectStoreExt, PutPayload};
use secretlog_schemas::archive::{Manifest, PartitionPosition, SNAPSHOT_FORMAT_VERSION, encode_snapshot};
use secretlog_state::bootstrap::{delete_prefix, list_snapshots};
use secretlog_state::materializer::now_ms;
use secretlog_state::objects::Objects;
use secretlog_state::store::Store;

use crate::error::ReplicatorError;

/// Write a snapshot of `store` now.
pub async fn create(store: &Store, objects: &Objects, cluster: &str, topic: &str) -> Result<Manifest, ReplicatorError> {
    let started = std::time::Instant::now();
    let (data, partitions) = store.export().await?;
    let (secrets, values) = (data.secrets.len() as u64, data.values.len() as u64);
    let (files, entries, key_terms) = tokio::task::spawn_blocking(move || encode_snapshot(&data)).await??;
    let created_ms = now_ms();
    let digest = entries.iter().map(|e| &e.sha256[..8]).collect::<String>();
    let id = format!("{created_ms:013}-{}", &digest[..8]);
    for (name, bytes) in files {
        objects.store.put(&objects.path(&format!("snapshots/{id}/{name}")), PutPayload::from(bytes)).await?;
    }
    let manifest = Manifest {
        format_version: SNAPSHOT_FORMAT_VERSION,
        producer_version: concat!("secretlog ", env!("CARGO_PKG_VERSION")).to_string(),
        id: id.clone(),
        created_ms,
        cluster: cluster.to_string(),
        topic: topic.to_string(),
        partitions: partitions
            .iter()
            .map(|(p, s)| (*p, PartitionPosition { next_offset: s.next_offset, max_epoch: s.max_epoch }))
            .collect(),
        files: entries,
        key_terms,
        secrets,
        values,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(ReplicatorError::Manifest)?;
    objects.store.put(&objects.path(&format!("snapshots/{id}/manifest.json")), PutPayload::from(json)).await?;
    let took = started.elapsed();
    metrics::histogram!("secretlog_snapshot_duration_seconds").record(took.as_secs_f64());
    publish_created(created_ms);
    tracing::info!(snapshot = %id, secrets, values, took_ms = took.as_millis() as u64, "snapshot written");
    Ok(manifest)
}

/// Publish the newest restore point's creation time (`secretlog_snapshot_last_created_timestamp_seconds`).
fn publish_created(created_ms: i64) {
    metrics::gauge!("secretlog_snapshot_last_created_timestamp_seconds").set(created_ms as f64 / 1000.0);
}

/// Publish the creation time of the newest snapshot of `topic` already in object storage, and
/// return it. Run at start, so the snapshot-age alerts see the restore point that exists rather
/// than nothing until this process writes one.
pub async fn publish_newest(objects: &Objects, topic: &str) -> Result<Option<i64>, ReplicatorError> {
    let newest = list_snapshots(objects).await?.iter().filter(|m| m.topic == topic).map(|m| m.created_ms).max();
    if let Some(ms) = newest {
        publish_created(ms);
    }
    Ok(newest)
}

/// Which snapshots retention removes: all but the newest `keep` and those younger than `max_age`;
/// never the newest one. Input oldest first.
pub fn expired(snapshots: &[Manifest], keep: usize, max_age: Duration, now_ms: i64) -> Vec<String> {
    let n = snapshots.len();
    snapshots
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            let among_newest = n - i <= keep.max(1);
            let young = now_ms - m.created_ms < max_age.as_millis() as i64;
            !among_newest && !young
        })
        .map(|(_, m)| m.id.clone())
        .collect()
}

/// Apply retention. The manifest goes first, so a half-deleted snapshot is never taken for a
/// complete one.
pub async fn apply_retention(
    objects: &Objects,
    keep: usize,
    max_age: Duration,
) -> Result<Vec<String>, ReplicatorError> {
    let all = list_snapshots(objects).await?;
    let gone = expired(&all, keep, max_age, now_ms());
    for id in &gone {
        objects.store.delete(&objects.path(&format!("snapshots/{id}/manifest.json"))).await?;
        delete_prefix(objects, &format!("snapshots/{id}")).await?;
        tracing::info!(snapshot = %id, "snapshot expired by retention");
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn m(id: &str, created_ms: i64) -> Manifest {
        Manifest {
            format_version: 1,
            producer_version: String::new(),
            id: id.into(),
            created_ms,
            cluster: String::new(),
            topic: String::new(),
            partitions: BTreeMap::new(),
            files: vec![],
            key_terms: BTreeMap::new(),
            secrets: 0,
            values: 0,
        }
    }

    #[test]
    fn retention_keeps_newest_n_and_young_ones_and_never_the_last() {
        let day = 86_400_000;
        let now = 10 * day;
        let snaps: Vec<Manifest> = (0..8).map(|i| m(&format!("s{i}"), i * day)).collect();
        // The 3 newest (s5-s7) stay, and so does everything younger than 4 days (s6, s7).
        assert_eq!(
            expired(&snaps, 3, Duration::from_millis(4 * day as u64 + 1), now),
            vec!["s0", "s1", "s2", "s3", "s4"]
        );
        assert_eq!(expired(&snaps, 0, Duration::ZERO, now).len(), 7, "the newest always stays");
        assert!(expired(&snaps[..1], 0, Duration::ZERO, now).is_empty());
    }
}
