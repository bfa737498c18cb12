//! The local cluster's TLS identity, for its SSL and SASL_SSL listeners.
//!
//! Made once per cluster directory (under `<data_dir>/kafka/tls`) and reused on every start: a
//! small CA, and one broker certificate it signs for `127.0.0.1` and `localhost` (every node
//! listens on loopback, so the three nodes share it). Clients trust the CA through
//! `ssl.ca.location=<data_dir>/kafka/tls/ca.pem` and keep librdkafka's hostname verification on.
//! The CA's private key is never written: nothing else is ever signed with it, so a new identity
//! is a new CA (delete the `tls` directory).

use std::fmt;
use std::fs;
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::KafkaError;
use super::config::{KafkaConfig, write_atomic, write_atomic_mode};

/// The brokers' private key and certificate chain (broker certificate, then the CA), as the
/// listeners' inline PEM keystore (`ssl.keystore.key`, `ssl.keystore.certificate.chain`: Kafka
/// takes an unencrypted PKCS#8 key only inline, never from a PEM keystore file). `Debug` never
/// shows the key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BrokerTls {
    pub(crate) key_pem: String,
    pub(crate) chain_pem: String,
}

impl fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerTls").field("key_pem", &"<redacted>").field("chain_pem", &self.chain_pem).finish()
    }
}

impl KafkaConfig {
    /// `<data_dir>/kafka/tls`: the CA certificate and the brokers' key and certificate chain.
    pub fn tls_dir(&self) -> PathBuf {
        self.kafka_dir().join("tls")
    }

    /// The CA certificate (PEM) clients of the SSL and SASL_SSL listeners trust
    /// (`ssl.ca.location`); written last, so its presence marks a complete identity.
    pub fn ssl_ca_file(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    fn broker_key_file(&self) -> PathBuf {
        self.tls_dir().join("broker-key.pem")
    }

    fn broker_chain_file(&self) -> PathBuf {
        self.tls_dir().join("broker-chain.pem")
    }
}

/// The cluster directory's broker TLS identity: the recorded one, else a new CA and broker
/// certificate recorded with the key at mode 0600.
pub(crate) fn broker_tls(cfg: &KafkaConfig) -> Result<BrokerTls, KafkaError> {
    if cfg.ssl_ca_file().is_file()
        && let (Ok(key_pem), Ok(chain_pem)) =
            (fs::read_to_string(cfg.broker_key_file()), fs::read_to_string(cfg.broker_chain_file()))
        && !key_pem.trim().is_empty()
        && !chain_pem.trim().is_empty()
    {
        return Ok(BrokerTls { key_pem, chain_pem });
    }
    let (ca_pem, tls) = generate().map_err(|source| KafkaError::Tls { source })?;
    let dir = cfg.tls_dir();
    fs::create_dir_all(&dir).map_err(|e| KafkaError::io("create", &dir, e))?;
    write_atomic_mode(&cfg.broker_key_file(), tls.key_pem.as_bytes(), 0o600)?;
    write_atomic(&cfg.broker_chain_file(), tls.chain_pem.as_bytes())?;
    write_atomic(&cfg.ssl_ca_file(), ca_pem.as_bytes())?;
    tracing::info!(ca = %cfg.ssl_ca_file().display(), "made the local Kafka cluster's TLS identity");
    Ok(tls)
}

/// A new CA (its certificate PEM) and a broker identity it signed for `127.0.0.1`/`localhost`.
fn generate() -> Result<(String, BrokerTls), rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "secretlog local Kafka CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut broker = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    broker.distinguished_name.push(DnType::CommonName, "secretlog local Kafka broker");
    broker.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    broker.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = broker.signed_by(&key, &ca)?;
    let tls = BrokerTls { key_pem: key.serialize_pem(), chain_pem: format!("{}{}", cert.pem(), ca.pem()) };
    Ok((ca.pem(), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_identity_is_made_once_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = KafkaConfig::new(dir.path());
        let tls = broker_tls(&c).unwrap();
        assert!(tls.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "an unencrypted PKCS#8 key");
        let ca = fs::read_to_string(c.ssl_ca_file()).unwrap();
        assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(tls.chain_pem.matches("BEGIN CERTIFICATE").count(), 2, "broker certificate, then the CA");
        assert!(tls.chain_pem.ends_with(&ca), "the chain ends with the CA clients trust");
        assert_eq!(broker_tls(&c).unwrap(), tls, "kept across starts");
        let mode = fs::metadata(c.tls_dir().join("broker-key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"), "Debug shows the key");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(broker_tls(&KafkaConfig::new(other.path())).unwrap().chain_pem, tls.chain_pem);
    }

    #[test]
    fn the_broker_certificate_names_the_loopback_listeners() {
        let (_, tls) = generate().unwrap();
        let der = pem_der(&tls.chain_pem);
        let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        // subjectAltName entries: iPAddress [7] 127.0.0.1 and dNSName [2] "localhost".
        assert!(has(&[0x87, 4, 127, 0, 0, 1]), "no IP SAN 127.0.0.1");
        assert!(has(b"\x82\x09localhost"), "no DNS SAN localhost");
    }

    /// The DER of the first PEM block of `pem`.
    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }
}
