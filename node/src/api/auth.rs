//! Who is asking, and may they: tokens and ACL policies, checked on every node from the state the
//! log built — readers decide locally, exactly as the writer does.
//!
//! Tokens are stored only as keyed hashes (`c/token/<hex>`) with a record (policies, expiry);
//! the root token's hash is `c/root_token`. Expiry is checked against this node's clock on every
//! request. Policies live at `c/policy/<name>`.

use std::sync::Arc;

use secretlog_schemas::auth::TokenRecord;

use super::{ApiError, ApiRequest, Route};
use crate::context::ReadContext;
use secretlog_state::acl::{Acl, Capability, parse_policy};
use secretlog_state::materializer::now_ms;
use secretlog_state::store::keys;

/// Vault's built-in `default` policy, as OpenBao ships it: what every token gets unless created
/// with `no_default_policy` — its own lookup, renewal and revocation, and paths secretlog does not
/// serve (cubbyhole, wrapping, tools), kept so that the text reads back as Vault's does. Stored
/// `default` policies (written by an operator) replace it.
pub(crate) const DEFAULT_POLICY: &str = include_str!("default_policy.hcl");

/// The text of policy `name`: stored, or the built-in `default`.
pub(crate) async fn policy_text(ctx: &ReadContext, name: &str) -> Result<Option<String>, ApiError> {
    match ctx.store.get_raw(&keys::policy(name)).await? {
        Some(text) => Ok(Some(String::from_utf8_lossy(&text).into_owned())),
        None if name == "default" => Ok(Some(DEFAULT_POLICY.to_string())),
        None => Ok(None),
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Identity {
    Root,
    Token { hash: [u8; 32], record: Arc<TokenRecord> },
}

impl Identity {
    pub fn is_root(&self) -> bool {
        matches!(self, Identity::Root)
    }
}

/// What a request needs: a capability on an ACL path, or root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Any valid token (its own lookup, renewal, revocation; health).
    AnyToken,
    Cap(String, Capability),
    /// Root only (operator endpoints).
    Root,
}

/// The capability a request needs, by its [`Route`]. `exists` tells create from update for
/// writes. `mount` is the path of the KV mount that serves a [`Route::Mounted`] request, if one
/// does (none: only root may go on, to be told there is no such route).
pub fn need(req: &ApiRequest, mount: Option<&str>, exists: impl FnOnce(&str) -> bool) -> Need {
    let path = req.path.as_str();
    let acl = || path.strip_prefix("v1/").unwrap_or(path).to_string();
    let m = req.method.as_str();
    let by_method = |read: Capability| match m {
        "GET" => read,
        "LIST" => Capability::List,
        "DELETE" => Capability::Delete,
        _ => Capability::Update,
    };
    match req.route() {
        Route::Mounted => {
            let Some(mount) = mount else { return Need::Root };
            let rest = path.strip_prefix("v1/").and_then(|p| p.strip_prefix(mount)).and_then(|p| p.strip_prefix('/'));
            let Some(rest) = rest else { return Need::Root };
            let (kind, rel) = rest.split_once('/').unwrap_or((rest, ""));
            let acl = if kind == "config" { format!("{mount}/config") } else { format!("{mount}/{kind}/{rel}") };
            let write = |acl: String| Need::Cap(acl, if exists(rel) { Capability::Update } else { Capability::Create });
            match (kind, m) {
                ("data", "GET") | ("metadata", "GET") | ("config", "GET") => Need::Cap(acl, Capability::Read),
                ("metadata", "LIST") => Need::Cap(acl, Capability::List),
                ("data" | "metadata", "POST" | "PUT") => write(acl),
                ("data" | "metadata", "PATCH") => Need::Cap(acl, Capability::Patch),
                ("data" | "metadata", "DELETE") => Need::Cap(acl, Capability::Delete),
                ("delete" | "undelete" | "destroy", _) | ("config", "POST" | "PUT") => {
                    Need::Cap(acl, Capability::Update)
                }
                _ => Need::Cap(acl, Capability::Sudo),
            }
        }
        Route::Policies | Route::Policy => Need::Cap(acl(), by_method(Capability::Read)),
        Route::Mounts | Route::Mount => Need::Cap(
            acl(),
            match m {
                "GET" | "LIST" => Capability::Read,
                "DELETE" => Capability::Delete,
                _ => Capability::Update,
            },
        ),
        // Which mount serves a path: any token may ask (Vault checks the token has some
        // capability under the mount; see docs/compatibility.md).
        Route::UiMounts if m == "GET" => Need::AnyToken,
        Route::CapabilitiesSelf => Need::AnyToken,
        Route::Audit if m == "GET" => Need::Cap("sys/audit".into(), Capability::Sudo),
        // Enabling and disabling a device: sudo, as in Vault.
        Route::AuditDevice => Need::Cap(acl().trim_end_matches('/').to_string(), Capability::Sudo),
        Route::AuditHash => Need::Cap(acl().trim_end_matches('/').to_string(), Capability::Update),
        Route::Capabilities => Need::Cap("sys/capabilities".into(), Capability::Update),
        // Vault's rule: reading the key status needs `read` on `sys/key-status`, not sudo.
        Route::KeyStatus if m == "GET" => Need::Cap("sys/key-status".into(), Capability::Read),
        // Vault's rule: `GET lookup-self` needs `read`, every other `auth/token/*` call `update`.
        Route::TokenLookupSelf if m == "GET" => Need::Cap("auth/token/lookup-self".into(), Capability::Read),
        // Vault asks `list` and `sudo`; here the root token only.
        Route::TokenAccessors if m == "LIST" => Need::Root,
        Route::TokenLookupSelf | Route::TokenAccessors | Route::TokenTidy | Route::Token => {
            Need::Cap(acl(), Capability::Update)
        }
        Route::AuthMethods => Need::Cap("sys/auth".into(), Capability::Read),
        // Vault: enabling and disabling an auth method needs `sudo` on `sys/auth/<path>`.
        Route::AuthMount => Need::Cap(acl(), Capability::Sudo),
        Route::AuthMethod => Need::Cap(acl(), by_method(Capability::Read)),
        // Operator endpoints (rotation, restore, digest, snapshots), and the seal endpoints'
        // methods that are answered before this: root only.
        _ => Need::Root,
    }
}

/// Resolve the request's token, or refuse (403, as Vault answers a missing or bad token).
pub(crate) async fn identify(ctx: &ReadContext, req: &ApiRequest) -> Result<Identity, ApiError> {
    let token = req.token.as_deref().filter(|t| !t.is_empty()).ok_or_else(ApiError::permission_denied)?;
    let hash = ctx.keyring.token_hash(token);
    match ctx.store.root_token_hash().await? {
        Some(root) if ctx.keyring.token_matches(token, &root) => return Ok(Identity::Root),
        Some(_) => {}
        None => {
            tracing::warn!(request_id = %req.request_id, "permission denied: the log has not delivered a root token yet");
            return Err(ApiError::permission_denied());
        }
    }
    let Some(record) = token_record(ctx, &hash).await? else {
        tracing::info!(request_id = %req.request_id, path = %req.path, "permission denied: unknown or revoked token");
        return Err(ApiError::permission_denied());
    };
    if record.expired(now_ms()) {
        tracing::info!(request_id = %req.request_id, accessor = %record.accessor, "permission denied: token expired");
        return Err(ApiError::permission_denied());
    }
    if !record.bound_cidrs.is_empty() {
        let client = super::auth_methods::client_ip(&ctx.keyring, req);
        if !client.is_some_and(|ip| super::auth_methods::ip_in_any(ip, &record.bound_cidrs)) {
            tracing::info!(request_id = %req.request_id, accessor = %record.accessor, client = ?client,
                "permission denied: token used from outside its bound CIDRs");
            return Err(ApiError::permission_denied());
        }
    }
    Ok(Identity::Token { hash, record })
}

/// The record of the token hashed to `hash` in this node's state, expired or not, through the
/// node's auth cache; `None` for a token this node does not hold.
pub(crate) async fn token_record(ctx: &ReadContext, hash: &[u8; 32]) -> Result<Option<Arc<TokenRecord>>, ApiError> {
    // The version first: a record read after it is at least as new as it (see `AuthCache`).
    let version = ctx.auth_version();
    if let Some(record) = ctx.auth.token(version, hash) {
        return Ok(Some(record));
    }
    let Some(raw) = ctx.store.get_raw(&keys::token(hash)).await? else { return Ok(None) };
    let record: Arc<TokenRecord> = Arc::new(serde_json::from_slice(&raw).map_err(|_| ApiError::internal())?);
    ctx.auth.keep_token(version, *hash, record.clone());
    Ok(Some(record))
}

/// The merged ACL of a token's policies (policies that no longer exist grant nothing).
pub(crate) async fn acl_of(ctx: &ReadContext, record: &TokenRecord) -> Result<Arc<Acl>, ApiError> {
    let version = ctx.auth_version();
    if let Some(acl) = ctx.auth.acl(version, &record.policies) {
        return Ok(acl);
    }
    let mut policies = Vec::new();
    for name in &record.policies {
        if let Some(text) = policy_text(ctx, name).await? {
            match parse_policy(&text) {
                Ok(p) => policies.push(p),
                Err(e) => {
                    tracing::error!(policy = %name, error = %e, "stored policy does not parse; it grants nothing")
                }
            }
        }
    }
    let acl = Arc::new(Acl::new(&policies));
    ctx.auth.keep_acl(version, &record.policies, acl.clone());
    Ok(acl)
}

/// The endpoints a token uses on itself, which the `default` policy grants.
const SELF_PATHS: [&str; 3] = ["auth/token/lookup-self", "auth/token/renew-self", "auth/token/revoke-self"];

/// Authenticate and authorize a request.
pub async fn authorize(ctx: &ReadContext, req: &ApiRequest) -> Result<Identity, ApiError> {
    let who = identify(ctx, req).await?;
    let Identity::Token { record, .. } = &who else { return Ok(who) };
    let mut meta_exists = None;
    let mounts = ctx.mounts();
    let mount = mounts.resolve(&ctx.default_mount, req.path.strip_prefix("v1/").unwrap_or(""));
    if matches!(req.method.as_str(), "POST" | "PUT")
        && let Some(m) = &mount
        && let Some((_, rel)) = m.rest.split_once('/')
    {
        // Vault's KV v2 existence check: the secret's metadata exists (even with no version).
        meta_exists = Some(ctx.store.meta(&m.record.storage, rel).await?.is_some());
    }
    let allowed = match need(req, mount.map(|m| m.path), |_| meta_exists.unwrap_or(false)) {
        Need::AnyToken => true,
        Need::Root => false,
        // Tokens from before the `default` policy keep their own lookup, renewal and revocation.
        Need::Cap(path, _) if !record.self_by_policy && SELF_PATHS.contains(&path.as_str()) => true,
        Need::Cap(path, cap) => acl_of(ctx, record).await?.allows(&path, cap),
    };
    if !allowed {
        tracing::info!(request_id = %req.request_id, accessor = %record.accessor, path = %req.path, method = %req.method, "permission denied by policy");
        return Err(ApiError::permission_denied());
    }
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> ApiRequest {
        ApiRequest { method: method.into(), path: path.into(), ..Default::default() }
    }

    #[test]
    fn requests_map_to_vault_acl_paths_and_capabilities() {
        let n = |m: &str, p: &str, exists: bool| need(&req(m, p), Some("secret"), |_| exists);
        assert_eq!(n("GET", "v1/secret/data/a/b", false), Need::Cap("secret/data/a/b".into(), Capability::Read));
        assert_eq!(n("POST", "v1/secret/data/a", false), Need::Cap("secret/data/a".into(), Capability::Create));
        assert_eq!(n("POST", "v1/secret/data/a", true), Need::Cap("secret/data/a".into(), Capability::Update));
        assert_eq!(n("PATCH", "v1/secret/data/a", true), Need::Cap("secret/data/a".into(), Capability::Patch));
        assert_eq!(n("DELETE", "v1/secret/data/a", true), Need::Cap("secret/data/a".into(), Capability::Delete));
        assert_eq!(n("LIST", "v1/secret/metadata/a/", true), Need::Cap("secret/metadata/a/".into(), Capability::List));
        assert_eq!(n("POST", "v1/secret/destroy/a", true), Need::Cap("secret/destroy/a".into(), Capability::Update));
        assert_eq!(
            n("GET", "v1/auth/token/lookup-self", true),
            Need::Cap("auth/token/lookup-self".into(), Capability::Read)
        );
        assert_eq!(
            n("POST", "v1/auth/token/renew-self", true),
            Need::Cap("auth/token/renew-self".into(), Capability::Update)
        );
        assert_eq!(n("POST", "v1/auth/token/create", true), Need::Cap("auth/token/create".into(), Capability::Update));
        assert_eq!(n("PUT", "v1/sys/policies/acl/p", true), Need::Cap("sys/policies/acl/p".into(), Capability::Update));
        assert_eq!(n("POST", "v1/sys/secretlog/restore", true), Need::Root);
        assert_eq!(n("GET", "v1/sys/audit", true), Need::Cap("sys/audit".into(), Capability::Sudo));
        assert_eq!(n("PUT", "v1/sys/audit/trail/", true), Need::Cap("sys/audit/trail".into(), Capability::Sudo));
        assert_eq!(n("DELETE", "v1/sys/audit/trail", true), Need::Cap("sys/audit/trail".into(), Capability::Sudo));
        assert_eq!(
            n("POST", "v1/sys/audit-hash/file", true),
            Need::Cap("sys/audit-hash/file".into(), Capability::Update)
        );
        assert_eq!(n("GET", "v1/sys/key-status", true), Need::Cap("sys/key-status".into(), Capability::Read));
        assert_eq!(n("POST", "v1/sys/rotate", true), Need::Root);
        assert_eq!(n("POST", "v1/sys/key-status", true), Need::Root);
        assert_eq!(n("POST", "v1/secret/config", true), Need::Cap("secret/config".into(), Capability::Update));
        assert_eq!(n("GET", "v1/sys/mounts", true), Need::Cap("sys/mounts".into(), Capability::Read));
        assert_eq!(n("POST", "v1/sys/mounts/team", true), Need::Cap("sys/mounts/team".into(), Capability::Update));
        assert_eq!(n("DELETE", "v1/sys/mounts/team", true), Need::Cap("sys/mounts/team".into(), Capability::Delete));
        assert_eq!(n("GET", "v1/sys/internal/ui/mounts/secret/a", true), Need::AnyToken);
        assert_eq!(n("POST", "v1/sys/capabilities-self", true), Need::AnyToken);
        assert_eq!(
            need(&req("GET", "v1/team/data/a"), Some("team"), |_| false),
            Need::Cap("team/data/a".into(), Capability::Read)
        );
        assert_eq!(need(&req("GET", "v1/team/data/a"), None, |_| false), Need::Root, "no mount serves it");
        assert_eq!(n("GET", "v1/sys/auth", true), Need::Cap("sys/auth".into(), Capability::Read));
        assert_eq!(n("POST", "v1/sys/auth/approle", true), Need::Cap("sys/auth/approle".into(), Capability::Sudo));
        assert_eq!(
            n("POST", "v1/auth/approle/role/web", true),
            Need::Cap("auth/approle/role/web".into(), Capability::Update)
        );
        assert_eq!(n("LIST", "v1/auth/approle/role", true), Need::Cap("auth/approle/role".into(), Capability::List));
        assert_eq!(n("GET", "v1/sys/policies/acl", true), Need::Cap("sys/policies/acl".into(), Capability::Read));
        assert_eq!(n("LIST", "v1/sys/policies/acl", true), Need::Cap("sys/policies/acl".into(), Capability::List));
        assert_eq!(
            n("GET", "v1/auth/token/accessors", true),
            Need::Cap("auth/token/accessors".into(), Capability::Update)
        );
        assert_eq!(n("LIST", "v1/auth/token/accessors", true), Need::Root);
        assert_eq!(n("POST", "v1/sys/secretlog/snapshot", true), Need::Root);
        assert_eq!(n("GET", "v1/sys/nothing", true), Need::Root, "no route: root only, to be told so");
    }

    #[test]
    fn the_built_in_default_policy_parses_and_grants_a_token_its_own_endpoints() {
        let acl = Acl::new(&[parse_policy(DEFAULT_POLICY).expect("the default policy parses")]);
        assert!(acl.allows("auth/token/lookup-self", Capability::Read));
        assert!(!acl.allows("auth/token/lookup-self", Capability::Update), "POST lookup-self is refused, as in Vault");
        assert!(acl.allows("auth/token/renew-self", Capability::Update));
        assert!(acl.allows("auth/token/revoke-self", Capability::Update));
        assert!(!acl.allows("secret/data/x", Capability::Read));
        assert!(!acl.allows("auth/token/create", Capability::Update));
    }
}
