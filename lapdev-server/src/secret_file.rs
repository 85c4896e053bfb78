//! Writing files that hold secrets (tokens, manifests carrying tokens, keys):
//! always mode `0600`, whatever was at the path before.
//!
//! Opening an existing file with `O_TRUNC` keeps its mode, so a `0644` file
//! stays world-readable after it receives a token. Instead the contents go to a
//! fresh file in the same directory, created exclusively (`O_CREAT|O_EXCL`,
//! which never follows a symlink planted at that name) with mode `0600`, synced,
//! and then renamed over the target: readers see the old file or the new one,
//! never a half-written or briefly readable one.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` with mode `0600` via create-new-then-rename.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(path)?;
    let written = write_new(&temp, contents).and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        // Best effort: the temporary file holds the secret too.
        let _ = fs::remove_file(&temp);
    }
    written
}

fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    Ok(path.with_file_name(temp_name))
}

fn write_new(temp: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(temp)?;
    // The umask can only clear bits, but say it explicitly all the same.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_world_readable_file_becomes_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "old, longer contents").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"secret").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_new_file_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.yaml");
        write_private(&path, b"x").unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_private(&dir.path().join("no/such/dir/token"), b"x").is_err());
        assert!(write_private(Path::new("/"), b"x").is_err());
    }
}
