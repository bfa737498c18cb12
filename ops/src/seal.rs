//! `secretlog init` and `secretlog unseal`: the root key split into Shamir shares (default 5,
//! threshold 3), so no single operator holds it.
//!
//! `init` creates a fresh root key, splits it, writes each share to its own 0600 file (hand
//! one to each key holder, then delete them here) and `seal.json`, the init record (share count,
//! threshold and the key's check value — nothing secret). Nodes started with
//! `--seal-config DIR/seal.json` and no key start sealed (health 503).
//!
//! `unseal` has two modes:
//! * online, `--addr URL --share FILE`: submit one share to a running node's `/v1/sys/unseal`
//!   (each key holder runs it with their own share) and print the node's progress; the node
//!   unseals once the threshold is reached;
//! * offline, `--share A --share B --share C --key-file KEY`: reconstruct the key here, check it
//!   against `seal.json`, and write the key file nodes can start from (0600).
//!
//! Shares are read from files (`-` is standard input), never taken from the command line.
//! The share logic itself lives in [`secretlog_node::api::seal`], beside the nodes' unseal.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
pub use secretlog_node::unseal::SealConfig;
use secretlog_node::unseal::parse_share;
use secretlog_schemas::{Keyring, RootKey};
use serde_json::{Value, json};
use zeroize::Zeroizing;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the share files and `seal.json`.
    #[arg(long, default_value = "./.secretlog/init")]
    pub dir: PathBuf,
    /// Number of key shares.
    #[arg(long, default_value_t = 5)]
    pub shares: u8,
    /// Shares needed to reconstruct the key.
    #[arg(long, default_value_t = 3)]
    pub threshold: u8,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct UnsealArgs {
    /// Online mode: the URL of a running node to submit one share to (`PUT /v1/sys/unseal`).
    #[arg(long, env = "SECRETLOG_ADDR", conflicts_with = "key_file")]
    pub addr: Option<String>,
    /// Online mode: discard the shares the node has collected so far instead of submitting one.
    #[arg(long, requires = "addr")]
    pub reset: bool,
    /// Directory holding `seal.json` (written by `init`); offline mode.
    #[arg(long, default_value = "./.secretlog/init")]
    pub dir: PathBuf,
    /// A file holding one share, `-` for standard input. Online: one per call. Offline: repeat
    /// for each key holder's share.
    #[arg(long = "share", value_name = "FILE")]
    pub shares: Vec<PathBuf>,
    /// Offline mode: where to write the reconstructed root key (mode 0600), for the nodes'
    /// `SECRETLOG_ROOT_KEY_FILE`.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Print the node's seal status as JSON (online mode).
    #[arg(long)]
    pub json: bool,
}

/// Split `key` into `n` shares (hex text), any `k` of which reconstruct it.
pub fn split(key: &RootKey, n: u8, k: u8) -> anyhow::Result<Vec<Zeroizing<String>>> {
    Ok(secretlog_node::unseal::split(key, n, k)?)
}

/// Reconstruct the key from shares (hex or base64 text), needing `k` distinct ones.
pub fn combine(shares: &[Zeroizing<String>], k: u8) -> anyhow::Result<RootKey> {
    let parsed = shares.iter().map(|s| parse_share(s)).collect::<Result<Vec<_>, _>>()?;
    Ok(secretlog_node::unseal::combine(&parsed, k)?)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

/// One share's text, from a file or (`-`) standard input.
fn read_share(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).context("reading a share from standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(text)
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let cfg_path = args.dir.join("seal.json");
    if cfg_path.exists() {
        bail!("{} exists: this cluster is already initialized", cfg_path.display());
    }
    std::fs::create_dir_all(&args.dir)?;
    let key = RootKey::generate();
    let shares = split(&key, args.shares, args.threshold)?;
    let cfg = SealConfig {
        shares: args.shares,
        threshold: args.threshold,
        key_check: hex::encode(Keyring::from_root(&key).key_check()),
    };
    let mut files = Vec::new();
    for (i, s) in shares.iter().enumerate() {
        let f = args.dir.join(format!("share-{}", i + 1));
        write_private(&f, s)?;
        files.push(f);
    }
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let report = json!({ "seal": cfg, "seal_config": cfg_path, "share_files": files });
    crate::dr::emit(args.json, &report, || {
        println!(
            "Initialized: {} key shares, {} needed to unseal. Share files (0600): {}.",
            args.shares,
            args.threshold,
            args.dir.display()
        );
        println!("Give one share to each key holder, then delete the files here. The key itself was not written.");
        println!(
            "Start nodes with --seal-config {} (they start sealed), then each key holder runs \
             `secretlog unseal --addr URL --share FILE` against every node.",
            cfg_path.display()
        );
    })
}

/// `secretlog unseal`: online with `--addr`, offline with `--key-file`.
pub async fn unseal(args: UnsealArgs) -> anyhow::Result<()> {
    match &args.addr {
        Some(addr) => unseal_online(addr, &args).await,
        None => unseal_offline(&args),
    }
}

/// Submit one share (or a reset) to a running node and print its progress.
async fn unseal_online(addr: &str, args: &UnsealArgs) -> anyhow::Result<()> {
    let body = if args.reset {
        if !args.shares.is_empty() {
            bail!("--reset submits no share; leave out --share");
        }
        Zeroizing::new(r#"{"reset":true}"#.to_string())
    } else {
        let [file] = args.shares.as_slice() else {
            bail!("online unseal takes exactly one --share FILE (- for standard input) per call");
        };
        let share = read_share(file)?;
        // Checked here so a typo is caught before it reaches the node; the text is hex or
        // base64, which needs no JSON escaping.
        parse_share(&share).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        Zeroizing::new(format!(r#"{{"key":"{}"}}"#, share.trim()))
    };
    let url = format!("{}/v1/sys/unseal", addr.trim_end_matches('/'));
    // Trusts the CA named by SECRETLOG_CACERT, as every other command does.
    let resp = secretlog_node::api::tls::client_builder(None)?
        .build()?
        .put(&url)
        .header("content-type", "application/json")
        .body(body.as_bytes().to_vec())
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let errors =
            answer["errors"].as_array().map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "));
        bail!("{url} answered {status}: {}", errors.unwrap_or_default());
    }
    crate::dr::emit(args.json, &answer, || {
        let (t, n, progress) = (&answer["t"], &answer["n"], &answer["progress"]);
        if answer["sealed"] == json!(false) {
            println!("Unsealed: {addr} holds the root key.");
        } else {
            println!("Sealed: {progress} of {t} key shares submitted ({n} exist).");
        }
    })
}

/// Reconstruct the key from enough shares and write the key file.
fn unseal_offline(args: &UnsealArgs) -> anyhow::Result<()> {
    let Some(key_file) = &args.key_file else {
        bail!("give --addr URL to unseal a running node, or --key-file KEY to write the key file");
    };
    let cfg: SealConfig = serde_json::from_slice(
        &std::fs::read(args.dir.join("seal.json"))
            .with_context(|| format!("reading {}/seal.json", args.dir.display()))?,
    )?;
    let shares: Vec<Zeroizing<String>> = args.shares.iter().map(|f| read_share(f)).collect::<anyhow::Result<_>>()?;
    if shares.len() < cfg.threshold as usize {
        bail!("{} share(s) given, {} needed: still sealed", shares.len(), cfg.threshold);
    }
    let key = combine(&shares, cfg.threshold)?;
    if !cfg.matches(&Keyring::from_root(&key)) {
        bail!("the shares do not reconstruct this cluster's key (check value differs): still sealed");
    }
    write_private(key_file, &key.to_hex())?;
    println!("Unsealed: the root key is in {} (0600).", key_file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_of_five_shares_reconstruct_the_key_and_two_do_not() {
        let key = RootKey::generate();
        let shares = split(&key, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        let check = Keyring::from_root(&key).key_check();
        for pick in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let chosen: Vec<_> = pick.iter().map(|i| shares[*i].clone()).collect();
            assert_eq!(Keyring::from_root(&combine(&chosen, 3).unwrap()).key_check(), check);
        }
        assert!(combine(&shares[..2], 3).is_err(), "two shares must not unseal");
        assert!(split(&key, 5, 1).is_err() && split(&key, 3, 4).is_err());
    }

    #[test]
    fn init_then_unseal_round_trips_through_files_and_refuses_too_few_or_foreign_shares() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("init");
        init(InitArgs { dir: d.clone(), shares: 5, threshold: 3, json: true }).unwrap();
        let share = |i: u32| d.join(format!("share-{i}"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(share(1)).unwrap().permissions().mode() & 0o777, 0o600);
        let key_file = dir.path().join("root.key");
        let offline = |dir: &Path, shares: Vec<PathBuf>, key_file: &Path| UnsealArgs {
            addr: None,
            reset: false,
            dir: dir.to_path_buf(),
            shares,
            key_file: Some(key_file.to_path_buf()),
            json: false,
        };
        assert!(unseal_offline(&offline(&d, vec![share(1), share(2)], &key_file)).is_err());
        assert!(!key_file.exists());
        unseal_offline(&offline(&d, vec![share(5), share(3), share(1)], &key_file)).unwrap();
        let key = RootKey::from_file(&key_file).unwrap();
        let cfg: SealConfig = serde_json::from_slice(&std::fs::read(d.join("seal.json")).unwrap()).unwrap();
        assert_eq!(hex::encode(Keyring::from_root(&key).key_check()), cfg.key_check);
        // Shares of another cluster do not unseal this one.
        let other = dir.path().join("other");
        init(InitArgs { dir: other.clone(), shares: 5, threshold: 3, json: true }).unwrap();
        let foreign = offline(&d, (1..=3).map(|i| other.join(format!("share-{i}"))).collect(), &dir.path().join("k2"));
        assert!(unseal_offline(&foreign).is_err());
    }
}
