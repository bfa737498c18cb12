//! Writer high availability: kill -9 the leader under a steady write load; a standby takes over
//! within seconds and nothing a client was told is written is lost.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use secretlog_schemas::ConsistencyToken;
use serde_json::json;
use tokio::sync::Mutex;

use crate::harness::{Answer, Cluster, Stack, StackOpts, call, eventually, try_call};

/// One client write and its answer.
#[derive(Debug, Clone)]
struct Op {
    key: String,
    value: u64,
    started: Instant,
    done: Instant,
    status: u16,
    version: Option<u64>,
    index: Option<String>,
}

/// Clients writing through a reader (forwarded to whichever writer leads), recording everything.
struct Load {
    ops: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, token: String, clients: usize) -> Load {
        Load::start_as("c", url, token, clients)
    }

    /// Clients whose keys are `ha/{tag}{client}/k…`: loads with different tags share no key.
    fn start_as(tag: &'static str, url: String, token: String, clients: usize) -> Load {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let (ops, stop, url, token) = (ops.clone(), stop.clone(), url.clone(), token.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let value = (c as u64) << 32 | i;
                        let key = format!("ha/{tag}{c}/k{}", i % 40);
                        let started = Instant::now();
                        // No answer at all (a paused node's client timing out) is recorded as
                        // status 0: an outcome unknown to the client.
                        let a = try_call(
                            "POST",
                            &format!("{url}/v1/secret/data/{key}"),
                            Some(&token),
                            None,
                            Some(json!({"data": {"value": value}})),
                        )
                        .await
                        .unwrap_or(Answer { status: 0, index: None, body: json!(null) });
                        let op = Op {
                            key,
                            value,
                            started,
                            done: Instant::now(),
                            status: a.status,
                            version: a.body["data"]["version"].as_u64(),
                            index: a.index,
                        };
                        if op.status != 200 {
                            // Back off briefly while there is no leader; a real client would too.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        ops.lock().await.push(op);
                        i += 1;
                    }
                })
            })
            .collect();
        Load { ops, stop, tasks }
    }

    async fn successes(&self) -> usize {
        self.ops.lock().await.iter().filter(|o| o.status == 200).count()
    }

    async fn stop(self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.ops).expect("all clients stopped").into_inner()
    }
}

/// Every acknowledged write is readable on every reader with its exact value and version, and no
/// (secret, version) was acknowledged twice.
async fn check_acknowledged(s: &Stack, ops: &[Op]) {
    let acked: Vec<&Op> = ops.iter().filter(|o| o.status == 200).collect();
    let mut seen = HashSet::new();
    for o in &acked {
        let v = o.version.expect("a 200 answer names its version");
        assert!(seen.insert((o.key.clone(), v)), "version {v} of {} acknowledged twice", o.key);
    }
    let mut token = ConsistencyToken::default();
    for o in &acked {
        token.merge(&o.index.as_deref().expect("index on every acknowledged write").parse().expect("valid index"));
    }
    let token = token.to_string();
    // The newest acknowledged version of each key must be its current version; earlier ones are
    // checked too while within max_versions (10).
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in &acked {
        by_key.entry(o.key.as_str()).or_default().push(o);
    }
    for r in &s.readers {
        for (key, writes) in &by_key {
            let newest = writes.iter().max_by_key(|o| o.version).expect("non-empty");
            for o in writes.iter().filter(|o| o.version.unwrap() + 10 > newest.version.unwrap()) {
                let a = call(
                    "GET",
                    &format!("{}/v1/secret/data/{key}?version={}", r.url, o.version.unwrap()),
                    Some(&s.token),
                    Some(&token),
                    None,
                )
                .await;
                assert_eq!(
                    a.status,
                    200,
                    "{}: acknowledged {key} v{} not readable: {:?}",
                    r.name,
                    o.version.unwrap(),
                    a.body
                );
                assert_eq!(
                    a.body["data"]["data"]["value"],
                    o.value,
                    "{}: {key} v{} has another value",
                    r.name,
                    o.version.unwrap()
                );
            }
            let m =
                call("GET", &format!("{}/v1/secret/metadata/{key}", r.url), Some(&s.token), Some(&token), None).await;
            let current = m.body["data"]["current_version"].as_u64().expect("a current version");
            // A write answered 5xx or not at all may have been applied after the newest
            // acknowledged one ("outcome unknown"); with none, the newest acknowledged is current.
            let uncertain = ops.iter().any(|o| o.key == *key && o.status != 200);
            if uncertain {
                assert!(current >= newest.version.unwrap(), "{}: {key} current version {current}", r.name);
            } else {
                assert_eq!(current, newest.version.unwrap(), "{}: {key} current version", r.name);
            }
        }
    }
}

async fn health_code(url: &str) -> u16 {
    match crate::harness::client().get(format!("{url}/v1/sys/health")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Wait until exactly one of the two writers leads, and make it `s.writer`.
pub(crate) async fn leader_first(s: &mut Stack) {
    let leader_is_first = eventually(Duration::from_secs(30), "exactly one leader", || async {
        match (health_code(&s.writer.url).await, health_code(&s.standbys[0].url).await) {
            (200, 429) => Some(true),
            (429, 200) => Some(false),
            _ => None,
        }
    })
    .await;
    if !leader_is_first {
        std::mem::swap(&mut s.writer, &mut s.standbys[0]);
    }
}

/// How the leader goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// kill -9: detected by the election's session timeout.
    Killed,
    /// SIGTERM: the leader leaves the group on its way out (a rolling restart).
    Graceful,
}

/// Take the leader away during the load (optionally a broker too); return the time from its
/// departure to the next successful write.
pub async fn leader_failover(cluster: &Cluster, name: &'static str, kill_broker: bool, how: Departure) -> Duration {
    let mut s = Stack::start(cluster, StackOpts { name, standbys: 1, readers: 2, ..Default::default() }).await;
    let load = Load::start(s.readers[0].url.clone(), s.token.clone(), 6);
    eventually(Duration::from_secs(30), "steady writes before the kill", || async {
        (load.successes().await >= 100).then_some(())
    })
    .await;
    let mut faults = cluster.brokers().map(crate::harness::BrokerFaults::new);
    if kill_broker {
        faults.as_mut().expect("brokers the harness started").kill(2);
        let before = load.successes().await;
        eventually(Duration::from_secs(30), "writes to continue with a broker down", || async {
            (load.successes().await >= before + 50).then_some(())
        })
        .await;
    }
    // Whoever leads now (a broker failure may have moved leadership) is killed.
    leader_first(&mut s).await;
    let killed_at = Instant::now();
    match how {
        Departure::Killed => s.writer.kill9(),
        Departure::Graceful => s.writer.stop(),
    }
    s.standbys[0].wait_health(200, Duration::from_secs(30)).await;
    let first_after = eventually(Duration::from_secs(30), "a successful write after the kill", || async {
        load.ops.lock().await.iter().filter(|o| o.status == 200 && o.started > killed_at).map(|o| o.done).min()
    })
    .await;
    let failover = first_after - killed_at;
    let after = load.successes().await;
    eventually(Duration::from_secs(30), "steady writes after failover", || async {
        (load.successes().await >= after + 100).then_some(())
    })
    .await;

    // The old leader comes back: it stands by, nothing breaks.
    s.writer.restart();
    s.writer.wait_health(429, Duration::from_secs(60)).await;
    let after = load.successes().await;
    eventually(Duration::from_secs(30), "writes with the old leader back", || async {
        (load.successes().await >= after + 50).then_some(())
    })
    .await;
    let via_old = call(
        "POST",
        &format!("{}/v1/secret/data/ha/via-old", s.writer.url),
        Some(&s.token),
        None,
        Some(json!({"data": {"value": 1}})),
    )
    .await;
    assert_eq!(via_old.status, 200, "a write through the restarted old leader is forwarded: {:?}", via_old.body);

    let ops = load.stop().await;
    if let Some(f) = faults.as_mut() {
        f.heal();
    }
    let failed = ops.iter().filter(|o| o.status != 200).count();
    let span = ops
        .iter()
        .map(|o| o.done)
        .max()
        .zip(ops.iter().map(|o| o.started).min())
        .map(|(a, b)| a - b)
        .unwrap_or_default();
    eprintln!(
        "[{name}] failover {failover:?}; {} writes acknowledged ({:.0}/s over {span:?}), {failed} refused (5xx while no leader)",
        ops.len() - failed,
        (ops.len() - failed) as f64 / span.as_secs_f64().max(0.001)
    );
    assert!(
        ops.iter().all(|o| o.status == 200 || o.status >= 500),
        "only 200 or 5xx: {:?}",
        ops.iter().find(|o| o.status != 200 && o.status < 500)
    );
    check_acknowledged(&s, &ops).await;
    assert!(failover < Duration::from_secs(15), "failover took {failover:?}");
    failover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_standby_takes_over_and_no_acknowledged_write_is_lost() {
    let (cluster, _g) = crate::harness::shared();
    leader_failover(cluster, "failover", false, Departure::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shut_down_gracefully_hands_over_at_once() {
    let (cluster, _g) = crate::harness::shared();
    let pause = leader_failover(cluster, "handover", false, Departure::Graceful).await;
    // Measured from SIGTERM, so this includes the old leader draining its last batch. A guard
    // against waiting out a timeout (the session's 2 s, the write timeout's 10 s — writes in flight
    // once waited for verdicts a stopped materializer never gave), not a measurement: under the
    // suite's parallel load it took 0.9–3.9 s; the takeover is measured by `failover_rounds`.
    assert!(pause < Duration::from_secs(5), "graceful handover paused writes for {pause:?}");
}

/// The failover benchmark: `SECRETLOG_FAILOVER_ROUNDS=10 cargo test -p secretlog-tests --test it
/// failover_rounds -- --ignored --nocapture` prints min/median/max failover time. Every round
/// also checks that no acknowledged write was lost (it panics otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn failover_rounds() {
    let (cluster, _g) = crate::harness::shared();
    let rounds: usize = std::env::var("SECRETLOG_FAILOVER_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let mut times = Vec::new();
    for r in 0..rounds {
        let t = leader_failover(cluster, "failover-round", false, Departure::Killed).await;
        eprintln!("round {}: {t:?}", r + 1);
        times.push(t);
    }
    times.sort();
    let json = serde_json::json!({
        "rounds": rounds,
        "min_s": times[0].as_secs_f64(),
        "median_s": times[rounds / 2].as_secs_f64(),
        "max_s": times[rounds - 1].as_secs_f64(),
        "acknowledged_writes_lost": 0,
    });
    println!("FAILOVER {json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_with_a_broker_down_loses_nothing() {
    let Some((cluster, _g)) = crate::harness::exclusive() else {
        panic!("this test kills a broker: it needs brokers the harness started, not KAFKA_BOOTSTRAP_SERVERS");
    };
    leader_failover(cluster, "failover-broker", true, Departure::Killed).await;
}

/// Issue #19: a leader paused (SIGSTOP) until a standby leads and acknowledges writes, then
/// resumed while its own clients are still sending to it — a zombie. Its late records carry the
/// older epoch: every node refuses them, its own materializer included, so it acknowledges none
/// of them; it stops deciding and stands by. Every write acknowledged by either leader is on
/// every reader; no version was given twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resumed_after_its_successor_acknowledges_nothing_late_and_steps_down() {
    let (cluster, _g) = crate::harness::shared();
    let mut s =
        Stack::start(cluster, StackOpts { name: "zombie", standbys: 1, readers: 2, ..Default::default() }).await;
    leader_first(&mut s).await;
    // Clients of the leader itself (they keep sending to it while it is paused) and clients
    // through a reader (forwarded to whichever writer leads).
    let direct = Load::start_as("direct", s.writer.url.clone(), s.token.clone(), 3);
    let via_reader = Load::start_as("reader", s.readers[0].url.clone(), s.token.clone(), 3);
    eventually(Duration::from_secs(30), "steady writes before the pause", || async {
        (direct.successes().await >= 50 && via_reader.successes().await >= 50).then_some(())
    })
    .await;
    let pid = s.writer.pid().expect("the leader runs");
    secretlog_ops::process::signal(pid, libc::SIGSTOP).expect("SIGSTOP");
    let paused_at = Instant::now();
    s.standbys[0].wait_health(200, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(30), "the successor acknowledges writes", || async {
        let n = via_reader.ops.lock().await.iter().filter(|o| o.status == 200 && o.started > paused_at).count();
        (n >= 20).then_some(())
    })
    .await;
    secretlog_ops::process::signal(pid, libc::SIGCONT).expect("SIGCONT");
    let resumed_at = Instant::now();
    // The zombie hears of its successor from the log and stops leading.
    eventually(Duration::from_secs(30), "the resumed leader to stand down", || async {
        (health_code(&s.writer.url).await != 200).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "its clients to be answered after the resume", || async {
        let n = direct.ops.lock().await.iter().filter(|o| o.done > resumed_at).count();
        (n >= 20).then_some(())
    })
    .await;
    let mut ops = direct.stop().await;
    let direct_acked_late =
        ops.iter().filter(|o| o.status == 200 && o.started < resumed_at && o.done > resumed_at).count();
    ops.extend(via_reader.stop().await);
    eprintln!(
        "[zombie] {} writes, {} acknowledged; {direct_acked_late} of the paused leader's in-flight writes acknowledged after the resume",
        ops.len(),
        ops.iter().filter(|o| o.status == 200).count()
    );
    assert!(
        ops.iter().all(|o| o.status == 200 || o.status >= 500 || o.status == 0),
        "only 200, 5xx or no answer: {:?}",
        ops.iter().find(|o| o.status != 200 && o.status < 500 && o.status != 0)
    );
    // Every acknowledged write — the zombie's included — is on every reader, versions unique.
    check_acknowledged(&s, &ops).await;
    let refused = crate::harness::client()
        .get(format!("{}/metrics", s.readers[1].url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    eprintln!(
        "[zombie] refused on a reader: {:?}",
        refused.lines().filter(|l| l.starts_with("secretlog_reader_records_refused_total")).collect::<Vec<_>>()
    );
}

/// Holds the writers' election partition from the test process: a member of the writers' own
/// consumer group that is assigned the partition and never leads, so no writer is elected until
/// it leaves. It keeps a writer out of leadership for exactly as long as a test needs.
struct ElectionHold {
    consumer: Arc<rdkafka::consumer::StreamConsumer>,
    polling: tokio::task::JoinHandle<()>,
}

impl ElectionHold {
    /// Join the election of the stack's writers and wait until the partition is ours; the
    /// writers must all be out of the group (stopped) so that it is given to us.
    async fn take(s: &Stack) -> ElectionHold {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &s.bootstrap)
            // The names `writer::node` derives from the topic and `--transactional-id`.
            .set("group.id", format!("{}-writer.election", s.topic))
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create()
            .expect("election consumer");
        consumer.subscribe(&[&format!("{}.election", s.topic)]).expect("joining the election");
        let consumer = Arc::new(consumer);
        // Polling serves the group's rebalances (a writer joining makes one).
        let polling = tokio::spawn({
            let consumer = consumer.clone();
            async move {
                loop {
                    let _ = consumer.recv().await;
                }
            }
        });
        eventually(Duration::from_secs(60), "the election partition assigned to the test", || async {
            let held = consumer.assignment().ok()?.elements().iter().any(|e| e.partition() == 0);
            held.then_some(())
        })
        .await;
        ElectionHold { consumer, polling }
    }

    /// Leave the group: a waiting writer is elected now.
    async fn release(self) {
        self.polling.abort();
        let _ = self.polling.await;
        rdkafka::consumer::Consumer::unsubscribe(&*self.consumer);
        drop(self.consumer);
    }
}

/// A gauge or counter of a node's `/metrics`, 0 when absent.
async fn metric(url: &str, name: &str) -> f64 {
    let text = crate::harness::client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The CI flake: the only writer out of leadership for a moment (its election session lapsed,
/// it rejoined and is taking over anew) answered a write 503 "no leader writer is known yet",
/// which Vault clients do not retry. Here the gap is held open by the test, so the writes surely
/// arrive in it: sent to the writer and through a reader, both are held — before anything is
/// sent on — and both succeed once the writer leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_while_no_writer_leads_waits_for_the_leader_and_succeeds() {
    let (cluster, _g) = crate::harness::shared();
    let mut s = Stack::start(
        cluster,
        StackOpts {
            name: "leaderwait",
            readers: 1,
            // Long enough that the test, not the deadline, ends the gap (under the readers' 30 s
            // forwarding timeout and the test client's).
            writer_env: vec![("SECRETLOG_LEADER_WAIT_MS".into(), "25000".into())],
            ..Default::default()
        },
    )
    .await;
    s.put("lw/before", json!({"v": 0})).await;
    // The only writer leaves; the test takes the election; the writer comes back without it.
    s.writer.stop();
    let hold = ElectionHold::take(&s).await;
    s.writer.spawn();
    s.writer.wait_health(429, Duration::from_secs(60)).await;

    let write = |url: String, key: &'static str| {
        let token = s.token.clone();
        tokio::spawn(async move {
            call("POST", &format!("{url}/v1/secret/data/{key}"), Some(&token), None, Some(json!({"data": {"v": 1}})))
                .await
        })
    };
    let direct = write(s.writer.url.clone(), "lw/direct");
    let forwarded = write(s.readers[0].url.clone(), "lw/forwarded");
    let writer_url = s.writer.url.clone();
    eventually(Duration::from_secs(20), "both writes held by the writer", || async {
        (metric(&writer_url, "secretlog_writer_held_writes").await >= 2.0).then_some(())
    })
    .await;
    assert!(!direct.is_finished() && !forwarded.is_finished(), "a held write was answered while no writer led");
    assert_eq!(s.writer.wait_health(429, Duration::from_secs(5)).await["standby"], true, "still no leader");

    let released = Instant::now();
    hold.release().await;
    for (what, task) in [("sent to the writer", direct), ("forwarded by a reader", forwarded)] {
        let a = task.await.expect("write task");
        assert_eq!(a.status, 200, "a write {what} during the gap: {:?}\n{}", a.body, s.writer.log_tail());
        assert_eq!(a.body["data"]["version"], 1, "{what}: {:?}", a.body);
    }
    eprintln!("[leaderwait] held writes answered {:?} after the election was released", released.elapsed());
    assert_eq!(metric(&writer_url, "secretlog_writer_held_writes").await, 0.0);
    assert_eq!(metric(&writer_url, "secretlog_writer_leader_wait_expired_total").await, 0.0);
}
