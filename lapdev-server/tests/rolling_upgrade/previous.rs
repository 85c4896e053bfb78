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
pub const PREVIOUS_RELEASE: &str = "890cc96f7629d0c453049f719652c78816540670";

const BIN: &str = "lapdev-server-previous";

/// The copy's crates' version (see [`set_version`]).
const VERSION: &str = "0.0.0-previous";

/// Builds (if needed) and returns the previous release's server binary.
pub fn server() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile> → target
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let target_dir = profile_dir.parent().unwrap().to_owned();
    let src = target_dir
        .join("previous-release")
        .join(&PREVIOUS_RELEASE[..12]);
    let extracted = std::fs::read_to_string(src.join("Cargo.toml"))
        .is_ok_and(|manifest| manifest.contains(&format!("version = \"{VERSION}\"")));
    if !extracted {
        // Absent, or extracted before the copy had a version of its own. Other
        // releases' copies are not needed any more.
        if let Ok(entries) = std::fs::read_dir(target_dir.join("previous-release")) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
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
    set_version(&partial);
    std::fs::rename(&partial, src).unwrap();
}

/// Gives the copy's own crates the version [`VERSION`], in the workspace
/// manifest and in the lock file (so `--locked` still holds).
///
/// Cargo names a workspace crate's artifacts by a hash of its package id
/// with the path relative to the workspace root, not the absolute path
/// (so builds are relocatable): with the same version, the copy's
/// `lapdev-common` and this build's share one `liblapdev_common-<hash>.rlib`
/// and one fingerprint. Building the copy overwrote this build's libraries,
/// and cargo then took them for fresh: the doctests, compiled after the
/// integration tests, failed with `E0463: can't find crate for lapdev_db`. A
/// version of its own gives the copy artifacts of its own. The previous
/// server so reports version `0.0.0-previous` (replica registry, default
/// manager image tag), which no test reads.
fn set_version(root: &Path) {
    let manifest = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut old = None;
    let mut in_package = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_package = trimmed == "[workspace.package]";
        } else if in_package
            && old.is_none()
            && trimmed.split('=').next().map(str::trim) == Some("version")
        {
            let value = trimmed.split('"').nth(1).expect("a quoted version");
            old = Some(value.to_owned());
            lines.push(format!("version = \"{VERSION}\""));
            continue;
        }
        lines.push(line.to_owned());
    }
    let old = old.expect("the previous release sets version in [workspace.package]");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();

    // Packages without a `source` are the workspace's own: every one must
    // take the workspace version, or it would share this build's artifacts.
    let lock = root.join("Cargo.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    let from = format!("\nversion = \"{old}\"\n");
    let to = format!("\nversion = \"{VERSION}\"\n");
    let mut own = Vec::new();
    let blocks: Vec<String> = text
        .split("\n[[package]]\n")
        .map(|block| {
            if !block.starts_with("name = ") || block.contains("\nsource = ") {
                return block.to_owned();
            }
            let name = block.lines().next().unwrap_or_default().to_owned();
            assert!(
                block.contains(&from),
                "{name} in the previous release's Cargo.lock is not at the workspace version \
                 {old}; give it a version of its own here too"
            );
            own.push(name);
            block.replacen(&from, &to, 1)
        })
        .collect();
    assert!(
        own.len() > 1,
        "the previous release's Cargo.lock names {own:?} as the workspace's own"
    );
    std::fs::write(&lock, blocks.join("\n[[package]]\n")).unwrap();
}
