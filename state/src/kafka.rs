//! Kafka client settings shared by every secretlog process that talks to the log.
//!
//! Every Kafka client secretlog creates — the materializer's consumer, the writer's
//! transactional producer, the election consumer, admin clients, the replicator's archiver,
//! the operator CLI's clients and the audit log's producer — starts from [`client_config`]. It
//! carries the bootstrap servers and the operator's extra librdkafka properties (SASL, TLS,
//! timeouts), loaded once per process by [`configure`]:
//!
//! * a properties file (`--kafka-config FILE` / `SECRETLOG_KAFKA_CONFIG`), `key=value` lines
//!   with librdkafka's property names (`security.protocol`, `sasl.mechanism`, `sasl.username`,
//!   `ssl.ca.location`, ...), `#` comments;
//! * secrets from the environment only ([`SECRET_ENV`]: `SECRETLOG_KAFKA_SASL_PASSWORD` becomes
//!   `sasl.password`, ...) — never from a flag, so they never show in a process title.
//!
//! Properties that secretlog's correctness rests on ([`PROTECTED`]: `isolation.level`,
//! `enable.auto.commit`, `acks`, `enable.idempotence`, `transactional.id`, ...) cannot be
//! overridden: the process refuses to start, naming the property. Values of secret properties
//! ([`is_secret`]) are never logged, not even in an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::NodeError;

/// Environment variable naming the Kafka client properties file (also `--kafka-config`).
pub(crate) const CONFIG_ENV: &str = "SECRETLOG_KAFKA_CONFIG";

/// Secret client properties and the environment variables they are taken from.
pub(crate) const SECRET_ENV: &[(&str, &str)] = &[
    ("SECRETLOG_KAFKA_SASL_PASSWORD", "sasl.password"),
    ("SECRETLOG_KAFKA_SSL_KEY_PASSWORD", "ssl.key.password"),
    ("SECRETLOG_KAFKA_SSL_KEYSTORE_PASSWORD", "ssl.keystore.password"),
    ("SECRETLOG_KAFKA_OAUTHBEARER_CLIENT_SECRET", "sasl.oauthbearer.client.secret"),
];

/// Properties secretlog sets itself where they matter, and that configuration may not touch:
/// the bootstrap servers (`--bootstrap`), consumer positions (offsets live in SlateDB, so no
/// auto-commit and no silent `auto.offset.reset`), read_committed isolation, the producer's
/// durability and fencing (`acks=all`, idempotence, one `transactional.id`), and the election's
/// group settings.
pub(crate) const PROTECTED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "isolation.level",
    "enable.auto.commit",
    "auto.commit.enable",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "transactional.id",
    "transaction.timeout.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// Whether a librdkafka property holds a secret (its value is never logged or shown).
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_ENV.iter().any(|(_, k)| *k == key)
        || ["password", "secret", "passphrase", "jaas"].iter().any(|w| key.contains(w))
        || (key.contains("key") && (key.ends_with(".pem") || key.ends_with("key")))
        || key == "sasl.oauthbearer.config"
}

/// The operator's extra librdkafka properties, in the order given (file, then environment).
/// `Debug` and [`ClientProperties::redacted`] never show a secret value.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientProperties {
    props: Vec<(String, String)>,
    /// Where they came from, for messages (`FILE`, `FILE + environment`).
    origin: String,
}

/// A configuration error about the Kafka client properties.
fn bad(reason: String) -> NodeError {
    NodeError::Config { field: "kafka-config", reason }
}

impl ClientProperties {
    /// Parse `key=value` lines (`#` comments and blank lines ignored, whitespace around key and
    /// value trimmed). A line is never quoted back in an error: it may hold a password.
    pub fn parse(text: &str, origin: &str) -> Result<ClientProperties, NodeError> {
        let mut out = ClientProperties { props: Vec::new(), origin: origin.to_string() };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(bad(format!("{origin} line {}: not a key=value line", i + 1)));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(bad(format!("{origin} line {}: no property name before '='", i + 1)));
            }
            out.insert(key, value, &format!("{origin} line {}", i + 1))?;
        }
        Ok(out)
    }

    fn insert(&mut self, key: &str, value: &str, at: &str) -> Result<(), NodeError> {
        if self.props.iter().any(|(k, _)| k == key) {
            return Err(bad(format!("{key} is set twice ({at} sets it again); set it in one place")));
        }
        self.props.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// The properties of `file` (if any) plus the secrets found by `env` (see [`SECRET_ENV`]),
    /// checked: no protected property, every one known to librdkafka with a valid value.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<ClientProperties, NodeError> {
        let mut props = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("cannot read the Kafka client properties {}: {e}", path.display())))?;
                let props = ClientProperties::parse(&text, &path.display().to_string())?;
                warn_if_readable_by_others(path, &props);
                props
            }
            None => ClientProperties::default(),
        };
        let mut from_env = false;
        for (var, key) in SECRET_ENV {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                props.insert(key, &value, var)?;
                from_env = true;
            }
        }
        props.origin = match (props.origin.is_empty(), from_env) {
            (true, true) => "environment".into(),
            (false, true) => format!("{} + environment", props.origin),
            (_, false) => props.origin,
        };
        props.check()?;
        Ok(props)
    }

    /// Refuse protected properties; let librdkafka check names and values (so a typo or a
    /// feature this build lacks is a startup error, not a client that fails later).
    fn check(&self) -> Result<(), NodeError> {
        for (key, _) in &self.props {
            if PROTECTED.contains(&key.to_ascii_lowercase().as_str()) {
                return Err(bad(format!(
                    "{key} (in {}) cannot be overridden: secretlog sets it itself, because the log's \
                     durability and exactly-once reading depend on it",
                    self.origin
                )));
            }
        }
        for (key, value) in &self.props {
            let mut one = ClientConfig::new();
            one.set(key, value);
            if let Err(e) = one.create_native_config() {
                let why = match e {
                    KafkaError::ClientConfig(_, desc, _, _) if !is_secret(key) => desc,
                    _ if is_secret(key) => "librdkafka rejects it (the value is not shown)".into(),
                    other => other.to_string(),
                };
                return Err(bad(format!("{key} (in {}): {why}", self.origin)));
            }
        }
        Ok(())
    }

    /// Set every property on `c`.
    pub fn apply(&self, c: &mut ClientConfig) {
        for (k, v) in &self.props {
            c.set(k, v);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.props.is_empty()
    }

    /// The value of `key`, if set (tests).
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.props.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `key=value` pairs for logs, with `<redacted>` for every secret.
    pub fn redacted(&self) -> String {
        self.props
            .iter()
            .map(|(k, v)| if is_secret(k) { format!("{k}=<redacted>") } else { format!("{k}={v}") })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientProperties({})", self.redacted())
    }
}

/// A properties file holding a secret should be readable by its owner only; say so (without
/// refusing: secret volumes of some orchestrators are mounted 0644 by default).
fn warn_if_readable_by_others(path: &Path, props: &ClientProperties) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = props.props.iter().any(|(k, _)| is_secret(k));
        if let Ok(meta) = std::fs::metadata(path)
            && secret
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the Kafka client properties file holds a secret and is readable by other users; chmod 600 it \
                 or pass the secret in the environment"
            );
        }
    }
}

/// The process's properties: set by [`configure`], or loaded from the environment on first use.
static PROCESS: OnceLock<Result<ClientProperties, String>> = OnceLock::new();

fn from_environment() -> Result<ClientProperties, String> {
    let file = std::env::var_os(CONFIG_ENV).filter(|f| !f.is_empty()).map(PathBuf::from);
    ClientProperties::load(file.as_deref(), |k| std::env::var(k).ok()).map_err(|e| e.to_string())
}

/// Load and check this process's Kafka client properties (`file`, else none, plus the secrets
/// of [`SECRET_ENV`]) and make every client of the process use them. Called once at start by
/// each node; an error is a startup error. A process talks to one Kafka cluster as one
/// principal, so the properties are process-wide; configuring them again differently is refused.
pub fn configure(file: Option<&Path>) -> Result<(), NodeError> {
    let props = ClientProperties::load(file, |k| std::env::var(k).ok())?;
    let installed = PROCESS.get_or_init(|| Ok(props.clone()));
    match installed {
        Ok(p) if p.props == props.props => {
            if !p.is_empty() {
                tracing::info!(origin = %p.origin, properties = %p.redacted(), "Kafka client properties");
            }
            Ok(())
        }
        _ => Err(bad("this process's Kafka client properties were already set differently".into())),
    }
}

/// A client configuration every secretlog Kafka client starts from: the bootstrap servers and
/// the process's extra properties (see the module docs). If the properties are unusable (only
/// possible in a process that did not call [`configure`]), the configuration carries an
/// unknown property named after the problem, so creating any client fails with the reason
/// instead of connecting without the operator's security settings.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    match PROCESS.get_or_init(from_environment) {
        Ok(props) => props.apply(&mut c),
        Err(reason) => {
            c.set("secretlog.invalid.kafka.client.properties", reason.clone());
        }
    }
    c
}

/// A consumer configuration with secretlog's non-negotiable settings:
/// `isolation.level=read_committed` (never see an aborted or uncommitted write),
/// `enable.auto.commit=false` (positions live in SlateDB with the state),
/// `auto.offset.reset=error` (librdkafka's default would silently skip history).
///
/// Fetches long-poll ([`FETCH_WAIT_MAX_MS`]): a broker answers a read_committed fetch as soon as
/// a commit marker moves the stable offset, so a short wait buys no freshness — it only makes
/// every idle consumer ask every broker again and again.
pub fn consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut c = client_config(bootstrap);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set("enable.partition.eof", "true")
        .set("fetch.error.backoff.ms", "50")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("socket.keepalive.enable", "true");
    c
}

/// How long a broker may hold a fetch that has nothing new. At 10 ms (the value before this
/// was measured) the consumers of a local stack kept three idle brokers busy at 12.4% of a core
/// each answering empty fetches (now 3–7%); acknowledged → visible lag did not depend on it
/// (docs/benchmarks.md, "Reads at 100k secrets, and idle fetches").
pub(crate) const FETCH_WAIT_MAX_MS: u32 = 500;

/// Whether a client error means the cluster refused our credentials.
pub(crate) fn is_authentication_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    )
}

/// Whether a client error is a failed TLS connection (`security.protocol=SSL|SASL_SSL`): most
/// often a broker certificate that does not verify against `ssl.ca.location`.
pub(crate) fn is_tls_error(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::SSL)
}

/// What a refused connection means for the operator, if `error` is one: the cluster refused our
/// credentials, or the TLS handshake failed (librdkafka's `reason` names the broker and the
/// OpenSSL error, never a password or key).
pub fn refusal(error: &KafkaError, reason: &str) -> Option<String> {
    if is_authentication_error(error) {
        Some(format!(
            "Kafka authentication failed ({reason}): the cluster refused this node's credentials (check \
             sasl.username and SECRETLOG_KAFKA_SASL_PASSWORD)"
        ))
    } else if is_tls_error(error) {
        Some(format!(
            "Kafka TLS handshake failed ({reason}): check security.protocol, and that ssl.ca.location holds \
             the CA that signed the brokers' certificates"
        ))
    } else {
        None
    }
}

/// Log a Kafka client error; refused credentials are an error-level line that says what to
/// check (librdkafka's text names the mechanism and user, never the password), and so is a
/// failed TLS handshake.
pub fn log_client_error(client: &'static str, error: &KafkaError, reason: &str) {
    if is_tls_error(error) {
        tracing::error!(
            client,
            %error,
            reason,
            "Kafka TLS handshake failed: check security.protocol, and that ssl.ca.location holds the CA that \
             signed the brokers' certificates"
        );
    } else if is_authentication_error(error) {
        tracing::error!(
            client,
            %error,
            reason,
            "Kafka authentication failed: the cluster refused this node's credentials (check sasl.username \
             and SECRETLOG_KAFKA_SASL_PASSWORD)"
        );
    } else {
        tracing::warn!(client, %error, reason, "kafka client error");
    }
}

/// Remembers a metadata client's last refused connection ([`refusal`]: authentication or TLS),
/// so a failed metadata request can say *why* instead of "timed out".
#[derive(Clone, Default)]
struct MetadataContext {
    auth_failure: Arc<Mutex<Option<String>>>,
}

impl ClientContext for MetadataContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(refused) = refusal(&error, reason) {
            *self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(refused);
        }
        log_client_error("metadata", &error, reason);
    }
}

impl ConsumerContext for MetadataContext {}

fn metadata_client(bootstrap: &str) -> Result<(BaseConsumer<MetadataContext>, MetadataContext), NodeError> {
    let ctx = MetadataContext::default();
    let consumer = consumer_config(bootstrap, "secretlog-metadata").create_with_context(ctx.clone())?;
    Ok((consumer, ctx))
}

impl MetadataContext {
    /// `err`, or the authentication failure behind it (the client has no assignment: polling it
    /// consumes nothing).
    fn explain(&self, consumer: &BaseConsumer<MetadataContext>, err: NodeError) -> NodeError {
        // Errors reach the context (and come out of `poll`) only when the client is polled, and a
        // zero-timeout poll does not reliably serve them: wait a little (failure path only).
        for _ in 0..16 {
            if self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()).is_some()
                || consumer.poll(Duration::from_millis(100)).is_none()
            {
                break;
            }
        }
        match self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(reason) => NodeError::Config { field: "kafka credentials", reason },
            None => err,
        }
    }
}

/// Number of partitions of `topic`, asking the cluster.
pub fn partition_count(bootstrap: &str, topic: &str, timeout: Duration) -> Result<i32, NodeError> {
    let (consumer, ctx) = metadata_client(bootstrap)?;
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| ctx.explain(&consumer, e.into()))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if n == 0 {
        return Err(ctx.explain(&consumer, NodeError::NoTopic { topic: topic.to_string() }));
    }
    Ok(n)
}

/// The Kafka cluster's id (KRaft cluster id), waiting up to `timeout` for the cluster. Snapshots
/// and the archive are tied to it: offsets of one cluster mean nothing in another.
pub fn cluster_id(bootstrap: &str, timeout: Duration) -> Result<String, NodeError> {
    let (consumer, ctx) = metadata_client(bootstrap)?;
    consumer.client().fetch_cluster_id(timeout).ok_or_else(|| {
        ctx.explain(
            &consumer,
            NodeError::Config { field: "kafka", reason: format!("no cluster id from {bootstrap} within {timeout:?}") },
        )
    })
}

/// Client context of secretlog's consumers: reaching the end of a partition is routine (the
/// materializer asks for it, to know when it is caught up), so it is not logged as an error;
/// every other client error is logged with its reason.
#[derive(Clone, Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            log_client_error("consumer", &error, reason);
        }
    }
}

impl ConsumerContext for LogContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_properties_file_and_the_password_from_the_environment_make_one_set() {
        let f = file(
            "# SASL to the cluster\nsecurity.protocol = SASL_PLAINTEXT\n\nsasl.mechanism=PLAIN\nsasl.username=app\n",
        );
        let p = ClientProperties::load(Some(f.path()), env(&[("SECRETLOG_KAFKA_SASL_PASSWORD", "pa55=w0rd")])).unwrap();
        assert_eq!(p.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(p.get("sasl.username"), Some("app"));
        assert_eq!(p.get("sasl.password"), Some("pa55=w0rd"));
        let mut c = ClientConfig::new();
        p.apply(&mut c);
        assert_eq!(c.get("sasl.password"), Some("pa55=w0rd"));
        // Never shown.
        for shown in [p.redacted(), format!("{p:?}")] {
            assert!(!shown.contains("pa55"), "{shown}");
            assert!(shown.contains("sasl.password=<redacted>") && shown.contains("sasl.username=app"), "{shown}");
        }
        // An empty environment variable is no setting.
        let p = ClientProperties::load(None, env(&[("SECRETLOG_KAFKA_SASL_PASSWORD", "")])).unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn non_negotiable_settings_cannot_be_overridden() {
        for key in ["isolation.level", "enable.auto.commit", "acks", "enable.idempotence", "transactional.id", "ACKS"] {
            let f = file(&format!("security.protocol=PLAINTEXT\n{key}=x\n"));
            let e = ClientProperties::load(Some(f.path()), env(&[])).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("cannot be overridden"), "{e}");
        }
    }

    #[test]
    fn bad_lines_unknown_properties_and_duplicates_are_startup_errors_that_never_quote_a_secret() {
        let e = ClientProperties::parse("security.protocol=SASL_PLAINTEXT\nhunter2\n", "f").unwrap_err().to_string();
        assert!(e.contains("f line 2") && !e.contains("hunter2"), "{e}");
        let e = ClientProperties::load(Some(file("no.such.property=1\n").path()), env(&[])).unwrap_err().to_string();
        assert!(e.contains("no.such.property"), "{e}");
        let e = ClientProperties::load(Some(file("security.protocol=carrier-pigeon\n").path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("security.protocol"), "{e}");
        // The same secret in the file and the environment: refused, neither value shown.
        let f = file("sasl.password=in-the-file\n");
        let e = ClientProperties::load(Some(f.path()), env(&[("SECRETLOG_KAFKA_SASL_PASSWORD", "in-the-env")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sasl.password") && e.contains("twice"), "{e}");
        assert!(!e.contains("in-the-file") && !e.contains("in-the-env"), "{e}");
        let e = ClientProperties::load(Some(Path::new("/nonexistent/kafka.properties")), env(&[])).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kafka.properties"), "{e}");
    }

    #[test]
    fn secrets_are_recognised() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in ["sasl.username", "security.protocol", "ssl.ca.location", "ssl.certificate.location", "sasl.mechanism"]
        {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn client_config_starts_every_client_with_the_bootstrap_and_the_properties() {
        // No `configure` in this test process and no SECRETLOG_KAFKA_* variables: nothing extra.
        let c = consumer_config("127.0.0.1:1", "g");
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:1"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn refused_credentials_and_failed_tls_handshakes_say_what_to_check() {
        let tls = refusal(&KafkaError::Global(RDKafkaErrorCode::SSL), "certificate verify failed").unwrap();
        assert!(tls.starts_with("Kafka TLS handshake failed (certificate verify failed)"), "{tls}");
        assert!(tls.contains("ssl.ca.location"), "{tls}");
        let auth = refusal(&KafkaError::Global(RDKafkaErrorCode::Authentication), "Invalid username").unwrap();
        assert!(auth.starts_with("Kafka authentication failed (Invalid username)"), "{auth}");
        assert!(auth.contains("SECRETLOG_KAFKA_SASL_PASSWORD"), "{auth}");
        assert_eq!(refusal(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "down"), None);
    }
}
