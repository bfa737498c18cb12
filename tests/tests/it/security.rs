//! Who is refused: missing, wrong, expired and revoked tokens, and ACL policies (allow, deny,
//! wildcards, most specific rule wins) — on the writer and on a reader alike, since readers check
//! tokens and policies locally from the state the log built.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Stack, StackOpts, call, eventually, shared};

const POLICY: &str = r#"
path "secret/data/app/*" { capabilities = ["create", "read", "update"] }
path "secret/data/app/admin" { capabilities = ["deny"] }
path "secret/data/app/ro/*" { capabilities = ["read"] }
path "secret/data/team/+/config" { capabilities = ["read"] }
path "secret/metadata/app/*" { capabilities = ["list"] }
"#;

/// Write policy `name` as root; the write must succeed.
async fn put_policy(s: &Stack, name: &str, policy: &str) {
    let url = format!("{}/v1/sys/policies/acl/{name}", s.writer.url);
    let a = call("PUT", &url, Some(&s.token), None, Some(json!({ "policy": policy }))).await;
    assert_eq!(a.status, 204, "{:?}", a.body);
}

/// Create a token; returns it and the index of its creation.
async fn token(s: &Stack, body: Value) -> (String, String) {
    let a = call("POST", &format!("{}/v1/auth/token/create", s.writer.url), Some(&s.token), None, Some(body)).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let t = a.body["auth"]["client_token"].as_str().expect("client_token").to_string();
    assert!(t.starts_with("hvs."));
    (t, a.index.expect("index"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_expired_and_revoked_tokens_are_refused_on_writers_and_readers() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "tokens", readers: 1, ..Default::default() }).await;
    let idx = s.put("app/x", json!({"v": 1})).await;
    let reader = &s.readers[0].url;
    let nodes = [s.writer.url.as_str(), reader.as_str()];
    for url in nodes {
        let path = format!("{url}/v1/secret/data/app/x");
        assert_eq!(call("GET", &path, None, Some(&idx), None).await.status, 403, "{url}: no token");
        assert_eq!(call("GET", &path, Some("hvs.not-a-token"), Some(&idx), None).await.status, 403, "{url}: wrong");
    }
    put_policy(&s, "app", POLICY).await;

    // A live token reads on both; lookup-self shows its policies and the caller's own token (as
    // `id`, which Vault Agent reads); the lookup of it by another token never shows it.
    let (live, i) = token(&s, json!({ "policies": ["app"], "ttl": "1h" })).await;
    for url in nodes {
        let a = call("GET", &format!("{url}/v1/secret/data/app/x"), Some(&live), Some(&i), None).await;
        assert_eq!(a.status, 200, "{url}: {:?}", a.body);
        let me = call("GET", &format!("{url}/v1/auth/token/lookup-self"), Some(&live), Some(&i), None).await;
        assert_eq!(me.body["data"]["policies"], json!(["app", "default"]), "{url}");
        assert_eq!(me.body["data"]["id"], json!(live), "{url}: lookup-self answers the caller's own token");
    }
    let other = call(
        "POST",
        &format!("{}/v1/auth/token/lookup", s.writer.url),
        Some(&s.token),
        Some(&i),
        Some(json!({ "token": live })),
    )
    .await;
    assert_eq!(other.status, 200, "{:?}", other.body);
    assert!(!other.body.to_string().contains(&live), "the lookup of another token must not echo it");

    // Expired: a 2 s token stops working everywhere, by each node's own clock.
    let (short, i) = token(&s, json!({ "policies": ["app"], "ttl": 2 })).await;
    let ok = call("GET", &format!("{reader}/v1/secret/data/app/x"), Some(&short), Some(&i), None).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    for url in nodes {
        eventually(Duration::from_secs(10), "the short token to expire", || async {
            let a = call("GET", &format!("{url}/v1/secret/data/app/x"), Some(&short), None, None).await;
            (a.status == 403).then_some(())
        })
        .await;
    }

    // Revoked: refused from the revocation's index on.
    let (gone, i) = token(&s, json!({ "policies": ["app"] })).await;
    assert_eq!(call("GET", &format!("{reader}/v1/secret/data/app/x"), Some(&gone), Some(&i), None).await.status, 200);
    let r = call("POST", &format!("{reader}/v1/auth/token/revoke-self"), Some(&gone), Some(&i), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let i = r.index.expect("index");
    for url in nodes {
        let a = call("GET", &format!("{url}/v1/secret/data/app/x"), Some(&gone), Some(&i), None).await;
        assert_eq!(a.status, 403, "{url}: a revoked token");
    }

    // Renewal extends a renewable token; the root token is not handed out again.
    let (renewable, i) = token(&s, json!({ "policies": ["app"], "ttl": 60 })).await;
    let r = call(
        "POST",
        &format!("{reader}/v1/auth/token/renew-self"),
        Some(&renewable),
        Some(&i),
        Some(json!({ "increment": 3600 })),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["auth"]["lease_duration"].as_i64().unwrap() > 3000, "{:?}", r.body);
    let root_child =
        call("POST", &format!("{}/v1/auth/token/create", s.writer.url), Some(&s.token), None, Some(json!({}))).await;
    assert_eq!(root_child.status, 400, "{:?}", root_child.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_matrix_holds_on_the_writer_and_on_readers() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "acl", readers: 1, ..Default::default() }).await;
    for p in ["app/x", "app/admin", "app/ro/y", "other/z", "team/blue/config", "team/blue/green/config"] {
        s.put(p, json!({ "p": p })).await;
    }
    put_policy(&s, "app", POLICY).await;
    let bad = call(
        "PUT",
        &format!("{}/v1/sys/policies/acl/broken", s.writer.url),
        Some(&s.token),
        None,
        Some(json!({ "policy": "path \"x\" { capabilities = [\"fly\"] }" })),
    )
    .await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    let (t, i) = token(&s, json!({ "policies": ["app"] })).await;
    let reader = s.readers[0].url.clone();
    let read = |url: String, path: &'static str| {
        let (t, i) = (t.clone(), i.clone());
        async move { call("GET", &format!("{url}/v1/secret/data/{path}"), Some(&t), Some(&i), None).await.status }
    };
    for url in [s.writer.url.clone(), reader.clone()] {
        assert_eq!(read(url.clone(), "app/x").await, 200, "{url}: allowed by the glob");
        assert_eq!(read(url.clone(), "app/admin").await, 403, "{url}: deny overrides");
        assert_eq!(read(url.clone(), "app/ro/y").await, 200, "{url}: the more specific rule reads");
        assert_eq!(read(url.clone(), "other/z").await, 403, "{url}: no rule, no access");
        assert_eq!(read(url.clone(), "team/blue/config").await, 200, "{url}: + is one segment");
        assert_eq!(read(url.clone(), "team/blue/green/config").await, 403, "{url}: + is only one segment");
        let list = call("LIST", &format!("{url}/v1/secret/metadata/app/"), Some(&t), Some(&i), None).await;
        assert_eq!(list.status, 200, "{url}: {:?}", list.body);
        // Writes are decided by the leader, whether sent to it or through a reader.
        let w = |path: &str| format!("{url}/v1/secret/data/{path}");
        let update_ro = call("POST", &w("app/ro/y"), Some(&t), Some(&i), Some(json!({"data": {"v": 2}}))).await;
        assert_eq!(update_ro.status, 403, "{url}: most specific wins: app/ro/* only reads");
        let create = call("POST", &w("app/new"), Some(&t), Some(&i), Some(json!({"data": {"v": 1}}))).await;
        assert_eq!(create.status, 200, "{url}: {:?}", create.body);
        let delete = call("DELETE", &w("app/x"), Some(&t), Some(&i), None).await;
        assert_eq!(delete.status, 403, "{url}: no delete capability");
        // Token creation needs its own capability; root-only endpoints stay root-only.
        let child = call("POST", &format!("{url}/v1/auth/token/create"), Some(&t), Some(&i), Some(json!({}))).await;
        assert_eq!(child.status, 403, "{url}: {:?}", child.body);
    }
    let policy = call("GET", &format!("{reader}/v1/sys/policies/acl/app"), Some(&s.token), Some(&i), None).await;
    assert_eq!(policy.status, 200, "{:?}", policy.body);
    assert_eq!(policy.body["data"]["policy"], POLICY);
    let denied = call("GET", &format!("{reader}/v1/sys/policies/acl/app"), Some(&t), Some(&i), None).await;
    assert_eq!(denied.status, 403);
    // Narrowing the policy takes effect from its index on, on nodes that have been answering the
    // token from what they keep of its ACL (every node above did, many times).
    let narrowed = call(
        "PUT",
        &format!("{}/v1/sys/policies/acl/app", s.writer.url),
        Some(&s.token),
        None,
        Some(json!({ "policy": r#"path "secret/data/app/ro/*" { capabilities = ["read"] }"# })),
    )
    .await;
    assert_eq!(narrowed.status, 204, "{:?}", narrowed.body);
    let n = narrowed.index.expect("index");
    for url in [s.writer.url.clone(), reader.clone()] {
        let get = |path: &'static str| {
            let (t, n, url) = (t.clone(), n.clone(), url.clone());
            async move { call("GET", &format!("{url}/v1/secret/data/{path}"), Some(&t), Some(&n), None).await.status }
        };
        assert_eq!(get("app/x").await, 403, "{url}: the narrowed policy no longer reads app/x");
        assert_eq!(get("app/ro/y").await, 200, "{url}: and still reads what it kept");
    }
    // Deleting the policy takes the token's access away everywhere.
    let del = call("DELETE", &format!("{}/v1/sys/policies/acl/app", s.writer.url), Some(&s.token), None, None).await;
    assert_eq!(del.status, 204, "{:?}", del.body);
    let i = del.index.expect("index");
    let a = call("GET", &format!("{reader}/v1/secret/data/app/x"), Some(&t), Some(&i), None).await;
    assert_eq!(a.status, 403);
}
