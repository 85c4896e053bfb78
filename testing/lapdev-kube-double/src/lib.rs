//! A test double of the Kubernetes API server, for tests that run the real `kube`
//! client over real HTTP. It is not a cluster: nothing runs containers.
//!
//! [`KubeDouble::start`] serves the API over plain HTTP on a random loopback port
//! and generates a kubeconfig for it; [`KubeDouble::client`] builds a
//! `kube::Client` from that kubeconfig through kube's normal config path, and
//! `kubectl --kubeconfig <file>` works too. The [`DoubleHandle`] plays the parts
//! of the cluster that are not API clients: nodes, the kubelet, the scheduler,
//! failures, RBAC denials.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::Pod;
//! use lapdev_kube_double::{KubeDouble, NodeSpec};
//!
//! let double = KubeDouble::start().await?;
//! double.add_node("node-1", NodeSpec::default())?;
//! let pods: kube::Api<Pod> = kube::Api::namespaced(double.client().await?, "default");
//! assert!(pods.list(&Default::default()).await?.items.is_empty());
//! # Ok(()) }
//! ```
//!
//! # What it serves
//!
//! - `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`
//!   (legacy discovery, which both kube and kubectl use when aggregated discovery is
//!   not offered), `/healthz`, `/readyz`, `/livez`.
//! - core/v1 `namespaces`, `nodes`, `pods`, `persistentvolumeclaims`, `events`,
//!   `services`, `configmaps`, `secrets`, `serviceaccounts`; `coordination.k8s.io/v1`
//!   `leases`; `events.k8s.io/v1` `events` (what kube's event `Recorder` writes);
//!   `apps/v1` `deployments`; `networking.k8s.io/v1` `networkpolicies` (stored
//!   and validated, not enforced: the double has no pod network); `storage.k8s.io/v1`
//!   `storageclasses`;
//!   `rbac.authorization.k8s.io/v1` roles, cluster roles
//!   and their bindings (enforced once RBAC is enabled, see below). All at the
//!   real namespaced and cluster-scoped paths, with `/status` for namespaces, nodes, pods, PVCs,
//!   services and deployments, and `pods/NAME/binding` (create only; 409
//!   `Conflict` for a pod already bound elsewhere or being deleted).
//! - `pods/NAME/exec` and `pods/NAME/portforward` over the WebSocket
//!   subprotocols kube's `ws` feature and `kubectl exec` use (module `stream`):
//!   exec with `v5.channel.k8s.io` (stdin end-of-input) or `v4.channel.k8s.io`
//!   (exit code in the channel-3 `Status`: `NonZeroExitCode` with an
//!   `ExitCode` cause), resize on channel 4, a pseudo-terminal for `tty=true`;
//!   the command runs as a LOCAL process in a per-pod scratch directory
//!   ([`DoubleHandle::scratch_dir`]), and only once a test enables it
//!   ([`DoubleHandle::enable_local_exec`], [`Config::local_exec`], the dev
//!   binary's `--allow-local-exec`): otherwise 403. Port-forward
//!   (`v4.channel.k8s.io`) connects to the address a test registered for the
//!   pod's port ([`DoubleHandle::register_pod_port`], or
//!   [`DoubleHandle::forward_unregistered_ports`]); a port nothing listens on
//!   gets the kubelet's `connection refused` message on its error channel.
//!   RBAC sees them as `pods/exec` and `pods/portforward`, verb `get` for the
//!   WebSocket upgrade (what API servers before 1.35 check; 1.35 asks for
//!   `create` too) and `create` for POST. SPDY is not spoken: POST answers 400,
//!   so `kubectl port-forward` (SPDY tunnelled in a WebSocket since 1.31, then
//!   plain SPDY) does not work; `kubectl exec` does.
//! - A minimal `/openapi/v3` (operations and parameters, no schemas), enough for
//!   `kubectl apply` (client- and server-side) to leave validation to the server.
//! - get, list (`labelSelector` with equality and set-based requirements,
//!   `fieldSelector` on `metadata.name`, `metadata.namespace` and the extra fields
//!   the real server indexes, e.g. `spec.nodeName` and `status.phase` for pods;
//!   `limit`/`continue` paging with `remainingItemCount`), watch, create, update,
//!   patch (JSON merge, strategic merge, JSON patch, server-side apply), delete
//!   (with preconditions), deletecollection, `dryRun=All`.
//! - `Table` responses for kubectl and `PartialObjectMetadata` for metadata-only clients.
//! - Errors as `Status` objects with the real `reason` and `code`.
//! - Test controls on [`DoubleHandle`]: nodes with capacity, pod phases and
//!   conditions (as a kubelet reports them), a stand-in kubelet and scheduler
//!   ([`DoubleHandle::run_kubelet`]), failures for every request or the next few
//!   (optionally only for one verb/resource), hanging, latency, dropped watches,
//!   403 denials per verb and resource, request counts per verb.
//! - A stand-in kubelet that fails pods as real kubelets do, with their status,
//!   container statuses and core/v1 Events (`involvedObject`, `source`, `count`
//!   and `lastTimestamp` counted up on repeats, selectable by
//!   `involvedObject.name`/`involvedObject.uid`):
//!   [`DoubleHandle::kubelet_fail_image_pull`] (`ErrImagePull` and
//!   `ImagePullBackOff` alternating on each [`DoubleHandle::kubelet_retry`]),
//!   [`DoubleHandle::kubelet_fail_invalid_image`], [`DoubleHandle::kubelet_crash_loop`]
//!   (`CrashLoopBackOff`, `lastState.terminated` `OOMKilled` or `Error`, back-off
//!   10s doubling to 5m0s), [`DoubleHandle::kubelet_evict`],
//!   [`DoubleHandle::kubelet_fail_volume_attach`] (`FailedAttachVolume`,
//!   `FailedMount`), and [`DoubleHandle::kubelet_recover`].
//! - Lost nodes ([`DoubleHandle::set_node_lost`]: conditions `Unknown`,
//!   unreachable taints, graceful pod deletion that never completes), taints
//!   ([`DoubleHandle::taint_node`], e.g. [`OUT_OF_SERVICE`]), and the pod garbage
//!   collector ([`DoubleHandle::set_pod_gc`]). The stand-in scheduler records
//!   `Scheduled` and `FailedScheduling` Events.
//! - A stand-in cluster-autoscaler with one node group
//!   ([`DoubleHandle::enable_autoscaler`]): a pod no node fits gets
//!   `TriggeredScaleUp` when a node of the group's template would take it and
//!   the group is below its maximum, else `NotTriggerScaleUp` with the
//!   autoscaler's reasons; the triggered nodes appear on
//!   [`DoubleHandle::complete_scale_up`]. Raising the group's limit
//!   ([`DoubleHandle::set_autoscaler_max_nodes`]) looks again at the pods
//!   declined before.
//!
//! Note that kube's default client retries 429, 503 and 504 answers (up to 15
//! times, with exponential backoff from 5 ms): a test that wants the caller to see
//! a failure should inject 500, or more 503s than the client retries.
//!
//! # What is simplified compared to a real API server
//!
//! - Authentication and authorization are off unless a test calls
//!   [`DoubleHandle::enable_rbac`]: then ServiceAccount tokens
//!   ([`DoubleHandle::service_account_token`],
//!   [`KubeDouble::service_account_kubeconfig`],
//!   [`KubeDouble::service_account_client`]) are authorised from the stored
//!   Roles, ClusterRoles and bindings (verbs incl. `*`, API groups, resources
//!   with subresources such as `pods/binding`, `resourceNames`), denials are the
//!   RBAC authorizer's 403 and unknown tokens 401; requests without a token or
//!   with the admin kubeconfig's stay cluster-admin. No bootstrap roles but
//!   open discovery, no role aggregation, no escalation checks, no
//!   impersonation; tokens are opaque strings, not JWTs. A test can also deny a
//!   verb with [`DoubleHandle::deny`]. Plain HTTP only, no TLS.
//! - JSON only; protobuf and CBOR are not offered. Aggregated discovery
//!   (`apidiscovery.k8s.io`) and OpenAPI documents are not served; clients fall
//!   back to legacy discovery as they do with older servers.
//! - Lists are read from the current state. A `continue` token carries the
//!   resourceVersion of its first page (and is 410 `Expired` once that has left
//!   the history), but later pages show the current state rather than a snapshot.
//!   `resourceVersionMatch=Exact` is only served for the current resourceVersion
//!   (older ones are 410), and a resourceVersion ahead of the store is 504 at once
//!   instead of after a wait.
//! - Watches are served from a bounded event history ([`Config::history`]); older
//!   starting points get an `ERROR` event with a 410 `Expired` `Status`, as after an
//!   etcd compaction. Bookmarks are sent every [`Config::bookmark_interval`] (the real
//!   server sends about one a minute).
//! - Strategic merge patch knows the merge keys of the lists in pods, services and
//!   metadata (containers, volumes, env, ports, volume mounts, conditions,
//!   finalizers); other lists are replaced as in a JSON merge patch.
//! - Server-side apply tracks ownership per field manager at field granularity,
//!   with every list owned as a whole (the real server tracks items of keyed
//!   lists separately). `managedFields` are written in the `FieldsV1` format with
//!   `f:` keys only.
//! - Pod deletion follows the pod registry: a pod bound to a node and not
//!   finished gets `deletionTimestamp` and `deletionGracePeriodSeconds` (its
//!   `terminationGracePeriodSeconds`, or the request's `gracePeriodSeconds`) and
//!   stays (its name taken) until its kubelet confirms with a grace-0 delete: the
//!   stand-in kubelet does that after its delay (never on a node lost with
//!   [`DoubleHandle::set_node_lost`]), a test with
//!   [`DoubleHandle::terminate_pod`] ([`Config::graceful_pod_deletion`] turns
//!   this off). The pod garbage collector force-deletes the pods of a deleted
//!   node and the terminating pods of an out-of-service node at once (the real
//!   one runs every 20 s and waits 40 s before deleting orphans); the taint
//!   manager's `NoExecute` evictions (after 300 s of `unreachable`) are not modelled. Unbound or finished pods, and grace 0, go at once. Other objects are deleted at once unless finalizers hold them
//!   (`deletionTimestamp` until the last finalizer is removed). Deleting a
//!   namespace removes its contents at once (the real namespace controller does it
//!   in the background). No owner-reference garbage collection.
//! - PVCs get the `kubernetes.io/pvc-protection` finalizer and are kept while a pod
//!   that is not `Succeeded`/`Failed` in their namespace mounts them, like the
//!   pvc-protection controller. A claim's spec is immutable but for a bound
//!   claim's storage request, which may not shrink (422, `field can not be less
//!   than previous value`) and may only grow when its StorageClass has
//!   `allowVolumeExpansion: true` (the `PersistentVolumeClaimResize` plugin's 403
//!   otherwise); a claim without `storageClassName` gets the default class
//!   ([`DoubleHandle::add_storage_class`], `DefaultStorageClass`). Nothing
//!   provisions volumes; the stand-in kubelet ([`DoubleHandle::run_kubelet`])
//!   marks claims `Bound` (no PersistentVolume objects), a `WaitForFirstConsumer`
//!   claim only once a pod using it is bound to a node (until then `Pending` with a
//!   `WaitForFirstConsumer` Event), and sets a grown claim's capacity at once.
//!   A claim whose class does not exist binds like an `Immediate` one.
//! - Validation covers names, labels, quantities (a malformed quantity is a 400
//!   `BadRequest` decode error as on a real server; a negative request or a request
//!   over its limit is 422 `Invalid`), pods (containers, images, volumes), PVCs,
//!   services, and the immutability of pod and PVC specs. Fields the
//!   Kubernetes type does not have are dropped on write, as the real decoder drops
//!   them, and `fieldValidation=Strict` refuses them (400, `strict decoding error`);
//!   both follow the k8s-openapi `v1_33` types. Admission plugins: namespace
//!   existence, pvc-protection, `DefaultStorageClass`,
//!   `PersistentVolumeClaimResize`, and `PodSecurity` on pod create (the
//!   namespace label [`ENFORCE_LABEL`] `baseline`/`restricted`, with the real
//!   403 message; host namespaces and ports, privileged, capabilities, volume
//!   types, allowPrivilegeEscalation, runAsNonRoot, runAsUser 0 and seccomp are
//!   checked; AppArmor, SELinux, procMount and sysctls, the `warn`/`audit` modes
//!   and exemptions are not). No quota, limit ranges or service account token
//!   injection; no scheduler or controllers unless the stand-in kubelet runs.
//!   Its scheduler places a pod on a node that passes the real scheduler's
//!   filters in its order: not cordoned (unless tolerated), no untolerated
//!   `NoSchedule`/`NoExecute` taint (a not-Ready node without one counts as
//!   tainted `node.kubernetes.io/not-ready`), `nodeSelector` and required node
//!   affinity (e.g. `kubernetes.io/arch`), and allocatable CPU and memory that
//!   still fit the pod's requests (counted as the scheduler counts them: sidecar
//!   init containers added, the largest init container, `spec.overhead`;
//!   spreading pods in turn); otherwise it leaves
//!   the pod `Pending` with `PodScheduled=False`/`Unschedulable` and a
//!   `FailedScheduling` Event with the real message (`0/3 nodes are available:
//!   ...`, without the preemption part), retrying when nodes change or pods go.
//!   No preferred affinity, pod (anti-)affinity, topology spread, host ports,
//!   volume topology or preemption, and no `DefaultTolerationSeconds`
//!   tolerations are added to pods. The stand-in kubelet's failures are
//!   played by the test (each retry is a call, not a timer), and it writes the
//!   Events of failures only, not `Pulling`/`Created`/`Started` of every start.
//!   No owner-reference garbage collection.
//! - `events.k8s.io/v1` and core/v1 events are stored apart (the real server
//!   serves one storage under both).
//! - Exec has no container: the command runs on this machine as this
//!   process's user, with its environment (plus `TERM=xterm` on a TTY), in a
//!   scratch directory; no image, namespaces or limits. A TTY's stdin
//!   end-of-input is a Ctrl-D typed on the terminal. A client that leaves
//!   kills the command. Exec on a bound pod whose container is not running
//!   is upgraded and then answered on the status channel with the
//!   `InternalError` the real stream translator relays (`unable to upgrade
//!   connection: container not found ("main")`); port-forward to a pod that
//!   is not `Running` gets a `failed to find sandbox` error per port.
//!   `v5.channel.k8s.io` can be withdrawn to play an API server before 1.30
//!   ([`DoubleHandle::set_exec_v5`]). Base64 channel protocols and
//!   `pods/attach` are not served.

mod admission;
mod autoscaler;
mod control;
mod error;
mod events;
mod handle;
mod kubeconfig;
mod kubelet;
mod kubelet_faults;
mod node_faults;
mod object;
mod openapi;
mod patch;
mod pod_security;
mod rbac;
mod resource;
mod scheduler;
mod selector;
mod server;
mod storage;
mod store;
mod stream;
mod table;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use admission::DEFAULT_CLASS_ANNOTATION;
pub use autoscaler::{NODE_GROUP_LABEL, NodeGroup};
pub use control::{FailureMode, Verb};
pub use error::{ApiError, Cause, HandleError, StartError};
pub use handle::{DoubleHandle, KubeletConfig, NodeSpec};
pub use node_faults::{OUT_OF_SERVICE, UNREACHABLE};
pub use pod_security::{ENFORCE_LABEL, ENFORCE_VERSION_LABEL};
pub use resource::{RESOURCES, ResourceDef};
pub use storage::SELECTED_NODE;
pub use validate::parse_quantity;

/// How to start the double.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// How many watch events to keep for watches that resume from a resourceVersion.
    pub history: usize,
    /// How often watches with bookmarks get a `BOOKMARK` event.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` stays open.
    pub default_watch_timeout: Duration,
    /// The Kubernetes version `/version` and the nodes report.
    pub kubernetes_version: String,
    /// Namespaces to create at start.
    pub namespaces: Vec<String>,
    /// Whether deleting a pod bound to a node waits for its kubelet (as on a
    /// real cluster); when `false`, every pod is deleted at once.
    pub graceful_pod_deletion: bool,
    /// Whether `pods/exec` runs commands as local processes from the start
    /// (see [`DoubleHandle::enable_local_exec`]); off by default.
    pub local_exec: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: 100_000,
            bookmark_interval: Duration::from_secs(5),
            default_watch_timeout: Duration::from_secs(1800),
            kubernetes_version: "v1.33.0".to_owned(),
            namespaces: ["default", "kube-system", "kube-public", "kube-node-lease"]
                .map(str::to_owned)
                .to_vec(),
            graceful_pod_deletion: true,
            local_exec: false,
        }
    }
}

/// A running double: an HTTP server on a loopback port plus its state.
///
/// Dropping it stops the server and ends every open watch.
#[derive(Debug)]
pub struct KubeDouble {
    addr: SocketAddr,
    handle: DoubleHandle,
    state: server::AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl KubeDouble {
    /// Starts a double with the default [`Config`] on `127.0.0.1:0`.
    pub async fn start() -> Result<Self, StartError> {
        Self::start_with(Config::default()).await
    }

    /// Starts a double with `config`.
    pub async fn start_with(config: Config) -> Result<Self, StartError> {
        let store = Arc::new(store::Store::new(
            config.history,
            config.graceful_pod_deletion,
        ));
        let control = Arc::new(control::Control::default());
        let handle = DoubleHandle {
            store: store.clone(),
            control: control.clone(),
            kubernetes_version: config.kubernetes_version.clone(),
            scheduler: Arc::default(),
            autoscaler: Arc::default(),
            kubelet: Arc::default(),
            auth: Arc::default(),
            streams: Arc::new(stream::Streams::new(config.local_exec)),
        };
        for ns in &config.namespaces {
            handle
                .create_namespace(ns)
                .map_err(|e| StartError::Seed(e, ns.clone()))?;
        }
        let state = server::AppState {
            store,
            control,
            settings: Arc::new(server::ServerSettings {
                git_version: config.kubernetes_version.clone(),
                bookmark_interval: config.bookmark_interval,
                default_watch_timeout: config.default_watch_timeout,
            }),
            handle: handle.clone(),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(e, config.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(e, config.listen))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let control = handle.control.clone();
        let router = server::app(state.clone());
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
                control.drop_watches();
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "the Kubernetes API double stopped serving");
            }
        });
        Ok(Self {
            addr,
            handle,
            state,
            shutdown: Some(tx),
        })
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) whose current context points at this double.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig::render(&self.url())
    }

    /// Writes the kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), StartError> {
        std::fs::write(path, self.kubeconfig_yaml())
            .map_err(|e| StartError::WriteKubeconfig(e, path.to_owned()))
    }

    /// A kubeconfig (YAML) whose user is the ServiceAccount `namespace/name`,
    /// with a new token from [`DoubleHandle::service_account_token`]; RBAC
    /// applies to it once [`DoubleHandle::enable_rbac`] was called.
    pub fn service_account_kubeconfig_yaml(&self, namespace: &str, name: &str) -> String {
        let token = self.handle.service_account_token(namespace, name);
        kubeconfig::render_with_token(&self.url(), &token)
    }

    /// Writes [`KubeDouble::service_account_kubeconfig_yaml`] to a file in the
    /// system's temporary directory and returns its path (e.g. for `KUBECONFIG`
    /// of a manager process that runs as that ServiceAccount).
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<std::path::PathBuf, StartError> {
        let path = std::env::temp_dir().join(format!(
            "lapdev-kube-double-{}-{namespace}-{name}-{}.kubeconfig",
            self.addr.port(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, self.service_account_kubeconfig_yaml(namespace, name))
            .map_err(|e| StartError::WriteKubeconfig(e, path.clone()))?;
        Ok(path)
    }

    /// A `kube::Client` that acts as the ServiceAccount `namespace/name`.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, StartError> {
        Self::client_from(&self.service_account_kubeconfig_yaml(namespace, name)).await
    }

    /// A `kube::Client` built from the generated kubeconfig through kube's own
    /// config path (`Kubeconfig` → `Config` → `Client`), as an application would.
    pub async fn client(&self) -> Result<kube::Client, StartError> {
        Self::client_from(&self.kubeconfig_yaml()).await
    }

    async fn client_from(yaml: &str) -> Result<kube::Client, StartError> {
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(yaml).map_err(StartError::LoadKubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(StartError::LoadKubeconfig)?;
        kube::Client::try_from(config).map_err(StartError::BuildClient)
    }

    /// The API as an `axum::Router` over the same state, for tests that drive
    /// it in-process (e.g. with `tower::ServiceExt::oneshot`) without a socket.
    pub fn router(&self) -> axum::Router {
        server::app(self.state.clone())
    }

    /// A cloneable handle on the double's state, for background tasks.
    pub fn handle(&self) -> DoubleHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for KubeDouble {
    type Target = DoubleHandle;

    fn deref(&self) -> &DoubleHandle {
        &self.handle
    }
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Exec's scratch directories; a process still running there keeps
        // what it has open, as on any Unix file system.
        let _ = std::fs::remove_dir_all(&self.handle.streams.scratch_root);
    }
}
