//! HashiCorp's Vault Go client (`github.com/hashicorp/vault/api`), unmodified, against OpenBao in
//! dev mode and against secretlog's readers: the same program (`tests/go/vaultapi`) must pass the
//! same checks on both — KV v2 through the client's own helper (put, check-and-set, HTTP PATCH,
//! versions, metadata put and patch, delete/undelete, rollback, destroy, list, metadata delete),
//! policies, a child token created on one node and used at once on another, renewed and revoked,
//! and an AppRole login through the client's `auth/approle` helper on the other node. No
//! secretlog header is sent: the client knows nothing of secretlog.
//!
//! The program is built once per test process: with `SECRETLOG_IT_GO` if set, else the toolchain
//! `scripts/bootstrap` keeps in `~/.cache/secretlog/go` on a machine whose Go is older than 1.21,
//! else the `go` on the PATH (1.21 or newer fetches the 1.24 toolchain its go.mod asks for).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::harness::{Stack, StackOpts, shared};
use crate::openbao::OpenBao;

/// The `go` command to build with.
fn go_binary() -> PathBuf {
    if let Some(go) = std::env::var_os("SECRETLOG_IT_GO").filter(|g| !g.is_empty()) {
        return go.into();
    }
    let kept = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/secretlog/go/bin/go"));
    kept.filter(|g| g.exists()).unwrap_or_else(|| "go".into())
}

/// Build the program once; its path.
fn program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/vaultapi");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vaultapi-check");
        let go = go_binary();
        let built = std::process::Command::new(&go)
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running `{}` to build the Vault Go client check: {e}. Install Go 1.21 or newer \
                     (scripts/bootstrap does), or point SECRETLOG_IT_GO at a go binary.",
                    go.display()
                )
            });
        assert!(
            built.status.success(),
            "building tests/go/vaultapi with `{}` failed:\n{}",
            go.display(),
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// Run the program against `addr` (every write, the first reads) and `other`; its output.
async fn run(addr: &str, other: &str, token: &str, rounds: u32) -> (bool, String) {
    let out = tokio::process::Command::new(program())
        .args(["-addr", addr, "-other", other, "-rounds", &rounds.to_string()])
        .env("VAULT_TOKEN", token)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_NAMESPACE")
        .output()
        .await
        .expect("running the Vault Go client check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("all checks passed"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_go_client_passes_the_same_checks_on_openbao_and_on_secretlog() {
    let bao = OpenBao::start().await;
    let (ok, out) = run(&bao.url, &bao.url, &bao.token, 50).await;
    assert!(ok, "the checks do not hold on OpenBao itself (a broken scenario, not a finding):\n{out}");
    drop(bao);

    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "go-client", readers: 2, ..Default::default() }).await;
    // Writes go through reader east (forwarded to the leader) and are read back at once there;
    // the child token is used at once on reader west.
    let (ok, out) = run(&s.readers[0].url, &s.readers[1].url, &s.token, 200).await;
    assert!(ok, "the Vault Go client against secretlog:\n{out}\n--- reader east log ---\n{}", s.readers[0].log_tail());
}
