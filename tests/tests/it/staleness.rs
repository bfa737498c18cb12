//! The staleness bound end to end: a reader cut off from Kafka stops answering from its own
//! state within `--max-staleness` (plus its confirmation period and a query timeout), says why,
//! and answers again — with nothing older than the log — once its network is back. And the
//! leader's lease: a leader cut off stops answering from its own state when its lease lapses,
//! before another writer can be elected.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checker::netns::Netns;
use crate::checker::run::{netns_reader, netns_writer};
use crate::harness::{Answer, Stack, StackOpts, call, client, shared, try_call};

/// `--max-staleness` of the reader under test, seconds.
const BOUND_S: f64 = 3.0;
/// The reader's last-stable-offset query timeout (state/src/materializer.rs `QUERY_TIMEOUT`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// `--consistency-wait-ms`: how long a read past the bound waits for a confirmation before 503.
const CONSISTENCY_WAIT: Duration = Duration::from_millis(500);

fn errors(a: &Answer) -> String {
    a.body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .unwrap_or_default()
}

/// The reason a refused read or unhealthy node gives names the staleness bound.
fn names_staleness(why: &str) -> bool {
    why.contains("caught up with") && why.contains("log")
}

async fn health(url: &str) -> (u16, Value) {
    let r = client().get(format!("{url}/v1/sys/health")).send().await.expect("health");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_cut_off_from_kafka_refuses_local_reads_within_its_bound_and_serves_again_after_healing() {
    let (cluster, _g) = shared();
    // Never passes quietly: no namespace, no test.
    let mut ns = Netns::create(&format!("stl-{:06x}", rand::random::<u32>() & 0xffffff))
        .unwrap_or_else(|why| panic!("this test needs a network namespace (run as root with `ip`): {why}"));
    let s = Stack::start(cluster, StackOpts { name: "staleness", readers: 0, ..Default::default() }).await;
    let writer_urls = vec![s.writer.url.clone()];
    let bound = BOUND_S.to_string();
    let wait = CONSISTENCY_WAIT.as_millis().to_string();
    let reader = netns_reader(
        &s,
        &mut ns,
        &writer_urls,
        None,
        &["--on-stale", "fail", "--max-staleness", &bound, "--consistency-wait-ms", &wait],
    )
    .await;
    reader.wait_health(473, Duration::from_secs(60)).await;
    let url = format!("{}/v1/secret/data/cut/k", reader.url);
    let read = || try_call("GET", &url, Some(&s.token), None, None);
    let version = |a: &Answer| a.body["data"]["metadata"]["version"].as_u64();

    s.put("cut/k", json!({"v": 1})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = read().await.expect("reading from the reader");
        if a.status == 200 && version(&a) == Some(1) {
            assert_eq!(a.body["data"]["data"]["v"], 1);
            break;
        }
        assert!(a.status == 404 || a.status == 200, "before the cut: {} {:?}", a.status, a.body);
        assert!(
            Instant::now() < deadline,
            "the reader never served v1: {} {:?}\n{}",
            a.status,
            a.body,
            reader.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cut the reader off from Kafka (and the writers); its HTTP port stays reachable.
    ns.set_outbound_cut(true);
    let cut = Instant::now();
    let limit = Duration::from_secs_f64(BOUND_S) + Duration::from_secs(1) + QUERY_TIMEOUT;
    let deadline = cut + limit + CONSISTENCY_WAIT + Duration::from_secs(20);
    let (sent_after, answered_after, why) = loop {
        let sent = Instant::now();
        let a = read().await.expect("the reader's HTTP port must stay reachable while it is cut off");
        match a.status {
            // Until the bound runs out it may still answer, and only with what it had.
            200 => assert_eq!(version(&a), Some(1), "while cut off: {:?}", a.body),
            503 => break (sent - cut, cut.elapsed(), errors(&a)),
            s => panic!("while cut off: {s} {:?}", a.body),
        }
        assert!(Instant::now() < deadline, "still 200 {:?} after the cut\n{}", cut.elapsed(), reader.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "[staleness] cut -> first 503: request sent {:.2} s, answered {:.2} s after the cut (bound {BOUND_S} s, \
         limit {:.1} s + consistency wait {:.1} s): {why}",
        sent_after.as_secs_f64(),
        answered_after.as_secs_f64(),
        limit.as_secs_f64(),
        CONSISTENCY_WAIT.as_secs_f64()
    );
    assert!(names_staleness(&why), "503 without saying it is stale: {why}");
    assert!(sent_after <= limit, "reads past the bound kept being served: first refused {sent_after:?} after the cut");
    assert!(answered_after <= limit + CONSISTENCY_WAIT, "first 503 answered {answered_after:?} after the cut");

    let (status, body) = health(&reader.url).await;
    assert_eq!(status, 503, "health while cut off: {body}");
    let problem = body["secretlog"]["problem"].as_str().unwrap_or_default().to_string();
    assert!(names_staleness(&problem), "health's problem does not say why: {body}");
    eprintln!(
        "[staleness] health while cut off: 503, problem: {problem}, staleness_seconds: {}",
        body["secretlog"]["staleness_seconds"]
    );

    // A newer version while the reader is cut off; it keeps refusing rather than serve v1.
    s.put("cut/k", json!({"v": 2})).await;
    let a = read().await.expect("reading while cut off");
    assert_eq!(a.status, 503, "after v2 was written, while cut off: {:?}", a.body);

    ns.set_outbound_cut(false);
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(60);
    loop {
        let a = read().await.expect("reading after healing");
        match a.status {
            200 => {
                assert_eq!(version(&a), Some(2), "after healing the reader served an older version: {:?}", a.body);
                assert_eq!(a.body["data"]["data"]["v"], 2);
                break;
            }
            503 => assert!(names_staleness(&errors(&a)), "503 after healing: {:?}", a.body),
            s => panic!("after healing: {s} {:?}", a.body),
        }
        assert!(Instant::now() < deadline, "not serving after healing\n{}", reader.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("[staleness] serving v2 {:.2} s after healing", healed.elapsed().as_secs_f64());
    reader.wait_health(473, Duration::from_secs(30)).await;
}

/// The session timeout of the writers in the lease test: long enough that the lease (half of
/// it) lapses seconds before librdkafka notices the lost session, so the two cannot be confused.
const SESSION: Duration = Duration::from_secs(6);
/// The writers' election heartbeat (`--election-heartbeat-ms`' default): the lease is renewed
/// this often.
const HEARTBEAT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_kafka_stops_answering_from_its_state_when_its_lease_lapses() {
    let (cluster, _g) = shared();
    let mut ns = Netns::create(&format!("lse-{:06x}", rand::random::<u32>() & 0xffffff))
        .unwrap_or_else(|why| panic!("this test needs a network namespace (run as root with `ip`): {why}"));
    let session = vec![("SECRETLOG_ELECTION_SESSION_TIMEOUT_MS".to_string(), SESSION.as_millis().to_string())];
    let mut s = Stack::start(
        cluster,
        StackOpts { name: "lease", readers: 0, standbys: 1, writer_env: session.clone(), ..Default::default() },
    )
    .await;
    let old = netns_writer(&s, &mut ns, &session).await;
    old.wait_health(429, Duration::from_secs(60)).await;
    // Hand the leadership to the writer in the namespace: the standby stops, then the leader
    // (leaving the group, so the namespace's writer is elected at once); the standby comes back.
    s.standbys[0].stop();
    s.writer.stop();
    old.wait_health(200, Duration::from_secs(60)).await;
    s.standbys[0].restart();
    s.standbys[0].wait_health(429, Duration::from_secs(60)).await;

    let url = format!("{}/v1/secret/data/lease/k", old.url);
    let token = s.token.clone();
    let write = |url: String, v: u64| {
        let token = token.clone();
        async move {
            let a = call("POST", &url, Some(&token), None, Some(json!({ "data": { "v": v } }))).await;
            assert_eq!(a.status, 200, "writing v{v}: {:?}", a.body);
        }
    };
    write(url.clone(), 1).await;
    let (_, h) = health(&old.url).await;
    let left = h["secretlog"]["lease_seconds_left"].as_f64();
    assert!(left.is_some_and(|l| l > 0.0 && l <= SESSION.as_secs_f64() / 2.0), "the leader holds no lease: {h}");
    let read = || try_call("GET", &url, Some(&s.token), None, None);
    let version = |a: &Answer| a.body["data"]["metadata"]["version"].as_u64();
    let a = read().await.expect("reading from the leader");
    assert_eq!((a.status, version(&a)), (200, Some(1)), "{:?}", a.body);

    // Cut the leader off from Kafka; its HTTP port stays reachable. Within its lease it may
    // answer from its state (and only with what it has); then it must confirm the log's end,
    // which it cannot: 503, saying why, long before anyone else can have been elected.
    ns.set_outbound_cut(true);
    let cut = Instant::now();
    let deadline = cut + SESSION + Duration::from_secs(20);
    let (sent_after, why) = loop {
        let sent = Instant::now();
        let a = read().await.expect("the leader's HTTP port must stay reachable while it is cut off");
        match a.status {
            200 => assert_eq!(version(&a), Some(1), "while cut off: {:?}", a.body),
            503 => break (sent - cut, errors(&a)),
            s => panic!("while cut off: {s} {:?}", a.body),
        }
        assert!(Instant::now() < deadline, "still answering {:?} after the cut\n{}", cut.elapsed(), old.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "[lease] cut -> first refused read sent {:.2} s after the cut (lease {:.1} s, session {:.1} s): {why}",
        sent_after.as_secs_f64(),
        (SESSION / 2).as_secs_f64(),
        SESSION.as_secs_f64()
    );
    assert!(why.contains("lease has lapsed"), "503 without naming the lease: {why}");
    let limit = SESSION / 2 + HEARTBEAT + Duration::from_secs(1);
    assert!(sent_after <= limit, "the cut-off leader answered from its state until {sent_after:?} after the cut");

    // The standby is elected once the coordinator gave up on the cut-off leader; its writes
    // are what the old leader shows once its network is back. (By then it knows it lost its
    // session and stands by: its default reads are a standby's, bounded by the staleness bound
    // from its last confirmation; a strong read must show v2.)
    s.standbys[0].wait_health(200, Duration::from_secs(60)).await;
    write(format!("{}/v1/secret/data/lease/k", s.standbys[0].url), 2).await;
    ns.set_outbound_cut(false);
    let strong = || async {
        let r = client()
            .get(&url)
            .header("X-Vault-Token", &s.token)
            .header("X-Secretlog-Consistency", "strong")
            .send()
            .await
            .expect("reading after healing");
        let status = r.status().as_u16();
        Answer { status, index: None, body: r.json().await.unwrap_or_default() }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = strong().await;
        match a.status {
            200 => {
                assert_eq!(version(&a), Some(2), "after healing the old leader served an older version: {:?}", a.body);
                break;
            }
            503 => {}
            s => panic!("after healing: {s} {:?}", a.body),
        }
        assert!(Instant::now() < deadline, "the old leader not serving after healing\n{}", old.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
