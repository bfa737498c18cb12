//! Which keys a store certainly does not hold, without asking SlateDB.
//!
//! A write to a secret that does not exist yet reads two keys that are not there: its metadata
//! (`s/...`) and its revision (`c/rev/...`) — on the leader to decide it, on every node to apply
//! it. Our cache cannot answer those (nobody asked for the key before), so each went to SlateDB,
//! whose point read of a missing key still builds an iterator over every memtable and consults
//! the filter of every sorted run: under a load of new secrets, 44 % of a following node's CPU
//! (docs/benchmarks.md, "New secrets skip the store's read").
//!
//! [`KeyFilter`] is a growable Bloom filter over the metadata and revision keys of the store. It
//! may answer "maybe" for a key that is not there (then SlateDB is asked, as before) and never
//! "absent" for a key that is:
//! * every key a commit writes is added before the commit reaches SlateDB, and nothing else
//!   writes to the store;
//! * the keys already stored are added by one scan after the store opens
//!   ([`crate::store::Store::track_absent_keys`]); the filter answers only once that scan has
//!   finished, and it was created before the store accepted its first commit, so a key is either
//!   found by the scan or added by its commit;
//! * a deleted key stays in the filter (a false "maybe", never a false "absent").

use std::sync::RwLock;

use growable_bloom_filter::GrowableBloom;

use crate::store::keys;

/// The false-positive rate of the filter (a "maybe" for an absent key: one SlateDB read, as
/// without a filter). Ten bits a key at this rate: 2.4 MB for a million secrets.
const ERROR_RATE: f64 = 0.01;

/// Keys the first part of the filter is sized for; it grows in parts as keys are added.
const INITIAL_KEYS: usize = 100_000;

/// See the module comment.
pub struct KeyFilter {
    inner: RwLock<Inner>,
}

struct Inner {
    bloom: GrowableBloom,
    /// The scan of the stored keys has finished: "absent" may be answered.
    ready: bool,
}

impl Default for KeyFilter {
    fn default() -> Self {
        KeyFilter { inner: RwLock::new(Inner { bloom: GrowableBloom::new(ERROR_RATE, INITIAL_KEYS), ready: false }) }
    }
}

impl KeyFilter {
    /// Whether the filter keeps `key`'s kind of key (metadata and revisions).
    pub fn covers(key: &[u8]) -> bool {
        key.starts_with(keys::META_PREFIX) || key.starts_with(keys::REVISION_PREFIX)
    }

    /// Record that the store may hold `key` from now on.
    pub fn insert(&self, key: &[u8]) {
        if Self::covers(key) {
            self.inner.write().unwrap_or_else(|e| e.into_inner()).bloom.insert(key);
        }
    }

    /// The stored keys are all in: answer from now on.
    pub fn set_ready(&self) {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).ready = true;
    }

    /// Whether the filter answers yet.
    #[cfg(test)]
    pub(crate) fn is_ready(&self) -> bool {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).ready
    }

    /// Whether the store certainly does not hold `key`. `false` means "maybe": ask SlateDB.
    pub fn absent(&self, key: &[u8]) -> bool {
        if !Self::covers(key) {
            return false;
        }
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.ready && !inner.bloom.contains(key)
    }

    /// Keys added so far (the scan's and the commits').
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).bloom.len()
    }

    /// Whether no key was added.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_absent_until_the_stored_keys_are_in() {
        let f = KeyFilter::default();
        assert!(!f.absent(b"s/secret/a"), "not ready: every key is a maybe");
        f.insert(b"s/secret/a");
        f.set_ready();
        assert!(!f.absent(b"s/secret/a"), "an added key is never absent");
        assert!(f.absent(b"s/secret/b"));
        assert!(f.absent(b"c/rev/secret/b"));
    }

    #[test]
    fn only_metadata_and_revision_keys_are_answered() {
        let f = KeyFilter::default();
        f.set_ready();
        for other in [&b"v/secret/a\0\0\0\0\0\0\0\0\x01"[..], b"c/token/x", b"c/policy/app", b"o/\0\0\0\0"] {
            assert!(!f.absent(other), "{:?} is not the filter's to answer", String::from_utf8_lossy(other));
            f.insert(other);
        }
        assert!(f.is_empty(), "keys of other kinds are not kept");
    }

    #[test]
    fn no_added_key_is_ever_absent_as_the_filter_grows() {
        let f = KeyFilter::default();
        f.set_ready();
        let key = |i: usize| format!("s/secret/bench/{i:08}").into_bytes();
        let n = INITIAL_KEYS * 3;
        for i in 0..n {
            f.insert(&key(i));
        }
        assert!((0..n).all(|i| !f.absent(&key(i))), "a false absent would lose a secret");
        let unknown = (n..n + 10_000).filter(|&i| !f.absent(&key(i))).count();
        assert!(unknown < 500, "{unknown} of 10,000 absent keys answered maybe (about 1 % expected)");
    }

    /// A real store: keys stored before the filter's scan, written during and after it, and
    /// deleted, all read back as the store holds them.
    #[tokio::test]
    async fn a_store_reads_what_it_holds_through_the_filter() {
        use crate::store::{ApplyBatch, Store, StoreConfig};
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig { dir: dir.path().to_path_buf(), cache_memory_bytes: 1 << 20, cache_disk_bytes: 0 };
        let put = |keys: &[&[u8]]| {
            let mut b = ApplyBatch::default();
            for k in keys {
                b.writes.insert(k.to_vec(), Some(b"v".to_vec()));
            }
            b
        };
        // Stored before this process opened the store: only the scan can know them.
        let store = Store::open(&cfg).await.unwrap();
        store.commit(put(&[b"s/secret/before", b"c/rev/secret/before"])).await.unwrap();
        store.close().await.unwrap();
        drop(store);

        let store = Store::open(&cfg).await.unwrap();
        store.track_absent_keys();
        store.commit(put(&[b"s/secret/during"])).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !store.absent.is_ready() {
            assert!(std::time::Instant::now() < deadline, "the key filter's scan never finished");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        store.commit(put(&[b"s/secret/after"])).await.unwrap();
        let mut delete = ApplyBatch::default();
        delete.writes.insert(b"s/secret/during".to_vec(), None);
        store.commit(delete).await.unwrap();

        for held in [&b"s/secret/before"[..], b"c/rev/secret/before", b"s/secret/after"] {
            assert!(!store.absent.absent(held), "{}", String::from_utf8_lossy(held));
            assert_eq!(store.get_committed(held).await.unwrap().as_deref(), Some(&b"v"[..]));
        }
        assert_eq!(store.get_committed(b"s/secret/during").await.unwrap(), None, "deleted");
        assert!(store.absent.absent(b"s/secret/never"), "a key never written is known absent");
        assert_eq!(store.get_committed(b"s/secret/never").await.unwrap(), None);
        assert_eq!(store.meta("secret", "never").await.unwrap(), None);
        assert_eq!(store.revision(b"secret/never").await.unwrap(), 0);
    }
}
