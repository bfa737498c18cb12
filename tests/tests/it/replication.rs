//! The replicator: a complete log archive and consistent snapshots that new readers start from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutPayload};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use secretlog_schemas::archive::{decode_segment, parse_segment_name};
use secretlog_state::objects::Objects;
use serde_json::{Value, json};

use crate::harness::{Node, Stack, StackOpts, call, eventually, shared};
use crate::kv_api::digest;
use crate::s3::{Proxy, S3Server, read_all};

/// Every committed record offset of the topic, per partition, read raw (read_committed, from the
/// start); fails the test if the end of every partition is not reached within a minute.
pub(crate) fn committed_offsets(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, BTreeSet<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "it-raw-offsets")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut out: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    let mut eof = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < partitions as usize {
        assert!(Instant::now() < deadline, "reading the committed log took over a minute");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.entry(m.partition()).or_default().insert(m.offset());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            _ => {}
        }
    }
    out
}

/// Every archived record offset, per partition, checking that each segment's name matches its
/// contents.
async fn archived_offsets(objects: &Objects) -> BTreeMap<i32, Vec<i64>> {
    let mut out: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (path, bytes) in read_all(objects, "archive").await {
        let mut parts = path.rsplit('/');
        let (name, part) = (parts.next().unwrap(), parts.next().unwrap());
        if !name.ends_with(".arrow") {
            continue;
        }
        let p: i32 = part.trim_start_matches('p').parse().unwrap();
        let (first, last) = parse_segment_name(name).unwrap();
        let recs = decode_segment(name, &bytes).unwrap();
        assert_eq!(recs.first().map(|r| r.offset), Some(first), "{path}");
        assert_eq!(recs.last().map(|r| r.offset), Some(last), "{path}");
        out.entry(p).or_default().extend(recs.iter().map(|r| r.offset));
    }
    out
}

/// Wait until the archive holds every committed record of the topic, then check it holds each
/// exactly once and in order, per partition.
async fn assert_archive_complete(s: &Stack, objects: &Objects, last: &str) {
    let token: secretlog_schemas::ConsistencyToken = last.parse().unwrap();
    let committed = committed_offsets(&s.bootstrap, &s.topic, 3);
    let expected: usize = committed.values().map(|v| v.len()).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let archived = loop {
        let a = archived_offsets(objects).await;
        let n: usize = a.values().map(|v| v.len()).sum();
        if n >= expected
            && token.0.iter().all(|(p, off)| a.get(p).and_then(|v| v.last()).is_some_and(|l| *l + 1 >= *off))
        {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "the archive did not catch up: {n} of {expected} records");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (p, offsets) in &archived {
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p}: offsets out of order or duplicated");
        let got: BTreeSet<i64> = offsets.iter().copied().collect();
        assert_eq!(&got, committed.get(p).unwrap(), "partition {p}: archive differs from the committed log");
    }
}

/// A replicator of `s` archiving into the S3 server (through `endpoint`).
fn s3_replicator(s: &Stack, s3: &S3Server, endpoint: &str, prefix: &str) -> Node {
    let env = s3.env(endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.new_replicator(&s3.url(prefix), &env)
}

/// A node's health code and body; `(0, null)` while it does not answer yet.
async fn health(node: &Node) -> (u16, Value) {
    match crate::harness::client().get(format!("{}/v1/sys/health", node.url)).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_on_s3_holds_every_committed_record_once_across_a_replicator_kill() {
    let (cluster, _g) = shared();
    let s3 = S3Server::start().await;
    let objects = s3.objects("archive-test");
    let s = Stack::start(cluster, StackOpts { name: "archive", readers: 1, ..Default::default() }).await;
    let mut rep = s3_replicator(&s, &s3, &s3.endpoint, "archive-test");
    rep.wait_health(200, Duration::from_secs(60)).await;
    let mut last = None;
    for i in 0..300 {
        last = Some(s.put(&format!("a/{}", i % 37), json!({"i": i})).await);
        if i == 150 {
            // kill -9 mid-stream, once some segments are out.
            eventually(Duration::from_secs(30), "first segments", || async {
                (!archived_offsets(&objects).await.is_empty()).then_some(())
            })
            .await;
            rep.kill9();
            rep.restart();
        }
    }
    rep.wait_health(200, Duration::from_secs(60)).await;
    assert_archive_complete(&s, &objects, last.as_deref().unwrap()).await;
    let (_, h) = health(&rep).await;
    assert!(h["secretlog"]["archive"]["archived"].is_object(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_rides_out_an_object_storage_outage_and_catches_up_with_no_gap() {
    let (cluster, _g) = shared();
    let s3 = S3Server::start().await;
    let proxy = Proxy::start(&s3.endpoint).await;
    let objects = s3.objects("outage");
    let s = Stack::start(cluster, StackOpts { name: "s3-outage", readers: 1, ..Default::default() }).await;
    let mut rep = s3_replicator(&s, &s3, &proxy.endpoint, "outage");
    // Health answers before the archive has claimed the store and positioned itself; the outage
    // below is meant to hit a running archive.
    eventually(Duration::from_secs(60), "the archive to start", || async {
        let (code, h) = health(&rep).await;
        (code == 200 && h["secretlog"]["archive"]["archived"].as_object().is_some_and(|a| !a.is_empty())).then_some(())
    })
    .await;
    for i in 0..40 {
        s.put(&format!("o/{i}"), json!({"i": i})).await;
    }
    proxy.cut().await;
    // Writes and reads go on while the store is down.
    let mut last = None;
    for i in 40..120 {
        last = Some(s.put(&format!("o/{i}"), json!({"i": i})).await);
    }
    let read =
        call("GET", &format!("{}/v1/secret/data/o/119", s.readers[0].url), Some(&s.token), last.as_deref(), None).await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    // The replicator reports the outage and a growing archive lag.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (lag_during, h) = loop {
        let (code, h) = health(&rep).await;
        let lag = h["secretlog"]["archive_lag_seconds"].as_f64().unwrap_or(0.0);
        if code == 503 && lag > 0.0 && h["secretlog"]["archive"]["buffered"].as_u64() > Some(0) {
            break (lag, h);
        }
        assert!(
            Instant::now() < deadline,
            "the replicator did not report the outage in 60 s; last health {code} {h}\n{}",
            rep.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(h["secretlog"]["problem"].as_str().unwrap_or("").contains("object store"), "{h}");
    let later = eventually(Duration::from_secs(30), "the archive lag to grow", || async {
        let (_, h) = health(&rep).await;
        h["secretlog"]["archive_lag_seconds"].as_f64().filter(|l| *l > lag_during)
    })
    .await;
    assert!(later > lag_during);
    // A replicator restarted while the store is down (its local state is not empty, so it opens
    // without the store) cannot claim the store: it says so and keeps trying, it does not give
    // up on the archive.
    rep.kill9();
    rep.restart();
    eventually(Duration::from_secs(60), "the restarted replicator to retry claiming the store", || async {
        let (code, h) = health(&rep).await;
        let retrying = std::fs::read_to_string(&rep.log).unwrap_or_default().contains("the archive cannot start yet");
        (code == 503 && retrying && h["secretlog"]["problem"].as_str().unwrap_or("").contains("object store"))
            .then_some(())
    })
    .await;
    proxy.heal();
    rep.wait_health(200, Duration::from_secs(90)).await;
    assert_archive_complete(&s, &objects, last.as_deref().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reader_bootstraps_from_an_s3_snapshot_and_matches_its_peer() {
    let (cluster, _g) = shared();
    let s3 = S3Server::start().await;
    let objects = s3.objects("snap");
    let s = Stack::start(cluster, StackOpts { name: "snapshot", readers: 1, ..Default::default() }).await;
    let rep = s3_replicator(&s, &s3, &s3.endpoint, "snap");
    rep.wait_health(200, Duration::from_secs(60)).await;
    let mut last = None;
    for i in 0..120 {
        last = Some(s.put(&format!("s/{}", i % 40), json!({"i": i})).await);
    }
    // The snapshot includes the last write (the index makes the replicator wait for it).
    let snap =
        call("POST", &format!("{}/v1/sys/secretlog/snapshot", rep.url), Some(&s.token), last.as_deref(), None).await;
    assert_eq!(snap.status, 200, "{:?}", snap.body);
    let manifest = &snap.body["data"];
    assert_eq!(manifest["secrets"], 40);
    assert_eq!(manifest["values"], 120, "3 versions of each of 40 secrets");
    let id = manifest["id"].as_str().unwrap().to_string();
    // A third-party Arrow reader agrees with the manifest.
    let local = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (path, bytes) in read_all(&objects, &format!("snapshots/{id}")).await {
        std::fs::write(local.path().join(path.rsplit('/').next().unwrap()), bytes).unwrap();
    }
    let out = tokio::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/read_snapshot.py"))
        .arg(local.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // More writes after the snapshot: the new reader must take them from the log.
    for i in 0..30 {
        last = Some(s.put(&format!("after/{i}"), json!({"i": i})).await);
    }
    let env = s3.env(&s3.endpoint);
    let url = s3.url("snap");
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("SECRETLOG_OBJECT_STORE", url.as_str()));
    let fresh = s.new_reader("fresh", &env);
    fresh.wait_health(473, Duration::from_secs(60)).await;
    assert!(
        std::fs::read_to_string(&fresh.log).unwrap().contains("bootstrapped from snapshot"),
        "{}",
        fresh.log_tail()
    );
    let a = digest(&fresh.url, &s.token, last.as_deref()).await;
    let b = digest(&s.readers[0].url, &s.token, last.as_deref()).await;
    assert_eq!(a["digest"], b["digest"], "bootstrapped reader differs from its peer: {a} vs {b}");

    // A flipped byte in a snapshot file: a new reader refuses it, naming the file and checksum.
    let values = objects.path(&format!("snapshots/{id}/values.arrow"));
    let mut bytes = objects.store.get(&values).await.unwrap().bytes().await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    objects.store.put(&values, PutPayload::from(bytes)).await.unwrap();
    let mut broken = s.new_reader("broken", &env);
    eventually(Duration::from_secs(30), "the reader to refuse the snapshot", || {
        let exited = broken.exited();
        async move { exited }
    })
    .await;
    let log = std::fs::read_to_string(&broken.log).unwrap();
    assert!(log.contains("values.arrow") && log.contains("checksum"), "{log}");
}

/// Delete every record before `offsets` (per partition), as retention would.
async fn delete_records_before(bootstrap: &str, topic: &str, offsets: &BTreeMap<i32, i64>) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, off) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*off)).unwrap();
    }
    let res = admin.delete_records(&tpl, &AdminOptions::new()).await.expect("DeleteRecords");
    for e in res.elements() {
        assert!(e.error().is_ok(), "DeleteRecords on partition {}: {:?}", e.partition(), e.error());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_bootstraps_from_a_snapshot_after_kafka_deleted_the_records_before_it() {
    let (cluster, _g) = shared();
    let s3 = S3Server::start().await;
    let s = Stack::start(cluster, StackOpts { name: "trimmed", readers: 1, ..Default::default() }).await;
    let rep = s3_replicator(&s, &s3, &s3.endpoint, "trimmed");
    rep.wait_health(200, Duration::from_secs(60)).await;
    let mut last = None;
    for i in 0..60 {
        last = Some(s.put(&format!("t/{}", i % 20), json!({"i": i})).await);
    }
    let snap =
        call("POST", &format!("{}/v1/sys/secretlog/snapshot", rep.url), Some(&s.token), last.as_deref(), None).await;
    assert_eq!(snap.status, 200, "{:?}", snap.body);
    let cut: BTreeMap<i32, i64> = snap.body["data"]["partitions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, pos)| (p.parse().unwrap(), pos["next_offset"].as_i64().unwrap()))
        .collect();
    assert!(cut.values().any(|o| *o > 0), "{cut:?}");
    for i in 0..20 {
        last = Some(s.put(&format!("after/{i}"), json!({"i": i})).await);
    }
    // Retention takes everything the snapshot covers.
    delete_records_before(&s.bootstrap, &s.topic, &cut).await;

    // Without a snapshot, an empty reader cannot rebuild the state: it halts, saying why,
    // instead of starting at the new log start and silently missing the deleted records.
    let blind = s.new_reader("blind", &[]);
    let (code, h) = eventually(Duration::from_secs(60), "the reader without a snapshot to halt", || async {
        let (code, h) = health(&blind).await;
        h["secretlog"]["halted"].as_object().is_some_and(|m| !m.is_empty()).then_some((code, h))
    })
    .await;
    assert_eq!(code, 503, "{h}");
    assert!(h["secretlog"]["halted"].to_string().contains("deleted from Kafka"), "{h}");

    let env = s3.env(&s3.endpoint);
    let url = s3.url("trimmed");
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("SECRETLOG_OBJECT_STORE", url.as_str()));
    let fresh = s.new_reader("fresh", &env);
    fresh.wait_health(473, Duration::from_secs(60)).await;
    let a = digest(&fresh.url, &s.token, last.as_deref()).await;
    let b = digest(&s.readers[0].url, &s.token, last.as_deref()).await;
    assert_eq!(a["digest"], b["digest"], "bootstrapped reader differs from its peer: {a} vs {b}");
    let r = call("GET", &format!("{}/v1/secret/data/t/3", fresh.url), Some(&s.token), None, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["metadata"]["version"], 3);
}

/// A replicator behind the log does not refuse a token the log already holds: before it refuses
/// one it catches up with the log's end as of the request. Started with the planted `slow-apply`
/// (each batch applied 200 ms late), it is asked with the root token from the moment it answers
/// at all: its first answer other than "starting" is the digest, never a 403. A token nobody
/// created is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replicator_honours_a_token_the_log_already_holds() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "replag", readers: 0, ..Default::default() }).await;
    for i in 0..30 {
        s.put(&format!("backlog/{i}"), json!({"i": i})).await;
    }
    let objects = format!("file://{}", s.dir.path().join("objects").display());
    let rep = s.new_replicator(&objects, &[("SECRETLOG_TEST_PLANTED_BUG", "slow-apply")]);
    let url = format!("{}/v1/sys/secretlog/digest", rep.url);
    let first = eventually(Duration::from_secs(60), "the replicator's first answer past its start", || {
        let (url, token) = (url.clone(), s.token.clone());
        async move {
            let a = crate::harness::client()
                .get(&url)
                .header("X-Vault-Token", token)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .ok()?;
            let status = a.status().as_u16();
            let body = a.text().await.unwrap_or_default();
            (status != 503).then_some((status, body))
        }
    })
    .await;
    assert_eq!(first.0, 200, "the first answer with the root token: {}\n{}", first.1, rep.log_tail());
    let a = call("GET", &url, Some("hvs.not-a-token"), None, None).await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    // The opening steps in a reader's order: an index it will not reach within its wait is 412
    // to a caller it authorized, and nothing but 403 to one it did not.
    let far = Some("0:999999999");
    let a = call("GET", &url, Some("hvs.not-a-token"), far, None).await;
    assert_eq!(a.status, 403, "an unauthorized caller learns nothing of the index: {:?}", a.body);
    let a = call("GET", &url, Some(&s.token), far, None).await;
    assert_eq!(a.status, 412, "{:?}", a.body);
}
