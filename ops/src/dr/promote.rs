//! `secretlog promote`: make a DR site the primary once the old one is gone.
//!
//! Safety first, as the Vault-style seed asks: the old primary's writers are asked several times,
//! some seconds apart, and any answer refuses the promotion (unless `--force`: two primaries
//! accepting writes is the one outcome worse than downtime). Then a writer is started on the DR
//! site's Kafka cluster; its first records are a leader epoch above every epoch in that log, so
//! nothing an older writer could still send is ever applied. Last, what operators must change.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::emit;

#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// Bootstrap servers of the DR site's Kafka cluster (seeded with `secretlog reseed`).
    #[arg(long)]
    pub bootstrap: String,
    /// Mutation topic on it.
    #[arg(long, default_value = secretlog_schemas::topic::MUTATIONS_TOPIC)]
    pub topic: String,
    /// A writer URL of the old primary (repeatable); any answer from one refuses the promotion.
    #[arg(long = "old-writer", value_name = "URL")]
    pub old_writers: Vec<String>,
    /// How many times to check that the old primary is gone.
    #[arg(long, default_value_t = 3)]
    pub checks: u32,
    /// Seconds between checks.
    #[arg(long, default_value_t = 2)]
    pub check_interval_secs: u64,
    /// Promote even though the old primary answers (risk: two primaries).
    #[arg(long)]
    pub force: bool,
    /// Where the new primary's writer listens.
    #[arg(long, default_value = "127.0.0.1:8210")]
    pub listen: String,
    /// Directory for the new writer's state and logs.
    #[arg(long, default_value = "./.secretlog/dr")]
    pub dir: PathBuf,
    /// Root key file of the cluster (the same key as the old primary's).
    #[arg(long, env = "SECRETLOG_ROOT_KEY_FILE", default_value = "./.secretlog/root.key")]
    pub root_key_file: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// Whether any of `urls` answers its health endpoint, checked `checks` times.
pub async fn old_primary_answers(urls: &[String], checks: u32, interval: Duration) -> anyhow::Result<Option<String>> {
    let http = super::http(Duration::from_secs(2))?;
    for i in 0..checks.max(1) {
        for u in urls {
            if let Ok(r) = http.get(format!("{u}/v1/sys/health")).send().await {
                return Ok(Some(format!("{u} answered {} on check {}", r.status().as_u16(), i + 1)));
            }
        }
        if i + 1 < checks {
            tokio::time::sleep(interval).await;
        }
    }
    Ok(None)
}

/// Start a writer on the DR cluster and wait until it leads; returns its URL, health body and pid.
pub async fn start_writer(args: &PromoteArgs) -> anyhow::Result<(String, Value, u32)> {
    let url = format!("http://{}", args.listen);
    let data = args.dir.join("writer");
    let cmd = [
        "writer",
        "--listen",
        &args.listen,
        "--data-dir",
        &data.display().to_string(),
        "--root-token-file",
        &args.dir.join("root-token").display().to_string(),
        "--transactional-id",
        &format!("{}-writer", args.topic),
    ]
    .map(str::to_string);
    let mut cmd = cmd.to_vec();
    cmd.extend(["--topic".to_string(), args.topic.clone()]);
    let (mut child, log) =
        crate::stack::spawn_node(&args.dir, "dr-writer", &cmd, &args.root_key_file, &args.bootstrap, false)?;
    let http = super::http(Duration::from_secs(2))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the DR writer exited ({status}); {}:\n{}", log.display(), crate::process::tail_file(&log, 20));
        }
        if let Ok(r) = http.get(format!("{url}/v1/sys/health")).send().await
            && r.status().as_u16() == 200
        {
            return Ok((url, r.json().await.unwrap_or_default(), child.id()));
        }
        if Instant::now() > deadline {
            bail!(
                "the DR writer did not take the lead in 120 s; {}:\n{}",
                log.display(),
                crate::process::tail_file(&log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: PromoteArgs) -> anyhow::Result<()> {
    if args.old_writers.is_empty() && !args.force {
        bail!("name the old primary's writers with --old-writer URL (or --force to promote without checking)");
    }
    let pb = crate::output::spinner("checking that the old primary is gone");
    let answered =
        old_primary_answers(&args.old_writers, args.checks, Duration::from_secs(args.check_interval_secs)).await?;
    pb.finish_and_clear();
    match (&answered, args.force) {
        (Some(a), false) => bail!("refusing to promote: the old primary still answers ({a}); stop it, or use --force"),
        (Some(a), true) => eprintln!("WARNING: promoting although the old primary answers ({a}) because of --force"),
        (None, _) => {}
    }
    let partitions = secretlog_state::kafka::partition_count(&args.bootstrap, &args.topic, Duration::from_secs(10))
        .with_context(|| {
            format!("the DR cluster {} has no topic {} (run `secretlog reseed` first)", args.bootstrap, args.topic)
        })?;
    std::fs::create_dir_all(&args.dir)?;
    let pb = crate::output::spinner("starting the new primary writer");
    let (url, health, pid) = start_writer(&args).await?;
    pb.finish_and_clear();
    let report = json!({
        "writer": url,
        "bootstrap": args.bootstrap,
        "topic": args.topic,
        "partitions": partitions,
        "pid": pid,
        "leader_epoch": health["secretlog"]["leader_epoch"],
        "old_primary_answered": answered,
        "root_token_file": args.dir.join("root-token"),
    });
    emit(args.json, &report, || {
        println!("Promoted: the DR site accepts writes at {url} (Kafka {}).", args.bootstrap);
        println!("Operators must now:");
        println!("  * point clients' VAULT_ADDR at the DR readers (or {url} for writes);");
        println!("  * start DR readers with KAFKA_BOOTSTRAP_SERVERS={} and EMPTY data directories;", args.bootstrap);
        println!(
            "  * give the DR replicator its own object store prefix (the old archive belongs to the lost cluster);"
        );
        println!(
            "  * keep the old primary's writers down: if they come back, they must not be restarted against clients."
        );
    })
}
