//! Nodes started with the init record and no key are sealed and serve nothing; key holders unseal
//! them at runtime with Shamir shares (`/v1/sys/unseal`, and `secretlog unseal --addr`): 3 of 5
//! unseal, 2 do not, another cluster's share resets progress; `/v1/sys/seal` drops the key again
//! (a sealed leader hands over) and the node unseals again. The replicator too starts sealed,
//! archives and snapshots nothing until unsealed, and stops again when sealed. No share or key
//! reaches a log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secretlog_node::unseal::{combine, parse_share};
use serde_json::{Value, json};

use crate::harness::{Node, call, node, shared};

/// A share's text (test fixtures: plain strings).
type Share = String;

/// Run the CLI; returns (exit code, stdout, stderr).
fn cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secretlog-it"));
    c.args(args)
        .env_remove("SECRETLOG_ROOT_KEY")
        .env_remove("SECRETLOG_ROOT_KEY_FILE")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("running the CLI");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `secretlog init` into `dir`; returns the five shares.
fn init(dir: &Path) -> Vec<Share> {
    let (code, out, err) = cli(&["init", "--dir", dir.to_str().unwrap(), "--json"], None);
    assert_eq!(code, 0, "{out} {err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["seal"]["shares"].clone(), r["seal"]["threshold"].clone()), (json!(5), json!(3)));
    (1..=5).map(|i| std::fs::read_to_string(dir.join(format!("share-{i}"))).unwrap().trim().to_string()).collect()
}

async fn unseal(url: &str, body: Value) -> (u16, Value) {
    let a = call("PUT", &format!("{url}/v1/sys/unseal"), None, None, Some(body)).await;
    (a.status, a.body)
}

async fn seal_status(url: &str) -> Value {
    let a = call("GET", &format!("{url}/v1/sys/seal-status"), None, None, None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

/// Submit three shares (the last through the CLI, from a file) and expect the node unsealed.
async fn unseal_with_three(n: &Node, shares: &[Share], share_file: &Path) {
    for s in &shares[..2] {
        let (code, body) = unseal(&n.url, json!({ "key": s })).await;
        assert_eq!(code, 200, "{}: {body}", n.name);
    }
    let (code, out, err) = cli(&["unseal", "--addr", &n.url, "--share", share_file.to_str().unwrap(), "--json"], None);
    assert_eq!(code, 0, "{}: {out} {err}", n.name);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["sealed"], false, "{}: {r}", n.name);
}

/// Everything but health and the seal endpoints answers 503 "Vault is sealed".
async fn assert_serves_nothing(n: &Node, token: Option<&str>) {
    let h = call("GET", &format!("{}/v1/sys/health", n.url), None, None, None).await;
    assert_eq!(h.status, 503, "{}: {:?}", n.name, h.body);
    assert_eq!(h.body["sealed"], true, "{}: {:?}", n.name, h.body);
    let url = format!("{}/v1/secret/data/sealed/probe", n.url);
    for (method, body) in [("GET", None), ("POST", Some(json!({ "data": { "v": "x" } })))] {
        let a = call(method, &url, token, None, body).await;
        assert_eq!(a.status, 503, "{} {method}: {:?}", n.name, a.body);
        assert_eq!(a.body, json!({ "errors": ["Vault is sealed"] }), "{} {method}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_node_serves_nothing_and_unseals_with_three_of_five_shares_and_not_with_two() {
    let (cluster, _g) = shared();
    let dir = tempfile::Builder::new().prefix("it-seal-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let shares = init(&d.join("init"));
    let foreign = init(&d.join("other"));
    // The root key the shares make: it must never appear in a log either.
    let key_hex = {
        let parsed: Vec<_> = shares[..3].iter().map(|s| parse_share(s).unwrap()).collect();
        combine(&parsed, 3).unwrap().to_hex().to_string()
    };

    let topic = crate::harness::fresh_topic(&cluster.bootstrap, "seal", 3).await;
    let token_file = d.join("root-token");
    let envs: Vec<(String, String)> = vec![
        ("KAFKA_BOOTSTRAP_SERVERS".into(), cluster.bootstrap.clone()),
        ("SECRETLOG_TOPIC".into(), topic.clone()),
        ("SECRETLOG_SEAL_CONFIG".into(), d.join("init/seal.json").display().to_string()),
        ("SECRETLOG_CACHE_DISK_MB".into(), "16".into()),
        ("SECRETLOG_CACHE_MEMORY_MB".into(), "16".into()),
    ];
    let writer = |name: &str| {
        let port = crate::harness::free_port();
        let mut envs = envs.clone();
        envs.push(("SECRETLOG_AUDIT_FILE".into(), d.join(format!("{name}.audit")).display().to_string()));
        let args = vec![
            "writer".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            d.join(name).display().to_string(),
            "--root-token-file".into(),
            token_file.display().to_string(),
            "--transactional-id".into(),
            format!("{topic}-writer"),
        ];
        node(d, name, port, &envs, args)
    };
    let mut a = writer("writer-a");
    a.spawn();
    let reader_port = crate::harness::free_port();
    let reader_envs: Vec<_> = envs
        .iter()
        .cloned()
        .chain([("SECRETLOG_AUDIT_FILE".to_string(), d.join("reader.audit").display().to_string())])
        .collect();
    let mut reader = node(
        d,
        "reader",
        reader_port,
        &reader_envs,
        [
            "reader",
            "--listen",
            &format!("127.0.0.1:{reader_port}"),
            "--data-dir",
            d.join("reader").to_str().unwrap(),
            "--writer-url",
            &a.url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    reader.spawn();
    let objects = d.join("objects");
    let replicator_port = crate::harness::free_port();
    let mut replicator = node(
        d,
        "replicator",
        replicator_port,
        &envs,
        [
            "replicator",
            "--listen",
            &format!("127.0.0.1:{replicator_port}"),
            "--data-dir",
            d.join("replicator").to_str().unwrap(),
            "--object-store",
            &format!("file://{}", objects.display()),
            "--snapshot-interval-secs",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    replicator.spawn();

    // Sealed: health 503, every other path 503, seal-status says 0 of 3.
    a.wait_health(503, Duration::from_secs(60)).await;
    reader.wait_health(503, Duration::from_secs(60)).await;
    replicator.wait_health(503, Duration::from_secs(60)).await;
    for n in [&a, &reader, &replicator] {
        assert_serves_nothing(n, Some("hvs.anything")).await;
        let s = seal_status(&n.url).await;
        assert_eq!(
            (s["sealed"].clone(), s["t"].clone(), s["n"].clone(), s["progress"].clone()),
            (json!(true), json!(3), json!(5), json!(0)),
            "{}",
            n.name
        );
        let (code, body) = unseal(&n.url, json!({ "key": "not a share" })).await;
        assert_eq!(code, 400, "{}: a malformed share: {body}", n.name);
    }

    // Two shares: still sealed, progress 2/3, nothing served.
    for (i, s) in shares[..2].iter().enumerate() {
        let (code, body) = unseal(&a.url, json!({ "key": s })).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            (body["sealed"].clone(), body["progress"].clone(), body["t"].clone()),
            (json!(true), json!(i + 1), json!(3))
        );
    }
    let nonce = seal_status(&a.url).await["nonce"].clone();
    assert!(nonce.as_str().is_some_and(|n| !n.is_empty()), "{nonce}");
    assert_serves_nothing(&a, Some("hvs.anything")).await;
    // The same share again counts once.
    let (code, body) = unseal(&a.url, json!({ "key": shares[1] })).await;
    assert_eq!((code, body["progress"].clone()), (200, json!(2)), "{body}");

    // A share of another cluster: 400, progress reset, still sealed.
    let (code, body) = unseal(&a.url, json!({ "key": foreign[4] })).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["errors"][0].as_str().unwrap().contains("do not reconstruct"), "{body}");
    let s = seal_status(&a.url).await;
    assert_eq!((s["sealed"].clone(), s["progress"].clone()), (json!(true), json!(0)), "{s}");
    assert_serves_nothing(&a, Some("hvs.anything")).await;
    // `reset` discards shares.
    unseal(&a.url, json!({ "key": shares[0] })).await;
    let (code, body) = unseal(&a.url, json!({ "reset": true })).await;
    assert_eq!((code, body["progress"].clone()), (200, json!(0)), "{body}");

    // The CLI's online mode: one share per call, from a file or standard input, progress printed.
    let (code, out, err) = cli(&["unseal", "--addr", &a.url, "--share", "-"], Some(&shares[3]));
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("1 of 3"), "{out}");
    let share_file = |i: usize| d.join(format!("init/share-{i}"));
    // Three of five (shares 4, 1, 5): unsealed; the writer leads and takes writes.
    unseal(&a.url, json!({ "key": shares[0] })).await;
    let started = Instant::now();
    let (code, out, err) = cli(&["unseal", "--addr", &a.url, "--share", share_file(5).to_str().unwrap()], None);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("Unsealed"), "{out}");
    let unsealed_after = started.elapsed();
    a.wait_health(200, Duration::from_secs(90)).await;
    let leading_after = started.elapsed();
    assert_eq!(seal_status(&a.url).await["sealed"], false);
    let token = std::fs::read_to_string(&token_file).expect("the root token file").trim().to_string();
    let w = call(
        "POST",
        &format!("{}/v1/secret/data/app/db", a.url),
        Some(&token),
        None,
        Some(json!({ "data": { "password": "s3cret" } })),
    )
    .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let index = w.index.expect("index");

    // The reader is still sealed until its own shares arrive; then it reads what was written.
    assert_serves_nothing(&reader, Some(&token)).await;
    unseal_with_three(&reader, &shares[1..3], &share_file(4)).await;
    reader.wait_health(473, Duration::from_secs(60)).await;
    let r = call("GET", &format!("{}/v1/secret/data/app/db", reader.url), Some(&token), Some(&index), None).await;
    assert_eq!((r.status, r.body["data"]["data"]["password"].clone()), (200, json!("s3cret")), "{:?}", r.body);

    // The sealed replicator has archived nothing and takes no snapshot; unsealed, it archives
    // the log and snapshots the state; sealed again, it stops.
    assert_serves_nothing(&replicator, Some(&token)).await;
    let snapshot = |index: String| {
        let url = format!("{}/v1/sys/secretlog/snapshot", replicator.url);
        let token = token.clone();
        async move { call("POST", &url, Some(&token), Some(&index), None).await }
    };
    assert_eq!(snapshot(index.clone()).await.status, 503);
    assert!(!objects.join("archive").exists(), "a sealed replicator archives nothing");
    unseal_with_three(&replicator, &shares[..2], &share_file(3)).await;
    let health = replicator.wait_health(200, Duration::from_secs(60)).await;
    assert_eq!(health["sealed"], false, "{health}");
    // The replicator materializes the log from its start once unsealed: 412 until it has the
    // write, 403 until it has the root token (a control record, maybe on another partition).
    let snap = crate::harness::eventually(Duration::from_secs(60), "a snapshot with the write", || async {
        let a = snapshot(index.clone()).await;
        assert!(matches!(a.status, 200 | 403 | 412), "{:?}", a.body);
        (a.status == 200).then_some(a)
    })
    .await;
    assert_eq!(snap.body["data"]["secrets"], 1, "the snapshot has the write: {:?}", snap.body);
    let archived = crate::harness::eventually(Duration::from_secs(60), "the write archived", || async {
        let h = call("GET", &format!("{}/v1/sys/health", replicator.url), None, None, None).await;
        let segments = h.body["secretlog"]["archive"]["segments_written"].as_u64().unwrap_or(0);
        (segments > 0).then_some(segments)
    })
    .await;
    assert!(objects.join("archive").exists(), "{archived} segment(s) reported but none in the store");
    let s = call("PUT", &format!("{}/v1/sys/seal", replicator.url), Some(&token), None, None).await;
    assert_eq!(s.status, 204, "{:?}", s.body);
    assert_serves_nothing(&replicator, Some(&token)).await;
    assert_eq!(seal_status(&replicator.url).await["sealed"], true);

    // A second writer, unsealed, stands by.
    let mut b = writer("writer-b");
    b.spawn();
    b.wait_health(503, Duration::from_secs(60)).await;
    unseal_with_three(&b, &[shares[4].clone(), shares[2].clone()], &share_file(2)).await;
    b.wait_health(429, Duration::from_secs(60)).await;

    // Sealing needs the root token (or sudo on sys/seal).
    for n in [&a, &reader] {
        let no = call("PUT", &format!("{}/v1/sys/seal", n.url), Some("hvs.not-a-token"), None, None).await;
        assert_eq!(no.status, 403, "{}: {:?}", n.name, no.body);
    }
    // Sealing the leader: it serves nothing, and the standby takes over.
    let started = Instant::now();
    let s = call("PUT", &format!("{}/v1/sys/seal", a.url), Some(&token), None, None).await;
    assert_eq!(s.status, 204, "{:?}", s.body);
    let sealed_after = started.elapsed();
    assert_serves_nothing(&a, Some(&token)).await;
    assert_eq!(seal_status(&a.url).await["sealed"], true);
    b.wait_health(200, Duration::from_secs(60)).await;
    let handover_after = started.elapsed();
    eprintln!(
        "SEAL {}",
        json!({
            "third_share_to_unsealed_ms": unsealed_after.as_millis() as u64,
            "third_share_to_leading_ms": leading_after.as_millis() as u64,
            "seal_call_ms": sealed_after.as_millis() as u64,
            "seal_to_standby_leading_ms": handover_after.as_millis() as u64,
        })
    );
    let w = call(
        "POST",
        &format!("{}/v1/secret/data/app/db", b.url),
        Some(&token),
        None,
        Some(json!({ "data": { "password": "v2" } })),
    )
    .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let index = w.index.expect("index");
    // Sealing the reader too, and unsealing both again.
    let s = call("PUT", &format!("{}/v1/sys/seal", reader.url), Some(&token), None, None).await;
    assert_eq!(s.status, 204, "{:?}", s.body);
    assert_serves_nothing(&reader, Some(&token)).await;
    let (code, body) = unseal(&a.url, json!({ "key": shares[0] })).await;
    assert_eq!((code, body["progress"].clone()), (200, json!(1)), "a fresh attempt after sealing: {body}");
    unseal_with_three(&a, &shares[1..3], &share_file(5)).await;
    a.wait_health(429, Duration::from_secs(60)).await;
    unseal_with_three(&reader, &shares[2..4], &share_file(1)).await;
    reader.wait_health(473, Duration::from_secs(60)).await;
    for n in [&a, &reader] {
        let r = call("GET", &format!("{}/v1/secret/data/app/db", n.url), Some(&token), Some(&index), None).await;
        assert_eq!(
            (r.status, r.body["data"]["data"]["password"].clone()),
            (200, json!("v2")),
            "{}: {:?}",
            n.name,
            r.body
        );
    }

    // No share and no key in any node's log or audit file.
    let files: Vec<PathBuf> = ["writer-a", "writer-b", "reader", "replicator"]
        .iter()
        .flat_map(|n| [d.join(format!("{n}.log")), d.join(format!("{n}.audit"))])
        .collect();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for s in shares.iter().chain(&foreign) {
            assert!(!text.contains(s.as_str()), "a share appears in {}", f.display());
        }
        assert!(!text.contains(&key_hex), "the root key appears in {}", f.display());
    }
    assert!(
        std::fs::read_to_string(d.join("writer-a.audit")).is_ok_and(|t| t.contains("v1/sys/unseal")),
        "unseal requests are audited"
    );
}
