//! The device's side of its backend: the frame buffers, the rx frame that
//! waits for a guest buffer, the counters, and warnings given once per kind.

use std::fmt;

use super::backend::NetBackend;
use super::{NetState, MAX_FRAME_LEN};

/// Frames counted since the interface was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames passed from the guest to the backend.
    pub tx_frames: u64,
    /// Frames passed from the backend to the guest.
    pub rx_frames: u64,
    /// Frames dropped either way.
    pub dropped: u64,
}

impl Counters {
    /// The counters a saved interface had.
    pub fn from_state(state: &NetState) -> Self {
        Counters {
            tx_frames: state.tx_frames,
            rx_frames: state.rx_frames,
            dropped: state.dropped,
        }
    }
}

/// A kind of fault, warned about once per device and then logged at debug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A tx chain was refused; the value is the [`super::chain::ChainFault`] bit.
    TxChain(u32),
    /// An rx chain was refused; as above.
    RxChain(u32),
    /// The backend refused a frame from the guest.
    Send,
    /// Reading the backend failed.
    Recv,
    /// The backend gave a frame shorter than the header.
    ShortFrame,
    /// A frame was bigger than the guest's rx buffer.
    FrameTooBig,
    /// The backend reported an error or a hang-up.
    Hangup,
}

impl Fault {
    fn bit(self) -> u64 {
        match self {
            Fault::TxChain(b) => u64::from(b),
            Fault::RxChain(b) => u64::from(b) << 16,
            Fault::Send => 1 << 32,
            Fault::Recv => 1 << 33,
            Fault::ShortFrame => 1 << 34,
            Fault::FrameTooBig => 1 << 35,
            Fault::Hangup => 1 << 36,
        }
    }
}

/// The backend and what the device keeps to move frames through it.
pub struct Port {
    /// `net <id>`, for logs.
    pub name: String,
    /// The host side.
    pub backend: Box<dyn NetBackend>,
    /// One frame read from the backend, header first.
    pub rx_buf: Vec<u8>,
    /// The length of the frame in `rx_buf` still waiting for a guest buffer.
    pub rx_pending: Option<usize>,
    /// One frame gathered from a tx chain.
    pub tx_buf: Vec<u8>,
    /// Frame counts.
    pub counters: Counters,
    warned: u64,
}

impl Port {
    /// A port on `backend`, for the device named `name`.
    pub fn new(name: String, backend: Box<dyn NetBackend>) -> Self {
        Port {
            name,
            backend,
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            counters: Counters::default(),
            warned: 0,
        }
    }

    /// Logs `what` as a warning the first time `fault` happens, then at
    /// debug level, so a misbehaving guest cannot flood the log.
    pub fn warn(&mut self, fault: Fault, what: fmt::Arguments) {
        let bit = fault.bit();
        if self.warned & bit == 0 {
            self.warned |= bit;
            log::warn!("{}: {what} (warned once)", self.name);
        } else {
            log::debug!("{}: {what}", self.name);
        }
    }
}
