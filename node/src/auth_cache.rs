//! What a node knows of tokens and of what their policies grant, kept between requests.
//!
//! Without it every request of a non-root token read the token's record from the store and
//! parsed every policy it names (HCL) into an ACL: 57 % of a reader's CPU, reads at a third of
//! the root token's rate (docs/benchmarks.md, "Reads with an application's token"). Entries are
//! valid for one [`Progress::auth_version`](secretlog_state::materializer::Progress): the count
//! of applied batches that changed a token, the root token or a policy. A lookup names the
//! version it read *before* reading the store, so an entry computed from state older than a
//! change is never kept past it; a change empties the cache at the next lookup.
//!
//! Only what was found is kept: an unknown token is looked up again every time (a reader may
//! not have applied it yet, and the read modes decide what to do about that). Expiry and bound
//! CIDRs are checked on every request, not cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use secretlog_schemas::auth::TokenRecord;
use secretlog_state::acl::Acl;

/// Entries kept at most of each kind; past it the cache starts again empty (a node with more
/// live tokens than this pays the lookups it paid before, no more).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct AuthCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    version: u64,
    /// Token records by the token's keyed hash (never the token).
    tokens: HashMap<[u8; 32], Arc<TokenRecord>>,
    /// Merged ACLs by the policy names they were merged from, in the token's order.
    acls: HashMap<Vec<String>, Arc<Acl>>,
}

impl Inner {
    /// The entries, emptied if they belong to an older version than `version`; `None` if this
    /// cache already holds a newer version than the caller's (its answer is out of date).
    fn at(&mut self, version: u64) -> Option<&mut Inner> {
        if version > self.version {
            *self = Inner { version, ..Default::default() };
        }
        (version == self.version).then_some(self)
    }
}

impl AuthCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of the token hashed to `hash`, as of `version`.
    pub fn token(&self, version: u64, hash: &[u8; 32]) -> Option<Arc<TokenRecord>> {
        self.lock().at(version)?.tokens.get(hash).cloned()
    }

    /// Keep `record`, read from the store after `version` was read.
    pub fn keep_token(&self, version: u64, hash: [u8; 32], record: Arc<TokenRecord>) {
        if let Some(c) = self.lock().at(version) {
            if c.tokens.len() >= MAX_ENTRIES {
                c.tokens.clear();
            }
            c.tokens.insert(hash, record);
        }
    }

    /// The ACL merged from `policies`, as of `version`.
    pub fn acl(&self, version: u64, policies: &[String]) -> Option<Arc<Acl>> {
        self.lock().at(version)?.acls.get(policies).cloned()
    }

    /// Keep `acl`, merged from the store's policies after `version` was read.
    pub fn keep_acl(&self, version: u64, policies: &[String], acl: Arc<Acl>) {
        if let Some(c) = self.lock().at(version) {
            if c.acls.len() >= MAX_ENTRIES {
                c.acls.clear();
            }
            c.acls.insert(policies.to_vec(), acl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(accessor: &str) -> Arc<TokenRecord> {
        Arc::new(TokenRecord { accessor: accessor.into(), ..Default::default() })
    }

    #[test]
    fn an_entry_lives_as_long_as_its_version() {
        let c = AuthCache::default();
        c.keep_token(1, [7; 32], rec("a"));
        assert_eq!(c.token(1, &[7; 32]).unwrap().accessor, "a");
        assert!(c.token(2, &[7; 32]).is_none(), "a newer version empties the cache");
        assert!(c.token(1, &[7; 32]).is_none(), "and the older entry is gone for good");
    }

    #[test]
    fn what_was_read_before_a_change_is_not_kept_after_it() {
        let c = AuthCache::default();
        // A lookup read version 3, then the store; meanwhile another request saw version 4.
        assert!(c.token(4, &[1; 32]).is_none());
        c.keep_token(3, [1; 32], rec("stale"));
        assert!(c.token(4, &[1; 32]).is_none(), "an answer from before the change is dropped");
        assert!(c.token(3, &[1; 32]).is_none(), "nor served to a lookup still at the old version");
        let policies = vec!["app".to_string()];
        c.keep_acl(3, &policies, Arc::new(Acl::default()));
        assert!(c.acl(4, &policies).is_none());
        c.keep_acl(4, &policies, Arc::new(Acl::default()));
        assert!(c.acl(4, &policies).is_some());
    }

    #[test]
    fn acls_are_kept_by_their_policy_names_in_order() {
        let c = AuthCache::default();
        let ab = vec!["a".to_string(), "b".to_string()];
        c.keep_acl(0, &ab, Arc::new(Acl::default()));
        assert!(c.acl(0, &ab).is_some());
        assert!(c.acl(0, &["a".to_string()]).is_none());
        assert!(c.acl(0, &["b".to_string(), "a".to_string()]).is_none());
    }

    #[test]
    fn a_full_cache_starts_again_empty() {
        let c = AuthCache::default();
        for i in 0..MAX_ENTRIES {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_be_bytes());
            c.keep_token(0, h, rec("x"));
        }
        assert!(c.token(0, &[0; 32]).is_some());
        c.keep_token(0, [0xff; 32], rec("new"));
        assert!(c.token(0, &[0; 32]).is_none(), "emptied when full");
        assert_eq!(c.token(0, &[0xff; 32]).unwrap().accessor, "new");
    }
}
