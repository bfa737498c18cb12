//! Auth methods end to end (issue 21): AppRole and userpass enabled through `sys/auth`, roles,
//! secret ids and users written, logins sent to a reader (forwarded to the leader) and to the
//! leader, the tokens they give used on both; a limited secret id's uses taken through the log
//! (racing logins: exactly as many win as it has uses); CIDR bounds checked against the client's
//! address also through a reader; accessors; the `default` policy.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Answer, Stack, StackOpts, call, eventually, shared};

/// A request with `index` (the consistency token of the last write) to `base`.
async fn send(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    index: Option<&str>,
    body: Option<Value>,
) -> Answer {
    call(method, &format!("{base}/v1/{path}"), token, index, body).await
}

fn token_of(a: &Answer) -> String {
    a.body["auth"]["client_token"].as_str().unwrap_or_else(|| panic!("no token in {:?}", a.body)).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_and_userpass_logins_through_a_reader_give_tokens_every_node_honours() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "approle", readers: 1, ..Default::default() }).await;
    let (w, r, root) = (s.writer.url.clone(), s.readers[0].url.clone(), s.token.clone());
    let root = Some(root.as_str());
    let mut index: Option<String> = None;
    // Every write goes to the reader (forwarded to the leader) and its index is carried on.
    macro_rules! wr {
        ($base:expr, $method:expr, $path:expr, $token:expr, $body:expr, $status:expr) => {{
            let a = send(&$base, $method, $path, $token, index.as_deref(), $body).await;
            assert_eq!(a.status, $status, "{} {}: {:?}", $method, $path, a.body);
            if a.index.is_some() {
                index = a.index.clone();
            }
            a
        }};
    }

    // Enabled through a reader; listed by every node.
    wr!(r, "POST", "sys/auth/approle", root, Some(json!({"type": "approle"})), 204);
    wr!(r, "POST", "sys/auth/people", root, Some(json!({"type": "userpass", "description": "humans"})), 204);
    let a = wr!(r, "POST", "sys/auth/approle", root, Some(json!({"type": "approle"})), 400);
    assert_eq!(a.body["errors"][0], "path is already in use at approle/");
    for base in [&w, &r] {
        let a = send(base, "GET", "sys/auth", root, index.as_deref(), None).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["data"]["approle/"]["type"], "approle");
        assert_eq!(a.body["data"]["people/"]["description"], "humans");
        assert_eq!(a.body["data"]["token/"]["type"], "token");
    }

    // A policy, a secret, a role holding the policy, its role id and a secret id — all through
    // the reader.
    let policy = r#"path "secret/data/app/*" { capabilities = ["read"] }"#;
    wr!(r, "PUT", "sys/policies/acl/app", root, Some(json!({"policy": policy})), 204);
    wr!(r, "POST", "secret/data/app/db", root, Some(json!({"data": {"password": "s3cr3t"}})), 200);
    let role = json!({"token_policies": "app", "token_ttl": "1h", "secret_id_num_uses": 2, "secret_id_ttl": "10m"});
    wr!(r, "POST", "auth/approle/role/web", root, Some(role), 204);
    let a = send(&r, "GET", "auth/approle/role/web", root, index.as_deref(), None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["data"]["token_policies"], json!(["app"]));
    assert_eq!(a.body["data"]["secret_id_num_uses"], 2);
    assert_eq!(a.body["data"]["token_ttl"], 3600);
    let role_id =
        send(&r, "GET", "auth/approle/role/web/role-id", root, index.as_deref(), None).await.body["data"]["role_id"]
            .as_str()
            .expect("a role id")
            .to_string();
    let a = wr!(r, "POST", "auth/approle/role/web/secret-id", root, Some(json!({})), 200);
    let secret_id = a.body["data"]["secret_id"].as_str().expect("a secret id").to_string();
    assert_eq!(a.body["data"]["secret_id_num_uses"], 2);
    assert_eq!(a.body["data"]["secret_id_ttl"], 600);
    assert!(a.body["data"]["secret_id_accessor"].as_str().is_some_and(|s| !s.is_empty()));

    // Login through the reader, no token: a token with the role's policies and `default`.
    let login = json!({"role_id": role_id, "secret_id": secret_id});
    let a = wr!(r, "POST", "auth/approle/login", None, Some(login.clone()), 200);
    assert_eq!(a.body["auth"]["policies"], json!(["app", "default"]));
    assert_eq!(a.body["auth"]["metadata"], json!({"role_name": "web"}));
    assert_eq!(a.body["auth"]["lease_duration"], 3600);
    let app_token = token_of(&a);
    let accessor = a.body["auth"]["accessor"].as_str().expect("accessor").to_string();
    for base in [&w, &r] {
        let a = send(base, "GET", "secret/data/app/db", Some(&app_token), index.as_deref(), None).await;
        assert_eq!(a.status, 200, "{base}: {:?}", a.body);
        assert_eq!(a.body["data"]["data"]["password"], "s3cr3t");
        let a = send(base, "GET", "secret/data/other", Some(&app_token), index.as_deref(), None).await;
        assert_eq!(a.status, 403);
        // The default policy lets it look itself up.
        let a = send(base, "GET", "auth/token/lookup-self", Some(&app_token), index.as_deref(), None).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["data"]["path"], "auth/approle/login");
        assert_eq!(a.body["data"]["meta"]["role_name"], "web");
    }
    // Its second use at the leader; then it is spent.
    wr!(w, "POST", "auth/approle/login", None, Some(login.clone()), 200);
    let a = wr!(r, "POST", "auth/approle/login", None, Some(login.clone()), 400);
    assert_eq!(a.body["errors"][0], "invalid role or secret ID");
    let a = wr!(r, "POST", "auth/approle/login", None, Some(json!({"role_id": role_id, "secret_id": "nope"})), 400);
    assert_eq!(a.body["errors"][0], "invalid role or secret ID");

    // Racing logins for the uses of one secret id, through both nodes: exactly two win.
    let a = wr!(w, "POST", "auth/approle/role/web/custom-secret-id", root, Some(json!({"secret_id": "race-1"})), 200);
    assert_eq!(a.body["data"]["secret_id"], "race-1");
    let race = json!({"role_id": role_id, "secret_id": "race-1"});
    let attempts = (0..8).map(|i| {
        let base = if i % 2 == 0 { w.clone() } else { r.clone() };
        let body = race.clone();
        let idx = index.clone();
        async move {
            // A loser of the race is refused by the log (503, retryable) or finds the uses gone.
            loop {
                let a = send(&base, "POST", "auth/approle/login", None, idx.as_deref(), Some(body.clone())).await;
                if a.status != 503 {
                    return a.status;
                }
            }
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "exactly the secret id's uses: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 400), "{statuses:?}");

    // CIDR bounds on secret ids hold for the client's own address, also through a reader.
    let bound = |cidr: &str| json!({"token_policies": ["app"], "secret_id_bound_cidrs": [cidr]});
    wr!(w, "POST", "auth/approle/role/far", root, Some(bound("10.0.0.0/8")), 204);
    wr!(w, "POST", "auth/approle/role/near", root, Some(bound("127.0.0.0/8")), 204);
    for (name, allowed) in [("far", false), ("near", true)] {
        let id = send(&w, "GET", &format!("auth/approle/role/{name}/role-id"), root, index.as_deref(), None).await.body
            ["data"]["role_id"]
            .clone();
        let sid = wr!(w, "POST", &format!("auth/approle/role/{name}/secret-id"), root, Some(json!({})), 200).body
            ["data"]["secret_id"]
            .clone();
        for base in [&w, &r] {
            let a = send(
                base,
                "POST",
                "auth/approle/login",
                None,
                index.as_deref(),
                Some(json!({"role_id": id, "secret_id": sid})),
            )
            .await;
            assert_eq!(a.status == 200, allowed, "{name} via {base}: {:?}", a.body);
            if !allowed {
                assert!(a.body["errors"][0].as_str().unwrap_or("").contains("unauthorized through CIDR restrictions"));
            }
        }
    }
    // A client cannot claim another address: the header forwarding nodes send needs their tag.
    let far_id =
        send(&w, "GET", "auth/approle/role/far/role-id", root, index.as_deref(), None).await.body["data"]["role_id"]
            .clone();
    let far_sid =
        wr!(w, "POST", "auth/approle/role/far/secret-id", root, Some(json!({})), 200).body["data"]["secret_id"].clone();
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let forged = crate::harness::client()
        .post(format!("{w}/v1/auth/approle/login"))
        .header("x-secretlog-client", format!("10.1.2.3 {secs} {}", "00".repeat(32)))
        .header("x-secretlog-forwarded", "1")
        .body(json!({"role_id": far_id, "secret_id": far_sid}).to_string())
        .send()
        .await
        .expect("the forged login");
    assert_eq!(forged.status().as_u16(), 400, "a forged client address is not believed");

    // Tokens bound to addresses the client is not at are refused where they are used.
    let id = json!({"token_policies": ["app"], "token_bound_cidrs": ["10.0.0.0/8"]});
    wr!(w, "POST", "auth/approle/role/boundtok", root, Some(id), 204);
    let id = send(&w, "GET", "auth/approle/role/boundtok/role-id", root, index.as_deref(), None).await.body["data"]
        ["role_id"]
        .clone();
    let sid =
        wr!(w, "POST", "auth/approle/role/boundtok/secret-id", root, Some(json!({})), 200).body["data"]["secret_id"]
            .clone();
    let t = token_of(&wr!(r, "POST", "auth/approle/login", None, Some(json!({"role_id": id, "secret_id": sid})), 200));
    for base in [&w, &r] {
        assert_eq!(send(base, "GET", "secret/data/app/db", Some(&t), index.as_deref(), None).await.status, 403);
    }

    // Userpass: the user read back without any password; logins through the reader.
    let user = json!({"password": "correct horse", "token_policies": ["app"], "token_ttl": "30m"});
    wr!(r, "POST", "auth/people/users/Alice", root, Some(user), 204);
    let a = send(&r, "GET", "auth/people/users/alice", root, index.as_deref(), None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["data"]["token_ttl"], 1800);
    assert!(!a.body.to_string().contains("password") && !a.body.to_string().contains("argon2"), "{:?}", a.body);
    let a = send(&r, "LIST", "auth/people/users", root, index.as_deref(), None).await;
    assert_eq!(a.body["data"]["keys"], json!(["alice"]));
    let a = wr!(r, "POST", "auth/people/login/alice", None, Some(json!({"password": "correct horse"})), 200);
    assert_eq!(a.body["auth"]["policies"], json!(["app", "default"]));
    assert_eq!(a.body["auth"]["metadata"], json!({"username": "alice"}));
    let alice = token_of(&a);
    assert_eq!(send(&r, "GET", "secret/data/app/db", Some(&alice), index.as_deref(), None).await.status, 200);
    // A token sent with a login is ignored there, as in Vault, even one that is no token.
    for base in [&r, &w] {
        let body = Some(json!({"password": "correct horse"}));
        let a = wr!(base, "POST", "auth/people/login/alice", Some("hvs.not-a-token"), body, 200);
        assert_eq!(a.body["auth"]["metadata"], json!({"username": "alice"}), "{base}");
    }
    // A wrong password and an unknown user get the same answer.
    for who in ["alice", "bob"] {
        let a = wr!(r, "POST", &format!("auth/people/login/{who}"), None, Some(json!({"password": "wrong"})), 400);
        assert_eq!(a.body["errors"][0], "invalid username or password");
    }

    // Accessors: looked up and revoked by it; the token stops working on every node.
    let a = wr!(r, "POST", "auth/token/lookup-accessor", root, Some(json!({"accessor": accessor})), 200);
    assert_eq!(a.body["data"]["display_name"], "approle", "named after the mount, as in Vault");
    wr!(r, "POST", "auth/token/revoke-accessor", root, Some(json!({"accessor": accessor})), 204);
    for base in [&w, &r] {
        let a = send(base, "GET", "secret/data/app/db", Some(&app_token), index.as_deref(), None).await;
        assert_eq!(a.status, 403, "{base}: a revoked token");
    }
    let a = wr!(r, "POST", "auth/token/lookup-accessor", root, Some(json!({"accessor": accessor})), 400);
    assert!(a.body["errors"][0].as_str().unwrap_or("").contains("invalid accessor"));

    // The default policy: read on every node, listed, editable, not deletable; without it a
    // token cannot look itself up.
    for base in [&w, &r] {
        let a = send(base, "GET", "sys/policies/acl/default", root, index.as_deref(), None).await;
        assert!(a.body["data"]["policy"].as_str().unwrap_or("").contains("auth/token/lookup-self"), "{:?}", a.body);
        let a = send(base, "LIST", "sys/policies/acl", root, index.as_deref(), None).await;
        assert_eq!(a.body["data"]["keys"], json!(["app", "default", "root"]));
    }
    let a = wr!(r, "DELETE", "sys/policies/acl/default", root, None, 400);
    assert_eq!(a.body["errors"][0], "cannot delete default policy");
    let a =
        wr!(r, "POST", "auth/token/create", root, Some(json!({"policies": ["app"], "no_default_policy": true})), 200);
    assert_eq!(a.body["auth"]["policies"], json!(["app"]));
    let bare = token_of(&a);
    for base in [&w, &r] {
        assert_eq!(send(base, "GET", "auth/token/lookup-self", Some(&bare), index.as_deref(), None).await.status, 403);
    }
    // An edited default policy is what tokens get from then on.
    let edited = r#"path "auth/token/lookup-self" { capabilities = ["read"] }
                    path "secret/data/shared" { capabilities = ["read"] }"#;
    wr!(r, "PUT", "sys/policies/acl/default", root, Some(json!({"policy": edited})), 204);
    wr!(r, "POST", "secret/data/shared", root, Some(json!({"data": {"k": 1}})), 200);
    assert_eq!(send(&r, "GET", "secret/data/shared", Some(&alice), index.as_deref(), None).await.status, 200);

    // Disabled: its roles are gone with it, and its logins are refused like any unknown path
    // without a token (403, as OpenBao answers).
    wr!(r, "DELETE", "sys/auth/approle", root, None, 204);
    let a = send(&r, "GET", "sys/auth", root, index.as_deref(), None).await;
    assert!(a.body["data"].get("approle/").is_none(), "{:?}", a.body);
    wr!(r, "POST", "auth/approle/login", None, Some(login), 403);
    wr!(r, "POST", "sys/auth/approle", root, Some(json!({"type": "approle"})), 204);
    let a = send(&r, "LIST", "auth/approle/role", root, index.as_deref(), None).await;
    assert_eq!(a.status, 404, "a re-enabled method starts empty: {:?}", a.body);

    // The reader holds the same state as the leader, byte for byte (auth objects included).
    let expected = digest(&w, &s.token, index.as_deref()).await.expect("the writer's digest");
    eventually(Duration::from_secs(30), "the reader's digest to match the writer's", || {
        let (r, idx, expected, token) = (r.clone(), index.clone(), expected.clone(), s.token.clone());
        async move { (digest(&r, &token, idx.as_deref()).await? == expected).then_some(()) }
    })
    .await;
}

async fn digest(base: &str, token: &str, index: Option<&str>) -> Option<String> {
    let a = send(base, "GET", "sys/secretlog/digest", Some(token), index, None).await;
    a.body["data"]["digest"].as_str().map(str::to_string)
}
