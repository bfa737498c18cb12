//! Transport: TLS on every node's listener (with certificate reload) and the request limits
//! (431, 413, 429 per token, 503 per full route group) — on real node processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Node, Stack, StackOpts, call, eventually, free_port, fresh_topic, node, shared};

/// A CA and the leaves it signs, as an operator's private PKI would be.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate: PEM of the certificate and of its key, and the DER a client sees.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "secretlog test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("CA key");
        Pki { ca: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    /// A server certificate for `localhost` and 127.0.0.1 with this serial.
    fn leaf(&self, serial: u64) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("secretlog node {serial}"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

/// The files a node serves from: replaced in place to rotate.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn write(&self, leaf: &Leaf) {
        // Written to a temporary name and renamed, as a careful operator (or cert-manager) does,
        // so a check never reads half a file; the pair still changes one file at a time.
        for (path, text) in [(&self.cert, &leaf.cert), (&self.key, &leaf.key)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("writing a certificate file");
            std::fs::rename(&tmp, path).expect("renaming a certificate file");
        }
    }
}

/// A client trusting the test CA, opening a new connection for every request (so each one
/// shows the certificate served *now*) and reporting the peer certificate.
fn tls_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem")])
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("TLS client")
}

/// The certificate a new connection to `url` is served.
async fn peer_certificate(client: &reqwest::Client, url: &str) -> Option<Vec<u8>> {
    let r = client.get(format!("{url}/v1/sys/health")).send().await.ok()?;
    r.extensions().get::<reqwest::tls::TlsInfo>()?.peer_certificate().map(<[u8]>::to_vec)
}

async fn wait_https_health(client: &reqwest::Client, n: &Node, code: u16) {
    let url = format!("{}/v1/sys/health", n.url);
    eventually(Duration::from_secs(90), &format!("{} at health {code} over HTTPS", n.name), || async {
        match client.get(&url).send().await {
            Ok(r) if r.status().as_u16() == code => Some(()),
            _ => None,
        }
    })
    .await;
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: &str,
    index: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut rb = client
        .request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), url)
        .header("X-Vault-Token", token);
    if let Some(i) = index {
        rb = rb.header("X-Secretlog-Index", i);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b.to_string());
    }
    let r = rb.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let index = r.headers().get("x-secretlog-index").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = r.json().await.unwrap_or(Value::Null);
    (status, index, body)
}

fn tls_args(files: &CertFiles) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        files.cert.display().to_string(),
        "--tls-key".into(),
        files.key.display().to_string(),
        "--tls-reload-interval-ms".into(),
        "200".into(),
    ]
}

fn https(n: &mut Node, port: u16) {
    n.url = format!("https://127.0.0.1:{port}");
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).map(|l| l.contains(needle)).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_every_listener_forwards_and_reloads_a_replaced_certificate() {
    let (cluster, _g) = shared();
    let dir = tempfile::Builder::new().prefix("it-tls-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let topic = fresh_topic(&cluster.bootstrap, "tls", 3).await;
    let root_key_file = dir.path().join("root.key");
    secretlog_ops::stack::ensure_root_key(&root_key_file).expect("root key");

    let pki = Pki::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pki.ca.pem()).expect("CA file");
    let files = CertFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
    let first = pki.leaf(1001);
    files.write(&first);
    let client = tls_client(&pki.ca.pem());

    let envs = vec![
        ("KAFKA_BOOTSTRAP_SERVERS".to_string(), cluster.bootstrap.clone()),
        ("SECRETLOG_ROOT_KEY_FILE".to_string(), root_key_file.display().to_string()),
        ("SECRETLOG_TOPIC".to_string(), topic.clone()),
        ("SECRETLOG_CACHE_DISK_MB".to_string(), "16".to_string()),
        ("SECRETLOG_CACHE_MEMORY_MB".to_string(), "16".to_string()),
        // Nodes trust the test CA when they call each other (forwarding to the leader).
        ("SECRETLOG_CACERT".to_string(), ca_file.display().to_string()),
    ];
    let token_file = dir.path().join("root-token");
    let wport = free_port();
    let mut args: Vec<String> = vec![
        "writer".into(),
        "--listen".into(),
        format!("127.0.0.1:{wport}"),
        "--data-dir".into(),
        dir.path().join("writer").display().to_string(),
        "--root-token-file".into(),
        token_file.display().to_string(),
        "--transactional-id".into(),
        format!("{topic}-writer"),
        "--advertise-url".into(),
        format!("https://127.0.0.1:{wport}"),
    ];
    args.extend(tls_args(&files));
    let mut writer = node(dir.path(), "writer", wport, &envs, args);
    https(&mut writer, wport);
    writer.spawn();
    wait_https_health(&client, &writer, 200).await;
    let token = std::fs::read_to_string(&token_file).expect("root token file").trim().to_string();

    let rport = free_port();
    let mut args: Vec<String> = vec![
        "reader".into(),
        "--listen".into(),
        format!("127.0.0.1:{rport}"),
        "--data-dir".into(),
        dir.path().join("reader").display().to_string(),
        "--writer-url".into(),
        writer.url.clone(),
    ];
    args.extend(tls_args(&files));
    let mut reader = node(dir.path(), "reader", rport, &envs, args);
    https(&mut reader, rport);
    reader.spawn();

    let pport = free_port();
    let mut args: Vec<String> = vec![
        "replicator".into(),
        "--listen".into(),
        format!("127.0.0.1:{pport}"),
        "--data-dir".into(),
        dir.path().join("replicator").display().to_string(),
        "--object-store".into(),
        format!("file://{}", dir.path().join("objects").display()),
        "--snapshot-interval-secs".into(),
        "0".into(),
    ];
    args.extend(tls_args(&files));
    let mut replicator = node(dir.path(), "replicator", pport, &envs, args);
    https(&mut replicator, pport);
    replicator.spawn();
    wait_https_health(&client, &reader, 473).await;

    // HTTPS writes and reads, with the CA; a write to the reader is forwarded over HTTPS.
    let (status, index, body) = send(
        &client,
        "POST",
        &format!("{}/v1/secret/data/tls/a", writer.url),
        &token,
        None,
        Some(json!({"data": {"v": "direct"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, index2, body) = send(
        &client,
        "POST",
        &format!("{}/v1/secret/data/tls/b", reader.url),
        &token,
        None,
        Some(json!({"data": {"v": "forwarded"}})),
    )
    .await;
    assert_eq!(status, 200, "a write to the reader is forwarded to the leader over TLS: {body}\n{}", reader.log_tail());
    for (path, idx, want) in [("a", &index, "direct"), ("b", &index2, "forwarded")] {
        let (status, _, body) =
            send(&client, "GET", &format!("{}/v1/secret/data/tls/{path}", reader.url), &token, idx.as_deref(), None)
                .await;
        assert_eq!((status, body["data"]["data"]["v"].as_str()), (200, Some(want)), "{body}");
    }
    // The replicator's listener is HTTPS too (any answer over TLS will do: its health code
    // depends on the archive, not on transport).
    eventually(Duration::from_secs(60), "the replicator answering over HTTPS", || async {
        client.get(format!("{}/v1/sys/health", replicator.url)).send().await.ok().map(|_| ())
    })
    .await;

    // Without the CA, the handshake fails; plain HTTP to the TLS port gets Go's (Vault's) 400.
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let e = untrusting
        .get(format!("{}/v1/sys/health", writer.url))
        .send()
        .await
        .expect_err("a client that does not trust the CA must not connect");
    assert!(e.is_connect(), "{e:?}");
    let plain = untrusting.get(format!("http://127.0.0.1:{wport}/v1/sys/health")).send().await;
    match plain {
        Ok(r) => {
            assert_eq!(r.status().as_u16(), 400);
            let text = r.text().await.unwrap_or_default();
            assert!(text.contains("HTTP request to an HTTPS server"), "{text}");
        }
        Err(e) => panic!("plain HTTP to the TLS port should get a 400 that says why, got {e:?}"),
    }
    assert_eq!(peer_certificate(&client, &writer.url).await.as_deref(), Some(first.der.as_slice()));

    // Rotation: replace the files; new connections get the new leaf, on every node, with no
    // restart.
    let second = pki.leaf(1002);
    files.write(&second);
    for n in [&writer, &reader, &replicator] {
        eventually(Duration::from_secs(30), &format!("{} serving the new certificate", n.name), || async {
            (peer_certificate(&client, &n.url).await.as_deref() == Some(second.der.as_slice())).then_some(())
        })
        .await;
    }
    // The reader still forwards to the writer (a new connection, under the new certificate).
    let (status, _, body) = send(
        &client,
        "POST",
        &format!("{}/v1/secret/data/tls/c", reader.url),
        &token,
        None,
        Some(json!({"data": {"v": "after rotation"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A bad replacement (a certificate with another key) is refused, loudly, and the good
    // certificate stays in use.
    let third = pki.leaf(1003);
    let other = pki.leaf(1004);
    files.write(&Leaf { cert: third.cert.clone(), key: other.key.clone(), der: third.der.clone() });
    eventually(Duration::from_secs(30), "the writer refusing the mismatched pair", || async {
        log_has(&writer.log, "CANNOT BE USED").then_some(())
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            peer_certificate(&client, &writer.url).await.as_deref(),
            Some(second.der.as_slice()),
            "the previous certificate is still served after a bad replacement"
        );
    }
    let metrics =
        client.get(format!("{}/metrics", writer.url)).send().await.expect("metrics").text().await.unwrap_or_default();
    assert!(
        metrics.lines().any(|l| l.starts_with("secretlog_tls_reloads_total") && l.contains("result=\"refused\"")),
        "{metrics}"
    );
    // No key material and no token in any log.
    for n in [&writer, &reader, &replicator] {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        assert!(!log.contains("PRIVATE KEY"), "{} logged key material", n.name);
        assert!(!log.contains(&token), "{} logged the root token", n.name);
    }
    // Fixing the pair brings it back.
    files.write(&third);
    eventually(Duration::from_secs(30), "the writer serving the fixed pair", || async {
        (peer_certificate(&client, &writer.url).await.as_deref() == Some(third.der.as_slice())).then_some(())
    })
    .await;
    replicator.stop();
    reader.stop();
    writer.stop();
}

/// The reader node a limits test talks to, with `env` on top of the stack's settings.
async fn limited_reader(s: &Stack, name: &str, env: &[(&str, &str)]) -> Node {
    let r = s.new_reader(name, env);
    r.wait_health(473, Duration::from_secs(60)).await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_oversize_heads_and_bodies_fast_tokens_and_full_route_groups() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "limits", readers: 0, ..Default::default() }).await;
    let idx = s.put("limits/a", json!({"v": 1})).await;

    // An oversize head: 431 with a Vault-style body (default limit 64 KiB).
    let r = crate::harness::client()
        .get(format!("{}/v1/secret/data/limits/a", s.writer.url))
        .header("X-Vault-Token", &s.token)
        .header("X-Filler", "x".repeat(80 * 1024))
        .send()
        .await
        .expect("oversize head");
    assert_eq!(r.status().as_u16(), 431);
    let body: Value = r.json().await.expect("a JSON body");
    assert_eq!(body, json!({"errors": ["request header fields too large"]}));
    // An oversize body: 413, as before.
    let big = format!("{{\"data\": {{\"v\": \"{}\"}}}}", "x".repeat(3 * 1024 * 1024));
    let r = crate::harness::client()
        .post(format!("{}/v1/secret/data/limits/big", s.writer.url))
        .header("X-Vault-Token", &s.token)
        .body(big)
        .send()
        .await
        .expect("oversize body");
    assert_eq!(r.status().as_u16(), 413);

    // Per-token rate: a token over its burst gets 429 with Retry-After; another token does not.
    put_policy(&s, "limits-read", r#"path "secret/data/*" { capabilities = ["read"] }"#).await;
    let a = call(
        "POST",
        &format!("{}/v1/auth/token/create", s.writer.url),
        Some(&s.token),
        None,
        Some(json!({"policies": ["limits-read"]})),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let other = a.body["auth"]["client_token"].as_str().expect("client_token").to_string();
    let other_idx = a.index.expect("index");
    let rated = limited_reader(
        &s,
        "reader-rated",
        &[("SECRETLOG_RATE_LIMIT_PER_TOKEN", "0.2"), ("SECRETLOG_RATE_LIMIT_BURST", "3")],
    )
    .await;
    let url = format!("{}/v1/secret/data/limits/a", rated.url);
    for i in 0..3 {
        let a = call("GET", &url, Some(&s.token), Some(&idx), None).await;
        assert_eq!(a.status, 200, "request {i} is within the burst: {:?}", a.body);
    }
    let r = crate::harness::client().get(&url).header("X-Vault-Token", &s.token).send().await.expect("4th");
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("Retry-After");
    assert!((1..=5).contains(&retry), "0.2 requests/s: the next one is at most 5 s away, got {retry}");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body, json!({"errors": ["rate limit quota exceeded"]}));
    let b = call("GET", &url, Some(&other), Some(&other_idx), None).await;
    assert_eq!(b.status, 200, "another token has a bucket of its own: {:?}", b.body);
    let health = crate::harness::client().get(format!("{}/v1/sys/health", rated.url)).send().await.expect("health");
    assert_eq!(health.status().as_u16(), 473, "health is never rate-limited");
    let metrics = call("GET", &format!("{}/metrics", rated.url), None, None, None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.lines().any(|l| l.starts_with("secretlog_requests_refused_total") && l.contains("reason=\"rate_limit\"")),
        "{text}"
    );
    assert!(!text.contains(&s.token), "metrics never carry a token");

    // Bulkheads: two slow reads (each waits for an index the reader will not reach) fill the
    // kv-read group; a third read is refused at once with 503 while health, writes and sys
    // answer.
    let full = limited_reader(
        &s,
        "reader-bulkhead",
        &[
            ("SECRETLOG_MAX_CONCURRENT_KV_READ", "2"),
            ("SECRETLOG_BULKHEAD_QUEUE", "0"),
            ("SECRETLOG_CONSISTENCY_WAIT_MS", "8000"),
            ("SECRETLOG_ON_STALE", "fail"),
        ],
    )
    .await;
    let url = format!("{}/v1/secret/data/limits/a", full.url);
    // A holder refused because a probe below held the other slot at that instant tries again, so
    // both end up holding one.
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (url, token) = (url.clone(), s.token.clone());
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let status = call("GET", &url, Some(&token), Some("0:999999999"), None).await.status;
                    if status != 503 || std::time::Instant::now() > deadline {
                        return status;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await; // pace the retries
                }
            })
        })
        .collect();
    let refused = eventually(Duration::from_secs(5), "a read refused by the full kv-read bulkhead", || async {
        let r = crate::harness::client().get(&url).header("X-Vault-Token", &s.token).send().await.ok()?;
        (r.status().as_u16() == 503).then_some(r)
    })
    .await;
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = refused.json().await.expect("JSON");
    let msg = body["errors"][0].as_str().unwrap_or_default();
    assert!(msg.contains("overloaded") && msg.contains("kv-read"), "{body}");
    // Meanwhile the other groups and health answer.
    let health = crate::harness::client().get(format!("{}/v1/sys/health", full.url)).send().await.expect("health");
    assert_eq!(health.status().as_u16(), 473);
    let w = call(
        "POST",
        &format!("{}/v1/secret/data/limits/during", full.url),
        Some(&s.token),
        None,
        Some(json!({"data": {"v": 2}})),
    )
    .await;
    assert_eq!(w.status, 200, "writes (forwarded) are another group: {:?}", w.body);
    let p =
        call("GET", &format!("{}/v1/sys/policies/acl/limits-read", full.url), Some(&s.token), Some(&idx), None).await;
    assert_ne!(p.status, 503, "sys is another group: {:?}", p.body);
    for h in holders {
        assert_eq!(h.await.expect("holder"), 412, "the slow reads end with the reader's stale answer");
    }
    // Freed slots serve again.
    let a = call("GET", &url, Some(&s.token), Some(&idx), None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
}

async fn put_policy(s: &Stack, name: &str, policy: &str) {
    let url = format!("{}/v1/sys/policies/acl/{name}", s.writer.url);
    let a = call("PUT", &url, Some(&s.token), None, Some(json!({ "policy": policy }))).await;
    assert_eq!(a.status, 204, "{:?}", a.body);
}
