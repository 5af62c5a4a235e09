//! What the vsock device saves in a snapshot.
//!
//! Connections are not part of it: their host ends are sockets of the
//! process that took the snapshot. A restored device tells the guest to
//! drop its connections instead (a transport reset event), as Firecracker
//! does; guest sockets that listen survive it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The vsock device's state besides its transport and queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context id, as its configuration space shows it.
    pub guest_cid: u64,
    /// The Unix socket host programs connect to; a restore may bind another.
    pub uds_path: PathBuf,
}
