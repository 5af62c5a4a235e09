//! The virtio-mmio transport, version 2 ("modern") of the register layout
//! (virtio 1.2, section 4.2.2). The legacy layout (version 1) is not offered.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::queue_state::duplicate;
use super::{ActiveQueues, Interrupt, SavedQueue, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::mmio_bus::MmioDevice;

/// "virt" in little-endian, the first register of every virtio-mmio device.
const MAGIC: u32 = 0x7472_6976;
/// The modern register layout.
const VERSION: u32 = 2;
/// The vendor id Hiber reports ("HIBR").
const VENDOR_ID: u32 = 0x5242_4948;

/// What the transport saves of itself; the device saves its own part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The device status register.
    pub status: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The feature word the driver selected for reading.
    pub device_features_sel: u32,
    /// The feature word the driver selected for writing.
    pub driver_features_sel: u32,
    /// The queue the driver selected.
    pub queue_sel: u32,
    /// Every queue, with the device's positions when active.
    pub queues: Vec<SavedQueue>,
    /// The interrupt status register.
    pub interrupt_status: u32,
    /// The configuration generation counter.
    pub config_generation: u32,
    /// Whether the device was started (`DRIVER_OK` accepted).
    pub activated: bool,
}

/// Why a saved transport cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum MmioRestoreError {
    /// The saved queue count does not match the device.
    #[error(
        "the snapshot has {saved} queues for the {device} device, which has {expected}: \
         the snapshot belongs to another device type"
    )]
    QueueCount {
        /// The device.
        device: String,
        /// Queues in the snapshot.
        saved: usize,
        /// Queues the device has.
        expected: usize,
    },
    /// The driver had accepted features this device does not offer.
    #[error(
        "the snapshot's driver of the {device} device accepted features {acked:#x}, but \
         this device offers only {offered:#x}: restore with the device configuration the \
         snapshot was taken with"
    )]
    Features {
        /// The device.
        device: String,
        /// Features in the snapshot.
        acked: u64,
        /// Features the device offers now.
        offered: u64,
    },
    /// A saved queue is invalid.
    #[error("a saved queue of the {device} device is invalid")]
    Queue {
        /// The device.
        device: String,
        /// The cause.
        #[source]
        source: super::queue_state::QueueRestoreError,
    },
    /// The device refused to start again.
    #[error("the {device} device could not be started again")]
    Activate {
        /// The device.
        device: String,
        /// The cause.
        #[source]
        source: super::ActivateError,
    },
}

/// One virtio device behind its virtio-mmio registers.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    /// Written when the device starts or stops, so its worker re-registers.
    activate_evt: EventFd,
    /// Clones of the queues' ioeventfds, for a notify that reaches us as an
    /// MMIO exit (no ioeventfd registered).
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    status: u32,
    acked_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A freshly reset transport for `device`.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
        activate_evt: EventFd,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let queues = fresh_queues(device.queue_max_sizes());
        MmioTransport {
            device,
            mem,
            interrupt,
            activate_evt,
            queue_evts,
            queues,
            status: 0,
            acked_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to change it (a backend override on restore, say).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Whether the driver started the device.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// What the transport saves.
    pub fn save(&self) -> MmioState {
        let queues = match self.device.queues().filter(|_| self.active) {
            Some(active) => active.iter().map(SavedQueue::save).collect(),
            None => self.queues.iter().map(SavedQueue::save).collect(),
        };
        MmioState {
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            queues,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            activated: self.active,
        }
    }

    /// Rebuilds a transport from `state`, starting the device again if it
    /// was started, without touching guest memory.
    pub fn restore(
        device: D,
        mem: GuestMemoryMmap,
        irq: EventFd,
        activate_evt: EventFd,
        queue_evts: Vec<EventFd>,
        state: &MmioState,
    ) -> Result<Self, MmioRestoreError> {
        let expected = device.queue_max_sizes().len();
        if state.queues.len() != expected {
            return Err(MmioRestoreError::QueueCount {
                device: device.name(),
                saved: state.queues.len(),
                expected,
            });
        }
        let offered = device.avail_features();
        if state.acked_features & !offered != 0 {
            return Err(MmioRestoreError::Features {
                device: device.name(),
                acked: state.acked_features,
                offered,
            });
        }
        let interrupt = Interrupt::new(irq, state.interrupt_status);
        let mut t = MmioTransport::new(device, mem, interrupt, activate_evt, queue_evts);
        t.queues = restore_queues(&t.device, &state.queues)?;
        t.status = state.status;
        t.acked_features = state.acked_features;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        if state.activated {
            t.start_device()
                .map_err(|source| MmioRestoreError::Activate {
                    device: t.device.name(),
                    source,
                })?;
        }
        Ok(t)
    }

    /// Raises the interrupt again if the driver had not acknowledged it when
    /// the snapshot was taken: the pulse itself is not part of any state.
    pub fn replay_pending_interrupt(&self) {
        if self.interrupt.status() != 0 {
            self.interrupt.trigger();
        }
    }

    /// Tells the driver the configuration space changed (after a restore
    /// override, for example).
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change();
    }

    fn start_device(&mut self) -> Result<(), super::ActivateError> {
        let active = ActiveQueues {
            mem: self.mem.clone(),
            queues: self.queues.iter().map(duplicate).collect(),
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        self.device.activate(active)?;
        self.active = true;
        self.wake_worker();
        Ok(())
    }

    fn wake_worker(&self) {
        if let Err(e) = self.activate_evt.write(1) {
            log::error!(
                "{}: could not wake the device worker: {e}",
                self.device.name()
            );
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
            self.wake_worker();
        }
        log::debug!("{}: reset by the driver", self.device.name());
        self.queues = fresh_queues(self.device.queue_max_sizes());
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn device_features(&self) -> u32 {
        let features = self.device.avail_features();
        match self.device_features_sel {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            log::warn!("{}: features written after FEATURES_OK", self.device.name());
            return;
        }
        let (mask, shift) = match self.driver_features_sel {
            0 => (0xffff_ffffu64, 0),
            1 => (0xffff_ffff << 32, 32),
            _ => return,
        };
        self.acked_features = (self.acked_features & !mask) | (u64::from(value) << shift);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Whether the driver may change queue settings now.
    fn queue_setup_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        if !self.queue_setup_allowed() {
            log::warn!(
                "{}: queue register {offset:#x} written outside queue setup, ignored",
                self.device.name()
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => q.set_size(value as u16),
            VIRTIO_MMIO_QUEUE_READY => q.set_ready(value == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn notify_queue(&self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::error!(
                        "{}: could not signal queue {index}: {e}",
                        self.device.name()
                    );
                }
            }
            None => log::warn!(
                "{}: the driver notified queue {index}, which does not exist",
                self.device.name()
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            log::warn!(
                "{}: status {value:#x} clears bits of {:#x} without a reset, ignored",
                self.device.name(),
                self.status
            );
            return;
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            self.status = value & !VIRTIO_CONFIG_S_FEATURES_OK;
            return;
        }
        self.status = value;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.driver_ok();
        }
    }

    /// The driver accepted only offered features, and virtio 1.x.
    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        let extra = self.acked_features & !offered;
        let ok = extra == 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0;
        if !ok {
            log::warn!(
                "{}: refused driver features {:#x} (offered {offered:#x})",
                self.device.name(),
                self.acked_features
            );
        }
        ok
    }

    fn driver_ok(&mut self) {
        let needed = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK;
        if self.status & needed != needed || self.status & VIRTIO_CONFIG_S_FAILED != 0 {
            log::warn!(
                "{}: DRIVER_OK in status {:#x}",
                self.device.name(),
                self.status
            );
            return;
        }
        let invalid = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem));
        if let Some(i) = invalid {
            log::warn!(
                "{}: queue {i} is not valid in guest memory",
                self.device.name()
            );
            self.needs_reset();
            return;
        }
        match self.start_device() {
            Ok(()) => log::info!("{}: started by the guest driver", self.device.name()),
            Err(e) => {
                log::error!("{}: could not start: {e}", self.device.name());
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.notify_config_change();
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => self.device_features(),
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected(|q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self.selected(|q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("{}: read of register {offset:#x}", self.device.name());
                0
            }
        }
    }

    fn selected(&self, f: impl Fn(&Queue) -> u32) -> u32 {
        self.queues.get(self.queue_sel as usize).map_or(0, f)
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify_queue(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            _ => log::debug!(
                "{}: write of {value:#x} to register {offset:#x} ignored",
                self.device.name()
            ),
        }
    }
}

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn name(&self) -> String {
        self.device.name()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "{}: {}-byte register read at {offset:#x}",
                self.name(),
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "{}: {}-byte register write at {offset:#x}",
                self.name(),
                data.len()
            );
            return;
        };
        if offset.is_multiple_of(4) {
            self.write_register(offset as u32, u32::from_le_bytes(bytes));
        }
    }
}

fn fresh_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
        .collect()
}

fn restore_queues<D: VirtioDevice>(
    device: &D,
    saved: &[SavedQueue],
) -> Result<Vec<Queue>, MmioRestoreError> {
    saved
        .iter()
        .map(|q| {
            q.restore().map_err(|source| MmioRestoreError::Queue {
                device: device.name(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
