//! `secretlog init` and `secretlog unseal`: the root key split into Shamir shares (default 5,
//! threshold 3), so no single operator holds it.
//!
//! `init` creates a fresh root key, splits it, writes each share to its own 0600 file (hand
//! one to each key holder, then delete them here) and `seal.json` (share count, threshold and
//! the key's check value — nothing secret). `unseal` takes shares (files, one per `--share`),
//! reconstructs the key, checks it against `seal.json`, and writes the key file nodes start
//! from (0600). A node then runs unsealed; without a key it stays sealed (health 503).
//!
//! Not built yet: unsealing a *running* node over `/v1/sys/unseal`, and `/v1/sys/seal`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use blahaj::{Share, Sharks};
use secretlog_schemas::{Keyring, RootKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

/// `DIR/seal.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealConfig {
    pub shares: u8,
    pub threshold: u8,
    /// Hex of the key's check value (as every log record carries it).
    pub key_check: String,
}

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
    /// Directory holding `seal.json` (written by `init`).
    #[arg(long, default_value = "./.secretlog/init")]
    pub dir: PathBuf,
    /// A file holding one share (repeat for each key holder's share).
    #[arg(long = "share", value_name = "FILE", required = true)]
    pub shares: Vec<PathBuf>,
    /// Where to write the reconstructed root key (mode 0600), for the nodes' `SECRETLOG_ROOT_KEY_FILE`.
    #[arg(long)]
    pub key_file: PathBuf,
}

/// Split `key` into `n` shares, any `k` of which reconstruct it.
pub fn split(key: &RootKey, n: u8, k: u8) -> anyhow::Result<Vec<Zeroizing<String>>> {
    if k < 2 || k > n {
        bail!("threshold must be between 2 and the number of shares ({n}), not {k}");
    }
    let secret = Zeroizing::new(hex::decode(key.to_hex().as_str())?);
    Ok(Sharks(k).dealer(&secret).take(n as usize).map(|s| Zeroizing::new(hex::encode(Vec::from(&s)))).collect())
}

/// Reconstruct the key from shares (hex text), needing `k` distinct ones.
pub fn combine(shares: &[Zeroizing<String>], k: u8) -> anyhow::Result<RootKey> {
    let parsed: Vec<Share> = shares
        .iter()
        .map(|s| {
            let bytes = Zeroizing::new(hex::decode(s.trim()).context("a share is not hex")?);
            Share::try_from(bytes.as_slice()).map_err(|e| anyhow::anyhow!("malformed share: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let secret = Zeroizing::new(Sharks(k).recover(&parsed).map_err(|e| anyhow::anyhow!("{e}"))?);
    let bytes: [u8; 32] = secret.as_slice().try_into().context("the shares do not make a 32-byte key")?;
    Ok(RootKey::from_bytes(bytes))
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
    let report = json!({ "seal": cfg, "share_files": files });
    crate::dr::emit(args.json, &report, || {
        println!(
            "Initialized: {} key shares, {} needed to unseal. Share files (0600): {}.",
            args.shares,
            args.threshold,
            args.dir.display()
        );
        println!("Give one share to each key holder, then delete the files here. The key itself was not written.");
        println!("Start nodes with the key from `secretlog unseal --share A --share B --share C --key-file KEY`.");
    })
}

pub fn unseal(args: UnsealArgs) -> anyhow::Result<()> {
    let cfg: SealConfig = serde_json::from_slice(
        &std::fs::read(args.dir.join("seal.json"))
            .with_context(|| format!("reading {}/seal.json", args.dir.display()))?,
    )?;
    let shares: Vec<Zeroizing<String>> = args
        .shares
        .iter()
        .map(|f| std::fs::read_to_string(f).map(Zeroizing::new).with_context(|| format!("reading {}", f.display())))
        .collect::<anyhow::Result<_>>()?;
    if shares.len() < cfg.threshold as usize {
        bail!("{} share(s) given, {} needed: still sealed", shares.len(), cfg.threshold);
    }
    let key = combine(&shares, cfg.threshold)?;
    if hex::encode(Keyring::from_root(&key).key_check()) != cfg.key_check {
        bail!("the shares do not reconstruct this cluster's key (check value differs): still sealed");
    }
    write_private(&args.key_file, &key.to_hex())?;
    println!("Unsealed: the root key is in {} (0600).", args.key_file.display());
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
        let two = UnsealArgs { dir: d.clone(), shares: vec![share(1), share(2)], key_file: key_file.clone() };
        assert!(unseal(two).is_err());
        assert!(!key_file.exists());
        let three =
            UnsealArgs { dir: d.clone(), shares: vec![share(5), share(3), share(1)], key_file: key_file.clone() };
        unseal(three).unwrap();
        let key = RootKey::from_file(&key_file).unwrap();
        let cfg: SealConfig = serde_json::from_slice(&std::fs::read(d.join("seal.json")).unwrap()).unwrap();
        assert_eq!(hex::encode(Keyring::from_root(&key).key_check()), cfg.key_check);
        // Shares of another cluster do not unseal this one.
        let other = dir.path().join("other");
        init(InitArgs { dir: other.clone(), shares: 5, threshold: 3, json: true }).unwrap();
        let foreign = UnsealArgs {
            dir: d,
            shares: (1..=3).map(|i| other.join(format!("share-{i}"))).collect(),
            key_file: dir.path().join("k2"),
        };
        assert!(unseal(foreign).is_err());
    }
}
