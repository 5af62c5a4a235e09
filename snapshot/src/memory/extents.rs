//! The data extents of a sparse file (SEEK_DATA / SEEK_HOLE), to skip its holes.

use std::fs::File;
use std::io;
use std::ops::Range;

use vmm_sys_util::seek_hole::SeekHole;

/// Iterates over the data ranges of `file` within `start..end`, in order.
///
/// A file system without hole reporting reports everything as data, which is still
/// correct, only slower.
pub struct DataExtents {
    file: File,
    pos: u64,
    end: u64,
}

impl DataExtents {
    /// Starts at `range.start`; `file` is duplicated, its offset is not relied upon.
    pub fn new(file: &File, range: Range<u64>) -> io::Result<DataExtents> {
        Ok(DataExtents {
            file: file.try_clone()?,
            pos: range.start,
            end: range.end,
        })
    }

    fn next_extent(&mut self) -> io::Result<Option<Range<u64>>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = match self.file.seek_data(self.pos)? {
            Some(start) if start < self.end => start,
            _ => {
                self.pos = self.end;
                return Ok(None);
            }
        };
        let stop = self
            .file
            .seek_hole(start)?
            .unwrap_or(self.end)
            .min(self.end);
        self.pos = stop;
        Ok(Some(start..stop))
    }
}

impl Iterator for DataExtents {
    type Item = io::Result<Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_extent().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn extents_skip_holes_and_stay_in_range() {
        let temp = TempFile::new().unwrap();
        let file = temp.as_file();
        let mib = 1 << 20;
        file.set_len(8 * mib).unwrap();
        file.write_all_at(&[1u8; 4096], 2 * mib).unwrap();
        file.write_all_at(&[1u8; 4096], 6 * mib).unwrap();
        let all: Vec<_> = DataExtents::new(file, 0..8 * mib)
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
        // A file system may report larger extents than written, never smaller ones.
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(
            all[0].contains(&(2 * mib)) && all[1].contains(&(6 * mib)),
            "{all:?}"
        );
        let part: Vec<_> = DataExtents::new(file, 3 * mib..7 * mib)
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(part.len(), 1);
        assert!(
            part[0].start >= 3 * mib && part[0].end <= 7 * mib,
            "{part:?}"
        );
    }
}
