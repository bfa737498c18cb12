//! `secretlog drill`: a disaster-recovery drill on a running local stack (`secretlog up
//! --detach`), measuring what the runbooks ask to measure.
//!
//! 1. Load: write `--secrets` secrets through the leader, then keep a steady trickle of writes
//!    going; every acknowledged write is recorded (path, value, time).
//! 2. Disaster: the whole primary region is lost at once — every Kafka broker, both writers and
//!    the replicator are killed with SIGKILL. Only the object store survives.
//! 3. Recovery: a fresh three-broker cluster, `reseed` from the newest snapshot plus the log
//!    archive, `promote` (a writer on the new cluster), and a reader with an empty disk.
//! 4. Verification: every acknowledged write is read back from the new reader and compared.
//!
//! RTO is measured from the failure to the first successful write and to the first successful
//! read; RPO is the number of acknowledged writes that did not survive, and the span of
//! acknowledgement times they cover. The old stack stays dead (run `secretlog down`, then `up`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::emit;
use crate::kafka::{KafkaConfig, LocalKafka};
use crate::stack::StackFile;

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Directory of the running local stack.
    #[arg(long, env = "SECRETLOG_DATA_DIR", default_value = "./.secretlog")]
    pub data_dir: PathBuf,
    /// Secrets written before the disaster.
    #[arg(long, default_value_t = 2000)]
    pub secrets: usize,
    /// Concurrent writers during the load.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of steady writes (one client) between the load and the disaster.
    #[arg(long, default_value_t = 5)]
    pub trickle_secs: u64,
    /// First port of the DR site's Kafka cluster (43 ports from here: brokers, controllers 10, SASL 20, SSL 30 and SASL_SSL 40 above).
    #[arg(long, default_value_t = 29300)]
    pub dr_kafka_port: u16,
    /// Port of the DR writer; the DR reader listens on the next one.
    #[arg(long, default_value_t = 8210)]
    pub dr_port: u16,
    #[arg(long)]
    pub json: bool,
}

/// One acknowledged write.
#[derive(Clone)]
struct Ack {
    path: String,
    value: String,
    at: Instant,
}

async fn put(http: &reqwest::Client, url: &str, token: &str, path: &str, value: &str) -> bool {
    let r = http
        .post(format!("{url}/v1/secret/data/{path}"))
        .header("X-Vault-Token", token)
        .json(&json!({ "data": { "v": value } }))
        .send()
        .await;
    matches!(r, Ok(r) if r.status().is_success())
}

/// Write `n` secrets with `conc` clients; every success is recorded.
async fn load(http: &reqwest::Client, url: &str, token: &str, run: &str, n: usize, conc: usize) -> Vec<Ack> {
    let acks = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pb = super::bar(n as u64, "writing");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (http, url, token, run, acks, next, pb) =
            (http.clone(), url.to_string(), token.to_string(), run.to_string(), acks.clone(), next.clone(), pb.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let (path, value) = (format!("drill/{run}/k{i}"), format!("{run}-{i}"));
                if put(&http, &url, &token, &path, &value).await {
                    acks.lock().await.push(Ack { path, value, at: Instant::now() });
                }
                pb.inc(1);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    pb.finish_and_clear();
    Arc::try_unwrap(acks).map(Mutex::into_inner).unwrap_or_default()
}

/// SIGKILL every process of the primary region: brokers, writers, replicator.
fn lose_primary(data_dir: &std::path::Path, stack: &StackFile) {
    for b in LocalKafka::status(&KafkaConfig::new(data_dir)) {
        if let Some(pid) = b.pid {
            let _ = crate::process::signal(pid, libc::SIGKILL);
        }
    }
    for n in stack.writers.iter().chain(stack.replicator.iter()) {
        let _ = crate::process::signal(n.pid, libc::SIGKILL);
    }
}

/// The replicator's archive position and lag (`archive`, `archive_lag_seconds` of its health), or
/// `null` if it does not answer in time.
async fn archive_status(http: &reqwest::Client, replicator: &str) -> Value {
    let health = async {
        let r = http.get(format!("{replicator}/v1/sys/health")).timeout(Duration::from_secs(2)).send().await.ok()?;
        r.json::<Value>().await.ok()
    };
    match health.await {
        Some(h) => {
            json!({ "archive": h["secretlog"]["archive"], "archive_lag_seconds": h["secretlog"]["archive_lag_seconds"] })
        }
        None => Value::Null,
    }
}

/// Poll `f` every 100 ms until it succeeds; returns when.
async fn first_success<F, Fut>(deadline: Instant, mut f: F) -> Option<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while Instant::now() < deadline {
        if f().await {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.data_dir)?;
    let stack: StackFile = serde_json::from_slice(
        &std::fs::read(dir.join("stack.json"))
            .with_context(|| format!("no running stack at {} (run `secretlog up --detach` first)", dir.display()))?,
    )?;
    let objects_url = stack.object_store.clone().context("the stack has no object store (replicator)")?;
    let replicator = stack.replicator.clone().context("the stack has no replicator")?;
    let token = super::read_token(&stack.root_token_file)?;
    let http = super::http(Duration::from_secs(10))?;
    let leader = stack.writers.first().context("the stack has no writer")?.url.clone();
    let run = format!("{:08x}", rand::random::<u32>());

    // 1. Load, a snapshot (as the schedule would take), then a steady trickle until the disaster.
    let started = Instant::now();
    let mut acks = load(&http, &leader, &token, &run, args.secrets, args.concurrency).await;
    let load_secs = started.elapsed().as_secs_f64();
    let load_failed = args.secrets - acks.len();
    if acks.is_empty() {
        bail!("no load write succeeded; is the stack healthy? (`secretlog status`)");
    }
    if load_failed > 0 {
        eprintln!("drill: {load_failed} load writes were refused (not acknowledged, so not counted)");
    }
    let r = http
        .post(format!("{}/v1/sys/secretlog/snapshot", replicator.url))
        .header("X-Vault-Token", &token)
        .timeout(Duration::from_secs(600))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("the replicator did not take a snapshot: {}", r.status());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (http, leader, token, run, stop) = (http.clone(), leader.clone(), token.clone(), run.clone(), stop.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (path, value) = (format!("drill/{run}/t{i}"), format!("{run}-t{i}"));
                if put(&http, &leader, &token, &path, &value).await && !stop.load(Ordering::SeqCst) {
                    out.push(Ack { path, value, at: Instant::now() });
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_secs(args.trickle_secs)).await;

    // 2. The primary region is lost — after noting what the replicator had not yet archived,
    // which is what a restore can be missing (the report explains its RPO with it).
    let archive_at_loss = archive_status(&http, &replicator.url).await;
    let failed_at = Instant::now();
    lose_primary(&dir, &stack);
    stop.store(true, Ordering::SeqCst);
    acks.extend(trickle.await.unwrap_or_default());
    eprintln!("drill: primary region lost ({} acknowledged writes before it)", acks.len());

    // 3. Recovery on a fresh cluster.
    let dr_dir = dir.join(format!("dr-{run}"));
    let mut cfg = KafkaConfig::new(dr_dir.join("kafka-data"));
    cfg.base_port = args.dr_kafka_port;
    let pb = crate::output::spinner("starting the DR site's Kafka cluster");
    let kafka = LocalKafka::start_detached(cfg)?;
    kafka.wait_ready(Duration::from_secs(240))?;
    pb.finish_and_clear();
    let bootstrap = kafka.bootstrap_servers();
    let store = super::StoreArgs {
        object_store: Some(objects_url.clone()),
        data_dir: dir.clone(),
        root_key_file: Some(stack.root_key_file.clone()),
    };
    let reseeded = super::reseed::reseed(&super::reseed::ReseedArgs {
        store,
        bootstrap: bootstrap.clone(),
        topic: stack.topic.clone(),
        partitions: secretlog_schemas::topic::DEFAULT_PARTITIONS,
        point: super::rebuild::PointArgs {
            snapshot: "latest".into(),
            to_offset: None,
            to_time: None,
            work_dir: dr_dir.join("work"),
        },
        json: false,
    })
    .await
    .context("reseeding the DR cluster")?;
    eprintln!(
        "drill: reseeded {} secrets ({} records replayed from the archive)",
        reseeded["secrets"], reseeded["replayed_records"]
    );
    let promote = super::promote::PromoteArgs {
        bootstrap: bootstrap.clone(),
        topic: stack.topic.clone(),
        old_writers: stack.writers.iter().map(|w| w.url.clone()).collect(),
        checks: 2,
        check_interval_secs: 1,
        force: false,
        listen: format!("127.0.0.1:{}", args.dr_port),
        dir: dr_dir.clone(),
        root_key_file: stack.root_key_file.clone(),
        json: false,
    };
    if let Some(a) = super::promote::old_primary_answers(&promote.old_writers, 2, Duration::from_secs(1)).await? {
        bail!("the old primary still answers ({a}); the drill will not promote over it");
    }
    let (writer_url, _, writer_pid) = super::promote::start_writer(&promote).await?;
    let reader_port = args.dr_port + 1;
    let reader_args: Vec<String> = [
        "reader",
        "--listen",
        &format!("127.0.0.1:{reader_port}"),
        "--region",
        "dr",
        "--data-dir",
        &dr_dir.join("reader").display().to_string(),
        "--writer-url",
        &writer_url,
        "--topic",
        &stack.topic,
    ]
    .map(str::to_string)
    .to_vec();
    let (reader, _) =
        crate::stack::spawn_node(&dr_dir, "dr-reader", &reader_args, &stack.root_key_file, &bootstrap, false)?;
    let reader_url = format!("http://127.0.0.1:{reader_port}");
    let deadline = Instant::now() + Duration::from_secs(300);
    let probe = format!("drill/{run}/after-failover");
    let write_ok = first_success(deadline, || put(&http, &writer_url, &token, &probe, "ok"))
        .await
        .context("no successful write on the DR site within 300 s")?;
    let sample = acks.first().map(|a| a.path.clone()).unwrap_or_default();
    let read_ok =
        first_success(deadline, || {
            let u = format!("{reader_url}/v1/secret/data/{sample}");
            let (http, token) = (http.clone(), token.clone());
            async move {
                matches!(http.get(u).header("X-Vault-Token", token).send().await, Ok(r) if r.status().is_success())
            }
        })
        .await
        .context("no successful read on the DR site within 300 s")?;

    // 4. Every acknowledged write, read back from the DR reader (wait for it to catch up first).
    first_success(Instant::now() + Duration::from_secs(300), || {
        let u = format!("{reader_url}/v1/sys/health");
        let http = http.clone();
        async move { matches!(http.get(u).send().await, Ok(r) if r.status().as_u16() == 473) }
    })
    .await
    .context("the DR reader did not catch up within 300 s")?;
    let pb = super::bar(acks.len() as u64, "verifying acknowledged writes");
    let mut lost: Vec<Ack> = Vec::new();
    for chunk in acks.chunks(64) {
        let checks = chunk.iter().map(|a| {
            let (http, token, url) = (http.clone(), token.clone(), format!("{reader_url}/v1/secret/data/{}", a.path));
            async move {
                let body: Option<Value> = match http.get(url).header("X-Vault-Token", token).send().await {
                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                    _ => None,
                };
                body.is_some_and(|b| b["data"]["data"]["v"] == a.value.as_str())
            }
        });
        for (a, ok) in chunk.iter().zip(futures::future::join_all(checks).await) {
            if !ok {
                lost.push(a.clone());
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let last_ack = acks.iter().map(|a| a.at).max().unwrap_or(failed_at);
    let lost_span = lost.iter().map(|a| a.at).min().map_or(0.0, |first| (last_ack - first).as_secs_f64());
    // The first lost writes, each with how long before the loss it was acknowledged.
    let lost_sample: Vec<Value> = lost
        .iter()
        .take(10)
        .map(|a| json!({ "path": a.path, "acknowledged_before_loss_seconds": failed_at.saturating_duration_since(a.at).as_secs_f64() }))
        .collect();
    let report = json!({
        "secrets_loaded": args.secrets,
        "load_seconds": load_secs,
        "acknowledged_writes": acks.len(),
        "load_writes_refused": load_failed,
        "rto_first_write_seconds": (write_ok - failed_at).as_secs_f64(),
        "rto_first_read_seconds": (read_ok - failed_at).as_secs_f64(),
        "rpo_lost_writes": lost.len(),
        "rpo_seconds": lost_span,
        "rpo_lost_sample": lost_sample,
        "archive_at_loss": archive_at_loss,
        "dr_kafka": bootstrap,
        "dr_writer": writer_url,
        "dr_reader": reader_url,
        "dr_dir": dr_dir,
        "dr_kafka_dir": dr_dir.join("kafka-data"),
        "dr_pids": [writer_pid, reader.id()],
    });
    emit(args.json, &report, || {
        let mut t = crate::output::table(&["measure", "value"]);
        for (k, label) in [
            ("acknowledged_writes", "acknowledged writes before the loss"),
            ("rto_first_write_seconds", "RTO: failure → first write (s)"),
            ("rto_first_read_seconds", "RTO: failure → first read (s)"),
            ("rpo_lost_writes", "RPO: acknowledged writes lost"),
            ("rpo_seconds", "RPO: seconds of writes lost"),
        ] {
            let v = &report[k];
            t.add_row(vec![label.to_string(), v.as_f64().map(|f| format!("{f:.2}")).unwrap_or_else(|| v.to_string())]);
        }
        println!("{t}");
        println!(
            "DR site: Kafka {bootstrap}, writer {writer_url}, reader {reader_url} (files under {}).",
            dr_dir.display()
        );
        println!("The old stack is dead: `secretlog down` cleans it up; the DR site keeps running until you stop it.");
    })
}
