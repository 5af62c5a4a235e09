//! Legacy devices of the Hiber guest: serial port, i8042 and CMOS RTC, and the port-I/O
//! bus they sit on.
//!
//! Each device module holds the device, its plain-data state type and its save and
//! restore, so what a device persists has one place to look. [`LegacyDevicesState`]
//! gathers the states into the one value the VMM writes into a snapshot.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod trigger;

pub use bus::{BusError, PioBus, PioDevice, SharedPioDevice};
pub use i8042::{I8042Error, I8042State, I8042};
pub use serial::{Serial, SerialError, SerialOutput, SerialState};
pub use trigger::EventFdTrigger;
