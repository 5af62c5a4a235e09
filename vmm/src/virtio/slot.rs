//! One placed virtio device: its window and line, its KVM wiring, and the
//! type-erased handle the machine keeps to save and quiesce it.

use std::sync::{Arc, Mutex};

use devices::mmio_bus::SharedMmioDevice;
use devices::virtio::mmio::{MmioState, MmioTransport};
use devices::virtio::worker::DeviceWorker;
use devices::virtio::{Interrupt, VirtioDevice};
use kvm_ioctls::IoEventAddress;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device_loop::Subscriber;
use super::{window_addr, SaveDevice, Shared, VirtioDeviceState, VirtioError};
use crate::vstate::vm::Vm;

/// Where a device sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Its MMIO window number.
    pub window: u64,
    /// The window's guest physical address.
    pub addr: u64,
    /// Its IOAPIC line.
    pub irq: u32,
}

impl Placement {
    /// Window `window` with line `irq`; fails for a window past the area.
    pub fn new(window: u64, irq: u32) -> Result<Self, VirtioError> {
        let addr = window_addr(window).ok_or(VirtioError::TooMany(window as usize + 1))?;
        Ok(Placement { window, addr, irq })
    }

    /// The `virtio_mmio.device=` argument that tells the guest about it.
    pub fn cmdline_arg(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.addr, self.irq)
    }
}

/// What the machine does with a device whatever its type.
pub trait Slot: Send {
    /// Where it sits.
    fn placement(&self) -> Placement;
    /// The device for the MMIO bus.
    fn mmio(&self) -> SharedMmioDevice;
    /// A line for the log.
    fn describe(&self) -> String;
    /// Its snapshot state.
    fn save(&self) -> VirtioDeviceState;
    /// Finishes in-flight work before a snapshot.
    fn quiesce(&self) -> Result<(), VirtioError>;
    /// Raises a pending interrupt again after a restore.
    fn replay_pending_interrupt(&self);
    /// Tells the driver the configuration space changed.
    fn notify_config_change(&self);
}

struct Placed<D: VirtioDevice> {
    place: Placement,
    transport: Shared<D>,
}

impl<D: VirtioDevice + SaveDevice + 'static> Slot for Placed<D> {
    fn placement(&self) -> Placement {
        self.place
    }

    fn mmio(&self) -> SharedMmioDevice {
        self.transport.clone()
    }

    fn describe(&self) -> String {
        let t = self.transport.lock().unwrap();
        format!(
            "{} at {:#x}, interrupt line {}{}",
            t.device().name(),
            self.place.addr,
            self.place.irq,
            if t.is_active() { ", active" } else { "" }
        )
    }

    fn save(&self) -> VirtioDeviceState {
        let t = self.transport.lock().unwrap();
        VirtioDeviceState {
            window: self.place.window,
            irq: self.place.irq,
            transport: t.save(),
            device: t.device().device_state(),
        }
    }

    fn quiesce(&self) -> Result<(), VirtioError> {
        let mut t = self.transport.lock().unwrap();
        let name = t.device().name();
        t.device_mut()
            .quiesce()
            .map_err(|reason| VirtioError::Quiesce {
                device: name,
                reason,
            })
    }

    fn replay_pending_interrupt(&self) {
        self.transport.lock().unwrap().replay_pending_interrupt();
    }

    fn notify_config_change(&self) {
        self.transport.lock().unwrap().notify_config_change();
    }
}

fn eventfd(device: &str) -> Result<EventFd, VirtioError> {
    EventFd::new(EFD_NONBLOCK).map_err(|source| VirtioError::Wire {
        device: device.to_string(),
        what: "eventfd",
        source,
    })
}

fn dup(evt: &EventFd, device: &str) -> Result<EventFd, VirtioError> {
    evt.try_clone().map_err(|source| VirtioError::Wire {
        device: device.to_string(),
        what: "eventfd",
        source,
    })
}

/// An ioeventfd per queue, matched on the queue index written to the
/// notify register.
fn queue_eventfds(
    vm: &Vm,
    place: Placement,
    queues: usize,
    name: &str,
) -> Result<Vec<EventFd>, VirtioError> {
    let notify = IoEventAddress::Mmio(place.addr + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
    (0..queues)
        .map(|i| {
            let evt = eventfd(name)?;
            vm.fd()
                .register_ioevent(&evt, &notify, i as u32)
                .map_err(|e| VirtioError::Wire {
                    device: name.to_string(),
                    what: "KVM_IOEVENTFD",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                })?;
            Ok(evt)
        })
        .collect()
}

/// Wires `device` at `place`: fresh when `saved` is `None`, otherwise with
/// the saved transport state (which restarts an active device).
pub fn wire<D: VirtioDevice + SaveDevice + 'static>(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    place: Placement,
    device: D,
    saved: Option<&MmioState>,
) -> Result<(Box<dyn Slot>, Subscriber), VirtioError> {
    let name = device.name();
    let irq = eventfd(&name)?;
    vm.register_irqfd(&irq, place.irq)
        .map_err(|e| VirtioError::Create {
            device: name.clone(),
            reason: e.to_string(),
        })?;
    let activate = eventfd(&name)?;
    let queues = queue_eventfds(vm, place, device.queue_max_sizes().len(), &name)?;
    let clones = queues
        .iter()
        .map(|e| dup(e, &name))
        .collect::<Result<Vec<_>, _>>()?;
    let activate_dup = dup(&activate, &name)?;
    let transport = match saved {
        None => MmioTransport::new(
            device,
            mem.clone(),
            Interrupt::new(irq, 0),
            activate_dup,
            clones,
        ),
        Some(state) => {
            MmioTransport::restore(device, mem.clone(), irq, activate_dup, clones, state).map_err(
                |e| VirtioError::Create {
                    device: name.clone(),
                    reason: crate::api::error_chain(&e),
                },
            )?
        }
    };
    let transport = Arc::new(Mutex::new(transport));
    let worker = DeviceWorker::new(transport.clone(), activate, queues);
    let slot = Placed { place, transport };
    Ok((Box::new(slot), Arc::new(Mutex::new(worker))))
}
