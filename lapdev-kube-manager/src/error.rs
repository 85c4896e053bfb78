//! Kubernetes failures as HRPC errors: every command the server sends either
//! succeeds or comes back with a code and a reason a person can read (quota
//! exceeded, forbidden, invalid, unreachable, timed out), never a hang.

use std::time::Duration;

use lapdev_hrpc::{Code, HrpcError};

/// A Kubernetes call made for a command failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeCallError {
    /// The API server answered with an error status.
    #[error("{action}: {message} ({reason}, HTTP {code})")]
    Api {
        /// What the manager tried, e.g. `creating pod ws-…`.
        action: String,
        /// The status code.
        code: u16,
        /// The machine-readable reason, e.g. `Forbidden`.
        reason: String,
        /// The API server's message.
        message: String,
    },
    /// No answer: connection refused, TLS failure, reset.
    #[error("{action}: the Kubernetes API is unreachable: {source}")]
    Unreachable {
        /// What the manager tried.
        action: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// No answer within the configured timeout.
    #[error("{action}: the Kubernetes API did not answer within {timeout:?}")]
    Timeout {
        /// What the manager tried.
        action: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl KubeCallError {
    /// Classifies a `kube` error.
    pub fn from_kube(action: impl Into<String>, e: kube::Error) -> Self {
        let action = action.into();
        match e {
            kube::Error::Api(status) => KubeCallError::Api {
                action,
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            other => KubeCallError::Unreachable {
                action,
                source: other,
            },
        }
    }

    /// The HTTP status of an API error.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            KubeCallError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the object was not there.
    pub fn is_not_found(&self) -> bool {
        self.api_code() == Some(404)
    }

    /// The HRPC code this failure maps to.
    pub fn code(&self) -> Code {
        match self {
            KubeCallError::Api {
                code,
                reason,
                message,
                ..
            } => match (*code, reason.as_str()) {
                (403, _) if message.contains("exceeded quota") => Code::ResourceExhausted,
                (403, _) => Code::PermissionDenied,
                (401, _) => Code::PermissionDenied,
                (404, _) => Code::NotFound,
                (409, "AlreadyExists") => Code::AlreadyExists,
                (409, _) => Code::Aborted,
                (400 | 422, _) => Code::InvalidArgument,
                (410, _) => Code::Aborted,
                (429, _) => Code::ResourceExhausted,
                (500..=599, _) => Code::Unavailable,
                _ => Code::Internal,
            },
            KubeCallError::Unreachable { .. } => Code::Unavailable,
            KubeCallError::Timeout { .. } => Code::DeadlineExceeded,
        }
    }
}

impl From<KubeCallError> for HrpcError {
    fn from(e: KubeCallError) -> Self {
        let mut message = e.to_string();
        if let KubeCallError::Unreachable { source, .. } = &e {
            let mut cause = std::error::Error::source(source);
            while let Some(c) = cause {
                message.push_str(": ");
                message.push_str(&c.to_string());
                cause = c.source();
            }
        }
        let retryable = e.is_retryable();
        let mut err = HrpcError::new(e.code(), message);
        match &e {
            KubeCallError::Api { code, reason, .. } => {
                err = err.with_details(serde_json::json!({
                    "kubernetes_code": code,
                    "kubernetes_reason": reason,
                    "retryable": retryable,
                }));
            }
            _ => {
                err = err.with_details(serde_json::json!({ "retryable": retryable }));
            }
        }
        err
    }
}

/// How command calls to the Kubernetes API are retried: a few attempts with
/// growing, jittered delays, and only for failures that say "try again"
/// (429, 5xx, no connection). kube's own retry layer is turned off, so a
/// throttled call fails within a bounded time with the cause, instead of
/// retrying silently past the conductor's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            initial: Duration::from_millis(200),
            cap: Duration::from_secs(2),
        }
    }
}

impl KubeCallError {
    /// Whether trying the same call again may succeed: throttled (429), a
    /// server error (5xx), or no answer at all. A timeout is not retried (the
    /// call may have taken effect, and the time is spent).
    pub fn is_retryable(&self) -> bool {
        match self {
            KubeCallError::Api { code, .. } => *code == 429 || (500..=599).contains(code),
            KubeCallError::Unreachable { .. } => true,
            KubeCallError::Timeout { .. } => false,
        }
    }
}

/// Runs a Kubernetes call with a timeout per attempt and bounded retries of
/// retryable failures (see [`RetryPolicy`]), classifying the final failure.
pub async fn call<T, Fut>(
    action: impl Fn() -> String,
    timeout: Duration,
    mut make: impl FnMut() -> Fut,
) -> Result<T, KubeCallError>
where
    Fut: Future<Output = Result<T, kube::Error>>,
{
    call_with(&RetryPolicy::default(), action, timeout, &mut make).await
}

/// [`call`] with an explicit policy.
pub async fn call_with<T, Fut>(
    policy: &RetryPolicy,
    action: impl Fn() -> String,
    timeout: Duration,
    make: &mut impl FnMut() -> Fut,
) -> Result<T, KubeCallError>
where
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut backoff = crate::backoff::Backoff::new(policy.initial, policy.cap);
    let mut attempt = 1;
    loop {
        let err = match tokio::time::timeout(timeout, make()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => KubeCallError::from_kube(action(), e),
            Err(_) => KubeCallError::Timeout {
                action: action(),
                timeout,
            },
        };
        if !err.is_retryable() || attempt >= policy.attempts.max(1) {
            if attempt > 1 {
                metrics::counter!("lapdev_manager_kube_retries_exhausted_total").increment(1);
                return Err(err.after_attempts(attempt));
            }
            return Err(err);
        }
        metrics::counter!("lapdev_manager_kube_retries_total").increment(1);
        tokio::time::sleep(backoff.next_delay()).await;
        attempt += 1;
    }
}

impl KubeCallError {
    fn after_attempts(self, attempts: u32) -> Self {
        match self {
            KubeCallError::Api {
                action,
                code,
                reason,
                message,
            } => KubeCallError::Api {
                action: format!("{action} ({attempts} attempts)"),
                code,
                reason,
                message,
            },
            KubeCallError::Unreachable { action, source } => KubeCallError::Unreachable {
                action: format!("{action} ({attempts} attempts)"),
                source,
            },
            t => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> KubeCallError {
        KubeCallError::Api {
            action: "creating pod ws-1".into(),
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn codes_and_readable_messages() {
        let quota = api(
            403,
            "Forbidden",
            "pods \"ws-1\" is forbidden: exceeded quota: compute, requested: cpu=4, used: cpu=8, limited: cpu=10",
        );
        assert_eq!(quota.code(), Code::ResourceExhausted);
        let e: HrpcError = quota.into();
        assert!(e.message.contains("exceeded quota"), "{}", e.message);
        assert!(e.message.starts_with("creating pod ws-1"), "{}", e.message);

        assert_eq!(
            api(403, "Forbidden", "cannot create pods").code(),
            Code::PermissionDenied
        );
        assert_eq!(
            api(422, "Invalid", "spec.containers[0].image: Required value").code(),
            Code::InvalidArgument
        );
        assert_eq!(api(404, "NotFound", "").code(), Code::NotFound);
        assert_eq!(api(409, "AlreadyExists", "").code(), Code::AlreadyExists);
        assert_eq!(api(409, "Conflict", "").code(), Code::Aborted);
        assert_eq!(api(500, "InternalError", "").code(), Code::Unavailable);
        assert_eq!(
            api(429, "TooManyRequests", "").code(),
            Code::ResourceExhausted
        );
        let t = KubeCallError::Timeout {
            action: "deleting pod ws-1".into(),
            timeout: Duration::from_secs(20),
        };
        assert_eq!(t.code(), Code::DeadlineExceeded);
        assert!(t.to_string().contains("did not answer"));
    }
}
