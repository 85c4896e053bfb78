//! `ssh -o ProxyCommand='lapdev workspace proxy …'` (through the config
//! `lapdev workspace ssh-config` prints) to a real, non-root OpenSSH server
//! behind a port-forward target registered in the double, over the real
//! tunnel.
//!
//! Needs OpenSSH's server and client (`apt-get install -y openssh-server
//! openssh-client`). Run as root, the test runs `sshd` as the unprivileged
//! user [`SSHD_USER`] (`.ci/run` creates it), as a workspace image would.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{NAMESPACE, env_with, lapdev};

/// The account `sshd` runs as when the tests run as root.
const SSHD_USER: &str = "lapdev-sshd";

/// An OpenSSH program, or a failure saying how to install it.
fn openssh(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the ssh test needs OpenSSH's `{name}`, which is not installed: \
                 `apt-get update && apt-get install -y openssh-server openssh-client` \
                 (Debian/Ubuntu; see README, Tests)"
            )
        })
}

fn run(program: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Who `sshd` runs as: the current user, or [`SSHD_USER`] under root.
/// Returns the name and, under root, the ids to switch to.
fn sshd_account() -> (String, Option<(u32, u32)>) {
    let id = Path::new("id");
    if run(id, &["-u"]) != "0" {
        return (run(id, &["-un"]), None);
    }
    let out = std::process::Command::new("id")
        .args(["-u", SSHD_USER])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ssh test runs as root, so it runs sshd as the unprivileged user \
         `{SSHD_USER}`, which does not exist: \
         `useradd --system --create-home --shell /bin/sh {SSHD_USER}` (.ci/run does this)"
    );
    let uid = run(id, &["-u", SSHD_USER]).parse().unwrap();
    let gid = run(id, &["-g", SSHD_USER]).parse().unwrap();
    (SSHD_USER.to_owned(), Some((uid, gid)))
}

fn keygen(keygen: &Path, path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run(
        keygen,
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            path.to_str().unwrap(),
        ],
    );
}

/// A loopback listener that serves every connection with `sshd -i` (inetd
/// mode: the connection is its stdin and stdout), as `ids` when given.
async fn sshd_listener(
    sshd: PathBuf,
    config: PathBuf,
    log: PathBuf,
    ids: Option<(u32, u32)>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let conn = conn.into_std().unwrap();
            conn.set_nonblocking(false).unwrap();
            let fd = OwnedFd::from(conn);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut cmd = tokio::process::Command::new(&sshd);
            cmd.arg("-i")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::from(fd.try_clone().unwrap()))
                .stdout(Stdio::from(fd))
                .stderr(Stdio::from(log))
                .kill_on_drop(true);
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
            let mut child = cmd.spawn().unwrap();
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_through_the_proxy_command_reaches_a_non_root_sshd() {
    let (sshd, ssh, ssh_keygen) = (openssh("sshd"), openssh("ssh"), openssh("ssh-keygen"));
    let (user, ids) = sshd_account();
    let e = env_with(true).await;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host_key = d.join("host_key");
    let client_key = d.join("client_key");
    keygen(&ssh_keygen, &host_key);
    keygen(&ssh_keygen, &client_key);
    std::fs::copy(client_key.with_extension("pub"), d.join("authorized_keys")).unwrap();
    let config = d.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "HostKey {host}\nAuthorizedKeysFile {dir}/authorized_keys\nPidFile none\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nAllowUsers {user}\n\
             LogLevel VERBOSE\n",
            host = host_key.display(),
            dir = d.display(),
        ),
    )
    .unwrap();
    // sshd reads its files as the account it runs as.
    let chown = |p: &Path| {
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    };
    let authorized = d.join("authorized_keys");
    let files: [&Path; 4] = [d, &host_key, &authorized, &config];
    for p in files {
        chown(p);
    }
    let log = d.join("sshd.log");
    let addr = sshd_listener(sshd, config, log.clone(), ids).await;
    e.double.register_pod_port(NAMESPACE, &e.pod, 22, addr);

    // The Host block the CLI prints, as a user would paste it.
    let out = lapdev(&e.t, &["workspace", "ssh-config", "box", "--user", &user]).await;
    assert!(out.status.success(), "{out:?}");
    let ssh_config = d.join("ssh_config");
    std::fs::write(&ssh_config, &out.stdout).unwrap();
    let known_hosts = d.join("known_hosts");

    let ssh_run = |checking: &'static str| {
        let mut cmd = tokio::process::Command::new(&ssh);
        cmd.arg("-F")
            .arg(&ssh_config)
            .arg("-i")
            .arg(&client_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                &format!("StrictHostKeyChecking={checking}"),
                "lapdev-box",
                "echo \"hello from $(id -un) $(id -u)\"",
            ])
            // The ProxyCommand (`lapdev … workspace proxy box 22`) finds its
            // token in the environment ssh passes on.
            .env("LAPDEV_TOKEN", &e.t.admin_token)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let log = log.clone();
        async move {
            let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
                .await
                .expect("ssh finished")
                .unwrap();
            let sshd_log = std::fs::read_to_string(&log).unwrap_or_default();
            (out, sshd_log)
        }
    };

    // First contact: the host key is learned under the workspace's alias.
    let (out, sshd_log) = ssh_run("accept-new").await;
    assert!(
        out.status.success(),
        "ssh: {}\nsshd log:\n{sshd_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let greeting = String::from_utf8_lossy(&out.stdout);
    let uid = greeting
        .trim()
        .strip_prefix(&format!("hello from {user} "))
        .unwrap_or_else(|| panic!("unexpected output {greeting:?}"));
    assert_ne!(uid, "0", "sshd must not run as root");
    let known = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        known.starts_with(&format!("lapdev-{} ", e.workspace)),
        "{known}"
    );

    // Again with strict checking: the key is found under the alias.
    let (out, sshd_log) = ssh_run("yes").await;
    assert!(
        out.status.success(),
        "ssh: {}\nsshd log:\n{sshd_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, greeting.as_bytes());

    // A different host key behind the same alias is refused, so the check
    // above did compare keys.
    keygen(&ssh_keygen, &host_key);
    chown(&host_key);
    let (out, _) = ssh_run("yes").await;
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Host key verification failed"), "{err}");
}
