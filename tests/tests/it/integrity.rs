//! What must never happen: plaintext at rest, a forged record applied, a node without its key
//! serving anything.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::harness::{Stack, StackOpts, call, shared};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn scan_dir(dir: &std::path::Path, needle: &[u8], hits: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            scan_dir(&p, needle, hits);
        } else if p.extension().is_none_or(|x| x != "log") {
            if let Ok(bytes) = std::fs::read(&p)
                && contains(&bytes, needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_in_kafka_slatedb_or_the_disk_cache() {
    let (cluster, _g) = shared();
    let mut s = Stack::start(cluster, StackOpts { name: "plaintext", readers: 1, ..Default::default() }).await;
    let secret = format!("PLAINTEXT-CANARY-{:016x}", rand::random::<u64>());
    let mut last = None;
    for i in 0..20 {
        last = Some(s.put(&format!("canary/{i}"), json!({"v": secret})).await);
    }
    // Reads fill the cache (memory and disk tiers).
    for i in 0..20 {
        let a = call(
            "GET",
            &format!("{}/v1/secret/data/canary/{i}", s.readers[0].url),
            Some(&s.token),
            last.as_deref(),
            None,
        )
        .await;
        assert_eq!(a.body["data"]["data"]["v"], secret.as_str(), "the canary reads back");
    }
    // The raw bytes of every record in the topic.
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("group.id", "it-raw")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    use rdkafka::consumer::Consumer;
    consumer.subscribe(&[&s.topic]).unwrap();
    let mut seen = 0;
    let mut eofs = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while eofs.len() < 3 && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                seen += 1;
                assert!(!contains(m.payload().unwrap_or_default(), secret.as_bytes()), "plaintext in a Kafka record");
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eofs.insert(p);
            }
            _ => {}
        }
    }
    assert!(seen >= 20, "read {seen} records");
    // Writer and reader data directories: SlateDB files, the foyer disk cache, token files.
    let mut hits = Vec::new();
    scan_dir(s.dir.path(), secret.as_bytes(), &mut hits);
    assert!(hits.is_empty(), "plaintext found in {hits:?}");
    assert!(walk_count(s.dir.path()) > 5, "the scan saw the data files");
    // SlateDB compresses its files (LZ4), and plaintext inside a compressed block need not show
    // in the raw bytes: so every key and value of each node's store is read through SlateDB too,
    // once the nodes have stopped.
    s.writer.stop();
    s.readers[0].stop();
    for name in [s.writer.name.clone(), s.readers[0].name.clone()] {
        let cfg = secretlog_state::store::StoreConfig {
            dir: s.dir.path().join(&name),
            cache_memory_bytes: 1 << 20,
            cache_disk_bytes: 0,
        };
        let store = secretlog_state::store::Store::open(&cfg).await.expect("opening a stopped node's store");
        let rows = store.scan(b"").await.unwrap();
        // The paths are in the keys: the scan sees the store's decoded contents.
        assert!(rows.iter().any(|(k, _)| contains(k, b"canary/19")), "{name}: the scan saw no canary path");
        for (k, v) in &rows {
            assert!(
                !contains(k, secret.as_bytes()) && !contains(v, secret.as_bytes()),
                "{name}: plaintext in the store under {}",
                String::from_utf8_lossy(k)
            );
        }
        store.close().await.unwrap();
    }
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|es| es.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_halts_its_partition_loudly_and_nothing_is_skipped() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "forged", readers: 1, partitions: 1, ..Default::default() }).await;
    s.put("before", json!({"a": 1})).await;
    // Someone with write access to Kafka appends a record the writer never wrote.
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &s.bootstrap).create().unwrap();
    let mut forged = b"SL\x01".to_vec();
    forged.extend_from_slice(&[0u8; 60]);
    p.send(FutureRecord::to(&s.topic).key("secret/before").payload(&forged).partition(0), Duration::from_secs(10))
        .await
        .unwrap();
    let health = s.readers[0].wait_health(503, Duration::from_secs(30)).await;
    let halted = health["secretlog"]["halted"].to_string();
    assert!(halted.contains("offset"), "health names the halted partition and offset: {health}");
    // A later legitimate write is not applied past the forged record: nothing is skipped.
    let later = call(
        "POST",
        &format!("{}/v1/secret/data/after", s.writer.url),
        Some(&s.token),
        None,
        Some(json!({"data": {"a": 2}})),
    )
    .await;
    // A write is acknowledged only once the leader applied it, and the leader cannot apply
    // anything past the forged record either: refused (its partition halted), never a 200.
    assert_eq!(later.status, 503, "{later:?}");
    let r = call("GET", &format!("{}/v1/secret/data/after", s.readers[0].url), Some(&s.token), None, None).await;
    assert_eq!(r.status, 404, "a record after the forged one was applied");
    let before = call("GET", &format!("{}/v1/secret/data/before", s.readers[0].url), Some(&s.token), None, None).await;
    assert_eq!(before.status, 200, "state before the forged record is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_right_key_is_sealed_and_serves_nothing() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "sealed", readers: 1, ..Default::default() }).await;
    s.put("x", json!({"a": 1})).await;
    // No key at all: sealed.
    let missing = s.dir.path().join("missing.key");
    let keyless = s.new_reader("keyless", &[("SECRETLOG_ROOT_KEY_FILE", missing.to_str().unwrap())]);
    let h = keyless.wait_health(503, Duration::from_secs(30)).await;
    assert_eq!(h["sealed"], true);
    let r = call("GET", &format!("{}/v1/secret/data/x", keyless.url), Some(&s.token), None, None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["errors"], json!(["Vault is sealed"]));
    // Another cluster's key: every record is refused as written under another key; nothing is
    // applied, health is 503 and says why.
    let wrong = s.dir.path().join("wrong.key");
    secretlog_ops::stack::ensure_root_key(&wrong).unwrap();
    let wrongkey = s.new_reader("wrongkey", &[("SECRETLOG_ROOT_KEY_FILE", wrong.to_str().unwrap())]);
    let h = crate::harness::eventually(Duration::from_secs(30), "the wrong-key reader to seal itself", || async {
        let r = crate::harness::client().get(format!("{}/v1/sys/health", wrongkey.url)).send().await.ok()?;
        let code = r.status().as_u16();
        let h: serde_json::Value = r.json().await.ok()?;
        (code == 503 && h["sealed"] == true).then_some(h)
    })
    .await;
    assert!(h["secretlog"]["problem"].as_str().unwrap_or("").contains("different root key"), "{h}");
    let r = call("GET", &format!("{}/v1/secret/data/x", wrongkey.url), Some(&s.token), None, None).await;
    assert_eq!(r.status, 503, "a node with the wrong key serves nothing");
    // Every role runs the same opening steps: a writer and a replicator under the wrong key
    // serve nothing either — the writer neither decides nor forwards a write.
    let objects = format!("file://{}", s.dir.path().join("objects").display());
    let wrong_env = [("SECRETLOG_ROOT_KEY_FILE", wrong.to_str().unwrap())];
    for node in [s.new_writer("wrongkey-writer", &wrong_env), s.new_replicator(&objects, &wrong_env)] {
        crate::harness::eventually(Duration::from_secs(30), "the wrong-key node to seal itself", || async {
            let r = crate::harness::client().get(format!("{}/v1/sys/health", node.url)).send().await.ok()?;
            let code = r.status().as_u16();
            let h: serde_json::Value = r.json().await.ok()?;
            (code == 503 && h["sealed"] == true).then_some(())
        })
        .await;
        for (method, path, body) in [
            ("GET", "v1/secret/data/x", None),
            ("POST", "v1/secret/data/x", Some(json!({"data": {"a": 2}}))),
            ("GET", "v1/sys/secretlog/digest", None),
        ] {
            let r = call(method, &format!("{}/{path}", node.url), Some(&s.token), None, body).await;
            assert_eq!(r.status, 503, "{method} {path} on {}: {:?}", node.url, r.body);
            assert_eq!(r.body["errors"], json!(["Vault is sealed"]), "{method} {path}");
        }
    }
    let r = call("GET", &format!("{}/v1/secret/data/x", s.writer.url), Some(&s.token), None, None).await;
    assert_eq!(r.body["data"]["data"], json!({"a": 1}), "nothing the wrong-key nodes were asked changed the secret");
}
