//! The server's data directory: the embedded SQLite database and, unless they
//! come from outside, the generated JWT signing secret and credential-encryption
//! key. The directory is created `0700` and every secret file `0600`.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A problem with the data directory or a secret in it.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created or read.
    #[error("cannot use data directory {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    /// A secret file could not be read or written.
    #[error("cannot read or write {0}")]
    File(PathBuf, #[source] std::io::Error),
    /// A secret file does not hold what it should.
    #[error("{0} is corrupt: {1}")]
    Corrupt(PathBuf, &'static str),
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// The data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed) the directory at `path`.
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        fs::create_dir_all(path).map_err(|e| DataDirError::Dir(path.to_owned(), e))?;
        set_mode(path, 0o700).map_err(|e| DataDirError::Dir(path.to_owned(), e))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The URL of the embedded SQLite database in this directory. The
    /// database file is created `0600` before SQLite opens it (SQLite keeps an
    /// existing file's mode and gives its `-wal` and `-shm` files the same), and
    /// files left `0644` by an older server are made `0600`.
    pub fn sqlite_url(&self) -> Result<String, DataDirError> {
        let db = self.path.join(SQLITE_FILE);
        if let Err(e) = create_private(&db)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(DataDirError::File(db, e));
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = self.path.join(format!("{SQLITE_FILE}{suffix}"));
            match set_mode(&file, 0o600) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DataDirError::File(file, e));
                }
                _ => {}
            }
        }
        Ok(format!("sqlite://{}?mode=rwc", db.display()))
    }

    /// The secret stored (base64) in `name`, generating 32 random bytes on first
    /// use. Returns the bytes and whether they were just generated.
    pub fn secret(&self, name: &str) -> Result<(Vec<u8>, bool), DataDirError> {
        let file = self.path.join(name);
        match fs::read_to_string(&file) {
            Ok(text) => {
                let bytes = STANDARD
                    .decode(text.trim())
                    .map_err(|_| DataDirError::Corrupt(file.clone(), "not base64"))?;
                if bytes.len() != 32 {
                    return Err(DataDirError::Corrupt(file, "not 32 bytes"));
                }
                Ok((bytes, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = lapdev_db::CredentialKey::generate().map_err(|_| DataDirError::Random)?;
                let bytes = key.as_bytes().to_vec();
                self.write_private(name, STANDARD.encode(&bytes).as_bytes())?;
                Ok((bytes, true))
            }
            Err(e) => Err(DataDirError::File(file, e)),
        }
    }

    /// Writes `contents` to `name` with mode `0600`, replacing any file there
    /// (see [`crate::secret_file`]: created new, then renamed, so an existing
    /// file's mode is never kept).
    pub fn write_private(&self, name: &str, contents: &[u8]) -> Result<PathBuf, DataDirError> {
        let file = self.path.join(name);
        crate::secret_file::write_private(&file, contents)
            .map_err(|e| DataDirError::File(file.clone(), e))?;
        Ok(file)
    }
}

/// The embedded database's file name in the data directory.
const SQLITE_FILE: &str = "lapdev.db";

/// Creates an empty `path` readable by its owner only; fails if it exists.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&tmp.path().join("data")).unwrap();
        let (a, generated) = dir.secret("jwt-secret").unwrap();
        assert!(generated);
        assert_eq!(a.len(), 32);
        let (b, generated) = dir.secret("jwt-secret").unwrap();
        assert!(!generated);
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join("jwt-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_admin_token_file_that_was_0644_is_rewritten_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let path = tmp.path().join("admin-token");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        dir.write_private("admin-token", b"new").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_embedded_database_and_its_wal_are_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let db = lapdev_db::connect(&dir.sqlite_url().unwrap())
            .await
            .unwrap();
        db.create_organization("acme").await.unwrap();
        for file in ["lapdev.db", "lapdev.db-wal", "lapdev.db-shm"] {
            let path = tmp.path().join(file);
            assert!(path.exists(), "{file} (the database runs in WAL mode)");
            assert_eq!(mode(&path), 0o600, "{file}");
        }
        drop(db);

        // Files an older server left 0644 are made private on the next start.
        for file in ["lapdev.db", "lapdev.db-wal"] {
            fs::set_permissions(tmp.path().join(file), fs::Permissions::from_mode(0o644)).unwrap();
        }
        dir.sqlite_url().unwrap();
        assert_eq!(mode(&tmp.path().join("lapdev.db")), 0o600);
        assert_eq!(mode(&tmp.path().join("lapdev.db-wal")), 0o600);
    }

    #[test]
    fn a_corrupt_secret_is_an_error_not_a_new_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("encryption-key"), "%%%").unwrap();
        assert!(matches!(
            dir.secret("encryption-key"),
            Err(DataDirError::Corrupt(..))
        ));
    }
}
