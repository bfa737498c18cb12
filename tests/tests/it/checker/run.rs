//! One checker run against a real stack: the load, the nemesis, the final reads, the check and
//! its report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use secretlog_schemas::ConsistencyToken;
use secretlog_schemas::archive::{decode_segment, parse_segment_name};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::client::{
    burst, caught_up_digest, client, final_histories, leader, lifecycle_state, refused_records, send, successes,
    successes_since,
};
use super::model::{Archive, Effect, FinalState, Kind, Op, Violation, check_with_tally};
use super::netns::Netns;
use super::{CLIENTS, KEYS, MAX_VERSIONS, key_name, lifecycle_key};
use crate::harness::{BrokerFaults, Cluster, Node, Stack, StackOpts, eventually};
use crate::replication::committed_offsets;

/// What a run does.
pub struct RunOpts {
    pub name: &'static str,
    /// Load at least this long; the nemesis runs rounds until then.
    pub load: Duration,
    /// Then go on (up to three times `load` in all) until this many writes were acknowledged,
    /// so that a slow, busy machine still gives the check enough to look at.
    pub min_acked: usize,
    /// Inject faults.
    pub nemesis: bool,
    /// Make the leader a zombie in every round: SIGSTOP until a standby leads and acknowledges
    /// writes, then SIGCONT while its clients still send to it (also without `nemesis`).
    pub zombie: bool,
    /// `SECRETLOG_TEST_PLANTED_BUG` for every node (writers, readers, replicator).
    pub planted: Option<&'static str>,
    /// `SECRETLOG_TEST_RESEND` for the writers: the first record of every Nth accepted batch is
    /// sent again after its key changed (writer/src/committer.rs); every node must refuse it.
    pub resend: Option<u32>,
    /// `SECRETLOG_TEST_LATE_DELIVERY` for the writers: every Nth batch of data writes is held
    /// back, resolved "refused" by a barrier, then sent (writer/src/committer.rs); every node must
    /// refuse it by its epoch.
    pub late: Option<u32>,
    /// Writers keep up to this many batches in flight at once (`--max-batches-in-flight`).
    pub in_flight: usize,
    /// A third reader in its own network namespace, delayed and cut (where the machine allows).
    pub netns: bool,
    /// A replicator archiving the log (killed by the nemesis), and the archive checked.
    pub archive: bool,
    /// Where to write the history, violations and summary as JSON.
    pub results: Option<PathBuf>,
}

/// The outcome of a run.
pub struct Report {
    pub violations: Vec<Violation>,
    pub acked: usize,
    pub faults: Vec<String>,
    pub summary: Value,
    /// `secretlog_reader_records_refused_total` per node (writers and readers), by reason.
    pub refused: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Writers of a burst sent around each broker kill ([`burst`]).
const BURST_WRITERS: usize = 12;

/// A reader of `s` inside `ns`, reaching the brokers and writers through the namespace's bridge.
/// `extra_args` go to the reader's command line.
pub(crate) async fn netns_reader(
    s: &Stack,
    ns: &mut Netns,
    writers: &[String],
    planted: Option<&str>,
    extra_args: &[&str],
) -> Node {
    let name = "reader-ns";
    let mut args: Vec<String> = vec![
        "reader".into(),
        "--region".into(),
        "region-ns".into(),
        "--data-dir".into(),
        s.dir.path().join(name).display().to_string(),
        "--writer-url".into(),
        writers.join(","),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let envs: Vec<(String, String)> =
        planted.map(|p| ("SECRETLOG_TEST_PLANTED_BUG".to_string(), p.to_string())).into_iter().collect();
    netns_node(s, ns, name, writers, &envs, args).await
}

/// A writer of `s` (in its election, under its transactional id) inside `ns`, announcing the
/// host's end of its exposed port so that the other nodes can forward to it.
pub(crate) async fn netns_writer(s: &Stack, ns: &mut Netns, envs: &[(String, String)]) -> Node {
    let name = "writer-ns";
    let args: Vec<String> = vec![
        "writer".into(),
        "--data-dir".into(),
        s.dir.path().join(name).display().to_string(),
        "--transactional-id".into(),
        format!("{}-writer", s.topic),
    ];
    netns_node(s, ns, name, &[], envs, args).await
}

/// Start the node `args` (a subcommand and its flags, `--listen` added here) of `s` inside
/// `ns`: the brokers and the `forward` URLs' ports reachable through the namespace's bridge, its
/// HTTP port exposed on the host. `envs` go on top of the stack's defaults.
async fn netns_node(
    s: &Stack,
    ns: &mut Netns,
    name: &str,
    forward: &[String],
    envs: &[(String, String)],
    mut args: Vec<String>,
) -> Node {
    let port_of = |url: &str| url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
    for addr in s.bootstrap.split(',') {
        ns.forward_in(port_of(addr).expect("broker port")).expect("forwarding a broker port into the namespace");
    }
    for w in forward {
        ns.forward_in(port_of(w).expect("writer port")).expect("forwarding a writer port into the namespace");
    }
    // Inside the namespace every port is free.
    let port = 18200;
    let host_port = ns.expose(port).await.expect("exposing the node's port");
    let url = format!("http://127.0.0.1:{host_port}");
    let envs: Vec<(String, String)> = [
        ("KAFKA_BOOTSTRAP_SERVERS", s.bootstrap.clone()),
        ("SECRETLOG_ROOT_KEY_FILE", s.root_key_file.display().to_string()),
        ("SECRETLOG_TOPIC", s.topic.clone()),
        ("SECRETLOG_CACHE_DISK_MB", "16".into()),
        ("SECRETLOG_CACHE_MEMORY_MB", "16".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(envs.iter().cloned())
    .collect();
    args.splice(1..1, ["--listen".to_string(), format!("127.0.0.1:{port}")]);
    if args[0] == "writer" {
        args.extend(["--advertise-url".to_string(), url.clone()]);
    }
    let mut n = crate::harness::node(s.dir.path(), name, port, &envs, args).with_prefix(ns.prefix(), url);
    n.spawn();
    n
}

/// Every archived record offset per partition, in segment order, from a `file://` archive.
fn archived_offsets(root: &Path) -> BTreeMap<i32, Vec<i64>> {
    let mut out: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let Ok(parts) = std::fs::read_dir(root.join("archive")) else { return out };
    for part in parts.flatten() {
        let Some(p) = part.file_name().to_str().and_then(|n| n.strip_prefix('p')?.parse::<i32>().ok()) else {
            continue;
        };
        let mut segments: Vec<(i64, PathBuf, String)> = std::fs::read_dir(part.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| {
                let name = f.file_name().to_str()?.to_string();
                let (first, _) = parse_segment_name(&name)?;
                name.ends_with(".arrow").then(|| (first, f.path(), name))
            })
            .collect();
        segments.sort();
        for (_, path, name) in segments {
            // A segment being written right now may be incomplete: read it next time.
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Ok(recs) = decode_segment(&name, &bytes) else { continue };
            out.entry(p).or_default().extend(recs.iter().map(|r| r.offset));
        }
    }
    out
}

/// The archive once it holds every committed record (or as it is after a deadline).
async fn settled_archive(bootstrap: &str, topic: &str, root: &Path, partitions: i32) -> Archive {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    let committed =
        tokio::task::spawn_blocking(move || committed_offsets(&b, &t, partitions)).await.expect("committed offsets");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let archived = archived_offsets(root);
        let complete = committed.iter().all(|(p, c)| {
            let held: BTreeSet<i64> = archived.get(p).into_iter().flatten().copied().collect();
            c.is_subset(&held)
        });
        if complete || Instant::now() > deadline {
            return Archive { committed, archived };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Start a stack, load it while the nemesis works, read back, check, report.
pub async fn run(cluster: &'static Cluster, opts: RunOpts) -> Report {
    let began = Instant::now();
    let partitions = 3;
    let writer_env = opts
        .resend
        .map(|n| ("SECRETLOG_TEST_RESEND".to_string(), n.to_string()))
        .into_iter()
        .chain(opts.late.map(|n| ("SECRETLOG_TEST_LATE_DELIVERY".to_string(), n.to_string())))
        .chain([("SECRETLOG_MAX_BATCHES_IN_FLIGHT".to_string(), opts.in_flight.to_string())]);
    // A planted bug goes to every node: the refusal rules run in every materializer.
    let every_node = opts.planted.map(|p| ("SECRETLOG_TEST_PLANTED_BUG".to_string(), p.to_string()));
    let s = Stack::start_with_env(
        cluster,
        StackOpts {
            name: opts.name,
            partitions,
            readers: 2,
            standbys: if opts.nemesis || opts.zombie { 1 } else { 0 },
            reader_args: vec![],
            writer_env: writer_env.collect(),
            reader_env: vec![],
        },
        every_node.into_iter().collect(),
    )
    .await;
    let writer_urls: Vec<String> = std::iter::once(&s.writer).chain(&s.standbys).map(|w| w.url.clone()).collect();
    let mut ns = None;
    let mut ns_reader = None;
    if opts.netns {
        match Netns::create(&format!("chk-{:06x}", rand::random::<u32>() & 0xffffff)) {
            Ok(mut n) => {
                let r = netns_reader(&s, &mut n, &writer_urls, opts.planted, &[]).await;
                r.wait_health(473, Duration::from_secs(60)).await;
                ns_reader = Some(r);
                ns = Some(n);
            }
            Err(why) => eprintln!("[checker] no network namespace on this machine ({why}): no network faults"),
        }
    }
    let archive_dir = s.dir.path().join("objects");
    let mut replicator = opts.archive.then(|| s.new_replicator(&format!("file://{}", archive_dir.display()), &[]));
    if let Some(r) = &replicator {
        r.wait_health(200, Duration::from_secs(60)).await;
    }
    let (bootstrap, topic) = (s.bootstrap.clone(), s.topic.clone());
    // The nodes move into this run, to be killed and restarted; `_dir` keeps their files.
    let Stack { writer, standbys, mut readers, token, dir: _dir, .. } = s;
    let mut writers: Vec<Node> = std::iter::once(writer).chain(standbys).collect();
    readers.extend(ns_reader);

    let leader_url = writers[0].url.clone();
    for key in (0..KEYS).map(key_name).chain((0..CLIENTS).map(lifecycle_key)) {
        let body = json!({"max_versions": MAX_VERSIONS});
        let r = send("POST", &format!("{leader_url}/v1/secret/metadata/{key}"), &token, None, Some(body)).await;
        assert_eq!(r.status, 204, "max_versions on {key}: {:?}", r.body);
    }

    // The load.
    let named = |ns: &[Node]| ns.iter().map(|n| (n.name.clone(), n.url.clone())).collect::<Vec<_>>();
    let read_targets = named(&readers);
    let write_targets: Vec<(String, String)> = named(&writers).into_iter().chain(read_targets.clone()).collect();
    let ops = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (w, r, t) = (write_targets.clone(), read_targets.clone(), token.clone());
            tokio::spawn(client(c, w, r, t, stop.clone(), ops.clone()))
        })
        .collect();
    eventually(Duration::from_secs(30), "steady writes before the faults", || async {
        (successes(&ops).await >= 30).then_some(())
    })
    .await;

    // The nemesis, in rounds a few seconds apart until the load time is up: leader kill, broker
    // kill, reader pause, reader kill, replicator kill, and the namespaced reader's network
    // delayed then cut. A killed broker is restarted after 5 s; the cluster's recovery is awaited
    // in the background, and before the next broker is killed, so never more than one is down.
    let mut faults: Vec<String> = Vec::new();
    let mut note = |what: String| {
        let line = format!("+{:>6.1}s {what}", load_started.elapsed().as_secs_f64());
        eprintln!("[checker] nemesis {line}");
        faults.push(line);
    };
    let pause = |secs: u64| tokio::time::sleep(Duration::from_secs(secs));
    let mut brokers = cluster.brokers().map(BrokerFaults::new);
    let mut healing: Option<tokio::task::JoinHandle<(BrokerFaults<'static>, u32, Duration, Duration)>> = None;
    let mut broker_kills: Vec<Instant> = Vec::new();
    let mut bursts = Vec::new();
    let mut round = 0;
    while (opts.nemesis || opts.zombie) && (round < 2 || load_started.elapsed() + Duration::from_secs(30) < opts.load) {
        if opts.zombie {
            let l = leader(&writers).await;
            let (zombie, successor) = (&writers[l], &writers[1 - l]);
            let pid = zombie.pid().expect("leader running");
            note(format!("SIGSTOP leader {}", zombie.name));
            secretlog_ops::process::signal(pid, libc::SIGSTOP).expect("SIGSTOP");
            let stopped = Instant::now();
            successor.wait_health(200, Duration::from_secs(30)).await;
            // Clients that picked the zombie wait for it (up to their 10 s timeout) meanwhile.
            eventually(Duration::from_secs(60), "the successor acknowledging writes", || async {
                (successes_since(&ops, stopped, &zombie.name).await >= 10).then_some(())
            })
            .await;
            note(format!("{} leads and acknowledges writes", successor.name));
            secretlog_ops::process::signal(pid, libc::SIGCONT).expect("SIGCONT");
            note(format!("SIGCONT {}: a zombie, its clients still sending to it", zombie.name));
            let now = leader(&writers).await;
            note(format!("{} stood down; {} leads", writers[l].name, writers[now].name));
            if !opts.nemesis {
                pause(4).await;
                round += 1;
                continue;
            }
            pause(2).await;
        }
        let l = leader(&writers).await;
        note(format!("kill -9 leader {}", writers[l].name));
        writers[l].kill9();
        writers[1 - l].wait_health(200, Duration::from_secs(30)).await;
        writers[l].restart();
        let now = leader(&writers).await;
        note(format!("{} restarted; {} leads", writers[l].name, writers[now].name));

        if let Some(h) = healing.take() {
            let (b, broker, restarted, ready) = h.await.expect("healing the broker");
            note(format!(
                "broker {broker} restarted at +{:.1}s, ready at +{:.1}s",
                restarted.as_secs_f64(),
                ready.as_secs_f64()
            ));
            brokers = Some(b);
        }
        pause(4).await;
        if let Some(mut down) = brokers.take() {
            let broker = 2 + (round % 2) as u32;
            // A burst of writes under way when the broker dies: their outcomes may be unknown.
            let burst_stop = Arc::new(AtomicBool::new(false));
            let first = CLIENTS + round * BURST_WRITERS;
            let bursting = burst(first, BURST_WRITERS, &named(&writers), &token, burst_stop.clone(), ops.clone());
            let before = successes(&ops).await;
            eventually(Duration::from_secs(30), "the burst under way", || async {
                (successes(&ops).await >= before + BURST_WRITERS).then_some(())
            })
            .await;
            note(format!("kill -9 broker {broker}, {BURST_WRITERS} writers bursting"));
            broker_kills.push(Instant::now());
            tokio::task::block_in_place(|| down.kill(broker));
            healing = Some(tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_secs(5));
                let restarted = load_started.elapsed();
                down.heal();
                (down, broker, restarted, load_started.elapsed())
            }));
            pause(1).await;
            // Writes still under way finish in the background (a writer may take its whole
            // timeout to answer now); they are awaited before the history is taken.
            burst_stop.store(true, Ordering::Relaxed);
            bursts.extend(bursting);
        }

        pause(4).await;
        let r = &readers[round % 2];
        let pid = r.pid().expect("reader running");
        note(format!("SIGSTOP {}", r.name));
        secretlog_ops::process::signal(pid, libc::SIGSTOP).expect("SIGSTOP");
        pause(2).await;
        secretlog_ops::process::signal(pid, libc::SIGCONT).expect("SIGCONT");
        note(format!("SIGCONT {}", r.name));

        pause(3).await;
        let i = (round + 1) % 2;
        note(format!("kill -9 {}", readers[i].name));
        readers[i].kill9();
        pause(1).await;
        readers[i].restart();
        if let Some(rep) = replicator.as_mut() {
            note("kill -9 replicator".into());
            rep.kill9();
            pause(1).await;
            rep.restart();
        }
        readers[i].wait_health(473, Duration::from_secs(60)).await;
        note(format!("{} restarted", readers[i].name));

        if let Some(n) = &ns {
            pause(2).await;
            note("delay reader-ns's network by 200 ms".into());
            n.set_delay(Duration::from_millis(200));
            pause(4).await;
            n.set_delay(Duration::ZERO);
            note("cut reader-ns's network".into());
            n.set_cut(true);
            pause(4).await;
            n.set_cut(false);
            note("reader-ns's network restored".into());
        }
        pause(3).await;
        round += 1;
    }
    tokio::time::sleep(opts.load.saturating_sub(load_started.elapsed())).await;
    while successes(&ops).await < opts.min_acked && load_started.elapsed() < opts.load * 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks.into_iter().chain(bursts) {
        t.await.expect("client task");
    }
    let load_time = load_started.elapsed();
    let history = Arc::try_unwrap(ops).expect("clients stopped").into_inner();
    if let Some(h) = healing.take() {
        let (_, broker, restarted, ready) = h.await.expect("healing the broker");
        note(format!(
            "broker {broker} restarted at +{:.1}s, ready at +{:.1}s",
            restarted.as_secs_f64(),
            ready.as_secs_f64()
        ));
    }
    let injected = faults
        .iter()
        .filter(|f| ["kill", "SIGSTOP", "delay", "cut"].iter().any(|w| f.contains(w)) && !f.contains("restarted"))
        .count();

    // Everyone healthy and caught up.
    leader(&writers).await;
    for r in &readers {
        r.wait_health(473, Duration::from_secs(60)).await;
    }
    let mut all = ConsistencyToken::default();
    for o in history.iter().filter(|o| o.is_write() && o.effect() == Effect::Acknowledged) {
        if let Some(t) = o.index.as_deref().and_then(|i| i.parse::<ConsistencyToken>().ok()) {
            all.merge(&t);
        }
    }
    // Converged: every reader past every acknowledged write, the same digest twice in a row
    // (an unacknowledged write may still land late).
    let converge_deadline = Instant::now() + Duration::from_secs(60);
    let mut previous: Option<Vec<(String, Option<String>)>> = None;
    let digests = loop {
        let mut ds = Vec::new();
        for r in &readers {
            ds.push((r.name.clone(), caught_up_digest(&r.url, &token, &all).await));
        }
        let agree = ds.iter().all(|(_, d)| d.is_some() && *d == ds[0].1);
        if (agree && previous.as_ref() == Some(&ds)) || Instant::now() > converge_deadline {
            break ds;
        }
        previous = Some(ds);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_str = all.to_string();
    let archive = match &replicator {
        Some(_) => Some(settled_archive(&bootstrap, &topic, &archive_dir, partitions).await),
        None => None,
    };
    let mut deleted = BTreeMap::new();
    for c in 0..CLIENTS {
        deleted.insert(lifecycle_key(c), lifecycle_state(&readers[0].url, &token, &all_str, c).await);
    }
    let fin = FinalState { keys: final_histories(&readers[0].url, &token, &all_str).await, digests, archive, deleted };
    let (violations, tally) = check_with_tally(&history, &fin);

    // The report.
    for n in writers.iter().chain(&readers).chain(&replicator) {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("librdkafka") && !l.contains("kafka client error") && !l.contains("consumer error"))
            .filter(|l| ["ERROR", "panicked", "atal", "deposed", "fenced", "leadership"].iter().any(|w| l.contains(w)))
            .collect();
        eprintln!("[checker] {}: {} notable log lines", n.name, notable.len());
        for l in notable.iter().take(5) {
            eprintln!("[checker]   {}", l.chars().take(300).collect::<String>());
        }
    }
    let writes: Vec<&Op> = history.iter().filter(|o| o.is_write()).collect();
    let acked = history.iter().filter(|o| o.acked_write()).count();
    let reads = history.len() - writes.len();
    let reads_ok = history.iter().filter(|o| o.kind == Kind::Read && matches!(o.status, 200 | 404)).count();
    // The share of writes (of every kind) answered successfully, and what became of the others.
    let mut outcomes: BTreeMap<Effect, usize> = BTreeMap::new();
    for o in &writes {
        *outcomes.entry(o.effect()).or_default() += 1;
    }
    let answered = outcomes.get(&Effect::Acknowledged).copied().unwrap_or(0);
    let share = answered as f64 / writes.len().max(1) as f64;
    // Writes under way at a broker kill, and what became of them.
    let mut at_kills: BTreeMap<Effect, usize> = BTreeMap::new();
    for o in writes.iter().filter(|o| broker_kills.iter().any(|k| o.start <= *k && *k <= o.end)) {
        *at_kills.entry(o.effect()).or_default() += 1;
    }
    let mut refused_by_node: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for n in writers.iter().chain(&readers) {
        refused_by_node.insert(n.name.clone(), refused_records(&n.url).await);
    }
    let present_failed = writes
        .iter()
        .filter(|o| o.kind == Kind::Write && o.status != 200)
        .filter(|o| {
            fin.keys.get(&o.key).is_some_and(|h| h.versions.values().any(|v| v.as_deref() == o.value.as_deref()))
        })
        .count();
    let mut errors: BTreeMap<(Kind, u16, &str), (usize, f64, f64)> = BTreeMap::new();
    for o in history.iter().filter(|o| o.error.is_some()) {
        let at = (o.start - load_started).as_secs_f64();
        let e = errors.entry((o.kind, o.status, o.error.as_deref().unwrap_or_default())).or_insert((0, at, at));
        e.0 += 1;
        e.2 = e.2.max(at);
    }
    for ((kind, status, error), (n, first, last)) in &errors {
        eprintln!("[checker] {n:>5} x {kind:?} {status} (+{first:.1}s to +{last:.1}s): {error}");
    }
    // Per node: operations answered (200/204/404) and not.
    let mut by_node: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for o in &history {
        let e = by_node.entry(o.node.as_str()).or_default();
        if matches!(o.status, 200 | 204 | 404) { e.0 += 1 } else { e.1 += 1 }
    }
    let by_node: BTreeMap<&str, Value> =
        by_node.into_iter().map(|(n, (ok, failed))| (n, json!({"answered": ok, "failed": failed}))).collect();
    eprintln!("[checker] operations by node: {}", json!(by_node));
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &violations {
        *by_kind.entry(v.kind()).or_default() += 1;
    }
    let archived: usize = fin.archive.as_ref().map_or(0, |a| a.archived.values().map(Vec::len).sum());
    let summary = json!({
        "run": opts.name,
        "planted_bug": opts.planted,
        "ops": history.len(),
        "writes": writes.len(),
        "writes_answered_share": share,
        "write_outcomes": outcomes,
        "writes_at_broker_kills": at_kills,
        "records_refused": refused_by_node,
        "resend_every": opts.resend,
        "late_delivery_every": opts.late,
        "acknowledged": acked,
        "failed_writes": writes.len() - answered,
        "failed_writes_present": present_failed,
        "reads": reads,
        "reads_answered": reads_ok,
        "faults_injected": injected,
        "network_namespace": ns.as_ref().map(|n| n.name.clone()),
        "archived_records": archived,
        "violations": violations.len(),
        "violations_by_kind": by_kind,
        "linearizability": tally,
        "by_node": by_node,
        "load_seconds": load_time.as_secs_f64(),
        "total_seconds": began.elapsed().as_secs_f64(),
    });
    let count = |e: Effect| outcomes.get(&e).copied().unwrap_or(0);
    eprintln!(
        "[checker] SUMMARY {}: ops={} writes={} answered={answered} ({:.1}%) refused={} unknown={} unavailable={} \
         (register writes acked={acked}; failed present {present_failed}) reads={reads} reads_ok={reads_ok} \
         faults={injected} at broker kills {at_kills:?} archived={archived} violations={} {by_kind:?} \
         load={load_time:.1?} total={:.1?}",
        opts.name,
        history.len(),
        writes.len(),
        share * 100.0,
        count(Effect::Refused),
        count(Effect::Unknown),
        count(Effect::Unavailable),
        violations.len(),
        began.elapsed()
    );
    eprintln!("[checker] records refused by node and reason: {}", summary["records_refused"]);
    // Inconclusive keys are neither passed nor failed: said here, and in summary.json.
    eprintln!("[checker] linearizability: {}", summary["linearizability"]);
    for v in violations.iter().take(20) {
        eprintln!("[checker] VIOLATION {v:?}");
    }
    if let Some(dir) = &opts.results {
        write_results(dir, &history, &violations, &faults, &summary, load_started);
        eprintln!("[checker] history, violations and summary written to {}", dir.display());
    }
    drop(ns);
    Report { violations, acked, faults, summary, refused: refused_by_node }
}

/// `history.json` (every operation, times in ms from the load's start), `violations.json`,
/// `nemesis.json` and `summary.json` under `dir`.
fn write_results(
    dir: &Path,
    history: &[Op],
    violations: &[Violation],
    faults: &[String],
    summary: &Value,
    t0: Instant,
) {
    std::fs::create_dir_all(dir).expect("results directory");
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
    let ops: Vec<Value> = history
        .iter()
        .map(|o| {
            json!({
                "client": o.client, "kind": format!("{:?}", o.kind).to_lowercase(), "key": o.key, "node": o.node,
                "start_ms": ms(o.start), "end_ms": ms(o.end), "status": o.status, "version": o.version,
                "value": o.value, "index": o.index, "strong": o.strong, "error": o.error,
                "effect": o.is_write().then(|| o.effect()),
            })
        })
        .collect();
    let vs: Vec<Value> = violations.iter().map(|v| json!({"kind": v.kind(), "detail": format!("{v:?}")})).collect();
    for (name, v) in
        [("history", json!(ops)), ("violations", json!(vs)), ("nemesis", json!(faults)), ("summary", summary.clone())]
    {
        let text = serde_json::to_string_pretty(&v).expect("json");
        std::fs::write(dir.join(format!("{name}.json")), text).expect("writing results");
    }
}
