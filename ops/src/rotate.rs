//! `secretlog rotate` and `secretlog retire-term`: key rotation from the command line.
//!
//! `rotate` asks the leader writer for a new key term (`POST /v1/sys/rotate`): new writes are
//! sealed under it as soon as the command returns; a background rewrap on the leader moves older
//! values to it. With `--wait` it follows the rewrap (`GET /v1/sys/key-status`) with a progress
//! bar until nothing is left under older terms. `retire-term N` then retires term `N`; the writer
//! refuses while any value still uses it, saying how many. The token comes from a file, never
//! from the command line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::dr::{emit, http, read_token};

/// Where the leader writer is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct WriterArgs {
    /// Writer URL (a standby forwards to the leader).
    #[arg(long, env = "SECRETLOG_WRITER_URL", default_value = "http://127.0.0.1:8200")]
    pub writer: String,
    /// File holding the root token.
    #[arg(long, default_value = "./.secretlog/root-token")]
    pub token_file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub target: WriterArgs,
    /// Wait until the rewrap has moved every value to the new term, showing its progress.
    #[arg(long)]
    pub wait: bool,
    /// Set the leader's rewrap rate first (values per second; 0 pauses the rewrap).
    #[arg(long)]
    pub rewrap_rate: Option<u64>,
    /// Give up waiting after this long (with --wait).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RetireArgs {
    /// The key term to retire (older than the active term, and sealing no value any more).
    pub term: u32,
    #[command(flatten)]
    pub target: WriterArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One request to the writer; a non-2xx answer is an error carrying Vault's error messages.
async fn call(method: reqwest::Method, target: &WriterArgs, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let token = read_token(&target.token_file)?;
    let mut rb = http(Duration::from_secs(60))?.request(method, format!("{}/{path}", target.writer));
    rb = rb.header("X-Vault-Token", token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.with_context(|| format!("calling the writer at {}", target.writer))?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let errors = v["errors"].as_array().map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "));
        bail!("the writer answered {status}: {}", errors.unwrap_or(text));
    }
    Ok(v)
}

/// The writer's key status (`GET /v1/sys/key-status`), its `data`.
pub async fn key_status(target: &WriterArgs) -> anyhow::Result<Value> {
    Ok(call(reqwest::Method::GET, target, "v1/sys/key-status", None).await?["data"].clone())
}

/// `secretlog rotate`.
pub async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    if let Some(rate) = args.rewrap_rate {
        call(reqwest::Method::POST, &args.target, "v1/sys/secretlog/rewrap", Some(json!({ "rate": rate }))).await?;
    }
    let before = key_status(&args.target).await?;
    call(reqwest::Method::POST, &args.target, "v1/sys/rotate", None).await?;
    let mut status = key_status(&args.target).await?;
    let term = status["term"].as_u64().unwrap_or(0);
    if !args.json {
        println!(
            "Key term {term} is active (was {}); new writes are sealed under it.",
            before["term"].as_u64().unwrap_or(0)
        );
    }
    if args.wait {
        status = wait_for_rewrap(&args.target, args.timeout, !args.json).await?;
    }
    emit(args.json, &status, || print_terms(&status))
}

/// Follow the rewrap until nothing is left under older terms.
async fn wait_for_rewrap(target: &WriterArgs, timeout: Duration, show: bool) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut status = key_status(target).await?;
    let total = status["rewrap"]["remaining"].as_u64().unwrap_or(0);
    let pb = if show { crate::dr::bar(total, "rewrapping") } else { indicatif::ProgressBar::hidden() };
    loop {
        let left = status["rewrap"]["remaining"].as_u64().unwrap_or(0);
        pb.set_length(total.max(left));
        pb.set_position(total.saturating_sub(left));
        if left == 0 {
            break;
        }
        if started.elapsed() > timeout {
            pb.abandon();
            bail!("the rewrap still has {left} values to move after {timeout:?}; it goes on in the background");
        }
        if status["rewrap"]["paused"] == true {
            pb.println(format!("the rewrap is paused (rate 0) with {left} values left; set a rate to resume"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = key_status(target).await?;
    }
    pb.finish_and_clear();
    if show {
        println!("Rewrap done in {:.1?}: every value is sealed under the active term.", started.elapsed());
    }
    Ok(status)
}

/// `secretlog retire-term N`.
pub async fn retire(args: RetireArgs) -> anyhow::Result<()> {
    call(reqwest::Method::POST, &args.target, "v1/sys/secretlog/retire-term", Some(json!({ "term": args.term })))
        .await?;
    let status = key_status(&args.target).await?;
    emit(args.json, &status, || {
        println!("Key term {} is retired: nodes refuse values under it from now on.", args.term);
        print_terms(&status);
    })
}

/// The key-term table of a key status.
pub fn print_terms(status: &Value) {
    let mut t = crate::output::table(&["term", "state", "installed", "retired", "values"]);
    for term in status["terms"].as_array().into_iter().flatten() {
        let state = if term["active"] == true {
            "active"
        } else if term["retired"] == true {
            "retired"
        } else {
            "older"
        };
        t.add_row(vec![
            term["term"].to_string(),
            state.to_string(),
            term["install_time"].as_str().unwrap_or("-").to_string(),
            term["retire_time"].as_str().unwrap_or("-").to_string(),
            term["values"].to_string(),
        ]);
    }
    println!("{t}");
    let rewrap = &status["rewrap"];
    let left = rewrap["remaining"].as_u64().unwrap_or(0);
    if left > 0 {
        println!(
            "Rewrap: {left} values still under older terms ({}).",
            if rewrap["paused"] == true { "paused".to_string() } else { format!("{} values/s", rewrap["rate"]) }
        );
    }
}
