//! Token and policy answers shared by readers and writers: token lookups shaped as Vault's, and
//! reads of ACL policies (`/v1/sys/policies/acl`).

use secretlog_schemas::auth::TokenRecord;
use serde_json::json;

use super::response::vault_time;
use super::route::PolicyPath;
use super::{ApiError, ApiRequest, ApiResponse};
use crate::context::ReadContext;
use secretlog_state::materializer::now_ms;

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

/// `GET /v1/auth/token/lookup-self` for a (non-root) token: its lookup data with `id`, the
/// caller's own token, as Vault answers it — Vault Agent's `token_file` auto-auth reads the token
/// back from there. Nothing is revealed that the caller does not hold already; the lookup of
/// another token and the accessor lookups keep leaving `id` out (docs/compatibility.md#token-echo).
pub(crate) fn lookup_response(req: &ApiRequest, record: &TokenRecord) -> ApiResponse {
    let mut data = lookup_data(record);
    data["id"] = json!(req.token.as_deref().unwrap_or(""));
    ApiResponse::data(&req.request_id, data)
}

/// `LIST /v1/auth/token/accessors`: the accessor of every token this node's state holds —
/// expired ones too, until a tidy removes them (what an operator checks a tidy by). 404 when
/// there is none, as Vault answers an empty list.
pub(crate) async fn list_accessors(ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let keys: Vec<String> = ctx
        .store
        .scan(secretlog_state::store::keys::ACCESSOR_PREFIX)
        .await?
        .into_iter()
        .filter_map(|(k, _)| {
            let acc = k.strip_prefix(secretlog_state::store::keys::ACCESSOR_PREFIX)?;
            String::from_utf8(acc.to_vec()).ok()
        })
        .collect();
    if keys.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(ApiResponse::data(&req.request_id, json!({ "keys": keys })))
}

/// `GET /v1/sys/policies/acl/:name` and `LIST /v1/sys/policies/acl`, and the same under Vault's
/// older `sys/policy` ([`PolicyPath`]).
pub(crate) async fn read_policy(ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let PolicyPath { name, legacy } = PolicyPath::of(&req.path).ok_or_else(ApiError::not_found)?;
    // Names are lower-cased, as Vault does.
    let name = name.trim_matches('/').to_ascii_lowercase();
    if name.is_empty() || req.method == "LIST" {
        // Vault lists the stored policies in order, then `root`.
        let mut names = ctx.store.policy_names().await?;
        // `default` exists from the start, stored or not.
        names.push("default".into());
        names.sort();
        names.dedup();
        names.push("root".into());
        if legacy {
            let mut data = serde_json::Map::new();
            data.insert("keys".into(), json!(names));
            data.insert("policies".into(), json!(names));
            return Ok(super::sys::legacy(req, data));
        }
        return Ok(ApiResponse::data(&req.request_id, json!({ "keys": names })));
    }
    // `root` has no rules to show: Vault answers it with an empty text.
    let text = if name == "root" { Some(String::new()) } else { super::auth::policy_text(ctx, &name).await? };
    let Some(text) = text else { return Err(ApiError::not_found()) };
    if legacy {
        let mut data = serde_json::Map::new();
        data.insert("name".into(), json!(name));
        data.insert("rules".into(), json!(text));
        return Ok(super::sys::legacy(req, data));
    }
    Ok(ApiResponse::data(&req.request_id, json!({ "name": name, "policy": text })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TokenRecord {
        TokenRecord {
            accessor: "acc".into(),
            policies: vec!["app".into(), "default".into()],
            created_ms: now_ms(),
            expire_ms: Some(now_ms() + 3_600_000),
            ttl_secs: 3600,
            renewable: true,
            ..Default::default()
        }
    }

    fn body(resp: &ApiResponse) -> serde_json::Value {
        serde_json::from_slice(&resp.body).expect("a JSON body")
    }

    #[test]
    fn lookup_self_answers_the_callers_own_token_as_id() {
        let req = ApiRequest { token: Some("hvs.mine".into()), ..ApiRequest::default() };
        let b = body(&lookup_response(&req, &record()));
        assert_eq!(b["data"]["id"], json!("hvs.mine"), "Vault Agent reads its token back from data.id");
        assert_eq!(b["data"]["accessor"], json!("acc"));
    }

    #[test]
    fn the_lookup_of_another_token_has_no_id() {
        assert!(lookup_data(&record()).get("id").is_none());
    }
}
