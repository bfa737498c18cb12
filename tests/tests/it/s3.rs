//! A real S3-compatible server for the tests: moto's server (`moto_server`, installed by
//! `scripts/bootstrap` from PyPI), one per test, on loopback — and a TCP proxy in front of it
//! that a test can cut and heal to simulate an object-storage outage. On the containers backend
//! (`SECRETLOG_TEST_BACKEND=containers`) the server is the `secretlog-local/moto` image in a
//! container instead, published on a loopback port the same way.
//!
//! moto was chosen over MinIO because it installs from the package registries reachable here;
//! secretlog does not rely on S3 conditional writes (object names are derived from offsets and
//! snapshot ids, so a retried upload replaces the same object), so moto's coverage suffices.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use secretlog_ops::process;
use secretlog_state::objects::Objects;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::harness::{Backend, eventually, free_port};

/// Credentials moto accepts (it does not check them); passed to nodes through the environment.
const KEY_ID: &str = "secretlog-test";
const SECRET: &str = "secretlog-test-secret";

/// How the server runs.
enum Moto {
    Process(Child),
    /// Held for its drop, which removes the container.
    Container(#[allow(dead_code)] crate::containers::MotoContainer),
}

/// A moto S3 server with one bucket, killed (or its container removed) when dropped.
pub struct S3Server {
    moto: Moto,
    /// The server's own endpoint.
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let (moto, endpoint) = match crate::harness::backend() {
            Backend::Local => {
                let port = free_port();
                let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("moto-{port}.log"));
                let mut cmd = Command::new("moto_server");
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).expect("moto log"));
                let child = process::spawn_attached(cmd).unwrap_or_else(|e| {
                    panic!("starting moto_server (the S3-compatible test server; scripts/bootstrap installs it): {e}")
                });
                (Moto::Process(child), format!("http://127.0.0.1:{port}"))
            }
            Backend::Containers => {
                let c = tokio::task::block_in_place(crate::containers::MotoContainer::start);
                let endpoint = c.endpoint.clone();
                (Moto::Container(c), endpoint)
            }
        };
        let bucket = "secretlog".to_string();
        let server = S3Server { moto, endpoint: endpoint.clone(), bucket: bucket.clone() };
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(60), "moto_server to answer", || {
            let (http, endpoint) = (http.clone(), endpoint.clone());
            async move { http.get(&endpoint).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        let r = http.put(format!("{endpoint}/{bucket}")).send().await.expect("creating the bucket");
        assert!(r.status().is_success(), "creating the bucket: {} {}", r.status(), r.text().await.unwrap_or_default());
        server
    }

    /// The environment a node needs to reach this server through `endpoint` (the server itself
    /// or a proxy in front of it).
    pub fn env(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", endpoint.to_string()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The object store URL of `prefix` in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// This test's own view of the store (straight to the server, never through a proxy).
    pub fn objects(&self, prefix: &str) -> Objects {
        let env = self.env(&self.endpoint).into_iter().map(|(k, v)| (k.to_string(), v));
        Objects::open_with_env(&self.url(prefix), env).expect("opening the S3 object store")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // A container is removed by its own drop.
        if let Moto::Process(child) = &mut self.moto {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every object under `rel`, with its bytes, sorted by name.
pub async fn read_all(objects: &Objects, rel: &str) -> Vec<(String, Vec<u8>)> {
    let prefix = objects.path(rel);
    let metas: Vec<_> = objects.store.list(Some(&prefix)).try_collect().await.expect("listing objects");
    let mut out = Vec::new();
    for m in metas {
        let bytes = objects.store.get(&m.location).await.expect("get").bytes().await.expect("body");
        out.push((m.location.to_string(), bytes.to_vec()));
    }
    out.sort();
    out
}

/// A TCP proxy that can cut every connection and refuse new ones (an outage), then heal.
///
/// Every connection belongs to the outage epoch it was accepted in and closes when a cut ends
/// that epoch: a connection accepted while a cut is under way cannot slip through and keep
/// serving a pooled client through the outage.
pub struct Proxy {
    pub endpoint: String,
    up: Arc<AtomicBool>,
    epoch: watch::Sender<u64>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let up = Arc::new(AtomicBool::new(true));
        let (epoch, _) = watch::channel(0u64);
        let (u, e) = (up.clone(), epoch.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // The epoch first, then the state: a cut that lands between the two is seen
                // either as "down" here or as a changed epoch by the connection.
                let mut cuts = e.subscribe();
                let born = *cuts.borrow_and_update();
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.wait_for(|now| *now != born) => {}
                    }
                });
            }
        })
        .abort_handle();
        Proxy { endpoint, up, epoch, accept }
    }

    /// Cut: close every open connection and refuse new ones.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    pub fn heal(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
