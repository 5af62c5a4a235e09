//! Finding zero pages fast: the hot path of writing a memory file.

/// The granularity of holes in the memory file.
pub const PAGE_SIZE: usize = 4096;

/// Whether every byte of `bytes` is zero.
///
/// Reads 64 bytes per step as four u128 words OR-ed together, which the compiler
/// turns into vector loads, and stops at the first non-zero block: pages with data
/// usually have it near their start. Written here rather than taken from a crate
/// because it is a dozen lines and the crates that offer it do byte search, not this.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        let word = |i: usize| u128::from_ne_bytes(block[i..i + 16].try_into().unwrap());
        if word(0) | word(16) | word(32) | word(48) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|byte| *byte == 0)
}

/// Splits `bytes` into maximal runs of non-zero pages, as byte ranges.
///
/// A page counts as non-zero if any of its bytes is; the last page may be short.
pub fn data_runs(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() && is_zero(page_at(bytes, pos)) {
            pos += PAGE_SIZE;
        }
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        while pos < bytes.len() && !is_zero(page_at(bytes, pos)) {
            pos += PAGE_SIZE;
        }
        Some(start..pos.min(bytes.len()))
    })
}

fn page_at(bytes: &[u8], pos: usize) -> &[u8] {
    &bytes[pos..(pos + PAGE_SIZE).min(bytes.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_sees_every_byte() {
        let mut bytes = vec![0u8; 200];
        assert!(is_zero(&bytes));
        for i in 0..bytes.len() {
            bytes[i] = 1;
            assert!(!is_zero(&bytes), "byte {i}");
            bytes[i] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn runs_cover_exactly_the_non_zero_pages() {
        let mut bytes = vec![0u8; PAGE_SIZE * 8 + 100];
        bytes[PAGE_SIZE + 5] = 1;
        bytes[PAGE_SIZE * 2] = 1;
        bytes[PAGE_SIZE * 5 + 4095] = 1;
        bytes[PAGE_SIZE * 8 + 99] = 1;
        let runs: Vec<_> = data_runs(&bytes).collect();
        assert_eq!(
            runs,
            [
                PAGE_SIZE..PAGE_SIZE * 3,
                PAGE_SIZE * 5..PAGE_SIZE * 6,
                PAGE_SIZE * 8..PAGE_SIZE * 8 + 100,
            ]
        );
        assert_eq!(data_runs(&[0u8; 10000]).count(), 0);
    }
}
