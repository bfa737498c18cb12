//! Auth methods on the leader: `sys/auth` (enable and disable an AppRole or userpass method at a
//! path) and the writes inside an enabled method, handed to [`crate::approle`] and
//! [`crate::userpass`]. Each change is one control event keyed by the auth mount
//! ([`secretlog_schemas::auth::control_name`]), appended through the committer like token and
//! policy changes, so every node follows it from the log; reads are answered by every node
//! (`secretlog_node::api::auth_methods`).
//!
//! A login is a write: it is decided here, on the leader (readers forward it), takes a use of a
//! limited AppRole secret id as an event conditional on the secret id's stored record (two logins
//! racing for its last use: the log accepts one), and then issues a token as
//! `auth/token/create` does.

use std::time::Duration;

use secretlog_node::api::auth::Identity;
use secretlog_node::api::auth_methods::{METHODS, mount_of, mounts, parse_cidr};
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse};
use secretlog_node::context::ReadContext;
use secretlog_schemas::Operation;
use secretlog_schemas::auth::{AuthMountRecord, AuthObjectKind, MAX_AUTH_MOUNT_LEN, control_name};
use secretlog_state::materializer::now_ms;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::auth::body;
use crate::committer::Pending;
use crate::request::Command;
use crate::request::fields::go_int;

/// What a handler needs to append events and wait for their answers.
pub struct Appender<'a> {
    pub ctx: &'a ReadContext,
    pub queue: mpsc::Sender<Pending>,
    pub timeout: Duration,
}

impl Appender<'_> {
    /// Append `op` under auth mount `mount`'s control object; answer `reply` (200) or 204 once
    /// applied, or the committer's refusal.
    pub async fn append(&self, mount: &str, op: Operation, reply: Option<Value>) -> Result<ApiResponse, ApiError> {
        self.submit(Command::Control { name: control_name(mount), op, body: reply }).await
    }

    /// Queue `cmd` and wait for its answer.
    pub async fn submit(&self, cmd: Command) -> Result<ApiResponse, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_send(Pending { mount: String::new(), cmd, reply: tx, request_id: String::new() })
            .map_err(|_| ApiError::unavailable("write queue full"))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(ApiError::unavailable("writer stopped before answering")),
            Err(_) => Err(ApiError::unavailable("write outcome unknown: timed out waiting for the commit")),
        }
    }
}

/// Handle a write to `sys/auth/<path>` or inside an auth method. `who` is `None` for a login
/// (no token needed).
pub async fn write(app: &Appender<'_>, req: &ApiRequest, who: Option<&Identity>) -> Result<ApiResponse, ApiError> {
    if let Some(path) = req.path.strip_prefix("v1/sys/auth/") {
        return match req.method.as_str() {
            "POST" | "PUT" => enable(app, req, path).await,
            "DELETE" => disable(app, path).await,
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    let rest = req.path.strip_prefix("v1/auth/").unwrap_or("");
    let Some((mount, record, tail)) = mount_of(app.ctx, rest).await? else {
        return Err(ApiError::no_route(req.path.strip_prefix("v1/").unwrap_or(&req.path)));
    };
    let at = At { mount: &mount, tail: tail.trim_end_matches('/') };
    match (record.method.as_str(), who) {
        ("approle", Some(_)) => crate::approle::write(app, req, &at).await,
        ("approle", None) => crate::approle::login(app, req, &at).await,
        ("userpass", Some(_)) => crate::userpass::write(app, req, &at).await,
        ("userpass", None) => crate::userpass::login(app, req, &at).await,
        _ => Err(ApiError::unsupported_path()),
    }
}

/// Where in an auth method a request goes.
pub struct At<'a> {
    /// The mount path (`approle/`).
    pub mount: &'a str,
    /// What follows it (`role/web/secret-id`).
    pub tail: &'a str,
}

/// A mount path as Vault keeps it: no leading slash, one trailing slash.
fn mount_path(path: &str) -> Result<String, ApiError> {
    let p = path.trim_matches('/');
    let ok = !p.is_empty()
        && p.len() < MAX_AUTH_MOUNT_LEN
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if !ok {
        return Err(ApiError::bad_request(format!("invalid auth mount path {path:?}")));
    }
    Ok(format!("{p}/"))
}

/// `POST sys/auth/<path>` `{"type": "approle", "description": ...}`.
async fn enable(app: &Appender<'_>, req: &ApiRequest, path: &str) -> Result<ApiResponse, ApiError> {
    let b = body(req)?;
    let mount = mount_path(path)?;
    let method = b["type"].as_str().unwrap_or("");
    if method.is_empty() {
        return Err(ApiError::bad_request("backend type must be specified as a string"));
    }
    if !METHODS.contains(&method) {
        return Err(ApiError::bad_request(format!("plugin not found in the catalog: {method}")));
    }
    let mut taken: Vec<String> = mounts(app.ctx).await?.into_iter().map(|(m, _)| m).collect();
    taken.push("token/".into());
    if let Some(other) = taken.iter().find(|m| mount.starts_with(m.as_str()) || m.starts_with(&mount)) {
        return Err(ApiError::bad_request(format!("path is already in use at {other}")));
    }
    let mut id = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    let config = &b["config"];
    let ttl = |f: &str| crate::auth::duration(&config[f], f).map(|d| d.unwrap_or(0));
    let record = AuthMountRecord {
        method: method.to_string(),
        description: b["description"].as_str().unwrap_or("").to_string(),
        accessor: format!("auth_{method}_{}", hex::encode(id)),
        uuid: uuid::Uuid::new_v4().to_string(),
        created_ms: now_ms(),
        default_lease_ttl_secs: ttl("default_lease_ttl")?,
        max_lease_ttl_secs: ttl("max_lease_ttl")?,
        options: options(&b)?,
    };
    let op = Operation::PutAuthObject {
        mount: mount.clone(),
        kind: AuthObjectKind::Mount,
        name: String::new(),
        record: serde_json::to_vec(&record).map_err(|_| ApiError::internal())?,
        replaces: None,
    };
    app.append(&mount, op, None).await
}

/// The `options` of an enable request, kept as given: absent is `{}`, `null` stays `null` (as
/// Vault lists them), values are strings.
fn options(b: &Value) -> Result<Option<std::collections::BTreeMap<String, String>>, ApiError> {
    match b.get("options") {
        None => Ok(Some(Default::default())),
        Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|_| ApiError::bad_request("options must be a map of strings")),
    }
}

/// `DELETE sys/auth/<path>`: the method and everything under it (its roles, secret ids and users;
/// tokens it issued stay valid until they expire or are revoked — see docs/compatibility.md).
async fn disable(app: &Appender<'_>, path: &str) -> Result<ApiResponse, ApiError> {
    let mount = mount_path(path)?;
    if mount == "token/" {
        return Err(ApiError::bad_request("token credential backend cannot be disabled"));
    }
    if !mounts(app.ctx).await?.iter().any(|(m, _)| *m == mount) {
        return Ok(ApiResponse::no_content());
    }
    let op = Operation::DeleteAuthObject {
        mount: mount.clone(),
        kind: AuthObjectKind::Mount,
        name: String::new(),
        replaces: None,
    };
    app.append(&mount, op, None).await
}

// ---- fields every method shares ----

/// A list of strings as Vault takes it: a JSON list, or one comma-separated string.
pub fn string_list(v: &Value, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    let items: Vec<String> = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(|s| s.trim().to_string()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_request(format!("{field} must be a list of strings")))?,
        _ => return Err(ApiError::bad_request(format!("{field} must be a list of strings"))),
    };
    Ok(Some(items))
}

/// Policies as a role or user keeps them: lower-cased, sorted, without duplicates.
pub fn policies(v: &Value) -> Result<Option<Vec<String>>, ApiError> {
    Ok(string_list(v, "token_policies")?.map(|mut p| {
        p.iter_mut().for_each(|s| *s = s.to_ascii_lowercase());
        p.sort();
        p.dedup();
        p
    }))
}

/// CIDR blocks, each checked.
pub fn cidrs(v: &Value, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    let Some(list) = string_list(v, field)? else { return Ok(None) };
    for c in &list {
        if parse_cidr(c).is_none() {
            return Err(ApiError::bad_request(format!("invalid CIDR {c:?} in {field}")));
        }
    }
    Ok(Some(list))
}

/// A boolean as Vault takes it (`true`, `"true"`, `1`; `""` is false).
pub fn boolean(v: &Value, field: &str) -> Result<Option<bool>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => Ok(Some(n.as_f64() != Some(0.0))),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
            "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
            _ => Err(ApiError::bad_request(format!("{field} must be a boolean"))),
        },
        _ => Err(ApiError::bad_request(format!("{field} must be a boolean"))),
    }
}

/// A non-negative integer as Vault takes it (Go's weak decoding, [`go_int`]): a number, a
/// numeric string (`bao write` sends every value as one), `""` for 0.
pub fn count(v: &Value, field: &str) -> Result<Option<u64>, ApiError> {
    if v.is_null() {
        return Ok(None);
    }
    let n =
        go_int(v).map_err(|e| ApiError::bad_request(format!("error converting input for field \"{field}\": {e}")))?;
    u64::try_from(n).map(Some).map_err(|_| ApiError::bad_request(format!("{field} cannot be negative")))
}

/// Names of roles and users: lower-cased, as Vault keeps them; letters, digits, `-_.@`.
pub fn object_name(name: &str, what: &str) -> Result<String, ApiError> {
    let n = name.to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if !ok {
        return Err(ApiError::bad_request(format!("invalid {what} name {name:?}")));
    }
    Ok(n)
}

/// The default lifetime of a token from a login: the mount's, else Vault's system default (768h).
pub fn default_ttl(ctx_mount: Option<&AuthMountRecord>) -> u64 {
    ctx_mount.map(|m| m.default_lease_ttl_secs).filter(|t| *t > 0).unwrap_or(32 * 24 * 3600)
}

/// What a login's token is named after, as in Vault: the mount path, slashes as dashes.
pub fn display_prefix(mount: &str) -> String {
    mount.trim_end_matches('/').replace('/', "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mount_paths_are_normalised_and_checked() {
        assert_eq!(mount_path("approle").unwrap(), "approle/");
        assert_eq!(mount_path("/team/approle/").unwrap(), "team/approle/");
        assert!(mount_path("").is_err());
        assert!(mount_path("a/../b").is_err());
        assert!(mount_path("a b").is_err());
    }

    #[test]
    fn fields_decode_as_vault_does() {
        assert_eq!(string_list(&json!("a, b,,c"), "x").unwrap(), Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(policies(&json!(["B", "a", "b"])).unwrap(), Some(vec!["a".into(), "b".into()]));
        assert!(cidrs(&json!(["10.0.0.0/8", "nope"]), "c").is_err());
        assert_eq!(boolean(&json!("true"), "b").unwrap(), Some(true));
        assert_eq!(count(&json!("3"), "n").unwrap(), Some(3));
        assert_eq!(count(&json!(""), "n").unwrap(), Some(0));
        assert_eq!(count(&json!(null), "n").unwrap(), None);
        assert!(count(&json!("two"), "n").is_err());
        assert_eq!(string_list(&json!("app,b"), "token_policies").unwrap(), Some(vec!["app".into(), "b".into()]));
        assert_eq!(boolean(&json!("false"), "b").unwrap(), Some(false));
        assert!(count(&json!(-1), "n").is_err());
        assert_eq!(object_name("Web", "role").unwrap(), "web");
        assert_eq!(options(&json!({"type": "approle"})).unwrap(), Some(Default::default()));
        assert_eq!(options(&json!({"options": null})).unwrap(), None, "what `bao auth enable` sends");
        assert_eq!(options(&json!({"options": {"a": "b"}})).unwrap().unwrap()["a"], "b");
        assert!(options(&json!({"options": [1]})).is_err());
        assert!(object_name("a/b", "role").is_err());
    }
}
