//! AppRole on the leader (`auth/<mount>/...`): roles (`role/<name>`), their role ids
//! (`role-id`), generated and custom secret ids (`secret-id`, `custom-secret-id`) and `login`.
//!
//! A secret id is handed out once, in the answer that creates it; the log and every store hold
//! only its keyed hash ([`secretlog_schemas::Keyring::secret_hash`]), which is the stored
//! object's name. A limited secret id (`secret_id_num_uses`) loses a use per login through an
//! event conditional on its stored record, so two logins racing for its last use cannot both get
//! a token: the log accepts one and refuses the other everywhere alike (the loser is answered
//! 503 and, trying again, finds the secret id spent).

use secretlog_node::api::auth_methods::{client_ip, ip_in_any, role};
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse};
use secretlog_schemas::auth::{AppRoleRecord, AuthObjectKind, SecretIdRecord};
use secretlog_schemas::{Operation, Rewrapped};
use secretlog_state::auth_objects::role_id_key;
use secretlog_state::materializer::now_ms;
use secretlog_state::store::keys;
use serde_json::{Value, json};

use crate::auth::{Issue, auth_body, body, duration, settle_policies};
use crate::auth_methods::{Appender, At, boolean, cidrs, count, object_name, policies, string_list};
use crate::request::Command;

/// A write inside an AppRole mount (not a login).
pub async fn write(app: &Appender<'_>, req: &ApiRequest, at: &At<'_>) -> Result<ApiResponse, ApiError> {
    let segs: Vec<&str> = at.tail.split('/').collect();
    match (segs.as_slice(), req.method.as_str()) {
        (["role", name], "DELETE") => {
            let name = object_name(name, "role")?;
            let op = Operation::DeleteAuthObject {
                mount: at.mount.into(),
                kind: AuthObjectKind::AppRoleRole,
                name,
                replaces: None,
            };
            app.append(at.mount, op, None).await
        }
        (["role", name], _) => write_role(app, req, at, name).await,
        (["role", name, "role-id"], _) => {
            let b = body(req)?;
            let role_id = b["role_id"]
                .as_str()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| ApiError::bad_request("missing role_id"))?;
            let name = object_name(name, "role")?;
            let mut r = role(app.ctx, at.mount, &name)
                .await?
                .ok_or_else(|| ApiError::bad_request(format!("role {name} does not exist")))?;
            check_role_id_free(app, at.mount, &name, role_id).await?;
            r.role_id = role_id.to_string();
            put_role(app, at.mount, &name, &r).await
        }
        (["role", name, "secret-id"], "POST" | "PUT") => {
            new_secret_id(app, req, at, name, uuid::Uuid::new_v4().to_string()).await
        }
        (["role", name, "custom-secret-id"], "POST" | "PUT") => {
            let b = body(req)?;
            let secret = b["secret_id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::bad_request("missing secret_id"))?;
            new_secret_id(app, req, at, name, secret.to_string()).await
        }
        _ => Err(ApiError::unsupported_path()),
    }
}

/// No other role of the mount may hold `role_id` (Vault: "role_id already in use").
async fn check_role_id_free(app: &Appender<'_>, mount: &str, name: &str, role_id: &str) -> Result<(), ApiError> {
    match app.ctx.store.get_raw(&role_id_key(mount, role_id)).await? {
        Some(holder) if holder != name.as_bytes() => Err(ApiError::bad_request("role_id already in use")),
        _ => Ok(()),
    }
}

async fn put_role(app: &Appender<'_>, mount: &str, name: &str, r: &AppRoleRecord) -> Result<ApiResponse, ApiError> {
    let op = Operation::PutAuthObject {
        mount: mount.into(),
        kind: AuthObjectKind::AppRoleRole,
        name: name.into(),
        record: serde_json::to_vec(r).map_err(|_| ApiError::internal())?,
        replaces: None,
    };
    app.append(mount, op, None).await
}

/// `POST role/<name>`: create, or update the fields given (the others keep their values).
async fn write_role(app: &Appender<'_>, req: &ApiRequest, at: &At<'_>, name: &str) -> Result<ApiResponse, ApiError> {
    let name = object_name(name, "role")?;
    let b = body(req)?;
    let existing = role(app.ctx, at.mount, &name).await?;
    let mut r = existing.clone().unwrap_or_else(|| AppRoleRecord {
        role_id: uuid::Uuid::new_v4().to_string(),
        bind_secret_id: true,
        ..Default::default()
    });
    if let Some(id) = b["role_id"].as_str().filter(|s| !s.is_empty()) {
        r.role_id = id.to_string();
    }
    check_role_id_free(app, at.mount, &name, &r.role_id).await?;
    // `policies` is Vault's older name of `token_policies`.
    let pol = if b["token_policies"].is_null() { &b["policies"] } else { &b["token_policies"] };
    if let Some(p) = policies(pol)? {
        r.token_policies = p;
    }
    let secs = |f: &str| duration(&b[f], f);
    if let Some(v) = secs("token_ttl")? {
        r.token_ttl_secs = v;
    }
    if let Some(v) = secs("token_max_ttl")? {
        r.token_max_ttl_secs = v;
    }
    if let Some(v) = secs("token_explicit_max_ttl")? {
        r.token_explicit_max_ttl_secs = v;
    }
    if let Some(v) = secs("secret_id_ttl")? {
        r.secret_id_ttl_secs = v;
    }
    if let Some(v) = count(&b["secret_id_num_uses"], "secret_id_num_uses")? {
        r.secret_id_num_uses = v;
    }
    if let Some(v) = boolean(&b["bind_secret_id"], "bind_secret_id")? {
        r.bind_secret_id = v;
    }
    if let Some(v) = boolean(&b["token_no_default_policy"], "token_no_default_policy")? {
        r.token_no_default_policy = v;
    }
    if let Some(v) = cidrs(&b["secret_id_bound_cidrs"], "secret_id_bound_cidrs")? {
        r.secret_id_bound_cidrs = v;
    }
    if let Some(v) = cidrs(&b["token_bound_cidrs"], "token_bound_cidrs")? {
        r.token_bound_cidrs = v;
    }
    if r.token_max_ttl_secs > 0 && r.token_ttl_secs > r.token_max_ttl_secs {
        return Err(ApiError::bad_request("token_ttl should not be greater than token_max_ttl"));
    }
    if !r.bind_secret_id && r.secret_id_bound_cidrs.is_empty() && r.token_bound_cidrs.is_empty() {
        return Err(ApiError::bad_request("at least one constraint should be enabled on the role"));
    }
    if existing.as_ref() == Some(&r) {
        return Ok(ApiResponse::no_content());
    }
    put_role(app, at.mount, &name, &r).await
}

/// The storage name of a secret id of `role`: the role and the hex of its keyed hash.
fn secret_name(app: &Appender<'_>, role: &str, secret: &str) -> String {
    format!("{role}/{}", hex::encode(app.ctx.keyring.secret_hash(&format!("{role}\0{secret}"))))
}

/// `POST role/<name>/secret-id` and `custom-secret-id`: register `secret` for the role.
async fn new_secret_id(
    app: &Appender<'_>,
    req: &ApiRequest,
    at: &At<'_>,
    name: &str,
    secret: String,
) -> Result<ApiResponse, ApiError> {
    let name = object_name(name, "role")?;
    let b = body(req)?;
    let r = role(app.ctx, at.mount, &name)
        .await?
        .ok_or_else(|| ApiError::bad_request(format!("role \"{name}\" does not exist")))?;
    // A secret id may be more limited than its role says, never less.
    let mut num_uses = r.secret_id_num_uses;
    if let Some(n) = count(&b["num_uses"], "num_uses")? {
        if r.secret_id_num_uses > 0 && (n == 0 || n > r.secret_id_num_uses) {
            return Err(ApiError::bad_request("num_uses cannot be higher than the role's secret_id_num_uses"));
        }
        num_uses = n;
    }
    let mut ttl = r.secret_id_ttl_secs;
    if let Some(t) = duration(&b["ttl"], "ttl")? {
        if r.secret_id_ttl_secs > 0 && (t == 0 || t > r.secret_id_ttl_secs) {
            return Err(ApiError::bad_request("ttl cannot be longer than the role's secret_id_ttl"));
        }
        ttl = t;
    }
    let metadata = match &b["metadata"] {
        Value::Null => Default::default(),
        Value::String(s) if s.is_empty() => Default::default(),
        Value::String(s) => serde_json::from_str(s)
            .map_err(|_| ApiError::bad_request("failed to parse metadata: not a JSON object of strings"))?,
        Value::Object(_) => serde_json::from_value(b["metadata"].clone())
            .map_err(|_| ApiError::bad_request("failed to parse metadata: not a JSON object of strings"))?,
        _ => return Err(ApiError::bad_request("failed to parse metadata: not a JSON object of strings")),
    };
    let object = secret_name(app, &name, &secret);
    let key = keys::auth_object(at.mount, AuthObjectKind::SecretId.name(), &object);
    if app.ctx.store.get_raw(&key).await?.is_some() {
        return Err(ApiError::bad_request("SecretID is already registered"));
    }
    let now = now_ms();
    let record = SecretIdRecord {
        accessor: uuid::Uuid::new_v4().to_string(),
        created_ms: now,
        expire_ms: (ttl > 0).then(|| now + ttl as i64 * 1000),
        uses_left: num_uses,
        num_uses,
        cidr_list: cidrs(&b["cidr_list"], "cidr_list")?.unwrap_or_default(),
        token_bound_cidrs: cidrs(&b["token_bound_cidrs"], "token_bound_cidrs")?.unwrap_or_default(),
        metadata,
    };
    let reply = json!({
        "request_id": req.request_id, "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": {
            "secret_id": secret,
            "secret_id_accessor": record.accessor,
            "secret_id_num_uses": num_uses,
            "secret_id_ttl": ttl,
        },
        "wrap_info": null, "warnings": null, "auth": null,
    });
    let op = Operation::PutAuthObject {
        mount: at.mount.into(),
        kind: AuthObjectKind::SecretId,
        name: object,
        record: serde_json::to_vec(&record).map_err(|_| ApiError::internal())?,
        replaces: None,
    };
    app.append(at.mount, op, Some(reply)).await
}

/// Vault's answer to every login that names no valid role and secret id, whichever part is
/// wrong, so that a caller learns nothing about which.
fn invalid() -> ApiError {
    ApiError::bad_request("invalid role or secret ID")
}

/// `POST login {"role_id", "secret_id"}`: a token with the role's policies (and `default`).
pub async fn login(app: &Appender<'_>, req: &ApiRequest, at: &At<'_>) -> Result<ApiResponse, ApiError> {
    if at.tail != "login" {
        return Err(ApiError::unsupported_path());
    }
    let b = body(req)?;
    let role_id =
        b["role_id"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| ApiError::bad_request("missing role_id"))?;
    let Some(name) = app.ctx.store.get_raw(&role_id_key(at.mount, role_id)).await? else { return Err(invalid()) };
    let name = String::from_utf8_lossy(&name).into_owned();
    let r = role(app.ctx, at.mount, &name).await?.ok_or_else(invalid)?;
    if r.role_id != role_id {
        return Err(invalid());
    }
    let client = client_ip(&app.ctx.keyring, req);
    let from_allowed = |list: &[String]| list.is_empty() || client.is_some_and(|ip| ip_in_any(ip, list));
    let unauthorized = || {
        ApiError::bad_request(format!(
            "source address {:?} unauthorized through CIDR restrictions on the secret ID",
            client.map(|c| c.to_string()).unwrap_or_default()
        ))
    };
    if !from_allowed(&r.secret_id_bound_cidrs) {
        return Err(unauthorized());
    }
    let mut token_cidrs = r.token_bound_cidrs.clone();
    let mut consume = None;
    if r.bind_secret_id {
        let secret = string_list(&b["secret_id"], "secret_id")?
            .and_then(|l| l.into_iter().next())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad_request("missing secret_id"))?;
        let object = secret_name(app, &name, &secret);
        let key = keys::auth_object(at.mount, AuthObjectKind::SecretId.name(), &object);
        let Some(raw) = app.ctx.store.get_raw(&key).await? else { return Err(invalid()) };
        let s: SecretIdRecord = serde_json::from_slice(&raw).map_err(|_| ApiError::internal())?;
        if s.expire_ms.is_some_and(|e| e <= now_ms()) {
            return Err(invalid());
        }
        if !from_allowed(&s.cidr_list) {
            return Err(unauthorized());
        }
        if !s.token_bound_cidrs.is_empty() {
            token_cidrs = s.token_bound_cidrs.clone();
        }
        if s.uses_left > 0 {
            // Taken through the log, conditional on the record read here.
            let replaces = Some(Rewrapped::digest(&raw));
            let op = if s.uses_left == 1 {
                Operation::DeleteAuthObject {
                    mount: at.mount.into(),
                    kind: AuthObjectKind::SecretId,
                    name: object,
                    replaces,
                }
            } else {
                let left = SecretIdRecord { uses_left: s.uses_left - 1, ..s };
                let record = serde_json::to_vec(&left).map_err(|_| ApiError::internal())?;
                Operation::PutAuthObject {
                    mount: at.mount.into(),
                    kind: AuthObjectKind::SecretId,
                    name: object,
                    record,
                    replaces,
                }
            };
            consume = Some(op);
        }
    }
    if let Some(op) = consume {
        let taken = app.append(at.mount, op, None).await?;
        if taken.status >= 300 {
            return Ok(taken);
        }
    }
    let max = [r.token_max_ttl_secs, r.token_explicit_max_ttl_secs].into_iter().filter(|t| *t > 0).min();
    let issued = Issue {
        policies: settle_policies(r.token_policies.clone(), r.token_no_default_policy),
        ttl: if r.token_ttl_secs > 0 { r.token_ttl_secs } else { crate::auth_methods::default_ttl(None) },
        max_ttl: max,
        display_name: crate::auth_methods::display_prefix(at.mount),
        path: Some(format!("auth/{}login", at.mount)),
        meta: Some([("role_name".to_string(), name.clone())].into()),
        bound_cidrs: token_cidrs,
        not_renewable: false,
    };
    issue(app, req, issued).await
}

/// Issue the token of a login: a `PutToken` keyed by its accessor, as `auth/token/create` does.
pub(crate) async fn issue(app: &Appender<'_>, req: &ApiRequest, issued: Issue) -> Result<ApiResponse, ApiError> {
    let (token, record) = issued.record();
    let reply = auth_body(req, Some(&token), &record, record.created_ms);
    let op = Operation::PutToken {
        token_hash: app.ctx.keyring.token_hash(&token),
        record: serde_json::to_vec(&record).map_err(|_| ApiError::internal())?,
    };
    app.submit(Command::Control { name: format!("token/{}", record.accessor), op, body: Some(reply) }).await
}
