//! Auth methods in the log: the records that [`crate::Operation::PutAuthObject`] carries for
//! `sys/auth` mounts, AppRole roles and secret ids, and userpass users; and the token record
//! ([`TokenRecord`]) that [`crate::Operation::PutToken`] carries.
//!
//! Every change to one auth mount — the mount itself and every object under it — is keyed by one
//! control object, [`control_name`] (`auth/<mount>`), so all of them are totally ordered in one
//! partition and every node applies them in the same order: a role's delete and the write of a
//! secret id for it, or the mount's disable and a user written under it, cannot be seen in two
//! orders by two readers.
//!
//! Records are JSON (`serde`); the JSON of each is pinned by golden files in
//! `schemas/tests/golden/` (`auth_*_v1.json`, `token_*_v1.json`). New fields are added with `#[serde(default)]`,
//! never renamed. Secrets never appear in a record: a secret id is known only by its keyed hash
//! ([`crate::Keyring::secret_hash`], the record's name), a password only by its Argon2id PHC
//! string.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an auth object is. The tag is part of the wire format and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthObjectKind {
    /// The mount itself (`sys/auth/<mount>`): an [`AuthMountRecord`]; its name is empty.
    /// Deleting it disables the mount and removes every object under it.
    Mount,
    /// An AppRole role ([`AppRoleRecord`]), named by the role's name. Deleting it removes its
    /// secret ids.
    AppRoleRole,
    /// An AppRole secret id ([`SecretIdRecord`]), named `<role>/<hex of its keyed hash>`.
    SecretId,
    /// A userpass user ([`UserRecord`]), named by the user name.
    User,
}

impl AuthObjectKind {
    /// The wire tag.
    pub fn tag(self) -> u8 {
        match self {
            AuthObjectKind::Mount => 1,
            AuthObjectKind::AppRoleRole => 2,
            AuthObjectKind::SecretId => 3,
            AuthObjectKind::User => 4,
        }
    }

    /// The kind of a wire tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => AuthObjectKind::Mount,
            2 => AuthObjectKind::AppRoleRole,
            3 => AuthObjectKind::SecretId,
            4 => AuthObjectKind::User,
            _ => return None,
        })
    }

    /// A short name, for store keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            AuthObjectKind::Mount => "mount",
            AuthObjectKind::AppRoleRole => "role",
            AuthObjectKind::SecretId => "secret-id",
            AuthObjectKind::User => "user",
        }
    }
}

/// The control object (record key) of every change to auth mount `mount` (`approle/`).
pub fn control_name(mount: &str) -> String {
    format!("auth/{mount}")
}

/// Longest auth mount path, in bytes.
pub const MAX_AUTH_MOUNT_LEN: usize = 128;

/// An enabled auth method (`sys/auth/<path>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthMountRecord {
    /// `approle` or `userpass`.
    #[serde(rename = "type")]
    pub method: String,
    pub description: String,
    /// `auth_<type>_<8 hex>`, as Vault names mount accessors.
    pub accessor: String,
    /// A UUID, as Vault's mount table shows.
    pub uuid: String,
    pub created_ms: i64,
    /// `config.default_lease_ttl` / `config.max_lease_ttl`, seconds; 0: the system's.
    #[serde(default)]
    pub default_lease_ttl_secs: u64,
    #[serde(default)]
    pub max_lease_ttl_secs: u64,
    /// `options` as the enable request gave them: `None` for an explicit `null` (what the CLI's
    /// `auth enable` sends, and Vault then lists as `null`); records written before this field
    /// read as `{}`, what an enable without `options` is listed with.
    #[serde(default = "no_options")]
    pub options: Option<BTreeMap<String, String>>,
}

fn no_options() -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::new())
}

/// An AppRole role (`auth/<mount>/role/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRoleRecord {
    /// The role id a login presents (a UUID unless written).
    pub role_id: String,
    pub token_policies: Vec<String>,
    /// Seconds; 0: the mount's default.
    pub token_ttl_secs: u64,
    pub token_max_ttl_secs: u64,
    /// Whether a login must present a secret id.
    pub bind_secret_id: bool,
    /// Uses of each secret id generated for it; 0: unlimited.
    pub secret_id_num_uses: u64,
    /// Lifetime of each secret id generated for it, seconds; 0: unlimited.
    pub secret_id_ttl_secs: u64,
    /// Where a login with one of its secret ids may come from (CIDR blocks); empty: anywhere.
    pub secret_id_bound_cidrs: Vec<String>,
    /// Where its tokens may be used from; empty: anywhere.
    pub token_bound_cidrs: Vec<String>,
    /// Vault's `token_no_default_policy`.
    #[serde(default)]
    pub token_no_default_policy: bool,
    /// Vault's `token_explicit_max_ttl`, seconds; 0: none.
    #[serde(default)]
    pub token_explicit_max_ttl_secs: u64,
}

/// One AppRole secret id, stored under its keyed hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretIdRecord {
    /// Names it in lookups and destroys without revealing it.
    pub accessor: String,
    pub created_ms: i64,
    /// When it stops working; `None` never.
    pub expire_ms: Option<i64>,
    /// Uses left; 0: unlimited. A login that takes the last one removes the record.
    pub uses_left: u64,
    /// The uses it was created with (what lookups report as `secret_id_num_uses`).
    pub num_uses: u64,
    /// Where a login with it may come from; empty: anywhere.
    pub cidr_list: Vec<String>,
    /// Where tokens from it may be used from; empty: the role's.
    pub token_bound_cidrs: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A userpass user (`auth/<mount>/users/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`); never the password.
    pub password_hash: String,
    pub token_policies: Vec<String>,
    pub token_ttl_secs: u64,
    pub token_max_ttl_secs: u64,
    pub token_bound_cidrs: Vec<String>,
    #[serde(default)]
    pub token_no_default_policy: bool,
}

/// A token's record, as the log carries it ([`crate::Operation::PutToken`]) and every store and
/// snapshot holds it, under the token's keyed hash ([`crate::Keyring::token_hash`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub accessor: String,
    pub policies: Vec<String>,
    pub display_name: String,
    pub created_ms: i64,
    /// When it stops working; `None` never.
    pub expire_ms: Option<i64>,
    /// Renewals never extend past this; `None` unbounded.
    pub max_expire_ms: Option<i64>,
    /// Its TTL when created (lookups' `creation_ttl`); a renewal without an increment extends it
    /// by this until it was renewed with one ([`TokenRecord::renewal_secs`]).
    pub ttl_secs: u64,
    pub renewable: bool,
    /// Whether its own lookup, renewal and revocation are decided by its policies (the `default`
    /// policy grants them), as in Vault. `false` only in records written before secretlog had a
    /// `default` policy: those tokens keep using the three `-self` endpoints as they always did.
    #[serde(default)]
    pub self_by_policy: bool,
    /// Where it was issued (`auth/approle/login`); `None`: `auth/token/create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What its login recorded (`role_name`, `username`), shown by lookups as `meta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<BTreeMap<String, String>>,
    /// Client addresses (CIDR blocks) it may be used from; empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_cidrs: Vec<String>,
    /// The lifetime its last renewal gave it, seconds; `None` until renewed. A renewal without an
    /// increment gives it again, as Vault's does (its lease keeps the last TTL granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_ttl_secs: Option<u64>,
}

impl TokenRecord {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expire_ms.is_some_and(|e| e <= now_ms)
    }
    /// What a renewal without an increment extends it by: the lifetime it was last given.
    pub fn renewal_secs(&self) -> u64 {
        self.renewed_ttl_secs.unwrap_or(self.ttl_secs)
    }
    /// Seconds left, 0 for a token that never expires.
    pub fn ttl_left(&self, now_ms: i64) -> i64 {
        self.expire_ms.map_or(0, |e| ((e - now_ms) / 1000).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_tags_and_unknown_tags_are_none() {
        for k in [AuthObjectKind::Mount, AuthObjectKind::AppRoleRole, AuthObjectKind::SecretId, AuthObjectKind::User] {
            assert_eq!(AuthObjectKind::from_tag(k.tag()), Some(k));
        }
        assert_eq!(AuthObjectKind::from_tag(0), None);
        assert_eq!(AuthObjectKind::from_tag(5), None);
    }

    #[test]
    fn records_of_an_older_shape_still_read() {
        // Fields added later default; a record written before them keeps its meaning.
        let role: AppRoleRecord = serde_json::from_str(
            r#"{"role_id":"r","token_policies":["a"],"token_ttl_secs":0,"token_max_ttl_secs":0,"bind_secret_id":true,
                "secret_id_num_uses":0,"secret_id_ttl_secs":0,"secret_id_bound_cidrs":[],"token_bound_cidrs":[]}"#,
        )
        .unwrap();
        assert!(!role.token_no_default_policy);
    }

    #[test]
    fn token_expiry_is_checked_against_the_clock() {
        let r = TokenRecord { expire_ms: Some(1000), ..Default::default() };
        assert!(!r.expired(999) && r.expired(1000));
        assert!(!TokenRecord::default().expired(i64::MAX));
    }
}
