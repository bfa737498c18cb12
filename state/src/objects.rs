//! Object storage by URL: `file:///dir` (the default, a local directory) or `s3://bucket/prefix`
//! with credentials and endpoint from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`) — never from a
//! command line, never logged.

use std::sync::Arc;

use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use crate::error::NodeError;

/// An object store and the prefix everything of secretlog lives under.
#[derive(Clone)]
pub struct Objects {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URL, for logs and manifests (it holds no credentials).
    pub url: String,
}

impl Objects {
    /// Open the store a URL names, with S3 settings from this process's environment.
    pub fn open(url: &str) -> Result<Self, NodeError> {
        Self::open_with_env(url, std::env::vars())
    }

    /// Open the store a URL names, with S3 settings (`AWS_*`) taken from `env`.
    pub fn open_with_env(url: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, NodeError> {
        let bad = |reason: String| NodeError::Config { field: "object_store", reason };
        if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).map_err(|e| bad(format!("{dir}: {e}")))?;
            let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
            return Ok(Objects { store: Arc::new(fs), prefix: Path::default(), url: url.to_string() });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // Bounded retries: an outage must surface as an error within seconds (the archive
            // keeps its records and retries, and health reports it), not hang a request for the
            // client's default three minutes.
            let mut b = AmazonS3Builder::new();
            let mut endpoint = None;
            for (k, v) in env.into_iter().filter(|(k, _)| k.starts_with("AWS_")) {
                if k == "AWS_ENDPOINT" {
                    endpoint = Some(v.clone());
                }
                if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    b = b.with_config(key, v);
                }
            }
            b = b
                .with_bucket_name(bucket)
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "30s")
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "3s")
                .with_retry(RetryConfig {
                    max_retries: 4,
                    retry_timeout: Duration::from_secs(10),
                    ..Default::default()
                });
            if endpoint.is_some_and(|e| e.starts_with("http://")) {
                b = b.with_allow_http(true);
            }
            let s3 = b.build().map_err(|e| bad(e.to_string()))?;
            return Ok(Objects { store: Arc::new(s3), prefix: Path::from(prefix), url: url.to_string() });
        }
        Err(bad(format!("unsupported object store URL {url:?}: use file:///dir or s3://bucket/prefix")))
    }

    /// The full path of a relative name.
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }
}
