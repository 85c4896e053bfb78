//! ServiceAccount tokens and RBAC, opt-in ([`crate::DoubleHandle::enable_rbac`]).
//!
//! Once enabled, a request whose bearer token was issued with
//! [`crate::DoubleHandle::service_account_token`] acts as
//! `system:serviceaccount:NS:NAME` (groups `system:serviceaccounts`,
//! `system:serviceaccounts:NS`, `system:authenticated`) and is authorised from
//! the Role, ClusterRole, RoleBinding and ClusterRoleBinding objects stored in
//! the double, as the RBAC authorizer does: a rule allows a request when its
//! `verbs`, `apiGroups`, `resources` (`pods/exec` for a subresource, `*`, or
//! `*/exec`) and `resourceNames` (if any) all match. A denial is the real 403
//! (`pods is forbidden: User "system:serviceaccount:lapdev:lapdev-kube-manager"
//! cannot list resource "pods" in API group "" in the namespace "ws"`). An
//! unknown token, or one of a ServiceAccount that no longer exists, is 401.
//! Requests without a token, or with the double's own kubeconfig token, stay
//! cluster-admin (the tests' own client). Discovery and other non-resource
//! paths are open to every authenticated caller (the real
//! `system:discovery` role); no other bootstrap roles exist, aggregated
//! ClusterRoles are not aggregated, and creating roles is not checked for
//! privilege escalation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use serde_json::Value;

use crate::error::ApiError;
use crate::resource::{self, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Store;

/// Issued tokens and whether they are checked.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    enabled: AtomicBool,
    /// token → (namespace, service account name)
    tokens: Mutex<HashMap<String, (String, String)>>,
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No token, or the double's own: everything is allowed.
    Admin,
    /// A ServiceAccount's token.
    ServiceAccount { namespace: String, name: String },
}

impl Caller {
    fn user(&self) -> String {
        match self {
            Self::Admin => "system:admin".to_owned(),
            Self::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
        }
    }
}

/// What a resource request asks to do, as RBAC sees it.
#[derive(Debug)]
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    pub res: &'static ResourceDef,
    pub sub: Option<&'a str>,
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
}

impl Auth {
    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// A new token for the ServiceAccount `namespace/name`.
    pub(crate) fn issue(&self, namespace: &str, name: &str) -> String {
        let token = format!("lapdev-double-sa.{}", uuid::Uuid::new_v4().simple());
        self.tokens()
            .insert(token.clone(), (namespace.to_owned(), name.to_owned()));
        token
    }

    /// The caller of a request (401 for a token nobody issued, or whose
    /// ServiceAccount is gone).
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        store: &Store,
    ) -> Result<Caller, ApiError> {
        if !self.enabled.load(Ordering::SeqCst) {
            return Ok(Caller::Admin);
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(Caller::Admin);
        };
        if token == crate::kubeconfig::ADMIN_TOKEN {
            return Ok(Caller::Admin);
        }
        let (namespace, name) = self
            .tokens()
            .get(token)
            .cloned()
            .ok_or_else(ApiError::unauthorized)?;
        let accounts = resource::core_resource("serviceaccounts");
        store
            .get(accounts, &namespace, &name)
            .map_err(|_| ApiError::unauthorized())?;
        Ok(Caller::ServiceAccount { namespace, name })
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Whether one binding subject is the caller.
fn subject_matches(subject: &Value, binding_ns: &str, ns: &str, name: &str) -> bool {
    let user = format!("system:serviceaccount:{ns}:{name}");
    let groups = [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_owned(),
    ];
    let subject_name = str_at(subject, "/name");
    match str_at(subject, "/kind") {
        "ServiceAccount" => {
            let subject_ns = match str_at(subject, "/namespace") {
                "" => binding_ns,
                s => s,
            };
            subject_name == name && subject_ns == ns
        }
        "User" => subject_name == user,
        "Group" => groups.iter().any(|g| g == subject_name),
        _ => false,
    }
}

/// Whether one policy rule allows the request.
fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let any_or = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    if !any_or(&strings(rule, "verbs"), a.verb) || !any_or(&strings(rule, "apiGroups"), a.res.group)
    {
        return false;
    }
    let wanted = match a.sub {
        Some(sub) => format!("{}/{sub}", a.res.plural),
        None => a.res.plural.to_owned(),
    };
    let resource_ok = strings(rule, "resources")
        .iter()
        .any(|r| r == "*" || *r == wanted || a.sub.is_some_and(|sub| *r == format!("*/{sub}")));
    if !resource_ok {
        return false;
    }
    let names = strings(rule, "resourceNames");
    names.is_empty() || a.name.is_some_and(|n| names.iter().any(|x| x == n))
}

fn rbac(plural: &str) -> &'static ResourceDef {
    resource::find("rbac.authorization.k8s.io", "v1", plural).unwrap_or(&resource::RESOURCES[0])
}

fn all(store: &Store, res: &'static ResourceDef, ns: Option<&str>) -> Vec<Value> {
    store
        .list(
            res,
            ns,
            &LabelSelector::default(),
            &FieldSelector::default(),
            None,
            None,
        )
        .items
        .iter()
        .map(|o| o.value())
        .collect()
}

/// The rules of the role a binding refers to (a missing role grants nothing).
fn role_rules(store: &Store, binding: &Value, binding_ns: &str) -> Vec<Value> {
    let name = str_at(binding, "/roleRef/name");
    let role = match str_at(binding, "/roleRef/kind") {
        "ClusterRole" => store.get(rbac("clusterroles"), "", name),
        "Role" if !binding_ns.is_empty() => store.get(rbac("roles"), binding_ns, name),
        _ => return Vec::new(),
    };
    role.map(|r| {
        r.value()
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// RBAC: whether the stored bindings give `caller` what `a` asks; the 403 otherwise.
pub(crate) fn authorize(
    store: &Store,
    caller: &Caller,
    a: &Attributes<'_>,
) -> Result<(), ApiError> {
    let Caller::ServiceAccount { namespace, name } = caller else {
        return Ok(());
    };
    let mut bindings: Vec<(Value, String)> = all(store, rbac("clusterrolebindings"), None)
        .into_iter()
        .map(|b| (b, String::new()))
        .collect();
    if let Some(ns) = a.namespace {
        bindings.extend(
            all(store, rbac("rolebindings"), Some(ns))
                .into_iter()
                .map(|b| (b, ns.to_owned())),
        );
    }
    let allowed = bindings.iter().any(|(binding, binding_ns)| {
        let subjects = binding
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        subjects
            .iter()
            .any(|s| subject_matches(s, binding_ns, namespace, name))
            && role_rules(store, binding, binding_ns)
                .iter()
                .any(|rule| rule_allows(rule, a))
    });
    if allowed {
        return Ok(());
    }
    let resource = match a.sub {
        Some(sub) => format!("{}/{sub}", a.res.plural),
        None => a.res.plural.to_owned(),
    };
    Err(ApiError::rbac_forbidden(
        &caller.user(),
        a.res,
        a.name,
        &resource,
        a.verb,
        a.namespace,
    ))
}
