//! `pods/exec` through kube's `Api::exec` (WebSocket, v5 with v4 fallback) and
//! `kubectl exec`: local processes in a scratch directory, a pty for TTYs,
//! the real errors, RBAC on `pods/exec`.

use std::time::Duration;

use futures::SinkExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, AttachedProcess, TerminalSize};
use lapdev_kube_double::{KubeDouble, NodeSpec, Verb};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `Status` of a refused request (streams have no `Debug`).
pub fn refused<T>(r: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        Err(e) => panic!("expected an API error, got {e}"),
        Ok(_) => panic!("expected an API error, the request succeeded"),
    }
}

/// A double with local exec on, a node, and the running pod `default/box`.
pub async fn running_box() -> (KubeDouble, Api<Pod>) {
    let double = KubeDouble::start().await.unwrap();
    double.add_node("n1", NodeSpec::default()).unwrap();
    let mut pod = crate::pod("box");
    pod.metadata.namespace = Some("default".into());
    pod.spec.as_mut().unwrap().node_name = Some("n1".into());
    double.seed_running_pod(&pod).unwrap();
    double.enable_local_exec();
    let pods = Api::namespaced(double.client().await.unwrap(), "default");
    (double, pods)
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

async fn read_all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut out).await.unwrap();
    }
    out
}

/// Stdout, stderr and the final `Status` of a finished process.
async fn finish(mut p: AttachedProcess) -> (Vec<u8>, Vec<u8>, Status) {
    let status = p.take_status().unwrap();
    let (out, err) = tokio::join!(read_all(p.stdout()), read_all(p.stderr()));
    let status = status.await.expect("a status on channel 3");
    p.join().await.unwrap();
    (out, err, status)
}

fn is_success(s: &Status) -> bool {
    s.status.as_deref() == Some("Success")
}

/// The exit code a `Status` carries (0 for `Success`).
fn exit_code(s: &Status) -> Option<String> {
    if is_success(s) {
        return Some("0".into());
    }
    assert_eq!(s.reason.as_deref(), Some("NonZeroExitCode"), "{s:?}");
    let causes = s.details.as_ref()?.causes.clone()?;
    causes
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.clone())
}

#[tokio::test]
async fn stdout_and_stderr_stay_apart_and_the_exit_code_comes_back() {
    let (double, pods) = running_box().await;
    let p = pods
        .exec(
            "box",
            sh("echo out; echo err >&2; pwd; exit 3"),
            &AttachParams::default().stderr(true),
        )
        .await
        .unwrap();
    let (out, err, status) = finish(p).await;
    let dir = double.scratch_dir("default", "box");
    let expected = format!("out\n{}\n", dir.canonicalize().unwrap().display());
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    assert_eq!(err, b"err\n");
    assert_eq!(exit_code(&status).as_deref(), Some("3"));
    let p = pods
        .exec("box", sh("true"), &AttachParams::default())
        .await
        .unwrap();
    assert!(is_success(&finish(p).await.2));
    assert_eq!(double.request_count_for(Verb::Get, "pods/exec"), 2);
}

#[tokio::test]
async fn stdin_end_of_input_ends_cat_on_v5() {
    let (_double, pods) = running_box().await;
    let mut p = pods
        .exec("box", ["cat"], &AttachParams::default().stdin(true))
        .await
        .unwrap();
    let mut stdin = p.stdin().unwrap();
    stdin.write_all(b"hello, ").await.unwrap();
    stdin.write_all(b"world").await.unwrap();
    // End of input: kube sends v5's close of channel 0.
    stdin.shutdown().await.unwrap();
    let (out, _, status) = tokio::time::timeout(Duration::from_secs(30), finish(p))
        .await
        .expect("cat ends once stdin is closed");
    assert_eq!(out, b"hello, world");
    assert!(is_success(&status), "{status:?}");
}

#[tokio::test]
async fn eight_mib_through_exec_stdin_and_stdout_arrive_intact() {
    let (_double, pods) = running_box().await;
    let mut data = vec![0u8; 8 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let sent = Sha256::digest(&data);
    let mut p = pods
        .exec("box", ["cat"], &AttachParams::default().stdin(true))
        .await
        .unwrap();
    let mut stdin = p.stdin().unwrap();
    let writer = tokio::spawn(async move {
        stdin.write_all(&data).await.unwrap();
        stdin.shutdown().await.unwrap();
    });
    let (out, _, status) = finish(p).await;
    writer.await.unwrap();
    assert_eq!(out.len(), 8 * 1024 * 1024);
    assert_eq!(Sha256::digest(&out), sent);
    assert!(is_success(&status));
}

#[tokio::test]
async fn a_tty_session_sees_the_resize() {
    let (_double, pods) = running_box().await;
    let ap = AttachParams::interactive_tty();
    let mut p = pods
        .exec("box", sh("while read l; do stty size; done"), &ap)
        .await
        .unwrap();
    let mut resize = p.terminal_size().unwrap();
    let mut stdin = p.stdin().unwrap();
    let mut stdout = p.stdout().unwrap();
    resize
        .send(TerminalSize {
            width: 123,
            height: 45,
        })
        .await
        .unwrap();
    // Ask for the size until the resize has been applied (frames on one
    // connection are ordered, but kube's loop may send the line first).
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("45 123") {
            stdin.write_all(b"x\n").await.unwrap();
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "the terminal closed early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
    .await
    .expect("stty size shows the new size");
    assert!(seen.contains("45 123"));
    drop(stdin);
    drop(resize);
    p.abort();
}

#[tokio::test]
async fn an_older_server_without_v5_still_reports_the_exit_code_over_v4() {
    let (double, pods) = running_box().await;
    double.set_exec_v5(false);
    let p = pods
        .exec(
            "box",
            sh("echo out; echo err >&2; exit 7"),
            &AttachParams::default().stderr(true),
        )
        .await
        .unwrap();
    let (out, err, status) = finish(p).await;
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(exit_code(&status).as_deref(), Some("7"));
}

#[tokio::test]
async fn exec_errors_are_the_real_ones() {
    let (double, pods) = running_box().await;
    let ap = AttachParams::default();
    let s = refused(
        pods.exec("box", ["true"], &AttachParams::default().container("nope"))
            .await,
    );
    assert_eq!(
        (s.code, s.message.as_str()),
        (400, "container nope is not valid for pod box")
    );
    let s = refused(pods.exec("ghost", ["true"], &ap).await);
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));

    // Created but not scheduled: no host to ask.
    let client = double.client().await.unwrap();
    let api: Api<Pod> = Api::namespaced(client, "default");
    api.create(&Default::default(), &crate::pod("pending"))
        .await
        .unwrap();
    let s = refused(api.exec("pending", ["true"], &ap).await);
    assert_eq!(
        (s.code, s.message.as_str()),
        (400, "pod pending does not have a host assigned")
    );
    // Bound but its container is not running: the kubelet's error, relayed.
    double.bind_pod("default", "pending", "n1").unwrap();
    let p = api.exec("pending", ["true"], &ap).await.unwrap();
    let (_, _, s) = finish(p).await;
    assert_eq!(s.code, Some(500));
    assert_eq!(
        s.message.as_deref().unwrap_or(""),
        "Internal error occurred: unable to upgrade connection: container not found (\"main\")"
    );

    double.disable_local_exec();
    let s = refused(pods.exec("box", ["true"], &ap).await);
    assert_eq!(s.code, 403);
    assert!(s.message.contains("enable_local_exec"), "{}", s.message);
    assert!(s.message.contains("--allow-local-exec"), "{}", s.message);
}

#[tokio::test]
async fn failure_injection_reaches_exec() {
    let (double, pods) = running_box().await;
    double.fail_next_matching(1, 500, Some(Verb::Get), Some("pods/exec"));
    let s = refused(pods.exec("box", ["true"], &AttachParams::default()).await);
    assert_eq!(s.code, 500);
    let p = pods
        .exec("box", ["true"], &AttachParams::default())
        .await
        .unwrap();
    assert!(is_success(&finish(p).await.2));
}

/// A ServiceAccount whose Role in `default` grants `rules`.
pub async fn service_account(double: &KubeDouble, rules: serde_json::Value) -> kube::Client {
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "manager", "namespace": "default"}}))
            .unwrap();
    double.create(&sa).unwrap();
    let role: Role = serde_json::from_value(
        json!({"metadata": {"name": "manager", "namespace": "default"}, "rules": rules}),
    )
    .unwrap();
    double.create(&role).unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "manager", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "manager"},
        "subjects": [{"kind": "ServiceAccount", "name": "manager", "namespace": "default"}],
    }))
    .unwrap();
    double.create(&binding).unwrap();
    double.enable_rbac();
    double
        .service_account_client("default", "manager")
        .await
        .unwrap()
}

#[tokio::test]
async fn rbac_authorises_the_upgrade_as_get_on_pods_exec() {
    let (double, _) = running_box().await;
    // `create` alone does not open a WebSocket on servers before 1.35.
    let sa = service_account(
        &double,
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
        ]),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(sa, "default");
    let s = refused(pods.exec("box", ["true"], &AttachParams::default()).await);
    assert_eq!(s.code, 403);
    assert_eq!(
        s.message,
        "pods \"box\" is forbidden: User \"system:serviceaccount:default:manager\" cannot get resource \"pods/exec\" in API group \"\" in the namespace \"default\""
    );
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "exec", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}],
    }))
    .unwrap();
    double.create(&role).unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "exec", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec"},
        "subjects": [{"kind": "ServiceAccount", "name": "manager", "namespace": "default"}],
    }))
    .unwrap();
    double.create(&binding).unwrap();
    let p = pods
        .exec("box", ["true"], &AttachParams::default())
        .await
        .unwrap();
    assert!(is_success(&finish(p).await.2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_keeps_streams_apart_and_exits_with_the_code() {
    let (double, _) = running_box().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str], input: &[u8]| {
            let mut child = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl is installed");
            let mut stdin = child.stdin.take().unwrap();
            std::io::Write::write_all(&mut stdin, input).unwrap();
            drop(stdin);
            child.wait_with_output().unwrap()
        };
        (
            run(
                &[
                    "exec",
                    "box",
                    "--",
                    "sh",
                    "-c",
                    "echo out; echo err >&2; exit 3",
                ],
                b"",
            ),
            run(&["exec", "-i", "box", "--", "cat"], b"piped through\n"),
        )
    })
    .await
    .unwrap();
    let (failing, cat) = out;
    assert_eq!(failing.status.code(), Some(3), "{failing:?}");
    assert_eq!(failing.stdout, b"out\n");
    assert!(
        String::from_utf8_lossy(&failing.stderr).starts_with("err\n"),
        "{failing:?}"
    );
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(cat.stdout, b"piped through\n");
}

#[tokio::test]
async fn a_post_is_authorised_as_create_and_told_there_is_no_spdy() {
    use tower::ServiceExt;
    let (double, _) = running_box().await;
    let sa = service_account(
        &double,
        json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}]),
    )
    .await;
    drop(sa); // the token below is a second one for the same account
    let token = double.service_account_token("default", "manager");
    let post = |token: &str| {
        http::Request::post("/api/v1/namespaces/default/pods/box/exec?command=true&stdout=true")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let res = double.router().oneshot(post(&token)).await.unwrap();
    assert_eq!(res.status(), 403);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("cannot create resource \\\"pods/exec\\\""),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // The admin passes RBAC and learns that SPDY is not spoken.
    let res = double.router().oneshot(post("")).await.unwrap();
    assert_eq!(res.status(), 400);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("not SPDY"));
    assert_eq!(double.request_count_for(Verb::Create, "pods/exec"), 2);
}

/// Whether a process is gone (or only a zombie waiting for its reaper).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn until_gone(pid: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !gone(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("process {pid} is still running"));
}

#[tokio::test]
async fn an_exec_leaves_nothing_running_behind() {
    let (_double, pods) = running_box().await;
    // The command ends while a background child holds its stdout: the
    // session still ends, and the child goes with it.
    let p = pods
        .exec("box", sh("sleep 600 & echo $!"), &AttachParams::default())
        .await
        .unwrap();
    let (out, _, status) = tokio::time::timeout(Duration::from_secs(30), finish(p))
        .await
        .expect("the exec ends with its command");
    assert!(is_success(&status));
    until_gone(String::from_utf8(out).unwrap().trim()).await;

    // The client goes away mid-command: the command and its children go too.
    let mut p = pods
        .exec(
            "box",
            sh("sleep 600 & echo $!; wait"),
            &AttachParams::default(),
        )
        .await
        .unwrap();
    let mut stdout = p.stdout().unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stdout.read(&mut byte).await.unwrap(), 1);
        line.push(byte[0]);
    }
    let pid = String::from_utf8(line).unwrap().trim().to_owned();
    assert!(!gone(&pid));
    p.abort();
    drop(p);
    until_gone(&pid).await;
}
