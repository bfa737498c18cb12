//! Userpass on the leader (`auth/<mount>/...`): users (`users/<name>`, `users/<name>/password`)
//! and `login/<name>`.
//!
//! Passwords are hashed here, on the leader, with Argon2id (the `argon2` crate's defaults:
//! 19 MiB, 2 passes, 1 lane — OWASP's minimum for Argon2id) on a blocking thread; the log and
//! every store hold only the PHC string. A login for a user that does not exist checks the
//! password against a fixed hash all the same, so that it takes as long as a wrong password.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use secretlog_node::api::auth_methods::{client_ip, ip_in_any};
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse};
use secretlog_schemas::Operation;
use secretlog_schemas::auth::{AuthObjectKind, UserRecord};
use secretlog_state::store::keys;
use zeroize::Zeroizing;

use crate::auth::{Issue, body, duration, settle_policies};
use crate::auth_methods::{Appender, At, boolean, cidrs, object_name, policies};

/// Hash `password` (Argon2id, a fresh salt) on a blocking thread: its PHC string.
pub async fn hash_password(password: Zeroizing<String>) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .map(|h| h.to_string())
            .map_err(|e| {
                tracing::error!(error = %e, "hashing a password failed");
                ApiError::internal()
            })
    })
    .await
    .map_err(|_| ApiError::internal())?
}

/// Whether `password` matches the PHC string `phc`, checked on a blocking thread.
pub async fn verify_password(password: Zeroizing<String>, phc: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false)
}

/// A hash no password is known to match, checked when the user does not exist.
fn decoy() -> String {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY
        .get_or_init(|| {
            let mut secret = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            Argon2::default()
                .hash_password(&secret, &SaltString::generate(&mut OsRng))
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
        .clone()
}

fn user_key(mount: &str, name: &str) -> Vec<u8> {
    keys::auth_object(mount, AuthObjectKind::User.name(), name)
}

async fn user(app: &Appender<'_>, mount: &str, name: &str) -> Result<Option<UserRecord>, ApiError> {
    match app.ctx.store.get_raw(&user_key(mount, name)).await? {
        Some(raw) => Ok(Some(serde_json::from_slice(&raw).map_err(|_| ApiError::internal())?)),
        None => Ok(None),
    }
}

fn password_of(b: &serde_json::Value) -> Option<Zeroizing<String>> {
    b["password"].as_str().filter(|p| !p.is_empty()).map(|p| Zeroizing::new(p.to_string()))
}

/// A write inside a userpass mount (not a login).
pub async fn write(app: &Appender<'_>, req: &ApiRequest, at: &At<'_>) -> Result<ApiResponse, ApiError> {
    let segs: Vec<&str> = at.tail.split('/').collect();
    match (segs.as_slice(), req.method.as_str()) {
        (["users", name], "DELETE") => {
            let name = object_name(name, "user")?;
            let op = Operation::DeleteAuthObject {
                mount: at.mount.into(),
                kind: AuthObjectKind::User,
                name,
                replaces: None,
            };
            app.append(at.mount, op, None).await
        }
        (["users", name], _) => write_user(app, req, at, name).await,
        (["users", name, "password"], "POST" | "PUT") => {
            let name = object_name(name, "user")?;
            let mut u =
                user(app, at.mount, &name).await?.ok_or_else(|| ApiError::bad_request("username does not exist"))?;
            let password = password_of(&body(req)?).ok_or_else(|| ApiError::bad_request("missing password"))?;
            u.password_hash = hash_password(password).await?;
            put_user(app, at.mount, name, &u).await
        }
        _ => Err(ApiError::unsupported_path()),
    }
}

async fn put_user(app: &Appender<'_>, mount: &str, name: String, u: &UserRecord) -> Result<ApiResponse, ApiError> {
    let record = serde_json::to_vec(u).map_err(|_| ApiError::internal())?;
    let op = Operation::PutAuthObject { mount: mount.into(), kind: AuthObjectKind::User, name, record, replaces: None };
    app.append(mount, op, None).await
}

/// `POST users/<name>`: create (a password is required), or update the fields given.
async fn write_user(app: &Appender<'_>, req: &ApiRequest, at: &At<'_>, name: &str) -> Result<ApiResponse, ApiError> {
    let name = object_name(name, "user")?;
    let b = body(req)?;
    let existing = user(app, at.mount, &name).await?;
    let password = password_of(&b);
    if existing.is_none() && password.is_none() {
        return Err(ApiError::bad_request("missing password"));
    }
    let mut u = existing.unwrap_or_default();
    if let Some(p) = password {
        u.password_hash = hash_password(p).await?;
    }
    let pol = if b["token_policies"].is_null() { &b["policies"] } else { &b["token_policies"] };
    if let Some(p) = policies(pol)? {
        u.token_policies = p;
    }
    if let Some(v) = duration(&b["token_ttl"], "token_ttl")? {
        u.token_ttl_secs = v;
    }
    if let Some(v) = duration(&b["token_max_ttl"], "token_max_ttl")? {
        u.token_max_ttl_secs = v;
    }
    if let Some(v) = cidrs(&b["token_bound_cidrs"], "token_bound_cidrs")? {
        u.token_bound_cidrs = v;
    }
    if let Some(v) = boolean(&b["token_no_default_policy"], "token_no_default_policy")? {
        u.token_no_default_policy = v;
    }
    put_user(app, at.mount, name, &u).await
}

/// `POST login/<name> {"password"}`: a token with the user's policies (and `default`).
pub async fn login(app: &Appender<'_>, req: &ApiRequest, at: &At<'_>) -> Result<ApiResponse, ApiError> {
    let Some(name) = at.tail.strip_prefix("login/") else { return Err(ApiError::unsupported_path()) };
    let name = name.to_ascii_lowercase();
    let password = password_of(&body(req)?).ok_or_else(|| ApiError::bad_request("missing password"))?;
    let invalid = || ApiError::bad_request("invalid username or password");
    let found = if object_name(&name, "user").is_ok() { user(app, at.mount, &name).await? } else { None };
    let phc = found.as_ref().map_or_else(decoy, |u| u.password_hash.clone());
    if !verify_password(password, phc).await {
        return Err(invalid());
    }
    let u = found.ok_or_else(invalid)?;
    if !u.token_bound_cidrs.is_empty() {
        let client = client_ip(&app.ctx.keyring, req);
        if !client.is_some_and(|ip| ip_in_any(ip, &u.token_bound_cidrs)) {
            return Err(ApiError::bad_request("login request originated from invalid CIDR"));
        }
    }
    let issued = Issue {
        policies: settle_policies(u.token_policies.clone(), u.token_no_default_policy),
        ttl: if u.token_ttl_secs > 0 { u.token_ttl_secs } else { crate::auth_methods::default_ttl(None) },
        max_ttl: (u.token_max_ttl_secs > 0).then_some(u.token_max_ttl_secs),
        display_name: format!("{}-{name}", crate::auth_methods::display_prefix(at.mount)),
        path: Some(format!("auth/{}login/{name}", at.mount)),
        meta: Some([("username".to_string(), name.clone())].into()),
        bound_cidrs: u.token_bound_cidrs.clone(),
        not_renewable: false,
    };
    crate::approle::issue(app, req, issued).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_are_stored_as_argon2id_phc_strings_and_verified() {
        let phc = hash_password(Zeroizing::new("s3cr3t".into())).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(!phc.contains("s3cr3t"));
        assert!(verify_password(Zeroizing::new("s3cr3t".into()), phc.clone()).await);
        assert!(!verify_password(Zeroizing::new("s3cr3T".into()), phc.clone()).await);
        assert!(!verify_password(Zeroizing::new("s3cr3t".into()), "not a phc string".into()).await);
        assert!(!verify_password(Zeroizing::new(String::new()), decoy()).await);
        let again = hash_password(Zeroizing::new("s3cr3t".into())).await.unwrap();
        assert_ne!(phc, again, "a fresh salt each time");
    }
}
