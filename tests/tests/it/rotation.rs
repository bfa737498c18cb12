//! Key rotation end to end: rotate, new writes sealed under the new term at once, the background
//! rewrap moves every older value, the old term is retired only once nothing uses it — and after
//! all that every secret and version still reads back identically on the writer and on readers
//! (the state digests, which cover every sealed value's bytes and the key terms, agree), and a
//! fresh reader replaying the whole log from offset 0 (records authenticated under the
//! retired term included) reaches exactly its peers' state. Readers answer the key status from
//! their own state, and it matches the writer's once they caught up.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use secretlog_schemas::ConsistencyToken;
use serde_json::{Value, json};

use crate::harness::{Stack, StackOpts, call, eventually, shared};
use crate::kv_api::digest;

/// `GET /v1/sys/key-status` on `url` once it applied `index`: its `data`.
async fn key_status(url: &str, token: &str, index: Option<&str>) -> Value {
    let a = call("GET", &format!("{url}/v1/sys/key-status"), Some(token), index, None).await;
    assert_eq!(a.status, 200, "key-status: {:?}", a.body);
    assert_eq!(a.body["term"], a.body["data"]["term"], "Vault's fields at the top level too");
    a.body["data"].clone()
}

/// Merge a write's index into `seen`.
fn note(seen: &mut ConsistencyToken, index: Option<&str>) {
    let token = index.expect("a committed write carries its index").parse::<ConsistencyToken>().expect("an index");
    seen.merge(&token);
}

/// Values sealed under `term`, per the key status.
fn values_of(status: &Value, term: u64) -> u64 {
    status["terms"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["term"] == term))
        .map_or(0, |t| t["values"].as_u64().unwrap_or(0))
}

/// What a reader's key status must agree on with the writer's: the terms, when each was added
/// and retired, the values each seals, and what the rewrap has left (a reader does not know the
/// leader's throttle).
fn comparable(status: &Value) -> Value {
    json!({
        "term": status["term"],
        "install_time": status["install_time"],
        "encryptions": status["encryptions"],
        "terms": status["terms"],
        "remaining": status["rewrap"]["remaining"],
    })
}

/// Poll `reader`'s key status until it matches the writer's (60 s at most); return it.
async fn reader_key_status_matches(writer: &str, reader: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (w, r) = (key_status(writer, token, None).await, key_status(reader, token, None).await);
        if comparable(&w) == comparable(&r) {
            assert_eq!(r["rewrap"].get("rate"), None, "a reader does not know the leader's throttle: {r}");
            return r;
        }
        assert!(Instant::now() < deadline, "the reader's key status never matched the writer's:\n{w}\n{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_rewrap_rate(s: &Stack, rate: u64) {
    let url = format!("{}/v1/sys/secretlog/rewrap", s.writer.url);
    let a = call("POST", &url, Some(&s.token), None, Some(json!({ "rate": rate }))).await;
    assert_eq!(a.status, 204, "{:?}", a.body);
}

async fn retire(s: &Stack, body: Value, token: Option<&str>) -> crate::harness::Answer {
    call("POST", &format!("{}/v1/sys/secretlog/retire-term", s.writer.url), token, None, Some(body)).await
}

/// Read every expected version on `url` and compare it with what was written.
async fn reads_back(url: &str, token: &str, expected: &BTreeMap<(String, u64), Value>) {
    for ((path, v), data) in expected {
        let a = call("GET", &format!("{url}/v1/secret/data/{path}?version={v}"), Some(token), None, None).await;
        assert_eq!(a.status, 200, "{url} {path} v{v}: {:?}", a.body);
        assert_eq!(&a.body["data"]["data"], data, "{url} {path} v{v} reads back differently");
    }
}

/// Run `secretlog-it <args> --writer <leader> --token-file <root token> --json`: exit code,
/// stdout as JSON (or text) and stderr.
fn cli(s: &Stack, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_secretlog-it"))
        .args(args)
        .args(["--writer", &s.writer.url, "--json", "--token-file"])
        .arg(s.dir.path().join("root-token"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("running the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::String(stdout));
    (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Wait until every node in `urls` has applied `index` and has the same state digest; return it.
async fn converged(urls: &[&str], token: &str, index: &ConsistencyToken) -> String {
    let index = (!index.0.is_empty()).then(|| index.to_string());
    eventually(Duration::from_secs(60), "every node to reach the same state digest", || async {
        let mut digests = BTreeSet::new();
        for url in urls {
            let d = digest(url, token, index.as_deref()).await;
            digests.insert(d["digest"].as_str().unwrap_or_default().to_string());
        }
        (digests.len() == 1).then(|| digests.into_iter().next().unwrap_or_default())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rotation_and_rewrap_every_secret_reads_back_and_the_old_term_retires() {
    let (cluster, _g) = shared();
    // The rewrap starts paused (`--rewrap-rate 0`, here through its environment variable) until
    // the refusal below has been seen, so the test does not depend on how fast it is.
    let writer_env = vec![("SECRETLOG_REWRAP_RATE".to_string(), "0".to_string())];
    let s = Stack::start(cluster, StackOpts { name: "rotation", readers: 1, writer_env, ..Default::default() }).await;
    let (w, reader) = (s.writer.url.clone(), s.readers[0].url.clone());
    let tok = s.token.clone();
    let paused = key_status(&w, &tok, None).await;
    assert_eq!(paused["rewrap"], json!({ "remaining": 0, "rate": 0, "paused": true }), "{paused}");

    // 24 secrets of 3 versions; version 1 of every 4th destroyed, version 2 of every 6th
    // soft-deleted (its value stays, sealed), one secret's metadata deleted.
    let mut seen = ConsistencyToken::default();
    let mut expected: BTreeMap<(String, u64), Value> = BTreeMap::new();
    let mut soft_deleted: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for i in 0..24 {
        let path = format!("rot/s{i}");
        for v in 1..=3u64 {
            let data = json!({ "i": i, "v": v, "password": format!("pw-{i}-{v}") });
            note(&mut seen, Some(&s.put(&path, data.clone()).await));
            expected.insert((path.clone(), v), data);
        }
        if i % 4 == 0 {
            let a = call(
                "POST",
                &format!("{w}/v1/secret/destroy/{path}"),
                Some(&tok),
                None,
                Some(json!({"versions": [1]})),
            )
            .await;
            assert_eq!(a.status, 204, "{:?}", a.body);
            note(&mut seen, a.index.as_deref());
            expected.remove(&(path.clone(), 1));
        }
        if i % 6 == 0 {
            let a =
                call("POST", &format!("{w}/v1/secret/delete/{path}"), Some(&tok), None, Some(json!({"versions": [2]})))
                    .await;
            assert_eq!(a.status, 204, "{:?}", a.body);
            note(&mut seen, a.index.as_deref());
            let k = (path.clone(), 2);
            soft_deleted.insert(k.clone(), expected.remove(&k).expect("version 2 was written"));
        }
    }
    let a = call("DELETE", &format!("{w}/v1/secret/metadata/rot/s23"), Some(&tok), None, None).await;
    assert_eq!(a.status, 204, "{:?}", a.body);
    note(&mut seen, a.index.as_deref());
    expected.retain(|(p, _), _| p != "rot/s23");
    let stored = (expected.len() + soft_deleted.len()) as u64;

    let before = key_status(&w, &tok, Some(&seen.to_string())).await;
    assert_eq!(values_of(&before, 1), stored, "every stored value is counted under term 1: {before}");
    assert_eq!(before["term"], 1, "{before}");
    assert_eq!(before["terms"].as_array().map(Vec::len), Some(1), "{before}");
    let active = retire(&s, json!({ "term": 1 }), Some(&tok)).await;
    assert_eq!(active.status, 400, "the active term cannot be retired: {:?}", active.body);
    assert!(active.body["errors"][0].as_str().unwrap_or("").contains("active term"), "{:?}", active.body);

    // Rotate: answered once the writer seals under term 2; new writes use it at once.
    let nobody = call("POST", &format!("{w}/v1/sys/rotate"), None, None, None).await;
    assert_eq!(nobody.status, 403);
    let r = call("POST", &format!("{w}/v1/sys/rotate"), Some(&tok), None, None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert!(r.index.is_some(), "the rotation is a committed log record");
    let data = json!({ "after": "rotation" });
    note(&mut seen, Some(&s.put("rot/new", data.clone()).await));
    expected.insert(("rot/new".into(), 1), data);
    let rotated = key_status(&w, &tok, Some(&seen.to_string())).await;
    assert_eq!(rotated["term"], 2, "{rotated}");
    assert!(rotated["install_time"].is_string(), "{rotated}");
    assert_eq!(values_of(&rotated, 2), 1, "the write after the rotation is sealed under term 2: {rotated}");
    assert_eq!(values_of(&rotated, 1), stored, "the rewrap is paused: {rotated}");
    assert_eq!(rotated["rewrap"]["remaining"], stored);
    // The reader answers the key status from its own state: term 2, and the same counts.
    let on_reader = reader_key_status_matches(&w, &reader, &tok).await;
    assert_eq!((on_reader["term"].clone(), values_of(&on_reader, 1)), (json!(2), stored), "{on_reader}");
    assert_eq!(values_of(&on_reader, 2), 1, "{on_reader}");

    // Reading the key status needs the root token or `read` on sys/key-status, as in Vault: on
    // the writer and on the reader alike; neither lets such a token rotate.
    for (name, policy) in [
        ("key-status-read", r#"path "sys/key-status" { capabilities = ["read"] }"#),
        ("kv-only", r#"path "secret/data/*" { capabilities = ["read"] }"#),
    ] {
        let url = format!("{w}/v1/sys/policies/acl/{name}");
        let a = call("PUT", &url, Some(&tok), None, Some(json!({ "policy": policy }))).await;
        assert_eq!(a.status, 204, "{:?}", a.body);
    }
    let mut tokens = Vec::new();
    for policy in ["key-status-read", "kv-only"] {
        let body = json!({ "policies": [policy] });
        let a = call("POST", &format!("{w}/v1/auth/token/create"), Some(&tok), None, Some(body)).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        tokens.push((a.body["auth"]["client_token"].as_str().unwrap_or_default().to_string(), a.index.unwrap()));
    }
    let [(may, i1), (may_not, i2)] = <[_; 2]>::try_from(tokens).expect("two tokens");
    for url in [w.as_str(), reader.as_str()] {
        let a = call("GET", &format!("{url}/v1/sys/key-status"), Some(&may), Some(&i1), None).await;
        assert_eq!((a.status, a.body["term"].clone()), (200, json!(2)), "{url}: {:?}", a.body);
        let a = call("GET", &format!("{url}/v1/sys/key-status"), Some(&may_not), Some(&i2), None).await;
        assert_eq!(a.status, 403, "{url}: {:?}", a.body);
        let a = call("GET", &format!("{url}/v1/sys/key-status"), None, None, None).await;
        assert_eq!(a.status, 403, "{url}: {:?}", a.body);
    }
    let a = call("POST", &format!("{w}/v1/sys/rotate"), Some(&may), Some(&i1), None).await;
    assert_eq!(a.status, 403, "reading the key status does not allow rotating: {:?}", a.body);

    // Retiring term 1 is refused while values use it, naming how many; bad input is a 400.
    let refused = retire(&s, json!({ "term": 1 }), Some(&tok)).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    let why = refused.body["errors"][0].as_str().unwrap_or_default().to_string();
    assert!(why.contains(&format!("still seals {stored} values")), "{why}");
    for bad in [json!({ "term": 3 }), json!({ "term": "one" }), json!({})] {
        assert_eq!(retire(&s, bad.clone(), Some(&tok)).await.status, 400, "{bad}");
    }
    assert_eq!(retire(&s, json!({ "term": 1 }), None).await.status, 403);

    // Let the rewrap run, and wait for it to move everything.
    set_rewrap_rate(&s, 200).await;
    let done = eventually(Duration::from_secs(120), "the rewrap to move every value to term 2", || async {
        let st = key_status(&w, &tok, None).await;
        (st["rewrap"]["remaining"] == 0).then_some(st)
    })
    .await;
    assert_eq!(values_of(&done, 1), 0, "{done}");
    assert_eq!(values_of(&done, 2), stored + 1, "{done}");

    converged(&[w.as_str(), reader.as_str()], &tok, &seen).await;
    reads_back(&w, &tok, &expected).await;
    reads_back(&reader, &tok, &expected).await;
    let on_reader = reader_key_status_matches(&w, &reader, &tok).await;
    assert_eq!((values_of(&on_reader, 1), values_of(&on_reader, 2)), (0, stored + 1), "{on_reader}");

    // Now term 1 retires; every value still reads, on every node.
    let ok = retire(&s, json!({ "term": 1 }), Some(&tok)).await;
    assert_eq!(ok.status, 204, "{:?}", ok.body);
    note(&mut seen, ok.index.as_deref());
    let retired = key_status(&w, &tok, None).await;
    reader_key_status_matches(&w, &reader, &tok).await;
    let t1 = retired["terms"].as_array().unwrap().iter().find(|t| t["term"] == 1).cloned().unwrap_or_default();
    assert_eq!(t1["retired"], true, "{retired}");
    assert!(t1["retire_time"].is_string(), "{retired}");
    assert_eq!(retire(&s, json!({ "term": 1 }), Some(&tok)).await.status, 204, "retiring again changes nothing");
    // Soft-deleted versions were rewrapped too: undeleted after the retirement, they read back.
    for (path, v) in soft_deleted.keys() {
        let a =
            call("POST", &format!("{w}/v1/secret/undelete/{path}"), Some(&tok), None, Some(json!({"versions": [v]})))
                .await;
        assert_eq!(a.status, 204, "{:?}", a.body);
        note(&mut seen, a.index.as_deref());
    }
    expected.extend(soft_deleted);
    let digest_after = converged(&[w.as_str(), reader.as_str()], &tok, &seen).await;
    reads_back(&w, &tok, &expected).await;
    reads_back(&reader, &tok, &expected).await;

    // A fresh reader replays the whole log from offset 0 — records authenticated and values
    // sealed under the retired term included — and reaches exactly its peer's state.
    let fresh = s.new_reader("fresh", &[]);
    fresh.wait_health(473, Duration::from_secs(90)).await;
    assert_eq!(
        converged(&[w.as_str(), reader.as_str(), fresh.url.as_str()], &tok, &seen).await,
        digest_after,
        "the fresh reader diverged"
    );
    reads_back(&fresh.url, &tok, &expected).await;

    // The operator's commands: rotate again and wait for the rewrap; retire the term it left.
    let (code, out, err) = cli(&s, &["rotate", "--wait", "--rewrap-rate", "1000"]);
    assert_eq!(code, 0, "rotate: {out} {err}");
    assert_eq!(out["term"], 3, "{out}");
    assert_eq!(out["rewrap"]["remaining"], 0, "--wait returns once the rewrap is done: {out}");
    assert_eq!(values_of(&out, 3), stored + 1, "{out}");
    let (code, out, err) = cli(&s, &["retire-term", "3"]);
    assert_ne!(code, 0, "the active term cannot be retired: {out}");
    assert!(err.contains("active term"), "{err}");
    let (code, out, err) = cli(&s, &["retire-term", "2"]);
    assert_eq!(code, 0, "retire-term 2: {out} {err}");
    converged(&[w.as_str(), reader.as_str(), fresh.url.as_str()], &tok, &seen).await;
    reads_back(&reader, &tok, &expected).await;
    // Every node reports the keyring and the rewrap in its metrics.
    for url in [w.as_str(), reader.as_str(), fresh.url.as_str()] {
        let m = crate::harness::client().get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        for (name, want) in [("secretlog_keyring_active_term", 3.0), ("secretlog_rewrap_remaining", 0.0)] {
            let got = m.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
            assert_eq!(got, Some(want), "{url}: {name} in\n{m}");
        }
    }
}

/// How fast the rewrap moves values with the throttle off: 2,000 secrets (one 100-byte value
/// each) written 32 at a time, then a rotation; prints values per second. Run on demand:
/// `cargo test -p secretlog-tests --test it rotation::rewrap_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn rewrap_throughput() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "rewrapbench", readers: 1, ..Default::default() }).await;
    let (w, tok) = (s.writer.url.clone(), s.token.clone());
    let n = 2000usize;
    let payload = "x".repeat(100);
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let writes = chunk.iter().map(|i| {
            let (w, tok, payload) = (w.clone(), tok.clone(), payload.clone());
            async move {
                let url = format!("{w}/v1/secret/data/bench/k{i}");
                let a = call("POST", &url, Some(&tok), None, Some(json!({ "data": { "v": payload } }))).await;
                assert_eq!(a.status, 200, "{:?}", a.body);
            }
        });
        futures::future::join_all(writes).await;
    }
    eventually(Duration::from_secs(60), "every value counted", || async {
        (values_of(&key_status(&w, &tok, None).await, 1) == n as u64).then_some(())
    })
    .await;
    set_rewrap_rate(&s, 1_000_000).await;
    let started = std::time::Instant::now();
    let r = call("POST", &format!("{w}/v1/sys/rotate"), Some(&tok), None, None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    eventually(Duration::from_secs(300), "the rewrap to finish", || async {
        (key_status(&w, &tok, None).await["rewrap"]["remaining"] == 0).then_some(())
    })
    .await;
    let took = started.elapsed();
    eprintln!(
        "[rewrap] {n} values moved to term 2 in {took:.2?}: {:.0} values/s (writer applied; debug build)",
        n as f64 / took.as_secs_f64()
    );
    let reader = s.readers[0].url.clone();
    converged(&[w.as_str(), reader.as_str()], &tok, &ConsistencyToken::default()).await;
}
