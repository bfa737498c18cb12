//! The mount table: which secrets engine serves which path. Every entry is a [`MountRecord`]
//! carried, as JSON, by an [`crate::Operation::PutMount`] event, so every node follows mounts
//! enabled, tuned and disabled through the log, and snapshots carry them with the rest of the
//! control state.
//!
//! A mount's secrets are stored and keyed under its **storage id**, not its path: the id goes into
//! each event's `mount` field, its record key and the sealing context. A mount disabled and
//! enabled again at the same path gets a new id and starts empty, as in Vault, without a delete
//! of every secret having to be ordered against writes still in flight in other partitions. The
//! default `secret/` mount (the only one earlier releases knew) keeps its path as its id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only engine secretlog serves.
pub const KV: &str = "kv";

/// One mounted secrets engine, as the log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// The engine: `kv`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The KV version (2: the only one served).
    pub version: u32,
    /// The id its secrets are stored and keyed under (see the module doc).
    pub storage: String,
    /// Vault's mount accessor (`kv_` and 8 hex digits).
    pub accessor: String,
    pub uuid: String,
    #[serde(default)]
    pub description: String,
    /// When it was enabled (ms since the epoch; 0 for the default mount).
    #[serde(default)]
    pub created_ms: i64,
    /// Lease TTLs (seconds) as `secrets tune` sets them; KV v2 issues no leases, so they are
    /// reported and nothing else.
    #[serde(default)]
    pub default_lease_ttl_secs: u64,
    #[serde(default)]
    pub max_lease_ttl_secs: u64,
    /// `{mount}/config`: the KV defaults for its secrets.
    #[serde(default)]
    pub kv: KvConfig,
}

/// A KV v2 mount's settings (`POST {mount}/config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvConfig {
    /// Versions kept of a secret that sets none itself; 0 is Vault's default (10).
    #[serde(default)]
    pub max_versions: u32,
    /// Every write to the mount must carry `cas`.
    #[serde(default)]
    pub cas_required: bool,
    /// Seconds after which a version of a secret that sets none itself is soft-deleted; 0 never.
    #[serde(default)]
    pub delete_version_after_secs: u64,
}

impl MountRecord {
    /// The default KV v2 mount at `path` (`secret`): what a cluster has before any mount event,
    /// stored under its path, as every earlier release stored it.
    pub fn default_kv(path: &str) -> MountRecord {
        use sha2::Digest;
        let h = sha2::Sha256::digest(format!("secretlog default mount {path}").as_bytes());
        MountRecord {
            kind: KV.into(),
            version: 2,
            storage: path.to_string(),
            accessor: format!("kv_{}", hex::encode(&h[..4])),
            uuid: uuid_text(&h[4..20]),
            description: "key/value secret storage".into(),
            created_ms: 0,
            default_lease_ttl_secs: 0,
            max_lease_ttl_secs: 0,
            kv: KvConfig::default(),
        }
    }

    /// A new KV v2 mount; `id` is 16 random bytes, which make its uuid, accessor and storage id.
    pub fn new_kv(id: [u8; 16], description: String, created_ms: i64) -> MountRecord {
        MountRecord {
            kind: KV.into(),
            version: 2,
            storage: format!("kv-{}", hex::encode(id)),
            accessor: format!("kv_{}", hex::encode(&id[..4])),
            uuid: uuid_text(&id),
            description,
            created_ms,
            default_lease_ttl_secs: 0,
            max_lease_ttl_secs: 0,
            kv: KvConfig::default(),
        }
    }

    /// The record's JSON, as a [`crate::Operation::PutMount`] carries it.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a mount record serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<MountRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Why a mount path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountPathError {
    #[error("cannot mount at an empty path")]
    Empty,
    #[error("cannot mount under {0:?}: the path is reserved")]
    Reserved(String),
    #[error("invalid mount path: {0}")]
    Invalid(&'static str),
}

/// Paths that name Vault's own endpoints, never a mount.
const RESERVED: &[&str] = &["sys", "auth", "identity", "cubbyhole", "audit", "metrics"];

/// A mount path as Vault accepts it (`team`, `team/`, `a/b/`), without its slashes.
pub fn normalize_mount_path(raw: &str) -> Result<String, MountPathError> {
    let path = raw.trim_matches('/');
    if path.is_empty() {
        return Err(MountPathError::Empty);
    }
    let first = path.split('/').next().unwrap_or_default();
    if RESERVED.contains(&first) {
        return Err(MountPathError::Reserved(format!("{first}/")));
    }
    if path.len() > 256 {
        return Err(MountPathError::Invalid("longer than 256 bytes"));
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Err(MountPathError::Invalid("an empty segment"));
        }
        if seg == "." || seg == ".." {
            return Err(MountPathError::Invalid("a relative segment"));
        }
        if seg.chars().any(|c| c.is_control() || c == '*' || c == '+' || c == '?') {
            return Err(MountPathError::Invalid("a control or wildcard character"));
        }
    }
    Ok(path.to_string())
}

/// Two mounts may not nest: `a` and `a/b` would both claim `a/b/...`.
pub fn overlaps(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
}

fn uuid_text(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The table as a node holds it: mount path (no slashes) → record.
pub type MountTable = BTreeMap<String, MountRecord>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_normalize_like_vault_and_refuse_reserved_ones() {
        assert_eq!(normalize_mount_path("team/").unwrap(), "team");
        assert_eq!(normalize_mount_path("/a/b/").unwrap(), "a/b");
        assert_eq!(normalize_mount_path(""), Err(MountPathError::Empty));
        assert_eq!(normalize_mount_path("/"), Err(MountPathError::Empty));
        assert_eq!(normalize_mount_path("sys/x"), Err(MountPathError::Reserved("sys/".into())));
        assert_eq!(normalize_mount_path("auth"), Err(MountPathError::Reserved("auth/".into())));
        assert!(normalize_mount_path("a//b").is_err());
        assert!(normalize_mount_path("a/../b").is_err());
        assert!(normalize_mount_path("a*").is_err());
        assert!(normalize_mount_path("system").is_ok(), "only whole segments are reserved");
    }

    #[test]
    fn nesting_mounts_overlap_siblings_do_not() {
        assert!(overlaps("a", "a"));
        assert!(overlaps("a", "a/b"));
        assert!(overlaps("a/b", "a"));
        assert!(!overlaps("a", "ab"));
        assert!(!overlaps("a/b", "a/c"));
    }

    #[test]
    fn records_round_trip_and_ids_follow_from_their_bytes() {
        let r = MountRecord::new_kv([0xAB; 16], "team".into(), 5);
        assert_eq!(r.storage, format!("kv-{}", "ab".repeat(16)));
        assert_eq!(r.accessor, "kv_abababab");
        assert_eq!(r.uuid, "abababab-abab-abab-abab-abababababab");
        assert_eq!(MountRecord::decode(&r.encode()).unwrap(), r);
        let d = MountRecord::default_kv("secret");
        assert_eq!(d.storage, "secret", "the default mount keeps the storage of earlier releases");
        assert_eq!(d, MountRecord::default_kv("secret"), "the same on every node");
    }
}
