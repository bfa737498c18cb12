//! Readers crash, restart, fall behind and catch up — and end with exactly their peers' state.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Stack, StackOpts, call, eventually, shared};
use crate::kv_api::digest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_killed_mid_stream_resumes_exactly_and_matches_its_peer() {
    let (cluster, _g) = shared();
    let mut s = Stack::start(cluster, StackOpts { name: "readerkill", ..Default::default() }).await;
    let (w, tok) = (s.writer.url.clone(), s.token.clone());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = done.clone();
    let writer = tokio::spawn(async move {
        let mut last = None;
        for i in 0..300 {
            counter.store(i, std::sync::atomic::Ordering::SeqCst);
            let a = call(
                "POST",
                &format!("{w}/v1/secret/data/stream/k{}", i % 40),
                Some(&tok),
                None,
                Some(json!({"data": {"i": i}})),
            )
            .await;
            assert_eq!(a.status, 200, "write {i}: {:?}", a.body);
            last = a.index;
        }
        last
    });
    // Kill reader 0 while the stream is being applied, then bring it back.
    eventually(Duration::from_secs(30), "reader 0 to apply some of the stream", || async {
        let a =
            call("LIST", &format!("{}/v1/secret/metadata/stream/", s.readers[0].url), Some(&s.token), None, None).await;
        (a.status == 200).then_some(())
    })
    .await;
    s.readers[0].kill9();
    // Let the stream go on while the reader is down.
    let at_kill = done.load(std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(30), "20 more writes while the reader is down", || async {
        (done.load(std::sync::atomic::Ordering::SeqCst) >= (at_kill + 20).min(299)).then_some(())
    })
    .await;
    s.readers[0].restart();
    let last = writer.await.unwrap().expect("an index");
    s.readers[0].wait_health(473, Duration::from_secs(60)).await;
    let a = digest(&s.readers[0].url, &s.token, Some(&last)).await;
    let b = digest(&s.readers[1].url, &s.token, Some(&last)).await;
    assert_eq!(a["digest"], b["digest"], "restarted reader diverged from its peer");
    assert!(a["records"].as_u64().unwrap() >= 40 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_restarted_after_more_writes_catches_up() {
    let (cluster, _g) = shared();
    let mut s = Stack::start(cluster, StackOpts { name: "catchup", readers: 2, ..Default::default() }).await;
    s.readers[1].stop();
    let mut last = None;
    for i in 0..50 {
        last = Some(s.put(&format!("c/{i}"), json!({"i": i})).await);
    }
    s.readers[1].restart();
    s.readers[1].wait_health(473, Duration::from_secs(60)).await;
    let last = last.unwrap();
    let a = digest(&s.readers[0].url, &s.token, Some(&last)).await;
    let b = digest(&s.readers[1].url, &s.token, Some(&last)).await;
    assert_eq!(a["digest"], b["digest"]);
    let v = call("GET", &format!("{}/v1/secret/data/c/49", s.readers[1].url), Some(&s.token), None, None).await;
    assert_eq!(v.body["data"]["data"]["i"], 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_an_unreached_index_waits_then_forwards_or_fails() {
    let (cluster, _g) = shared();
    let s = Stack::start(
        cluster,
        StackOpts {
            name: "stale",
            readers: 1,
            reader_args: vec!["--consistency-wait-ms".into(), "300".into(), "--on-stale".into(), "fail".into()],
            ..Default::default()
        },
    )
    .await;
    s.put("x", json!({"a": 1})).await;
    // A position far in the future is never reached: 412 after the bound.
    let started = std::time::Instant::now();
    let r =
        call("GET", &format!("{}/v1/secret/data/x", s.readers[0].url), Some(&s.token), Some("0:999999999"), None).await;
    assert_eq!(r.status, 412);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let bad =
        call("GET", &format!("{}/v1/secret/data/x", s.readers[0].url), Some(&s.token), Some("garbage"), None).await;
    assert_eq!(bad.status, 400);
}
