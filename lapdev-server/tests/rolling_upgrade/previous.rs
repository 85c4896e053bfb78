//! The previous release's `lapdev-server`, built from this repository's git
//! history into the same target directory, so it shares every third-party
//! artifact the workspace build made: only the workspace's own crates (a
//! separate copy of them, from another path) compile, a few minutes once.
//!
//! The copy's binary is renamed `lapdev-server-previous` (its manifest's
//! only change), so it never replaces this build's `lapdev-server`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The release this build must run beside: the last commit of main that
/// landed (CI green). Move it forward when a release lands, and never past
/// the build under test.
pub const PREVIOUS_RELEASE: &str = "a3703c82b361894390dbd83327d20f3617895b0a";

const BIN: &str = "lapdev-server-previous";

/// Builds (if needed) and returns the previous release's server binary.
pub fn server() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile> → target
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let target_dir = profile_dir.parent().unwrap().to_owned();
    let src = target_dir
        .join("previous-release")
        .join(&PREVIOUS_RELEASE[..12]);
    if !src.join("Cargo.toml").exists() {
        extract(&src);
    }
    let mut cmd = crate::real::cargo();
    cmd.args([
        "build",
        "-q",
        "--locked",
        "-p",
        "lapdev-server",
        "--bin",
        BIN,
    ])
    .current_dir(&src)
    .env("CARGO_TARGET_DIR", &target_dir);
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "building the previous release failed");
    let path = profile_dir.join(BIN);
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

/// Writes the previous release's tree to `src` (through a temporary
/// directory beside it, renamed into place when complete).
fn extract(src: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let partial = src.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    let mut git = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["archive", "--format=tar", PREVIOUS_RELEASE])
        .stdout(Stdio::piped())
        .spawn()
        .expect("git runs");
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&partial)
        .stdin(git.stdout.take().unwrap())
        .status()
        .unwrap();
    let archived = git.wait().unwrap();
    assert!(
        archived.success() && untar.success(),
        "could not read the previous release {PREVIOUS_RELEASE} from {}'s git history \
         (a shallow clone? `git fetch --unshallow`)",
        repo.display()
    );
    let manifest = partial.join("lapdev-server/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let named = "[[bin]]\nname = \"lapdev-server\"\n";
    assert!(
        text.contains(named),
        "the previous release names its binary"
    );
    let text = text
        .replace(named, &format!("[[bin]]\nname = \"{BIN}\"\n"))
        .replace(
            "default-run = \"lapdev-server\"",
            &format!("default-run = \"{BIN}\""),
        );
    std::fs::write(&manifest, text).unwrap();
    std::fs::rename(&partial, src).unwrap();
}
