//! Token and policy answers shared by readers and writers: token lookups shaped as Vault's, and
//! reads of ACL policies (`/v1/sys/policies/acl`).

use serde_json::json;

use super::auth::TokenRecord;
use super::kv::ReadContext;
use super::response::vault_time;
use super::{ApiError, ApiRequest, ApiResponse};
use crate::materializer::now_ms;

/// A token's lookup data (never the token itself: only its accessor).
pub fn lookup_data(record: &TokenRecord) -> serde_json::Value {
    let now = now_ms();
    json!({
        "accessor": record.accessor,
        "creation_time": record.created_ms / 1000,
        "creation_ttl": record.ttl_secs,
        "display_name": record.display_name,
        "entity_id": "",
        "expire_time": record.expire_ms.map(|e| vault_time(Some(e))),
        "explicit_max_ttl": record.max_expire_ms.map_or(0, |m| (m - record.created_ms) / 1000),
        "issue_time": vault_time(Some(record.created_ms)),
        "meta": record.meta,
        "num_uses": 0,
        "orphan": true,
        "path": record.path.as_deref().unwrap_or("auth/token/create"),
        "policies": record.policies,
        "renewable": record.renewable,
        "ttl": record.ttl_left(now),
        "type": "service",
    })
}

/// `GET /v1/auth/token/lookup-self` for a (non-root) token.
pub fn lookup_response(req: &ApiRequest, record: &TokenRecord) -> ApiResponse {
    ApiResponse::data(&req.request_id, lookup_data(record))
}

/// `GET /v1/sys/policies/acl/:name` and `LIST /v1/sys/policies/acl`.
pub async fn read_policy(ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    // Names are lower-cased, as Vault does.
    let name = req.path.strip_prefix("v1/sys/policies/acl").unwrap_or("").trim_matches('/').to_ascii_lowercase();
    if name.is_empty() || req.method == "LIST" {
        // Vault lists the stored policies in order, then `root`.
        let mut names = ctx.store.policy_names().await?;
        // `default` exists from the start, stored or not.
        names.push("default".into());
        names.sort();
        names.dedup();
        names.push("root".into());
        return Ok(ApiResponse::data(&req.request_id, json!({ "keys": names })));
    }
    match super::auth::policy_text(ctx, &name).await? {
        Some(text) => Ok(ApiResponse::data(&req.request_id, json!({ "name": name, "policy": text }))),
        None => Err(ApiError::not_found()),
    }
}
