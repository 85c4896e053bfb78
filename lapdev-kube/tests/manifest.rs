//! Tests of the manager's install manifest: hostile inputs stay data, the token stays
//! in the Secret, the pod meets the restricted Pod Security Standard, RBAC is exactly
//! what the manager needs, and the kustomize base in `deploy/kube-manager/` renders the
//! same objects (checked with the real `kubectl kustomize`, which is installed on CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use lapdev_kube::manifest::{
    CLUSTER_NAME_ANNOTATION, DEFAULT_MANAGER_NAMESPACE, DEFAULT_WORKSPACE_NAMESPACE, ManifestError,
    ManifestParams, ManifestWarning, default_image, manifest_objects, render_manifest,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const TOKEN: &str = "lapdev_ct_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";
const URL: &str = "https://lapdev.example.com";

const CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBszCCAVmgAwIBAgIUdGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0MAoGCCqGSM49\n\
BAMCMBQxEjAQBgNVBAMMCWxhcGRldi1jYTAeFw0yNjAxMDEwMDAwMDBaFw0zNjAx\n\
-----END CERTIFICATE-----\n";

const KINDS: [&str; 12] = [
    "Namespace",
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Secret",
    "Deployment",
    "NetworkPolicy",
    "NetworkPolicy",
    "NetworkPolicy",
];

fn params() -> ManifestParams {
    ManifestParams::new(URL, TOKEN, "prod-eu")
}

/// Parses a multi-document YAML stream into JSON values.
fn parse_yaml(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn secret(objects: &[Value]) -> &Value {
    find(objects, "Secret", "lapdev-kube-manager")
}

fn deployment(objects: &[Value]) -> &Value {
    find(objects, "Deployment", "lapdev-kube-manager")
}

/// Renders, parses back and checks that the YAML holds exactly the typed objects: the
/// same number of documents and every value equal, whatever the inputs contained.
fn render_and_parse(p: &ManifestParams) -> Vec<Value> {
    let yaml = render_manifest(p).expect("render");
    let parsed = parse_yaml(&yaml);
    let expected = manifest_objects(p).expect("objects");
    assert_eq!(parsed.len(), KINDS.len(), "document count changed:\n{yaml}");
    assert_eq!(parsed, expected, "YAML does not round-trip:\n{yaml}");
    let kinds: Vec<&str> = parsed.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, KINDS);
    parsed
}

fn assert_secret_holds(objects: &[Value], p: &ManifestParams) {
    let s = secret(objects);
    assert_eq!(s["stringData"]["LAPDEV_SERVER_URL"], p.server_url.as_str());
    assert_eq!(
        s["stringData"]["LAPDEV_KUBE_CLUSTER_TOKEN"],
        p.cluster_token.as_str()
    );
    match &p.server_ca_pem {
        Some(ca) => assert_eq!(s["stringData"]["LAPDEV_SERVER_CA"], ca.as_str()),
        None => assert!(s["stringData"].get("LAPDEV_SERVER_CA").is_none()),
    }
    assert_eq!(
        s["metadata"]["annotations"][CLUSTER_NAME_ANNOTATION],
        p.cluster_name.as_str()
    );
}

#[test]
fn renders_the_objects_in_apply_order() {
    let p = params();
    let objects = render_and_parse(&p);
    assert_secret_holds(&objects, &p);
    assert_eq!(objects[0]["metadata"]["name"], DEFAULT_MANAGER_NAMESPACE);
    assert_eq!(objects[1]["metadata"]["name"], DEFAULT_WORKSPACE_NAMESPACE);
    let yaml = render_manifest(&p).unwrap();
    assert!(yaml.starts_with("# Lapdev kube-manager install manifest"));
    assert_eq!(
        deployment(&objects)["spec"]["template"]["spec"]["containers"][0]["image"],
        default_image()
    );
    assert_eq!(
        default_image(),
        format!(
            "ghcr.io/lapdev/lapdev-kube-manager:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn hostile_cluster_names_round_trip_as_data() {
    let long = "x".repeat(253);
    let names = [
        "plain",
        "\"double\" and 'single' quotes",
        "line one\nline two\n",
        "\nleading newline",
        "trailing newlines\n\n\n",
        "  leading and trailing spaces  ",
        "{{ .Values.token }}",
        "${LAPDEV_KUBE_CLUSTER_TOKEN}",
        "key: value",
        "# a comment",
        "---",
        "a\n---\nkind: Secret\nmetadata:\n  name: evil\n",
        "...",
        "- item",
        "[flow, seq]",
        "{flow: map}",
        "&anchor *alias",
        "!!binary aGVsbG8=",
        "!tag value",
        "|\n  literal",
        ">\n  folded",
        "%YAML 1.1",
        "@at `backtick`",
        "yes",
        "no",
        "on",
        "off",
        "null",
        "~",
        "true",
        "0x1F",
        "0o17",
        "1e3",
        "012",
        "1:20",
        "2026-01-01",
        ".inf",
        ".nan",
        "tab\tinside",
        "back\\slash",
        "carriage\rreturn",
        "bell\u{7}and\u{1b}escape",
        "del\u{7f}",
        "c1\u{85}next-line\u{a0}nbsp",
        "line\u{2028}separator\u{2029}para",
        "\u{feff}bom",
        "zero\u{200b}width",
        "clúster-ñ 集群 🚀",
        "\u{202e}rtl-override",
        long.as_str(),
    ];
    for name in names {
        let mut p = params();
        p.cluster_name = name.to_owned();
        let objects = render_and_parse(&p);
        assert_secret_holds(&objects, &p);
        assert_kubectl_agrees(&p);
    }
}

#[test]
fn hostile_ca_bundles_round_trip_as_data() {
    let bundles = [
        CA.to_owned(),
        CA.trim_end().to_owned(),
        format!("{CA}\n\n"),
        format!("  indented first line\n{CA}"),
        format!("{CA}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: evil\n"),
        format!("# comment\n{CA}{CA}"),
        format!("{CA}{{{{ .Values.x }}}}: \"quoted\" 'single'\n"),
        CA.replace('\n', "\r\n"),
        format!("{CA}\ttrailing tab\t\n"),
        format!("{CA}unicode: 证书 ✓\n"),
        format!("{}{CA}", "x".repeat(10_000)),
    ];
    for pem in bundles {
        let mut p = params();
        p.server_ca_pem = Some(pem);
        let objects = render_and_parse(&p);
        assert_secret_holds(&objects, &p);
        assert_kubectl_agrees(&p);
    }
}

#[test]
fn hostile_server_urls_are_rejected_or_round_trip() {
    let accepted = [
        "https://lapdev.example.com",
        "https://lapdev.example.com/",
        "https://lapdev.example.com:8443/base/path",
        "https://lapdev.example.com/\"quoted\"",
        "https://lapdev.example.com/it's",
        "https://lapdev.example.com/{{x}}",
        "https://lapdev.example.com/---",
        "https://lapdev.example.com/a:b",
        "https://bücher.example/ü",
        "https://xn--bcher-kva.example",
        "https://[::1]:8443",
        "https://10.0.0.1",
        "HTTPS://LAPDEV.EXAMPLE.COM",
        "https://lapdev.example.com/*alias&anchor!tag%25",
    ];
    for url in accepted {
        let mut p = params();
        p.server_url = url.to_owned();
        // Loopback is allowed, with its own warning (see below).
        let expected: &[ManifestWarning] = if url.contains("[::1]") {
            &[ManifestWarning::LoopbackServerUrl]
        } else {
            &[]
        };
        assert_eq!(p.validate().unwrap(), expected, "{url}");
        let objects = render_and_parse(&p);
        assert_secret_holds(&objects, &p);
        assert_kubectl_agrees(&p);
    }

    let long = format!("https://lapdev.example.com/{}", "a".repeat(3000));
    let with_token = format!("https://lapdev.example.com/{TOKEN}");
    let rejected = [
        "",
        "lapdev.example.com",
        "/relative/path",
        "ftp://lapdev.example.com",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "ws://lapdev.example.com",
        "https://",
        "https://lapdev.example.com/a b",
        "https://lapdev.example.com/\n---\nkind: Secret",
        "https://lapdev.example.com\n",
        " https://lapdev.example.com",
        "https://lapdev.example.com/\ttab",
        "https://lapdev.example.com/{{ .Values.x }}",
        "https://lapdev.example.com/a: b",
        "https://lapdev.example.com/#fragment",
        "https://lapdev.example.com/?token=x",
        "https://user:pass@lapdev.example.com",
        "https://user@lapdev.example.com",
        "https://lapdev.example.com/\u{0}",
        "https://lapdev.example.com/\u{85}",
        long.as_str(),
        with_token.as_str(),
    ];
    for url in rejected {
        let mut p = params();
        p.server_url = url.to_owned();
        let err = render_manifest(&p).expect_err(url);
        assert!(
            matches!(
                err,
                ManifestError::InvalidServerUrl(_) | ManifestError::UnsupportedScheme(_)
            ),
            "{url:?}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("invalid server URL: "), "{msg}");
        assert!(!msg.contains(TOKEN), "{msg}");
    }
}

#[test]
fn plain_http_is_allowed_with_a_warning() {
    let mut p = params();
    p.server_url = "http://lapdev.internal:8080".to_owned();
    assert_eq!(p.validate().unwrap(), [ManifestWarning::InsecureServerUrl]);
    assert!(
        ManifestWarning::InsecureServerUrl
            .to_string()
            .contains("plain http")
    );
    render_and_parse(&p);
}

#[test]
fn a_server_url_naming_this_machine_is_allowed_with_a_warning() {
    for url in [
        "http://127.0.0.1:8080",
        "http://127.8.9.10",
        "https://localhost:8443",
        "https://LOCALHOST.:8443",
        "http://dev.localhost",
        "http://0.0.0.0:8080",
        "http://[::1]:8080",
        "http://[::]:8080",
        "http://[::ffff:127.0.0.1]:8080",
    ] {
        let mut p = params();
        p.server_url = url.to_owned();
        let warnings = p.validate().unwrap();
        assert!(
            warnings.contains(&ManifestWarning::LoopbackServerUrl),
            "{url}: {warnings:?}"
        );
        render_and_parse(&p);
    }
    for url in [
        "https://lapdev.example.com",
        "http://10.0.0.5:8080",
        "https://localhost.example.com",
        "http://[fd00::1]:8080",
    ] {
        let mut p = params();
        p.server_url = url.to_owned();
        let warnings = p.validate().unwrap();
        assert!(
            !warnings.contains(&ManifestWarning::LoopbackServerUrl),
            "{url}: {warnings:?}"
        );
    }
    assert!(
        ManifestWarning::LoopbackServerUrl
            .to_string()
            .contains("--public-url")
    );
    assert_eq!(
        ManifestWarning::LoopbackServerUrl.code(),
        "loopback_server_url"
    );
    assert_eq!(
        ManifestWarning::InsecureServerUrl.code(),
        "insecure_server_url"
    );
}

#[test]
fn the_token_appears_only_in_the_secret() {
    let mut p = params();
    p.server_ca_pem = Some(CA.to_owned());
    let yaml = render_manifest(&p).unwrap();
    assert_eq!(yaml.matches(TOKEN).count(), 1, "{yaml}");
    let objects = render_and_parse(&p);
    for o in &objects {
        let text = o.to_string();
        if o["kind"] == "Secret" {
            assert_eq!(text.matches(TOKEN).count(), 1);
            assert!(!o["metadata"].to_string().contains(TOKEN));
            assert!(
                !o["stringData"]["LAPDEV_SERVER_URL"]
                    .to_string()
                    .contains(TOKEN)
            );
        } else {
            assert!(!text.contains(TOKEN), "token in {}", o["kind"]);
        }
    }
    // The Deployment reads it from the Secret, by reference.
    let env = &deployment(&objects)["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env[1],
        json!({"name": "LAPDEV_KUBE_CLUSTER_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "lapdev-kube-manager", "key": "LAPDEV_KUBE_CLUSTER_TOKEN"}}})
    );
    // Debug output and errors do not leak it either.
    assert!(!format!("{p:?}").contains(TOKEN));
    assert!(format!("{p:?}").contains("<redacted>"));
}

#[test]
fn a_token_pasted_into_a_namespace_stays_out_of_the_error() {
    // Found by the `manifest` fuzz target (fuzz/corpus/manifest/token_as_namespace).
    for field in ["workspace", "manager", "both"] {
        for value in [TOKEN.to_owned(), format!("ns-{TOKEN}")] {
            let mut p = params();
            if field != "manager" {
                p.workspace_namespace = value.clone();
            }
            if field != "workspace" {
                p.manager_namespace = value.clone();
            }
            let err = render_manifest(&p).expect_err(field);
            assert!(
                matches!(err, ManifestError::InvalidNamespace { .. }),
                "{err}"
            );
            assert!(!err.to_string().contains(TOKEN), "{err}");
            assert!(err.to_string().contains("redacted"), "{err}");
        }
    }
    // Other bad values are still quoted, so the admin sees what was wrong.
    let mut p = params();
    p.workspace_namespace = "Bad_NS".into();
    let err = render_manifest(&p).unwrap_err();
    assert!(err.to_string().contains("\"Bad_NS\""), "{err}");
}

#[test]
fn malformed_tokens_are_rejected() {
    let bad = [
        String::new(),
        "lapdev_ct_short".to_owned(),
        format!("{TOKEN}\n"),
        format!(" {TOKEN}"),
        TOKEN.replace("lapdev_ct_", "lapdev_xx_"),
        format!("{}\"", &TOKEN[..TOKEN.len() - 1]),
        format!("{}\n", &TOKEN[..TOKEN.len() - 1]),
        format!("{}é", &TOKEN[..TOKEN.len() - 2]),
    ];
    for token in bad {
        let mut p = params();
        p.cluster_token = token.clone();
        let err = render_manifest(&p).expect_err(&token);
        assert!(matches!(err, ManifestError::MalformedToken), "{err}");
        assert!(!err.to_string().contains(&token) || token.is_empty());
    }
}

type Mutation = Box<dyn Fn(&mut ManifestParams)>;

#[test]
fn other_inputs_are_validated() {
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|p| p.cluster_name = String::new()),
            "invalid cluster name",
        ),
        (
            Box::new(|p| p.cluster_name = " \n ".into()),
            "invalid cluster name",
        ),
        (
            Box::new(|p| p.cluster_name = "a\0b".into()),
            "invalid cluster name",
        ),
        (
            Box::new(|p| p.cluster_name = "x".repeat(254)),
            "longer than 253",
        ),
        (
            Box::new(|p| p.server_ca_pem = Some(String::new())),
            "invalid server CA",
        ),
        (
            Box::new(|p| p.server_ca_pem = Some("not a pem".into())),
            "invalid server CA",
        ),
        (
            Box::new(|p| p.server_ca_pem = Some(format!("{CA}{}", "x".repeat(70_000)))),
            "64 KiB",
        ),
        (
            Box::new(|p| p.server_ca_pem = Some(format!("{CA}\0"))),
            "NUL",
        ),
        (
            Box::new(|p| p.manager_namespace = "Lapdev".into()),
            "invalid manager_namespace",
        ),
        (
            Box::new(|p| p.manager_namespace = String::new()),
            "invalid manager_namespace",
        ),
        (
            Box::new(|p| p.manager_namespace = "-lapdev".into()),
            "invalid manager_namespace",
        ),
        (
            Box::new(|p| p.manager_namespace = "a".repeat(64)),
            "invalid manager_namespace",
        ),
        (
            Box::new(|p| p.workspace_namespace = "ws\n---".into()),
            "invalid workspace_namespace",
        ),
        (
            Box::new(|p| p.workspace_namespace = "lapdev".into()),
            "must differ",
        ),
        (Box::new(|p| p.image = String::new()), "invalid image"),
        (
            Box::new(|p| p.image = "repo/image:tag\nkind: Secret".into()),
            "invalid image",
        ),
        (
            Box::new(|p| p.image = "repo/image:{{tag}}".into()),
            "invalid image",
        ),
        (Box::new(|p| p.image = "repo/imäge".into()), "invalid image"),
        (
            Box::new(|p| p.image = format!("repo/{}", "a".repeat(600))),
            "invalid image",
        ),
    ];
    for (mutate, expected) in cases {
        let mut p = params();
        mutate(&mut p);
        let err = render_manifest(&p).expect_err(expected);
        assert!(err.to_string().contains(expected), "{err} vs {expected}");
        assert!(manifest_objects(&p).is_err());
    }
}

#[test]
fn custom_image_and_namespaces_are_used_consistently() {
    let mut p = params();
    p.image = "registry.internal:5000/lapdev/manager@sha256:0123abcd".to_owned();
    p.manager_namespace = "lapdev-system".to_owned();
    p.workspace_namespace = "dev-envs".to_owned();
    let objects = render_and_parse(&p);
    let d = deployment(&objects);
    assert_eq!(d["metadata"]["namespace"], "lapdev-system");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], p.image.as_str());
    assert_eq!(
        c["env"][3],
        json!({"name": "LAPDEV_WORKSPACE_NAMESPACE", "value": "dev-envs"})
    );
    assert_eq!(objects[0]["metadata"]["name"], "lapdev-system");
    assert_eq!(objects[1]["metadata"]["name"], "dev-envs");
    for (kind, ns) in [
        ("ServiceAccount", "lapdev-system"),
        ("Secret", "lapdev-system"),
        ("Role", "dev-envs"),
        ("RoleBinding", "dev-envs"),
    ] {
        assert_eq!(
            find(&objects, kind, "lapdev-kube-manager")["metadata"]["namespace"],
            ns
        );
    }
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(
            find(&objects, kind, "lapdev-kube-manager")["subjects"],
            json!([{"kind": "ServiceAccount", "name": "lapdev-kube-manager",
                    "namespace": "lapdev-system"}])
        );
    }
}

#[test]
fn namespaces_carry_pod_security_levels() {
    let objects = render_and_parse(&params());
    for (ns, level) in [("lapdev", "restricted"), ("lapdev-workspaces", "baseline")] {
        let labels = &find(&objects, "Namespace", ns)["metadata"]["labels"];
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(labels[format!("pod-security.kubernetes.io/{mode}")], level);
            assert_eq!(
                labels[format!("pod-security.kubernetes.io/{mode}-version")],
                "latest"
            );
        }
    }
}

#[test]
fn every_object_has_the_app_kubernetes_io_labels() {
    let objects = render_and_parse(&params());
    for o in objects
        .iter()
        .chain([&deployment(&objects)["spec"]["template"]])
    {
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "lapdev-kube-manager");
        assert_eq!(labels["app.kubernetes.io/component"], "kube-manager");
        assert_eq!(labels["app.kubernetes.io/part-of"], "lapdev");
        assert_eq!(
            labels["app.kubernetes.io/version"],
            env!("CARGO_PKG_VERSION")
        );
    }
    assert_eq!(
        deployment(&objects)["spec"]["selector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "lapdev-kube-manager",
                               "app.kubernetes.io/component": "kube-manager"}})
    );
}

/// The restricted Pod Security Standard, field by field
/// (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>), plus what
/// the issue asks of the Deployment.
#[test]
fn the_manager_pod_satisfies_the_restricted_pod_security_standard() {
    let objects = render_and_parse(&params());
    let pod = &deployment(&objects)["spec"]["template"]["spec"];

    // Baseline: no host namespaces, ports, paths; no privileged; no extra capabilities.
    for field in ["hostNetwork", "hostPID", "hostIPC", "hostUsers"] {
        assert!(pod.get(field).is_none(), "{field}");
    }
    // Restricted volume types only (emptyDir is one).
    for v in pod["volumes"].as_array().unwrap() {
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in keys {
            assert!(
                [
                    "name",
                    "emptyDir",
                    "configMap",
                    "secret",
                    "projected",
                    "downwardAPI",
                    "persistentVolumeClaim",
                    "csi",
                    "ephemeral"
                ]
                .contains(&k),
                "volume type {k}"
            );
        }
    }
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["serviceAccountName"], "lapdev-kube-manager");

    assert!(pod.get("initContainers").is_none());
    assert!(pod.get("ephemeralContainers").is_none());
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_ne!(sc["runAsUser"], 0);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(sc.get("procMount").is_none());
    assert!(sc.get("seLinuxOptions").is_none());
    assert!(sc.get("appArmorProfile").is_none());
    for port in c["ports"].as_array().unwrap() {
        assert!(port.get("hostPort").is_none());
    }

    // Probes, port, resources, args.
    assert_eq!(
        c["ports"],
        json!([{"name": "http", "containerPort": 8081, "protocol": "TCP"}])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(c["resources"][kind][res].is_string(), "{kind}.{res}");
        }
    }
    assert_eq!(
        c["args"],
        json!(["--listen", "0.0.0.0:8081", "--log-format", "json"])
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "LAPDEV_SERVER_URL", "valueFrom": {"secretKeyRef": {
                "name": "lapdev-kube-manager", "key": "LAPDEV_SERVER_URL"}}},
            {"name": "LAPDEV_KUBE_CLUSTER_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": "lapdev-kube-manager", "key": "LAPDEV_KUBE_CLUSTER_TOKEN"}}},
            {"name": "LAPDEV_SERVER_CA", "valueFrom": {"secretKeyRef": {
                "name": "lapdev-kube-manager", "key": "LAPDEV_SERVER_CA", "optional": true}}},
            {"name": "LAPDEV_WORKSPACE_NAMESPACE", "value": "lapdev-workspaces"},
            {"name": "LAPDEV_SECURITY_PROFILE", "value": "baseline"},
            {"name": "LAPDEV_MANIFEST_REVISION", "value": "6"},
            {"name": "LAPDEV_CAPACITY", "value": "nodes"},
            {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {
                "name": "lapdev-kube-manager", "key": "HTTPS_PROXY", "optional": true}}},
            {"name": "HTTP_PROXY", "valueFrom": {"secretKeyRef": {
                "name": "lapdev-kube-manager", "key": "HTTP_PROXY", "optional": true}}},
            {"name": "NO_PROXY", "valueFrom": {"secretKeyRef": {
                "name": "lapdev-kube-manager", "key": "NO_PROXY", "optional": true}}},
        ])
    );
    assert!(c.get("envFrom").is_none());
}

/// `capacity: pods` adds a cluster-wide pods list/watch, says why, and tells
/// the manager; `nodes` (the default) reads nodes only.
#[test]
fn capacity_pods_adds_the_cluster_wide_pod_watch() {
    let nodes = render_and_parse(&params());
    let role = find(&nodes, "ClusterRole", "lapdev-kube-manager");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}])
    );
    assert!(role["metadata"].get("annotations").is_none());
    let pods = render_and_parse(&ManifestParams {
        capacity_mode: lapdev_common::status::CapacityMode::Pods,
        ..params()
    });
    let role = find(&pods, "ClusterRole", "lapdev-kube-manager");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}
        ])
    );
    assert!(
        role["metadata"]["annotations"]["lapdev.dev/pods-access-reason"]
            .as_str()
            .unwrap()
            .contains("requests")
    );
    let env = &deployment(&pods)["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "LAPDEV_CAPACITY", "value": "pods"}))
    );
}

/// The full RBAC, so that any change to it is deliberate.
/// Workspaces are isolated by static NetworkPolicies that follow the chosen
/// namespaces: no ingress to workspace pods, egress everywhere but the cloud
/// metadata service and the manager's namespace, and the manager closed to
/// workspaces. (The RBAC test above pins that the manager gets no rights on
/// them.)
#[test]
fn network_policies_isolate_workspaces() {
    let mut p = params();
    p.manager_namespace = "lapdev-system".into();
    p.workspace_namespace = "dev-boxes".into();
    let objects = render_and_parse(&p);
    let deny = find(&objects, "NetworkPolicy", "lapdev-workspaces-deny-ingress");
    assert_eq!(deny["metadata"]["namespace"], "dev-boxes");
    assert_eq!(
        deny["spec"],
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        "every pod, no ingress rule: nothing gets in"
    );
    let egress = find(&objects, "NetworkPolicy", "lapdev-workspaces-egress");
    assert_eq!(egress["metadata"]["namespace"], "dev-boxes");
    assert_eq!(
        egress["spec"],
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                     "values": ["lapdev-system"]}]}}]},
                {"to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}},
                    {"ipBlock": {"cidr": "::/0", "except": ["fd00:ec2::254/128"]}},
                ]},
            ],
        })
    );
    let manager = find(
        &objects,
        "NetworkPolicy",
        "lapdev-kube-manager-deny-workspaces",
    );
    assert_eq!(manager["metadata"]["namespace"], "lapdev-system");
    assert_eq!(
        manager["spec"]["ingress"],
        json!([{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["dev-boxes"]}]}}]}])
    );
}

#[test]
fn rbac_is_exactly_what_the_manager_needs() {
    let objects = render_and_parse(&params());
    assert_eq!(
        find(&objects, "ClusterRole", "lapdev-kube-manager")["rules"],
        json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}])
    );
    let role = find(&objects, "Role", "lapdev-kube-manager");
    assert_eq!(role["metadata"]["namespace"], "lapdev-workspaces");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims"],
             "verbs": ["create", "get", "list", "watch", "delete"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/exec", "pods/portforward"],
             "verbs": ["get", "create"]},
        ])
    );
    let subjects = json!([{"kind": "ServiceAccount", "name": "lapdev-kube-manager",
                            "namespace": "lapdev"}]);
    let crb = find(&objects, "ClusterRoleBinding", "lapdev-kube-manager");
    assert_eq!(
        crb["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
               "name": "lapdev-kube-manager"})
    );
    assert_eq!(crb["subjects"], subjects);
    let rb = find(&objects, "RoleBinding", "lapdev-kube-manager");
    assert_eq!(rb["metadata"]["namespace"], "lapdev-workspaces");
    assert_eq!(
        rb["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
               "name": "lapdev-kube-manager"})
    );
    assert_eq!(rb["subjects"], subjects);
    // No wildcard, no secrets, no escalation anywhere.
    let all = serde_json::to_string(&objects).unwrap();
    for forbidden in [
        "\"*\"",
        "\"secrets\"",
        "\"escalate\"",
        "\"bind\"",
        "\"impersonate\"",
    ] {
        assert!(!all.contains(forbidden), "{forbidden}");
    }
}

// ---- kubectl kustomize: the base and the rendered file agree --------------------------

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn kubectl_kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl is installed (it is on CI too)");
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_yaml(&String::from_utf8(out.stdout).unwrap())
}

/// A copy of `deploy/kube-manager` with `manager.env` (which is .gitignored) filled in.
fn kustomize_base_with_env(env: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(deploy_dir().join("kube-manager")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "manager.env" || name == "server-ca.pem" {
            continue;
        }
        std::fs::copy(entry.path(), tmp.path().join(name)).unwrap();
    }
    std::fs::write(tmp.path().join("manager.env"), env).unwrap();
    tmp
}

fn key(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

#[test]
fn kustomize_base_matches_the_rendered_objects() {
    let base = kustomize_base_with_env(&format!(
        "# comment\nLAPDEV_SERVER_URL={URL}\nLAPDEV_KUBE_CLUSTER_TOKEN={TOKEN}\n"
    ));
    assert_kustomize_matches(base.path(), &params());
}

/// The base's documented way to add a CA: save `server-ca.pem` and uncomment `files:`.
#[test]
fn kustomize_base_takes_an_optional_ca_file() {
    let base = kustomize_base_with_env(&format!(
        "LAPDEV_SERVER_URL={URL}\nLAPDEV_KUBE_CLUSTER_TOKEN={TOKEN}\n"
    ));
    let kustomization = base.path().join("kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).unwrap();
    let commented = "    # files:\n    #   - LAPDEV_SERVER_CA=server-ca.pem\n";
    assert!(text.contains(commented), "the documented CA lines moved");
    let text = text.replace(
        commented,
        "    files:\n      - LAPDEV_SERVER_CA=server-ca.pem\n",
    );
    std::fs::write(&kustomization, text).unwrap();
    std::fs::write(base.path().join("server-ca.pem"), CA).unwrap();
    let mut p = params();
    p.server_ca_pem = Some(CA.to_owned());
    assert_kustomize_matches(base.path(), &p);
}

/// Every object but the Secret equal; the Secret with the same identity, labels, type
/// and (decoded) values.
fn assert_kustomize_matches(dir: &Path, p: &ManifestParams) {
    let mut from_kustomize = kubectl_kustomize(dir);
    let mut rendered = render_and_parse(p);
    assert_eq!(from_kustomize.len(), rendered.len());
    from_kustomize.sort_by_key(key);
    rendered.sort_by_key(key);
    for (k, r) in from_kustomize.iter().zip(&rendered) {
        assert_eq!(key(k), key(r));
        if r["kind"] != "Secret" {
            assert_eq!(
                k,
                r,
                "{:?} differs between kustomize and the renderer",
                key(r)
            );
            continue;
        }
        // The Secret: same identity, labels and type; kustomize writes base64 `data`.
        for field in ["apiVersion", "type"] {
            assert_eq!(k[field], r[field]);
        }
        assert_eq!(k["metadata"]["labels"], r["metadata"]["labels"]);
        let data = k["data"].as_object().unwrap();
        let string_data = r["stringData"].as_object().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            string_data.keys().collect::<Vec<_>>()
        );
        for (name, encoded) in data {
            assert_eq!(
                base64_decode(encoded.as_str().unwrap()),
                string_data[name].as_str().unwrap(),
                "{name}"
            );
        }
    }
}

#[test]
fn kustomize_base_builds_from_the_committed_example_env() {
    let example =
        std::fs::read_to_string(deploy_dir().join("kube-manager/manager.env.example")).unwrap();
    let base = kustomize_base_with_env(&example);
    let objects = kubectl_kustomize(base.path());
    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        k.sort_unstable();
        k
    };
    let mut expected = KINDS.to_vec();
    expected.sort_unstable();
    assert_eq!(kinds, expected);
    // The example token has the real shape, so the example is a usable template.
    let env: std::collections::BTreeMap<&str, &str> = example
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('='))
        .collect();
    let mut p = params();
    p.server_url = env["LAPDEV_SERVER_URL"].to_owned();
    p.cluster_token = env["LAPDEV_KUBE_CLUSTER_TOKEN"].to_owned();
    assert!(p.validate().is_ok());
}

/// Reads a rendered manifest with the YAML decoder of `kubectl apply -f` (Go,
/// sigs.k8s.io/yaml), offline: `kubectl label --local` parses the file, adds a label and
/// prints each object as JSON; the label is taken off again here.
fn parse_with_kubectl(yaml: &str) -> Vec<Value> {
    const MARK: &str = "lapdev.io/parsed-by-kubectl";
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubectl")
        .args(["label", "--local", "-o", "json", "-f"])
        .arg(&file)
        .arg(format!("{MARK}=yes"))
        .env("KUBECONFIG", tmp.path().join("no-kubeconfig"))
        .output()
        .expect("kubectl is installed (it is on CI too)");
    assert!(
        out.status.success(),
        "kubectl could not read the manifest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON object per document, one after the other.
    let mut items: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    for item in &mut items {
        let labels = item["metadata"]["labels"].as_object_mut().unwrap();
        assert_eq!(labels.remove(MARK), Some(json!("yes")));
    }
    items
}

fn assert_kubectl_agrees(p: &ManifestParams) {
    let yaml = render_manifest(p).unwrap();
    assert!(
        parse_with_kubectl(&yaml) == manifest_objects(p).unwrap(),
        "kubectl reads different data from:\n{yaml}"
    );
}

/// `kubectl apply -f`'s own YAML decoder reads hostile rendered manifests as the same
/// data, document for document.
#[test]
fn kubectl_reads_hostile_manifests_as_the_same_data() {
    let mut p = params();
    p.cluster_name =
        "evil\n---\nkind: Secret\n\"q\" 'q' {{ x }} : # yes 集群 \u{2028}\t\u{85}\u{7}\u{feff}"
            .to_owned();
    p.server_ca_pem = Some(format!("  lead\n{CA}---\nkind: Pod\n: {{{{ }}}} #\n\n"));
    p.server_url = "https://bücher.example/\"{{x}}\"/---".to_owned();
    let yaml = render_manifest(&p).unwrap();
    assert_eq!(parse_with_kubectl(&yaml), manifest_objects(&p).unwrap());
}

fn base64_decode(s: &str) -> String {
    use base64::Engine as _;
    // kustomize wraps long values at 70 characters; the API server ignores the breaks.
    let s: String = s.split_whitespace().collect();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any cluster name and any text around a CA bundle survive as data, or are
    /// rejected with a clear error (empty or NUL names).
    #[test]
    fn arbitrary_names_and_ca_text_round_trip(
        name in any::<String>(),
        before in any::<String>(),
        after in any::<String>(),
    ) {
        let mut p = params();
        p.cluster_name = name;
        p.server_ca_pem = Some(format!("{before}{CA}{after}"));
        match p.validate() {
            Ok(_) => {
                let objects = render_and_parse(&p);
                assert_secret_holds(&objects, &p);
            }
            Err(e) => prop_assert!(
                matches!(e, ManifestError::InvalidClusterName(_) | ManifestError::InvalidServerCa(_)),
                "{e}"
            ),
        }
    }
}

proptest! {
    // Each case starts kubectl (tens of milliseconds), so fewer cases.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The same through `kubectl apply -f`'s decoder.
    #[test]
    fn kubectl_reads_arbitrary_names_and_ca_text_as_the_same_data(
        name in any::<String>(),
        before in any::<String>(),
        after in any::<String>(),
    ) {
        let mut p = params();
        p.cluster_name = name;
        p.server_ca_pem = Some(format!("{before}{CA}{after}"));
        if p.validate().is_ok() {
            let yaml = render_manifest(&p).unwrap();
            prop_assert_eq!(parse_with_kubectl(&yaml), manifest_objects(&p).unwrap());
        }
    }
}
