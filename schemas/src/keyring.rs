//! The root key and the keyring derived from it.
//!
//! One 32-byte root key is the only secret a node must be given. From it, per key *term*, HKDF
//! derives the key that seals values and the key that authenticates events; a separate derived
//! key hashes API tokens. Terms let a later release rotate: new writes use the newest term, older
//! terms stay to open what they sealed until a rewrap has moved everything.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::KeyError;

/// Environment variable a node reads its root key from (hex or base64 of 32 bytes).
pub const ROOT_KEY_ENV: &str = "SECRETLOG_ROOT_KEY";
/// Environment variable naming a file that holds the root key.
pub const ROOT_KEY_FILE_ENV: &str = "SECRETLOG_ROOT_KEY_FILE";

type HmacSha256 = Hmac<Sha256>;

/// The root key. Never printed: its `Debug` shows nothing of it, and its memory is zeroed on drop.
#[derive(Clone)]
pub struct RootKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

impl RootKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RootKey(Zeroizing::new(bytes))
    }

    /// A fresh random key (for `secretlog up` in development and for `init`).
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        RootKey::from_bytes(k)
    }

    /// Parse 64 hex characters or base64 (standard or URL-safe) of exactly 32 bytes.
    /// `origin` names where the text came from, for the error message; the text itself is never
    /// part of an error.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let malformed = |detail: String| KeyError::Malformed { origin: origin.to_string(), detail };
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|_| malformed("invalid hex".into()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
                .map_err(|_| malformed(format!("{} characters that are neither hex nor base64", t.len())))?
        };
        let bytes = Zeroizing::new(bytes);
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed(format!("{} bytes", bytes.len())))?;
        Ok(RootKey::from_bytes(arr))
    }

    /// Read a key file (hex or base64 text).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| KeyError::Unreadable { path: path.display().to_string(), source })?,
        );
        RootKey::parse(&text, &path.display().to_string())
    }

    /// The key from, in order: `SECRETLOG_ROOT_KEY`, the file named by `file`, the file named by
    /// `SECRETLOG_ROOT_KEY_FILE`. A node without any stays sealed.
    pub fn load(file: Option<&Path>) -> Result<Self, KeyError> {
        if let Ok(v) = std::env::var(ROOT_KEY_ENV) {
            return RootKey::parse(&v, ROOT_KEY_ENV);
        }
        if let Some(f) = file {
            return RootKey::from_file(f);
        }
        if let Ok(f) = std::env::var(ROOT_KEY_FILE_ENV) {
            return RootKey::from_file(Path::new(&f));
        }
        Err(KeyError::Missing { env: ROOT_KEY_ENV })
    }

    /// Hex text of the key, for writing a development key file with mode 0600.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(*self.0))
    }

    fn derive(&self, info: &str) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(b"secretlog keyring v1"), &self.0[..]);
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        hk.expand(info.as_bytes(), &mut okm[..]).expect("32-byte HKDF output");
        okm
    }
}

struct TermKeys {
    seal: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

/// The keys a node uses, derived from the root key, by term.
pub struct Keyring {
    terms: BTreeMap<u32, TermKeys>,
    token: Zeroizing<[u8; 32]>,
    audit: Zeroizing<[u8; 32]>,
    key_check: [u8; 8],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("terms", &self.terms.keys().collect::<Vec<_>>())
            .field("key_check", &hex::encode(self.key_check))
            .finish()
    }
}

impl Keyring {
    /// The keyring of a root key: term 1 (rotation adds terms through the log).
    pub fn from_root(root: &RootKey) -> Self {
        Keyring::with_terms(root, 1)
    }

    /// Terms `1..=newest`, all derived from the root key.
    pub fn with_terms(root: &RootKey, newest: u32) -> Self {
        let terms = (1..=newest.max(1))
            .map(|t| {
                let keys = TermKeys {
                    seal: root.derive(&format!("term/{t}/seal")),
                    mac: root.derive(&format!("term/{t}/event-mac")),
                };
                (t, keys)
            })
            .collect();
        let check = root.derive("key-check");
        let mut key_check = [0u8; 8];
        key_check.copy_from_slice(&check[..8]);
        Keyring { terms, token: root.derive("token-hash"), audit: root.derive("audit-hmac"), key_check }
    }

    /// The term new values are sealed and new events authenticated with.
    pub fn active_term(&self) -> u32 {
        *self.terms.keys().next_back().expect("a keyring always has a term")
    }

    /// All terms this keyring can open.
    pub fn terms(&self) -> impl Iterator<Item = u32> + '_ {
        self.terms.keys().copied()
    }

    /// A public fingerprint of the root key (8 bytes of a derived value): lets a node tell "this
    /// record was written under another root key" from "this record was forged", and reveals
    /// nothing about the key.
    pub fn key_check(&self) -> [u8; 8] {
        self.key_check
    }

    pub(crate) fn seal_key(&self, term: u32) -> Option<&[u8; 32]> {
        self.terms.get(&term).map(|k| &*k.seal)
    }

    pub(crate) fn mac(&self, term: u32, parts: &[&[u8]]) -> Option<[u8; 32]> {
        let keys = self.terms.get(&term)?;
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&keys.mac[..]).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        Some(mac.finalize().into_bytes().into())
    }

    /// The keyed hash under which a token is stored and replicated; the token itself never is.
    pub fn token_hash(&self, token: &str) -> [u8; 32] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.token[..]).expect("HMAC takes any key length");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// What the audit log writes instead of a token or secret value: `hmac-sha256:<hex>` under a
    /// key of its own (HKDF label `audit-hmac`), so equal inputs give equal entries — an auditor
    /// holding a suspect value can compute its HMAC with the root key and grep for it — while the
    /// log itself reveals nothing, and an audit entry is never a usable token hash.
    pub fn audit_hmac(&self, data: &[u8]) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.audit[..]).expect("HMAC takes any key length");
        mac.update(data);
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `token` hashes to `hash`, compared in constant time.
    pub fn token_matches(&self, token: &str, hash: &[u8; 32]) -> bool {
        self.token_hash(token).ct_eq(hash).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_base64_and_refuses_others() {
        let k = [7u8; 32];
        let hex_text = hex::encode(k);
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        let a = Keyring::from_root(&RootKey::parse(&hex_text, "t").unwrap());
        let b = Keyring::from_root(&RootKey::parse(&format!(" {b64}\n"), "t").unwrap());
        assert_eq!(a.key_check(), b.key_check());
        for bad in ["", "abc", &hex::encode([1u8; 31]), &base64::engine::general_purpose::STANDARD.encode([1u8; 33])] {
            let err = RootKey::parse(bad, "test-origin").unwrap_err();
            assert!(err.to_string().contains("test-origin"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let k = RootKey::from_bytes([0xAB; 32]);
        assert!(!format!("{k:?}").contains("ab"));
        let ring = Keyring::from_root(&k);
        assert!(!format!("{ring:?}").contains(&hex::encode([0xAB; 4])));
    }

    #[test]
    fn token_hash_is_keyed_and_compared_in_constant_time() {
        let a = Keyring::from_root(&RootKey::from_bytes([1; 32]));
        let b = Keyring::from_root(&RootKey::from_bytes([2; 32]));
        let h = a.token_hash("s.token");
        assert!(a.token_matches("s.token", &h));
        assert!(!a.token_matches("s.tokem", &h));
        assert_ne!(h, b.token_hash("s.token"));
    }

    #[test]
    fn audit_hmac_is_stable_keyed_and_not_the_token_hash() {
        let a = Keyring::from_root(&RootKey::from_bytes([1; 32]));
        let b = Keyring::from_root(&RootKey::from_bytes([2; 32]));
        let h = a.audit_hmac(b"s.token");
        assert_eq!(h, a.audit_hmac(b"s.token"));
        assert!(h.starts_with("hmac-sha256:") && h.len() == "hmac-sha256:".len() + 64, "{h}");
        assert_ne!(h, b.audit_hmac(b"s.token"));
        assert_ne!(h, a.audit_hmac(b"s.tokem"));
        assert!(!h.contains(&hex::encode(a.token_hash("s.token"))));
    }

    #[test]
    fn terms_derive_distinct_keys() {
        let ring = Keyring::with_terms(&RootKey::from_bytes([3; 32]), 3);
        assert_eq!(ring.active_term(), 3);
        assert_ne!(ring.seal_key(1), ring.seal_key(2));
        assert_ne!(ring.mac(1, &[b"x"]), ring.mac(2, &[b"x"]));
        assert!(ring.mac(4, &[b"x"]).is_none());
    }
}
