//! The audit log (issue #8): every request and every response of a node, one JSON line each,
//! written *before* the request is executed and before its answer leaves — and failing closed.
//!
//! Entries are modelled on Vault's file audit device:
//!
//! ```json
//! {"time":"…","type":"request","node":"reader","auth":{"client_token":"hmac-sha256:…","accessor":"hmac-sha256:…","policies":["app"],"display_name":"token"},
//!  "request":{"id":"…","operation":"read","method":"GET","path":"v1/secret/data/app/db","remote_address":"10.0.0.7","remote_port":51234,"forwarded":false,"data":{…}}}
//! {"time":"…","type":"response", …same auth and request…, "response":{"status":200,"body":{"data":{"data":{"password":"hmac-sha256:…"}},…}},"error":""}
//! ```
//!
//! Nothing secret is written in plaintext: the client token, accessors, every scalar of a
//! request body and every scalar under a response's `data` become `hmac-sha256:<hex>` under the
//! keyring's audit key ([`Keyring::audit_hmac`]). The HMAC is stable, so an operator with the
//! root key can compute a suspect token's HMAC and find its uses; object keys (secret field
//! names) are kept, as Vault keeps them.
//!
//! Entries go to one or more sinks: a file ([`FileSink`], `--audit-file`; reopened on SIGHUP and
//! rotated by size with `--audit-max-bytes`) and a Kafka topic
//! ([`KafkaSink`], `--audit-kafka-topic`, acks=all) — the node's own devices — and every device
//! enabled through the log (`bao audit enable`, [`AuditDevices`]), opened when the node applied
//! the event and closed when it applied the disable. As in Vault, an entry is on record once *one*
//! sink has recorded it; the other sinks finish in the background and their failures are counted.
//! A request no sink could record is refused (503, `audit log unavailable: …`) and not executed;
//! an answer no sink could record is withheld the same way (the request may have taken effect: a
//! write, say). `--audit-fail-open` serves them anyway. Every sink failure is counted in
//! `secretlog_audit_failures_total{sink}`, every byte recorded in `secretlog_audit_bytes_total{sink}`.
//! Health and metrics are not audited (they are polled
//! constantly and carry no secret).

mod file;
mod kafka;
mod redact;

pub use secretlog_state::audit_devices::AuditDevices;

pub(crate) use file::BYTES_METRIC;
pub(crate) use file::reopen_on_hangup;
pub(crate) use file::{FileSink, Rotation};
pub(crate) use kafka::KafkaSink;
pub(crate) use redact::Redactor;
use redact::json_string;

#[cfg(test)]
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;

use secretlog_schemas::audit::{self, AuditDeviceRecord};
#[cfg(test)]
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::api::auth::Identity;
use crate::api::{ApiError, ApiRequest, ApiResponse, Handler, Route};
use crate::config::LogConfig;
use crate::context::ReadContext;
use secretlog_state::error::NodeError;

/// Counter of audit entries that could not be written.
pub(crate) const FAILURES_METRIC: &str = "secretlog_audit_failures_total";

/// Where entries go: one line per entry, written whole — an audit file ([`FileSink`]), or any
/// writer (tests).
pub(crate) struct Sink {
    out: Out,
}

enum Out {
    File(Arc<FileSink>),
    /// Any other writer (tests), serialised.
    #[cfg(test)]
    Writer(std::sync::Mutex<Box<dyn Write + Send>>),
}

impl Sink {
    /// Append to `path` (created with mode 0600), rotated by size if `rotation` says so; the
    /// process's device for that path if it has one open already.
    pub fn open(path: &Path, rotation: Option<Rotation>) -> std::io::Result<Sink> {
        Ok(Sink { out: Out::File(FileSink::open(path, rotation)?) })
    }

    /// Any writer (tests).
    #[cfg(test)]
    pub(crate) fn from_writer(w: impl Write + Send + 'static) -> Sink {
        Sink { out: Out::Writer(std::sync::Mutex::new(Box::new(w))) }
    }

    /// Write one entry as one line. An error means the entry is not (entirely) on record.
    #[cfg(test)]
    pub(crate) fn write_entry(&self, entry: &impl Serialize) -> std::io::Result<()> {
        self.write_line(&line_of(entry).map_err(std::io::Error::other)?)
    }

    /// Write one whole line (ending in `\n`).
    fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        match &self.out {
            Out::File(f) => f.write_line(line),
            #[cfg(test)]
            Out::Writer(w) => {
                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                w.write_all(line)?;
                w.flush()
            }
        }
    }

    fn path(&self) -> Option<&Path> {
        match &self.out {
            Out::File(f) => Some(f.path()),
            #[cfg(test)]
            Out::Writer(_) => None,
        }
    }
}

/// An entry as one JSON line.
#[cfg(test)]
fn line_of(entry: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(&mut line, entry)?;
    line.push(b'\n');
    Ok(line)
}

/// One entry as one JSON line, its fields in the order of the module's example, printed
/// straight from its parts (`auth`, `request` and `response` are JSON texts: the `auth` and
/// `request` of a request's two entries are printed once and written in both).
fn entry_line(kind: &str, node: &str, auth: &str, request: &str, response: Option<(&str, &str)>) -> Vec<u8> {
    let mut line = Vec::with_capacity(128 + auth.len() + request.len() + response.map_or(0, |(r, _)| r.len()));
    line.extend_from_slice(b"{\"time\":");
    json_string(&mut line, &now());
    line.extend_from_slice(b",\"type\":");
    json_string(&mut line, kind);
    line.extend_from_slice(b",\"node\":");
    json_string(&mut line, node);
    line.extend_from_slice(b",\"auth\":");
    line.extend_from_slice(auth.as_bytes());
    line.extend_from_slice(b",\"request\":");
    line.extend_from_slice(request.as_bytes());
    if let Some((response, error)) = response {
        line.extend_from_slice(b",\"response\":");
        line.extend_from_slice(response.as_bytes());
        line.extend_from_slice(b",\"error\":");
        json_string(&mut line, error);
    }
    line.extend_from_slice(b"}\n");
    line
}

/// One place entries go.
enum Device {
    File(Sink),
    Kafka(KafkaSink),
    /// A device enabled through the log that this node could not open: every entry it is given
    /// fails with `reason` (and is tried again, see [`Auditor::devices`]).
    Unavailable {
        kind: &'static str,
        reason: String,
    },
}

impl Device {
    /// The `sink` label of the failure counter.
    fn label(&self) -> &'static str {
        match self {
            Device::File(_) => "file",
            Device::Kafka(_) => "kafka",
            Device::Unavailable { kind, .. } => kind,
        }
    }

    /// What the sink is, for messages: `file /var/log/audit.log`, `kafka topic audit`.
    fn describe(&self) -> String {
        match self {
            Device::File(s) => format!("file {}", s.path().map(|p| p.display().to_string()).unwrap_or_default()),
            Device::Kafka(k) => format!("kafka topic {}", k.topic()),
            Device::Unavailable { kind, .. } => format!("{kind}, not open"),
        }
    }

    /// Start recording `line`: a file is written now, a Kafka record is enqueued now (so the
    /// order of entries is the order of calls) and the future resolves once it is acknowledged.
    fn start(&self, line: &[u8], key: &str) -> BoxFuture<'static, Result<(), String>> {
        match self {
            Device::File(s) => {
                let res = s.write_line(line).map_err(|e| e.to_string());
                Box::pin(std::future::ready(res))
            }
            Device::Kafka(k) => k.send(line, key),
            Device::Unavailable { reason, .. } => Box::pin(std::future::ready(Err(reason.clone()))),
        }
    }
}

/// A device under its `sys/audit` path: one of the node's own (its flags: `local`) or one
/// enabled through the log (`record`).
struct Mounted {
    path: String,
    device: Device,
    record: Option<AuditDeviceRecord>,
    /// `secretlog_audit_bytes_total` and `secretlog_audit_failures_total` of its type (looked up
    /// once: a labelled lookup per entry was a measurable part of an audited read).
    bytes: metrics::Counter,
    failures: metrics::Counter,
}

impl Mounted {
    fn new(path: &str, device: Device, record: Option<AuditDeviceRecord>) -> Mounted {
        let bytes = metrics::counter!(BYTES_METRIC, "sink" => device.label());
        let failures = metrics::counter!(FAILURES_METRIC, "sink" => device.label());
        // Exported at 0 from the start, so an alert on them has a series to watch.
        bytes.increment(0);
        failures.increment(0);
        Mounted { path: path.into(), device, record, bytes, failures }
    }

    fn local(path: &str, device: Device) -> Mounted {
        Mounted::new(path, device, None)
    }

    /// Open the device `record` describes, or one that refuses every entry saying why not
    /// (logged as an error unless `retrying`: the retries every second are not).
    fn open(path: &str, record: &AuditDeviceRecord, kafka: Option<&KafkaSettings>, retrying: bool) -> Mounted {
        let device = match open_device(record, kafka) {
            Ok(d) => {
                tracing::info!(device = %path, sink = %d.describe(), "audit device enabled through the log is open");
                d
            }
            Err(reason) => {
                let kind = if record.kind == audit::KAFKA { "kafka" } else { "file" };
                if retrying {
                    tracing::debug!(device = %path, %reason, "audit device still cannot be opened");
                } else {
                    tracing::error!(device = %path, %reason, "cannot open an audit device enabled through the log: requests are refused while it is the only device; retried every second");
                }
                Device::Unavailable { kind, reason }
            }
        };
        Mounted::new(path, device, Some(record.clone()))
    }

    /// Its entry in `GET sys/audit`.
    fn listing(&self) -> crate::api::sys::AuditListing {
        let (kind, options) = match (&self.record, &self.device) {
            (Some(r), _) => (r.kind.clone(), json!(r.options)),
            (None, Device::File(s)) => {
                let path = s.path().map(|p| p.display().to_string()).unwrap_or_default();
                ("file".into(), json!({ "file_path": path }))
            }
            (None, Device::Kafka(k)) => ("kafka".into(), json!({ "topic": k.topic() })),
            (None, Device::Unavailable { kind, .. }) => (kind.to_string(), json!({})),
        };
        crate::api::sys::AuditListing {
            path: self.path.clone(),
            kind,
            description: self.record.as_ref().map(|r| r.description.clone()).unwrap_or_default(),
            options,
            local: self.record.is_none(),
        }
    }
}

/// What a Kafka device enabled through the log needs from the node's flags.
#[derive(Clone)]
struct KafkaSettings {
    bootstrap: String,
    timeout: Duration,
}

fn open_device(record: &AuditDeviceRecord, kafka: Option<&KafkaSettings>) -> Result<Device, String> {
    match record.kind.as_str() {
        audit::FILE => {
            let path = Path::new(record.option("file_path"));
            let sink = Sink::open(path, None).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Ok(Device::File(sink))
        }
        audit::KAFKA => {
            let k = kafka.ok_or("this node has no Kafka settings")?;
            let topic = record.option("topic");
            let sink = KafkaSink::new(&k.bootstrap, topic, k.timeout).map_err(|e| e.to_string())?;
            sink.check_topic_in_background(k.bootstrap.clone());
            Ok(Device::Kafka(sink))
        }
        other => Err(format!("unknown audit device type {other:?}")),
    }
}

/// The devices of the moment: the node's own, then those of the log's table `table`.
struct Opened {
    table: Arc<AuditDevices>,
    all: Arc<Vec<Arc<Mounted>>>,
    /// When to try again to open a device that could not be opened.
    retry_at: Option<Instant>,
}

/// Who each token is, as printed in `auth`, by its audit HMAC (never the token itself), while the
/// node's tokens and policies are as they were (`Progress::auth_version`): a revocation, a
/// renewal, a new token, a new root token or a policy change empties it.
#[derive(Default)]
struct AuthCache {
    version: u64,
    entries: std::collections::HashMap<String, Arc<str>>,
}

/// Tokens whose `auth` is kept at most; past it the cache starts again empty.
const AUTH_CACHE_ENTRIES: usize = 4096;

/// How long a device that could not be opened waits before it is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// The identity a token names in this node's state, if any (expiry is the handler's business).
async fn lookup(ctx: &ReadContext, token: &str) -> Option<Identity> {
    let root = ctx.store.root_token_hash().await.ok()??;
    if ctx.keyring.token_matches(token, &root) {
        return Some(Identity::Root);
    }
    let hash = ctx.keyring.token_hash(token);
    let record = crate::api::auth::token_record(ctx, &hash).await.ok()??;
    Some(Identity::Token { hash, record })
}

/// Vault's name for what a request does.
pub fn operation(method: &str) -> std::borrow::Cow<'static, str> {
    match method {
        "GET" | "HEAD" => "read".into(),
        "LIST" => "list".into(),
        "POST" | "PUT" => "update".into(),
        "PATCH" => "patch".into(),
        "DELETE" => "delete".into(),
        other => other.to_ascii_lowercase().into(),
    }
}

/// Whether a request is audited: everything but health and metrics.
pub fn audited(req: &ApiRequest) -> bool {
    !matches!(req.route(), Route::Health | Route::Metrics)
}

/// Count and log one device's failure to record an entry.
fn sink_failed(m: &Mounted, kind: &str, error: &str, fail_open: bool) {
    m.failures.increment(1);
    tracing::error!(error, sink = %m.device.describe(), kind, fail_open, "cannot record an audit entry");
}

/// Why a device did not record an entry, naming it, for the refusal's message.
fn device_error(m: &Mounted, error: &str) -> String {
    format!("device {}/ ({}): {error}", m.path, m.device.describe())
}

/// Count the bytes of one entry a device recorded.
fn sink_recorded(m: &Mounted, bytes: u64) {
    m.bytes.increment(bytes);
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// The error text of an answer: its `errors`, joined, or `""`.
fn error_of(resp: &ApiResponse) -> String {
    if resp.status < 400 {
        return String::new();
    }
    serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|b| b.get("errors").and_then(Value::as_array).cloned())
        .map(|errs| {
            errs.iter().map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string)).collect::<Vec<_>>().join("; ")
        })
        .unwrap_or_default()
}

/// The audit devices of a node — its own ([`Auditor::from_config`]) and those enabled through the
/// log ([`AuditDevices`]) — and the redaction every entry goes through.
pub(crate) struct Auditor {
    node: String,
    local: Vec<Arc<Mounted>>,
    opened: std::sync::Mutex<Opened>,
    auth_cache: std::sync::Mutex<AuthCache>,
    kafka: Option<KafkaSettings>,
    redactor: Redactor,
    ctx: Option<ReadContext>,
    fail_open: bool,
}

impl Auditor {
    /// The node's auditor, with a device for `--audit-file` and for `--audit-kafka-topic` if set
    /// (and, once given the node's state, every device enabled through the log). An unopenable
    /// file stops the node from starting (better than a node that refuses every request); a Kafka
    /// topic is checked in the background (Kafka may come up after the node) and a missing one
    /// reported loudly.
    pub(crate) fn from_config(log: &LogConfig, node: &str) -> Result<Auditor, NodeError> {
        let mut auditor = Auditor::without_sinks(node, log.audit_fail_open);
        auditor.kafka = Some(KafkaSettings {
            bootstrap: log.bootstrap.clone(),
            timeout: Duration::from_millis(log.audit_kafka_timeout_ms),
        });
        if let Some(path) = &log.audit_file {
            let rotation = match (log.audit_max_bytes, log.audit_keep) {
                (0, _) => None,
                (_, 0) => {
                    return Err(NodeError::Config {
                        field: "audit-keep",
                        reason: "must be at least 1 with --audit-max-bytes (rotated files kept)".into(),
                    });
                }
                (max_bytes, keep) => Some(Rotation { max_bytes, keep }),
            };
            let sink = Sink::open(path, rotation).map_err(|e| NodeError::Config {
                field: "audit-file",
                reason: format!("cannot open the audit log {}: {e}", path.display()),
            })?;
            tracing::info!(file = %path.display(), ?rotation, "auditing every request to a file");
            auditor = auditor.with_sink("file", Device::File(sink));
        }
        if let Some(topic) = &log.audit_kafka_topic {
            let sink = KafkaSink::new(&log.bootstrap, topic, Duration::from_millis(log.audit_kafka_timeout_ms))?;
            sink.check_topic_in_background(log.bootstrap.clone());
            tracing::info!(%topic, "auditing every request to a Kafka topic");
            auditor = auditor.with_sink("kafka", Device::Kafka(sink));
        }
        if log.audit_fail_open && auditor.has_own_devices() {
            tracing::warn!("--audit-fail-open: requests are served even when they cannot be audited");
        }
        Ok(auditor)
    }

    /// Whether the node's flags gave it a device (a sealed node audits only to those).
    pub(crate) fn has_own_devices(&self) -> bool {
        !self.local.is_empty()
    }

    /// An auditor writing to `sink` (more sinks: [`Auditor::with_kafka`]; tests).
    #[cfg(test)]
    pub(crate) fn new(node: &str, sink: Sink, fail_open: bool) -> Auditor {
        Auditor::without_sinks(node, fail_open).with_sink("file", Device::File(sink))
    }

    /// Also record every entry in a Kafka topic (tests).
    #[cfg(test)]
    pub(crate) fn with_kafka(self, sink: KafkaSink) -> Auditor {
        self.with_sink("kafka", Device::Kafka(sink))
    }

    fn without_sinks(node: &str, fail_open: bool) -> Auditor {
        Auditor {
            node: node.to_string(),
            local: Vec::new(),
            opened: std::sync::Mutex::new(Opened { table: Arc::default(), all: Arc::default(), retry_at: None }),
            auth_cache: std::sync::Mutex::new(AuthCache::default()),
            kafka: None,
            redactor: Redactor::new(None),
            ctx: None,
            fail_open,
        }
    }

    fn with_sink(mut self, path: &str, device: Device) -> Auditor {
        self.local.push(Arc::new(Mounted::local(path, device)));
        let opened = self.opened.get_mut().unwrap_or_else(|e| e.into_inner());
        opened.all = Arc::new(self.local.clone());
        self
    }

    /// Open and close devices as the node applies their events (and retry one that could not be
    /// opened), until `cancel`.
    pub(crate) async fn follow_the_log(self: Arc<Self>, ctx: ReadContext, cancel: tokio_util::sync::CancellationToken) {
        let mut progress = ctx.materializer.progress.clone();
        loop {
            self.devices();
            let table = ctx.audit_devices();
            // Woken by a change of the table, or every REOPEN_EVERY to retry a device that
            // could not be opened.
            let changed =
                tokio::time::timeout(REOPEN_EVERY, progress.wait_for(|p| !Arc::ptr_eq(&p.audit_devices, &table)));
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = changed => {
                    if matches!(changed, Ok(Err(_))) {
                        return;
                    }
                }
            }
        }
    }

    /// The devices to record to now: the node's own, then every device of the log's table as
    /// this node applied it. A table that changed since the last call is opened again (devices
    /// whose record is unchanged are kept as they are); one that could not be opened is tried
    /// again every [`REOPEN_EVERY`].
    fn devices(&self) -> Arc<Vec<Arc<Mounted>>> {
        let table = self.ctx.as_ref().map(ReadContext::audit_devices);
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        let Some(table) = table else { return opened.all.clone() };
        let retry = opened.retry_at.is_some_and(|t| Instant::now() >= t);
        if !Arc::ptr_eq(&opened.table, &table) || retry {
            let mut all = self.local.clone();
            let mut unavailable = false;
            for (path, record) in table.iter() {
                let previous = opened.all.iter().find(|m| m.path == path && m.record.as_ref() == Some(record));
                let m = match previous {
                    Some(m) if !matches!(m.device, Device::Unavailable { .. }) => m.clone(),
                    // Opened again; quietly if it already failed.
                    previous => Arc::new(Mounted::open(path, record, self.kafka.as_ref(), previous.is_some())),
                };
                unavailable |= matches!(m.device, Device::Unavailable { .. });
                all.push(m);
            }
            for gone in opened.all.iter().filter(|m| m.record.is_some() && !table.iter().any(|(p, _)| p == m.path)) {
                tracing::info!(device = %gone.path, "audit device disabled through the log is closed");
            }
            *opened =
                Opened { table, all: Arc::new(all), retry_at: unavailable.then(|| Instant::now() + REOPEN_EVERY) };
        }
        opened.all.clone()
    }

    /// The node's state: its keyring HMACs entries, its token records name the caller.
    pub fn with_context(mut self, ctx: Option<ReadContext>) -> Auditor {
        self.redactor = Redactor::new(ctx.as_ref().map(|c| c.keyring.clone()));
        self.ctx = ctx;
        self
    }

    /// Wrap a node's handler so that every request goes through the audit log.
    pub fn wrap(self: Arc<Self>, inner: Handler) -> Handler {
        Arc::new(move |req| {
            let (auditor, inner) = (self.clone(), inner.clone());
            Box::pin(async move { auditor.handle(req, inner).await })
        })
    }

    async fn handle(&self, req: ApiRequest, inner: Handler) -> ApiResponse {
        if !audited(&req) {
            return inner(req).await;
        }
        let devices = self.devices();
        if devices.is_empty() {
            // No device at all: nothing to record, as in Vault without an audit device.
            return match self.answer(&req, &devices).await {
                Some(resp) => resp,
                None => inner(req).await,
            };
        }
        // Printed once, written in both entries.
        let auth = match self.auth(&req).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot print an audit entry");
                return ApiError::internal().into();
            }
        };
        let request = self.request_entry(&req, crate::api::remote_addr());
        let line = entry_line("request", &self.node, &auth, &request, None);
        if let Err(e) = self.record(&devices, line, "request", &req.request_id).await
            && !self.fail_open
        {
            return ApiError::unavailable(format!("audit log unavailable: {e}")).into();
        }
        let key = req.request_id.clone();
        let resp = match self.answer(&req, &devices).await {
            Some(resp) => resp,
            None => inner(req).await,
        };
        let response = self.response_entry(&resp);
        let line = entry_line("response", &self.node, &auth, &request, Some((&response, &error_of(&resp))));
        if let Err(e) = self.record(&devices, line, "response", &key).await
            && !self.fail_open
        {
            return ApiError::unavailable(format!(
                "audit log unavailable: {e} (the answer was withheld; the request may have taken effect)"
            ))
            .into();
        }
        resp
    }

    /// `GET sys/audit` and `sys/audit-hash/<device>`, answered with this node's devices (audited
    /// like any request); `None` for every other request.
    async fn answer(&self, req: &ApiRequest, devices: &[Arc<Mounted>]) -> Option<ApiResponse> {
        let list = req.method == "GET" && req.route() == Route::Audit;
        let hash = crate::api::sys::audit_hash_device(&req.path)
            .filter(|_| req.route() == Route::AuditHash && matches!(req.method.as_str(), "POST" | "PUT"));
        if !list && hash.is_none() {
            return None;
        }
        let Some(ctx) = &self.ctx else {
            return Some(ApiError::unavailable("the node is sealed").into());
        };
        if let Err(e) = crate::api::auth::authorize(ctx, req).await {
            return Some(e.into());
        }
        if list {
            let listing: Vec<_> = devices.iter().map(|d| d.listing()).collect();
            return Some(crate::api::sys::audit_list(req, &listing));
        }
        let known = devices.iter().any(|d| Some(d.path.as_str()) == hash);
        let hmac = |input: &[u8]| self.redactor.hmac(input);
        Some(
            crate::api::sys::audit_hash(req, known.then_some(&hmac as &dyn Fn(&[u8]) -> String))
                .unwrap_or_else(Into::into),
        )
    }

    /// Record one entry on `devices` (`key`: the request id, which keeps a request's two entries in one
    /// Kafka partition, in order). `Ok` as soon as one sink has recorded it; the others finish
    /// in the background. `Err` lists why each sink failed. Every failure is counted and logged
    /// (without the entry).
    async fn record(
        &self,
        devices: &[Arc<Mounted>],
        line: Vec<u8>,
        kind: &'static str,
        key: &str,
    ) -> Result<(), String> {
        let bytes = line.len() as u64;
        if let [m] = devices {
            // The usual case, one device: no set of futures to build for it.
            return match m.device.start(&line, key).await {
                Ok(()) => {
                    sink_recorded(m, bytes);
                    Ok(())
                }
                Err(e) => {
                    sink_failed(m, kind, &e, self.fail_open);
                    Err(device_error(m, &e))
                }
            };
        }
        let mut pending: FuturesUnordered<_> = devices
            .iter()
            .map(|m| {
                let (m, fut) = (m.clone(), m.device.start(&line, key));
                async move { (m, fut.await) }
            })
            .collect();
        let mut errors = Vec::new();
        while let Some((m, res)) = pending.next().await {
            match res {
                Ok(()) => {
                    sink_recorded(&m, bytes);
                    if !pending.is_empty() {
                        let fail_open = self.fail_open;
                        tokio::spawn(async move {
                            while let Some((m, res)) = pending.next().await {
                                match res {
                                    Ok(()) => sink_recorded(&m, bytes),
                                    Err(e) => sink_failed(&m, kind, &e, fail_open),
                                }
                            }
                        });
                    }
                    return Ok(());
                }
                Err(e) => {
                    sink_failed(&m, kind, &e, self.fail_open);
                    errors.push(device_error(&m, &e));
                }
            }
        }
        Err(if errors.is_empty() { "no audit sink configured".into() } else { errors.join("; ") })
    }

    /// Who is calling, as far as this node can tell before executing the request. Looked up
    /// quietly: a token this node has not applied yet (the request may wait for it) is no
    /// "permission denied" here — the handler decides that.
    async fn auth(&self, req: &ApiRequest) -> serde_json::Result<Arc<str>> {
        let Some(token) = req.token.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(Arc::from("null"));
        };
        let client_token = self.redactor.hmac(token.as_bytes());
        let version = self.ctx.as_ref().map(|c| c.materializer.progress.borrow().auth_version);
        if let Some(v) = version {
            let cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.version == v
                && let Some(hit) = cache.entries.get(&client_token)
            {
                return Ok(hit.clone());
            }
        }
        let printed: Arc<str> = serde_json::to_string(&self.lookup_auth(token, &client_token).await)?.into();
        if let Some(v) = version {
            let mut cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.version != v || cache.entries.len() >= AUTH_CACHE_ENTRIES {
                *cache = AuthCache { version: v, entries: Default::default() };
            }
            cache.entries.insert(client_token, printed.clone());
        }
        Ok(printed)
    }

    /// [`Auditor::auth`] looked up in the node's state.
    async fn lookup_auth(&self, token: &str, client_token: &str) -> Value {
        let mut auth = Map::new();
        auth.insert("client_token".into(), client_token.into());
        if let Some(ctx) = &self.ctx {
            match lookup(ctx, token).await {
                Some(Identity::Root) => {
                    auth.insert("policies".into(), json!(["root"]));
                    auth.insert("display_name".into(), json!("root"));
                }
                Some(Identity::Token { record, .. }) => {
                    auth.insert("accessor".into(), self.redactor.hmac(record.accessor.as_bytes()).into());
                    auth.insert("policies".into(), json!(record.policies));
                    auth.insert("display_name".into(), json!(record.display_name));
                }
                None => {}
            }
        }
        Value::Object(auth)
    }

    /// The `request` of a request's entries, as JSON text.
    fn request_entry(&self, req: &ApiRequest, remote: Option<SocketAddr>) -> String {
        let mut r = Vec::with_capacity(192 + req.path.len() + req.body.len());
        r.extend_from_slice(b"{\"id\":");
        json_string(&mut r, &req.request_id);
        r.extend_from_slice(b",\"operation\":");
        json_string(&mut r, &operation(&req.method));
        r.extend_from_slice(b",\"method\":");
        json_string(&mut r, &req.method);
        r.extend_from_slice(b",\"path\":");
        json_string(&mut r, &req.path);
        if let Some(a) = remote {
            r.extend_from_slice(b",\"remote_address\":");
            json_string(&mut r, &a.ip().to_string());
            r.extend_from_slice(b",\"remote_port\":");
            r.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
        }
        r.extend_from_slice(if req.forwarded { b",\"forwarded\":true" } else { b",\"forwarded\":false" });
        let before = r.len();
        r.extend_from_slice(b",\"data\":");
        if !self.redactor.body(&req.body, &mut r) {
            r.truncate(before);
        }
        r.push(b'}');
        String::from_utf8(r).expect("printed as JSON text")
    }

    /// The `response` of a request's answer entry, as JSON text.
    fn response_entry(&self, resp: &ApiResponse) -> String {
        let mut r = Vec::with_capacity(32 + resp.body.len() * 2);
        r.extend_from_slice(b"{\"status\":");
        r.extend_from_slice(itoa::Buffer::new().format(resp.status).as_bytes());
        if !resp.body.is_empty() {
            r.extend_from_slice(b",\"body\":");
            self.redactor.answer(&resp.body, &mut r);
        }
        r.push(b'}');
        String::from_utf8(r).expect("printed as JSON text")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_schemas::{Keyring, RootKey};

    fn redactor() -> Redactor {
        Redactor::new(Some(Arc::new(Keyring::from_root(&RootKey::from_bytes([9; 32])))))
    }

    fn ok_handler() -> Handler {
        Arc::new(|req: ApiRequest| {
            Box::pin(async move {
                ApiResponse::json(
                    200,
                    &json!({
                        "request_id": req.request_id,
                        "data": {"data": {"password": "hunter2", "nested": {"pin": 1234, "list": ["a", "b"]}}},
                        "auth": {"client_token": "hvs.issued", "accessor": "acc", "policies": ["app"]},
                    }),
                )
            })
        })
    }

    /// A shared buffer the auditor writes to.
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc_enospc()))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn libc_enospc() -> i32 {
        28
    }

    fn req(method: &str, path: &str, body: Value) -> ApiRequest {
        ApiRequest {
            method: method.into(),
            path: path.into(),
            token: Some("hvs.the-token".into()),
            body: body.to_string().into(),
            request_id: "rid-1".into(),
            ..Default::default()
        }
    }

    fn auditor(sink: Sink, fail_open: bool) -> Arc<Auditor> {
        let mut a = Auditor::new("test", sink, fail_open);
        a.redactor = redactor();
        Arc::new(a)
    }

    #[tokio::test]
    async fn requests_and_responses_are_recorded_without_plaintext() {
        let buf = Buf::default();
        let handler = auditor(Sink::from_writer(buf.clone()), false).wrap(ok_handler());
        let resp = handler(req("POST", "v1/secret/data/app/db", json!({"data": {"password": "hunter2"}}))).await;
        assert_eq!(resp.status, 200);
        let text = buf.text();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["type"], "request");
        assert_eq!(lines[1]["type"], "response");
        for l in &lines {
            assert_eq!(l["request"]["id"], "rid-1");
            assert_eq!(l["request"]["operation"], "update");
            assert_eq!(l["request"]["path"], "v1/secret/data/app/db");
            assert!(l["auth"]["client_token"].as_str().unwrap().starts_with("hmac-sha256:"));
        }
        assert_eq!(lines[1]["response"]["status"], 200);
        assert_eq!(lines[1]["error"], "");
        for plain in ["hunter2", "hvs.the-token", "hvs.issued", "1234"] {
            assert!(!text.contains(plain), "{plain} is in the audit log: {text}");
        }
        // Health and metrics are not audited.
        handler(req("GET", "v1/sys/health", Value::Null)).await;
        handler(req("GET", "metrics", Value::Null)).await;
        assert_eq!(buf.text().lines().count(), 2);
    }

    #[test]
    fn a_write_failure_surfaces_as_an_error() {
        let sink = Sink::from_writer(Broken);
        assert!(sink.write_entry(&json!({"a": 1})).is_err());
        #[cfg(target_os = "linux")]
        {
            let full = Sink::open(Path::new("/dev/full"), None).expect("/dev/full opens");
            let err = full.write_entry(&json!({"a": 1})).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
        }
    }

    #[tokio::test]
    async fn an_unrecordable_request_is_refused_and_not_executed_unless_fail_open() {
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting: Handler = {
            let ran = ran.clone();
            Arc::new(move |_req| {
                let ran = ran.clone();
                Box::pin(async move {
                    ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ApiResponse::no_content()
                })
            })
        };
        let closed = auditor(Sink::from_writer(Broken), false).wrap(counting.clone());
        let resp = closed(req("GET", "v1/secret/data/x", Value::Null)).await;
        assert_eq!(resp.status, 503);
        let body: Value = serde_json::from_slice(&resp.body).unwrap();
        assert!(body["errors"][0].as_str().unwrap().starts_with("audit log unavailable: "), "{body}");
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0, "executed without an audit record");
        // Health still answers.
        assert_eq!(closed(req("GET", "v1/sys/health", Value::Null)).await.status, 204);

        let open = auditor(Sink::from_writer(Broken), true).wrap(counting);
        assert_eq!(open(req("GET", "v1/secret/data/x", Value::Null)).await.status, 204);
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn one_sink_that_records_an_entry_is_enough_and_none_refuses_naming_each() {
        let buf = Buf::default();
        let mut a = Auditor::new("test", Sink::from_writer(Broken), false)
            .with_sink("file", Device::File(Sink::from_writer(buf.clone())));
        a.redactor = redactor();
        let handler = Arc::new(a).wrap(ok_handler());
        assert_eq!(handler(req("GET", "v1/secret/data/x", Value::Null)).await.status, 200);
        assert_eq!(buf.text().lines().count(), 2, "{}", buf.text());

        // A Kafka sink with no broker behind it, beside a broken file: nothing records, refused.
        let kafka = KafkaSink::new("127.0.0.1:1", "audit-topic", std::time::Duration::from_millis(300)).unwrap();
        let mut a = Auditor::new("test", Sink::from_writer(Broken), false).with_kafka(kafka);
        a.redactor = redactor();
        let resp = Arc::new(a).wrap(ok_handler())(req("GET", "v1/secret/data/x", Value::Null)).await;
        assert_eq!(resp.status, 503);
        let body: Value = serde_json::from_slice(&resp.body).unwrap();
        let err = body["errors"][0].as_str().unwrap();
        assert!(err.contains("kafka topic audit-topic") && err.contains("file"), "{err}");
    }

    #[test]
    fn errors_and_operations() {
        let resp: ApiResponse = ApiError::permission_denied().into();
        assert_eq!(error_of(&resp), "permission denied");
        assert_eq!(error_of(&ApiResponse::no_content()), "");
        assert_eq!(operation("LIST"), "list");
        assert_eq!(operation("PUT"), "update");
    }
}
