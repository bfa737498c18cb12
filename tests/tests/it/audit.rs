//! The audit log (issue #8): every request and answer of a node as a JSON line, with no token or
//! secret value in plaintext; and failing closed — a node that cannot write its audit log serves
//! nothing, unless `--audit-fail-open`.

mod devices;
mod rotation;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Cluster, Stack, StackOpts, call, client, shared};

const SECRET: &str = "correct-horse-battery-staple-0xA0D17";

/// `secretlog_audit_failures_total` on a node's `/metrics`.
async fn audit_failures(url: &str) -> f64 {
    let text = client().get(format!("{url}/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|l| l.starts_with("secretlog_audit_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A stack (named `name`) whose one reader audits to a file: the directory holding the file (kept
/// while the stack runs), the file, and the stack.
async fn with_audited_reader(cluster: &'static Cluster, name: &'static str) -> (tempfile::TempDir, PathBuf, Stack) {
    let logs = tempfile::Builder::new()
        .prefix(&format!("it-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let audit_file = logs.path().join("audit-reader.log");
    let s = Stack::start(
        cluster,
        StackOpts {
            name,
            readers: 1,
            reader_args: vec!["--audit-file".into(), audit_file.display().to_string()],
            ..Default::default()
        },
    )
    .await;
    (logs, audit_file, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_are_audited_without_plaintext_secrets_or_tokens() {
    let (cluster, _g) = shared();
    let (_logs, audit_file, s) = with_audited_reader(cluster, "audit").await;
    let reader = &s.readers[0].url;

    // A write through the reader (audited there, then forwarded) and a read on it.
    let w = call(
        "POST",
        &format!("{reader}/v1/secret/data/audit/db"),
        Some(&s.token),
        None,
        Some(json!({ "data": { "password": SECRET, "nested": { "also": SECRET } } })),
    )
    .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let r = call("GET", &format!("{reader}/v1/secret/data/audit/db"), Some(&s.token), w.index.as_deref(), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["data"]["password"], SECRET);

    let text = std::fs::read_to_string(&audit_file).expect("the audit log exists");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let find = |kind: &str, op: &str| {
        lines
            .iter()
            .find(|l| {
                l["type"] == kind
                    && l["request"]["operation"] == op
                    && l["request"]["path"] == "v1/secret/data/audit/db"
            })
            .unwrap_or_else(|| panic!("no {kind} entry for the {op}:\n{text}"))
    };
    for op in ["update", "read"] {
        let req = find("request", op);
        let resp = find("response", op);
        assert_eq!(req["request"]["id"], resp["request"]["id"]);
        assert_eq!(req["request"]["remote_address"], "127.0.0.1", "{req}");
        assert!(req["auth"]["client_token"].as_str().is_some_and(|t| t.starts_with("hmac-sha256:")), "{req}");
        assert_eq!(req["auth"]["policies"], json!(["root"]), "{req}");
        assert_eq!(resp["response"]["status"], 200, "{resp}");
        assert_eq!(resp["error"], "", "{resp}");
        assert!(req["time"].as_str().is_some_and(|t| !t.is_empty()));
    }
    let read = find("response", "read");
    let pw = read["response"]["body"]["data"]["data"]["password"].as_str().expect("the field name is kept");
    assert!(pw.starts_with("hmac-sha256:"), "{read}");
    // The same value gives the same HMAC, in the request body and in the answer.
    assert_eq!(find("request", "update")["request"]["data"]["data"]["password"], pw);

    assert!(!text.contains(SECRET), "the audit log holds the secret in plaintext:\n{text}");
    assert!(!text.contains(&s.token), "the audit log holds the token in plaintext:\n{text}");
    // Health and metrics are not audited.
    assert!(!text.contains("v1/sys/health"), "{text}");
}

/// A write's answer carries the id of the request its audit entries record, so a client's
/// `request_id` finds the request in the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writes_answer_names_the_request_its_audit_entries_record() {
    let (cluster, _g) = shared();
    let logs =
        tempfile::Builder::new().prefix("it-audit-id-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let audit_file = logs.path().join("audit-writer.log");
    let s = Stack::start(
        cluster,
        StackOpts {
            name: "audit-id",
            readers: 0,
            writer_env: vec![("SECRETLOG_AUDIT_FILE".into(), audit_file.display().to_string())],
            ..Default::default()
        },
    )
    .await;
    let url = format!("{}/v1/secret/data/audit/id", s.writer.url);
    let mut ids = Vec::new();
    for (method, content_type) in [("POST", "application/json"), ("PATCH", "application/merge-patch+json")] {
        let a = client()
            .request(method.parse().expect("a method"), &url)
            .header("X-Vault-Token", &s.token)
            .header("Content-Type", content_type)
            .body(json!({ "data": { "n": method } }).to_string())
            .send()
            .await
            .expect("the write");
        assert_eq!(a.status(), 200, "{method}");
        let body: Value = a.json().await.expect("JSON");
        ids.push((method, body["request_id"].as_str().expect("request_id").to_string()));
    }
    let text = std::fs::read_to_string(&audit_file).expect("the audit log exists");
    let entries: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    for (method, id) in ids {
        for kind in ["request", "response"] {
            assert!(
                entries.iter().any(|e| e["type"] == kind
                    && e["request"]["method"] == method
                    && e["request"]["path"] == "v1/secret/data/audit/id"
                    && e["request"]["id"] == id.as_str()),
                "no {kind} entry of the {method} with the answer's request_id {id}:\n{text}"
            );
        }
    }
}

/// `GET sys/audit` lists a node's devices and `sys/audit-hash/<device>` gives the hash its trail
/// holds for an input, so an operator can find a value or a token in the trail without it
/// holding them; both need their capability, and a node without the device says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_value_and_a_token_in_the_trail_through_sys_audit_hash() {
    let (cluster, _g) = shared();
    let (_logs, audit_file, s) = with_audited_reader(cluster, "audit-hash").await;
    let reader = &s.readers[0].url;
    let w = call(
        "POST",
        &format!("{reader}/v1/secret/data/audit/hash"),
        Some(&s.token),
        None,
        Some(json!({ "data": { "password": SECRET } })),
    )
    .await;
    assert_eq!(w.status, 200, "{:?}", w.body);

    let list = call("GET", &format!("{reader}/v1/sys/audit"), Some(&s.token), None, None).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let file = &list.body["data"]["file/"];
    assert_eq!(file["type"], "file", "{}", list.body);
    assert_eq!(file["options"]["file_path"], audit_file.display().to_string(), "{}", list.body);
    assert_eq!(list.body["file/"], *file, "Vault answers the devices at the top level too");

    let hash = |input: &str| {
        let url = format!("{reader}/v1/sys/audit-hash/file");
        let token = s.token.clone();
        let body = json!({ "input": input });
        async move {
            let a = call("POST", &url, Some(&token), None, Some(body)).await;
            assert_eq!(a.status, 200, "{:?}", a.body);
            a.body["data"]["hash"].as_str().expect("a hash").to_string()
        }
    };
    let (of_secret, of_token) = (hash(SECRET).await, hash(&s.token).await);
    let text = std::fs::read_to_string(&audit_file).expect("the audit log exists");
    let write = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .find(|l| l["type"] == "request" && l["request"]["path"] == "v1/secret/data/audit/hash")
        .expect("the write's request entry");
    assert_eq!(write["request"]["data"]["data"]["password"], of_secret.as_str(), "{write}");
    assert_eq!(write["auth"]["client_token"], of_token.as_str(), "{write}");
    assert!(!text.contains(SECRET) && !text.contains(&s.token), "the hash requests left plaintext in the trail");

    let unknown =
        call("POST", &format!("{reader}/v1/sys/audit-hash/nope"), Some(&s.token), None, Some(json!({ "input": "x" })))
            .await;
    assert_eq!(unknown.status, 400, "{:?}", unknown.body);
    // The writer of this stack audits nowhere: it lists no device and knows none to hash with.
    let none = call("GET", &format!("{}/v1/sys/audit", s.writer.url), Some(&s.token), None, None).await;
    assert_eq!((none.status, &none.body["data"]), (200, &json!({})), "{:?}", none.body);
    let none = call(
        "POST",
        &format!("{}/v1/sys/audit-hash/file", s.writer.url),
        Some(&s.token),
        None,
        Some(json!({ "input": "x" })),
    )
    .await;
    assert_eq!(none.status, 400, "{:?}", none.body);

    // A token without the capabilities is refused both.
    let created = call(
        "POST",
        &format!("{}/v1/auth/token/create", s.writer.url),
        Some(&s.token),
        None,
        Some(json!({ "policies": ["default"] })),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let weak = created.body["auth"]["client_token"].as_str().expect("a token").to_string();
    let index = created.index.as_deref();
    let a = call("GET", &format!("{reader}/v1/sys/audit"), Some(&weak), index, None).await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    let a =
        call("POST", &format!("{reader}/v1/sys/audit-hash/file"), Some(&weak), index, Some(json!({ "input": "x" })))
            .await;
    assert_eq!(a.status, 403, "{:?}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_audit_refuses_reads_unless_fail_open() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "audit-full", readers: 0, ..Default::default() }).await;
    let idx = s.put("audit/full", json!({ "password": SECRET })).await;
    let mut closed = s.new_reader("reader-full", &[("SECRETLOG_AUDIT_FILE", "/dev/full")]);
    let mut open = s.new_reader(
        "reader-fail-open",
        &[("SECRETLOG_AUDIT_FILE", "/dev/full"), ("SECRETLOG_AUDIT_FAIL_OPEN", "true")],
    );
    // Health is not audited: both come up.
    closed.wait_health(473, Duration::from_secs(60)).await;
    open.wait_health(473, Duration::from_secs(60)).await;

    let path = "v1/secret/data/audit/full";
    let refused = call("GET", &format!("{}/{path}", closed.url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    let err = refused.body["errors"][0].as_str().unwrap_or_default();
    assert!(err.starts_with("audit log unavailable: "), "{:?}", refused.body);
    assert!(!refused.body.to_string().contains(SECRET), "the read was served: {:?}", refused.body);
    // Writes are refused too, before they reach the writer.
    let w =
        call("POST", &format!("{}/{path}", closed.url), Some(&s.token), None, Some(json!({"data": {"x": "y"}}))).await;
    assert_eq!(w.status, 503, "{:?}", w.body);
    let still = call("GET", &format!("{}/{path}", s.writer.url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(still.body["data"]["metadata"]["version"], 1, "the refused write was executed: {:?}", still.body);
    assert!(audit_failures(&closed.url).await >= 2.0);

    let served = call("GET", &format!("{}/{path}", open.url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(served.status, 200, "{:?}", served.body);
    assert_eq!(served.body["data"]["data"]["password"], SECRET);
    assert!(audit_failures(&open.url).await > 0.0, "--audit-fail-open still counts the failures");
    closed.stop();
    open.stop();
}

/// Every record of `topic` from the beginning, until `done` says enough was read (or panic after
/// `timeout`), as (key, JSON value).
async fn audit_records(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "it-audit-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("tpl");
    c.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        assert!(std::time::Instant::now() < deadline, "audit topic {topic} after {timeout:?}: {out:?}");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(m.payload().unwrap_or_default())
                .unwrap_or_else(|e| panic!("an audit record that is not JSON ({e}): {:?}", m.payload()));
            out.push((key, value));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_arrive_in_the_audit_topic_without_plaintext_values_or_tokens() {
    let (cluster, _g) = shared();
    let topic = crate::harness::fresh_topic(&cluster.bootstrap, "audit-log", 1).await;
    let s = Stack::start(
        cluster,
        StackOpts {
            name: "audit-kafka",
            readers: 1,
            reader_args: vec!["--audit-kafka-topic".into(), topic.clone()],
            ..Default::default()
        },
    )
    .await;
    let reader = &s.readers[0].url;
    let w = call(
        "POST",
        &format!("{reader}/v1/secret/data/audit/kafka"),
        Some(&s.token),
        None,
        Some(json!({ "data": { "password": SECRET } })),
    )
    .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let r =
        call("GET", &format!("{reader}/v1/secret/data/audit/kafka"), Some(&s.token), w.index.as_deref(), None).await;
    assert_eq!(r.body["data"]["data"]["password"], SECRET, "{:?}", r.body);

    let on_path = |l: &Value, kind: &str, op: &str| {
        l["type"] == kind && l["request"]["operation"] == op && l["request"]["path"] == "v1/secret/data/audit/kafka"
    };
    let records = audit_records(&s.bootstrap, &topic, Duration::from_secs(30), |rs| {
        ["update", "read"]
            .iter()
            .all(|op| ["request", "response"].iter().all(|kind| rs.iter().any(|(_, l)| on_path(l, kind, op))))
    })
    .await;
    for (key, l) in &records {
        assert_eq!(l["node"], "reader", "{l}");
        assert_eq!(&l["request"]["id"], key, "a record is keyed by its request id");
        assert!(l["auth"]["client_token"].as_str().is_some_and(|t| t.starts_with("hmac-sha256:")), "{l}");
    }
    let (_, read) = records.iter().find(|(_, l)| on_path(l, "response", "read")).unwrap();
    assert_eq!(read["response"]["status"], 200);
    assert!(
        read["response"]["body"]["data"]["data"]["password"].as_str().is_some_and(|p| p.starts_with("hmac-sha256:"))
    );
    // A request's entry comes before its answer's.
    let pos = |kind: &str| records.iter().position(|(_, l)| on_path(l, kind, "update")).unwrap();
    assert!(pos("request") < pos("response"));
    let all = records.iter().map(|(_, l)| l.to_string()).collect::<Vec<_>>().join("\n");
    assert!(!all.contains(SECRET), "the audit topic holds the secret in plaintext:\n{all}");
    assert!(!all.contains(&s.token), "the audit topic holds the token in plaintext:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_audit_sink_that_cannot_record_refuses_requests_alone_but_not_beside_a_working_file() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "audit-kafka-down", readers: 0, ..Default::default() }).await;
    let idx = s.put("audit/kafka-down", json!({ "password": SECRET })).await;
    // A topic that does not exist (the brokers do not auto-create topics): no entry is ever
    // acknowledged there.
    let missing = format!("it.audit.missing.{:08x}", rand::random::<u32>());
    let kafka_only = [("SECRETLOG_AUDIT_KAFKA_TOPIC", missing.as_str()), ("SECRETLOG_AUDIT_KAFKA_TIMEOUT_MS", "1500")];
    let mut alone = s.new_reader("reader-kafka-audit-only", &kafka_only);
    let logs =
        tempfile::Builder::new().prefix("it-audit-both-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let audit_file = logs.path().join("audit.log");
    let file = audit_file.display().to_string();
    let mut both = s.new_reader(
        "reader-file-and-kafka-audit",
        &[kafka_only[0], kafka_only[1], ("SECRETLOG_AUDIT_FILE", file.as_str())],
    );
    alone.wait_health(473, Duration::from_secs(60)).await;
    both.wait_health(473, Duration::from_secs(60)).await;

    let path = "v1/secret/data/audit/kafka-down";
    let refused = call("GET", &format!("{}/{path}", alone.url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    let err = refused.body["errors"][0].as_str().unwrap_or_default();
    assert!(err.starts_with("audit log unavailable: ") && err.contains(&missing), "{:?}", refused.body);
    assert!(!refused.body.to_string().contains(SECRET), "the read was served: {:?}", refused.body);
    let w =
        call("POST", &format!("{}/{path}", alone.url), Some(&s.token), None, Some(json!({"data": {"x": "y"}}))).await;
    assert_eq!(w.status, 503, "{:?}", w.body);
    let still = call("GET", &format!("{}/{path}", s.writer.url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(still.body["data"]["metadata"]["version"], 1, "the refused write was executed: {:?}", still.body);
    assert!(audit_failures(&alone.url).await >= 2.0);

    // Beside a working file sink, the failing Kafka sink does not stop anything (Vault's rule:
    // one sink that recorded the request is enough), and its failures are counted.
    let served = call("GET", &format!("{}/{path}", both.url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(served.status, 200, "{:?}", served.body);
    assert_eq!(served.body["data"]["data"]["password"], SECRET);
    let text = std::fs::read_to_string(&audit_file).expect("the audit file");
    assert!(text.lines().any(|l| l.contains(r#""type":"response""#) && l.contains(path)), "{text}");
    crate::harness::eventually(Duration::from_secs(20), "the Kafka sink's failures counted", || async {
        (audit_failures(&both.url).await >= 2.0).then_some(())
    })
    .await;
    alone.stop();
    both.stop();
}

/// Who a token is, as an entry's `auth` says, follows the log: after the token is revoked the
/// next entry no longer names its policies (the node caches `auth` per token until a token
/// changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_names_a_tokens_policies_until_the_token_is_revoked() {
    let (cluster, _g) = shared();
    let (_logs, audit_file, s) = with_audited_reader(cluster, "audit-auth").await;
    let w = &s.writer.url;
    let policy = json!({ "policy": "path \"secret/data/audit/*\" { capabilities = [\"read\"] }" });
    let p = call("PUT", &format!("{w}/v1/sys/policies/acl/auditor"), Some(&s.token), None, Some(policy)).await;
    assert_eq!(p.status, 204, "{:?}", p.body);
    let created = call(
        "POST",
        &format!("{w}/v1/auth/token/create"),
        Some(&s.token),
        None,
        Some(json!({ "policies": ["auditor"] })),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let token = created.body["auth"]["client_token"].as_str().expect("a token").to_string();
    let index = s.put("audit/who", json!({ "k": "v" })).await;
    let read = |index: String| {
        let (url, token) = (format!("{}/v1/secret/data/audit/who", s.readers[0].url), token.clone());
        async move { call("GET", &url, Some(&token), Some(&index), None).await }
    };
    let last_request_auth = || {
        let text = std::fs::read_to_string(&audit_file).expect("the audit log");
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .filter(|e| e["type"] == "request" && e["request"]["path"] == "v1/secret/data/audit/who")
            .last()
            .expect("the read's request entry")["auth"]
            .clone()
    };
    for _ in 0..2 {
        let r = read(index.clone()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let auth = last_request_auth();
        assert_eq!(auth["policies"], json!(["auditor", "default"]), "{auth}");
    }
    let revoked =
        call("POST", &format!("{w}/v1/auth/token/revoke"), Some(&s.token), None, Some(json!({ "token": token }))).await;
    assert_eq!(revoked.status, 204, "{:?}", revoked.body);
    let r = read(revoked.index.clone().expect("the revocation's position")).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let auth = last_request_auth();
    assert!(auth["client_token"].as_str().is_some_and(|t| t.starts_with("hmac-sha256:")), "{auth}");
    assert!(auth.get("policies").is_none(), "a revoked token's entry still names its policies: {auth}");
}
