//! Reader state on local disk: SlateDB (object_store's local backend) with a foyer hybrid cache
//! in front.
//!
//! Key layout (all keys are bytes; `/` and NUL separate parts — NUL cannot occur in a valid path):
//!
//! | key | value |
//! |---|---|
//! | `s/{mount}/{path}` | [`SecretMeta`] as JSON (no secret values) |
//! | `v/{mount}/{path}\0{version u64 BE}` | the sealed value, exactly as it was in the event |
//! | `o/{partition u32 BE}` | [`PartitionState`]: next offset to apply and highest writer epoch seen |
//! | `c/root_token` | keyed hash of the bootstrap root token |
//! | `c/leader` | [`LeaderRecord`]: the newest leader epoch seen and its URL |
//! | `c/keyring` | [`KeyTerms`]: key terms added and retired through the log |
//! | `c/accessor/{accessor}` | the keyed hash of the token with that accessor (kept with `c/token/`) |
//! | `c/auth-mount/{mount}` | an enabled auth method (`approle/`): its JSON record |
//! | `c/auth/{mount}\0{kind}/{name}` | an object of that auth mount (role, secret id, user): its JSON record |
//! | `c/auth/{mount}\0role-id/{role_id}` | the AppRole role with that role id (kept with its role) |
//! | `m/sealed-per-term` | how many stored values each key term seals (JSON map; not in snapshots or digests: derived from `v/`, recounted when missing) |
//!
//! State and the partition offsets that produced it are written in **one** SlateDB batch
//! ([`Store::commit`]), so a crash at any instant leaves both at the same point and the
//! materializer resumes exactly there.
//!
//! The cache holds the same bytes as SlateDB (metadata JSON and sealed values — never
//! plaintext). Only committed state enters it: [`Store::commit`] writes through while holding the
//! fill lock exclusively, and a read miss fills it while holding the lock shared, so a slow read
//! can never put back a value that an apply has just replaced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, PsyncIoEngineConfig};
use secretlog_schemas::metadata::SecretMeta;
use sha2::{Digest, Sha256};
use slatedb::object_store::local::LocalFileSystem;
use slatedb::{Db, WriteBatch};
use tokio::sync::RwLock;

use crate::error::NodeError;
use crate::key_filter::KeyFilter;
use crate::model::KeyTerms;

/// Where and how big.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding the SlateDB files and the disk cache.
    pub dir: PathBuf,
    /// In-memory cache capacity, bytes.
    pub cache_memory_bytes: usize,
    /// On-disk cache capacity, bytes; 0 disables the disk tier.
    pub cache_disk_bytes: usize,
}

/// Progress of one partition, stored with the state it produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// Offset of the next record to apply.
    pub next_offset: i64,
    /// Highest writer epoch applied in this partition; older epochs are refused after it.
    pub max_epoch: u64,
}

impl PartitionState {
    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_offset.to_be_bytes());
        b[8..].copy_from_slice(&self.max_epoch.to_be_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 16] = b.try_into().ok()?;
        Some(PartitionState {
            next_offset: i64::from_be_bytes(b[..8].try_into().ok()?),
            max_epoch: u64::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// The newest leader the log announced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderRecord {
    pub epoch: u64,
    pub url: String,
}

/// The storage keys.
pub mod keys {
    /// Every secret's metadata key starts so ([`meta`]).
    pub const META_PREFIX: &[u8] = b"s/";
    pub fn meta(mount: &str, path: &str) -> Vec<u8> {
        format!("s/{mount}/{path}").into_bytes()
    }
    pub(crate) fn meta_prefix(mount: &str, folder: &str) -> Vec<u8> {
        format!("s/{mount}/{folder}").into_bytes()
    }
    pub fn value(mount: &str, path: &str, version: u64) -> Vec<u8> {
        let mut k = format!("v/{mount}/{path}\0").into_bytes();
        k.extend_from_slice(&version.to_be_bytes());
        k
    }
    pub fn partition(p: i32) -> Vec<u8> {
        let mut k = b"o/".to_vec();
        k.extend_from_slice(&(p as u32).to_be_bytes());
        k
    }
    pub(crate) const PARTITION_PREFIX: &[u8] = b"o/";
    pub const ROOT_TOKEN: &[u8] = b"c/root_token";
    /// An ACL policy's text.
    pub fn policy(name: &str) -> Vec<u8> {
        format!("c/policy/{name}").into_bytes()
    }
    pub(crate) const POLICY_PREFIX: &[u8] = b"c/policy/";
    /// A mount's record (`secretlog_schemas::mount::MountRecord` JSON), empty once disabled.
    pub fn mount(path: &str) -> Vec<u8> {
        format!("c/mount/{path}").into_bytes()
    }
    pub const MOUNT_PREFIX: &[u8] = b"c/mount/";
    /// An audit device enabled through the log (`secretlog_schemas::audit::AuditDeviceRecord` JSON).
    pub fn audit_device(path: &str) -> Vec<u8> {
        format!("c/audit/{path}").into_bytes()
    }
    pub(crate) const AUDIT_DEVICE_PREFIX: &[u8] = b"c/audit/";
    /// A token's record, by the hex of its keyed hash.
    pub fn token(hash: &[u8; 32]) -> Vec<u8> {
        format!("c/token/{}", hex::encode(hash)).into_bytes()
    }
    pub const TOKEN_PREFIX: &[u8] = b"c/token/";
    pub const ACCESSOR_PREFIX: &[u8] = b"c/accessor/";
    /// The keyed hash of the token with accessor `accessor` (raw 32 bytes).
    pub fn accessor(accessor: &str) -> Vec<u8> {
        format!("c/accessor/{accessor}").into_bytes()
    }
    /// An enabled auth method, by its mount path (`approle/`).
    pub(crate) fn auth_mount(mount: &str) -> Vec<u8> {
        format!("c/auth-mount/{mount}").into_bytes()
    }
    pub const AUTH_MOUNT_PREFIX: &[u8] = b"c/auth-mount/";
    /// Everything stored under auth mount `mount`; NUL ends the mount, so no mount's prefix is
    /// another's.
    pub fn auth_objects(mount: &str) -> Vec<u8> {
        format!("c/auth/{mount}\0").into_bytes()
    }
    /// Objects of one kind (`role`, `secret-id`, `user`, `role-id`) of an auth mount, under `name`.
    pub fn auth_object(mount: &str, kind: &str, name: &str) -> Vec<u8> {
        format!("c/auth/{mount}\0{kind}/{name}").into_bytes()
    }
    pub const LEADER: &[u8] = b"c/leader";
    pub const REVISION_PREFIX: &[u8] = b"c/rev/";
    /// How many records of a record key (a secret's, or a control object's) were accepted: the
    /// revision the next record of it is decided against (DESIGN.md, "Write path", rule 3). Kept
    /// after the secret is deleted, so a record decided before the delete can never apply after it.
    pub fn revision(record_key: &[u8]) -> Vec<u8> {
        let mut k = REVISION_PREFIX.to_vec();
        k.extend_from_slice(record_key);
        k
    }
    /// Id of the Kafka cluster this state was read from (not part of snapshots or digests).
    pub const CLUSTER: &[u8] = b"m/cluster";
    /// The key terms the log added and retired.
    pub const KEY_TERMS: &[u8] = b"c/keyring";
    /// Values stored per key term (derived state, kept with the state it counts).
    pub(crate) const SEALED_PER_TERM: &[u8] = b"m/sealed-per-term";
    pub(crate) const VALUE_PREFIX: &[u8] = b"v/";
}

/// A stored revision (8 bytes, big-endian); absent is 0.
pub(crate) fn decode_revision(stored: Option<&[u8]>) -> u64 {
    stored.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// Values stored under each key term.
pub type TermCounts = BTreeMap<u32, u64>;

/// One stored value, as the rewrap walks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// The storage key (`v/...`), to resume a walk after it.
    pub key: Vec<u8>,
    pub mount: String,
    pub path: String,
    pub version: u64,
    pub sealed: Vec<u8>,
}

/// Split a value key `v/{mount}/{path}\0{version u64 BE}` into its parts. The version is the
/// last 8 bytes (it may itself contain zero bytes), preceded by the NUL separator.
fn parse_value_key(key: &[u8]) -> Option<(String, String, u64)> {
    let k = key.strip_prefix(keys::VALUE_PREFIX)?;
    if k.len() < 9 || k[k.len() - 9] != 0 {
        return None;
    }
    let version = u64::from_be_bytes(k[k.len() - 8..].try_into().ok()?);
    let name = std::str::from_utf8(&k[..k.len() - 9]).ok()?;
    let (mount, path) = name.split_once('/')?;
    Some((mount.to_string(), path.to_string(), version))
}

/// One atomic step of the materializer: state changes plus the partition positions they reach.
#[derive(Debug, Default)]
pub struct ApplyBatch {
    /// Key → new value, or `None` to delete.
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub partitions: BTreeMap<i32, PartitionState>,
}

impl ApplyBatch {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.partitions.is_empty()
    }
}

// Cache values carry a tag byte so that "known absent" can be cached too.
const ABSENT: u8 = 0;
const PRESENT: u8 = 1;

/// A value (or its absence) as the cache holds it.
fn tagged(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        Some(v) => {
            let mut c = Vec::with_capacity(v.len() + 1);
            c.push(PRESENT);
            c.extend_from_slice(v);
            c
        }
        None => vec![ABSENT],
    }
}

/// What a cached entry says of its key: the value, or `None` for known absent.
fn untag(cached: &[u8]) -> Option<Vec<u8>> {
    match cached.first() {
        Some(&PRESENT) => Some(cached[1..].to_vec()),
        _ => None,
    }
}

/// Cache properties of what a commit writes through for a key the disk tier does not hold: kept
/// in memory, never copied to disk.
fn written_through() -> foyer::HybridCacheProperties {
    foyer::HybridCacheProperties::default().with_location(foyer::Location::InMem)
}

/// The local state store.
pub struct Store {
    db: Db,
    cache: HybridCache<Vec<u8>, Vec<u8>>,
    fill_lock: RwLock<()>,
    /// Metadata and revision keys the store certainly lacks, once [`Store::track_absent_keys`]
    /// has scanned the stored ones.
    pub(crate) absent: KeyFilter,
}

/// SlateDB's compaction and garbage collection, set on purpose rather than inherited, so that a
/// node's `slatedb/` directory stays bounded by the live data plus a few minutes of churn
/// (`secretlog soak` checks it):
/// * the compactor runs in-process (SlateDB's default options): L0 files are merged into sorted
///   runs, so overwritten versions and deletions stop taking space;
/// * the garbage collector deletes what compaction and flushes left behind — WAL files after a
///   minute, compacted SSTs and old manifests after five — checking every minute, not SlateDB's
///   default ten: superseded files then live at most ~6 minutes instead of ~15. Five minutes stays
///   the floor for compacted SSTs: a scan open in this process (a snapshot export, a rewrap pass)
///   may still read files the compactor has replaced, and the longest of those scans must end
///   well within it;
/// * SSTs (the WAL's, L0's and the compactor's) are LZ4-compressed block by block: the sealed
///   values do not compress, but the keys and metadata JSON around them do — at 100k secrets of
///   64 bytes the tree went from 309 to 169 bytes per secret, the WAL from 301 to 151
///   (docs/benchmarks.md, issue #24), for LZ4's few hundred MB/s per core of decompression on a
///   block read. SlateDB records each SST's codec, so stores written before read on; a release
///   without LZ4 cannot read this one (going back means a new data directory, rebuilt from a
///   snapshot and the log);
/// * memory is bounded on purpose too. SlateDB's defaults suit a large database of its own: a
///   memtable grows to 64 MiB before it becomes an L0 file, and the block and index caches may
///   hold 512 + 128 MiB. Every node applies the same log, so every node's memtable filled and
///   flushed in step — the 30-minute soak's sawtooth (RSS climbing ~5 MiB a minute on every
///   node, dropping every 7 minutes on all at once), and its rising peaks were the block cache
///   filling with blocks of files compaction had already replaced. Here a memtable becomes an
///   L0 file at 8 MiB (a restart replays at most that much WAL, and L0 files stay small for the
///   compactor), writers are held back past 64 MiB unflushed, and SlateDB's caches are sized
///   from the node's `--cache-memory-mb` ([`slatedb_cache`]).
fn slatedb_settings() -> slatedb::Settings {
    use slatedb::config::{
        CompactionWorkerOptions, CompactorOptions, CompressionCodec, GarbageCollectorDirectoryOptions,
        GarbageCollectorOptions,
    };
    const CODEC: CompressionCodec = CompressionCodec::Lz4;
    use std::time::Duration;
    let every_minute = |min_age_secs| GarbageCollectorDirectoryOptions {
        interval: Some(Duration::from_secs(60)),
        min_age: Duration::from_secs(min_age_secs),
        dry_run: false,
    };
    slatedb::Settings {
        // The in-process compaction worker writes with its own codec, which must be the
        // store's: else every compacted SST would be uncompressed.
        compactor_options: Some(CompactorOptions {
            worker: Some(CompactionWorkerOptions { compression_codec: Some(CODEC), ..Default::default() }),
            ..CompactorOptions::default()
        }),
        compression_codec: Some(CODEC),
        garbage_collector_options: Some(GarbageCollectorOptions {
            wal_options: Some(every_minute(60)),
            compacted_options: Some(every_minute(300)),
            manifest_options: Some(every_minute(300)),
            compactions_options: Some(every_minute(300)),
            // SlateDB guards manifest deletion with boundary files updated by conditional
            // overwrite, which its local-disk object store does not implement: with them on,
            // every pass logged an error and no manifest was ever deleted (seen in `bench
            // snapshot`). Off, as SlateDB says for local disk; the race they guard against (a
            // second, suspended writer of this store waking after `min_age`) cannot happen here:
            // one process owns a node's store, and five minutes is the floor above.
            boundary_files_enabled: false,
            ..GarbageCollectorOptions::default()
        }),
        l0_sst_size_bytes: 8 * 1024 * 1024,
        max_unflushed_bytes: 64 * 1024 * 1024,
        ..slatedb::Settings::default()
    }
}

/// SlateDB's block and index/filter caches, in memory, sized from the node's memory cache
/// budget (`--cache-memory-mb`, which our own value cache in front of SlateDB also gets): a
/// quarter of it for data blocks, an eighth for indexes and filters, at least 1 MiB each. Our
/// cache answers repeated reads; these serve what misses it without re-reading and decoding a
/// file's index for each read.
fn slatedb_cache(memory_budget: usize) -> Arc<dyn slatedb::db_cache::DbCache> {
    use slatedb::db_cache::SplitCache;
    use slatedb::db_cache::foyer::{FoyerCache, FoyerCacheOptions};
    let foyer = |bytes: usize| -> Arc<dyn slatedb::db_cache::DbCache> {
        Arc::new(FoyerCache::new_with_opts(FoyerCacheOptions {
            max_capacity: bytes.max(1024 * 1024) as u64,
            ..FoyerCacheOptions::default()
        }))
    };
    Arc::new(
        SplitCache::new()
            .with_block_cache(Some(foyer(memory_budget / 4)))
            .with_meta_cache(Some(foyer(memory_budget / 8)))
            .build(),
    )
}

impl Store {
    /// Open (or create) the store under `cfg.dir`.
    pub async fn open(cfg: &StoreConfig) -> Result<Arc<Self>, NodeError> {
        let db_dir = cfg.dir.join("slatedb");
        std::fs::create_dir_all(&db_dir).map_err(|e| NodeError::io(&db_dir, e))?;
        let fs = LocalFileSystem::new_with_prefix(&db_dir)?;
        let db = Db::builder("state", Arc::new(fs))
            .with_settings(slatedb_settings())
            .with_db_cache(slatedb_cache(cfg.cache_memory_bytes), 0)
            .build()
            .await?;
        let builder = HybridCacheBuilder::new()
            .with_name("secretlog-reader")
            .memory(cfg.cache_memory_bytes.max(1024 * 1024))
            .with_weighter(|k: &Vec<u8>, v: &Vec<u8>| k.len() + v.len() + 64)
            .storage();
        let cache = if cfg.cache_disk_bytes > 0 {
            let cache_dir = cfg.dir.join("cache");
            std::fs::create_dir_all(&cache_dir).map_err(|e| NodeError::io(&cache_dir, e))?;
            let device = FsDeviceBuilder::new(&cache_dir)
                .with_capacity(cfg.cache_disk_bytes)
                .build()
                .map_err(|e| NodeError::Cache(Box::new(e)))?;
            builder
                .with_io_engine_config(PsyncIoEngineConfig::new())
                .with_engine_config(BlockEngineConfig::new(device).with_block_size(1024 * 1024))
                .build()
                .await
        } else {
            builder.build().await
        }
        .map_err(|e| NodeError::Cache(Box::new(e)))?;
        Ok(Arc::new(Store { db, cache, fill_lock: RwLock::new(()), absent: KeyFilter::default() }))
    }

    /// Let reads of a metadata or revision key the store lacks skip SlateDB
    /// ([`crate::key_filter`]): scan the stored ones in the background, then answer from the
    /// filter. Nodes call it once after opening; tools that open a store briefly do not.
    pub fn track_absent_keys(self: &Arc<Self>) {
        let store = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match store.scan_into_key_filter().await {
                Ok(keys) => {
                    store.absent.set_ready();
                    tracing::info!(keys, took_ms = started.elapsed().as_millis() as u64, "key filter ready");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "key filter: the scan failed; every read of a missing key asks the store")
                }
            }
        });
    }

    /// Add every stored metadata and revision key to the key filter: how many.
    async fn scan_into_key_filter(&self) -> Result<u64, NodeError> {
        let mut scanned = 0u64;
        for prefix in [keys::META_PREFIX, keys::REVISION_PREFIX] {
            let mut it = self.db.scan_prefix(prefix, ..).await?;
            while let Some(kv) = it.next().await? {
                self.absent.insert(&kv.key);
                scanned += 1;
            }
        }
        Ok(scanned)
    }

    /// A key's committed value through the cache. A hit in memory is answered without a lock;
    /// everything slower — the disk tier, the key filter, SlateDB, and the fill that follows —
    /// happens under the fill lock held shared, so no commit can land in between. Without it, a
    /// read that found an older value on the disk tier could put it back in memory after a
    /// commit had written the newer one through: foyer inserts what a load found
    /// unconditionally, so that key would read old until evicted.
    async fn get_cached(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, NodeError> {
        if let Some(entry) = self.cache.memory().get(&key) {
            metrics::counter!("secretlog_reader_cache_hits_total").increment(1);
            return Ok(untag(entry.value()));
        }
        let _fill = self.fill_lock.read().await;
        if self.cache.storage().may_contains(&key)
            && let Ok(Some(entry)) = self.cache.get(&key).await
        {
            metrics::counter!("secretlog_reader_cache_hits_total").increment(1);
            return Ok(untag(entry.value()));
        }
        metrics::counter!("secretlog_reader_cache_misses_total").increment(1);
        // Decided under the fill lock: a commit adds its keys to the filter before it writes.
        if self.absent.absent(&key) {
            metrics::counter!("secretlog_store_filtered_reads_total").increment(1);
            self.cache.insert(key, tagged(None));
            return Ok(None);
        }
        let v = self.db.get(&key).await?;
        self.cache.insert(key, tagged(v.as_deref()));
        Ok(v.map(|b| b.to_vec()))
    }

    /// A secret's metadata.
    pub async fn meta(&self, mount: &str, path: &str) -> Result<Option<SecretMeta>, NodeError> {
        match self.get_cached(keys::meta(mount, path)).await? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| NodeError::Corrupt { key: format!("s/{mount}/{path}"), reason: e.to_string() }),
            None => Ok(None),
        }
    }

    /// The sealed value of one version.
    pub async fn value(&self, mount: &str, path: &str, version: u64) -> Result<Option<Vec<u8>>, NodeError> {
        self.get_cached(keys::value(mount, path, version)).await
    }

    /// Immediate children of a folder (`""` for the mount root): names of secrets, and sub-folder
    /// names ending in `/`, sorted — what Vault's LIST returns.
    pub async fn list(&self, mount: &str, folder: &str) -> Result<Vec<String>, NodeError> {
        let prefix = keys::meta_prefix(mount, folder);
        let mut it = self.db.scan_prefix(&prefix, ..).await?;
        let mut out: Vec<String> = Vec::new();
        while let Some(kv) = it.next().await? {
            let rest = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            let child = match rest.find('/') {
                Some(i) => rest[..=i].to_string(),
                None => rest,
            };
            if out.last() != Some(&child) {
                out.push(child);
            }
        }
        out.dedup();
        Ok(out)
    }

    /// Every stored key under `prefix` with its value, in key order.
    pub async fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, NodeError> {
        let mut it = self.db.scan_prefix(prefix, ..).await?;
        let mut out = Vec::new();
        while let Some(kv) = it.next().await? {
            out.push((kv.key.to_vec(), kv.value.to_vec()));
        }
        Ok(out)
    }

    /// Names of every ACL policy.
    /// The mount table this state holds.
    pub async fn mounts(&self) -> Result<crate::mounts::Mounts, NodeError> {
        let mut it = self.db.scan_prefix(keys::MOUNT_PREFIX, ..).await?;
        let mut pairs = Vec::new();
        while let Some(kv) = it.next().await? {
            let path = String::from_utf8_lossy(&kv.key[keys::MOUNT_PREFIX.len()..]).into_owned();
            pairs.push((path, kv.value.to_vec()));
        }
        crate::mounts::Mounts::from_stored(pairs)
            .map_err(|reason| NodeError::Corrupt { key: "c/mount/".into(), reason })
    }

    /// The audit devices this state holds.
    pub async fn audit_devices(&self) -> Result<crate::audit_devices::AuditDevices, NodeError> {
        let pairs = self
            .scan(keys::AUDIT_DEVICE_PREFIX)
            .await?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[keys::AUDIT_DEVICE_PREFIX.len()..]).into_owned(), v));
        crate::audit_devices::AuditDevices::from_stored(pairs)
            .map_err(|reason| NodeError::Corrupt { key: "c/audit/".into(), reason })
    }

    pub async fn policy_names(&self) -> Result<Vec<String>, NodeError> {
        let mut it = self.db.scan_prefix(keys::POLICY_PREFIX, ..).await?;
        let mut out = Vec::new();
        while let Some(kv) = it.next().await? {
            out.push(String::from_utf8_lossy(&kv.key[keys::POLICY_PREFIX.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Stored progress of every partition seen so far.
    pub async fn partitions(&self) -> Result<BTreeMap<i32, PartitionState>, NodeError> {
        let mut it = self.db.scan_prefix(keys::PARTITION_PREFIX, ..).await?;
        let mut out = BTreeMap::new();
        while let Some(kv) = it.next().await? {
            let p = kv.key.get(2..6).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            let st = PartitionState::decode(&kv.value);
            match (p, st) {
                (Some(p), Some(st)) => {
                    out.insert(p as i32, st);
                }
                _ => {
                    return Err(NodeError::Corrupt {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        reason: "bad partition record".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The root token's keyed hash, once the log has published one.
    pub async fn root_token_hash(&self) -> Result<Option<[u8; 32]>, NodeError> {
        Ok(self.get_cached(keys::ROOT_TOKEN.to_vec()).await?.and_then(|b| b.try_into().ok()))
    }

    /// The newest leader announced in the log.
    pub async fn leader(&self) -> Result<Option<LeaderRecord>, NodeError> {
        match self.get_raw(keys::LEADER).await? {
            Some(b) => Ok(serde_json::from_slice(&b).ok()),
            None => Ok(None),
        }
    }

    /// The key terms the log added and retired (term 1 alone until a rotation).
    pub async fn key_terms(&self) -> Result<KeyTerms, NodeError> {
        match self.get_raw(keys::KEY_TERMS).await? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| NodeError::Corrupt { key: "c/keyring".into(), reason: e.to_string() }),
            None => Ok(KeyTerms::default()),
        }
    }

    /// How many stored values each key term seals, as the materializer keeps it with the state;
    /// counted from the values when a store has no count yet (bootstrapped from a snapshot, or
    /// written before counts were kept). Read like staging reads ([`Store::get_committed`]):
    /// every batch that changes a value loads the counts, and every commit writes them through
    /// the memory cache, so this is a cache hit, not a SlateDB read per batch (3 % of a following
    /// node's profile under writes).
    pub async fn sealed_per_term(&self) -> Result<TermCounts, NodeError> {
        match self.get_committed(keys::SEALED_PER_TERM).await? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| NodeError::Corrupt { key: "m/sealed-per-term".into(), reason: e.to_string() }),
            None => self.count_per_term().await,
        }
    }

    /// Count stored values per key term by reading every one (a value whose header does not
    /// parse is counted under term 0).
    pub(crate) async fn count_per_term(&self) -> Result<TermCounts, NodeError> {
        let mut it = self.db.scan_prefix(keys::VALUE_PREFIX, ..).await?;
        let mut counts = TermCounts::new();
        while let Some(kv) = it.next().await? {
            *counts.entry(secretlog_schemas::SealedValue::term_of(&kv.value).unwrap_or(0)).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Up to `limit` stored values of `mount` (of every mount when `mount` is empty) in key
    /// order, starting after storage key `after`
    /// (from the first when `None`), keeping those `keep` accepts — a resumable walk that reads
    /// at most `limit * 4` keys per call. Returns the values and the key to resume after (`None`
    /// at the end).
    pub async fn values_after(
        &self,
        mount: &str,
        after: Option<&[u8]>,
        limit: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(Vec<StoredValue>, Option<Vec<u8>>), NodeError> {
        let prefix = if mount.is_empty() { b"v/".to_vec() } else { format!("v/{mount}/").into_bytes() };
        let mut it = match after.and_then(|a| a.strip_prefix(prefix.as_slice())) {
            Some(suffix) => {
                self.db.scan_prefix(&prefix, (std::ops::Bound::Excluded(suffix), std::ops::Bound::Unbounded)).await?
            }
            None => self.db.scan_prefix(&prefix, ..).await?,
        };
        let (mut out, mut read) = (Vec::new(), 0usize);
        let mut last = None;
        while out.len() < limit && read < limit.saturating_mul(4).max(1) {
            let Some(kv) = it.next().await? else { return Ok((out, None)) };
            read += 1;
            last = Some(kv.key.to_vec());
            if !keep(&kv.value) {
                continue;
            }
            let Some((mount, path, version)) = parse_value_key(&kv.key) else { continue };
            out.push(StoredValue { key: kv.key.to_vec(), mount, path, version, sealed: kv.value.to_vec() });
        }
        Ok((out, last))
    }

    /// The revision of `record_key` ([`keys::revision`]): 0 for a key never written.
    pub async fn revision(&self, record_key: &[u8]) -> Result<u64, NodeError> {
        Ok(decode_revision(self.get_cached(keys::revision(record_key)).await?.as_deref()))
    }

    /// Raw read of a storage key, bypassing the cache.
    pub async fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        Ok(self.db.get(key).await?.map(|b| b.to_vec()))
    }

    /// A storage key's committed value, for staging an apply: from the memory cache when it holds
    /// the key (present or known absent), else from SlateDB without filling the cache — the commit
    /// that follows writes through what the batch changed. The cache agrees with SlateDB outside
    /// a commit (every commit writes through holding the fill lock exclusively, every fill holds it
    /// shared), and a batch is staged before its commit, never during one. On the leader the keys
    /// a write was decided on are cached already (the committer read them), so the write's own
    /// apply reads nothing from SlateDB; on every node a key written recently is.
    pub async fn get_committed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        if let Some(entry) = self.cache.memory().get(key) {
            return Ok(untag(entry.value()));
        }
        if self.absent.absent(key) {
            metrics::counter!("secretlog_store_filtered_reads_total").increment(1);
            return Ok(None);
        }
        self.get_raw(key).await
    }

    /// Write state and partition positions atomically, then bring the cache up to date.
    pub async fn commit(&self, batch: ApplyBatch) -> Result<(), NodeError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut wb = WriteBatch::new();
        for (k, v) in &batch.writes {
            match v {
                Some(v) => wb.put(k, v),
                None => wb.delete(k),
            }
        }
        for (p, st) in &batch.partitions {
            wb.put(keys::partition(*p), st.encode());
        }
        let _exclusive = self.fill_lock.write().await;
        // Into the filter before SlateDB: it must never call absent a key the store holds.
        for (k, v) in &batch.writes {
            if v.is_some() {
                self.absent.insert(k);
            }
        }
        self.db.write(wb).await?;
        // What a commit writes through stays in memory only when the disk tier has no copy of the
        // key: evicted, it is dropped — SlateDB holds it — instead of copied to disk. Under a
        // stream of new secrets every commit used to push as many evicted entries to disk as it
        // inserted (foyer's flusher and `pwrite`, 5–9 % of a following node's CPU). A key the
        // disk tier holds, or has in flight, is written through as before: its new value, when
        // evicted, goes to disk after the old copy and replaces it. Deleting that copy instead
        // would not do: foyer serves a key still in flight to disk from its keeper, which a
        // delete leaves alone. No entry can be evicted towards the disk tier while this runs:
        // every insert into the cache (fills included) happens under the fill lock.
        for (k, v) in batch.writes {
            let props = if self.cache.storage().may_contains(&k) {
                foyer::HybridCacheProperties::default()
            } else {
                written_through()
            };
            self.cache.insert_with_properties(k, tagged(v.as_deref()), props);
        }
        metrics::gauge!("secretlog_store_cache_memory_bytes").set(self.cache.memory().usage() as f64);
        Ok(())
    }

    /// The whole state and the partition positions it corresponds to, read from one SlateDB
    /// snapshot, so the two agree exactly (the materializer commits state and positions in one
    /// batch).
    pub async fn export(
        &self,
    ) -> Result<(secretlog_schemas::archive::SnapshotData, BTreeMap<i32, PartitionState>), NodeError> {
        let snap = self.db.snapshot()?;
        let mut data = secretlog_schemas::archive::SnapshotData::default();
        let mut partitions = BTreeMap::new();
        let mut it = snap.scan_prefix(b"o/", ..).await?;
        while let Some(kv) = it.next().await? {
            let p = kv.key.get(2..6).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            if let (Some(p), Some(st)) = (p, PartitionState::decode(&kv.value)) {
                partitions.insert(p as i32, st);
            }
        }
        let mut it = snap.scan_prefix(b"c/", ..).await?;
        while let Some(kv) = it.next().await? {
            data.control.push((kv.key.to_vec(), kv.value.to_vec()));
        }
        let mut it = snap.scan_prefix(b"s/", ..).await?;
        while let Some(kv) = it.next().await? {
            let rest = String::from_utf8_lossy(&kv.key[2..]).into_owned();
            if let Some((mount, path)) = rest.split_once('/') {
                data.secrets.push((
                    mount.to_string(),
                    path.to_string(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                ));
            }
        }
        let mut it = snap.scan_prefix(b"v/", ..).await?;
        while let Some(kv) = it.next().await? {
            // `v/{mount}/{path}\0{version: 8 bytes BE}`: the version is the last 8 bytes (it may
            // itself contain zero bytes), preceded by the NUL separator.
            let k = &kv.key[2..];
            if k.len() < 9 || k[k.len() - 9] != 0 {
                return Err(NodeError::Corrupt {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    reason: "bad value key".into(),
                });
            }
            let (name, version) = (&k[..k.len() - 9], &k[k.len() - 8..]);
            let Ok(version) = <[u8; 8]>::try_from(version) else { continue };
            let name = String::from_utf8_lossy(name).into_owned();
            if let Some((mount, path)) = name.split_once('/') {
                data.values.push((mount.to_string(), path.to_string(), u64::from_be_bytes(version), kv.value.to_vec()));
            }
        }
        Ok((data, partitions))
    }

    /// SHA-256 over every secret and value record, in key order: equal on two nodes exactly when
    /// they hold the same state. Partition positions and key revisions are left out (they are
    /// how, not what: a restore to an earlier state gives that state at later revisions).
    pub async fn digest(&self) -> Result<(String, u64), NodeError> {
        let mut h = Sha256::new();
        let mut n = 0u64;
        for prefix in [&b"c/"[..], b"s/", b"v/"] {
            let mut it = self.db.scan_prefix(prefix, ..).await?;
            while let Some(kv) = it.next().await? {
                if kv.key.starts_with(keys::REVISION_PREFIX) {
                    continue;
                }
                // Metadata as this release stores it: a record an earlier release wrote (with
                // every field) and its compact form are the same state.
                let canonical = match prefix {
                    b"s/" => SecretMeta::canonical(&kv.value),
                    _ => None,
                };
                let value = canonical.as_deref().unwrap_or(&kv.value);
                h.update((kv.key.len() as u64).to_be_bytes());
                h.update(&kv.key);
                h.update((value.len() as u64).to_be_bytes());
                h.update(value);
                n += 1;
            }
        }
        Ok((hex::encode(h.finalize()), n))
    }

    /// Flush and close SlateDB and the cache.
    ///
    /// SlateDB's close future is not `Send` for every lifetime, so it runs on a blocking thread
    /// of its own; that keeps `close` callable from any spawned task.
    pub async fn close(self: &Arc<Self>) -> Result<(), NodeError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(async {
                let _ = me.cache.close().await;
                me.db.close().await.map_err(NodeError::from)
            })
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Commit 2 MiB of filler values (2,048 of 1 KiB): enough to push everything else out of a 1 MiB memory
    /// cache.
    async fn churn(store: &Store, round: u32) {
        for chunk in 0..8 {
            let mut b = ApplyBatch::default();
            for i in 0..256 {
                b.writes.insert(format!("v/secret/filler-{round}-{chunk}-{i}").into_bytes(), Some(vec![7; 1024]));
            }
            store.commit(b).await.unwrap();
        }
    }

    async fn poll(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A key read into the cache and evicted lands on the disk tier; a commit that rewrites it
    /// must not let that older copy be found once the new value has left memory too. (Written
    /// through as memory-only, the new value would be dropped on eviction and the old copy read
    /// again: this test fails so.)
    #[tokio::test]
    async fn a_rewritten_key_never_reads_its_older_copy_from_the_disk_tier() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            StoreConfig { dir: dir.path().to_path_buf(), cache_memory_bytes: 1 << 20, cache_disk_bytes: 16 << 20 };
        let store = Store::open(&cfg).await.unwrap();
        let key = b"v/secret/app/1".to_vec();
        let put = |v: &[u8]| {
            let mut b = ApplyBatch::default();
            b.writes.insert(key.clone(), Some(v.to_vec()));
            b
        };
        store.commit(put(b"old")).await.unwrap();
        // Written through: memory only, so churn drops it without a disk copy.
        churn(&store, 0).await;
        assert!(store.cache.memory().get(&key).is_none(), "1 MiB of newer entries should have evicted it");
        assert!(!store.cache.storage().may_contains(&key), "a written-through entry was copied to disk");
        // Read back from SlateDB: a fill, which may go to disk when evicted.
        assert_eq!(store.get_cached(key.clone()).await.unwrap().as_deref(), Some(&b"old"[..]));
        churn(&store, 1).await;
        poll("the filled entry never reached the disk tier", || store.cache.storage().may_contains(&key)).await;
        assert_eq!(store.get_cached(key.clone()).await.unwrap().as_deref(), Some(&b"old"[..]), "from disk");

        store.commit(put(b"new")).await.unwrap();
        assert_eq!(store.get_cached(key.clone()).await.unwrap().as_deref(), Some(&b"new"[..]), "from memory");
        churn(&store, 2).await;
        assert!(store.cache.memory().get(&key).is_none(), "the new value should have left memory");
        assert_eq!(
            store.get_cached(key.clone()).await.unwrap().as_deref(),
            Some(&b"new"[..]),
            "not the disk's old copy"
        );
        assert_eq!(store.get_committed(&key).await.unwrap().as_deref(), Some(&b"new"[..]));
        store.close().await.unwrap();
    }
}
