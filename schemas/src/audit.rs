//! The audit device table: where every node writes its audit trail besides the devices its own
//! flags give it (`--audit-file`, `--audit-kafka-topic`). Every entry is an [`AuditDeviceRecord`]
//! carried, as JSON, by an [`crate::Operation::PutAuditDevice`] event, so a device enabled with
//! `bao audit enable` (`PUT sys/audit/<path>`) is followed by every node, and one disabled is
//! dropped by every node, at the same position of the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The device types a node can open.
pub const FILE: &str = "file";
pub const KAFKA: &str = "kafka";

/// One audit device enabled through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDeviceRecord {
    /// `file` (option `file_path`) or `kafka` (option `topic`).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    /// The device's options, as Vault lists them (`file_path`, `topic`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// When it was enabled (ms since the epoch).
    #[serde(default)]
    pub created_ms: i64,
}

impl AuditDeviceRecord {
    /// The record's JSON, as a [`crate::Operation::PutAuditDevice`] carries it.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an audit device record serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<AuditDeviceRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// An option's value, or `""`.
    pub fn option(&self, name: &str) -> &str {
        self.options.get(name).map_or("", String::as_str)
    }
}

/// Why a device path is refused: it must be one or more segments of letters, digits, `-`, `_`
/// and `.`, without `.`/`..` segments (trailing slashes are dropped: `file/` is `file`).
pub fn normalize_device_path(raw: &str) -> Result<String, String> {
    let path = raw.trim_matches('/');
    if path.is_empty() {
        return Err("the audit device path is empty".into());
    }
    if path.len() > crate::event::MAX_PATH_LEN {
        return Err("the audit device path is too long".into());
    }
    let ok = path.split('/').all(|s| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    if !ok {
        return Err(format!("invalid audit device path {path:?}: use letters, digits, '-', '_', '.' and '/'"));
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_or_refused() {
        assert_eq!(normalize_device_path("file/").unwrap(), "file");
        assert_eq!(normalize_device_path("/team/trail").unwrap(), "team/trail");
        for bad in ["", "/", "a//b", "a/../b", "sp ace", "a\nb"] {
            assert!(normalize_device_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_record_round_trips_and_reads_without_its_defaults() {
        let r = AuditDeviceRecord {
            kind: FILE.into(),
            description: "trail".into(),
            options: [("file_path".to_string(), "/var/log/a.log".to_string())].into(),
            created_ms: 7,
        };
        assert_eq!(AuditDeviceRecord::decode(&r.encode()).unwrap(), r);
        let minimal = AuditDeviceRecord::decode(br#"{"type":"kafka"}"#).unwrap();
        assert_eq!((minimal.kind.as_str(), minimal.option("topic")), (KAFKA, ""));
    }
}
