//! virtio-net: a network card whose host side is a TAP device.
//!
//! - Queues: rx (0) and tx (1), 256 entries each; one frame per chain,
//!   each frame behind a 12-byte `virtio_net_hdr_v1`.
//! - Features: VIRTIO_F_VERSION_1, VIRTIO_NET_F_STATUS (the link is always
//!   up) and VIRTIO_NET_F_MAC when a MAC address is given. No checksum or
//!   segmentation offload and no mergeable rx buffers are offered, so every
//!   frame is at most one MTU and fully checksummed both ways.
//! - Configuration space: `mac` (6 bytes), `status` (2 bytes).
//! - The backend ([`NetBackend`]) is a [`tap::Tap`] in Hiber, a socket pair
//!   in tests.
//!
//! What is saved is [`NetState`]; the transport saves the queues. A frame
//! waiting for a guest rx buffer at snapshot time is not saved.
//!
//! Limitations, each with what would lift it:
//! - No offloads (checksum, TSO, UFO) and no mergeable rx buffers: every
//!   frame costs the guest a full checksum and a ring entry per MTU.
//!   Offering VIRTIO_NET_F_CSUM/GUEST_CSUM and the TSO bits, with
//!   TUNSETOFFLOAD set to what the driver accepted, would lift it.
//! - One queue pair (no VIRTIO_NET_F_MQ), no control queue, and so no
//!   receive filtering and no MAC change from the guest.
//! - The link is always reported up, whatever the TAP's carrier.
//! - A MAC override at restore changes the configuration space only; a
//!   running guest keeps the address its driver read at probe time.
//! - Frames in flight are not part of a snapshot: the one waiting for an rx
//!   buffer is dropped, as is whatever the host sends while no process
//!   holds the TAP (between the snapshot and the restore). TCP resends.

mod backend;
mod chain;
mod port;
mod rx;
mod state;
pub mod tap;
mod tx;

use std::mem::size_of;

use event_manager::EventSet;
use virtio_bindings::virtio_net::{
    virtio_net_hdr_v1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};

use super::{
    device_type, ActivateError, ActiveQueues, BackendFd, VirtioDevice, VIRTIO_F_VERSION_1,
};
pub use backend::NetBackend;
use port::{Counters, Fault, Port};
pub use state::NetState;
use tap::{Tap, TapError};

/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The rx queue's index.
pub const RX_QUEUE: usize = 0;
/// The tx queue's index.
pub const TX_QUEUE: usize = 1;
/// The virtio-net header in front of every frame (virtio 1.x always has
/// `num_buffers`).
pub const HEADER_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// The largest frame with its header, either way: a 64 KiB IP packet in
/// an Ethernet frame with a VLAN tag. A longer tx chain is dropped.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + 65550;
/// The configuration space: the MAC address, then the status.
const CONFIG_LEN: usize = 8;

/// Why a network interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP cannot be attached; the cause says why and what to do.
    #[error("network interface `{id}` cannot use the TAP `{tap}`")]
    Tap {
        /// The interface.
        id: String,
        /// The TAP.
        tap: String,
        /// Why.
        #[source]
        source: TapError,
    },
    /// The MAC address is not one an interface can have.
    #[error(
        "network interface `{id}` (TAP `{tap}`): MAC address {mac} is not a unicast \
         address: give one whose first byte is even and that is not all zeros, such \
         as 02:00:00:00:00:01"
    )]
    BadMac {
        /// The interface.
        id: String,
        /// The TAP.
        tap: String,
        /// The address, written out.
        mac: String,
    },
}

/// A virtio-net device.
pub struct Net {
    id: String,
    tap: String,
    mac: Option<[u8; 6]>,
    port: Port,
    active: Option<ActiveQueues>,
}

impl Net {
    /// An interface named `id` (such as `eth0`) attached to the existing
    /// TAP `tap`, offering `mac` to the guest when given.
    pub fn new(id: &str, tap: &str, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
        check_mac(id, tap, mac)?;
        let backend = open_tap(id, tap)?;
        Net::with_backend(id, tap, mac, Box::new(backend))
    }

    /// An interface on another backend than a TAP (a socket pair in tests);
    /// `tap` is only the name it reports and saves.
    pub fn with_backend(
        id: &str,
        tap: &str,
        mac: Option<[u8; 6]>,
        backend: Box<dyn NetBackend>,
    ) -> Result<Net, NetError> {
        check_mac(id, tap, mac)?;
        log::info!("net {id}: on TAP {tap}, MAC {}", mac_text(mac));
        Ok(Net {
            id: id.to_string(),
            tap: tap.to_string(),
            mac,
            port: Port::new(format!("net {id}"), backend),
            active: None,
        })
    }

    /// What the interface saves. A frame still waiting for a guest rx
    /// buffer is left out and counted as dropped: networks drop packets,
    /// and the guest's TCP sends again what this loses.
    pub fn save(&self) -> NetState {
        let c = self.port.counters;
        let left_out = u64::from(self.port.rx_pending.is_some());
        if left_out != 0 {
            log::debug!("net {}: a waiting rx frame is not saved", self.id);
        }
        NetState {
            id: self.id.clone(),
            tap: self.tap.clone(),
            mac: self.mac,
            tx_frames: c.tx_frames,
            rx_frames: c.rx_frames,
            dropped: c.dropped + left_out,
        }
    }

    /// Opens the TAP again (or `tap_override`), with `mac_override`
    /// replacing the MAC in the configuration space when given.
    ///
    /// A guest driver reads the MAC when it probes the device, so a running
    /// guest keeps sending from the address it had until its driver probes
    /// again; the override is for a guest that has not set up the
    /// interface yet, or one that will be told its new address otherwise.
    pub fn restore(
        state: &NetState,
        tap_override: Option<&str>,
        mac_override: Option<[u8; 6]>,
    ) -> Result<Net, NetError> {
        let tap = tap_override.unwrap_or(&state.tap);
        check_mac(&state.id, tap, mac_override)?;
        let backend = open_tap(&state.id, tap)?;
        Net::restore_with_backend(state, tap, mac_override, Box::new(backend))
    }

    /// [`Net::restore`] on another backend than a TAP, reported as `tap`.
    pub fn restore_with_backend(
        state: &NetState,
        tap: &str,
        mac_override: Option<[u8; 6]>,
        backend: Box<dyn NetBackend>,
    ) -> Result<Net, NetError> {
        if tap != state.tap {
            log::info!("net {}: moved from TAP {} to {tap}", state.id, state.tap);
        }
        let mut net = Net::with_backend(&state.id, tap, mac_override.or(state.mac), backend)?;
        net.port.counters = Counters::from_state(state);
        Ok(net)
    }

    /// The interface's name among the VM's interfaces.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The TAP it is attached to.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac.unwrap_or_default());
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config
    }

    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.port.receive(&active.mem, &mut active.queues[RX_QUEUE]) {
            active.notify_used(RX_QUEUE);
        }
    }

    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self
            .port
            .transmit(&active.mem, &mut active.queues[TX_QUEUE])
        {
            active.notify_used(TX_QUEUE);
        }
    }
}

fn open_tap(id: &str, tap: &str) -> Result<Tap, NetError> {
    Tap::open(tap).map_err(|source| NetError::Tap {
        id: id.to_string(),
        tap: tap.to_string(),
        source,
    })
}

fn check_mac(id: &str, tap: &str, mac: Option<[u8; 6]>) -> Result<(), NetError> {
    match mac {
        Some(m) if m[0] & 1 != 0 || m == [0; 6] => Err(NetError::BadMac {
            id: id.to_string(),
            tap: tap.to_string(),
            mac: mac_text(mac),
        }),
        _ => Ok(()),
    }
}

fn mac_text(mac: Option<[u8; 6]>) -> String {
    match mac {
        Some(b) => format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        ),
        None => "chosen by the guest".into(),
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn name(&self) -> String {
        format!("net {}", self.id)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mac = self.mac.map_or(0, |_| 1 << VIRTIO_NET_F_MAC);
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_STATUS | mac
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config();
        let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
            return;
        };
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("net {}: configuration write at {offset} ignored", self.id);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        for i in [RX_QUEUE, TX_QUEUE] {
            if !active.queues.get(i).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) -> Option<ActiveQueues> {
        self.port.rx_pending = None;
        self.active.take()
    }

    fn queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => log::warn!("net {}: notify of queue {index}, which it lacks", self.id),
        }
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![BackendFd {
            fd: self.port.backend.raw_fd(),
            events: EventSet::IN | EventSet::EDGE_TRIGGERED,
        }]
    }

    fn process_backend(&mut self, index: usize, events: EventSet) {
        if index != 0 {
            log::warn!("net {}: event on backend {index}, which it lacks", self.id);
            return;
        }
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            let tap = self.tap.clone();
            self.port.warn(
                Fault::Hangup,
                format_args!("TAP {tap} reported {events:?}; was it deleted?"),
            );
        }
        self.process_rx();
    }
}

#[cfg(any(test, feature = "test-utils"))]
mod fuzz;
#[cfg(any(test, feature = "test-utils"))]
pub use fuzz::fuzz_queue;

#[cfg(test)]
mod tests;
