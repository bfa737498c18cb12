//! Disaster recovery from the command line: snapshots (list, create, verify), point-in-time
//! rebuilds from a snapshot plus the log archive, restore into the running cluster, reseeding a
//! fresh Kafka cluster, promoting a DR site, and a drill that measures RTO and RPO.
//!
//! Every command reads the same object store the replicator writes (`--object-store`, or the
//! local stack's `DATA_DIR/objects`) and opens values with the root key only where it must
//! (deep verification); nothing here prints or logs a value or a token.

pub mod drill;
pub mod promote;
pub mod rebuild;
pub mod reseed;
pub mod restore;
pub mod snapshot;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use secretlog_schemas::archive::Manifest;
use secretlog_schemas::{Keyring, RootKey};
use secretlog_state::objects::Objects;

/// Where the restore points are, and the key that opens them.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Object store holding snapshots and the log archive: `file:///dir` or
    /// `s3://bucket/prefix` (S3 credentials from the AWS_* environment variables, never flags).
    /// Default: the local stack's `DATA_DIR/objects`.
    #[arg(long, env = "SECRETLOG_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Directory of the local stack (for the defaults of the other options).
    #[arg(long, env = "SECRETLOG_DATA_DIR", default_value = "./.secretlog")]
    pub data_dir: PathBuf,
    /// Root key file (`SECRETLOG_ROOT_KEY` takes precedence). Default: `DATA_DIR/root.key`.
    #[arg(long, env = "SECRETLOG_ROOT_KEY_FILE")]
    pub root_key_file: Option<PathBuf>,
}

impl StoreArgs {
    pub fn objects(&self) -> anyhow::Result<Objects> {
        let url = match &self.object_store {
            Some(u) => u.clone(),
            None => {
                let dir = std::path::absolute(self.data_dir.join("objects"))?;
                format!("file://{}", dir.display())
            }
        };
        Objects::open(&url).with_context(|| format!("opening the object store {url}"))
    }

    pub fn keyring(&self) -> anyhow::Result<Keyring> {
        let file = self.root_key_file.clone().unwrap_or_else(|| self.data_dir.join("root.key"));
        let key = RootKey::load(Some(&file)).with_context(|| format!("loading the root key ({})", file.display()))?;
        Ok(Keyring::from_root(&key))
    }
}

/// The snapshot `id`, or the newest when `id` is `latest`.
pub async fn find_snapshot(objects: &Objects, id: &str) -> anyhow::Result<Manifest> {
    let all = secretlog_state::bootstrap::list_snapshots(objects).await?;
    if all.is_empty() {
        bail!("no snapshot in {}", objects.url);
    }
    let found = if id == "latest" { all.last().cloned() } else { all.into_iter().find(|m| m.id == id) };
    found.ok_or_else(|| anyhow::anyhow!("no snapshot {id:?} in {} (see `secretlog snapshot list`)", objects.url))
}

/// An HTTP client for the nodes.
pub fn http(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(secretlog_node::api::tls::client_builder(None)?.timeout(timeout).build()?)
}

/// Read a token file (tokens never come from the command line).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading the token from {}", path.display()))?
        .trim()
        .to_string())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{pos}}/{{len}} {{bar:40}} {{per_sec}} eta {{eta}}"))
            .expect("valid template"),
    );
    pb
}

/// Print `value` as JSON, or the table.
pub fn emit(as_json: bool, value: &serde_json::Value, table: impl FnOnce()) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        table();
    }
    Ok(())
}
