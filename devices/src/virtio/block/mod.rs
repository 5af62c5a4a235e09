//! virtio-blk: a drive backed by a raw image file, read-write or read-only.
//!
//! - [`disk`] opens the image and moves data between it and guest memory
//!   with positioned I/O.
//! - [`request`] checks one descriptor chain and carries it out.
//! - [`state`] is what a snapshot keeps of a drive.
//!
//! One request queue; every request is completed before `process_queue`
//! returns (synchronous I/O), so nothing is in flight at a pause and the
//! saved queue positions are exact. Writes reach the host page cache at
//! once; `FLUSH` requests and [`VirtioDevice::quiesce`] (before a snapshot)
//! make them durable with `fdatasync`.

pub mod disk;
pub mod request;
pub mod state;

#[cfg(any(test, feature = "test-utils"))]
mod fuzz;

use std::collections::HashSet;
use std::mem::{discriminant, offset_of, size_of, Discriminant};
use std::path::Path;

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{device_type, ActivateError, ActiveQueues, VirtioDevice, VIRTIO_F_VERSION_1};
use disk::DiskImage;
pub use disk::{BlockError, SECTOR_SIZE};
#[cfg(any(test, feature = "test-utils"))]
pub use fuzz::fuzz_queue;
use request::RequestError;
pub use request::{MAX_DATA, SEG_MAX, SIZE_MAX};
pub use state::BlockState;

/// The one request queue's size.
pub const QUEUE_SIZE: u16 = 256;

/// A virtio-blk drive.
pub struct Block {
    id: String,
    disk: DiskImage,
    active: Option<ActiveQueues>,
    faults: FaultLog,
}

impl Block {
    /// Opens the image at `path` for drive `id`: read-only (`O_RDONLY`, and
    /// the guest is told so) or read-write. Its size must be whole sectors.
    pub fn new(id: &str, path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let disk = DiskImage::open(id, path, read_only)?;
        let size = disk.size();
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::PartialSector {
                id: id.into(),
                path: disk.path().into(),
                size,
                rounded: size.next_multiple_of(SECTOR_SIZE),
            });
        }
        log::info!(
            "block {id}: {} ({size} bytes, {})",
            disk.path().display(),
            if read_only { "read-only" } else { "read-write" }
        );
        Ok(Self::with_disk(id, disk))
    }

    /// Re-opens the image of a snapshot's drive. Refused when the file is
    /// gone, when its size differs from the snapshot's, or when a read-write
    /// drive's image cannot be opened for writing.
    pub fn restore(state: &BlockState) -> Result<Block, BlockError> {
        let (id, path) = (state.id.as_str(), state.path.as_path());
        let disk = DiskImage::open(id, path, state.read_only).map_err(|e| match e {
            BlockError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                BlockError::Missing {
                    id: id.into(),
                    path: path.into(),
                }
            }
            other => other,
        })?;
        if disk.size() != state.size {
            return Err(BlockError::SizeChanged {
                id: id.into(),
                path: path.into(),
                actual: disk.size(),
                saved: state.size,
            });
        }
        Ok(Self::with_disk(id, disk))
    }

    fn with_disk(id: &str, disk: DiskImage) -> Block {
        Block {
            id: id.into(),
            disk,
            active: None,
            faults: FaultLog::default(),
        }
    }

    /// The drive's state for a snapshot.
    pub fn save(&self) -> BlockState {
        BlockState {
            id: self.id.clone(),
            path: self.disk.path().into(),
            read_only: self.disk.read_only(),
            size: self.disk.size(),
        }
    }

    /// The drive id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The configuration space (`struct virtio_blk_config`), little-endian.
    fn config(&self) -> Vec<u8> {
        let mut config = vec![0u8; size_of::<virtio_blk_config>()];
        let mut put = |offset: usize, bytes: &[u8]| {
            config[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        let capacity = self.disk.size() / SECTOR_SIZE;
        put(
            offset_of!(virtio_blk_config, capacity),
            &capacity.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, size_max),
            &SIZE_MAX.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, seg_max),
            &SEG_MAX.to_le_bytes(),
        );
        config
    }

    /// Serves every available request; returns whether any was completed.
    fn drain(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem: &GuestMemoryMmap = &active.mem;
        let queue = &mut active.queues[0];
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let done = request::serve(&self.disk, self.id.as_bytes(), mem, chain);
            if let Some(fault) = &done.fault {
                self.faults.report(&self.id, head, fault);
            }
            if let Err(e) = queue.add_used(mem, head, done.used_len) {
                log::error!(
                    "block {}: the used ring is broken, the device stops: {e}",
                    self.id
                );
                return used_any;
            }
            used_any = true;
        }
        used_any
    }
}

/// Logs each kind of request fault at warn the first time, then at debug,
/// so a misbehaving guest cannot flood the log.
#[derive(Default)]
struct FaultLog {
    seen: HashSet<Discriminant<RequestError>>,
}

impl FaultLog {
    fn report(&mut self, id: &str, head: u16, fault: &RequestError) {
        let mut why = fault.to_string();
        let mut source = std::error::Error::source(fault);
        while let Some(cause) = source {
            why = format!("{why}: {cause}");
            source = cause.source();
        }
        if self.seen.insert(discriminant(fault)) {
            log::warn!("block {id}: request {head} failed: {why} (repeats are logged at debug)");
        } else {
            log::debug!("block {id}: request {head} failed: {why}");
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn name(&self) -> String {
        format!("block {}", self.id)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX;
        if self.disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config();
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
            return;
        };
        let n = rest.len().min(data.len());
        data[..n].copy_from_slice(&rest[..n]);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!(
            "block {}: write to configuration offset {offset} ignored",
            self.id
        );
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if !active.queues.first().is_some_and(|q| q.ready()) {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) -> Option<ActiveQueues> {
        self.active.take()
    }

    fn queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 || !self.drain() {
            return;
        }
        if let Some(active) = self.active.as_mut() {
            active.notify_used(0);
        }
    }

    fn quiesce(&mut self) -> Result<(), String> {
        self.disk
            .flush()
            .map_err(|e| format!("block {}: fdatasync of the image failed: {e}", self.id))
    }
}

#[cfg(test)]
mod tests;
