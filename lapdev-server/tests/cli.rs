//! The real `lapdev` binary against a real server: JSON shapes, tables, files,
//! and one-line errors with a non-zero exit. The runtime is multi-threaded: the
//! blocking child process must not stall the in-process server.

mod common;

use std::process::{Command, Output};

use common::{TestServer, sample_info};
use serde_json::Value;

fn lapdev(t: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &t.admin_token)
        .output()
        .expect("the lapdev binary runs")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "lapdev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_speak_json() {
    let t = TestServer::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.yaml");

    let created = json(&lapdev(
        &t,
        &[
            "cluster",
            "create",
            "dev-eu",
            "--region",
            "europe-west4",
            "-o",
            "json",
            "--manifest-out",
            manifest.to_str().unwrap(),
        ],
    ));
    for field in [
        "id",
        "name",
        "status",
        "kubernetes_version",
        "node_count",
        "cpu_capacity_millis",
        "cpu_allocatable_millis",
        "memory_capacity_bytes",
        "memory_allocatable_bytes",
        "provider",
        "region",
        "manager_version",
        "last_reported_at",
        "cordoned",
        "token",
        "manifest",
    ] {
        assert!(
            created.get(field).is_some(),
            "missing field {field}: {created}"
        );
    }
    assert_eq!(created["name"], "dev-eu");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["provider"], "unknown");
    assert_eq!(created["last_reported_at"], Value::Null);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("lapdev_ct_"));
    let written = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(written, created["manifest"].as_str().unwrap());
    assert!(written.contains(&token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&manifest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the manifest carries a token");
    }

    // The manager reports; the CLI shows it.
    t.cluster_client(&token)
        .report_cluster_info(sample_info())
        .await
        .unwrap();
    let got = json(&lapdev(&t, &["cluster", "get", "dev-eu", "-o", "json"]));
    assert_eq!(got["kubernetes_version"], "v1.30.2");
    assert_eq!(got["node_count"], 3);
    assert_eq!(got["provider"], "gcp");
    assert_eq!(got["region"], "europe-west1");
    let reported = got["last_reported_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(reported).is_ok(),
        "{reported}"
    );

    let listed = json(&lapdev(&t, &["cluster", "list", "-o", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let cordoned = json(&lapdev(&t, &["cluster", "cordon", "dev-eu", "-o", "json"]));
    assert_eq!(cordoned["cordoned"], true);
    let uncordoned = json(&lapdev(
        &t,
        &["cluster", "uncordon", "dev-eu", "-o", "json"],
    ));
    assert_eq!(uncordoned["cordoned"], false);

    // Tokens: create (rotation), list, revoke by id.
    let rotated = json(&lapdev(
        &t,
        &["cluster", "token", "create", "dev-eu", "-o", "json"],
    ));
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    assert!(rotated["token"].as_str().unwrap().starts_with("lapdev_ct_"));
    let tokens = json(&lapdev(
        &t,
        &["cluster", "token", "list", "dev-eu", "-o", "json"],
    ));
    assert_eq!(tokens.as_array().unwrap().len(), 2);
    let revoked = json(&lapdev(
        &t,
        &[
            "cluster", "token", "revoke", "dev-eu", &new_id, "-o", "json",
        ],
    ));
    assert_eq!(revoked["revoked"], true);

    // Delete; the row then shows only with --all.
    json(&lapdev(&t, &["cluster", "delete", "dev-eu", "-o", "json"]));
    let live = json(&lapdev(&t, &["cluster", "list", "-o", "json"]));
    assert_eq!(live, Value::Array(vec![]));
    let all = json(&lapdev(&t, &["cluster", "list", "--all", "-o", "json"]));
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert!(all[0]["deleted_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_manifest_output() {
    let t = TestServer::postgres().await;
    let out = lapdev(&t, &["cluster", "create", "table-test"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("lapdev_ct_"),
        "the token is shown once: {text}"
    );

    let out = lapdev(&t, &["cluster", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("NAME"));
    assert!(lines.next().unwrap().starts_with("table-test"));

    // `cluster manifest` prints a manifest carrying a new token.
    let out = lapdev(&t, &["cluster", "manifest", "table-test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8_lossy(&out.stdout);
    assert!(manifest.contains("kind: Deployment"), "{manifest}");
    // An https public URL a cluster can reach: nothing to warn about.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert!(manifest.contains("lapdev_ct_"));

    // With files, the table names them.
    let dir = tempfile::tempdir().unwrap();
    let (manifest, token) = (dir.path().join("m.yaml"), dir.path().join("c.token"));
    let out = lapdev(
        &t,
        &[
            "cluster",
            "create",
            "files-test",
            "--manifest-out",
            manifest.to_str().unwrap(),
            "--token-out",
            token.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("kubectl apply -f {}", manifest.display())),
        "{text}"
    );
    assert!(text.contains(&token.display().to_string()), "{text}");
    assert!(
        !text.contains("lapdev_ct_"),
        "the token is in the file only: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_exit_non_zero() {
    let t = TestServer::postgres().await;
    let out = lapdev(&t, &["cluster", "get", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("not found"), "{err}");

    // `cluster list` against `server` with `token` (none: unset), with no
    // stored login; it must fail: its stderr.
    let config = tempfile::tempdir().unwrap();
    let refused = |server: &str, token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lapdev"));
        command
            .args(["cluster", "list"])
            .env("LAPDEV_SERVER", server)
            .env("LAPDEV_CONFIG_DIR", config.path())
            .env_remove("LAPDEV_TOKEN");
        if let Some(token) = token {
            command.env("LAPDEV_TOKEN", token);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A wrong token.
    let err = refused(&t.base(), Some("wrong"));
    assert!(err.contains("unauthenticated"), "{err}");
    assert!(err.contains("not a token this server issues"), "{err}");

    // A cluster token where a personal access token belongs.
    let err = refused(
        &t.base(),
        Some("lapdev_ct_0123456789abcdef0123456789abcdef"),
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("this is a cluster token"), "{err}");

    // An empty token (`$(cat missing-file)`) is no token, said as such.
    let err = refused(&t.base(), Some(""));
    assert!(err.contains("LAPDEV_TOKEN (or --token) is empty"), "{err}");

    // An unreachable server.
    let err = refused("http://127.0.0.1:1", Some("x"));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the server at http://127.0.0.1:1:"),
        "{err}"
    );

    // TLS to a plain-HTTP server.
    let plain = t.base().replace("http://", "https://");
    let err = refused(&plain, Some("x"));
    assert!(
        err.contains(&format!("cannot reach the server at {plain}")),
        "{err}"
    );
    assert!(err.contains("plain HTTP, not TLS: use http://"), "{err}");

    // A server without a scheme.
    let bare = t.base().replace("http://", "");
    let err = refused(&bare, Some("x"));
    assert!(
        err.contains("has no scheme") && err.contains(&format!("http://{bare}")),
        "{err}"
    );

    // No token at all.
    let err = refused(&t.base(), None);
    assert!(err.contains("LAPDEV_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapdev_server_admin_token_mints_a_working_token() {
    let t = TestServer::postgres().await;
    let out = Command::new(env!("CARGO_BIN_EXE_lapdev-server"))
        .arg("admin-token")
        .arg("--data-dir")
        .arg(t.data_dir.path().join("data"))
        .args(["--database-url", t.database.as_ref().unwrap().url()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_ne!(token, t.admin_token, "a fresh token");
    let written = std::fs::read_to_string(t.data_dir.path().join("data/admin-token")).unwrap();
    assert_eq!(written.trim(), token);
    let listed = Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(["cluster", "list", "-o", "json"])
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_manifest_files_are_0600_even_when_they_existed_as_0644() {
    use std::os::unix::fs::PermissionsExt as _;
    let t = TestServer::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("cluster.token");
    let manifest = dir.path().join("manifest.yaml");
    for file in [&token, &manifest] {
        std::fs::write(file, "stale contents from an earlier run\n").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let created = json(&lapdev(
        &t,
        &[
            "cluster",
            "create",
            "perms",
            "-o",
            "json",
            "--token-out",
            token.to_str().unwrap(),
            "--manifest-out",
            manifest.to_str().unwrap(),
        ],
    ));
    for file in [&token, &manifest] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    assert_eq!(
        std::fs::read_to_string(&token).unwrap().trim(),
        created["token"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(&manifest).unwrap(),
        created["manifest"].as_str().unwrap()
    );
}

/// The server logs to stderr, as plain text when stderr is not a terminal;
/// stdout holds only what it prints for its caller (the address, the
/// first-start hints, `admin-token`'s token), so `$(lapdev-server admin-token)`
/// is the token even with `RUST_LOG=info`.
#[test]
fn logs_go_to_stderr_without_colour_and_stdout_stays_clean() {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::process::Stdio;
    let data_dir = tempfile::tempdir().unwrap();
    let server = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lapdev-server"));
        command
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("RUST_LOG", "info")
            // The embedded default in a fresh data directory: a first start.
            .env_remove("DATABASE_URL")
            .env_remove("NO_COLOR");
        command
    };
    /// Kills the server however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        server()
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("lapdev-server listening on http://127.0.0.1:"),
        "{first:?}"
    );
    // The first-start hints follow; their last line ends them.
    let mut rest = String::new();
    while !rest.contains("lapdev cluster list") {
        assert!(stdout.read_line(&mut rest).unwrap() > 0, "{rest}");
    }
    assert!(rest.contains("First start"), "{rest}");

    // This server's public URL is its loopback listener: a manifest for it
    // comes with warnings, on stderr and in the JSON.
    let url = first
        .trim()
        .trim_start_matches("lapdev-server listening on ");
    let token = std::fs::read_to_string(data_dir.path().join("admin-token")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(["cluster", "create", "dev", "-o", "json"])
        .env("LAPDEV_SERVER", url)
        .env("LAPDEV_TOKEN", token.trim())
        .env("LAPDEV_CONFIG_DIR", data_dir.path().join("cli"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the server URL names the server's own machine")
            && stderr.contains("--public-url"),
        "{stderr}"
    );
    // Plain http on loopback never leaves the machine: no warning of its own.
    assert!(!stderr.contains("plain http"), "{stderr}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = created["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["loopback_server_url"], "{created}");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    stdout.read_to_string(&mut rest).unwrap();
    let mut log = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("applying database migrations"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes in a piped log: {log:?}"
    );
    assert!(!rest.contains(" INFO "), "no log lines on stdout: {rest}");

    let out = server().arg("admin-token").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.starts_with("lapdev_pat_"), "{stdout:?}");
}

/// `lapdev … | head`: a reader that stops reading ends the command quietly,
/// with the status other Unix tools end with then (141).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_command_quietly() {
    use std::process::Stdio;
    let t = TestServer::postgres().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lapdev"))
        .args(["cluster", "list", "-o", "json"])
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_TOKEN", &t.admin_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command has its answer to print.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    // Quiet, with the status of a process SIGPIPE ended (128 + 13).
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one-shot server commands refuse a data directory that does not exist
/// (the wrong `--data-dir`) instead of creating an empty one.
#[test]
fn admin_token_names_a_missing_data_directory_and_creates_none() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("lapdev-data");
    let out = Command::new(env!("CARGO_BIN_EXE_lapdev-server"))
        .arg("admin-token")
        .arg("--data-dir")
        .arg(&missing)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no data directory at"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(!missing.exists(), "nothing created");
}

/// A port in use: the server says what to do and has created nothing, so the
/// retry on another port is a first start with its hints.
#[test]
fn a_port_in_use_is_named_with_what_to_do_and_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_lapdev-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("binding 127.0.0.1:{port}"))
            && stderr.contains("another process listens there")
            && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(
        !data.exists(),
        "nothing is created before the port is bound"
    );
}
