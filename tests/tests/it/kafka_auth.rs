//! Kafka credentials (issue #8): nodes reach a cluster that checks them (the local cluster's
//! SASL_PLAINTEXT listener, SASL/PLAIN) with client properties from a file and the password from
//! the environment only — never on a command line, never in a log line. A wrong password is a
//! loud authentication error, and a node that cannot read the log serves nothing as current.
//!
//! The same over TLS: the local cluster's SSL and SASL_SSL listeners present a certificate of the
//! cluster's own CA; nodes verify it (hostname included) with `ssl.ca.location`, and a node
//! trusting another CA says in its health that the TLS handshake failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

use crate::harness::{Node, Stack, StackOpts, call, client, shared};

/// The properties file of a SASL client: everything but the password.
fn sasl_properties(dir: &Path) -> String {
    properties_file(
        dir,
        "kafka.properties",
        "# the local cluster's SASL listener\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=secretlog\n",
    )
}

/// A properties file named `name` in `dir` holding `text` (mode 0600, as an operator's would be).
fn properties_file(dir: &Path, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join(name);
    std::fs::write(&file, text).expect("writing the properties file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    file.display().to_string()
}

/// The properties of a client of the SSL listener trusting `ca`.
fn ssl_properties(dir: &Path, ca: &Path) -> String {
    let text = format!("# the local cluster's SSL listener\nsecurity.protocol=SSL\nssl.ca.location={}\n", ca.display());
    properties_file(dir, "kafka-ssl.properties", &text)
}

/// A CA certificate (PEM) that signed nothing the cluster presents.
fn unrelated_ca(dir: &Path) -> PathBuf {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "not the cluster's CA");
    let key = rcgen::KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    let file = dir.join("other-ca.pem");
    std::fs::write(&file, cert.pem()).expect("writing the other CA");
    file
}

/// The environment of a node reaching Kafka at `bootstrap` with the properties file `properties`.
fn kafka_env(bootstrap: &str, properties: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS".to_string(), bootstrap.to_string()),
        ("SECRETLOG_KAFKA_CONFIG".to_string(), properties.to_string()),
    ]
}

/// Whether a client with `props` gets the cluster's metadata from `bootstrap`.
fn metadata_answers(bootstrap: &str, props: &[(&str, &str)]) -> Result<(), String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in props {
        c.set(*k, *v);
    }
    let consumer: BaseConsumer = c.create().map_err(|e| e.to_string())?;
    consumer.fetch_metadata(None, Duration::from_secs(5)).map(|_| ()).map_err(|e| e.to_string())
}

/// Poll `node`'s health until it is a 503 whose consumer error contains `needle` (lower case).
async fn wait_consumer_error(node: &Node, needle: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let last = health(node).await;
        if let Some((503, body)) = &last
            && body["secretlog"]["consumer_error"].as_str().unwrap_or_default().to_lowercase().contains(needle)
        {
            return body.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no health naming {needle:?} (last: {last:?})\n--- log ---\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The environment of a node on the SASL listener.
fn sasl_env(bootstrap: &str, properties: &str, password: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS".to_string(), bootstrap.to_string()),
        ("SECRETLOG_KAFKA_CONFIG".to_string(), properties.to_string()),
        ("SECRETLOG_KAFKA_SASL_PASSWORD".to_string(), password.to_string()),
    ]
}

/// The whole log of a node.
fn log_of(node: &Node) -> String {
    std::fs::read_to_string(&node.log).unwrap_or_default()
}

/// A node's command line, as `ps` shows it.
fn cmdline(node: &Node) -> String {
    let pid = node.pid().expect("the node runs");
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline")).replace('\0', " ")
}

/// Status and body of a node's health, once it answers.
async fn health(node: &Node) -> Option<(u16, Value)> {
    let r = client().get(format!("{}/v1/sys/health", node.url)).send().await.ok()?;
    Some((r.status().as_u16(), r.json().await.unwrap_or_default()))
}

/// A reader applies version 1 of `<name>/stale` and stops; version 2 is written; the reader comes
/// back with `failing` (a Kafka setting that cannot work), must report `needle` in its health and
/// must answer a read at version 2's index 412, without the stale version 1. Returns the failing
/// reader, its health and version 2's index.
async fn comes_back_failing_and_serves_nothing_stale(
    s: &Stack,
    name: &str,
    failing: &[(&str, &str)],
    needle: &str,
) -> (Node, Value, String) {
    let (secret, reader) = (format!("{name}/stale"), format!("reader-{name}"));
    let path = format!("v1/secret/data/{secret}");
    let v1 = s.put(&secret, json!({ "v": "one" })).await;
    let mut good = s.new_reader(&reader, &[("SECRETLOG_ON_STALE", "fail")]);
    good.wait_health(473, Duration::from_secs(60)).await;
    let r = call("GET", &format!("{}/{path}", good.url), Some(&s.token), Some(&v1), None).await;
    assert_eq!(r.body["data"]["data"]["v"], "one", "{:?}", r.body);
    good.stop();

    let v2 = s.put(&secret, json!({ "v": "two" })).await;
    let env: Vec<(&str, &str)> = [("SECRETLOG_ON_STALE", "fail")].into_iter().chain(failing.iter().copied()).collect();
    let bad = s.new_reader(&reader, &env);
    let body = wait_consumer_error(&bad, needle).await;
    // Asked for version 2, it does not pass off version 1 as current.
    let r = call("GET", &format!("{}/{path}", bad.url), Some(&s.token), Some(&v2), None).await;
    assert_eq!(r.status, 412, "{:?}", r.body);
    assert!(!r.body.to_string().contains("one"), "served the stale version: {:?}", r.body);
    (bad, body, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_and_a_reader_work_through_sasl_with_the_password_only_in_the_environment() {
    let (cluster, _g) = shared();
    let Some((sasl_bootstrap, password)) = cluster.sasl() else {
        eprintln!("external Kafka cluster: its SASL listener is unknown, nothing to test here");
        return;
    };
    // The SASL listener really checks: a client without credentials gets no metadata there.
    let anonymous: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &sasl_bootstrap).create().unwrap();
    assert!(
        anonymous.fetch_metadata(None, Duration::from_secs(3)).is_err(),
        "the SASL listener answered a client without credentials"
    );
    drop(anonymous);

    let dir = tempfile::Builder::new().prefix("it-sasl-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let props = sasl_properties(dir.path());
    let env = sasl_env(&sasl_bootstrap, &props, &password);
    let s = Stack::start_with_env(cluster, StackOpts { name: "sasl", readers: 1, ..Default::default() }, env).await;

    let idx = s.put("sasl/db", json!({ "password": "through-sasl" })).await;
    let r =
        call("GET", &format!("{}/v1/secret/data/sasl/db", s.readers[0].url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["data"]["password"], "through-sasl");

    for node in [&s.writer, &s.readers[0]] {
        let log = log_of(node);
        assert!(
            log.contains("sasl.username=secretlog") && log.contains("sasl.password=<redacted>"),
            "{} does not say which client properties it uses:\n{}",
            node.name,
            node.log_tail()
        );
        assert!(!log.contains(&password), "{} logged the Kafka password", node.name);
        assert!(!cmdline(node).contains(&password), "the Kafka password is on {}'s command line", node.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kafka_password_is_a_loud_authentication_error_and_no_stale_value_is_served_as_current() {
    let (cluster, _g) = shared();
    let Some((sasl_bootstrap, password)) = cluster.sasl() else {
        eprintln!("external Kafka cluster: its SASL listener is unknown, nothing to test here");
        return;
    };
    let dir = tempfile::Builder::new().prefix("it-sasl-bad-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let props = sasl_properties(dir.path());
    let env = sasl_env(&sasl_bootstrap, &props, &password);
    let s = Stack::start_with_env(cluster, StackOpts { name: "sasl-bad", readers: 0, ..Default::default() }, env).await;
    let (bad, body, v2) = comes_back_failing_and_serves_nothing_stale(
        &s,
        "sasl",
        &[("SECRETLOG_KAFKA_SASL_PASSWORD", "not-the-password")],
        "authentication",
    )
    .await;
    eprintln!("health of a reader with a wrong Kafka password: {body}");
    let log = log_of(&bad);
    assert!(log.contains("Kafka authentication failed"), "no authentication error in the log:\n{}", bad.log_tail());
    assert!(!log.contains("not-the-password"), "the wrong password was logged");
    // The writer has version 2.
    let w = call("GET", &format!("{}/v1/secret/data/sasl/stale", s.writer.url), Some(&s.token), Some(&v2), None).await;
    assert_eq!(w.body["data"]["data"]["v"], "two", "{:?}", w.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_and_a_reader_work_through_ssl_verifying_the_brokers_certificate() {
    let (cluster, _g) = shared();
    let Some((ssl_bootstrap, _, ca)) = cluster.ssl() else {
        eprintln!("external Kafka cluster: its SSL listener is unknown, nothing to test here");
        return;
    };
    let ca_location = ca.display().to_string();
    // The listener really speaks TLS, with a certificate of the cluster's CA for 127.0.0.1.
    assert!(metadata_answers(&ssl_bootstrap, &[]).is_err(), "the SSL listener answered a PLAINTEXT client");
    metadata_answers(&ssl_bootstrap, &[("security.protocol", "SSL"), ("ssl.ca.location", &ca_location)])
        .expect("metadata over SSL, verifying the broker certificate");

    let dir = tempfile::Builder::new().prefix("it-ssl-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let props = ssl_properties(dir.path(), &ca);
    let env = kafka_env(&ssl_bootstrap, &props);
    let s = Stack::start_with_env(cluster, StackOpts { name: "ssl", readers: 1, ..Default::default() }, env).await;

    let idx = s.put("ssl/db", json!({ "password": "through-tls" })).await;
    let r = call("GET", &format!("{}/v1/secret/data/ssl/db", s.readers[0].url), Some(&s.token), Some(&idx), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["data"]["password"], "through-tls");
    for node in [&s.writer, &s.readers[0]] {
        let log = log_of(node);
        assert!(
            log.contains("security.protocol=SSL") && log.contains(&format!("ssl.ca.location={ca_location}")),
            "{} does not say which client properties it uses:\n{}",
            node.name,
            node.log_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_an_unknown_ca_is_a_loud_tls_error_and_nothing_is_served_as_current() {
    let (cluster, _g) = shared();
    let Some((ssl_bootstrap, _, ca)) = cluster.ssl() else {
        eprintln!("external Kafka cluster: its SSL listener is unknown, nothing to test here");
        return;
    };
    let dir = tempfile::Builder::new().prefix("it-ssl-bad-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let good_props = ssl_properties(dir.path(), &ca);
    let other_ca = unrelated_ca(dir.path());
    let bad_props = properties_file(
        dir.path(),
        "kafka-other-ca.properties",
        &format!("security.protocol=SSL\nssl.ca.location={}\n", other_ca.display()),
    );
    let s = Stack::start_with_env(
        cluster,
        StackOpts { name: "ssl-bad", readers: 0, ..Default::default() },
        kafka_env(&ssl_bootstrap, &good_props),
    )
    .await;
    let (bad, body, _) = comes_back_failing_and_serves_nothing_stale(
        &s,
        "ssl",
        &[("SECRETLOG_KAFKA_CONFIG", &bad_props)],
        "tls handshake failed",
    )
    .await;
    eprintln!("health of a reader trusting another CA: {body}");
    let reason = body["secretlog"]["consumer_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(reason.contains("certificate verify failed"), "the TLS failure does not name the certificate: {reason}");
    assert!(log_of(&bad).contains("Kafka TLS handshake failed"), "no TLS error in the log:\n{}", bad.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_and_a_reader_work_through_sasl_ssl() {
    let (cluster, _g) = shared();
    let (Some((_, sasl_ssl_bootstrap, ca)), Some((_, password))) = (cluster.ssl(), cluster.sasl()) else {
        eprintln!("external Kafka cluster: its SASL_SSL listener is unknown, nothing to test here");
        return;
    };
    let ca_location = ca.display().to_string();
    // Credentials are checked inside TLS: TLS alone gets no metadata there.
    assert!(
        metadata_answers(&sasl_ssl_bootstrap, &[("security.protocol", "SSL"), ("ssl.ca.location", &ca_location)])
            .is_err(),
        "the SASL_SSL listener answered a client without credentials"
    );

    let dir = tempfile::Builder::new().prefix("it-sasl-ssl-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let props = properties_file(
        dir.path(),
        "kafka.properties",
        &format!(
            "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.username=secretlog\nssl.ca.location={ca_location}\n"
        ),
    );
    let env = sasl_env(&sasl_ssl_bootstrap, &props, &password);
    let s = Stack::start_with_env(cluster, StackOpts { name: "sasl-ssl", readers: 1, ..Default::default() }, env).await;

    let idx = s.put("sasl-ssl/db", json!({ "password": "through-sasl-ssl" })).await;
    let r = call("GET", &format!("{}/v1/secret/data/sasl-ssl/db", s.readers[0].url), Some(&s.token), Some(&idx), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["data"]["password"], "through-sasl-ssl");
    for node in [&s.writer, &s.readers[0]] {
        let log = log_of(node);
        assert!(log.contains("security.protocol=SASL_SSL"), "{}:\n{}", node.name, node.log_tail());
        assert!(!log.contains(&password), "{} logged the Kafka password", node.name);
        assert!(!cmdline(node).contains(&password), "the Kafka password is on {}'s command line", node.name);
    }
}
