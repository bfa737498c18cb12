//! Token tidy: expired tokens leave every node's state through the log — decided by the leader,
//! applied alike everywhere — and live tokens stay.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;
use crate::metrics::sample;

/// Create a token with `ttl` through `url`: its token and accessor, and the write's index.
async fn create(url: &str, root: &str, ttl: &str) -> (String, String, String) {
    let a = call(
        "POST",
        &format!("{url}/v1/auth/token/create"),
        Some(root),
        None,
        Some(json!({"ttl": ttl, "policies": ["default"]})),
    )
    .await;
    assert_eq!(a.status, 200, "create: {:?}", a.body);
    let auth = &a.body["auth"];
    (
        auth["client_token"].as_str().unwrap().to_string(),
        auth["accessor"].as_str().unwrap().to_string(),
        a.index.expect("a create carries its index"),
    )
}

/// The accessors in the state of the node at `url`, once it has applied `index`.
async fn accessors(url: &str, root: &str, index: Option<&str>) -> BTreeSet<String> {
    let a = call("LIST", &format!("{url}/v1/auth/token/accessors"), Some(root), index, None).await;
    match a.status {
        200 => a.body["data"]["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect(),
        404 => BTreeSet::new(),
        other => panic!("LIST accessors on {url}: {other} {:?}", a.body),
    }
}

async fn metric(url: &str, name: &str) -> f64 {
    let page = client().get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    sample(&page, name).unwrap_or(0.0)
}

fn nodes(s: &Stack) -> Vec<String> {
    std::iter::once(s.writer.url.clone()).chain(s.readers.iter().map(|r| r.url.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tidy_asked_through_a_reader_removes_expired_tokens_from_every_node_and_leaves_live_ones() {
    let (cluster, _g) = shared();
    let s = Stack::start(
        cluster,
        StackOpts {
            name: "tidy",
            // Only the request tidies here.
            writer_env: vec![("SECRETLOG_TOKEN_TIDY_INTERVAL_SECS".into(), "0".into())],
            ..Default::default()
        },
    )
    .await;
    let w = s.writer.url.clone();
    let mut short = BTreeSet::new();
    for _ in 0..6 {
        short.insert(create(&w, &s.token, "2s").await.1);
    }
    let mut live = BTreeSet::new();
    let mut live_tokens = Vec::new();
    let mut last = String::new();
    for _ in 0..2 {
        let (token, accessor, index) = create(&w, &s.token, "1h").await;
        live.insert(accessor);
        live_tokens.push(token);
        last = index;
    }
    let all: BTreeSet<String> = short.union(&live).cloned().collect();
    for url in nodes(&s) {
        assert_eq!(accessors(&url, &s.token, Some(&last)).await, all, "{url} holds every token before the tidy");
    }
    // Expired by the leader's clock: its lookup no longer finds any of them (each was created a
    // little later than the one before, so each is waited for).
    for accessor in &short {
        eventually(Duration::from_secs(30), &format!("short token {accessor} to expire"), || {
            let (w, t, accessor) = (w.clone(), s.token.clone(), accessor.clone());
            async move {
                let a = call(
                    "POST",
                    &format!("{w}/v1/auth/token/lookup-accessor"),
                    Some(&t),
                    None,
                    Some(json!({"accessor": accessor})),
                )
                .await;
                (a.status == 400).then_some(())
            }
        })
        .await;
    }
    for url in nodes(&s) {
        assert_eq!(accessors(&url, &s.token, None).await, all, "{url}: expiry alone removes nothing from state");
    }

    // Asked through a reader: forwarded to the leader, answered as Vault does.
    let a = call("POST", &format!("{}/v1/auth/token/tidy", s.readers[0].url), Some(&s.token), None, None).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(a.body["warnings"][0], "Tidy operation successfully started in the background");

    for url in nodes(&s) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let held = accessors(&url, &s.token, None).await;
            if held == live {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "60 s after the tidy, {url} still holds {held:?} (live: {live:?})\n--- writer log ---\n{}",
                s.writer.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metric(&url, "secretlog_tokens_tidied_total").await, short.len() as f64, "{url} applied each tidy");
    }
    assert_eq!(metric(&w, "secretlog_token_tidy_tokens_total").await, short.len() as f64, "the leader tidied each");
    // Every node holds the same state after it.
    let digests: BTreeSet<String> = futures_digests(&s).await;
    assert_eq!(digests.len(), 1, "every node's state digest is the same: {digests:?}");
    // The live tokens still work on every reader.
    for r in &s.readers {
        for t in &live_tokens {
            let a = call("GET", &format!("{}/v1/auth/token/lookup-self", r.url), Some(t), None, None).await;
            assert_eq!(a.status, 200, "a live token still works on {}: {:?}", r.url, a.body);
        }
    }
    // A second tidy finds nothing more to do and changes nothing.
    let a = call("POST", &format!("{w}/v1/auth/token/tidy"), Some(&s.token), None, None).await;
    assert!(a.status == 202 || a.status == 200, "{:?}", a.body);
    eventually(Duration::from_secs(30), "the second pass", || {
        let w = w.clone();
        async move { (metric(&w, "secretlog_token_tidy_passes_total").await >= 2.0).then_some(()) }
    })
    .await;
    for url in nodes(&s) {
        assert_eq!(accessors(&url, &s.token, None).await, live, "{url}");
    }
}

/// The state digest of every node, once each has applied everything the writer has.
async fn futures_digests(s: &Stack) -> BTreeSet<String> {
    let w = call("GET", &format!("{}/v1/sys/secretlog/digest", s.writer.url), Some(&s.token), None, None).await;
    let index = w.index.clone();
    let mut out = BTreeSet::new();
    out.insert(digest_of(&w.body));
    for r in &s.readers {
        let a =
            call("GET", &format!("{}/v1/sys/secretlog/digest", r.url), Some(&s.token), index.as_deref(), None).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        out.insert(digest_of(&a.body));
    }
    out
}

fn digest_of(body: &Value) -> String {
    body["data"]["digest"].as_str().expect("a digest").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_tidies_expired_tokens_on_its_own_interval() {
    let (cluster, _g) = shared();
    let s = Stack::start(
        cluster,
        StackOpts {
            name: "tidy-interval",
            readers: 1,
            writer_env: vec![("SECRETLOG_TOKEN_TIDY_INTERVAL_SECS".into(), "1".into())],
            ..Default::default()
        },
    )
    .await;
    let w = s.writer.url.clone();
    let (_, expiring, _) = create(&w, &s.token, "1s").await;
    let (_, live, index) = create(&w, &s.token, "1h").await;
    assert!(accessors(&s.readers[0].url, &s.token, Some(&index)).await.contains(&expiring));
    let want = BTreeSet::from([live]);
    for url in nodes(&s) {
        eventually(Duration::from_secs(60), &format!("the expired token gone from {url} without a request"), || {
            let (url, t, want) = (url.clone(), s.token.clone(), want.clone());
            async move { (accessors(&url, &t, None).await == want).then_some(()) }
        })
        .await;
    }
}
