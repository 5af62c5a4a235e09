//! The event-manager subscriber that serves one virtio device: it waits on
//! the queues' ioeventfds, the device's backend descriptors and the
//! transport's activation eventfd, and calls the device for each event.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use super::{BackendFd, VirtioDevice};

/// The transport signalled that the device started or stopped.
const TOKEN_ACTIVATE: u32 = 0;
/// Queue `i` is token `TOKEN_QUEUE + i`.
const TOKEN_QUEUE: u32 = 1;
/// Backend descriptor `i` is token `TOKEN_BACKEND + i`.
const TOKEN_BACKEND: u32 = 1 << 16;

/// Serves one device from an event-manager loop.
pub struct DeviceWorker<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    activate_evt: EventFd,
    queue_evts: Vec<EventFd>,
    /// The backend descriptors registered now (empty while inactive).
    backends: Vec<BackendFd>,
}

impl<D: VirtioDevice> DeviceWorker<D> {
    /// A worker for the device behind `transport`; `activate_evt` and
    /// `queue_evts` are the descriptors the transport and KVM write.
    pub fn new(
        transport: Arc<Mutex<MmioTransport<D>>>,
        activate_evt: EventFd,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        DeviceWorker {
            transport,
            activate_evt,
            queue_evts,
            backends: Vec::new(),
        }
    }

    /// Registers the backend descriptors of an active device, or removes
    /// them from a stopped one.
    fn sync_backends(&mut self, ops: &mut EventOps) {
        let t = self.transport.lock().unwrap();
        let wanted = if t.is_active() {
            t.device().backend_fds()
        } else {
            Vec::new()
        };
        let name = t.device().name();
        drop(t);
        if wanted == self.backends {
            return;
        }
        for b in self.backends.drain(..) {
            let _ = ops.remove(Events::empty_raw(b.fd));
        }
        for (i, b) in wanted.iter().enumerate() {
            let ev = Events::with_data_raw(b.fd, TOKEN_BACKEND + i as u32, b.events);
            if let Err(e) = ops.add(ev) {
                log::error!("{name}: could not watch backend descriptor {i}: {e}");
            }
        }
        self.backends = wanted;
    }

    fn on_queue(&self, index: usize) {
        if let Err(e) = self.queue_evts[index].read() {
            log::trace!("queue {index} eventfd read: {e}");
        }
        let mut t = self.transport.lock().unwrap();
        if t.is_active() {
            t.device_mut().process_queue(index);
        }
    }

    fn on_backend(&self, index: usize, events: EventSet) {
        let mut t = self.transport.lock().unwrap();
        if t.is_active() {
            t.device_mut().process_backend(index, events);
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for DeviceWorker<D> {
    fn init(&mut self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.activate_evt, TOKEN_ACTIVATE, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            log::error!("could not watch a device's activation eventfd: {e}");
        }
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let ev = Events::with_data(evt, TOKEN_QUEUE + i as u32, EventSet::IN);
            if let Err(e) = ops.add(ev) {
                log::error!("could not watch queue {i}'s eventfd: {e}");
            }
        }
        self.sync_backends(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        match token {
            TOKEN_ACTIVATE => {
                let _ = self.activate_evt.read();
                self.sync_backends(ops);
            }
            t if t >= TOKEN_BACKEND => {
                self.on_backend((t - TOKEN_BACKEND) as usize, events.event_set())
            }
            t if ((t - TOKEN_QUEUE) as usize) < self.queue_evts.len() => {
                self.on_queue((t - TOKEN_QUEUE) as usize)
            }
            t => log::warn!("device worker: unknown event token {t}"),
        }
    }
}
