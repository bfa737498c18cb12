//! KV v2 read endpoints (`GET data`, `GET metadata`, `LIST metadata`), token checks and
//! consistency-token waits — served by readers, and by writers from their own state.

use std::time::Instant;

use secretlog_schemas::ConsistencyToken;
use secretlog_schemas::metadata::SecretMeta;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::topic::HEADER_APPLIED;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::response::{Envelope, vault_duration, vault_time};
use super::{ApiError, ApiRequest, ApiResponse, Route};
use crate::context::ReadContext;
use secretlog_state::materializer::now_ms;

/// `data` of a KV v2 read: the secret's fields and its version's metadata.
#[derive(Serialize)]
struct SecretData<'a> {
    data: Option<&'a RawValue>,
    metadata: VersionMetadata<'a>,
}

/// A version's metadata as a KV v2 read shows it (fields in Vault's, alphabetical, order).
#[derive(Serialize)]
struct VersionMetadata<'a> {
    created_time: String,
    custom_metadata: &'a Option<std::collections::BTreeMap<String, String>>,
    deletion_time: String,
    destroyed: bool,
    version: u64,
}

/// Outcome of waiting for a consistency token.
#[derive(Debug, PartialEq, Eq)]
pub enum Freshness {
    /// No token, or the token's position has been applied here.
    Fresh,
    /// The bound passed before this node reached the position.
    Stale,
    /// This node cannot vouch for its state now (past its staleness bound, cut off from the log,
    /// a halted partition, or a strong read's query unanswered): why.
    Unconfirmed(String),
}

impl ReadContext {
    /// Check the request's token against the root token hash replicated through the log.
    pub async fn authorize(&self, req: &ApiRequest) -> Result<(), ApiError> {
        super::auth::authorize(self, req).await.map(drop)
    }

    /// Honour `X-Secretlog-Index`: wait until this node applied that position, up to the bound.
    pub async fn wait_for_index(&self, req: &ApiRequest) -> Result<Freshness, ApiError> {
        let Some(raw) = req.index.as_deref() else { return Ok(Freshness::Fresh) };
        let token: ConsistencyToken =
            raw.parse().map_err(|e: secretlog_schemas::topic::BadToken| ApiError::bad_request(e.to_string()))?;
        let reached = self.materializer.wait_for(self.consistency_wait, |p| token.is_reached_by(&p.applied)).await;
        Ok(if reached { Freshness::Fresh } else { Freshness::Stale })
    }

    /// Whether this node may answer `req` from its own state: no partition the read needs is
    /// halted, and the log's end was confirmed applied within the staleness bound. A node that
    /// is not cut off waits (up to the consistency wait) for a confirmation, as it does right
    /// after its start; one whose last query failed does not wait.
    pub async fn within_bound(&self, req: &ApiRequest) -> Freshness {
        let key_partition = self.key_partition(req);
        let check = |p: &secretlog_state::materializer::Progress| -> Result<(), String> {
            let halted = p.halted.iter().find(|(part, _)| key_partition.is_none_or(|k| k == **part));
            if let Some((part, why)) = halted {
                return Err(format!("partition {part} is halted ({why}); its reads are refused until it is repaired"));
            }
            secretlog_state::freshness::within_bound(&p.confirmations, p.partitions, self.max_staleness, Instant::now())
        };
        let first = {
            let p = self.materializer.progress.borrow();
            check(&p).map_err(|why| (why, p.confirmations.is_disconnected() || !p.halted.is_empty()))
        };
        match first {
            Ok(()) => Freshness::Fresh,
            Err((why, true)) => Freshness::Unconfirmed(why),
            Err((why, false)) => {
                let ok = self.materializer.wait_for(self.consistency_wait, |p| check(p).is_ok()).await;
                if ok { Freshness::Fresh } else { Freshness::Unconfirmed(why) }
            }
        }
    }

    /// The partition of the one secret a KV read names (`data` or `metadata` of a path), if it
    /// names one.
    fn key_partition(&self, req: &ApiRequest) -> Option<i32> {
        let (mounts, partitions) = {
            let p = self.materializer.progress.borrow();
            (p.mounts.clone(), p.partitions)
        };
        let m = mounts.resolve(&self.default_mount, req.path.strip_prefix("v1/")?)?;
        let path = m.rest.strip_prefix("data/").or_else(|| m.rest.strip_prefix("metadata/"))?;
        (!path.is_empty() && partitions > 0 && req.method == "GET").then(|| {
            secretlog_schemas::topic::partition_for(
                &secretlog_schemas::topic::record_key(&m.record.storage, path),
                partitions,
            )
        })
    }

    /// Answer a read (after authorization and any consistency wait), by its route.
    pub async fn read(&self, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
        let resp = match req.route() {
            Route::Policies | Route::Policy => return super::tokens::read_policy(self, req).await,
            Route::TokenAccessors if req.method == "LIST" => return super::tokens::list_accessors(self, req).await,
            Route::TokenLookupSelf => {
                if let super::auth::Identity::Token { record, .. } = super::auth::identify(self, req).await? {
                    return Ok(super::tokens::lookup_response(req, &record));
                }
                return Ok(self.lookup_self(req));
            }
            Route::AuthMethods | Route::AuthMethod => return super::auth_methods::read(self, req).await,
            Route::KeyStatus => super::key_status::answer(self, req, None).await?,
            Route::Digest => {
                let (digest, records) = self.store.digest().await?;
                let applied = self.materializer.progress.borrow().applied.clone();
                ApiResponse::data(&req.request_id, json!({ "digest": digest, "records": records, "applied": applied }))
            }
            Route::Mounts
            | Route::Mount
            | Route::UiMounts
            | Route::Capabilities
            | Route::CapabilitiesSelf
            | Route::Audit
            | Route::AuditHash => match super::sys::read(self, req).await? {
                Some(resp) => resp,
                None => self.read_kv(req).await?,
            },
            _ => self.read_kv(req).await?,
        };
        Ok(resp.with_header(HEADER_APPLIED, self.applied_token()))
    }

    /// A read under a KV v2 mount, or Vault's 404 for a path no mount serves.
    async fn read_kv(&self, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
        let rel = req.path.strip_prefix("v1/").unwrap_or(&req.path);
        let mounts = self.mounts();
        let Some(m) = mounts.resolve(&self.default_mount, rel) else { return Err(ApiError::no_route(rel)) };
        let (endpoint, rest) = m.rest.split_once('/').unwrap_or((m.rest, ""));
        if endpoint.is_empty() {
            return Err(ApiError::unsupported_path());
        }
        if rest.split('/').any(|s| s == "." || s == "..") {
            return Err(ApiError::relative_path());
        }
        let storage = m.record.storage.as_str();
        match (req.method.as_str(), endpoint) {
            ("GET", "data") => self.read_data(req, storage, rest).await,
            ("GET", "metadata") => self.read_metadata(req, storage, rest).await,
            ("LIST", "metadata") => self.list(req, storage, rest).await,
            ("GET" | "LIST", "config") => Ok(self.read_config(req, m.record)),
            (_, "data" | "metadata" | "config" | "delete" | "undelete" | "destroy") => {
                Err(ApiError::method_not_allowed())
            }
            _ => Err(ApiError::unsupported_path()),
        }
    }

    async fn read_data(&self, req: &ApiRequest, mount: &str, path: &str) -> Result<ApiResponse, ApiError> {
        if !is_secret_path(path)? {
            return Err(ApiError::not_found());
        }
        let version = version_param(req)?;
        let Some(meta) = self.store.meta(mount, path).await? else { return Err(ApiError::not_found()) };
        let version = if version == 0 { meta.current_version } else { version };
        let Some(vm) = meta.versions.get(&version) else { return Err(ApiError::not_found()) };
        let metadata = VersionMetadata {
            created_time: vault_time(Some(vm.created_ms)),
            custom_metadata: &meta.custom_metadata,
            // Shown as soon as it is scheduled, as Vault does (`delete_version_after`).
            deletion_time: vault_time(vm.deletion_ms),
            destroyed: vm.destroyed,
            version,
        };
        if !vm.is_live(now_ms()) {
            let body = Envelope::new(&req.request_id, SecretData { data: None, metadata });
            return Ok(ApiResponse::json(404, &body));
        }
        let Some(sealed) = self.store.value(mount, path, version).await? else {
            // The metadata and the value are two reads: a delete, destroy or prune applied
            // between them took the value away. Answered from the state after it — only a
            // version still live without a value is a fault.
            let after = self.store.meta(mount, path).await?;
            if after.as_ref().and_then(|m| m.versions.get(&version)).is_some_and(|v| v.is_live(now_ms())) {
                tracing::error!(path, version, "live version has no stored value");
                return Err(ApiError::internal());
            }
            return Err(ApiError::not_found());
        };
        let ctx = SealContext { mount, path, version };
        let plaintext = SealedValue::decode(&sealed).and_then(|s| s.open(&self.keyring, &ctx)).map_err(|e| {
            tracing::error!(path, version, error = %e, "stored value does not open");
            ApiError::internal()
        })?;
        // The writer stored the value as JSON; it is checked and passed through as it is (no
        // tree built and printed again on every read).
        let data: &RawValue = serde_json::from_slice(&plaintext).map_err(|_| ApiError::internal())?;
        Ok(ApiResponse::data(&req.request_id, SecretData { data: Some(data), metadata }))
    }

    async fn read_metadata(&self, req: &ApiRequest, mount: &str, path: &str) -> Result<ApiResponse, ApiError> {
        if !is_secret_path(path)? {
            return Err(ApiError::not_found());
        }
        let Some(meta) = self.store.meta(mount, path).await? else { return Err(ApiError::not_found()) };
        Ok(ApiResponse::data(&req.request_id, metadata_json(&meta)))
    }

    async fn list(&self, req: &ApiRequest, mount: &str, folder: &str) -> Result<ApiResponse, ApiError> {
        secretlog_schemas::path::validate_folder(folder).map_err(|e| ApiError::from_path(&e))?;
        let folder = if folder.is_empty() || folder.ends_with('/') { folder.to_string() } else { format!("{folder}/") };
        let keys = self.store.list(mount, &folder).await?;
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

    fn read_config(&self, req: &ApiRequest, mount: &secretlog_schemas::mount::MountRecord) -> ApiResponse {
        ApiResponse::data(
            &req.request_id,
            json!({
                "cas_required": mount.kv.cas_required,
                "delete_version_after": vault_duration(mount.kv.delete_version_after_secs),
                // 0: the default (keep 10), as Vault reports an unset mount setting.
                "max_versions": mount.kv.max_versions,
            }),
        )
    }
}

/// `?version=`: an integer; absent, empty, 0 or negative mean the current version (0 here).
/// The value is form-decoded first, as Go decodes a query (`+` is a space, `%32` is `2`).
fn version_param(req: &ApiRequest) -> Result<u64, ApiError> {
    let raw = req.query.get("version").map(|v| v.replace('+', " "));
    let decoded = raw.as_deref().map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned());
    match decoded.as_deref() {
        None | Some("") => Ok(0),
        Some(v) => v.parse::<i64>().map(|v| v.max(0) as u64).map_err(|_| {
            ApiError::bad_request(
                "Field validation failed: error converting input for field \"version\": '' cannot parse value as \
                 'int': strconv.ParseInt: invalid syntax",
            )
        }),
    }
}

/// Whether `path` can name a secret: a folder (`a/`, or the mount's root) cannot, and reading
/// one finds nothing (404, as in Vault). A path wrong by itself is a 400.
fn is_secret_path(path: &str) -> Result<bool, ApiError> {
    if path.is_empty() || path.ends_with('/') {
        return Ok(false);
    }
    secretlog_schemas::path::validate_secret_path(path).map_err(|e| ApiError::from_path(&e))?;
    Ok(true)
}

/// The body of `GET metadata`, as Vault shapes it.
pub(crate) fn metadata_json(meta: &SecretMeta) -> Value {
    let versions: Map<String, Value> = meta
        .versions
        .iter()
        .map(|(v, vm)| {
            (
                v.to_string(),
                json!({
                    "created_time": vault_time(Some(vm.created_ms)),
                    "deletion_time": vault_time(vm.deletion_ms),
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

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_schemas::metadata::VersionMeta;

    fn get(query: &str) -> ApiRequest {
        ApiRequest {
            method: "GET".into(),
            path: "v1/secret/data/x".into(),
            raw_path: "v1/secret/data/x".into(),
            raw_query: query.into(),
            query: query.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).into_iter().collect(),
            request_id: "r".into(),
            ..Default::default()
        }
    }

    #[test]
    fn version_parameter_reads_like_vault() {
        assert_eq!(version_param(&get("")).unwrap(), 0);
        assert_eq!(version_param(&get("version=")).unwrap(), 0);
        assert_eq!(version_param(&get("version=3")).unwrap(), 3);
        assert_eq!(version_param(&get("version=%32")).unwrap(), 2);
        assert_eq!(version_param(&get("version=-1")).unwrap(), 0, "negative means current");
        for bad in ["version=abc", "version=1.0", "version=+2"] {
            let e = version_param(&get(bad)).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.errors[0].starts_with("Field validation failed: error converting input for field \"version\""));
        }
    }

    #[test]
    fn folders_are_not_secrets_and_relative_paths_are_refused() {
        assert!(is_secret_path("a/b").unwrap());
        assert!(!is_secret_path("a/").unwrap());
        assert!(!is_secret_path("").unwrap());
        assert_eq!(is_secret_path("a/../b").unwrap_err().errors, vec!["relative paths not supported"]);
        assert_eq!(is_secret_path("a//b").unwrap_err().status, 400);
    }

    #[test]
    fn scheduled_deletion_is_shown_before_it_passes() {
        let far = now_ms() + 3_600_000;
        let meta = SecretMeta {
            current_version: 1,
            versions: [(1, VersionMeta { created_ms: 1, deletion_ms: Some(far), destroyed: false })].into(),
            ..Default::default()
        };
        assert_eq!(metadata_json(&meta)["versions"]["1"]["deletion_time"], vault_time(Some(far)));
        assert!(meta.versions[&1].is_live(now_ms()));
    }
}
