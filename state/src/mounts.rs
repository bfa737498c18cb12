//! The mount table as a node follows it: built from the `PutMount` / `DeleteMount` events it
//! applied (stored under `c/mount/<path>`), published with every batch that changes it, and used
//! to resolve a request path to the mount serving it.
//!
//! The default mount (`secret`, the node's `--mount`) exists until a `DeleteMount` names it; every
//! other mount exists once a `PutMount` named it. A disabled path keeps a tombstone (an empty
//! stored value), so the default mount, once disabled, stays disabled.

use std::collections::BTreeMap;

use secretlog_schemas::Operation;
use secretlog_schemas::mount::MountRecord;

/// The stored table: mount path (no slashes) → its record, or `None` once disabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    entries: BTreeMap<String, Option<MountRecord>>,
}

/// The mount serving a request path, and the rest of that path after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The mount's path, without slashes (`secret`, `team/kv`).
    pub path: &'a str,
    pub record: &'a MountRecord,
    /// What follows the mount's path (`data/app/db`), without a leading slash.
    pub rest: &'a str,
}

impl Mounts {
    /// The table from stored `(path, value)` pairs (an empty value is a tombstone).
    pub fn from_stored(pairs: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<Mounts, String> {
        let mut entries = BTreeMap::new();
        for (path, value) in pairs {
            let record = if value.is_empty() {
                None
            } else {
                Some(MountRecord::decode(&value).map_err(|e| format!("mount record of {path:?}: {e}"))?)
            };
            entries.insert(path, record);
        }
        Ok(Mounts { entries })
    }

    /// Apply a mount event; returns the value to store under `c/mount/<path>`.
    pub fn apply(&mut self, op: &Operation) -> Result<Option<(String, Vec<u8>)>, String> {
        match op {
            Operation::PutMount { path, record } => {
                let r = MountRecord::decode(record).map_err(|e| format!("mount record of {path:?}: {e}"))?;
                self.entries.insert(path.clone(), Some(r));
                Ok(Some((path.clone(), record.clone())))
            }
            Operation::DeleteMount { path } => {
                self.entries.insert(path.clone(), None);
                Ok(Some((path.clone(), Vec::new())))
            }
            _ => Ok(None),
        }
    }

    /// Every mounted engine, with the default one unless it was disabled.
    pub fn live<'a>(&'a self, default: &'a DefaultMount) -> BTreeMap<&'a str, &'a MountRecord> {
        let mut out: BTreeMap<&str, &MountRecord> =
            self.entries.iter().filter_map(|(p, r)| r.as_ref().map(|r| (p.as_str(), r))).collect();
        if !self.entries.contains_key(&default.path) {
            out.insert(&default.path, &default.record);
        }
        out
    }

    /// The mount serving `rel` (a request path after `v1/`): the one whose path is a whole-segment
    /// prefix of it. Mounts never nest, so at most one matches.
    pub fn resolve<'a>(&'a self, default: &'a DefaultMount, rel: &'a str) -> Option<Resolved<'a>> {
        let under = |path: &str| -> Option<&'a str> {
            match rel.strip_prefix(path) {
                Some("") => Some(""),
                Some(rest) => rest.strip_prefix('/'),
                None => None,
            }
        };
        if !self.entries.contains_key(&default.path)
            && let Some(rest) = under(&default.path)
        {
            return Some(Resolved { path: &default.path, record: &default.record, rest });
        }
        // Only a path that is a prefix of `rel` can match: look at `rel`'s own prefixes.
        let mut end = rel.len();
        loop {
            let candidate = &rel[..end];
            if let Some((path, Some(record))) = self.entries.get_key_value(candidate) {
                return Some(Resolved { path, record, rest: under(path)? });
            }
            end = candidate.rfind('/')?;
        }
    }

    /// The record mounted at exactly `path`, if any.
    pub fn get<'a>(&'a self, default: &'a DefaultMount, path: &str) -> Option<&'a MountRecord> {
        match self.entries.get(path) {
            Some(r) => r.as_ref(),
            None if path == default.path => Some(&default.record),
            None => None,
        }
    }
}

/// The node's default mount (`--mount`), present until disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultMount {
    pub path: String,
    pub record: MountRecord,
}

impl DefaultMount {
    pub fn new(path: &str) -> Self {
        DefaultMount { path: path.to_string(), record: MountRecord::default_kv(path) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(m: &mut Mounts, path: &str, id: u8) {
        let record = MountRecord::new_kv([id; 16], String::new(), 1).encode();
        m.apply(&Operation::PutMount { path: path.into(), record }).unwrap();
    }

    #[test]
    fn requests_resolve_to_the_mount_whose_path_prefixes_them() {
        let d = DefaultMount::new("secret");
        let mut m = Mounts::default();
        put(&mut m, "team/kv", 1);
        put(&mut m, "ops", 2);
        let r = m.resolve(&d, "secret/data/a/b").unwrap();
        assert_eq!((r.path, r.rest, r.record.storage.as_str()), ("secret", "data/a/b", "secret"));
        let r = m.resolve(&d, "team/kv/data/x").unwrap();
        assert_eq!((r.path, r.rest), ("team/kv", "data/x"));
        assert_eq!(m.resolve(&d, "team/kv").unwrap().rest, "");
        assert_eq!(m.resolve(&d, "ops/config").unwrap().record.storage, format!("kv-{}", "02".repeat(16)));
        assert!(m.resolve(&d, "team/data/x").is_none(), "team alone is not mounted");
        assert!(m.resolve(&d, "opsx/data/x").is_none(), "whole segments only");
        assert!(m.resolve(&d, "secretx/data").is_none());
        assert!(m.resolve(&d, "").is_none());
    }

    #[test]
    fn a_disabled_mount_resolves_no_more_and_the_default_stays_disabled() {
        let d = DefaultMount::new("secret");
        let mut m = Mounts::default();
        put(&mut m, "ops", 2);
        m.apply(&Operation::DeleteMount { path: "ops".into() }).unwrap();
        m.apply(&Operation::DeleteMount { path: "secret".into() }).unwrap();
        assert!(m.resolve(&d, "ops/data/x").is_none());
        assert!(m.resolve(&d, "secret/data/x").is_none());
        assert!(m.live(&d).is_empty());
        put(&mut m, "secret", 3);
        assert_eq!(m.resolve(&d, "secret/data/x").unwrap().record.storage, format!("kv-{}", "03".repeat(16)));
    }

    #[test]
    fn the_stored_table_rebuilds_the_same_mounts() {
        let d = DefaultMount::new("secret");
        let mut m = Mounts::default();
        let mut stored = Vec::new();
        put(&mut m, "a", 1);
        for op in [
            Operation::PutMount { path: "b".into(), record: MountRecord::new_kv([2; 16], "x".into(), 2).encode() },
            Operation::DeleteMount { path: "secret".into() },
        ] {
            stored.push(m.apply(&op).unwrap().unwrap());
        }
        stored.push(("a".into(), MountRecord::new_kv([1; 16], String::new(), 1).encode()));
        let rebuilt = Mounts::from_stored(stored).unwrap();
        assert_eq!(rebuilt, m);
        assert_eq!(rebuilt.live(&d).keys().copied().collect::<Vec<_>>(), ["a", "b"]);
        assert!(Mounts::from_stored([("x".to_string(), b"{".to_vec())]).is_err());
    }
}
