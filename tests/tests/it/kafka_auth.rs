//! Kafka credentials (issue #8): nodes reach a cluster that checks them (the local cluster's
//! SASL_PLAINTEXT listener, SASL/PLAIN) with client properties from a file and the password from
//! the environment only — never on a command line, never in a log line. A wrong password is a
//! loud authentication error, and a node that cannot read the log serves nothing as current.

use std::path::Path;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

use crate::harness::{Node, Stack, StackOpts, call, client, shared};

/// The properties file of a SASL client: everything but the password.
fn sasl_properties(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("kafka.properties");
    std::fs::write(
        &file,
        "# the local cluster's SASL listener\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=secretlog\n",
    )
    .expect("writing the properties file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    file.display().to_string()
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
    let path = "v1/secret/data/sasl/stale";

    // A reader with the right password applies version 1 ...
    let v1 = s.put("sasl/stale", json!({ "v": "one" })).await;
    let mut good = s.new_reader("reader-sasl", &[("SECRETLOG_ON_STALE", "fail")]);
    good.wait_health(473, Duration::from_secs(60)).await;
    let r = call("GET", &format!("{}/{path}", good.url), Some(&s.token), Some(&v1), None).await;
    assert_eq!(r.body["data"]["data"]["v"], "one", "{:?}", r.body);
    good.stop();

    // ... version 2 is written while it is down, and it comes back with a wrong password.
    let v2 = s.put("sasl/stale", json!({ "v": "two" })).await;
    let bad = s.new_reader(
        "reader-sasl",
        &[("SECRETLOG_ON_STALE", "fail"), ("SECRETLOG_KAFKA_SASL_PASSWORD", "not-the-password")],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let body = loop {
        let last = health(&bad).await;
        if let Some((503, body)) = &last
            && body["secretlog"]["consumer_error"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("authentication")
        {
            break body.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no health naming the authentication failure (last: {last:?})\n--- log ---\n{}",
            bad.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("health of a reader with a wrong Kafka password: {body}");
    let log = log_of(&bad);
    assert!(log.contains("Kafka authentication failed"), "no authentication error in the log:\n{}", bad.log_tail());
    assert!(!log.contains("not-the-password"), "the wrong password was logged");

    // Asked for version 2, it does not pass off version 1 as current.
    let r = call("GET", &format!("{}/{path}", bad.url), Some(&s.token), Some(&v2), None).await;
    assert_eq!(r.status, 412, "{:?}", r.body);
    assert!(!r.body.to_string().contains("one"), "served the stale version: {:?}", r.body);
    // The writer has it.
    let w = call("GET", &format!("{}/{path}", s.writer.url), Some(&s.token), Some(&v2), None).await;
    assert_eq!(w.body["data"]["data"]["v"], "two", "{:?}", w.body);
}
