//! `lapdev-kube-double`: serves the Kubernetes API test double on a port so Lapdev
//! can be tried end to end on one machine without a cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use lapdev_kube_double::{Config, KubeDouble, KubeletConfig, NodeSpec};

/// A local stand-in for a Kubernetes API server, for trying Lapdev without a cluster.
///
/// This is NOT a Kubernetes cluster: it answers the Kubernetes API from memory, and
/// nothing runs containers. Pods are only marked `Running` after a short delay, as
/// a kubelet would report them; no image is pulled and no process starts. All state
/// is lost when it exits.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve the API on.
    #[arg(
        long,
        env = "LAPDEV_KUBE_DOUBLE_LISTEN",
        default_value = "127.0.0.1:6443"
    )]
    listen: SocketAddr,
    /// Where to write a kubeconfig that points at it (for kubectl and the manager).
    #[arg(
        long,
        env = "LAPDEV_KUBE_DOUBLE_KUBECONFIG",
        default_value = "lapdev-kube-double.kubeconfig"
    )]
    kubeconfig_out: PathBuf,
    /// How many fake nodes to register.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// CPU capacity of each node.
    #[arg(long, default_value = "8")]
    node_cpu: String,
    /// Memory capacity of each node.
    #[arg(long, default_value = "32Gi")]
    node_memory: String,
    /// Region label of the nodes (`topology.kubernetes.io/region`).
    #[arg(long, default_value = "local")]
    region: String,
    /// How many non-workspace pods to seed, already Running and spread over the nodes (for load tests).
    #[arg(long, default_value_t = 0)]
    pods: usize,
    /// Delay before a new pod is marked Running, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    kubelet_delay_ms: u64,
    /// Watch events kept for watches that resume from a resourceVersion.
    #[arg(long, default_value_t = 100_000)]
    history: usize,
    /// Let `kubectl exec` / `pods/exec` run the command as a LOCAL process on
    /// this machine, as the user running this binary, in a scratch directory
    /// per pod. The API has no authentication: anyone who reaches the listen
    /// address can then run arbitrary commands here. Off by default (exec
    /// answers 403).
    #[arg(long, env = "LAPDEV_KUBE_DOUBLE_ALLOW_LOCAL_EXEC")]
    allow_local_exec: bool,
    /// Let `pods/portforward` to any pod's port P connect to P on this host
    /// address (e.g. 127.0.0.1). Anyone who reaches the listen address can
    /// then reach that host's ports. Off by default (connection refused).
    #[arg(long, env = "LAPDEV_KUBE_DOUBLE_FORWARD_PORTS_TO")]
    forward_ports_to: Option<std::net::IpAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the product's binaries (`lapdev_common::logs`): stderr (stdout
    // carries the "serving on" line), colour only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(lapdev_common::logs::colour())
        .init();
    let args = Args::parse();
    let double = KubeDouble::start_with(Config {
        listen: args.listen,
        history: args.history,
        local_exec: args.allow_local_exec,
        ..Config::default()
    })
    .await
    .with_context(|| format!("starting the Kubernetes API double on {}", args.listen))?;
    double.forward_unregistered_ports(args.forward_ports_to);
    if args.allow_local_exec {
        tracing::warn!(
            listen = %args.listen,
            "local exec is ON: anyone who reaches this address can run commands on this machine"
        );
    }
    let mut node_names = Vec::new();
    for i in 0..args.nodes {
        let name = format!("double-node-{i}");
        let labels = BTreeMap::from([
            (
                "topology.kubernetes.io/region".to_owned(),
                args.region.clone(),
            ),
            (
                "topology.kubernetes.io/zone".to_owned(),
                format!("{}-a", args.region),
            ),
        ]);
        let spec = NodeSpec {
            cpu: args.node_cpu.clone(),
            memory: args.node_memory.clone(),
            provider_id: Some(format!("lapdev-double://{name}")),
            labels,
            ..NodeSpec::default()
        };
        double
            .add_node(&name, spec)
            .with_context(|| format!("adding node {name}"))?;
        node_names.push(name);
    }
    seed_pods(&double, args.pods, &node_names)?;
    // The namespaces Lapdev's install manifest creates, so a manager can run
    // against the stand-in straight away.
    for ns in ["lapdev", "lapdev-workspaces"] {
        double
            .create_namespace(ns)
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    double
        .write_kubeconfig(&args.kubeconfig_out)
        .with_context(|| format!("writing {}", args.kubeconfig_out.display()))?;
    let _kubelet = double.run_kubelet(KubeletConfig {
        delay: Duration::from_millis(args.kubelet_delay_ms),
        ..KubeletConfig::default()
    });
    println!(
        "Kubernetes API stand-in (not a cluster) serving on {}\nkubeconfig written to {}\ntry: kubectl --kubeconfig {} get nodes",
        double.url(),
        args.kubeconfig_out.display(),
        args.kubeconfig_out.display()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

fn seed_pods(double: &KubeDouble, count: usize, nodes: &[String]) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    double
        .create_namespace("background")
        .context("creating namespace background")?;
    for i in 0..count {
        let node = nodes.get(i % nodes.len().max(1)).cloned();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("background-{i}"), "namespace": "background", "labels": {"app": "background"}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
            },
        }))
        .context("building a background pod")?;
        double
            .seed_running_pod(&pod)
            .with_context(|| format!("seeding pod background-{i}"))?;
    }
    Ok(())
}
