//! The HRPC error model: a Connect-style [`Code`], the [`HrpcError`] every service
//! method can return, and its mapping to HTTP statuses.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a call failed, as a small closed set of codes shared by every service.
///
/// The names and their HTTP statuses follow Connect's error codes, so generic HTTP
/// tooling and proxies see a meaningful status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The caller went away before the call finished.
    Cancelled,
    /// The error has no better code. Avoid it where another code fits.
    Unknown,
    /// The request is malformed: bad JSON, a missing argument, an out-of-range value.
    InvalidArgument,
    /// The deadline passed before the call finished.
    DeadlineExceeded,
    /// The named thing does not exist (or the caller may not know it exists).
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The caller is known but may not do this.
    PermissionDenied,
    /// A quota or size limit was hit.
    ResourceExhausted,
    /// The system is not in a state that allows the call (includes protocol
    /// version mismatches).
    FailedPrecondition,
    /// The call raced with another and lost; retry from a fresh read.
    Aborted,
    /// A value is outside the range the operation supports.
    OutOfRange,
    /// The method does not exist on this server.
    Unimplemented,
    /// An invariant broke on the server. The message is generic on purpose.
    Internal,
    /// The service (or the peer behind it) cannot be reached now; retrying may help.
    Unavailable,
    /// Data was lost or corrupted.
    DataLoss,
    /// The caller did not prove who it is, or the credential is not valid.
    Unauthenticated,
}

impl Code {
    /// Every code, in declaration order.
    pub const ALL: [Code; 16] = [
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code as it appears on the wire (`"not_found"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// Parses a wire code; `None` for a name this version does not know.
    pub fn from_wire(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status a server answers with for this code.
    ///
    /// `resource_exhausted` is 429 here; the router answers an oversized body with
    /// 413 and the same code. `unimplemented` is 404 so that an unknown method and
    /// an unknown path look alike.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
            Code::Unknown => S::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument => S::BAD_REQUEST,
            Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            Code::NotFound => S::NOT_FOUND,
            Code::AlreadyExists => S::CONFLICT,
            Code::PermissionDenied => S::FORBIDDEN,
            Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
            Code::FailedPrecondition => S::PRECONDITION_FAILED,
            Code::Aborted => S::CONFLICT,
            Code::OutOfRange => S::BAD_REQUEST,
            Code::Unimplemented => S::NOT_FOUND,
            Code::Internal => S::INTERNAL_SERVER_ERROR,
            Code::Unavailable => S::SERVICE_UNAVAILABLE,
            Code::DataLoss => S::INTERNAL_SERVER_ERROR,
            Code::Unauthenticated => S::UNAUTHORIZED,
        }
    }

    /// The code a client assumes when a non-2xx response carries no HRPC error
    /// body (for example a proxy's own error page).
    pub fn from_http_status(status: http::StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            405 | 415 => Code::InvalidArgument,
            409 => Code::AlreadyExists,
            412 => Code::FailedPrecondition,
            413 | 429 => Code::ResourceExhausted,
            499 => Code::Cancelled,
            501 => Code::Unimplemented,
            502..=503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels on the wire: `{"code": "...", "message": "...", "details": ...}`.
///
/// Service methods return it (or their own error type convertible to and from it).
/// `message` is meant for people; `details` is optional structured data for programs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HrpcError {
    /// What kind of failure this is.
    #[serde(with = "code_serde")]
    pub code: Code,
    /// A human-readable explanation.
    pub message: String,
    /// Optional machine-readable details (for example the JSON path that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl HrpcError {
    /// An error with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `invalid_argument`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `already_exists`.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, message)
    }

    /// `permission_denied`.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, message)
    }

    /// `unauthenticated`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }

    /// `failed_precondition`.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// `deadline_exceeded`.
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Code::DeadlineExceeded, message)
    }

    /// `internal`. Log the cause yourself; the message goes to the caller.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> http::StatusCode {
        self.code.http_status()
    }
}

impl fmt::Display for HrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for HrpcError {}

/// Codes are written as their snake_case names; a name this version does not know
/// is read as `unknown` so that a newer peer's new code still decodes.
mod code_serde {
    use super::Code;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(code: &Code, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(code.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Code, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Code::from_wire(&s).unwrap_or(Code::Unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_name() {
        for code in Code::ALL {
            assert_eq!(Code::from_wire(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn statuses_follow_the_design_table() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 412),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Internal, 500),
            (Code::Unimplemented, 404),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, status) in table {
            assert_eq!(code.http_status().as_u16(), status, "{code}");
        }
    }

    #[test]
    fn error_body_has_code_message_and_optional_details() {
        let e = HrpcError::not_found("no cluster named x");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": "not_found", "message": "no cluster named x"})
        );
        let e = e.with_details(serde_json::json!({"name": "x"}));
        let back: HrpcError = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_wire_code_decodes_as_unknown() {
        let e: HrpcError =
            serde_json::from_str(r#"{"code":"brand_new_code","message":"m"}"#).unwrap();
        assert_eq!(e.code, Code::Unknown);
    }
}
