//! How the CLI talks to people: spinners for waits, tables for results, JSON for scripts.

use std::path::Path;
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

use crate::stack::StackFile;

/// A spinner on stderr (hidden when stderr is not a terminal).
pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A table with the house style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.iter().copied());
    t
}

/// What `secretlog up` prints once the stack is healthy.
pub fn print_stack(stack: &StackFile, path: &Path) {
    let mut t = table(&["node", "role", "url", "pid", "log"]);
    for w in &stack.writers {
        let role = if w.name == "writer-1" { "writer (leader at start)" } else { "writer (standby)" };
        t.add_row(vec![w.name.clone(), role.into(), w.url.clone(), w.pid.to_string(), w.log.display().to_string()]);
    }
    for r in &stack.readers {
        let role = format!("reader ({})", r.region.as_deref().unwrap_or("-"));
        t.add_row(vec![r.name.clone(), role, r.url.clone(), r.pid.to_string(), r.log.display().to_string()]);
    }
    if let Some(r) = &stack.replicator {
        t.add_row(vec![
            r.name.clone(),
            "replicator".into(),
            r.url.clone(),
            r.pid.to_string(),
            r.log.display().to_string(),
        ]);
    }
    println!("secretlog is up. Kafka: {}  topic: {}", stack.kafka_bootstrap, stack.topic);
    println!("{t}");
    let reader = stack.readers.first().map(|r| r.url.as_str()).unwrap_or("http://127.0.0.1:8300");
    println!("Use it with any Vault client:");
    println!("  export VAULT_ADDR={reader}");
    println!("  export VAULT_TOKEN=\"$(cat {})\"", stack.root_token_file.display());
    if let Some(o) = &stack.object_store {
        println!("Restore points (log archive, snapshots): {o}");
    }
    println!("Stack description: {}", path.display());
}
