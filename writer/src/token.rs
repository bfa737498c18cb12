//! The bootstrap root token: created once, stored with mode 0600, published as a keyed hash
//! through the log so every reader can check it. The token itself is never logged or sent to
//! Kafka.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::Rng;
use rand::distributions::Alphanumeric;

use crate::error::WriterError;

/// A new random token (`s.` + 26 alphanumerics, ~154 bits).
pub fn generate() -> String {
    let body: String = rand::rngs::OsRng.sample_iter(&Alphanumeric).take(26).map(char::from).collect();
    format!("s.{body}")
}

/// Read the token file, or create it (mode 0600, never overwriting) with a new token.
pub fn load_or_create(path: &Path) -> Result<String, WriterError> {
    let err = |source| WriterError::TokenFile { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let token = generate();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
    f.write_all(token.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/root-token");
        let a = load_or_create(&path).unwrap();
        assert!(a.starts_with("s.") && a.len() == 28);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), a);
        assert_ne!(generate(), generate());
    }
}
