//! TLS for every node's HTTP listener (rustls), with certificate reload, and the client side: the
//! HTTP clients nodes and the CLI use, trusting an extra CA.
//!
//! **Reload.** [`ServerTls`] holds the certificate and key in use. A watcher reads both files
//! every `--tls-reload-interval-ms` (and at once on SIGHUP) and compares a hash of their
//! contents with the last pair it looked at — contents, not mtimes, so a replacement within the
//! same second, or through a symlink swap as Kubernetes does for mounted secrets, is seen. A
//! changed pair that loads (certificates parse, the key parses and matches the leaf) serves every
//! new connection from then on; connections already open keep their session. A pair that does not
//! load is refused with an error in the log and `secretlog_tls_reloads_total{result="refused"}`,
//! and the old pair stays in use until a good one appears. Replacing the two files is not atomic:
//! the check in between may see a new certificate with the old key and refuse it; the next check
//! sees the complete pair.
//!
//! Key material is never logged, and its file contents are wiped from memory once parsed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// Environment variable naming a CA file the CLI's and nodes' HTTP clients trust (as Vault's
/// `VAULT_CACERT`).
pub(crate) const CACERT_ENV: &str = "SECRETLOG_CACERT";

/// Why a certificate, key or CA file cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} is not a readable PEM certificate file: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("{path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("the key in {key} cannot serve the certificate in {cert}: {reason}")]
    Mismatch { cert: String, key: String, reason: String },
    #[error("CA file {path}: {reason}")]
    Ca { path: String, reason: String },
}

/// The certificate and key files of a listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a reload check found.
#[derive(Debug)]
pub enum Reload {
    /// The files hold the pair looked at last time.
    Unchanged,
    /// A new pair is in use.
    Reloaded,
    /// The files changed but the new pair cannot be used; the old one stays.
    Refused(TlsError),
}

/// The TLS side of a listener: the pair in use, swapped when the files change.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// Hash of the file contents looked at last (loaded or refused), so a bad pair is reported
    /// once, not at every check.
    seen: Mutex<[u8; 32]>,
}

impl ServerTls {
    /// Load the pair; an error here stops the node from starting.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let (cert, key) = read_pair(&files)?;
        let config = build(&files, &cert, &key)?;
        Ok(Arc::new(ServerTls { seen: Mutex::new(fingerprint(&cert, &key)), files, current: RwLock::new(config) }))
    }

    /// An acceptor for one new connection, with the pair in use now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Look at the files; switch to a changed pair if it loads. Blocking (reads files).
    pub(crate) fn reload_if_changed(&self) -> Reload {
        let read = read_pair(&self.files);
        let seen = match &read {
            Ok((cert, key)) => fingerprint(cert, key),
            // An unreadable file (mid-replacement, say) is a state of its own: reported once.
            Err(e) => Sha256::digest(format!("unreadable: {e}").as_bytes()).into(),
        };
        {
            let mut last = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *last == seen {
                return Reload::Unchanged;
            }
            *last = seen;
        }
        let built = read.and_then(|(cert, key)| build(&self.files, &cert, &key));
        match built {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                metrics::counter!("secretlog_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded: new connections use it");
                Reload::Reloaded
            }
            Err(e) => {
                metrics::counter!("secretlog_tls_reloads_total", "result" => "refused").increment(1);
                tracing::error!(
                    error = %e,
                    "TLS certificate/key files changed but the new pair CANNOT BE USED; still serving the previous certificate"
                );
                Reload::Refused(e)
            }
        }
    }

    /// Check the files every `interval` and on SIGHUP, until `cancel`.
    pub(crate) fn spawn_watcher(
        self: Arc<Self>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => tracing::info!("SIGHUP: checking the TLS certificate and key files"),
                }
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
            }
        })
    }
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

fn read_file(path: &Path) -> Result<Wiped, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

/// File contents wiped from memory when dropped.
type Wiped = Zeroizing<Vec<u8>>;

fn read_pair(files: &TlsFiles) -> Result<(Wiped, Wiped), TlsError> {
    Ok((read_file(&files.cert)?, read_file(&files.key)?))
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate { path: path.display().to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.display().to_string() });
    }
    Ok(certs)
}

fn build(files: &TlsFiles, cert: &[u8], key: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(&files.cert, cert)?;
    // The parser's error is not shown: it could quote a line of the key file.
    let key =
        PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::NoKey { path: files.key.display().to_string() })?;
    let mismatch = |reason: String| TlsError::Mismatch {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM file, for a client to trust.
pub(crate) fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let ca = |reason: String| TlsError::Ca { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// An HTTP client builder that trusts, besides the system's roots, the CA certificates in `ca`
/// or, without it, in the file `SECRETLOG_CACERT` names. Every client that talks to a node uses
/// it (forwarding, the CLI), so one CA file covers a private PKI.
pub fn client_builder(ca: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    let from_env = std::env::var_os(CACERT_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    let builder = reqwest::Client::builder();
    Ok(match ca.map(Path::to_path_buf).or(from_env) {
        Some(path) => builder.tls_certs_merge(ca_certificates(&path)?),
        None => builder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            Pki { ca: rcgen::Issuer::new(params, key) }
        }
        /// A leaf's (certificate PEM, key PEM).
        fn leaf(&self, serial: u64) -> (String, String) {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.serial_number = Some(rcgen::SerialNumber::from(serial));
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn write(files: &TlsFiles, (cert, key): &(String, String)) {
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
    }

    #[test]
    fn a_changed_pair_is_loaded_and_a_bad_one_refused_keeping_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
        let pki = Pki::new();
        write(&files, &pki.leaf(1));
        let tls = ServerTls::load(files.clone()).unwrap();
        let first = tls.acceptor().config().clone();
        assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));

        write(&files, &pki.leaf(2));
        assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
        let second = tls.acceptor().config().clone();
        assert!(!Arc::ptr_eq(&first, &second), "new connections get the new pair");

        // A certificate with the wrong key: refused once, the second pair stays.
        let (cert3, _) = pki.leaf(3);
        let (_, key4) = pki.leaf(4);
        write(&files, &(cert3, key4));
        assert!(matches!(tls.reload_if_changed(), Reload::Refused(TlsError::Mismatch { .. })));
        assert!(Arc::ptr_eq(&second, tls.acceptor().config()));
        assert!(matches!(tls.reload_if_changed(), Reload::Unchanged), "reported once, not at every check");

        // Garbage and a missing file are refused too.
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(matches!(tls.reload_if_changed(), Reload::Refused(TlsError::NoKey { .. })));
        std::fs::remove_file(&files.cert).unwrap();
        assert!(matches!(tls.reload_if_changed(), Reload::Refused(TlsError::Read { .. })));
        assert!(Arc::ptr_eq(&second, tls.acceptor().config()));
    }

    #[test]
    fn a_bad_pair_stops_the_start_and_the_error_quotes_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        std::fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = ServerTls::load(files).unwrap_err().to_string();
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "nothing here").unwrap();
        assert!(matches!(client_builder(Some(&p)), Err(TlsError::Ca { .. })));
        let pki = Pki::new();
        std::fs::write(&p, pki.ca.key().serialize_pem()).unwrap();
        assert!(client_builder(Some(&p)).is_err(), "a key is not a certificate");
    }
}
