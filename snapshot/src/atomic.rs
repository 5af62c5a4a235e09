//! Atomic replacement of a file: write a temporary file beside it, sync, rename.
//!
//! A [`StagedFile`] is created under a hidden temporary name in the target's directory
//! and only takes the target's name in [`StagedFile::commit`], after its data is on
//! disk. Until then the target (perhaps an earlier snapshot) is untouched; if the
//! writer fails or the staged file is dropped, the temporary file is removed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Snapshots hold guest memory, so only the owner may read them.
const FILE_MODE: u32 = 0o600;

/// How many temporary names to try before giving up (a stale one may exist).
const NAME_ATTEMPTS: u32 = 16;

/// Distinguishes temporary files made by one process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Errors from writing a file atomically.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// The target path has no file name.
    #[error("{path:?} is not a file path; pass a path ending in a file name")]
    NotAFilePath {
        /// The target path.
        path: PathBuf,
    },
    /// The temporary file could not be created.
    #[error(
        "cannot create a temporary file in the directory of {path:?}; check that the \
             directory exists and is writable"
    )]
    CreateTemp {
        /// The target path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the temporary file failed.
    #[error("cannot write {temp:?} (to become {path:?}); check free space")]
    Write {
        /// The target path.
        path: PathBuf,
        /// The temporary file.
        temp: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Flushing the temporary file to disk failed.
    #[error("cannot flush {temp:?} (to become {path:?}) to disk")]
    Sync {
        /// The target path.
        path: PathBuf,
        /// The temporary file.
        temp: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Renaming the temporary file over the target failed.
    #[error("cannot rename {temp:?} to {path:?}; the earlier file at {path:?} is unchanged")]
    Rename {
        /// The target path.
        path: PathBuf,
        /// The temporary file.
        temp: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Flushing the directory entry to disk failed.
    #[error(
        "cannot flush directory {dir:?} after renaming into it; a crash now could \
             lose the rename"
    )]
    SyncDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A file being written under a temporary name, to replace `path` on commit.
#[derive(Debug)]
pub struct StagedFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl StagedFile {
    /// Creates an empty temporary file in the directory of `path`.
    pub fn create(path: &Path) -> Result<StagedFile, AtomicError> {
        let name = path.file_name().ok_or_else(|| AtomicError::NotAFilePath {
            path: path.to_path_buf(),
        })?;
        let mut last_error = None;
        for _ in 0..NAME_ATTEMPTS {
            let serial = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{}.{serial}.tmp", std::process::id()));
            let temp = path.with_file_name(temp_name);
            match create_new(&temp) {
                Ok(file) => return Ok(StagedFile::new(file, temp, path)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_error = Some(err),
                Err(source) => return Err(create_error(path, source)),
            }
        }
        let source = last_error.unwrap_or_else(|| io::Error::other("no name attempts"));
        Err(create_error(path, source))
    }

    fn new(file: File, temp: PathBuf, path: &Path) -> StagedFile {
        log::debug!("staging {path:?} as {temp:?}");
        StagedFile {
            file,
            temp,
            path: path.to_path_buf(),
            committed: false,
        }
    }

    /// The open temporary file, to write into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path this file will have once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary path the file has until committed.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Wraps an I/O error from writing this file.
    pub fn write_error(&self, source: io::Error) -> AtomicError {
        AtomicError::Write {
            path: self.path.clone(),
            temp: self.temp.clone(),
            source,
        }
    }

    /// Syncs the data, renames the file over its target and syncs the directory.
    pub fn commit(mut self) -> Result<(), AtomicError> {
        self.sync()?;
        self.rename_into_place()
    }

    fn sync(&self) -> Result<(), AtomicError> {
        self.file.sync_all().map_err(|source| AtomicError::Sync {
            path: self.path.clone(),
            temp: self.temp.clone(),
            source,
        })
    }

    fn rename_into_place(&mut self) -> Result<(), AtomicError> {
        fs::rename(&self.temp, &self.path).map_err(|source| AtomicError::Rename {
            path: self.path.clone(),
            temp: self.temp.clone(),
            source,
        })?;
        self.committed = true;
        sync_parent(&self.path)?;
        log::debug!("renamed {:?} to {:?}", self.temp, self.path);
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(err) = fs::remove_file(&self.temp) {
                log::warn!("cannot remove temporary file {:?}: {err}", self.temp);
            }
        }
    }
}

/// Commits the two files of a snapshot: the memory file first, then the state file.
///
/// Both are synced before either is renamed, and the memory file's rename is made
/// durable before the state file's, so after a crash the directory holds the old pair,
/// the new pair, or a new memory file with the old state file; the last is refused
/// on restore because the snapshot ids differ.
pub fn commit_pair(memory: StagedFile, state: StagedFile) -> Result<(), AtomicError> {
    let (mut memory, mut state) = (memory, state);
    memory.sync()?;
    state.sync()?;
    memory.rename_into_place()?;
    state.rename_into_place()
}

fn create_new(temp: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(temp)
}

fn create_error(path: &Path, source: io::Error) -> AtomicError {
    AtomicError::CreateTemp {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_parent(path: &Path) -> Result<(), AtomicError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| AtomicError::SyncDir {
            dir: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::tempdir::TempDir;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn commit_replaces_the_target() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("state");
        fs::write(&path, b"old").unwrap();
        let staged = StagedFile::create(&path).unwrap();
        staged.file().write_all(b"new").unwrap();
        staged.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(entries(dir.as_path()), ["state"]);
    }

    #[test]
    fn dropping_keeps_the_old_file_and_removes_the_temporary() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("state");
        fs::write(&path, b"old").unwrap();
        let staged = StagedFile::create(&path).unwrap();
        staged.file().write_all(b"half").unwrap();
        assert!(staged.temp_path().exists());
        drop(staged);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.as_path()), ["state"]);
    }

    #[test]
    fn missing_directory_is_reported() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("absent").join("state");
        let err = StagedFile::create(&path).unwrap_err();
        assert!(matches!(err, AtomicError::CreateTemp { .. }), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn commit_pair_renames_both() {
        let dir = TempDir::new().unwrap();
        let memory = StagedFile::create(&dir.as_path().join("mem")).unwrap();
        let state = StagedFile::create(&dir.as_path().join("state")).unwrap();
        commit_pair(memory, state).unwrap();
        assert_eq!(entries(dir.as_path()), ["mem", "state"]);
    }
}
