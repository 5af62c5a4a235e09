//! The legacy devices of the machine, wired to the port bus and the
//! irqchip: COM1, the i8042 and the CMOS RTC.

use std::sync::{Arc, Mutex};

use devices::bus::{BusError, PioBus};
use devices::i8042::{I8042Error, I8042, I8042_BASE, I8042_KBD_IRQ, I8042_LEN};
use devices::rtc::{Rtc, RtcError, RTC_BASE, RTC_LEN};
use devices::serial::{Serial, SerialError, SerialOutput, COM1_BASE, COM1_IRQ, COM1_LEN};
use devices::LegacyDevicesState;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vstate::vm::{Vm, VmError};

/// Errors of building the legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// An event descriptor could not be made.
    #[error("could not create an eventfd for the {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// The irqchip refused an interrupt line.
    #[error("could not wire the {0} interrupt")]
    Irq(&'static str, #[source] VmError),
    /// A device did not fit on the bus.
    #[error("could not place a legacy device on the port bus")]
    Bus(#[source] BusError),
    /// The saved serial port state was refused.
    #[error("the saved state of the serial port is invalid")]
    Serial(#[source] SerialError),
    /// The saved i8042 state was refused.
    #[error("the saved state of the i8042 is invalid")]
    I8042(#[source] I8042Error),
    /// The saved RTC state was refused.
    #[error("the saved state of the RTC is invalid")]
    Rtc(#[source] RtcError),
}

/// The legacy devices, shared between the port bus and the VMM.
pub struct LegacyDevices {
    /// COM1, the guest console.
    pub serial: Arc<Mutex<Serial>>,
    /// The keyboard controller (reset line).
    pub i8042: Arc<Mutex<I8042>>,
    /// The CMOS clock.
    pub rtc: Arc<Mutex<Rtc>>,
    /// Signalled when the guest pulses the reset line.
    pub reset_evt: EventFd,
}

struct Irqs {
    serial: EventFd,
    kbd: EventFd,
    reset: EventFd,
}

fn eventfd(what: &'static str) -> Result<EventFd, LegacyError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| LegacyError::EventFd(what, e))
}

fn clone_evt(evt: &EventFd, what: &'static str) -> Result<EventFd, LegacyError> {
    evt.try_clone().map_err(|e| LegacyError::EventFd(what, e))
}

fn wire_irqs(vm: &Vm) -> Result<Irqs, LegacyError> {
    let serial = eventfd("serial port")?;
    vm.register_irqfd(&serial, COM1_IRQ)
        .map_err(|e| LegacyError::Irq("serial port", e))?;
    let kbd = eventfd("i8042")?;
    vm.register_irqfd(&kbd, I8042_KBD_IRQ)
        .map_err(|e| LegacyError::Irq("i8042", e))?;
    Ok(Irqs {
        serial,
        kbd,
        reset: eventfd("reset line")?,
    })
}

impl LegacyDevices {
    /// Fresh devices for a booting guest.
    pub fn new(vm: &Vm, out: SerialOutput) -> Result<Self, LegacyError> {
        let irqs = wire_irqs(vm)?;
        let reset = clone_evt(&irqs.reset, "reset line")?;
        Ok(LegacyDevices {
            serial: Arc::new(Mutex::new(Serial::new(irqs.serial, out))),
            i8042: Arc::new(Mutex::new(I8042::new(irqs.kbd, reset))),
            rtc: Arc::new(Mutex::new(Rtc::new())),
            reset_evt: irqs.reset,
        })
    }

    /// Devices rebuilt from a snapshot.
    pub fn restore(
        vm: &Vm,
        out: SerialOutput,
        state: &LegacyDevicesState,
    ) -> Result<Self, LegacyError> {
        let irqs = wire_irqs(vm)?;
        let reset = clone_evt(&irqs.reset, "reset line")?;
        let serial =
            Serial::restore(irqs.serial, out, &state.serial).map_err(LegacyError::Serial)?;
        let i8042 = I8042::restore(irqs.kbd, reset, &state.i8042).map_err(LegacyError::I8042)?;
        let rtc = Rtc::restore(&state.rtc).map_err(LegacyError::Rtc)?;
        Ok(LegacyDevices {
            serial: Arc::new(Mutex::new(serial)),
            i8042: Arc::new(Mutex::new(i8042)),
            rtc: Arc::new(Mutex::new(rtc)),
            reset_evt: irqs.reset,
        })
    }

    /// A port bus with every legacy device on it.
    pub fn bus(&self) -> Result<PioBus, LegacyError> {
        let mut bus = PioBus::new();
        bus.insert(COM1_BASE, COM1_LEN, self.serial.clone())
            .map_err(LegacyError::Bus)?;
        bus.insert(I8042_BASE, I8042_LEN, self.i8042.clone())
            .map_err(LegacyError::Bus)?;
        bus.insert(RTC_BASE, RTC_LEN, self.rtc.clone())
            .map_err(LegacyError::Bus)?;
        Ok(bus)
    }

    /// The state of every legacy device.
    pub fn save(&self) -> LegacyDevicesState {
        LegacyDevicesState {
            serial: self.serial.lock().unwrap().save(),
            i8042: self.i8042.lock().unwrap().save(),
            rtc: self.rtc.lock().unwrap().save(),
        }
    }
}
