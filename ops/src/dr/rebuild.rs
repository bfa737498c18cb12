//! Rebuild the state at a point in time: install a snapshot into a scratch store, then replay the
//! log archive on top of it — through the materializer's own staging code, so the result is
//! exactly what a reader would hold — stopping at an offset vector or a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use secretlog_schemas::archive::{Manifest, SnapshotData, decode_segment, parse_segment_name};
use secretlog_schemas::{ConsistencyToken, Keyring};
use secretlog_state::bootstrap::{fetch_snapshot, install};
use secretlog_state::materializer::Staging;
use secretlog_state::objects::Objects;
use secretlog_state::store::{PartitionState, Store, StoreConfig};

/// Which state to rebuild: a snapshot, and where the archive replay after it stops.
#[derive(Debug, Clone, clap::Args)]
pub struct PointArgs {
    /// Snapshot to start from (id, or `latest`).
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Stop the log replay exactly here: next offset per partition, `p:offset[,p:offset...]`
    /// (the form of `X-Secretlog-Index`); partitions not named stay at the snapshot. Default
    /// (without --to-time too): everything archived.
    #[arg(long, conflicts_with = "to_time")]
    pub to_offset: Option<String>,
    /// Stop the log replay at this time: RFC 3339 or Unix milliseconds.
    #[arg(long)]
    pub to_time: Option<String>,
    /// Scratch directory for the rebuilt state.
    #[arg(long, default_value = "./.secretlog/work")]
    pub work_dir: PathBuf,
}

impl PointArgs {
    pub fn bound(&self) -> anyhow::Result<Bound> {
        Bound::from_args(self.to_offset.as_deref(), self.to_time.as_deref())
    }

    /// Find the snapshot, refuse a format this build cannot read, and rebuild up to the bound.
    pub async fn rebuild(&self, objects: &Objects, keyring: &Keyring) -> anyhow::Result<Rebuilt> {
        let m = super::find_snapshot(objects, &self.snapshot).await?;
        secretlog_schemas::archive::check_format(&m)
            .with_context(|| format!("snapshot {} cannot be read by this build", m.id))?;
        let bound = self.bound()?;
        let pb = crate::output::spinner(&format!("rebuilding from snapshot {} and the log archive", m.id));
        let rebuilt = rebuild(objects, keyring, &m, &bound, &self.work_dir).await;
        pb.finish_and_clear();
        rebuilt
    }
}

/// Where the replay stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// Everything the archive holds.
    Latest,
    /// Per partition, the next offset: records before it are applied, none from it. A partition
    /// not named stays at the snapshot's position.
    Offsets(BTreeMap<i32, i64>),
    /// Every record whose event time is at or before this (ms since the Unix epoch); per
    /// partition, replay stops at the first record after it.
    Time(i64),
}

impl Bound {
    pub fn from_args(to_offset: Option<&str>, to_time: Option<&str>) -> anyhow::Result<Bound> {
        match (to_offset, to_time) {
            (Some(_), Some(_)) => bail!("give --to-offset or --to-time, not both"),
            (Some(o), None) => Ok(Bound::Offsets(o.parse::<ConsistencyToken>()?.0)),
            (None, Some(t)) => Ok(Bound::Time(parse_time(t)?)),
            (None, None) => Ok(Bound::Latest),
        }
    }

    /// Whether the record at `offset` with event time `ts` is inside the bound.
    fn admits(&self, partition: i32, offset: i64, ts: i64) -> bool {
        match self {
            Bound::Latest => true,
            Bound::Offsets(m) => m.get(&partition).is_some_and(|end| offset < *end),
            Bound::Time(t) => ts <= *t,
        }
    }
}

/// RFC 3339 (`2026-11-23T10:00:00Z`) or milliseconds since the Unix epoch.
pub fn parse_time(t: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let ts = humantime::parse_rfc3339_weak(t)
        .with_context(|| format!("--to-time {t:?}: expected RFC 3339 (2026-11-23T10:00:00Z) or Unix milliseconds"))?;
    Ok(ts.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
}

/// The rebuilt state, in a scratch store that lives as long as this value.
pub struct Rebuilt {
    pub store: Arc<Store>,
    pub snapshot: Manifest,
    /// Next offset per partition of the rebuilt state.
    pub positions: BTreeMap<i32, PartitionState>,
    /// Records replayed from the archive, per partition.
    pub replayed: BTreeMap<i32, u64>,
    _dir: tempfile::TempDir,
}

impl Rebuilt {
    /// The state as snapshot data, keeping only secrets under `prefix` (all when empty).
    pub async fn export(&self, prefix: &str) -> anyhow::Result<SnapshotData> {
        let (mut data, _) = self.store.export().await?;
        if !prefix.is_empty() {
            data.secrets.retain(|(_, p, _)| under(p, prefix));
            data.values.retain(|(_, p, _, _)| under(p, prefix));
        }
        Ok(data)
    }
}

/// Whether `path` is `prefix` itself or inside it.
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// Archived segments of `partition` that hold offsets at or after `from`, in order.
async fn segments(objects: &Objects, partition: i32, from: i64) -> anyhow::Result<Vec<(i64, i64, String)>> {
    let prefix = objects.path(&format!("archive/p{partition:05}"));
    let mut segs: Vec<(i64, i64, String)> = objects
        .store
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter_map(|n| parse_segment_name(&n).map(|(a, b)| (a, b, n)))
        .filter(|(_, last, _)| *last >= from)
        .collect();
    segs.sort();
    Ok(segs)
}

/// Partitions the archive has segments for.
async fn archived_partitions(objects: &Objects) -> anyhow::Result<Vec<i32>> {
    let listed = objects.store.list_with_delimiter(Some(&objects.path("archive"))).await?;
    Ok(listed.common_prefixes.iter().filter_map(|p| p.filename()?.strip_prefix('p')?.parse().ok()).collect())
}

/// Rebuild from `snapshot` up to `bound`, in a scratch directory under `work`.
pub async fn rebuild(
    objects: &Objects,
    keyring: &Keyring,
    snapshot: &Manifest,
    bound: &Bound,
    work: &Path,
) -> anyhow::Result<Rebuilt> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let dir = tempfile::Builder::new().prefix("rebuild-").tempdir_in(work)?;
    let store =
        Store::open(&StoreConfig { dir: dir.path().to_path_buf(), cache_memory_bytes: 32 << 20, cache_disk_bytes: 0 })
            .await?;
    let data = fetch_snapshot(objects, snapshot).await?;
    install(&store, snapshot, data).await?;
    let mut positions = store.partitions().await?;
    if let Bound::Offsets(m) = bound {
        for (p, end) in m {
            let start = positions.get(p).map_or(0, |s| s.next_offset);
            if *end < start {
                bail!(
                    "partition {p}: --to-offset {end} is before snapshot {}'s position {start}; pick an older snapshot",
                    snapshot.id
                );
            }
        }
    }
    let mut replayed = BTreeMap::new();
    let leader = store.leader().await?;
    let mut partitions = archived_partitions(objects).await?;
    partitions.extend(positions.keys().copied());
    partitions.sort();
    partitions.dedup();
    for p in partitions {
        let mut st = positions.get(&p).copied().unwrap_or_default();
        let mut n = 0u64;
        let mut staging = Staging::new(leader.as_ref());
        'segments: for (_, _, name) in segments(objects, p, st.next_offset).await? {
            let bytes = objects.store.get(&object_store::path::Path::from(name.as_str())).await?.bytes().await?;
            for rec in decode_segment(&name, &bytes)? {
                if rec.offset < st.next_offset {
                    continue;
                }
                // The event time decides a time bound: decode (and verify) before looking.
                let ts = match secretlog_schemas::decode_event(keyring, Some(&rec.key), &rec.value) {
                    Ok(e) => e.timestamp_ms,
                    Err(e) => bail!("partition {p} offset {}: archived record does not verify: {e}", rec.offset),
                };
                if !bound.admits(p, rec.offset, ts) {
                    break 'segments;
                }
                staging
                    .stage(&store, keyring, p, rec.offset, Some(&rec.key), &rec.value, &mut st)
                    .await
                    .with_context(|| format!("replaying partition {p} offset {}", rec.offset))?;
                st.next_offset = rec.offset + 1;
                staging.batch.partitions.insert(p, st);
                n += 1;
                if staging.batch.writes.len() >= 2048 {
                    let full = std::mem::replace(&mut staging, Staging::new(leader.as_ref()));
                    store.commit(full.batch).await?;
                }
            }
        }
        store.commit(staging.batch).await?;
        if let Bound::Offsets(m) = bound
            && let Some(end) = m.get(&p)
            && st.next_offset < *end
        {
            // The records between are either transaction markers or missing from the archive.
            let archived_to = segments(objects, p, 0).await?.last().map_or(-1, |s| s.1);
            if archived_to + 1 < *end {
                bail!(
                    "partition {p}: the archive ends at offset {archived_to}, before the requested {end}; \
                     wait for the replicator to catch up, or restore to an earlier point"
                );
            }
        }
        if n > 0 || positions.contains_key(&p) {
            positions.insert(p, st);
        }
        replayed.insert(p, n);
    }
    Ok(Rebuilt { store, snapshot: snapshot.clone(), positions, replayed, _dir: dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under("app/db", "app"));
        assert!(under("app/db", "app/"));
        assert!(under("app", "app"));
        assert!(!under("application/x", "app"));
        assert!(under("anything", ""));
    }

    #[test]
    fn bounds_admit_what_they_should() {
        let b = Bound::from_args(Some("0:10,2:5"), None).unwrap();
        assert!(b.admits(0, 9, 0) && !b.admits(0, 10, 0));
        assert!(!b.admits(1, 0, 0), "a partition not named stays at the snapshot");
        let t = Bound::from_args(None, Some("2026-11-23T10:00:00Z")).unwrap();
        assert_eq!(t, Bound::Time(1_795_428_000_000));
        assert!(t.admits(0, 99, 1_795_428_000_000) && !t.admits(0, 99, 1_795_428_000_001));
        assert!(Bound::from_args(Some("0:1"), Some("1")).is_err());
        assert!(Bound::from_args(Some("zero"), None).is_err());
    }
}
