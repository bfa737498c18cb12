//! The `sys/` reads that Vault clients ask before they touch a secret: which mount serves a path
//! and which KV version it is (`sys/internal/ui/mounts/<path>`, asked by every `vault kv`
//! command, consul-template and Vault Agent), the mount table (`sys/mounts`), a mount's tuning,
//! and what a token may do on a path (`sys/capabilities-self`, `sys/capabilities`). Answered by
//! every node from the state the log built; `sys/leader` is answered by the node itself (it knows
//! its role).

use secretlog_schemas::mount::MountRecord;
use serde_json::{Map, Value, json};

use super::auth::{Identity, acl_of, identify};
use super::response::Envelope;
use super::{ApiError, ApiRequest, ApiResponse};
use crate::context::ReadContext;

/// `sys/audit-hash/<device>`: the HMAC an audit device writes for an input.
pub(crate) const AUDIT_HASH_PREFIX: &str = "v1/sys/audit-hash/";

/// The device named by a `sys/audit-hash/<device>` path (`file`), without slashes.
pub(crate) fn audit_hash_device(path: &str) -> Option<&str> {
    path.strip_prefix(AUDIT_HASH_PREFIX).map(|d| d.trim_matches('/'))
}

/// One audit device as `GET sys/audit` lists it.
pub(crate) struct AuditListing {
    /// Without the trailing slash.
    pub path: String,
    pub kind: String,
    pub description: String,
    pub options: Value,
    /// A device of the node's own flags, not enabled through the log (Vault's local devices are
    /// not replicated either).
    pub local: bool,
}

/// `GET sys/audit`: the node's audit devices (`path/` → `type`, `description`, `options`,
/// `local`, `path`), in Vault's shape.
pub(crate) fn audit_list(req: &ApiRequest, devices: &[AuditListing]) -> ApiResponse {
    let data = devices
        .iter()
        .map(|d| {
            let key = format!("{}/", d.path);
            let entry = json!({
                "description": d.description,
                "local": d.local,
                "options": d.options,
                "path": key,
                "type": d.kind,
            });
            (key, entry)
        })
        .collect();
    legacy(req, data)
}

/// `POST sys/audit-hash/<device>` with `{"input": ...}`: the hash the device writes for that input
/// (`hash`: one entry `hmac-sha256:<hex>`), so an operator can find a token or value in the audit
/// trail without the trail holding it. `hmac` is `None` when the node has no such device.
pub(crate) fn audit_hash(req: &ApiRequest, hmac: Option<&dyn Fn(&[u8]) -> String>) -> Result<ApiResponse, ApiError> {
    let device = audit_hash_device(&req.path).unwrap_or_default();
    let Some(hmac) = hmac else {
        return Err(ApiError::bad_request(format!("unknown audit backend {device}/")));
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let Some(input) = body.get("input").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("the input parameter is required (a string)"));
    };
    let mut data = Map::new();
    data.insert("hash".into(), json!(hmac(input.as_bytes())));
    Ok(legacy(req, data))
}

/// A mount as `sys/mounts` and `sys/internal/ui/mounts` show it (OpenBao's fields and order).
pub(crate) fn mount_json(record: &MountRecord) -> Value {
    json!({
        "accessor": record.accessor,
        "config": {
            "default_lease_ttl": record.default_lease_ttl_secs,
            "force_no_cache": false,
            "max_lease_ttl": record.max_lease_ttl_secs,
        },
        "deprecation_status": "supported",
        "description": record.description,
        "external_entropy_access": false,
        "local": false,
        "options": { "version": record.version.to_string() },
        "plugin_version": "",
        "running_plugin_version": running_plugin_version(),
        "running_sha256": "",
        "seal_wrap": false,
        "type": record.kind,
        "uuid": record.uuid,
    })
}

/// What a built-in engine reports as its plugin version (as the auth methods do).
fn running_plugin_version() -> String {
    format!("v{}+builtin.secretlog", env!("CARGO_PKG_VERSION"))
}

/// The `sys/` mount, which Vault lists beside the engines (its fields as OpenBao shows them).
fn system_mount_json() -> Value {
    json!({
        "accessor": "system_00000000",
        "config": {
            "default_lease_ttl": 0,
            "force_no_cache": false,
            "max_lease_ttl": 0,
            "passthrough_request_headers": ["Accept"],
        },
        "deprecation_status": "",
        "description": "system endpoints used for control, policy and debugging",
        "external_entropy_access": false,
        "local": false,
        "options": null,
        "plugin_version": "",
        "running_plugin_version": running_plugin_version(),
        "running_sha256": "",
        "seal_wrap": true,
        "type": "system",
        "uuid": "00000000-0000-0000-0000-000000000001",
    })
}

/// A mount's lease TTL as `tune` answers it: 0 (unset) is the system default, 32 days.
fn effective_ttl(secs: u64) -> u64 {
    const SYSTEM_DEFAULT_TTL_SECS: u64 = 32 * 24 * 3600;
    if secs == 0 { SYSTEM_DEFAULT_TTL_SECS } else { secs }
}

/// The token auth method, always enabled (what `sys/internal/ui/mounts` lists under `auth`).
fn token_auth_json() -> Value {
    json!({
        "accessor": "auth_token_00000000",
        "config": { "default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0, "token_type": "default-service" },
        "description": "token based credentials",
        "external_entropy_access": false,
        "local": false,
        "options": null,
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
        "seal_wrap": false,
        "type": "token",
        "uuid": "00000000-0000-0000-0000-000000000000",
    })
}

/// Vault's older clients read some `sys/` answers from the top level, newer ones from `data`:
/// Vault sends both, and so do we.
pub(crate) fn legacy(req: &ApiRequest, data: Map<String, Value>) -> ApiResponse {
    let mut body =
        serde_json::to_value(Envelope::new(&req.request_id, Value::Object(data.clone()))).unwrap_or(Value::Null);
    if let Value::Object(b) = &mut body {
        b.remove("mount_type");
        for (k, v) in data {
            b.entry(k).or_insert(v);
        }
    }
    ApiResponse::json(200, &body)
}

/// A plain Vault envelope without `mount_type` (that field belongs to KV answers).
fn plain(req: &ApiRequest, data: Value) -> ApiResponse {
    let mut body = serde_json::to_value(Envelope::new(&req.request_id, data)).unwrap_or(Value::Null);
    if let Value::Object(b) = &mut body {
        b.remove("mount_type");
    }
    ApiResponse::json(200, &body)
}

/// Answer `req` if it is one of this module's reads (after authorization).
pub async fn read(ctx: &ReadContext, req: &ApiRequest) -> Result<Option<ApiResponse>, ApiError> {
    let Some(rest) = req.path.strip_prefix("v1/sys/") else { return Ok(None) };
    let mounts = ctx.mounts();
    let live = mounts.live(&ctx.default_mount);
    let resp = match (req.method.as_str(), rest) {
        ("GET", "mounts") => {
            let mut data = Map::new();
            for (path, record) in &live {
                data.insert(format!("{path}/"), mount_json(record));
            }
            data.insert("sys/".into(), system_mount_json());
            legacy(req, data)
        }
        ("GET", "internal/ui/mounts") => {
            let secret: Map<String, Value> = live.iter().map(|(p, r)| (format!("{p}/"), mount_json(r))).collect();
            plain(req, json!({ "auth": { "token/": token_auth_json() }, "secret": secret }))
        }
        ("GET", r) if r.starts_with("internal/ui/mounts/") => {
            let path = &r["internal/ui/mounts/".len()..];
            let Some(m) = mounts.resolve(&ctx.default_mount, path.trim_end_matches('/')) else {
                return Err(ApiError::new(
                    super::ErrorKind::PermissionDenied,
                    format!(
                        "preflight capability check returned 403, please ensure client's policies grant access to path \"{}/\"",
                        path.trim_end_matches('/')
                    ),
                ));
            };
            let mut data = mount_json(m.record);
            data["path"] = json!(format!("{}/", m.path));
            plain(req, data)
        }
        ("GET", r) if r.starts_with("mounts/") && r.ends_with("/tune") => {
            let path = r["mounts/".len()..r.len() - "/tune".len()].trim_matches('/');
            let Some(record) = mounts.get(&ctx.default_mount, path) else {
                return Err(ApiError::bad_request(format!("cannot fetch sysview for path \"{path}/\"")));
            };
            let mut data = Map::new();
            data.insert("default_lease_ttl".into(), json!(effective_ttl(record.default_lease_ttl_secs)));
            data.insert("description".into(), json!(record.description));
            data.insert("force_no_cache".into(), json!(false));
            data.insert("max_lease_ttl".into(), json!(effective_ttl(record.max_lease_ttl_secs)));
            data.insert("options".into(), json!({ "version": record.version.to_string() }));
            legacy(req, data)
        }
        ("POST" | "PUT", "capabilities-self" | "capabilities") => capabilities(ctx, req).await?,
        // A node that audits answers these in its auditor (`crate::audit`); here it has no
        // device.
        ("GET", "audit") => audit_list(req, &[]),
        ("POST" | "PUT", r) if r.starts_with("audit-hash/") => audit_hash(req, None)?,
        _ => return Ok(None),
    };
    Ok(Some(resp))
}

/// `sys/capabilities-self` (the caller's token) and `sys/capabilities` (`token` in the body):
/// what the token may do on each of `paths` (or `path`).
async fn capabilities(ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let body: Value = if req.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("failed to parse JSON input: {e}")))?
    };
    let paths: Vec<String> = match (body.get("paths"), body.get("path")) {
        (Some(Value::Array(a)), _) | (None, Some(Value::Array(a))) => {
            a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
        }
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.split(',').map(str::to_string).collect(),
        _ => vec![],
    };
    if paths.is_empty() {
        return Err(ApiError::bad_request("missing paths"));
    }
    let who = if req.path == "v1/sys/capabilities" {
        let token = body.get("token").and_then(Value::as_str).unwrap_or_default();
        let probe = ApiRequest { token: Some(token.to_string()), ..req.clone() };
        identify(ctx, &probe).await.map_err(|_| ApiError::bad_request("invalid token"))?
    } else {
        identify(ctx, req).await?
    };
    let acl = match &who {
        Identity::Root => None,
        Identity::Token { record, .. } => Some(acl_of(ctx, record).await?),
    };
    let mut data = Map::new();
    let mut all: Vec<&'static str> = Vec::new();
    for p in &paths {
        let caps = match &acl {
            None => vec!["root"],
            Some(acl) => acl.capabilities(p.trim_start_matches('/')),
        };
        all.extend(caps.iter().copied());
        data.insert(p.clone(), json!(caps));
    }
    if paths.len() == 1 {
        // Older clients read the single path's answer from `capabilities`.
        all.sort_unstable();
        all.dedup();
        data.insert("capabilities".into(), json!(all));
    }
    Ok(legacy(req, data))
}

/// `sys/leader`, as a node with role `is_self` (the active writer, leading since `active_ms`)
/// and the leader the log announced answers it. Unauthenticated, as in Vault.
pub fn leader(is_self: bool, leader_url: Option<&str>, active_ms: Option<i64>) -> ApiResponse {
    let body = json!({
        "ha_enabled": true,
        "is_self": is_self,
        // Go's zero time, as a Vault standby answers it.
        "active_time": active_ms.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), |ms| super::response::vault_time(Some(ms))),
        "leader_address": leader_url.unwrap_or(""),
        "leader_cluster_address": leader_url.unwrap_or(""),
        "performance_standby": false,
        "performance_standby_last_remote_wal": 0,
        "raft_committed_index": 0,
        "raft_applied_index": 0,
    });
    ApiResponse::json(200, &body)
}
