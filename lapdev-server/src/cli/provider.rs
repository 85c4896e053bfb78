//! `lapdev provider …`: cloud providers and the clusters they manage, on the
//! generated `ProviderRpcClient`; and the provider side of `lapdev cluster delete`.
//!
//! The key file is read and checked for shape locally (a malformed key never
//! leaves the machine), sent once to the server, encrypted there and never shown
//! again.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use lapdev_common::status::K8sProviderKind;
use lapdev_kube::provider::{ClusterMode, GcpConfig, ServiceAccountKey};
use serde_json::{Value, json};

use super::{Output, call_error, cluster_json, done, print_json, print_table};
use crate::admin::api::AdminRpcClient;
use crate::admin::providers::{ManagedClusterView, ProviderClusterView, ProviderRpcClient};

/// Provider kinds the CLI accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Google Cloud (GKE), with a service-account key.
    Gcp,
}

/// `lapdev provider …`
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Connect a cloud account; the key is checked, encrypted at rest and never shown.
    Add {
        /// Provider name (unique in the organisation).
        name: String,
        /// Which cloud.
        #[arg(long, value_enum, default_value = "gcp")]
        kind: Kind,
        /// Service-account key file (JSON).
        #[arg(long)]
        credentials: PathBuf,
        /// GCP project whose clusters are managed.
        #[arg(long)]
        project: String,
        /// Default location for new clusters (region or zone).
        #[arg(long)]
        location: Option<String>,
        /// GKE API endpoint (a private endpoint; defaults to the public API).
        #[arg(long, hide = true)]
        endpoint: Option<String>,
        /// Do not try the credentials against the API.
        #[arg(long)]
        no_validate: bool,
    },
    /// List providers.
    List,
    /// Show one provider.
    Get {
        /// Provider name.
        name: String,
    },
    /// Delete a provider (refused while clusters refer to it).
    Delete {
        /// Provider name.
        name: String,
    },
    /// The clusters the provider has, in every location.
    Clusters {
        /// Provider name.
        name: String,
    },
    /// Import one of the provider's clusters and install the manager into it.
    Import {
        /// Provider name.
        name: String,
        /// The provider's cluster name.
        cluster: String,
        /// Its location, when the name is not unique across locations.
        #[arg(long)]
        location: Option<String>,
        /// Name in Lapdev (default: the provider's name).
        #[arg(long = "as")]
        as_name: Option<String>,
        /// Do not install the manager (apply the manifest yourself).
        #[arg(long)]
        no_install: bool,
    },
    /// Create a cluster through the provider; the manager is installed when it is up.
    CreateCluster {
        /// Provider name.
        name: String,
        /// New cluster's name.
        cluster: String,
        /// Region or zone (default: the provider's location).
        #[arg(long)]
        location: Option<String>,
        /// GKE Autopilot (the provider manages nodes).
        #[arg(long, conflicts_with_all = ["machine_type", "nodes"])]
        autopilot: bool,
        /// Machine type of the node pool (Standard).
        #[arg(long, default_value = "e2-standard-4")]
        machine_type: String,
        /// Nodes in the node pool (Standard).
        #[arg(long, default_value_t = 3)]
        nodes: i32,
    },
}

/// Reads and checks a key file, and builds the provider config.
fn read_gcp(
    credentials: &PathBuf,
    project: String,
    location: Option<String>,
    endpoint: Option<String>,
) -> anyhow::Result<(String, Value)> {
    let bytes = std::fs::read(credentials)
        .with_context(|| format!("cannot read {}", credentials.display()))?;
    ServiceAccountKey::parse(&bytes)
        .with_context(|| format!("{} is not a usable key", credentials.display()))?;
    let text = String::from_utf8(bytes).context("the key file is not UTF-8")?;
    let config = json!({"project": project, "location": location, "endpoint": endpoint});
    // Same checks as the server's.
    GcpConfig::from_value(&config)?;
    Ok((text, config))
}

fn provider_cluster_json(c: &ProviderClusterView) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn managed_json(m: &ManagedClusterView) -> Value {
    let mut v = cluster_json(&m.cluster);
    if let Value::Object(o) = &mut v {
        o.insert("managed_by".into(), json!(m.provider));
        o.insert("external_id".into(), json!(m.external_id));
        o.insert("message".into(), json!(m.message));
        if let Some(p) = &m.provider_cluster {
            o.insert("provider_cluster".into(), provider_cluster_json(p));
        }
    }
    v
}

fn print_managed(out: Output, m: &ManagedClusterView) -> anyhow::Result<()> {
    match out {
        Output::Json => print_json(&managed_json(m)),
        Output::Table => {
            let version = m
                .cluster
                .kubernetes_version
                .clone()
                .or_else(|| {
                    m.provider_cluster
                        .as_ref()
                        .and_then(|p| p.kubernetes_version.clone())
                })
                .unwrap_or_else(|| "-".into());
            let nodes = m
                .cluster
                .node_count
                .or(m.provider_cluster.as_ref().map(|p| p.node_count))
                .map_or("-".into(), |n| n.to_string());
            print_table(
                &[
                    "NAME", "STATUS", "PROVIDER", "VERSION", "NODES", "REGION", "MESSAGE",
                ],
                vec![vec![
                    m.cluster.name.clone(),
                    m.cluster.status.to_string(),
                    m.provider.clone().unwrap_or_else(|| "-".into()),
                    version,
                    nodes,
                    m.cluster.region.clone().unwrap_or_else(|| "-".into()),
                    m.message.clone().unwrap_or_else(|| "-".into()),
                ]],
            )
        }
    }
}

/// Runs a `lapdev provider …` command.
pub async fn run(admin: &AdminRpcClient, out: Output, cmd: ProviderCommand) -> anyhow::Result<()> {
    let api = ProviderRpcClient::new(admin.client().clone());
    match cmd {
        ProviderCommand::Add {
            name,
            kind,
            credentials,
            project,
            location,
            endpoint,
            no_validate,
        } => {
            let (credential, config) = match kind {
                Kind::Gcp => read_gcp(&credentials, project, location, endpoint)?,
            };
            let created = api
                .create_provider(name, K8sProviderKind::GCP, config, credential, !no_validate)
                .await
                .map_err(call_error)?;
            match out {
                Output::Json => print_json(&json!({
                    "id": created.provider.id,
                    "name": created.provider.name,
                    "kind": created.provider.kind,
                    "config": created.provider.config,
                    "credentials_checked": created.credentials_checked,
                    "warning": created.warning,
                })),
                Output::Table => {
                    outln!(
                        "provider {} added{}",
                        created.provider.name,
                        if created.credentials_checked {
                            " (credentials checked)"
                        } else {
                            ""
                        }
                    )?;
                    if let Some(w) = created.warning {
                        eprintln!("warning: {w}");
                    }
                    Ok(())
                }
            }
        }
        ProviderCommand::List => {
            let providers = api.list_providers().await.map_err(call_error)?;
            match out {
                Output::Json => print_json(&serde_json::to_value(&providers)?),
                Output::Table => print_table(
                    &["NAME", "KIND", "PROJECT", "LOCATION", "CREATED"],
                    providers
                        .iter()
                        .map(|p| {
                            let field = |k: &str| {
                                p.config
                                    .get(k)
                                    .and_then(Value::as_str)
                                    .unwrap_or("-")
                                    .to_owned()
                            };
                            vec![
                                p.name.clone(),
                                p.kind.to_string(),
                                field("project"),
                                field("location"),
                                p.created_at.to_rfc3339(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        ProviderCommand::Get { name } => {
            let p = api.get_provider(name).await.map_err(call_error)?;
            print_json(&serde_json::to_value(&p)?)
        }
        ProviderCommand::Delete { name } => {
            api.delete_provider(name.clone())
                .await
                .map_err(call_error)?;
            done(
                out,
                json!({"name": name, "deleted": true}),
                &format!("provider {name} deleted"),
            )
        }
        ProviderCommand::Clusters { name } => {
            let clusters = api.list_provider_clusters(name).await.map_err(call_error)?;
            match out {
                Output::Json => print_json(&Value::Array(
                    clusters.iter().map(provider_cluster_json).collect(),
                )),
                Output::Table => print_table(
                    &[
                        "NAME",
                        "LOCATION",
                        "STATUS",
                        "VERSION",
                        "NODES",
                        "MODE",
                        "IMPORTED AS",
                    ],
                    clusters
                        .iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                c.location.clone(),
                                c.status.to_string(),
                                c.kubernetes_version.clone().unwrap_or_else(|| "-".into()),
                                c.node_count.to_string(),
                                if c.autopilot {
                                    "autopilot".into()
                                } else {
                                    "standard".into()
                                },
                                c.imported_as.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        ProviderCommand::Import {
            name,
            cluster,
            location,
            as_name,
            no_install,
        } => {
            let m = api
                .import_cluster(name, cluster, location, as_name, !no_install)
                .await
                .map_err(call_error)?;
            print_managed(out, &m)
        }
        ProviderCommand::CreateCluster {
            name,
            cluster,
            location,
            autopilot,
            machine_type,
            nodes,
        } => {
            let mode = if autopilot {
                ClusterMode::Autopilot
            } else {
                ClusterMode::Standard {
                    machine_type,
                    node_count: nodes,
                }
            };
            let m = api
                .create_cluster(name, cluster, location, mode)
                .await
                .map_err(call_error)?;
            print_managed(out, &m)
        }
    }
}

/// `lapdev cluster delete NAME [--yes] [--keep-in-provider]`: a provider-managed
/// cluster is deleted in the provider too, which needs `--yes`.
pub async fn delete_cluster(
    admin: &AdminRpcClient,
    out: Output,
    name: String,
    yes: bool,
    keep_in_provider: bool,
) -> anyhow::Result<()> {
    let api = ProviderRpcClient::new(admin.client().clone());
    let result = api
        .delete_cluster(name.clone(), yes, keep_in_provider)
        .await
        .map_err(|e| {
            let has_workspaces =
                matches!(&e, lapdev_hrpc::CallError::Service(h) if h.message.contains("workspace"));
            let e = call_error(e);
            // The server's message names the workspaces and what to do.
            if has_workspaces || yes {
                e
            } else {
                e.context("pass --yes to delete it in the provider too, or --keep-in-provider")
            }
        })?;
    match result {
        None => done(
            out,
            json!({"name": name, "deleted": true}),
            &format!("cluster {name} deleted"),
        ),
        Some(m) => match out {
            Output::Json => print_json(&managed_json(&m)),
            Output::Table => {
                outln!(
                    "cluster {name} is being deleted in provider {} (watch it with `lapdev cluster get {name}`)",
                    m.provider.as_deref().unwrap_or("-")
                )?;
                Ok(())
            }
        },
    }
}
