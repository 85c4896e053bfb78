//! A minimal OpenAPI v3 surface: the path index and, per group/version, the
//! operations with their `x-kubernetes-group-version-kind` and query
//! parameters, but no schemas.
//!
//! It exists so `kubectl apply` (client- or server-side) works: kubectl looks for
//! the `fieldValidation` parameter on the resource's PATCH operation and, when
//! it is there, leaves validation to the server instead of downloading schemas.
//! The double honours `fieldValidation=Strict` (unknown fields are a 400).

use serde_json::{Map, Value, json};

use crate::resource::{self, ResourceDef};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group/version's document lives.
pub fn root() -> Value {
    let mut paths = Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(resource::groups());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=lapdev-kube-double")}),
        );
    }
    json!({"paths": paths})
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(res: &ResourceDef, action: &str, params: &[&str]) -> Value {
    json!({
        "operationId": format!("{action}{}", res.kind),
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": res.group, "version": res.version, "kind": res.kind},
    })
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
pub fn group_version(group: &str, version: &str) -> Value {
    let write = ["dryRun", "fieldManager", "fieldValidation"];
    let patch = ["dryRun", "fieldManager", "fieldValidation", "force"];
    let list = [
        "labelSelector",
        "fieldSelector",
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "watch",
        "allowWatchBookmarks",
        "sendInitialEvents",
    ];
    let mut paths = Map::new();
    for res in resource::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = format!("/{}", gv_path(group, version));
        let collection = if res.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", res.plural)
        } else {
            format!("{base}/{}", res.plural)
        };
        paths.insert(collection.clone(), json!({
            "get": operation(res, "list", &list),
            "post": operation(res, "post", &write),
            "delete": operation(res, "deletecollection", &["dryRun", "labelSelector", "fieldSelector"]),
        }));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(res, "get", &[]),
                "put": operation(res, "put", &write),
                "patch": operation(res, "patch", &patch),
                "delete": operation(res, "delete", &["dryRun"]),
            }),
        );
        if res.has_status {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                json!({
                    "get": operation(res, "get", &[]),
                    "put": operation(res, "put", &write),
                    "patch": operation(res, "patch", &patch),
                }),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (lapdev-kube-double)", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}
