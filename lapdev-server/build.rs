//! Builds the dashboard's terminal bundle (xterm.js, its fit addon and
//! `web/terminal/`) into `OUT_DIR` with npm and esbuild, both pinned by
//! `web/package-lock.json`.
//!
//! `npm ci --ignore-scripts` runs in `OUT_DIR/npm` (never in the source tree),
//! only when the lockfile differs from the one that directory was installed
//! from; esbuild then bundles `web/terminal/terminal.js` (and the CSS it
//! imports) into `OUT_DIR/terminal/`. Cargo reruns this script only when the
//! lockfile, `package.json` or the terminal's own sources change, so an
//! unchanged tree builds with no network and no npm at all.
//!
//! Without Node.js or npm, or when npm fails (offline with an empty cache),
//! the build still succeeds: it warns, and the server is built without the
//! terminal page (the page then shows the CLI command instead). Cargo does
//! not look again by itself once Node.js is installed: touch the lockfile.
//! `LAPDEV_NPM` names the npm to run (default `npm`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the bundle is built from, relative to the package.
const INPUTS: [&str; 4] = [
    "web/package.json",
    "web/package-lock.json",
    "web/terminal/terminal.js",
    "web/terminal/terminal.css",
];

fn main() {
    for input in INPUTS {
        println!("cargo:rerun-if-changed={input}");
    }
    println!("cargo:rerun-if-env-changed=LAPDEV_NPM");
    println!("cargo:rustc-check-cfg=cfg(lapdev_terminal)");
    let package = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    match bundle(&package.join("web"), &out) {
        Ok(()) => println!("cargo:rustc-cfg=lapdev_terminal"),
        Err(why) => println!(
            "cargo:warning=the dashboard's terminal page is not built in: {why} \
             (install Node.js and npm, `touch lapdev-server/web/package-lock.json` and build \
             again; `lapdev workspace shell` works without it)"
        ),
    }
}

fn bundle(web: &Path, out: &Path) -> Result<(), String> {
    let npm_dir = out.join("npm");
    std::fs::create_dir_all(&npm_dir)
        .map_err(|e| format!("creating {}: {e}", npm_dir.display()))?;
    let lock = read(&web.join("package-lock.json"))?;
    let stamp = npm_dir.join("installed-from.lock.json");
    let installed = std::fs::read(&stamp).ok();
    if installed.as_deref() != Some(&lock[..]) || !npm_dir.join("node_modules").is_dir() {
        // Whatever was installed from another lockfile goes first.
        let _ = std::fs::remove_file(&stamp);
        let _ = std::fs::remove_dir_all(npm_dir.join("node_modules"));
        copy(&web.join("package.json"), &npm_dir.join("package.json"))?;
        copy(
            &web.join("package-lock.json"),
            &npm_dir.join("package-lock.json"),
        )?;
        let npm = std::env::var("LAPDEV_NPM").unwrap_or_else(|_| "npm".into());
        run(Command::new(&npm)
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--prefer-offline",
                "--fetch-retries=1",
                "--loglevel=error",
            ])
            .current_dir(&npm_dir))?;
        std::fs::write(&stamp, &lock).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    }
    let dist = out.join("terminal");
    let _ = std::fs::remove_dir_all(&dist);
    // `--ignore-scripts` leaves esbuild's JS launcher in place of its binary;
    // the launcher finds the platform package's binary itself.
    let esbuild = npm_dir.join("node_modules/esbuild/bin/esbuild");
    run(Command::new("node")
        .arg(&esbuild)
        .arg(web.join("terminal/terminal.js"))
        .args([
            "--bundle",
            "--minify",
            "--format=iife",
            "--target=es2020",
            "--entry-names=terminal",
            "--log-level=warning",
        ])
        .arg(format!("--outdir={}", dist.display()))
        // The sources import packages installed under OUT_DIR, not beside them.
        .env("NODE_PATH", npm_dir.join("node_modules")))?;
    for file in ["terminal.js", "terminal.css"] {
        if !dist.join(file).is_file() {
            return Err(format!("esbuild wrote no {file}"));
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("copying {}: {e}", from.display()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let program = Path::new(cmd.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str());
    let first = cmd.get_args().next().map(Path::new);
    let first = first.and_then(Path::file_name).unwrap_or_default();
    let shown = format!("`{} {}`", program.display(), first.display());
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!("{shown} failed ({}): {last}", output.status))
}
