//! Auth methods as every node reads them: `sys/auth` (the enabled methods), AppRole roles and
//! their role ids, userpass users — answered from the state the log built, as Vault shapes them.
//! Changes (enable, disable, role and user writes, secret ids, logins) are writes, decided by the
//! leader (`writer/src/auth_methods.rs`).
//!
//! Also here, because readers and the leader need them alike: which ACL path and capability an
//! auth-method request needs ([`need`]), which requests are logins (no token needed, [`is_login`]),
//! and the client address CIDR bounds are checked against ([`client_ip`]) — the connection's
//! peer, or for a request a secretlog node forwarded, the client address that node saw and
//! vouched for with a tag only holders of the root key can make ([`attest`]).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use secretlog_schemas::Keyring;
use secretlog_schemas::auth::{AppRoleRecord, AuthMountRecord, AuthObjectKind, SecretIdRecord, UserRecord};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiRequest, ApiResponse, Route};
use crate::context::ReadContext;
use secretlog_state::store::keys;

/// The auth method types that can be enabled.
pub const METHODS: [&str; 2] = ["approle", "userpass"];

/// Header carrying a forwarding node's word for the client address: `<ip> <unix secs> <hex tag>`.
pub(crate) const CLIENT_HEADER: &str = "x-secretlog-client";

/// How long a forwarding node's word for a client address holds, seconds.
const ATTESTATION_SECS: u64 = 120;

/// Whether `req` is a login (AppRole `login`, userpass `login/<user>` of an enabled method):
/// answered without a token, as in Vault.
pub async fn is_login(ctx: &ReadContext, req: &ApiRequest) -> Result<bool, ApiError> {
    if !matches!(req.method.as_str(), "POST" | "PUT") || req.route() != Route::AuthMethod {
        return Ok(false);
    }
    let Some(rest) = req.path.strip_prefix("v1/auth/") else { return Ok(false) };
    Ok(mount_of(ctx, rest).await?.is_some_and(|(_, m, tail)| is_login_tail(&m.method, &tail)))
}

/// Whether `tail` (the path after the mount) is the login endpoint of a method of type `method`.
pub(crate) fn is_login_tail(method: &str, tail: &str) -> bool {
    match method {
        "approle" => tail == "login",
        "userpass" => tail.strip_prefix("login/").is_some_and(|u| !u.is_empty() && !u.contains('/')),
        _ => false,
    }
}

/// The enabled auth method serving `rest` (a path after `auth/`): its mount path (`approle/`),
/// its record and what follows the mount.
pub async fn mount_of(ctx: &ReadContext, rest: &str) -> Result<Option<(String, AuthMountRecord, String)>, ApiError> {
    let mut best: Option<(String, AuthMountRecord, String)> = None;
    for (k, v) in ctx.store.scan(keys::AUTH_MOUNT_PREFIX).await? {
        let mount = String::from_utf8_lossy(&k[keys::AUTH_MOUNT_PREFIX.len()..]).into_owned();
        let with_slash = format!("{rest}/");
        let tail = match rest.strip_prefix(mount.as_str()) {
            Some(t) => t.to_string(),
            None if with_slash == mount => String::new(),
            None => continue,
        };
        if best.as_ref().is_some_and(|(m, _, _)| m.len() >= mount.len()) {
            continue;
        }
        let record: AuthMountRecord = serde_json::from_slice(&v).map_err(|_| ApiError::internal())?;
        best = Some((mount, record, tail));
    }
    Ok(best)
}

/// Every enabled auth method (the `token/` method always), by mount path.
pub async fn mounts(ctx: &ReadContext) -> Result<Vec<(String, AuthMountRecord)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in ctx.store.scan(keys::AUTH_MOUNT_PREFIX).await? {
        let mount = String::from_utf8_lossy(&k[keys::AUTH_MOUNT_PREFIX.len()..]).into_owned();
        out.push((mount, serde_json::from_slice(&v).map_err(|_| ApiError::internal())?));
    }
    Ok(out)
}

/// A mount's entry in `sys/auth`, as OpenBao shapes it.
fn mount_json(r: &AuthMountRecord, builtin: bool) -> Value {
    let mut v = json!({
        "accessor": r.accessor,
        "config": {
            "default_lease_ttl": r.default_lease_ttl_secs,
            "force_no_cache": false,
            "max_lease_ttl": r.max_lease_ttl_secs,
            "token_type": "default-service",
        },
        "description": r.description,
        "external_entropy_access": false,
        "local": false,
        "options": if builtin { Value::Null } else { json!(r.options) },
        "plugin_version": "",
        "running_plugin_version": format!("v{}+builtin.secretlog", env!("CARGO_PKG_VERSION")),
        "running_sha256": "",
        "seal_wrap": false,
        "type": r.method,
        "uuid": r.uuid,
    });
    if !builtin {
        v["deprecation_status"] = json!("supported");
    }
    v
}

/// The `token/` method, always enabled; its accessor and UUID derive from the root key, so every
/// node shows the same ones.
fn token_mount(keyring: &Keyring) -> AuthMountRecord {
    let h = hex::encode(keyring.secret_hash("sys/auth/token/"));
    AuthMountRecord {
        method: "token".into(),
        description: "token based credentials".into(),
        accessor: format!("auth_token_{}", &h[..8]),
        uuid: format!("{}-{}-{}-{}-{}", &h[8..16], &h[16..20], &h[20..24], &h[24..28], &h[28..40]),
        ..Default::default()
    }
}

/// `GET /v1/sys/auth`: every enabled method, under `data` and (as Vault still sends them) at the
/// top level of the answer.
async fn list_mounts(ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let mut data = serde_json::Map::new();
    data.insert("token/".into(), mount_json(&token_mount(&ctx.keyring), true));
    for (mount, r) in mounts(ctx).await? {
        data.insert(mount, mount_json(&r, false));
    }
    let mut body = data.clone();
    body.insert("request_id".into(), json!(req.request_id));
    body.insert("lease_id".into(), json!(""));
    body.insert("renewable".into(), json!(false));
    body.insert("lease_duration".into(), json!(0));
    body.insert("data".into(), Value::Object(data));
    body.insert("wrap_info".into(), Value::Null);
    body.insert("warnings".into(), Value::Null);
    body.insert("auth".into(), Value::Null);
    Ok(ApiResponse::json(200, &Value::Object(body)))
}

/// Answer a read of `sys/auth` or of an auth method's objects.
pub async fn read(ctx: &ReadContext, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    if req.path == "v1/sys/auth" {
        return list_mounts(ctx, req).await;
    }
    let rest = req.path.strip_prefix("v1/auth/").unwrap_or("");
    let Some((mount, record, tail)) = mount_of(ctx, rest).await? else {
        return Err(ApiError::no_route(req.path.strip_prefix("v1/").unwrap_or(&req.path)));
    };
    let segs: Vec<&str> = tail.trim_end_matches('/').split('/').collect();
    let list = req.method == "LIST";
    let data = match (record.method.as_str(), segs.as_slice(), list) {
        ("approle", ["role"], true) => list_names(ctx, &mount, "role/").await?,
        ("approle", ["role", name], false) => {
            role_json(&role(ctx, &mount, name).await?.ok_or_else(ApiError::not_found)?)
        }
        ("approle", ["role", name, "role-id"], false) => {
            json!({ "role_id": role(ctx, &mount, name).await?.ok_or_else(ApiError::not_found)?.role_id })
        }
        ("approle", ["role", name, "secret-id"], true) => {
            let prefix = keys::auth_object(&mount, AuthObjectKind::SecretId.name(), &format!("{name}/"));
            let mut accessors: Vec<String> = ctx
                .store
                .scan(&prefix)
                .await?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_slice::<SecretIdRecord>(&v).ok().map(|r| r.accessor))
                .collect();
            if accessors.is_empty() {
                return Err(ApiError::not_found());
            }
            accessors.sort();
            json!({ "keys": accessors })
        }
        ("userpass", ["users"], true) => list_names(ctx, &mount, "user/").await?,
        ("userpass", ["users", name], false) => {
            let key = keys::auth_object(&mount, AuthObjectKind::User.name(), &name.to_ascii_lowercase());
            let raw = ctx.store.get_raw(&key).await?.ok_or_else(ApiError::not_found)?;
            let u: UserRecord = serde_json::from_slice(&raw).map_err(|_| ApiError::internal())?;
            token_fields(
                &u.token_policies,
                u.token_ttl_secs,
                u.token_max_ttl_secs,
                &u.token_bound_cidrs,
                u.token_no_default_policy,
                0,
            )
        }
        _ => return Err(ApiError::unsupported_path()),
    };
    Ok(ApiResponse::data(&req.request_id, data))
}

/// An AppRole role by name (names are lower-cased, as Vault does).
pub async fn role(ctx: &ReadContext, mount: &str, name: &str) -> Result<Option<AppRoleRecord>, ApiError> {
    let key = keys::auth_object(mount, AuthObjectKind::AppRoleRole.name(), &name.to_ascii_lowercase());
    match ctx.store.get_raw(&key).await? {
        Some(raw) => Ok(Some(serde_json::from_slice(&raw).map_err(|_| ApiError::internal())?)),
        None => Ok(None),
    }
}

/// `LIST` of roles or users: their names, or 404 when there are none.
async fn list_names(ctx: &ReadContext, mount: &str, kind_prefix: &str) -> Result<Value, ApiError> {
    let prefix = [keys::auth_objects(mount), kind_prefix.as_bytes().to_vec()].concat();
    let names: Vec<String> = ctx
        .store
        .scan(&prefix)
        .await?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect();
    if names.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(json!({ "keys": names }))
}

/// The token settings every auth method's objects show, as Vault's `tokenutil` fields.
fn token_fields(
    policies: &[String],
    ttl: u64,
    max_ttl: u64,
    cidrs: &[String],
    no_default: bool,
    explicit_max: u64,
) -> Value {
    json!({
        "token_bound_cidrs": cidrs,
        "token_explicit_max_ttl": explicit_max,
        "token_max_ttl": max_ttl,
        "token_no_default_policy": no_default,
        "token_num_uses": 0,
        "token_period": 0,
        "token_policies": policies,
        "token_strictly_bind_ip": false,
        "token_ttl": ttl,
        "token_type": "default",
    })
}

/// A role as `GET role/<name>` shows it.
pub(crate) fn role_json(r: &AppRoleRecord) -> Value {
    let mut v = token_fields(
        &r.token_policies,
        r.token_ttl_secs,
        r.token_max_ttl_secs,
        &r.token_bound_cidrs,
        r.token_no_default_policy,
        r.token_explicit_max_ttl_secs,
    );
    v["bind_secret_id"] = json!(r.bind_secret_id);
    v["local_secret_ids"] = json!(false);
    v["secret_id_bound_cidrs"] =
        if r.secret_id_bound_cidrs.is_empty() { Value::Null } else { json!(r.secret_id_bound_cidrs) };
    v["secret_id_num_uses"] = json!(r.secret_id_num_uses);
    v["secret_id_ttl"] = json!(r.secret_id_ttl_secs);
    v
}

// ---- client addresses and CIDR bounds ----

/// Parse a CIDR block, or a single address (a /32 or /128), as Vault accepts them.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Whether `ip` is inside any of `cidrs` (an IPv4 client seen as IPv6-mapped counts as IPv4).
pub fn ip_in_any(ip: IpAddr, cidrs: &[String]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    cidrs.iter().filter_map(|c| parse_cidr(c)).any(|net| net.contains(&ip))
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a forwarding node's tag covers: the client address, the time, and the request itself
/// (method, path, query, body), so the tag cannot be moved to another request.
fn attested_parts(ip: &str, secs: &str, req: &ApiRequest) -> [Vec<u8>; 6] {
    [
        ip.as_bytes().to_vec(),
        secs.as_bytes().to_vec(),
        req.method.as_bytes().to_vec(),
        req.raw_path.as_bytes().to_vec(),
        req.raw_query.as_bytes().to_vec(),
        Sha256::digest(&req.body).to_vec(),
    ]
}

/// The [`CLIENT_HEADER`] value a node forwarding `req` sends: the client address it sees.
pub(crate) fn attest(keyring: &Keyring, req: &ApiRequest) -> Option<String> {
    let ip = client_ip(keyring, req)?.to_string();
    let secs = unix_secs().to_string();
    let parts = attested_parts(&ip, &secs, req);
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Some(format!("{ip} {secs} {}", hex::encode(keyring.forwarded_tag(&refs))))
}

/// The address of the client that sent `req`: the one a forwarding secretlog node vouched for
/// ([`CLIENT_HEADER`], checked), else the connection's peer.
pub fn client_ip(keyring: &Keyring, req: &ApiRequest) -> Option<IpAddr> {
    if let Some(header) = super::forwarded_client() {
        match verify(keyring, req, &header) {
            Some(ip) => return Some(ip),
            None => {
                tracing::warn!(request_id = %req.request_id, "a forwarded client address without a valid tag; using the peer's")
            }
        }
    }
    super::remote_addr().map(|a| a.ip())
}

fn verify(keyring: &Keyring, req: &ApiRequest, header: &str) -> Option<IpAddr> {
    let mut it = header.split(' ');
    let (ip, secs, tag) = (it.next()?, it.next()?, it.next()?);
    let age = unix_secs().abs_diff(secs.parse::<u64>().ok()?);
    if age > ATTESTATION_SECS {
        return None;
    }
    let parts = attested_parts(ip, secs, req);
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let expected = keyring.forwarded_tag(&refs);
    let given = hex::decode(tag).ok()?;
    bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &given[..])).then_some(())?;
    ip.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_schemas::RootKey;

    fn req(method: &str, path: &str) -> ApiRequest {
        ApiRequest { method: method.into(), path: path.into(), raw_path: path.into(), ..Default::default() }
    }

    #[test]
    fn logins_are_recognised_by_their_path_after_the_mount() {
        assert!(is_login_tail("approle", "login"));
        assert!(is_login_tail("userpass", "login/alice"));
        assert!(!is_login_tail("approle", "role/login"), "a role named login is not a login");
        assert!(!is_login_tail("userpass", "login/"));
        assert!(!is_login_tail("userpass", "login/a/b"));
        assert!(!is_login_tail("approle", "login/x"));
        assert!(!is_login_tail("userpass", "users/login"));
    }

    #[test]
    fn cidrs_take_blocks_and_single_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cidrs = vec!["10.0.0.0/8".to_string(), "127.0.0.1".to_string()];
        assert!(ip_in_any(ip("10.1.2.3"), &cidrs));
        assert!(ip_in_any(ip("127.0.0.1"), &cidrs));
        assert!(ip_in_any(ip("::ffff:127.0.0.1"), &cidrs), "IPv4-mapped");
        assert!(!ip_in_any(ip("127.0.0.2"), &cidrs));
        assert!(!ip_in_any(ip("10.0.0.1"), &["garbage".to_string()]));
        assert!(parse_cidr("::1/128").is_some());
    }

    #[test]
    fn a_forwarded_client_address_holds_only_with_its_tag_for_its_own_request() {
        let ring = Keyring::from_root(&RootKey::from_bytes([5; 32]));
        let other = Keyring::from_root(&RootKey::from_bytes([6; 32]));
        let mut r = req("POST", "v1/auth/approle/login");
        r.body = bytes::Bytes::from_static(b"{\"role_id\":\"x\"}");
        let secs = unix_secs().to_string();
        let parts = attested_parts("10.9.8.7", &secs, &r);
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let header = format!("10.9.8.7 {secs} {}", hex::encode(ring.forwarded_tag(&refs)));
        assert_eq!(verify(&ring, &r, &header), Some(ip_of("10.9.8.7")));
        assert_eq!(verify(&other, &r, &header), None, "another key");
        let mut moved = r.clone();
        moved.body = bytes::Bytes::from_static(b"{\"role_id\":\"y\"}");
        assert_eq!(verify(&ring, &moved, &header), None, "another body");
        assert_eq!(verify(&ring, &r, &header.replace("10.9.8.7 ", "10.9.8.8 ")), None, "another address");
        let old = (unix_secs() - 1000).to_string();
        let parts = attested_parts("10.9.8.7", &old, &r);
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let stale = format!("10.9.8.7 {old} {}", hex::encode(ring.forwarded_tag(&refs)));
        assert_eq!(verify(&ring, &r, &stale), None, "too old");
    }

    fn ip_of(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
}
