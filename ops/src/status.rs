//! `secretlog status`: every node of the local stack, its role, health code and lag; the key
//! terms and how many values each still seals (from the first writer that answers).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::stack::StackFile;

/// Query each node's `/v1/sys/health` and print a table (or JSON).
pub async fn status(data_dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let path = data_dir.join("stack.json");
    let stack: StackFile = serde_json::from_slice(
        &std::fs::read(&path)
            .with_context(|| format!("no running stack described at {} (run `secretlog up`)", path.display()))?,
    )?;
    let client = secretlog_node::api::tls::client_builder(None)?.timeout(Duration::from_secs(2)).build()?;
    let mut rows = Vec::new();
    for n in stack.writers.iter().chain(stack.readers.iter()).chain(stack.replicator.iter()) {
        let (code, body) = match client.get(format!("{}/v1/sys/health", n.url)).send().await {
            Ok(r) => {
                let code = r.status().as_u16();
                (Some(code), r.json::<Value>().await.unwrap_or_default())
            }
            Err(e) => (None, json!({ "error": e.to_string() })),
        };
        let s = &body["secretlog"];
        rows.push(json!({
            "name": n.name,
            "url": n.url,
            "health_code": code,
            "role": s["role"],
            "region": n.region,
            "lag_records": s["lag_records"],
            "lag_seconds": s["lag_seconds"].as_f64().or(s["archive_lag_seconds"].as_f64()),
            "leader_epoch": s["leader_epoch"],
            "problem": s["problem"].as_str().or(body["error"].as_str()),
        }));
    }
    let snapshot = newest_snapshot(&stack).await;
    let keys = key_terms(&stack).await;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "kafka_bootstrap": stack.kafka_bootstrap,
                "nodes": rows,
                "newest_snapshot": snapshot,
                "key_terms": keys,
            }))?
        );
        return Ok(());
    }
    let mut t = crate::output::table(&["node", "role", "health", "lag (records)", "lag (s)", "epoch", "problem"]);
    for r in &rows {
        t.add_row(vec![
            r["name"].as_str().unwrap_or("").to_string(),
            r["role"].as_str().unwrap_or("-").to_string(),
            r["health_code"].as_u64().map(|c| c.to_string()).unwrap_or_else(|| "down".into()),
            r["lag_records"].as_i64().map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r["lag_seconds"].as_f64().map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into()),
            r["leader_epoch"].as_u64().map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            r["problem"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!("Kafka: {}", stack.kafka_bootstrap);
    println!("{t}");
    match &keys {
        Value::Null => println!("Key terms: no writer answered"),
        k if k.get("error").is_some() => println!("Key terms: {}", k["error"].as_str().unwrap_or("")),
        k => {
            println!("Key terms (active: {}):", k["term"]);
            crate::rotate::print_terms(k);
        }
    }
    match &snapshot {
        Value::Null => println!("Newest snapshot: none (`secretlog snapshot create`)"),
        s => println!(
            "Newest snapshot: {} ({} old){}",
            s["id"].as_str().unwrap_or(""),
            humantime::format_duration(Duration::from_secs(s["age_seconds"].as_u64().unwrap_or(0))),
            if s["stale"] == true { " — WARNING: older than 24 h" } else { "" }
        ),
    }
    Ok(())
}

/// The key status of the first writer that answers: terms, values per term, rewrap progress.
async fn key_terms(stack: &StackFile) -> Value {
    let mut last = Value::Null;
    for w in &stack.writers {
        let target = crate::rotate::WriterArgs { writer: w.url.clone(), token_file: stack.root_token_file.clone() };
        match crate::rotate::key_status(&target).await {
            Ok(v) => return v,
            Err(e) => last = json!({ "error": format!("{e:#}") }),
        }
    }
    last
}

/// The newest snapshot in the stack's object store: id, age, and whether it is stale.
async fn newest_snapshot(stack: &StackFile) -> Value {
    let Some(url) = &stack.object_store else { return Value::Null };
    let Ok(objects) = secretlog_state::objects::Objects::open(url) else { return Value::Null };
    match secretlog_state::bootstrap::list_snapshots(&objects).await {
        Ok(all) => all.last().map_or(Value::Null, |m| {
            let age = Duration::from_millis((secretlog_state::materializer::now_ms() - m.created_ms).max(0) as u64);
            json!({
                "id": m.id,
                "age_seconds": age.as_secs(),
                "stale": age > crate::dr::snapshot::STALE_AFTER,
                "secrets": m.secrets,
            })
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}
