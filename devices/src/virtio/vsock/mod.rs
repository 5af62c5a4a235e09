//! virtio-vsock: guest `AF_VSOCK` stream sockets joined to Unix sockets on
//! the host, with Firecracker's conventions so the same host tools work
//! (see [`muxer`] for the host side's protocol).
//!
//! The pieces:
//! - [`packet`]: the 44-byte packet header and the checks on guest chains;
//! - [`connection`]: one connection's state machine and credit accounting;
//! - [`muxer`]: the listening socket, the connections and their epoll set;
//! - [`state`]: what a snapshot keeps (the context id and socket path).
//!
//! Queues: rx (0) carries packets to the guest, tx (1) packets from it,
//! event (2) the transport reset a restored device sends. Every chain the
//! device takes is completed before `process_queue` returns, so a snapshot
//! never holds a half-served request.

pub mod connection;
pub mod muxer;
pub mod packet;
pub mod state;
mod uds;

use std::io::Write;
use std::path::{Path, PathBuf};

use event_manager::EventSet;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{
    device_type, ActivateError, ActiveQueues, BackendFd, VirtioDevice, VIRTIO_F_VERSION_1,
};
use muxer::Muxer;
use packet::{FaultLog, RxBuffer};
pub use state::VsockState;

/// The size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Packets to the guest.
pub const RX_QUEUE: usize = 0;
/// Packets from the guest.
pub const TX_QUEUE: usize = 1;
/// Events to the guest.
pub const EVENT_QUEUE: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest drops its connections.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// The lowest context id a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;

const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Fault kinds of the event queue, for [`FaultLog`].
const FAULT_EVENT_CHAIN: u32 = 32;
const FAULT_RX_WRITE: u32 = 33;

/// Why the vsock device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The context id is reserved or too large.
    #[error(
        "the vsock context id {cid} is reserved or too large: give the guest a cid from 3 \
         to 4294967294"
    )]
    ReservedCid {
        /// The refused id.
        cid: u64,
    },
    /// A live process listens on the socket path.
    #[error(
        "the vsock socket {} is in use by a running process: stop that process or give this \
         VM another socket path (on restore, --vsock-uds)",
        .path.display()
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error(
        "{} exists and is not a socket: remove it or choose another vsock socket path",
        .path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The existing file at the path could not be checked.
    #[error(
        "could not tell whether the vsock socket {} is in use: remove it or choose another path",
        .path.display()
    )]
    Probe {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stale socket file could not be removed.
    #[error(
        "could not remove the stale vsock socket {} left by an ended process: remove it by hand",
        .path.display()
    )]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Binding the socket failed.
    #[error(
        "could not bind the vsock socket {}: check that its directory exists and is writable",
        .path.display()
    )]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The epoll set or its timer could not be made.
    #[error(
        "could not set up the event set of the vsock device at {}: raise the process's \
         descriptor limit",
        .path.display()
    )]
    EventSet {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    active: Option<ActiveQueues>,
    /// A restored device owes the guest a transport reset event.
    reset_event_due: bool,
    faults: FaultLog,
}

impl Vsock {
    /// A device for guest `guest_cid` whose host side listens at
    /// `uds_path`.
    ///
    /// A socket file at the path that nobody listens on (left by a process
    /// that ended) is replaced; one a live process listens on, or a file
    /// that is not a socket, is refused.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if !(MIN_GUEST_CID..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::ReservedCid { cid: guest_cid });
        }
        Ok(Vsock {
            guest_cid,
            muxer: Muxer::bind(guest_cid, uds_path)?,
            active: None,
            reset_event_due: false,
            faults: FaultLog::default(),
        })
    }

    /// The device's state for a snapshot.
    pub fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
            uds_path: self.muxer.uds_path().to_path_buf(),
        }
    }

    /// Rebuilds the device, listening at `uds_override` or at the saved
    /// path. Connections are not saved: once the restored device is active
    /// it sends the guest a transport reset event, so that the guest drops
    /// the connections it still has.
    pub fn restore(state: &VsockState, uds_override: Option<&Path>) -> Result<Vsock, VsockError> {
        let path = uds_override.unwrap_or(&state.uds_path);
        let mut dev = Vsock::new(state.guest_cid, path)?;
        dev.reset_event_due = true;
        Ok(dev)
    }

    /// The socket host programs connect to.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Takes every packet the guest queued on the tx queue.
    fn drain_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[TX_QUEUE];
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            match packet::read_tx(&mem, chain) {
                Ok(pkt) => self.muxer.on_guest_packet(&pkt),
                Err(e) => {
                    let msg = format!("tx chain {head} dropped: {}", error_chain(&e));
                    self.faults.report(e.kind(), &msg);
                    if let Some(hdr) = e.header() {
                        self.muxer.on_refused_packet(hdr);
                    }
                }
            }
            if !complete(queue, &mem, head, 0) {
                break;
            }
            used = true;
        }
        if used {
            notify(active, TX_QUEUE);
        }
    }

    /// Gives the guest the packets that wait, while it offers rx buffers.
    fn deliver(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[RX_QUEUE];
        let mut used = false;
        while self.muxer.has_pending() {
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::new(&mem, chain) {
                Ok(buf) => {
                    let Some(pkt) = self.muxer.next_packet(buf.payload_room()) else {
                        // Nothing after all: leave the buffer to the guest.
                        queue.go_to_previous_position();
                        break;
                    };
                    buf.write(&pkt).unwrap_or_else(|e| {
                        let msg = format!("rx chain {head}: the packet was lost: {e}");
                        self.faults.report(FAULT_RX_WRITE, &msg);
                        self.muxer.lost(&pkt.hdr);
                        0
                    })
                }
                Err(e) => {
                    let msg = format!("rx chain {head} returned empty: {}", error_chain(&e));
                    self.faults.report(e.kind(), &msg);
                    0
                }
            };
            if !complete(queue, &mem, head, len) {
                break;
            }
            used = true;
        }
        if used {
            notify(active, RX_QUEUE);
        }
    }

    /// Sends the transport reset a restored device owes, once the guest
    /// offers an event buffer.
    fn post_reset_event(&mut self) {
        if !self.reset_event_due {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        while let Some(chain) = active.queues[EVENT_QUEUE].pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let written = write_event(&mem, chain, EVENT_TRANSPORT_RESET);
            let len = match written {
                Ok(()) => 4,
                Err(why) => {
                    let msg = format!("event chain {head} returned empty: {why}");
                    self.faults.report(FAULT_EVENT_CHAIN, &msg);
                    0
                }
            };
            if !complete(&mut active.queues[EVENT_QUEUE], &mem, head, len) {
                return;
            }
            notify(active, EVENT_QUEUE);
            if len > 0 {
                log::info!(
                    "vsock: sent the guest a transport reset (connections are not restored)"
                );
                self.reset_event_due = false;
                return;
            }
        }
    }
}

fn notify(active: &mut ActiveQueues, index: usize) {
    active.notify_used(index);
}

/// Writes one `virtio_vsock_event` (its 32-bit id) into an event chain.
fn write_event(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    id: u32,
) -> Result<(), String> {
    let mut writer: virtio_queue::Writer<'_> = chain.writer(mem).map_err(|e| e.to_string())?;
    let event = id.to_le_bytes();
    let room = writer.available_bytes();
    if room < event.len() {
        return Err(format!("it holds {room} writable bytes, not 4"));
    }
    writer.write_all(&event).map_err(|e| e.to_string())
}

/// Puts a chain in the used ring; false when the ring is broken (logged).
fn complete(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            log::error!("vsock: a used ring is broken, the queue stops until notified: {e}");
            false
        }
    }
}

/// An error and its causes, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn name(&self) -> String {
        "vsock".into()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only: no VIRTIO_VSOCK_F_SEQPACKET.
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            *byte = at.and_then(|o| config.get(o)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vsock: write to configuration offset {offset} ignored (it is read-only)");
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        for i in 0..QUEUE_SIZES.len() {
            if !active.queues.get(i).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.active = Some(active);
        self.post_reset_event();
        Ok(())
    }

    fn reset(&mut self) -> Option<ActiveQueues> {
        self.muxer.drop_connections();
        self.active.take()
    }

    fn queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.deliver(),
            TX_QUEUE => {
                self.drain_tx();
                self.deliver();
            }
            EVENT_QUEUE => self.post_reset_event(),
            _ => log::debug!("vsock: notification of unknown queue {index} ignored"),
        }
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![BackendFd {
            fd: self.muxer.epoll_fd(),
            events: EventSet::IN,
        }]
    }

    fn process_backend(&mut self, index: usize, _events: EventSet) {
        if index != 0 {
            return log::debug!("vsock: event of unknown backend descriptor {index} ignored");
        }
        self.muxer.process_events();
        self.deliver();
    }

    fn quiesce(&mut self) -> Result<(), String> {
        // Every chain taken was completed; guest data still held for slow
        // host streams belongs to connections, which no snapshot keeps.
        log::debug!(
            "vsock: quiesced with {} connections, {} bytes held for host streams",
            self.muxer.connection_count(),
            self.muxer.buffered()
        );
        Ok(())
    }
}

/// Drives a device with queues laid out from `data` (for fuzzing): random
/// descriptors on all three queues, guest memory filled from `data`, and a
/// host program connecting to a socket in a scratch directory.
#[cfg(any(test, feature = "test-utils"))]
pub fn fuzz_queue(data: &[u8]) {
    fuzz::run(data)
}

#[cfg(any(test, feature = "test-utils"))]
mod fuzz;

#[cfg(test)]
mod tests;
