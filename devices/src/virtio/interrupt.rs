//! The interrupt line of one virtio-mmio device: the interrupt status
//! register the driver reads and acknowledges, and the irqfd that raises the
//! line on the in-kernel IOAPIC.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// A cloneable handle on a device's interrupt status and line.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irq: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt with status `status` that raises `irq` (an irqfd).
    pub fn new(irq: EventFd, status: u32) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(status)),
            irq: Arc::new(irq),
        }
    }

    /// Tells the driver that a used ring has new entries.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.trigger();
    }

    /// Pulses the line again; used after a restore when the status shows an
    /// interrupt the driver has not acknowledged yet.
    pub fn trigger(&self) {
        if let Err(e) = self.irq.write(1) {
            log::error!("could not raise a virtio interrupt: {e}");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledges the bits in `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn signals_set_status_bits_and_pulse_the_line() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Interrupt::new(evt.try_clone().unwrap(), 0);
        irq.signal_used_queue();
        irq.clone().signal_config_change();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(evt.read().unwrap(), 2);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }
}
