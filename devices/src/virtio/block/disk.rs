//! The drive's backing image: a raw file (or host block device) opened
//! read-only or read-write, with positioned I/O between it and guest memory.
//!
//! Data moves with `pread`/`pwrite` straight into and out of `vm-memory`'s
//! volatile slices, so a request never goes through a bounce buffer and the
//! file position is never used (requests are independent of each other).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, ReadVolatile,
    VolatileMemoryError, VolatileSlice, WriteVolatile,
};

/// The size of a virtio-blk sector, in bytes.
pub const SECTOR_SIZE: u64 = 512;

/// Why a drive's image could not be opened, or does not fit the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened at all.
    #[error(
        "drive {id}: cannot open image {}: check that the file exists and is readable",
        path.display()
    )]
    Open {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A read-write drive's image cannot be opened for writing.
    #[error(
        "drive {id}: image {} cannot be opened for writing: make it writable or make the \
         drive read-only",
        path.display()
    )]
    OpenWritable {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The image of a snapshot's drive is gone.
    #[error(
        "drive {id}: image {} does not exist: restore with the disk image the snapshot was \
         taken with, at that path",
        path.display()
    )]
    Missing {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
    },
    /// The image's size cannot be found.
    #[error(
        "drive {id}: cannot find the size of image {}: give a regular file or a block device",
        path.display()
    )]
    Size {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The image does not hold whole sectors.
    #[error(
        "drive {id}: image {} is {size} bytes, not a multiple of 512: grow it to whole \
         sectors (truncate -s {rounded} {})",
        path.display(),
        path.display()
    )]
    PartialSector {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The next multiple of 512.
        rounded: u64,
    },
    /// The image is not the one the snapshot was taken with.
    #[error(
        "drive {id}: image {} is {actual} bytes but the snapshot was taken with {saved} \
         bytes: restore with the disk image the snapshot was taken with",
        path.display()
    )]
    SizeChanged {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
        /// Its size now.
        actual: u64,
        /// Its size in the snapshot.
        saved: u64,
    },
}

/// An open image of whole sectors.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl DiskImage {
    /// Opens `path` for drive `id`, read-only (`O_RDONLY`) or read-write.
    pub fn open(id: &str, path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let file = open_file(id, &path, read_only)?;
        let size = file_size(&file).map_err(|source| BlockError::Size {
            id: id.into(),
            path: path.clone(),
            source,
        })?;
        Ok(DiskImage {
            file,
            path,
            size,
            read_only,
        })
    }

    /// The image's path, made absolute when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Fills `len` bytes of guest memory at `addr` from the image at `offset`.
    pub fn read_to(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> Result<(), GuestMemoryError> {
        let mut at = FileAt::new(&self.file, offset);
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            at.read_exact_volatile(&mut slice?)?;
        }
        Ok(())
    }

    /// Writes `len` bytes of guest memory at `addr` into the image at `offset`.
    pub fn write_from(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> Result<(), GuestMemoryError> {
        let mut at = FileAt::new(&self.file, offset);
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            at.write_all_volatile(&slice?)?;
        }
        Ok(())
    }

    /// Makes written data durable (`fdatasync`); nothing to do read-only.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

fn open_file(id: &str, path: &Path, read_only: bool) -> Result<File, BlockError> {
    let result = OpenOptions::new().read(true).write(!read_only).open(path);
    result.map_err(|source| {
        let (id, path) = (id.to_string(), path.to_path_buf());
        let not_writable = matches!(
            source.kind(),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
        );
        if not_writable && !read_only {
            BlockError::OpenWritable { id, path, source }
        } else {
            BlockError::Open { id, path, source }
        }
    })
}

/// The size of a regular file or a block device (whose metadata says 0).
fn file_size(mut file: &File) -> io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

/// A position in the image that reads and writes guest memory slices with
/// `pread`/`pwrite` and moves on by what was transferred. `vm-memory`'s own
/// file support uses the file position, which a device must not share.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> FileAt<'a> {
    fn new(file: &'a File, offset: u64) -> Self {
        FileAt { file, offset }
    }

    fn offset(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset).map_err(|_| {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "offset beyond off_t");
            VolatileMemoryError::IOError(e)
        })
    }

    fn advance(&mut self, done: isize) -> Result<usize, VolatileMemoryError> {
        if done < 0 {
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        }
        self.offset += done as u64;
        Ok(done as usize)
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the file descriptor is open for the lifetime of `self.file`;
        // the pointer and length come from a live VolatileSlice of guest
        // memory, valid for writes of `buf.len()` bytes while `guard` lives.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let n = self.advance(n)?;
        buf.bitmap().mark_dirty(0, n);
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard();
        // SAFETY: the file descriptor is open for the lifetime of `self.file`;
        // the pointer and length come from a live VolatileSlice of guest
        // memory, valid for reads of `buf.len()` bytes while `guard` lives.
        let n = unsafe {
            libc::pwrite(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        self.advance(n)
    }
}
