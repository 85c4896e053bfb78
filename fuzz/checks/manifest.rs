//! The install-manifest check, shared by the `manifest` fuzz target and the
//! corpus replay in `lapdev-kube/tests/fuzz_corpus.rs`.
//!
//! An input is the renderer's parameters separated by `0xFF` bytes (never part
//! of UTF-8; each piece is read lossily): server URL, cluster token, server CA
//! PEM (empty: none), image, cluster name, workspace namespace, manager
//! namespace, and a security profile (`restricted` or anything else for
//! baseline). Missing pieces take the defaults of `ManifestParams::new`.
//!
//! Invariants: rendering never panics; a well-formed token never appears in an
//! error message; a rendered manifest reads back (as YAML) to exactly the
//! objects `manifest_objects` returns, and its Secret holds the URL, token
//! and cluster name unchanged.

use lapdev_common::status::SecurityProfile;
use lapdev_kube::manifest::{ManifestParams, manifest_objects, render_manifest};

/// Builds the parameters an input describes.
pub fn params(data: &[u8]) -> ManifestParams {
    let pieces: Vec<String> = data
        .split(|&b| b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let piece = |i: usize| pieces.get(i).cloned();
    let mut params = ManifestParams::new(
        piece(0).unwrap_or_default(),
        piece(1).unwrap_or_default(),
        piece(4).unwrap_or_else(|| "fuzz".to_owned()),
    );
    params.server_ca_pem = piece(2).filter(|p| !p.is_empty());
    if let Some(image) = piece(3) {
        params.image = image;
    }
    if let Some(ns) = piece(5) {
        params.workspace_namespace = ns;
    }
    if let Some(ns) = piece(6) {
        params.manager_namespace = ns;
    }
    if piece(7).as_deref() == Some("restricted") {
        params.security_profile = SecurityProfile::Restricted;
    }
    params
}

/// Runs one input through the renderer; returns whether it rendered.
pub fn check(data: &[u8]) -> bool {
    let params = params(data);
    let token_is_secret = lapdev_common::token::is_well_formed_cluster_token(&params.cluster_token);
    let yaml = match render_manifest(&params) {
        Ok(yaml) => yaml,
        Err(e) => {
            if token_is_secret {
                assert!(
                    !e.to_string().contains(&params.cluster_token),
                    "the token leaked into an error"
                );
            }
            assert!(
                manifest_objects(&params).is_err(),
                "YAML failed, JSON did not"
            );
            return false;
        }
    };
    let values = manifest_objects(&params).expect("the same params render as JSON");
    let read_back: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&yaml).expect("the rendered YAML reads back");
    assert_eq!(
        read_back, values,
        "the YAML does not read back as the objects"
    );
    let secret = values
        .iter()
        .find(|v| v["kind"] == "Secret")
        .expect("a Secret");
    let data = &secret["stringData"];
    let found = |value: &str| {
        data.as_object()
            .is_some_and(|m| m.values().any(|v| v == value))
    };
    assert!(
        found(&params.server_url),
        "the server URL is not in the Secret"
    );
    assert!(
        found(&params.cluster_token),
        "the token is not in the Secret"
    );
    assert_eq!(
        secret["metadata"]["annotations"][lapdev_kube::manifest::CLUSTER_NAME_ANNOTATION],
        params.cluster_name.as_str(),
        "the cluster name is not on the Secret"
    );
    true
}
