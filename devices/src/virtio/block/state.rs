//! What a drive saves besides its transport, and the checks that the image
//! found at restore is the one the snapshot was taken with.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A drive in a snapshot. The queue and the negotiated features are the
/// transport's; the image's contents are the user's file, which the
/// snapshot does not copy (its size is checked at restore).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The drive id (also what the guest reads with GET_ID, cut to 20 bytes).
    pub id: String,
    /// The image file, absolute.
    pub path: PathBuf,
    /// Whether the drive was read-only (the guest was offered VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// The image's size in bytes, which the guest saw as its capacity.
    pub size: u64,
}
