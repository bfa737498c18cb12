//! Tokens and ACL policies, differentially: the same policy writes (HCL and JSON), token
//! creations (policies, TTLs, renewable or not), lookups, renewals and revocations go to OpenBao
//! and to secretlog, then KV requests carrying the tokens created — allowed, denied, by `*` and
//! `+` rules, the most specific rule deciding, `deny` winning. Every request goes to OpenBao and
//! to the writer; every read also to the reader with the consistency token of the case's writes
//! (readers decide tokens and policies locally). Status codes and bodies are compared after
//! [`canonical`], whose every rule is a section of docs/compatibility.md.
//!
//! Hand-written cases ([`curated`]) and generated ones ([`case`]: policies × paths ×
//! capabilities, then KV requests with a token holding them), shrunk on failure and saved to
//! `differential_acl_regressions.json`, which every run replays first.

use proptest::prelude::*;
use secretlog_schemas::ConsistencyToken;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Pair;
use super::compare;
use crate::harness::Answer;

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Who {
    Root,
    /// The n-th token the case created (each server its own).
    Token(usize),
}

/// One request. In `path` and `body`, `{p}` is the case's prefix (secret paths and policy
/// names) and `{token:N}` the server's own N-th token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub who: Who,
    pub method: String,
    /// After `/v1/`.
    pub path: String,
    pub body: Option<String>,
}

fn step(who: Who, method: &str, path: &str, body: Option<Value>) -> Step {
    Step { who, method: method.into(), path: path.into(), body: body.map(|b| b.to_string()) }
}

/// A request carrying a policy text (HCL or JSON) for `{p}-name`.
fn put_policy(name: &str, text: &str) -> Step {
    step(Who::Root, "PUT", &format!("sys/policies/acl/{{p}}-{name}"), Some(json!({ "policy": text })))
}

/// A case being run: each server's tokens and secretlog's consistency token.
struct Run<'a> {
    pair: &'a Pair,
    prefix: String,
    bao_tokens: Vec<String>,
    our_tokens: Vec<String>,
    /// Values each server made up (`role_id`, `secret_id`), for `{role_id}` and `{secret_id}`.
    bao_vars: Vec<(String, String)>,
    our_vars: Vec<(String, String)>,
    index: ConsistencyToken,
    transcript: Vec<String>,
}

impl<'a> Run<'a> {
    fn new(pair: &'a Pair) -> Run<'a> {
        let n = pair.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Run {
            pair,
            prefix: format!("acl{n}"),
            bao_tokens: Vec::new(),
            our_tokens: Vec::new(),
            bao_vars: Vec::new(),
            our_vars: Vec::new(),
            index: ConsistencyToken::default(),
            transcript: Vec::new(),
        }
    }

    /// `text` with the case's prefix and OpenBao's (`bao`) or secretlog's tokens and values.
    fn fill(&self, text: &str, bao: bool) -> String {
        let mut out = text.replace("{p}", &self.prefix);
        let (tokens, vars) = if bao { (&self.bao_tokens, &self.bao_vars) } else { (&self.our_tokens, &self.our_vars) };
        for (i, t) in tokens.iter().enumerate() {
            out = out.replace(&format!("{{token:{i}}}"), t);
        }
        for (k, v) in vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    async fn send(&self, base: &str, token: &str, bao: bool, s: &Step, index: Option<&str>) -> Answer {
        let url = format!("{base}/v1/{}", self.fill(&s.path, bao));
        let method = reqwest::Method::from_bytes(s.method.as_bytes()).expect("method");
        let mut rb = self.pair.http.request(method, &url).header("X-Vault-Token", token);
        if let Some(i) = index {
            rb = rb.header("X-Secretlog-Index", i);
        }
        if let Some(b) = &s.body {
            rb = rb.header("content-type", "application/json").body(self.fill(b, bao));
        }
        super::answer(rb.send().await.unwrap_or_else(|e| panic!("{} {url}: {e}", s.method))).await
    }

    /// Send `s` to OpenBao, the writer and (a read) the reader, and compare.
    async fn step(&mut self, s: &Step) -> Result<(), String> {
        let p = self.pair;
        let (bao_token, our_token) = match s.who {
            Who::Root => (p.bao.token.clone(), p.stack.token.clone()),
            Who::Token(i) => match (self.bao_tokens.get(i), self.our_tokens.get(i)) {
                (Some(b), Some(o)) => (b.clone(), o.clone()),
                _ => return Err(format!("the case uses token {i}, which it never created")),
            },
        };
        let bao = self.send(&p.bao.url, &bao_token, true, s, None).await;
        *p.statuses.lock().expect("statuses").entry(bao.status).or_default() += 1;
        // Every request carries the case's index, to the writer too: its own state applies its
        // commits a moment after them, and a token or policy is used at once after it is made.
        let index = (!self.index.0.is_empty()).then(|| self.index.to_string());
        let ours = self.send(&p.stack.writer.url, &our_token, false, s, index.as_deref()).await;
        super::merge_index(&mut self.index, &ours)?;
        self.transcript.push(format!(
            "{:?} {} {} {} -> openbao {} / writer {}",
            s.who,
            s.method,
            s.path,
            s.body.as_deref().unwrap_or(""),
            bao.status,
            ours.status
        ));
        diff(s, &bao, &ours).map_err(|d| self.report(s, "writer", &d))?;
        let issued = (s.path.ends_with("/create") && s.path.starts_with("auth/token/")) || s.path.contains("/login");
        if issued && bao.status == 200 {
            for (answer, tokens) in [(&bao, &mut self.bao_tokens), (&ours, &mut self.our_tokens)] {
                let t = answer.body["auth"]["client_token"].as_str().ok_or("a created token without client_token")?;
                tokens.push(t.to_string());
            }
        }
        for (answer, vars) in [(&bao, &mut self.bao_vars), (&ours, &mut self.our_vars)] {
            for k in ["role_id", "secret_id"] {
                if let Some(v) = answer.body["data"][k].as_str() {
                    vars.retain(|(name, _)| name != k);
                    vars.push((k.to_string(), v.to_string()));
                }
            }
        }
        if matches!(s.method.as_str(), "GET" | "LIST") {
            let index = (!self.index.0.is_empty()).then(|| self.index.to_string());
            let reader = &p.stack.readers[0].url;
            let r = self.send(reader, &our_token, false, s, index.as_deref()).await;
            diff(s, &bao, &r).map_err(|d| self.report(s, "reader", &d))?;
        }
        Ok(())
    }

    fn report(&self, s: &Step, node: &str, d: &str) -> String {
        format!(
            "{node} differs from OpenBao on {s:?} (prefix {})\n{d}\n--- case so far ---\n{}",
            self.prefix,
            self.transcript.join("\n")
        )
    }
}

/// Run `steps` as one case under a fresh prefix.
pub async fn run(pair: &Pair, steps: &[Step]) -> Result<(), String> {
    let mut run = Run::new(pair);
    for s in steps {
        run.step(s).await?;
    }
    Ok(())
}

fn diff(s: &Step, bao: &Answer, ours: &Answer) -> Result<(), String> {
    let renewal = s.path.starts_with("auth/token/renew");
    let own_lookup = s.path == "auth/token/lookup-self";
    compare::equal(&canonical(bao, true, renewal, own_lookup), &canonical(ours, false, renewal, own_lookup))
}

/// An answer reduced to what must be equal on both servers: [`compare::canonical`] (the KV
/// rules), then the token and policy rules of docs/compatibility.md#tokens-and-policies.
/// `renewal`: the answer is that of `auth/token/renew(-self)`; `own_lookup`: of
/// `auth/token/lookup-self`.
pub fn canonical(a: &Answer, openbao: bool, renewal: bool, own_lookup: bool) -> Value {
    let mut c = compare::canonical(a);
    let body = &mut c["body"];
    if let Some(errors) = body.get_mut("errors").and_then(Value::as_array_mut) {
        for e in errors {
            // #policy-parse-errors: the parsers' own wording is not compared.
            if let Some(s) = e.as_str()
                && s.starts_with("failed to parse policy: ")
            {
                *e = json!("failed to parse policy: …");
            }
        }
    }
    // #legacy-policy-paths: a read under `sys/policy` carries its fields at the top level too.
    if openbao && let Some(m) = body.as_object_mut() {
        compare::strip_policy_extensions(m);
    }
    for part in ["auth", "data"] {
        let Some(m) = body.get_mut(part).and_then(Value::as_object_mut) else { continue };
        if own_lookup && let Some(Value::String(id)) = m.get_mut("id") {
            // #token-echo: `lookup-self` answers the caller's own token, on both: by presence.
            if !id.is_empty() {
                *id = "<id>".into();
            }
        }
        if openbao {
            // #token-echo: secretlog answers with a token only when it creates it, and to
            // `lookup-self`: no `id` in the lookup of another token, an empty `client_token`
            // from renewals.
            if !own_lookup {
                m.remove("id");
            }
            if renewal && let Some(t) = m.get_mut("client_token") {
                *t = json!("");
            }
            // #token-renewals: secretlog does not record when a token was last renewed.
            m.remove("last_renewal");
            m.remove("last_renewal_time");
            compare::strip_policy_extensions(m);
        }
        // Values that are random or of the moment: compared by presence.
        for k in ["client_token", "accessor"] {
            if let Some(Value::String(s)) = m.get_mut(k)
                && !s.is_empty()
            {
                *s = format!("<{k}>");
            }
        }
        if m.get("creation_time").is_some_and(Value::is_number) {
            m.insert("creation_time".into(), json!("<unix time>"));
        }
        // Durations in seconds, read a moment apart on the two servers: compared to 10 s.
        for k in ["ttl", "creation_ttl", "lease_duration", "explicit_max_ttl"] {
            if let Some(n) = m.get(k).and_then(Value::as_i64) {
                m.insert(k.into(), json!((n + 5) / 10 * 10));
            }
        }
        // #auth-identity: secretlog has no identity store; OpenBao's logins give tokens an entity.
        if openbao && let Some(e) = m.get_mut("entity_id") {
            *e = json!("");
        }
        // Values each server makes up: compared by presence.
        for k in ["role_id", "secret_id", "secret_id_accessor", "uuid", "running_plugin_version"] {
            if let Some(Value::String(s)) = m.get_mut(k)
                && !s.is_empty()
            {
                *s = format!("<{k}>");
            }
        }
        // #token-orphans: secretlog's tokens have no parent.
        m.remove("orphan");
    }
    c
}

// ---- hand-written cases ----

/// The KV rules of the ACL cases, in HCL.
const APP_POLICY: &str = r#"
path "secret/data/{p}/app/*" { capabilities = ["create", "read", "update"] }
path "secret/data/{p}/app/admin" { capabilities = ["deny"] }
path "secret/data/{p}/app/ro/*" { capabilities = ["read"] }
path "secret/data/{p}/team/+/config" { capabilities = ["read"] }
path "secret/metadata/{p}/app/*" { capabilities = ["list", "read"] }
path "secret/metadata/{p}/exact" { capabilities = ["list"] }
path "secret/data/{p}/upd/*" { capabilities = ["update", "read"] }
path "secret/metadata/{p}/upd/*" { capabilities = ["create", "update"] }
path "secret/delete/{p}/app/*" { capabilities = ["update"] }
path "secret/data/{p}/shared" { capabilities = ["read"] }
"#;

/// Hand-written cases: every token and policy endpoint, and the ACL rules one by one.
pub fn curated() -> Vec<(&'static str, Vec<Step>)> {
    use Who::{Root, Token};
    // A policy `{p}-name` written under Vault's older path, its text in `field`.
    let legacy_put = |name: &str, field: &str, folder: &str, capability: &str| {
        let text = format!("path \"secret/data/{{p}}/{folder}\" {{ capabilities = [\"{capability}\"] }}");
        step(Root, "PUT", &format!("sys/policy/{{p}}-{name}"), Some(json!({ field: text })))
    };
    let kv = |who, method: &str, rel: &str, body: Option<Value>| step(who, method, &format!("secret/{rel}"), body);
    let data = json!({"data": {"k": "v"}});
    let json_policy = json!({"path": {"secret/data/{p}/j/*": {"capabilities": ["read", "list"]}}}).to_string();
    let root_policy = json!({"policy": "path \"x\" { capabilities = [\"read\"] }"});
    vec![
        (
            "policies: HCL and JSON written, read back, listed, refused, deleted",
            vec![
                put_policy("hcl", r#"path "secret/data/{p}/h/*" { capabilities = ["read"] }"#),
                put_policy("json", &json_policy),
                step(Root, "GET", "sys/policies/acl/{p}-hcl", None),
                step(Root, "GET", "sys/policies/acl/{p}-json", None),
                // Names are lower-cased.
                put_policy("Upper", r#"path "secret/data/{p}/u" { capabilities = ["read"] }"#),
                step(Root, "GET", "sys/policies/acl/{p}-upper", None),
                step(Root, "GET", "sys/policies/acl/{p}-UPPER", None),
                step(Root, "LIST", "sys/policies/acl", None),
                step(Root, "GET", "sys/policies/acl/{p}-missing", None),
                put_policy("bad", r#"path "secret/x" { capabilities = ["fly"] }"#),
                put_policy("bad", "path {"),
                put_policy("bad", ""),
                step(Root, "PUT", "sys/policies/acl/{p}-bad", Some(json!({}))),
                step(Root, "PUT", "sys/policies/acl/root", Some(root_policy)),
                step(Root, "DELETE", "sys/policies/acl/root", None),
                step(Root, "DELETE", "sys/policies/acl/{p}-json", None),
                step(Root, "GET", "sys/policies/acl/{p}-json", None),
                step(Root, "DELETE", "sys/policies/acl/{p}-json", None),
            ],
        ),
        (
            "policies under Vault's older path (sys/policy, as hvac's policy calls use it)",
            vec![
                legacy_put("Old", "policy", "o", "read"),
                step(Root, "GET", "sys/policy/{p}-old", None),
                step(Root, "GET", "sys/policies/acl/{p}-old", None),
                // The older field name, still taken, with a warning.
                legacy_put("rules", "rules", "r", "list"),
                step(Root, "GET", "sys/policies/acl/{p}-rules", None),
                step(Root, "PUT", "sys/policy/{p}-none", Some(json!({}))),
                step(Root, "PUT", "sys/policy/{p}-bad", Some(json!({"policy": "path {"}))),
                step(Root, "GET", "sys/policy", None),
                step(Root, "GET", "sys/policy/root", None),
                step(Root, "GET", "sys/policies/acl/root", None),
                step(Root, "GET", "sys/policy/{p}-missing", None),
                step(Root, "DELETE", "sys/policy/root", None),
                step(Root, "DELETE", "sys/policy/{p}-old", None),
                step(Root, "GET", "sys/policy/{p}-old", None),
                step(Root, "DELETE", "sys/policy/{p}-rules", None),
            ],
        ),
        (
            "tokens: create, lookup, renew, revoke",
            vec![
                put_policy("app", APP_POLICY),
                step(Root, "POST", "auth/token/create", Some(json!({"policies": ["{p}-app"], "ttl": "1h"}))),
                step(Token(0), "GET", "auth/token/lookup-self", None),
                step(Token(0), "POST", "auth/token/renew-self", Some(json!({"increment": "2h"}))),
                step(Token(0), "GET", "auth/token/lookup-self", None),
                step(Root, "POST", "auth/token/lookup", Some(json!({"token": "{token:0}"}))),
                step(Root, "POST", "auth/token/renew", Some(json!({"token": "{token:0}", "increment": 60}))),
                step(
                    Root,
                    "POST",
                    "auth/token/create",
                    Some(json!({"policies": ["{p}-app"], "ttl": 600, "renewable": false})),
                ),
                step(Token(1), "POST", "auth/token/renew-self", None),
                step(Token(1), "GET", "secret/data/{p}/app/x", None),
                step(Root, "POST", "auth/token/revoke", Some(json!({"token": "{token:1}"}))),
                step(Token(1), "GET", "secret/data/{p}/app/x", None),
                step(Token(1), "GET", "auth/token/lookup-self", None),
                step(Root, "POST", "auth/token/lookup", Some(json!({"token": "{token:1}"}))),
                step(Root, "POST", "auth/token/revoke", Some(json!({"token": "{token:1}"}))),
                step(Root, "POST", "auth/token/renew", Some(json!({"token": "{token:1}"}))),
                step(Token(0), "POST", "auth/token/revoke-self", None),
                step(Token(0), "GET", "auth/token/lookup-self", None),
                step(Token(0), "GET", "secret/data/{p}/app/x", None),
            ],
        ),
        (
            "tokens create tokens with a subset of their policies",
            vec![
                put_policy("app", APP_POLICY),
                put_policy(
                    "parent",
                    r#"path "auth/token/create" { capabilities = ["update"] }
                       path "secret/data/{p}/p/*" { capabilities = ["read"] }"#,
                ),
                put_policy("creator", r#"path "auth/token/create" { capabilities = ["create"] }"#),
                step(Root, "POST", "auth/token/create", Some(json!({"policies": ["{p}-parent", "{p}-app"]}))),
                step(Token(0), "POST", "auth/token/create", Some(json!({"policies": ["{p}-app"], "ttl": "30m"}))),
                step(Token(1), "GET", "auth/token/lookup-self", None),
                step(Token(0), "POST", "auth/token/create", Some(json!({"policies": ["{p}-creator"]}))),
                step(Token(0), "POST", "auth/token/create", Some(json!({}))),
                step(Token(2), "GET", "auth/token/lookup-self", None),
                step(Token(1), "POST", "auth/token/create", Some(json!({"policies": ["{p}-app"]}))),
                step(Root, "POST", "auth/token/create", Some(json!({"policies": ["{p}-creator"]}))),
                step(Token(3), "POST", "auth/token/create", Some(json!({"policies": ["{p}-creator"]}))),
            ],
        ),
        (
            "the default policy: attached, read, listed, edited, not deletable",
            vec![
                put_policy("app", APP_POLICY),
                step(Root, "GET", "sys/policies/acl/default", None),
                step(Root, "DELETE", "sys/policies/acl/default", None),
                step(Root, "POST", "auth/token/create", Some(json!({"policies": ["{p}-app"]}))),
                step(Token(0), "GET", "auth/token/lookup-self", None),
                step(Token(0), "POST", "auth/token/lookup-self", None),
                step(Token(0), "POST", "auth/token/renew-self", Some(json!({"increment": 60}))),
                step(
                    Root,
                    "POST",
                    "auth/token/create",
                    Some(json!({"policies": ["{p}-app"], "no_default_policy": true})),
                ),
                step(Token(1), "GET", "auth/token/lookup-self", None),
                step(Token(1), "POST", "auth/token/renew-self", None),
                step(Root, "POST", "auth/token/create", Some(json!({"policies": ["default"]}))),
                step(
                    Root,
                    "POST",
                    "auth/token/create",
                    Some(json!({"policies": ["default"], "no_default_policy": true})),
                ),
                step(Token(0), "POST", "auth/token/create", Some(json!({"policies": ["{p}-app"]}))),
                step(Token(0), "POST", "auth/token/revoke-self", None),
            ],
        ),
        (
            "approle: roles, role ids, secret ids, logins",
            vec![
                put_policy("app", APP_POLICY),
                step(Root, "POST", "sys/auth/{p}-ar", Some(json!({"type": "approle"}))),
                step(Root, "POST", "sys/auth/{p}-ar", Some(json!({"type": "approle"}))),
                step(
                    Root,
                    "POST",
                    "auth/{p}-ar/role/web",
                    Some(json!({"token_policies": ["{p}-app"], "token_ttl": "1h", "secret_id_num_uses": 2,
                                "secret_id_ttl": "10m"})),
                ),
                step(Root, "GET", "auth/{p}-ar/role/web", None),
                step(Root, "LIST", "auth/{p}-ar/role", None),
                step(Root, "GET", "auth/{p}-ar/role/nope", None),
                step(Root, "GET", "auth/{p}-ar/role/web/role-id", None),
                step(Root, "POST", "auth/{p}-ar/role/web/secret-id", Some(json!({}))),
                step(
                    Root,
                    "POST",
                    "auth/{p}-ar/login",
                    Some(json!({"role_id": "{role_id}", "secret_id": "{secret_id}"})),
                ),
                step(Token(0), "GET", "auth/token/lookup-self", None),
                step(Token(0), "GET", "secret/data/{p}/app/x", None),
                step(
                    Root,
                    "POST",
                    "auth/{p}-ar/login",
                    Some(json!({"role_id": "{role_id}", "secret_id": "{secret_id}"})),
                ),
                step(
                    Root,
                    "POST",
                    "auth/{p}-ar/login",
                    Some(json!({"role_id": "{role_id}", "secret_id": "{secret_id}"})),
                ),
                step(Root, "POST", "auth/{p}-ar/login", Some(json!({"role_id": "{role_id}", "secret_id": "wrong"}))),
                step(Root, "POST", "auth/{p}-ar/login", Some(json!({"role_id": "wrong", "secret_id": "wrong"}))),
                step(Root, "POST", "auth/{p}-ar/login", Some(json!({"role_id": "{role_id}"}))),
                step(Root, "POST", "auth/{p}-ar/role/web/custom-secret-id", Some(json!({"secret_id": "{p}-custom"}))),
                step(
                    Root,
                    "POST",
                    "auth/{p}-ar/login",
                    Some(json!({"role_id": "{role_id}", "secret_id": "{p}-custom"})),
                ),
                step(Root, "POST", "auth/{p}-ar/role/web/role-id", Some(json!({"role_id": "{p}-rid"}))),
                step(Root, "GET", "auth/{p}-ar/role/web/role-id", None),
                step(Root, "POST", "auth/{p}-ar/login", Some(json!({"role_id": "{p}-rid", "secret_id": "{p}-custom"}))),
                step(Root, "DELETE", "auth/{p}-ar/role/web", None),
                step(Root, "GET", "auth/{p}-ar/role/web", None),
                step(Root, "DELETE", "sys/auth/{p}-ar", None),
            ],
        ),
        (
            "userpass: users and logins",
            vec![
                put_policy("app", APP_POLICY),
                step(Root, "POST", "sys/auth/{p}-up", Some(json!({"type": "userpass"}))),
                step(
                    Root,
                    "POST",
                    "auth/{p}-up/users/alice",
                    Some(json!({"password": "pw", "token_policies": "{p}-app", "token_ttl": "30m"})),
                ),
                step(Root, "GET", "auth/{p}-up/users/alice", None),
                step(Root, "LIST", "auth/{p}-up/users", None),
                step(Root, "POST", "auth/{p}-up/login/alice", Some(json!({"password": "pw"}))),
                step(Token(0), "GET", "auth/token/lookup-self", None),
                step(Root, "POST", "auth/{p}-up/login/alice", Some(json!({"password": "bad"}))),
                step(Root, "POST", "auth/{p}-up/login/bob", Some(json!({"password": "bad"}))),
                step(Root, "DELETE", "auth/{p}-up/users/alice", None),
                step(Root, "GET", "auth/{p}-up/users/alice", None),
                step(Root, "DELETE", "sys/auth/{p}-up", None),
            ],
        ),
        (
            "mounts: enable, per-mount config and KV, tune, disable, enable again",
            vec![
                step(
                    Root,
                    "POST",
                    "sys/mounts/{p}-kv",
                    Some(json!({"type": "kv", "options": {"version": "2"},
                                                                      "description": "team"})),
                ),
                step(Root, "POST", "sys/mounts/{p}-kv", Some(json!({"type": "kv", "options": {"version": "2"}}))),
                step(Root, "POST", "sys/mounts/{p}-kv/inner", Some(json!({"type": "kv-v2"}))),
                step(Root, "GET", "sys/mounts/{p}-kv/tune", None),
                step(Root, "GET", "sys/internal/ui/mounts/{p}-kv/data/a", None),
                step(Root, "POST", "{p}-kv/config", Some(json!({"max_versions": "2", "delete_version_after": "1h"}))),
                step(Root, "GET", "{p}-kv/config", None),
                step(Root, "POST", "{p}-kv/data/a", Some(json!({"data": {"v": 1}}))),
                step(Root, "POST", "{p}-kv/data/a", Some(json!({"data": {"v": 2}}))),
                step(Root, "POST", "{p}-kv/data/a", Some(json!({"data": {"v": 3}}))),
                step(Root, "GET", "{p}-kv/metadata/a", None),
                step(Root, "GET", "{p}-kv/data/a", None),
                step(Root, "GET", "secret/data/{p}-kv/data/a", None),
                step(
                    Root,
                    "POST",
                    "sys/mounts/{p}-kv/tune",
                    Some(json!({"description": "tuned",
                                                                           "default_lease_ttl": "1h"})),
                ),
                step(Root, "GET", "sys/mounts/{p}-kv/tune", None),
                step(Root, "POST", "{p}-kv/config", Some(json!({"cas_required": true}))),
                step(Root, "POST", "{p}-kv/data/b", Some(json!({"data": {"v": 1}}))),
                step(Root, "POST", "{p}-kv/data/b", Some(json!({"data": {"v": 1}, "options": {"cas": 0}}))),
                step(Root, "DELETE", "sys/mounts/{p}-kv", None),
                step(Root, "DELETE", "sys/mounts/{p}-kv", None),
                step(Root, "GET", "sys/internal/ui/mounts/{p}-kv/data/a", None),
                step(Root, "POST", "sys/mounts/{p}-kv", Some(json!({"type": "kv", "options": {"version": "2"}}))),
                step(Root, "GET", "{p}-kv/data/a", None),
                step(Root, "GET", "{p}-kv/config", None),
                step(Root, "DELETE", "sys/mounts/{p}-kv", None),
            ],
        ),
        (
            "the ACL rules on KV requests",
            vec![
                put_policy("app", APP_POLICY),
                put_policy("deny", r#"path "secret/data/{p}/shared" { capabilities = ["deny"] }"#),
                put_policy("more", r#"path "secret/data/{p}/app/*" { capabilities = ["delete"] }"#),
                kv(Root, "POST", "data/{p}/app/x", Some(data.clone())),
                kv(Root, "POST", "data/{p}/app/admin", Some(data.clone())),
                kv(Root, "POST", "data/{p}/app/ro/y", Some(data.clone())),
                kv(Root, "POST", "data/{p}/team/blue/config", Some(data.clone())),
                kv(Root, "POST", "data/{p}/team/blue/green/config", Some(data.clone())),
                kv(Root, "POST", "data/{p}/other/z", Some(data.clone())),
                kv(Root, "POST", "data/{p}/shared", Some(data.clone())),
                kv(Root, "POST", "metadata/{p}/upd/m", Some(json!({"max_versions": 3}))),
                step(Root, "POST", "auth/token/create", Some(json!({"policies": ["{p}-app"]}))),
                step(Root, "POST", "auth/token/create", Some(json!({"policies": ["{p}-app", "{p}-deny", "{p}-more"]}))),
                // Allowed by a glob; denied by a more specific deny; the more specific rule
                // decides; `+` is exactly one segment; no rule, no access.
                kv(Token(0), "GET", "data/{p}/app/x", None),
                kv(Token(0), "GET", "data/{p}/app/admin", None),
                kv(Token(0), "GET", "data/{p}/app/ro/y", None),
                kv(Token(0), "POST", "data/{p}/app/ro/y", Some(data.clone())),
                kv(Token(0), "GET", "data/{p}/team/blue/config", None),
                kv(Token(0), "GET", "data/{p}/team/blue/green/config", None),
                kv(Token(0), "GET", "data/{p}/other/z", None),
                kv(Token(0), "GET", "data/{p}/app/missing", None),
                // Create or update, as the secret's metadata exists or not.
                kv(Token(0), "POST", "data/{p}/app/new", Some(data.clone())),
                kv(Token(0), "POST", "data/{p}/app/x", Some(data.clone())),
                kv(Token(0), "POST", "data/{p}/upd/m", Some(data.clone())),
                kv(Token(0), "POST", "data/{p}/upd/none", Some(data.clone())),
                kv(Token(0), "POST", "metadata/{p}/upd/n", Some(json!({"max_versions": 2}))),
                kv(Token(0), "POST", "metadata/{p}/upd/n", Some(json!({"max_versions": 4}))),
                kv(Token(0), "DELETE", "data/{p}/app/x", None),
                kv(Token(0), "POST", "delete/{p}/app/x", Some(json!({"versions": [1]}))),
                kv(Token(0), "POST", "undelete/{p}/app/x", Some(json!({"versions": [1]}))),
                // Listing: by a glob, by an exact rule without the folder's slash, refused.
                kv(Token(0), "LIST", "metadata/{p}/app/", None),
                kv(Token(0), "LIST", "metadata/{p}/exact/", None),
                kv(Token(0), "LIST", "metadata/{p}/", None),
                kv(Token(0), "GET", "metadata/{p}/app/x", None),
                // Policies merge per path; a deny in any of them wins.
                kv(Token(0), "GET", "data/{p}/shared", None),
                kv(Token(1), "GET", "data/{p}/shared", None),
                kv(Token(1), "DELETE", "data/{p}/app/new", None),
                kv(Token(1), "GET", "data/{p}/app/new", None),
                // A policy deleted grants nothing any more; written again, it grants again.
                step(Root, "DELETE", "sys/policies/acl/{p}-app", None),
                kv(Token(0), "GET", "data/{p}/app/ro/y", None),
                put_policy("app", APP_POLICY),
                kv(Token(0), "GET", "data/{p}/app/ro/y", None),
                // No reading policies or creating tokens without a rule that says so.
                step(Token(0), "GET", "sys/policies/acl/{p}-app", None),
                step(Token(0), "POST", "auth/token/create", Some(json!({}))),
            ],
        ),
    ]
}

// ---- generated cases: policies × paths × capabilities ----

/// The secrets of a generated case, relative to its prefix.
const SECRETS: [&str; 5] = ["a", "a/b", "ab", "b/a", "b/x/a"];
/// The folders it lists.
const FOLDERS: [&str; 4] = ["", "a/", "b/", "b/x/"];
/// Rule paths, relative to `secret/<kind>/<prefix>/`.
const PATTERNS: [&str; 14] =
    ["a", "a/b", "ab", "a/*", "a*", "*", "+", "+/a", "b/+/a", "b/+", "+/*", "b/x/a", "b/", "a/"];

/// A rule: `secret/<kind>/<prefix>/<pattern>` with capabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    kind: String,
    pattern: String,
    caps: Vec<String>,
}

/// A generated case: policies (each in HCL or JSON), a token holding all of them, KV requests
/// with it after the root has written some secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// (written as JSON, rules)
    policies: Vec<(bool, Vec<Rule>)>,
    requests: Vec<Step>,
}

impl Case {
    /// The whole case as requests.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut names = Vec::new();
        for (i, (as_json, rules)) in self.policies.iter().enumerate() {
            let path = |r: &Rule| format!("secret/{}/{{p}}/{}", r.kind, r.pattern);
            let text = if *as_json {
                let mut paths = serde_json::Map::new();
                for r in rules {
                    paths.insert(path(r), json!({ "capabilities": r.caps }));
                }
                json!({ "path": paths }).to_string()
            } else {
                rules.iter().map(|r| format!("path \"{}\" {{ capabilities = {} }}\n", path(r), json!(r.caps))).collect()
            };
            steps.push(put_policy(&format!("g{i}"), &text));
            names.push(format!("{{p}}-g{i}"));
        }
        // Secrets for the token to find: two with data, one with metadata only.
        steps.push(step(Who::Root, "POST", "secret/data/{p}/a", Some(json!({"data": {"k": 1}}))));
        steps.push(step(Who::Root, "POST", "secret/data/{p}/b/x/a", Some(json!({"data": {"k": 2}}))));
        steps.push(step(Who::Root, "POST", "secret/metadata/{p}/a/b", Some(json!({"max_versions": 5}))));
        steps.push(step(Who::Root, "POST", "auth/token/create", Some(json!({ "policies": names }))));
        steps.extend(self.requests.iter().cloned());
        steps
    }
}

fn rule() -> impl Strategy<Value = Rule> {
    let kind = prop_oneof![4 => Just("data"), 2 => Just("metadata"), 1 => Just("delete"), 1 => Just("+")];
    let caps = prop::sample::subsequence(vec!["create", "read", "update", "delete", "list", "deny"], 1..=3);
    (kind, prop::sample::select(PATTERNS.to_vec()), caps).prop_map(|(kind, pattern, caps)| Rule {
        kind: kind.into(),
        pattern: pattern.into(),
        caps: caps.into_iter().map(String::from).collect(),
    })
}

fn policy() -> impl Strategy<Value = (bool, Vec<Rule>)> {
    (any::<bool>(), prop::collection::vec(rule(), 1..=4)).prop_map(|(j, mut rules)| {
        // One rule per path in a policy (a document has one entry per path).
        let mut seen = std::collections::BTreeSet::new();
        rules.retain(|r| seen.insert((r.kind.clone(), r.pattern.clone())));
        (j, rules)
    })
}

/// A KV request with the case's token.
fn request() -> impl Strategy<Value = Step> {
    let secret = || prop::sample::select(SECRETS.to_vec());
    let t = Who::Token(0);
    let at = |kind: &str, s: &str| format!("secret/{kind}/{{p}}/{s}");
    prop_oneof![
        3 => secret().prop_map(move |s| step(t, "GET", &at("data", s), None)),
        3 => secret().prop_map(move |s| step(t, "POST", &at("data", s), Some(json!({"data": {"k": "t"}})))),
        1 => secret().prop_map(move |s| step(t, "GET", &at("metadata", s), None)),
        2 => prop::sample::select(FOLDERS.to_vec()).prop_map(move |f| step(t, "LIST", &at("metadata", f), None)),
        1 => secret().prop_map(move |s| step(t, "DELETE", &at("data", s), None)),
        1 => secret().prop_map(move |s| step(t, "POST", &at("delete", s), Some(json!({"versions": [1]})))),
        1 => secret().prop_map(move |s| step(t, "POST", &at("metadata", s), Some(json!({"max_versions": 7})))),
        1 => secret().prop_map(move |s| step(t, "DELETE", &at("metadata", s), None)),
    ]
}

/// A generated case: one or two policies, then three to eight KV requests with the token.
pub fn case() -> impl Strategy<Value = Case> {
    (prop::collection::vec(policy(), 1..=2), prop::collection::vec(request(), 3..=8))
        .prop_map(|(policies, requests)| Case { policies, requests })
}

// ---- documented differences ----

/// Cases whose last request is answered differently on purpose (docs/compatibility.md): the
/// anchor, the requests, and the statuses (OpenBao, secretlog) of the last one.
pub fn documented() -> Vec<(&'static str, Vec<Step>, (u16, u16))> {
    use Who::{Root, Token};
    let create = |body: Value| step(Root, "POST", "auth/token/create", Some(body));
    vec![
        ("token-root-children", vec![create(json!({}))], (200, 400)),
        (
            "policy-patterns",
            vec![put_policy("mid", r#"path "secret/data/{p}/a/*/b" { capabilities = ["read"] }"#)],
            (204, 400),
        ),
        (
            "token-renewals",
            vec![
                create(json!({"policies": ["{p}-x"], "ttl": "1h", "explicit_max_ttl": "2h"})),
                step(Token(0), "POST", "auth/token/renew-self", Some(json!({"increment": "5h"}))),
            ],
            (200, 200),
        ),
    ]
}

/// Send `steps` to OpenBao and the writer without comparing; the answers to the last one.
pub async fn last_statuses(pair: &Pair, steps: &[Step]) -> (Answer, Answer) {
    let mut run = Run::new(pair);
    let mut last = None;
    for s in steps {
        let (bao_token, our_token) = match s.who {
            Who::Root => (pair.bao.token.clone(), pair.stack.token.clone()),
            Who::Token(i) => (run.bao_tokens[i].clone(), run.our_tokens[i].clone()),
        };
        let bao = run.send(&pair.bao.url, &bao_token, true, s, None).await;
        let index = (!run.index.0.is_empty()).then(|| run.index.to_string());
        let ours = run.send(&pair.stack.writer.url, &our_token, false, s, index.as_deref()).await;
        super::merge_index(&mut run.index, &ours).expect("the writer's index");
        for (answer, tokens) in [(&bao, &mut run.bao_tokens), (&ours, &mut run.our_tokens)] {
            if let Some(t) = answer.body["auth"]["client_token"].as_str().filter(|t| !t.is_empty()) {
                tokens.push(t.to_string());
            }
        }
        last = Some((bao, ours));
    }
    last.expect("a documented case has requests")
}
