//! The `lapdev` CLI, built on the generated clients (`AdminRpcClient`, …;
//! people, tokens and the audit log in `people.rs`).
//!
//! Human tables by default, `-o json` for scripts. JSON conventions: lists are
//! arrays; timestamps RFC 3339 or `null`; clusters are addressed by name, tokens
//! by id. Errors print one line on stderr and exit non-zero. A reader that
//! closes stdout early (`lapdev … | head`) ends the command quietly with 141
//! (`stdout.rs`).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lapdev_hrpc::{CallError, Client, HrpcError};
use serde_json::{Value, json};
use uuid::Uuid;

/// `println!` to [`stdout::out`]: an error instead of a panic, and a closed
/// stdout as [`stdout::StdoutClosed`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!($crate::cli::stdout::out(), $($arg)*)
    }};
}

pub mod access;
pub mod oidc_login;
pub mod people;
pub mod placement;
pub mod provider;
pub mod quota;
pub mod sessions;
pub mod settings;
pub mod stdout;

use crate::admin::api::{
    AdminRpcClient, ClusterView, CreatedCluster, CreatedToken, ManifestWarningView, TokenView,
};
use crate::admin::workspaces::{NewWorkspaceRequest, WorkspaceRpcClient, WorkspaceView};
use lapdev_common::quantity;

/// Lapdev CLI: clusters, their tokens, workspaces, people and the audit log.
#[derive(Debug, Parser)]
#[command(name = "lapdev", version)]
pub struct Cli {
    /// The Lapdev server's URL.
    #[arg(
        long,
        env = "LAPDEV_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Personal access token (`lapdev_pat_…`; the first one is in
    /// <data-dir>/admin-token). Default: the one `lapdev login` stored.
    #[arg(long, env = "LAPDEV_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON for scripts.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Kubernetes clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Cloud providers and the clusters they manage.
    #[command(subcommand)]
    Provider(provider::ProviderCommand),
    /// Developer workspaces.
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Sign in (password, or `--with-token` to paste a token) and store the token.
    Login {
        /// User name (asked for when missing).
        #[arg(long)]
        user: Option<String>,
        /// Organisation name (default: the first one).
        #[arg(long)]
        organization: Option<String>,
        /// Read a personal access token from stdin instead of signing in.
        #[arg(long, conflicts_with = "oidc")]
        with_token: bool,
        /// Sign in through the server's OpenID Connect provider in the browser.
        #[arg(long)]
        oidc: bool,
    },
    /// Revoke and forget the stored token.
    Logout,
    /// Who the token belongs to.
    Whoami,
    /// Your personal access tokens.
    #[command(subcommand)]
    Token(people::PatCommand),
    /// Your browser sessions and tokens: list them, revoke one.
    #[command(subcommand)]
    Session(sessions::SessionCommand),
    /// Users and their roles.
    #[command(subcommand)]
    User(people::UserCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(people::AuditCommand),
    /// The server's OpenID Connect provider.
    #[command(subcommand)]
    Oidc(settings::OidcCommand),
    /// The organisation's settings.
    #[command(subcommand)]
    Org(settings::OrgCommand),
    /// Workspace quotas: running workspaces, CPU, memory, storage.
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Idle auto-stop, lifetimes and home-volume retention.
    #[command(subcommand)]
    WorkspacePolicy(quota::PolicyCommand),
}

/// `lapdev workspace …`
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace; it is placed on a cluster at once and starts in the
    /// background (watch it with `workspace get`).
    Create {
        /// Workspace name (unique in the organisation).
        name: String,
        /// Container image.
        #[arg(long)]
        image: String,
        /// CPU, as a Kubernetes quantity (`500m`, `2`).
        #[arg(long, default_value = "1")]
        cpu: String,
        /// Memory, as a Kubernetes quantity (`1Gi`, `512Mi`).
        #[arg(long, default_value = "2Gi")]
        memory: String,
        /// Home volume size, as a Kubernetes quantity (`5Gi`).
        #[arg(long, default_value = "10Gi")]
        storage: String,
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only clusters in this region.
        #[arg(long)]
        region: Option<String>,
    },
    /// List workspaces.
    List {
        /// Include deleted workspaces.
        #[arg(long)]
        all: bool,
    },
    /// Show one workspace.
    Get {
        /// Workspace name.
        name: String,
    },
    /// Restart a running workspace's idle timeout from now (its lifetime is
    /// not extended); with --idle-timeout, set its own timeout first (at most
    /// the organisation's maximum).
    KeepAlive {
        /// Workspace name.
        name: String,
        /// The workspace's own idle timeout (`4h`, `90m`).
        #[arg(long)]
        idle_timeout: Option<String>,
    },
    /// Stop a workspace (its volume is kept).
    Stop {
        /// Workspace name.
        name: String,
    },
    /// Start a stopped workspace.
    Start {
        /// Workspace name.
        name: String,
    },
    /// Delete a workspace: its pod goes at once; a home volume it has is kept
    /// for the organisation's retention window (`workspace-policy set
    /// --volume-retention`, default 7 days; `workspace restore` brings it
    /// back) and deleted after it.
    ///
    /// With --force, a workspace whose cluster is disconnected or deleted is
    /// forgotten at once (reason ClusterGone): it disappears for users, and its
    /// objects are removed when the cluster's manager reconnects.
    Delete {
        /// Workspace name.
        name: String,
        /// Forget it without its cluster's help (only while the cluster is
        /// disconnected or deleted).
        #[arg(long)]
        force: bool,
    },
    /// Bring a deleted workspace back, stopped, with its kept home volume
    /// (within the retention window); `workspace start` then runs it on that
    /// volume. A name taken by a newer workspace meanwhile needs --as.
    Restore {
        /// The deleted workspace's name.
        name: String,
        /// Restore it under this name instead.
        #[arg(long = "as", value_name = "NEW_NAME")]
        new_name: Option<String>,
    },
    /// An interactive login shell in the workspace (a TTY; Ctrl-C and Ctrl-D
    /// reach the remote side).
    Shell {
        /// Workspace name.
        name: String,
    },
    /// Run a command in the workspace; its exit code becomes this one's.
    Exec {
        /// Workspace name.
        name: String,
        /// Allocate a TTY (stdout and stderr then merge).
        #[arg(short, long)]
        tty: bool,
        /// Pass stdin to the command (its end ends the command's input).
        #[arg(short, long)]
        interactive: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Forward local ports to the workspace's ports until interrupted.
    PortForward {
        /// Workspace name.
        name: String,
        /// `[LOCAL:]REMOTE`, one or more (LOCAL 0: any free port).
        #[arg(required = true)]
        ports: Vec<access::PortSpec>,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// Connect stdin and stdout to one of the workspace's ports (for
    /// `ssh -o ProxyCommand=…`).
    Proxy {
        /// Workspace name.
        name: String,
        /// The workspace's port.
        port: u16,
    },
    /// Print an OpenSSH `Host` block reaching the workspace's SSH server
    /// through `lapdev workspace proxy` (for ~/.ssh/config, VS Code
    /// Remote-SSH, JetBrains Gateway).
    SshConfig {
        /// Workspace name.
        name: String,
        /// The user to log in as.
        #[arg(long, default_value = "lapdev")]
        user: String,
        /// The port the workspace's SSH server listens on.
        #[arg(long, default_value_t = 22)]
        port: u16,
    },
}

/// `lapdev cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster; prints its first token (this once) and can write the
    /// install manifest.
    Create {
        /// Cluster name (unique in the organisation).
        name: String,
        /// Region to place by until the manager reports one.
        #[arg(long)]
        region: Option<String>,
        /// Pod Security profile of its workspaces: `baseline` (root allowed,
        /// sudo works) or `restricted` (non-root, no capabilities, no escalation).
        #[arg(long, value_parser = ["baseline", "restricted"])]
        security_profile: Option<String>,
        /// Write the install manifest (YAML, carries the token) to this file.
        #[arg(long)]
        manifest_out: Option<PathBuf>,
        /// Write the token to this file instead of printing it.
        #[arg(long)]
        token_out: Option<PathBuf>,
        /// Placement settings.
        #[command(flatten)]
        placement: placement::PlacementArgs,
    },
    /// Replace a cluster's placement settings (capacity mode, autoscaling,
    /// node selector, tolerations, architecture, image pull secrets, priority
    /// class). A new `--capacity` needs a new manifest (`cluster manifest`).
    Placement {
        /// Cluster name.
        name: String,
        /// The settings; flags not given are cleared.
        #[command(flatten)]
        placement: placement::PlacementArgs,
    },
    /// List clusters.
    List {
        /// Include deleted clusters.
        #[arg(long)]
        all: bool,
    },
    /// Show one cluster.
    Get {
        /// Cluster name.
        name: String,
    },
    /// Delete a cluster: its tokens stop working and its manager is cut off.
    ///
    /// A cluster with workspaces is refused unless --force, which first forgets
    /// every workspace on it (listing them): if its manager is connected their
    /// objects are removed now; otherwise they stay in the cluster, since a
    /// deleted cluster's manager never reconnects. A provider-managed cluster
    /// needs --yes (deleted in the provider too, with everything in it) or
    /// --keep-in-provider (only removed from Lapdev).
    Delete {
        /// Cluster name.
        name: String,
        /// A provider-managed cluster is deleted in the provider too: confirm it.
        #[arg(long)]
        yes: bool,
        /// Only remove a provider-managed cluster from Lapdev; keep it in the provider.
        #[arg(long)]
        keep_in_provider: bool,
        /// Forget the cluster's workspaces first (they are listed).
        #[arg(long)]
        force: bool,
    },
    /// Change a cluster's settings.
    Set {
        /// Cluster name.
        name: String,
        /// Pod Security profile of its workspaces (`baseline` or `restricted`);
        /// applies once the new manifest is applied, and to each workspace at its
        /// next start.
        #[arg(long, value_parser = ["baseline", "restricted"])]
        security_profile: String,
        /// Write a new install manifest (with a new token) to this file.
        #[arg(long)]
        manifest_out: Option<PathBuf>,
    },
    /// Stop placing new workspaces on a cluster.
    Cordon {
        /// Cluster name.
        name: String,
    },
    /// Place workspaces on a cluster again.
    Uncordon {
        /// Cluster name.
        name: String,
    },
    /// Create a new token and write an install manifest carrying it.
    Manifest {
        /// Cluster name.
        name: String,
        /// Write the manifest here (default: stdout).
        #[arg(long)]
        manifest_out: Option<PathBuf>,
        /// Write the new token here too.
        #[arg(long)]
        token_out: Option<PathBuf>,
        /// Name of the new token.
        #[arg(long, default_value = "manifest")]
        token_name: String,
    },
    /// Cluster tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `lapdev cluster token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token (at most two live ones per cluster, for rotation).
    Create {
        /// Cluster name.
        cluster: String,
        /// Token name.
        #[arg(long, default_value = "rotation")]
        name: String,
        /// Expire after this many days (default: never, until revoked).
        #[arg(long)]
        expires_in_days: Option<u64>,
        /// Write the token to this file instead of printing it.
        #[arg(long)]
        token_out: Option<PathBuf>,
    },
    /// List a cluster's tokens.
    List {
        /// Cluster name.
        cluster: String,
    },
    /// Revoke a token at once.
    Revoke {
        /// Cluster name.
        cluster: String,
        /// Token id.
        token_id: Uuid,
    },
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let server = cli.server.clone();
    match execute(cli).await {
        Ok(()) => 0,
        // `lapdev … | head`: the reader has what it wanted. No message, and
        // the status of a process ended by SIGPIPE (128 + 13), as other Unix
        // tools (so `set -o pipefail` still sees that not all was printed).
        Err(e) if stdout::is_closed(&e) => stdout::CLOSED_STATUS,
        Err(e) if e.downcast_ref::<access::ExitCode>().is_some() => {
            e.downcast_ref::<access::ExitCode>().map_or(1, |c| c.0)
        }
        Err(e) => {
            let mut msg = format!("{e}");
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!(
                "error: {}",
                unreachable_names(&server, msg).replace('\n', " ")
            );
            1
        }
    }
}

/// "cannot reach the server" says where, and what a TLS handshake answered
/// in plain HTTP means.
fn unreachable_names(server: &str, msg: String) -> String {
    let Some(rest) = msg.strip_prefix("cannot reach the server: ") else {
        return msg;
    };
    let mut out = format!("cannot reach the server at {server}: {rest}");
    if server.starts_with("https://")
        && (rest.contains("InvalidContentType") || rest.contains("corrupt message"))
    {
        out.push_str(" (it answers in plain HTTP, not TLS: use http://)");
    }
    out
}

/// The HRPC client for `server`; a value without a scheme says so.
fn rpc_client(server: &str) -> anyhow::Result<Client> {
    if !server.contains("://") {
        anyhow::bail!(
            "--server / LAPDEV_SERVER {server:?} has no scheme: use http://{server} or https://{server}"
        );
    }
    let base = format!("{}/rpc", server.trim_end_matches('/'));
    Client::http(&base).with_context(|| format!("invalid --server / LAPDEV_SERVER {server:?}"))
}

fn bearer_token(cli: &Cli) -> anyhow::Result<String> {
    match cli.token.as_deref() {
        // An empty `--token`/`LAPDEV_TOKEN` (e.g. `$(cat missing-file)`) is a
        // mistake, not a request for the stored login: that could be another
        // identity.
        Some(t) if t.trim().is_empty() => anyhow::bail!(
            "LAPDEV_TOKEN (or --token) is empty: set it to a personal access token (the first owner token is in <data-dir>/admin-token), or unset it to use the one `lapdev login` stored"
        ),
        Some(t) => Ok(t.to_owned()),
        None => people::stored_token().context(
            "no token: run `lapdev login`, pass --token or set LAPDEV_TOKEN (the first owner token is in <data-dir>/admin-token)",
        ),
    }
}

fn client(cli: &Cli) -> anyhow::Result<AdminRpcClient> {
    let client = rpc_client(&cli.server)?;
    let token = bearer_token(cli)?;
    let value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .context("the admin token contains characters a header cannot carry")?;
    Ok(AdminRpcClient::new(client)
        .with_header(http::header::AUTHORIZATION, value)
        .with_timeout(Duration::from_secs(60)))
}

/// Turns a failed call into one readable error.
fn call_error(e: CallError<HrpcError>) -> anyhow::Error {
    match e {
        CallError::Service(e) => anyhow::anyhow!("{} ({})", e.message, e.code),
        CallError::Transport(t) => {
            let e: HrpcError = CallError::<HrpcError>::Transport(t).into();
            anyhow::anyhow!("cannot reach the server: {}", e.message)
        }
        CallError::Protocol(p) => anyhow::anyhow!("unexpected answer from the server: {p}"),
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let out = cli.output;
    if let Command::Login { oidc: true, .. } = cli.command {
        let signed = oidc_login::login(&cli.server, "cli (OpenID Connect)").await?;
        return people::store_signed_in(out, &signed.token.token_secret, &signed.user);
    }
    if let Command::Login {
        user,
        organization,
        with_token,
        oidc: false,
    } = cli.command
    {
        let anonymous = rpc_client(&cli.server)?.with_timeout(Duration::from_secs(60));
        let api = people::PeopleRpcClient::new(anonymous);
        return people::login(&api, out, user, organization, with_token).await;
    }
    if let Command::Logout = cli.command {
        let api = client(&cli)
            .ok()
            .map(|a| people::PeopleRpcClient::new(a.client().clone()));
        return people::logout(api.as_ref(), out).await;
    }
    let admin = client(&cli)?;
    let endpoint = access::Endpoint {
        server: cli.server.clone(),
        token: bearer_token(&cli)?,
    };
    let people_api = || people::PeopleRpcClient::new(admin.client().clone());
    match cli.command {
        Command::Login { .. } | Command::Logout => Ok(()),
        Command::Whoami => {
            let quotas = crate::quota::QuotaRpcClient::new(admin.client().clone());
            people::whoami(&people_api(), &quotas, out).await
        }
        Command::Quota(cmd) => {
            let api = crate::quota::QuotaRpcClient::new(admin.client().clone());
            quota::quota(&api, out, cmd).await
        }
        Command::WorkspacePolicy(cmd) => {
            let api = crate::idle::api::WorkspaceTimerRpcClient::new(admin.client().clone());
            quota::policy(&api, out, cmd).await
        }
        Command::Token(cmd) => people::token(&people_api(), out, cmd).await,
        Command::User(cmd) => people::user(&people_api(), out, cmd).await,
        Command::Session(cmd) => sessions::session(&people_api(), out, cmd).await,
        Command::Audit(cmd) => people::audit(&people_api(), out, cmd).await,
        Command::Oidc(cmd) => settings::oidc(&people_api(), out, cmd).await,
        Command::Org(cmd) => settings::org(&people_api(), out, cmd).await,
        Command::Cluster(cmd) => cluster(&admin, out, cmd).await,
        Command::Provider(cmd) => provider::run(&admin, out, cmd).await,
        Command::Workspace(cmd) => {
            let workspaces = WorkspaceRpcClient::new(admin.client().clone());
            match cmd {
                WorkspaceCommand::Shell { name } => {
                    let tty = access::tty_for_stdin(true);
                    access::exec(&endpoint, &name, &access::login_shell(), tty, true).await
                }
                WorkspaceCommand::Exec {
                    name,
                    tty,
                    interactive,
                    command,
                } => {
                    // Without `-i` no input is sent, so a TTY cannot wait for it.
                    let tty = if interactive {
                        access::tty_for_stdin(tty)
                    } else {
                        tty
                    };
                    access::exec(&endpoint, &name, &command, tty, interactive).await
                }
                WorkspaceCommand::PortForward {
                    name,
                    ports,
                    address,
                } => access::port_forward(&endpoint, &name, &ports, address).await,
                WorkspaceCommand::Proxy { name, port } => {
                    access::proxy(&endpoint, &name, port).await
                }
                WorkspaceCommand::KeepAlive { name, idle_timeout } => {
                    let api =
                        crate::idle::api::WorkspaceTimerRpcClient::new(admin.client().clone());
                    quota::keep_alive(&api, out, name, idle_timeout).await
                }
                WorkspaceCommand::SshConfig { name, user, port } => {
                    let view = workspaces
                        .get_workspace(name.clone())
                        .await
                        .map_err(call_error)?;
                    let lapdev = std::env::current_exe()
                        .ok()
                        .and_then(|p| p.to_str().map(str::to_owned))
                        .unwrap_or_else(|| "lapdev".into());
                    write!(
                        stdout::out(),
                        "{}",
                        access::ssh_config(&endpoint.server, &lapdev, &name, view.id, &user, port)
                    )?;
                    Ok(())
                }
                other => workspace(&workspaces, out, other).await,
            }
        }
    }
}

async fn workspace(
    api: &WorkspaceRpcClient,
    out: Output,
    cmd: WorkspaceCommand,
) -> anyhow::Result<()> {
    let view = match cmd {
        WorkspaceCommand::Create {
            name,
            image,
            cpu,
            memory,
            storage,
            cluster,
            region,
        } => {
            let request = NewWorkspaceRequest {
                name,
                image,
                cpu_millis: quantity::parse_cpu_millis(&cpu)
                    .with_context(|| format!("--cpu {cpu:?}"))?,
                memory_bytes: quantity::parse_bytes(&memory)
                    .with_context(|| format!("--memory {memory:?}"))?,
                storage_bytes: quantity::parse_bytes(&storage)
                    .with_context(|| format!("--storage {storage:?}"))?,
                cluster,
                region,
            };
            api.create_workspace(request).await.map_err(call_error)?
        }
        WorkspaceCommand::List { all } => {
            let list = api.list_workspaces(all).await.map_err(call_error)?;
            return match out {
                Output::Json => {
                    print_json(&Value::Array(list.iter().map(workspace_json).collect()))
                }
                Output::Table => print_table(
                    &[
                        "NAME", "STATUS", "REASON", "DESIRED", "CLUSTER", "CPU", "MEMORY", "IMAGE",
                        "MESSAGE",
                    ],
                    list.iter()
                        .map(|w| {
                            vec![
                                w.name.clone(),
                                w.status.to_string(),
                                w.reason.as_ref().map_or("-".into(), ToString::to_string),
                                w.desired_state.to_string(),
                                w.cluster.clone().unwrap_or_else(|| "-".into()),
                                format!("{}m", w.cpu_millis),
                                format!("{}Mi", w.memory_bytes >> 20),
                                w.image.clone(),
                                w.message.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                ),
            };
        }
        WorkspaceCommand::Get { name } => api.get_workspace(name).await.map_err(call_error)?,
        WorkspaceCommand::Stop { name } => api.stop_workspace(name).await.map_err(call_error)?,
        WorkspaceCommand::Start { name } => api.start_workspace(name).await.map_err(call_error)?,
        WorkspaceCommand::Delete { name, force: false } => {
            api.delete_workspace(name).await.map_err(call_error)?
        }
        WorkspaceCommand::Delete { name, force: true } => {
            api.forget_workspace(name).await.map_err(call_error)?
        }
        WorkspaceCommand::Restore { name, new_name } => api
            .restore_workspace(name, new_name)
            .await
            .map_err(call_error)?,
        WorkspaceCommand::Shell { .. }
        | WorkspaceCommand::Exec { .. }
        | WorkspaceCommand::PortForward { .. }
        | WorkspaceCommand::Proxy { .. }
        | WorkspaceCommand::KeepAlive { .. }
        | WorkspaceCommand::SshConfig { .. } => {
            anyhow::bail!("sessions are handled before this point")
        }
    };
    match out {
        Output::Json => print_json(&workspace_json(&view)),
        Output::Table => print_fields(workspace_json(&view)),
    }
}

/// A workspace as `-o json` prints it.
pub fn workspace_json(w: &WorkspaceView) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "cluster": w.cluster,
        "status": w.status,
        "reason": w.reason,
        "desired_state": w.desired_state,
        "message": w.message,
        "image": w.image,
        "cpu_millis": w.cpu_millis,
        "memory_bytes": w.memory_bytes,
        "storage_bytes": w.storage_bytes,
        "created_at": w.created_at,
        "deleted_at": w.deleted_at,
        "forgotten_at": w.forgotten_at,
        "stops_at": w.timer.as_ref().and_then(|t| t.stops_at),
        "stops_for": w.timer.as_ref().and_then(|t| t.stops_for.clone()),
        "volume_kept_until": w.volume_kept_until,
        "volume_deleted_at": w.volume_deleted_at,
    })
}

/// Prints a JSON object as `key value` lines.
fn print_fields(v: Value) -> anyhow::Result<()> {
    let mut stdout = stdout::out();
    if let Value::Object(m) = v {
        for (k, v) in m {
            let text = match v {
                Value::Null => "-".to_owned(),
                Value::String(s) => s,
                other => other.to_string(),
            };
            writeln!(stdout, "{k:<26} {text}")?;
        }
    }
    Ok(())
}

async fn cluster(admin: &AdminRpcClient, out: Output, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Create {
            name,
            region,
            security_profile,
            manifest_out,
            token_out,
            placement,
        } => {
            let profile = security_profile.as_deref().map(parse_profile).transpose()?;
            let placement = (!placement.is_empty())
                .then(|| placement.to_placement())
                .transpose()?;
            let created = admin
                .create_cluster(name, region, profile, placement)
                .await
                .map_err(call_error)?;
            warn_about_manifest(&created.warnings);
            if let Some(path) = &manifest_out {
                write_private(path, created.manifest.as_bytes())?;
            }
            if let Some(path) = &token_out {
                write_private(path, format!("{}\n", created.token_secret).as_bytes())?;
            }
            print_created_cluster(out, &created, manifest_out.as_ref(), token_out.as_ref())
        }
        ClusterCommand::List { all } => {
            let clusters = admin.list_clusters(all).await.map_err(call_error)?;
            match out {
                Output::Json => {
                    print_json(&Value::Array(clusters.iter().map(cluster_json).collect()))
                }
                Output::Table => print_cluster_table(&clusters),
            }
        }
        ClusterCommand::Get { name } => {
            let c = admin.get_cluster(name).await.map_err(call_error)?;
            print_cluster(out, &c)
        }
        ClusterCommand::Delete {
            name,
            yes,
            keep_in_provider,
            force,
        } => {
            if force {
                let forgotten = admin
                    .forget_cluster_workspaces(name.clone())
                    .await
                    .map_err(call_error)?;
                if out == Output::Table {
                    for w in &forgotten {
                        outln!("workspace {w} forgotten")?;
                    }
                }
            }
            provider::delete_cluster(admin, out, name.clone(), yes, keep_in_provider).await?;
            if force && out == Output::Table {
                // Said plainly: nothing of Lapdev will ever reach them again.
                outln!(
                    "volumes in cluster {name} that Lapdev did not delete (home volumes of workspaces \
                     whose objects could not be removed, and volumes kept for deleted workspaces) \
                     are left to the cluster's owner: they are the PersistentVolumeClaims \
                     ws-<id>-home in its workspace namespace"
                )?;
            }
            Ok(())
        }
        ClusterCommand::Placement { name, placement } => {
            let c = admin
                .set_cluster_placement(name, placement.to_placement()?)
                .await
                .map_err(call_error)?;
            print_cluster(out, &c)
        }
        ClusterCommand::Set {
            name,
            security_profile,
            manifest_out,
        } => {
            let c = admin
                .set_cluster_security_profile(name.clone(), parse_profile(&security_profile)?)
                .await
                .map_err(call_error)?;
            match &manifest_out {
                Some(path) => {
                    let created = admin
                        .create_cluster_token(name, "manifest".to_owned(), None)
                        .await
                        .map_err(call_error)?;
                    warn_about_manifest(&created.warnings);
                    write_private(path, created.manifest.as_bytes())?;
                    if out == Output::Table {
                        outln!(
                            "security profile {}; apply the new manifest: kubectl apply -f {}",
                            c.security_profile,
                            path.display()
                        )?;
                        return Ok(());
                    }
                }
                None if out == Output::Table => {
                    outln!(
                        "security profile {}; get a manifest that applies it with: lapdev cluster manifest {name} --manifest-out FILE",
                        c.security_profile
                    )?;
                    return Ok(());
                }
                None => {}
            }
            print_cluster(out, &c)
        }
        ClusterCommand::Cordon { name } => {
            let c = admin
                .set_cluster_cordoned(name, true)
                .await
                .map_err(call_error)?;
            print_cluster(out, &c)
        }
        ClusterCommand::Uncordon { name } => {
            let c = admin
                .set_cluster_cordoned(name, false)
                .await
                .map_err(call_error)?;
            print_cluster(out, &c)
        }
        ClusterCommand::Manifest {
            name,
            manifest_out,
            token_out,
            token_name,
        } => {
            let created = admin
                .create_cluster_token(name, token_name, None)
                .await
                .map_err(call_error)?;
            warn_about_manifest(&created.warnings);
            if let Some(path) = &token_out {
                write_private(path, format!("{}\n", created.token_secret).as_bytes())?;
            }
            match &manifest_out {
                Some(path) => {
                    write_private(path, created.manifest.as_bytes())?;
                    print_created_token(out, &created, token_out.is_some(), Some(path))
                }
                None => {
                    // The manifest is the output; it carries the token.
                    write!(stdout::out(), "{}", created.manifest)?;
                    Ok(())
                }
            }
        }
        ClusterCommand::Token(cmd) => token(admin, out, cmd).await,
    }
}

async fn token(admin: &AdminRpcClient, out: Output, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            cluster,
            name,
            expires_in_days,
            token_out,
        } => {
            let created = admin
                .create_cluster_token(
                    cluster,
                    name,
                    expires_in_days.map(|d| d.saturating_mul(86_400)),
                )
                .await
                .map_err(call_error)?;
            if let Some(path) = &token_out {
                write_private(path, format!("{}\n", created.token_secret).as_bytes())?;
            }
            print_created_token(out, &created, token_out.is_some(), None)
        }
        TokenCommand::List { cluster } => {
            let tokens = admin
                .list_cluster_tokens(cluster)
                .await
                .map_err(call_error)?;
            match out {
                Output::Json => print_json(&Value::Array(tokens.iter().map(token_json).collect())),
                Output::Table => {
                    let rows = tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.to_string(),
                                t.name.clone(),
                                format!("{}…", t.display_prefix),
                                ts(t.created_at),
                                opt_ts(t.last_used_at),
                                opt_ts(t.expires_at),
                                opt_ts(t.revoked_at),
                            ]
                        })
                        .collect();
                    print_table(
                        &[
                            "ID",
                            "NAME",
                            "PREFIX",
                            "CREATED",
                            "LAST USED",
                            "EXPIRES",
                            "REVOKED",
                        ],
                        rows,
                    )
                }
            }
        }
        TokenCommand::Revoke { cluster, token_id } => {
            admin
                .revoke_cluster_token(cluster, token_id)
                .await
                .map_err(call_error)?;
            done(
                out,
                json!({"id": token_id, "revoked": true}),
                &format!("token {token_id} revoked"),
            )
        }
    }
}

fn parse_profile(s: &str) -> anyhow::Result<lapdev_common::status::SecurityProfile> {
    s.parse()
        .map_err(|e| anyhow::anyhow!("--security-profile {s:?}: {e}"))
}

/// A cluster as `-o json` prints it.
pub fn cluster_json(c: &ClusterView) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "status": c.status,
        "kubernetes_version": c.kubernetes_version,
        "node_count": c.node_count,
        "cpu_capacity_millis": c.cpu_capacity_millis,
        "cpu_allocatable_millis": c.cpu_allocatable_millis,
        "memory_capacity_bytes": c.memory_capacity_bytes,
        "memory_allocatable_bytes": c.memory_allocatable_bytes,
        "provider": c.provider,
        "region": c.region,
        "manager_version": c.manager_version,
        "manifest_revision": c.manifest_revision,
        "security_profile": c.security_profile,
        "placement": placement::placement_json(c),
        "last_reported_at": c.last_reported_at,
        "cordoned": c.cordoned,
        "created_at": c.created_at,
        "deleted_at": c.deleted_at,
    })
}

fn token_json(t: &TokenView) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "display_prefix": t.display_prefix,
        "created_at": t.created_at,
        "last_used_at": t.last_used_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
    })
}

/// What the server said about a manifest it rendered, on stderr (so a
/// manifest or JSON on stdout stays clean), one `warning:` line each.
fn warn_about_manifest(warnings: &[ManifestWarningView]) {
    for w in warnings {
        eprintln!("warning: {}", w.message);
    }
}

fn print_created_cluster(
    out: Output,
    created: &CreatedCluster,
    manifest_written: Option<&PathBuf>,
    token_written: Option<&PathBuf>,
) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            let mut v = cluster_json(&created.cluster);
            if let Value::Object(m) = &mut v {
                m.insert("token".into(), json!(created.token_secret));
                m.insert("token_id".into(), json!(created.token.id));
                m.insert("manifest".into(), json!(created.manifest));
                m.insert("warnings".into(), json!(created.warnings));
            }
            print_json(&v)
        }
        Output::Table => {
            print_cluster(Output::Table, &created.cluster)?;
            let mut stdout = stdout::out();
            if let Some(file) = token_written {
                writeln!(
                    stdout,
                    "\nThe cluster token was written to {} (mode 0600).",
                    file.display()
                )?;
            } else {
                writeln!(
                    stdout,
                    "\nCluster token (shown this once, valid until revoked):\n  {}",
                    created.token_secret
                )?;
            }
            if let Some(file) = manifest_written {
                writeln!(
                    stdout,
                    "Install the manager: kubectl apply -f {}",
                    file.display()
                )?;
            } else {
                writeln!(
                    stdout,
                    "Get an install manifest (with a token of its own) with: lapdev cluster manifest {} --manifest-out {}-manager.yaml",
                    created.cluster.name, created.cluster.name
                )?;
            }
            Ok(())
        }
    }
}

fn print_created_token(
    out: Output,
    created: &CreatedToken,
    token_written: bool,
    manifest: Option<&PathBuf>,
) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            let mut v = token_json(&created.token);
            if let Value::Object(m) = &mut v {
                m.insert("token".into(), json!(created.token_secret));
                m.insert("manifest".into(), json!(created.manifest));
                m.insert("warnings".into(), json!(created.warnings));
            }
            print_json(&v)
        }
        Output::Table => {
            let mut stdout = stdout::out();
            writeln!(
                stdout,
                "token {} ({}) created",
                created.token.id, created.token.name
            )?;
            if !token_written {
                writeln!(stdout, "  {}", created.token_secret)?;
            }
            if let Some(path) = manifest {
                writeln!(stdout, "manifest written to {}", path.display())?;
            }
            Ok(())
        }
    }
}

fn print_cluster(out: Output, c: &ClusterView) -> anyhow::Result<()> {
    match out {
        Output::Json => print_json(&cluster_json(c)),
        Output::Table => print_fields(cluster_json(c)),
    }
}

fn print_cluster_table(clusters: &[ClusterView]) -> anyhow::Result<()> {
    let rows = clusters
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.status.to_string(),
                c.kubernetes_version.clone().unwrap_or_else(|| "-".into()),
                c.node_count.map_or("-".into(), |n| n.to_string()),
                c.cpu_allocatable_millis
                    .map_or("-".into(), |m| format!("{:.1}", m as f64 / 1000.0)),
                c.memory_allocatable_bytes.map_or("-".into(), |b| {
                    format!("{:.1}Gi", b as f64 / (1u64 << 30) as f64)
                }),
                c.provider.to_string(),
                c.region.clone().unwrap_or_else(|| "-".into()),
                if c.cordoned {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "STATUS", "VERSION", "NODES", "CPU", "MEMORY", "PROVIDER", "REGION", "CORDONED",
        ],
        rows,
    )
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut stdout = stdout::out();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(
        stdout,
        "{}",
        line(headers.iter().map(|h| (*h).to_owned()).collect())
    )?;
    for row in rows {
        writeln!(stdout, "{}", line(row))?;
    }
    Ok(())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut stdout = stdout::out();
    let mut text = serde_json::to_vec_pretty(v)?;
    text.push(b'\n');
    stdout.write_all(&text)?;
    Ok(())
}

fn done(out: Output, json: Value, text: &str) -> anyhow::Result<()> {
    match out {
        Output::Json => print_json(&json),
        Output::Table => {
            outln!("{text}")?;
            Ok(())
        }
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn opt_ts(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), ts)
}

/// Writes a file only its owner can read (it may carry a token).
fn write_private(path: &std::path::Path, contents: &[u8]) -> anyhow::Result<()> {
    crate::secret_file::write_private(path, contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn help_describes_the_cli_not_the_server() {
        let help = Cli::command().render_help().to_string();
        assert!(
            help.starts_with("Lapdev CLI: clusters, their tokens, workspaces"),
            "{help}"
        );
        assert!(!help.contains("central server"), "{help}");
    }
}
