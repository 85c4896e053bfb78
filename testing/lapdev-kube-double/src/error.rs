//! Errors: the Kubernetes `Status` objects the double answers with, and the
//! errors of the Rust API that tests call.
//!
//! Every failed API request becomes a `Status` with the `reason` and `code` the
//! real API server uses for the same situation (see the Kubernetes API
//! conventions, "Response Status Kind"). They are turned into HTTP responses in
//! one place: [`ApiError`]'s `IntoResponse`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use crate::resource::ResourceDef;

/// One field-level cause inside a `Status`'s `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueRequired`.
    pub reason: &'static str,
    /// The field path in the JSONPath-like form the API uses, e.g. `spec.containers[0].name`.
    pub field: String,
    /// Human-readable message for this field.
    pub message: String,
}

impl Cause {
    /// `field: Required value` (`FieldValueRequired`).
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let detail = if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: detail,
        }
    }

    /// `field: Invalid value: "v": detail` (`FieldValueInvalid`).
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {detail}"),
        }
    }

    /// `field: Duplicate value: "v"` (`FieldValueDuplicate`).
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: \"{value}\""),
        }
    }

    /// `field: Forbidden: detail` (`FieldValueForbidden`).
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// A failed API request, answered as a `Status` object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// The HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the real server sends some.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn name_details(res: &ResourceDef, name: &str) -> Value {
        json!({"name": name, "group": res.group, "kind": res.plural})
    }

    /// 404 `NotFound`: `pods "x" not found`.
    pub fn not_found(res: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .with_details(Self::name_details(res, name))
    }

    /// 404 `NotFound` for a path that names no resource at all.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// 409 `AlreadyExists`: `pods "x" already exists`.
    pub fn already_exists(res: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .with_details(Self::name_details(res, name))
    }

    /// 409 `Conflict` for a stale `resourceVersion` or a failed precondition.
    pub fn conflict(res: &ResourceDef, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                res.qualified()
            ),
        )
        .with_details(Self::name_details(res, name))
    }

    /// 409 `Conflict` for a stale `resourceVersion`, with the real server's wording.
    pub fn stale(res: &ResourceDef, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 `Conflict` from server-side apply: other managers own fields with other values.
    pub fn apply_conflict(res: &ResourceDef, name: &str, conflicts: &[(String, String)]) -> Self {
        let n = conflicts.len();
        let message = if n == 1 {
            format!(
                "Apply failed with 1 conflict: conflict with \"{}\": {}",
                conflicts[0].0, conflicts[0].1
            )
        } else {
            let lines: Vec<String> = conflicts
                .iter()
                .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
                .collect();
            format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({"type": "FieldManagerConflict", "message": format!("conflict with \"{manager}\""), "field": field})
            })
            .collect();
        Self::new(409, "Conflict", message).with_details(
            json!({"name": name, "group": res.group, "kind": res.plural, "causes": causes}),
        )
    }

    /// 422 `Invalid`: `Pod "x" is invalid: spec.containers: Required value`.
    pub fn invalid(res: &ResourceDef, name: &str, causes: &[Cause]) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", res.kind),
        )
        .with_details(
            json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes_json}),
        )
    }

    /// 403 `Forbidden`, worded like the RBAC authorizer's denial.
    pub fn forbidden(
        res: &ResourceDef,
        name: Option<&str>,
        verb: &str,
        namespace: Option<&str>,
    ) -> Self {
        let subject = match name {
            Some(n) => format!("{} \"{n}\"", res.qualified()),
            None => res.qualified(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let message = format!(
            "{subject} is forbidden: User \"system:serviceaccount:lapdev:lapdev-kube-manager\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            res.plural, res.group
        );
        Self::new(403, "Forbidden", message).with_details(
            json!({"name": name.unwrap_or(""), "group": res.group, "kind": res.plural}),
        )
    }

    /// 403 `Forbidden` from the RBAC authorizer for `user`; `resource` is the
    /// plural with its subresource (`pods/exec`), as the real message names it.
    pub fn rbac_forbidden(
        user: &str,
        res: &ResourceDef,
        name: Option<&str>,
        resource: &str,
        verb: &str,
        namespace: Option<&str>,
    ) -> Self {
        let subject = match name {
            Some(n) => format!("{} \"{n}\"", res.qualified()),
            None => res.qualified(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let message = format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            res.group
        );
        Self::new(403, "Forbidden", message).with_details(
            json!({"name": name.unwrap_or(""), "group": res.group, "kind": res.plural}),
        )
    }

    /// 401 `Unauthorized`: a bearer token the API server does not know.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 410 `Expired`: a watch or continue token older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 415 `UnsupportedMediaType`.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 413 `RequestEntityTooLarge`.
    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    /// 504 `Timeout`.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// 500 `InternalError`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The `Status` a real server sends for an HTTP code, used by fault injection.
    pub fn from_code(code: u16) -> Self {
        match code {
            400 => Self::bad_request("injected failure"),
            403 => Self::new(403, "Forbidden", "injected failure"),
            404 => Self::path_not_found(),
            409 => Self::new(409, "Conflict", "injected failure"),
            410 => Self::expired("injected failure"),
            429 => Self::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            500 => Self::internal("injected failure"),
            503 => Self::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => Self::timeout("the server was unable to return a response in the time allotted"),
            other => Self::new(
                other,
                "Unknown",
                format!("injected failure with code {other}"),
            ),
        }
    }

    /// The `Status` object as JSON.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// Errors of starting the double or of writing its kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the listening socket failed.
    #[error("binding the Kubernetes API double to {1}")]
    Bind(#[source] std::io::Error, std::net::SocketAddr),
    /// Creating one of the initial namespaces failed.
    #[error("creating the initial namespace {1}")]
    Seed(#[source] HandleError, String),
    /// Writing the kubeconfig file failed.
    #[error("writing the kubeconfig to {1}")]
    WriteKubeconfig(#[source] std::io::Error, std::path::PathBuf),
    /// The generated kubeconfig did not load through kube's own config path.
    #[error("loading the generated kubeconfig with kube")]
    LoadKubeconfig(#[source] kube::config::KubeconfigError),
    /// kube could not build a client from the generated kubeconfig.
    #[error("building a kube client for the double")]
    BuildClient(#[source] kube::Error),
}

/// Errors of the test handle's direct operations on the store.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The object the handle was asked to change does not exist.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// An object given to the handle could not be turned into JSON.
    #[error("serialising the object for the double")]
    Serialize(#[source] serde_json::Error),
    /// An object read back from the double did not deserialise into the asked type.
    #[error("deserialising the object from the double")]
    Deserialize(#[source] serde_json::Error),
    /// The stand-in kubelet was asked to fail a pod that is on no node, and the
    /// stand-in scheduler found none for it (the scheduler's message).
    #[error("pod {0} is not bound to a node and none fits it: {1}")]
    Unschedulable(String, String),
    /// [`crate::DoubleHandle::kubelet_retry`] on a pod the stand-in kubelet is not failing.
    #[error("the stand-in kubelet is not failing pod {0}")]
    NotFailing(String),
    /// A volume attach failure for a pod that mounts no PersistentVolumeClaim.
    #[error("pod {0} mounts no PersistentVolumeClaim")]
    NoClaim(String),
}
