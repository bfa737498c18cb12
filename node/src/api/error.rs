//! Vault-style error answers, decided in one place.
//!
//! Every failure becomes an [`ApiError`]: a status and a list of messages, sent as
//! `{"errors": [...]}` exactly as Vault does. Messages never contain secret values or tokens.

use secretlog_schemas::path::PathError;

use secretlog_state::error::NodeError;

pub use secretlog_state::ErrorKind;

/// The HTTP status of a kind: the one place a failure becomes a status.
pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::PermissionDenied => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::MethodNotAllowed => 405,
        ErrorKind::NotYetApplied => 412,
        ErrorKind::TooLarge => 413,
        ErrorKind::UnsupportedMediaType => 415,
        ErrorKind::RateLimited { .. } => 429,
        ErrorKind::HeadersTooLarge => 431,
        ErrorKind::Internal => 500,
        ErrorKind::Transient | ErrorKind::Sealed | ErrorKind::Halted => 503,
    }
}

/// The `Retry-After` seconds to send with a kind, if a client should come back by itself.
pub fn retry_after(kind: ErrorKind) -> Option<u32> {
    match kind {
        ErrorKind::Transient => Some(1),
        ErrorKind::RateLimited { retry_after_secs } => Some(retry_after_secs.max(1)),
        _ => None,
    }
}

/// An HTTP error answer: its kind, and the messages sent as Vault sends them
/// (`{"errors": [...]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// [`status`] of `kind`.
    pub status: u16,
    pub errors: Vec<String>,
    /// [`retry_after`] of `kind`.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        ApiError { kind, status: status(kind), errors: vec![msg.into()], retry_after: retry_after(kind) }
    }
    /// 400, the answer to invalid input (and, as in Vault, to a CAS mismatch).
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::InvalidRequest, msg)
    }
    /// 403 with Vault's wording, for a missing, wrong or expired token.
    pub fn permission_denied() -> Self {
        ApiError::new(ErrorKind::PermissionDenied, "permission denied")
    }
    /// 404 with an empty error list, as Vault answers a missing secret.
    pub fn not_found() -> Self {
        ApiError { errors: vec![], ..ApiError::new(ErrorKind::NotFound, "") }
    }
    pub fn unsupported_path() -> Self {
        ApiError::new(ErrorKind::NotFound, "1 error occurred:\n\t* unsupported path\n\n")
    }
    /// 404 for a path under no mount, as Vault's router words it. `path` is without `v1/`.
    pub fn no_route(path: &str) -> Self {
        ApiError::new(ErrorKind::NotFound, format!("no handler for route {path:?}. route entry not found."))
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
        ApiError::new(ErrorKind::MethodNotAllowed, "1 error occurred:\n\t* unsupported operation\n\n")
    }
    /// 413 for a body over the limit, worded as Go's HTTP server (and so Vault) words it.
    pub(crate) fn too_large() -> Self {
        ApiError::new(ErrorKind::TooLarge, "http: request body too large")
    }
    /// 503 the client should retry after a moment (Kafka unavailable, no leader yet).
    pub fn unavailable(msg: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::Transient, msg)
    }
    /// 503 for a halted partition: nothing changes until an operator repairs the log, so no
    /// `Retry-After` invites clients to come back in a second.
    pub fn halted(msg: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::Halted, msg)
    }
    /// 500: a bug or an unexpected internal failure. Details go to the log, not the client.
    pub fn internal() -> Self {
        ApiError::new(ErrorKind::Internal, "internal error; see the node's log")
    }

    /// The answer to a domain error of `kind` whose text is `text`: the text for the client,
    /// except for an internal error, whose text is logged and replaced.
    pub fn of_domain(kind: ErrorKind, text: String) -> Self {
        match kind {
            ErrorKind::Internal => {
                tracing::error!(error = %text, "internal error");
                ApiError::internal()
            }
            kind => ApiError::new(kind, text),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        ApiError::of_domain(e.kind(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halt_is_not_retried_in_a_second_and_a_transient_failure_is() {
        let halted = ApiError::from(NodeError::Halted { partition: 1, offset: 7, reason: "bad mac".into() });
        assert_eq!((halted.status, halted.retry_after), (503, None));
        assert!(halted.errors[0].contains("partition 1 halted at offset 7"), "{:?}", halted.errors);
        let transient = ApiError::from(NodeError::Timeout { what: "the log's end".into(), secs: 5 });
        assert_eq!((transient.status, transient.retry_after), (503, Some(1)));
        let internal =
            ApiError::from(NodeError::Corrupt { key: "s/x".into(), reason: "disk on fire at /var/lib/x".into() });
        assert_eq!(internal.status, 500);
        assert!(!internal.errors[0].contains("/var/lib/x"), "details go to the log, not the client");
    }

    #[test]
    fn each_kind_has_one_status_and_only_the_retryable_ones_a_retry_after() {
        use ErrorKind::*;
        let table = [
            (InvalidRequest, 400, None),
            (PermissionDenied, 403, None),
            (NotFound, 404, None),
            (MethodNotAllowed, 405, None),
            (NotYetApplied, 412, None),
            (TooLarge, 413, None),
            (UnsupportedMediaType, 415, None),
            (RateLimited { retry_after_secs: 0 }, 429, Some(1)),
            (RateLimited { retry_after_secs: 7 }, 429, Some(7)),
            (HeadersTooLarge, 431, None),
            (Internal, 500, None),
            (Transient, 503, Some(1)),
            (Sealed, 503, None),
            (Halted, 503, None),
        ];
        for (kind, code, retry) in table {
            let e = ApiError::new(kind, "m");
            assert_eq!((e.status, e.retry_after), (code, retry), "{kind:?}");
            assert_eq!((status(kind), retry_after(kind)), (code, retry), "{kind:?}");
        }
        let hidden = ApiError::of_domain(Internal, "secret path /x".into());
        assert_eq!(hidden.errors, ["internal error; see the node's log"]);
        assert_eq!(ApiError::of_domain(NotYetApplied, "behind".into()).errors, ["behind"]);
    }
}
