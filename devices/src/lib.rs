//! The devices of the Hiber guest: the legacy ones (serial port, i8042 and CMOS RTC)
//! on the port-I/O bus, and the virtio devices on the MMIO bus.
//!
//! Each device module holds the device, its plain-data state type and its save and
//! restore, so what a device persists has one place to look. [`LegacyDevicesState`]
//! gathers the states into the one value the VMM writes into a snapshot.

#![warn(missing_docs)]

pub mod bus;
pub mod i8042;
pub mod mmio_bus;
pub mod rtc;
pub mod serial;
pub mod trigger;
pub mod virtio;

pub use bus::{BusError, PioBus, PioDevice, SharedPioDevice};
pub use i8042::{I8042Error, I8042State, I8042};
pub use rtc::{Rtc, RtcError, RtcState, SystemClock, WallClock};
pub use serial::{Serial, SerialError, SerialOutput, SerialState};
pub use trigger::EventFdTrigger;

use serde::{Deserialize, Serialize};

/// The state of every legacy device, as one value for one snapshot section.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LegacyDevicesState {
    /// COM1.
    pub serial: SerialState,
    /// The PS/2 controller and keyboard.
    pub i8042: I8042State,
    /// The CMOS RTC.
    pub rtc: RtcState,
}

#[cfg(test)]
mod tests {
    use std::io;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    fn evt() -> EventFd {
        EventFd::new(EFD_NONBLOCK).unwrap()
    }

    /// Proves the root state survives CBOR, the snapshot's encoding, and rebuilds all
    /// three devices; it does not prove anything about the devices' behaviour.
    #[test]
    fn root_state_round_trips_through_cbor() {
        let mut serial = Serial::new(evt(), Box::new(io::sink()));
        serial.enqueue_input(b"in").unwrap();
        let mut rtc = Rtc::new();
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0x12]);
        let state = LegacyDevicesState {
            serial: serial.save(),
            i8042: I8042::new(evt(), evt()).save(),
            rtc: rtc.save(),
        };

        let mut buf = Vec::new();
        ciborium::into_writer(&state, &mut buf).unwrap();
        let decoded: LegacyDevicesState = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(decoded, state);

        let serial = Serial::restore(evt(), Box::new(io::sink()), &decoded.serial).unwrap();
        let i8042 = I8042::restore(evt(), evt(), &decoded.i8042).unwrap();
        let rtc = Rtc::restore(&decoded.rtc).unwrap();
        let again = LegacyDevicesState {
            serial: serial.save(),
            i8042: i8042.save(),
            rtc: rtc.save(),
        };
        assert_eq!(again, state);
    }
}
