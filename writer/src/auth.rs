//! Tokens and ACL policies on the leader: Vault's `/v1/auth/token/*` and `/v1/sys/policies/acl/*`
//! write endpoints. Each becomes one control event through the committer (ordered per token or
//! policy), so every reader learns it from the log and can check tokens locally.
//!
//! A token is handed out once, in the answer to `create`; the log and every store hold only its
//! keyed hash. A caller that is not root can only give a new token policies it holds itself.

use rand::Rng;
use secretlog_node::api::auth::Identity;
use secretlog_node::api::route::{PolicyPath, Route};
use secretlog_node::api::tokens::lookup_data;
use secretlog_node::api::{ApiError, ApiRequest, ApiResponse};
use secretlog_node::context::ReadContext;
use secretlog_schemas::Operation;
use secretlog_schemas::auth::TokenRecord;
use secretlog_state::acl::parse_policy;
use secretlog_state::materializer::now_ms;
use secretlog_state::store::keys;
use serde_json::{Value, json};

use crate::auth_methods::{boolean, string_list};
use crate::request::Command;
use crate::request::fields::go_duration_secs;

/// What a token or policy request turns into.
pub enum Outcome {
    /// Append this, then answer.
    Command(Command),
    /// Answer now (nothing to append).
    Answer(ApiResponse),
}

/// A request's JSON body; an empty body and the literal `null` (what `bao write -f` sends) are
/// an empty object, as Go decodes them into a map.
pub(crate) fn body(req: &ApiRequest) -> Result<Value, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice(&req.body) {
        Ok(Value::Null) => Ok(json!({})),
        Ok(v) => Ok(v),
        Err(e) => Err(ApiError::bad_request(format!("failed to parse JSON input: {e}"))),
    }
}

/// A duration field as Vault's `TypeDurationSecond` reads it (Go's weak decoding, see
/// [`go_duration_secs`]): seconds as a number or a numeric string, `"<n>d"`, or a Go duration
/// (`"90s"`, `"1h0m0s"` as the CLI sends it, `"1.5h"`). `None` when absent (`null` or `""`).
/// What `0` means is each field's business: for a token's `ttl` the default, for its
/// `explicit_max_ttl` and `period` no limit, for a renewal's `increment` the lifetime the token
/// was last given ([`renew`]).
pub(crate) fn duration(v: &Value, field: &str) -> Result<Option<u64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        _ => go_duration_secs(field, v).map(Some),
    }
}

/// A duration field where `0` means "not given", as Vault reads `ttl`, `explicit_max_ttl`,
/// `period` and `increment`: the CLI sends `"0s"` for every flag left out.
fn nonzero_duration(v: &Value, field: &str) -> Result<Option<u64>, ApiError> {
    Ok(duration(v, field)?.filter(|secs| *secs > 0))
}

/// The `auth` answer for `record` as issued or renewed at `now_ms` (the instant its expiry was
/// computed from, so that a token issued for an hour is answered as an hour, not 3599 s when the
/// clock ticked over a millisecond in between).
pub(crate) fn auth_body(req: &ApiRequest, token: Option<&str>, record: &TokenRecord, now_ms: i64) -> Value {
    let mut body = json!({
        "request_id": req.request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": token.unwrap_or(""),
            "accessor": record.accessor,
            "policies": record.policies,
            "token_policies": record.policies,
            "metadata": record.meta,
            "lease_duration": record.ttl_left(now_ms),
            "renewable": record.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": true,
            "mfa_requirement": null,
            "num_uses": 0,
        }
    });
    // Vault leaves `token_policies` out of a token without policies.
    if record.policies.is_empty() {
        body["auth"].as_object_mut().expect("an object").remove("token_policies");
    }
    body
}

/// A token's policies as Vault settles them: sorted, without duplicates, with `default` added
/// unless `no_default` (which also takes away a `default` asked for).
pub(crate) fn settle_policies(mut policies: Vec<String>, no_default: bool) -> Vec<String> {
    if no_default {
        policies.retain(|p| p != "default");
    } else {
        policies.push("default".into());
    }
    policies.sort();
    policies.dedup();
    policies
}

/// Policy names: letters (lower-cased, as Vault does), digits, `-` and `_`; `root` is reserved.
fn policy_name(name: &str, delete: bool) -> Result<String, ApiError> {
    let name = name.to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(ApiError::bad_request(format!("invalid policy name {name:?}")));
    }
    if name == "default" && delete {
        return Err(ApiError::bad_request("cannot delete default policy"));
    }
    if name == "root" {
        return Err(ApiError::bad_request(if delete {
            "cannot delete \"root\" policy"
        } else {
            "cannot update \"root\" policy"
        }));
    }
    Ok(name)
}

/// The token named in the body (`token`), or the caller's own for the `-self` endpoints; `None`
/// when the named token is unknown, revoked or expired (each endpoint answers that as Vault does).
async fn target(
    ctx: &ReadContext,
    req: &ApiRequest,
    who: &Identity,
    own: bool,
) -> Result<Option<([u8; 32], TokenRecord)>, ApiError> {
    if own {
        return match who {
            Identity::Token { hash, record } => Ok(Some((*hash, TokenRecord::clone(record)))),
            Identity::Root => Err(ApiError::bad_request("the root token cannot be renewed, revoked or looked up here")),
        };
    }
    let b = body(req)?;
    let token = b["token"].as_str().filter(|t| !t.is_empty()).ok_or_else(|| ApiError::bad_request("missing token"))?;
    let hash = ctx.keyring.token_hash(token);
    match ctx.store.get_raw(&keys::token(&hash)).await? {
        Some(raw) => {
            let record: TokenRecord = serde_json::from_slice(&raw).map_err(|_| ApiError::internal())?;
            Ok((!record.expired(now_ms())).then_some((hash, record)))
        }
        None => Ok(None),
    }
}

/// Renew `record` at `now` by `increment` seconds, capped by its `explicit_max_ttl`. Without an
/// increment (`0`, what `bao token renew` and Vault Agent send) by the lifetime it was last given,
/// as Vault's lease keeps it: its creation TTL, or what its last renewal gave it.
fn renew(record: &mut TokenRecord, increment: Option<u64>, now: i64) {
    let secs = increment.unwrap_or_else(|| record.renewal_secs());
    let mut expire = now + (secs as i64) * 1000;
    if let Some(max) = record.max_expire_ms {
        expire = expire.min(max);
    }
    record.expire_ms = Some(expire);
    record.renewed_ttl_secs = Some(((expire - now) / 1000).max(0) as u64);
}

/// Vault's answer that carries only a warning (no data).
pub(crate) fn warning_body(req: &ApiRequest, warning: &str) -> Value {
    json!({
        "request_id": req.request_id, "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": null, "wrap_info": null, "warnings": [warning], "auth": null,
    })
}

/// Go's multi-error text, as Vault wraps some token errors.
fn multi(msg: &str) -> String {
    format!("1 error occurred:\n\t* {msg}\n\n")
}

/// The token whose accessor the body names (`accessor`), through the accessor index; `None` when
/// no live token has it.
async fn by_accessor(ctx: &ReadContext, req: &ApiRequest) -> Result<Option<([u8; 32], TokenRecord)>, ApiError> {
    let b = body(req)?;
    let accessor = b["accessor"]
        .as_str()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::bad_request(multi("missing accessor")))?;
    let Some(hash) = ctx.store.get_raw(&keys::accessor(accessor)).await? else { return Ok(None) };
    let hash: [u8; 32] = hash.try_into().map_err(|_| ApiError::internal())?;
    let Some(raw) = ctx.store.get_raw(&keys::token(&hash)).await? else { return Ok(None) };
    let record: TokenRecord = serde_json::from_slice(&raw).map_err(|_| ApiError::internal())?;
    Ok((!record.expired(now_ms()) && record.accessor == accessor).then_some((hash, record)))
}

/// Handle a token or policy write, if `req` is one.
pub async fn handle(ctx: &ReadContext, req: &ApiRequest, who: &Identity) -> Result<Option<Outcome>, ApiError> {
    let path = req.path.as_str();
    if let Some(PolicyPath { name, legacy }) = PolicyPath::of(path)
        && req.route() == Route::Policy
    {
        let name = policy_name(name, req.method == "DELETE")?;
        let mut reply = None;
        let op = match req.method.as_str() {
            "DELETE" => Operation::DeletePolicy { name: name.to_string() },
            "POST" | "PUT" => {
                let b = body(req)?;
                let given = |field: &str| b[field].as_str().filter(|t| !t.is_empty());
                let text = match (given("policy"), given("rules")) {
                    (Some(text), _) => text,
                    // Vault's older path still takes `rules`, and says it is deprecated.
                    (None, Some(text)) if legacy => {
                        reply = Some(warning_body(req, "'rules' is deprecated, please use 'policy' instead"));
                        text
                    }
                    _ => return Err(ApiError::bad_request("'policy' parameter not supplied or empty")),
                };
                parse_policy(text).map_err(|e| ApiError::bad_request(format!("failed to parse policy: {}", e.0)))?;
                Operation::PutPolicy { name: name.to_string(), policy: text.to_string() }
            }
            _ => return Ok(None),
        };
        return Ok(Some(Outcome::Command(Command::Control { name: format!("policy/{name}"), op, body: reply })));
    }
    let Some(action) = path.strip_prefix("v1/auth/token/") else { return Ok(None) };
    match action {
        "create" | "create-orphan" => create(ctx, req, who).map(Some),
        "renew" | "renew-self" => {
            let (hash, mut record) = target(ctx, req, who, action == "renew-self")
                .await?
                .ok_or_else(|| ApiError::bad_request("token not found"))?;
            if !record.renewable {
                return Err(ApiError::bad_request("lease is not renewable"));
            }
            let increment = nonzero_duration(&body(req)?["increment"], "increment")?;
            let now = now_ms();
            renew(&mut record, increment, now);
            let reply = auth_body(req, None, &record, now);
            let op = Operation::PutToken {
                token_hash: hash,
                record: serde_json::to_vec(&record).map_err(|_| ApiError::internal())?,
            };
            Ok(Some(Outcome::Command(Command::Control {
                name: format!("token/{}", record.accessor),
                op,
                body: Some(reply),
            })))
        }
        "revoke" | "revoke-self" => {
            // Vault answers the revocation of an unknown token as done.
            let Some((hash, record)) = target(ctx, req, who, action == "revoke-self").await? else {
                return Ok(Some(Outcome::Answer(ApiResponse::no_content())));
            };
            let op = Operation::RevokeToken { token_hash: hash };
            Ok(Some(Outcome::Command(Command::Control { name: format!("token/{}", record.accessor), op, body: None })))
        }
        "lookup-accessor" => {
            let (_, record) =
                by_accessor(ctx, req).await?.ok_or_else(|| ApiError::bad_request(multi("invalid accessor")))?;
            Ok(Some(Outcome::Answer(ApiResponse::data(&req.request_id, lookup_data(&record)))))
        }
        "revoke-accessor" => {
            let Some((hash, record)) = by_accessor(ctx, req).await? else {
                // Vault: 200 with a warning.
                return Ok(Some(Outcome::Answer(ApiResponse::json(
                    200,
                    &warning_body(req, "No token found with this accessor"),
                ))));
            };
            let op = Operation::RevokeToken { token_hash: hash };
            Ok(Some(Outcome::Command(Command::Control { name: format!("token/{}", record.accessor), op, body: None })))
        }
        "lookup" => {
            // Vault refuses the lookup of an unknown token as a bad token.
            let (_, record) = target(ctx, req, who, false)
                .await?
                .ok_or_else(|| ApiError::new(secretlog_state::ErrorKind::PermissionDenied, "bad token"))?;
            Ok(Some(Outcome::Answer(ApiResponse::data(&req.request_id, lookup_data(&record)))))
        }
        _ => Ok(None),
    }
}

/// What `auth/token/create` asks for, decoded as Vault decodes it (Go's weak typing: the CLI's
/// `bao write auth/token/create policies=a,b renewable=false` sends every value as a string).
#[derive(Debug, Clone, PartialEq)]
struct CreateRequest {
    /// `None`: the creator's own policies.
    policies: Option<Vec<String>>,
    no_default_policy: bool,
    /// Seconds; `0s` and absent are the default TTL.
    ttl: u64,
    /// Seconds; `0s` and absent are no limit.
    explicit_max_ttl: Option<u64>,
    renewable: bool,
    display_name: String,
}

impl CreateRequest {
    fn parse(b: &Value) -> Result<CreateRequest, ApiError> {
        let policies = string_list(&b["policies"], "policies")?.filter(|p| !p.is_empty());
        // Periodic tokens are not served; `period: "0s"` (the CLI's, without `-period`) is none.
        nonzero_duration(&b["period"], "period")?;
        Ok(CreateRequest {
            policies,
            no_default_policy: boolean(&b["no_default_policy"], "no_default_policy")?.unwrap_or(false),
            ttl: nonzero_duration(&b["ttl"], "ttl")?.unwrap_or_else(|| crate::auth_methods::default_ttl(None)),
            explicit_max_ttl: nonzero_duration(&b["explicit_max_ttl"], "explicit_max_ttl")?,
            renewable: boolean(&b["renewable"], "renewable")?.unwrap_or(true),
            display_name: format!("token-{}", b["display_name"].as_str().unwrap_or(""))
                .trim_end_matches('-')
                .to_string(),
        })
    }
}

fn create(ctx: &ReadContext, req: &ApiRequest, who: &Identity) -> Result<Outcome, ApiError> {
    let asked = CreateRequest::parse(&body(req)?)?;
    let no_default = asked.no_default_policy;
    let policies = match (&asked.policies, who) {
        (None, Identity::Root) => vec!["root".to_string()],
        (None, Identity::Token { record, .. }) => record.policies.clone(),
        (Some(p), _) => p.clone(),
    };
    if policies.iter().any(|p| p == "root") {
        if !who.is_root() {
            return Err(ApiError::permission_denied());
        }
        return Err(ApiError::bad_request("tokens with the root policy are not handed out; use named policies"));
    }
    // Vault's subset rule: the policies asked for (with `default` when the parent has it) must
    // all be the parent's.
    if let (Some(asked), Identity::Token { record, .. }) = (&asked.policies, who) {
        let parent_default = record.policies.iter().any(|p| p == "default");
        let wanted = settle_policies(asked.clone(), no_default || !parent_default);
        if wanted.iter().any(|p| !record.policies.contains(p)) {
            return Err(ApiError::bad_request("child policies must be subset of parent"));
        }
    }
    let issued = Issue {
        policies: settle_policies(policies, no_default),
        ttl: asked.ttl,
        max_ttl: asked.explicit_max_ttl,
        display_name: asked.display_name,
        ..Default::default()
    }
    .renewable(asked.renewable);
    let (token, record) = issued.record();
    let reply = auth_body(req, Some(&token), &record, record.created_ms);
    let op = Operation::PutToken {
        token_hash: ctx.keyring.token_hash(&token),
        record: serde_json::to_vec(&record).map_err(|_| ApiError::internal())?,
    };
    Ok(Outcome::Command(Command::Control { name: format!("token/{}", record.accessor), op, body: Some(reply) }))
}

/// A token about to be issued (by `auth/token/create` or a login).
#[derive(Debug, Clone, Default)]
pub(crate) struct Issue {
    /// Settled already ([`settle_policies`]).
    pub policies: Vec<String>,
    pub ttl: u64,
    /// A hard limit on its life (Vault's `explicit_max_ttl`, or a role's `token_max_ttl`).
    pub max_ttl: Option<u64>,
    pub display_name: String,
    pub path: Option<String>,
    pub meta: Option<std::collections::BTreeMap<String, String>>,
    pub bound_cidrs: Vec<String>,
    pub not_renewable: bool,
}

impl Issue {
    pub fn renewable(mut self, renewable: bool) -> Self {
        self.not_renewable = !renewable;
        self
    }

    /// A fresh token and its record.
    pub fn record(self) -> (String, TokenRecord) {
        let now = now_ms();
        let mut rng = rand::rngs::OsRng;
        let token: String = format!(
            "hvs.{}",
            (0..24).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect::<String>()
        );
        let accessor: String = (0..24).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect();
        let record = TokenRecord {
            accessor,
            policies: self.policies,
            display_name: self.display_name,
            created_ms: now,
            expire_ms: Some(now + (self.ttl.min(self.max_ttl.unwrap_or(u64::MAX)) as i64) * 1000),
            max_expire_ms: self.max_ttl.map(|m| now + (m as i64) * 1000),
            ttl_secs: self.ttl,
            renewable: !self.not_renewable,
            self_by_policy: true,
            path: self.path,
            meta: self.meta,
            bound_cidrs: self.bound_cidrs,
            renewed_ttl_secs: None,
        };
        (token, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_vaults() {
        assert_eq!(duration(&json!(90), "ttl").unwrap(), Some(90));
        assert_eq!(duration(&json!("90"), "ttl").unwrap(), Some(90));
        assert_eq!(duration(&json!("1h"), "ttl").unwrap(), Some(3600));
        assert_eq!(duration(&json!("1h0m0s"), "ttl").unwrap(), Some(3600), "as the CLI sends -ttl=1h");
        assert_eq!(duration(&json!("0s"), "ttl").unwrap(), Some(0));
        assert_eq!(duration(&json!(null), "ttl").unwrap(), None);
        assert_eq!(duration(&json!(""), "ttl").unwrap(), None);
        assert_eq!(nonzero_duration(&json!("0s"), "ttl").unwrap(), None);
        assert_eq!(nonzero_duration(&json!(0), "increment").unwrap(), None);
        assert_eq!(nonzero_duration(&json!(7200), "increment").unwrap(), Some(7200));
        assert!(duration(&json!("soon"), "ttl").is_err());
        assert!(duration(&json!(-1), "ttl").is_err());
    }

    /// What `bao token create -policy=app -ttl=1h` sends.
    fn cli_create_body(ttl: &str) -> Value {
        json!({
            "policies": ["app"], "metadata": null, "ttl": ttl, "explicit_max_ttl": "0s", "period": "0s",
            "no_parent": false, "no_default_policy": false, "display_name": "", "num_uses": 0,
            "renewable": true, "type": "service", "entity_alias": "",
        })
    }

    #[test]
    fn a_token_created_as_the_cli_asks_lives_for_its_ttl() {
        let asked = CreateRequest::parse(&cli_create_body("1h0m0s")).unwrap();
        assert_eq!(asked.ttl, 3600);
        assert_eq!(asked.explicit_max_ttl, None, "explicit_max_ttl \"0s\" is no limit, not a limit of 0");
        assert!(asked.renewable);
        let before = now_ms();
        let (_, record) = Issue {
            policies: vec!["app".into()],
            ttl: asked.ttl,
            max_ttl: asked.explicit_max_ttl,
            ..Default::default()
        }
        .record();
        let expire = record.expire_ms.unwrap();
        assert!(expire >= before + 3_600_000 && expire <= now_ms() + 3_600_000, "expires an hour from now");
        assert_eq!(record.max_expire_ms, None);
        assert!(!record.expired(now_ms()));
    }

    #[test]
    fn a_token_is_answered_with_the_lifetime_it_was_given_however_late_the_answer() {
        let (_, record) = Issue { ttl: 3600, ..Default::default() }.record();
        let req = ApiRequest::default();
        assert_eq!(auth_body(&req, Some("t"), &record, record.created_ms)["auth"]["lease_duration"], 3600);
        // Renewed: the lifetime from the renewal's instant.
        let mut renewed = record.clone();
        let later = record.created_ms + 1_234;
        renew(&mut renewed, Some(600), later);
        assert_eq!(auth_body(&req, None, &renewed, later)["auth"]["lease_duration"], 600);
    }

    #[test]
    fn a_zero_ttl_is_the_default_ttl() {
        let asked = CreateRequest::parse(&cli_create_body("0s")).unwrap();
        assert_eq!(asked.ttl, 32 * 24 * 3600, "Vault's system default, 768h");
        assert_eq!(CreateRequest::parse(&json!({})).unwrap().ttl, 32 * 24 * 3600);
        let capped = CreateRequest::parse(&json!({"ttl": "2h", "explicit_max_ttl": 3600})).unwrap();
        assert_eq!(capped.explicit_max_ttl, Some(3600));
        let (_, record) = Issue { ttl: capped.ttl, max_ttl: capped.explicit_max_ttl, ..Default::default() }.record();
        assert!(record.expire_ms.unwrap() <= now_ms() + 3_600_000, "the TTL is capped by explicit_max_ttl");
    }

    #[test]
    fn create_fields_decode_weakly_as_the_cli_sends_them() {
        let asked = CreateRequest::parse(&json!({
            "policies": "app,b", "no_default_policy": "true", "renewable": "false", "ttl": "90",
        }))
        .unwrap();
        assert_eq!(asked.policies, Some(vec!["app".to_string(), "b".to_string()]));
        assert!(asked.no_default_policy);
        assert!(!asked.renewable);
        assert_eq!(asked.ttl, 90);
        assert_eq!(CreateRequest::parse(&json!({"policies": ""})).unwrap().policies, None);
        assert!(CreateRequest::parse(&json!({"ttl": "soon"})).is_err());
    }

    #[test]
    fn a_renewal_without_increment_gives_the_lifetime_last_given() {
        let now = 1_000_000;
        let mut r = TokenRecord { ttl_secs: 3600, created_ms: now, expire_ms: Some(now), ..Default::default() };
        renew(&mut r, None, now);
        assert_eq!(r.expire_ms, Some(now + 3_600_000), "increment 0 is the token's own TTL, not 0 s");
        renew(&mut r, Some(7200), now);
        assert_eq!(r.expire_ms, Some(now + 7_200_000));
        renew(&mut r, None, now + 1000);
        assert_eq!(r.expire_ms, Some(now + 1000 + 7_200_000), "then the 2h the last renewal gave, as OpenBao");
        r.max_expire_ms = Some(now + 5_000_000);
        renew(&mut r, Some(7200), now);
        assert_eq!(r.expire_ms, Some(now + 5_000_000), "capped by explicit_max_ttl");
        assert_eq!(r.renewed_ttl_secs, Some(5000));
    }

    #[test]
    fn an_empty_or_null_body_is_an_empty_object() {
        let req = |b: &'static [u8]| ApiRequest { body: bytes::Bytes::from_static(b), ..ApiRequest::default() };
        assert_eq!(body(&req(b"")).unwrap(), json!({}));
        assert_eq!(body(&req(b"null")).unwrap(), json!({}), "what `bao write -f` sends");
        assert_eq!(body(&req(b" {\"a\":1}")).unwrap(), json!({"a": 1}));
        assert!(body(&req(b"{")).is_err());
    }

    #[test]
    fn policies_are_settled_as_vault_does() {
        let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(settle_policies(v(&["b", "a"]), false), v(&["a", "b", "default"]));
        assert_eq!(settle_policies(v(&["a", "default", "a"]), false), v(&["a", "default"]));
        assert_eq!(settle_policies(v(&["default", "a"]), true), v(&["a"]));
        assert!(settle_policies(v(&["default"]), true).is_empty());
    }

    #[test]
    fn policy_names_are_checked() {
        assert_eq!(policy_name("app-read_2", false).unwrap(), "app-read_2");
        assert_eq!(policy_name("App", false).unwrap(), "app", "lower-cased, as Vault does");
        assert!(policy_name("root", false).is_err());
        assert_eq!(policy_name("default", false).unwrap(), "default", "default is editable");
        assert_eq!(policy_name("default", true).unwrap_err().errors, vec!["cannot delete default policy"]);
        assert!(policy_name("ROOT", true).is_err());
        assert!(policy_name("", false).is_err());
        assert!(policy_name("a/b", false).is_err());
    }
}
