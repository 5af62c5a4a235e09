//! The 16550A UART on COM1, built on vm-superio's register model.
//!
//! Guest output goes to a writer chosen by the VMM; host input is queued into the
//! 64-byte receive FIFO with [`Serial::enqueue_input`]. The interrupt line is an event
//! fd that the VMM registers as an irqfd for [`COM1_IRQ`].

use std::io::{self, Write};

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::PioDevice;
use crate::trigger::EventFdTrigger;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports a UART occupies.
pub const COM1_LEN: u16 = 8;
/// The ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;
/// Size of the receive FIFO, in bytes.
pub const FIFO_SIZE: usize = 64;

// Register bits this module looks at when restoring (see `pending_after_restore`).
const IER_RDA: u8 = 0x01;
const IIR_NONE: u8 = 0x01;
const IIR_RDA: u8 = 0x04;

/// Where the guest's output goes.
pub type SerialOutput = Box<dyn Write + Send>;

type Uart = vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, SerialOutput>;
type UartError = vm_superio::serial::Error<io::Error>;

/// Errors of the serial port.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// A saved state holds more input than the FIFO can.
    #[error(
        "the serial state holds {len} buffered input bytes but the FIFO holds at most \
         {FIFO_SIZE}; the snapshot is corrupt or from another device model"
    )]
    FifoOverflow {
        /// Number of bytes in the state.
        len: usize,
    },
    /// Raising the interrupt line failed.
    #[error("cannot raise the serial interrupt through its event fd")]
    Interrupt(#[source] io::Error),
}

/// Everything the guest can observe of the UART: every register of the 16550A model
/// and the received bytes the guest has not read yet.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SerialState {
    /// Divisor latch, low byte (DLL).
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte (DLM).
    pub baud_divisor_high: u8,
    /// Interrupt enable register (IER).
    pub interrupt_enable: u8,
    /// Interrupt identification register (IIR), without the FIFO bits.
    pub interrupt_identification: u8,
    /// Line control register (LCR); bit 7 is DLAB.
    pub line_control: u8,
    /// Line status register (LSR).
    pub line_status: u8,
    /// Modem control register (MCR).
    pub modem_control: u8,
    /// Modem status register (MSR).
    pub modem_status: u8,
    /// Scratch register (SCR).
    pub scratch: u8,
    /// Received bytes not yet read by the guest, oldest first.
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::SerialState> for SerialState {
    fn from(s: vm_superio::SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::SerialState {
    fn from(s: &SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// A 16550A UART whose interrupt is an event fd and whose output is a writer.
pub struct Serial {
    uart: Uart,
    /// Set once a failed output write has been logged, so a closed console does not
    /// flood the log with one warning per byte.
    output_failed: bool,
}

impl Serial {
    /// Creates a UART in its power-on state. `irq` is the event fd the VMM registers as
    /// the irqfd of [`COM1_IRQ`]; `out` receives every byte the guest transmits.
    pub fn new(irq: EventFd, out: SerialOutput) -> Self {
        let uart = vm_superio::Serial::new(EventFdTrigger::new(irq), out);
        Self {
            uart,
            output_failed: false,
        }
    }

    /// Rebuilds a UART from `state`, raising `irq` if an interrupt is pending in it.
    ///
    /// Why re-raise: the interrupt that the saved device had raised may never have
    /// reached the saved interrupt controller (KVM injects irqfd signals asynchronously)
    /// and the new event fd starts unsignalled, so without this a guest waiting for that
    /// interrupt would wait forever. A spurious interrupt, by contrast, costs the guest's
    /// driver one look at IIR. Pending means: an interrupt recorded in IIR whose enable
    /// bit is set in IER, or received data waiting with the receive interrupt enabled.
    /// In the second case IIR is made to report the receive interrupt, as a real 16550
    /// does while its FIFO holds data (vm-superio clears it when the guest reads IIR).
    /// A transmit-empty interrupt the guest already acknowledged by reading IIR is not
    /// raised again, as on hardware: the next byte the guest writes raises it.
    pub fn restore(
        irq: EventFd,
        out: SerialOutput,
        state: &SerialState,
    ) -> Result<Self, SerialError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(SerialError::FifoOverflow {
                len: state.in_buffer.len(),
            });
        }
        let mut regs = vm_superio::SerialState::from(state);
        if !regs.in_buffer.is_empty() && regs.interrupt_enable & IER_RDA != 0 {
            regs.interrupt_identification = (regs.interrupt_identification & !IIR_NONE) | IIR_RDA;
        }
        let trigger = EventFdTrigger::new(irq);
        let events = vm_superio::serial::NoEvents;
        let uart = vm_superio::Serial::from_state(&regs, trigger, events, out)
            .map_err(|e| restore_error(e, state.in_buffer.len()))?;
        Ok(Self {
            uart,
            output_failed: false,
        })
    }

    /// Captures the registers and the unread input.
    pub fn save(&self) -> SerialState {
        self.uart.state().into()
    }

    /// Queues host input for the guest and raises the receive interrupt if enabled.
    /// Returns how many leading bytes of `bytes` fit into the FIFO; the caller keeps the
    /// rest and offers it again once [`Serial::input_room`] is non-zero. In loopback mode
    /// the line is disconnected and nothing is accepted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        if self.uart.fifo_capacity() == 0 {
            return Ok(0);
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(count) => Ok(count),
            Err(UartError::Trigger(e)) => Err(SerialError::Interrupt(e)),
            // Only a full FIFO is reported otherwise, and that case returned above.
            Err(e) => {
                debug!("serial: input not queued: {e}");
                Ok(0)
            }
        }
    }

    /// How many more input bytes the FIFO can take now.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Sends further guest output to `out` (a new console after a restore, for
    /// example) and returns the writer used until now.
    pub fn set_output(&mut self, out: SerialOutput) -> SerialOutput {
        self.output_failed = false;
        std::mem::replace(self.uart.writer_mut(), out)
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        match self.uart.write(offset, value) {
            Ok(()) => {}
            Err(UartError::IOError(e)) if !self.output_failed => {
                self.output_failed = true;
                warn!("serial: guest output is being dropped: cannot write it: {e}");
            }
            Err(UartError::IOError(_)) => {}
            Err(e) => warn!("serial: write of {value:#04x} at offset {offset} failed: {e}"),
        }
    }
}

/// `from_state` fails only on a full FIFO or when raising the interrupt; its I/O
/// errors can only come from the event fd.
fn restore_error(e: UartError, fifo_len: usize) -> SerialError {
    match e {
        UartError::Trigger(e) | UartError::IOError(e) => SerialError::Interrupt(e),
        UartError::FullFifo => SerialError::FifoOverflow { len: fifo_len },
    }
}

impl PioDevice for Serial {
    fn name(&self) -> &str {
        "serial"
    }

    /// A wider access reaches consecutive registers, as on an 8-bit ISA bus.
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (port, byte) in (offset..).zip(data.iter_mut()) {
            *byte = match u8::try_from(port) {
                Ok(reg) if port < COM1_LEN => self.uart.read(reg),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        for (port, &value) in (offset..).zip(data) {
            match u8::try_from(port) {
                Ok(reg) if port < COM1_LEN => self.write_register(reg, value),
                _ => debug!("serial: write past its ports at offset {port} ignored"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    // Register offsets, as the guest's driver uses them.
    const DATA: u16 = 0;
    const IER: u16 = 1;
    const IIR: u16 = 2;
    const LCR: u16 = 3;
    const MCR: u16 = 4;
    const LSR: u16 = 5;
    const SCR: u16 = 7;
    const IER_THRE: u8 = 0x02;
    const LCR_DLAB: u8 = 0x80;
    const LSR_DR: u8 = 0x01;

    /// A writer the test can look into after handing it to the device.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn evt() -> EventFd {
        EventFd::new(EFD_NONBLOCK).unwrap()
    }

    fn signalled(evt: &EventFd) -> bool {
        evt.read().is_ok()
    }

    fn rd(serial: &mut Serial, offset: u16) -> u8 {
        let mut data = [0];
        serial.read(offset, &mut data);
        data[0]
    }

    fn wr(serial: &mut Serial, offset: u16, value: u8) {
        serial.write(offset, &[value]);
    }

    /// A device programmed the way a driver would: divisor 3, 8n1, scratch set.
    fn programmed(irq: &EventFd) -> Serial {
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        wr(&mut s, LCR, LCR_DLAB | 0x03);
        wr(&mut s, DATA, 0x03);
        wr(&mut s, IER, 0x00);
        wr(&mut s, LCR, 0x03);
        wr(&mut s, SCR, 0x5a);
        wr(&mut s, MCR, 0x0b);
        s
    }

    #[test]
    fn guest_output_reaches_the_writer_and_can_be_redirected() {
        let first = SharedBuf::default();
        let second = SharedBuf::default();
        let mut s = Serial::new(evt(), Box::new(first.clone()));
        wr(&mut s, DATA, b'h');
        wr(&mut s, DATA, b'i');
        s.set_output(Box::new(second.clone()));
        wr(&mut s, DATA, b'!');
        assert_eq!(*first.0.lock().unwrap(), b"hi");
        assert_eq!(*second.0.lock().unwrap(), b"!");
    }

    #[test]
    fn a_wide_access_reaches_consecutive_registers() {
        let mut s = programmed(&evt());
        s.write(SCR - 1, &[0x11, 0x22]);
        assert_eq!(rd(&mut s, SCR), 0x22);
        let mut data = [0; 3];
        s.read(SCR - 1, &mut data);
        assert_eq!(
            data[1..],
            [0x22, 0xff],
            "a port past the UART must read as 0xff"
        );
    }

    #[test]
    fn input_respects_the_fifo_limit() {
        let mut s = Serial::new(evt(), Box::new(io::sink()));
        let input = [b'x'; FIFO_SIZE + 10];
        assert_eq!(s.enqueue_input(&input[..10]).unwrap(), 10);
        assert_eq!(s.input_room(), FIFO_SIZE - 10);
        assert_eq!(s.enqueue_input(&input).unwrap(), FIFO_SIZE - 10);
        assert_eq!(s.input_room(), 0);
        assert_eq!(s.enqueue_input(b"more").unwrap(), 0);
        rd(&mut s, DATA);
        assert_eq!(s.input_room(), 1);
    }

    #[test]
    fn input_raises_the_receive_interrupt_when_enabled() {
        let irq = evt();
        let mut s = programmed(&irq);
        s.enqueue_input(b"a").unwrap();
        assert!(
            !signalled(&irq),
            "receive interrupt raised while disabled in IER"
        );
        wr(&mut s, IER, IER_RDA);
        assert!(signalled(&irq));
        assert_eq!(rd(&mut s, IIR) & 0x0f, IIR_RDA);
    }

    #[test]
    fn save_restore_save_is_stable() {
        let irq = evt();
        let mut s = programmed(&irq);
        s.enqueue_input(b"abc").unwrap();
        let saved = s.save();
        let restored = Serial::restore(evt(), Box::new(io::sink()), &saved).unwrap();
        assert_eq!(restored.save(), saved);

        let bytes = ciborium_roundtrip(&saved);
        assert_eq!(bytes, saved);
    }

    fn ciborium_roundtrip(state: &SerialState) -> SerialState {
        let mut buf = Vec::new();
        ciborium::into_writer(state, &mut buf).unwrap();
        ciborium::from_reader(buf.as_slice()).unwrap()
    }

    #[test]
    fn restored_device_behaves_like_the_saved_one() {
        let irq = evt();
        let mut s = programmed(&irq);
        wr(&mut s, IER, IER_RDA);
        s.enqueue_input(b"ok").unwrap();
        let saved = s.save();

        let mut r = Serial::restore(evt(), Box::new(io::sink()), &saved).unwrap();
        for dev in [&mut s, &mut r] {
            wr(dev, LCR, LCR_DLAB | 0x03);
            assert_eq!((rd(dev, DATA), rd(dev, IER)), (0x03, 0x00), "divisor latch");
            wr(dev, LCR, 0x03);
            assert_eq!(rd(dev, SCR), 0x5a);
            assert_eq!(rd(dev, MCR), 0x0b);
            assert_eq!(rd(dev, IIR), 0xc0 | IIR_RDA);
            assert_eq!(rd(dev, LSR) & LSR_DR, LSR_DR);
            assert_eq!([rd(dev, DATA), rd(dev, DATA)], *b"ok");
            assert_eq!(rd(dev, LSR) & LSR_DR, 0);
            assert_eq!(rd(dev, IIR), 0xc0 | IIR_NONE);
        }
    }

    #[test]
    fn restore_raises_a_pending_transmit_interrupt() {
        let mut s = programmed(&evt());
        wr(&mut s, IER, IER_THRE);
        let saved = s.save();
        let irq = evt();
        let mut r =
            Serial::restore(irq.try_clone().unwrap(), Box::new(io::sink()), &saved).unwrap();
        assert!(
            signalled(&irq),
            "pending THRE interrupt not raised after restore"
        );
        assert_eq!(rd(&mut r, IIR), 0xc2);
    }

    #[test]
    fn restore_raises_the_receive_interrupt_for_waiting_data() {
        let mut s = programmed(&evt());
        wr(&mut s, IER, IER_RDA);
        s.enqueue_input(b"z").unwrap();
        // The guest read IIR (vm-superio clears it) but not the data yet.
        assert_eq!(rd(&mut s, IIR), 0xc0 | IIR_RDA);
        let saved = s.save();
        assert_eq!(saved.interrupt_identification, IIR_NONE);

        let irq = evt();
        let mut r =
            Serial::restore(irq.try_clone().unwrap(), Box::new(io::sink()), &saved).unwrap();
        assert!(
            signalled(&irq),
            "waiting data did not raise the receive interrupt"
        );
        assert_eq!(rd(&mut r, IIR), 0xc0 | IIR_RDA);
        assert_eq!(rd(&mut r, DATA), b'z');
    }

    #[test]
    fn restore_stays_quiet_without_a_pending_interrupt() {
        let mut s = programmed(&evt());
        wr(&mut s, IER, IER_THRE);
        rd(&mut s, IIR); // acknowledges THRE
        s.enqueue_input(b"q").unwrap(); // receive interrupt disabled
        let irq = evt();
        Serial::restore(irq.try_clone().unwrap(), Box::new(io::sink()), &s.save()).unwrap();
        assert!(
            !signalled(&irq),
            "restore raised an interrupt that was not pending"
        );
    }

    #[test]
    fn restore_refuses_an_overfull_fifo() {
        let mut state = programmed(&evt()).save();
        state.in_buffer = vec![0; FIFO_SIZE + 1];
        let err = Serial::restore(evt(), Box::new(io::sink()), &state)
            .err()
            .unwrap();
        assert!(matches!(err, SerialError::FifoOverflow { len } if len == FIFO_SIZE + 1));
    }
}
