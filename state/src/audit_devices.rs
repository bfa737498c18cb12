//! The audit devices enabled through the log, as a node follows them: built from the
//! `PutAuditDevice` / `DeleteAuditDevice` events it applied (stored under `c/audit/<path>`) and
//! published with the batch that changed them, so every node opens a device enabled with
//! `bao audit enable` and closes one disabled at the same position of the log.

use std::collections::BTreeMap;

use secretlog_schemas::Operation;
use secretlog_schemas::audit::AuditDeviceRecord;

/// The stored table: device path (no trailing slash) → its record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditDevices {
    entries: BTreeMap<String, AuditDeviceRecord>,
}

impl AuditDevices {
    /// The table from stored `(path, record JSON)` pairs.
    pub fn from_stored(pairs: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<AuditDevices, String> {
        let mut entries = BTreeMap::new();
        for (path, value) in pairs {
            let record = AuditDeviceRecord::decode(&value).map_err(|e| format!("audit device {path:?}: {e}"))?;
            entries.insert(path, record);
        }
        Ok(AuditDevices { entries })
    }

    /// Apply an audit-device event; returns the path and what to store under `c/audit/<path>`
    /// (`None`: remove it), or `None` for any other event.
    pub fn apply(&mut self, op: &Operation) -> Result<Option<(String, Option<Vec<u8>>)>, String> {
        match op {
            Operation::PutAuditDevice { path, record } => {
                let r = AuditDeviceRecord::decode(record).map_err(|e| format!("audit device {path:?}: {e}"))?;
                self.entries.insert(path.clone(), r);
                Ok(Some((path.clone(), Some(record.clone()))))
            }
            Operation::DeleteAuditDevice { path } => {
                self.entries.remove(path);
                Ok(Some((path.clone(), None)))
            }
            _ => Ok(None),
        }
    }

    pub fn get(&self, path: &str) -> Option<&AuditDeviceRecord> {
        self.entries.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &AuditDeviceRecord)> {
        self.entries.iter().map(|(p, r)| (p.as_str(), r))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> AuditDeviceRecord {
        AuditDeviceRecord {
            kind: "file".into(),
            description: String::new(),
            options: [("file_path".to_string(), path.to_string())].into(),
            created_ms: 1,
        }
    }

    #[test]
    fn events_build_the_table_and_what_is_stored_rebuilds_it() {
        let mut t = AuditDevices::default();
        let put = |p: &str, r: &AuditDeviceRecord| Operation::PutAuditDevice { path: p.into(), record: r.encode() };
        let mut stored = BTreeMap::new();
        for op in [
            put("a", &file("/a.log")),
            put("b", &file("/b.log")),
            put("a", &file("/a2.log")),
            Operation::DeleteAuditDevice { path: "b".into() },
        ] {
            let (path, value) = t.apply(&op).unwrap().unwrap();
            match value {
                Some(v) => stored.insert(path, v),
                None => stored.remove(&path),
            };
        }
        assert_eq!(t.iter().map(|(p, r)| (p, r.option("file_path"))).collect::<Vec<_>>(), [("a", "/a2.log")]);
        assert_eq!(AuditDevices::from_stored(stored).unwrap(), t);
        assert_eq!(t.apply(&Operation::DeleteMount { path: "a".into() }).unwrap(), None, "not an audit event");
        let bad = Operation::PutAuditDevice { path: "x".into(), record: b"not json".to_vec() };
        assert!(t.apply(&bad).is_err());
    }
}
