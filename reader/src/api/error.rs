//! Vault-style error answers, decided in one place.
//!
//! Every failure becomes an [`ApiError`]: a status and a list of messages, sent as
//! `{"errors": [...]}` exactly as Vault does. Messages never contain secret values or tokens.

use secretlog_schemas::path::PathError;

use crate::error::ReaderError;

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub errors: Vec<String>,
    /// Seconds, for 503s a client should retry.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, msg: impl Into<String>) -> Self {
        ApiError { status, errors: vec![msg.into()], retry_after: None }
    }
    /// 400, the answer to invalid input (and, as in Vault, to a CAS mismatch).
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::new(400, msg)
    }
    /// 403 with Vault's wording, for a missing, wrong or expired token.
    pub fn permission_denied() -> Self {
        ApiError::new(403, "permission denied")
    }
    /// 404 with an empty error list, as Vault answers a missing secret.
    pub fn not_found() -> Self {
        ApiError { status: 404, errors: vec![], retry_after: None }
    }
    pub fn unsupported_path() -> Self {
        ApiError::new(404, "1 error occurred:\n\t* unsupported path\n\n")
    }
    /// 404 for a path under no mount, as Vault's router words it. `path` is without `v1/`.
    pub fn no_route(path: &str) -> Self {
        ApiError::new(404, format!("no handler for route {path:?}. route entry not found."))
    }
    /// 400 for a path with a `.` or `..` segment (Vault's wording).
    pub fn relative_path() -> Self {
        ApiError::bad_request("relative paths not supported")
    }
    /// 400 for a secret path that is wrong by itself.
    pub fn from_path(e: &PathError) -> Self {
        match e {
            PathError::DotSegment => ApiError::relative_path(),
            _ => ApiError::bad_request(e.to_string()),
        }
    }
    pub fn method_not_allowed() -> Self {
        ApiError::new(405, "1 error occurred:\n\t* unsupported operation\n\n")
    }
    /// 413 for a body over the limit, worded as Go's HTTP server (and so Vault) words it.
    pub fn too_large() -> Self {
        ApiError::new(413, "http: request body too large")
    }
    /// 503 the client should retry after a moment (Kafka unavailable, no leader yet).
    pub fn unavailable(msg: impl Into<String>) -> Self {
        ApiError { status: 503, errors: vec![msg.into()], retry_after: Some(1) }
    }
    /// 503 for a halted partition: nothing changes until an operator repairs the log, so no
    /// `Retry-After` invites clients to come back in a second.
    pub fn halted(msg: impl Into<String>) -> Self {
        ApiError::new(503, msg)
    }
    /// 500: a bug or an unexpected internal failure. Details go to the log, not the client.
    pub fn internal() -> Self {
        ApiError::new(500, "internal error; see the node's log")
    }
}

impl From<ReaderError> for ApiError {
    fn from(e: ReaderError) -> Self {
        match &e {
            ReaderError::Halted { .. } => ApiError::halted(e.to_string()),
            _ if e.is_transient() => ApiError::unavailable(e.to_string()),
            _ => {
                tracing::error!(error = %e, "internal error");
                ApiError::internal()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halt_is_not_retried_in_a_second_and_a_transient_failure_is() {
        let halted = ApiError::from(ReaderError::Halted { partition: 1, offset: 7, reason: "bad mac".into() });
        assert_eq!((halted.status, halted.retry_after), (503, None));
        assert!(halted.errors[0].contains("partition 1 halted at offset 7"), "{:?}", halted.errors);
        let transient = ApiError::from(ReaderError::Timeout { what: "the log's end".into(), secs: 5 });
        assert_eq!((transient.status, transient.retry_after), (503, Some(1)));
        let internal = ApiError::from(ReaderError::Storage("disk on fire at /var/lib/x".into()));
        assert_eq!(internal.status, 500);
        assert!(!internal.errors[0].contains("/var/lib/x"), "details go to the log, not the client");
    }
}
