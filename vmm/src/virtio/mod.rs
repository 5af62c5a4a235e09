//! The machine's virtio devices: where each sits (MMIO window and interrupt
//! line), how it is wired to KVM (an irqfd for its interrupt, an ioeventfd
//! per queue), the thread that serves them, and their snapshot state.
//!
//! Devices are placed in a fixed order: drives, network interfaces, vsock,
//! entropy. Device `i` gets MMIO window `i` and the `i`-th line of
//! [`IRQ_LINES`]; the guest learns both from `virtio_mmio.device=` on its
//! command line. A restore puts every device back at the window and line
//! the snapshot names.

pub mod device_loop;
mod slot;

use std::sync::{Arc, Mutex};

use devices::mmio_bus::{MmioBus, MmioBusError};
use devices::virtio::block::{Block, BlockState};
use devices::virtio::net::{Net, NetState};
use devices::virtio::rng::{Rng, RngState};
use devices::virtio::vsock::{Vsock, VsockState};
use devices::virtio::VirtioDevice;
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use crate::boot::layout::{virtio_mmio_addr, VIRTIO_MMIO_DEVICE_SIZE};
use crate::config::MachineConfig;
use crate::persist::RestoreOptions;
use crate::vstate::vm::Vm;
use device_loop::{DeviceLoop, DeviceLoopError};
use slot::{Placement, Slot};

/// The IOAPIC lines virtio devices may use, in order: the ISA lines no
/// legacy device of Hiber uses (0-4, 8 and 12 are taken or reserved), then
/// the PCI-range lines 16-23.
pub const IRQ_LINES: [u32; 17] = [
    5, 6, 7, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];

/// Errors of building, saving or restoring the virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// More devices than interrupt lines.
    #[error(
        "{0} virtio devices asked for, but Hiber has interrupt lines for {max}: \
         use fewer drives or network interfaces",
        max = IRQ_LINES.len()
    )]
    TooMany(usize),
    /// A device could not be created.
    #[error("could not create the {device} device: {reason}")]
    Create {
        /// Which device.
        device: String,
        /// Why.
        reason: String,
    },
    /// KVM refused an irqfd or ioeventfd.
    #[error("could not wire the {device} device to KVM ({what})")]
    Wire {
        /// Which device.
        device: String,
        /// Which ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The MMIO bus refused a window.
    #[error("could not place a virtio device on the MMIO bus")]
    Bus(#[source] MmioBusError),
    /// A saved device does not fit the saved configuration.
    #[error("the snapshot's virtio device {index} is invalid: {reason}")]
    BadState {
        /// Position in the snapshot.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A restore override does not fit the snapshot.
    #[error("{0}")]
    Override(String),
    /// The device loop failed.
    #[error(transparent)]
    Loop(#[from] DeviceLoopError),
    /// A device could not finish its in-flight work before a snapshot.
    #[error("the {device} device could not be quiesced for the snapshot: {reason}")]
    Quiesce {
        /// Which device.
        device: String,
        /// Why.
        reason: String,
    },
}

impl VirtioError {
    /// Whether the error refuses the user's input (a snapshot's drive image
    /// changed, a TAP is missing, an override names no device) rather than
    /// reporting a failure of this host.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            VirtioError::BadState { .. } | VirtioError::Override(_) | VirtioError::TooMany(_)
        )
    }
}

/// What a device saves, by device type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// virtio-blk.
    Block(BlockState),
    /// virtio-net.
    Net(NetState),
    /// virtio-vsock.
    Vsock(VsockState),
    /// virtio-rng.
    Rng(RngState),
}

/// One virtio device in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// Its MMIO window number.
    pub window: u64,
    /// Its IOAPIC line.
    pub irq: u32,
    /// The transport registers and queues.
    pub transport: devices::virtio::mmio::MmioState,
    /// The device's own state.
    pub device: DeviceState,
}

/// The virtio devices of a machine and the thread serving them.
pub struct VirtioDevices {
    slots: Vec<Box<dyn Slot>>,
    device_loop: DeviceLoop,
}

/// A device not yet wired, with where it goes.
enum Pending {
    Block(Block),
    Net(Net),
    Vsock(Vsock),
    Rng(Rng),
}

impl Pending {
    fn name(&self) -> String {
        match self {
            Pending::Block(d) => d.name(),
            Pending::Net(d) => d.name(),
            Pending::Vsock(d) => d.name(),
            Pending::Rng(d) => d.name(),
        }
    }
}

impl VirtioDevices {
    /// Fresh devices for a booting guest with `config`.
    pub fn new(
        vm: &Vm,
        mem: &GuestMemoryMmap,
        config: &MachineConfig,
    ) -> Result<Self, VirtioError> {
        let pending = fresh_devices(config)?;
        if pending.len() > IRQ_LINES.len() {
            return Err(VirtioError::TooMany(pending.len()));
        }
        let mut built = Vec::with_capacity(pending.len());
        for (i, dev) in pending.into_iter().enumerate() {
            let place = Placement::new(i as u64, IRQ_LINES[i])?;
            built.push(wire_fresh(vm, mem, place, dev)?);
        }
        Self::start(built)
    }

    /// Devices rebuilt from a snapshot's `states`, with `opts`' overrides.
    pub fn restore(
        vm: &Vm,
        mem: &GuestMemoryMmap,
        states: &[VirtioDeviceState],
        opts: &RestoreOptions,
    ) -> Result<Self, VirtioError> {
        let mut built = Vec::with_capacity(states.len());
        for (i, state) in states.iter().enumerate() {
            let place =
                Placement::new(state.window, state.irq).map_err(|_| VirtioError::BadState {
                    index: i,
                    reason: format!("window {} is outside the virtio MMIO area", state.window),
                })?;
            built.push(wire_saved(vm, mem, place, state, opts, i)?);
        }
        Self::start(built)
    }

    fn start(slots: Vec<(Box<dyn Slot>, device_loop::Subscriber)>) -> Result<Self, VirtioError> {
        let (slots, workers): (Vec<_>, Vec<_>) = slots.into_iter().unzip();
        let device_loop = DeviceLoop::start(workers)?;
        for s in &slots {
            log::info!("virtio device: {}", s.describe());
        }
        Ok(VirtioDevices { slots, device_loop })
    }

    /// The guest command line arguments that announce the devices.
    pub fn cmdline_args(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| s.placement().cmdline_arg())
            .collect()
    }

    /// Puts every device's window on `bus`.
    pub fn add_to_bus(&self, bus: &mut MmioBus) -> Result<(), VirtioError> {
        for s in &self.slots {
            let p = s.placement();
            bus.insert(p.addr, VIRTIO_MMIO_DEVICE_SIZE, s.mmio())
                .map_err(VirtioError::Bus)?;
        }
        Ok(())
    }

    /// Holds the device thread still (the vCPUs are paused first).
    pub fn pause(&self) -> Result<(), VirtioError> {
        Ok(self.device_loop.pause()?)
    }

    /// Lets the device thread run again.
    pub fn resume(&self) -> Result<(), VirtioError> {
        Ok(self.device_loop.resume()?)
    }

    /// Makes every device finish or drop in-flight work and flush what must
    /// be durable; the machine must be paused.
    pub fn quiesce(&self) -> Result<(), VirtioError> {
        self.slots.iter().try_for_each(|s| s.quiesce())
    }

    /// Every device's state; the machine must be paused and quiesced.
    pub fn save(&self) -> Vec<VirtioDeviceState> {
        self.slots.iter().map(|s| s.save()).collect()
    }

    /// Raises again the interrupts a snapshot recorded as pending; called
    /// once the irqchip state is back.
    pub fn replay_pending_interrupts(&self) {
        for s in &self.slots {
            s.replay_pending_interrupt();
        }
    }

    /// Stops the device thread.
    pub fn stop(&mut self) {
        self.device_loop.stop();
    }
}

/// The devices `config` asks for, in placement order.
fn fresh_devices(config: &MachineConfig) -> Result<Vec<Pending>, VirtioError> {
    let mut out = Vec::new();
    for d in &config.drives {
        let dev = Block::new(&d.id, &d.path, d.read_only).map_err(|e| create_error(&d.id, &e))?;
        out.push(Pending::Block(dev));
    }
    for n in &config.nets {
        let mac = n.mac.map(|m| m.0);
        let dev = Net::new(&n.id, &n.tap, mac).map_err(|e| create_error(&n.id, &e))?;
        out.push(Pending::Net(dev));
    }
    if let Some(v) = &config.vsock {
        let dev = Vsock::new(u64::from(v.guest_cid), &v.uds_path)
            .map_err(|e| create_error("vsock", &e))?;
        out.push(Pending::Vsock(dev));
    }
    if config.entropy {
        out.push(Pending::Rng(Rng::new()));
    }
    Ok(out)
}

fn wire_fresh(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    place: Placement,
    dev: Pending,
) -> Result<(Box<dyn Slot>, device_loop::Subscriber), VirtioError> {
    log::debug!(
        "placing {} at {:#x}, line {}",
        dev.name(),
        place.addr,
        place.irq
    );
    match dev {
        Pending::Block(d) => slot::wire(vm, mem, place, d, None),
        Pending::Net(d) => slot::wire(vm, mem, place, d, None),
        Pending::Vsock(d) => slot::wire(vm, mem, place, d, None),
        Pending::Rng(d) => slot::wire(vm, mem, place, d, None),
    }
}

fn wire_saved(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    place: Placement,
    state: &VirtioDeviceState,
    opts: &RestoreOptions,
    index: usize,
) -> Result<(Box<dyn Slot>, device_loop::Subscriber), VirtioError> {
    let transport = Some(&state.transport);
    let bad = |e: &dyn std::error::Error| VirtioError::BadState {
        index,
        reason: crate::api::error_chain(e),
    };
    match &state.device {
        DeviceState::Block(s) => {
            let mut s = s.clone();
            if let Some(o) = opts.drive_overrides.iter().find(|o| o.drive_id == s.id) {
                s.path = o.path_on_host.clone();
            }
            let dev = Block::restore(&s).map_err(|e| bad(&e))?;
            slot::wire(vm, mem, place, dev, transport)
        }
        DeviceState::Net(s) => {
            let o = opts.net_overrides.iter().find(|o| o.iface_id == s.id);
            let tap = o.map(|o| o.host_dev_name.as_str());
            let mac = o.and_then(|o| o.guest_mac).map(|m| m.0);
            let dev = Net::restore(s, tap, mac).map_err(|e| bad(&e))?;
            let changed_mac = mac.is_some() && mac != s.mac;
            let wired = slot::wire(vm, mem, place, dev, transport)?;
            if changed_mac {
                wired.0.notify_config_change();
            }
            Ok(wired)
        }
        DeviceState::Vsock(s) => {
            let uds = opts.vsock_uds_override.as_deref();
            let dev = Vsock::restore(s, uds).map_err(|e| bad(&e))?;
            slot::wire(vm, mem, place, dev, transport)
        }
        DeviceState::Rng(s) => slot::wire(vm, mem, place, Rng::restore(s), transport),
    }
}

fn create_error(device: &str, e: &dyn std::error::Error) -> VirtioError {
    VirtioError::Create {
        device: device.to_string(),
        reason: crate::api::error_chain(e),
    }
}

/// Refuses overrides that name no device of the snapshot.
pub fn check_overrides(config: &MachineConfig, opts: &RestoreOptions) -> Result<(), VirtioError> {
    for o in &opts.drive_overrides {
        if !config.drives.iter().any(|d| d.id == o.drive_id) {
            let known: Vec<&str> = config.drives.iter().map(|d| d.id.as_str()).collect();
            return Err(VirtioError::Override(format!(
                "the drive override names drive `{}`, but the snapshot has {}",
                o.drive_id,
                if known.is_empty() {
                    "no drives".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    for o in &opts.net_overrides {
        if !config.nets.iter().any(|n| n.id == o.iface_id) {
            let known: Vec<&str> = config.nets.iter().map(|n| n.id.as_str()).collect();
            return Err(VirtioError::Override(format!(
                "the network override names interface `{}`, but the snapshot has {}",
                o.iface_id,
                if known.is_empty() {
                    "no network interfaces".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    if opts.vsock_uds_override.is_some() && config.vsock.is_none() {
        return Err(VirtioError::Override(
            "a vsock socket override was given, but the snapshot has no vsock device".into(),
        ));
    }
    Ok(())
}

/// Records `opts`' overrides in `config`, so that the next snapshot names
/// the backends in use.
pub fn apply_overrides(config: &mut MachineConfig, opts: &RestoreOptions) {
    for o in &opts.drive_overrides {
        if let Some(d) = config.drives.iter_mut().find(|d| d.id == o.drive_id) {
            d.path = o.path_on_host.clone();
        }
    }
    for o in &opts.net_overrides {
        if let Some(n) = config.nets.iter_mut().find(|n| n.id == o.iface_id) {
            n.tap = o.host_dev_name.clone();
            if o.guest_mac.is_some() {
                n.mac = o.guest_mac;
            }
        }
    }
    if let (Some(v), Some(path)) = (config.vsock.as_mut(), &opts.vsock_uds_override) {
        v.uds_path = path.clone();
    }
}

/// Saves a device's own state as a [`DeviceState`].
pub trait SaveDevice {
    /// The device's state.
    fn device_state(&self) -> DeviceState;
}

impl SaveDevice for Block {
    fn device_state(&self) -> DeviceState {
        DeviceState::Block(self.save())
    }
}

impl SaveDevice for Net {
    fn device_state(&self) -> DeviceState {
        DeviceState::Net(self.save())
    }
}

impl SaveDevice for Vsock {
    fn device_state(&self) -> DeviceState {
        DeviceState::Vsock(self.save())
    }
}

impl SaveDevice for Rng {
    fn device_state(&self) -> DeviceState {
        DeviceState::Rng(self.save())
    }
}

/// The window address of window `index`, if it exists.
fn window_addr(index: u64) -> Option<u64> {
    virtio_mmio_addr(index).map(|a| a.0)
}

/// A device shared between the MMIO bus, its worker and the VMM.
type Shared<D> = Arc<Mutex<devices::virtio::mmio::MmioTransport<D>>>;
