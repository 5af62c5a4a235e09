//! Virtio devices on the virtio-mmio transport (virtio 1.x, modern only).
//!
//! The pieces, and where each device's state lives:
//! - [`VirtioDevice`] is what a device type implements: its features, its
//!   configuration space, and the work it does when the guest notifies a
//!   queue or a host backend becomes ready.
//! - [`mmio::MmioTransport`] holds one device and the registers the guest
//!   programs (status, feature selection, queue addresses). It answers the
//!   vCPUs' MMIO accesses and hands the device its queues on `DRIVER_OK`.
//! - [`worker::DeviceWorker`] is the device's event-manager subscriber: it
//!   waits on the queues' ioeventfds and the backend's descriptors and calls
//!   the device.
//! - [`Interrupt`] raises the device's interrupt line through an irqfd.
//! - Each device folder (`block`, `net`, `vsock`, `rng`) holds the device and
//!   its snapshot state; [`mmio::MmioState`] holds what the transport saves.
//!
//! Queues are driven with the rust-vmm `virtio-queue` crate and every guest
//! memory access goes through `vm-memory`, so a descriptor that points
//! outside guest RAM is an error returned to the device, never a host fault.

pub mod block;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue_state;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod vsock;
pub mod worker;

use std::os::fd::RawFd;

use event_manager::EventSet;
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use interrupt::Interrupt;
pub use queue_state::SavedQueue;

/// The device type numbers of the virtio specification (section 5).
pub mod device_type {
    /// A network card.
    pub const NET: u32 = 1;
    /// A block device.
    pub const BLOCK: u32 = 2;
    /// An entropy source.
    pub const RNG: u32 = 4;
    /// A socket device (vsock).
    pub const VSOCK: u32 = 19;
}

/// Feature bit 32: the device follows virtio 1.x; every Hiber device sets it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// What a device gets when the driver sets `DRIVER_OK`.
pub struct ActiveQueues {
    /// Guest memory, for every ring and buffer access.
    pub mem: GuestMemoryMmap,
    /// The queues the driver set up, in the device's queue order.
    pub queues: Vec<Queue>,
    /// The device's interrupt line.
    pub interrupt: Interrupt,
    /// The features the driver accepted.
    pub acked_features: u64,
}

impl ActiveQueues {
    /// Raises the interrupt after used entries were added to queue `index`,
    /// unless the driver asked not to be interrupted. `virtio-queue`'s
    /// `needs_notification` only knows VIRTIO_F_RING_EVENT_IDX (which Hiber
    /// does not offer), so VRING_AVAIL_F_NO_INTERRUPT, which a Linux driver
    /// sets while it polls a queue, is read here: each interrupt avoided is
    /// guest kernel work saved.
    pub fn notify_used(&mut self, index: usize) {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        let wanted = queue.needs_notification(&self.mem).unwrap_or(true);
        let flags: u16 = self
            .mem
            .read_obj(GuestAddress(queue.avail_ring()))
            .map(u16::from_le)
            .unwrap_or(0);
        if wanted && flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0 {
            self.interrupt.signal_used_queue();
        }
    }
}

/// Why a device could not start with the queues the driver gave it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("the driver did not make queue {0} ready")]
    QueueNotReady(usize),
    /// The device's backend failed.
    #[error("the {device} backend could not start: {reason}")]
    Backend {
        /// Which device.
        device: String,
        /// What went wrong.
        reason: String,
    },
}

/// A host descriptor a device wants watched while it is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendFd {
    /// The descriptor (a TAP, a socket, an epoll set...).
    pub fd: RawFd,
    /// Readiness to wait for, possibly edge-triggered.
    pub events: EventSet,
}

/// A virtio device, as the transport and its worker drive it.
///
/// Methods are called with the transport's lock held, from a vCPU thread
/// (configuration access, activation, reset) or from the device's worker
/// (queue and backend events), never both at once.
pub trait VirtioDevice: Send {
    /// The device type (see [`device_type`]).
    fn device_type(&self) -> u32;

    /// A short name for logs and errors, such as `block drive0`.
    fn name(&self) -> String;

    /// The largest size of each of the device's queues, in queue order.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;

    /// Reads the device configuration space at `offset`; bytes beyond it
    /// read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space; most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with the driver's queues.
    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError>;

    /// Stops the device and gives back its queues (the driver reset it);
    /// `None` when it was not active.
    fn reset(&mut self) -> Option<ActiveQueues>;

    /// The queues of an active device, for a snapshot.
    fn queues(&self) -> Option<&[Queue]>;

    /// Handles a notification of queue `index` by the driver.
    fn process_queue(&mut self, index: usize);

    /// The host descriptors to watch while active, in a fixed order.
    fn backend_fds(&self) -> Vec<BackendFd> {
        Vec::new()
    }

    /// Handles readiness of backend descriptor `index` of [`Self::backend_fds`].
    fn process_backend(&mut self, index: usize, events: EventSet) {
        log::warn!(
            "{}: unexpected backend event {index} ({events:?}) ignored",
            self.name()
        );
    }

    /// Completes or drops in-flight work so that a snapshot taken now holds
    /// no descriptor the device took but did not finish, and makes written
    /// data durable. Called with the vCPUs and the worker paused.
    fn quiesce(&mut self) -> Result<(), String> {
        Ok(())
    }
}
