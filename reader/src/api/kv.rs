//! KV v2 read endpoints (`GET data`, `GET metadata`, `LIST metadata`), token checks and
//! consistency-token waits — served by readers, and by writers from their own state.

use std::sync::Arc;
use std::time::Duration;

use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::topic::HEADER_APPLIED;
use secretlog_schemas::{ConsistencyToken, Keyring};
use serde_json::{Map, Value, json};

use super::response::{vault_duration, vault_time};
use super::{ApiError, ApiRequest, ApiResponse};
use crate::materializer::{MaterializerHandle, now_ms};
use crate::state::SecretMeta;
use crate::store::Store;

/// What a node needs to answer reads.
#[derive(Clone)]
pub struct ReadContext {
    pub store: Arc<Store>,
    pub keyring: Arc<Keyring>,
    pub materializer: MaterializerHandle,
    /// The KV v2 mount served (`secret`).
    pub mount: String,
    /// How long a read carrying `X-Secretlog-Index` may wait for this node to catch up.
    pub consistency_wait: Duration,
}

/// Outcome of waiting for a consistency token.
#[derive(Debug, PartialEq, Eq)]
pub enum Freshness {
    /// No token, or the token's position has been applied here.
    Fresh,
    /// The bound passed before this node reached the position.
    Stale,
}

impl ReadContext {
    /// Check the request's token against the root token hash replicated through the log.
    pub async fn authorize(&self, req: &ApiRequest) -> Result<(), ApiError> {
        let token = req.token.as_deref().filter(|t| !t.is_empty()).ok_or_else(ApiError::permission_denied)?;
        match self.store.root_token_hash().await? {
            Some(hash) if self.keyring.token_matches(token, &hash) => Ok(()),
            Some(_) => {
                tracing::info!(request_id = %req.request_id, path = %req.path, "permission denied: unknown token");
                Err(ApiError::permission_denied())
            }
            None => {
                tracing::warn!(request_id = %req.request_id, "permission denied: the log has not delivered a root token yet");
                Err(ApiError::permission_denied())
            }
        }
    }

    /// Honour `X-Secretlog-Index`: wait until this node applied that position, up to the bound.
    pub async fn wait_for_index(&self, req: &ApiRequest) -> Result<Freshness, ApiError> {
        let Some(raw) = req.index.as_deref() else { return Ok(Freshness::Fresh) };
        let token: ConsistencyToken =
            raw.parse().map_err(|e: secretlog_schemas::topic::BadToken| ApiError::bad_request(e.to_string()))?;
        let (reached, _) = self.materializer.wait_for(self.consistency_wait, |p| token.is_reached_by(&p.applied)).await;
        Ok(if reached { Freshness::Fresh } else { Freshness::Stale })
    }

    /// This node's applied position, as a consistency token string.
    pub fn applied_token(&self) -> String {
        ConsistencyToken(self.materializer.progress.borrow().applied.clone()).to_string()
    }

    /// Answer a KV read (after authorization and any consistency wait).
    pub async fn read(&self, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
        if req.path == "v1/auth/token/lookup-self" {
            return Ok(self.lookup_self(req));
        }
        if req.path == "v1/sys/secretlog/digest" {
            let (digest, records) = self.store.digest().await?;
            let applied = self.materializer.progress.borrow().applied.clone();
            return Ok(ApiResponse::data(
                &req.request_id,
                json!({ "digest": digest, "records": records, "applied": applied }),
            )
            .with_header(HEADER_APPLIED, self.applied_token()));
        }
        let segs = req.segments();
        if segs.first() != Some(&self.mount.as_str()) || segs.len() < 2 {
            return Err(ApiError::unsupported_path());
        }
        let rest = segs[2..].join("/");
        let resp = match (req.method.as_str(), segs[1]) {
            ("GET", "data") => self.read_data(req, &rest).await?,
            ("GET", "metadata") => self.read_metadata(req, &rest).await?,
            ("LIST", "metadata") => self.list(req, &rest).await?,
            ("GET" | "LIST", "config") => self.read_config(req),
            (_, "data" | "metadata" | "config") => return Err(ApiError::method_not_allowed()),
            _ => return Err(ApiError::unsupported_path()),
        };
        Ok(resp.with_header(HEADER_APPLIED, self.applied_token()))
    }

    async fn read_data(&self, req: &ApiRequest, path: &str) -> Result<ApiResponse, ApiError> {
        secretlog_schemas::path::validate_secret_path(path).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let version: u64 = match req.query.get("version").map(String::as_str) {
            None | Some("") => 0,
            Some(v) => v.parse().map_err(|_| ApiError::bad_request(format!("invalid version {v:?}")))?,
        };
        let Some(meta) = self.store.meta(&self.mount, path).await? else { return Err(ApiError::not_found()) };
        let version = if version == 0 { meta.current_version } else { version };
        let Some(vm) = meta.versions.get(&version) else { return Err(ApiError::not_found()) };
        let now = now_ms();
        let metadata = json!({
            "created_time": vault_time(Some(vm.created_ms)),
            "custom_metadata": meta.custom_metadata,
            "deletion_time": vault_time(vm.deletion_ms.filter(|d| *d <= now)),
            "destroyed": vm.destroyed,
            "version": version,
        });
        if !vm.is_live(now) {
            let body = super::response::envelope(&req.request_id, json!({ "data": null, "metadata": metadata }));
            return Ok(ApiResponse::json(404, &body));
        }
        let sealed = self.store.value(&self.mount, path, version).await?.ok_or_else(|| {
            tracing::error!(path, version, "live version has no stored value");
            ApiError::internal()
        })?;
        let ctx = SealContext { mount: &self.mount, path, version };
        let plaintext = SealedValue::decode(&sealed).and_then(|s| s.open(&self.keyring, &ctx)).map_err(|e| {
            tracing::error!(path, version, error = %e, "stored value does not open");
            ApiError::internal()
        })?;
        let data: Value = serde_json::from_slice(&plaintext).map_err(|_| ApiError::internal())?;
        Ok(ApiResponse::data(&req.request_id, json!({ "data": data, "metadata": metadata })))
    }

    async fn read_metadata(&self, req: &ApiRequest, path: &str) -> Result<ApiResponse, ApiError> {
        secretlog_schemas::path::validate_secret_path(path).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let Some(meta) = self.store.meta(&self.mount, path).await? else { return Err(ApiError::not_found()) };
        Ok(ApiResponse::data(&req.request_id, metadata_json(&meta, now_ms())))
    }

    async fn list(&self, req: &ApiRequest, folder: &str) -> Result<ApiResponse, ApiError> {
        secretlog_schemas::path::validate_folder(folder).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let folder = if folder.is_empty() || folder.ends_with('/') { folder.to_string() } else { format!("{folder}/") };
        let keys = self.store.list(&self.mount, &folder).await?;
        if keys.is_empty() {
            return Err(ApiError::not_found());
        }
        Ok(ApiResponse::data(&req.request_id, json!({ "keys": keys })))
    }

    /// `GET /v1/auth/token/lookup-self` for the (already authorized) root token, shaped as
    /// Vault's, so clients' `is_authenticated()` checks work.
    fn lookup_self(&self, req: &ApiRequest) -> ApiResponse {
        let token = req.token.clone().unwrap_or_default();
        let hash = self.keyring.token_hash(&token);
        ApiResponse::data(
            &req.request_id,
            json!({
                "accessor": hex::encode(&hash[..12]),
                "creation_ttl": 0,
                "display_name": "root",
                "entity_id": "",
                "expire_time": null,
                "explicit_max_ttl": 0,
                "id": token,
                "meta": null,
                "num_uses": 0,
                "orphan": true,
                "path": "auth/token/root",
                "policies": ["root"],
                "renewable": false,
                "ttl": 0,
                "type": "service",
            }),
        )
    }

    fn read_config(&self, req: &ApiRequest) -> ApiResponse {
        ApiResponse::data(
            &req.request_id,
            json!({
                "cas_required": false,
                "delete_version_after": "0s",
                "max_versions": crate::state::DEFAULT_MAX_VERSIONS,
            }),
        )
    }
}

/// The body of `GET metadata`, as Vault shapes it.
pub fn metadata_json(meta: &SecretMeta, now: i64) -> Value {
    let versions: Map<String, Value> = meta
        .versions
        .iter()
        .map(|(v, vm)| {
            (
                v.to_string(),
                json!({
                    "created_time": vault_time(Some(vm.created_ms)),
                    "deletion_time": vault_time(vm.deletion_ms.filter(|d| *d <= now)),
                    "destroyed": vm.destroyed,
                }),
            )
        })
        .collect();
    json!({
        "cas_required": meta.cas_required,
        "created_time": vault_time(Some(meta.created_ms)),
        "current_version": meta.current_version,
        "custom_metadata": meta.custom_metadata,
        "delete_version_after": vault_duration(meta.delete_version_after_secs),
        "max_versions": meta.max_versions,
        "oldest_version": meta.oldest_version,
        "updated_time": vault_time(Some(meta.updated_ms)),
        "versions": versions,
    })
}
