//! A root key as Shamir shares, and the unseal that collects them — the key part of sealing,
//! with nothing of HTTP in it (the endpoints are [`crate::api::seal`]; `secretlog init` and
//! `secretlog unseal` use this directly).
//!
//! `secretlog init` splits a fresh root key into shares and writes the *init record*
//! (`seal.json`: share count, threshold and the key's check value — nothing secret). Key holders
//! submit one share each to an [`Unsealer`]; once `threshold` distinct shares are in, the key is
//! reconstructed and checked against the record's key check. Nothing here ever logs or returns
//! share or key material: errors name what is wrong (length, encoding, key check), never the text.

use std::path::Path;

use blahaj::{Share, Sharks};
use secretlog_schemas::{Keyring, RootKey};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use secretlog_state::error::NodeError;

/// The init record, `seal.json`, written by `secretlog init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealConfig {
    /// How many shares the key was split into.
    pub shares: u8,
    /// How many of them reconstruct it.
    pub threshold: u8,
    /// Hex of the key's check value (as every log record carries it).
    pub key_check: String,
}

impl SealConfig {
    /// Read and check an init record.
    pub fn load(path: &Path) -> Result<SealConfig, NodeError> {
        let bytes = std::fs::read(path).map_err(|e| NodeError::io(path, e))?;
        let cfg: SealConfig = serde_json::from_slice(&bytes).map_err(|e| NodeError::Config {
            field: "seal-config",
            reason: format!("{} is not an init record: {e}", path.display()),
        })?;
        if cfg.threshold < 2 || cfg.threshold > cfg.shares {
            return Err(NodeError::Config {
                field: "seal-config",
                reason: format!(
                    "{}: threshold {} of {} shares is not valid",
                    path.display(),
                    cfg.threshold,
                    cfg.shares
                ),
            });
        }
        Ok(cfg)
    }

    /// Whether `keyring` comes from this cluster's root key.
    pub fn matches(&self, keyring: &Keyring) -> bool {
        hex::encode(keyring.key_check()) == self.key_check
    }
}

/// Why a share, or a set of shares, does not unseal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    /// Not a share at all. Progress is kept.
    #[error("'key' must be a valid hex or base64 string of one key share: {0}")]
    Malformed(String),
    /// A share numbered like one already given, with another value: the shares come from two
    /// different `init`s. Progress is reset.
    #[error(
        "this share has the number of one already given but another value: the shares are not of one key; unseal progress reset"
    )]
    Conflict,
    /// The shares reconstruct a key, but not this cluster's. Progress is reset.
    #[error("the shares do not reconstruct this cluster's root key (its key check differs); unseal progress reset")]
    WrongKey,
    /// `init` asked for an impossible split.
    #[error("threshold must be between 2 and the number of shares ({shares}), not {threshold}")]
    Threshold { shares: u8, threshold: u8 },
}

/// Bytes of one share of a 32-byte key: its number, then 32 bytes.
const SHARE_LEN: usize = 33;

/// Split `key` into `n` shares (hex text), any `k` of which reconstruct it.
pub fn split(key: &RootKey, n: u8, k: u8) -> Result<Vec<Zeroizing<String>>, UnsealError> {
    if k < 2 || k > n {
        return Err(UnsealError::Threshold { shares: n, threshold: k });
    }
    let secret = Zeroizing::new(hex::decode(key.to_hex().as_str()).expect("a key's hex is hex"));
    Ok(Sharks(k)
        .dealer(&secret)
        .take(n as usize)
        .map(|s| {
            let bytes = Zeroizing::new(Vec::from(&s));
            Zeroizing::new(hex::encode(bytes.as_slice()))
        })
        .collect())
}

/// One share from its text: hex (as `init` writes it) or base64, surrounding whitespace ignored.
pub fn parse_share(text: &str) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    use base64::Engine;
    let t = text.trim();
    let bytes = if !t.is_empty() && t.len().is_multiple_of(2) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).map(Zeroizing::new).map_err(|_| UnsealError::Malformed("invalid hex".into()))?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(t)
            .map(Zeroizing::new)
            .map_err(|_| UnsealError::Malformed(format!("{} characters that are neither hex nor base64", t.len())))?
    };
    if bytes.len() != SHARE_LEN {
        return Err(UnsealError::Malformed(format!("a share is {SHARE_LEN} bytes, this one {}", bytes.len())));
    }
    if bytes[0] == 0 {
        // Shares are numbered from 1; number 0 would be the key itself.
        return Err(UnsealError::Malformed("share number 0".into()));
    }
    Ok(bytes)
}

/// Reconstruct the key from `k` or more distinct shares (as [`parse_share`] returns them).
pub fn combine(shares: &[Zeroizing<Vec<u8>>], k: u8) -> Result<RootKey, UnsealError> {
    let parsed: Vec<Share> = shares
        .iter()
        .map(|s| Share::try_from(s.as_slice()).map_err(|e| UnsealError::Malformed(e.to_string())))
        .collect::<Result<_, _>>()?;
    let secret = Zeroizing::new(
        Sharks(k)
            .recover(&parsed)
            .map_err(|_| UnsealError::Malformed(format!("{} distinct share(s), {k} needed", shares.len())))?,
    );
    let bytes: [u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| UnsealError::Malformed("the shares do not make a 32-byte key".into()))?;
    Ok(RootKey::from_bytes(bytes))
}

/// The shares submitted so far, until they reach the threshold. Pure: shares in, progress or a
/// key out. Every share it held is zeroized when it is reset or dropped.
pub(crate) struct Unsealer {
    config: SealConfig,
    parts: Vec<Zeroizing<Vec<u8>>>,
    /// Identifies one unseal attempt (Vault's `nonce`); empty while no share is in.
    nonce: String,
}

impl Unsealer {
    pub fn new(config: SealConfig) -> Self {
        Unsealer { config, parts: Vec::new(), nonce: String::new() }
    }

    pub fn config(&self) -> &SealConfig {
        &self.config
    }

    /// Distinct shares submitted since the last reset.
    pub fn progress(&self) -> usize {
        self.parts.len()
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Discard the shares submitted so far.
    pub fn reset(&mut self) {
        self.parts.clear();
        self.nonce.clear();
    }

    /// Take one share. `Ok(None)`: more are needed (a share given twice counts once, as in
    /// Vault). `Ok(Some(key))`: the threshold was reached and the key is this cluster's; progress
    /// is reset. A malformed share leaves progress as it was; shares that do not belong together
    /// or make another key reset it.
    pub fn submit(&mut self, text: &str) -> Result<Option<RootKey>, UnsealError> {
        let share = parse_share(text)?;
        if let Some(existing) = self.parts.iter().find(|p| p[0] == share[0]) {
            if bool::from(existing.as_slice().ct_eq(share.as_slice())) {
                return Ok(None);
            }
            self.reset();
            return Err(UnsealError::Conflict);
        }
        if self.parts.is_empty() {
            self.nonce = uuid::Uuid::new_v4().to_string();
        }
        self.parts.push(share);
        if self.parts.len() < self.config.threshold as usize {
            return Ok(None);
        }
        let key = combine(&self.parts, self.config.threshold);
        self.reset();
        let key = key?;
        if !self.config.matches(&Keyring::from_root(&key)) {
            return Err(UnsealError::WrongKey);
        }
        Ok(Some(key))
    }
}

/// Tests' fixture: a fresh key split 3 of 5, and its init record.
#[cfg(test)]
pub(crate) fn three_of_five() -> (RootKey, Vec<Zeroizing<String>>, SealConfig) {
    let key = RootKey::generate();
    let shares = split(&key, 5, 3).unwrap();
    let cfg = SealConfig { shares: 5, threshold: 3, key_check: hex::encode(Keyring::from_root(&key).key_check()) };
    (key, shares, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (RootKey, Vec<Zeroizing<String>>, SealConfig) {
        three_of_five()
    }

    fn check(key: &RootKey) -> [u8; 8] {
        Keyring::from_root(key).key_check()
    }

    #[test]
    fn three_of_five_shares_unseal_and_two_do_not() {
        let (key, shares, cfg) = setup();
        for pick in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let mut u = Unsealer::new(cfg.clone());
            assert_eq!(u.submit(&shares[pick[0]]).unwrap().map(|k| check(&k)), None);
            assert_eq!(u.progress(), 1);
            assert!(!u.nonce().is_empty());
            assert!(u.submit(&shares[pick[1]]).unwrap().is_none(), "two shares must not unseal");
            assert_eq!(u.progress(), 2);
            let got = u.submit(&shares[pick[2]]).unwrap().expect("the third share unseals");
            assert_eq!(check(&got), check(&key));
            assert_eq!((u.progress(), u.nonce()), (0, ""), "progress resets once unsealed");
        }
    }

    #[test]
    fn a_duplicate_share_counts_once() {
        let (_, shares, cfg) = setup();
        let mut u = Unsealer::new(cfg);
        u.submit(&shares[0]).unwrap();
        let nonce = u.nonce().to_string();
        assert!(u.submit(&format!("  {}\n", shares[0].as_str())).unwrap().is_none());
        assert_eq!(u.progress(), 1);
        assert_eq!(u.nonce(), nonce, "the same attempt");
        assert!(u.submit(&shares[1]).unwrap().is_none());
        assert!(u.submit(&shares[2]).unwrap().is_some());
    }

    #[test]
    fn reset_discards_submitted_shares() {
        let (_, shares, cfg) = setup();
        let mut u = Unsealer::new(cfg);
        u.submit(&shares[0]).unwrap();
        u.submit(&shares[1]).unwrap();
        let first = u.nonce().to_string();
        u.reset();
        assert_eq!((u.progress(), u.nonce()), (0, ""));
        assert!(u.submit(&shares[2]).unwrap().is_none(), "one share after a reset is not enough");
        assert_ne!(u.nonce(), first, "a new attempt");
        assert!(u.submit(&shares[3]).unwrap().is_none());
        assert!(u.submit(&shares[4]).unwrap().is_some());
    }

    #[test]
    fn a_share_of_another_cluster_is_refused_and_resets_progress() {
        let (_, shares, cfg) = setup();
        let (_, foreign, _) = setup();
        // Another cluster's share with a number not yet given: the key reconstructs, but not ours.
        let mut u = Unsealer::new(cfg.clone());
        u.submit(&shares[0]).unwrap();
        u.submit(&shares[1]).unwrap();
        assert_eq!(u.submit(&foreign[4]).unwrap_err(), UnsealError::WrongKey);
        assert_eq!(u.progress(), 0);
        // With a number already given: refused at once.
        u.submit(&shares[0]).unwrap();
        assert_eq!(u.submit(&foreign[0]).unwrap_err(), UnsealError::Conflict);
        assert_eq!(u.progress(), 0);
        // Three foreign shares make the other cluster's key: refused.
        for s in &foreign[..2] {
            u.submit(s).unwrap();
        }
        assert_eq!(u.submit(&foreign[2]).unwrap_err(), UnsealError::WrongKey);
        // And our own three still unseal afterwards.
        for s in &shares[2..4] {
            assert!(u.submit(s).unwrap().is_none());
        }
        assert!(u.submit(&shares[4]).unwrap().is_some());
    }

    #[test]
    fn malformed_shares_are_refused_without_losing_progress_or_echoing_them() {
        let (_, shares, cfg) = setup();
        let mut u = Unsealer::new(cfg);
        u.submit(&shares[0]).unwrap();
        let truncated = &shares[1][..20];
        let zero = format!("00{}", &shares[1][2..]);
        for bad in ["", "not a share!", "abc", truncated, &zero, &format!("{}00", shares[1].as_str())] {
            let e = u.submit(bad).unwrap_err();
            assert!(matches!(e, UnsealError::Malformed(_)), "{bad:?}: {e:?}");
            if bad.len() > 4 {
                assert!(!e.to_string().contains(bad), "the error must not echo the share");
            }
            assert_eq!(u.progress(), 1);
        }
        // base64 of the same bytes is accepted.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(shares[1].as_str()).unwrap());
        assert!(u.submit(&b64).unwrap().is_none());
        assert_eq!(u.progress(), 2);
    }

    #[test]
    fn impossible_splits_are_refused() {
        let key = RootKey::generate();
        assert!(split(&key, 5, 1).is_err() && split(&key, 3, 4).is_err());
        let shares = split(&key, 5, 3).unwrap();
        let parsed: Vec<_> = shares.iter().map(|s| parse_share(s).unwrap()).collect();
        assert!(combine(&parsed[..2], 3).is_err());
        assert_eq!(check(&combine(&parsed[2..], 3).unwrap()), check(&key));
    }
}
