//! Building a state file from named, serializable sections.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use super::error::StateError;
use super::format::{Header, END_MARKER, HEADER_LEN, MAX_NAME_LEN, STATE_FORMAT_VERSION};
use crate::atomic::StagedFile;

/// Collects sections in order and writes them as one state file.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    sections: Vec<(String, Vec<u8>)>,
}

impl SnapshotWriter {
    /// Creates a writer with no sections.
    pub fn new() -> SnapshotWriter {
        SnapshotWriter::default()
    }

    /// Appends a section holding the CBOR encoding of `value`.
    ///
    /// Names may repeat (one "vcpu" section per vCPU, say); the order is kept.
    pub fn add_section<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        check_name(name)?;
        let mut payload = Vec::new();
        ciborium::into_writer(value, &mut payload).map_err(|source| StateError::Encode {
            name: name.to_string(),
            type_name: std::any::type_name::<T>(),
            source,
        })?;
        self.sections.push((name.to_string(), payload));
        Ok(())
    }

    /// Encodes the whole file: header, sections, trailer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN];
        for (name, payload) in &self.sections {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out.extend_from_slice(&END_MARKER.to_le_bytes());
        let header = Header {
            version: STATE_FORMAT_VERSION,
            flags: 0,
            file_len: out.len() as u64 + 8,
        };
        out[..HEADER_LEN].copy_from_slice(&header.encode());
        let checksum = xxh3_64(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Writes the file under a temporary name beside `path`, to be committed later
    /// (with [`crate::commit_pair`], after the memory file).
    pub fn stage(&self, path: &Path) -> Result<StagedFile, StateError> {
        let staged = StagedFile::create(path)?;
        let bytes = self.to_bytes();
        staged
            .file()
            .write_all(&bytes)
            .map_err(|source| staged.write_error(source))?;
        Ok(staged)
    }

    /// Writes the file atomically: an earlier file at `path` stays intact until the
    /// new one is complete on disk.
    pub fn write_atomic(&self, path: &Path) -> Result<(), StateError> {
        self.stage(path)?.commit()?;
        log::info!(
            "state file written: {path:?}, {} sections",
            self.sections.len()
        );
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), StateError> {
    let reason = if name.is_empty() {
        "a name must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "a name must be at most 255 bytes long"
    } else {
        return Ok(());
    };
    Err(StateError::InvalidName {
        name: name.to_string(),
        reason,
    })
}
