//! A secret's metadata, as JSON: what a store holds under the secret's `s/` key, what snapshots
//! carry (`secrets.arrow`) and what a [`crate::Operation::RestoreSecret`] carries. The KV v2
//! state model that changes it (`state::model`) lives in the reader.
//!
//! The JSON is pinned by golden files in `schemas/tests/golden/` (`secret_meta_*_v1.json`). A
//! field at its default is left out and read back as the default; records written with every
//! field (before that) read the same. New fields are added with `#[serde(default)]`, never
//! renamed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything about one secret except the values themselves (those are stored sealed, apart).
///
/// Stored as JSON under its `s/` key, and carried so in snapshots and restore events. A field at
/// its default is left out (and read back as the default): most secrets never set one, and the
/// store holds one of these per secret, so they are a good part of its bytes per secret (issue
/// #24). Records written with every field (before this) read the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    pub current_version: u64,
    /// 0 until pruning removed a version, as Vault reports it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub oldest_version: u64,
    /// 0 means "the mount's default".
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_versions: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub cas_required: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub delete_version_after_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metadata: Option<BTreeMap<String, String>>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub versions: BTreeMap<u64, VersionMeta>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl SecretMeta {
    /// The stored form of `bytes` (a record of this or an earlier release): what this release
    /// would store for the same metadata; `None` if they are not metadata.
    pub fn canonical(bytes: &[u8]) -> Option<Vec<u8>> {
        serde_json::from_slice::<SecretMeta>(bytes).ok().and_then(|m| serde_json::to_vec(&m).ok())
    }
}

/// Per-version metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub created_ms: i64,
    /// When the version is (or will be, for `delete_version_after`) soft-deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub destroyed: bool,
}

impl VersionMeta {
    /// Deleted at `now_ms` (a scheduled deletion counts once its time has passed).
    pub fn is_deleted(&self, now_ms: i64) -> bool {
        self.deletion_ms.is_some_and(|d| d <= now_ms)
    }
    /// Whether its data can be read at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        !self.destroyed && !self.is_deleted(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_stored_without_its_defaults_and_earlier_full_records_read_the_same() {
        let one = SecretMeta {
            current_version: 1,
            created_ms: 1_796_000_000_000,
            updated_ms: 1_796_000_000_000,
            versions: BTreeMap::from([(1, VersionMeta { created_ms: 1_796_000_000_000, ..Default::default() })]),
            ..Default::default()
        };
        let compact = serde_json::to_vec(&one).unwrap();
        assert_eq!(
            String::from_utf8(compact.clone()).unwrap(),
            r#"{"current_version":1,"created_ms":1796000000000,"updated_ms":1796000000000,"versions":{"1":{"created_ms":1796000000000}}}"#
        );
        // As the previous release stored it: every field.
        let full = br#"{"current_version":1,"oldest_version":0,"max_versions":0,"cas_required":false,"delete_version_after_secs":0,"custom_metadata":null,"created_ms":1796000000000,"updated_ms":1796000000000,"versions":{"1":{"created_ms":1796000000000,"deletion_ms":null,"destroyed":false}}}"#;
        assert_eq!(serde_json::from_slice::<SecretMeta>(full).unwrap(), one);
        assert_eq!(SecretMeta::canonical(full).unwrap(), compact, "the digest sees one state in both forms");
        assert!(compact.len() * 2 < full.len(), "{} vs {} bytes", compact.len(), full.len());
        // Set fields stay, an empty custom metadata map included.
        let set = SecretMeta {
            oldest_version: 2,
            max_versions: 3,
            cas_required: true,
            delete_version_after_secs: 60,
            custom_metadata: Some(BTreeMap::new()),
            versions: BTreeMap::from([(2, VersionMeta { created_ms: 5, deletion_ms: Some(9), destroyed: true })]),
            ..one
        };
        let bytes = serde_json::to_vec(&set).unwrap();
        assert_eq!(serde_json::from_slice::<SecretMeta>(&bytes).unwrap(), set);
        assert_eq!(SecretMeta::canonical(b"{not json"), None);
    }
}
