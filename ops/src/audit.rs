//! `secretlog audit reopen`: make running nodes reopen their audit files, after the files were
//! renamed (logrotate) or moved away.
//!
//! It sends the node SIGHUP — what logrotate's `postrotate` and systemd's `ExecReload` send — so
//! it works on the node's own host, where the audit file is, without a token and without the
//! node's API being reachable (a node refusing every request because its audit disk is full is
//! exactly when an operator rotates). A pid is signalled only if it is a live secretlog process, so
//! a stale pid file never hits an unrelated process.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::process;
use crate::stack::StackFile;

/// What every secretlog node's command line contains (`secretlog reader ...`, or the tests'
/// `secretlog-it reader ...`).
const MARKER: &str = "secretlog";

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Reopen the audit files of running nodes (SIGHUP): after logrotate renamed them, entries go
    /// to new files at the configured paths. Without --pid or --pid-file: every node of the local
    /// stack in --data-dir.
    Reopen(ReopenArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReopenArgs {
    /// Process id of a node (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// File holding a node's process id, as systemd or a supervisor writes it (repeatable).
    #[arg(long)]
    pub pid_file: Vec<PathBuf>,
    /// Directory of the local stack (`secretlog up`): its `stack.json` names the nodes.
    #[arg(long, env = "SECRETLOG_DATA_DIR", default_value = "./.secretlog")]
    pub data_dir: PathBuf,
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Reopen(args) => reopen(args),
    }
}

fn reopen(args: ReopenArgs) -> anyhow::Result<()> {
    let mut targets: Vec<(String, u32)> = args.pid.iter().map(|p| (format!("pid {p}"), *p)).collect();
    for f in &args.pid_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let pid =
            text.trim().parse().with_context(|| format!("{}: not a process id: {:?}", f.display(), text.trim()))?;
        targets.push((format!("pid {pid} ({})", f.display()), pid));
    }
    if targets.is_empty() {
        let path = args.data_dir.join("stack.json");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("no --pid or --pid-file, and no local stack: cannot read {}", path.display()))?;
        let stack: StackFile = serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?;
        for n in stack.writers.iter().chain(stack.readers.iter()).chain(stack.replicator.iter()) {
            targets.push((format!("{} (pid {})", n.name, n.pid), n.pid));
        }
    }
    let mut failed = 0;
    for (what, pid) in &targets {
        if !process::alive_with(*pid, MARKER) {
            eprintln!("{what}: not a running secretlog node; not signalled");
            failed += 1;
            continue;
        }
        match process::signal(*pid, libc::SIGHUP) {
            Ok(()) => {
                println!("{what}: SIGHUP sent; it reopens its audit files (its log says \"audit file reopened\")")
            }
            Err(e) => {
                eprintln!("{what}: cannot signal: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} nodes not signalled", targets.len());
    }
    Ok(())
}
