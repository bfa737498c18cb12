//! The deployment artefacts are checked, not just written:
//!
//! * `deploy/prometheus/alerts.yml` passes `promtool check rules` and its unit tests
//!   (`alerts_test.yml`), and every alert has a case where it fires and one where it must not;
//! * `deploy/grafana/secretlog.json` is a well-formed dashboard whose every query parses
//!   (promtool checks them as recording rules);
//! * every series the rules and the dashboard name is one our nodes export (found in the Rust
//!   source), documented in docs/operations.md, or a Kafka exporter series — and every series we
//!   export is on the dashboard;
//! * `compose/docker-compose.yml` runs the whole topology, and every flag and `SECRETLOG_*` /
//!   `KAFKA_*` variable it gives a secretlog node is one that node's `--help` lists (the real
//!   binary, `secretlog-it`, is asked); Prometheus scrapes every node on the port it listens on;
//!   Grafana is provisioned with the dashboard.
//!
//! promtool comes from Debian's `prometheus` package (`scripts/bootstrap` installs it). Without it
//! these tests fail: a skipped check of alert rules is an unchecked alert rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// Series the rules and the dashboard use that no node exports yet: each is a gap in the Rust
/// code. When a node starts exporting one, the test says to remove it from here.
const PENDING_METRICS: &[&str] = &[];

/// Series of danielqsj/kafka-exporter (its README, "Metrics"): we do not scrape broker JMX.
const KAFKA_EXPORTER_METRICS: &[&str] = &[
    "kafka_brokers",
    "kafka_broker_info",
    "kafka_topic_partitions",
    "kafka_topic_partition_current_offset",
    "kafka_topic_partition_oldest_offset",
    "kafka_topic_partition_in_sync_replica",
    "kafka_topic_partition_leader",
    "kafka_topic_partition_leader_is_preferred",
    "kafka_topic_partition_replicas",
    "kafka_topic_partition_under_replicated_partition",
];

/// Series Prometheus itself makes for every target.
const PROMETHEUS_METRICS: &[&str] = &["up"];

/// The conditions issue #10 (after the seeds) wants an alert for, and the alert that covers each.
const REQUIRED_ALERTS: &[(&str, &str)] = &[
    ("replication lag > 10 s", "SecretlogReplicationLagHigh"),
    ("audit failure", "SecretlogAuditFailure"),
    ("newest snapshot older than 24 h", "SecretlogSnapshotStale"),
    ("leader missing", "SecretlogLeaderMissing"),
    ("broker ISR shrink", "KafkaUnderReplicatedPartitions"),
    ("sealed node", "SecretlogSealed"),
];

/// The node subcommands of `secretlog` that compose runs.
const NODE_COMMANDS: &[&str] = &["writer", "reader", "replicator"];

/// Variables a secretlog node reads that are not its own flags: object_store's S3 settings (the
/// ones state/src/objects.rs names are added from that file) and the log filter.
const OTHER_NODE_ENV: &[&str] = &["AWS_SKIP_SIGNATURE", "RUST_LOG"];

// --- helpers ---------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A YAML file with `<<` merge keys applied (compose uses them).
fn yaml(rel: &str) -> Yaml {
    let mut v: Yaml = serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    v.apply_merge().unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
    v
}

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/secretlog.json")).expect("deploy/grafana/secretlog.json is not JSON")
}

/// Run promtool in `dir`; fail the test (never skip) if it is missing or reports a problem.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = match Command::new("promtool").args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install Debian's `prometheus` package (scripts/bootstrap \
             does). The alert rules and dashboard queries cannot be checked without it."
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} (in {}) failed:\n{text}", args.join(" "), dir.display());
    text
}

/// `secretlog <command> --help` of the real binary.
fn help(command: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_secretlog-it"))
        .args([command, "--help"])
        .output()
        .expect("run secretlog-it --help");
    assert!(out.status.success(), "secretlog {command} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Words of `text` made of `[A-Za-z0-9_-]` that start with `prefix`.
fn words_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before_ok = !rest[..i].ends_with(is_word);
        let tail = &rest[i..];
        let len = tail.find(|c: char| !is_word(c)).unwrap_or(tail.len());
        if before_ok && len > prefix.len() {
            out.insert(tail[..len].to_string());
        }
        rest = &tail[len.max(1)..];
    }
    out
}

/// Flags a node's `--help` lists.
fn help_flags(help: &str) -> BTreeSet<String> {
    words_with_prefix(help, "--")
}

/// `SECRETLOG_*` / `KAFKA_*` variables a node's `--help` names (clap's `[env: X]`, or the text).
fn help_env(help: &str) -> BTreeSet<String> {
    let mut out = words_with_prefix(help, "SECRETLOG_");
    out.extend(words_with_prefix(help, "KAFKA_"));
    out
}

/// The default of `flag` as `--help` shows it.
fn help_default(help: &str, flag: &str) -> String {
    let at = help.find(&format!("{flag} ")).unwrap_or_else(|| panic!("{flag} not in help"));
    let tail = &help[at..];
    let d = tail.find("[default: ").unwrap_or_else(|| panic!("{flag} has no default")) + "[default: ".len();
    tail[d..tail[d..].find(']').map(|e| d + e).expect("closing ]")].to_string()
}

/// The series names a PromQL expression selects (identifiers outside strings that name ours, the
/// Kafka exporter's or Prometheus' series).
fn series_in(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("secretlog_")
                || word.starts_with("kafka_")
                || PROMETHEUS_METRICS.contains(&word.as_str())
            {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The family a series belongs to: `x_bucket` / `x_sum` / `x_count` of histogram `x` if `x` is
/// known, else the name itself.
fn family(name: &str, known: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && known.contains(base)
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// Every `"secretlog_..."` string literal in the Rust source of our crates: the series we export.
fn exported_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for (i, _) in text.match_indices("\"secretlog_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if text[i + 1 + name.len()..].starts_with('"') {
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for krate in ["schemas", "state", "node", "reader", "writer", "replicator", "ops"] {
        walk(&repo().join(krate).join("src"), &mut out);
    }
    assert!(out.contains("secretlog_http_requests_total"), "the source scan found no metrics: {out:?}");
    out
}

fn alert_rules() -> Vec<Yaml> {
    let rules = yaml("deploy/prometheus/alerts.yml");
    let groups = rules["groups"].as_sequence().expect("alerts.yml: groups");
    groups.iter().flat_map(|g| g["rules"].as_sequence().expect("group rules").iter().cloned()).collect()
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dash: &Json) -> Vec<Json> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("dashboard: panels") {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

/// (panel id, refId, expr) of every query of the dashboard.
fn dashboard_queries(dash: &Json) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for p in panels(dash).iter().filter(|p| p["type"] != "row") {
        let id = p["id"].as_u64().expect("panel id");
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((id, t["refId"].as_str().unwrap_or("").to_string(), t["expr"].as_str().unwrap_or("").to_string()));
        }
    }
    out
}

/// The metric a Grafana `label_values(metric, label)` variable query reads.
fn variable_series(dash: &Json) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in dash["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("variable query");
        out.extend(series_in(q));
    }
    out
}

/// A dashboard expression with Grafana's variables replaced, so PromQL tools can parse it.
fn substitute_variables(expr: &str, dash: &Json) -> String {
    let mut e = expr.to_string();
    for builtin in ["$__rate_interval", "$__interval", "$__range"] {
        e = e.replace(builtin, "5m");
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().expect("variable name");
        e = e.replace(&format!("${{{name}}}"), ".*").replace(&format!("${name}"), ".*");
    }
    e
}

fn as_text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Null => vec![],
        Yaml::String(s) => vec![s.clone()],
        Yaml::Sequence(seq) => seq.iter().map(as_text).collect(),
        other => panic!("expected a list of strings: {other:?}"),
    }
}

/// A compose service's environment, in either of compose's two forms.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Null => BTreeMap::new(),
        Yaml::Mapping(m) => {
            m.iter().map(|(k, v)| (as_text(k), if v.is_null() { String::new() } else { as_text(v) })).collect()
        }
        Yaml::Sequence(seq) => seq
            .iter()
            .map(|kv| {
                let kv = as_text(kv);
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("environment: {other:?}"),
    }
}

/// The value of `--flag` in an argv (`--flag=v` or `--flag v`).
fn flag_value(argv: &[String], flag: &str) -> Option<String> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            Some(v.to_string())
        } else if a == flag {
            argv.get(i + 1).cloned()
        } else {
            None
        }
    })
}

/// One secretlog node of the compose file.
struct Node {
    service: String,
    command: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

impl Node {
    /// A setting from its flag, else its variable.
    fn setting(&self, flag: &str, var: &str) -> Option<String> {
        flag_value(&self.argv, flag).or_else(|| self.env.get(var).cloned())
    }

    fn listen_port(&self) -> u16 {
        let var = format!("SECRETLOG_{}_LISTEN", self.command.to_uppercase());
        let listen = self.setting("--listen", &var).unwrap_or_else(|| panic!("{}: no --listen", self.service));
        assert!(
            !listen.starts_with("127.") && !listen.starts_with("localhost"),
            "{}: listens on {listen}, unreachable from other containers",
            self.service
        );
        listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{}: listen {listen}", self.service))
    }
}

struct Compose {
    file: Yaml,
}

impl Compose {
    fn load() -> Self {
        Compose { file: yaml("compose/docker-compose.yml") }
    }

    fn dir() -> PathBuf {
        repo().join("compose")
    }

    fn services(&self) -> Vec<(String, &Yaml)> {
        self.file["services"].as_mapping().expect("compose: services").iter().map(|(k, v)| (as_text(k), v)).collect()
    }

    fn service(&self, name: &str) -> &Yaml {
        let s = &self.file["services"][name];
        assert!(!s.is_null(), "compose has no service {name}");
        s
    }

    /// Whether a service runs our image, built from the repository's Dockerfile.
    fn is_ours(service: &Yaml) -> bool {
        let Some(context) = service["build"]["context"].as_str() else { return false };
        let dockerfile = service["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
        let path = Self::dir().join(context).join(dockerfile);
        path.canonicalize().ok() == repo().join("Dockerfile").canonicalize().ok()
    }

    /// Services that run a secretlog node: our image, entrypoint `secretlog` kept.
    fn nodes(&self) -> Vec<Node> {
        self.services()
            .into_iter()
            .filter(|(_, s)| Self::is_ours(s) && s["entrypoint"].is_null())
            .map(|(name, s)| {
                let argv = match &s["command"] {
                    Yaml::Sequence(_) => strings(&s["command"]),
                    other => panic!("{name}: give the command as a list (exec form), not {other:?}"),
                };
                let command = argv.first().unwrap_or_else(|| panic!("{name}: empty command")).clone();
                Node { service: name, command, argv, env: environment(s) }
            })
            .collect()
    }

    fn nodes_running(&self, command: &str) -> Vec<Node> {
        self.nodes().into_iter().filter(|n| n.command == command).collect()
    }

    /// Bind mounts of a service: (absolute source, target in the container).
    fn bind_mounts(&self, service: &str) -> Vec<(PathBuf, String)> {
        strings(&self.service(service)["volumes"])
            .into_iter()
            .filter(|v| v.starts_with('.') || v.starts_with('/'))
            .map(|v| {
                let mut parts = v.split(':');
                let (src, dst) = (parts.next().expect("source"), parts.next().expect("target"));
                (Self::dir().join(src), dst.to_string())
            })
            .collect()
    }
}

// --- alert rules -----------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let out = promtool(&dir, &["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&dir, &["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let rules = alert_rules();
    let alerts: BTreeSet<String> = rules.iter().filter_map(|r| r["alert"].as_str().map(String::from)).collect();
    for (condition, alert) in REQUIRED_ALERTS {
        assert!(alerts.contains(*alert), "no alert {alert} for \"{condition}\" in alerts.yml");
    }
    for r in &rules {
        let name = r["alert"].as_str().expect("every rule in alerts.yml is an alert");
        let severity = r["labels"]["severity"].as_str().unwrap_or("");
        assert!(["critical", "warning"].contains(&severity), "{name}: severity {severity:?}");
        for a in ["summary", "description"] {
            assert!(r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()), "{name}: no {a}");
        }
    }

    let tests = yaml("deploy/prometheus/alerts_test.yml");
    assert!(strings(&tests["rule_files"]).contains(&"alerts.yml".to_string()), "alerts_test.yml must load alerts.yml");
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_sequence().expect("alerts_test.yml: tests") {
        for t in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = t["alertname"].as_str().expect("alertname").to_string();
            assert!(alerts.contains(&name), "alerts_test.yml tests {name}, which alerts.yml does not define");
            let expected = t["exp_alerts"].as_sequence().map_or(0, |s| s.len());
            let cases = if expected > 0 { &mut fires } else { &mut quiet };
            cases.insert(name);
        }
    }
    for a in &alerts {
        assert!(fires.contains(a), "no test case in alerts_test.yml where {a} fires");
        assert!(quiet.contains(a), "no test case in alerts_test.yml where {a} stays quiet");
    }
}

#[test]
fn prometheus_config_is_valid() {
    let out = promtool(&repo().join("deploy/prometheus"), &["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

// --- dashboard -------------------------------------------------------------------------------

#[test]
fn dashboard_panels_have_a_datasource_and_queries_that_parse() {
    let dash = dashboard();
    for key in ["uid", "title"] {
        assert!(dash[key].as_str().is_some_and(|s| !s.is_empty()), "dashboard: no {key}");
    }
    assert!(dash["schemaVersion"].as_u64().is_some(), "dashboard: no schemaVersion");
    let vars = dash["templating"]["list"].as_array().expect("dashboard: templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "dashboard: a `datasource` variable of type prometheus is what panels refer to"
    );

    let all = panels(&dash);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in &all {
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("panel without id: {}", p["title"]));
        assert!(ids.insert(id), "panel id {id} used twice");
        let title = p["title"].as_str().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("panel {id}: no title"));
        let grid = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(grid[k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "{title}: wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}: datasource type");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: datasource uid");
        let targets =
            p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: no targets"));
        let mut refs = BTreeSet::new();
        for t in targets {
            let r = t["refId"]
                .as_str()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| panic!("{title}: target without refId"));
            assert!(refs.insert(r), "{title}: refId {r} twice");
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{title}/{r}: no expr");
            if !t["datasource"].is_null() {
                assert_eq!(t["datasource"]["type"], "prometheus", "{title}/{r}: datasource type");
            }
            queries += 1;
        }
    }
    assert!(queries >= 10, "only {queries} queries on the dashboard");

    // Every query must parse: promtool checks them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (id, refid, expr) in dashboard_queries(&dash) {
        let e = substitute_variables(&expr, &dash);
        assert!(!e.contains('$'), "panel {id}/{refid}: unknown variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:panel_{id}_{refid}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dashboard_rules.yml"), rules).expect("write rules");
    promtool(dir.path(), &["check", "rules", "dashboard_rules.yml"]);
}

#[test]
fn dashboard_and_rules_name_only_series_that_exist() {
    let exported = exported_metrics();
    let pending: BTreeSet<String> = PENDING_METRICS.iter().map(|s| s.to_string()).collect();
    let now_exported: Vec<_> = pending.intersection(&exported).collect();
    assert!(now_exported.is_empty(), "{now_exported:?} are exported now: remove them from PENDING_METRICS");

    let mut known: BTreeSet<String> = exported.union(&pending).cloned().collect();
    known.extend(KAFKA_EXPORTER_METRICS.iter().chain(PROMETHEUS_METRICS).map(|s| s.to_string()));

    let dash = dashboard();
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for (id, refid, expr) in dashboard_queries(&dash) {
        for s in series_in(&expr) {
            used.entry(family(&s, &known)).or_insert_with(|| format!("dashboard panel {id}/{refid}"));
        }
    }
    for s in variable_series(&dash) {
        used.entry(family(&s, &known)).or_insert_with(|| "a dashboard variable".into());
    }
    let mut in_rules = BTreeSet::new();
    for r in alert_rules() {
        let name = as_text(&r["alert"]);
        for s in series_in(&as_text(&r["expr"])) {
            in_rules.insert(family(&s, &known));
            used.entry(family(&s, &known)).or_insert_with(|| format!("alert {name}"));
        }
    }

    let docs = words_with_prefix(&read("docs/operations.md"), "secretlog_");
    for (series, by) in &used {
        assert!(
            known.contains(series),
            "{by} uses {series}, which no node exports (not in the Rust source, PENDING_METRICS or the Kafka exporter's list)"
        );
        if series.starts_with("secretlog_") {
            assert!(docs.contains(series), "{by} uses {series}, which docs/operations.md does not document");
        }
    }
    for p in &pending {
        assert!(used.contains_key(p), "{p} is in PENDING_METRICS but nothing uses it");
    }
    for s in &exported {
        assert!(used.contains_key(s), "{s} is exported but not on the dashboard");
    }
    assert!(in_rules.contains("kafka_topic_partition_under_replicated_partition"), "broker ISR shrink is alerted on");
}

// --- compose -----------------------------------------------------------------------------------

#[test]
fn compose_runs_the_whole_topology() {
    let compose = Compose::load();
    let services = compose.services();
    let names: BTreeSet<String> = services.iter().map(|(n, _)| n.clone()).collect();
    let declared_volumes: BTreeSet<String> =
        compose.file["volumes"].as_mapping().map(|m| m.keys().map(as_text).collect()).unwrap_or_default();

    for (name, s) in &services {
        // Images are pinned; ours is built from the repository's Dockerfile.
        if Compose::is_ours(s) {
            assert!(s["image"].as_str().is_some_and(|i| i.starts_with("secretlog:")), "{name}: image tag of our build");
        } else {
            let image =
                s["image"].as_str().unwrap_or_else(|| panic!("{name}: no image and not built from our Dockerfile"));
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_else(|| panic!("{name}: {image} is not pinned"));
            assert!(tag != "latest" && !tag.contains('/'), "{name}: {image} is not pinned to a version");
        }
        let deps: Vec<String> = match &s["depends_on"] {
            Yaml::Mapping(m) => m.keys().map(as_text).collect(),
            other => strings(other),
        };
        for d in deps {
            assert!(names.contains(&d), "{name} depends on {d}, which is not a service");
        }
        for v in strings(&s["volumes"]) {
            let source = v.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(Compose::dir().join(source).exists(), "{name}: mounts {source}, which does not exist");
            } else {
                assert!(declared_volumes.contains(source), "{name}: volume {source} is not declared");
            }
        }
    }

    // Three KRaft brokers of the official image, set up the way secretlog relies on.
    let brokers: Vec<_> = services
        .iter()
        .filter(|(_, s)| {
            s["image"].as_str().is_some_and(|i| i.starts_with("apache/kafka:")) && !environment(s).is_empty()
        })
        .collect();
    assert_eq!(brokers.len(), 3, "three Kafka brokers");
    let writer_session_ms: u64 =
        help_default(&help("writer"), "--election-session-timeout-ms").parse().expect("number");
    let mut node_ids = BTreeSet::new();
    for (name, s) in &brokers {
        let env = environment(s);
        let get = |k: &str| env.get(k).cloned().unwrap_or_else(|| panic!("{name}: no {k}"));
        assert!(get("KAFKA_PROCESS_ROLES").contains("controller"), "{name}: KRaft controller");
        node_ids.insert(get("KAFKA_NODE_ID"));
        assert!(get("CLUSTER_ID").len() == 22, "{name}: CLUSTER_ID");
        assert_eq!(get("KAFKA_MIN_INSYNC_REPLICAS"), "2", "{name}");
        assert_eq!(get("KAFKA_DEFAULT_REPLICATION_FACTOR"), "3", "{name}");
        assert_eq!(get("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"), "false", "{name}");
        assert_eq!(get("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"), "2", "{name}");
        let floor: u64 = get("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS").parse().expect("number");
        assert!(
            floor <= writer_session_ms,
            "{name}: group.min.session.timeout.ms {floor} > the writers' {writer_session_ms}"
        );
        for (other, _) in &brokers {
            assert!(
                get("KAFKA_CONTROLLER_QUORUM_VOTERS").contains(&format!("@{other}:")),
                "{name}: {other} not a voter"
            );
        }
        assert!(get("KAFKA_ADVERTISED_LISTENERS").contains(&format!("//{name}:")), "{name}: advertised listener");
    }
    assert_eq!(node_ids.len(), 3, "broker node ids are distinct");
    let topic_init = services
        .iter()
        .filter_map(|(_, s)| strings(&s["command"]).into_iter().find(|c| c.contains("kafka-topics.sh")))
        .next()
        .expect("a service creates the mutation topic");
    for needle in ["--replication-factor 3", "min.insync.replicas=2", "unclean.leader.election.enable=false"] {
        assert!(topic_init.contains(needle), "the topic is created without {needle}");
    }

    // Object storage, the Kafka exporter, Prometheus and Grafana.
    assert!(
        services.iter().any(|(_, s)| s["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("motoserver/moto:") || i.starts_with("minio/minio:"))),
        "an S3-compatible server"
    );
    for (image, what) in [
        ("danielqsj/kafka-exporter:", "the Kafka exporter"),
        ("prom/prometheus:", "Prometheus"),
        ("grafana/grafana", "Grafana"),
    ] {
        assert!(services.iter().any(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with(image))), "{what}");
    }

    // Two writers, readers in two regions, the replicator.
    let writers = compose.nodes_running("writer");
    assert!(writers.len() >= 2, "two writers (leader and standby)");
    let regions: BTreeSet<String> = compose
        .nodes_running("reader")
        .iter()
        .map(|r| r.setting("--region", "SECRETLOG_REGION").expect("reader region"))
        .collect();
    assert!(regions.len() >= 2, "readers in two regions: {regions:?}");
    assert_eq!(compose.nodes_running("replicator").len(), 1, "one replicator");

    // Every node reaches the three brokers, the same object store and the key file; no secret
    // is written in the compose file.
    let writer_names: BTreeSet<String> = writers.iter().map(|w| w.service.clone()).collect();
    let broker_names: BTreeSet<String> = brokers.iter().map(|(n, _)| n.clone()).collect();
    for node in compose.nodes() {
        let who = &node.service;
        let bootstrap =
            node.setting("--bootstrap", "KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|| panic!("{who}: no Kafka"));
        let hosts: BTreeSet<String> = bootstrap.split(',').map(|h| h.split(':').next().unwrap().to_string()).collect();
        assert_eq!(hosts, broker_names, "{who}: bootstrap servers");
        let store = node
            .setting("--object-store", "SECRETLOG_OBJECT_STORE")
            .unwrap_or_else(|| panic!("{who}: no object store"));
        let bucket =
            store.strip_prefix("s3://").and_then(|s| s.split('/').next()).unwrap_or_else(|| panic!("{who}: {store}"));
        assert!(
            services.iter().any(|(_, s)| strings(&s["command"]).iter().any(|c| c.contains(&format!("/{bucket}")))),
            "{who}: nothing creates bucket {bucket}"
        );
        assert!(node.setting("--root-key-file", "SECRETLOG_ROOT_KEY_FILE").is_some(), "{who}: no root key file");
        assert!(!node.env.contains_key("SECRETLOG_ROOT_KEY"), "{who}: the root key itself is in the compose file");
        assert!(!node.env.contains_key("AWS_SECRET_ACCESS_KEY"), "{who}: an S3 secret is in the compose file");
        node.listen_port();
    }
    for w in &writers {
        let url = w
            .setting("--advertise-url", "SECRETLOG_ADVERTISE_URL")
            .unwrap_or_else(|| panic!("{}: advertise URL", w.service));
        assert_eq!(url, format!("http://{}:{}", w.service, w.listen_port()), "{}: advertise URL", w.service);
    }
    for r in compose.nodes_running("reader") {
        let urls =
            r.setting("--writer-url", "SECRETLOG_WRITER_URLS").unwrap_or_else(|| panic!("{}: writer URLs", r.service));
        let hosts: BTreeSet<String> =
            urls.split(',').map(|u| u.trim_start_matches("http://").split(':').next().unwrap().to_string()).collect();
        assert_eq!(hosts, writer_names, "{}: forwards to every writer", r.service);
    }
}

#[test]
fn compose_gives_nodes_only_flags_and_variables_the_binary_documents() {
    let compose = Compose::load();
    let nodes = compose.nodes();
    assert!(nodes.len() >= 5, "compose runs {} secretlog nodes", nodes.len());
    let mut aws: BTreeSet<String> = words_with_prefix(&read("state/src/objects.rs"), "AWS_");
    aws.extend(OTHER_NODE_ENV.iter().map(|s| s.to_string()));
    let mut helps = BTreeMap::new();
    for node in &nodes {
        let who = &node.service;
        assert!(NODE_COMMANDS.contains(&node.command.as_str()), "{who}: `secretlog {}` is not a node", node.command);
        let text = helps.entry(node.command.clone()).or_insert_with(|| help(&node.command));
        let (flags, vars) = (help_flags(text), help_env(text));
        for arg in node.argv.iter().skip(1).filter(|a| a.starts_with("--")) {
            let flag = arg.split('=').next().unwrap();
            assert!(flags.contains(flag), "{who}: `secretlog {} {flag}` is not a flag of the binary", node.command);
        }
        for var in node.env.keys() {
            if var.starts_with("SECRETLOG_") || var.starts_with("KAFKA_") {
                assert!(vars.contains(var), "{who}: {var} is not documented by `secretlog {} --help`", node.command);
            } else {
                assert!(aws.contains(var), "{who}: {var} is read by nothing in a secretlog node");
            }
        }
    }
}

#[test]
fn prometheus_scrapes_every_node_where_it_listens() {
    let compose = Compose::load();
    let config = yaml("deploy/prometheus/prometheus.yml");
    let mut targets: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    for job in config["scrape_configs"].as_sequence().expect("scrape_configs") {
        let job_name = as_text(&job["job_name"]);
        for sc in job["static_configs"].as_sequence().expect("static_configs") {
            let labels: BTreeMap<String, String> = sc["labels"]
                .as_mapping()
                .map(|m| m.iter().map(|(k, v)| (as_text(k), as_text(v))).collect())
                .unwrap_or_default();
            for t in strings(&sc["targets"]) {
                targets.insert(t, (job_name.clone(), labels.clone()));
            }
        }
    }
    for t in targets.keys() {
        let host = t.split(':').next().unwrap();
        compose.service(host);
    }
    for node in compose.nodes() {
        let target = format!("{}:{}", node.service, node.listen_port());
        let (job, labels) = targets.get(&target).unwrap_or_else(|| panic!("Prometheus does not scrape {target}"));
        assert_eq!(job, &format!("secretlog-{}", node.command), "{target}: job name (the alert rules use it)");
        if node.command == "reader" {
            assert_eq!(
                labels.get("region"),
                node.setting("--region", "SECRETLOG_REGION").as_ref(),
                "{target}: region label"
            );
        }
    }
    let exporter = compose
        .services()
        .into_iter()
        .find(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("danielqsj/kafka-exporter:")));
    let (exporter, _) = exporter.expect("kafka exporter service");
    assert!(targets.contains_key(&format!("{exporter}:9308")), "Prometheus does not scrape the Kafka exporter");

    // The rule files Prometheus loads are mounted next to its configuration.
    let prometheus = compose
        .services()
        .into_iter()
        .find(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("prom/prometheus:")))
        .map(|(n, _)| n)
        .expect("prometheus service");
    let mounts = compose.bind_mounts(&prometheus);
    let mounted = |rel: &str, target: &str| {
        let src = repo().join(rel).canonicalize().expect("file exists");
        mounts.iter().any(|(s, t)| s.canonicalize().ok() == Some(src.clone()) && t == target)
    };
    assert!(
        mounted("deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"),
        "prometheus.yml is not mounted"
    );
    for rule_file in strings(&config["rule_files"]) {
        assert!(
            mounted(&format!("deploy/prometheus/{rule_file}"), &format!("/etc/prometheus/{rule_file}")),
            "{rule_file} is not mounted next to prometheus.yml"
        );
    }
}

#[test]
fn grafana_is_provisioned_with_the_dashboard_and_prometheus() {
    let compose = Compose::load();
    let grafana = compose
        .services()
        .into_iter()
        .find(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("grafana/grafana")))
        .map(|(n, _)| n)
        .expect("grafana service");
    let mounts = compose.bind_mounts(&grafana);
    let target_of = |rel: &str| {
        let src = repo().join(rel).canonicalize().unwrap_or_else(|e| panic!("{rel}: {e}"));
        mounts
            .iter()
            .find(|(s, _)| s.canonicalize().ok() == Some(src.clone()))
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("{rel} is not mounted into {grafana}"))
    };

    let ds_target = target_of("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert!(ds_target.starts_with("/etc/grafana/provisioning/datasources/"), "{ds_target}");
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &ds["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    let url = as_text(&ds["url"]);
    let host = url.trim_start_matches("http://").split(':').next().unwrap();
    assert!(
        compose.service(host)["image"].as_str().is_some_and(|i| i.starts_with("prom/prometheus:")),
        "datasource {url}"
    );

    let provider_target = target_of("deploy/grafana/provisioning/dashboards/secretlog.yml");
    assert!(provider_target.starts_with("/etc/grafana/provisioning/dashboards/"), "{provider_target}");
    let provider = yaml("deploy/grafana/provisioning/dashboards/secretlog.yml");
    let path = as_text(&provider["providers"][0]["options"]["path"]);
    let dash_target = target_of("deploy/grafana/secretlog.json");
    assert_eq!(
        Path::new(&dash_target).parent(),
        Some(Path::new(&path)),
        "the dashboard is not in the provider's folder"
    );
}

// --- image -------------------------------------------------------------------------------------

#[test]
fn dockerfile_builds_one_image_whose_entrypoint_is_secretlog() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a builder stage and a runtime stage: {froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].contains(" AS "), "builder: {}", froms[0]);
    assert!(froms[1].contains("debian:") && froms[1].contains("-slim"), "runtime: {}", froms[1]);
    for pkg in ["cmake", "g++", "make", "zlib1g-dev"] {
        assert!(dockerfile.contains(&format!(" {pkg} ")), "the builder does not install {pkg}");
    }
    assert!(dockerfile.contains("-p secretlog-ops --bin secretlog"), "builds the secretlog binary");
    assert!(read("ops/Cargo.toml").contains("name = \"secretlog\""), "ops builds a binary named secretlog");
    assert!(dockerfile.contains("ENTRYPOINT [\"secretlog\"]"), "entrypoint secretlog");
    assert!(dockerfile.lines().any(|l| l.starts_with("USER ") && !l.contains("root")), "the runtime is not root");

    // The toolchain is at least the workspace's rust-version.
    let version = |text: &str, key: &str| -> (u32, u32) {
        let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
        let v = line[key.len()..].trim_matches(|c: char| c == '"' || c == '=' || c == ' ');
        let mut parts = v.split('.').map(|p| p.parse::<u32>().expect("version number"));
        (parts.next().unwrap(), parts.next().unwrap())
    };
    let image = version(&dockerfile, "ARG RUST_VERSION");
    let workspace = version(&read("Cargo.toml"), "rust-version");
    assert!(image >= workspace, "the builder's Rust {image:?} is older than the workspace's {workspace:?}");

    let ignore: BTreeSet<String> = read(".dockerignore").lines().map(|l| l.trim().to_string()).collect();
    for must in ["target", ".git"] {
        assert!(ignore.contains(must), ".dockerignore does not exclude {must}");
    }
}

/// The features cargo turns on for `package` when it alone is built (as the release build and
/// the Dockerfile build `secretlog-ops`), as `cargo tree` resolves them from Cargo.lock.
fn features_of_build(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "-p", package, "-e", "features", "--prefix", "none"])
        .current_dir(repo())
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("cargo tree prints UTF-8")
}

/// The test-only faults (planted bugs, re-sends, a reseed that dies mid-transaction) are compiled
/// only into the tests' binary: the released `secretlog` reads no `SECRETLOG_TEST_*` switch.
#[test]
fn planted_faults_are_in_the_tests_build_only() {
    let release = features_of_build("secretlog-ops");
    assert!(
        !release.contains("planted-faults"),
        "a build of secretlog-ops alone turns on the test-only faults:\n{release}"
    );
    let tests = features_of_build("secretlog-tests");
    for crate_ in ["secretlog-ops", "secretlog-writer", "secretlog-state"] {
        assert!(
            tests.lines().any(|l| l.starts_with(&format!("{crate_} feature \"planted-faults\""))),
            "the tests' build must plant faults in {crate_}:\n{tests}"
        );
    }
}
