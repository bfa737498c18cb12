//! The staleness bound end to end: a reader cut off from Kafka stops answering from its own
//! state within `--max-staleness` (plus its confirmation period and a query timeout), says why,
//! and answers again — with nothing older than the log — once its network is back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checker::netns::Netns;
use crate::checker::run::netns_reader;
use crate::harness::{Answer, Stack, StackOpts, client, shared, try_call};

/// `--max-staleness` of the reader under test, seconds.
const BOUND_S: f64 = 3.0;
/// The reader's last-stable-offset query timeout (reader/src/materializer.rs `QUERY_TIMEOUT`).
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
