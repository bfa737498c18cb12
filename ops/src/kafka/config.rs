//! Where the local cluster lives on disk and what its files say.
//!
//! Everything here is deterministic given a [`KafkaConfig`] (except the random cluster id), so the
//! rendering is unit-tested without starting a JVM.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::KafkaError;
use super::tls::BrokerTls;

/// The Kafka release the cluster runs; the cache directory and the jar check are tied to it so an
/// upgrade never mixes jars of two releases.
pub const KAFKA_VERSION: &str = "4.1.1";

/// The node ids of the three combined broker+controller nodes; three is the smallest cluster in
/// which RF=3 / min.insync.replicas=2 tolerates one dead broker and refuses writes at two.
pub const NODE_IDS: [u32; 3] = [1, 2, 3];

/// Default first client port; node N listens on `base + N - 1`. Chosen away from 9092 so a
/// developer's own Kafka does not collide with ours.
pub const DEFAULT_BASE_PORT: u16 = 19092;

/// Controller (KRaft quorum) ports are the client ports shifted by this much.
pub const CONTROLLER_PORT_OFFSET: u16 = 10;

/// SASL ports (a second client listener, `SASL_PLAINTEXT` with SASL/PLAIN) are the client ports
/// shifted by this much. The PLAINTEXT listener stays as it is; the SASL one lets tests and
/// operators run secretlog against a cluster that checks credentials.
pub const SASL_PORT_OFFSET: u16 = 20;

/// SSL ports (a client listener with TLS, no client authentication) are the client ports shifted
/// by this much. The brokers' certificate is signed by a CA made once per cluster directory
/// ([`KafkaConfig::ssl_ca_file`]), so clients verify it with `ssl.ca.location`.
pub const SSL_PORT_OFFSET: u16 = 30;

/// SASL_SSL ports (SASL/PLAIN inside TLS, same user and certificate as the other two) are the
/// client ports shifted by this much.
pub const SASL_SSL_PORT_OFFSET: u16 = 40;

/// The SASL/PLAIN user of the local cluster; its password is [`sasl_password`].
pub const SASL_USER: &str = "secretlog";

/// The jar whose presence marks a complete fetch (the fetch is renamed into place atomically).
const MARKER_JAR: &str = "kafka_2.13-4.1.1.jar";

/// How to lay out and size the local three-node cluster.
///
/// Built with [`KafkaConfig::new`] and then adjusted field by field, so callers only name what
/// they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Root of per-run state; brokers live under `<data_dir>/kafka/node-N`. Separate data dirs
    /// give separate clusters (with separate `base_port`s).
    pub data_dir: PathBuf,
    /// Where the broker jars are cached (`<cache_dir>/libs`), shared between runs so the jars are
    /// downloaded once per machine.
    pub cache_dir: PathBuf,
    /// First client port; see [`KafkaConfig::client_port`], [`KafkaConfig::controller_port`] and
    /// [`KafkaConfig::sasl_port`], [`KafkaConfig::ssl_port`] and [`KafkaConfig::sasl_ssl_port`].
    /// Keep all ports (up to base+42) below Linux's ephemeral range (32768+), where any client
    /// connection may briefly own the port and make the broker's bind fail.
    pub base_port: u16,
    /// JVM maximum heap per broker (`-Xmx`), e.g. `"768m"`; small because three JVMs share a
    /// small machine.
    pub heap: String,
    /// More JVM flags for every broker: [`LOCAL_JVM_FLAGS`] by default.
    pub jvm_flags: Vec<String>,
}

/// The brokers' JIT and collector for a local cluster that shares a small machine with the
/// nodes: the client compiler only (`-XX:TieredStopAtLevel=1`) and the serial collector. With
/// the JVM's defaults (C2 and G1) each broker spends about 40 % of a core compiling for its first
/// minute, and a fresh stack's writes are 2–3x slower than a minute later; with these its first
/// five seconds already write at the warmed rate, and after three minutes the two are within
/// noise (docs/benchmarks.md, "The local brokers' JIT"). A cluster of its own on dedicated
/// machines wants the JVM's defaults.
pub const LOCAL_JVM_FLAGS: &[&str] = &["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"];

impl KafkaConfig {
    /// Defaults: jars cached in `$SECRETLOG_CACHE_DIR`, else `$HOME/.cache/secretlog/kafka-4.1.1`;
    /// ports from 19092; 768 MiB heap per broker; [`LOCAL_JVM_FLAGS`].
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        KafkaConfig {
            // Absolute: each broker runs in its own node directory, where a relative path (the
            // default `./.secretlog`) would name nothing.
            data_dir: std::path::absolute(&data_dir).unwrap_or(data_dir),
            cache_dir: default_cache_dir(),
            base_port: DEFAULT_BASE_PORT,
            heap: "768m".to_string(),
            jvm_flags: LOCAL_JVM_FLAGS.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// Client (PLAINTEXT) port of `node`, the one producers and consumers connect to.
    pub fn client_port(&self, node: u32) -> u16 {
        self.base_port.wrapping_add(node as u16).wrapping_sub(1)
    }

    /// KRaft controller port of `node`, used only between the nodes for the metadata quorum.
    pub fn controller_port(&self, node: u32) -> u16 {
        self.client_port(node).wrapping_add(CONTROLLER_PORT_OFFSET)
    }

    /// SASL_PLAINTEXT client port of `node` (SASL/PLAIN, user [`SASL_USER`]).
    pub fn sasl_port(&self, node: u32) -> u16 {
        self.client_port(node).wrapping_add(SASL_PORT_OFFSET)
    }

    /// SSL client port of `node` (TLS with the cluster's certificate, no client authentication).
    pub fn ssl_port(&self, node: u32) -> u16 {
        self.client_port(node).wrapping_add(SSL_PORT_OFFSET)
    }

    /// SASL_SSL client port of `node` (SASL/PLAIN, user [`SASL_USER`], inside TLS).
    pub fn sasl_ssl_port(&self, node: u32) -> u16 {
        self.client_port(node).wrapping_add(SASL_SSL_PORT_OFFSET)
    }

    /// Every port node `n` listens on.
    pub(crate) fn ports(&self, node: u32) -> [u16; 5] {
        [
            self.client_port(node),
            self.controller_port(node),
            self.sasl_port(node),
            self.ssl_port(node),
            self.sasl_ssl_port(node),
        ]
    }

    /// `127.0.0.1:<port of node 1>,...` for one listener.
    fn bootstrap_on(&self, port: impl Fn(&Self, u32) -> u16) -> String {
        NODE_IDS.iter().map(|n| format!("127.0.0.1:{}", port(self, *n))).collect::<Vec<_>>().join(",")
    }

    /// `bootstrap.servers` for the SASL listener (clients must then use
    /// `security.protocol=SASL_PLAINTEXT`, `sasl.mechanism=PLAIN`).
    pub fn sasl_bootstrap_servers(&self) -> String {
        self.bootstrap_on(Self::sasl_port)
    }

    /// `bootstrap.servers` for the SSL listener (clients must then use `security.protocol=SSL`,
    /// `ssl.ca.location=<`[`KafkaConfig::ssl_ca_file`]`>`).
    pub fn ssl_bootstrap_servers(&self) -> String {
        self.bootstrap_on(Self::ssl_port)
    }

    /// `bootstrap.servers` for the SASL_SSL listener (`security.protocol=SASL_SSL`,
    /// `sasl.mechanism=PLAIN`, `ssl.ca.location` as for SSL).
    pub fn sasl_ssl_bootstrap_servers(&self) -> String {
        self.bootstrap_on(Self::sasl_ssl_port)
    }

    /// Where the SASL user's password is kept (mode 0600), created on first start.
    pub fn sasl_password_file(&self) -> PathBuf {
        self.kafka_dir().join("sasl-password")
    }

    /// `127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>`, the value for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap_on(Self::client_port)
    }

    /// `<data_dir>/kafka`: everything the cluster writes, so one `rm -r` resets it.
    pub fn kafka_dir(&self) -> PathBuf {
        self.data_dir.join("kafka")
    }

    /// `<data_dir>/kafka/node-N`: config, pid file and log of one node.
    pub fn node_dir(&self, node: u32) -> PathBuf {
        self.kafka_dir().join(format!("node-{node}"))
    }

    /// The node's `log.dirs` (partition data and KRaft metadata, including `meta.properties`).
    pub fn log_dir(&self, node: u32) -> PathBuf {
        self.node_dir(node).join("data")
    }

    /// The node's `server.properties`; its path also identifies the node's JVM in `/proc`.
    pub fn properties_file(&self, node: u32) -> PathBuf {
        self.node_dir(node).join("server.properties")
    }

    /// Where the node's stdout/stderr (and so its log4j output) go; its tail explains failures.
    pub fn broker_log(&self, node: u32) -> PathBuf {
        self.node_dir(node).join("broker.log")
    }

    /// The node's pid file, which lets another process (`secretlog kafka down`) find it.
    pub fn pid_file(&self, node: u32) -> PathBuf {
        self.node_dir(node).join("broker.pid")
    }

    /// Directory of the broker jars (the JVM class path is `<libs_dir>/*`).
    pub fn libs_dir(&self) -> PathBuf {
        self.cache_dir.join("libs")
    }

    pub(crate) fn log4j_file(&self) -> PathBuf {
        self.kafka_dir().join("log4j2.properties")
    }

    pub(crate) fn cluster_id_file(&self) -> PathBuf {
        self.kafka_dir().join("cluster.id")
    }

    /// Ports must fit in u16 after the offsets are added.
    pub(crate) fn check_ports(&self) -> Result<(), KafkaError> {
        let offset =
            [CONTROLLER_PORT_OFFSET, SASL_PORT_OFFSET, SSL_PORT_OFFSET, SASL_SSL_PORT_OFFSET].into_iter().max();
        let top = u32::from(self.base_port) + 2 + u32::from(offset.unwrap_or(0));
        if self.base_port == 0 || top > u32::from(u16::MAX) {
            return Err(KafkaError::BadConfig {
                reason: format!(
                    "base_port {} leaves no room for ports up to base+{}",
                    self.base_port,
                    top - u32::from(self.base_port)
                ),
            });
        }
        Ok(())
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SECRETLOG_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("secretlog").join(format!("kafka-{KAFKA_VERSION}"))
}

/// Escape a value for a Java `.properties` file (only backslashes are special in a value).
fn prop_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

/// A multi-line value (a PEM block) as one `.properties` line: newlines become `\n` escapes.
fn prop_multiline(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\r', "").replace('\n', "\\n")
}

/// The `server.properties` of one node. It holds the SASL user's password (in the listeners'
/// JAAS config) and the brokers' private key (inline PEM keystore), so it is written with mode
/// 0600; the broker's command line names only the file.
pub(crate) fn render_server_properties(cfg: &KafkaConfig, node: u32, sasl_password: &str, tls: &BrokerTls) -> String {
    let voters =
        NODE_IDS.iter().map(|n| format!("{n}@127.0.0.1:{}", cfg.controller_port(*n))).collect::<Vec<_>>().join(",");
    let port = cfg.client_port(node);
    let cport = cfg.controller_port(node);
    let sport = cfg.sasl_port(node);
    let tport = cfg.ssl_port(node);
    let stport = cfg.sasl_ssl_port(node);
    let log_dir = prop_path(&cfg.log_dir(node));
    let key = prop_multiline(&tls.key_pem);
    let chain = prop_multiline(&tls.chain_pem);
    let jaas = format!(
        "org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USER}=\"{sasl_password}\";"
    );
    format!(
        "# Generated by secretlog-ops; rewritten on every start.
node.id={node}
process.roles=broker,controller
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},SASL_PLAINTEXT://127.0.0.1:{sport},SSL://127.0.0.1:{tport},SASL_SSL://127.0.0.1:{stport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sport},SSL://127.0.0.1:{tport},SASL_SSL://127.0.0.1:{stport}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
controller.quorum.voters={voters}
log.dirs={log_dir}

# Client listeners that check credentials (SASL/PLAIN, one user) or encrypt (TLS with the
# cluster's own CA, see tls/ca.pem) or both; the brokers talk to each other over PLAINTEXT.
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}
# Both TLS listeners: the brokers' key and certificate chain inline (Kafka reads an unencrypted
# key only this way), no client certificates.
ssl.keystore.type=PEM
ssl.keystore.key={key}
ssl.keystore.certificate.chain={chain}
ssl.client.auth=none

# Durability: what secretlog relies on.
num.partitions=6
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
# Writers elect their leader through a consumer group; let them use short sessions (the
# default floor is 6 s) so a dead leader is replaced in seconds.
group.min.session.timeout.ms=1000

# Notice a dead broker within seconds (defaults are 9 s / 2 s / 30 s).
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
controller.quorum.fetch.timeout.ms=2000
controller.quorum.election.timeout.ms=1000
controller.quorum.election.backoff.max.ms=1000
replica.lag.time.max.ms=10000

# Small machine: fewer threads and internal partitions (defaults 3, 8, 50, 50).
num.network.threads=2
num.io.threads=4
offsets.topic.num.partitions=12
transaction.state.log.num.partitions=12
"
    )
}

/// log4j2 config shared by the nodes: warnings only, plus the one INFO line saying a node started,
/// so `broker.log` stays small but explains a failed start.
pub(crate) fn render_log4j2() -> String {
    "status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
logger.broker.name = kafka.server.KafkaBroker
logger.broker.level = INFO
"
    .to_string()
}

/// The throwaway pom whose runtime dependencies are the broker's class path.
pub(crate) fn render_pom() -> String {
    format!(
        r#"<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>secretlog</groupId><artifactId>kafka-broker-libs</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.16</version></dependency>
  </dependencies>
</project>
"#
    )
}

/// JVM heap flags: `-Xms256m -Xmx<heap>`, with `-Xms` lowered to the heap when the heap is
/// smaller (the JVM refuses to start if Xms > Xmx).
pub(crate) fn heap_args(heap: &str) -> Vec<String> {
    let xms = match parse_size(heap) {
        Some(bytes) if bytes < 256 << 20 => heap.to_string(),
        _ => "256m".to_string(),
    };
    vec![format!("-Xms{xms}"), format!("-Xmx{heap}")]
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// Kafka's cluster id format: 16 random bytes as unpadded base64url (22 chars), never starting
/// with `-` (Kafka's own generator avoids that so the id is not mistaken for a CLI flag).
pub(crate) fn new_cluster_id() -> io::Result<String> {
    let mut f = fs::File::open("/dev/urandom")?;
    loop {
        let mut b = [0u8; 16];
        f.read_exact(&mut b)?;
        let id = encode_cluster_id(&b);
        if !id.starts_with('-') && b != [0u8; 16] {
            return Ok(id);
        }
    }
}

pub(crate) fn encode_cluster_id(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The cluster id of this data dir: the one recorded in `cluster.id`, else one found in a formatted
/// node's `meta.properties`, else a new one; recorded in `cluster.id` so every node agrees.
pub(crate) fn cluster_id(cfg: &KafkaConfig) -> Result<String, KafkaError> {
    let file = cfg.cluster_id_file();
    let recorded = fs::read_to_string(&file).ok().map(|s| s.trim().to_string());
    if let Some(id) = recorded.filter(|s| !s.is_empty()) {
        return Ok(id);
    }
    let found = NODE_IDS.iter().find_map(|n| {
        let meta = fs::read_to_string(cfg.log_dir(*n).join("meta.properties")).ok()?;
        meta.lines().find_map(|l| l.strip_prefix("cluster.id=").map(|v| v.trim().to_string()))
    });
    let id = match found {
        Some(id) => id,
        None => new_cluster_id().map_err(|e| KafkaError::io("read /dev/urandom", "/dev/urandom", e))?,
    };
    write_atomic(&file, id.as_bytes())?;
    Ok(id)
}

/// Write via a temp file and rename, so a crash never leaves a half-written file.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), KafkaError> {
    write_atomic_mode(path, contents, 0o644)
}

/// [`write_atomic`] with the file's mode (0600 for files holding a password).
pub(crate) fn write_atomic_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), KafkaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| KafkaError::io("create", &tmp, e))?;
    f.write_all(contents).map_err(|e| KafkaError::io("write", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| KafkaError::io("rename into", path, e))
}

/// The SASL user's password of this data dir: the recorded one, else a new random one (22
/// base64url characters, 128 bits) recorded with mode 0600. Clients get it from the file or the
/// environment, never from a command line.
pub fn sasl_password(cfg: &KafkaConfig) -> Result<String, KafkaError> {
    let file = cfg.sasl_password_file();
    if let Ok(pw) = fs::read_to_string(&file)
        && !pw.trim().is_empty()
    {
        return Ok(pw.trim().to_string());
    }
    // Same generator as the cluster id: random bytes, base64url, safe inside the JAAS quotes.
    let pw = new_cluster_id().map_err(|e| KafkaError::io("read /dev/urandom", "/dev/urandom", e))?;
    let dir = cfg.kafka_dir();
    fs::create_dir_all(&dir).map_err(|e| KafkaError::io("create", &dir, e))?;
    write_atomic_mode(&file, pw.as_bytes(), 0o600)?;
    Ok(pw)
}

/// Fetch the broker jars with Maven unless `<cache>/libs/kafka_2.13-4.1.1.jar` exists. Maven
/// writes into a private temp dir that is renamed to `libs` only after it succeeded.
pub fn ensure_jars(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let libs = cfg.libs_dir();
    if libs.join(MARKER_JAR).is_file() {
        return Ok(());
    }
    let cache = &cfg.cache_dir;
    fs::create_dir_all(cache).map_err(|e| KafkaError::io("create cache dir", cache, e))?;
    let tmp = cache.join(format!(".fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| KafkaError::io("create", &tmp, e))?;
    let pom = tmp.join("pom.xml");
    fs::write(&pom, render_pom()).map_err(|e| KafkaError::io("write", &pom, e))?;
    let tmp_libs = tmp.join("libs");
    let args = vec![
        "-q".to_string(),
        "-B".to_string(),
        "-f".to_string(),
        pom.display().to_string(),
        "dependency:copy-dependencies".to_string(),
        format!("-DoutputDirectory={}", tmp_libs.display()),
        "-DincludeScope=runtime".to_string(),
    ];
    let command = format!("mvn {}", args.join(" "));
    tracing::info!(%command, "fetching Kafka {KAFKA_VERSION} broker jars");
    let out = Command::new("mvn").args(&args).output().map_err(|e| KafkaError::Spawn {
        node: None,
        command: command.clone(),
        source: e,
    })?;
    if !out.status.success() || !tmp_libs.join(MARKER_JAR).is_file() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let _ = fs::remove_dir_all(&tmp);
        return Err(KafkaError::Command {
            node: None,
            command,
            status: out.status.to_string(),
            output_tail: last_lines(&text, 30),
        });
    }
    if libs.exists() && !libs.join(MARKER_JAR).is_file() {
        // An incomplete or foreign `libs` (never one of ours: ours appear only by rename).
        let _ = fs::remove_dir_all(&libs);
    }
    let renamed = fs::rename(&tmp_libs, &libs);
    let _ = fs::remove_dir_all(&tmp);
    match renamed {
        Ok(()) => Ok(()),
        // A concurrent fetch won the race; its copy is complete.
        Err(_) if libs.join(MARKER_JAR).is_file() => Ok(()),
        Err(e) => Err(KafkaError::io("rename fetched jars into", &libs, e)),
    }
}

/// The last `n` lines of `text`.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KafkaConfig {
        let mut c = KafkaConfig::new("/tmp/sl-test");
        c.cache_dir = PathBuf::from("/tmp/sl-cache");
        c
    }

    #[test]
    fn port_layout() {
        let c = cfg();
        assert_eq!([c.client_port(1), c.client_port(2), c.client_port(3)], [19092, 19093, 19094]);
        assert_eq!([c.controller_port(1), c.controller_port(3)], [19102, 19104]);
        assert_eq!(c.bootstrap_servers(), "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094");
        assert_eq!(c.sasl_bootstrap_servers(), "127.0.0.1:19112,127.0.0.1:19113,127.0.0.1:19114");
        assert_eq!(c.ssl_bootstrap_servers(), "127.0.0.1:19122,127.0.0.1:19123,127.0.0.1:19124");
        assert_eq!(c.sasl_ssl_bootstrap_servers(), "127.0.0.1:19132,127.0.0.1:19133,127.0.0.1:19134");
        assert_eq!(c.ports(2), [19093, 19103, 19113, 19123, 19133]);
        let mut other = c.clone();
        other.base_port = 29092;
        assert_eq!(other.controller_port(2), 29103);
        other.base_port = 65530;
        assert!(other.check_ports().is_err());
        other.base_port = 65493;
        assert!(other.check_ports().is_ok());
        other.base_port = 65494;
        assert!(other.check_ports().is_err());
        assert!(c.check_ports().is_ok());
    }

    #[test]
    fn node_paths() {
        let c = cfg();
        assert_eq!(c.log_dir(2), PathBuf::from("/tmp/sl-test/kafka/node-2/data"));
        assert_eq!(c.pid_file(3), PathBuf::from("/tmp/sl-test/kafka/node-3/broker.pid"));
        assert_eq!(c.libs_dir(), PathBuf::from("/tmp/sl-cache/libs"));
    }

    #[test]
    fn server_properties_have_required_settings() {
        let tls = BrokerTls {
            key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n".into(),
        };
        let p = render_server_properties(&cfg(), 2, "pw0", &tls);
        let jaas = "org.apache.kafka.common.security.plain.PlainLoginModule required user_secretlog=\"pw0\";";
        for want in [
            "node.id=2",
            "process.roles=broker,controller",
            "listeners=PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19103,SASL_PLAINTEXT://127.0.0.1:19113,SSL://127.0.0.1:19123,SASL_SSL://127.0.0.1:19133",
            "advertised.listeners=PLAINTEXT://127.0.0.1:19093,SASL_PLAINTEXT://127.0.0.1:19113,SSL://127.0.0.1:19123,SASL_SSL://127.0.0.1:19133",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN",
            &format!("listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}"),
            "listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN",
            &format!("listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}"),
            "ssl.keystore.type=PEM",
            // One line each, newlines escaped the way java.util.Properties reads them back.
            "ssl.keystore.key=-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n",
            "ssl.keystore.certificate.chain=-----BEGIN CERTIFICATE-----\\nBBBB\\n-----END CERTIFICATE-----\\n",
            "ssl.client.auth=none",
            "controller.quorum.voters=1@127.0.0.1:19102,2@127.0.0.1:19103,3@127.0.0.1:19104",
            "log.dirs=/tmp/sl-test/kafka/node-2/data",
            "default.replication.factor=3",
            "min.insync.replicas=2",
            "unclean.leader.election.enable=false",
            "offsets.topic.replication.factor=3",
            "transaction.state.log.replication.factor=3",
            "transaction.state.log.min.isr=2",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "num.partitions=6",
            "broker.session.timeout.ms=3000",
            "broker.heartbeat.interval.ms=500",
        ] {
            assert!(p.lines().any(|l| l == want), "missing {want:?} in\n{p}");
        }
        assert!(!p.contains("transaction.max.timeout.ms"));
        // No key twice (the later would silently win).
        let mut keys: Vec<&str> = p
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(|l| l.split('=').next().unwrap_or(""))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn the_sasl_password_is_random_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = KafkaConfig::new(dir.path());
        let pw = sasl_password(&c).unwrap();
        assert_eq!(pw.len(), 22);
        assert_eq!(sasl_password(&c).unwrap(), pw, "kept across starts");
        let mode = fs::metadata(c.sasl_password_file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(sasl_password(&KafkaConfig::new(other.path())).unwrap(), pw);
    }

    #[test]
    fn cluster_id_format() {
        assert_eq!(encode_cluster_id(&[0u8; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(encode_cluster_id(&[0xffu8; 16]), "_____________________w");
        // Same as Java's Base64.getUrlEncoder().withoutPadding() for 0..16.
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(encode_cluster_id(&b), "AAECAwQFBgcICQoLDA0ODw");
        for _ in 0..200 {
            let id = new_cluster_id().expect("urandom");
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'));
            assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        }
    }

    #[test]
    fn heap_flags() {
        assert_eq!(heap_args("768m"), ["-Xms256m", "-Xmx768m"]);
        assert_eq!(heap_args("1g"), ["-Xms256m", "-Xmx1g"]);
        assert_eq!(heap_args("128m"), ["-Xms128m", "-Xmx128m"]);
    }

    #[test]
    fn pom_pins_versions() {
        let pom = render_pom();
        assert!(pom.contains("<artifactId>kafka_2.13</artifactId><version>4.1.1</version>"));
        assert!(pom.contains("<artifactId>slf4j-api</artifactId><version>2.0.16</version>"));
    }
}
