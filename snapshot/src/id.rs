//! The random id that pairs a state file with its memory file.

use std::fmt::Write;
use std::io;

/// A snapshot id: 16 random bytes written into both files of one snapshot.
pub type SnapshotId = [u8; 16];

/// Errors from making a snapshot id.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// The kernel's random number generator failed.
    #[error("cannot get random bytes for a snapshot id from the kernel (getrandom)")]
    Random(#[source] io::Error),
}

/// Returns a new random snapshot id from the kernel's random number generator.
pub fn random_snapshot_id() -> Result<SnapshotId, IdError> {
    let mut id = [0u8; 16];
    let mut filled = 0;
    while filled < id.len() {
        let rest = &mut id[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable buffer
        // that the kernel fills with at most `rest.len()` bytes.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(IdError::Random(err));
        }
        filled += ret as usize;
    }
    Ok(id)
}

/// Formats an id as 32 lowercase hex digits, as `inspect` and error messages show it.
pub fn format_snapshot_id(id: &SnapshotId) -> String {
    id.iter().fold(String::with_capacity(32), |mut text, byte| {
        // Writing into a String cannot fail.
        let _ = write!(text, "{byte:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_format_as_hex() {
        let a = random_snapshot_id().unwrap();
        let b = random_snapshot_id().unwrap();
        assert_ne!(a, b);
        let mut id = [0u8; 16];
        id[0] = 0xab;
        id[15] = 0x01;
        assert_eq!(format_snapshot_id(&id), "ab000000000000000000000000000001");
    }
}
