//! Which secret paths are valid. Checked by the writer before anything is appended, and by the
//! reader before it looks anything up, so a bad path is a 400 everywhere.

use crate::event::MAX_PATH_LEN;

/// Why a path was refused. The message is safe to return to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("missing secret path")]
    Empty,
    #[error("path is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("path contains an empty segment")]
    EmptySegment,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path contains a control character")]
    ControlChar,
}

/// Validate the path of a secret (no trailing slash: that names a folder).
pub fn validate_secret_path(path: &str) -> Result<(), PathError> {
    validate(path)
}

/// Validate a folder prefix for LIST: empty (the mount's root) or segments ending in `/`.
pub fn validate_folder(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Ok(());
    }
    validate(path.strip_suffix('/').unwrap_or(path))
}

fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { max: MAX_PATH_LEN });
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    for seg in path.split('/') {
        match seg {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in ["a", "app/db", "team-1/svc_2/key.v3", "ünïcode/ok"] {
            assert_eq!(validate_secret_path(p), Ok(()), "{p}");
        }
        assert_eq!(validate_folder(""), Ok(()));
        assert_eq!(validate_folder("app/"), Ok(()));
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(validate_secret_path(""), Err(PathError::Empty));
        assert_eq!(validate_secret_path("a//b"), Err(PathError::EmptySegment));
        assert_eq!(validate_secret_path("a/"), Err(PathError::EmptySegment));
        assert_eq!(validate_secret_path("/a"), Err(PathError::EmptySegment));
        assert_eq!(validate_secret_path("a/../b"), Err(PathError::DotSegment));
        assert_eq!(validate_secret_path("./b"), Err(PathError::DotSegment));
        assert_eq!(validate_secret_path("a\0b"), Err(PathError::ControlChar));
        assert_eq!(validate_secret_path("a\nb"), Err(PathError::ControlChar));
        assert_eq!(validate_secret_path(&"x".repeat(MAX_PATH_LEN + 1)), Err(PathError::TooLong { max: MAX_PATH_LEN }));
    }
}
