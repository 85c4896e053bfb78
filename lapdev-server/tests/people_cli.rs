//! The real `lapdev` binary for people: `user create` with a password, `login`
//! from stdin storing the token 0600, `whoami`, `token create|list|revoke`,
//! `audit list`, `logout`; all with `-o json`.

mod common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use common::TestServer;
use serde_json::Value;

fn lapdev(
    t: &TestServer,
    config: &std::path::Path,
    token: Option<&str>,
    args: &[&str],
    stdin: &str,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lapdev"));
    cmd.args(args)
        .env("LAPDEV_SERVER", t.base())
        .env("LAPDEV_CONFIG_DIR", config)
        .env_remove("LAPDEV_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        cmd.env("LAPDEV_TOKEN", token);
    }
    let mut child = cmd.spawn().expect("the lapdev binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
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
async fn login_tokens_users_and_audit_from_the_cli() {
    let t = TestServer::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let owner_cfg = dir.path().join("owner");
    let mel_cfg = dir.path().join("mel");
    let owner = Some(t.admin_token.as_str());

    let created = json(&lapdev(
        &t,
        &owner_cfg,
        owner,
        &[
            "user",
            "create",
            "mel",
            "--role",
            "member",
            "--password-stdin",
            "-o",
            "json",
        ],
        "mel-password\n",
    ));
    assert_eq!(created["role"], "member");

    // No password at all (stdin at its end): refused before asking the
    // server, so it is no failed sign-in.
    let none = lapdev(&t, &mel_cfg, None, &["login", "--user", "mel"], "");
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("no password given"), "{err}");
    assert!(!mel_cfg.join("token").exists());

    // Wrong password: one line on stderr, non-zero exit, nothing stored.
    let wrong = lapdev(&t, &mel_cfg, None, &["login", "--user", "mel"], "nope\n");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unauthenticated"));
    assert!(!mel_cfg.join("token").exists());

    let login = json(&lapdev(
        &t,
        &mel_cfg,
        None,
        &["login", "--user", "mel", "-o", "json"],
        "mel-password\n",
    ));
    assert_eq!(login["user"], "mel");
    let file = mel_cfg.join("token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Later commands use the stored token.
    let me = json(&lapdev(&t, &mel_cfg, None, &["whoami", "-o", "json"], ""));
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("mel"), Some("member"))
    );

    let token = json(&lapdev(
        &t,
        &mel_cfg,
        None,
        &[
            "token",
            "create",
            "ci",
            "--expires-in-days",
            "7",
            "-o",
            "json",
        ],
        "",
    ));
    let secret = token["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("lapdev_pat_"));
    let list = json(&lapdev(
        &t,
        &mel_cfg,
        None,
        &["token", "list", "-o", "json"],
        "",
    ));
    assert_eq!(list.as_array().unwrap().len(), 2);
    json(&lapdev(
        &t,
        &mel_cfg,
        None,
        &[
            "token",
            "revoke",
            token["id"].as_str().unwrap(),
            "-o",
            "json",
        ],
        "",
    ));
    let refused = lapdev(&t, &mel_cfg, Some(&secret), &["whoami"], "");
    assert!(!refused.status.success());

    // A member may not read the audit log; the permission error names the role.
    let denied = lapdev(&t, &mel_cfg, None, &["audit", "list"], "");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("admin role"));
    let audit = json(&lapdev(
        &t,
        &owner_cfg,
        owner,
        &["audit", "list", "--action", "token.revoke", "-o", "json"],
        "",
    ));
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1);
    assert_eq!(audit["entries"][0]["actor"], "mel");

    // Headless: paste a token.
    let other_cfg = dir.path().join("headless");
    let pasted = json(&lapdev(
        &t,
        &other_cfg,
        None,
        &["login", "--with-token", "-o", "json"],
        &format!("{}\n", t.admin_token),
    ));
    assert_eq!(pasted["role"], "owner");

    // Logout revokes and forgets the stored token.
    let stored = std::fs::read_to_string(&file).unwrap();
    json(&lapdev(&t, &mel_cfg, None, &["logout", "-o", "json"], ""));
    assert!(!file.exists());
    let after = lapdev(&t, &mel_cfg, Some(stored.trim()), &["whoami"], "");
    assert!(!after.status.success());
}

/// The first start's owner has a token and no password: `user set-password`
/// gives them one for the dashboard and `login`; a short one is refused with
/// the rule, and a member cannot set anyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_sets_a_password_and_signs_in_with_it() {
    let t = TestServer::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let owner_cfg = dir.path().join("owner");
    let owner = Some(t.admin_token.as_str());
    let me = json(&lapdev(
        &t,
        &owner_cfg,
        owner,
        &["whoami", "-o", "json"],
        "",
    ));
    let name = me["name"].as_str().unwrap().to_owned();

    let short = lapdev(
        &t,
        &owner_cfg,
        owner,
        &["user", "set-password", &name],
        "short\n",
    );
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 8 characters"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let set = json(&lapdev(
        &t,
        &owner_cfg,
        owner,
        &["user", "set-password", &name, "-o", "json"],
        "owner-password\n",
    ));
    assert_eq!(set["password_set"], true);

    let login_cfg = dir.path().join("login");
    let login = json(&lapdev(
        &t,
        &login_cfg,
        None,
        &["login", "--user", &name, "-o", "json"],
        "owner-password\n",
    ));
    assert_eq!(login["user"].as_str(), Some(name.as_str()));

    json(&lapdev(
        &t,
        &owner_cfg,
        owner,
        &["user", "create", "mel", "--password-stdin", "-o", "json"],
        "mel-password\n",
    ));
    let mel_cfg = dir.path().join("mel");
    json(&lapdev(
        &t,
        &mel_cfg,
        None,
        &["login", "--user", "mel", "-o", "json"],
        "mel-password\n",
    ));
    let refused = lapdev(
        &t,
        &mel_cfg,
        None,
        &["user", "set-password", &name],
        "taken-over-password\n",
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("permission_denied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
