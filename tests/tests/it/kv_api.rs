//! The Vault KV v2 API end to end: writes on the writer, reads on readers.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Stack, StackOpts, call, eventually, shared};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_leader_is_readable_on_every_reader_with_its_token() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "kvbasic", ..Default::default() }).await;
    let t = Some(s.token.as_str());
    let w = call(
        "POST",
        &format!("{}/v1/secret/data/app/db", s.writer.url),
        t,
        None,
        Some(json!({"data": {"password": "p1"}})),
    )
    .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_eq!(w.body["data"]["version"], 1);
    let index = w.index.expect("write answers carry X-Secretlog-Index");
    for r in &s.readers {
        // The very next read with the token sees the write.
        let a = call("GET", &format!("{}/v1/secret/data/app/db", r.url), t, Some(&index), None).await;
        assert_eq!(a.status, 200, "{}: {:?}\n{}", r.name, a.body, r.log_tail());
        assert_eq!(a.body["data"]["data"]["password"], "p1");
        assert_eq!(a.body["data"]["metadata"]["version"], 1);
    }
    // Version 2, then read version 1 explicitly.
    let w2 = call(
        "POST",
        &format!("{}/v1/secret/data/app/db", s.writer.url),
        t,
        None,
        Some(json!({"data": {"password": "p2"}})),
    )
    .await;
    assert_eq!(w2.body["data"]["version"], 2);
    let r = &s.readers[1];
    let v1 = call("GET", &format!("{}/v1/secret/data/app/db?version=1", r.url), t, w2.index.as_deref(), None).await;
    assert_eq!(v1.body["data"]["data"]["password"], "p1");
    let cur = call("GET", &format!("{}/v1/secret/data/app/db", r.url), t, w2.index.as_deref(), None).await;
    assert_eq!(cur.body["data"]["data"]["password"], "p2");
    // LIST at the root and in a folder.
    let list = call("LIST", &format!("{}/v1/secret/metadata/", r.url), t, None, None).await;
    assert_eq!(list.body["data"]["keys"], json!(["app/"]));
    let list = call("GET", &format!("{}/v1/secret/metadata/app?list=true", r.url), t, None, None).await;
    assert_eq!(list.body["data"]["keys"], json!(["db"]));
    // Metadata.
    let m = call("GET", &format!("{}/v1/secret/metadata/app/db", r.url), t, None, None).await;
    assert_eq!(m.body["data"]["current_version"], 2);
    assert_eq!(m.body["data"]["versions"].as_object().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_undelete_destroy_and_metadata_follow_vault_rules() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "kvrules", readers: 1, ..Default::default() }).await;
    let t = Some(s.token.as_str());
    let w = &s.writer.url;
    let r = &s.readers[0].url;
    for i in 1..=3 {
        let a = call("POST", &format!("{w}/v1/secret/data/k"), t, None, Some(json!({"data": {"v": i}}))).await;
        assert_eq!(a.status, 200);
    }
    let d = call("DELETE", &format!("{w}/v1/secret/data/k"), t, None, None).await;
    assert_eq!(d.status, 204);
    let idx = d.index.clone();
    let gone = call("GET", &format!("{r}/v1/secret/data/k"), t, idx.as_deref(), None).await;
    assert_eq!(gone.status, 404, "soft-deleted latest version is not served");
    assert_ne!(gone.body["data"]["metadata"]["deletion_time"], "");
    let u = call("POST", &format!("{w}/v1/secret/undelete/k"), t, None, Some(json!({"versions": [3]}))).await;
    assert_eq!(u.status, 204);
    let back = call("GET", &format!("{r}/v1/secret/data/k"), t, u.index.as_deref(), None).await;
    assert_eq!(back.body["data"]["data"]["v"], 3);
    let x = call("POST", &format!("{w}/v1/secret/destroy/k"), t, None, Some(json!({"versions": [1]}))).await;
    assert_eq!(x.status, 204);
    let destroyed = call("GET", &format!("{r}/v1/secret/data/k?version=1"), t, x.index.as_deref(), None).await;
    assert_eq!(destroyed.status, 404);
    assert_eq!(destroyed.body["data"]["metadata"]["destroyed"], true);
    let und = call("POST", &format!("{w}/v1/secret/undelete/k"), t, None, Some(json!({"versions": [1]}))).await;
    let still = call("GET", &format!("{r}/v1/secret/data/k?version=1"), t, und.index.as_deref(), None).await;
    assert_eq!(still.status, 404, "a destroyed version cannot be undeleted");

    // max_versions prunes the oldest on the next write.
    let m = call(
        "POST",
        &format!("{w}/v1/secret/metadata/k"),
        t,
        None,
        Some(json!({"max_versions": 2, "custom_metadata": {"owner": "ops"}})),
    )
    .await;
    assert_eq!(m.status, 204);
    let a = call("POST", &format!("{w}/v1/secret/data/k"), t, None, Some(json!({"data": {"v": 4}}))).await;
    let meta = call("GET", &format!("{r}/v1/secret/metadata/k"), t, a.index.as_deref(), None).await;
    let versions: Vec<String> = meta.body["data"]["versions"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(versions, vec!["3", "4"]);
    assert_eq!(meta.body["data"]["custom_metadata"]["owner"], "ops");
    assert_eq!(meta.body["data"]["max_versions"], 2);

    // PATCH merges into the current version.
    let p = crate::harness::client()
        .patch(format!("{w}/v1/secret/data/k"))
        .header("X-Vault-Token", &s.token)
        .header("content-type", "application/merge-patch+json")
        .body(json!({"data": {"extra": "x"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), 200);
    let idx = p.headers().get("x-secretlog-index").unwrap().to_str().unwrap().to_string();
    let merged = call("GET", &format!("{r}/v1/secret/data/k"), t, Some(&idx), None).await;
    assert_eq!(merged.body["data"]["data"], json!({"v": 4, "extra": "x"}));
    assert_eq!(merged.body["data"]["metadata"]["version"], 5);

    // DELETE metadata removes everything.
    let dm = call("DELETE", &format!("{w}/v1/secret/metadata/k"), t, None, None).await;
    assert_eq!(dm.status, 204);
    let none = call("GET", &format!("{r}/v1/secret/metadata/k"), t, dm.index.as_deref(), None).await;
    assert_eq!(none.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_vault_errors_and_appends_nothing() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "kvbad", readers: 1, ..Default::default() }).await;
    let t = Some(s.token.as_str());
    let w = &s.writer.url;
    let ok = call("POST", &format!("{w}/v1/secret/data/good"), t, None, Some(json!({"data": {"a": 1}}))).await;
    assert_eq!(ok.status, 200);
    let before = digest(&s.readers[0].url, &s.token, ok.index.as_deref()).await;

    for (body, code) in [
        ("{not json", 400),
        ("[1,2]", 400),
        (r#"{"data":"text"}"#, 400),
        ("{}", 400),
        (r#"{"data":{},"options":{"cas":"x"}}"#, 400),
    ] {
        let r = crate::harness::client()
            .post(format!("{w}/v1/secret/data/x"))
            .header("X-Vault-Token", &s.token)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let b = r.json::<serde_json::Value>().await.unwrap_or_default();
        assert_eq!(status, code, "{body}");
        assert!(b["errors"].as_array().is_some_and(|e| !e.is_empty()), "{body}: Vault-style error body, got {b}");
    }
    let big = "x".repeat(1024 * 1024 + 1);
    let a = call("POST", &format!("{w}/v1/secret/data/big"), t, None, Some(json!({"data": {"v": big}}))).await;
    assert_eq!(a.status, 413);
    for path in ["a//b", "a%2F..%2Fb", "x%2F.%2Fy", "a%00b"] {
        let a = call("POST", &format!("{w}/v1/secret/data/{path}"), t, None, Some(json!({"data": {"a": 1}}))).await;
        assert!(a.status == 400 || a.status == 404, "{path}: {}", a.status);
    }
    let a = call("POST", &format!("{w}/v1/secret/data/nodata"), None, None, Some(json!({"data": {"a": 1}}))).await;
    assert_eq!(a.status, 403, "missing token");
    assert_eq!(a.body["errors"], json!(["permission denied"]));
    let a = call("POST", &format!("{w}/v1/secret/data/nodata"), Some("s.wrong"), None, Some(json!({"data": {"a": 1}})))
        .await;
    assert_eq!(a.status, 403, "wrong token");
    let a = call("GET", &format!("{}/v1/secret/data/good", s.readers[0].url), Some("s.wrong"), None, None).await;
    assert_eq!(a.status, 403, "wrong token on a reader");
    // CAS mismatch.
    let a = call(
        "POST",
        &format!("{w}/v1/secret/data/good"),
        t,
        None,
        Some(json!({"data": {"a": 2}, "options": {"cas": 5}})),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["errors"], json!(["check-and-set parameter did not match the current version"]));

    // Nothing was appended: a marker write lands right after "good"'s version 1.
    let marker = call("POST", &format!("{w}/v1/secret/data/marker"), t, None, Some(json!({"data": {"m": 1}}))).await;
    let after = digest(&s.readers[0].url, &s.token, marker.index.as_deref()).await;
    assert_eq!(
        after["records"].as_u64().unwrap(),
        before["records"].as_u64().unwrap() + 2,
        "only the marker's meta and value were added"
    );
    let good = call("GET", &format!("{}/v1/secret/metadata/good", s.readers[0].url), t, None, None).await;
    assert_eq!(good.body["data"]["current_version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_writers_exactly_one_wins_per_version() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "kvcas", readers: 1, ..Default::default() }).await;
    let w = s.writer.url.clone();
    for version in 0..5u64 {
        let mut tasks = Vec::new();
        for c in 0..8 {
            let (w, tok) = (w.clone(), s.token.clone());
            tasks.push(tokio::spawn(async move {
                call(
                    "POST",
                    &format!("{w}/v1/secret/data/race"),
                    Some(&tok),
                    None,
                    Some(json!({"data": {"client": c}, "options": {"cas": version}})),
                )
                .await
                .status
            }));
        }
        let statuses: Vec<u16> = futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "cas={version}: {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 200 || *s == 400), "{statuses:?}");
    }
    let m = eventually(Duration::from_secs(10), "version 5 on the reader", || async {
        let a = call("GET", &format!("{}/v1/secret/metadata/race", s.readers[0].url), Some(&s.token), None, None).await;
        (a.body["data"]["current_version"] == 5).then_some(a)
    })
    .await;
    assert_eq!(m.body["data"]["versions"].as_object().unwrap().len(), 5);
}

/// The reader's state digest once it has applied `index`.
pub async fn digest(url: &str, token: &str, index: Option<&str>) -> serde_json::Value {
    let a = call("GET", &format!("{url}/v1/sys/secretlog/digest"), Some(token), index, None).await;
    assert_eq!(a.status, 200, "digest: {:?}", a.body);
    a.body["data"].clone()
}
