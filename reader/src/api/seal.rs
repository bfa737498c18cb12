//! Sealing and unsealing a running node — Vault's `GET /v1/sys/seal-status`,
//! `PUT /v1/sys/unseal` and `PUT /v1/sys/seal`, with Vault's request and response bodies.
//!
//! `secretlog init` splits a fresh root key into Shamir shares and writes the *init record*
//! (`seal.json`: share count, threshold and the key's check value — nothing secret). A node
//! started with the init record (`--seal-config`) and no key is sealed: it serves nothing but
//! health (503), seal-status and unseal. Key holders submit one share each; once `threshold`
//! distinct shares are in, the key is reconstructed and checked against the record's key check,
//! and the node starts what it would have started with the key at boot.
//!
//! This module is the pure part — shares, the [`Unsealer`] that collects them, the bodies, and
//! who may seal. [`crate::node::Keys`] holds one per node and starts and stops what runs while
//! the node is unsealed. Nothing here ever logs or returns share or key material: errors name
//! what is wrong (length, encoding, key check), never the text.

use std::path::Path;

use blahaj::{Share, Sharks};
use secretlog_schemas::{Keyring, RootKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::auth::{Identity, acl_of, identify};
use super::kv::ReadContext;
use super::{ApiError, ApiRequest};
use crate::acl::Capability;
use crate::error::ReaderError;

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
    pub fn load(path: &Path) -> Result<SealConfig, ReaderError> {
        let bytes = std::fs::read(path).map_err(|e| ReaderError::io(path, e))?;
        let cfg: SealConfig = serde_json::from_slice(&bytes).map_err(|e| ReaderError::Config {
            field: "seal-config",
            reason: format!("{} is not an init record: {e}", path.display()),
        })?;
        if cfg.threshold < 2 || cfg.threshold > cfg.shares {
            return Err(ReaderError::Config {
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

impl From<UnsealError> for ApiError {
    fn from(e: UnsealError) -> Self {
        ApiError::bad_request(e.to_string())
    }
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
pub struct Unsealer {
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

/// What `seal-status` and `unseal` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealStatus {
    pub sealed: bool,
    /// Threshold and share count; 1 and 1 for a node given its key directly (no init record).
    pub threshold: u8,
    pub shares: u8,
    pub progress: usize,
    pub nonce: String,
    /// The cluster's id ([`cluster_id`]); shown once unsealed, as Vault does.
    pub cluster_id: Option<String>,
}

/// This cluster's id, as `seal-status` shows it once unsealed: a UUID derived from the root key
/// through a keyed hash (so it tells nothing about the key), the same on every node of the
/// cluster and across restarts, and another for a cluster with another root key.
pub fn cluster_id(keyring: &Keyring) -> String {
    let h = hex::encode(keyring.secret_hash("sys/seal-status/cluster_id"));
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl SealStatus {
    /// The status of a node: `unsealer` is `None` for a node without an init record.
    pub fn of(sealed: bool, unsealer: Option<&Unsealer>) -> SealStatus {
        match unsealer {
            Some(u) => SealStatus {
                sealed,
                threshold: u.config.threshold,
                shares: u.config.shares,
                progress: if sealed { u.progress() } else { 0 },
                nonce: if sealed { u.nonce.clone() } else { String::new() },
                cluster_id: None,
            },
            None => SealStatus { sealed, threshold: 1, shares: 1, progress: 0, nonce: String::new(), cluster_id: None },
        }
    }

    /// Vault's seal-status body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": "shamir",
            "initialized": true,
            "sealed": self.sealed,
            "t": self.threshold,
            "n": self.shares,
            "progress": self.progress,
            "nonce": self.nonce,
            "version": concat!(env!("CARGO_PKG_VERSION"), "+secretlog"),
            "build_date": "",
            "migration": false,
            "cluster_name": "secretlog",
            "recovery_seal": false,
            "storage_type": "kafka",
        });
        if let Some(id) = &self.cluster_id {
            body["cluster_id"] = json!(id);
        }
        body
    }
}

/// An `unseal` request body: Vault's `{"key": "<share>"}` or `{"reset": true}`.
pub enum UnsealRequest {
    Share(Zeroizing<String>),
    Reset,
}

/// Parse an `unseal` body. The share text is moved into zeroizing memory at once.
pub fn parse_unseal(body: &[u8]) -> Result<UnsealRequest, ApiError> {
    #[derive(Deserialize)]
    struct Body {
        key: Option<String>,
        #[serde(default)]
        reset: bool,
        // Accepted and ignored, as Vault without a seal migration.
        #[serde(default)]
        #[allow(dead_code)]
        migrate: bool,
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|_| ApiError::bad_request("failed to parse JSON input"))?;
    let key = parsed.key.map(Zeroizing::new);
    if parsed.reset {
        return Ok(UnsealRequest::Reset);
    }
    match key {
        Some(k) => Ok(UnsealRequest::Share(k)),
        None => Err(ApiError::bad_request("'key' must be specified in request body as JSON, or 'reset' set to true")),
    }
}

/// Whether the caller may seal the node: the root token, or a token whose policies grant both
/// `update` and `sudo` on `sys/seal` (as Vault requires).
pub async fn authorize_seal(ctx: &ReadContext, req: &ApiRequest) -> Result<(), ApiError> {
    match identify(ctx, req).await? {
        Identity::Root => Ok(()),
        Identity::Token { record, .. } => {
            let acl = acl_of(ctx, &record).await?;
            if acl.allows("sys/seal", Capability::Sudo) && acl.allows("sys/seal", Capability::Update) {
                Ok(())
            } else {
                tracing::info!(request_id = %req.request_id, accessor = %record.accessor, "permission denied: sealing needs update and sudo on sys/seal");
                Err(ApiError::permission_denied())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (RootKey, Vec<Zeroizing<String>>, SealConfig) {
        let key = RootKey::generate();
        let shares = split(&key, 5, 3).unwrap();
        let cfg = SealConfig { shares: 5, threshold: 3, key_check: hex::encode(Keyring::from_root(&key).key_check()) };
        (key, shares, cfg)
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
    fn status_bodies_follow_vault() {
        let (_, shares, cfg) = setup();
        let mut u = Unsealer::new(cfg);
        u.submit(&shares[0]).unwrap();
        let b = SealStatus::of(true, Some(&u)).body();
        assert_eq!(
            (b["sealed"].clone(), b["t"].clone(), b["n"].clone(), b["progress"].clone()),
            (json!(true), json!(3), json!(5), json!(1))
        );
        assert_eq!(b["nonce"], json!(u.nonce()));
        let b = SealStatus::of(false, Some(&u)).body();
        assert_eq!((b["sealed"].clone(), b["progress"].clone()), (json!(false), json!(0)));
        let b = SealStatus::of(false, None).body();
        assert_eq!((b["t"].clone(), b["n"].clone()), (json!(1), json!(1)));
        assert!(b.get("cluster_id").is_none(), "no cluster id unless given (a sealed node has none)");
    }

    #[test]
    fn the_cluster_id_is_a_uuid_of_the_root_key_the_same_on_every_node() {
        let (key, _, _) = setup();
        let id = cluster_id(&Keyring::from_root(&key));
        assert_eq!(id, cluster_id(&Keyring::from_root(&key)), "stable: every node derives the same");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert_ne!(id, cluster_id(&Keyring::from_root(&RootKey::generate())), "another cluster, another id");
        let mut status = SealStatus::of(false, None);
        status.cluster_id = Some(id.clone());
        assert_eq!(status.body()["cluster_id"], json!(id));
    }

    #[test]
    fn unseal_bodies_parse_as_vault_sends_them() {
        assert!(matches!(parse_unseal(br#"{"key":"ab"}"#), Ok(UnsealRequest::Share(k)) if k.as_str() == "ab"));
        assert!(matches!(parse_unseal(br#"{"reset":true}"#), Ok(UnsealRequest::Reset)));
        assert!(matches!(parse_unseal(br#"{"key":"ab","reset":true}"#), Ok(UnsealRequest::Reset)));
        assert_eq!(parse_unseal(br#"{}"#).err().unwrap().status, 400);
        assert_eq!(parse_unseal(b"not json").err().unwrap().status, 400);
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
