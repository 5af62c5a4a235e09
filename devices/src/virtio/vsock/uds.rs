//! The host's Unix sockets: binding the device's listening socket (and
//! deciding what to do with a file already at its path), and connecting to
//! host listeners without blocking.
//!
//! The standard library's `UnixStream::connect` blocks while a listener's
//! backlog is full, so a guest could stall the device by asking for a host
//! listener that does not accept; the non-blocking connect here is written
//! with `libc` because no crate of the workspace offers one.

use std::io;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::VsockError;

/// Which file a socket path named when it was bound: (device, inode).
pub type FileId = (u64, u64);

/// Binds a non-blocking listener at `path`.
///
/// A socket file that nobody listens on (its process ended without
/// removing it) is replaced; a socket somebody listens on, or a file that
/// is not a socket, is refused.
pub fn bind_listener(path: &Path) -> Result<(UnixListener, FileId), VsockError> {
    remove_stale(path)?;
    let bind_err = |source| VsockError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let meta = std::fs::metadata(path).map_err(bind_err)?;
    Ok((listener, (meta.dev(), meta.ino())))
}

fn remove_stale(path: &Path) -> Result<(), VsockError> {
    let owned = path.to_path_buf();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(VsockError::Probe {
                path: owned,
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(VsockError::NotASocket { path: owned });
    }
    match connect_nonblocking(path) {
        Ok(_) => Err(VsockError::InUse { path: owned }),
        // A full backlog: somebody listens.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(VsockError::InUse { path: owned }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("vsock: replacing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| VsockError::RemoveStale {
                path: owned,
                source,
            })
        }
        Err(source) => Err(VsockError::Probe {
            path: owned,
            source,
        }),
    }
}

/// Removes the socket file at `path` if it is still the one bound as `id`
/// (a later process may have replaced it).
pub fn remove_if_ours(path: &Path, id: FileId) {
    let ours = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == id);
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("vsock: could not remove {}: {e}", path.display());
        }
    }
}

fn socket_address(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data, for which all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not fit a Unix socket address",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Connects to the listener at `path` without waiting: a listener whose
/// backlog is full gives `WouldBlock`. The stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let (addr, len) = socket_address(path)?;
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is an initialised sockaddr_un and `len` is at most its
    // size; connect(2) only reads it.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hiber-uds-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = temp_dir("stale");
        let path = dir.join("v.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file");
        let (live, id) = bind_listener(&path).unwrap();
        let err = bind_listener(&path).unwrap_err();
        assert!(matches!(err, VsockError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(live);
        remove_if_ours(&path, id);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_refused() {
        let dir = temp_dir("file");
        let path = dir.join("v.sock");
        std::fs::write(&path, b"x").unwrap();
        let err = bind_listener(&path).unwrap_err();
        assert!(matches!(err, VsockError::NotASocket { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_a_bind_error_naming_the_path() {
        let err = bind_listener(Path::new("/nonexistent-hiber-dir/v.sock")).unwrap_err();
        assert!(matches!(err, VsockError::Bind { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-hiber-dir/v.sock"));
    }

    #[test]
    fn connecting_to_nobody_is_refused_without_blocking() {
        let dir = temp_dir("nobody");
        let err = connect_nonblocking(&dir.join("none")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let long = dir.join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
