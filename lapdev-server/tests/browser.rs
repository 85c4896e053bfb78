//! The dashboard in a real browser: Debian's `chromium` driven by npm's
//! `playwright-core` (`tests/browser/walk.mjs`), against the real server on
//! PostgreSQL, the Kubernetes API double and a real manager. The walk signs
//! in, connects a cluster and watches it turn connected without a reload,
//! creates and revokes a token on the cluster's page, creates a workspace and
//! watches it go running, runs a command in its terminal (resized, then
//! exited), stops, starts and deletes it, checks a validation error beside
//! its field, hostile text from an image name, axe-core on every page, a
//! member's view, and signs out; then two tabs of one browser: one event
//! stream between them (the server's `/metrics` gauge says 1), both update
//! live (the clusters list, the cluster's facts and workspaces), the last
//! tab keeps the stream; the providers page. Screenshots go to
//! `target/dashboard-screenshots/`.
//!
//! Without chromium or the npm packages this test FAILS with the command that
//! installs them (`.ci/run` runs both).

mod real;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lapdev_common::role::Role;
use lapdev_hrpc::Client;
use lapdev_server::auth::api::PeopleRpcClient;
use real::Env;

const CHROMIUM: &str = "/usr/bin/chromium";
const PASSWORD: &str = "a long enough password";

fn walk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails with the install command when chromium, node or the npm packages are
/// missing.
fn check_prerequisites() {
    let dir = walk_dir();
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push("apt-get install -y chromium".to_owned());
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("apt-get install -y nodejs npm".to_owned());
    }
    for package in ["playwright-core", "axe-core"] {
        if !dir.join("node_modules").join(package).exists() {
            missing.push(format!("(cd {} && npm ci)", dir.display()));
            break;
        }
    }
    assert!(
        missing.is_empty(),
        "the browser test needs what it is missing; install it with:\n  {}",
        missing.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_walk_in_chromium() {
    check_prerequisites();
    let env = Env::new().await;
    // The stand-in kubelet starts pods and ends deleted ones, as a node would.
    let kubelet = env
        .double
        .handle()
        .run_kubelet(lapdev_kube_double::KubeletConfig::default());
    // The terminal's commands run as local processes (on a pseudo-terminal),
    // as `lapdev workspace shell` does in the access tests.
    env.double.handle().enable_local_exec();
    // A known port: the public URL (the origin the CSRF rules expect) is
    // derived from the listen address, and port 0 would not be the page's.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_server, url) = env.server(port);
    let people = PeopleRpcClient::new(
        Client::http(&format!("{url}/rpc"))
            .unwrap()
            .with_timeout(Duration::from_secs(30))
            .with_header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {}", env.admin_token())).unwrap(),
            ),
    );
    for (name, role) in [("ada", Role::Admin), ("mel", Role::Member)] {
        people
            .create_user(name.into(), None, role, Some(PASSWORD.into()))
            .await
            .unwrap();
    }
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    let mut node = Command::new("node")
        .arg(walk_dir().join("walk.mjs"))
        .current_dir(walk_dir())
        .env("LAPDEV_URL", &url)
        .env("LAPDEV_PASSWORD", PASSWORD)
        .env("LAPDEV_ADMIN", "ada")
        .env("LAPDEV_MEMBER", "mel")
        .env("LAPDEV_SCREENSHOTS", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let stdout = node.stdout.take().unwrap();
    // The walk's lines, read on a thread; the manager starts when the page
    // shows the cluster token.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("walk: {line}");
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut manager = None;
    let mut steps = Vec::new();
    for line in lines_rx {
        if let Some(token) = line.strip_prefix("token ") {
            manager = Some(env.manager(&url, token.trim()));
        }
        steps.push(line);
    }
    let status = node.wait().unwrap();
    drop(manager);
    kubelet.abort();
    assert!(status.success(), "the walk failed after {steps:#?}");
    for step in [
        "ok manifest warnings",
        "ok cluster connected live",
        "ok cluster tokens",
        "ok cluster scheduling",
        "ok terminal runs a command",
        "ok terminal resizes",
        "ok terminal exit shown",
        "ok validation errors beside their fields",
        "ok workspace running live",
        "ok hostile text stays text",
        "ok stop and start",
        "ok delete",
        "ok users and audit pages",
        "ok signed out",
        "ok member sees only their own",
        "ok member tokens",
        "ok two tabs share one event stream",
        "ok both tabs update live",
        "ok the last tab keeps the stream",
        "ok providers and clusters pages",
        "ok done",
    ] {
        assert!(
            steps.iter().any(|s| s == step),
            "the walk never said {step:?}"
        );
    }
    for shot in [
        "clusters-1280.png",
        "workspaces-1280.png",
        "workspaces-390.png",
    ] {
        assert!(shots.join(shot).exists(), "no screenshot {shot}");
    }
}
