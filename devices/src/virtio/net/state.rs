//! What a network interface saves besides its transport (which saves the
//! queues and the negotiated features).

use serde::{Deserialize, Serialize};

/// The saved form of a [`super::Net`].
///
/// A frame that had arrived from the TAP but was still waiting for an rx
/// buffer of the guest is not part of it: the restored interface starts
/// without it, as any network may drop a packet (TCP sends it again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The interface's name among the VM's interfaces (`eth0`, ...).
    pub id: String,
    /// The host TAP it was attached to.
    pub tap: String,
    /// The MAC address in its configuration space, if one was given.
    pub mac: Option<[u8; 6]>,
    /// Frames the device has passed from the guest to the TAP.
    pub tx_frames: u64,
    /// Frames the device has passed from the TAP to the guest.
    pub rx_frames: u64,
    /// Frames dropped either way (a bad chain, a frame too big for its
    /// buffer, a TAP that refused a write, or the frame a snapshot left out).
    pub dropped: u64,
}
