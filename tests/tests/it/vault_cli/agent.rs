//! Vault Agent (`bao agent`, the same binary as the CLI) against a secretlog **reader**: it
//! authenticates by itself (auto-auth), renders a template holding a secret to a file, and
//! renders it again when the secret is changed through the leader.
//!
//! Two auto-auth methods: AppRole (`role_id_file_path`, `secret_id_file_path`), which is what
//! apps use (issue #21), and `token_file`, which needs no auth method on the server. The setup
//! goes through the leader's HTTP API, not the CLI, so that the agent is all that is judged.
//! The agent reaches the reader through a recording proxy, so a test that times out shows what
//! the agent asked and was answered. Its `static_secret_render_interval` is 1 s, and the test
//! polls the file with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secretlog_ops::process;
use serde_json::json;

use super::recorder::Recorder;
use crate::harness::{Stack, StackOpts, call, shared};

/// The secret the template renders, and the policy that lets the agent read it.
const SECRET: &str = "app";
const AGENT_POLICY: &str = r#"path "secret/data/app" { capabilities = ["read"] }"#;

/// How the agent logs in.
enum AutoAuth {
    /// `token_file`: a token created through the leader, in a file.
    TokenFile { token_file: PathBuf },
    /// `approle`: a role id and a secret id, in files.
    AppRole { role_id_file: PathBuf, secret_id_file: PathBuf },
}

/// A running `bao agent`; killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(dir: &Path, vault_addr: &str, auth: &AutoAuth, destination: &Path) -> Agent {
        let method = match auth {
            AutoAuth::TokenFile { token_file } => format!(
                "method {{\n    type = \"token_file\"\n    config = {{\n      token_file_path = {}\n    }}\n  }}",
                hcl_string(token_file)
            ),
            AutoAuth::AppRole { role_id_file, secret_id_file } => format!(
                "method {{\n    type = \"approle\"\n    config = {{\n      role_id_file_path = {}\n      \
                 secret_id_file_path = {}\n      remove_secret_id_file_after_reading = false\n    }}\n  }}",
                hcl_string(role_id_file),
                hcl_string(secret_id_file)
            ),
        };
        let config = format!(
            r#"exit_after_auth = false
vault {{
  address = "{vault_addr}"
}}
auto_auth {{
  {method}
}}
template_config {{
  static_secret_render_interval = "1s"
}}
template {{
  contents = "{{{{ with secret \"secret/data/{SECRET}\" }}}}{{{{ .Data.data.password }}}}{{{{ end }}}}"
  destination = {}
}}
"#,
            hcl_string(destination)
        );
        let config_file = dir.join("agent.hcl");
        std::fs::write(&config_file, config).expect("agent config");
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log).expect("agent log");
        let mut cmd = Command::new(crate::openbao::binary());
        cmd.arg("agent").arg(format!("-config={}", config_file.display()));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("VAULT_") || k.starts_with("BAO_") {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.env("HOME", dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("agent log"))
            .stderr(out);
        let child = process::spawn_attached(cmd).expect("starting bao agent");
        Agent { child, log }
    }

    fn log_tail(&self) -> String {
        process::tail_file(&self.log, 40)
    }
}

fn hcl_string(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("a path as a string")
}

/// Write `password` to the secret through the leader.
async fn set_password(stack: &Stack, password: &str) {
    stack.put(SECRET, json!({ "password": password })).await;
}

/// Poll `file` until it holds exactly `want`, or panic with what the agent did.
async fn wait_rendered(file: &Path, want: &str, timeout: Duration, agent: &mut Agent, recorder: &Recorder, what: &str) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let now = std::fs::read_to_string(file).ok();
        if now.as_deref() == Some(want) {
            return;
        }
        seen.extend(recorder.take());
        let exited = agent.child.try_wait().ok().flatten();
        if Instant::now() > deadline || exited.is_some() {
            let mut requests: Vec<String> = seen.iter().map(|e| format!("    {e}")).collect();
            requests.dedup();
            let shown = requests.len().saturating_sub(30);
            panic!(
                "{what}: the agent's file holds {now:?}, not {want:?}, after {timeout:?}{}\n\
                 --- the agent's requests to the reader (last 30, repeats folded) ---\n{}\n--- agent log ---\n{}",
                exited.map(|s| format!(" (the agent exited: {s})")).unwrap_or_default(),
                requests[shown..].join("\n"),
                agent.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Set up what the agent needs through the leader, start it against the reader, and check it
/// renders the secret and then its new value.
async fn agent_follows_a_secret_changed_on_the_leader(name: &'static str, approle: bool) {
    let (cluster, _g) = shared();
    let stack = Stack::start(cluster, StackOpts { name, readers: 1, ..Default::default() }).await;
    let dir = tempfile::Builder::new()
        .prefix(&format!("it-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("agent dir");
    let w = &stack.writer.url;
    let root = Some(stack.token.as_str());
    let a = call("PUT", &format!("{w}/v1/sys/policies/acl/agent"), root, None, Some(json!({ "policy": AGENT_POLICY })))
        .await;
    assert_eq!(a.status, 204, "writing the agent's policy: {:?}", a.body);
    set_password(&stack, "first").await;
    let auth = if approle {
        let setup = [
            ("POST", "sys/auth/approle", json!({ "type": "approle" }), "enabling AppRole"),
            (
                "POST",
                "auth/approle/role/agent",
                json!({ "token_policies": ["agent"], "token_ttl": "1h" }),
                "writing the agent's role",
            ),
        ];
        for (method, path, body, what) in setup {
            let a = call(method, &format!("{w}/v1/{path}"), root, None, Some(body)).await;
            assert!(matches!(a.status, 200 | 204), "{what} (`{method} /v1/{path}`): {} {:?}", a.status, a.body);
        }
        let a = call("GET", &format!("{w}/v1/auth/approle/role/agent/role-id"), root, None, None).await;
        let role_id = a.body["data"]["role_id"]
            .as_str()
            .unwrap_or_else(|| panic!("reading the role id: {} {:?}", a.status, a.body))
            .to_string();
        let a = call("POST", &format!("{w}/v1/auth/approle/role/agent/secret-id"), root, None, None).await;
        let secret_id = a.body["data"]["secret_id"]
            .as_str()
            .unwrap_or_else(|| panic!("generating a secret id: {} {:?}", a.status, a.body))
            .to_string();
        let (role_id_file, secret_id_file) = (dir.path().join("role-id"), dir.path().join("secret-id"));
        std::fs::write(&role_id_file, role_id).expect("role id file");
        std::fs::write(&secret_id_file, secret_id).expect("secret id file");
        AutoAuth::AppRole { role_id_file, secret_id_file }
    } else {
        let a = call(
            "POST",
            &format!("{w}/v1/auth/token/create"),
            root,
            None,
            Some(json!({ "policies": ["agent"], "ttl": "1h" })),
        )
        .await;
        assert_eq!(a.status, 200, "creating the agent's token: {:?}", a.body);
        let token = a.body["auth"]["client_token"].as_str().expect("client_token").to_string();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("token file");
        AutoAuth::TokenFile { token_file }
    };
    let recorder = Recorder::start(&stack.readers[0].url).await;
    let rendered = dir.path().join("rendered.txt");
    let mut agent = Agent::start(dir.path(), &recorder.url, &auth, &rendered);
    wait_rendered(&rendered, "first", Duration::from_secs(60), &mut agent, &recorder, "the first render").await;
    set_password(&stack, "second").await;
    wait_rendered(
        &rendered,
        "second",
        Duration::from_secs(30),
        &mut agent,
        &recorder,
        "after the secret was changed on the leader",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_token_file_renders_from_a_reader_and_follows_a_change_on_the_leader() {
    agent_follows_a_secret_changed_on_the_leader("cli-agent-token", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_approle_renders_from_a_reader_and_follows_a_change_on_the_leader() {
    agent_follows_a_secret_changed_on_the_leader("cli-agent-approle", true).await;
}
