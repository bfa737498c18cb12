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
//! This module is the HTTP part — the bodies, and who may seal; the shares and the [`Unsealer`]
//! that collects them are [`crate::unseal`]. [`crate::node::Keys`] holds one unsealer per node and
//! starts and stops what runs while the node is unsealed. Nothing here ever logs or returns share
//! or key material.

use secretlog_schemas::Keyring;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::auth::{Identity, acl_of, identify};
use super::{ApiError, ApiRequest};
use crate::context::ReadContext;
use crate::unseal::{UnsealError, Unsealer};
use secretlog_state::acl::Capability;

impl From<UnsealError> for ApiError {
    fn from(e: UnsealError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

/// What `seal-status` and `unseal` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealStatus {
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
                threshold: u.config().threshold,
                shares: u.config().shares,
                progress: if sealed { u.progress() } else { 0 },
                nonce: if sealed { u.nonce().to_string() } else { String::new() },
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
pub(crate) enum UnsealRequest {
    Share(Zeroizing<String>),
    Reset,
}

/// Parse an `unseal` body. The share text is moved into zeroizing memory at once.
pub(crate) fn parse_unseal(body: &[u8]) -> Result<UnsealRequest, ApiError> {
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
pub(crate) async fn authorize_seal(ctx: &ReadContext, req: &ApiRequest) -> Result<(), ApiError> {
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
    use secretlog_schemas::RootKey;

    use super::*;
    use crate::unseal::SealConfig;

    fn setup() -> (RootKey, Vec<Zeroizing<String>>, SealConfig) {
        crate::unseal::three_of_five()
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
}
